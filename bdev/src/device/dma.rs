//! Aligned, zeroed I/O buffers (SPDK's `spdk_dma_zmalloc`). Under SPDK
//! (feature `spdk`, once the module is initialised) they come from SPDK's
//! DMA-safe memory, which bases such as PCIe NVMe need; elsewhere from the
//! heap.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// Set by the SPDK module once SPDK's env is up: buffers come from it.
#[cfg(feature = "spdk")]
pub(crate) static SPDK_MEMORY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A heap buffer aligned for direct I/O, zero-filled at allocation.
pub struct DmaBuf {
    ptr: NonNull<u8>,
    layout: Layout,
    /// Allocated with `spdk_zmalloc` (freed with `spdk_free`).
    #[cfg(feature = "spdk")]
    spdk: bool,
}

// SAFETY: DmaBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for DmaBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for DmaBuf {}

impl DmaBuf {
    /// `len` bytes aligned to `align` (a power of two); `len` may be 0.
    pub fn new(len: usize, align: usize) -> DmaBuf {
        let layout = Layout::from_size_align(len.max(1), align.max(1)).expect("valid DMA buffer layout");
        #[cfg(feature = "spdk")]
        if SPDK_MEMORY.load(std::sync::atomic::Ordering::Acquire) {
            // SAFETY: plain allocation; SPDK's env is initialised (see SPDK_MEMORY).
            let p = unsafe {
                ilog_sys::spdk_zmalloc(
                    layout.size(),
                    layout.align(),
                    std::ptr::null_mut(),
                    ilog_sys::SPDK_ENV_NUMA_ID_ANY,
                    ilog_sys::SPDK_MALLOC_DMA,
                )
            };
            let ptr = NonNull::new(p.cast::<u8>()).unwrap_or_else(|| alloc::handle_alloc_error(layout));
            return DmaBuf { ptr, layout, spdk: true };
        }
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        DmaBuf {
            ptr,
            layout,
            #[cfg(feature = "spdk")]
            spdk: false,
        }
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
        #[cfg(feature = "spdk")]
        if self.spdk {
            // SAFETY: allocated with spdk_zmalloc in `new`.
            unsafe { ilog_sys::spdk_free(self.ptr.as_ptr().cast()) };
            return;
        }
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuf").field("len", &self.len()).finish()
    }
}
