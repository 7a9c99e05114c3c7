//! The data path of an ilog bdev under SPDK: a `bdev_io` submitted on any
//! thread goes to the engine core of that thread's SPDK core (the engine
//! splits it at stripe boundaries and forwards the pieces to their owners
//! through its lock-free queues); the completion comes back on that core's
//! shard thread and is handed to the submitting thread with a message
//! before `spdk_bdev_io_complete`. Control calls take the same way back to
//! the app thread.

use super::ffi::bdev::BdevOps;
use super::ffi::bdev_io::{BdevIo, IoKind, IoStatus};
use super::ffi::engine_io::{self, Finished, Target};
use super::ffi::thread::Thread;
use crate::device::spdk::SpdkDevice;
use crate::engine::{Reply, Request, Submitter, View};
use crate::error::Result;

/// Hands `io` to the engine (`T` is the bdev's, for a read that first needs
/// a buffer). A reset goes to the base `base`.
pub(super) fn submit<T: BdevOps>(io: BdevIo, t: &Target, base: &SpdkDevice) {
    let read_only = t.view != View::Current;
    let (lba, blocks) = (io.offset_blocks(), io.num_blocks());
    match io.kind() {
        IoKind::Read if io.needs_buf() => io.get_buf::<T>(blocks * u64::from(t.block_size)),
        IoKind::Read => engine_io::submit_rw(io, t, true),
        IoKind::Write if !read_only => engine_io::submit_rw(io, t, false),
        IoKind::Flush => engine_io::submit_one(io, t, Request::Flush),
        IoKind::Reset => reset(io, base),
        IoKind::Unmap if !read_only => match u32::try_from(blocks) {
            Ok(blocks) => engine_io::submit_one(io, t, Request::Unmap { lba, blocks }),
            Err(_) => io.complete(IoStatus::Failed),
        },
        IoKind::WriteZeroes if !read_only => match u32::try_from(blocks) {
            Ok(blocks) => engine_io::submit_one(io, t, Request::WriteZeroes { lba, blocks }),
            Err(_) => io.complete(IoStatus::Failed),
        },
        _ => io.complete(IoStatus::Failed),
    }
}

/// A read's buffer arrived (or not): on to the engine.
pub(super) fn got_buf(io: BdevIo, t: &Target, success: bool) {
    if success {
        engine_io::submit_rw(io, t, true);
    } else {
        io.complete(IoStatus::NoMem);
    }
}

/// A reset goes to the base, which aborts or finishes what ilog has in
/// flight there, as a passthru's does: a write the base holds would
/// otherwise hold an engine flush, and the reset, for ever.
fn reset(io: BdevIo, base: &SpdkDevice) {
    base.reset(move |ok| io.complete(if ok { IoStatus::Success } else { IoStatus::Failed }));
}

/// Submits a control request (no buffer); `done` runs on the app thread.
pub(super) fn submit_control(submitter: &Submitter, req: Request, done: impl FnOnce(Result<Reply>) + Send + 'static) {
    engine_io::submit_call(submitter, req, Box::new(move |r| Thread::app().send(move || done(r))));
}

/// I/Os finished on a shard thread, gathered per submitting thread over
/// one poll: one message per thread takes them back, not one per I/O (a
/// message is a mempool get and a multi-producer ring enqueue).
#[derive(Default)]
pub(super) struct Returns(Vec<(Thread, Vec<Finished>)>);

impl Returns {
    /// Completes the I/O now if this is its thread, else at `send`.
    pub fn push(&mut self, io: Finished) {
        let thread = io.thread();
        if thread.is_current() {
            return io.complete();
        }
        match self.0.iter_mut().find(|(t, _)| *t == thread) {
            Some((_, ios)) => ios.push(io),
            None => self.0.push((thread, vec![io])),
        }
    }

    /// Sends each thread its I/Os.
    pub fn send(&mut self) {
        for (thread, ios) in self.0.iter_mut().filter(|(_, ios)| !ios.is_empty()) {
            let batch = std::mem::take(ios);
            if let Err((_, back)) = thread.try_send(move || batch.into_iter().for_each(Finished::complete)) {
                log::error!("ilog: cannot return I/Os to their thread; completing them here");
                back();
            }
        }
    }
}
