//! The table of background jobs a runtime keeps for its ilog bdevs, and
//! the copy and restore jobs, which run the same way in every runtime: on a
//! thread of their own, against the engine's blocking calls.

use crate::ilog::StreamTarget;
use crate::RpcError;
use ilog_bdev::copy::{self, Destination, Plan, Progress, RestorePlan, StreamStore, Volumes};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Background jobs by id (`bdev_ilog_compact` with `background`,
/// `bdev_ilog_copy`, `bdev_ilog_restore`), as every runtime reports them
/// under `jobs` in `bdev_ilog_get_stats`.
#[derive(Default)]
pub struct Jobs {
    next: u64,
    all: BTreeMap<u64, Job>,
}

struct Job {
    /// The ilog bdev it works on (the one restored into, for a restore).
    bdev: String,
    kind: &'static str,
    /// "running", "done", or "failed: <why>".
    state: String,
    progress: Option<Arc<Progress>>,
}

impl Jobs {
    pub fn start(&mut self, bdev: &str) -> u64 {
        self.insert(bdev, "compaction", None)
    }

    fn insert(&mut self, bdev: &str, kind: &'static str, progress: Option<Arc<Progress>>) -> u64 {
        self.next += 1;
        self.all.insert(self.next, Job { bdev: bdev.to_owned(), kind, state: "running".into(), progress });
        self.next
    }

    pub fn finish(&mut self, id: u64, state: String) {
        if let Some(job) = self.all.get_mut(&id) {
            job.state = state;
        }
    }

    pub fn forget(&mut self, id: u64) {
        self.all.remove(&id);
    }

    /// The jobs of `bdev`, or of every bdev: `[{"job", "bdev", "kind",
    /// "state"}]`, and for a copy or a restore its `bytes_done`,
    /// `bytes_total`, `bytes_per_second` and `resume_token` (null once
    /// done).
    pub fn of(&self, bdev: Option<&str>) -> Value {
        let mine = self.all.iter().filter(|(_, j)| bdev.is_none_or(|b| j.bdev == b));
        Value::Array(
            mine.map(|(id, j)| {
                let mut v = json!({"job": id, "bdev": j.bdev, "kind": j.kind, "state": j.state});
                if let Some(p) = &j.progress {
                    v["bytes_done"] = p.bytes_done().into();
                    v["bytes_total"] = p.bytes_total().into();
                    v["bytes_per_second"] = p.rate().into();
                    v["resume_token"] = p.resume_token().filter(|t| !t.is_empty()).into();
                }
                v
            })
            .collect(),
        )
    }
}

/// The state a job ends in.
fn end_state(result: &ilog_bdev::Result<()>, progress: &Progress) -> String {
    match result {
        Ok(()) => "done".into(),
        Err(e) => match progress.resume_token().filter(|t| !t.is_empty()) {
            Some(token) => format!("failed: {e} (resume_token {token})"),
            None => format!("failed: {e}"),
        },
    }
}

/// Opens where a stream goes or comes from: a file, or a bdev the runtime
/// opens as a device.
pub fn stream_store(
    target: &StreamTarget,
    open_bdev: impl FnOnce(&str) -> Result<Arc<dyn ilog_bdev::device::BlockDevice>, RpcError>,
) -> Result<StreamStore, RpcError> {
    Ok(match target {
        StreamTarget::File(path) => {
            if !path.parent().is_some_and(|dir| dir.is_dir()) {
                return Err(RpcError::errno(libc::ENOENT, format!("no directory for {}", path.display())));
            }
            StreamStore::File(path.clone())
        }
        StreamTarget::Bdev(name) => StreamStore::Device { name: name.clone(), dev: open_bdev(name)? },
    })
}

/// Starts `bdev_ilog_copy` of `src` (the ilog bdev `bdev`) into `target`,
/// as `plan` (checked when the call came) says; returns the job's id at
/// once.
pub fn start_copy(jobs: &Arc<Mutex<Jobs>>, bdev: &str, src: Arc<dyn Volumes>, plan: Plan, target: StreamStore) -> u64 {
    // Started as the plan says, so that the first look at a resumed job
    // sees what it finds done.
    let progress = Arc::new(plan.progress());
    let id = jobs.lock().expect("job table").insert(bdev, "copy", Some(progress.clone()));
    let table = jobs.clone();
    spawn(id, move || {
        let result = copy::copy(src.as_ref(), &plan, &target, &progress);
        finish(&table, id, "copy", &result, &progress);
    });
    id
}

/// Starts `bdev_ilog_restore` of `source` into `dst` (named `name`), as
/// `plan` (checked when the call came) says; returns the job's id at once.
pub fn start_restore(
    jobs: &Arc<Mutex<Jobs>>,
    name: &str,
    dst: Destination,
    source: StreamStore,
    plan: RestorePlan,
) -> u64 {
    let progress = Arc::new(plan.progress());
    let id = jobs.lock().expect("job table").insert(name, "restore", Some(progress.clone()));
    let table = jobs.clone();
    spawn(id, move || {
        let result = copy::restore(&dst, &source, &plan, &progress).map(drop);
        finish(&table, id, "restore", &result, &progress);
    });
    id
}

fn spawn(id: u64, f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new().name(format!("ilog_job{id}")).spawn(f).expect("a job thread");
}

fn finish(table: &Mutex<Jobs>, id: u64, kind: &str, result: &ilog_bdev::Result<()>, progress: &Progress) {
    let state = end_state(result, progress);
    match result {
        Ok(()) => log::info!("{kind} job {id}: {state}"),
        Err(_) => log::error!("{kind} job {id}: {state}"),
    }
    table.lock().expect("job table").finish(id, state);
}
