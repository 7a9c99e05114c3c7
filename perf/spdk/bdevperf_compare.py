#!/usr/bin/env python3
"""ilog vs SPDK's own vbdevs under bdevperf (1 core, 4 KiB, QD 32), on the
same malloc base, all in one session; prints a Markdown table for
perf/RESULTS.md.

1. ilog vs bdev_passthru: randread (after a sequential pass writes the whole
   volume, so that reads hit the base) and randwrite.
2. Snapshot under load: a 1 s randwrite run, then a 1 s randwrite run with a
   snapshot taken 50 ms in (bdev_ilog_snapshot / bdev_lvol_snapshot); IOPS
   and max latency of the second against the first.

Needs `cargo build --release --features spdk`; SPDK_DIR (default /opt/spdk).
"""

import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "spdk"))
from harness import BDEVPERF_PY, SPDK, App, env, kill_all, rpc, workdir, write_config  # noqa: E402

BDEVPERF = f"{SPDK}/build/examples/bdevperf"
MALLOC_MIB = int(os.environ.get("MALLOC_MIB", "6144"))
SECONDS = int(os.environ.get("SECONDS_PER_RUN", "2"))


def perform(sock, *args):
    p = subprocess.run(["python3", BDEVPERF_PY, "-s", sock, "-t", "300", "perform_tests", *map(str, args)],
                       env=env(preload=False), capture_output=True, text=True, check=True)
    r = json.loads(p.stdout)["results"][0]
    assert r["io_failed"] == 0, r
    return r


def session(wd, name, config, target):
    cfg = write_config(wd, f"{name}.json", [
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": MALLOC_MIB * 256, "block_size": 4096}},
        *config,
        {"method": "bdev_wait_for_examine"},
    ])
    return App(wd, BDEVPERF, "-z", "--json", cfg, "-T", target, "-q", 32, "-o", 4096, "-w", "randread",
               "-t", SECONDS, mem=MALLOC_MIB + 2048, name=name)


def read_write(wd, name, config, target):
    app = session(wd, name, config, target)
    try:
        # One second of 128 KiB sequential writes covers the ilog volume (10 % of
        # the base) at least twice; longer would eat the log randwrite needs.
        fill = perform(app.sock, "-w", "write", "-o", 131072, "-q", 8, "-t", 1)
        read = perform(app.sock, "-w", "randread", "-o", 4096, "-q", 32, "-t", SECONDS)
        write = perform(app.sock, "-w", "randwrite", "-o", 4096, "-q", 32, "-t", SECONDS)
    finally:
        app.stop()
    return fill, read, write


def snapshot_under_load(wd, name, config, target, snapshot_args):
    app = session(wd, name, config, target)
    try:
        perform(app.sock, "-w", "randwrite", "-o", 4096, "-q", 32, "-t", 1)  # warm up
        steady = perform(app.sock, "-w", "randwrite", "-o", 4096, "-q", 32, "-t", 1)
        out = {}
        t = threading.Thread(target=lambda: out.update(r=perform(app.sock, "-w", "randwrite", "-o", 4096, "-q", 32,
                                                                 "-t", 1)))
        t.start()
        time.sleep(0.05)
        snap = rpc(app.sock, *snapshot_args)
        t.join()
    finally:
        app.stop()
    return steady, out["r"], snap


def main():
    wd = workdir()
    log_percent = 90
    ilog = [{"method": "bdev_ilog_create",
             "params": {"name": "ilog0", "base_bdev_name": "Malloc0", "log_percent": log_percent}}]
    pt = [{"method": "bdev_passthru_create", "params": {"name": "pt0", "base_bdev_name": "Malloc0"}}]
    # The same base cut to ilog's volume size: passthru over the same working
    # set (with 4 KiB pages, random access over 6 GiB is TLB-bound).
    pt_split = [{"method": "bdev_split_create", "params": {"base_bdev": "Malloc0", "split_count": 100 // (100 - log_percent)}},
                {"method": "bdev_passthru_create", "params": {"name": "pt0", "base_bdev_name": "Malloc0p0"}}]
    lvol = [{"method": "bdev_lvol_create_lvstore", "params": {"bdev_name": "Malloc0", "lvs_name": "lvs0"}},
            {"method": "bdev_lvol_create", "params": {"lvol_name": "lv0", "size_in_mib": MALLOC_MIB * (100 - log_percent) // 100,
                                                        "lvs_name": "lvs0", "thin_provision": False}}]
    rows = []
    try:
        res = {n: read_write(wd, n, c, t)
               for n, c, t in (("passthru", pt, "pt0"), ("passthru-split", pt_split, "pt0"), ("ilog", ilog, "ilog0"))}
        print("| bdev | fill MiB/s | randread IOPS | randwrite IOPS | randread avg/max us | randwrite avg/max us |")
        print("| --- | --- | --- | --- | --- | --- |")
        for n, (fill, read, write) in res.items():
            print(f"| {n} | {fill['mibps']:.0f} | {read['iops']:.0f} | {write['iops']:.0f} | "
                  f"{read['avg_latency_us']:.1f}/{read['max_latency_us']:.0f} | "
                  f"{write['avg_latency_us']:.1f}/{write['max_latency_us']:.0f} |")
        print()
        for base in ("passthru", "passthru-split"):
            rr = res["ilog"][1]["iops"] / res[base][1]["iops"]
            rw = res["ilog"][2]["iops"] / res[base][2]["iops"]
            print(f"ilog/{base}: randread {rr:.2f}x (target >= 0.80), randwrite {rw:.2f}x (target >= 0.85)")
        print()

        snaps = {
            "ilog": snapshot_under_load(wd, "ilog-snap", ilog, "ilog0", ["bdev_ilog_snapshot", "ilog0", "-n", "s1"]),
            "lvol": snapshot_under_load(wd, "lvol-snap", lvol, "lvs0/lv0", ["bdev_lvol_snapshot", "lvs0/lv0", "snap0"]),
        }
        print("| bdev | steady IOPS | steady max us | first second after snapshot IOPS | max us | IOPS ratio | max latency ratio |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for n, (steady, after, _) in snaps.items():
            rows.append((n, after["iops"] / steady["iops"], after["max_latency_us"] / steady["max_latency_us"]))
            print(f"| {n} | {steady['iops']:.0f} | {steady['max_latency_us']:.0f} | {after['iops']:.0f} | "
                  f"{after['max_latency_us']:.0f} | {rows[-1][1]:.2f} | {rows[-1][2]:.2f} |")
    finally:
        kill_all()


if __name__ == "__main__":
    main()
