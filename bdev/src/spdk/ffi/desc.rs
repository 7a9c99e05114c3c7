//! A base bdev as ilog uses it: a descriptor opened for writing and claimed
//! by our module, per-thread I/O channels, and block I/O with closures as
//! completions.

use super::bdev::module_ptr;
use super::thread::Thread;
use ilog_sys as sys;
use std::ffi::{c_void, CString};

/// What a base bdev offers, read at open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BaseInfo {
    pub block_size: u32,
    pub num_blocks: u64,
    pub align: usize,
    pub flush_supported: bool,
    /// The bdev copies blocks itself (not the bdev layer's emulation).
    pub copy_supported: bool,
}

/// An open, claimed descriptor. Closed (and released) by [`Desc::close`]
/// on the thread that opened it.
pub(crate) struct Desc {
    raw: *mut sys::spdk_bdev_desc,
    bdev: *mut sys::spdk_bdev,
    thread: Thread,
}

// SAFETY: channels may be taken from a descriptor on any SPDK thread;
// closing checks its thread.
unsafe impl Send for Desc {}
// SAFETY: as above.
unsafe impl Sync for Desc {}

/// What happens to a base bdev while it is open.
pub(crate) trait BaseEvents {
    /// It is being hot-removed; `arg` is `Desc::open`'s. On the app thread.
    fn removed(arg: u64);
}

unsafe extern "C" fn on_event<E: BaseEvents>(
    kind: sys::spdk_bdev_event_type,
    _bdev: *mut sys::spdk_bdev,
    ctx: *mut c_void,
) {
    if kind == sys::SPDK_BDEV_EVENT_REMOVE {
        // `ctx` is not a pointer: it is `open`'s `arg`.
        E::removed(ctx as u64);
    }
}

impl Desc {
    /// Opens bdev `name` for writing and claims it for our module; on its
    /// hot removal, `E::removed(arg)` runs on this (the app) thread.
    pub fn open<E: BaseEvents>(name: &str, arg: u64) -> Result<(Desc, BaseInfo), (i32, String)> {
        let thread = Thread::current().expect("opened on an SPDK thread");
        let cname = CString::new(name).map_err(|_| (libc::EINVAL, format!("bad bdev name {name:?}")))?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: valid C string and out-pointer; on an SPDK thread. The
        // event context is a number, never dereferenced.
        let rc =
            unsafe { sys::spdk_bdev_open_ext(cname.as_ptr(), true, Some(on_event::<E>), arg as *mut c_void, &mut raw) };
        if rc != 0 {
            return Err(match -rc {
                libc::ENODEV => (libc::ENODEV, format!("bdev {name} not found")),
                // A write claim by another module refuses writers.
                libc::EPERM => (libc::EBUSY, format!("bdev {name} is already claimed")),
                e => (e, format!("cannot open bdev {name}")),
            });
        }
        // SAFETY: raw was just opened.
        let bdev = unsafe { sys::spdk_bdev_desc_get_bdev(raw) };
        // SAFETY: bdev and desc are live; the module is registered.
        if unsafe { sys::spdk_bdev_module_claim_bdev(bdev, raw, module_ptr()) } != 0 {
            // SAFETY: opened above, on this thread.
            unsafe { sys::spdk_bdev_close(raw) };
            return Err((libc::EBUSY, format!("bdev {name} is already claimed")));
        }
        // SAFETY: bdev is live while desc is open.
        let info = unsafe {
            BaseInfo {
                block_size: sys::spdk_bdev_get_block_size(bdev),
                num_blocks: sys::spdk_bdev_get_num_blocks(bdev),
                align: sys::spdk_bdev_get_buf_align(bdev).max(1),
                flush_supported: sys::spdk_bdev_io_type_supported(bdev, sys::SPDK_BDEV_IO_TYPE_FLUSH),
                copy_supported: sys::spdk_bdev_io_type_supported(bdev, sys::SPDK_BDEV_IO_TYPE_COPY),
            }
        };
        Ok((Desc { raw, bdev, thread }, info))
    }

    /// The calling SPDK thread's channel to the bdev.
    pub fn channel(&self) -> Option<IoChannel> {
        let thread = Thread::current()?;
        // SAFETY: an open descriptor, on an SPDK thread.
        let raw = unsafe { sys::spdk_bdev_get_io_channel(self.raw) };
        (!raw.is_null()).then_some(IoChannel { raw, desc: self.raw, thread })
    }

    /// Releases the claim and closes. On the opening thread, once none of
    /// its channels is left.
    pub fn close(&self) {
        assert!(self.thread.is_current(), "a descriptor closes on its thread");
        // SAFETY: opened and claimed in `open`, on this thread.
        unsafe {
            sys::spdk_bdev_module_release_bdev(self.bdev);
            sys::spdk_bdev_close(self.raw);
        }
    }
}

/// One block I/O to the base.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BlockOp {
    Read { buf: *mut u8 },
    Write { buf: *const u8 },
    Flush,
    Copy { src: u64 },
    Reset,
}

/// A thread's channel to a base bdev; used and put back on that thread.
pub(crate) struct IoChannel {
    raw: *mut sys::spdk_io_channel,
    desc: *mut sys::spdk_bdev_desc,
    thread: Thread,
}

// SAFETY: every use checks that it runs on the channel's thread.
unsafe impl Send for IoChannel {}
// SAFETY: as above.
unsafe impl Sync for IoChannel {}

unsafe extern "C" fn io_done<F: FnOnce(bool)>(io: *mut sys::spdk_bdev_io, success: bool, arg: *mut c_void) {
    // SAFETY: the completed bdev_io is ours to free; `arg` is the `Box<F>`
    // leaked by `submit`.
    let done = unsafe {
        sys::spdk_bdev_free_io(io);
        Box::from_raw(arg.cast::<F>())
    };
    done(success);
}

impl IoChannel {
    /// Submits `op` on blocks `block..block + blocks` (a flush covers the
    /// whole bdev); `done(success)` runs on this thread. When SPDK refused
    /// it, `Err` with the errno (`ENOMEM`: out of bdev_io, try later) and
    /// `done` back.
    ///
    /// # Safety
    /// A read's or write's buffer holds `blocks` blocks and stays valid (a
    /// read's untouched by anything else) until `done` runs.
    pub unsafe fn submit<F: FnOnce(bool) + 'static>(
        &self,
        op: BlockOp,
        block: u64,
        blocks: u64,
        done: F,
    ) -> Result<(), (i32, F)> {
        assert!(self.thread.is_current(), "a channel is used on its thread");
        let (d, ch) = (self.desc, self.raw);
        let cb: sys::spdk_bdev_io_completion_cb = Some(io_done::<F>);
        let arg = Box::into_raw(Box::new(done)).cast::<c_void>();
        // SAFETY: the channel is this thread's, the descriptor open; the
        // caller vouches for the buffer; `io_done::<F>` takes `arg` back.
        let rc = unsafe {
            match op {
                BlockOp::Read { buf } => sys::spdk_bdev_read_blocks(d, ch, buf.cast(), block, blocks, cb, arg),
                BlockOp::Write { buf } => {
                    sys::spdk_bdev_write_blocks(d, ch, buf.cast_mut().cast(), block, blocks, cb, arg)
                }
                BlockOp::Flush => {
                    let all = sys::spdk_bdev_get_num_blocks(sys::spdk_bdev_desc_get_bdev(d));
                    sys::spdk_bdev_flush_blocks(d, ch, 0, all, cb, arg)
                }
                BlockOp::Copy { src } => sys::spdk_bdev_copy_blocks(d, ch, block, src, blocks, cb, arg),
                BlockOp::Reset => sys::spdk_bdev_reset(d, ch, cb, arg),
            }
        };
        if rc != 0 {
            // SAFETY: not submitted: the box is ours again.
            let done = unsafe { Box::from_raw(arg.cast::<F>()) };
            return Err((-rc, *done));
        }
        Ok(())
    }

    /// Resets the base; `done(success)` runs on this thread once the base's
    /// reset completed (aborting or finishing what was in flight there).
    pub fn reset(self, done: impl FnOnce(bool) + 'static) {
        let ch = std::rc::Rc::new(self);
        let keep = ch.clone();
        // The channel lives until the reset completes.
        let finish = move |ok| {
            drop(keep);
            done(ok)
        };
        // SAFETY: a reset carries no buffer.
        if let Err((_, finish)) = unsafe { ch.submit(BlockOp::Reset, 0, 0, finish) } {
            finish(false);
        }
    }
}

impl Drop for IoChannel {
    fn drop(&mut self) {
        assert!(self.thread.is_current(), "a channel is put back on its thread");
        // SAFETY: taken on this thread in `Desc::channel`.
        unsafe { sys::spdk_put_io_channel(self.raw) };
    }
}
