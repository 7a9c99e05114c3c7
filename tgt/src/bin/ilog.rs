//! `ilog`: tertiary copy for people. Drives `bdev_ilog_diff`,
//! `bdev_ilog_copy` and `bdev_ilog_restore` over a JSON-RPC socket
//! (`ilog_tgt`'s, or an SPDK app's with the module loaded), and follows a
//! copy or a restore to its end: a progress bar on a terminal, a line of
//! progress a second otherwise. A job that fails, a target that goes away
//! and a Ctrl-C each print the resume token to go on with.
//!
//! ```text
//! ilog -s /var/tmp/ilog.sock diff ilog0 v2 -b v1
//! ilog copy ilog0 v2 /backup/v2.stream -b v1
//! ilog restore ilog1 /backup/v2.stream
//! ```

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "ilog", version, about = "ilog tertiary copy: diff, copy and restore volumes over JSON-RPC")]
struct Cli {
    /// The JSON-RPC socket of ilog_tgt or of an SPDK app with the module.
    #[arg(short = 's', long = "socket", default_value = "/var/tmp/ilog.sock", global = true)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

/// A range of blocks, for a diff or a copy.
#[derive(clap::Args)]
struct Range {
    /// First block (default 0).
    #[arg(long)]
    lba_start: Option<u64>,
    /// Blocks (default: to the end of the volume).
    #[arg(long)]
    lba_count: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// The extents VOLUME holds apart from the older BASE (all it maps without one).
    Diff {
        name: String,
        volume: String,
        #[arg(short = 'b', long)]
        base_volume: Option<String>,
        #[command(flatten)]
        range: Range,
    },
    /// Copy VOLUME (or what changed since BASE) to TARGET: a bdev, or an absolute file path.
    Copy {
        name: String,
        volume: String,
        target: String,
        #[arg(short = 'b', long)]
        base_volume: Option<String>,
        #[command(flatten)]
        range: Range,
        /// Go on with an interrupted copy to the same target.
        #[arg(short = 'r', long)]
        resume_token: Option<String>,
    },
    /// Apply the stream in SOURCE (a bdev, or an absolute file path) to bdev NAME.
    Restore {
        name: String,
        source: String,
        /// Go on with an interrupted restore.
        #[arg(short = 'r', long)]
        resume_token: Option<String>,
    },
}

/// One JSON-RPC call on a fresh connection: its result, or the error's
/// message with its code.
fn call(socket: &PathBuf, method: &str, params: Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("cannot reach {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    s.write_all(request.to_string().as_bytes()).map_err(|e| format!("{method}: {e}"))?;
    let mut answers = serde_json::Deserializer::from_reader(s).into_iter::<Value>();
    let answer = answers.next().ok_or(format!("{method}: no answer"))?.map_err(|e| format!("{method}: {e}"))?;
    match answer.get("error") {
        Some(e) => Err(format!("{} ({})", e["message"].as_str().unwrap_or("error"), e["code"])),
        None => Ok(answer["result"].clone()),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Follows job `id` to its end; `resume` is the command to go on with,
/// given a token.
fn follow(socket: &PathBuf, id: &Value, what: &str, resume: &dyn Fn(&str) -> String) -> Result<(), String> {
    // Set by SIGINT: stop following the job, say how to go on.
    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone())
        .map_err(|e| format!("installing a SIGINT handler: {e}"))?;
    let bar = std::io::stdout().is_terminal().then(|| {
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("a valid template")
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(format!("{what} job {id}"));
        bar
    });
    let mut token: Option<String> = None;
    let mut last_line = Instant::now() - Duration::from_secs(1);
    let stopped = |why: String, token: &Option<String>| match token {
        Some(t) => format!("{why}\nresume with: {}", resume(t)),
        None => why,
    };
    loop {
        if interrupted.load(Ordering::Relaxed) {
            let why = format!("interrupted: {what} job {id} goes on in the target");
            return Err(stopped(why, &token));
        }
        let jobs = call(socket, "bdev_ilog_get_jobs", json!({})).map_err(|e| stopped(e, &token))?;
        let job = jobs.as_array().and_then(|all| all.iter().find(|j| j["job"] == *id)).cloned();
        let job = job.ok_or_else(|| stopped(format!("job {id} is gone (the target restarted?)"), &token))?;
        if let Some(t) = job["resume_token"].as_str() {
            token = Some(t.to_owned());
        }
        let (done, total) = (job["bytes_done"].as_u64().unwrap_or(0), job["bytes_total"].as_u64().unwrap_or(0));
        let state = job["state"].as_str().unwrap_or("unknown");
        match &bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            None if last_line.elapsed() >= Duration::from_secs(1) || state != "running" => {
                let pct = if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 };
                let rate = mib(job["bytes_per_second"].as_u64().unwrap_or(0));
                println!(
                    "{what} job {id}: {:.1} of {:.1} MiB ({pct:.0} %), {rate:.1} MiB/s, {state}",
                    mib(done),
                    mib(total)
                );
                last_line = Instant::now();
            }
            None => {}
        }
        match state {
            "running" => std::thread::sleep(Duration::from_millis(200)),
            "done" => {
                if let Some(bar) = &bar {
                    bar.finish_with_message(format!("{what} job {id} done"));
                }
                return Ok(());
            }
            failed => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                return Err(stopped(format!("{what} job {id} {failed}"), &token));
            }
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let s = &cli.socket;
    let strip_nulls = |mut v: Value| {
        v.as_object_mut().expect("an object").retain(|_, f| !f.is_null());
        v
    };
    match cli.command {
        Command::Diff { name, volume, base_volume, range } => {
            let params = json!({"name": name, "volume": volume, "base_volume": base_volume,
                                "lba_start": range.lba_start, "lba_count": range.lba_count});
            let extents = call(s, "bdev_ilog_diff", strip_nulls(params))?;
            for e in extents.as_array().into_iter().flatten() {
                println!("{} {} {}", e["lba"], e["num_blocks"], e["kind"].as_str().unwrap_or("?"));
            }
            Ok(())
        }
        Command::Copy { name, volume, target, base_volume, range, resume_token } => {
            let params = json!({"name": name, "volume": volume, "target": target, "base_volume": base_volume,
                                "lba_start": range.lba_start, "lba_count": range.lba_count,
                                "resume_token": resume_token});
            let job = call(s, "bdev_ilog_copy", strip_nulls(params))?;
            let base = base_volume.map(|b| format!(" -b {b}")).unwrap_or_default();
            let resume = |t: &str| format!("ilog -s {} copy {name} {volume} {target}{base} -r {t}", s.display());
            follow(s, &job["job"], "copy", &resume)
        }
        Command::Restore { name, source, resume_token } => {
            let params = json!({"name": name, "source": source, "resume_token": resume_token});
            let job = call(s, "bdev_ilog_restore", strip_nulls(params))?;
            let resume = |t: &str| format!("ilog -s {} restore {name} {source} -r {t}", s.display());
            follow(s, &job["job"], "restore", &resume)
        }
    }
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("ilog: {e}");
        std::process::exit(1);
    }
}
