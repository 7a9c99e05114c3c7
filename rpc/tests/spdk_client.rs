//! The real SPDK client (the PyPI `spdk` package's `spdk-rpc`) with the
//! `scripts/rpc_ilog.py` plugin, against the server and a handler that
//! records what it receives and decodes it with `ilog::parse`: every
//! plugin command must send the method and params the parser accepts, and
//! print what the server answers.
//!
//! Needs python3; installs the `spdk` package with pip when it is missing,
//! and fails (never skips) when it cannot.

use ilog_bdev::copy::CopySpec;
use ilog_bdev::engine::BdevInfo;
use ilog_bdev::engine::{Extent, LogBatch, LogEntry, LogEntryKind, Stats, VolumeInfo};
use ilog_rpc::ilog::{self, Command, CreateParams, StreamTarget};
use ilog_rpc::{Handler, RpcError, Server};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output};
use std::sync::{Arc, Mutex, OnceLock};

/// Records each call and answers as a runtime would, with the encoders.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(String, Option<Value>, Command)>>,
}

fn volume(name: &str) -> VolumeInfo {
    VolumeInfo { name: name.into(), partition: 1, created_unix_s: 1_700_000_000 }
}

impl Handler for Recorder {
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        let command = ilog::parse(method, params.as_ref()).ok_or_else(|| RpcError::method_not_found(method))??;
        self.calls.lock().unwrap().push((method.to_owned(), params, command.clone()));
        Ok(match command {
            Command::Create(p) => ilog::create_result(&p.name),
            Command::Delete { name } | Command::GetStats { name } if name == "nope" => {
                return Err(RpcError::errno(19, "No such device"))
            }
            Command::Delete { .. } | Command::DeleteVolume { .. } => ilog::done_result(),
            Command::GetBdevs { .. } => ilog::bdevs_result(&[BdevInfo {
                name: "ilog0".into(),
                base_bdev_name: "Malloc0".into(),
                block_size: 4096,
                num_blocks: 8192,
                cores: 2,
                volumes: vec![volume("snap-1")],
                primaries: vec![],
            }]),
            Command::Snapshot { name, snapshot_name } => {
                ilog::snapshot_result(&name, &volume(snapshot_name.as_deref().unwrap_or("snap-1")))
            }
            Command::GetVolumes { name } => ilog::volumes_result(&name, &[volume("snap-1"), volume("before-upgrade")]),
            Command::LogRead { cursor, with_data, .. } => ilog::log_result(&LogBatch {
                entries: vec![LogEntry {
                    sequence: cursor,
                    partition: 2,
                    volume: None,
                    lba: 10,
                    blocks: 1,
                    kind: LogEntryKind::Data,
                    data: with_data.then(|| vec![0xab; 8]),
                }],
                next_cursor: cursor + 1,
                oldest_cursor: 0,
                bytes_limited: false,
            }),
            Command::GetStats { name } => ilog::stats_result(&name, &Stats { block_size: 4096, ..Stats::default() }),
            Command::Compact { background, .. } => ilog::compact_result(background.then_some(7)),
            Command::SetPolicy { .. } | Command::Event { .. } => ilog::done_result(),
            Command::GetPolicy { .. } => ilog::policy_result(r#"{"snapshot":{"interval_s":60}}"#),
            Command::Diff { .. } => ilog::diff_result(&[
                Extent { lba: 8, blocks: 2, kind: LogEntryKind::Data },
                Extent { lba: 100, blocks: 1, kind: LogEntryKind::Zero },
            ]),
            Command::Copy { .. } | Command::Restore { .. } => ilog::job_result(9),
            Command::RebuildPrimary { .. } => ilog::done_result(),
            Command::GetJobs { .. } => json!([{"job": 9, "bdev": "ilog0", "kind": "copy", "state": "running"}]),
        })
    }
}

/// How to run `spdk-rpc`, installing the `spdk` package first if needed.
fn spdk_rpc() -> &'static [String] {
    static CMD: OnceLock<Vec<String>> = OnceLock::new();
    CMD.get_or_init(|| {
        let importable = || {
            Process::new("python3").args(["-c", "import spdk.rpc, spdk.spdk_rpc"]).status().is_ok_and(|s| s.success())
        };
        if !importable() {
            let why = match Process::new("python3").args(["-m", "pip", "install", "--quiet", "spdk"]).output() {
                Ok(out) => format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
                Err(e) => format!("cannot run python3: {e}"),
            };
            assert!(
                importable(),
                "this test needs the PyPI `spdk` package (spdk-rpc), and `python3 -m pip install spdk` failed ({why}); \
                 install it (pip install spdk) and rerun"
            );
        }
        // The console script if it is on PATH, else the module it runs.
        if Process::new("spdk-rpc").arg("--help").output().is_ok_and(|o| o.status.success()) {
            vec!["spdk-rpc".into()]
        } else {
            ["python3", "-m", "spdk.spdk_rpc"].map(String::from).to_vec()
        }
    })
}

struct Fixture {
    server: Option<Server>,
    recorder: Arc<Recorder>,
    dir: PathBuf,
}

impl Fixture {
    /// `tag`: tests run in parallel, each with its own socket.
    fn start(tag: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("ilog-rpc-spdk-client-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let recorder = Arc::new(Recorder::default());
        let server = Server::start(&dir.join("spdk.sock"), recorder.clone()).unwrap();
        Fixture { server: Some(server), recorder, dir }
    }

    fn socket(&self) -> &Path {
        self.server.as_ref().unwrap().path()
    }

    /// Runs `spdk-rpc -s <socket> --plugin rpc_ilog <args>`; its output and
    /// the calls the handler decoded.
    fn run(&self, args: &[&str]) -> (Output, Vec<(String, Option<Value>, Command)>) {
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts");
        let (program, pre) = spdk_rpc().split_first().unwrap();
        let output = Process::new(program)
            .args(pre)
            .arg("-s")
            .arg(self.socket())
            .args(["-t", "20", "--plugin", "rpc_ilog"])
            .args(args)
            .env("PYTHONPATH", scripts)
            // Leaves no __pycache__ in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        let calls = std::mem::take(&mut *self.recorder.calls.lock().unwrap());
        (output, calls)
    }

    /// Runs a command that must succeed with one call; that call and stdout.
    fn ok(&self, args: &[&str]) -> (String, Option<Value>, Command, String) {
        let (output, mut calls) = self.run(args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{args:?}: {}\nstdout: {stdout}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(calls.len(), 1, "{args:?}: {calls:?}");
        let (method, params, command) = calls.pop().unwrap();
        (method, params, command, stdout)
    }

    /// Runs a command that must fail; its stdout (where rpc.py reports).
    fn failing(&self, args: &[&str]) -> String {
        let (output, _) = self.run(args);
        assert_eq!(output.status.code(), Some(1), "{args:?} should fail: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn json_out(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("output is not JSON ({e}): {stdout}"))
}

#[test]
fn spdk_rpc_with_the_plugin_drives_every_method() {
    let f = Fixture::start("methods");

    let (method, params, command, out) = f.ok(&["bdev_ilog_get_volumes", "ilog0"]);
    assert_eq!(method, "bdev_ilog_get_volumes");
    assert_eq!(params, Some(json!({"name": "ilog0"})));
    assert_eq!(command, Command::GetVolumes { name: "ilog0".into() });
    assert_eq!(json_out(&out), ilog::volumes_result("ilog0", &[volume("snap-1"), volume("before-upgrade")]));

    let (method, params, command, out) = f.ok(&["bdev_ilog_snapshot", "ilog0", "-n", "before-upgrade"]);
    assert_eq!(method, "bdev_ilog_snapshot");
    assert_eq!(params, Some(json!({"name": "ilog0", "snapshot_name": "before-upgrade"})));
    assert_eq!(command, Command::Snapshot { name: "ilog0".into(), snapshot_name: Some("before-upgrade".into()) });
    assert_eq!(json_out(&out), json!({"volume_id": "before-upgrade", "bdev": "ilog0@before-upgrade"}));

    let (_, params, _, out) = f.ok(&["bdev_ilog_snapshot", "ilog0"]);
    assert_eq!(params, Some(json!({"name": "ilog0"})));
    assert_eq!(json_out(&out)["bdev"], "ilog0@snap-1");

    let (method, params, command, out) = f.ok(&[
        "bdev_ilog_create",
        "-b",
        "Malloc0",
        "-p",
        "ilog0",
        "--stripe-size-kib",
        "512",
        "--segment-size-kib",
        "8192",
        "--log-percent",
        "30",
        "--max-volumes",
        "16",
        "--replay-window-mib",
        "64",
    ]);
    assert_eq!(method, "bdev_ilog_create");
    assert_eq!(
        params,
        Some(json!({"name": "ilog0", "base_bdev_name": "Malloc0", "stripe_size_kib": 512,
                    "segment_size_kib": 8192, "log_percent": 30, "max_volumes": 16, "replay_window_mib": 64}))
    );
    let Command::Create(create) = command else { panic!("{command:?}") };
    assert_eq!(create.format_options().stripe_bytes, 512 << 10);
    assert_eq!(create.format_options().replay_window_bytes, 64 << 20);
    assert_eq!(out, "ilog0\n");

    let (_, params, command, _) = f.ok(&["bdev_ilog_create", "--base-bdev-name", "Malloc1", "--name", "ilog1"]);
    assert_eq!(params, Some(json!({"name": "ilog1", "base_bdev_name": "Malloc1"})));
    assert_eq!(
        command,
        Command::Create(CreateParams {
            name: "ilog1".into(),
            base_bdev_name: "Malloc1".into(),
            stripe_size_kib: None,
            segment_size_kib: None,
            log_percent: None,
            max_volumes: None,
            replay_window_mib: None,
            primary_bdev_names: None,
        })
    );

    let (method, params, _, out) = f.ok(&["bdev_ilog_get_bdevs"]);
    assert_eq!(method, "bdev_ilog_get_bdevs");
    assert_eq!(params, None, "no options, no params");
    assert_eq!(json_out(&out)[0]["volumes"][0]["bdev"], "ilog0@snap-1");
    let (_, params, command, _) = f.ok(&["bdev_ilog_get_bdevs", "-b", "ilog0"]);
    assert_eq!(params, Some(json!({"name": "ilog0"})));
    assert_eq!(command, Command::GetBdevs { name: Some("ilog0".into()) });

    let (method, params, command, out) = f.ok(&["bdev_ilog_log_read", "ilog0", "-c", "5", "-n", "10", "--with-data"]);
    assert_eq!(method, "bdev_ilog_log_read");
    assert_eq!(params, Some(json!({"name": "ilog0", "cursor": 5, "count": 10, "with_data": true})));
    assert_eq!(command, Command::LogRead { name: "ilog0".into(), cursor: 5, count: 10, with_data: true });
    let out = json_out(&out);
    assert_eq!(out["next_cursor"], 6);
    assert_eq!(out["entries"][0]["data"], "q6urq6urq6s=");
    let (_, params, command, _) = f.ok(&["bdev_ilog_log_read", "ilog0", "--count", "3"]);
    assert_eq!(params, Some(json!({"name": "ilog0", "count": 3})));
    assert_eq!(command, Command::LogRead { name: "ilog0".into(), cursor: 0, count: 3, with_data: false });

    let (method, params, _, out) = f.ok(&["bdev_ilog_get_stats", "ilog0"]);
    assert_eq!(method, "bdev_ilog_get_stats");
    assert_eq!(params, Some(json!({"name": "ilog0"})));
    assert_eq!(json_out(&out)["block_size"], 4096);

    let (method, params, _, out) = f.ok(&["bdev_ilog_delete_volume", "ilog0", "snap-1"]);
    assert_eq!(method, "bdev_ilog_delete_volume");
    assert_eq!(params, Some(json!({"name": "ilog0", "volume": "snap-1"})));
    assert_eq!(out, "", "delete prints nothing, as SPDK's delete commands");

    let (method, params, _, out) = f.ok(&["bdev_ilog_delete", "ilog0"]);
    assert_eq!(method, "bdev_ilog_delete");
    assert_eq!(params, Some(json!({"name": "ilog0"})));
    assert_eq!(out, "");
}

#[test]
fn spdk_rpc_drives_compaction_and_policies() {
    let f = Fixture::start("policy");
    let (_, params, command, out) = f.ok(&["bdev_ilog_compact", "ilog0", "-v", "snap-1", "-m", "baseline"]);
    assert_eq!(params, Some(json!({"name": "ilog0", "volume": "snap-1", "mode": "baseline"})));
    assert!(matches!(command, Command::Compact { background: false, .. }));
    assert_eq!(out.trim(), "true");
    let (_, params, _, out) = f.ok(&["bdev_ilog_compact", "ilog0", "--background"]);
    assert_eq!(params, Some(json!({"name": "ilog0", "background": true})));
    assert_eq!(json_out(&out), json!({"job": 7}));
    let (_, params, _, _) = f.ok(&["bdev_ilog_set_policy", "ilog0", r#"{"retention": {"keep_last": 3}}"#]);
    assert_eq!(params, Some(json!({"name": "ilog0", "policy": {"retention": {"keep_last": 3}}})));
    let (_, _, _, out) = f.ok(&["bdev_ilog_get_policy", "ilog0"]);
    assert_eq!(json_out(&out), json!({"snapshot": {"interval_s": 60}}));
    let (_, params, _, _) = f.ok(&["bdev_ilog_event", "ilog0", "backup-done"]);
    assert_eq!(params, Some(json!({"name": "ilog0", "event": "backup-done"})));
}

#[test]
fn spdk_rpc_drives_diffs_copies_and_restores() {
    let f = Fixture::start("copy");
    let (_, params, command, out) = f.ok(&["bdev_ilog_diff", "ilog0", "v2", "-b", "v1", "--lba-count", "1000"]);
    assert_eq!(params, Some(json!({"name": "ilog0", "volume": "v2", "base_volume": "v1", "lba_count": 1000})));
    let want = Command::Diff {
        name: "ilog0".into(),
        volume: "v2".into(),
        base_volume: Some("v1".into()),
        lba_start: None,
        lba_count: Some(1000),
    };
    assert_eq!(command, want);
    assert_eq!(json_out(&out)[1], json!({"lba": 100, "num_blocks": 1, "kind": "zero"}));

    let (_, params, command, out) = f.ok(&["bdev_ilog_copy", "ilog0", "v2", "/var/tmp/v2.stream", "-b", "v1"]);
    assert_eq!(
        params,
        Some(json!({"name": "ilog0", "volume": "v2", "base_volume": "v1", "target": "/var/tmp/v2.stream"}))
    );
    let spec = CopySpec { volume: "v2".into(), base_volume: Some("v1".into()), ..Default::default() };
    let target = StreamTarget::File("/var/tmp/v2.stream".into());
    assert_eq!(command, Command::Copy { name: "ilog0".into(), spec, target });
    assert_eq!(json_out(&out), json!({"job": 9}));
    let (_, params, command, _) = f.ok(&["bdev_ilog_copy", "ilog0", "v1", "Malloc3", "-r", "00ff"]);
    assert_eq!(params, Some(json!({"name": "ilog0", "volume": "v1", "target": "Malloc3", "resume_token": "00ff"})));
    assert!(matches!(command, Command::Copy { target: StreamTarget::Bdev(ref b), .. } if b == "Malloc3"));

    let (_, params, command, out) = f.ok(&["bdev_ilog_restore", "ilog1", "/var/tmp/v2.stream"]);
    assert_eq!(params, Some(json!({"name": "ilog1", "source": "/var/tmp/v2.stream"})));
    let source = StreamTarget::File("/var/tmp/v2.stream".into());
    assert_eq!(command, Command::Restore { name: "ilog1".into(), source, resume_token: None });
    assert_eq!(json_out(&out), json!({"job": 9}));

    let (_, params, _, out) = f.ok(&["bdev_ilog_get_jobs", "-b", "ilog0"]);
    assert_eq!(params, Some(json!({"name": "ilog0"})));
    assert_eq!(json_out(&out)[0]["kind"], "copy");
    let (_, params, _, _) = f.ok(&["bdev_ilog_get_jobs"]);
    assert_eq!(params, None);
}

#[test]
fn spdk_rpc_drives_primaries() {
    let f = Fixture::start("primaries");
    let (_, params, _, _) =
        f.ok(&["bdev_ilog_create", "-b", "Malloc0", "-p", "ilog0", "--primary-bdev-names", "Malloc1 Nvme0n1"]);
    let want = json!({"name": "ilog0", "base_bdev_name": "Malloc0", "primary_bdev_names": ["Malloc1", "Nvme0n1"]});
    assert_eq!(params, Some(want));
    let (_, params, command, out) = f.ok(&["bdev_ilog_rebuild_primary", "ilog0", "-p", "Nvme0n1"]);
    assert_eq!(params, Some(json!({"name": "ilog0", "primary_bdev_name": "Nvme0n1"})));
    let want = Command::RebuildPrimary { name: "ilog0".into(), primary_bdev_name: "Nvme0n1".into(), full: false };
    assert_eq!((command, out.trim()), (want, "true"));
    let (_, params, _, _) = f.ok(&["bdev_ilog_rebuild_primary", "ilog0", "-p", "Malloc4", "--full"]);
    assert_eq!(params, Some(json!({"name": "ilog0", "primary_bdev_name": "Malloc4", "full": true})));
}

#[test]
fn spdk_rpc_reports_errors() {
    let f = Fixture::start("errors");
    let out = f.failing(&["bdev_ilog_delete", "nope"]);
    assert!(out.contains("Got JSON-RPC error response") && out.contains("-19"), "{out}");
    assert!(out.contains("No such device"), "{out}");
    // Validation is the server's: the plugin sends what it is given.
    let out = f.failing(&["bdev_ilog_log_read", "ilog0", "-n", "0"]);
    assert!(out.contains("-32602") && out.contains("count must be in 1..=4096"), "{out}");
}
