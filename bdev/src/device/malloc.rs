//! `malloc`: a RAM-backed device (SPDK's malloc bdev). Requests complete on
//! the next poll of the channel that submitted them.

use super::{BlockDevice, DevChannel, DevOp, DevRequest, DevStatus, QueueFull};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::VecDeque;
use std::sync::Arc;

struct Memory {
    ptr: *mut u8,
    /// The device's bytes (the layout is at least one byte).
    len: usize,
    layout: Layout,
}

// SAFETY: the engine never has two requests in flight that overlap a write
// (each log block and metadata block has one writer at a time), so channels
// on different cores touch disjoint bytes; the allocation lives as long as
// any channel holds the Arc.
unsafe impl Send for Memory {}
// SAFETY: see above.
unsafe impl Sync for Memory {}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: allocated by `alloc_zeroed` with this layout.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

/// A device held in RAM, zero-filled at creation.
pub struct MallocDevice {
    mem: Arc<Memory>,
    block_size: u32,
    num_blocks: u64,
}

impl MallocDevice {
    pub fn new(num_blocks: u64, block_size: u32) -> MallocDevice {
        MallocDevice::try_new(num_blocks, block_size).expect("malloc device fits in memory")
    }

    /// A device of `num_blocks`, or `None` when the memory cannot be had.
    pub fn try_new(num_blocks: u64, block_size: u32) -> Option<MallocDevice> {
        let len = usize::try_from(num_blocks.checked_mul(u64::from(block_size))?).ok()?;
        let layout = Layout::array::<u8>(len.max(1)).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        (!ptr.is_null()).then(|| MallocDevice { mem: Arc::new(Memory { ptr, len, layout }), block_size, num_blocks })
    }
}

impl BlockDevice for MallocDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    fn buf_align(&self) -> usize {
        1
    }
    fn supports_copy(&self) -> bool {
        true
    }
    fn channel(&self) -> std::io::Result<Box<dyn DevChannel>> {
        Ok(Box::new(MallocChannel {
            mem: self.mem.clone(),
            block_size: self.block_size as usize,
            done: VecDeque::with_capacity(QUEUE_DEPTH),
        }))
    }
}

const QUEUE_DEPTH: usize = 4096;

struct MallocChannel {
    mem: Arc<Memory>,
    block_size: usize,
    done: VecDeque<(u64, DevStatus)>,
}

impl DevChannel for MallocChannel {
    fn submit(&mut self, req: DevRequest) -> Result<(), QueueFull> {
        if self.done.len() == QUEUE_DEPTH {
            return Err(QueueFull);
        }
        let start = req.block as usize * self.block_size;
        let len = req.nblocks as usize * self.block_size;
        let in_range = |start: usize| start.checked_add(len).is_some_and(|end| end <= self.mem.len);
        let src = match req.op {
            DevOp::Copy { src } => usize::try_from(src).ok().and_then(|b| b.checked_mul(self.block_size)),
            _ => Some(0),
        };
        let status = if req.op != DevOp::Flush && !(in_range(start) && src.is_some_and(in_range)) {
            Err(libc::EINVAL)
        } else {
            // SAFETY: the range is inside the allocation (checked above), and
            // `data` checked that `buf` holds `len` bytes.
            unsafe {
                match req.op {
                    DevOp::Read => {
                        std::ptr::copy_nonoverlapping(self.mem.ptr.add(start), req.data(self.block_size), len)
                    }
                    DevOp::Write => {
                        std::ptr::copy_nonoverlapping(req.data(self.block_size), self.mem.ptr.add(start), len)
                    }
                    DevOp::Flush => {}
                    // `copy`, not `copy_nonoverlapping`: nothing stops a
                    // caller from copying onto an overlapping range.
                    DevOp::Copy { .. } => {
                        let src = src.expect("checked");
                        std::ptr::copy(self.mem.ptr.add(src), self.mem.ptr.add(start), len)
                    }
                }
            }
            Ok(())
        };
        self.done.push_back((req.tag, status));
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, DevStatus)) -> usize {
        let n = self.done.len();
        for _ in 0..n {
            let (tag, status) = self.done.pop_front().expect("counted");
            done(tag, status);
        }
        n
    }

    fn outstanding(&self) -> usize {
        self.done.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DmaBuf, IoBuf};

    fn run(ch: &mut dyn DevChannel, req: DevRequest) -> DevStatus {
        ch.submit(req).expect("room");
        let mut status = None;
        ch.poll(&mut |_, s| status = Some(s));
        status.expect("completes at the next poll")
    }

    fn req(op: DevOp, block: u64, nblocks: u32, buf: IoBuf) -> DevRequest {
        DevRequest { op, block, nblocks, buf, tag: 7 }
    }

    #[test]
    fn copy_writes_the_source_blocks_and_refuses_ranges_outside() {
        let dev = MallocDevice::new(16, 512);
        assert!(dev.supports_copy());
        let mut ch = dev.channel().unwrap();
        let mut data = DmaBuf::new(3 * 512, 512);
        data.iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8);
        assert_eq!(run(&mut *ch, req(DevOp::Write, 2, 3, data.io_buf())), Ok(()));
        assert_eq!(run(&mut *ch, req(DevOp::Copy { src: 2 }, 10, 3, IoBuf::EMPTY)), Ok(()));
        let mut back = DmaBuf::new(3 * 512, 512);
        assert_eq!(run(&mut *ch, req(DevOp::Read, 10, 3, back.io_buf())), Ok(()));
        assert_eq!(back[..], data[..]);
        for (src, dst) in [(14, 0), (0, 14), (u64::MAX, 0)] {
            let status = run(&mut *ch, req(DevOp::Copy { src }, dst, 3, IoBuf::EMPTY));
            assert_eq!(status, Err(libc::EINVAL), "copy of 3 blocks from {src} to {dst}");
        }
    }
}
