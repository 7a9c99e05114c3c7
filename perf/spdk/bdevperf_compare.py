#!/usr/bin/env python3
"""ilog vs SPDK's own vbdevs under bdevperf (1 core, 4 KiB, QD 32), on the
same malloc base, each bdev in its own bdevperf session, one run of this
script; prints the Markdown tables of perf/RESULTS.md.

Every session first writes the whole malloc base through a passthru (see
`session`), so that no run pays for first-touch page faults (no hugepages).

1. ilog vs bdev_passthru on the same base, in steady state: ilog on the
   default layout (its volume is over 80 % of the base), the whole bdev
   written first (1 MiB sequential writes), then SECONDS_PER_RUN (30) of
   randwrite over all of it (the log drains into the baseline all along),
   then as long of randread.
2. Snapshot under load: a 1 s randwrite warm-up at QD 1, a 1 s randwrite run
   (steady state), then a 1 s randwrite run with a snapshot taken 50 ms in
   (bdev_ilog_snapshot vs bdev_lvol_snapshot); IOPS and max latency of the
   second against the first: the first second after a snapshot is what
   the runs compare. The snapshot call goes over an open socket (see
   `call`), not through rpc.py. Twice: on the malloc base, and on an
   NVMe/TCP namespace that a second SPDK process (nvmf_tgt on the other
   core) exports from its malloc bdev over 127.0.0.1, attached with
   bdev_nvme_attach_controller.

`--ilog-only N` runs part 1 for ilog alone, N times, a line each: for
A/B runs of two builds of the library (ILOG_SPDK_LIB picks the one loaded).

`--primaries` runs part 1 for ilog alone, for ilog with two malloc
primaries the size of the base (bdev_ilog_create --primary-bdev-names),
their first sync done before the fill, and for ilog with two null
primaries, and prints the ratios. A malloc bdev copies each write with the
CPU, on the one core that runs everything, so two malloc primaries triple
the memory copies of a write; null primaries move no data, as a device
that DMAs costs the core nothing to move it, so their write ratio is the
engine's own cost of mirroring (their reads return no data and are not
compared).

Needs `cargo build --release -p ilog-spdk --features spdk`; SPDK_DIR (default /opt/spdk).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "spdk"))
from harness import BDEVPERF_PY, SPDK, App, env, kill_all, rpc, workdir, write_config  # noqa: E402

BDEVPERF = f"{SPDK}/build/examples/bdevperf"
NVMF_TGT = f"{SPDK}/build/bin/nvmf_tgt"
FAR_NQN = "nqn.2016-06.io.spdk:far"
MALLOC_MIB = int(os.environ.get("MALLOC_MIB", "4096"))
SNAPSHOT_MALLOC_MIB = int(os.environ.get("SNAPSHOT_MALLOC_MIB", "4096"))
TCP_MIB = int(os.environ.get("TCP_MIB", "4096"))
SECONDS = int(os.environ.get("SECONDS_PER_RUN", "30"))


def perform(sock, *args):
    p = subprocess.run(["python3", BDEVPERF_PY, "-s", sock, "-t", "300", "perform_tests", *map(str, args)],
                       env=env(preload=False), capture_output=True, text=True, check=True)
    r = json.loads(p.stdout)["results"][0]
    assert r["io_failed"] == 0, r
    return r


def malloc_base(mib):
    """A malloc base in the bdevperf process: (config, name, extra memory)."""
    return [{"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": mib * 256,
                                                       "block_size": 4096}}], "Malloc0", mib


def tcp_base():
    """The far process's malloc bdev over NVMe/TCP (see `far_target`)."""
    return [{"method": "bdev_nvme_attach_controller", "params": {
        "name": "Nvme0", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "4430",
        "subnqn": FAR_NQN}}], "Nvme0n1", 0


def far_target(wd, mib):
    """nvmf_tgt on core 1 exporting a `mib` MiB malloc bdev on 127.0.0.1:4430."""
    far = App(wd, NVMF_TGT, mem=mib + 1024, cores="0x2", preload=False, name="far")
    far.rpc("nvmf_create_transport", "-t", "TCP")
    far.rpc("bdev_malloc_create", "-b", "Malloc0", mib, 4096)
    far.rpc("nvmf_create_subsystem", FAR_NQN, "-a", "-s", "FAR001")
    far.rpc("nvmf_subsystem_add_ns", FAR_NQN, "Malloc0")
    far.rpc("nvmf_subsystem_add_listener", FAR_NQN, "-t", "tcp", "-a", "127.0.0.1", "-s", 4430)
    return far


def session(wd, name, target, setup, base):
    """bdevperf on a base whose memory is touched first: without
    hugepages, SPDK's memory is faulted in on first use, and a log-structured
    bdev writes fresh memory all the time. A passthru named `target` writes
    the whole base once, then gives way to the bdev under test (`setup`:
    rpc.py argument lists), which takes its name."""
    config, base_name, base_mib = base
    cfg = write_config(wd, f"{name}.json", [
        *config,
        {"method": "bdev_passthru_create", "params": {"name": target, "base_bdev_name": base_name}},
        {"method": "bdev_wait_for_examine"},
    ])
    app = App(wd, BDEVPERF, "-z", "--json", cfg, "-T", target, "-q", 32, "-o", 4096, "-w", "randread",
              "-t", SECONDS, mem=base_mib + 2048, name=name)
    fault_in = perform(app.sock, "-w", "write", "-o", 1 << 20, "-q", 4, "-t", 20)
    size_mib = rpc(app.sock, "bdev_get_bdevs", "-b", base_name)[0]["num_blocks"] * 4096 >> 20
    assert fault_in["mibps"] * 20 > size_mib * 1.1, f"fault-in pass too slow to cover the base: {fault_in}"
    rpc(app.sock, "bdev_passthru_delete", target)
    for args in setup:
        rpc(app.sock, *args)
    return app


def read_write(wd, name, target, setup, base=None):
    app = session(wd, name, target, setup, base or malloc_base(MALLOC_MIB))
    try:
        if name.startswith("ilog"):
            # Primaries start with a full sync: the runs start after it.
            deadline = time.time() + 600
            while any(p["state"] != "healthy" for p in rpc(app.sock, "bdev_ilog_get_stats", target)["primaries"]):
                assert time.time() < deadline, "the primaries' first sync did not end"
                time.sleep(0.5)
        # The whole bdev written first: a full disk, and reads that hit it.
        size_mib = rpc(app.sock, "bdev_get_bdevs", "-b", target)[0]["num_blocks"] * 4096 >> 20
        fill = perform(app.sock, "-w", "write", "-o", 1 << 20, "-q", 8, "-t", 30)
        assert fill["mibps"] * 30 > size_mib * 1.05, f"the fill did not cover {target}: {fill}"
        write = perform(app.sock, "-w", "randwrite", "-o", 4096, "-q", 32, "-t", SECONDS)
        read = perform(app.sock, "-w", "randread", "-o", 4096, "-q", 32, "-t", SECONDS)
        stats = rpc(app.sock, "bdev_ilog_get_stats", target) if name.startswith("ilog") else None
    finally:
        app.stop()
    return read, write, stats


def connect(sock_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    return s


def call(conn, method, params):
    """One JSON-RPC call on an open connection. The snapshot goes this way,
    not through rpc.py: starting rpc.py's Python costs about 0.25 s of CPU,
    which on a 2-vCPU machine the NVMe/TCP base's target and the kernel's
    TCP work lose (a no-op `bdev_get_bdevs` through rpc.py cost 12-18 % of
    the second's IOPS there)."""
    conn.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode())
    buf, decoder = b"", json.JSONDecoder()
    while True:
        chunk = conn.recv(65536)
        assert chunk, f"{method}: connection closed"
        buf += chunk
        try:
            reply, _ = decoder.raw_decode(buf.decode())
        except ValueError:
            continue
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply["result"]


def snapshot_under_load(wd, name, target, setup, snapshot, base):
    """`snapshot`: the (method, params) of the snapshot call."""
    app = session(wd, name, target, setup, base)
    try:
        # A first run warms the bdev up (first I/Os, first segments), so the
        # steady state's max latency is a steady one.
        perform(app.sock, "-w", "randwrite", "-o", 4096, "-q", 1, "-t", 1)
        steady = perform(app.sock, "-w", "randwrite", "-o", 4096, "-q", 32, "-t", 1)
        out = {}
        conn = connect(app.sock)
        t = threading.Thread(target=lambda: out.update(r=perform(app.sock, "-w", "randwrite", "-o", 4096, "-q", 32,
                                                                 "-t", 1)))
        t.start()
        time.sleep(0.05)
        start = time.monotonic()
        call(conn, *snapshot)
        took = time.monotonic() - start
        t.join()
        conn.close()
        moved = rpc(app.sock, "bdev_ilog_get_stats", target)["bytes_moved"] if name.startswith("ilog") else "-"
    finally:
        app.stop()
    return steady, out["r"], took, moved


def ilog_only(reps):
    wd = workdir()
    lib = os.environ.get("ILOG_SPDK_LIB", "target/release/libilog_spdk.so")
    setup = [["bdev_ilog_create", "-b", "Malloc0", "-p", "ilog0"]]
    try:
        for _ in range(reps):
            read, write, _ = read_write(wd, "ilog", "ilog0", setup)
            print(f"{lib}: randwrite {write['iops']:.0f} IOPS (max {write['max_latency_us']:.0f} us), "
                  f"randread {read['iops']:.0f} IOPS", flush=True)
    finally:
        kill_all()


def primaries():
    """ilog with no primaries against ilog with two malloc, and two null, primaries."""
    wd = workdir()
    config, base_name, mib = malloc_base(MALLOC_MIB)

    def with_primaries(method):
        return [*config, *[{"method": method, "params": {"name": f"P{i}", "num_blocks": MALLOC_MIB * 256,
                                                         "block_size": 4096}} for i in (1, 2)]]

    mirrored = ["bdev_ilog_create", "-b", base_name, "-p", "ilog0", "--primary-bdev-names", "P1 P2"]
    runs = {
        "none": ([["bdev_ilog_create", "-b", base_name, "-p", "ilog0"]], None),
        "2 malloc": ([mirrored], (with_primaries("bdev_malloc_create"), base_name, 3 * mib)),
        "2 null": ([mirrored], (with_primaries("bdev_null_create"), base_name, mib)),
    }
    try:
        res = {n: read_write(wd, "ilog", "ilog0", setup, base) for n, (setup, base) in runs.items()}
    finally:
        kill_all()
    print(f"malloc base {MALLOC_MIB} MiB, ilog written whole first; {SECONDS} s per run\n")
    print("| primaries | randread IOPS | randwrite IOPS | randread avg/max us | randwrite avg/max us | "
          "reads served by primaries |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n, (read, write, stats) in res.items():
        served = sum(p["reads"] for p in stats["primaries"])
        reads = (f"{read['iops']:.0f}", f"{read['avg_latency_us']:.1f}/{read['max_latency_us']:.0f}")
        if n == "2 null":
            reads = ("(no data)", "-")
        print(f"| {n} | {reads[0]} | {write['iops']:.0f} | {reads[1]} | "
              f"{write['avg_latency_us']:.1f}/{write['max_latency_us']:.0f} | {served} |")
    print()
    w0, r0 = res["none"][1]["iops"], res["none"][0]["iops"]
    print(f"2 malloc primaries / none: randwrite {res['2 malloc'][1]['iops'] / w0:.2f}x, "
          f"randread {res['2 malloc'][0]['iops'] / r0:.2f}x")
    print(f"2 null primaries / none: randwrite {res['2 null'][1]['iops'] / w0:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ilog-only", type=int, metavar="N", help="ilog's randwrite and randread alone, N times")
    parser.add_argument("--primaries", action="store_true", help="ilog with two malloc primaries against none")
    args = parser.parse_args()
    if args.ilog_only:
        return ilog_only(args.ilog_only)
    if args.primaries:
        return primaries()
    wd = workdir()

    def ilog(base):
        return [["bdev_ilog_create", "-b", base, "-p", "ilog0"]]

    pt = [["bdev_passthru_create", "-b", "Malloc0", "-p", "pt0"]]

    def lvol(base, base_mib):
        # Under half the base: after its snapshot, every cluster written is
        # a new one (copy on write), which the lvstore must have room for.
        return [["bdev_lvol_create_lvstore", base, "lvs0"], ["bdev_lvol_create", "-l", "lvs0", "lv0", base_mib * 4 // 10]]

    try:
        res = {n: read_write(wd, n, t, c) for n, t, c in (("passthru", "pt0", pt), ("ilog", "ilog0", ilog("Malloc0")))}
        print(f"malloc base {MALLOC_MIB} MiB, each bdev written whole first; {SECONDS} s per run\n")
        print("| bdev | randread IOPS | randwrite IOPS | randread avg/max us | randwrite avg/max us |")
        print("| --- | --- | --- | --- | --- |")
        for n, (read, write, _) in res.items():
            print(f"| {n} | {read['iops']:.0f} | {write['iops']:.0f} | "
                  f"{read['avg_latency_us']:.1f}/{read['max_latency_us']:.0f} | "
                  f"{write['avg_latency_us']:.1f}/{write['max_latency_us']:.0f} |")
        print()
        rr = res["ilog"][0]["iops"] / res["passthru"][0]["iops"]
        rw = res["ilog"][1]["iops"] / res["passthru"][1]["iops"]
        stats = res["ilog"][2]
        print(f"ilog/passthru: randread {rr:.2f}x, randwrite {rw:.2f}x; ilog volume "
              f"{stats['volume_blocks'] * 4096 >> 20} MiB, write amplification {stats['write_amplification']:.2f}, "
              f"{stats['drains']} drains")
        print()

        for base_name, mib in (("malloc", SNAPSHOT_MALLOC_MIB), ("NVMe/TCP", TCP_MIB)):
            far = far_target(wd, mib) if base_name == "NVMe/TCP" else None
            base = tcp_base() if far else malloc_base(mib)
            try:
                snaps = {
                    "ilog": snapshot_under_load(wd, "ilog-snap", "ilog0", ilog(base[1]),
                                                ("bdev_ilog_snapshot", {"name": "ilog0", "snapshot_name": "s1"}),
                                                base),
                    "lvol": snapshot_under_load(wd, "lvol-snap", "lvs0/lv0", lvol(base[1], mib),
                                                ("bdev_lvol_snapshot",
                                                 {"lvol_name": "lvs0/lv0", "snapshot_name": "snap0"}), base),
                }
            finally:
                if far:
                    far.stop()
            print(f"Snapshot under load, {base_name} base of {mib} MiB:\n")
            print("| bdev | steady IOPS | steady max us | first second after snapshot IOPS | max us | IOPS ratio | "
                  "max latency ratio | snapshot RPC s | bytes moved by compaction |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for n, (steady, after, took, moved) in snaps.items():
                print(f"| {n} | {steady['iops']:.0f} | {steady['max_latency_us']:.0f} | {after['iops']:.0f} | "
                      f"{after['max_latency_us']:.0f} | {after['iops'] / steady['iops']:.2f} | "
                      f"{after['max_latency_us'] / steady['max_latency_us']:.2f} | {took:.2f} | {moved} |")
            print()
    finally:
        kill_all()


if __name__ == "__main__":
    main()
