//! The global allocator: `linked_list_allocator` over the RAM after the
//! image, as far as the boot platform says RAM goes (Xen's memory map and
//! reservation, or the PVH start info's map under QEMU). The image itself
//! carries no heap, so that it loads into the few MiB a xenstore domain
//! gets (`launch-xenstore`'s default is 8 MiB).

use linked_list_allocator::LockedHeap;

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

unsafe extern "C" {
    static __image_end: u8;
}

/// The first heap address: the page after the image.
pub fn start() -> u64 {
    ((&raw const __image_end) as u64).next_multiple_of(4096)
}

/// Gives `[start, end)` to the allocator. Called once, before any
/// allocation.
///
/// # Safety
/// The range is RAM, mapped, and used by nothing else for the life of the
/// image.
pub unsafe fn init(start: u64, end: u64) {
    // SAFETY: by the caller's contract.
    unsafe { ALLOCATOR.lock().init(start as *mut u8, (end - start) as usize) }
}

/// Bytes in use and free.
pub fn usage() -> (usize, usize) {
    let heap = ALLOCATOR.lock();
    (heap.used(), heap.free())
}
