//! The device access of format and mount, which run before the reactors
//! start: one request polled to completion, or a batch of reads with many
//! in flight (a mount reads summaries, headers and replayed data in
//! batches, not a block at a time). It counts the bytes it reads, which
//! mount reports.

use crate::device::{BlockDevice, DevChannel, DevOp, DevRequest, DmaBuf};
use crate::error::{Error, Result};

/// Reads a batch keeps in flight.
const QUEUE_DEPTH: usize = 64;

pub(super) struct SyncIo {
    chan: Box<dyn DevChannel>,
    pub bs: usize,
    /// Bytes read so far.
    pub read_bytes: u64,
}

impl SyncIo {
    pub fn new(dev: &dyn BlockDevice) -> Result<SyncIo> {
        let chan = dev.channel().map_err(|e| Error::Io(e.raw_os_error().unwrap_or(libc::EIO)))?;
        Ok(SyncIo { chan, bs: dev.block_size() as usize, read_bytes: 0 })
    }

    fn run(&mut self, op: DevOp, block: u64, nblocks: u32, buf: *mut u8) -> Result<()> {
        let req = DevRequest { op, block, nblocks, buf, tag: 1 };
        // SAFETY: callers pass buffers of `nblocks` blocks that live until
        // this function returns, by which time the request completed.
        while unsafe { self.chan.submit(req) }.is_err() {
            self.chan.poll(&mut |_, _| {});
        }
        let mut result = None;
        while result.is_none() {
            self.chan.poll(&mut |_, status| result = Some(status));
        }
        result.expect("polled to completion").map_err(Error::Io)
    }

    pub fn read(&mut self, block: u64, nblocks: u32) -> Result<DmaBuf> {
        let mut buf = DmaBuf::new(nblocks as usize * self.bs, self.bs);
        self.run(DevOp::Read, block, nblocks, buf.as_mut_ptr())?;
        self.read_bytes += buf.len() as u64;
        Ok(buf)
    }

    /// Reads every (block, blocks) of `reqs`, up to `QUEUE_DEPTH` at once;
    /// the buffers in the same order.
    pub fn read_batch(&mut self, reqs: &[(u64, u32)]) -> Result<Vec<DmaBuf>> {
        let mut bufs: Vec<DmaBuf> = reqs.iter().map(|&(_, n)| DmaBuf::new(n as usize * self.bs, self.bs)).collect();
        let (mut next, mut inflight, mut error) = (0, 0, None);
        while next < reqs.len() || inflight > 0 {
            while next < reqs.len() && inflight < QUEUE_DEPTH {
                let (block, nblocks) = reqs[next];
                let req = DevRequest { op: DevOp::Read, block, nblocks, buf: bufs[next].as_mut_ptr(), tag: 0 };
                // SAFETY: the buffer holds `nblocks` blocks and lives in
                // `bufs` until this function returns, after every
                // completion was polled.
                if unsafe { self.chan.submit(req) }.is_err() {
                    break;
                }
                next += 1;
                inflight += 1;
            }
            self.chan.poll(&mut |_, status| {
                inflight -= 1;
                if let Err(e) = status {
                    error.get_or_insert(e);
                }
            });
        }
        self.read_bytes += bufs.iter().map(|b| b.len() as u64).sum::<u64>();
        error.map_or(Ok(bufs), |e| Err(Error::Io(e)))
    }

    pub fn write(&mut self, block: u64, buf: &mut DmaBuf) -> Result<()> {
        let nblocks = (buf.len() / self.bs) as u32;
        self.run(DevOp::Write, block, nblocks, buf.as_mut_ptr())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.run(DevOp::Flush, 0, 0, std::ptr::null_mut())
    }
}
