//! SPDK threads as the rest of the module needs them: which thread runs
//! now, the app thread, and sending a Rust closure to a thread.

use ilog_sys as sys;
use std::ffi::c_void;

/// An SPDK thread. Only compared and sent to; SPDK owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Thread(pub(crate) *mut sys::spdk_thread);

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

    pub fn is_current(self) -> bool {
        Thread::current() == Some(self)
    }

    /// Runs `f` on this thread, later (never inline).
    pub fn send(self, f: impl FnOnce() + Send + 'static) {
        let boxed: Box<Box<dyn FnOnce() + Send>> = Box::new(Box::new(f));
        let arg = Box::into_raw(boxed).cast::<c_void>();
        // SAFETY: `run_boxed` takes back exactly the box leaked here.
        let rc = unsafe { sys::spdk_thread_send_msg(self.0, Some(run_boxed), arg) };
        if rc != 0 {
            // The thread is exiting: nothing can run there any more.
            // SAFETY: the message was not queued, so the box is ours again.
            drop(unsafe { Box::from_raw(arg.cast::<Box<dyn FnOnce() + Send>>()) });
            log::error!("spdk_thread_send_msg failed ({rc}): message dropped");
        }
    }

    /// Sends a plain C callback with its argument (no allocation).
    ///
    /// # Safety
    /// `f` must accept `arg` on this thread.
    pub unsafe fn send_raw(self, f: unsafe extern "C" fn(*mut c_void), arg: *mut c_void) -> i32 {
        // SAFETY: the caller vouches for `f(arg)`.
        unsafe { sys::spdk_thread_send_msg(self.0, Some(f), arg) }
    }
}

unsafe extern "C" fn run_boxed(arg: *mut c_void) {
    // SAFETY: `arg` is the `Box<Box<dyn FnOnce>>` leaked by `Thread::send`.
    let f = unsafe { Box::from_raw(arg.cast::<Box<dyn FnOnce() + Send>>()) };
    f();
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
