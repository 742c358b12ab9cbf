//! The global allocator: `linked_list_allocator` over a static region in
//! the `.heap` section (not zeroed by the entry code; the ELF loader
//! zero-fills it as part of the data segment's memory size).

use core::cell::UnsafeCell;

use linked_list_allocator::LockedHeap;

/// Heap size. The QEMU test boots with 64 MiB; a Xen stub domain is given
/// its memory by the domain configuration and must be at least this plus
/// the image.
pub const HEAP_SIZE: usize = 16 * 1024 * 1024;

#[repr(C, align(4096))]
struct Region(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: handed to the allocator once, at boot, and never touched again.
unsafe impl Sync for Region {}

#[unsafe(link_section = ".heap")]
static REGION: Region = Region(UnsafeCell::new([0; HEAP_SIZE]));

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

/// Gives the region to the allocator. Called once, first thing.
pub fn init() {
    // SAFETY: called once before any allocation; the region is 'static
    // and used by nobody else.
    unsafe { ALLOCATOR.lock().init(REGION.0.get().cast(), HEAP_SIZE) }
}

/// Bytes in use and free.
pub fn usage() -> (usize, usize) {
    let heap = ALLOCATOR.lock();
    (heap.used(), heap.free())
}
