//! A base SPDK bdev as an engine [`BlockDevice`]: the descriptor ilog opened
//! and claimed, and per-thread [`DevChannel`]s over `spdk_bdev_*_blocks`.
//!
//! A channel binds itself on first use. On an SPDK thread (a shard's) it
//! takes that thread's own `spdk_io_channel`, and the base bdev completes
//! into a queue that `poll` drains. On a plain OS thread (mount and format
//! run on one, so that the app thread keeps polling the I/O they wait for)
//! each request is sent to the app thread, which submits it on the app
//! thread's channel and queues the completion back.

use super::thread::Thread;
use crate::device::{BlockDevice, DevChannel, DevOp, DevRequest, DevStatus, QueueFull};
use crossbeam_queue::SegQueue;
use ilog_sys as sys;
use std::cell::UnsafeCell;
use std::ffi::{c_void, CString};
use std::sync::Arc;

/// The open, claimed base bdev. Opened, used for remote I/O and closed on
/// the app thread.
pub(crate) struct SpdkDevice {
    pub desc: *mut sys::spdk_bdev_desc,
    pub bdev: *mut sys::spdk_bdev,
    pub name: String,
    block_size: u32,
    num_blocks: u64,
    align: usize,
    flush_supported: bool,
    /// The bdev copies blocks itself (not the bdev layer's emulation).
    copy_supported: bool,
    /// The app thread's channel, for requests from plain OS threads.
    app_ch: *mut sys::spdk_io_channel,
}

// SAFETY: the pointers are SPDK handles; every use below happens on the
// thread SPDK requires (see the module doc).
unsafe impl Send for SpdkDevice {}
// SAFETY: as above; shared use only reads the plain fields.
unsafe impl Sync for SpdkDevice {}

impl SpdkDevice {
    /// Opens `name` for writing and claims it for `module`. On the app
    /// thread. `remove_ctx` is handed to `on_event` (hot-remove).
    pub fn open(
        name: &str,
        module: *mut sys::spdk_bdev_module,
        on_event: sys::spdk_bdev_event_cb_t,
        remove_ctx: *mut c_void,
    ) -> Result<SpdkDevice, (i32, String)> {
        let cname = CString::new(name).map_err(|_| (libc::EINVAL, format!("bad bdev name {name:?}")))?;
        let mut desc = std::ptr::null_mut();
        // SAFETY: valid C string and out-pointer; on the app thread.
        let rc = unsafe { sys::spdk_bdev_open_ext(cname.as_ptr(), true, on_event, remove_ctx, &mut desc) };
        if rc != 0 {
            return Err(match -rc {
                libc::ENODEV => (libc::ENODEV, format!("bdev {name} not found")),
                // A write claim by another module refuses writers.
                libc::EPERM => (libc::EBUSY, format!("bdev {name} is already claimed")),
                e => (e, format!("cannot open bdev {name}")),
            });
        }
        // SAFETY: desc was just opened.
        let bdev = unsafe { sys::spdk_bdev_desc_get_bdev(desc) };
        // SAFETY: bdev and desc are live; module is the registered module.
        let rc = unsafe { sys::spdk_bdev_module_claim_bdev(bdev, desc, module) };
        if rc != 0 {
            // SAFETY: opened above, on this thread.
            unsafe { sys::spdk_bdev_close(desc) };
            return Err((libc::EBUSY, format!("bdev {name} is already claimed")));
        }
        // SAFETY: live desc, on the thread that opened it.
        let app_ch = unsafe { sys::spdk_bdev_get_io_channel(desc) };
        if app_ch.is_null() {
            // SAFETY: claimed and opened above.
            unsafe {
                sys::spdk_bdev_module_release_bdev(bdev);
                sys::spdk_bdev_close(desc);
            }
            return Err((libc::ENOMEM, format!("no I/O channel for bdev {name}")));
        }
        // SAFETY: bdev is live while desc is open.
        let (block_size, num_blocks, align, flush_supported, copy_supported) = unsafe {
            (
                sys::spdk_bdev_get_block_size(bdev),
                sys::spdk_bdev_get_num_blocks(bdev),
                sys::spdk_bdev_get_buf_align(bdev).max(1),
                sys::spdk_bdev_io_type_supported(bdev, sys::SPDK_BDEV_IO_TYPE_FLUSH),
                sys::spdk_bdev_io_type_supported(bdev, sys::SPDK_BDEV_IO_TYPE_COPY),
            )
        };
        Ok(SpdkDevice {
            desc,
            bdev,
            name: name.to_owned(),
            block_size,
            num_blocks,
            align,
            flush_supported,
            copy_supported,
            app_ch,
        })
    }

    /// Releases the claim and closes the descriptor. On the app thread, once
    /// no channel of this device is left.
    pub fn close(&self) {
        // SAFETY: opened, claimed and channel taken in `open`, on this thread.
        unsafe {
            sys::spdk_put_io_channel(self.app_ch);
            sys::spdk_bdev_module_release_bdev(self.bdev);
            sys::spdk_bdev_close(self.desc);
        }
    }

    /// Resets the base bdev, from the calling SPDK thread, on a channel of
    /// that thread; `done(success)` runs there once the base's reset has
    /// completed (and with it, aborted or finished what was in flight on
    /// the base).
    pub fn reset(&self, done: Box<dyn FnOnce(bool)>) {
        // SAFETY: desc is open; a channel may be taken on any SPDK thread.
        let ch = unsafe { sys::spdk_bdev_get_io_channel(self.desc) };
        if ch.is_null() {
            return done(false);
        }
        let arg = Box::into_raw(Box::new((ch, done))).cast::<c_void>();
        // SAFETY: ch is this thread's; `reset_done` takes `arg` back.
        let rc = unsafe { sys::spdk_bdev_reset(self.desc, ch, Some(reset_done), arg) };
        if rc != 0 {
            // SAFETY: not submitted: the box and the channel are ours.
            unsafe { finish_reset(arg, false) };
        }
    }

    /// Submits on `ch`; `cb(arg)` gets the completion.
    ///
    /// # Safety
    /// `ch` belongs to the calling thread; `req.buf` is valid until completion.
    unsafe fn submit_on(
        &self,
        ch: *mut sys::spdk_io_channel,
        req: &DevRequest,
        cb: sys::spdk_bdev_io_completion_cb,
        arg: *mut c_void,
    ) -> i32 {
        let buf = req.buf.cast::<c_void>();
        let n = u64::from(req.nblocks);
        // SAFETY: the caller's guarantees, and desc is open.
        unsafe {
            match req.op {
                DevOp::Read => sys::spdk_bdev_read_blocks(self.desc, ch, buf, req.block, n, cb, arg),
                DevOp::Write => sys::spdk_bdev_write_blocks(self.desc, ch, buf, req.block, n, cb, arg),
                DevOp::Flush => sys::spdk_bdev_flush_blocks(self.desc, ch, 0, self.num_blocks, cb, arg),
                DevOp::Copy { src } => sys::spdk_bdev_copy_blocks(self.desc, ch, req.block, src, n, cb, arg),
            }
        }
    }
}

impl BlockDevice for Arc<SpdkDevice> {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    fn buf_align(&self) -> usize {
        self.align.max(8)
    }

    fn supports_copy(&self) -> bool {
        self.copy_supported
    }

    fn channel(&self) -> std::io::Result<Box<dyn DevChannel>> {
        Ok(Box::new(SpdkChannel {
            dev: self.clone(),
            mode: Mode::Unbound,
            done: Arc::new(SegQueue::new()),
            local: Box::new(UnsafeCell::new(Vec::new())),
            outstanding: 0,
        }))
    }
}

enum Mode {
    Unbound,
    /// This SPDK thread's own channel to the base bdev.
    Local(*mut sys::spdk_io_channel),
    /// Requests go through the app thread.
    Remote,
}

/// Completions queued by the callback of a local request.
type LocalDone = UnsafeCell<Vec<(u64, DevStatus)>>;

pub(crate) struct SpdkChannel {
    dev: Arc<SpdkDevice>,
    mode: Mode,
    /// Completions of remote requests (they complete on the app thread).
    done: Arc<SegQueue<(u64, DevStatus)>>,
    /// Completions of local requests: only touched on this channel's thread.
    local: Box<LocalDone>,
    outstanding: usize,
}

// SAFETY: a channel is used by one thread at a time: the engine moves a
// shard's channels to its core before first use, and binding happens there.
unsafe impl Send for SpdkChannel {}

/// One local request in flight: where to queue its completion.
struct LocalIo {
    done: *const LocalDone,
    tag: u64,
    flush_noop: bool,
}

type ResetDone = (*mut sys::spdk_io_channel, Box<dyn FnOnce(bool)>);

unsafe extern "C" fn reset_done(io: *mut sys::spdk_bdev_io, success: bool, arg: *mut c_void) {
    // SAFETY: the completed reset's bdev_io and the `ResetDone` box.
    unsafe {
        sys::spdk_bdev_free_io(io);
        finish_reset(arg, success);
    }
}

/// # Safety
/// `arg` is a `ResetDone` box from `SpdkDevice::reset`, on its thread.
unsafe fn finish_reset(arg: *mut c_void, success: bool) {
    // SAFETY: the caller's contract.
    let (ch, done) = *unsafe { Box::from_raw(arg.cast::<ResetDone>()) };
    // SAFETY: taken by `reset` on this thread.
    unsafe { sys::spdk_put_io_channel(ch) };
    done(success);
}

unsafe extern "C" fn local_done(io: *mut sys::spdk_bdev_io, success: bool, arg: *mut c_void) {
    // SAFETY: `arg` is the box leaked by `SpdkChannel::submit`; `io` is ours to free.
    let ctx = unsafe { Box::from_raw(arg.cast::<LocalIo>()) };
    if !io.is_null() {
        // SAFETY: completed bdev_io handed to us.
        unsafe { sys::spdk_bdev_free_io(io) };
    }
    let status = if success || ctx.flush_noop { Ok(()) } else { Err(libc::EIO) };
    // SAFETY: the queue outlives every request (the channel is idle when
    // dropped), and completions run on the channel's thread.
    unsafe { (*(*ctx.done).get()).push((ctx.tag, status)) };
}

/// One remote request: it travels to the app thread and back.
struct RemoteIo {
    dev: Arc<SpdkDevice>,
    req: DevRequest,
    done: Arc<SegQueue<(u64, DevStatus)>>,
}

unsafe extern "C" fn remote_submit(arg: *mut c_void) {
    // SAFETY: `arg` is a leaked `Box<RemoteIo>`; we run on the app thread.
    let io = unsafe { &*arg.cast::<RemoteIo>() };
    if io.req.op == DevOp::Flush && !io.dev.flush_supported {
        // SAFETY: taking back the box; nothing was submitted.
        let io = unsafe { Box::from_raw(arg.cast::<RemoteIo>()) };
        io.done.push((io.req.tag, Ok(())));
        return;
    }
    // SAFETY: app_ch is the app thread's channel; the buffer is valid until
    // the completion is polled (DevChannel::submit's contract).
    let rc = unsafe { io.dev.submit_on(io.dev.app_ch, &io.req, Some(remote_done), arg) };
    if rc == -libc::ENOMEM {
        // Out of bdev_io: try again after the app thread's other work.
        // SAFETY: re-queue the same box on the same thread.
        let rc = unsafe { Thread::app().send_raw(remote_submit, arg) };
        if rc == 0 {
            return;
        }
    }
    if rc != 0 {
        // SAFETY: not submitted, so the box is ours.
        let io = unsafe { Box::from_raw(arg.cast::<RemoteIo>()) };
        io.done.push((io.req.tag, Err(-rc)));
    }
}

unsafe extern "C" fn remote_done(bdev_io: *mut sys::spdk_bdev_io, success: bool, arg: *mut c_void) {
    // SAFETY: the box submitted in `remote_submit`; the bdev_io is ours to free.
    let io = unsafe { Box::from_raw(arg.cast::<RemoteIo>()) };
    // SAFETY: as above.
    unsafe { sys::spdk_bdev_free_io(bdev_io) };
    io.done.push((io.req.tag, if success { Ok(()) } else { Err(libc::EIO) }));
}

impl SpdkChannel {
    /// Takes the calling SPDK thread's channel to the base bdev, or goes
    /// through the app thread when called off SPDK threads.
    fn bind(&mut self) {
        if !matches!(self.mode, Mode::Unbound) {
            return;
        }
        self.mode = if Thread::current().is_some() {
            // SAFETY: on an SPDK thread, with the descriptor open.
            let ch = unsafe { sys::spdk_bdev_get_io_channel(self.dev.desc) };
            assert!(!ch.is_null(), "no I/O channel to base bdev {}", self.dev.name);
            Mode::Local(ch)
        } else {
            Mode::Remote
        };
    }
}

impl DevChannel for SpdkChannel {
    unsafe fn submit(&mut self, req: DevRequest) -> Result<(), QueueFull> {
        self.bind();
        match self.mode {
            Mode::Local(ch) => {
                let flush_noop = req.op == DevOp::Flush && !self.dev.flush_supported;
                let ctx = Box::into_raw(Box::new(LocalIo { done: &*self.local, tag: req.tag, flush_noop }));
                if flush_noop {
                    // No volatile cache: complete at the next poll.
                    // SAFETY: our own box; nothing was submitted.
                    unsafe { local_done(std::ptr::null_mut(), true, ctx.cast()) };
                    self.outstanding += 1;
                    return Ok(());
                }
                // SAFETY: ch is this thread's; the caller keeps buf valid.
                let rc = unsafe { self.dev.submit_on(ch, &req, Some(local_done), ctx.cast()) };
                if rc != 0 {
                    // SAFETY: not submitted: the box is ours.
                    drop(unsafe { Box::from_raw(ctx) });
                    if rc == -libc::ENOMEM {
                        return Err(QueueFull);
                    }
                    // SAFETY: queue owned by this channel, on its thread.
                    unsafe { (*self.local.get()).push((req.tag, Err(-rc))) };
                }
            }
            Mode::Remote => {
                let io = Box::new(RemoteIo { dev: self.dev.clone(), req, done: self.done.clone() });
                let arg = Box::into_raw(io).cast::<c_void>();
                // SAFETY: `remote_submit` takes the box back on the app thread.
                let rc = unsafe { Thread::app().send_raw(remote_submit, arg) };
                if rc != 0 {
                    // SAFETY: not sent: the box is ours.
                    drop(unsafe { Box::from_raw(arg.cast::<RemoteIo>()) });
                    return Err(QueueFull);
                }
            }
            Mode::Unbound => unreachable!("bound above"),
        }
        self.outstanding += 1;
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, DevStatus)) -> usize {
        let mut n = 0;
        // SAFETY: only this thread touches the local queue, and no callback
        // runs while we hold it (SPDK completes from its own pollers).
        let local = unsafe { &mut *self.local.get() };
        for (tag, status) in local.drain(..) {
            done(tag, status);
            n += 1;
        }
        if matches!(self.mode, Mode::Remote) {
            while let Some((tag, status)) = self.done.pop() {
                done(tag, status);
                n += 1;
            }
        }
        self.outstanding -= n;
        n
    }

    fn outstanding(&self) -> usize {
        self.outstanding
    }

    fn prepare(&mut self) {
        self.bind();
    }
}

impl Drop for SpdkChannel {
    fn drop(&mut self) {
        if let Mode::Local(ch) = self.mode {
            // SAFETY: taken on this thread in `bind`; nothing is in flight.
            unsafe { sys::spdk_put_io_channel(ch) };
        }
    }
}
