//! SPDK's error bdev: `EE_<base>` passes every request through to the bdev
//! it is created on, except those an injection told it to fail, so that
//! failure handling is tested with the same `rpc.py` calls as under SPDK
//! (`bdev_error_create`, `bdev_error_inject_error`, `bdev_error_delete`).
//!
//! As in SPDK's module, each I/O type (read, write, unmap, flush) has its
//! own count of failures to come: `bdev_error_inject_error` with io_type
//! `all` sets every type's count, `clear` zeroes them all. A count is taken
//! from atomically by whichever core's channel submits the next request of
//! that type, so `num` failures are `num` failed requests however many
//! cores submit. A request that fails never reaches the base bdev; it
//! completes with EIO at the channel's next poll. Here a copy
//! ([`DevOp::Copy`]) counts as a write: it writes its destination blocks.
//! Unmaps are never submitted to devices here, so their count stays.
//!
//! Of SPDK's error types, `failure` (EIO) and `nomem` (the request is
//! refused as a full queue, and the submitter retries it) are served;
//! `pending`, `corrupt_data` and `nvme_failure` are refused (-95).

use ilog_bdev::device::{BlockDevice, DevChannel, DevOp, DevRequest, DevStatus, QueueFull};
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// The name SPDK gives the error bdev on `base`.
pub fn error_bdev_name(base: &str) -> String {
    format!("EE_{base}")
}

/// `bdev_error_inject_error`'s `io_type`, as SPDK spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoType {
    Read,
    Write,
    Unmap,
    Flush,
    /// Every type.
    All,
    /// Removes every injected error (whatever `error_type` says).
    Clear,
}

/// `bdev_error_inject_error`'s `error_type`, as SPDK spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// The request fails with EIO.
    Failure,
    /// The request is refused as if the queue were full: the submitter
    /// polls and submits it again (SPDK's NOMEM status, which the bdev
    /// layer retries).
    Nomem,
    NvmeFailure,
    Pending,
    CorruptData,
}

/// What a request that matched an injection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Injected {
    Failure,
    Nomem,
}

/// The I/O types with a count, in SPDK's order.
const TYPES: [IoType; 4] = [IoType::Read, IoType::Write, IoType::Unmap, IoType::Flush];

/// One I/O type's injection: failures still to come, and the queue depth
/// at (or above) which a request takes one (SPDK's `queue_depth`).
#[derive(Default)]
struct Slot {
    num: AtomicU32,
    queue_depth: AtomicU64,
    /// 0: failure, 1: nomem.
    kind: AtomicU32,
}

/// The injections of one error bdev, shared by its channels.
#[derive(Default)]
struct Injections {
    slots: [Slot; 4],
    /// Requests failed so far, for the tests and the log.
    failed: AtomicU64,
}

impl Injections {
    fn slot(&self, io: IoType) -> &Slot {
        let i = TYPES.iter().position(|t| *t == io).expect("a type with a count");
        &self.slots[i]
    }

    /// Takes one of `io`'s injected errors for a request submitted with
    /// `inflight` others outstanding on its channel.
    fn take(&self, io: IoType, inflight: usize) -> Option<Injected> {
        let slot = self.slot(io);
        if (inflight as u64) < slot.queue_depth.load(Relaxed) {
            return None;
        }
        slot.num.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)).ok()?;
        Some(if slot.kind.load(Relaxed) == 1 { Injected::Nomem } else { Injected::Failure })
    }
}

/// A device that fails the requests it was told to, and passes the others
/// to the device it wraps.
pub struct ErrorDevice {
    inner: Arc<dyn BlockDevice>,
    injections: Arc<Injections>,
}

/// Why an injection is refused: an errno and a message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub errno: i32,
    pub message: String,
}

impl ErrorDevice {
    pub fn new(inner: Arc<dyn BlockDevice>) -> ErrorDevice {
        ErrorDevice { inner, injections: Arc::default() }
    }

    /// SPDK's `bdev_error_inject_error`: the next `num` requests of
    /// `io_type` (each type `num` times for `all`), submitted while at least
    /// `queue_depth` others are in flight on their channel, fail as
    /// `error_type` says; `clear` removes every injection.
    pub fn inject(&self, io_type: IoType, error_type: ErrorType, num: u32, queue_depth: u64) -> Result<(), Refused> {
        if io_type == IoType::Clear {
            for slot in &self.injections.slots {
                slot.num.store(0, Relaxed);
            }
            return Ok(());
        }
        let kind = match error_type {
            ErrorType::Failure => 0,
            ErrorType::Nomem => 1,
            other => {
                return Err(Refused {
                    errno: libc::ENOTSUP,
                    message: format!("error_type {other:?} is not supported here: use failure or nomem"),
                })
            }
        };
        let types: &[IoType] = if io_type == IoType::All { &TYPES } else { std::slice::from_ref(&io_type) };
        for io in types {
            let slot = self.injections.slot(*io);
            // The count last: a channel that sees it sees the rest.
            slot.num.store(0, Relaxed);
            slot.kind.store(kind, Relaxed);
            slot.queue_depth.store(queue_depth, Relaxed);
            slot.num.store(num, Relaxed);
        }
        Ok(())
    }

    /// Injected failures still to come for `io_type` (not `all`/`clear`).
    pub fn pending(&self, io_type: IoType) -> u32 {
        self.injections.slot(io_type).num.load(Relaxed)
    }

    /// Requests failed by an injection so far.
    pub fn failed(&self) -> u64 {
        self.injections.failed.load(Relaxed)
    }
}

impl BlockDevice for ErrorDevice {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }
    fn buf_align(&self) -> usize {
        self.inner.buf_align()
    }
    fn supports_copy(&self) -> bool {
        self.inner.supports_copy()
    }
    fn channel(&self) -> std::io::Result<Box<dyn DevChannel>> {
        Ok(Box::new(ErrorChannel {
            inner: self.inner.channel()?,
            injections: self.injections.clone(),
            failed: VecDeque::new(),
        }))
    }
}

/// Failed requests a channel holds for its next poll; past this, submits
/// are refused as a full queue.
const FAILED_DEPTH: usize = 4096;

struct ErrorChannel {
    inner: Box<dyn DevChannel>,
    injections: Arc<Injections>,
    /// Tags of requests failed at submission, completed at the next poll.
    failed: VecDeque<u64>,
}

impl DevChannel for ErrorChannel {
    fn submit(&mut self, req: DevRequest) -> Result<(), QueueFull> {
        if self.failed.len() >= FAILED_DEPTH {
            return Err(QueueFull);
        }
        let io = match req.op {
            DevOp::Read => IoType::Read,
            DevOp::Write | DevOp::Copy { .. } => IoType::Write,
            DevOp::Flush => IoType::Flush,
        };
        match self.injections.take(io, self.inner.outstanding()) {
            None => self.inner.submit(req),
            Some(Injected::Nomem) => Err(QueueFull),
            Some(Injected::Failure) => {
                self.injections.failed.fetch_add(1, Relaxed);
                self.failed.push_back(req.tag);
                Ok(())
            }
        }
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, DevStatus)) -> usize {
        let n = self.failed.len();
        for tag in self.failed.drain(..) {
            done(tag, Err(libc::EIO));
        }
        n + self.inner.poll(done)
    }

    fn outstanding(&self) -> usize {
        self.failed.len() + self.inner.outstanding()
    }

    fn prepare(&mut self) {
        self.inner.prepare()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ilog_bdev::device::{DmaBuf, IoBuf, MallocDevice};

    const BS: usize = 512;

    fn device() -> ErrorDevice {
        ErrorDevice::new(Arc::new(MallocDevice::new(64, BS as u32)))
    }

    fn req(op: DevOp, block: u64, buf: IoBuf, tag: u64) -> DevRequest {
        DevRequest { op, block, nblocks: if buf.is_empty() { 0 } else { 1 }, buf, tag }
    }

    /// Submits `r` and polls until it completes; its status.
    fn run(ch: &mut dyn DevChannel, r: DevRequest) -> DevStatus {
        ch.submit(r).expect("room");
        let mut status = None;
        while status.is_none() {
            ch.poll(&mut |tag, s| {
                assert_eq!(tag, r.tag);
                status = Some(s);
            });
        }
        status.expect("completed")
    }

    #[test]
    fn requests_pass_through_until_failures_are_injected_then_num_of_that_type_fail() {
        let dev = device();
        assert_eq!((dev.block_size(), dev.num_blocks()), (BS as u32, 64));
        let mut ch = dev.channel().unwrap();
        let mut data = DmaBuf::new(BS, BS);
        data.iter_mut().for_each(|b| *b = 0x5a);
        assert_eq!(run(&mut *ch, req(DevOp::Write, 3, data.io_buf(), 1)), Ok(()));

        dev.inject(IoType::Write, ErrorType::Failure, 2, 0).unwrap();
        let mut other = DmaBuf::new(BS, BS);
        other.iter_mut().for_each(|b| *b = 0x77);
        for tag in [2, 3] {
            assert_eq!(run(&mut *ch, req(DevOp::Write, 3, other.io_buf(), tag)), Err(libc::EIO));
        }
        // Reads and flushes were not injected; the failed writes never
        // reached the base.
        let mut back = DmaBuf::new(BS, BS);
        assert_eq!(run(&mut *ch, req(DevOp::Read, 3, back.io_buf(), 4)), Ok(()));
        assert!(back.iter().all(|&b| b == 0x5a));
        assert_eq!(run(&mut *ch, req(DevOp::Flush, 0, IoBuf::EMPTY, 5)), Ok(()));
        // Two, then writes go through again.
        assert_eq!(run(&mut *ch, req(DevOp::Write, 3, other.io_buf(), 6)), Ok(()));
        assert_eq!(run(&mut *ch, req(DevOp::Read, 3, back.io_buf(), 7)), Ok(()));
        assert!(back.iter().all(|&b| b == 0x77));
        assert_eq!(dev.failed(), 2);
    }

    #[test]
    fn all_sets_every_type_and_clear_removes_them() {
        let dev = device();
        let mut ch = dev.channel().unwrap();
        let mut buf = DmaBuf::new(BS, BS);
        dev.inject(IoType::All, ErrorType::Failure, 1, 0).unwrap();
        assert_eq!([IoType::Read, IoType::Write, IoType::Unmap, IoType::Flush].map(|t| dev.pending(t)), [1; 4]);
        assert_eq!(run(&mut *ch, req(DevOp::Read, 0, buf.io_buf(), 1)), Err(libc::EIO));
        assert_eq!(run(&mut *ch, req(DevOp::Read, 0, buf.io_buf(), 2)), Ok(()));
        assert_eq!(run(&mut *ch, req(DevOp::Flush, 0, IoBuf::EMPTY, 3)), Err(libc::EIO));
        assert_eq!(run(&mut *ch, req(DevOp::Flush, 0, IoBuf::EMPTY, 4)), Ok(()));

        dev.inject(IoType::All, ErrorType::Failure, 1000, 0).unwrap();
        // clear, whatever the error type named with it.
        dev.inject(IoType::Clear, ErrorType::Pending, 0, 0).unwrap();
        assert_eq!([IoType::Read, IoType::Write, IoType::Unmap, IoType::Flush].map(|t| dev.pending(t)), [0; 4]);
        assert_eq!(run(&mut *ch, req(DevOp::Write, 0, buf.io_buf(), 5)), Ok(()));
        assert_eq!(run(&mut *ch, req(DevOp::Read, 0, buf.io_buf(), 6)), Ok(()));
        assert_eq!(dev.failed(), 2);
    }

    #[test]
    fn a_copy_counts_as_a_write() {
        let dev = device();
        assert!(dev.supports_copy(), "passed through from the malloc device");
        let mut ch = dev.channel().unwrap();
        dev.inject(IoType::Write, ErrorType::Failure, 1, 0).unwrap();
        assert_eq!(run(&mut *ch, req(DevOp::Copy { src: 0 }, 8, IoBuf::EMPTY, 1)), Err(libc::EIO));
        assert_eq!(dev.pending(IoType::Write), 0);
    }

    #[test]
    fn failures_are_counted_once_across_channels_and_threads() {
        let dev = Arc::new(device());
        dev.inject(IoType::Read, ErrorType::Failure, 1000, 0).unwrap();
        let failed: u64 = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|t| {
                    let dev = dev.clone();
                    s.spawn(move || {
                        let mut ch = dev.channel().unwrap();
                        let mut buf = DmaBuf::new(BS, BS);
                        (0..600u64)
                            .filter(|i| run(&mut *ch, req(DevOp::Read, i % 64, buf.io_buf(), t * 1000 + i)).is_err())
                            .count() as u64
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert_eq!(failed, 1000, "2400 reads on 4 channels, 1000 injected failures");
        assert_eq!((dev.failed(), dev.pending(IoType::Read)), (1000, 0));
    }

    #[test]
    fn queue_depth_spares_requests_submitted_below_it() {
        let dev = device();
        let mut ch = dev.channel().unwrap();
        let mut bufs: Vec<DmaBuf> = (0..3).map(|_| DmaBuf::new(BS, BS)).collect();
        dev.inject(IoType::Read, ErrorType::Failure, 1, 2).unwrap();
        // The first two go in with 0 and 1 outstanding; the third with 2.
        for (tag, buf) in bufs.iter_mut().enumerate() {
            ch.submit(req(DevOp::Read, 0, buf.io_buf(), tag as u64)).unwrap();
        }
        let mut got = Vec::new();
        while ch.outstanding() > 0 {
            ch.poll(&mut |tag, s| got.push((tag, s)));
        }
        got.sort();
        assert_eq!(got, [(0, Ok(())), (1, Ok(())), (2, Err(libc::EIO))]);
    }

    #[test]
    fn nomem_refuses_the_submission_once_and_unsupported_types_are_refused() {
        let dev = device();
        let mut ch = dev.channel().unwrap();
        let mut buf = DmaBuf::new(BS, BS);
        dev.inject(IoType::Write, ErrorType::Nomem, 1, 0).unwrap();
        assert_eq!(ch.submit(req(DevOp::Write, 0, buf.io_buf(), 1)), Err(QueueFull));
        assert_eq!(run(&mut *ch, req(DevOp::Write, 0, buf.io_buf(), 1)), Ok(()));
        for t in [ErrorType::Pending, ErrorType::CorruptData, ErrorType::NvmeFailure] {
            assert_eq!(dev.inject(IoType::Read, t, 1, 0).unwrap_err().errno, libc::ENOTSUP);
        }
        assert_eq!(dev.pending(IoType::Read), 0);
    }
}
