//! The console ring (`struct xencons_interface`, public/io/console.h):
//! the page and event channel the domain builder gave this domain (HVM
//! parameters `CONSOLE_PFN`, `CONSOLE_EVTCHN`), read by dom0's
//! xenconsoled, which logs it (`--log=guest`) or serves `xl console`.
//!
//! Writing never waits: what does not fit in the ring (nobody reading
//! yet, or a stalled reader) is dropped, since the store must never stall
//! on its console.

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering, fence};

/// Layout: `in[1024]`, `out[2048]`, then the four indexes.
const OUT: usize = 1024;
const OUT_SIZE: u32 = 2048;
const OUT_CONS: usize = 3080;
const OUT_PROD: usize = 3084;

/// The page's address (0: no console ring yet).
static PAGE: AtomicUsize = AtomicUsize::new(0);
static PORT: AtomicU32 = AtomicU32::new(0);

/// Starts writing to the console ring at physical frame `pfn`
/// (identity-mapped), kicking `port`.
pub fn init(pfn: u64, port: u32) {
    PORT.store(port, Ordering::Relaxed);
    PAGE.store((pfn << super::PAGE_SHIFT) as usize, Ordering::Release);
}

fn index(page: usize, offset: usize) -> &'static AtomicU32 {
    // SAFETY: an index word of the console page, mapped for good.
    unsafe { AtomicU32::from_ptr((page + offset) as *mut u32) }
}

/// Appends `bytes` to the ring (as many as fit) and kicks xenconsoled.
pub fn write(bytes: &[u8]) {
    let page = PAGE.load(Ordering::Acquire);
    if page == 0 {
        return;
    }
    let cons = index(page, OUT_CONS).load(Ordering::Acquire);
    let mut prod = index(page, OUT_PROD).load(Ordering::Relaxed);
    if prod.wrapping_sub(cons) > OUT_SIZE {
        return; // indexes broken by the other end: write nothing
    }
    for &b in bytes {
        if prod.wrapping_sub(cons) == OUT_SIZE {
            break;
        }
        let at = page + OUT + (prod % OUT_SIZE) as usize;
        // SAFETY: inside the ring's `out` array.
        unsafe { (at as *mut u8).write_volatile(b) };
        prod = prod.wrapping_add(1);
    }
    fence(Ordering::Release);
    index(page, OUT_PROD).store(prod, Ordering::Release);
    super::events::send(PORT.load(Ordering::Relaxed));
}
