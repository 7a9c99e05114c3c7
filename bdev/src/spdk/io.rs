//! The data path of an ilog bdev under SPDK: a `bdev_io` submitted on any
//! thread goes to the engine core of that thread's SPDK core (the engine
//! splits it at stripe boundaries and forwards the pieces to their owners
//! through its lock-free queues); the completion comes back on that core's
//! shard thread and is handed to the submitting thread with
//! `spdk_thread_send_msg` before `spdk_bdev_io_complete`.

use super::bdev::Disk;
use super::thread::Thread;
use crate::device::DmaBuf;
use crate::engine::{Request, View};
use ilog_sys as sys;
use std::ffi::c_void;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

/// Per-I/O state, in the `bdev_io`'s driver context.
pub(crate) struct IoCtx {
    io: *mut sys::spdk_bdev_io,
    thread: Thread,
    /// Engine requests not completed yet.
    pending: AtomicU32,
    /// First failure's errno, 0 if none.
    errno: AtomicI32,
    /// A copy of the I/O's data when its iovecs are not whole blocks.
    bounce: Option<DmaBuf>,
}

pub(crate) fn ctx_size() -> usize {
    std::mem::size_of::<IoCtx>()
}

/// Engine tokens with this bit set are control callbacks, not I/Os.
pub(crate) const CALLBACK_TAG: u64 = 1;

fn status_of(errno: i32) -> sys::spdk_bdev_io_status {
    match errno {
        0 => sys::SPDK_BDEV_IO_STATUS_SUCCESS,
        // The engine's queue was full: the bdev layer retries later.
        libc::EAGAIN => sys::SPDK_BDEV_IO_STATUS_NOMEM,
        _ => sys::SPDK_BDEV_IO_STATUS_FAILED,
    }
}

/// Completes an I/O that never went to the engine.
unsafe fn finish(io: *mut sys::spdk_bdev_io, status: sys::spdk_bdev_io_status) {
    // SAFETY: a live bdev_io handed to submit_request.
    unsafe { sys::spdk_bdev_io_complete(io, status) };
}

pub(crate) unsafe extern "C" fn submit_request(_ch: *mut sys::spdk_io_channel, io: *mut sys::spdk_bdev_io) {
    // SAFETY: SPDK hands us a live bdev_io of one of our bdevs, whose ctxt
    // is its `Disk`, with a driver context of `ctx_size()` bytes.
    unsafe {
        let disk = &*(*(*io).bdev).ctxt.cast::<Disk>();
        let ctx = (*io).driver_ctx.as_mut_ptr().cast::<IoCtx>();
        debug_assert!(ctx as usize % std::mem::align_of::<IoCtx>() == 0);
        ctx.write(IoCtx {
            io,
            thread: Thread::current().expect("bdev I/O on an SPDK thread"),
            pending: AtomicU32::new(0),
            errno: AtomicI32::new(0),
            bounce: None,
        });
        let p = &(*io).u.bdev;
        let (lba, blocks) = (p.offset_blocks, p.num_blocks);
        let read_only = disk.view != View::Current;
        match u32::from((*io).type_) {
            sys::SPDK_BDEV_IO_TYPE_READ => {
                if (*p.iovs).iov_base.is_null() {
                    let len = blocks * u64::from((*(*io).bdev).blocklen);
                    sys::spdk_bdev_io_get_buf(io, Some(got_buf), len);
                } else {
                    rw(disk, ctx, true);
                }
            }
            sys::SPDK_BDEV_IO_TYPE_WRITE if !read_only => rw(disk, ctx, false),
            sys::SPDK_BDEV_IO_TYPE_FLUSH => one(disk, ctx, Request::Flush),
            sys::SPDK_BDEV_IO_TYPE_RESET => reset(disk, io),
            sys::SPDK_BDEV_IO_TYPE_UNMAP if !read_only => match u32::try_from(blocks) {
                Ok(blocks) => one(disk, ctx, Request::Unmap { lba, blocks }),
                Err(_) => finish(io, sys::SPDK_BDEV_IO_STATUS_FAILED),
            },
            sys::SPDK_BDEV_IO_TYPE_WRITE_ZEROES if !read_only => match u32::try_from(blocks) {
                Ok(blocks) => one(disk, ctx, Request::WriteZeroes { lba, blocks }),
                Err(_) => finish(io, sys::SPDK_BDEV_IO_STATUS_FAILED),
            },
            _ => finish(io, sys::SPDK_BDEV_IO_STATUS_FAILED),
        }
    }
}

/// A reset goes to the base, which aborts or finishes what ilog has in
/// flight there, as a passthru's does: a write the base holds would
/// otherwise hold an engine flush, and the reset, for ever.
fn reset(disk: &Disk, io: *mut sys::spdk_bdev_io) {
    disk.base().reset(Box::new(move |ok| {
        let status = if ok { sys::SPDK_BDEV_IO_STATUS_SUCCESS } else { sys::SPDK_BDEV_IO_STATUS_FAILED };
        // SAFETY: the reset's bdev_io, completed once, on its thread.
        unsafe { finish(io, status) }
    }));
}

unsafe extern "C" fn got_buf(_ch: *mut sys::spdk_io_channel, io: *mut sys::spdk_bdev_io, success: bool) {
    // SAFETY: the bdev_io whose buffer we asked for; its context was set.
    unsafe {
        if !success {
            return finish(io, sys::SPDK_BDEV_IO_STATUS_NOMEM);
        }
        let disk = &*(*(*io).bdev).ctxt.cast::<Disk>();
        rw(disk, (*io).driver_ctx.as_mut_ptr().cast::<IoCtx>(), true);
    }
}

/// Reads or writes: one engine request per iovec when every iovec is whole,
/// aligned blocks (no copy), else one request through a bounce buffer.
unsafe fn rw(disk: &Disk, ctx: *mut IoCtx, read: bool) {
    // SAFETY: ctx was initialised in submit_request; the iovecs are the I/O's.
    unsafe {
        let io = (*ctx).io;
        let p = &(*io).u.bdev;
        let iovs = std::slice::from_raw_parts(p.iovs, p.iovcnt as usize);
        let bs = disk.block_size as usize;
        let mut lba = p.offset_blocks;
        let view = disk.view;
        let whole = iovs.iter().all(|v| v.iov_len % bs == 0 && (v.iov_base as usize) % disk.align == 0);
        if whole {
            let pieces = iovs.iter().filter(|v| v.iov_len > 0).count() as u32;
            (*ctx).pending.store(pieces, Ordering::Release);
            for v in iovs.iter().filter(|v| v.iov_len > 0) {
                let blocks = (v.iov_len / bs) as u32;
                let buf = v.iov_base.cast::<u8>();
                let req =
                    if read { Request::Read { lba, blocks, buf, view } } else { Request::Write { lba, blocks, buf } };
                submit(disk, ctx, req);
                lba += u64::from(blocks);
            }
            return;
        }
        let len = p.num_blocks as usize * bs;
        let mut bounce = DmaBuf::new(len, disk.align);
        if !read {
            let mut at = 0;
            for v in iovs {
                let n = v.iov_len.min(len - at);
                std::ptr::copy_nonoverlapping(v.iov_base.cast::<u8>(), bounce.as_mut_ptr().add(at), n);
                at += n;
            }
        }
        let buf = bounce.as_mut_ptr();
        (*ctx).bounce = Some(bounce);
        (*ctx).pending.store(1, Ordering::Release);
        let blocks = p.num_blocks as u32;
        let req = if read { Request::Read { lba, blocks, buf, view } } else { Request::Write { lba, blocks, buf } };
        submit(disk, ctx, req);
    }
}

/// A request that is the whole I/O.
unsafe fn one(disk: &Disk, ctx: *mut IoCtx, req: Request) {
    // SAFETY: ctx was initialised in submit_request.
    unsafe {
        (*ctx).pending.store(1, Ordering::Release);
        submit(disk, ctx, req);
    }
}

/// # Safety
/// `ctx` is the I/O's, initialised; `req`'s buffer (the I/O's iovs or its
/// bounce buffer, which `ctx` holds) lives until the I/O completes.
unsafe fn submit(disk: &Disk, ctx: *mut IoCtx, req: Request) {
    let core = disk.reactors.local_index();
    // SAFETY: the buffer lives until the I/O completes, after this piece's
    // completion (the caller's contract).
    if let Err(e) = unsafe { disk.submitter.submit(core, ctx as u64, req) } {
        // SAFETY: the engine refused it, so this piece completes here, on
        // the submitting thread.
        unsafe {
            if piece_done(ctx, e.errno()) {
                complete(ctx.cast());
            }
        }
    }
}

/// Records an engine request of an I/O as completed (`errno` 0: success);
/// true when it was the I/O's last, which then must be completed.
pub(crate) unsafe fn piece_done(ctx: *mut IoCtx, errno: i32) -> bool {
    // SAFETY: ctx lives until the last piece completes the I/O.
    unsafe {
        if errno != 0 {
            let _ = (*ctx).errno.compare_exchange(0, errno, Ordering::AcqRel, Ordering::Acquire);
        }
        (*ctx).pending.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

/// I/Os finished on a shard thread, gathered per submitting thread over
/// one poll: one message per thread takes them back, not one per I/O (a
/// message is a mempool get and a multi-producer ring enqueue).
#[derive(Default)]
pub(crate) struct Returns(Vec<(Thread, Vec<*mut IoCtx>)>);

impl Returns {
    /// Completes `ctx`'s I/O now if this is its thread, else at `send`.
    ///
    /// # Safety
    /// `ctx` is an I/O whose last piece completed.
    pub unsafe fn push(&mut self, ctx: *mut IoCtx) {
        // SAFETY: the I/O is finished and ours until completed.
        let thread = unsafe { (*ctx).thread };
        if thread.is_current() {
            // SAFETY: as above, on its thread.
            return unsafe { complete(ctx.cast()) };
        }
        match self.0.iter_mut().find(|(t, _)| *t == thread) {
            Some((_, ctxs)) => ctxs.push(ctx),
            None => self.0.push((thread, vec![ctx])),
        }
    }

    /// Sends each thread its I/Os.
    pub fn send(&mut self) {
        for (thread, ctxs) in self.0.iter_mut().filter(|(_, ctxs)| !ctxs.is_empty()) {
            let batch = Box::into_raw(Box::new(std::mem::take(ctxs))).cast::<c_void>();
            // SAFETY: `complete_batch` takes the box back on `thread`.
            if unsafe { thread.send_raw(complete_batch, batch) } != 0 {
                log::error!("ilog: cannot return I/Os to their thread; completing them here");
                // SAFETY: not sent: the box is ours.
                unsafe { complete_batch(batch) };
            }
        }
    }
}

unsafe extern "C" fn complete_batch(arg: *mut c_void) {
    // SAFETY: the box leaked by `Returns::send`, of finished I/Os.
    unsafe {
        for ctx in *Box::from_raw(arg.cast::<Vec<*mut IoCtx>>()) {
            complete(ctx.cast());
        }
    }
}

/// On the submitting thread: copy a bounced read out, then complete.
unsafe extern "C" fn complete(arg: *mut c_void) {
    // SAFETY: the I/O's context, finished by its last piece; read out once.
    unsafe {
        let ctx = arg.cast::<IoCtx>().read();
        let errno = ctx.errno.load(Ordering::Acquire);
        if let Some(bounce) = &ctx.bounce {
            if errno == 0 && u32::from((*ctx.io).type_) == sys::SPDK_BDEV_IO_TYPE_READ {
                let p = &(*ctx.io).u.bdev;
                let iovs = std::slice::from_raw_parts(p.iovs, p.iovcnt as usize);
                let mut at = 0;
                for v in iovs {
                    let n = v.iov_len.min(bounce.len() - at);
                    std::ptr::copy_nonoverlapping(bounce.as_ptr().add(at), v.iov_base.cast::<u8>(), n);
                    at += n;
                }
            }
        }
        sys::spdk_bdev_io_complete(ctx.io, status_of(errno));
    }
}
