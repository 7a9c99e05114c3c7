//! Where engine requests meet SPDK memory: a bdev I/O handed to the engine
//! (its state in the I/O's driver context, its buffers lent to the engine
//! until it completes) and the engine's `u64` completion tokens, typed as
//! [`Completion`].

use super::bdev_io::{BdevIo, IoKind, IoStatus};
use super::thread::Thread;
use crate::device::{DmaBuf, IoBuf};
use crate::engine::{Reply, Request, Shard, Submitter, View};
use crate::error::Result;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

/// Per-I/O state, in the bdev I/O's driver context.
struct IoCtx {
    io: BdevIo,
    thread: Thread,
    /// Engine requests not completed yet.
    pending: AtomicU32,
    /// First failure's errno, 0 if none.
    errno: AtomicI32,
    /// A copy of the I/O's data when its iovecs are not whole blocks.
    bounce: Option<DmaBuf>,
}

/// The driver context each bdev I/O needs (`get_ctx_size`).
pub(crate) fn ctx_size() -> usize {
    std::mem::size_of::<IoCtx>()
}

/// Where the engine takes a bdev's requests.
pub(crate) struct Target<'a> {
    pub submitter: &'a Submitter,
    /// The engine core of the submitting thread.
    pub core: u32,
    pub view: View,
    pub block_size: u32,
    /// The engine's buffer alignment: other iovecs go through a bounce buffer.
    pub align: usize,
}

/// A bdev I/O the engine is working on: one per engine request.
#[derive(Clone, Copy)]
pub(crate) struct EngineIo(NonNull<IoCtx>);

// SAFETY: the context is shared through atomics until the last piece
// finishes it (see `piece_done`).
unsafe impl Send for EngineIo {}

/// Hands `io` to the engine as reads or writes: one request per iovec when
/// every iovec is whole, aligned blocks (no copy), else one request through
/// a bounce buffer.
pub(crate) fn submit_rw(io: BdevIo, t: &Target, read: bool) {
    let bs = t.block_size as usize;
    let whole = io.iovs().iter().all(|v| v.iov_len % bs == 0 && (v.iov_base as usize) % t.align == 0);
    let (mut lba, blocks) = (io.offset_blocks(), io.num_blocks());
    let request = |lba, blocks, buf| {
        if read {
            Request::Read { lba, blocks, buf, view: t.view }
        } else {
            Request::Write { lba, blocks, buf }
        }
    };
    if !whole {
        let mut bounce = DmaBuf::new(blocks as usize * bs, t.align);
        if !read {
            io.copy_out(&mut bounce);
        }
        let buf = bounce.io_buf();
        // The context holds the bounce buffer until the I/O completes.
        return start(io, 1, Some(bounce)).submit(t, request(lba, blocks as u32, buf));
    }
    let pieces = io.iovs().iter().filter(|v| v.iov_len > 0).count() as u32;
    let e = start(io, pieces, None);
    let mut left = pieces;
    let mut i = 0;
    // Stops at the last piece: once it is submitted, the I/O may be gone.
    while left > 0 {
        let buf = e.iov(i);
        i += 1;
        if buf.is_empty() {
            continue;
        }
        let n = (buf.len() / bs) as u32;
        left -= 1;
        e.submit(t, request(lba, n, buf));
        lba += u64::from(n);
    }
}

/// Hands `io` to the engine as one request that carries no buffer.
pub(crate) fn submit_one(io: BdevIo, t: &Target, req: Request) {
    assert!(!req.has_buffer(), "a whole-I/O request carries no buffer");
    start(io, 1, None).submit(t, req);
}

/// Writes the I/O's context into its driver context.
fn start(io: BdevIo, pieces: u32, bounce: Option<DmaBuf>) -> EngineIo {
    let slot = io.driver_ctx().cast::<IoCtx>();
    assert!(slot as usize % std::mem::align_of::<IoCtx>() == 0, "driver context misaligned");
    let ctx = IoCtx {
        io,
        thread: Thread::current().expect("bdev I/O on an SPDK thread"),
        pending: AtomicU32::new(pieces),
        errno: AtomicI32::new(0),
        bounce,
    };
    // SAFETY: the driver context is `ctx_size()` bytes (the module's
    // `get_ctx_size`), aligned (checked), and ours until the I/O completes.
    unsafe { slot.write(ctx) };
    EngineIo(NonNull::new(slot).expect("driver context"))
}

impl EngineIo {
    /// The I/O's iovec `i`: callable while a piece is still to be
    /// submitted.
    fn iov(self, i: usize) -> IoBuf {
        // SAFETY: the context lives until the last piece completes, which
        // waits for its submission.
        let v = unsafe { &(*self.0.as_ptr()).io }.iovs()[i];
        // SAFETY: the iovec is the bdev I/O's memory, lent to the engine
        // until the I/O completes, which waits for every piece.
        unsafe { IoBuf::from_raw(v.iov_base.cast(), v.iov_len) }
    }

    /// Hands one request of the I/O to the engine. A read's or write's
    /// buffer must be the I/O's iovec or its bounce buffer.
    fn submit(self, t: &Target, req: Request) {
        let token = Completion::Io(self).into_token();
        if let Err(e) = t.submitter.submit(t.core, token, req) {
            // Refused: this piece completes here, on the submitting thread.
            if let Some(done) = self.piece_done(e.errno()) {
                done.complete();
            }
        }
    }

    /// Records one engine request of the I/O as completed (`errno` 0:
    /// success); the I/O once this was its last.
    fn piece_done(self, errno: i32) -> Option<Finished> {
        let ctx = self.0.as_ptr();
        // SAFETY: the context lives until its last piece takes it below.
        let last = unsafe {
            if errno != 0 {
                let _ = (*ctx).errno.compare_exchange(0, errno, Ordering::AcqRel, Ordering::Acquire);
            }
            (*ctx).pending.fetch_sub(1, Ordering::AcqRel) == 1
        };
        // SAFETY: every other piece is done (AcqRel above): this handle is
        // the last use of the context, read out once.
        last.then(|| Finished(unsafe { ctx.read() }))
    }
}

/// An I/O whose engine requests have all completed, to complete on the
/// thread that submitted it.
pub(crate) struct Finished(IoCtx);

impl Finished {
    pub fn thread(&self) -> Thread {
        self.0.thread
    }

    /// Copies a bounced read out, then completes the I/O.
    pub fn complete(self) {
        let ctx = self.0;
        let errno = ctx.errno.load(Ordering::Acquire);
        if let Some(bounce) = &ctx.bounce {
            if errno == 0 && ctx.io.kind() == IoKind::Read {
                ctx.io.copy_in(bounce);
            }
        }
        ctx.io.complete(IoStatus::of_errno(errno));
    }
}

/// A control call's completion, run on the shard thread that finished it.
pub(crate) type Callback = Box<dyn FnOnce(Result<Reply>) + Send>;

/// What an engine completion token stands for.
pub(crate) enum Completion {
    /// One engine request of a bdev I/O.
    Io(EngineIo),
    /// A control call.
    Call(Callback),
}

/// Tokens with this bit set are control calls (I/O contexts and boxes are
/// at least 8-aligned).
const CALL_TAG: u64 = 1;

impl Completion {
    fn into_token(self) -> u64 {
        match self {
            Completion::Io(e) => e.0.as_ptr() as u64,
            Completion::Call(cb) => Box::into_raw(Box::new(cb)) as u64 | CALL_TAG,
        }
    }

    /// # Safety
    /// `token` came from `into_token` and is decoded once (the engine
    /// completes each request it took once).
    unsafe fn from_token(token: u64) -> Completion {
        if token & CALL_TAG != 0 {
            // SAFETY: the caller's contract: a box leaked by `into_token`.
            Completion::Call(*unsafe { Box::from_raw((token & !CALL_TAG) as *mut Callback) })
        } else {
            Completion::Io(EngineIo(NonNull::new(token as *mut IoCtx).expect("I/O token")))
        }
    }
}

/// Submits any request (to core 0, which splits it); `done` runs on the
/// shard thread that completes it (or here if the engine refuses it). A read
/// or a write lends its buffer until `done` runs.
pub(crate) fn submit_call(submitter: &Submitter, req: Request, done: Callback) {
    let token = Completion::Call(done).into_token();
    if let Err(e) = submitter.submit(0, token, req) {
        // SAFETY: refused, so the token was never handed out: decoded once.
        if let Completion::Call(done) = unsafe { Completion::from_token(token) } {
            done(Err(e));
        }
    }
}

/// Polls `shard`; its completions end here: a finished control call runs
/// its callback, a finished bdev I/O goes to `finished`. Returns the work
/// done, as `Shard::poll`.
pub(crate) fn poll_shard(shard: &mut Shard, finished: &mut impl FnMut(Finished)) -> usize {
    shard.poll(&mut |token, result| {
        // SAFETY: the token comes straight from the engine's poll, which
        // yields each token submitted (by `into_token`) once.
        match unsafe { Completion::from_token(token) } {
            Completion::Call(cb) => cb(result),
            Completion::Io(e) => {
                if let Some(done) = e.piece_done(result.err().map_or(0, |e| e.errno())) {
                    finished(done);
                }
            }
        }
    })
}
