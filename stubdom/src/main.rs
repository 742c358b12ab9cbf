//! rxenstored as a stub domain: a freestanding x86_64 kernel image that
//! runs the engine and the protocol core (`rxenstored_core`, `no_std`) and
//! serves xenstore rings. No libc, no POSIX, no Linux.
//!
//! # Layout
//!
//! - `boot`: the PVH entry note and the 32-bit entry (page tables, long
//!   mode, SSE) that calls [`stub_main`].
//! - `rt`: memory functions, panic handler, exit; `heap`: the allocator;
//!   `arch`: port I/O; `console`: the debug port.
//! - `start_info`: the PVH start info (Xen's `hvm_start_info`).
//! - `selftest`: the core driven as a guest with raw wire bytes, at every
//!   boot.
//! - `serve`: one turn over every ring (requests in, replies and events
//!   out, the other ends kicked), whatever the platform.
//! - `pci`, `frontend`: the QEMU test platform — `rxenstored_core::ring` rings in
//!   an `ivshmem` shared region, served by polling.
//! - `xen` (feature `xen`): the Xen platform, when the image runs as Xen's
//!   xenstore domain (hypercall page, console ring, dom0's and guests'
//!   rings through grant tables, event channels, domain state).
//!
//! Invariants: interrupts are never enabled; there is one CPU and one
//! stack; everything above the platform comes from `rxenstored_core`.

#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod boot;
mod console;
mod frontend;
mod heap;
mod pci;
mod rt;
mod selftest;
mod serve;
mod start_info;
#[cfg(feature = "xen")]
mod xen;
/// Without the `xen` feature the image never finds Xen.
#[cfg(not(feature = "xen"))]
mod xen {
    /// Never built: there is no Xen platform in this build.
    #[derive(Debug)]
    pub enum Boot {}

    pub fn boot() -> Option<Boot> {
        None
    }

    impl Boot {
        pub fn version(&self) -> (u32, u32) {
            match *self {}
        }

        pub fn heap_range(&self, _from: u64) -> Option<(u64, u64)> {
            match *self {}
        }

        pub fn run(self, _cmdline: &str, _t0: u64) -> ! {
            match self {}
        }
    }
}

use core::ptr::NonNull;

use rxenstored_core::Config;

/// QEMU's inter-VM shared memory device (`ivshmem-plain`).
const IVSHMEM_VENDOR: u16 = 0x1af4;
const IVSHMEM_DEVICE: u16 = 0x1110;
/// Where BAR2 goes if the firmware left it unassigned (qboot) or above the
/// 4 GiB the boot page tables map: inside the `pc` machine's 32-bit PCI
/// hole, below the firmware's usual 0xfd000000+ placements.
const BAR_FALLBACK: u64 = 0xE000_0000;
const IDENTITY_MAPPED: u64 = 1 << 32;

/// Where the heap ends when the boot platform gives no memory map.
const HEAP_FALLBACK_END: u64 = 32 << 20;

/// Called by `boot` in long mode with the physical address of the PVH
/// start info.
#[unsafe(no_mangle)]
pub extern "C" fn stub_main(start_info: u32) -> ! {
    let t0 = arch::rdtsc();
    let info = start_info::read(start_info);
    let xen = xen::boot();
    println!("rxenstored stubdom {} (no_std engine + protocol core, PVH image)", env!("CARGO_PKG_VERSION"));

    // The heap: the RAM after the image and what the loader put beside it.
    let heap_start = heap::start().max(info.as_ref().map_or(0, |i| i.end_of_boot_data()));
    let (start, end) = xen
        .as_ref()
        .and_then(|x| x.heap_range(heap_start))
        .or_else(|| info.as_ref().and_then(|i| i.ram_range_from(heap_start)))
        .unwrap_or((heap_start, HEAP_FALLBACK_END));
    // SAFETY: RAM after the image, below 4 GiB (identity-mapped), used by
    // nothing else.
    unsafe { heap::init(start, end) };

    let cmdline = info.as_ref().map_or("", |i| i.cmdline());
    match (&info, &xen) {
        (_, Some(x)) => println!(
            "stubdom: Xen {}.{}, PVH, command line {cmdline:?}, heap {start:#x}..{end:#x} ({} KiB)",
            x.version().0,
            x.version().1,
            (end - start) / 1024
        ),
        (Some(i), None) => println!(
            "stubdom: PVH start info v{} at {start_info:#x}, {} memory map entries, heap {} KiB",
            i.version,
            i.memmap_entries,
            (end - start) / 1024
        ),
        (None, None) => println!("stubdom: no PVH start info at {start_info:#x}"),
    }

    if !selftest::run() {
        println!("stubdom: self-test FAILED");
        rt::exit(1);
    }

    if let Some(x) = xen {
        x.run(cmdline, t0);
    }

    let Some(bdf) = pci::find(IVSHMEM_VENDOR, IVSHMEM_DEVICE) else {
        println!("stubdom: no ivshmem device: nothing to serve");
        println!("stubdom: ready (self-test only)");
        rt::exit(0);
    };
    let Some(bar) = pci::map_bar64(bdf, 2, BAR_FALLBACK, IDENTITY_MAPPED) else {
        println!("stubdom: ivshmem BAR2 is not a 64-bit memory BAR");
        rt::exit(1);
    };
    println!(
        "stubdom: ivshmem at {:02x}:{:02x}.{} BAR2 {:#x} ({} KiB{})",
        bdf.bus,
        bdf.dev,
        bdf.func,
        bar.base,
        bar.size / 1024,
        if bar.assigned { ", assigned by stubdom" } else { "" }
    );
    if bar.size < 2 * rxenstored_core::ring::PAGE_SIZE as u64 || bar.base + bar.size > IDENTITY_MAPPED {
        println!("stubdom: shared region unusable");
        rt::exit(1);
    }
    // SAFETY: the BAR is identity-mapped (below 4 GiB), decoding is on,
    // and nothing else in the image touches it.
    let shm =
        unsafe { frontend::Shm::new(NonNull::new(bar.base as *mut u8).expect("non-zero BAR"), bar.size as usize) };

    let mut fe = frontend::Frontend::new(Config::default(), shm);
    fe.announce_ready();
    let (used, free) = heap::usage();
    println!(
        "stubdom: ready: {} control rings, guest pages {}..{}, heap {} KiB used / {} KiB free, {} Mcycles since entry to Rust",
        frontend::CONTROL_RINGS,
        frontend::FIRST_GUEST_PAGE,
        shm.pages(),
        used / 1024,
        free / 1024,
        (arch::rdtsc() - t0) / 1_000_000
    );
    let stats = fe.run();
    let (used, _) = heap::usage();
    println!(
        "stubdom: shutdown requested: {} polling rounds, {} requests, {} bytes out, {} nodes, heap {} KiB used",
        stats.turns,
        stats.requests,
        stats.bytes_out,
        fe.core().store().snapshot().len(),
        used / 1024
    );
    rt::exit(0)
}
