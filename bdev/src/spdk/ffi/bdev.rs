//! Our bdevs as SPDK registers them: the module, one registered bdev per
//! [`BdevOps`] value with its function table, and the public bdev queries
//! the module needs. Each registered bdev is its own io_device, so it knows
//! how many threads hold an I/O channel to it.

use super::bdev_io::{BdevIo, IoKind};
use super::json::JsonWriter;
use ilog_sys as sys;
use std::cell::UnsafeCell;
use std::ffi::{c_int, c_void, CStr, CString};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// What the module does at SPDK's module init and fini.
pub(crate) struct ModuleHooks {
    pub init: fn(),
    /// App shutdown, before the bdev layer unregisters every bdev.
    pub fini_start: fn(),
    pub fini: fn(),
    /// Bytes of per-I/O driver context.
    pub io_ctx_size: usize,
}

/// The module SPDK's bdev layer knows us by. SPDK links itself into it, so
/// it lives in a static that C writes to.
struct Module(UnsafeCell<sys::spdk_bdev_module>);
// SAFETY: written once at load time, then only by SPDK on the app thread.
unsafe impl Sync for Module {}
// SAFETY: an all-zero spdk_bdev_module is its C "unset" value.
static MODULE: Module = Module(UnsafeCell::new(unsafe { std::mem::zeroed() }));
static HOOKS: OnceLock<ModuleHooks> = OnceLock::new();

fn module() -> *mut sys::spdk_bdev_module {
    MODULE.0.get()
}

fn hooks() -> &'static ModuleHooks {
    HOOKS.get().expect("module registered")
}

unsafe extern "C" fn module_init() -> c_int {
    (hooks().init)();
    0
}

unsafe extern "C" fn fini_start() {
    (hooks().fini_start)();
}

unsafe extern "C" fn module_fini() {
    (hooks().fini)();
}

unsafe extern "C" fn get_ctx_size() -> c_int {
    hooks().io_ctx_size as c_int
}

/// What `SPDK_BDEV_MODULE_REGISTER` does; once, at load time.
pub(crate) fn register_module(name: &'static CStr, hooks: ModuleHooks) {
    assert!(HOOKS.set(hooks).is_ok(), "module registered once");
    let m = module();
    // SAFETY: at load time nothing else uses MODULE yet.
    unsafe {
        (*m).name = name.as_ptr();
        (*m).module_init = Some(module_init);
        (*m).module_fini = Some(module_fini);
        (*m).fini_start = Some(fini_start);
        (*m).get_ctx_size = Some(get_ctx_size);
        sys::spdk_bdev_module_list_add(m);
    }
}

/// The module, for claims (see `super::desc`).
pub(super) fn module_ptr() -> *mut sys::spdk_bdev_module {
    module()
}

/// Whether a bdev named `name` exists (of any module).
pub(crate) fn bdev_exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else { return false };
    // SAFETY: a NUL-terminated name; SPDK looks it up under its own lock.
    unsafe { !sys::spdk_bdev_get_by_name(c.as_ptr()).is_null() }
}

/// A bdev's behaviour: what its function table calls. Runs on the threads
/// SPDK calls it on (I/O on any, the rest on the app thread).
pub(crate) trait BdevOps: Send + Sync + Sized + 'static {
    fn submit(&self, io: BdevIo);
    /// A read's buffer, asked for with [`BdevIo::get_buf`], is there (or not).
    fn got_buf(&self, io: BdevIo, success: bool);
    fn supports(&self, kind: IoKind) -> bool;
    fn dump_info_json(&self, w: &mut JsonWriter);
    fn write_config_json(&self, w: &mut JsonWriter);
    /// The bdev was unregistered and every descriptor closed; it is gone
    /// once `done` finishes.
    fn destruct(&self, done: Destructing<Self>);
}

/// A bdev we registered. Each handle keeps the memory alive; SPDK holds
/// one from registration until destruct is done.
pub(crate) struct Bdev<T: BdevOps> {
    raw: UnsafeCell<sys::spdk_bdev>,
    name: CString,
    /// Threads holding an I/O channel to this bdev.
    channels: AtomicUsize,
    /// Registered and not yet unregistered.
    registered: AtomicBool,
    /// Set by destruct: runs once the last channel is gone.
    finishing: Mutex<Option<Finishing<T>>>,
    ops: T,
}

// SAFETY: SPDK mutates `raw` under its own locks, on its threads; we only
// pass its address. The rest is Sync by itself.
unsafe impl<T: BdevOps> Sync for Bdev<T> {}
// SAFETY: as above.
unsafe impl<T: BdevOps> Send for Bdev<T> {}

/// How a bdev presents itself to SPDK.
pub(crate) struct BdevSpec<'a> {
    pub name: &'a str,
    pub product: &'static CStr,
    pub block_size: u32,
    pub num_blocks: u64,
    /// A power of two.
    pub align: usize,
}

impl<T: BdevOps> Bdev<T> {
    /// Registers a bdev (and its io_device) run by `ops`. On the app thread.
    pub fn register(spec: BdevSpec, ops: T) -> Result<Arc<Bdev<T>>, i32> {
        let name = CString::new(spec.name).map_err(|_| libc::EINVAL)?;
        let bdev = Arc::new(Bdev {
            // SAFETY: all-zero is the unset spdk_bdev the bdev layer expects.
            raw: UnsafeCell::new(unsafe { std::mem::zeroed() }),
            name,
            channels: AtomicUsize::new(0),
            registered: AtomicBool::new(true),
            finishing: Mutex::new(None),
            ops,
        });
        let ctxt = Arc::into_raw(bdev.clone()).cast_mut().cast::<c_void>();
        // SAFETY: nothing else sees `raw` before spdk_bdev_register.
        let b = unsafe { &mut *bdev.raw.get() };
        b.name = bdev.name.as_ptr().cast_mut();
        b.product_name = spec.product.as_ptr().cast_mut();
        b.blocklen = spec.block_size;
        b.blockcnt = spec.num_blocks;
        b.write_cache = 1;
        b.required_alignment = spec.align.trailing_zeros() as u8;
        b.ctxt = ctxt;
        b.module = module();
        b.fn_table = &Table::<T>::FN_TABLE;
        // SAFETY: `ctxt` is a unique address alive until destruct is done
        // (SPDK's reference); SPDK copies the name.
        unsafe {
            sys::spdk_io_device_register(
                ctxt,
                Some(channel_create::<T>),
                Some(channel_destroy::<T>),
                0,
                bdev.name.as_ptr(),
            )
        };
        // SAFETY: a fully set up bdev at a stable address; on the app thread.
        let rc = unsafe { sys::spdk_bdev_register(bdev.raw.get()) };
        if rc != 0 {
            // SAFETY: no channel can exist yet; SPDK's reference is ours again.
            unsafe {
                sys::spdk_io_device_unregister(ctxt, None);
                drop(Arc::from_raw(ctxt.cast::<Bdev<T>>()));
            }
            return Err(-rc);
        }
        Ok(bdev)
    }

    pub fn ops(&self) -> &T {
        &self.ops
    }

    /// Whether anyone uses the bdev: another module claimed it (a bdev on
    /// top), or a thread holds an I/O channel to it. A descriptor opened
    /// and never used for I/O is not seen. On the app thread.
    pub fn in_use(&self) -> bool {
        self.channels.load(Ordering::Acquire) > 0 || self.claimed()
    }

    /// Claimed bdevs are the ones SPDK's leaf iteration skips.
    fn claimed(&self) -> bool {
        let me = self.raw.get();
        // SAFETY: iteration of SPDK's bdev list, on the app thread.
        let mut b = unsafe { sys::spdk_bdev_first_leaf() };
        while !b.is_null() {
            if b == me {
                return false;
            }
            // SAFETY: as above.
            b = unsafe { sys::spdk_bdev_next_leaf(b) };
        }
        self.registered.load(Ordering::Acquire)
    }

    /// Unregisters the bdev (hot-removing open descriptors): destruct
    /// follows once they close; `done(rc)` after it. A second call answers
    /// `-EBUSY`. On the app thread.
    pub fn unregister(&self, done: Option<Box<dyn FnOnce(i32)>>) {
        unsafe extern "C" fn unregistered(arg: *mut c_void, rc: c_int) {
            // SAFETY: the box leaked below, called back once.
            let done = unsafe { Box::from_raw(arg.cast::<Box<dyn FnOnce(i32)>>()) };
            done(rc);
        }
        if !self.registered.swap(false, Ordering::AcqRel) {
            // Already going, as SPDK answers a second unregister.
            if let Some(done) = done {
                done(-libc::EBUSY);
            }
            return;
        }
        let (cb, arg) = match done {
            Some(d) => (Some(unregistered as unsafe extern "C" fn(*mut c_void, c_int)), Box::into_raw(Box::new(d))),
            None => (None, std::ptr::null_mut()),
        };
        // SAFETY: registered (checked above), on the app thread.
        unsafe { sys::spdk_bdev_unregister(self.raw.get(), cb, arg.cast()) };
    }
}

type Finishing<T> = Box<dyn FnOnce(&T) + Send>;

/// A bdev being destructed; [`Destructing::finish`] ends it.
pub(crate) struct Destructing<T: BdevOps>(Arc<Bdev<T>>);

impl<T: BdevOps> Destructing<T> {
    /// Once no thread holds a channel to the bdev any more, runs `then`
    /// and tells SPDK the bdev is gone. On the app thread.
    pub fn finish(self, then: impl FnOnce(&T) + Send + 'static) {
        *self.0.finishing.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(then));
        let ctxt = Arc::as_ptr(&self.0).cast_mut().cast::<c_void>();
        // SAFETY: registered as an io_device in `register`; SPDK calls
        // `io_device_gone` once every channel is gone.
        unsafe { sys::spdk_io_device_unregister(ctxt, Some(io_device_gone::<T>)) };
    }
}

/// The last step: SPDK's reference (taken in `register`) goes with it.
unsafe extern "C" fn io_device_gone<T: BdevOps>(ctxt: *mut c_void) {
    // SAFETY: the reference `register` leaked, given back once, here.
    let bdev = unsafe { Arc::from_raw(ctxt.cast::<Bdev<T>>().cast_const()) };
    let then = bdev.finishing.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(then) = then {
        then(&bdev.ops);
    }
    // SAFETY: our bdev, destructed; the memory stays until `bdev` drops.
    unsafe { sys::spdk_bdev_destruct_done(bdev.raw.get(), 0) };
}

/// # Safety
/// `ctxt` is a `Bdev<T>` that `register` set up, not yet destruct-done.
unsafe fn ops_of<'a, T: BdevOps>(ctxt: *mut c_void) -> &'a Bdev<T> {
    // SAFETY: the caller's contract: SPDK's reference keeps it alive.
    unsafe { &*ctxt.cast::<Bdev<T>>() }
}

/// The function table of bdevs run by `T`.
struct Table<T>(PhantomData<T>);

impl<T: BdevOps> Table<T> {
    const FN_TABLE: sys::spdk_bdev_fn_table = sys::spdk_bdev_fn_table {
        destruct: Some(destruct::<T>),
        submit_request: Some(submit_request::<T>),
        io_type_supported: Some(io_type_supported::<T>),
        get_io_channel: Some(get_io_channel::<T>),
        dump_info_json: Some(dump_info_json::<T>),
        write_config_json: Some(write_config_json::<T>),
        // SAFETY: all-zero is "no callback" for every other entry.
        ..unsafe { std::mem::zeroed() }
    };
}

// Every `ctxt` below is a registered `Bdev<T>` (the table is only set on
// those) that SPDK calls back while it holds its reference.

unsafe extern "C" fn submit_request<T: BdevOps>(_ch: *mut sys::spdk_io_channel, io: *mut sys::spdk_bdev_io) {
    // SAFETY: SPDK hands over a live I/O of one of our bdevs.
    let io = unsafe { BdevIo::from_raw(io) };
    // SAFETY: see above.
    unsafe { ops_of::<T>(io.bdev_ctxt()) }.ops.submit(io);
}

/// `spdk_bdev_io_get_buf`'s callback (see `BdevIo::get_buf`).
pub(super) unsafe extern "C" fn got_buf<T: BdevOps>(
    _ch: *mut sys::spdk_io_channel,
    io: *mut sys::spdk_bdev_io,
    success: bool,
) {
    // SAFETY: the I/O `get_buf` handed over, handed back.
    let io = unsafe { BdevIo::from_raw(io) };
    // SAFETY: see above.
    unsafe { ops_of::<T>(io.bdev_ctxt()) }.ops.got_buf(io, success);
}

unsafe extern "C" fn destruct<T: BdevOps>(ctxt: *mut c_void) -> c_int {
    let ptr = ctxt.cast::<Bdev<T>>().cast_const();
    // SAFETY: see above; a handle of our own for `Destructing`.
    let bdev = unsafe {
        Arc::increment_strong_count(ptr);
        Arc::from_raw(ptr)
    };
    // SPDK unregistered it (app shutdown does, too): not ours to any more.
    bdev.registered.store(false, Ordering::Release);
    let ops: *const T = &bdev.ops;
    // SAFETY: `bdev` (moved into `Destructing`) keeps `ops` alive.
    unsafe { &*ops }.destruct(Destructing(bdev));
    // Done when `Destructing::finish` reaches `io_device_gone`.
    1
}

unsafe extern "C" fn io_type_supported<T: BdevOps>(ctxt: *mut c_void, kind: sys::spdk_bdev_io_type) -> bool {
    // SAFETY: see above.
    unsafe { ops_of::<T>(ctxt) }.ops.supports(IoKind::from_raw(kind))
}

unsafe extern "C" fn get_io_channel<T: BdevOps>(ctxt: *mut c_void) -> *mut sys::spdk_io_channel {
    // SAFETY: the bdev is its own io_device (see `register`).
    unsafe { sys::spdk_get_io_channel(ctxt) }
}

unsafe extern "C" fn channel_create<T: BdevOps>(io_device: *mut c_void, _ctx: *mut c_void) -> c_int {
    // SAFETY: the io_device is a registered bdev (see above).
    unsafe { ops_of::<T>(io_device) }.channels.fetch_add(1, Ordering::AcqRel);
    0
}

unsafe extern "C" fn channel_destroy<T: BdevOps>(io_device: *mut c_void, _ctx: *mut c_void) {
    // SAFETY: as above; destroyed before `io_device_gone`.
    unsafe { ops_of::<T>(io_device) }.channels.fetch_sub(1, Ordering::AcqRel);
}

unsafe extern "C" fn dump_info_json<T: BdevOps>(ctxt: *mut c_void, w: *mut sys::spdk_json_write_ctx) -> c_int {
    // SAFETY: see above; `w` is live for this call.
    unsafe { ops_of::<T>(ctxt).ops.dump_info_json(&mut JsonWriter::new(w)) };
    0
}

unsafe extern "C" fn write_config_json<T: BdevOps>(bdev: *mut sys::spdk_bdev, w: *mut sys::spdk_json_write_ctx) {
    // SAFETY: one of our bdevs; `w` is live for this call.
    unsafe { ops_of::<T>((*bdev).ctxt).ops.write_config_json(&mut JsonWriter::new(w)) };
}
