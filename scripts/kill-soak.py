#!/usr/bin/env python3
"""kill -9 soak of ilog_tgt over NBD.

Starts `ilog_tgt` on a file base (an aio bdev on a file under the work
directory, so the data outlives the process) with `ilog0` exported over NBD,
then, round after round:

1. drives I/O for a random short time, all at once:
   - a *model writer*: this script's own NBD client writes blocks whose
     content names (seed, write id, LBA), write-zeroes and trims, some with
     FUA, up to 16 requests in flight, with flushes in between, on the
     *model region*; it records when each request was sent and answered;
   - `fio` with its nbd engine, `--verify=crc32c` (read back while it runs,
     `--verify_backlog`), a per-run `--verify_pattern` and `--end_fsync=1`,
     on the *fio region*, run after run for random short times;
   - a control thread through JSON-RPC (SPDK's protocol, on the target's
     socket): `bdev_ilog_snapshot`, `bdev_ilog_compact` in place
     (foreground, `background`, one volume) and into the baseline (with and
     without a volume), `bdev_ilog_delete_volume` to keep the number of
     volumes bounded;
2. `kill -9`s the target at a random moment, with I/O in flight: after the
   round's random I/O time, once (a second at most) what the round aims at
   is in flight: the writer's queue, an RPC, or a fio run;
3. restarts it on the same base (1 or 2 cores, at random) and checks:
   a. the current image: every block of the model region holds the last
      write that an acknowledged flush (or its own FUA) made durable, or a
      write sent after that one (the writes in flight or unflushed at the
      kill may land or not, each block whole); the fio region holds what the
      script read back after the last fio run that ended with its flush, or
      a block of a later fio run (header and offset valid, that run's
      pattern); the rest of the volume reads as zeros;
   b. the volumes: every snapshot acknowledged before the kill (and not
      deleted or retired by an acknowledged RPC) is listed; no volume the
      script does not know of is; each one listed reads back, over its own
      NBD export, what the current image held when it was taken: a write
      answered before the snapshot request was sent is in it, one sent
      after its answer is not, one in flight in between may be either; the
      first read settles the ambiguous blocks, and later rounds must read
      exactly that again; a volume whose snapshot, delete or retirement
      (baseline compaction up to a newer volume) was in flight at the kill
      may be listed or not;
   c. nothing unwritten is returned: a block reads as zeros, a block this
      script wrote (all of it, for that LBA and this seed) or a fio block
      (for that offset), never anything else.

Once checked, what the restarted target holds is flushed and becomes the
durable state of the next round. After the last round the target is also
stopped cleanly (SIGTERM, exit 0) and checked once more after a clean mount.

The summary line gives rounds, kills, snapshots taken and checked (one
check is one volume read back after one restart), bytes verified (every
image read back and checked, whole), bytes lost (blocks read back outside
what the model allows: must be 0), and counts: `unflushed_blocks_old/new`
are blocks with writes sent after their durable version, by which version
came back; `unflushed_answered_writes_reverted` those of them where a write
that had been answered, but not flushed, did not survive (allowed: a write
is durable once flushed).

Every random choice comes from `--seed` (printed at start and on failure);
the moment of each kill against the I/O is racy by nature and is printed.
Exits 0 after printing the summary line, 1 on a mismatch or a failure of the
target (naming the round, the LBA range and the seed), 2 on bad usage or a
missing tool.

CI form (tgt/tests/kill_soak.rs, part of `cargo test --workspace --release`;
about 20-25 s on 2 cores; ILOG_SOAK_SEED and ILOG_SOAK_ROUNDS override it):

    python3 scripts/kill-soak.py --tgt target/release/ilog_tgt --rounds 5 --seconds 60 --seed 20251202

Release check (200 rounds take 10-16 minutes on 2 cores; --seconds
bounds it), and the same with a new seed each time:

    cargo build --release -p ilog-tgt
    python3 scripts/kill-soak.py --rounds 200 --seconds 1800 --seed 1
    python3 scripts/kill-soak.py --rounds 200 --seconds 1800

Needs fio (nbd engine): scripts/install-deps.sh installs it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
import time
from dataclasses import dataclass
from pathlib import Path

BLOCK = 4096
MIB = 1 << 20
REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- failures


class SoakFailure(Exception):
    """A defect found by the soak: data lost or invented, a restart failure, a refused I/O."""


class TargetGone(Exception):
    """The target went away (expected once it is killed)."""


# ---------------------------------------------------------------- NBD client

NBD_MAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
INFO_EXPORT = 0
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES = 0, 1, 2, 3, 4, 6
CMD_FLAG_FUA = 1


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got)
        except (ConnectionError, OSError) as e:
            raise TargetGone(f"NBD connection: {e}") from e
        if k == 0:
            raise TargetGone("NBD connection closed")
        got += k
    return bytes(buf)


class Nbd:
    """A fixed-newstyle NBD client (NBD_OPT_GO on the default export, simple replies)."""

    def __init__(self, path: Path, timeout: float = 60.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError as e:
            raise TargetGone(f"NBD connect {path}: {e}") from e
        magic, opt, hflags = struct.unpack(">QQH", recv_exact(self.sock, 18))
        if magic != NBD_MAGIC or opt != IHAVEOPT:
            raise SoakFailure(f"NBD {path}: bad greeting {magic:#x} {opt:#x}")
        self._send(struct.pack(">I", 1 | (2 if hflags & 2 else 0)))
        data = struct.pack(">IH", 0, 0)
        self._send(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
        self.size = None
        self.flags = 0
        while True:
            magic, _opt, rtype, rlen = struct.unpack(">QIII", recv_exact(self.sock, 20))
            payload = recv_exact(self.sock, rlen) if rlen else b""
            if magic != OPT_REPLY_MAGIC:
                raise SoakFailure(f"NBD {path}: bad option reply magic {magic:#x}")
            if rtype & 0x80000000:
                raise SoakFailure(f"NBD {path}: NBD_OPT_GO refused ({rtype:#x}): {payload!r}")
            if rtype == REP_INFO and len(payload) >= 12 and struct.unpack(">H", payload[:2])[0] == INFO_EXPORT:
                self.size, self.flags = struct.unpack(">QH", payload[2:12])
            elif rtype == REP_ACK:
                break
        if self.size is None:
            raise SoakFailure(f"NBD {path}: no export size in NBD_OPT_GO")
        self.send_lock = threading.Lock()
        self.next_handle = 1

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (ConnectionError, OSError) as e:
            raise TargetGone(f"NBD send: {e}") from e

    def send_request(self, cmd: int, offset: int, length: int, data: bytes = b"", flags: int = 0) -> int:
        with self.send_lock:
            handle = self.next_handle
            self.next_handle += 1
            self._send(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, handle, offset, length) + data)
        return handle

    def recv_reply(self) -> tuple[int, int]:
        magic, error, handle = struct.unpack(">IIQ", recv_exact(self.sock, 16))
        if magic != SIMPLE_REPLY_MAGIC:
            raise SoakFailure(f"NBD: bad reply magic {magic:#x}")
        return handle, error

    def read(self, offset: int, length: int, chunk: int = MIB, depth: int = 8) -> bytes:
        """Reads [offset, offset+length) with up to `depth` requests in flight."""
        out = bytearray(length)
        pending: dict[int, tuple[int, int]] = {}
        pos = 0
        while pos < length or pending:
            while pos < length and len(pending) < depth:
                n = min(chunk, length - pos)
                pending[self.send_request(CMD_READ, offset + pos, n)] = (pos, n)
                pos += n
            handle, error = self.recv_reply()
            if handle not in pending:
                raise SoakFailure(f"NBD: reply for unknown handle {handle}")
            at, n = pending.pop(handle)
            data = recv_exact(self.sock, n) if error == 0 else b""
            if error:
                raise SoakFailure(f"NBD read of {n} bytes at {offset + at} failed: error {error}")
            out[at : at + n] = data
        return bytes(out)

    def flush(self) -> None:
        self.send_request(CMD_FLUSH, 0, 0)
        _, error = self.recv_reply()
        if error:
            raise SoakFailure(f"NBD flush failed: error {error}")

    def close(self) -> None:
        try:
            with self.send_lock:
                self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
        except OSError:
            pass
        self.sock.close()


# ---------------------------------------------------------------- JSON-RPC client


class Rpc:
    """SPDK JSON-RPC over the target's Unix socket, one connection per call."""

    def __init__(self, path: Path):
        self.path = path
        self.next_id = 1

    def call(self, method: str, params: dict | None = None, timeout: float = 120.0):
        """The result, or raises RpcError (an error answer) or TargetGone (no answer)."""
        req = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        self.next_id += 1
        if params is not None:
            req["params"] = params
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(self.path))
            s.sendall(json.dumps(req).encode())
            buf = b""
            dec = json.JSONDecoder()
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    raise TargetGone(f"RPC {method}: connection closed")
                buf += chunk
                try:
                    resp, _ = dec.raw_decode(buf.decode().lstrip())
                    break
                except ValueError:
                    continue
        except (ConnectionError, OSError) as e:
            raise TargetGone(f"RPC {method}: {e}") from e
        finally:
            s.close()
        if "error" in resp:
            raise RpcError(method, resp["error"])
        return resp.get("result")


class RpcError(Exception):
    def __init__(self, method: str, error: dict):
        super().__init__(f"{method}: {error.get('code')} {error.get('message')}")
        self.code = error.get("code")


# ---------------------------------------------------------------- block contents


def model_block(seed: int, wid: int, lba: int) -> bytes:
    """What write `wid` of this seed puts at `lba`: a header naming them, then a hash of it."""
    hdr = struct.pack("<8sQQQ", b"ILOGSOAK", seed & (2**64 - 1), wid, lba)
    digest = hashlib.blake2b(hdr, digest_size=64).digest()
    return hdr + digest * 63 + digest[:32]


ZERO_BLOCK = bytes(BLOCK)
ZERO = "zero"

_CRC32C = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C.append(_c)


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def fio_pattern(seed: int, run: int) -> bytes:
    return bytes([0x5F, seed & 0xFF]) + struct.pack(">H", run & 0xFFFF)


# fio's verify header (verify.h): magic u16, verify_type u16, len u32, rand_seed u64, offset u64,
# time_sec u32, time_nsec u32, thread u16, numberio u16, crc32 (crc32c of what precedes, not inverted) u32;
# then, for crc32c, the data's crc32c u32; the data follows at byte 44.
FIO_MAGIC = 0xACCA
FIO_VERIFY_CRC32C = 5
FIO_DATA_AT = 44


def classify_model(block: bytes, lba: int, seed: int):
    """ZERO, ("m", write id) for a whole block this seed's writer wrote at this LBA, or ("bad", why)."""
    if block == ZERO_BLOCK:
        return ZERO
    if block[:8] == b"ILOGSOAK":
        _, bseed, wid, blba = struct.unpack_from("<8sQQQ", block)
        if bseed == seed & (2**64 - 1) and blba == lba and block == model_block(seed, wid, lba):
            return ("m", wid)
        return ("bad", f"a model block of seed {bseed} write {wid} lba {blba}, whole={block == model_block(bseed, wid, blba)}")
    return ("bad", f"foreign bytes {block[:16].hex()}...")


def classify_fio(block: bytes, lba: int, seed: int):
    """ZERO, ("f", run, digest) for a valid fio block of this offset, or ("bad", why)."""
    if block == ZERO_BLOCK:
        return ZERO
    magic, vtype, length, _rs, offset = struct.unpack_from("<HHIQQ", block)
    if magic != FIO_MAGIC or vtype != FIO_VERIFY_CRC32C or length != BLOCK:
        if block[:8] == b"ILOGSOAK":
            return ("bad", "a model-writer block")
        return ("bad", f"not a fio block: {block[:16].hex()}...")
    if offset != lba * BLOCK:
        return ("bad", f"a fio block of offset {offset} (LBA {offset // BLOCK})")
    (hcrc,) = struct.unpack_from("<I", block, 36)
    if crc32c(block[:36]) ^ 0xFFFFFFFF != hcrc:  # fio's crc32c leaves out the final inversion
        return ("bad", "a fio block with a bad header crc")
    pat = block[FIO_DATA_AT : FIO_DATA_AT + 4]
    if pat[:2] != bytes([0x5F, seed & 0xFF]):
        return ("bad", f"a fio block of another pattern {pat.hex()}")
    run = struct.unpack(">H", pat[2:])[0]
    if block[FIO_DATA_AT:] != (pat * (BLOCK // 4))[FIO_DATA_AT:]:
        return ("bad", f"a fio block of run {run} with torn data")
    return ("f", run, hashlib.blake2b(block, digest_size=8).hexdigest())


def show(ident) -> str:
    if ident == ZERO:
        return "zeros"
    if ident[0] == "m":
        return f"write #{ident[1]}"
    if ident[0] == "f":
        return f"fio run {ident[1]} block {ident[2]}"
    return str(ident[1])


# ---------------------------------------------------------------- the model


@dataclass
class Op:
    wid: int
    ident: object
    lba: int
    nblocks: int
    submit: int
    complete: int | None = None
    fua: bool = False


@dataclass
class Volume:
    name: str
    order: int
    state: str  # "exists": must be listed; "maybe": in flight at a kill; "gone": must not be listed
    model: list  # per block of the model region: set of idents allowed
    fio_exact: list  # per block of the fio region: the exact ident allowed ...
    fio_runs: set  # ... or a block of one of these fio runs
    checked: int = 0


class Model:
    """What each block may hold, from the order of sends and answers (one lock, one event counter)."""

    def __init__(self, seed: int, m_lba: int, m_blocks: int, f_lba: int, f_blocks: int):
        self.seed = seed
        self.lock = threading.Lock()
        self.clock = 0
        self.m_lba, self.m_blocks = m_lba, m_blocks
        self.f_lba, self.f_blocks = f_lba, f_blocks
        # Model region: durable ident per block, and the ops sent since (in order, never two in flight at once).
        self.base: list = [ZERO] * m_blocks
        self.history: dict[int, list[Op]] = {}
        self.busy: set[int] = set()
        # Fio region: the ident read back after the last complete run, and the runs since.
        self.fio_base: list = [ZERO] * f_blocks
        self.fio_runs: set[int] = set()
        self.pending: list[Volume] = []  # snapshots sent, not answered: every send adds to them
        self.volumes: dict[str, Volume] = {}
        self.order = 0
        self.next_wid = 1

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    # -- model writer
    def submit(self, lba: int, nblocks: int, ident_of, fua: bool) -> Op:
        """Records a write/zero op before it is sent; ident_of(wid) is its ident."""
        with self.lock:
            wid = self.next_wid
            self.next_wid += 1
            op = Op(wid, ident_of(wid), lba, nblocks, self.tick(), fua=fua)
            for b in range(lba - self.m_lba, lba - self.m_lba + nblocks):
                self.history.setdefault(b, []).append(op)
                self.busy.add(b)
                for v in self.pending:
                    v.model[b].add(op.ident)
            return op

    def completed(self, op: Op) -> None:
        with self.lock:
            op.complete = self.tick()
            for b in range(op.lba - self.m_lba, op.lba - self.m_lba + op.nblocks):
                self.busy.discard(b)
                if op.fua:
                    self._fold(b, lambda o: o is op)

    def flush_sent(self) -> int:
        with self.lock:
            return self.tick()

    def flush_done(self, sent: int) -> None:
        """Every op answered before the flush was sent is durable."""
        with self.lock:
            for b in list(self.history):
                self._fold(b, lambda o: o.complete is not None and o.complete < sent)

    def _fold(self, b: int, durable) -> None:
        hist = self.history.get(b)
        if not hist:
            return
        last = None
        for i, o in enumerate(hist):
            if durable(o):
                last = i
        if last is not None:
            self.base[b] = hist[last].ident
            rest = hist[last + 1 :]
            if rest:
                self.history[b] = rest
            else:
                del self.history[b]

    def allowed_now(self, b: int) -> set:
        """After a kill: the durable ident or any op sent since."""
        return {self.base[b]} | {o.ident for o in self.history.get(b, ())}

    # -- snapshots
    def snapshot_sent(self, name: str) -> Volume:
        with self.lock:
            self.tick()
            model = []
            for b in range(self.m_blocks):
                hist = self.history.get(b, ())
                last_done = None
                for i, o in enumerate(hist):
                    if o.complete is not None:
                        last_done = i
                if last_done is None:
                    allowed = {self.base[b]} | {o.ident for o in hist}
                else:
                    allowed = {o.ident for o in hist[last_done:]}
                model.append(allowed)
            self.order += 1
            v = Volume(name, self.order, "maybe", model, list(self.fio_base), set(self.fio_runs))
            self.pending.append(v)
            self.volumes[name] = v
            return v

    def snapshot_done(self, v: Volume, acked: bool) -> None:
        with self.lock:
            self.tick()
            if v in self.pending:
                self.pending.remove(v)
            if acked:
                v.state = "exists"

    # -- fio
    def fio_started(self, run: int) -> None:
        with self.lock:
            self.fio_runs.add(run)
            for v in self.pending:
                v.fio_runs.add(run)

    def live_volumes(self) -> list[Volume]:
        with self.lock:
            return sorted((v for v in self.volumes.values() if v.state == "exists"), key=lambda v: v.order)


# ---------------------------------------------------------------- the target


class Target:
    def __init__(self, exe: Path, workdir: Path, base: Path, cfg: dict):
        self.exe = exe
        self.workdir = workdir
        self.base = base
        self.sock = workdir / "rpc.sock"
        self.nbd = workdir / "ilog0.nbd"
        self.config = workdir / "config.json"
        ilog = {"name": "ilog0", "base_bdev_name": "Aio0"}
        ilog.update(cfg)
        self.config.write_text(
            json.dumps(
                {
                    "subsystems": [
                        {
                            "subsystem": "bdev",
                            "config": [
                                {
                                    "method": "bdev_aio_create",
                                    "params": {"name": "Aio0", "filename": str(base), "block_size": BLOCK},
                                },
                                {"method": "bdev_ilog_create", "params": ilog},
                            ],
                        },
                        {
                            "subsystem": "nbd",
                            "config": [
                                {
                                    "method": "nbd_start_disk",
                                    "params": {"bdev_name": "ilog0", "nbd_device": str(self.nbd)},
                                }
                            ],
                        },
                    ]
                }
            )
        )
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.rpc = Rpc(self.sock)
        self.log_path: Path | None = None

    def start(self, cpumask: str) -> float:
        self.starts += 1
        self.log_path = self.workdir / f"tgt-{self.starts}.log"
        log = open(self.log_path, "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [str(self.exe), "-m", cpumask, "-r", str(self.sock), "-c", str(self.config), "-L", "warn"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = t0 + 120
        while True:
            if self.proc.poll() is not None:
                raise SoakFailure(f"ilog_tgt exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                self.rpc.call("spdk_get_version", timeout=5)
                if self.nbd.exists():
                    return time.monotonic() - t0
            except (TargetGone, RpcError):
                pass
            if time.monotonic() > deadline:
                raise SoakFailure(f"ilog_tgt did not answer on {self.sock} in 120 s:\n{self.log_tail()}")
            time.sleep(0.02)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise SoakFailure(f"ilog_tgt did not exit within 120 s of SIGTERM:\n{self.log_tail()}")
        self.proc = None
        if rc != 0:
            raise SoakFailure(f"ilog_tgt exited with {rc} after SIGTERM:\n{self.log_tail()}")

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, n: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:]) or "(empty log)"


# ---------------------------------------------------------------- the soak


class Soak:
    def __init__(self, args, seed: int, workdir: Path):
        self.args = args
        self.seed = seed
        self.workdir = workdir
        self.rng = random.Random(f"{seed}:layout")
        base = workdir / "base.img"
        with open(base, "wb") as f:
            f.truncate(args.base_mib * MIB)
        cfg = {}
        if args.stripe_kib:
            cfg["stripe_size_kib"] = args.stripe_kib
        if args.segment_kib:
            cfg["segment_size_kib"] = args.segment_kib
        if args.log_percent:
            cfg["log_percent"] = args.log_percent
        self.tgt = Target(args.tgt, workdir, base, cfg)
        self.round = 0
        self.kills = 0
        self.snapshots_checked = 0
        self.snapshots_taken = 0
        self.bytes_verified = 0
        self.bytes_lost = 0
        self.counts: dict[str, int] = {}
        self.fio_run = 0
        self.fio_proc: list[subprocess.Popen | None] = [None]
        self.t0 = time.monotonic()
        self.model: Model | None = None
        self.size = 0

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.2f}s] {msg}", flush=True)

    def debug(self, msg: str) -> None:
        if self.args.verbose:
            self.log(msg)

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def fail(self, msg: str) -> SoakFailure:
        return SoakFailure(f"round {self.round} (seed {self.seed}): {msg}")

    # -- layout
    def setup(self) -> None:
        ms = self.tgt.start(self.rng.choice(["0x1", "0x3"]))
        self.log(f"ilog_tgt started on a fresh {self.args.base_mib} MiB file base in {ms:.2f} s")
        conn = Nbd(self.tgt.nbd)
        self.size = conn.size
        conn.close()
        nblocks = self.size // BLOCK
        m_blocks = self.args.model_mib * MIB // BLOCK
        f_blocks = self.args.fio_mib * MIB // BLOCK
        if m_blocks + f_blocks > nblocks:
            raise SystemExit(f"kill-soak: the regions ({m_blocks + f_blocks} blocks) exceed the volume ({nblocks})")
        half = nblocks // 2
        m_lba = self.rng.randrange(0, max(1, half - m_blocks))
        f_lba = half + self.rng.randrange(0, max(1, nblocks - half - f_blocks))
        self.model = Model(self.seed, m_lba, m_blocks, f_lba, f_blocks)
        self.log(
            f"volume {self.size // MIB} MiB ({nblocks} blocks); model region LBA {m_lba}..{m_lba + m_blocks - 1}, "
            f"fio region LBA {f_lba}..{f_lba + f_blocks - 1}, the rest must read as zeros"
        )

    # -- one round of I/O, then kill -9
    def workload(self, duration: float) -> None:
        model = self.model
        stop = threading.Event()
        errors: list[BaseException] = []
        status = {"fio": "idle", "control": "idle"}
        rnd = self.round

        def guarded(fn):
            def run():
                try:
                    fn()
                except TargetGone:
                    if not stop.is_set():
                        errors.append(self.fail("the target went away before the kill"))
                except BaseException as e:  # noqa: BLE001 - reported by the main thread
                    errors.append(e)
            return run

        conn = Nbd(self.tgt.nbd)
        inflight: dict[int, Op | tuple[str, int]] = {}
        cv = threading.Condition()

        def receiver():
            while True:
                try:
                    handle, error = conn.recv_reply()
                except TargetGone:
                    if stop.is_set():
                        return
                    raise
                with cv:
                    op = inflight.pop(handle, None)
                    cv.notify_all()
                if op is None:
                    raise self.fail(f"NBD reply for an unknown handle {handle}")
                if error:
                    what = "flush" if isinstance(op, tuple) else f"write #{op.wid} at LBA {op.lba}+{op.nblocks}"
                    raise self.fail(f"the target failed {what} with NBD error {error} (before the kill)")
                if isinstance(op, tuple):
                    model.flush_done(op[1])
                    self.count("flushes")
                else:
                    model.completed(op)
                    self.bytes_written += op.nblocks * BLOCK

        wrng = random.Random(f"{self.seed}:{rnd}:writer")
        depth = wrng.choice([1, 4, 16])
        rate = self.args.write_mibps * MIB

        def writer():
            t_start = time.monotonic()
            sent_bytes = 0
            while not stop.is_set():
                with cv:
                    while len(inflight) >= depth and not stop.is_set():
                        cv.wait(0.1)
                if stop.is_set():
                    return
                # Pace to the rate (the log must not fill with versions the volumes hold), in bursts of up
                # to 20 ms of it, so that the queue fills.
                ahead = sent_bytes / rate - (time.monotonic() - t_start)
                if ahead > 0.02:
                    time.sleep(min(ahead, 0.05))
                    continue
                r = wrng.random()
                if r < 0.06:
                    sent = model.flush_sent()
                    with cv:
                        h = conn.send_request(CMD_FLUSH, 0, 0)
                        inflight[h] = ("flush", sent)
                    continue
                n = wrng.choice([1, 1, 2, 4, 8, 16])
                for _ in range(20):
                    start = wrng.randrange(0, model.m_blocks - n + 1)
                    with model.lock:
                        free = not any(b in model.busy for b in range(start, start + n))
                    if free:
                        break
                else:
                    time.sleep(0.001)
                    continue
                lba = model.m_lba + start
                fua = wrng.random() < 0.1
                if r < 0.90:
                    op = model.submit(lba, n, lambda wid: ("m", wid), fua)
                    data = b"".join(model_block(self.seed, op.wid, lba + i) for i in range(n))
                    cmd = CMD_WRITE
                    self.count("writes")
                else:
                    op = model.submit(lba, n, lambda wid: ZERO, fua)
                    data = b""
                    cmd = CMD_WRITE_ZEROES if r < 0.95 else CMD_TRIM
                    self.count("write_zeroes" if cmd == CMD_WRITE_ZEROES else "trims")
                with cv:
                    h = conn.send_request(cmd, lba * BLOCK, n * BLOCK, data, CMD_FLAG_FUA if fua else 0)
                    inflight[h] = op
                sent_bytes += n * BLOCK

        def fio_loop():
            frng = random.Random(f"{self.seed}:{rnd}:fio")
            time.sleep(frng.uniform(0, 0.3))
            while not stop.is_set():
                self.fio_run += 1
                run = self.fio_run
                runtime_ms = frng.randint(200, 1500)
                bs = frng.choice(["4k", "16k"])
                iodepth = frng.choice([1, 8, 32])
                pattern = fio_pattern(self.seed, run)
                cmd = [
                    "fio", f"--name=soak{run}", "--thread", "--ioengine=nbd", f"--uri=nbd+unix:///?socket={self.tgt.nbd}",
                    "--rw=randwrite", f"--bs={bs}", f"--iodepth={iodepth}",
                    f"--offset={model.f_lba * BLOCK}", f"--size={model.f_blocks * BLOCK}",
                    "--verify=crc32c", f"--verify_pattern=0x{pattern.hex()}", "--verify_interval=4096",
                    "--do_verify=1", "--verify_backlog=64", "--verify_fatal=1", "--verify_state_save=0",
                    "--end_fsync=1", "--time_based=1", f"--runtime={runtime_ms}ms",
                    f"--rate={self.args.fio_mibps}m", f"--randseed={(self.seed * 7919 + run) % (2**32)}",
                ]
                model.fio_started(run)
                # The job runs as a thread of the one fio process (--thread: a forked job would be a session
                # of its own, out of reach of the kill below), in a session of its own; its output goes through
                # a pipe of which only the tail is kept: once its server is gone, fio's nbd engine may print
                # the same error in a loop until it is killed, and must not fill a disk meanwhile.
                with fio_lock:
                    if stop.is_set():
                        return
                    proc = subprocess.Popen(
                        cmd, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, start_new_session=True,
                    )
                    fio_proc[0] = proc
                output = TailReader(proc.stdout)
                status["fio"] = f"run {run} ({runtime_ms} ms, bs {bs}, iodepth {iodepth})"
                try:
                    rc = proc.wait(timeout=runtime_ms / 1000 + 120)
                except subprocess.TimeoutExpired as e:
                    kill_group(proc)
                    output.close()
                    raise self.fail(f"fio run {run} did not end within 120 s of its runtime") from e
                status["fio"] = "idle"
                out = output.close()
                if FIO_VERIFY_FAILED.search(out):
                    raise self.fail(f"fio run {run} reported a verify failure:\n{out}")
                if stop.is_set():
                    return
                if rc != 0:
                    raise self.fail(f"fio run {run} failed with {rc} before the kill:\n{out}")
                self.count("fio_runs")
                self.debug(f"round {rnd}: fio run {run} passed its verify")
                # The run ended with its flush: what the region holds now is durable. Read it back.
                try:
                    rd = Nbd(self.tgt.nbd)
                    rd.flush()
                    data = rd.read(model.f_lba * BLOCK, model.f_blocks * BLOCK)
                    rd.close()
                except TargetGone:
                    return
                with model.lock:
                    bad = []
                    idents = []
                    for i in range(model.f_blocks):
                        ident = classify_fio(data[i * BLOCK : (i + 1) * BLOCK], model.f_lba + i, self.seed)
                        idents.append(ident)
                        if not fio_allowed(ident, model.fio_base[i], model.fio_runs):
                            bad.append((model.f_lba + i, ident))
                    if bad:
                        raise self.fail(
                            f"after fio run {run} (no kill) the fio region reads wrong: "
                            + ", ".join(f"LBA {lba}: {show(i)}" for lba, i in bad[:8])
                        )
                    model.fio_base = idents
                    model.fio_runs = set()

        fio_lock = threading.Lock()
        fio_proc = self.fio_proc
        fio_proc[0] = None
        crng = random.Random(f"{self.seed}:{rnd}:control")

        def control():
            k = 0
            time.sleep(crng.uniform(0, 0.3))
            while not stop.is_set():
                live = model.live_volumes()
                r = crng.random()
                make_room = len(live) >= self.args.max_volumes
                if make_room:
                    # Delete one, or fold a newer one into the baseline (which retires the older ones).
                    r = 0.9 if len(live) < 2 or crng.random() < 0.5 else 0.7
                if r < 0.45:
                    k += 1
                    name = f"r{rnd}s{k}"
                    v = model.snapshot_sent(name)
                    status["control"] = f"bdev_ilog_snapshot {name}"
                    try:
                        res = self.tgt.rpc.call("bdev_ilog_snapshot", {"name": "ilog0", "snapshot_name": name})
                    except TargetGone:
                        model.snapshot_done(v, False)
                        raise
                    except RpcError as e:
                        model.snapshot_done(v, False)
                        raise self.fail(f"bdev_ilog_snapshot {name} failed: {e}")
                    if res != {"volume_id": name, "bdev": f"ilog0@{name}"}:
                        raise self.fail(f"bdev_ilog_snapshot {name} answered {res}")
                    model.snapshot_done(v, True)
                    self.snapshots_taken += 1
                    self.count("snapshots")
                elif r < 0.6:
                    params = {"name": "ilog0"}
                    if live and crng.random() < 0.3:
                        params["volume"] = crng.choice(live).name
                    bg = crng.random() < 0.5
                    if bg:
                        params["background"] = True
                    status["control"] = f"bdev_ilog_compact {params}"
                    self.rpc_ok("bdev_ilog_compact", params)
                    self.count("compact_in_place")
                elif r < 0.75 or not live:
                    params = {"name": "ilog0", "mode": "baseline"}
                    target = None
                    if make_room:
                        target = crng.choice(live[1:])
                        params["volume"] = target.name
                    elif live and crng.random() < 0.6:
                        target = crng.choice(live)
                        params["volume"] = target.name
                    older = [v for v in live if target is not None and v.order < target.order]
                    with model.lock:
                        for v in older:
                            v.state = "maybe"
                    status["control"] = f"bdev_ilog_compact {params}"
                    self.rpc_ok("bdev_ilog_compact", params)
                    with model.lock:
                        for v in older:
                            v.state = "gone"
                    self.count("compact_baseline")
                else:
                    v = crng.choice(live)
                    with model.lock:
                        v.state = "maybe"
                    status["control"] = f"bdev_ilog_delete_volume {v.name}"
                    self.rpc_ok("bdev_ilog_delete_volume", {"name": "ilog0", "volume": v.name})
                    with model.lock:
                        v.state = "gone"
                    self.count("volume_deletes")
                self.debug(f"round {rnd}: {status['control']} answered")
                status["control"] = "idle"
                time.sleep(crng.uniform(0.02, 0.3))

        self.bytes_written = 0
        threads = [
            threading.Thread(target=guarded(f), name=n, daemon=True)
            for n, f in (("receiver", receiver), ("writer", writer), ("fio", fio_loop), ("control", control))
        ]
        for t in threads:
            t.start()
        t_start = time.monotonic()
        while time.monotonic() - t_start < duration and not errors:
            time.sleep(0.01)
        # Then wait (a second at most) for what this round's kill is aimed at to be in flight.
        aim = random.Random(f"{self.seed}:{rnd}:aim").choice(["writes", "writes", "control", "fio"])
        ready = {
            "writes": lambda: len(inflight) >= min(depth, 4),
            "control": lambda: status["control"] != "idle",
            "fio": lambda: status["fio"] != "idle",
        }[aim]
        t_aim = time.monotonic()
        while not ready() and time.monotonic() - t_aim < 1.0 and not errors:
            time.sleep(0.0005)
        if errors:
            stop.set()
            self.tgt.kill9()
            raise errors[0]
        with cv:
            n_inflight = len(inflight)
            n_flush = sum(1 for o in inflight.values() if isinstance(o, tuple))
        fio_state, control_state = status["fio"], status["control"]
        hit = ready()
        stop.set()
        self.tgt.kill9()
        self.kills += 1
        self.log(
            f"round {rnd}: kill -9 at {time.monotonic() - t_start:.3f} s (planned {duration:.3f} s, "
            f"aimed at {aim}{'' if hit else ', not in flight'}): "
            f"writer qd {depth}, {n_inflight - n_flush} writes and {n_flush} flushes in flight, "
            f"{self.bytes_written // 1024} KiB answered; fio: {fio_state}; control: {control_state}"
        )
        # fio's work is over with its server: end it (its nbd engine may spin once the connection is gone).
        with fio_lock:
            if fio_proc[0] is not None:
                kill_group(fio_proc[0])
        for t in threads:
            t.join(timeout=60)
            if t.is_alive():
                raise self.fail(f"thread {t.name} did not end after the kill")
        conn.sock.close()
        if errors:
            raise errors[0]
        with model.lock:
            for v in list(model.pending):
                model.pending.remove(v)

    def rpc_ok(self, method: str, params: dict):
        try:
            return self.tgt.rpc.call(method, params)
        except RpcError as e:
            raise self.fail(f"{method} {params} failed: {e}")

    # -- checks after a restart
    def verify(self, when: str) -> None:
        model = self.model
        listed = self.rpc_ok("bdev_ilog_get_volumes", {"name": "ilog0"})
        names = [v["volume_id"] for v in listed]
        problems: list[str] = []
        with model.lock:
            for name in names:
                v = model.volumes.get(name)
                if v is None:
                    problems.append(f"volume {name} is listed but was never taken")
                elif v.state == "gone":
                    problems.append(f"volume {name} is listed but its delete/retirement was acknowledged")
                else:
                    v.state = "exists"
            for name, v in list(model.volumes.items()):
                if name not in names:
                    if v.state == "exists":
                        problems.append(f"snapshot volume {name} (acknowledged) is not listed after the restart")
                    del model.volumes[name]
        if problems:
            raise self.fail(f"{when}: " + "; ".join(problems) + f" (listed: {names})")

        mismatches: list[tuple[str, int, str, set]] = []
        conn = Nbd(self.tgt.nbd)
        if conn.size != self.size:
            raise self.fail(f"{when}: ilog0 is {conn.size} bytes after the restart, was {self.size}")
        image = conn.read(0, self.size)
        with model.lock:
            allowed_m = [model.allowed_now(b) for b in range(model.m_blocks)]
            fio_base, fio_runs = list(model.fio_base), set(model.fio_runs)
        seen_m, seen_f = self.check_image("ilog0", image, allowed_m, fio_base, fio_runs, mismatches)
        with model.lock:
            for b, allowed in enumerate(allowed_m):
                if len(allowed) > 1:
                    # Blocks with writes sent after their durable one: which version came back.
                    hist = model.history.get(b, [])
                    versions = [model.base[b]] + [o.ident for o in hist]
                    answered = max((i + 1 for i, o in enumerate(hist) if o.complete is not None), default=0)
                    got = max((i for i, v in enumerate(versions) if v == seen_m[b]), default=-1)
                    if got == 0:
                        self.count("unflushed_blocks_old")
                    else:
                        self.count("unflushed_blocks_new")
                    if 0 <= got < answered:
                        self.count("unflushed_answered_writes_reverted")
        conn.flush()  # what mount recovered is durable from here on
        conn.close()
        if not mismatches:
            with model.lock:
                model.base = seen_m
                model.history = {}
                model.busy = set()
                model.fio_base = seen_f
                model.fio_runs = set()

        for v in model.live_volumes():
            sock = self.workdir / f"vol-{v.name}.nbd"
            self.rpc_ok("nbd_start_disk", {"bdev_name": f"ilog0@{v.name}", "nbd_device": str(sock)})
            vc = Nbd(sock)
            vimage = vc.read(0, vc.size)
            vc.close()
            self.rpc_ok("nbd_stop_disk", {"nbd_device": str(sock)})
            if len(vimage) != self.size:
                raise self.fail(f"{when}: volume {v.name} is {len(vimage)} bytes, the volume {self.size}")
            before = len(mismatches)
            seen_m, seen_f = self.check_image(f"ilog0@{v.name}", vimage, v.model, v.fio_exact, v.fio_runs, mismatches)
            if len(mismatches) == before:
                # The first read settles the blocks that were in flight at the snapshot.
                v.model = [{i} for i in seen_m]
                v.fio_exact, v.fio_runs = seen_f, set()
            v.checked += 1
            self.snapshots_checked += 1

        if mismatches:
            self.bytes_lost += len(mismatches) * BLOCK
            raise self.fail(f"{when}: {len(mismatches) * BLOCK} bytes read back wrong:\n" + describe(mismatches))

    def check_image(self, what, image, allowed_m, fio_exact, fio_runs, mismatches):
        model = self.model
        seen_m = []
        seen_f = []
        m0, m1 = model.m_lba, model.m_lba + model.m_blocks
        f0, f1 = model.f_lba, model.f_lba + model.f_blocks
        for i in range(model.m_blocks):
            lba = m0 + i
            ident = classify_model(image[lba * BLOCK : (lba + 1) * BLOCK], lba, self.seed)
            seen_m.append(ident)
            if ident not in allowed_m[i]:
                mismatches.append((what, lba, show(ident), {show(a) for a in allowed_m[i]}))
        for i in range(model.f_blocks):
            lba = f0 + i
            ident = classify_fio(image[lba * BLOCK : (lba + 1) * BLOCK], lba, self.seed)
            seen_f.append(ident)
            if not fio_allowed(ident, fio_exact[i], fio_runs):
                exp = {show(fio_exact[i])} | {f"a block of fio run {r}" for r in sorted(fio_runs)}
                mismatches.append((what, lba, show(ident), exp))
        # Everything else was never written: zeros.
        chunk = 256 * BLOCK
        zero = bytes(chunk)
        for start, end in ((0, m0), (m1, f0), (f1, self.size // BLOCK)):
            pos = start
            while pos < end:
                n = min(end - pos, chunk // BLOCK)
                piece = image[pos * BLOCK : (pos + n) * BLOCK]
                if piece != zero[: n * BLOCK]:
                    for j in range(n):
                        blk = piece[j * BLOCK : (j + 1) * BLOCK]
                        if blk != ZERO_BLOCK:
                            mismatches.append((what, pos + j, f"never written, holds {blk[:16].hex()}...", {"zeros"}))
                pos += n
        self.bytes_verified += len(image)
        return seen_m, seen_f

    # -- the whole soak
    def run(self) -> None:
        a = self.args
        self.setup()
        deadline = self.t0 + a.seconds
        for rnd in range(1, a.rounds + 1):
            left = deadline - time.monotonic()
            if left < 1.0:
                self.log(f"time bound ({a.seconds} s) reached before round {rnd}")
                break
            self.round = rnd
            rrng = random.Random(f"{self.seed}:{rnd}:round")
            duration = min(rrng.uniform(a.min_io, a.max_io), max(0.3, left - 0.5))
            cpumask = rrng.choice(["0x1", "0x3"])
            self.workload(duration)
            restart = self.tgt.start(cpumask)
            stats = self.rpc_ok("bdev_ilog_get_stats", {"name": "ilog0"})
            mount = stats.get("last_mount", {})
            self.verify("after the kill")
            self.log(
                f"round {rnd}: restarted on {cpumask} in {restart:.2f} s (mount {mount.get('kind')}, "
                f"{mount.get('ms')} ms); verified ilog0 and {len(self.model.live_volumes())} volume(s), "
                f"{len(self.model.volumes)} tracked"
            )
        # Last: a clean stop and a clean mount keep the same images.
        self.tgt.stop()
        self.tgt.start("0x3")
        stats = self.rpc_ok("bdev_ilog_get_stats", {"name": "ilog0"})
        kind = stats.get("last_mount", {}).get("kind")
        if kind != "clean":
            raise self.fail(f"after SIGTERM the next mount is {kind!r}, not 'clean'")
        self.verify("after a clean stop and restart")
        self.tgt.stop()
        self.log("clean stop, clean restart: every image read back the same")


FIO_VERIFY_FAILED = re.compile(r"verify failed|bad magic header|bad header|verify type mismatch|bad pattern")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to a process started in its own session, and all of its group."""
    if proc.poll() is None:  # not reaped yet: its pid (and group id) cannot have been reused
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


class TailReader:
    """Drains a pipe in a thread, keeping only its last `limit` bytes."""

    def __init__(self, pipe, limit: int = 8000):
        self.pipe = pipe
        self.limit = limit
        self.tail = b""
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        try:
            while chunk := self.pipe.read1(65536):
                self.tail = (self.tail + chunk)[-self.limit :]
        except (OSError, ValueError):
            pass

    def close(self) -> str:
        """The tail, once the writers have closed the pipe (or after 5 s: the reader then goes on draining)."""
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.pipe.close()
        return self.tail.decode(errors="replace")


def fio_allowed(ident, exact, runs) -> bool:
    return ident == exact or (isinstance(ident, tuple) and ident[0] == "f" and ident[1] in runs)


def describe(mismatches) -> str:
    """Consecutive LBAs of one image with the same finding, as ranges."""
    lines = []
    i = 0
    while i < len(mismatches):
        what, lba, got, exp = mismatches[i]
        j = i
        while (
            j + 1 < len(mismatches)
            and mismatches[j + 1][0] == what
            and mismatches[j + 1][1] == mismatches[j][1] + 1
            and mismatches[j + 1][2].split(" ")[0] == got.split(" ")[0]
        ):
            j += 1
        last = mismatches[j][1]
        exp_s = ", ".join(sorted(exp)[:6]) + (" ..." if len(exp) > 6 else "")
        lines.append(
            f"  {what}: LBA {lba}..{last} (bytes {lba * BLOCK}..{(last + 1) * BLOCK - 1}): got {got}; allowed: {exp_s}"
        )
        i = j + 1
        if len(lines) >= 40:
            lines.append(f"  ... and {len(mismatches) - i} more blocks")
            break
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tgt", type=Path, default=REPO / "target/release/ilog_tgt", help="the ilog_tgt binary")
    p.add_argument("--rounds", type=int, default=10, help="kill -9 rounds (default 10)")
    p.add_argument("--seconds", type=float, default=120, help="time bound: no round starts after it (default 120)")
    p.add_argument("--seed", type=int, default=None, help="seed of every random choice (default: ILOG_SOAK_SEED or random)")
    p.add_argument("--base-mib", type=int, default=128, help="size of the base file (default 128)")
    p.add_argument("--model-mib", type=int, default=4, help="the model writer's region (default 4)")
    p.add_argument("--fio-mib", type=int, default=4, help="fio's region (default 4)")
    p.add_argument("--stripe-kib", type=int, default=256, help="bdev_ilog_create stripe_size_kib (default 256)")
    p.add_argument("--segment-kib", type=int, default=1024, help="bdev_ilog_create segment_size_kib (default 1024)")
    p.add_argument("--log-percent", type=int, default=0, help="bdev_ilog_create log_percent (default: the engine's)")
    p.add_argument("--max-volumes", type=int, default=3, help="snapshot volumes kept at most (default 3)")
    p.add_argument("--write-mibps", type=float, default=6, help="the model writer's rate (default 6 MiB/s)")
    p.add_argument("--fio-mibps", type=int, default=4, help="fio's rate (default 4 MiB/s)")
    p.add_argument("--min-io", type=float, default=0.5, help="shortest I/O phase before a kill, s (default 0.5)")
    p.add_argument("--max-io", type=float, default=3.0, help="longest I/O phase before a kill, s (default 3)")
    p.add_argument("--workdir", type=Path, default=None, help="where the base and sockets go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory even on success")
    p.add_argument("-v", "--verbose", action="store_true", help="log every control operation and fio run")
    args = p.parse_args()

    seed = args.seed
    if seed is None:
        env = os.environ.get("ILOG_SOAK_SEED")
        seed = int(env) if env else random.SystemRandom().randrange(1, 2**31)
    if not args.tgt.exists():
        print(f"kill-soak: no ilog_tgt at {args.tgt} (cargo build --release -p ilog-tgt, or --tgt)", file=sys.stderr)
        return 2
    if shutil.which("fio") is None:
        print("kill-soak: fio is not installed: run scripts/install-deps.sh", file=sys.stderr)
        return 2
    if args.max_volumes < 1 or args.rounds < 1:
        print("kill-soak: --rounds and --max-volumes must be at least 1", file=sys.stderr)
        return 2

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ilog-kill-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"kill-soak: seed {seed} (reproduce with --seed {seed}); rounds {args.rounds}, {args.seconds:g} s; "
        f"{args.tgt}; work dir {workdir}",
        flush=True,
    )
    soak = Soak(args, seed, workdir)
    def on_sigterm(_signum, _frame):
        raise KeyboardInterrupt

    # SIGTERM (a test harness giving up) ends the soak through the cleanup below, like Ctrl-C.
    signal.signal(signal.SIGTERM, on_sigterm)
    ok = False
    try:
        soak.run()
        ok = True
    except (SoakFailure, TargetGone) as e:
        what = "" if isinstance(e, SoakFailure) else f"round {soak.round} (seed {seed}): the target went away: "
        print(f"kill-soak FAILED: {what}{e}", file=sys.stderr, flush=True)
        print(f"kill-soak: target log tail ({soak.tgt.log_path}):\n{soak.tgt.log_tail()}", file=sys.stderr)
    except Exception:  # noqa: BLE001 - a bug of the script itself: still a failure, with the seed
        traceback.print_exc()
        print(f"kill-soak FAILED: round {soak.round} (seed {seed}): the script itself failed", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"kill-soak: interrupted in round {soak.round} (seed {seed})", file=sys.stderr)
    finally:
        soak.tgt.cleanup()
        if soak.fio_proc[0] is not None:
            kill_group(soak.fio_proc[0])
    counts = " ".join(f"{k}={v}" for k, v in sorted(soak.counts.items()))
    print(
        f"kill-soak summary: seed={seed} rounds={soak.round} kills={soak.kills} "
        f"snapshots_taken={soak.snapshots_taken} snapshots_checked={soak.snapshots_checked} "
        f"bytes_verified={soak.bytes_verified} bytes_lost={soak.bytes_lost} ({counts}) "
        f"{'PASS' if ok else 'FAIL'} in {time.monotonic() - soak.t0:.1f} s",
        flush=True,
    )
    if ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not ok:
        print(f"kill-soak: work dir kept: {workdir}; rerun with --seed {seed}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
