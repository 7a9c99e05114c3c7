//! Test buffers lent to requests. Each test keeps a buffer, untouched,
//! until the request it lends it to completed (most wait in a `call`).

use ilog_bdev::device::IoBuf;

/// A write's buffer.
pub fn lend(buf: &[u8]) -> IoBuf {
    // SAFETY: the test keeps `buf` until its request completed (see above);
    // a write only reads it.
    unsafe { IoBuf::from_raw(buf.as_ptr().cast_mut(), buf.len()) }
}

/// A read's buffer.
pub fn lend_mut(buf: &mut [u8]) -> IoBuf {
    // SAFETY: as in `lend`, and the test leaves it to the read meanwhile.
    unsafe { IoBuf::from_raw(buf.as_mut_ptr(), buf.len()) }
}
