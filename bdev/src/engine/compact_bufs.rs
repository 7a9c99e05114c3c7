//! A core's compaction buffers: a fixed pool of run-sized DMA buffers that
//! compaction's moves and the drain's copy read runs into. A buffer is
//! held until the last append (or write) using it completed.

use crate::device::{DmaBuf, IoBuf};

pub(super) struct CompactBufs {
    bufs: Vec<DmaBuf>,
    free: Vec<u16>,
    /// Holders of each buffer: the run being read, and its appends.
    refs: Vec<u32>,
}

impl CompactBufs {
    pub(super) fn new(count: usize, bytes: usize, align: usize) -> CompactBufs {
        CompactBufs {
            bufs: (0..count).map(|_| DmaBuf::new(bytes, align)).collect(),
            free: (0..count as u16).collect(),
            refs: vec![0; count],
        }
    }

    pub(super) fn count(&self) -> usize {
        self.bufs.len()
    }

    /// A free buffer, held once; `None` when all are in use.
    pub(super) fn take(&mut self) -> Option<u16> {
        let b = self.free.pop()?;
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// One more holder of `b`.
    pub(super) fn hold(&mut self, b: u16) {
        self.refs[b as usize] += 1;
    }

    /// A holder of `b` is done; whether that freed it.
    pub(super) fn release(&mut self, b: u16) -> bool {
        self.refs[b as usize] -= 1;
        let freed = self.refs[b as usize] == 0;
        if freed {
            self.free.push(b);
        }
        freed
    }

    /// Buffer `b`, for the requests of its holders.
    pub(super) fn io_buf(&mut self, b: u16) -> IoBuf {
        self.bufs[b as usize].io_buf()
    }
}
