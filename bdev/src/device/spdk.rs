//! A base SPDK bdev as an engine [`BlockDevice`]: the descriptor ilog opened
//! and claimed, and per-thread [`DevChannel`]s over its block I/O.
//!
//! A channel binds itself on first use. On an SPDK thread (a shard's) it
//! takes that thread's own I/O channel, and the base bdev completes into a
//! queue that `poll` drains. On a plain OS thread (mount and format run on
//! one, so that the app thread keeps polling the I/O they wait for) each
//! request is sent to the app thread, which submits it on the app thread's
//! channel and queues the completion back.

use super::{BlockDevice, DevChannel, DevOp, DevRequest, DevStatus, QueueFull};
use crate::spdk::ffi::desc::{BaseEvents, BaseInfo, BlockOp, Desc, IoChannel};
use crate::spdk::ffi::thread::{Bound, Thread};
use crossbeam_queue::SegQueue;
use std::sync::{Arc, Mutex};

/// The open, claimed base bdev. Opened, used for remote I/O and closed on
/// the app thread.
pub(crate) struct SpdkDevice {
    desc: Desc,
    pub name: String,
    info: BaseInfo,
    /// The app thread's channel, for requests from plain OS threads; put
    /// back at close.
    app_ch: Mutex<Option<IoChannel>>,
}

impl SpdkDevice {
    /// Opens `name` for writing and claims it. On the app thread; on its
    /// hot removal, `E::removed(arg)` runs there.
    pub fn open<E: BaseEvents>(name: &str, arg: u64) -> Result<SpdkDevice, (i32, String)> {
        let (desc, info) = Desc::open::<E>(name, arg)?;
        let Some(app_ch) = desc.channel() else {
            desc.close();
            return Err((libc::ENOMEM, format!("no I/O channel for bdev {name}")));
        };
        Ok(SpdkDevice { desc, name: name.to_owned(), info, app_ch: Mutex::new(Some(app_ch)) })
    }

    /// Releases the claim and closes the descriptor. On the app thread, once
    /// no channel of this device is left.
    pub fn close(&self) {
        drop(self.app_channel().take());
        self.desc.close();
    }

    fn app_channel(&self) -> std::sync::MutexGuard<'_, Option<IoChannel>> {
        self.app_ch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resets the base bdev, from the calling SPDK thread, on a channel of
    /// that thread; `done(success)` runs there once the base's reset has
    /// completed (and with it, aborted or finished what was in flight on
    /// the base).
    pub fn reset(&self, done: impl FnOnce(bool) + 'static) {
        match self.desc.channel() {
            Some(ch) => ch.reset(done),
            None => done(false),
        }
    }
}

/// A request as the base, of `block_size` bytes a block, gets it.
fn block_op(req: &DevRequest, block_size: u32) -> BlockOp {
    match req.op {
        DevOp::Read => BlockOp::Read { buf: req.data(block_size as usize) },
        DevOp::Write => BlockOp::Write { buf: req.data(block_size as usize) },
        DevOp::Flush => BlockOp::Flush,
        DevOp::Copy { src } => BlockOp::Copy { src },
    }
}

fn status(success: bool) -> DevStatus {
    if success {
        Ok(())
    } else {
        Err(libc::EIO)
    }
}

impl BlockDevice for Arc<SpdkDevice> {
    fn block_size(&self) -> u32 {
        self.info.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.info.num_blocks
    }

    fn buf_align(&self) -> usize {
        self.info.align.max(8)
    }

    fn supports_copy(&self) -> bool {
        self.info.copy_supported
    }

    fn channel(&self) -> std::io::Result<Box<dyn DevChannel>> {
        Ok(Box::new(SpdkChannel {
            dev: self.clone(),
            mode: Mode::Unbound,
            remote_done: Arc::new(SegQueue::new()),
            ready: Vec::new(),
            outstanding: 0,
        }))
    }
}

/// Completions of local requests, queued by their callbacks on the
/// channel's thread.
type LocalDone = Arc<Bound<Vec<(u64, DevStatus)>>>;

enum Mode {
    Unbound,
    /// This SPDK thread's own channel to the base bdev.
    Local {
        ch: IoChannel,
        done: LocalDone,
    },
    /// Requests go through the app thread.
    Remote,
}

pub(crate) struct SpdkChannel {
    dev: Arc<SpdkDevice>,
    mode: Mode,
    /// Completions of remote requests (they complete on the app thread).
    remote_done: Arc<SegQueue<(u64, DevStatus)>>,
    /// Local completions being handed out (swapped with the queue, so
    /// neither allocates once warm).
    ready: Vec<(u64, DevStatus)>,
    outstanding: usize,
}

/// On the app thread: submits a request from a plain OS thread.
fn remote_submit(dev: Arc<SpdkDevice>, req: DevRequest, done: Arc<SegQueue<(u64, DevStatus)>>) {
    let tag = req.tag;
    if req.op == DevOp::Flush && !dev.info.flush_supported {
        return done.push((tag, Ok(())));
    }
    let queue = done.clone();
    let submitted = {
        let guard = dev.app_channel();
        let Some(ch) = guard.as_ref() else { return done.push((tag, Err(libc::ENODEV))) };
        let op = block_op(&req, dev.info.block_size);
        // SAFETY: the buffer is valid until the completion is polled (as
        // its maker promised), which waits for `done`.
        unsafe { ch.submit(op, req.block, u64::from(req.nblocks), move |ok| queue.push((tag, status(ok)))) }
    };
    match submitted {
        Ok(()) => {}
        // Out of bdev_io: try again after the app thread's other work.
        Err((libc::ENOMEM, _)) => {
            let answer = done.clone();
            if Thread::app().try_send(move || remote_submit(dev, req, done)).is_err() {
                answer.push((tag, Err(libc::ENOMEM)));
            }
        }
        Err((errno, _)) => done.push((tag, Err(errno))),
    }
}

impl SpdkChannel {
    /// Takes the calling SPDK thread's channel to the base bdev, or goes
    /// through the app thread when called off SPDK threads.
    fn bind(&mut self) {
        if !matches!(self.mode, Mode::Unbound) {
            return;
        }
        self.mode = match Thread::current() {
            Some(thread) => {
                let ch = self.dev.desc.channel();
                let ch = ch.unwrap_or_else(|| panic!("no I/O channel to base bdev {}", self.dev.name));
                Mode::Local { ch, done: Arc::new(Bound::new(thread, Vec::new())) }
            }
            None => Mode::Remote,
        };
    }
}

impl DevChannel for SpdkChannel {
    fn submit(&mut self, req: DevRequest) -> Result<(), QueueFull> {
        self.bind();
        match &self.mode {
            Mode::Local { ch, done } => {
                let tag = req.tag;
                if req.op == DevOp::Flush && !self.dev.info.flush_supported {
                    // No volatile cache: complete at the next poll.
                    done.with(|d| d.push((tag, Ok(()))));
                } else {
                    let queue = done.clone();
                    let on_done = move |ok| queue.with(|d| d.push((tag, status(ok))));
                    let op = block_op(&req, self.dev.info.block_size);
                    // SAFETY: the buffer is valid until the completion is
                    // polled (as its maker promised), which waits for
                    // `on_done`.
                    let submitted = unsafe { ch.submit(op, req.block, u64::from(req.nblocks), on_done) };
                    match submitted {
                        Ok(()) => {}
                        Err((libc::ENOMEM, _)) => return Err(QueueFull),
                        Err((errno, _)) => done.with(|d| d.push((tag, Err(errno)))),
                    }
                }
            }
            Mode::Remote => {
                let (dev, done) = (self.dev.clone(), self.remote_done.clone());
                if Thread::app().try_send(move || remote_submit(dev, req, done)).is_err() {
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
        match &self.mode {
            Mode::Local { done: local, .. } => {
                // Taken out first: a callback of `done` may submit more.
                local.with(|queued| std::mem::swap(queued, &mut self.ready));
                for (tag, status) in self.ready.drain(..) {
                    done(tag, status);
                    n += 1;
                }
            }
            Mode::Remote => {
                while let Some((tag, status)) = self.remote_done.pop() {
                    done(tag, status);
                    n += 1;
                }
            }
            Mode::Unbound => {}
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
