//! SPDK's DMA-safe memory as the engine's buffer allocator.

use crate::device::{install_allocator, DmaAllocator};
use ilog_sys as sys;
use std::alloc::Layout;

fn alloc(layout: Layout) -> *mut u8 {
    // SAFETY: plain allocation; installed once SPDK's env is up.
    unsafe {
        sys::spdk_zmalloc(
            layout.size(),
            layout.align(),
            std::ptr::null_mut(),
            sys::SPDK_ENV_NUMA_ID_ANY,
            sys::SPDK_MALLOC_DMA,
        )
    }
    .cast()
}

/// # Safety
/// `p` came from `alloc`, freed once.
unsafe fn free(p: *mut u8) {
    // SAFETY: the caller's contract.
    unsafe { sys::spdk_free(p.cast()) }
}

/// From now on, engine buffers come from SPDK's DMA-safe memory. Call once
/// the env is up (module init).
pub(crate) fn use_spdk_memory() {
    install_allocator(DmaAllocator { alloc, free });
}
