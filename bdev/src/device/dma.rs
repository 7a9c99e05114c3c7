//! Aligned, zeroed I/O buffers (SPDK's `spdk_dma_zmalloc`). From the heap,
//! unless a runtime installed its own allocator: the SPDK module installs
//! SPDK's DMA-safe memory once its env is up, which bases such as PCIe NVMe
//! need. An allocator, not a feature: nothing here links SPDK.

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::OnceLock;

/// Where buffers come from once installed.
pub struct DmaAllocator {
    /// Zeroed memory of the layout, or null when out of it.
    pub alloc: fn(Layout) -> *mut u8,
    /// # Safety
    /// Frees what `alloc` returned, once.
    pub free: unsafe fn(*mut u8),
}

static ALLOCATOR: OnceLock<DmaAllocator> = OnceLock::new();

/// Makes every later buffer come from `allocator` (the first one installed
/// stays); earlier buffers are still freed where they came from.
pub fn install_allocator(allocator: DmaAllocator) {
    let _ = ALLOCATOR.set(allocator);
}

/// A heap buffer aligned for direct I/O, zero-filled at allocation.
pub struct DmaBuf {
    ptr: NonNull<u8>,
    layout: Layout,
    /// Allocated by the installed allocator, not the heap.
    from: Option<&'static DmaAllocator>,
}

// SAFETY: DmaBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for DmaBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for DmaBuf {}

impl DmaBuf {
    /// `len` bytes aligned to `align` (a power of two); `len` may be 0.
    pub fn new(len: usize, align: usize) -> DmaBuf {
        let layout = Layout::from_size_align(len.max(1), align.max(1)).expect("valid DMA buffer layout");
        let from = ALLOCATOR.get();
        let ptr = match from {
            Some(a) => (a.alloc)(layout),
            // SAFETY: the layout has a non-zero size.
            None => unsafe { alloc::alloc_zeroed(layout) },
        };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        DmaBuf { ptr, layout, from }
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
        match self.from {
            // SAFETY: allocated by this allocator in `new`.
            Some(a) => unsafe { (a.free)(self.ptr.as_ptr()) },
            // SAFETY: allocated in `new` with this layout.
            None => unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) },
        }
    }
}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuf").field("len", &self.len()).finish()
    }
}
