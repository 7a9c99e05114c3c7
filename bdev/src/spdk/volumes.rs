//! The snapshot volumes of an ilog bdev as read-only bdevs named
//! `<name>@<volume>`, kept equal to the engine's volume table whoever
//! changed it: an RPC, or the policy (interval snapshots, retention, folds,
//! event actions). A poller on the app thread watches the engine's volumes
//! generation (one atomic load); when it moved, and after every control
//! call that may change the table, a *reconcile* lists the volumes,
//! unregisters the bdevs of volumes gone and registers the new ones.
//!
//! Unregistering a bdev that is open hot-removes its descriptors; until
//! they close, its reads fail because the engine refuses a deleted
//! volume's partition (partitions are never reused). Its name stays taken
//! until its destruct: a new volume of the same name waits for that.
//!
//! Everything here runs on the app thread. One reconcile runs at a time; a
//! caller that asks while one runs waits for the next, since the running
//! one may have listed the volumes before the caller's change.

use super::bdev::Ilog;
use super::disk::{Disk, DiskRef};
use super::ffi::poller::Poller;
use super::io::submit_control;
use crate::engine::{volume_bdev_name, Reply, Request, View, VolumeInfo};
use crate::error::Result;
use std::sync::{Arc, MutexGuard};

/// How often the poller looks at the volumes generation.
const WATCH_PERIOD_US: u64 = 100_000;

/// Runs once a reconcile that started after the caller's change is done.
pub(super) type Waiter = Box<dyn FnOnce() + Send>;

/// The volume bdevs of one ilog bdev (in its `Ilog`).
#[derive(Default)]
pub(super) struct VolumeBdevs {
    /// Registered, in the engine's order.
    live: Vec<(VolumeInfo, DiskRef)>,
    /// Unregistered and not destructed yet: their names may still be taken.
    leaving: Vec<(VolumeInfo, DiskRef)>,
    /// The volumes generation the last reconcile started at.
    seen: u64,
    /// `Some` while a reconcile runs: who waits for it.
    running: Option<Vec<Waiter>>,
    /// `Some` when another must follow it: who waits for that one.
    queued: Option<Vec<Waiter>>,
    /// A new volume waits for its name, held by a leaving bdev.
    blocked: bool,
    /// The ilog bdev is going away: nothing is registered any more.
    closed: bool,
    /// Watches the volumes generation until `close`.
    poller: Option<Poller>,
}

fn state(ilog: &Ilog) -> MutexGuard<'_, VolumeBdevs> {
    ilog.volumes.lock().unwrap_or_else(|e| e.into_inner())
}

/// Exports the volumes of a bdev just created and starts watching the
/// engine's volume table; `done` once the volumes are registered.
pub(super) fn start(ilog: &Arc<Ilog>, done: Waiter) {
    let watched = ilog.clone();
    let poller = Poller::every(c"ilog_volumes", WATCH_PERIOD_US, move || watch(&watched));
    state(ilog).poller = Some(poller);
    reconcile(ilog, Some(done));
}

fn watch(ilog: &Arc<Ilog>) -> bool {
    let moved = {
        let st = state(ilog);
        st.running.is_none() && !st.closed && st.seen != ilog.submitter.volumes_generation()
    };
    if moved {
        reconcile(ilog, None);
    }
    moved
}

/// Brings the volume bdevs up to date with the engine; `done` (if any)
/// once a reconcile that started after this call finished.
pub(super) fn reconcile(ilog: &Arc<Ilog>, done: Option<Waiter>) {
    let mut st = state(ilog);
    if st.running.is_some() {
        st.queued.get_or_insert_with(Vec::new).extend(done);
    } else {
        drop(st);
        begin(ilog, done.into_iter().collect());
    }
}

fn begin(ilog: &Arc<Ilog>, waiters: Vec<Waiter>) {
    let mut st = state(ilog);
    if st.closed {
        drop(st);
        return waiters.into_iter().for_each(|w| w());
    }
    st.running = Some(waiters);
    // Read before listing: a change after this moves the generation again.
    st.seen = ilog.submitter.volumes_generation();
    drop(st);
    let listing = ilog.clone();
    submit_control(&ilog.submitter, Request::ListVolumes, move |r| listed(&listing, r));
}

fn listed(ilog: &Arc<Ilog>, reply: Result<Reply>) {
    match reply {
        Ok(Reply::Volumes(volumes)) => apply(ilog, volumes),
        other => {
            log::warn!("ilog: listing the volumes of {} answered {other:?}; trying again", ilog.name);
            // The poller retries: no generation matches this one.
            state(ilog).seen = u64::MAX;
        }
    }
    let (waiters, next) = {
        let mut st = state(ilog);
        (st.running.take().unwrap_or_default(), st.queued.take())
    };
    waiters.into_iter().for_each(|w| w());
    if let Some(next) = next {
        begin(ilog, next);
    }
}

fn same(a: &VolumeInfo, b: &VolumeInfo) -> bool {
    a.name == b.name && a.partition == b.partition
}

/// Unregisters the bdevs of volumes gone, then registers the new ones.
fn apply(ilog: &Arc<Ilog>, volumes: Vec<VolumeInfo>) {
    let mut st = state(ilog);
    if st.closed {
        return;
    }
    let (kept, gone): (Vec<_>, Vec<_>) =
        std::mem::take(&mut st.live).into_iter().partition(|(v, _)| volumes.iter().any(|x| same(v, x)));
    st.leaving.extend(gone.iter().cloned());
    let busy: Vec<String> = st.leaving.iter().map(|(v, _)| v.name.clone()).collect();
    drop(st);
    for (v, disk) in gone {
        log::info!("ilog: volume {} is gone: unregistering {}", v.name, volume_bdev_name(&ilog.name, &v.name));
        disk.unregister(None);
    }
    let mut live = Vec::with_capacity(volumes.len());
    let mut blocked = false;
    for v in volumes {
        if let Some(k) = kept.iter().find(|(k, _)| same(k, &v)) {
            live.push(k.clone());
        } else if busy.contains(&v.name) {
            log::info!("ilog: {} waits for its previous bdev to go", volume_bdev_name(&ilog.name, &v.name));
            blocked = true;
        } else {
            let name = volume_bdev_name(&ilog.name, &v.name);
            match ilog.register_disk(&name, View::Volume(v.partition)) {
                Ok(disk) => live.push((v, disk)),
                Err(e) => log::error!("ilog: {}", e.message),
            }
        }
    }
    let mut st = state(ilog);
    st.live = live;
    st.blocked = blocked;
}

/// Stops following the engine (teardown, app shutdown); returns the
/// volume bdevs still registered, for the caller to unregister.
pub(super) fn close(ilog: &Arc<Ilog>) -> Vec<DiskRef> {
    let (poller, live) = {
        let mut st = state(ilog);
        st.closed = true;
        let live = std::mem::take(&mut st.live);
        st.leaving.extend(live.iter().cloned());
        (st.poller.take(), live)
    };
    drop(poller);
    live.into_iter().map(|(_, d)| d).collect()
}

/// A volume bdev was destructed: forget it; a volume waiting for its name
/// is registered now.
pub(super) fn destructed(ilog: &Arc<Ilog>, disk: &Disk) {
    let mut st = state(ilog);
    st.leaving.retain(|(_, d)| !std::ptr::eq(d.ops(), disk));
    st.live.retain(|(_, d)| !std::ptr::eq(d.ops(), disk));
    let retry = st.blocked && !st.closed;
    drop(st);
    if retry {
        reconcile(ilog, None);
    }
}

/// The volumes exported now.
pub(super) fn exported(ilog: &Ilog) -> Vec<VolumeInfo> {
    state(ilog).live.iter().map(|(v, _)| v.clone()).collect()
}

/// The bdev of `volume`, if exported.
pub(super) fn bdev_of(ilog: &Ilog, volume: &str) -> Option<DiskRef> {
    state(ilog).live.iter().find(|(v, _)| v.name == volume).map(|(_, d)| d.clone())
}

/// A volume whose bdev someone has open (leaving ones included).
pub(super) fn open_volume(ilog: &Ilog) -> Option<String> {
    let st = state(ilog);
    st.live.iter().chain(&st.leaving).find(|(_, d)| d.in_use()).map(|(v, _)| v.name.clone())
}
