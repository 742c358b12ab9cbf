//! LOCAL STAND-IN for the ring transport (`server::ring`, being written
//! under the ring issue and not yet in `main` when this was written).
//!
//! SEAM: when `server::ring` lands, replace this module by its `Ring` over
//! an `RingPage` impl for [`ShmPage`] and let `frontend` use it; nothing
//! else in the image knows the page layout. Limited to what the stub's
//! daemon end needs: reset, read request bytes, write reply bytes, report
//! an error — with the index checks and fences of PROTOCOL.md §10.2–10.3.
//! Message reassembly is the core's own decoder (`Core::receive` takes any
//! byte pieces).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, AtomicU32, Ordering, fence};

/// One ring page is 4 KiB (§10.1).
pub const PAGE_SIZE: usize = 4096;
/// `XENSTORE_RING_SIZE`.
pub const RING_SIZE: u32 = 1024;

const REQ: usize = 0;
const RSP: usize = 1024;
const REQ_CONS: usize = 2048;
const REQ_PROD: usize = 2052;
const RSP_CONS: usize = 2056;
const RSP_PROD: usize = 2060;
const SERVER_FEATURES: usize = 2064;
const CONNECTION: usize = 2068;
const ERROR: usize = 2072;

/// `error` field values (§10.1).
pub mod error_code {
    pub const RINGIDX: u32 = 2;
    pub const PROTO: u32 = 3;
}

/// The guest broke the index rule `prod − cons ≤ 1024` (§10.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadIndex;

/// A 4 KiB ring page in memory the other side writes concurrently.
#[derive(Debug, Clone, Copy)]
pub struct ShmPage(NonNull<u8>);

impl ShmPage {
    /// # Safety
    /// `base` is 4 KiB-aligned, mapped and valid for the life of the value,
    /// and only accessed through atomics by anyone else.
    pub unsafe fn new(base: NonNull<u8>) -> ShmPage {
        ShmPage(base)
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: offsets are the aligned constants above, inside the page.
        unsafe { AtomicU32::from_ptr(self.0.as_ptr().add(offset).cast()) }
    }

    fn byte(&self, offset: usize) -> &AtomicU8 {
        // SAFETY: offset < PAGE_SIZE by the callers' masking.
        unsafe { AtomicU8::from_ptr(self.0.as_ptr().add(offset)) }
    }

    /// INTRODUCE's reset (§8.1 steps 3–4): the four indexes to 0, the
    /// feature bits advertised, `error` and `connection` cleared.
    pub fn reset(&self, features: u32) {
        for off in [REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD] {
            self.word(off).store(0, Ordering::Relaxed);
        }
        self.word(ERROR).store(0, Ordering::Relaxed);
        self.word(SERVER_FEATURES).fetch_or(features, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.word(CONNECTION).store(0, Ordering::Relaxed);
    }

    pub fn set_error(&self, code: u32) {
        self.word(ERROR).store(code, Ordering::Release);
    }

    /// Whether request bytes are waiting (cheap poll).
    pub fn has_input(&self) -> bool {
        self.word(REQ_PROD).load(Ordering::Relaxed) != self.word(REQ_CONS).load(Ordering::Relaxed)
    }

    /// Copies request bytes into `buf` and releases them (§10.3, reading).
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, BadIndex> {
        let cons = self.word(REQ_CONS).load(Ordering::Relaxed);
        let prod = self.word(REQ_PROD).load(Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let avail = prod.wrapping_sub(cons);
        if avail > RING_SIZE {
            return Err(BadIndex);
        }
        let n = (avail as usize).min(buf.len());
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let at = (cons.wrapping_add(i as u32) & (RING_SIZE - 1)) as usize;
            *b = self.byte(REQ + at).load(Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        self.word(REQ_CONS).store(cons.wrapping_add(n as u32), Ordering::Relaxed);
        Ok(n)
    }

    /// Copies as much of `bytes` as fits into the reply ring and publishes
    /// it (§10.3, writing).
    pub fn write(&self, bytes: &[u8]) -> Result<usize, BadIndex> {
        let cons = self.word(RSP_CONS).load(Ordering::Relaxed);
        let prod = self.word(RSP_PROD).load(Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let used = prod.wrapping_sub(cons);
        if used > RING_SIZE {
            return Err(BadIndex);
        }
        let n = ((RING_SIZE - used) as usize).min(bytes.len());
        for (i, &b) in bytes[..n].iter().enumerate() {
            let at = (prod.wrapping_add(i as u32) & (RING_SIZE - 1)) as usize;
            self.byte(RSP + at).store(b, Ordering::Relaxed);
        }
        fence(Ordering::Release);
        self.word(RSP_PROD).store(prod.wrapping_add(n as u32), Ordering::Relaxed);
        Ok(n)
    }
}
