//! SPDK pollers running Rust closures on the thread that registered them.

use super::thread::Thread;
use ilog_sys as sys;
use std::ffi::{c_int, c_void, CStr};

/// A registered poller, unregistered when dropped; its closure is freed
/// after any run of it in progress, so a poller may drop itself. Its
/// closure only ever runs, and is dropped, on its own thread.
pub(crate) struct Poller {
    raw: *mut sys::spdk_poller,
    thread: Thread,
    ctx: *mut c_void,
    free: unsafe fn(*mut c_void),
}

// SAFETY: the handle only unregisters and frees on the poller's own thread
// (`stop` sends itself there otherwise).
unsafe impl Send for Poller {}

unsafe extern "C" fn tick<F: FnMut() -> bool>(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the poller's `Box<F>`, freed only after unregister,
    // in a message that runs after this call.
    let f = unsafe { &mut *arg.cast::<F>() };
    c_int::from(f())
}

/// # Safety
/// `arg` is a `Box<F>` leaked by `Poller::every`, freed once.
unsafe fn free<F>(arg: *mut c_void) {
    // SAFETY: the caller's contract.
    drop(unsafe { Box::from_raw(arg.cast::<F>()) });
}

impl Poller {
    /// Runs `f` on the calling SPDK thread every `period_us` (0: every
    /// reactor iteration); `f` answers whether it did work. Panics off an
    /// SPDK thread.
    pub fn every<F: FnMut() -> bool + 'static>(name: &'static CStr, period_us: u64, f: F) -> Poller {
        let thread = Thread::current().expect("pollers run on SPDK threads");
        let ctx = Box::into_raw(Box::new(f)).cast::<c_void>();
        // SAFETY: on an SPDK thread; `tick::<F>` gets its own `F`, alive
        // until `stop`.
        let raw = unsafe { sys::spdk_poller_register_named(Some(tick::<F>), ctx, period_us, name.as_ptr()) };
        assert!(!raw.is_null(), "cannot register poller {name:?}");
        Poller { raw, thread, ctx, free: free::<F> }
    }
}

struct Stopping {
    raw: *mut sys::spdk_poller,
    ctx: *mut c_void,
    free: unsafe fn(*mut c_void),
}

// SAFETY: only travels to the poller's thread, where it is used.
unsafe impl Send for Stopping {}

impl Stopping {
    fn run(mut self) {
        // SAFETY: on the poller's thread: unregister it there.
        unsafe { sys::spdk_poller_unregister(&mut self.raw) };
        // The closure may be running now (a poller stopping itself): free it
        // in a message, which runs after this poll.
        let (ctx, free) = (self.ctx as usize, self.free);
        Thread::current().expect("on the poller's thread").send(move || {
            // SAFETY: the closure `every` leaked; its poller is gone.
            unsafe { free(ctx as *mut c_void) }
        });
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        let stopping = Stopping { raw: self.raw, ctx: self.ctx, free: self.free };
        if self.thread.is_current() {
            stopping.run();
        } else {
            self.thread.send(move || stopping.run());
        }
    }
}

/// Runs `step` on the calling SPDK thread now, then every `period_us`
/// until it answers true.
pub(crate) fn poll_until(name: &'static CStr, period_us: u64, mut step: impl FnMut() -> bool + 'static) {
    if step() {
        return;
    }
    let me: std::rc::Rc<std::cell::Cell<Option<Poller>>> = Default::default();
    let handle = me.clone();
    let poller = Poller::every(name, period_us, move || {
        if step() {
            drop(handle.take());
        }
        true
    });
    me.set(Some(poller));
}
