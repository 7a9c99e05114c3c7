#!/usr/bin/env python3
"""Resync of a primary after a short outage against a full rebuild, on
`ilog_tgt` (1 reactor core): ilog0 on a malloc base with two malloc
primaries, one behind SPDK's error bdev. The primary fails (every I/O
injected to fail) while fio writes 1 % of the volume at random over NBD;
then `bdev_ilog_rebuild_primary` resyncs it, and then rebuilds it whole
(`full`). Prints the blocks each copied and how long each took (from the
call to the stats showing it healthy, polled every 10 ms over the socket).

Needs `cargo build --release -p ilog-tgt`, fio with its nbd engine and
spdk-rpc (`pip install spdk`). MALLOC_MIB (default 1024) sizes the base
and each primary.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TGT = os.path.join(REPO, "target", "release", "ilog_tgt")
MIB = int(os.environ.get("MALLOC_MIB", "1024"))


def rpc(sock, *args):
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "scripts"))
    out = subprocess.run(["spdk-rpc", "-s", sock, "--plugin", "rpc_ilog", *map(str, args)], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    return json.loads(out) if out.startswith(("{", "[")) else out


def call(sock, method, params):
    """One JSON-RPC call on a raw socket: polling through spdk-rpc would
    add a Python start-up (~0.1 s) to every poll."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock)
        s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode())
        data = b""
        while not data.endswith(b"\n"):
            data += s.recv(1 << 16)
    return json.loads(data)["result"]


def primary(sock, name):
    return next(p for p in call(sock, "bdev_ilog_get_stats", {"name": "ilog0"})["primaries"] if p["name"] == name)


def until_healthy(sock, name, start):
    """Seconds from `start` until primary `name` is healthy with nothing
    dirty."""
    while True:
        p = primary(sock, name)
        if p["state"] == "healthy" and p["dirty_blocks"] == 0:
            return time.monotonic() - start, p
        time.sleep(0.01)


def main():
    wd = tempfile.mkdtemp(prefix="ilog-resync-")
    sock = os.path.join(wd, "rpc.sock")
    tgt = subprocess.Popen([TGT, "-m", "0x1", "-r", sock, "-L", "warn"], stdin=subprocess.DEVNULL)
    try:
        while not os.path.exists(sock):
            time.sleep(0.05)
        for name in ("Malloc0", "Malloc1", "Malloc2"):
            rpc(sock, "bdev_malloc_create", "-b", name, MIB, 4096)
        rpc(sock, "bdev_error_create", "Malloc1")
        params = {"name": "ilog0", "base_bdev_name": "Malloc0", "primary_bdev_names": ["EE_Malloc1", "Malloc2"]}
        start = time.monotonic()
        call(sock, "bdev_ilog_create", params)
        first, _ = until_healthy(sock, "EE_Malloc1", start)
        volume = rpc(sock, "bdev_get_bdevs", "-b", "ilog0")[0]["num_blocks"]
        nbd = os.path.join(wd, "ilog0.nbd")
        rpc(sock, "nbd_start_disk", "ilog0", nbd)
        rpc(sock, "bdev_error_inject_error", "EE_Malloc1", "all", "failure", "-n", 1 << 30)
        changed = volume // 100 * 4096
        subprocess.run(["fio", "--name=outage", "--ioengine=nbd", f"--uri=nbd+unix:///?socket={nbd}",
                        "--rw=randwrite", "--bs=4k", "--iodepth=32", f"--io_size={changed}",
                        "--end_fsync=1", "--output-format=terse"], check=True, capture_output=True)
        assert primary(sock, "EE_Malloc1")["state"] == "degraded"
        rpc(sock, "bdev_error_inject_error", "EE_Malloc1", "clear", "failure")
        rebuild = {"name": "ilog0", "primary_bdev_name": "EE_Malloc1"}
        start = time.monotonic()
        call(sock, "bdev_ilog_rebuild_primary", rebuild)
        incremental, inc = until_healthy(sock, "EE_Malloc1", start)
        start = time.monotonic()
        call(sock, "bdev_ilog_rebuild_primary", {**rebuild, "full": True})
        full, whole = until_healthy(sock, "EE_Malloc1", start)
        print(f"volume {volume} blocks of 4096 (malloc base and primaries of {MIB} MiB), 1 reactor core")
        print(f"create and first sync: {first:.3f} s")
        print(f"resync after writing 1 % at random: {inc['rebuild_total_blocks']} blocks in {incremental:.3f} s")
        print(f"full rebuild: {whole['rebuild_total_blocks']} blocks in {full:.3f} s")
        print(f"resync / full rebuild: {incremental / full:.3f} of the time, "
              f"{inc['rebuild_total_blocks'] / whole['rebuild_total_blocks']:.3f} of the blocks")
    finally:
        tgt.terminate()
        tgt.wait()


if __name__ == "__main__":
    sys.exit(main())
