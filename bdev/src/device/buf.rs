//! The memory a request reads from or fills: a raw region, passed by value
//! from a client through the engine's pieces to a device, with safe,
//! bounds-checked access to it.
//!
//! The one promise it rests on is made where an `IoBuf` is made: by the
//! caller of [`IoBuf::from_raw`], by the owner of a [`DmaBuf`] (which
//! outlives the requests it lends itself to), or by [`lend`] and
//! [`lend_mut`], whose call does not return before those requests
//! completed. Past that, the engine handles it without `unsafe`.

use super::DmaBuf;
use std::ptr::NonNull;

/// `len` bytes at a fixed address that one request (and the pieces and
/// device requests it is split into) reads or fills until it completes.
/// A write's buffer is only read; a read's is written, by one device
/// request or one zero fill per block.
#[derive(Clone, Copy)]
pub struct IoBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: an IoBuf is an address and a length, valid from any thread by the
// promise made at its construction; the request using it runs on one core
// at a time.
unsafe impl Send for IoBuf {}

impl IoBuf {
    /// No memory: what a flush, a copy or a write of zeroes carries.
    pub const EMPTY: IoBuf = IoBuf { ptr: NonNull::dangling(), len: 0 };

    /// The `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes (only reads
    /// for a write's buffer), touched by nobody else, from now until every
    /// request this `IoBuf` (or a part of it) is handed to has completed.
    pub unsafe fn from_raw(ptr: *mut u8, len: usize) -> IoBuf {
        match NonNull::new(ptr) {
            Some(ptr) => IoBuf { ptr, len },
            None => {
                assert_eq!(len, 0, "a null I/O buffer of {len} bytes");
                IoBuf::EMPTY
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address, for a device's DMA.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Blocks `first..first + n` of `block_size` bytes; panics unless they
    /// lie within.
    pub fn blocks(self, first: u32, n: u32, block_size: usize) -> IoBuf {
        let (start, len) = (first as usize * block_size, n as usize * block_size);
        assert!(start + len <= self.len, "blocks {first}+{n} beyond an I/O buffer of {} bytes", self.len);
        // SAFETY: `start + len <= self.len`, so the part is within the region.
        IoBuf { ptr: unsafe { self.ptr.add(start) }, len }
    }

    /// The bytes, for a write's CRC: only while no request fills them.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: valid for `len` bytes by the construction's promise.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Fills the region with zeros (a read of blocks nobody wrote).
    pub fn zero(self) {
        // SAFETY: valid for `len` bytes, exclusive to this request.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr(), 0, self.len) }
    }

    /// Copies `src`, of the region's length, into it.
    pub fn copy_from(self, src: &[u8]) {
        assert_eq!(src.len(), self.len, "copy into an I/O buffer of another length");
        // SAFETY: valid for `len` bytes, exclusive to this request, and no
        // slice the caller holds can overlap memory lent to a request.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuf").field("ptr", &self.ptr).field("len", &self.len).finish()
    }
}

impl DmaBuf {
    /// The whole buffer as an `IoBuf`. Its owner keeps the buffer, and
    /// keeps off it, until every request handed the `IoBuf` completed: the
    /// engine's buffers stay in their pools (busy, held by a run, in a
    /// rewrite slot) until their completion is polled.
    pub fn io_buf(&mut self) -> IoBuf {
        // SAFETY: the allocation is valid for `len` bytes while `self`
        // lives, which its owner extends past the requests as said above.
        unsafe { IoBuf::from_raw(self.as_mut_ptr(), self.len()) }
    }
}

/// Lends `buf` to the requests `call` submits: the runtimes' blocking calls,
/// which return only once their request completed, while the borrow of
/// `buf` keeps everyone else off it. `call` must not keep the `IoBuf`.
pub(crate) fn lend_mut<R>(buf: &mut [u8], call: impl FnOnce(IoBuf) -> R) -> R {
    // SAFETY: `buf` is exclusively borrowed for the whole call, and the
    // requests `call` hands the IoBuf to complete before it returns.
    call(unsafe { IoBuf::from_raw(buf.as_mut_ptr(), buf.len()) })
}

/// [`lend_mut`] for a write's buffer, which its requests only read.
pub(crate) fn lend<R>(buf: &[u8], call: impl FnOnce(IoBuf) -> R) -> R {
    // SAFETY: as in `lend_mut`; a write's IoBuf is only read, so a shared
    // borrow is enough.
    call(unsafe { IoBuf::from_raw(buf.as_ptr().cast_mut(), buf.len()) })
}
