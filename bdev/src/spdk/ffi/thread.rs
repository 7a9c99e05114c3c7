//! SPDK threads: which one runs now, the app thread, creating one pinned
//! to a core, sending it a closure, and [`Bound`], state that only its own
//! thread may touch.

use ilog_sys as sys;
use std::cell::RefCell;
use std::ffi::{c_void, CString};

/// An SPDK thread. Only compared and sent to; SPDK owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Thread(*mut sys::spdk_thread);

// SAFETY: a handle; spdk_thread_send_msg may be called from any thread.
unsafe impl Send for Thread {}
// SAFETY: as above.
unsafe impl Sync for Thread {}

impl Thread {
    /// The SPDK thread running the caller, if it runs on one.
    pub fn current() -> Option<Thread> {
        // SAFETY: no preconditions.
        let t = unsafe { sys::spdk_get_thread() };
        (!t.is_null()).then_some(Thread(t))
    }

    /// The thread RPC handlers, bdev registration and examine run on.
    pub fn app() -> Thread {
        // SAFETY: no preconditions; valid once the app started.
        Thread(unsafe { sys::spdk_thread_get_app_thread() })
    }

    /// A new SPDK thread named `name` that only `core` may run.
    pub fn create(name: &str, core: u32) -> Option<Thread> {
        let name = CString::new(name).ok()?;
        let mut mask = sys::spdk_cpuset::default();
        // SAFETY: a zeroed cpuset and a NUL-terminated name, both copied by SPDK.
        let t = unsafe {
            sys::spdk_cpuset_zero(&mut mask);
            sys::spdk_cpuset_set_cpu(&mut mask, core, true);
            sys::spdk_thread_create(name.as_ptr(), &mask)
        };
        (!t.is_null()).then_some(Thread(t))
    }

    /// Ends the calling SPDK thread once its pollers and messages are done.
    pub fn exit_current() {
        if let Some(t) = Thread::current() {
            // SAFETY: the caller's own thread.
            unsafe { sys::spdk_thread_exit(t.0) };
        }
    }

    pub fn is_current(self) -> bool {
        Thread::current() == Some(self)
    }

    /// Runs `f` on this thread, later (never inline); a thread that is
    /// exiting takes nothing any more, and the message is dropped.
    pub fn send<F: FnOnce() + Send + 'static>(self, f: F) {
        if let Err(rc) = self.try_send(f).map_err(|(rc, _)| rc) {
            log::error!("spdk_thread_send_msg failed ({rc}): message dropped");
        }
    }

    /// As [`Thread::send`], with `f` back when it cannot be sent. One
    /// allocation: the closure itself, as SPDK's message argument.
    pub fn try_send<F: FnOnce() + Send + 'static>(self, f: F) -> Result<(), (i32, F)> {
        unsafe extern "C" fn run<F: FnOnce()>(arg: *mut c_void) {
            // SAFETY: `arg` is the `Box<F>` leaked by `try_send`, run once.
            let f = unsafe { Box::from_raw(arg.cast::<F>()) };
            f();
        }
        let arg = Box::into_raw(Box::new(f)).cast::<c_void>();
        // SAFETY: `run::<F>` takes back exactly the box leaked here.
        let rc = unsafe { sys::spdk_thread_send_msg(self.0, Some(run::<F>), arg) };
        if rc != 0 {
            // SAFETY: the message was not queued, so the box is ours again.
            return Err((rc, *unsafe { Box::from_raw(arg.cast::<F>()) }));
        }
        Ok(())
    }
}

/// State owned by one SPDK thread: reachable from anywhere (shared through
/// an `Arc`, captured by messages), touched only on that thread, one
/// borrow at a time (a re-entrant borrow panics, as `RefCell`'s does).
pub(crate) struct Bound<T> {
    thread: Thread,
    value: RefCell<T>,
}

// SAFETY: the value is only reached through `with`, which runs on `thread`
// alone; an SPDK thread runs on one OS thread at a time, so the RefCell's
// flag is never raced. `T: Send` as the value may be dropped elsewhere.
unsafe impl<T: Send> Sync for Bound<T> {}

impl<T> Bound<T> {
    pub fn new(thread: Thread, value: T) -> Bound<T> {
        Bound { thread, value: RefCell::new(value) }
    }

    pub fn thread(&self) -> Thread {
        self.thread
    }

    /// Runs `f` on the value. Panics off its thread.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        assert!(self.thread.is_current(), "thread-bound state touched off its thread");
        f(&mut self.value.borrow_mut())
    }
}

/// The SPDK core the caller runs on.
pub(crate) fn current_core() -> u32 {
    // SAFETY: no preconditions.
    unsafe { sys::spdk_env_get_current_core() }
}

/// The app's cores, in SPDK's order.
pub(crate) fn cores() -> Vec<u32> {
    let mut out = Vec::new();
    // SAFETY: iteration over the env's core list; u32::MAX ends it.
    let mut core = unsafe { sys::spdk_env_get_first_core() };
    while core != u32::MAX {
        out.push(core);
        // SAFETY: as above.
        core = unsafe { sys::spdk_env_get_next_core(core) };
    }
    out
}
