//! The primary bdevs of ilog bdevs (see `engine::mirror`): opened and
//! claimed at create (those the call names, then those the checkpoint
//! records), handed to the engine, and closed once the engine has let go of
//! them: after a hot-remove (the engine degrades the primary and drops its
//! channels), after a rebuild replaced one, and at destruct.
//!
//! Everything here runs on the app thread (engine calls answer there),
//! except `open_recorded`, which the mount thread calls and which opens on
//! the app thread.

use super::bdev::{call, call_on, Ilog, SpdkError};
use super::ffi::desc::BaseEvents;
use super::ffi::poller::poll_until;
use super::ffi::thread::Thread;
use crate::device::spdk::SpdkDevice;
use crate::device::BlockDevice;
use crate::engine::{PrimaryDevice, PrimaryOpen, Request};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A primary bdev an ilog bdev holds open.
struct Held {
    /// The removal callback's argument.
    key: u64,
    /// The ilog bdev's id.
    owner: u64,
    dev: Arc<SpdkDevice>,
    /// Hot-removed: closing once the engine let go.
    removed: bool,
}

static HELD: Mutex<Vec<Held>> = Mutex::new(Vec::new());
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

fn held() -> std::sync::MutexGuard<'static, Vec<Held>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// The engine's handle on `dev`.
fn engine_device(dev: &Arc<SpdkDevice>) -> Arc<dyn BlockDevice> {
    Arc::new(dev.clone())
}

/// Opens and claims `name` as a primary of ilog bdev `owner`. On the app
/// thread.
fn open(owner: u64, name: &str) -> Result<Arc<SpdkDevice>, SpdkError> {
    let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
    let dev = SpdkDevice::open::<PrimaryRemoval>(name, key).map_err(|(errno, msg)| SpdkError::new(errno, msg))?;
    let dev = Arc::new(dev);
    held().push(Held { key, owner, dev: dev.clone(), removed: false });
    Ok(dev)
}

/// Opens the primaries `names` that a create names; on a failure, closes
/// those it opened.
pub(super) fn open_named(owner: u64, names: &[String]) -> Result<Vec<PrimaryOpen>, SpdkError> {
    let mut opened = Vec::new();
    for name in names {
        match open(owner, name) {
            Ok(dev) => opened.push((name.clone(), Some(engine_device(&dev)))),
            Err(e) => {
                close_all(owner);
                return Err(SpdkError::new(e.errno, format!("primary bdev {name}: {}", e.message)));
            }
        }
    }
    Ok(opened)
}

/// From the mount thread: opens the recorded primaries `names` on the app
/// thread. One that cannot be opened mounts degraded.
pub(super) fn open_recorded(owner: u64, names: Vec<String>) -> Vec<PrimaryOpen> {
    if names.is_empty() {
        return Vec::new();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    Thread::app().send(move || {
        let opened = names.into_iter().map(|name| match open(owner, &name) {
            Ok(dev) => (name, Some(engine_device(&dev))),
            Err(e) => {
                log::warn!("ilog: recorded primary bdev {name} cannot be opened ({}): it is degraded", e.message);
                (name, None)
            }
        });
        let _ = tx.send(opened.collect::<Vec<_>>());
    });
    rx.recv().unwrap_or_default()
}

/// Closes every primary of `owner`, at once: its shards are detached (or
/// never ran), so no channel is left.
pub(super) fn close_all(owner: u64) {
    let mine: Vec<Held> = {
        let mut all = held();
        let (mine, rest) = std::mem::take(&mut *all).into_iter().partition(|h| h.owner == owner);
        *all = rest;
        mine
    };
    for h in mine {
        h.dev.close();
    }
}

/// Closes the held device `key` once only this table holds it (the engine
/// dropped it, and every core its channel).
fn close_when_unused(key: u64) {
    poll_until(c"ilog_primary_close", 1000, move || {
        let mut all = held();
        let Some(i) = all.iter().position(|h| h.key == key) else { return true };
        if Arc::strong_count(&all[i].dev) > 1 {
            return false;
        }
        let h = all.remove(i);
        drop(all);
        h.dev.close();
        log::info!("ilog: primary bdev {} closed", h.dev.name);
        true
    });
}

/// Tells the engine of `ilog` that primary `name` was removed, then closes
/// it once unused. After create, for removals during the mount too.
fn release(ilog: &str, key: u64, name: String) {
    let called = call(ilog, Request::ReleasePrimary { name: name.clone() }, move |r| {
        if let Err(e) = r {
            log::warn!("ilog: releasing primary {name}: {e}");
        }
        close_when_unused(key);
    });
    if let Err(e) = called {
        log::warn!("ilog: releasing a primary of {ilog}: {}", e.message);
        close_when_unused(key);
    }
}

/// Ilog bdev `ilog` (id `owner`) is ready: primaries removed while it
/// mounted are released now.
pub(super) fn ready(ilog: &str, owner: u64) {
    let removed: Vec<(u64, String)> =
        held().iter().filter(|h| h.owner == owner && h.removed).map(|h| (h.key, h.dev.name.clone())).collect();
    for (key, name) in removed {
        release(ilog, key, name);
    }
}

/// `bdev_ilog_rebuild_primary` on `ilog`: the primary's own open device,
/// or `bdev` opened anew (a primary that came back under a new bdev, or a
/// replacement); `done` on the app thread.
pub(super) fn rebuild(
    ilog: Arc<Ilog>,
    bdev: &str,
    full: bool,
    done: impl FnOnce(Result<(), SpdkError>) + Send + 'static,
) {
    let owner = ilog.id;
    let open_now = held().iter().find(|h| h.owner == owner && !h.removed && h.dev.name == bdev).map(|h| h.dev.clone());
    let (dev, opened) = match open_now {
        Some(dev) => (dev, false),
        None => match open(owner, bdev) {
            Ok(dev) => (dev, true),
            Err(e) => return done(Err(e)),
        },
    };
    let req = Request::RebuildPrimary { name: bdev.to_owned(), device: PrimaryDevice(engine_device(&dev)), full };
    let key = key_of(&dev);
    let name = ilog.name.clone();
    call_on(ilog, req, move |r| {
        let r = r.map(drop).map_err(SpdkError::from);
        if r.is_err() && opened {
            close_when_unused(key);
        }
        if r.is_ok() {
            close_replaced(&name, owner);
        }
        done(r)
    });
}

fn key_of(dev: &Arc<SpdkDevice>) -> u64 {
    held().iter().find(|h| Arc::ptr_eq(&h.dev, dev)).map_or(0, |h| h.key)
}

/// After a rebuild: the devices of `owner` that are no primary any more
/// (a replacement took their place) close once unused.
fn close_replaced(ilog: &str, owner: u64) {
    let Ok(names) = super::bdev::primary_names(ilog) else { return };
    let replaced: Vec<u64> = held()
        .iter()
        .filter(|h| h.owner == owner && !h.removed && !names.contains(&h.dev.name))
        .map(|h| h.key)
        .collect();
    for key in replaced {
        close_when_unused(key);
    }
}

/// A primary bdev's events, by key.
struct PrimaryRemoval;

impl BaseEvents for PrimaryRemoval {
    /// A primary bdev is being hot-removed (on the app thread): the engine
    /// degrades it and lets go of it, then it is closed. While its ilog
    /// bdev mounts, that waits for `ready`.
    fn removed(key: u64) {
        let (owner, name) = {
            let mut all = held();
            let Some(h) = all.iter_mut().find(|h| h.key == key) else { return };
            if h.removed {
                return;
            }
            h.removed = true;
            (h.owner, h.dev.name.clone())
        };
        log::warn!("ilog: primary bdev {name} removed");
        if let Some(ilog) = super::bdev::ready_name(owner) {
            release(&ilog, key, name);
        }
    }
}
