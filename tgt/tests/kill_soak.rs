//! The kill -9 soak over NBD, in its short CI form: `scripts/kill-soak.py`
//! against this build's `ilog_tgt` on a file base. Each round drives fio
//! (verify) and the script's own NBD writer while snapshots and compactions
//! are taken through JSON-RPC, kills the target with SIGKILL with I/O in
//! flight, restarts it and checks that every flushed block and every
//! acknowledged snapshot reads back exactly, and that nothing unwritten is
//! returned. The release form is the same script with bigger bounds (see its
//! docstring).
//!
//! `ILOG_SOAK_SEED` picks the seed (a fixed one by default), and
//! `ILOG_SOAK_ROUNDS` the rounds (5). Needs python3 and fio
//! (`scripts/install-deps.sh`).

use std::path::Path;
use std::process::Command;

#[test]
fn kill_9_with_io_in_flight_loses_no_flushed_block_and_no_snapshot() {
    let seed = std::env::var("ILOG_SOAK_SEED").unwrap_or_else(|_| "20251202".to_owned());
    let rounds = std::env::var("ILOG_SOAK_ROUNDS").unwrap_or_else(|_| "5".to_owned());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kill-soak.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--tgt", env!("CARGO_BIN_EXE_ilog_tgt"), "--rounds", &rounds, "--seconds", "60", "--seed", &seed])
        .output()
        .expect("run python3 scripts/kill-soak.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "kill-soak failed ({}), seed {seed}; reproduce with `python3 scripts/kill-soak.py --rounds {rounds} --seed {seed}`:\n{stdout}{stderr}",
        out.status
    );
    let summary = stdout.lines().find(|l| l.starts_with("kill-soak summary:")).expect("a summary line");
    assert!(summary.contains("bytes_lost=0") && summary.contains(" PASS "), "{summary}");
    assert!(!summary.contains(" kills=0 "), "the soak killed the target at least once: {summary}");
}
