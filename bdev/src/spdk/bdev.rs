//! The ilog bdev module: the life of an ilog bdev under SPDK. Create opens
//! and claims the base bdev, mounts it (formatting it first if it holds no
//! ilog) on a plain thread, then registers an io_device and the bdev, hands
//! the shards to the reactors and exports the snapshot volumes (see
//! `volumes`). Delete, hot-remove of the base and app shutdown all end in
//! `destruct`: a clean close of the engine, the shards detached, the base
//! released.

use super::device::SpdkDevice;
use super::io::{self, CALLBACK_TAG};
use super::reactor::Reactors;
use super::thread::Thread;
use super::volumes::{self, VolumeBdevs};
use crate::device::BlockDevice;
use crate::engine::{self, volume_bdev_name, BdevInfo, Mounted, Reply, Request, Submitter, View};
use crate::error::{Error, Result};
use crate::format::FormatOptions;
use ilog_sys as sys;
use std::cell::UnsafeCell;
use std::ffi::{c_int, c_void, CString};
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
    fn new(errno: i32, message: impl Into<String>) -> SpdkError {
        SpdkError { errno, message: message.into() }
    }
}

impl From<Error> for SpdkError {
    fn from(e: Error) -> Self {
        SpdkError::new(e.errno(), e.to_string())
    }
}

/// The module SPDK's bdev layer knows us by. SPDK links itself into it, so
/// it lives in a static that C writes to.
struct Module(UnsafeCell<sys::spdk_bdev_module>);
// SAFETY: written once at load time, then only by SPDK on the app thread.
unsafe impl Sync for Module {}
// SAFETY: an all-zero spdk_bdev_module is its C "unset" value.
static MODULE: Module = Module(UnsafeCell::new(unsafe { std::mem::zeroed() }));

pub(crate) fn module() -> *mut sys::spdk_bdev_module {
    MODULE.0.get()
}

/// What `SPDK_BDEV_MODULE_REGISTER` does; call once, at load time.
pub fn register_module() {
    super::logger::init();
    let m = module();
    // SAFETY: at load time nothing else uses MODULE yet.
    unsafe {
        (*m).name = c"ilog".as_ptr();
        (*m).module_init = Some(module_init);
        (*m).module_fini = Some(module_fini);
        (*m).fini_start = Some(fini_start);
        (*m).get_ctx_size = Some(get_ctx_size);
        sys::spdk_bdev_module_list_add(m);
    }
}

unsafe extern "C" fn module_init() -> c_int {
    // The env is up: engine buffers can come from DMA-safe memory.
    crate::device::dma::SPDK_MEMORY.store(true, std::sync::atomic::Ordering::Release);
    0
}

/// App shutdown, before the bdev layer unregisters every bdev: no volume
/// bdev may appear behind its back.
unsafe extern "C" fn fini_start() {
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

unsafe extern "C" fn module_fini() {
    if let Some(r) = Reactors::running() {
        r.stop();
    }
}

unsafe extern "C" fn get_ctx_size() -> c_int {
    io::ctx_size() as c_int
}

// SAFETY: all-zero is "no callback" for every entry.
static FN_TABLE: sys::spdk_bdev_fn_table = sys::spdk_bdev_fn_table {
    destruct: Some(destruct),
    submit_request: Some(io::submit_request),
    io_type_supported: Some(io_type_supported),
    get_io_channel: Some(get_io_channel),
    dump_info_json: Some(dump_info_json),
    write_config_json: Some(write_config_json),
    ..unsafe { std::mem::zeroed() }
};

/// One registered bdev: the ilog bdev itself (`View::Current`) or one of
/// its snapshot volumes. `bdev.ctxt` points here.
pub(crate) struct Disk {
    bdev: sys::spdk_bdev,
    name: CString,
    pub view: View,
    pub block_size: u32,
    pub align: usize,
    pub submitter: Submitter,
    pub reactors: &'static Reactors,
    ilog: Arc<Ilog>,
}

impl Disk {
    /// The base bdev.
    pub(crate) fn base(&self) -> &SpdkDevice {
        &self.ilog.dev
    }
}

/// A mounted ilog bdev.
pub(crate) struct Ilog {
    pub(super) name: String,
    id: u64,
    dev: Arc<SpdkDevice>,
    pub(super) submitter: Submitter,
    /// `bdev_ilog_create`'s params as JSON, for save_config.
    config: String,
    main: Mutex<Option<DiskPtr>>,
    pub(super) volumes: Mutex<VolumeBdevs>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct DiskPtr(*mut Disk);
// SAFETY: registered disks are only dereferenced on the app thread.
unsafe impl Send for DiskPtr {}

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

fn lookup(name: &str) -> std::result::Result<Arc<Ilog>, SpdkError> {
    match registry().iter().find(|e| e.name == name).map(|e| &e.state) {
        Some(State::Ready(ilog)) => Ok(ilog.clone()),
        Some(State::Creating { .. }) => Err(SpdkError::new(libc::EBUSY, format!("bdev {name} is being created"))),
        None => Err(SpdkError::new(libc::ENODEV, format!("No such ilog bdev: {name}"))),
    }
}

/// Engine completions, on a shard thread: bdev I/Os, or control callbacks.
fn sink(token: u64, result: Result<Reply>, returns: &mut io::Returns) {
    if token & CALLBACK_TAG != 0 {
        // SAFETY: leaked by `call`; the engine completes each token once.
        let cb = unsafe { Box::from_raw((token & !CALLBACK_TAG) as *mut Callback) };
        cb(result);
    } else {
        let errno = result.err().map_or(0, |e| e.errno());
        let ctx = token as *mut io::IoCtx;
        // SAFETY: an I/O token is its IoCtx, live until its last piece.
        unsafe {
            if io::piece_done(ctx, errno) {
                returns.push(ctx);
            }
        }
    }
}

type Callback = Box<dyn FnOnce(Result<Reply>) + Send>;

/// Submits `req`, a control request (no buffer); `done` runs on the app
/// thread.
pub(super) fn submit_control(submitter: &Submitter, req: Request, done: impl FnOnce(Result<Reply>) + Send + 'static) {
    assert!(!req.has_buffer(), "a control request carries no buffer");
    let cb: Callback = Box::new(move |r| Thread::app().send(move || done(r)));
    let token = Box::into_raw(Box::new(cb)) as u64;
    debug_assert!(token & CALLBACK_TAG == 0);
    // SAFETY: checked above: no buffer to keep valid.
    if let Err(e) = unsafe { submitter.submit(0, token | CALLBACK_TAG, req) } {
        // SAFETY: refused, so the token is ours again.
        let cb = unsafe { Box::from_raw(token as *mut Callback) };
        cb(Err(e));
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

fn call_on(ilog: Arc<Ilog>, req: Request, done: impl FnOnce(Result<Reply>) + Send + 'static) {
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
            }),
            State::Creating { .. } => None,
        })
        .collect()
}

/// Creates ilog bdev `name` on `base` (formatting it with `opts` if it
/// holds no ilog); `done` runs on the app thread once the bdev and its
/// volumes are registered. `config` is the create call's params as JSON.
pub fn create(
    name: &str,
    base: &str,
    opts: FormatOptions,
    config: String,
    done: impl FnOnce(std::result::Result<Submitter, SpdkError>) + Send + 'static,
) {
    let result = (|| {
        let exists = || SpdkError::new(libc::EEXIST, format!("bdev {name} already exists"));
        if registry().iter().any(|e| e.name == name) {
            return Err(exists());
        }
        let cname = CString::new(name).map_err(|_| SpdkError::new(libc::EINVAL, "bad name"))?;
        // SAFETY: a valid C string; on the app thread.
        if !unsafe { sys::spdk_bdev_get_by_name(cname.as_ptr()) }.is_null() {
            return Err(exists());
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let dev = SpdkDevice::open(base, module(), Some(base_event), id as *mut c_void)
            .map_err(|(errno, msg)| SpdkError::new(errno, msg))?;
        registry().push(Entry { name: name.to_owned(), id, state: State::Creating { removed: false } });
        Ok((id, Arc::new(dev)))
    })();
    let (id, dev) = match result {
        Ok(v) => v,
        Err(e) => return done(Err(e)),
    };
    let reactors = Reactors::get(sink);
    let cores = reactors.cores();
    let name = name.to_owned();
    // Mount blocks on device I/O that the app thread performs for it.
    let spawned = std::thread::Builder::new().name(format!("ilog-mount-{name}")).spawn(move || {
        let mounted = mount_or_format(&dev, cores, &opts);
        Thread::app().send(move || finish_create(name, id, dev, config, mounted, reactors, done));
    });
    if let Err(e) = spawned {
        log::error!("ilog: cannot spawn the mount thread: {e}");
    }
}

fn mount_or_format(dev: &Arc<SpdkDevice>, cores: u32, opts: &FormatOptions) -> Result<Mounted> {
    let block_dev: Arc<dyn BlockDevice> = Arc::new(dev.clone());
    match engine::mount(block_dev.clone(), cores) {
        Err(Error::NotFormatted) => {
            engine::format(block_dev.as_ref(), opts, crate::format::random_uuid())?;
            log::info!("ilog: formatted {}", dev.name);
            engine::mount(block_dev, cores)
        }
        other => other,
    }
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
        let io_device = Arc::as_ptr(&ilog) as *mut c_void;
        let dev_name = CString::new(format!("ilog_{name}")).expect("no NUL");
        // SAFETY: io_device is unique (the Ilog's address) and outlives the
        // registration (the Disks hold the Arc until destruct).
        unsafe {
            sys::spdk_io_device_register(io_device, Some(channel_create), Some(channel_destroy), 0, dev_name.as_ptr())
        };
        match register_disk(&ilog, &name, View::Current, reactors) {
            Ok(disk) => Ok((ilog, disk, mounted.shards)),
            Err(e) => {
                // SAFETY: registered just above, no channel taken.
                unsafe { sys::spdk_io_device_unregister(io_device, None) };
                Err(e)
            }
        }
    })();
    let (ilog, disk, shards) = match registered {
        Ok(r) => r,
        Err(e) => {
            dev.close();
            registry().retain(|e| e.id != id);
            return done(Err(e));
        }
    };
    *ilog.main.lock().expect("main") = Some(disk);
    reactors.attach(id, shards);
    if let Some(e) = registry().iter_mut().find(|e| e.id == id) {
        e.state = State::Ready(ilog.clone());
    }
    log::info!("ilog: created {name} on {} ({} cores)", dev.name, reactors.cores());
    // A re-opened base comes back with its snapshot volumes.
    let submitter = ilog.submitter.clone();
    volumes::start(&ilog, Box::new(move || done(Ok(submitter))));
}

pub(super) fn register_disk(
    ilog: &Arc<Ilog>,
    name: &str,
    view: View,
    reactors: &'static Reactors,
) -> std::result::Result<DiskPtr, SpdkError> {
    let cname = CString::new(name).map_err(|_| SpdkError::new(libc::EINVAL, "bad name"))?;
    let align = BlockDevice::buf_align(&ilog.dev);
    let mut disk = Box::new(Disk {
        // SAFETY: all-zero is the unset spdk_bdev the bdev layer expects.
        bdev: unsafe { std::mem::zeroed() },
        name: cname,
        view,
        block_size: ilog.submitter.block_size(),
        align,
        submitter: ilog.submitter.clone(),
        reactors,
        ilog: ilog.clone(),
    });
    let ctxt = (&mut *disk as *mut Disk).cast::<c_void>();
    let b = &mut disk.bdev;
    b.name = disk.name.as_ptr().cast_mut();
    b.product_name = if view == View::Current { c"ilog disk" } else { c"ilog snapshot volume" }.as_ptr().cast_mut();
    b.blocklen = ilog.submitter.block_size();
    b.blockcnt = ilog.submitter.volume_blocks();
    b.write_cache = 1;
    b.required_alignment = align.trailing_zeros() as u8;
    b.ctxt = ctxt;
    b.module = module();
    b.fn_table = &FN_TABLE;
    let ptr = Box::into_raw(disk);
    // SAFETY: a fully set up bdev at a stable address; on the app thread.
    let rc = unsafe { sys::spdk_bdev_register(&mut (*ptr).bdev) };
    if rc != 0 {
        // SAFETY: not registered: ours to free.
        drop(unsafe { Box::from_raw(ptr) });
        return Err(SpdkError::new(-rc, format!("cannot register bdev {name}")));
    }
    Ok(DiskPtr(ptr))
}

/// Whether anyone has the bdev open.
pub(super) fn is_open(disk: DiskPtr) -> bool {
    // SAFETY: a registered disk, on the app thread; the list head is read
    // only to see whether it is empty.
    unsafe { !(*disk.0).bdev.internal.open_descs.tqh_first.is_null() }
}

pub(super) fn unregister(disk: DiskPtr, done: Option<Box<dyn FnOnce(i32)>>) {
    unsafe extern "C" fn unregistered(arg: *mut c_void, rc: c_int) {
        // SAFETY: the box leaked below.
        let done = unsafe { Box::from_raw(arg.cast::<Box<dyn FnOnce(i32)>>()) };
        done(rc);
    }
    let (cb, arg) = match done {
        Some(d) => (Some(unregistered as unsafe extern "C" fn(*mut c_void, c_int)), Box::into_raw(Box::new(d)).cast()),
        None => (None, std::ptr::null_mut()),
    };
    // SAFETY: a registered disk, on the app thread.
    unsafe { sys::spdk_bdev_unregister(&mut (*disk.0).bdev, cb, arg) };
}

/// Unregisters the volumes, then the bdev itself; `done` after destruct.
fn teardown(ilog: &Arc<Ilog>, done: Option<Box<dyn FnOnce(i32)>>) {
    for v in volumes::close(ilog) {
        unregister(v, None);
    }
    if let Some(main) = *ilog.main.lock().expect("main") {
        unregister(main, done);
    }
}

/// Whether a bdev named `bdev` exists (of any module).
pub fn bdev_exists(bdev: &str) -> bool {
    let Ok(c) = CString::new(bdev) else { return false };
    // SAFETY: a NUL-terminated name; SPDK looks it up under its own lock.
    unsafe { !sys::spdk_bdev_get_by_name(c.as_ptr()).is_null() }
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

/// Runs `step` on the app thread now, then every `period_us` until it
/// returns true.
fn poll_until(period_us: u64, mut step: Box<dyn FnMut() -> bool>) {
    struct Retry {
        step: Box<dyn FnMut() -> bool>,
        poller: *mut sys::spdk_poller,
    }
    unsafe extern "C" fn tick(arg: *mut c_void) -> c_int {
        let retry = arg.cast::<Retry>();
        // SAFETY: the box leaked below, freed here once its poller is gone.
        unsafe {
            if ((*retry).step)() {
                sys::spdk_poller_unregister(&mut (*retry).poller);
                drop(Box::from_raw(retry));
            }
        }
        1
    }
    if step() {
        return;
    }
    let retry = Box::into_raw(Box::new(Retry { step, poller: std::ptr::null_mut() }));
    // SAFETY: on the app thread; `tick` owns `retry` from now on.
    unsafe {
        (*retry).poller = sys::spdk_poller_register_named(Some(tick), retry.cast(), period_us, c"ilog_retry".as_ptr())
    };
}

/// Deletes ilog bdev `name` and its volume bdevs (the base keeps its data:
/// creating on it again re-opens them). Refused while any is open, after a
/// short wait: SPDK's examine opens a new bdev and closes it a moment after
/// it reports done (later still with reactors on other cores), which a
/// delete right after the create must not take for a user's open.
pub fn delete(name: &str, done: impl FnOnce(std::result::Result<(), SpdkError>) + 'static) {
    let name = name.to_owned();
    let deadline = Instant::now() + DELETE_WAIT;
    let mut done = Some(done);
    poll_until(
        DELETE_RETRY_US,
        Box::new(move || {
            let open = lookup(&name).is_ok_and(|ilog| open_bdev(&ilog).is_some());
            if open && Instant::now() < deadline {
                return false;
            }
            delete_unless_open(&name, done.take().expect("answered once"));
            true
        }),
    );
}

/// The name of an open bdev of `ilog` (itself or a volume's), if any.
fn open_bdev(ilog: &Arc<Ilog>) -> Option<String> {
    if ilog.main.lock().expect("main").is_some_and(is_open) {
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
    if volumes::bdev_of(&ilog, volume).is_some_and(is_open) {
        let bdev = volume_bdev_name(name, volume);
        return done(Err(SpdkError::new(libc::EBUSY, format!("bdev {bdev} is open"))));
    }
    call_on(ilog, Request::DeleteVolume { name: volume.to_owned() }, move |r| {
        done(r.map(drop).map_err(SpdkError::from))
    });
}

/// The base bdev's events (on the app thread): on removal, tear down.
unsafe extern "C" fn base_event(kind: sys::spdk_bdev_event_type, _bdev: *mut sys::spdk_bdev, ctx: *mut c_void) {
    if kind != sys::SPDK_BDEV_EVENT_REMOVE {
        return;
    }
    let id = ctx as u64;
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

unsafe extern "C" fn channel_create(_io_device: *mut c_void, _ctx: *mut c_void) -> c_int {
    0
}

unsafe extern "C" fn channel_destroy(_io_device: *mut c_void, _ctx: *mut c_void) {}

unsafe extern "C" fn get_io_channel(ctx: *mut c_void) -> *mut sys::spdk_io_channel {
    // SAFETY: ctx is a registered Disk; its Ilog is the io_device.
    unsafe {
        let disk = &*ctx.cast::<Disk>();
        sys::spdk_get_io_channel(Arc::as_ptr(&disk.ilog) as *mut c_void)
    }
}

unsafe extern "C" fn io_type_supported(ctx: *mut c_void, kind: sys::spdk_bdev_io_type) -> bool {
    // SAFETY: ctx is a registered Disk.
    let writable = unsafe { (*ctx.cast::<Disk>()).view == View::Current };
    match kind {
        sys::SPDK_BDEV_IO_TYPE_READ | sys::SPDK_BDEV_IO_TYPE_RESET => true,
        sys::SPDK_BDEV_IO_TYPE_WRITE
        | sys::SPDK_BDEV_IO_TYPE_FLUSH
        | sys::SPDK_BDEV_IO_TYPE_UNMAP
        | sys::SPDK_BDEV_IO_TYPE_WRITE_ZEROES => writable,
        _ => false,
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes `"name": <raw JSON>` into the object `w` is in.
unsafe fn write_named_raw(w: *mut sys::spdk_json_write_ctx, name: &std::ffi::CStr, raw: &str) {
    // SAFETY: a live write context inside an object.
    unsafe {
        sys::spdk_json_write_name(w, name.as_ptr());
        sys::spdk_json_write_val_raw(w, raw.as_ptr().cast(), raw.len());
    }
}

unsafe extern "C" fn dump_info_json(ctx: *mut c_void, w: *mut sys::spdk_json_write_ctx) -> c_int {
    // SAFETY: ctx is a registered Disk; w a live write context.
    unsafe {
        let disk = &*ctx.cast::<Disk>();
        let ilog = &disk.ilog;
        let raw = match disk.view {
            View::Current => format!(
                "{{\"base_bdev_name\": {}, \"cores\": {}}}",
                json_string(&ilog.dev.name),
                ilog.submitter.cores()
            ),
            View::Volume(p) => format!("{{\"ilog_bdev\": {}, \"partition\": {p}}}", json_string(&ilog.name)),
        };
        let key = if disk.view == View::Current { c"ilog" } else { c"ilog_volume" };
        write_named_raw(w, key, &raw);
    }
    0
}

/// `save_config`: the create call that brings the bdev (and, through the
/// base's contents, its volumes) back.
unsafe extern "C" fn write_config_json(bdev: *mut sys::spdk_bdev, w: *mut sys::spdk_json_write_ctx) {
    // SAFETY: one of our bdevs; w a live write context in an array.
    unsafe {
        let disk = &*(*bdev).ctxt.cast::<Disk>();
        if disk.view != View::Current {
            return;
        }
        sys::spdk_json_write_object_begin(w);
        sys::spdk_json_write_named_string(w, c"method".as_ptr(), c"bdev_ilog_create".as_ptr());
        write_named_raw(w, c"params", &disk.ilog.config);
        sys::spdk_json_write_object_end(w);
    }
}

/// Frees a volume's Disk, or closes the whole ilog bdev (async).
unsafe extern "C" fn destruct(ctx: *mut c_void) -> c_int {
    let disk = ctx.cast::<Disk>();
    // SAFETY: a registered Disk being unregistered; on the app thread.
    let (view, ilog) = unsafe { ((*disk).view, (*disk).ilog.clone()) };
    if view != View::Current {
        volumes::destructed(&ilog, DiskPtr(disk));
        // SAFETY: SPDK is done with this bdev.
        drop(unsafe { Box::from_raw(disk) });
        return 0;
    }
    // Teardown closed them already; at app shutdown the bdev layer
    // unregisters the volume bdevs itself.
    volumes::close(&ilog);
    let closing = ilog.clone();
    submit_control(&ilog.submitter, Request::Close, move |r| {
        if let Err(e) = r {
            log::warn!("ilog: closing {}: {e} (it will recover from its log)", closing.name);
        }
        let reactors = Reactors::running().expect("reactors run while a bdev exists");
        let id = closing.id;
        reactors.detach(id, move || {
            let io_device = Arc::as_ptr(&closing) as *mut c_void;
            // SAFETY: registered in finish_create; SPDK calls back once
            // every channel is gone. The Disk keeps the Ilog alive until then.
            unsafe { sys::spdk_io_device_unregister(io_device, Some(io_device_gone)) };
        });
    });
    1
}

/// The last step of closing: every channel is gone.
unsafe extern "C" fn io_device_gone(io_device: *mut c_void) {
    // SAFETY: the io_device is the Ilog, alive while its main Disk is.
    let ilog = unsafe { &*io_device.cast::<Ilog>() };
    let Some(disk) = ilog.main.lock().expect("main").take() else { return };
    // SAFETY: SPDK is done with the bdev but for destruct_done.
    let mut disk = unsafe { Box::from_raw(disk.0) };
    let ilog = disk.ilog.clone();
    ilog.dev.close();
    registry().retain(|e| e.id != ilog.id);
    log::info!("ilog: {} closed", ilog.name);
    // SAFETY: our bdev, destructed; it stays allocated until this returns.
    unsafe { sys::spdk_bdev_destruct_done(&mut disk.bdev, 0) };
}
