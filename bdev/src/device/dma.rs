//! Aligned, zeroed I/O buffers (SPDK's `spdk_dma_zmalloc`).

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// A heap buffer aligned for direct I/O, zero-filled at allocation.
pub struct DmaBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: DmaBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for DmaBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for DmaBuf {}

impl DmaBuf {
    /// `len` bytes aligned to `align` (a power of two); `len` may be 0.
    pub fn new(len: usize, align: usize) -> DmaBuf {
        let layout = Layout::from_size_align(len.max(1), align.max(1)).expect("valid DMA buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        DmaBuf { ptr, layout }
    }

    pub fn len(&self) -> usize {
        self.layout.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl std::ops::Deref for DmaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl std::ops::DerefMut for DmaBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuf").field("len", &self.len()).finish()
    }
}
