//! The table of background jobs a runtime keeps for its ilog bdevs.

use serde_json::Value;

/// Background compactions (`bdev_ilog_compact` with `background`), by id,
/// as every runtime reports them under `jobs` in `bdev_ilog_get_stats`.
#[derive(Default)]
pub struct Jobs {
    next: u64,
    /// (ilog bdev, state): "running", "done", or "failed: <why>".
    all: std::collections::BTreeMap<u64, (String, String)>,
}

impl Jobs {
    pub fn start(&mut self, bdev: &str) -> u64 {
        self.next += 1;
        self.all.insert(self.next, (bdev.to_owned(), "running".into()));
        self.next
    }

    pub fn finish(&mut self, id: u64, state: String) {
        if let Some(job) = self.all.get_mut(&id) {
            job.1 = state;
        }
    }

    pub fn forget(&mut self, id: u64) {
        self.all.remove(&id);
    }

    /// The jobs of `bdev`, for its stats: `[{"job", "state"}]`.
    pub fn of(&self, bdev: &str) -> Value {
        let mine = self.all.iter().filter(|(_, (b, _))| b == bdev);
        Value::Array(mine.map(|(id, (_, state))| serde_json::json!({"job": id, "state": state})).collect())
    }
}
