//! The device access of format and mount, which run before the reactors
//! start: one request polled to completion, or a batch of reads with many
//! in flight (a mount reads summaries, headers and replayed data in
//! batches, not a block at a time). It counts the bytes it reads, which
//! mount reports.

use crate::device::{BlockDevice, DevChannel, DevOp, DevRequest, DmaBuf, IoBuf};
use crate::error::{Error, Result};
use std::collections::VecDeque;

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

    /// Callers' buffers live past the call, which polls to completion.
    fn run(&mut self, op: DevOp, block: u64, nblocks: u32, buf: IoBuf) -> Result<()> {
        let req = DevRequest { op, block, nblocks, buf, tag: 1 };
        while self.chan.submit(req).is_err() {
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
        self.run(DevOp::Read, block, nblocks, buf.io_buf())?;
        self.read_bytes += buf.len() as u64;
        Ok(buf)
    }

    /// Reads every (block, blocks) of `reqs`, up to `QUEUE_DEPTH` at once;
    /// the buffers in the same order.
    pub fn read_batch(&mut self, reqs: &[(u64, u32)]) -> Result<Vec<DmaBuf>> {
        let mut bufs = Vec::with_capacity(reqs.len());
        self.read_in_order(reqs, usize::MAX, |_, buf, _| bufs.push(buf))?;
        Ok(bufs)
    }

    /// Reads every (block, blocks) of `reqs` with up to `QUEUE_DEPTH` in
    /// flight and at most `ahead` bytes read beyond what `each` took (one
    /// request's at least), handing each buffer to `each` in `reqs` order
    /// as soon as it and those before it are in: the device keeps reading
    /// while `each` works, and memory stays bounded. Buffers `each` is done
    /// with go back in its spares (the third argument): later reads reuse
    /// them instead of zeroing fresh memory.
    pub fn read_in_order(
        &mut self,
        reqs: &[(u64, u32)],
        ahead: usize,
        mut each: impl FnMut(usize, DmaBuf, &mut Vec<DmaBuf>),
    ) -> Result<()> {
        // Requests `taken..next`: their buffers, and whether they are in.
        let mut pending: VecDeque<(DmaBuf, bool)> = VecDeque::new();
        let mut spares: Vec<DmaBuf> = Vec::new();
        let (mut taken, mut next, mut inflight, mut bytes, mut error) = (0, 0, 0, 0, None);
        loop {
            while error.is_none() && next < reqs.len() && inflight < QUEUE_DEPTH {
                let (block, nblocks) = reqs[next];
                let len = nblocks as usize * self.bs;
                if !pending.is_empty() && bytes + len > ahead {
                    break;
                }
                let mut buf = match spares.iter().position(|b| b.len() == len) {
                    Some(i) => spares.swap_remove(i),
                    None => DmaBuf::new(len, self.bs),
                };
                let req = DevRequest { op: DevOp::Read, block, nblocks, buf: buf.io_buf(), tag: next as u64 };
                // The buffer stays in `pending` (its heap block does not
                // move) until the request completed.
                if self.chan.submit(req).is_err() {
                    break;
                }
                pending.push_back((buf, false));
                (next, inflight, bytes) = (next + 1, inflight + 1, bytes + len);
            }
            if inflight == 0 && (error.is_some() || taken == reqs.len()) {
                break;
            }
            self.chan.poll(&mut |tag, status| {
                inflight -= 1;
                pending[tag as usize - taken].1 = true;
                if let Err(e) = status {
                    error.get_or_insert(e);
                }
            });
            while error.is_none() && pending.front().is_some_and(|p| p.1) {
                let (buf, _) = pending.pop_front().expect("a request in");
                bytes -= buf.len();
                self.read_bytes += buf.len() as u64;
                each(taken, buf, &mut spares);
                taken += 1;
            }
        }
        error.map_or(Ok(()), |e| Err(Error::Io(e)))
    }

    pub fn write(&mut self, block: u64, buf: &mut DmaBuf) -> Result<()> {
        let nblocks = (buf.len() / self.bs) as u32;
        self.run(DevOp::Write, block, nblocks, buf.io_buf())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.run(DevOp::Flush, 0, 0, IoBuf::EMPTY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::sim::{Faults, SimDisk};

    const BS: usize = 512;

    /// A disk whose block `b` holds the byte `b` (it completes requests in a
    /// random order).
    fn numbered_disk(blocks: u64) -> SimDisk {
        let disk = SimDisk::new(blocks, BS as u32, 7);
        let mut io = SyncIo::new(&disk).expect("channel");
        for b in 0..blocks {
            let mut buf = DmaBuf::new(BS, BS);
            buf.fill(b as u8);
            io.write(b, &mut buf).expect("write");
        }
        disk
    }

    #[test]
    fn reads_in_order_hand_over_every_buffer_in_request_order() {
        let disk = numbered_disk(256);
        let mut io = SyncIo::new(&disk).expect("channel");
        let reqs: Vec<(u64, u32)> = (0..300u64).map(|i| ((i * 37) % 250, 1 + (i % 5) as u32)).collect();
        let mut seen = Vec::new();
        io.read_in_order(&reqs, 4 * BS, |i, buf, spares| {
            let (block, n) = reqs[i];
            assert_eq!(buf.len(), n as usize * BS);
            for (k, chunk) in buf.chunks(BS).enumerate() {
                assert!(chunk.iter().all(|&x| x == (block + k as u64) as u8), "request {i}, block {k}");
            }
            seen.push(i);
            spares.push(buf);
        })
        .expect("reads");
        assert_eq!(seen, (0..reqs.len()).collect::<Vec<_>>());
        let blocks: u64 = reqs.iter().map(|r| u64::from(r.1)).sum();
        assert_eq!(io.read_bytes, blocks * BS as u64);
    }

    #[test]
    fn a_failed_read_ends_the_stream_with_its_error() {
        let disk = numbered_disk(64);
        disk.set_faults(Faults { read_eio_ppm: 200_000, write_eio_ppm: 0 });
        let mut io = SyncIo::new(&disk).expect("channel");
        let reqs: Vec<(u64, u32)> = (0..200u64).map(|i| (i % 64, 1)).collect();
        let mut taken = 0;
        let result = io.read_in_order(&reqs, 16 * BS, |i, _, _| {
            assert_eq!(i, taken, "in order up to the failure");
            taken += 1;
        });
        assert!(matches!(result, Err(Error::Io(libc::EIO))), "{result:?}");
        assert!(taken < reqs.len());
    }
}
