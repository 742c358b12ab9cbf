//! The few privileged x86 instructions the image needs: port I/O and halt.

use core::arch::asm;

/// # Safety
/// Port I/O has device side effects; the caller knows the port.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: by the caller's contract.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

/// # Safety
/// As [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: by the caller's contract.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) }
}

/// # Safety
/// As [`outb`].
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: by the caller's contract.
    unsafe { asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags)) };
    value
}

/// The time-stamp counter (for rough timings only).
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc reads a counter; CR4.TSD is clear.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Stops the CPU for good (interrupts are off, so `hlt` never returns
/// except on NMI; loop anyway).
pub fn halt() -> ! {
    loop {
        // SAFETY: hlt with interrupts disabled only waits.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) }
    }
}

/// A hint for busy-wait loops.
pub fn pause() {
    core::hint::spin_loop();
}
