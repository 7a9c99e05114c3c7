//! `ilog_tgt` driven by the clients our users drive it with: SPDK's
//! `spdk-rpc` with the `rpc_ilog` plugin, `qemu-io` and `qemu-img` over NBD,
//! libnbd's `nbdinfo`, and `fio` with its nbd engine. `scripts/install-deps.sh`
//! installs them; a missing one fails the test with its name.

mod common;

use common::scratch_dir;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn tool(name: &str) -> Command {
    let found =
        Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().is_ok_and(|o| o.status.success());
    assert!(found, "{name} is not installed: run scripts/install-deps.sh");
    Command::new(name)
}

fn nbd_uri(sock: &Path) -> String {
    format!("nbd+unix:///?socket={}", sock.display())
}

/// A running `ilog_tgt`.
struct Tgt {
    child: Option<Child>,
    sock: PathBuf,
}

impl Tgt {
    fn start(dir: &Path, cpumask: &str, config: Option<&Path>) -> Tgt {
        let sock = dir.join("rpc.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ilog_tgt"));
        cmd.args(["-m", cpumask, "-r"]).arg(&sock).args(["-L", "warn"]);
        if let Some(c) = config {
            cmd.arg("-c").arg(c);
        }
        let child = cmd.stdin(Stdio::null()).spawn().expect("start ilog_tgt");
        let tgt = Tgt { child: Some(child), sock };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tgt.raw(&json!({"jsonrpc": "2.0", "id": 1, "method": "spdk_get_version"})).is_err() {
            assert!(Instant::now() < deadline, "ilog_tgt did not answer on {}", tgt.sock.display());
            std::thread::sleep(Duration::from_millis(50));
        }
        tgt
    }

    /// `spdk-rpc -s <sock> --plugin rpc_ilog <args>`: the parsed JSON output.
    fn rpc(&self, args: &[&str]) -> Result<Value, String> {
        let out = tool("spdk-rpc")
            .env("PYTHONPATH", Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts"))
            .arg("-s")
            .arg(&self.sock)
            .args(["--plugin", "rpc_ilog"])
            .args(args)
            .output()
            .expect("run spdk-rpc");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text.trim().to_owned())))
    }

    fn ok(&self, args: &[&str]) -> Value {
        self.rpc(args).unwrap_or_else(|e| panic!("spdk-rpc {args:?} failed: {e}"))
    }

    /// One raw JSON-RPC exchange on a fresh connection.
    fn raw(&self, request: &Value) -> std::io::Result<Value> {
        self.raw_bytes(request.to_string().as_bytes())
    }

    fn raw_bytes(&self, bytes: &[u8]) -> std::io::Result<Value> {
        let mut s = UnixStream::connect(&self.sock)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(bytes)?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        serde_json::from_str(&line).map_err(std::io::Error::other)
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// SIGTERM, then the exit status must be success.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().expect("reap");
        assert!(status.success(), "ilog_tgt exited with {status} after SIGTERM");
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs qemu-io commands on an NBD export; every command must succeed.
fn qemu_io(sock: &Path, read_only: bool, cmds: &[&str]) {
    let mut cmd = tool("qemu-io");
    cmd.args(["-f", "raw"]);
    if read_only {
        cmd.arg("-r");
    }
    for c in cmds {
        cmd.args(["-c", c]);
    }
    let out = cmd.arg(nbd_uri(sock)).output().expect("run qemu-io");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("failed") && !text.contains("error"),
        "qemu-io {cmds:?} on {}: {text}",
        sock.display()
    );
}

/// A raw image built independently of ilog, by qemu-io on a plain file.
fn expected_image(path: &Path, size: u64, cmds: &[&str]) {
    let out = tool("qemu-img").args(["create", "-f", "raw"]).arg(path).arg(size.to_string()).output().unwrap();
    assert!(out.status.success(), "qemu-img create: {}", String::from_utf8_lossy(&out.stderr));
    let mut cmd = tool("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    let out = cmd.arg(path).output().unwrap();
    assert!(out.status.success(), "qemu-io on {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
}

fn assert_same_image(export: &Path, image: &Path) {
    let out = tool("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(nbd_uri(export))
        .arg(image)
        .output()
        .expect("run qemu-img compare");
    assert!(
        out.status.success(),
        "{} differs from {}: {}{}",
        nbd_uri(export),
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn volume_bytes(tgt: &Tgt, bdev: &str) -> u64 {
    let b = &tgt.ok(&["bdev_get_bdevs", "-b", bdev])[0];
    b["num_blocks"].as_u64().unwrap() * b["block_size"].as_u64().unwrap()
}

#[test]
fn snapshots_taken_through_rpc_read_back_exactly_over_nbd() {
    let dir = scratch_dir("snap");
    let tgt = Tgt::start(&dir, "0x3", None);
    assert_eq!(tgt.ok(&["bdev_malloc_create", "-b", "Malloc0", "64", "4096"]), json!("Malloc0"));
    assert_eq!(tgt.ok(&["bdev_ilog_create", "-b", "Malloc0", "-p", "ilog0"]), json!("ilog0"));
    let size = volume_bytes(&tgt, "ilog0");
    let cur = dir.join("ilog0.nbd");
    tgt.ok(&["nbd_start_disk", "ilog0", cur.to_str().unwrap()]);

    let info = tool("nbdinfo").arg("--size").arg(nbd_uri(&cur)).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), size.to_string(), "nbdinfo sees the volume size");

    let step1 = ["write -P 0x11 0 1M", "write -P 0x12 3M 64k"];
    let step2 = ["write -P 0x22 0 512k", "write -z 3M 64k"];
    let step3 = ["write -P 0x33 256k 512k", "discard 0 64k"];
    qemu_io(&cur, false, &step1);
    let s1 = tgt.ok(&["bdev_ilog_snapshot", "ilog0", "-n", "first"]);
    assert_eq!(s1, json!({"volume_id": "first", "bdev": "ilog0@first"}));
    qemu_io(&cur, false, &step2);
    let s2 = tgt.ok(&["bdev_ilog_snapshot", "ilog0"]);
    let s2_name = s2["volume_id"].as_str().unwrap().to_owned();
    qemu_io(&cur, false, &step3);

    let (e1, e2, e3) = (dir.join("first.raw"), dir.join("second.raw"), dir.join("current.raw"));
    expected_image(&e1, size, &step1);
    expected_image(&e2, size, &[&step1[..], &step2[..]].concat());
    expected_image(&e3, size, &[&step1[..], &step2[..], &step3[..]].concat());

    let (x1, x2) = (dir.join("first.nbd"), dir.join("second.nbd"));
    tgt.ok(&["nbd_start_disk", "ilog0@first", x1.to_str().unwrap()]);
    tgt.ok(&["nbd_start_disk", &format!("ilog0@{s2_name}"), x2.to_str().unwrap()]);
    assert_same_image(&x1, &e1);
    assert_same_image(&x2, &e2);
    assert_same_image(&cur, &e3);
    qemu_io(&x1, true, &["read -P 0x11 0 1M", "read -P 0x12 3M 64k"]);

    // A snapshot volume is read-only.
    let mut w = tool("qemu-io");
    let out = w.args(["-f", "raw", "-c", "write -P 0x44 0 4k"]).arg(nbd_uri(&x1)).output().unwrap();
    assert!(
        !out.status.success() || String::from_utf8_lossy(&out.stdout).contains("failed"),
        "a write to a snapshot export must fail"
    );

    let vols = tgt.ok(&["bdev_ilog_get_volumes", "ilog0"]);
    let names: Vec<&str> = vols.as_array().unwrap().iter().map(|v| v["volume_id"].as_str().unwrap()).collect();
    assert_eq!(names, ["first", s2_name.as_str()]);
    let log = tgt.ok(&["bdev_ilog_log_read", "ilog0", "-n", "1000"]);
    let entries = log["entries"].as_array().unwrap();
    assert!(!entries.is_empty() && entries.windows(2).all(|w| w[0]["sequence"].as_u64() < w[1]["sequence"].as_u64()));
    // The oldest volume drains into the baseline; the next one's entries
    // stay in the log while an older volume lives.
    assert!(entries.iter().any(|e| e["volume_id"] == json!(s2_name)), "{s2_name}'s entries are in the log");

    // A volume in use cannot be deleted; once unexported it can.
    assert!(tgt.rpc(&["bdev_ilog_delete_volume", "ilog0", "first"]).is_err());
    tgt.ok(&["nbd_stop_disk", x1.to_str().unwrap()]);
    tgt.ok(&["bdev_ilog_delete_volume", "ilog0", "first"]);
    let vols = tgt.ok(&["bdev_ilog_get_volumes", "ilog0"]);
    assert_eq!(vols.as_array().unwrap().len(), 1, "first is gone: {vols}");
    assert_same_image(&x2, &e2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// fio writes 48 MiB at random and verifies it over NBD while snapshots
/// are taken every 100 ms. The first snapshot keeps the baseline where it
/// is, so every write after it is a version the log holds: more than the
/// default log share of a 256 MiB base. With `retention.on_full` at
/// `delete_oldest`, the oldest volumes are retired as the log fills, and no
/// write fails.
#[test]
fn fio_verifies_its_data_over_nbd_while_snapshots_are_taken() {
    let dir = scratch_dir("fio");
    let tgt = Tgt::start(&dir, "0x3", None);
    tgt.ok(&["bdev_malloc_create", "-b", "Malloc0", "256", "4096"]);
    tgt.ok(&["bdev_ilog_create", "-b", "Malloc0", "-p", "ilog0"]);
    tgt.ok(&["bdev_ilog_set_policy", "ilog0", r#"{"retention": {"on_full": "delete_oldest"}}"#]);
    let sock = dir.join("ilog0.nbd");
    tgt.ok(&["nbd_start_disk", "ilog0", sock.to_str().unwrap()]);
    let fio = tool("fio")
        .args(["--name=verify", "--ioengine=nbd", "--rw=randwrite", "--bs=4k", "--size=48M", "--iodepth=16"])
        .args(["--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--randrepeat=0", "--numjobs=1"])
        // fio would leave its verify state file in the working directory.
        .arg("--verify_state_save=0")
        .arg(format!("--uri={}", nbd_uri(&sock)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fio");
    let mut snapshots = 0;
    let mut fio = fio;
    while fio.try_wait().unwrap().is_none() && snapshots < 40 {
        tgt.ok(&["bdev_ilog_snapshot", "ilog0"]);
        snapshots += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = fio.wait().unwrap();
    let mut out = String::new();
    fio.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    fio.stderr.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(status.success() && !out.contains("verify failed"), "fio verify over NBD failed: {out}");
    assert!(snapshots >= 2, "snapshots were taken while fio ran ({snapshots})");
    let stats = tgt.ok(&["bdev_ilog_get_stats", "ilog0"]);
    assert!(stats["volumes_retired"].as_u64().unwrap() >= 1, "48 MiB of versions fit a smaller log: {stats}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// fio writes the whole volume three times over at random and verifies
/// every block, over NBD, on the default layout: the log drains into the
/// baseline and no write fails.
fn whole_volume_fio(dir: &Path, tgt: &Tgt, base_bytes: u64) {
    let size = volume_bytes(tgt, "ilog0");
    assert!(size * 100 >= base_bytes * 80, "the volume ({size}) is under 80 % of the base ({base_bytes})");
    let sock = dir.join("ilog0.nbd");
    tgt.ok(&["nbd_start_disk", "ilog0", sock.to_str().unwrap()]);
    let out = tool("fio")
        .args(["--name=whole", "--ioengine=nbd", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--loops=3"])
        .arg(format!("--size={size}"))
        .args(["--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--numjobs=1", "--verify_state_save=0"])
        .arg(format!("--uri={}", nbd_uri(&sock)))
        .output()
        .expect("run fio");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains("verify failed"), "fio over the whole volume failed: {text}");
    let stats = tgt.ok(&["bdev_ilog_get_stats", "ilog0"]);
    let written = stats["user_bytes_written"].as_u64().unwrap();
    assert!(written >= 3 * size && stats["drains"].as_u64().unwrap() > 0, "{stats}");
}

#[test]
fn fio_fills_and_overwrites_the_whole_volume_on_a_malloc_base() {
    let dir = scratch_dir("whole-malloc");
    let tgt = Tgt::start(&dir, "0x3", None);
    tgt.ok(&["bdev_malloc_create", "-b", "Malloc0", "256", "4096"]);
    tgt.ok(&["bdev_ilog_create", "-b", "Malloc0", "-p", "ilog0"]);
    whole_volume_fio(&dir, &tgt, 256 * MIB);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fio_fills_and_overwrites_the_whole_volume_on_a_file_base() {
    let dir = scratch_dir("whole-file");
    let base = dir.join("base.img");
    std::fs::File::create(&base).unwrap().set_len(256 * MIB).unwrap();
    let tgt = Tgt::start(&dir, "0x3", None);
    tgt.ok(&["bdev_aio_create", base.to_str().unwrap(), "Aio0", "4096"]);
    tgt.ok(&["bdev_ilog_create", "-b", "Aio0", "-p", "ilog0"]);
    whole_volume_fio(&dir, &tgt, 256 * MIB);
    let _ = std::fs::remove_dir_all(&dir);
}

fn file_config(dir: &Path, base: &Path, nbd: &Path) -> PathBuf {
    let config = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_aio_create", "params": {"name": "Aio0", "filename": base, "block_size": 4096}},
            {"method": "bdev_ilog_create", "params": {"name": "ilog0", "base_bdev_name": "Aio0"}},
        ]},
        {"subsystem": "nbd", "config": [
            {"method": "nbd_start_disk", "params": {"bdev_name": "ilog0", "nbd_device": nbd}},
        ]},
    ]});
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

#[test]
fn a_killed_target_restarts_with_every_flushed_block_and_snapshot() {
    let dir = scratch_dir("crash");
    let base = dir.join("base.img");
    std::fs::File::create(&base).unwrap().set_len(128 * MIB).unwrap();
    let nbd = dir.join("ilog0.nbd");
    let config = file_config(&dir, &base, &nbd);
    let mut tgt = Tgt::start(&dir, "0x3", Some(&config));

    qemu_io(&nbd, false, &["write -P 0x51 0 2M", "flush"]);
    tgt.ok(&["bdev_ilog_snapshot", "ilog0", "-n", "before"]);
    qemu_io(&nbd, false, &["write -P 0x52 1M 2M", "flush"]);
    // Keep writing (unflushed) at 8M.. while the target is killed.
    let mut writer = tool("qemu-io")
        .args(["-f", "raw"])
        .args((0..200).flat_map(|i| ["-c".to_owned(), format!("write -P 0x53 {}k 64k", 8192 + (i % 64) * 64)]))
        .arg(nbd_uri(&nbd))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    tgt.kill9();
    let _ = writer.wait();

    let tgt = Tgt::start(&dir, "0x1", Some(&config));
    qemu_io(&nbd, true, &["read -P 0x51 0 1M", "read -P 0x52 1M 2M"]);
    let snap = dir.join("before.nbd");
    tgt.ok(&["nbd_start_disk", "ilog0@before", snap.to_str().unwrap()]);
    qemu_io(&snap, true, &["read -P 0x51 0 2M", "read -P 0 2M 2M"]);
    // The region written while the target died holds whole old or new 64k writes.
    let out = tool("nbdcopy").arg(nbd_uri(&nbd)).arg("-").output().unwrap();
    assert!(out.status.success(), "nbdcopy: {}", String::from_utf8_lossy(&out.stderr));
    let image = out.stdout;
    for block in image[8 * MIB as usize..12 * MIB as usize].chunks(4096) {
        assert!(
            block.iter().all(|&b| b == 0) || block.iter().all(|&b| b == 0x53),
            "a block written during the crash holds other bytes"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn save_config_restarts_into_the_same_bdevs_and_volumes() {
    let dir = scratch_dir("config");
    let base = dir.join("base.img");
    std::fs::File::create(&base).unwrap().set_len(64 * MIB).unwrap();
    let mut tgt = Tgt::start(&dir, "0x1", None);
    tgt.ok(&["bdev_aio_create", base.to_str().unwrap(), "Aio0", "4096"]);
    tgt.ok(&["bdev_ilog_create", "-b", "Aio0", "-p", "ilog0"]);
    let nbd = dir.join("ilog0.nbd");
    tgt.ok(&["nbd_start_disk", "ilog0", nbd.to_str().unwrap()]);
    qemu_io(&nbd, false, &["write -P 0x61 0 1M"]);
    tgt.ok(&["bdev_ilog_snapshot", "ilog0", "-n", "kept"]);
    let saved = tgt.ok(&["save_config"]);
    let path = dir.join("saved.json");
    std::fs::write(&path, saved.to_string()).unwrap();
    tgt.stop();

    let tgt = Tgt::start(&dir, "0x3", Some(&path));
    let vols = tgt.ok(&["bdev_ilog_get_volumes", "ilog0"]);
    assert_eq!(vols[0]["volume_id"], json!("kept"));
    qemu_io(&nbd, true, &["read -P 0x61 0 1M"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_requests_get_spdk_errors_and_the_target_keeps_serving() {
    let dir = scratch_dir("bad");
    let tgt = Tgt::start(&dir, "0x1", None);
    let call = |method: &str, params: Value| {
        tgt.raw(&json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params})).unwrap()
    };
    assert_eq!(
        call("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 16384, "block_size": 4096}))["result"],
        json!("Malloc0")
    );
    assert_eq!(
        call("bdev_ilog_create", json!({"name": "ilog0", "base_bdev_name": "Malloc0"}))["result"],
        json!("ilog0")
    );
    let nbd = dir.join("x.nbd");
    call("nbd_start_disk", json!({"bdev_name": "ilog0", "nbd_device": nbd}));

    let cases: Vec<(&str, Value, i64)> = vec![
        ("no_such_method", json!({}), -32601),
        ("bdev_ilog_create", json!({"name": "ilog1"}), -32602),
        ("bdev_ilog_create", json!({"name": "ilog1", "base_bdev_name": "Malloc0", "bogus": 1}), -32602),
        ("bdev_ilog_create", json!({"name": "ilog1", "base_bdev_name": "Nope"}), -19),
        ("bdev_ilog_create", json!({"name": "ilog1", "base_bdev_name": "Malloc0"}), -16),
        ("bdev_ilog_create", json!({"name": "ilog0", "base_bdev_name": "Malloc0"}), -17),
        ("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 16, "block_size": 4096}), -17),
        ("bdev_malloc_create", json!({"num_blocks": "many", "block_size": 4096}), -32602),
        ("bdev_malloc_delete", json!({"name": "Malloc0"}), -16),
        ("bdev_ilog_delete", json!({"name": "ilog0"}), -16),
        ("bdev_ilog_snapshot", json!({"name": "nope"}), -19),
        ("bdev_ilog_snapshot", json!({"name": "ilog0", "snapshot_name": "bad/name"}), -22),
        ("bdev_ilog_delete_volume", json!({"name": "ilog0", "volume": "missing"}), -2),
        ("bdev_ilog_log_read", json!({"name": "ilog0", "count": 0}), -32602),
        ("nbd_start_disk", json!({"bdev_name": "ilog0", "nbd_device": nbd}), -16),
        ("nbd_start_disk", json!({"bdev_name": "ilog0", "nbd_device": "10.1.2.3:10809"}), -32602),
        ("nbd_stop_disk", json!({"nbd_device": "/nowhere"}), -19),
        ("bdev_get_bdevs", json!({"name": "nope"}), -19),
    ];
    for (method, params, code) in cases {
        let r = call(method, params.clone());
        assert_eq!(r["error"]["code"], json!(code), "{method} {params}: {r}");
        assert!(r["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{method}: an error message");
    }
    // Malformed JSON and invalid requests.
    assert_eq!(
        tgt.raw_bytes(b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": }\n").unwrap()["error"]["code"],
        json!(-32700)
    );
    assert_eq!(tgt.raw(&json!({"jsonrpc": "2.0", "id": 1, "method": 5})).unwrap()["error"]["code"], json!(-32600));
    // Still serving, nothing lost.
    assert!(call("spdk_get_version", Value::Null)["result"]["version"].is_string());
    qemu_io(&nbd, false, &["write -P 0x71 0 64k", "read -P 0x71 0 64k"]);
    let methods = call("rpc_get_methods", json!({}))["result"].clone();
    for m in ["bdev_ilog_create", "bdev_ilog_snapshot", "nbd_start_disk", "save_config"] {
        assert!(methods.as_array().unwrap().contains(&json!(m)), "rpc_get_methods lists {m}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Compaction (in place, in the background, into the baseline) and
/// policies through the real client; the exports read back exactly.
#[test]
fn compaction_and_policies_through_rpc_keep_every_image() {
    let dir = scratch_dir("compact");
    let tgt = Tgt::start(&dir, "0x3", None);
    tgt.ok(&["bdev_malloc_create", "-b", "Malloc0", "64", "4096"]);
    tgt.ok(&[
        "bdev_ilog_create",
        "-b",
        "Malloc0",
        "-p",
        "ilog0",
        "--segment-size-kib",
        "256",
        "--stripe-size-kib",
        "64",
    ]);
    let size = volume_bytes(&tgt, "ilog0");
    let cur = dir.join("ilog0.nbd");
    tgt.ok(&["nbd_start_disk", "ilog0", cur.to_str().unwrap()]);

    let step1 = ["write -P 0x11 0 2M", "write -P 0x12 1M 512k"];
    let step2 = ["write -P 0x21 512k 1M", "write -z 3M 64k"];
    qemu_io(&cur, false, &step1);
    tgt.ok(&["bdev_ilog_snapshot", "ilog0", "-n", "a"]);
    qemu_io(&cur, false, &step2);
    tgt.ok(&["bdev_ilog_snapshot", "ilog0", "-n", "b"]);
    qemu_io(&cur, false, &["write -P 0x31 0 256k"]);

    // In place, in the background: a job id, then its state in the stats.
    let job = tgt.ok(&["bdev_ilog_compact", "ilog0", "--background"]);
    let id = job["job"].as_u64().expect("a job id");
    let done = (0..100).any(|_| {
        let stats = tgt.ok(&["bdev_ilog_get_stats", "ilog0"]);
        let state = stats["jobs"].as_array().unwrap().iter().find(|j| j["job"] == id).unwrap()["state"].clone();
        assert!(state == "running" || state == "done", "job state {state}");
        std::thread::sleep(Duration::from_millis(50));
        state == "done"
    });
    assert!(done, "the background compaction finished");
    // Folding b into the baseline retires a; b reads from the baseline.
    assert_eq!(tgt.ok(&["bdev_ilog_compact", "ilog0", "-v", "b", "-m", "baseline"]), json!(true));
    let vols = tgt.ok(&["bdev_ilog_get_volumes", "ilog0"]);
    assert_eq!(vols.as_array().unwrap().iter().map(|v| v["volume_id"].clone()).collect::<Vec<_>>(), [json!("b")]);
    let stats = tgt.ok(&["bdev_ilog_get_stats", "ilog0"]);
    let count = |k: &str| stats[k].as_u64().unwrap();
    assert!(count("compactions") >= 1 && count("drains") >= 1 && count("segments_freed") > 0, "{stats}");

    let (eb, ec) = (dir.join("b.raw"), dir.join("current.raw"));
    expected_image(&eb, size, &[&step1[..], &step2[..]].concat());
    expected_image(&ec, size, &[&step1[..], &step2[..], &["write -P 0x31 0 256k"][..]].concat());
    let xb = dir.join("b.nbd");
    tgt.ok(&["nbd_start_disk", "ilog0@b", xb.to_str().unwrap()]);
    assert_same_image(&xb, &eb);
    assert_same_image(&cur, &ec);

    // Policies: an invalid one names the field and changes nothing.
    let err = tgt.rpc(&["bdev_ilog_set_policy", "ilog0", r#"{"retention": {"keep_last": "all"}}"#]).unwrap_err();
    assert!(err.contains("-22") && err.contains("retention.keep_last"), "{err}");
    assert_eq!(tgt.ok(&["bdev_ilog_get_policy", "ilog0"]), json!({}));
    let policy = json!({"events": {"on": {"backup-done": ["snapshot"]}}, "volume_id": {"scheme": "template", "template": "bk-%n"}});
    tgt.ok(&["bdev_ilog_set_policy", "ilog0", &policy.to_string()]);
    assert_eq!(tgt.ok(&["bdev_ilog_get_policy", "ilog0"]), policy);
    tgt.ok(&["bdev_ilog_event", "ilog0", "backup-done"]);
    let appeared = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        let vols = tgt.ok(&["bdev_ilog_get_volumes", "ilog0"]);
        vols.as_array().unwrap().iter().any(|v| v["volume_id"].as_str().unwrap().starts_with("bk-"))
    });
    assert!(appeared, "the event's snapshot was taken");
    let err = tgt.rpc(&["bdev_ilog_event", "ilog0", "restore-done"]).unwrap_err();
    assert!(err.contains("-22") && err.contains("restore-done"), "{err}");
}

/// Waits for background job `id` to end; its final object.
fn wait_job(tgt: &Tgt, id: &Value) -> Value {
    for _ in 0..600 {
        let jobs = tgt.ok(&["bdev_ilog_get_jobs"]);
        let job = jobs.as_array().unwrap().iter().find(|j| j["job"] == *id).expect("the job is listed").clone();
        if job["state"] != "running" {
            return job;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("job {id} still running after 30 s");
}

/// Tertiary copy with the real clients: the diff between two volumes,
/// a full copy to a file and an incremental to a malloc bdev, both
/// restored into a second ilog bdev (each volume, and the head, equal to
/// the source's as qemu-img compares them over NBD) and onto a plain
/// bdev; a damaged stream is refused before anything is written.
#[test]
fn copies_and_restores_through_rpc_read_back_exactly_over_nbd() {
    let dir = scratch_dir("copy");
    let tgt = Tgt::start(&dir, "0x3", None);
    for (base, mib) in [("Malloc0", "64"), ("Malloc1", "64"), ("Malloc2", "16"), ("Malloc3", "64")] {
        tgt.ok(&["bdev_malloc_create", "-b", base, mib, "4096"]);
    }
    tgt.ok(&["bdev_ilog_create", "-b", "Malloc0", "-p", "src"]);
    tgt.ok(&["bdev_ilog_create", "-b", "Malloc1", "-p", "dst"]);
    let size = volume_bytes(&tgt, "src");
    let cur = dir.join("src.nbd");
    tgt.ok(&["nbd_start_disk", "src", cur.to_str().unwrap()]);
    let step1 = ["write -P 0x11 0 1M", "write -P 0x12 5M 64k"];
    let step2 = ["write -P 0x22 512k 64k", "write -z 5M 16k", "write -P 0x23 9M 4k"];
    qemu_io(&cur, false, &step1);
    tgt.ok(&["bdev_ilog_snapshot", "src", "-n", "v1"]);
    qemu_io(&cur, false, &step2);
    tgt.ok(&["bdev_ilog_snapshot", "src", "-n", "v2"]);
    qemu_io(&cur, false, &["write -P 0x33 0 4k"]);

    let diff = tgt.ok(&["bdev_ilog_diff", "src", "v2", "-b", "v1"]);
    assert_eq!(
        diff,
        json!([{"lba": 128, "num_blocks": 16, "kind": "data"}, {"lba": 1280, "num_blocks": 4, "kind": "zero"},
               {"lba": 2304, "num_blocks": 1, "kind": "data"}])
    );

    let full = dir.join("v1.stream");
    let job = tgt.ok(&["bdev_ilog_copy", "src", "v1", full.to_str().unwrap()]);
    let done = wait_job(&tgt, &job["job"]);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!((done["kind"].clone(), done["bdev"].clone()), (json!("copy"), json!("src")));
    assert_eq!(done["bytes_done"], done["bytes_total"]);
    let job = tgt.ok(&["bdev_ilog_copy", "src", "v2", "Malloc2", "-b", "v1"]);
    assert_eq!(wait_job(&tgt, &job["job"])["state"], "done");
    // A claimed base is no place for a stream.
    let err = tgt.rpc(&["bdev_ilog_copy", "src", "v2", "Malloc1"]).unwrap_err();
    assert!(err.contains("-16") && err.contains("claimed"), "{err}");

    // Out of order: the incremental needs v1 there first.
    let err = tgt.rpc(&["bdev_ilog_restore", "dst", "Malloc2"]).unwrap_err();
    assert!(err.contains("in order"), "{err}");
    for source in [full.to_str().unwrap(), "Malloc2"] {
        let job = tgt.ok(&["bdev_ilog_restore", "dst", source]);
        assert_eq!(wait_job(&tgt, &job["job"])["state"], "done");
    }
    let (e1, e2) = (dir.join("v1.raw"), dir.join("v2.raw"));
    expected_image(&e1, size, &step1);
    expected_image(&e2, size, &[&step1[..], &step2[..]].concat());
    let (d1, d2, dh) = (dir.join("d1.nbd"), dir.join("d2.nbd"), dir.join("dh.nbd"));
    tgt.ok(&["nbd_start_disk", "dst@v1", d1.to_str().unwrap()]);
    tgt.ok(&["nbd_start_disk", "dst@v2", d2.to_str().unwrap()]);
    tgt.ok(&["nbd_start_disk", "dst", dh.to_str().unwrap()]);
    assert_same_image(&d1, &e1);
    assert_same_image(&d2, &e2);
    assert_same_image(&dh, &e2);

    // Onto a plain bdev: the image of v1.
    let job = tgt.ok(&["bdev_ilog_restore", "Malloc3", full.to_str().unwrap()]);
    assert_eq!(wait_job(&tgt, &job["job"])["state"], "done");
    let m3 = dir.join("m3.nbd");
    tgt.ok(&["nbd_start_disk", "Malloc3", m3.to_str().unwrap()]);
    qemu_io(&m3, true, &["read -P 0x11 0 1M", "read -P 0x12 5M 64k", "read -P 0 1M 4M"]);

    // A damaged stream fails its job, and makes no volume.
    let mut bytes = std::fs::read(&full).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    let bad = dir.join("bad.stream");
    std::fs::write(&bad, &bytes).unwrap();
    tgt.ok(&["bdev_malloc_create", "-b", "Malloc4", "64", "4096"]);
    tgt.ok(&["bdev_ilog_create", "-b", "Malloc4", "-p", "dst2"]);
    let job = tgt.ok(&["bdev_ilog_restore", "dst2", bad.to_str().unwrap()]);
    let failed = wait_job(&tgt, &job["job"]);
    let state = failed["state"].as_str().unwrap();
    assert!(state.starts_with("failed") && state.contains("CRC mismatch"), "{failed}");
    // Verified before anything is written: nothing to resume.
    assert!(failed["resume_token"].is_null(), "{failed}");
    assert_eq!(tgt.ok(&["bdev_ilog_get_volumes", "dst2"]), json!([]));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kill -9` of the target in the middle of a copy: after a restart the
/// same call with the token the job last reported goes on from there (the
/// resumed job starts with bytes already done), and the stream restores a
/// volume identical to the source's, as qemu-img compares them over NBD.
#[test]
fn a_copy_killed_mid_way_resumes_after_a_restart_and_restores_exactly() {
    let dir = scratch_dir("copy-kill");
    let base = dir.join("base.img");
    std::fs::File::create(&base).unwrap().set_len(512 * MIB).unwrap();
    let nbd = dir.join("ilog0.nbd");
    let config = file_config(&dir, &base, &nbd);
    let mut tgt = Tgt::start(&dir, "0x1", Some(&config));
    let steps = ["write -P 0x5a 0 240M", "write -P 0x5b 100M 4M", "flush"];
    qemu_io(&nbd, false, &steps);
    tgt.ok(&["bdev_ilog_snapshot", "ilog0", "-n", "v1"]);
    let stream = dir.join("v1.stream");
    let copy = json!({"name": "ilog0", "volume": "v1", "target": stream});
    let job = |tgt: &Tgt, id: &Value| -> Value {
        let jobs = tgt.raw(&json!({"jsonrpc": "2.0", "id": 1, "method": "bdev_ilog_get_jobs"})).unwrap();
        jobs["result"].as_array().unwrap().iter().find(|j| j["job"] == *id).cloned().expect("listed")
    };
    let started = tgt.raw(&json!({"jsonrpc": "2.0", "id": 1, "method": "bdev_ilog_copy", "params": copy})).unwrap();
    let id = started["result"]["job"].clone();
    // Killed once a resume token past the start is reported.
    let token = (0..20_000)
        .find_map(|_| {
            let j = job(&tgt, &id);
            assert_eq!(j["state"], "running", "the copy ended before the kill: {j}");
            let past_start = j["bytes_done"].as_u64().unwrap() > 40 * MIB;
            std::thread::sleep(Duration::from_millis(1));
            past_start.then(|| j["resume_token"].as_str().map(str::to_owned)).flatten()
        })
        .expect("a resume token");
    tgt.kill9();

    let tgt = Tgt::start(&dir, "0x1", Some(&config));
    let mut resumed = copy.clone();
    resumed["resume_token"] = json!(token);
    let again = tgt.raw(&json!({"jsonrpc": "2.0", "id": 2, "method": "bdev_ilog_copy", "params": resumed})).unwrap();
    let id = again["result"]["job"].clone();
    let first = job(&tgt, &id);
    assert!(first["bytes_done"].as_u64().unwrap() >= 16 * MIB, "the resumed copy started over: {first}");
    let done = wait_job(&tgt, &id);
    assert_eq!(done["state"], "done", "{done}");

    tgt.ok(&["bdev_malloc_create", "-b", "Malloc9", "512", "4096"]);
    tgt.ok(&["bdev_ilog_create", "-b", "Malloc9", "-p", "dst"]);
    let restore = tgt.ok(&["bdev_ilog_restore", "dst", stream.to_str().unwrap()]);
    assert_eq!(wait_job(&tgt, &restore["job"])["state"], "done");
    let (expected, restored) = (dir.join("v1.raw"), dir.join("dst-v1.nbd"));
    expected_image(&expected, volume_bytes(&tgt, "ilog0"), &steps[..2]);
    tgt.ok(&["nbd_start_disk", "dst@v1", restored.to_str().unwrap()]);
    assert_same_image(&restored, &expected);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `ilog` command: a diff, then a copy and a restore followed to their
/// end, with plain progress lines through a pipe and a progress bar in a
/// pseudo-terminal (`script`); a failing job prints how to resume.
#[test]
fn the_ilog_command_follows_copies_with_progress() {
    let dir = scratch_dir("cli");
    let tgt = Tgt::start(&dir, "0x1", None);
    tgt.ok(&["bdev_malloc_create", "-b", "Malloc0", "128", "4096"]);
    tgt.ok(&["bdev_malloc_create", "-b", "Malloc1", "128", "4096"]);
    tgt.ok(&["bdev_ilog_create", "-b", "Malloc0", "-p", "src"]);
    tgt.ok(&["bdev_ilog_create", "-b", "Malloc1", "-p", "dst"]);
    let cur = dir.join("src.nbd");
    tgt.ok(&["nbd_start_disk", "src", cur.to_str().unwrap()]);
    qemu_io(&cur, false, &["write -P 0x11 0 32M"]);
    tgt.ok(&["bdev_ilog_snapshot", "src", "-n", "v1"]);
    qemu_io(&cur, false, &["write -P 0x22 4M 4k"]);
    tgt.ok(&["bdev_ilog_snapshot", "src", "-n", "v2"]);
    let ilog = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ilog")).arg("-s").arg(&tgt.sock).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = ilog(&["diff", "src", "v2", "-b", "v1"]);
    assert!(ok, "{err}");
    assert_eq!(out, "1024 1 data\n");

    let (full, incr) = (dir.join("v1.stream"), dir.join("v2.stream"));
    let (ok, out, err) = ilog(&["copy", "src", "v1", full.to_str().unwrap()]);
    assert!(ok, "{err}");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.starts_with("copy job") && last.contains("(100 %)") && last.ends_with("done"), "{out}");

    // In a pseudo-terminal: a progress bar, not lines.
    let cmd = format!("{} -s {} copy src v2 {} -b v1", env!("CARGO_BIN_EXE_ilog"), tgt.sock.display(), incr.display());
    let out = tool("script").args(["-qec", &cmd, "/dev/null"]).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("copy job") && shown.contains("done") && shown.contains('\u{1b}'),
        "no progress bar: {shown:?}"
    );
    assert!(!shown.contains("MiB/s, done"), "plain lines on a terminal: {shown:?}");

    for stream in [&full, &incr] {
        let (ok, _, err) = ilog(&["restore", "dst", stream.to_str().unwrap()]);
        assert!(ok, "{err}");
    }
    let vols = tgt.ok(&["bdev_ilog_get_volumes", "dst"]);
    assert_eq!(
        vols.as_array().unwrap().iter().map(|v| v["volume_id"].clone()).collect::<Vec<_>>(),
        [json!("v1"), json!("v2")]
    );

    // A job that fails says how to go on (here: a stream that is no stream).
    let junk = dir.join("junk.stream");
    std::fs::write(&junk, vec![7u8; 8192]).unwrap();
    let (ok, _, err) = ilog(&["restore", "dst", junk.to_str().unwrap()]);
    assert!(!ok && err.contains("not a copy stream"), "{err}");
    let bad = dir.join("bad.stream");
    let mut bytes = std::fs::read(&full).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&bad, bytes).unwrap();
    tgt.ok(&["bdev_malloc_create", "-b", "Malloc2", "128", "4096"]);
    tgt.ok(&["bdev_ilog_create", "-b", "Malloc2", "-p", "dst2"]);
    let (ok, _, err) = ilog(&["restore", "dst2", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("restore job") && err.contains("CRC mismatch"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bdev_ilog_get_stats` over a raw connection (quicker than spdk-rpc, for
/// polling): the primaries by name.
fn primaries(tgt: &Tgt, ilog: &str) -> serde_json::Map<String, Value> {
    let stats = tgt.raw(&json!({"jsonrpc": "2.0", "id": 1, "method": "bdev_ilog_get_stats", "params": {"name": ilog}}));
    let stats = stats.expect("bdev_ilog_get_stats answers");
    let list = stats["result"]["primaries"].as_array().unwrap_or_else(|| panic!("no primaries: {stats}")).clone();
    list.into_iter().map(|p| (p["name"].as_str().unwrap().to_owned(), p)).collect()
}

/// Polls the stats until `done(primaries)`, at most `secs` seconds; the
/// primaries then.
fn wait_primaries(
    tgt: &Tgt,
    secs: u64,
    what: &str,
    done: impl Fn(&serde_json::Map<String, Value>) -> bool,
) -> serde_json::Map<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let p = primaries(tgt, "ilog0");
        if done(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "{what}: not after {secs} s: {p:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn all_clean(p: &serde_json::Map<String, Value>) -> bool {
    p.values().all(|p| p["state"] == "healthy" && p["dirty_blocks"] == 0)
}

/// The first `image.len()` bytes of `file` equal `image`, block for block.
fn assert_file_holds(file: &Path, image: &[u8], bs: usize) {
    let data = std::fs::read(file).unwrap();
    assert!(data.len() >= image.len(), "{} is shorter than the volume", file.display());
    let differ: Vec<usize> = (0..image.len() / bs).filter(|b| data[b * bs..][..bs] != image[b * bs..][..bs]).collect();
    assert!(
        differ.is_empty(),
        "{} differs from the volume in {} blocks of {bs}, the first ones {:?}",
        file.display(),
        differ.len(),
        &differ[..differ.len().min(8)]
    );
}

/// Two file primaries mirror a malloc base's volume, one through SPDK's
/// error bdev (`EE_Aio1`). fio writes 24 MiB at random over NBD and
/// verifies it while, a moment in, `bdev_error_inject_error` makes every
/// I/O of `EE_Aio1` fail: no client error, `EE_Aio1` degraded with the
/// blocks it missed dirty, `Aio2` healthy. Once the errors are cleared,
/// `bdev_ilog_rebuild_primary` copies only those blocks (incremental), and
/// each primary file then holds the volume byte for byte, as a snapshot of
/// it (whose reads never go to a primary) reads over NBD. A `--full`
/// rebuild then restores a primary whose file was overwritten behind the
/// target's back.
#[test]
fn fio_verifies_over_nbd_while_a_primary_fails_and_the_rebuild_makes_it_equal() {
    let dir = scratch_dir("primaries");
    let tgt = Tgt::start(&dir, "0x3", None);
    tgt.ok(&["bdev_malloc_create", "-b", "Malloc0", "128", "4096"]);
    let (aio1, aio2) = (dir.join("aio1.img"), dir.join("aio2.img"));
    for (file, name) in [(&aio1, "Aio1"), (&aio2, "Aio2")] {
        // As large as the base: larger than the volume.
        std::fs::File::create(file).unwrap().set_len(128 * MIB).unwrap();
        tgt.ok(&["bdev_aio_create", file.to_str().unwrap(), name, "4096"]);
    }
    assert_eq!(tgt.ok(&["bdev_error_create", "Aio1"]), json!(true));
    let ee = &tgt.ok(&["bdev_get_bdevs", "-b", "EE_Aio1"])[0];
    assert_eq!(ee["product_name"], "Error Injection Disk", "{ee}");
    tgt.ok(&["bdev_ilog_create", "-b", "Malloc0", "-p", "ilog0", "--primary-bdev-names", "EE_Aio1 Aio2"]);
    assert_eq!(tgt.ok(&["bdev_get_bdevs", "-b", "EE_Aio1"])[0]["claimed"], json!(true));
    let err = tgt.rpc(&["bdev_error_delete", "EE_Aio1"]).unwrap_err();
    assert!(err.contains("-16"), "a claimed error bdev is not deleted: {err}");
    let size = volume_bytes(&tgt, "ilog0");
    let volume_blocks = size / 4096;
    // New primaries are synced whole first.
    wait_primaries(&tgt, 30, "the first sync", all_clean);

    let sock = dir.join("ilog0.nbd");
    tgt.ok(&["nbd_start_disk", "ilog0", sock.to_str().unwrap()]);
    let fio_bytes = 24 * MIB;
    // Flushed before the failure: not rebuilt.
    qemu_io(&sock, false, &["write -P 0x5c 24M 4M", "flush"]);
    let written = || {
        let s =
            tgt.raw(&json!({"jsonrpc": "2.0", "id": 1, "method": "bdev_ilog_get_stats", "params": {"name": "ilog0"}}));
        s.unwrap()["result"]["user_bytes_written"].as_u64().unwrap()
    };
    let before = written();
    // Writes at 4 MiB/s: about 6 s of them, so that the failure comes in
    // the middle; the verify reads after them are not held back.
    let mut fio = tool("fio")
        .args(["--name=primaries", "--ioengine=nbd", "--rw=randwrite", "--bs=4k", "--iodepth=16", "--rate=,4m"])
        .arg(format!("--size={fio_bytes}"))
        .args(["--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--numjobs=1", "--verify_state_save=0"])
        .args(["--end_fsync=1", "--randrepeat=0"])
        .arg(format!("--uri={}", nbd_uri(&sock)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fio");
    let deadline = Instant::now() + Duration::from_secs(20);
    while written() - before < 2 * MIB {
        assert!(Instant::now() < deadline && fio.try_wait().unwrap().is_none(), "fio did not get going");
        std::thread::sleep(Duration::from_millis(20));
    }
    tgt.ok(&["bdev_error_inject_error", "EE_Aio1", "all", "failure", "-n", "1000000"]);
    let at_failure = written() - before;
    assert!(at_failure < fio_bytes - 2 * MIB, "the failure came too late: fio had written {at_failure} bytes");
    wait_primaries(&tgt, 20, "EE_Aio1 degraded", |p| p["EE_Aio1"]["state"] == "degraded");
    let status = fio.wait().unwrap();
    let mut out = String::new();
    fio.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    fio.stderr.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(status.success() && !out.contains("verify failed") && out.contains("err= 0"), "fio failed: {out}");

    let p = primaries(&tgt, "ilog0");
    let (p1, p2) = (&p["EE_Aio1"], &p["Aio2"]);
    assert_eq!(p1["state"], "degraded", "{p:?}");
    let dirty = p1["dirty_blocks"].as_u64().unwrap();
    assert!(dirty > 0 && dirty <= fio_bytes / 4096, "EE_Aio1 lacks some of fio's blocks: {p1}");
    assert!(p1["write_errors"].as_u64().unwrap() + p1["read_errors"].as_u64().unwrap() > 0, "{p1}");
    assert_eq!(p2["state"], "healthy", "{p:?}");
    assert_eq!(p2["write_errors"], 0, "{p:?}");

    // The primary returns: only what it missed is copied.
    assert_eq!(tgt.ok(&["bdev_error_inject_error", "EE_Aio1", "clear", "failure"]), Value::Null);
    tgt.ok(&["bdev_ilog_rebuild_primary", "ilog0", "-p", "EE_Aio1"]);
    let p = wait_primaries(&tgt, 30, "the incremental rebuild", all_clean);
    let total = p["EE_Aio1"]["rebuild_total_blocks"].as_u64().unwrap();
    assert!(total >= dirty && total <= fio_bytes / 4096, "{total} blocks rebuilt, {dirty} were dirty: {p:?}");
    // What it missed: the writes since the failure, and those before it
    // since its last flush (they may be lost with its cache).
    assert!(total * 3 < volume_blocks, "an incremental rebuild: {total} of {volume_blocks} blocks");
    assert_eq!(p["EE_Aio1"]["rebuild_done_blocks"].as_u64().unwrap(), total, "{p:?}");
    println!("failed after {at_failure} bytes of fio's; {dirty} blocks dirty, {total} rebuilt, of {volume_blocks}");

    // Each primary holds the volume: a snapshot of it, read over NBD (a
    // volume's reads go to the log and the baseline, never a primary).
    tgt.ok(&["nbd_stop_disk", sock.to_str().unwrap()]);
    tgt.ok(&["bdev_ilog_snapshot", "ilog0", "-n", "after"]);
    let snap = dir.join("after.nbd");
    tgt.ok(&["nbd_start_disk", "ilog0@after", snap.to_str().unwrap()]);
    let image = tool("nbdcopy").arg(nbd_uri(&snap)).arg("-").output().unwrap();
    assert!(image.status.success(), "nbdcopy: {}", String::from_utf8_lossy(&image.stderr));
    let image = image.stdout;
    assert_eq!(image.len() as u64, size);
    assert!(image[..fio_bytes as usize].chunks(4096).all(|b| b.iter().any(|&x| x != 0)), "fio's blocks are there");
    assert!(image[24 * MIB as usize..28 * MIB as usize].iter().all(|&x| x == 0x5c), "qemu-io's blocks are there");
    wait_primaries(&tgt, 10, "clean primaries", all_clean);
    assert_file_holds(&aio1, &image, 4096);
    assert_file_holds(&aio2, &image, 4096);

    // A full rebuild rewrites every block: Aio2's file overwritten behind
    // the target's back reads as the volume again.
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&aio2).unwrap();
        f.write_all(&vec![0xee; 4 * MIB as usize]).unwrap();
        f.sync_all().unwrap();
    }
    tgt.ok(&["bdev_ilog_rebuild_primary", "ilog0", "-p", "Aio2", "--full"]);
    let p = wait_primaries(&tgt, 30, "the full rebuild", all_clean);
    assert_eq!(p["Aio2"]["rebuild_total_blocks"].as_u64().unwrap(), volume_blocks, "{p:?}");
    assert_file_holds(&aio2, &image, 4096);
    assert_file_holds(&aio1, &image, 4096);
    let config = tgt.ok(&["save_config"]).to_string();
    assert!(config.contains(r#""method":"bdev_error_create""#) && config.contains("EE_Aio1"), "{config}");
    tgt.ok(&["nbd_stop_disk", snap.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
}
