//! The ilog bdev module: the life of an ilog bdev under SPDK. Create opens
//! and claims the base bdev, mounts it (formatting it first if it holds no
//! ilog) on a plain thread with its primaries (see `primaries`), then registers an io_device and the bdev, hands
//! the shards to the reactors and exports the snapshot volumes (see
//! `volumes`). Delete, hot-remove of the base and app shutdown all end in
//! `destruct`: a clean close of the engine, the shards detached, the base
//! released.

use super::disk::{self, Disk, DiskRef, Owner};
use super::ffi::bdev::{self as ffi_bdev, Destructing, ModuleHooks};
use super::ffi::desc::BaseEvents;
use super::ffi::poller::poll_until;
use super::ffi::thread::Thread;
use super::ffi::{dma, engine_io, logger};
use super::io::submit_control;
use super::primaries;
use super::reactor::Reactors;
use super::volumes::{self, VolumeBdevs};
use crate::device::spdk::SpdkDevice;
use crate::device::BlockDevice;
use crate::engine::{self, volume_bdev_name, BdevInfo, Mounted, PrimaryOpen, Reply, Request, Submitter, View};
use crate::error::{Error, Result};
use crate::format::FormatOptions;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A failed module operation: errno and message, for the RPC answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpdkError {
    pub errno: i32,
    pub message: String,
}

impl SpdkError {
    pub(super) fn new(errno: i32, message: impl Into<String>) -> SpdkError {
        SpdkError { errno, message: message.into() }
    }
}

impl From<Error> for SpdkError {
    fn from(e: Error) -> Self {
        SpdkError::new(e.errno(), e.to_string())
    }
}

/// What `SPDK_BDEV_MODULE_REGISTER` does; call once, at load time.
pub fn register_module() {
    logger::init();
    ffi_bdev::register_module(
        c"ilog",
        ModuleHooks { init: module_init, fini_start, fini: module_fini, io_ctx_size: engine_io::ctx_size() },
    );
}

/// The env is up: engine buffers can come from DMA-safe memory.
fn module_init() {
    dma::use_spdk_memory();
}

/// App shutdown, before the bdev layer unregisters every bdev: no volume
/// bdev may appear behind its back.
fn fini_start() {
    let ready: Vec<Arc<Ilog>> = registry()
        .iter()
        .filter_map(|e| match &e.state {
            State::Ready(ilog) => Some(ilog.clone()),
            State::Creating { .. } => None,
        })
        .collect();
    for ilog in ready {
        // The bdev layer unregisters the volume bdevs itself.
        volumes::close(&ilog);
    }
}

fn module_fini() {
    if let Some(r) = Reactors::running() {
        r.stop();
    }
}

/// A mounted ilog bdev.
pub(crate) struct Ilog {
    pub(super) name: String,
    pub(super) id: u64,
    pub(super) dev: Arc<SpdkDevice>,
    pub(super) submitter: Submitter,
    /// `bdev_ilog_create`'s params as JSON, for save_config.
    config: String,
    main: Mutex<Option<DiskRef>>,
    pub(super) volumes: Mutex<VolumeBdevs>,
}

impl Ilog {
    fn main(&self) -> std::sync::MutexGuard<'_, Option<DiskRef>> {
        self.main.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the disk `name` showing `view`. On the app thread.
    pub(super) fn register_disk(self: &Arc<Self>, name: &str, view: View) -> std::result::Result<DiskRef, SpdkError> {
        let reactors = Reactors::running().expect("reactors run while a bdev exists");
        disk::register(self.clone(), &self.dev, &self.submitter, name, view, reactors)
            .map_err(|(errno, message)| SpdkError::new(errno, message))
    }
}

enum State {
    /// Opened and claimed; mounting on a plain thread.
    Creating {
        removed: bool,
    },
    Ready(Arc<Ilog>),
}

struct Entry {
    name: String,
    id: u64,
    state: State,
}

static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn registry() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn lookup(name: &str) -> std::result::Result<Arc<Ilog>, SpdkError> {
    match registry().iter().find(|e| e.name == name).map(|e| &e.state) {
        Some(State::Ready(ilog)) => Ok(ilog.clone()),
        Some(State::Creating { .. }) => Err(SpdkError::new(libc::EBUSY, format!("bdev {name} is being created"))),
        None => Err(SpdkError::new(libc::ENODEV, format!("No such ilog bdev: {name}"))),
    }
}

/// Runs a control request on ilog bdev `name`; `done` runs on the app
/// thread, after the volume bdevs follow any change it made.
pub fn call(
    name: &str,
    req: Request,
    done: impl FnOnce(Result<Reply>) + Send + 'static,
) -> std::result::Result<(), SpdkError> {
    call_on(lookup(name)?, req, done);
    Ok(())
}

pub(super) fn call_on(ilog: Arc<Ilog>, req: Request, done: impl FnOnce(Result<Reply>) + Send + 'static) {
    let follow = req.changes_volumes();
    let submitter = ilog.submitter.clone();
    submit_control(&submitter, req, move |r| {
        if follow {
            volumes::reconcile(&ilog, Some(Box::new(move || done(r))));
        } else {
            done(r)
        }
    });
}

/// Every ready ilog bdev, in creation order.
pub fn bdevs() -> Vec<BdevInfo> {
    registry()
        .iter()
        .filter_map(|e| match &e.state {
            State::Ready(ilog) => Some(BdevInfo {
                name: ilog.name.clone(),
                base_bdev_name: ilog.dev.name.clone(),
                block_size: ilog.submitter.block_size(),
                num_blocks: ilog.submitter.volume_blocks(),
                cores: ilog.submitter.cores(),
                volumes: volumes::exported(ilog),
                primaries: ilog.submitter.primaries(),
            }),
            State::Creating { .. } => None,
        })
        .collect()
}

/// The names of ilog bdev `name`'s primaries.
pub(super) fn primary_names(name: &str) -> std::result::Result<Vec<String>, SpdkError> {
    Ok(lookup(name)?.submitter.primaries().into_iter().map(|p| p.name).collect())
}

/// The name of the ready ilog bdev with id `id`.
pub(super) fn ready_name(id: u64) -> Option<String> {
    registry().iter().find(|e| e.id == id && matches!(e.state, State::Ready(_))).map(|e| e.name.clone())
}

/// Rebuilds primary `bdev` of ilog bdev `name` (see
/// `Request::RebuildPrimary`); `done` on the app thread once the rebuild is
/// recorded.
pub fn rebuild_primary(
    name: &str,
    bdev: &str,
    full: bool,
    done: impl FnOnce(std::result::Result<(), SpdkError>) + Send + 'static,
) {
    match lookup(name) {
        Ok(ilog) => primaries::rebuild(ilog, bdev, full, done),
        Err(e) => done(Err(e)),
    }
}

/// Creates ilog bdev `name` on `base` with the primaries `primary_bdevs`
/// (formatting it with `opts` if it holds no ilog); `done` runs on the app
/// thread once the bdev and its volumes are registered. `config` is the
/// create call's params as JSON.
pub fn create(
    name: &str,
    base: &str,
    primary_bdevs: &[String],
    opts: FormatOptions,
    config: String,
    done: impl FnOnce(std::result::Result<Submitter, SpdkError>) + Send + 'static,
) {
    let result = (|| {
        let exists = || SpdkError::new(libc::EEXIST, format!("bdev {name} already exists"));
        if registry().iter().any(|e| e.name == name) {
            return Err(exists());
        }
        if name.contains('\0') {
            return Err(SpdkError::new(libc::EINVAL, "bad name"));
        }
        if bdev_exists(name) {
            return Err(exists());
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let dev = SpdkDevice::open::<BaseRemoval>(base, id).map_err(|(errno, msg)| SpdkError::new(errno, msg))?;
        let named = primaries::open_named(id, primary_bdevs).inspect_err(|_| dev.close())?;
        registry().push(Entry { name: name.to_owned(), id, state: State::Creating { removed: false } });
        Ok((id, Arc::new(dev), named))
    })();
    let (id, dev, named) = match result {
        Ok(v) => v,
        Err(e) => return done(Err(e)),
    };
    let reactors = Reactors::get();
    let cores = reactors.cores();
    let name = name.to_owned();
    // Mount blocks on device I/O that the app thread performs for it.
    let spawned = std::thread::Builder::new().name(format!("ilog-mount-{name}")).spawn(move || {
        let mounted = mount_or_format(&dev, cores, &opts, id, named);
        Thread::app().send(move || finish_create(name, id, dev, config, mounted, reactors, done));
    });
    if let Err(e) = spawned {
        log::error!("ilog: cannot spawn the mount thread: {e}");
    }
}

/// Mounts `dev` (formatted first if it holds no ilog) with the primaries
/// `named`, and those recorded that `named` leaves out.
fn mount_or_format(
    dev: &Arc<SpdkDevice>,
    cores: u32,
    opts: &FormatOptions,
    id: u64,
    mut named: Vec<PrimaryOpen>,
) -> Result<Mounted> {
    let block_dev: Arc<dyn BlockDevice> = Arc::new(dev.clone());
    match engine::recorded_primaries(block_dev.as_ref()) {
        Err(Error::NotFormatted) => {
            engine::format(block_dev.as_ref(), opts, crate::format::random_uuid())?;
            log::info!("ilog: formatted {}", dev.name);
        }
        recorded => {
            let missing = recorded?.into_iter().filter(|r| named.iter().all(|(n, _)| n != r)).collect();
            named.extend(primaries::open_recorded(id, missing));
        }
    }
    engine::mount_with_primaries(block_dev, cores, Arc::new(engine::SystemClock), named)
}

fn finish_create(
    name: String,
    id: u64,
    dev: Arc<SpdkDevice>,
    config: String,
    mounted: Result<Mounted>,
    reactors: &'static Reactors,
    done: impl FnOnce(std::result::Result<Submitter, SpdkError>) + Send + 'static,
) {
    let removed = registry().iter().any(|e| e.id == id && matches!(e.state, State::Creating { removed: true }));
    let registered = (|| {
        let mounted = match mounted {
            Ok(_) if removed => {
                return Err(SpdkError::new(libc::ENODEV, format!("base bdev {} was removed", dev.name)))
            }
            Ok(m) => m,
            Err(e) => return Err(SpdkError::new(e.errno(), format!("cannot mount {}: {e}", dev.name))),
        };
        let ilog = Arc::new(Ilog {
            name: name.clone(),
            id,
            dev: dev.clone(),
            submitter: mounted.submitter.clone(),
            config,
            main: Mutex::new(None),
            volumes: Mutex::new(VolumeBdevs::default()),
        });
        let disk = ilog.register_disk(&name, View::Current)?;
        Ok((ilog, disk, mounted.shards))
    })();
    let (ilog, disk, shards) = match registered {
        Ok(r) => r,
        Err(e) => {
            dev.close();
            primaries::close_all(id);
            registry().retain(|e| e.id != id);
            return done(Err(e));
        }
    };
    *ilog.main() = Some(disk);
    reactors.attach(id, shards);
    if let Some(e) = registry().iter_mut().find(|e| e.id == id) {
        e.state = State::Ready(ilog.clone());
    }
    log::info!("ilog: created {name} on {} ({} cores)", dev.name, reactors.cores());
    primaries::ready(&name, id);
    // A re-opened base comes back with its snapshot volumes.
    let submitter = ilog.submitter.clone();
    volumes::start(&ilog, Box::new(move || done(Ok(submitter))));
}

/// Unregisters the volumes, then the bdev itself; `done` after destruct.
fn teardown(ilog: &Arc<Ilog>, done: Option<Box<dyn FnOnce(i32)>>) {
    for v in volumes::close(ilog) {
        v.unregister(None);
    }
    let main = ilog.main().clone();
    if let Some(main) = main {
        main.unregister(done);
    }
}

/// Whether a bdev named `bdev` exists (of any module).
pub fn bdev_exists(bdev: &str) -> bool {
    ffi_bdev::bdev_exists(bdev)
}

/// Whether the bdev named as `volume` of ilog bdev `name` would be
/// (`<name>@<volume>`) is another module's: the volume is not exported.
pub fn foreign_volume_bdev(name: &str, volume: &str) -> bool {
    bdev_exists(&volume_bdev_name(name, volume))
        && lookup(name).map_or(true, |ilog| volumes::bdev_of(&ilog, volume).is_none())
}

/// How long a delete waits for an open that is not a user's to end.
const DELETE_WAIT: Duration = Duration::from_secs(2);
const DELETE_RETRY_US: u64 = 1000;

/// Deletes ilog bdev `name` and its volume bdevs (the base keeps its data:
/// creating on it again re-opens them). Refused while any is open, after a
/// short wait: SPDK's examine opens a new bdev and closes it a moment after
/// it reports done (later still with reactors on other cores), which a
/// delete right after the create must not take for a user's open.
pub fn delete(name: &str, done: impl FnOnce(std::result::Result<(), SpdkError>) + 'static) {
    let name = name.to_owned();
    let deadline = Instant::now() + DELETE_WAIT;
    let mut done = Some(done);
    poll_until(c"ilog_retry", DELETE_RETRY_US, move || {
        let open = lookup(&name).is_ok_and(|ilog| open_bdev(&ilog).is_some());
        if open && Instant::now() < deadline {
            return false;
        }
        delete_unless_open(&name, done.take().expect("answered once"));
        true
    });
}

/// The name of an open bdev of `ilog` (itself or a volume's), if any.
fn open_bdev(ilog: &Arc<Ilog>) -> Option<String> {
    if ilog.main().as_ref().is_some_and(|d| d.in_use()) {
        return Some(ilog.name.clone());
    }
    volumes::open_volume(ilog).map(|v| volume_bdev_name(&ilog.name, &v))
}

fn delete_unless_open(name: &str, done: impl FnOnce(std::result::Result<(), SpdkError>) + 'static) {
    let ilog = match lookup(name) {
        Ok(i) => i,
        Err(e) => return done(Err(e)),
    };
    if let Some(open) = open_bdev(&ilog) {
        return done(Err(SpdkError::new(libc::EBUSY, format!("bdev {open} is open"))));
    }
    let name = name.to_owned();
    teardown(
        &ilog,
        Some(Box::new(move |rc| {
            done(if rc == 0 { Ok(()) } else { Err(SpdkError::new(-rc, format!("cannot delete {name}"))) })
        })),
    );
}

/// Deletes a snapshot volume; its bdev goes with it. Refused while the
/// volume's bdev is open (the policy's deletes hot-remove it instead).
pub fn delete_volume(name: &str, volume: &str, done: impl FnOnce(std::result::Result<(), SpdkError>) + Send + 'static) {
    let ilog = match lookup(name) {
        Ok(i) => i,
        Err(e) => return done(Err(e)),
    };
    if volumes::bdev_of(&ilog, volume).is_some_and(|d| d.in_use()) {
        let bdev = volume_bdev_name(name, volume);
        return done(Err(SpdkError::new(libc::EBUSY, format!("bdev {bdev} is open"))));
    }
    call_on(ilog, Request::DeleteVolume { name: volume.to_owned() }, move |r| {
        done(r.map(drop).map_err(SpdkError::from))
    });
}

/// The base bdev's events, by ilog bdev id.
struct BaseRemoval;

impl BaseEvents for BaseRemoval {
    /// The base bdev was hot-removed (on the app thread): tear down.
    fn removed(id: u64) {
        let ilog = {
            let mut reg = registry();
            let Some(e) = reg.iter_mut().find(|e| e.id == id) else { return };
            log::warn!("ilog: base bdev of {} removed: unregistering it", e.name);
            match &mut e.state {
                State::Creating { removed } => {
                    *removed = true;
                    return;
                }
                State::Ready(ilog) => ilog.clone(),
            }
        };
        teardown(&ilog, None);
    }
}

impl Owner for Ilog {
    fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> &str {
        &self.config
    }

    /// A volume's disk goes at once; the ilog bdev's own closes the engine
    /// cleanly, detaches the shards once idle and releases the base.
    fn destruct(self: Arc<Self>, disk: &Disk, done: Destructing<Disk>) {
        if disk.view != View::Current {
            volumes::destructed(&self, disk);
            return done.finish(|_| ());
        }
        // Teardown closed them already; at app shutdown the bdev layer
        // unregisters the volume bdevs itself.
        volumes::close(&self);
        let closing = self.clone();
        submit_control(&self.submitter, Request::Close, move |r| {
            if let Err(e) = r {
                log::warn!("ilog: closing {}: {e} (it will recover from its log)", closing.name);
            }
            let reactors = Reactors::running().expect("reactors run while a bdev exists");
            reactors.detach(closing.id, move || {
                // Every channel gone: the base has no user left.
                done.finish(move |_| {
                    closing.main().take();
                    closing.dev.close();
                    primaries::close_all(closing.id);
                    registry().retain(|e| e.id != closing.id);
                    log::info!("ilog: {} closed", closing.name);
                })
            });
        });
    }
}
