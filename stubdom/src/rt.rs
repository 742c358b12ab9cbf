//! What a freestanding Rust program must provide itself: the C memory
//! functions (the prebuilt `compiler_builtins` of the Linux target does not
//! export them), the unwinding symbols the prebuilt `alloc` refers to
//! (never called: panic = "abort"), the panic handler, and the exit through
//! QEMU's isa-debug-exit device.

use core::arch::asm;
use core::panic::PanicInfo;

/// QEMU `-device isa-debug-exit,iobase=0xf4,iosize=0x04`: writing `v`
/// makes QEMU exit with status `(v << 1) | 1`.
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Leaves QEMU with exit status `(code << 1) | 1` (so 0 → 1, 1 → 3); on a
/// machine without the device (Xen), halts.
pub fn exit(code: u32) -> ! {
    // SAFETY: the debug-exit port; absent, the write is ignored.
    unsafe { crate::arch::outl(DEBUG_EXIT_PORT, code) };
    #[cfg(feature = "xen")]
    crate::xen::shutdown(code);
    crate::arch::halt()
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    crate::println!("stubdom: PANIC: {info}");
    exit(2)
}

// The memory functions. `rep movsb`/`rep stosb` so that the compiler
// cannot turn them into calls to themselves.

/// # Safety
/// C `memcpy`: `n` bytes, non-overlapping, valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: by the C contract.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _, options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// C `memmove`: `n` bytes, may overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // dest before src, or no overlap: forwards.
        // SAFETY: by the C contract.
        unsafe { memcpy(dest, src, n) };
    } else if n > 0 {
        // dest inside [src, src+n): backwards, with the direction flag.
        // SAFETY: by the C contract; DF is restored before returning.
        unsafe {
            asm!(
                "std", "rep movsb", "cld",
                inout("rcx") n => _,
                inout("rdi") dest.add(n - 1) => _,
                inout("rsi") src.add(n - 1) => _,
                options(nostack)
            );
        }
    }
    dest
}

/// # Safety
/// C `memset`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: by the C contract.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8, options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// C `memcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: by the C contract.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// C `bcmp` (zero iff equal).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}

/// Referenced by the prebuilt `alloc` (release); never reached with
/// panic = "abort".
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume() -> ! {
    crate::println!("stubdom: _Unwind_Resume called");
    exit(2)
}

/// Referenced by the prebuilt `alloc` (debug builds); never called.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
