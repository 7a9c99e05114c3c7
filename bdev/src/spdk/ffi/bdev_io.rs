//! A `spdk_bdev_io` submitted to one of our bdevs, from `submit_request`
//! until `spdk_bdev_io_complete`.

use ilog_sys as sys;
use std::ptr::NonNull;

/// What an I/O asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoKind {
    Read,
    Write,
    Flush,
    Reset,
    Unmap,
    WriteZeroes,
    Other,
}

impl IoKind {
    pub(super) fn from_raw(kind: u32) -> IoKind {
        match kind {
            sys::SPDK_BDEV_IO_TYPE_READ => IoKind::Read,
            sys::SPDK_BDEV_IO_TYPE_WRITE => IoKind::Write,
            sys::SPDK_BDEV_IO_TYPE_FLUSH => IoKind::Flush,
            sys::SPDK_BDEV_IO_TYPE_RESET => IoKind::Reset,
            sys::SPDK_BDEV_IO_TYPE_UNMAP => IoKind::Unmap,
            sys::SPDK_BDEV_IO_TYPE_WRITE_ZEROES => IoKind::WriteZeroes,
            _ => IoKind::Other,
        }
    }
}

/// How an I/O ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoStatus {
    Success,
    Failed,
    /// Out of resources: the bdev layer retries it later.
    NoMem,
}

impl IoStatus {
    /// An engine errno (0: success) as a status.
    pub fn of_errno(errno: i32) -> IoStatus {
        match errno {
            0 => IoStatus::Success,
            // The engine's queue was full.
            libc::EAGAIN => IoStatus::NoMem,
            _ => IoStatus::Failed,
        }
    }
}

/// A live bdev I/O: owned from `submit_request` until [`BdevIo::complete`].
#[derive(Debug)]
pub(crate) struct BdevIo(NonNull<sys::spdk_bdev_io>);

// SAFETY: SPDK lets an I/O be worked on from any thread; it is completed
// once, by whoever owns this handle.
unsafe impl Send for BdevIo {}
// SAFETY: shared use only reads the I/O's parameters.
unsafe impl Sync for BdevIo {}

impl BdevIo {
    /// # Safety
    /// `io` is a live I/O that SPDK handed over, not completed yet, and no
    /// other handle to it exists.
    pub(super) unsafe fn from_raw(io: *mut sys::spdk_bdev_io) -> BdevIo {
        BdevIo(NonNull::new(io).expect("SPDK hands a bdev_io"))
    }

    fn raw(&self) -> &sys::spdk_bdev_io {
        // SAFETY: live until completed, which consumes the handle.
        unsafe { self.0.as_ref() }
    }

    pub(super) fn as_ptr(&self) -> *mut sys::spdk_bdev_io {
        self.0.as_ptr()
    }

    /// The bdev's `ctxt`: the registered bdev the I/O is for.
    pub(super) fn bdev_ctxt(&self) -> *mut std::ffi::c_void {
        // SAFETY: the I/O's bdev outlives the I/O.
        unsafe { (*self.raw().bdev).ctxt }
    }

    /// The driver context (`get_ctx_size` bytes, 8-aligned).
    pub(super) fn driver_ctx(&self) -> *mut u8 {
        // SAFETY: the I/O's own trailing context; only its address is taken.
        unsafe { (*self.0.as_ptr()).driver_ctx.as_mut_ptr().cast() }
    }

    pub fn kind(&self) -> IoKind {
        IoKind::from_raw(u32::from(self.raw().type_))
    }

    pub fn offset_blocks(&self) -> u64 {
        // SAFETY: `u.bdev` is the union member of block I/Os, which all ours are.
        unsafe { self.raw().u.bdev.offset_blocks }
    }

    pub fn num_blocks(&self) -> u64 {
        // SAFETY: as above.
        unsafe { self.raw().u.bdev.num_blocks }
    }

    /// The data buffers of a read or a write.
    pub fn iovs(&self) -> &[sys::iovec] {
        // SAFETY: as above; SPDK keeps the iovec array for the I/O's life.
        unsafe {
            let p = &self.raw().u.bdev;
            if p.iovs.is_null() || p.iovcnt <= 0 {
                return &[];
            }
            std::slice::from_raw_parts(p.iovs, p.iovcnt as usize)
        }
    }

    /// Whether a read came without a buffer (the bdev layer lends one on
    /// request: [`super::bdev::BdevOps::got_buf`]).
    pub fn needs_buf(&self) -> bool {
        self.iovs().first().is_none_or(|v| v.iov_base.is_null())
    }

    /// Asks the bdev layer for a data buffer of `len` bytes; the bdev's
    /// `got_buf` gets the I/O back.
    pub fn get_buf<T: super::bdev::BdevOps>(self, len: u64) {
        // SAFETY: a live I/O of a `T` bdev; `got_buf::<T>` takes it back
        // (this handle is consumed).
        unsafe { sys::spdk_bdev_io_get_buf(self.as_ptr(), Some(super::bdev::got_buf::<T>), len) };
    }

    /// Copies the I/O's data into `dst` (a write through a bounce buffer).
    pub fn copy_out(&self, dst: &mut [u8]) {
        let mut at = 0;
        for v in self.iovs() {
            let n = v.iov_len.min(dst.len() - at);
            // SAFETY: SPDK's iovecs are valid for `iov_len` bytes while the I/O lives.
            unsafe { std::ptr::copy_nonoverlapping(v.iov_base.cast::<u8>(), dst[at..].as_mut_ptr(), n) };
            at += n;
        }
    }

    /// Copies `src` into the I/O's buffers (a read through a bounce buffer).
    pub fn copy_in(&self, src: &[u8]) {
        let mut at = 0;
        for v in self.iovs() {
            let n = v.iov_len.min(src.len() - at);
            // SAFETY: as above, and nothing else touches a read's buffers now.
            unsafe { std::ptr::copy_nonoverlapping(src[at..].as_ptr(), v.iov_base.cast::<u8>(), n) };
            at += n;
        }
    }

    pub fn complete(self, status: IoStatus) {
        let status = match status {
            IoStatus::Success => sys::SPDK_BDEV_IO_STATUS_SUCCESS,
            IoStatus::Failed => sys::SPDK_BDEV_IO_STATUS_FAILED,
            IoStatus::NoMem => sys::SPDK_BDEV_IO_STATUS_NOMEM,
        };
        // SAFETY: live, and completed once: the handle is consumed.
        unsafe { sys::spdk_bdev_io_complete(self.as_ptr(), status) };
    }
}
