//! Calls into Xen through the hypercall page.
//!
//! Xen fills [`HYPERCALL_PAGE`] with one 32-byte stub per hypercall
//! (`vmmcall` for a PVH domain) once its address is written to the MSR
//! that CPUID names (see [`super::init`]). `xen-sys`'s own wrappers call
//! the stubs with `options(nostack)`, but a `call` pushes a return address
//! below the stack pointer, over the red zone that rustc keeps live data
//! in on this target (it cannot be turned off on stable): [`call`] steps
//! over the red zone first.

use core::arch::{asm, global_asm};

global_asm!(
    r#"
    .section .text.hypercall_page, "ax"
    .balign 4096
    .globl HYPERCALL_PAGE
HYPERCALL_PAGE:
    .fill 4096, 1, 0xcc
    .text
"#
);

unsafe extern "C" {
    static HYPERCALL_PAGE: [u8; 4096];
}

/// The page's (identity-mapped, so also physical) address.
pub fn page_address() -> u64 {
    (&raw const HYPERCALL_PAGE) as u64
}

/// Hypercall `op` with up to three arguments; Xen's return value
/// (negative: `-errno`).
///
/// # Safety
/// The arguments must be what Xen expects for `op`: pointers to valid,
/// correctly laid out structures that Xen may read and write.
pub unsafe fn call(op: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    let entry = page_address() + 32 * u64::from(op);
    let ret: i64;
    // SAFETY: `entry` is the hypercall stub Xen wrote for `op`; the stub
    // preserves every register but rax and the argument registers, which
    // are declared clobbered; the stack is stepped past the red zone.
    unsafe {
        asm!(
            "sub rsp, 128",
            "call {entry}",
            "add rsp, 128",
            entry = in(reg) entry,
            lateout("rax") ret,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            out("r10") _,
            out("r8") _,
            out("rcx") _,
            out("r11") _,
        );
    }
    ret
}
