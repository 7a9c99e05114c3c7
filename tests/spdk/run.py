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
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BDEVPERF_PY, REPO, SPDK, App, bdevperf_total, env, expect_error, kill_all, run_app, workdir, write_config  # noqa: E402

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


TESTS = [
    test_snapshots_under_verify_and_reload,
    test_two_cores_split_forward_and_complete_on_the_submitter,
    test_bad_rpc_input_keeps_the_app_running,
    test_nvme_tcp_base_and_export,
    test_verify_over_the_whole_bdev_on_the_defaults,
    test_unmap_and_write_zeroes_storms_never_fill_the_log,
    test_log_read_with_data_is_bounded_in_bytes,
    test_delete_right_after_create_on_two_cores_succeeds,
    test_a_volume_named_like_another_bdev_is_refused_or_not_exported,
    test_policies_and_compaction_keep_volume_bdevs_in_step,
    test_a_volume_deleted_while_open_is_hot_removed_and_its_name_reused,
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
