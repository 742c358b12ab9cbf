//! From the PVH entry to Rust: 32-bit protected mode, paging off, EBX =
//! physical address of `hvm_start_info` (Xen's PVH boot ABI, which QEMU's
//! `-kernel` loader follows for an ELF with the note below).
//!
//! Before any Rust code runs the entry must:
//! 1. zero `.bss` (it holds the page tables and the stack);
//! 2. identity-map the low 4 GiB with 2 MiB pages (RAM, and the 32-bit PCI
//!    hole where the shared-memory BAR lives);
//! 3. enable PAE, long mode, and SSE (CR4.OSFXSR, CR4.OSXMMEXCPT; CR0.MP
//!    set, CR0.EM and CR0.TS clear): the x86_64 code rustc emits uses SSE;
//! 4. load a 64-bit GDT, jump to 64-bit code, set the stack and call
//!    `stub_main(start_info_paddr)`.
//!
//! Interrupts stay disabled for the life of the image (the red zone cannot
//! be turned off on stable Rust, so handlers would need IST stacks).

use core::arch::global_asm;

/// Size of the boot stack (the only stack: there are no threads).
pub const STACK_SIZE: usize = 256 * 1024;

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 4                     /* descsz: a 32-bit physical address */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start32

    .section .text.boot, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi              /* hvm_start_info: kept for stub_main */

    /* 1. zero .bss */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    /* 2. PML4[0] -> PDPT; PDPT[0..4] -> four page directories;
          PD entries: 2048 x 2 MiB pages (present, writable, large) */
    mov $boot_pdpt, %eax
    or $0x3, %eax
    mov %eax, boot_pml4

    mov $boot_pd, %eax
    or $0x3, %eax
    mov $boot_pdpt, %edi
    mov $4, %ecx
1:  mov %eax, (%edi)
    add $0x1000, %eax
    add $8, %edi
    dec %ecx
    jnz 1b

    mov $boot_pd, %edi
    mov $0x83, %eax
    mov $2048, %ecx
2:  mov %eax, (%edi)
    add $0x200000, %eax
    add $8, %edi
    dec %ecx
    jnz 2b

    /* 3. CR4: PAE (5), OSFXSR (9), OSXMMEXCPT (10) */
    mov %cr4, %eax
    or $0x620, %eax
    mov %eax, %cr4

    mov $boot_pml4, %eax
    mov %eax, %cr3

    /* EFER.LME */
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr

    /* CR0: clear EM (2) and TS (3); set PE (0), MP (1), PG (31) */
    mov %cr0, %eax
    and $0xFFFFFFF3, %eax
    or $0x80000003, %eax
    mov %eax, %cr0

    /* 4. 64-bit GDT, far jump into long mode */
    lgdt boot_gdt_ptr
    ljmp $0x08, $3f

    .code64
3:  mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    lea boot_stack_top(%rip), %rsp
    xor %ebp, %ebp
    fninit
    ldmxcsr boot_mxcsr(%rip)
    mov %esi, %edi              /* stub_main(start_info_paddr) */
    call stub_main
4:  hlt
    jmp 4b

    .section .rodata.boot, "a"
    .balign 16
boot_gdt:
    .quad 0                     /* null */
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff    /* 0x10: data, DPL 0 */
boot_gdt_ptr:
    .word boot_gdt_ptr - boot_gdt - 1
    .long boot_gdt
    .balign 4
boot_mxcsr:
    .long 0x1f80                /* all SSE exceptions masked */

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096
boot_stack:
    .skip {stack}
boot_stack_top:
    .text
"#,
    stack = const STACK_SIZE,
    options(att_syntax)
);
