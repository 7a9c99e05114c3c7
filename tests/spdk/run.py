#!/usr/bin/env python3
"""SPDK integration tests for libilog_spdk.so in stock SPDK apps.

Run by ci/run when an SPDK build is found (SPDK_DIR, default /opt/spdk);
needs `cargo build --release -p ilog-spdk --features spdk` first. Each test starts its
own apps; `run.py NAME...` runs only those tests.
"""

import base64
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BDEVPERF_PY, REPO, SPDK, App, RpcError, bdevperf_total, env, expect_error, kill_all, run_app, workdir, write_config  # noqa: E402

SPDK_TGT = f"{SPDK}/build/bin/spdk_tgt"
NVMF_TGT = f"{SPDK}/build/bin/nvmf_tgt"
SPDK_DD = f"{SPDK}/build/bin/spdk_dd"
BDEVPERF = f"{SPDK}/build/examples/bdevperf"

ENODEV, EBUSY, EEXIST, ENOENT, EINVAL = -19, -16, -17, -2, -22


def aio_config(path, extra=()):
    return [
        {"method": "bdev_aio_create", "params": {"name": "Aio0", "filename": path, "block_size": 4096}},
        {"method": "bdev_ilog_create", "params": {"name": "ilog0", "base_bdev_name": "Aio0"}},
        *extra,
        {"method": "bdev_wait_for_examine"},
    ]


def dd_read(wd, cfg, bdev, out, count=None):
    args = ["--json", cfg, "--ib", bdev, "--of", out, "--bs", 65536, "--qd", 8]
    if count is not None:
        args += ["--count", count]
    run_app(wd, SPDK_DD, *args, name="dd")


def dd_write(wd, cfg, src, bdev):
    run_app(wd, SPDK_DD, "--json", cfg, "--if", src, "--ob", bdev, "--bs", 65536, "--qd", 8, name="dd")


def same(a, b):
    return filecmp.cmp(a, b, shallow=False)


def wait_until(what, check, timeout=20):
    """Polls `check` until it returns something true; returns that."""
    deadline = time.time() + timeout
    while True:
        got = check()
        if got or time.time() > deadline:
            assert got, f"timed out waiting for {what}"
            return got
        time.sleep(0.2)


def run_job(app, *args):
    """Starts a background job (a copy, a restore) with `args` and waits
    for it to end; asserts it is done and returns its job object."""
    job = app.rpc(*args)["job"]

    def ended():
        state = next(j for j in app.rpc("bdev_ilog_get_jobs") if j["job"] == job)
        return state if state["state"] != "running" else None
    done = wait_until(f"job {job}", ended, timeout=120)
    assert done["state"] == "done", done
    return done


def test_snapshots_under_verify_and_reload():
    """bdevperf verify (unique data per write) on ilog while snapshots are
    taken; every snapshot is
    read back (in later processes, after re-opening the base) and compared:
    with the image at a quiescent point, with known data written by spdk_dd,
    and with its own earlier reads. save_config then brings it all back."""
    wd = workdir()
    base = os.path.join(wd, "base.img")
    with open(base, "wb") as f:
        f.truncate(1 << 30)
    cfg = write_config(wd, "aio.json", aio_config(base))

    perf = App(wd, BDEVPERF, "-z", "--json", cfg, "-q", 32, "-o", 4096, "-w", "verify", "-t", 3, "-U",
                name="bdevperf")
    # Every write after the first snapshot is a version the log keeps (the
    # baseline holds the oldest volume): SPDK's QoS bounds them to what the
    # default log share holds, whatever this machine's speed.
    perf.rpc("bdev_set_qos_limit", "ilog0", "--w-mbytes-per-sec", "64")
    run = subprocess.Popen(["python3", BDEVPERF_PY, "-s", perf.sock, "-t", "120", "perform_tests"],
                           env=env(preload=False), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    snaps = []
    for name in ("mid1", "mid2"):
        r = perf.rpc("bdev_ilog_snapshot", "ilog0", "-n", name)
        assert r == {"volume_id": name, "bdev": f"ilog0@{name}"}, r
        snaps.append(name)
        time.sleep(0.7)
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 0, f"perform_tests failed:\n{out}\n{perf.tail()}"
    results = json.loads(out)["results"]
    assert results and all(r["status"] == "finished" and r["io_failed"] == 0 and r["iops"] > 0 for r in results), out
    perf.rpc("bdev_ilog_snapshot", "ilog0", "-n", "after")
    vols = [v["volume_id"] for v in perf.rpc("bdev_ilog_get_volumes", "ilog0")]
    assert vols == ["mid1", "mid2", "after"], vols
    perf.stop()

    # Re-open in another process: the image at the last snapshot is the current one.
    files = {}
    for bdev in ("ilog0", "ilog0@mid1", "ilog0@mid2", "ilog0@after"):
        files[bdev] = os.path.join(wd, bdev.replace("@", "_") + ".1")
        dd_read(wd, cfg, bdev, files[bdev])
        assert os.path.getsize(files[bdev]) == os.path.getsize(files["ilog0"])
    assert same(files["ilog0"], files["ilog0@after"]), "ilog0@after differs from the image it was taken of"
    assert not same(files["ilog0@mid1"], files["ilog0@after"]), "verify kept writing after mid1, yet no change"

    # Known data: snapshot it, overwrite it, read both versions back.
    known, newer = os.path.join(wd, "known.bin"), os.path.join(wd, "newer.bin")
    for path in (known, newer):
        with open(path, "wb") as f:
            f.write(os.urandom(4 << 20))
    dd_write(wd, cfg, known, "ilog0")
    tgt = App(wd, SPDK_TGT, "--json", cfg, name="tgt")
    tgt.rpc("bdev_ilog_snapshot", "ilog0", "-n", "known")
    saved = os.path.join(wd, "saved.json")
    with open(saved, "w") as f:
        f.write(subprocess.run(["python3", f"{SPDK}/scripts/rpc.py", "-s", tgt.sock, "save_config"],
                               env=env(preload=False), capture_output=True, text=True, check=True).stdout)
    tgt.stop()
    dd_write(wd, cfg, newer, "ilog0")
    got = os.path.join(wd, "got.bin")
    dd_read(wd, cfg, "ilog0@known", got, count=64)
    assert same(got, known), "ilog0@known does not hold the data written before it"
    dd_read(wd, cfg, "ilog0", got, count=64)
    assert same(got, newer), "ilog0 does not hold the data written last"
    for bdev in ("ilog0@mid1", "ilog0@mid2", "ilog0@after"):
        again = files[bdev][:-2] + ".2"
        dd_read(wd, cfg, bdev, again)
        assert same(files[bdev], again), f"{bdev} changed after later writes and restarts"

    # save_config round trip: --json with the saved config brings the volumes back.
    tgt = App(wd, SPDK_TGT, "--json", saved, name="tgt2")
    names = {b["name"] for b in tgt.rpc("bdev_get_bdevs")}
    want = {"ilog0", "ilog0@mid1", "ilog0@mid2", "ilog0@after", "ilog0@known"}
    assert want <= names, f"after reload: {names}"
    ilog = tgt.rpc("bdev_ilog_get_bdevs", "-b", "ilog0")
    assert [v["volume_id"] for v in ilog[0]["volumes"]] == ["mid1", "mid2", "after", "known"], ilog
    tgt.stop()


def test_bad_rpc_input_keeps_the_app_running():
    """Unknown base, claimed base, duplicate name, deleting open bdevs: errors,
    and the app goes on serving."""
    wd = workdir()
    tgt = App(wd, SPDK_TGT, name="tgt")
    try:
        tgt.rpc("bdev_malloc_create", "-b", "Malloc0", 64, 4096)
        tgt.rpc("bdev_malloc_create", "-b", "Malloc1", 64, 4096)
        expect_error(ENODEV, tgt.sock, "bdev_ilog_create", "-b", "NoSuchBdev", "-p", "ilog0")
        assert tgt.rpc("bdev_ilog_create", "-b", "Malloc0", "-p", "ilog0") == "ilog0"
        expect_error(EBUSY, tgt.sock, "bdev_ilog_create", "-b", "Malloc0", "-p", "ilog1")
        expect_error(EEXIST, tgt.sock, "bdev_ilog_create", "-b", "Malloc1", "-p", "ilog0")
        expect_error(EEXIST, tgt.sock, "bdev_ilog_create", "-b", "Malloc1", "-p", "Malloc0")
        expect_error(-32602, tgt.sock, "bdev_ilog_snapshot", "")
        expect_error(ENODEV, tgt.sock, "bdev_ilog_snapshot", "nope")
        tgt.rpc("bdev_ilog_snapshot", "ilog0", "-n", "s1")
        expect_error(EEXIST, tgt.sock, "bdev_ilog_snapshot", "ilog0", "-n", "s1")
        expect_error(ENOENT, tgt.sock, "bdev_ilog_delete_volume", "ilog0", "nope")
        # An open descriptor (a passthru bdev on top) blocks deletion.
        tgt.rpc("bdev_passthru_create", "-b", "ilog0", "-p", "pt0")
        expect_error(EBUSY, tgt.sock, "bdev_ilog_delete", "ilog0")
        tgt.rpc("bdev_passthru_create", "-b", "ilog0@s1", "-p", "pt1")
        expect_error(EBUSY, tgt.sock, "bdev_ilog_delete_volume", "ilog0", "s1")
        tgt.rpc("bdev_passthru_delete", "pt0")
        expect_error(EBUSY, tgt.sock, "bdev_ilog_delete", "ilog0")
        tgt.rpc("bdev_passthru_delete", "pt1")
        # PyPI's client (scripts/install-deps.sh installs it) takes the same plugin.
        spdk_rpc = shutil.which("spdk-rpc")
        if spdk_rpc:
            pypi_env = dict(env(preload=False), PYTHONPATH=os.path.join(REPO, "scripts"))  # not SPDK's own python/
            p = subprocess.run([spdk_rpc, "-s", tgt.sock, "--plugin", "rpc_ilog", "bdev_ilog_get_volumes", "ilog0"],
                               env=pypi_env, capture_output=True, text=True, timeout=60)
            assert p.returncode == 0 and json.loads(p.stdout)[0]["bdev"] == "ilog0@s1", p.stdout + p.stderr
        else:
            print("note: spdk-rpc (PyPI) not installed: checked with SPDK's rpc.py only")
        stats = tgt.rpc("bdev_ilog_get_stats", "ilog0")
        assert stats["volumes"] == 1 and stats["block_size"] == 4096, stats
        log = tgt.rpc("bdev_ilog_log_read", "ilog0", "-n", 16)
        assert "entries" in log and "next_cursor" in log, log
        r = tgt.rpc("bdev_ilog_delete_volume", "ilog0", "s1")
        assert r is None, r  # rpc.py prints nothing for a successful delete
        names = {b["name"] for b in tgt.rpc("bdev_get_bdevs")}
        assert "ilog0@s1" not in names, names
        r = tgt.rpc("bdev_ilog_delete", "ilog0")
        assert r is None, r  # rpc.py prints nothing for a successful delete
        expect_error(ENODEV, tgt.sock, "bdev_ilog_delete", "ilog0")
        # The base is free again, and re-opens with its contents.
        assert tgt.rpc("bdev_ilog_create", "-b", "Malloc0", "-p", "ilog0") == "ilog0"
        tgt.rpc("bdev_ilog_snapshot", "ilog0", "-n", "s2")
        # Hot-remove of the base: ilog and its volumes go away cleanly.
        tgt.rpc("bdev_malloc_delete", "Malloc0")
        deadline = time.time() + 10
        while time.time() < deadline:
            names = {b["name"] for b in tgt.rpc("bdev_get_bdevs")}
            if not names & {"ilog0", "ilog0@s2", "Malloc0"}:
                break
            time.sleep(0.2)
        assert not names & {"ilog0", "ilog0@s2", "Malloc0"}, names
        r = tgt.rpc("bdev_ilog_get_bdevs")
        assert r == [], r
        assert tgt.alive()
        tgt.rpc("spdk_get_version")
    except BaseException:
        print(tgt.tail(), file=sys.stderr)
        tgt.kill()
        raise
    tgt.stop()


def test_nvme_tcp_base_and_export():
    """ilog on an NVMe/TCP namespace (exported by a second SPDK process from
    a malloc bdev), itself exported over NVMe/TCP and verified by bdevperf
    through SPDK's NVMe/TCP initiator; compaction moves whole entries with
    NVMe Copy commands (the far target offers Simple Copy) and changes no
    data."""
    wd = workdir()
    far = App(wd, NVMF_TGT, preload=False, name="far")
    near = None
    try:
        far.rpc("nvmf_create_transport", "-t", "TCP")
        far.rpc("bdev_malloc_create", "-b", "Malloc0", 256, 4096)
        far.rpc("nvmf_create_subsystem", "nqn.2016-06.io.spdk:far", "-a", "-s", "FAR001")
        far.rpc("nvmf_subsystem_add_ns", "nqn.2016-06.io.spdk:far", "Malloc0")
        far.rpc("nvmf_subsystem_add_listener", "nqn.2016-06.io.spdk:far", "-t", "tcp", "-a", "127.0.0.1", "-s", 4430)

        near = App(wd, SPDK_TGT, name="near")
        near.rpc("bdev_nvme_attach_controller", "-b", "Nvme0", "-t", "tcp", "-a", "127.0.0.1", "-s", 4430, "-f", "ipv4",
                 "-n", "nqn.2016-06.io.spdk:far")
        assert near.rpc("bdev_ilog_create", "-b", "Nvme0n1", "-p", "ilog0", "--log-percent", 80) == "ilog0"
        near.rpc("nvmf_create_transport", "-t", "TCP")
        near.rpc("nvmf_create_subsystem", "nqn.2016-06.io.spdk:ilog", "-a", "-s", "ILOG001")
        near.rpc("nvmf_subsystem_add_ns", "nqn.2016-06.io.spdk:ilog", "ilog0")
        near.rpc("nvmf_subsystem_add_listener", "nqn.2016-06.io.spdk:ilog", "-t", "tcp", "-a", "127.0.0.1", "-s", 4431)

        initiator = write_config(wd, "initiator.json", [
            {"method": "bdev_nvme_attach_controller", "params": {
                "name": "Ilog", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "4431",
                "subnqn": "nqn.2016-06.io.spdk:ilog"}},
            {"method": "bdev_wait_for_examine"},
        ])
        out = run_app(wd, BDEVPERF, "--json", initiator, "-q", 16, "-o", 4096, "-w", "verify", "-t", 2,
                      name="initiator")
        iops, fails = bdevperf_total(out)
        assert iops > 0 and fails == 0.0, out[-2000:]
        # The volume is in use by the export: deleting ilog0 must be refused.
        expect_error(EBUSY, near.sock, "bdev_ilog_delete", "ilog0")
        near.rpc("bdev_ilog_snapshot", "ilog0", "-n", "over-tcp")
        run_app(wd, BDEVPERF, "--json", initiator, "-q", 16, "-o", 4096, "-w", "randwrite", "-t", 1,
                name="initiator")
        before, after = os.path.join(wd, "before.bin"), os.path.join(wd, "after.bin")
        dd_read(wd, initiator, "Ilogn1", before)
        assert near.rpc("bdev_ilog_compact", "ilog0") is True
        stats = near.rpc("bdev_ilog_get_stats", "ilog0")
        assert 0 < stats["bytes_copied"] <= stats["bytes_moved"], stats
        dd_read(wd, initiator, "Ilogn1", after)
        assert same(before, after), "compaction changed ilog0"
        near.stop()
        near = None
        far.stop()
        far = None
    finally:
        for app in (near, far):
            if app is not None:
                print(app.tail(), file=sys.stderr)
                app.kill()


def test_two_cores_split_forward_and_complete_on_the_submitter():
    """Two cores, both submitting (-C), stripes of 8 KiB and I/Os of 32 KiB:
    every I/O is split across both shards, pieces are forwarded between the
    shard threads, and each completes on the thread that submitted it."""
    wd = workdir()
    cfg = write_config(wd, "two.json", [
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 524288, "block_size": 4096}},
        {"method": "bdev_ilog_create",
         "params": {"name": "ilog0", "base_bdev_name": "Malloc0", "stripe_size_kib": 8}},
        {"method": "bdev_wait_for_examine"},
    ])
    out = run_app(wd, BDEVPERF, "--json", cfg, "-T", "ilog0", "-C", "-q", 8, "-o", 32768, "-w", "verify", "-t", 1,
                  "-U", mem=3072, cores="0x3", name="two")
    iops, fails = bdevperf_total(out)
    assert iops > 0 and fails == 0.0, out[-3000:]
    assert "ilog: 2 shard reactor threads" in out, out[-3000:]


def test_verify_over_the_whole_bdev_on_the_defaults():
    """bdevperf verify over the whole ilog bdev on a malloc base, with the
    default layout (the volume is over 80 % of the base), long enough to
    write the volume several times: the log drains into the baseline, and
    no I/O fails."""
    wd = workdir()
    cfg = write_config(wd, "whole.json", [
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 131072, "block_size": 4096}},
        {"method": "bdev_ilog_create", "params": {"name": "ilog0", "base_bdev_name": "Malloc0"}},
        {"method": "bdev_wait_for_examine"},
    ])
    perf = App(wd, BDEVPERF, "-z", "--json", cfg, "-T", "ilog0", "-q", 32, "-o", 4096, "-w", "verify", "-t", 10,
               mem=2048, name="whole")
    info = perf.rpc("bdev_get_bdevs", "-b", "ilog0")[0]
    assert info["num_blocks"] * 100 >= 131072 * 80, f"the volume is under 80 % of the base: {info['num_blocks']}"
    run = subprocess.run(["python3", BDEVPERF_PY, "-s", perf.sock, "-t", "120", "perform_tests"],
                         env=env(preload=False), capture_output=True, text=True, timeout=150)
    assert run.returncode == 0, f"perform_tests failed:\n{run.stdout}{run.stderr}\n{perf.tail()}"
    results = json.loads(run.stdout)["results"]
    assert results and all(r["status"] == "finished" and r["io_failed"] == 0 for r in results), run.stdout
    stats = perf.rpc("bdev_ilog_get_stats", "ilog0")
    written = stats["user_bytes_written"]
    assert written >= 2 * info["num_blocks"] * 4096, f"the volume was not written twice over: {stats}"
    assert stats["drains"] > 0, f"the log never drained: {stats}"
    perf.stop()


def test_unmap_and_write_zeroes_storms_never_fill_the_log():
    """bdevperf unmap, then write_zeroes, at depth 32 over a small bdev with
    most of the base given to the log: trim records that newer ones
    supersede are garbage the drain and compaction reclaim, so no I/O
    fails and the log does not stay full."""
    wd = workdir()
    cfg = write_config(wd, "trim.json", [
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 65536, "block_size": 4096}},
        {"method": "bdev_ilog_create", "params": {"name": "ilog0", "base_bdev_name": "Malloc0", "log_percent": 90}},
        {"method": "bdev_wait_for_examine"},
    ])
    perf = App(wd, BDEVPERF, "-z", "--json", cfg, "-T", "ilog0", "-q", 32, "-o", 4096, "-w", "unmap", "-t", 5,
               mem=1024, name="trim")
    for workload in ("unmap", "write_zeroes"):
        run = subprocess.run(["python3", BDEVPERF_PY, "-s", perf.sock, "-t", "60", "perform_tests",
                              "-w", workload, "-q", "32", "-o", "4096", "-t", "5"],
                             env=env(preload=False), capture_output=True, text=True, timeout=90)
        assert run.returncode == 0, f"{workload}: perform_tests failed:\n{run.stdout}{run.stderr}\n{perf.tail()}"
        results = json.loads(run.stdout)["results"]
        assert results and all(r["status"] == "finished" and r["io_failed"] == 0 for r in results), run.stdout
    stats = perf.rpc("bdev_ilog_get_stats", "ilog0")
    assert stats["segments_free"] > 0, f"the log stayed full of trim records: {stats}"
    perf.stop()


def test_a_reset_reaches_the_base_and_frees_a_stuck_write():
    """ilog over an error bdev that holds one write pending, under bdevperf's
    reset workload (a reset every 10 s): the reset must reach the base,
    which fails the held write, so the reset completes and the run ends, as
    a passthru's does. A reset that only flushed would wait on the held
    write for ever."""
    wd = workdir()
    cfg = write_config(wd, "reset.json", [
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 65536, "block_size": 4096}},
        {"method": "bdev_error_create", "params": {"base_name": "Malloc0"}},
        {"method": "bdev_ilog_create", "params": {"name": "ilog0", "base_bdev_name": "EE_Malloc0"}},
        {"method": "bdev_wait_for_examine"},
    ])
    perf = App(wd, BDEVPERF, "-z", "--json", cfg, "-T", "ilog0", "-q", 32, "-o", 4096, "-w", "reset", "-t", 12,
               mem=1024, name="reset")
    perf.rpc("bdev_error_inject_error", "EE_Malloc0", "write", "pending", "-n", 1)
    run = subprocess.run(["python3", BDEVPERF_PY, "-s", perf.sock, "-t", "60", "perform_tests"],
                         env=env(preload=False), capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, f"perform_tests failed:\n{run.stdout}{run.stderr}\n{perf.tail()}"
    results = json.loads(run.stdout)["results"]
    assert results and all(r["status"] == "finished" for r in results), run.stdout
    assert "Reset blockdev=ilog0 failed" not in perf.tail(200), perf.tail()
    perf.stop()


def test_log_read_with_data_is_bounded_in_bytes():
    """1 MiB writes after a snapshot (so the drain keeps them in the log),
    then a log read of 4096 entries with data: the reply carries at most
    1 MiB of data (one entry here), says so, and the next batch goes on from
    its cursor."""
    wd = workdir()
    cfg = write_config(wd, "logread.json", [
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 131072, "block_size": 4096}},
        {"method": "bdev_ilog_create", "params": {"name": "ilog0", "base_bdev_name": "Malloc0", "log_percent": 90}},
        {"method": "bdev_wait_for_examine"},
    ])
    perf = App(wd, BDEVPERF, "-z", "--json", cfg, "-T", "ilog0", "-q", 1, "-o", 1 << 20, "-w", "write", "-t", 1,
               mem=2048, name="logread")
    perf.rpc("bdev_ilog_snapshot", "ilog0")
    run = subprocess.run(["python3", BDEVPERF_PY, "-s", perf.sock, "-t", "60", "perform_tests"],
                         env=env(preload=False), capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, f"perform_tests failed:\n{run.stdout}{run.stderr}\n{perf.tail()}"
    first = perf.rpc("bdev_ilog_log_read", "ilog0", "-n", 4096, "--with-data")
    data = sum(len(base64.b64decode(e["data"])) for e in first["entries"] if "data" in e)
    assert first["bytes_limited"] and 0 < data <= 1 << 20 < data + (1 << 20), (len(first["entries"]), data)
    second = perf.rpc("bdev_ilog_log_read", "ilog0", "-c", first["next_cursor"], "-n", 1)
    assert second["entries"] and second["entries"][0]["sequence"] >= first["next_cursor"], second
    perf.stop()


def test_delete_right_after_create_on_two_cores_succeeds():
    """SPDK's examine opens a new bdev for a moment (its reads run on the
    other core too): a delete issued right after the create, on the same
    connection as a script would, waits for it instead of answering that the
    bdev is open."""
    from spdk.rpc.client import JSONRPCClient, JSONRPCException
    wd = workdir()
    tgt = App(wd, SPDK_TGT, mem=2048, cores="0x3", name="cycle")
    client = JSONRPCClient(tgt.sock, timeout=60)
    client.call("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 65536, "block_size": 4096})
    failed = []
    for i in range(40):
        client.call("bdev_ilog_create", {"name": "ilog0", "base_bdev_name": "Malloc0"})
        try:
            client.call("bdev_ilog_delete", {"name": "ilog0"})
        except JSONRPCException as e:
            failed.append(i)
            wait_until("the delete to go through", lambda: try_call(client, "bdev_ilog_delete", {"name": "ilog0"}))
            last = str(e)
    assert not failed, f"deletes right after create failed in rounds {failed}: {last}"
    tgt.stop()


def try_call(client, method, params):
    """Whether `method` succeeded."""
    from spdk.rpc.client import JSONRPCException
    try:
        client.call(method, params)
        return True
    except JSONRPCException:
        return False


def test_a_volume_named_like_another_bdev_is_refused_or_not_exported():
    """With a malloc bdev named `ilog0@snap-1`: a snapshot asked for by that
    name is refused before it seals (-17); the generated id `snap-1` is
    taken, but its volume reports no bdev rather than the malloc."""
    wd = workdir()
    tgt = App(wd, SPDK_TGT, mem=2048, name="clash")
    tgt.rpc("bdev_malloc_create", "-b", "Malloc0", 256, 4096)
    tgt.rpc("bdev_malloc_create", "-b", "ilog0@snap-1", 8, 4096)
    tgt.rpc("bdev_ilog_create", "-b", "Malloc0", "-p", "ilog0")
    expect_error(EEXIST, tgt.sock, "bdev_ilog_snapshot", "ilog0", "-n", "snap-1")
    assert tgt.rpc("bdev_ilog_get_volumes", "ilog0") == [], "the refused snapshot sealed a volume"
    made = tgt.rpc("bdev_ilog_snapshot", "ilog0")
    assert made == {"volume_id": "snap-1", "bdev": None}, made
    volumes = tgt.rpc("bdev_ilog_get_volumes", "ilog0")
    assert [(v["volume_id"], v["bdev"]) for v in volumes] == [("snap-1", None)], volumes
    assert tgt.rpc("bdev_get_bdevs", "-b", "ilog0@snap-1")[0]["product_name"] == "Malloc disk"
    tgt.stop()


def test_policies_and_compaction_keep_volume_bdevs_in_step():
    """bdev_ilog_set_policy/get_policy/event/compact in spdk_tgt, with data
    written and read over NVMe/TCP by spdk_dd while it runs: the volume
    bdevs follow what the policy does (a named event's snapshot appears,
    retention and baseline folds make old ones disappear, one of them while
    exported), and compaction in place and into the baseline, synchronous
    and in the background, keeps every surviving view's data."""
    wd = workdir()
    base = os.path.join(wd, "base.img")
    with open(base, "wb") as f:
        f.truncate(512 << 20)
    cfg = write_config(wd, "aio.json", aio_config(base))
    initiator = write_config(wd, "initiator.json", [
        {"method": "bdev_nvme_attach_controller", "params": {
            "name": "Ilog", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "4432",
            "subnqn": "nqn.2016-06.io.spdk:policy"}},
        {"method": "bdev_wait_for_examine"},
    ])
    data = {}
    for v in "ABCDE":
        data[v] = os.path.join(wd, f"{v}.bin")
        with open(data[v], "wb") as f:
            f.write(os.urandom(2 << 20))
    got = os.path.join(wd, "got.bin")

    def write(v):  # over NVMe/TCP: namespace 1 is ilog0
        dd_write(wd, initiator, data[v], "Ilogn1")

    def holds(config, bdev, v):
        dd_read(wd, config, bdev, got, count=32)
        return same(got, data[v])

    tgt = App(wd, SPDK_TGT, "--json", cfg, name="tgt")
    try:
        nqn = "nqn.2016-06.io.spdk:policy"
        tgt.rpc("nvmf_create_transport", "-t", "TCP")
        tgt.rpc("nvmf_create_subsystem", nqn, "-a", "-s", "POLICY001")
        tgt.rpc("nvmf_subsystem_add_ns", nqn, "ilog0", "-n", 1)
        tgt.rpc("nvmf_subsystem_add_listener", nqn, "-t", "tcp", "-a", "127.0.0.1", "-s", 4432)

        def volumes():
            return [v["volume_id"] for v in tgt.rpc("bdev_ilog_get_volumes", "ilog0")]

        def volume_bdevs():
            return sorted(b["name"] for b in tgt.rpc("bdev_get_bdevs") if b["name"].startswith("ilog0@"))

        def settled(what, done):
            """The volumes once `done(volumes)` holds and each is exported (and no other)."""
            def check():
                vs = volumes()
                return done(vs) and volume_bdevs() == sorted(f"ilog0@{v}" for v in vs) and vs
            return wait_until(what, check)

        write("A")
        tgt.rpc("bdev_ilog_snapshot", "ilog0", "-n", "a")
        policy = {"events": {"on": {"backup-done": ["snapshot"]}}, "retention": {"keep_last": 2}}
        tgt.rpc("bdev_ilog_set_policy", "ilog0", json.dumps(policy))
        assert tgt.rpc("bdev_ilog_get_policy", "ilog0") == policy
        for bad, field in (({"retention": {"keep_last": "two"}}, "retention.keep_last"),
                           ({"events": {"on": {"backup-done": ["explode"]}}}, "backup-done"),
                           ({"snapshots": {"interval_s": 60}}, "snapshots")):
            msg = expect_error(EINVAL, tgt.sock, "bdev_ilog_set_policy", "ilog0", json.dumps(bad))
            assert field in msg, f"{bad}: {msg}"
        assert tgt.rpc("bdev_ilog_get_policy", "ilog0") == policy, "a refused policy changed the policy"
        expect_error(EINVAL, tgt.sock, "bdev_ilog_event", "ilog0", "backup-failed")

        # A named event takes a snapshot: its bdev appears.
        write("B")
        tgt.rpc("bdev_ilog_event", "ilog0", "backup-done")
        x1 = settled("the event's snapshot", lambda vs: len(vs) == 2)[1]
        # The next one exceeds keep_last: "a" is deleted, its bdev goes.
        write("C")
        tgt.rpc("bdev_ilog_event", "ilog0", "backup-done")
        x1_, x2 = settled("a deleted", lambda vs: "a" not in vs and len(vs) == 2)
        assert x1_ == x1
        write("D")

        # In place, every partition then one volume's, then in the background.
        assert tgt.rpc("bdev_ilog_compact", "ilog0") is True
        assert tgt.rpc("bdev_ilog_compact", "ilog0", "-v", x1, "-m", "in_place") is True
        job = tgt.rpc("bdev_ilog_compact", "ilog0", "--background")["job"]

        def job_state(job):
            jobs = tgt.rpc("bdev_ilog_get_stats", "ilog0")["jobs"]
            state = next(j["state"] for j in jobs if j["job"] == job)
            return state if state != "running" else None

        assert wait_until(f"job {job}", lambda: job_state(job)) == "done"
        assert volumes() == [x1, x2]
        tgt.rpc("nvmf_subsystem_add_ns", nqn, f"ilog0@{x1}", "-n", 2)
        assert holds(initiator, "Ilogn1", "D"), "ilog0 changed in compaction"
        assert holds(initiator, "Ilogn2", "B"), f"ilog0@{x1} changed in compaction"

        # Each snapshot now folds the oldest volume into the baseline; with
        # keep_last 2, x1 (exported over NVMe/TCP, so open) is deleted.
        policy["events"]["on_snapshot"] = ["compact_oldest_into_baseline"]
        tgt.rpc("bdev_ilog_set_policy", "ilog0", json.dumps(policy))
        assert tgt.rpc("bdev_ilog_get_policy", "ilog0") == policy
        tgt.rpc("bdev_ilog_event", "ilog0", "backup-done")
        x2_, x3 = settled(f"{x1} deleted", lambda vs: x1 not in vs and len(vs) == 2)
        assert x2_ == x2
        try:
            dd_read(wd, initiator, "Ilogn2", got, count=32)
            read = "its old data" if same(got, data["B"]) else "other data"
        except AssertionError:
            read = None
        assert read is None, f"read {read} from ilog0@{x1} after it was deleted"
        subsystem = next(s for s in tgt.rpc("nvmf_get_subsystems") if s["nqn"] == nqn)
        assert [ns["nsid"] for ns in subsystem["namespaces"]] == [1], "the deleted volume's namespace stayed"

        # Into the baseline: the oldest (x2), then x3 in the background,
        # which retires x2.
        write("E")
        assert tgt.rpc("bdev_ilog_compact", "ilog0", "-m", "baseline") is True
        assert volumes() == [x2, x3]
        job = tgt.rpc("bdev_ilog_compact", "ilog0", "-v", x3, "-m", "baseline", "--background")["job"]
        assert wait_until(f"job {job}", lambda: job_state(job)) == "done"
        assert settled(f"{x2} retired", lambda vs: vs == [x3])
        assert holds(initiator, "Ilogn1", "E")
        tgt.stop()
    except BaseException:
        print(tgt.tail(), file=sys.stderr)
        tgt.kill()
        raise

    # Re-opened in another process: the survivor and the current image.
    assert holds(cfg, "ilog0", "E"), "ilog0 lost data written last"
    assert holds(cfg, f"ilog0@{x3}", "D"), f"ilog0@{x3} does not hold what it was taken of"


def test_copies_and_restores_through_files_and_bdevs():
    """bdev_ilog_diff, bdev_ilog_copy, bdev_ilog_restore and
    bdev_ilog_get_jobs in spdk_tgt with the real rpc.py: the diff of two
    volumes, a full copy to a file and an incremental to an AIO bdev, both
    restored into a second ilog bdev and the full one onto a plain bdev.
    Another process then reads each restored volume back with spdk_dd, byte
    for byte as the source's."""
    wd = workdir()
    imgs = {}
    for name, mib in (("src", 256), ("dst", 256), ("stream", 64), ("plain", 256)):
        imgs[name] = os.path.join(wd, f"{name}.img")
        with open(imgs[name], "wb") as f:
            f.truncate(mib << 20)
    aio = [{"method": "bdev_aio_create", "params": {"name": f"Aio{i}", "filename": imgs[n], "block_size": 4096}}
           for i, n in enumerate(("src", "dst", "stream", "plain"))]
    cfg = write_config(wd, "copy.json", [
        *aio,
        {"method": "bdev_ilog_create", "params": {"name": "src", "base_bdev_name": "Aio0"}},
        {"method": "bdev_ilog_create", "params": {"name": "dst", "base_bdev_name": "Aio1"}},
        {"method": "bdev_wait_for_examine"},
    ])
    data = {}
    for v, mib in (("A", 4), ("B", 1)):
        data[v] = os.path.join(wd, f"{v}.bin")
        with open(data[v], "wb") as f:
            f.write(os.urandom(mib << 20))

    def snapshot(name):
        tgt = App(wd, SPDK_TGT, "--json", cfg, mem=2048, name=f"snap-{name}")
        try:
            tgt.rpc("bdev_ilog_snapshot", "src", "-n", name)
            tgt.stop()
        except BaseException:
            print(tgt.tail(), file=sys.stderr)
            tgt.kill()
            raise

    dd_write(wd, cfg, data["A"], "src")
    snapshot("v1")
    dd_write(wd, cfg, data["B"], "src")
    snapshot("v2")

    tgt = App(wd, SPDK_TGT, "--json", cfg, mem=2048, name="tgt")
    try:
        diff = tgt.rpc("bdev_ilog_diff", "src", "v2", "-b", "v1")
        assert diff == [{"lba": 0, "num_blocks": 256, "kind": "data"}], diff

        stream = os.path.join(wd, "v1.stream")
        done = run_job(tgt, "bdev_ilog_copy", "src", "v1", stream)
        assert done["kind"] == "copy" and done["bytes_done"] == done["bytes_total"] > 0, done
        run_job(tgt, "bdev_ilog_copy", "src", "v2", "Aio2", "-b", "v1")
        expect_error(EINVAL, tgt.sock, "bdev_ilog_copy", "src", "v2", "dst")
        expect_error(ENOENT, tgt.sock, "bdev_ilog_copy", "src", "v9", stream)
        msg = expect_error(EINVAL, tgt.sock, "bdev_ilog_restore", "dst", "Aio2")
        assert "in order" in msg, msg
        run_job(tgt, "bdev_ilog_restore", "dst", stream)
        run_job(tgt, "bdev_ilog_restore", "dst", "Aio2")
        run_job(tgt, "bdev_ilog_restore", "Aio3", stream)
        vols = [v["volume_id"] for v in tgt.rpc("bdev_ilog_get_volumes", "dst")]
        assert vols == ["v1", "v2"], vols
        assert wait_until("dst's volume bdevs", lambda: {"dst@v1", "dst@v2"} <= {b["name"] for b in tgt.rpc("bdev_get_bdevs")})
        tgt.stop()
    except BaseException:
        print(tgt.tail(), file=sys.stderr)
        tgt.kill()
        raise

    got, want = os.path.join(wd, "got.bin"), os.path.join(wd, "want.bin")
    for restored, source in (("dst@v1", "src@v1"), ("dst@v2", "src@v2"), ("dst", "src@v2"), ("Aio3", "src@v1")):
        dd_read(wd, cfg, restored, got, count=64)
        dd_read(wd, cfg, source, want, count=64)
        assert same(got, want), f"{restored} differs from {source}"
    dd_read(wd, cfg, "dst@v1", got, count=64)
    assert same(got, data["A"]), "dst@v1 does not hold what src@v1 was taken of"


def test_a_copy_leaves_over_nvme_tcp_and_is_restored_on_the_far_side():
    """A copy to a tertiary volume on another machine's SPDK, over NVMe/TCP
    with no transport of ours: spdk_tgt copies src@v1 onto a namespace
    that a second app (nvmf_tgt, with the module) exports from a malloc
    bdev; that app then restores the stream from its own bdev into an ilog
    bdev there. Both volumes, exported over NVMe/TCP, read back the data
    written."""
    wd = workdir()
    data = os.path.join(wd, "data.bin")
    with open(data, "wb") as f:
        f.write(os.urandom(4 << 20))
    far = App(wd, NVMF_TGT, mem=2048, name="far")
    near = None
    try:
        far.rpc("nvmf_create_transport", "-t", "TCP")
        far.rpc("bdev_malloc_create", "-b", "Stream0", 256, 4096)
        far.rpc("bdev_malloc_create", "-b", "Base1", 256, 4096)
        far.rpc("bdev_ilog_create", "-b", "Base1", "-p", "dst")
        tertiary = "nqn.2016-06.io.spdk:tertiary"
        far.rpc("nvmf_create_subsystem", tertiary, "-a", "-s", "TER001")
        far.rpc("nvmf_subsystem_add_ns", tertiary, "Stream0", "-n", 1)
        far.rpc("nvmf_subsystem_add_listener", tertiary, "-t", "tcp", "-a", "127.0.0.1", "-s", 4440)

        near = App(wd, SPDK_TGT, mem=2048, name="near")
        near.rpc("bdev_malloc_create", "-b", "Base0", 256, 4096)
        near.rpc("bdev_ilog_create", "-b", "Base0", "-p", "src")
        near.rpc("nvmf_create_transport", "-t", "TCP")
        src_nqn = "nqn.2016-06.io.spdk:src"
        near.rpc("nvmf_create_subsystem", src_nqn, "-a", "-s", "SRC001")
        near.rpc("nvmf_subsystem_add_ns", src_nqn, "src", "-n", 1)
        near.rpc("nvmf_subsystem_add_listener", src_nqn, "-t", "tcp", "-a", "127.0.0.1", "-s", 4441)
        writer = write_config(wd, "writer.json", [
            {"method": "bdev_nvme_attach_controller", "params": {
                "name": "Src", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "4441",
                "subnqn": src_nqn}},
            {"method": "bdev_wait_for_examine"},
        ])
        dd_write(wd, writer, data, "Srcn1")
        near.rpc("bdev_ilog_snapshot", "src", "-n", "v1")

        near.rpc("bdev_nvme_attach_controller", "-b", "Far", "-t", "tcp", "-a", "127.0.0.1", "-s", 4440, "-f", "ipv4",
                 "-n", tertiary)

        run_job(near, "bdev_ilog_copy", "src", "v1", "Farn1", "--lba-count", 2048)
        near.rpc("bdev_nvme_detach_controller", "Far")
        far.rpc("nvmf_subsystem_remove_ns", tertiary, 1)
        run_job(far, "bdev_ilog_restore", "dst", "Stream0")
        assert [v["volume_id"] for v in far.rpc("bdev_ilog_get_volumes", "dst")] == ["v1"]
        assert wait_until("dst@v1", lambda: any(b["name"] == "dst@v1" for b in far.rpc("bdev_get_bdevs")))

        # Both volumes over NVMe/TCP: the data written, block for block.
        near.rpc("nvmf_subsystem_add_ns", src_nqn, "src@v1", "-n", 2)
        far.rpc("nvmf_subsystem_add_ns", tertiary, "dst@v1", "-n", 2)
        reader = write_config(wd, "reader.json", [
            {"method": "bdev_nvme_attach_controller", "params": {
                "name": "Src", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "4441",
                "subnqn": src_nqn}},
            {"method": "bdev_nvme_attach_controller", "params": {
                "name": "Ter", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "4440",
                "subnqn": tertiary}},
            {"method": "bdev_wait_for_examine"},
        ])
        got = os.path.join(wd, "got.bin")
        for bdev in ("Srcn2", "Tern2"):
            dd_read(wd, reader, bdev, got, count=64)
            assert same(got, data), f"{bdev} does not hold the data written"
        near.stop()
        near = None
        far.stop()
        far = None
    finally:
        for app in (near, far):
            if app is not None:
                print(app.tail(), file=sys.stderr)
                app.kill()


def test_a_killed_nvme_tcp_primary_comes_back_and_resyncs_what_it_missed():
    """ilog0 on a malloc base with two primaries: a malloc bdev, and an
    NVMe/TCP namespace that a second SPDK process exports from a file.
    bdevperf verify runs over NVMe/TCP on ilog0 while that process is
    killed (its primary degrades, then its bdev is removed), restarted and
    attached again; no I/O fails. The rebuild resyncs the blocks written
    meanwhile only, and both primaries then hold the volume block for
    block."""
    import threading
    wd = workdir()
    far_img = os.path.join(wd, "far.img")
    with open(far_img, "wb") as f:
        f.truncate(512 << 20)
    far_nqn, ilog_nqn = "nqn.2016-06.io.spdk:primary", "nqn.2016-06.io.spdk:ilog"

    def start_far():
        far = App(wd, NVMF_TGT, preload=False, name="far")
        far.rpc("nvmf_create_transport", "-t", "TCP")
        far.rpc("bdev_aio_create", far_img, "FarAio", 4096)
        far.rpc("nvmf_create_subsystem", far_nqn, "-a", "-s", "PRI001")
        far.rpc("nvmf_subsystem_add_ns", far_nqn, "FarAio")
        far.rpc("nvmf_subsystem_add_listener", far_nqn, "-t", "tcp", "-a", "127.0.0.1", "-s", 4450)
        return far

    def attach_far():
        near.rpc("bdev_nvme_attach_controller", "-b", "Far", "-t", "tcp", "-a", "127.0.0.1", "-s", 4450, "-f", "ipv4",
                 "-n", far_nqn)

    def primaries():
        return {p["name"]: p for p in near.rpc("bdev_ilog_get_stats", "ilog0")["primaries"]}

    far = start_far()
    near = None
    try:
        near = App(wd, SPDK_TGT, mem=3072, name="near")
        near.rpc("bdev_malloc_create", "-b", "Malloc0", 512, 4096)
        near.rpc("bdev_malloc_create", "-b", "Malloc1", 512, 4096)
        attach_far()
        near.rpc("bdev_ilog_create", "-b", "Malloc0", "-p", "ilog0", "--primary-bdev-names", "Malloc1 Farn1")
        blocks = near.rpc("bdev_get_bdevs", "-b", "ilog0")[0]["num_blocks"]
        wait_until("the first sync", lambda: all(p["state"] == "healthy" for p in primaries().values()))
        near.rpc("nvmf_create_transport", "-t", "TCP")
        near.rpc("nvmf_create_subsystem", ilog_nqn, "-a", "-s", "ILOG002")
        near.rpc("nvmf_subsystem_add_ns", ilog_nqn, "ilog0", "-n", 1)
        near.rpc("nvmf_subsystem_add_listener", ilog_nqn, "-t", "tcp", "-a", "127.0.0.1", "-s", 4451)
        initiator = write_config(wd, "initiator.json", [
            {"method": "bdev_nvme_attach_controller", "params": {
                "name": "Ilog", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "4451",
                "subnqn": ilog_nqn}},
            {"method": "bdev_wait_for_examine"},
        ])
        outcome = {}

        def verify():
            try:
                outcome["out"] = run_app(wd, BDEVPERF, "--json", initiator, "-q", 16, "-o", 4096, "-w", "verify",
                                         "-t", 6, name="initiator")
            except AssertionError as e:
                outcome["error"] = str(e)
        io = threading.Thread(target=verify)
        io.start()
        time.sleep(1.5)
        far.kill()
        wait_until("Farn1 degraded", lambda: primaries()["Farn1"]["state"] == "degraded")
        # Its controller goes (or is let go): the primary's bdev is removed.
        try:
            near.rpc("bdev_nvme_detach_controller", "Far")
        except RpcError:
            pass
        wait_until("Farn1 removed", lambda: not any(b["name"] == "Farn1" for b in near.rpc("bdev_get_bdevs")))
        far = start_far()
        attach_far()
        io.join()
        assert "error" not in outcome, outcome.get("error")
        iops, fails = bdevperf_total(outcome["out"])
        assert iops > 0 and fails == 0.0, outcome["out"][-2000:]
        dirty = primaries()["Farn1"]["dirty_blocks"]
        assert 0 < dirty < blocks, primaries()
        near.rpc("bdev_ilog_rebuild_primary", "ilog0", "-p", "Farn1")
        wait_until("the resync", lambda: all(p["state"] == "healthy" and p["dirty_blocks"] == 0
                                             for p in primaries().values()), timeout=60)
        resynced = primaries()["Farn1"]
        assert resynced["rebuild_total_blocks"] == dirty, resynced
        image = os.path.join(wd, "image.bin")
        dd_read(wd, initiator, "Ilogn1", image)
        # ilog0 let go of its primaries: Malloc1 is read through the export.
        near.rpc("nvmf_subsystem_remove_ns", ilog_nqn, 1)
        near.rpc("bdev_ilog_delete", "ilog0")
        near.rpc("nvmf_subsystem_add_ns", ilog_nqn, "Malloc1", "-n", 2)
        local = os.path.join(wd, "malloc1.bin")
        volume = blocks * 4096
        dd_read(wd, initiator, "Ilogn2", local, count=-(-volume // 65536))
        with open(image, "rb") as f:
            want = f.read(volume)
        assert len(want) == volume, (len(want), volume)
        for path in (local, far_img):
            with open(path, "rb") as f:
                assert f.read(volume) == want, f"{path} differs from ilog0"
        near.stop()
        near = None
        far.stop()
        far = None
    finally:
        for app in (near, far):
            if app is not None:
                print(app.tail(), file=sys.stderr)
                app.kill()


def test_a_volume_deleted_while_open_is_hot_removed_and_its_name_reused():
    """The policy deletes a volume whose bdev a passthru bdev holds open and
    snapshots a new volume of the same name: the old bdev is hot-removed,
    and the new one is registered once the name is free, reading the new
    partition (the passthru, configured by name, attaches to it again)."""
    wd = workdir()
    tgt = App(wd, SPDK_TGT, name="tgt")
    try:
        tgt.rpc("bdev_malloc_create", "-b", "Malloc0", 64, 4096)
        tgt.rpc("bdev_ilog_create", "-b", "Malloc0", "-p", "ilog0")
        tgt.rpc("bdev_ilog_set_policy", "ilog0", json.dumps({
            "events": {"on": {"redo": ["delete_oldest", "snapshot"]}},
            "volume_id": {"scheme": "template", "template": "s1"}}))
        tgt.rpc("bdev_ilog_snapshot", "ilog0")
        tgt.rpc("bdev_passthru_create", "-b", "ilog0@s1", "-p", "pt1")

        def s1_partition():
            bdevs = {b["name"]: b for b in tgt.rpc("bdev_get_bdevs")}
            return "ilog0@s1" in bdevs and bdevs["ilog0@s1"]["driver_specific"]["ilog_volume"]["partition"]

        old = s1_partition()

        def renewed():
            p = s1_partition()
            return p != old and p

        tgt.rpc("bdev_ilog_event", "ilog0", "redo")
        new = wait_until("a new ilog0@s1", renewed)
        assert new > old, (old, new)
        assert [v["partition"] for v in tgt.rpc("bdev_ilog_get_volumes", "ilog0")] == [new]
    except BaseException:
        print(tgt.tail(), file=sys.stderr)
        tgt.kill()
        raise
    tgt.stop()


# ---- Bad inputs: every bdev_ilog_* method, answered with a JSON-RPC error.

class RawRpc:
    """One raw JSON-RPC connection: exact bytes out, one JSON value back.
    Outcomes: ("answer", value), ("dropped", None), ("hang", None) or
    ("garbled", text)."""

    def __init__(self, sock, timeout=30):
        import codecs
        import socket
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(sock)
        self.text = ""
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.next_id = 1000

    def close(self):
        self.s.close()

    def exchange(self, data):
        import socket
        try:
            self.s.sendall(data)
        except OSError:
            pass  # it may have answered before it stopped reading
        decoder = json.JSONDecoder()
        while True:
            text = self.text.lstrip()
            if text:
                try:
                    value, end = decoder.raw_decode(text)
                    self.text = text[end:]
                    return "answer", value
                except ValueError:
                    pass
            try:
                chunk = self.s.recv(1 << 16)
            except socket.timeout:
                return "hang", None
            except OSError:
                return "dropped", None
            if not chunk:
                return ("garbled", self.text[:300]) if self.text.strip() else ("dropped", None)
            self.text += self.utf8.decode(chunk)

    def send(self, method, params_text=None):
        """A request with a fresh id; `params_text` is the params' JSON text
        (None: no params member)."""
        self.next_id += 1
        req = '{"jsonrpc":"2.0","id":%d,"method":%s' % (self.next_id, json.dumps(method))
        if params_text is not None:
            req += ',"params":' + params_text
        kind, value = self.exchange((req + "}\n").encode())
        # An error for a request whose id could not be read has id null.
        unread = isinstance(value, dict) and value.get("id") is None and "error" in value
        if kind == "answer" and not unread and (not isinstance(value, dict) or value.get("id") != self.next_id):
            return "garbled", f"an answer for another request (sent id {self.next_id}): {value}"
        return kind, value

    def call(self, method, params=None):
        """The result; an error raises RpcError; anything else fails."""
        kind, value = self.send(method, None if params is None else json.dumps(params))
        assert kind == "answer", f"{method} {params}: {kind} {value}"
        if "error" in value:
            raise RpcError(value["error"]["code"], value["error"]["message"])
        return value["result"]


U64_MAX_PLUS_1 = "18446744073709551616"


def raw(literal):
    """A number JSON can carry but Python's json would not write as is."""
    return f"@@RAW:{literal}@@"


def render(value):
    import re
    return re.sub(r'"@@RAW:([^@]*)@@"', r"\1", json.dumps(value))


# (method, [(field, kind, presence)], harmless params): presence "req",
# "opt" (null means absent) or "def" (defaulted; null is no value). The
# harmless params name nothing that exists: executed, they fail.
ILOG_SPECS = [
    ("bdev_ilog_create", [("name", "str", "req"), ("base_bdev_name", "str", "req"),
                          ("stripe_size_kib", "u64", "opt"), ("segment_size_kib", "u64", "opt"),
                          ("log_percent", "u8", "opt"), ("max_volumes", "u32", "opt"),
                          ("replay_window_mib", "u64", "opt")],
     {"name": "ilog9", "base_bdev_name": "NoSuchBase"}),
    ("bdev_ilog_delete", [("name", "str", "req")], {"name": "NoSuchBdev"}),
    ("bdev_ilog_get_bdevs", [("name", "str", "opt")], {"name": "NoSuchBdev"}),
    ("bdev_ilog_snapshot", [("name", "str", "req"), ("snapshot_name", "str", "opt")], {"name": "NoSuchBdev"}),
    ("bdev_ilog_get_volumes", [("name", "str", "req")], {"name": "NoSuchBdev"}),
    ("bdev_ilog_delete_volume", [("name", "str", "req"), ("volume", "str", "req")],
     {"name": "NoSuchBdev", "volume": "snap-1"}),
    ("bdev_ilog_log_read", [("name", "str", "req"), ("cursor", "u64", "def"), ("count", "u32", "req"),
                            ("with_data", "bool", "def")], {"name": "NoSuchBdev", "count": 1}),
    ("bdev_ilog_get_stats", [("name", "str", "req")], {"name": "NoSuchBdev"}),
    ("bdev_ilog_compact", [("name", "str", "req"), ("volume", "str", "opt"), ("mode", "mode", "def"),
                           ("background", "bool", "def")], {"name": "NoSuchBdev"}),
    ("bdev_ilog_set_policy", [("name", "str", "req"), ("policy", "object", "req")],
     {"name": "NoSuchBdev", "policy": {}}),
    ("bdev_ilog_get_policy", [("name", "str", "req")], {"name": "NoSuchBdev"}),
    ("bdev_ilog_event", [("name", "str", "req"), ("event", "str", "req")], {"name": "NoSuchBdev", "event": "e"}),
    ("bdev_ilog_diff", [("name", "str", "req"), ("volume", "str", "req"), ("base_volume", "str", "opt"),
                        ("lba_start", "u64", "opt"), ("lba_count", "u64", "opt")],
     {"name": "NoSuchBdev", "volume": "keep"}),
    ("bdev_ilog_copy", [("name", "str", "req"), ("volume", "str", "req"), ("base_volume", "str", "opt"),
                        ("lba_start", "u64", "opt"), ("lba_count", "u64", "opt"), ("target", "str", "req"),
                        ("resume_token", "str", "opt")],
     {"name": "NoSuchBdev", "volume": "keep", "target": "/no/such/dir/s"}),
    ("bdev_ilog_restore", [("name", "str", "req"), ("source", "str", "req"), ("resume_token", "str", "opt")],
     {"name": "NoSuchBdev", "source": "/no/such/dir/s"}),
    ("bdev_ilog_get_jobs", [("name", "str", "opt")], {"name": "NoSuchBdev"}),
    ("bdev_ilog_rebuild_primary", [("name", "str", "req"), ("primary_bdev_name", "str", "req"),
                                   ("full", "bool", "def")], {"name": "NoSuchBdev", "primary_bdev_name": "Malloc1"}),
]

INVALID_PARAMS = -32602
LONG = "n" * 10000


def wrong_values(kind, presence):
    """(label, value) of the wrong type, or out of range, for a param."""
    if kind == "str":
        v = [("number", 7), ("negative number", -1), ("float", 1.5), ("1e300", 1e300),
             ("2^64 literal", raw(U64_MAX_PLUS_1)), ("bool", True), ("array", ["x"]), ("empty array", []),
             ("object", {"a": "b"})]
    elif kind in ("u8", "u32", "u64"):
        v = [("string", "12"), ("empty string", ""), ("float", 1.5), ("1e300", 1e300), ("-1e300", -1e300),
             ("2^64 literal", raw(U64_MAX_PLUS_1)), ("2^64 as a float", raw("1.8446744073709552e19")),
             ("huge literal", raw("123456789012345678901234567890123456789")), ("bool", True), ("array", [1]),
             ("object", {}), ("-1", -1)]
        v += {"u8": [("256", 256)], "u32": [("2^32", 1 << 32)], "u64": []}[kind]
    elif kind == "bool":
        v = [("string", "true"), ("number 1", 1), ("number 0", 0), ("array", [True]), ("object", {})]
    elif kind == "object":
        v = [("string", "{}"), ("number", 7), ("array", []), ("bool", True)]
    else:  # mode
        v = [("unknown mode", "defrag"), ("empty string", ""), ("upper case", "IN_PLACE"), ("number", 0),
             ("array", ["in_place"])]
    if presence != "opt":
        v.append(("null", None))
    return v


def generic_bad_cases(spec):
    """(method, label, params text or None, expect) from the params alone;
    expect: "invalid" (-32602), an int code, "error" (any) or "answer"."""
    method, fields, base = spec
    cases = []

    def add(label, params, expect):
        cases.append((method, label, params, expect))

    def with_(name, value):
        p = dict(base)
        p[name] = value
        return render(p)

    add("params: a string", '"ilog0"', -32600)
    add("params: a number", "7", -32600)
    add("params: a bool", "true", -32600)
    add("params: an empty array", "[]", "invalid")
    positional = []
    for name, _, presence in fields:
        if name in base:
            positional.append(base[name])
        elif presence == "opt":
            positional.append(None)
        else:
            break
    add("params: positional", render(positional), "invalid")
    add("unknown field", with_("bogus", 1), "invalid")
    add("unknown field: empty key", with_("", 0), "invalid")
    add("unknown field: upper-case twin", with_("NAME", "x"), "invalid")
    if any(presence == "req" for _, _, presence in fields):
        add("params: absent", None, "invalid")
        add("params: null", "null", "invalid")
        add("params: {}", "{}", "invalid")
    for name, kind, presence in fields:
        if presence == "req":
            add(f"missing {name}", render({k: v for k, v in base.items() if k != name}), "invalid")
        for label, value in wrong_values(kind, presence):
            add(f"{name}: {label}", with_(name, value), "invalid")
        if kind in ("u8", "u32", "u64"):
            # Valid JSON past what a double holds: SPDK's parser takes it.
            add(f"{name}: 1e400", with_(name, raw("1e400")), "error")
        if kind == "str":
            add(f"{name}: 10000 chars", with_(name, LONG), "error")
            add(f"{name}: with a NUL", with_(name, "No\0Such"), "error")
            add(f"{name}: empty", with_(name, ""), "error")
    return cases


def semantic_bad_cases():
    """Bad inputs on the state the test sets up: Malloc0 claimed by ilog0
    (exported, with volume keep exported), Malloc1 and Tiny (16 blocks)
    free."""
    ENODEV, EBUSY, EEXIST, ENOENT, EINVAL = -19, -16, -17, -2, -22
    cases = []

    def add(method, label, params, expect):
        cases.append((method, "state: " + label, render(params), expect))

    m = "bdev_ilog_create"
    add(m, "unknown base", {"name": "ilog9", "base_bdev_name": "NoSuchBase"}, ENODEV)
    add(m, "claimed base", {"name": "ilog9", "base_bdev_name": "Malloc0"}, EBUSY)
    add(m, "name taken by an ilog", {"name": "ilog0", "base_bdev_name": "Malloc1"}, EEXIST)
    add(m, "name taken by its base", {"name": "Malloc1", "base_bdev_name": "Malloc1"}, EEXIST)
    add(m, "name of a volume", {"name": "ilog0@keep", "base_bdev_name": "Malloc1"}, "invalid")
    add(m, "name with a '@'", {"name": "a@b", "base_bdev_name": "Malloc1"}, "invalid")
    add(m, "name with a NUL", {"name": "il\0og", "base_bdev_name": "Malloc1"}, "error")
    add(m, "base a volume", {"name": "ilog9", "base_bdev_name": "ilog0@keep"}, "error")
    add(m, "base too small", {"name": "ilog9", "base_bdev_name": "Tiny"}, "error")
    for field, value, expect in [("log_percent", 0, "invalid"), ("log_percent", 96, "invalid"),
                                 ("log_percent", 101, "invalid"), ("log_percent", 255, "invalid"),
                                 ("stripe_size_kib", 0, "invalid"), ("stripe_size_kib", 3, "error"),
                                 ("stripe_size_kib", (1 << 64) - 1, "invalid"), ("segment_size_kib", 0, "invalid"),
                                 ("segment_size_kib", (1 << 64) - 1, "invalid"), ("max_volumes", 0, "invalid"),
                                 ("max_volumes", (1 << 32) - 1, "error"), ("replay_window_mib", 0, "invalid"),
                                 ("replay_window_mib", (1 << 64) - 1, "error")]:
        # On the claimed base: options taken would still fail (-16).
        add(m, f"{field} {value}", {"name": "ilog9", "base_bdev_name": "Malloc0", field: value}, expect)

    m = "bdev_ilog_delete"
    add(m, "exported", {"name": "ilog0"}, EBUSY)
    add(m, "a volume bdev", {"name": "ilog0@keep"}, "error")
    add(m, "a base bdev", {"name": "Malloc0"}, "error")
    add(m, "other case", {"name": "ILOG0"}, ENODEV)

    add("bdev_ilog_get_bdevs", "a base bdev", {"name": "Malloc0"}, ENODEV)
    add("bdev_ilog_get_bdevs", "a volume bdev", {"name": "ilog0@keep"}, ENODEV)

    m = "bdev_ilog_snapshot"
    add(m, "snapshot_name taken", {"name": "ilog0", "snapshot_name": "keep"}, EEXIST)
    for label, name in [("a '/'", "bad/name"), ("a space", "a b"), ("a '@'", "x@y"), ("79 chars", "v" * 79),
                        ("10000 chars", LONG), ("a NUL", "a\0b"), ("non-ASCII", "caf\u00e9")]:
        add(m, f"snapshot_name with {label}", {"name": "ilog0", "snapshot_name": name}, "error")
    add(m, "of a volume bdev", {"name": "ilog0@keep"}, "error")

    for m in ("bdev_ilog_get_volumes", "bdev_ilog_get_stats", "bdev_ilog_get_policy"):
        add(m, "of a volume bdev", {"name": "ilog0@keep"}, "error")

    m = "bdev_ilog_delete_volume"
    add(m, "unknown volume", {"name": "ilog0", "volume": "nope"}, ENOENT)
    add(m, "exported volume", {"name": "ilog0", "volume": "keep"}, EBUSY)
    add(m, "10000-char volume", {"name": "ilog0", "volume": LONG}, "error")
    add(m, "volume given as its bdev", {"name": "ilog0", "volume": "ilog0@keep"}, "error")
    add(m, "of a volume bdev", {"name": "ilog0@keep", "volume": "keep"}, "error")

    m = "bdev_ilog_log_read"
    for count in (0, 4097, (1 << 32) - 1, 1 << 32):
        add(m, f"count {count}", {"name": "ilog0", "count": count}, "invalid")
    add(m, "cursor u64::MAX", {"name": "ilog0", "count": 1, "cursor": (1 << 64) - 1}, "answer")
    add(m, "of a volume bdev", {"name": "ilog0@keep", "count": 1}, "error")

    m = "bdev_ilog_compact"
    add(m, "unknown volume", {"name": "ilog0", "volume": "nope"}, "error")
    add(m, "unknown volume, baseline", {"name": "ilog0", "volume": "nope", "mode": "baseline"}, "error")
    add(m, "10000-char volume", {"name": "ilog0", "volume": LONG}, "error")
    add(m, "of a volume bdev", {"name": "ilog0@keep"}, "error")

    m = "bdev_ilog_set_policy"
    too_long = {f"event-{i}": ["snapshot"] for i in range(600)}
    for label, policy in [
            ("keep_last a string", {"retention": {"keep_last": "all"}}),
            ("keep_last -1", {"retention": {"keep_last": -1}}),
            ("an unknown key", {"snapshots": {"interval_s": 60}}),
            ("an unknown nested key", {"snapshot": {"every": 60}}),
            ("interval_s 0", {"snapshot": {"interval_s": 0}}),
            ("interval_s 1e300", {"snapshot": {"interval_s": 1e300}}),
            ("interval_s 2^64", {"snapshot": {"interval_s": raw(U64_MAX_PLUS_1)}}),
            ("interval_s a string", {"snapshot": {"interval_s": "60"}}),
            ("log_used_pct 0", {"compaction": {"log_used_pct": 0}}),
            ("log_used_pct 101", {"compaction": {"log_used_pct": 101}}),
            ("garbage_pct 101", {"compaction": {"garbage_pct": 101}}),
            ("an unknown action", {"events": {"on": {"x": ["explode"]}}}),
            ("an empty event name", {"events": {"on": {"": ["snapshot"]}}}),
            ("a snapshot loop", {"events": {"on_snapshot": ["snapshot"]}}),
            ("a retention action", {"retention": {"action": "shred"}}),
            ("an on_full", {"retention": {"on_full": "panic"}}),
            ("a template scheme without template", {"volume_id": {"scheme": "template"}}),
            ("a template with a '/'", {"volume_id": {"scheme": "template", "template": "a/%n"}}),
            ("a scheme number", {"volume_id": {"scheme": 7}}),
            ("over 8 KiB", {"events": {"on": too_long}})]:
        add(m, f"policy with {label}", {"name": "ilog0", "policy": policy}, EINVAL)
    add(m, "of a volume bdev", {"name": "ilog0@keep", "policy": {}}, "error")

    m = "bdev_ilog_event"
    add(m, "an event nothing binds", {"name": "ilog0", "event": "nope"}, EINVAL)
    add(m, "a 10000-char event", {"name": "ilog0", "event": LONG}, EINVAL)

    m = "bdev_ilog_diff"
    add(m, "unknown volume", {"name": "ilog0", "volume": "nope"}, ENOENT)
    add(m, "base same as volume", {"name": "ilog0", "volume": "keep", "base_volume": "keep"}, "invalid")
    add(m, "lba_start past the end", {"name": "ilog0", "volume": "keep", "lba_start": (1 << 64) - 1}, EINVAL)
    add(m, "lba_count 0", {"name": "ilog0", "volume": "keep", "lba_count": 0}, EINVAL)
    add(m, "of a volume bdev", {"name": "ilog0@keep", "volume": "keep"}, "error")

    m = "bdev_ilog_copy"
    stream = os.path.join(tempfile.gettempdir(), f"ilog-bad-{os.getpid()}.stream")
    for label, extra, expect in [("unknown volume", {"volume": "nope"}, ENOENT),
                                 ("a range past the end", {"lba_start": (1 << 64) - 1}, EINVAL),
                                 ("an ilog bdev as target", {"target": "ilog0"}, EINVAL),
                                 ("a claimed base as target", {"target": "Malloc0"}, "error"),
                                 ("a volume bdev as target", {"target": "ilog0@keep"}, "error"),
                                 ("an unknown bdev as target", {"target": "NoSuchBdev"}, "error"),
                                 ("a file in no directory", {"target": "/no/such/dir/s"}, ENOENT),
                                 ("a resume token of junk", {"resume_token": "zz"}, EINVAL)]:
        add(m, label, {"name": "ilog0", "volume": "keep", "target": stream, **extra}, expect)
    add(m, "of a volume bdev", {"name": "ilog0@keep", "volume": "keep", "target": stream}, "error")

    m = "bdev_ilog_restore"
    junk = os.path.join(tempfile.gettempdir(), f"ilog-not-a-stream-{os.getpid()}")
    with open(junk, "wb") as f:
        f.write(b"\x5a" * 8192)
    add(m, "a missing file", {"name": "ilog0", "source": "/no/such/dir/s"}, ENOENT)
    add(m, "a file that is no stream", {"name": "ilog0", "source": junk}, -117)
    add(m, "into a volume bdev", {"name": "ilog0@keep", "source": junk}, "error")
    add(m, "into a claimed base", {"name": "Malloc0", "source": junk}, "error")

    add("bdev_ilog_get_jobs", "of an unknown bdev", {"name": "NoSuchBdev"}, ENODEV)

    m = "bdev_ilog_create"
    add(m, "an unknown primary", {"name": "ilog9", "base_bdev_name": "Malloc1", "primary_bdev_names": ["Nope"]},
        ENODEV)
    add(m, "a claimed primary", {"name": "ilog9", "base_bdev_name": "Malloc1", "primary_bdev_names": ["Malloc0"]},
        "error")
    add(m, "the base as a primary",
        {"name": "ilog9", "base_bdev_name": "Malloc1", "primary_bdev_names": ["Malloc1"]}, "invalid")
    add(m, "a primary twice",
        {"name": "ilog9", "base_bdev_name": "Malloc1", "primary_bdev_names": ["Tiny", "Tiny"]}, "invalid")
    add(m, "primaries not a list", {"name": "ilog9", "base_bdev_name": "Malloc1", "primary_bdev_names": "Tiny"},
        "invalid")
    add(m, "an empty primary name", {"name": "ilog9", "base_bdev_name": "Malloc1", "primary_bdev_names": [""]},
        "invalid")
    add(m, "five primaries", {"name": "ilog9", "base_bdev_name": "Malloc1",
                              "primary_bdev_names": [f"P{i}" for i in range(5)]}, "invalid")

    m = "bdev_ilog_rebuild_primary"
    add(m, "an unknown bdev", {"name": "ilog0", "primary_bdev_name": "Nope"}, ENODEV)
    add(m, "its own base", {"name": "ilog0", "primary_bdev_name": "Malloc0"}, "error")
    # ilog0 has no primary: a free bdev replaces none (and is let go).
    add(m, "no primary to replace", {"name": "ilog0", "primary_bdev_name": "Malloc1"}, EINVAL)
    add(m, "too small", {"name": "ilog0", "primary_bdev_name": "Tiny"}, EINVAL)
    add(m, "of a volume bdev", {"name": "ilog0@keep", "primary_bdev_name": "Malloc1"}, "error")
    return cases


def judge(expect, outcome):
    """None if `outcome` meets `expect`, else what is wrong."""
    kind, a = outcome
    if kind != "answer":
        return {"dropped": "the connection was closed without an answer",
                "hang": "no answer within 30 s"}.get(kind, f"not a JSON-RPC answer: {str(a)[:300]}")
    if not isinstance(a, dict) or a.get("jsonrpc") != "2.0":
        return f"not a JSON-RPC 2.0 response: {str(a)[:300]}"
    if "result" in a and "error" not in a:
        return None if expect == "answer" else f"answered with a result: {json.dumps(a['result'])[:300]}"
    e = a.get("error")
    if "result" in a or not isinstance(e, dict):
        return f"neither a result nor an error: {str(a)[:300]}"
    code, message = e.get("code"), e.get("message")
    if not isinstance(code, int) or isinstance(code, bool) or not isinstance(message, str) or not message:
        return f"an error object without an integer code and a message: {e}"
    if expect == "invalid" and code != INVALID_PARAMS:
        return f"code {code}, not {INVALID_PARAMS}: {message[:300]}"
    if isinstance(expect, int) and code != expect:
        return f"code {code}, not {expect}: {message[:300]}"
    return None


def run_bad_cases(sock, cases):
    """Sends each case on one connection (a new one after a broken one);
    the failures, as text."""
    failures = []
    conn = RawRpc(sock)
    for method, label, params, expect in cases:
        outcome = conn.send(method, params)
        why = judge(expect, outcome)
        if why:
            failures.append(f"{method} [{label}]: {why}\n    request: {method} {str(params)[:300]}")
        # After an error with id null (the request was not read), the stream
        # may be closed.
        if outcome[0] != "answer" or outcome[1].get("id") is None:
            conn.close()
            conn = RawRpc(sock)
    conn.close()
    return failures


def ilog_consistent(conn):
    """Every ilog bdev is a bdev with its base claimed and its exported
    volumes listed, and the saved config creates exactly these ilog bdevs:
    the set of every bdev's name."""
    bdevs = {b["name"]: b for b in conn.call("bdev_get_bdevs")}
    ilogs = conn.call("bdev_ilog_get_bdevs")
    for i in ilogs:
        assert i["name"] in bdevs, f"ilog bdev {i['name']} is not a bdev"
        assert bdevs.get(i["base_bdev_name"], {}).get("claimed"), f"the base of {i['name']} is not claimed"
        for v in i["volumes"]:
            assert v["bdev"] is None or v["bdev"] in bdevs, f"volume bdev {v['bdev']} is not a bdev"
    config = conn.call("framework_get_config", {"name": "bdev"})
    saved = sorted(e["params"]["name"] for e in config if e["method"] == "bdev_ilog_create")
    assert saved == sorted(i["name"] for i in ilogs), f"the config creates {saved}, the ilog bdevs are {ilogs}"
    return set(bdevs)


def race(sock, calls):
    """Runs `calls` ((method, params) each) at once, each on its own
    connection: each outcome (every one must be an answer)."""
    import threading
    conns = [RawRpc(sock) for _ in calls]
    barrier = threading.Barrier(len(calls))
    outcomes = [None] * len(calls)

    def one(i, method, params):
        barrier.wait()
        outcomes[i] = conns[i].send(method, json.dumps(params))

    threads = [threading.Thread(target=one, args=(i, m, p)) for i, (m, p) in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for c in conns:
        c.close()
    for (method, params), outcome in zip(calls, outcomes):
        assert outcome is not None, f"{method} {params}: no answer (still running)"
        why = judge("answer", outcome)
        assert not why, f"racing {method} {params}: {why}"
    return [o[1] for o in outcomes]


def ok(answer):
    return "result" in answer


def attempt(conn, method, params):
    """Whether `method` succeeded."""
    try:
        conn.call(method, params)
        return True
    except RpcError:
        return False


def ilog_races(sock, conn, base_a, base_b):
    """Racing calls on ilog bdevs on `base_a` and `base_b`: each answered, at
    most one of two exclusive ones succeeds, and the state stays
    consistent."""
    def exists(name):
        return any(b["name"] == name for b in conn.call("bdev_ilog_get_bdevs"))

    def gone(name):
        if exists(name):
            wait_until(f"{name} deleted", lambda: attempt(conn, "bdev_ilog_delete", {"name": name}) or not exists(name))

    create_a = ("bdev_ilog_create", {"name": "ilogA", "base_bdev_name": base_a})
    delete_a = ("bdev_ilog_delete", {"name": "ilogA"})
    for _ in range(3):
        conn.call(*create_a)
        r = race(sock, [delete_a, delete_a])
        assert sum(map(ok, r)) <= 1, f"two deletes of one bdev both succeeded: {r}"
        assert exists("ilogA") == (sum(map(ok, r)) == 0), f"after {r}"
        ilog_consistent(conn)
        gone("ilogA")
    r = race(sock, [create_a, ("bdev_ilog_create", {"name": "ilogA", "base_bdev_name": base_b})])
    assert sum(map(ok, r)) <= 1, f"one name created on two bases: {r}"
    ilog_consistent(conn)
    gone("ilogA")
    r = race(sock, [create_a, ("bdev_ilog_create", {"name": "ilogB", "base_bdev_name": base_a})])
    assert sum(map(ok, r)) <= 1, f"two ilog bdevs on one base: {r}"
    ilog_consistent(conn)
    gone("ilogA")
    gone("ilogB")
    for _ in range(10):
        r = race(sock, [create_a, delete_a])
        ilog_consistent(conn)
        gone("ilogA")
    # Snapshots (and every other method) during a delete: each snapshot
    # that succeeded is there once the base is opened again.
    taken = []
    for i in range(4):
        conn.call(*create_a)
        snap = f"race-{i}"
        r = race(sock, [delete_a, ("bdev_ilog_snapshot", {"name": "ilogA", "snapshot_name": snap}),
                        ("bdev_ilog_get_volumes", {"name": "ilogA"}), ("bdev_ilog_get_stats", {"name": "ilogA"}),
                        ("bdev_ilog_log_read", {"name": "ilogA", "count": 16, "with_data": True}),
                        ("bdev_ilog_compact", {"name": "ilogA"}),
                        ("bdev_ilog_set_policy", {"name": "ilogA", "policy": {}}),
                        ("bdev_ilog_event", {"name": "ilogA", "event": "nope"}), ("bdev_ilog_get_bdevs", {})])
        if ok(r[1]):
            taken.append(snap)
        ilog_consistent(conn)
        if not exists("ilogA"):
            conn.call(*create_a)
        vols = [v["volume_id"] for v in conn.call("bdev_ilog_get_volumes", {"name": "ilogA"})]
        assert vols == taken, f"volumes {vols}, snapshots that succeeded {taken}: {r}"
        gone("ilogA")
    conn.call(*create_a)
    conn.call("bdev_ilog_snapshot", {"name": "ilogA", "snapshot_name": "dv"})
    dv = ("bdev_ilog_delete_volume", {"name": "ilogA", "volume": "dv"})
    r = race(sock, [dv, dv])
    assert sum(map(ok, r)) <= 1, f"one volume deleted twice: {r}"
    ilog_consistent(conn)
    gone("ilogA")


def test_every_ilog_method_answers_bad_inputs_with_errors():
    """Every bdev_ilog_* method SPDK lists is sent a table of bad inputs
    over a raw socket (wrong types, missing and unknown params, positional
    params, huge numbers, unknown and over-long names, out-of-range values):
    each is answered with an error object, never a result, a dropped
    connection or a hang. Then racing creates, deletes, snapshots and
    volume deletes are each answered. The app keeps serving throughout:
    its bdevs stay consistent and the data written over NVMe/TCP before
    reads back the same."""
    wd = workdir()
    tgt = App(wd, SPDK_TGT, mem=2048, name="bad")
    try:
        conn = RawRpc(tgt.sock)
        for name, blocks in (("Malloc0", 16384), ("Malloc1", 16384), ("Malloc2", 16384), ("Tiny", 16)):
            conn.call("bdev_malloc_create", {"name": name, "num_blocks": blocks, "block_size": 4096})
        assert conn.call("bdev_ilog_create", {"name": "ilog0", "base_bdev_name": "Malloc0"}) == "ilog0"
        nqn = "nqn.2016-06.io.spdk:bad"
        conn.call("nvmf_create_transport", {"trtype": "TCP"})
        conn.call("nvmf_create_subsystem", {"nqn": nqn, "allow_any_host": True, "serial_number": "BAD001"})
        conn.call("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {"bdev_name": "ilog0", "nsid": 1}})
        conn.call("nvmf_subsystem_add_listener", {"nqn": nqn, "listen_address": {
            "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "4440"}})
        initiator = write_config(wd, "initiator.json", [
            {"method": "bdev_nvme_attach_controller", "params": {
                "name": "Ilog", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "4440",
                "subnqn": nqn}},
            {"method": "bdev_wait_for_examine"},
        ])
        known, newer, got = (os.path.join(wd, n) for n in ("known.bin", "newer.bin", "got.bin"))
        for path, size in ((known, 4 << 20), (newer, 2 << 20)):
            with open(path, "wb") as f:
                f.write(os.urandom(size))
        dd_write(wd, initiator, known, "Ilogn1")
        conn.call("bdev_ilog_snapshot", {"name": "ilog0", "snapshot_name": "keep"})
        dd_write(wd, initiator, newer, "Ilogn1")
        conn.call("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {"bdev_name": "ilog0@keep", "nsid": 2}})
        with open(known, "rb") as f, open(newer, "rb") as g:
            current = g.read() + f.read()[2 << 20:]

        def check_data(when):
            dd_read(wd, initiator, "Ilogn1", got, count=64)
            with open(got, "rb") as f:
                assert f.read() == current, f"ilog0 changed {when}"
            dd_read(wd, initiator, "Ilogn2", got, count=64)
            assert same(got, known), f"ilog0@keep changed {when}"

        check_data("before the table")
        before = ilog_consistent(conn)

        # The table covers every ilog method the app serves, and no other.
        served = {m for m in conn.call("rpc_get_methods") if m.startswith("bdev_ilog_")}
        tabled = {spec[0] for spec in ILOG_SPECS}
        assert served == tabled, f"served, not in the table: {served - tabled}; tabled, not served: {tabled - served}"
        cases = [c for spec in ILOG_SPECS for c in generic_bad_cases(spec)] + semantic_bad_cases()
        failures = run_bad_cases(tgt.sock, cases)

        # Over-long names the app may take: then listed, and deleted.
        long_name = "L" * 10000
        try:
            conn.call("bdev_ilog_create", {"name": long_name, "base_bdev_name": "Malloc2"})
            print(f"note: a {len(long_name)}-char ilog bdev name is accepted")
            assert conn.call("bdev_ilog_get_bdevs", {"name": long_name})[0]["name"] == long_name
            wait_until("the long-named bdev deleted", lambda: attempt(conn, "bdev_ilog_delete", {"name": long_name}))
        except RpcError as e:
            assert isinstance(e.code, int), e

        after = ilog_consistent(conn)
        for extra in sorted(after - before):
            print(f"removing bdev {extra[:80]!r}, created by a bad input")
            attempt(conn, "bdev_ilog_delete", {"name": extra})
        assert not before - after, f"bdevs lost to bad inputs: {before - after}"
        assert [v["volume_id"] for v in conn.call("bdev_ilog_get_volumes", {"name": "ilog0"})] == ["keep"]
        assert conn.call("bdev_ilog_get_policy", {"name": "ilog0"}) == {}, "a refused policy stuck"
        stats = conn.call("bdev_ilog_get_stats", {"name": "ilog0"})
        assert stats["block_size"] == 4096 and stats["volumes"] == 1, stats
        check_data("after the table")
        assert tgt.alive()

        # Racing calls, then the table again from three connections at once.
        ilog_races(tgt.sock, conn, "Malloc1", "Malloc2")
        import threading
        generic = [c for spec in ILOG_SPECS for c in generic_bad_cases(spec)]
        concurrent = []

        def share(k):
            concurrent.extend(run_bad_cases(tgt.sock, generic[k::3]))

        threads = [threading.Thread(target=share, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        failures += [f"(concurrently) {f}" for f in concurrent]

        ilog_consistent(conn)
        assert conn.call("bdev_ilog_get_stats", {"name": "ilog0"})["block_size"] == 4096
        check_data("after the races")
        assert tgt.alive()
        conn.close()
        print(f"{len(cases)} (method, bad input) cases over {len(tabled)} ilog methods")
        assert not failures, f"{len(failures)} bad input(s) not answered with the error due:\n" + "\n".join(failures)
    except BaseException:
        print(tgt.tail(), file=sys.stderr)
        tgt.kill()
        raise
    tgt.stop()
    shutil.rmtree(wd, ignore_errors=True)


TESTS = [
    test_snapshots_under_verify_and_reload,
    test_two_cores_split_forward_and_complete_on_the_submitter,
    test_bad_rpc_input_keeps_the_app_running,
    test_nvme_tcp_base_and_export,
    test_verify_over_the_whole_bdev_on_the_defaults,
    test_unmap_and_write_zeroes_storms_never_fill_the_log,
    test_a_reset_reaches_the_base_and_frees_a_stuck_write,
    test_log_read_with_data_is_bounded_in_bytes,
    test_delete_right_after_create_on_two_cores_succeeds,
    test_a_volume_named_like_another_bdev_is_refused_or_not_exported,
    test_policies_and_compaction_keep_volume_bdevs_in_step,
    test_a_volume_deleted_while_open_is_hot_removed_and_its_name_reused,
    test_copies_and_restores_through_files_and_bdevs,
    test_a_copy_leaves_over_nvme_tcp_and_is_restored_on_the_far_side,
    test_a_killed_nvme_tcp_primary_comes_back_and_resyncs_what_it_missed,
    test_every_ilog_method_answers_bad_inputs_with_errors,
]


def main():
    wanted = sys.argv[1:]
    unknown = set(wanted) - {t.__name__ for t in TESTS}
    if unknown:
        sys.exit(f"no such test: {', '.join(sorted(unknown))}")
    failed = []
    for t in TESTS:
        if wanted and t.__name__ not in wanted:
            continue
        start = time.time()
        try:
            t()
            print(f"ok   {t.__name__} ({time.time() - start:.1f}s)", flush=True)
        except Exception as e:  # noqa: BLE001 - report every test
            failed.append(t.__name__)
            print(f"FAIL {t.__name__}: {e}", flush=True)
        finally:
            kill_all()
    if failed:
        print(f"{len(failed)} SPDK test(s) failed: {', '.join(failed)}")
        sys.exit(1)
    print("all SPDK integration tests passed")


if __name__ == "__main__":
    main()
