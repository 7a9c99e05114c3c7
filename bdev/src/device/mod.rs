//! Block devices the engine stores its data on, and the per-core channels
//! through which it submits asynchronous I/O to them (SPDK's io_channel).
//!
//! A device is shared by every core; each core opens its own [`DevChannel`],
//! submits requests tagged with a `u64` and collects completions by polling.
//! Nothing here blocks.

mod buf;
pub(crate) mod dma;
mod file;
mod malloc;
pub mod sim;
/// A base SPDK bdev (feature `spdk`; used by the SPDK runtime).
#[cfg(feature = "spdk")]
pub(crate) mod spdk;

pub use buf::IoBuf;
pub(crate) use buf::{lend, lend_mut};
pub use dma::{install_allocator, DmaAllocator, DmaBuf};
pub use file::FileDevice;
pub(crate) use file::DIRECT_ALIGN;
pub use malloc::MallocDevice;

/// What a device request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevOp {
    Read,
    Write,
    /// Make every write completed before this request durable.
    Flush,
    /// Write `nblocks` blocks at `block` with the device's own blocks at
    /// `src` (SPDK's bdev copy: NVMe Simple Copy, the malloc bdev's memcpy),
    /// without the data passing through a buffer. Durable as a write is.
    /// Only for devices whose [`BlockDevice::supports_copy`] says so.
    Copy {
        src: u64,
    },
}

/// One asynchronous device request. A read's or a write's `buf` holds
/// `nblocks` blocks, aligned to [`BlockDevice::buf_align`]; flushes and
/// copies carry [`IoBuf::EMPTY`].
#[derive(Debug, Clone, Copy)]
pub struct DevRequest {
    pub op: DevOp,
    pub block: u64,
    pub nblocks: u32,
    pub buf: IoBuf,
    /// Returned with the completion; the engine encodes its context in it.
    pub tag: u64,
}

impl DevRequest {
    /// The address a read fills or a write takes its `nblocks` blocks from;
    /// panics if `buf` is shorter.
    pub(crate) fn data(&self, block_size: usize) -> *mut u8 {
        self.buf.blocks(0, self.nblocks, block_size).as_ptr()
    }
}

/// A request's outcome: `Err(errno)` on failure.
pub type DevStatus = std::result::Result<(), i32>;

/// The channel's submission queue is full: poll, then submit again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// A core's private queue pair to a device.
pub trait DevChannel: Send {
    /// Queues `req`; its completion comes out of [`DevChannel::poll`]. The
    /// device uses `req.buf` until then, as its maker promised.
    fn submit(&mut self, req: DevRequest) -> Result<(), QueueFull>;

    /// Hands every completion that is ready to `done(tag, status)`; returns
    /// how many there were.
    fn poll(&mut self, done: &mut dyn FnMut(u64, DevStatus)) -> usize;

    /// Requests submitted and not yet polled.
    fn outstanding(&self) -> usize;

    /// Sets up, on the thread that will use the channel, what its first
    /// request would otherwise set up inline (SPDK: the base bdev's I/O
    /// channel, milliseconds of pool allocation).
    fn prepare(&mut self) {}
}

/// A block device shared by all cores.
pub trait BlockDevice: Send + Sync {
    fn block_size(&self) -> u32;
    fn num_blocks(&self) -> u64;
    /// Alignment, in bytes, that request buffers need.
    fn buf_align(&self) -> usize {
        self.block_size() as usize
    }
    /// Opens a channel for the calling core.
    fn channel(&self) -> std::io::Result<Box<dyn DevChannel>>;
    /// Whether the device copies blocks itself ([`DevOp::Copy`]).
    fn supports_copy(&self) -> bool {
        false
    }
}
