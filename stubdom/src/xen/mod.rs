//! The Xen platform (feature `xen`): what the image needs of the
//! hypervisor when `init-xenstore-domain` starts it as Xen's xenstore
//! domain (a PVH domain: the HVM container, HAP, no emulated devices).
//!
//! - this module: detecting Xen, the hypercall page, HVM parameters, the
//!   memory map, shutdown;
//! - [`hypercall`]: the calls themselves;
//! - [`events`]: event channels (the shared info page's pending bits,
//!   binding, `SCHEDOP_poll`);
//! - [`console`]: the console ring xenconsoled reads;
//! - [`platform`]: the core's `Platform` (guests' rings through grant
//!   reference 1, domain state through `getdomaininfo`) and the serving
//!   loop.
//!
//! Interface facts (numbers, structure layouts) come from Xen's public
//! headers and PROTOCOL.md §8 and §10; `xen-sys` supplies the constants
//! and structures it has.

pub mod console;
pub mod events;
pub mod hypercall;
pub mod platform;

use core::sync::atomic::{AtomicBool, Ordering};

use xen_sys::{__HYPERVISOR_hvm_op, __HYPERVISOR_memory_op, __HYPERVISOR_sched_op, SCHEDOP_shutdown};

static ON_XEN: AtomicBool = AtomicBool::new(false);

/// `DOMID_SELF`.
pub const DOMID_SELF: u16 = 0x7FF0;
/// Page size and shift.
pub const PAGE_SHIFT: u32 = 12;

/// `HVMOP_get_param` and the parameters it reads (public/hvm/params.h).
const HVMOP_GET_PARAM: u64 = 1;
pub const HVM_PARAM_CONSOLE_PFN: u32 = 17;
pub const HVM_PARAM_CONSOLE_EVTCHN: u32 = 18;

/// `XENMEM_*` (public/memory.h).
const XENMEM_CURRENT_RESERVATION: u64 = 3;
const XENMEM_MEMORY_MAP: u64 = 9;
/// E820 type of RAM.
const E820_RAM: u32 = 1;

#[repr(C)]
struct HvmParam {
    domid: u16,
    _pad: u16,
    index: u32,
    value: u64,
}

fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid(leaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Finds Xen's CPUID leaves (base 0x40000000, stepping by 0x100).
fn xen_cpuid_base() -> Option<u32> {
    (0x4000_0000..0x4001_0000).step_by(0x100).find(|&base| {
        let (max, b, c, d) = cpuid(base);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&b.to_le_bytes());
        sig[4..8].copy_from_slice(&c.to_le_bytes());
        sig[8..].copy_from_slice(&d.to_le_bytes());
        &sig == b"XenVMMXenVMM" && max >= base + 2
    })
}

/// Detects Xen and has it fill the hypercall page. Returns Xen's version
/// (major, minor), or `None` when not running on Xen (QEMU alone).
fn init() -> Option<(u32, u32)> {
    let base = xen_cpuid_base()?;
    let (version, _, _, _) = cpuid(base + 1);
    let (_, msr, _, _) = cpuid(base + 2);
    let page = hypercall::page_address();
    // SAFETY: the MSR Xen named (CPUID leaf base+2) for the hypercall page;
    // the page is ours, identity-mapped, and Xen overwrites it with the
    // call stubs.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") page as u32, in("edx") (page >> 32) as u32, options(nostack));
    }
    ON_XEN.store(true, Ordering::Release);
    Some((version >> 16, version & 0xffff))
}

/// What the boot learnt of Xen.
#[derive(Debug)]
pub struct Boot {
    version: (u32, u32),
    memory: Option<Memory>,
}

/// On Xen: the hypercall page, the console ring, the memory map. `None`
/// when the image runs without Xen.
pub fn boot() -> Option<Boot> {
    let version = init()?;
    start_console();
    Some(Boot { version, memory: Memory::query() })
}

impl Boot {
    /// Xen's version, (major, minor).
    pub fn version(&self) -> (u32, u32) {
        self.version
    }

    /// The populated RAM from `from` on, for the heap.
    pub fn heap_range(&self, from: u64) -> Option<(u64, u64)> {
        self.memory?.populated_range_from(from)
    }

    /// Serves as Xen's xenstore domain; never returns.
    pub fn run(self, cmdline: &str, t0: u64) -> ! {
        run(cmdline, self.memory, t0)
    }
}

pub fn on_xen() -> bool {
    ON_XEN.load(Ordering::Acquire)
}

/// Reads an HVM parameter of this domain.
pub fn hvm_param(index: u32) -> Option<u64> {
    let mut p = HvmParam { domid: DOMID_SELF, _pad: 0, index, value: 0 };
    // SAFETY: a valid argument structure for HVMOP_get_param.
    let rc = unsafe { hypercall::call(__HYPERVISOR_hvm_op, HVMOP_GET_PARAM, &raw mut p as u64, 0) };
    (rc == 0).then_some(p.value)
}

/// One entry of the domain's E820 map (`struct e820entry`, packed).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct E820Entry {
    addr: u64,
    size: u64,
    kind: u32,
}

#[repr(C)]
struct MemoryMap {
    nr_entries: u32,
    buffer: u64,
}

/// The RAM this domain may use: `[start, end)` physical ranges from the
/// E820 map the domain builder set, and how many pages Xen says the
/// domain has (RAM beyond that is not populated: `--maxmem` above
/// `--memory`).
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub ram: [(u64, u64); 8],
    pub ram_ranges: usize,
    pub reserved_pages: u64,
}

impl Memory {
    /// Asks Xen for the map and the reservation.
    pub fn query() -> Option<Memory> {
        let mut entries = [E820Entry::default(); 16];
        let mut map = MemoryMap { nr_entries: entries.len() as u32, buffer: entries.as_mut_ptr() as u64 };
        // SAFETY: XENMEM_memory_map writes at most `nr_entries` entries.
        let rc = unsafe { hypercall::call(__HYPERVISOR_memory_op, XENMEM_MEMORY_MAP, &raw mut map as u64, 0) };
        if rc != 0 {
            return None;
        }
        let mut memory = Memory { ram: [(0, 0); 8], ram_ranges: 0, reserved_pages: 0 };
        for e in entries.iter().take(map.nr_entries as usize) {
            let (addr, size, kind) = (e.addr, e.size, e.kind);
            if kind == E820_RAM && size > 0 && memory.ram_ranges < memory.ram.len() {
                memory.ram[memory.ram_ranges] = (addr, addr + size);
                memory.ram_ranges += 1;
            }
        }
        let domid = DOMID_SELF;
        // SAFETY: XENMEM_current_reservation reads a domid.
        let pages =
            unsafe { hypercall::call(__HYPERVISOR_memory_op, XENMEM_CURRENT_RESERVATION, &raw const domid as u64, 0) };
        memory.reserved_pages = u64::try_from(pages).unwrap_or(0);
        Some(memory)
    }

    /// The end of RAM as the map describes it (populated or not).
    pub fn ram_end(&self) -> u64 {
        self.ram[..self.ram_ranges].iter().map(|r| r.1).max().unwrap_or(0)
    }

    /// The populated RAM range that holds `addr`, cut at what the
    /// reservation can cover (the domain's special pages, outside RAM,
    /// count in it too: the estimate errs low).
    pub fn populated_range_from(&self, addr: u64) -> Option<(u64, u64)> {
        let (_, end) = *self.ram[..self.ram_ranges].iter().find(|r| r.0 <= addr && addr < r.1)?;
        let populated = self.reserved_pages.saturating_sub(SPECIAL_PAGES) << PAGE_SHIFT;
        let end = end.min(populated);
        (end > addr).then_some((addr, end))
    }
}

/// Pages Xen's domain builder places outside RAM for an HVM container
/// (`X86_HVM_NR_SPECIAL_PAGES`): console, xenstore, and the like.
const SPECIAL_PAGES: u64 = 8;

/// Powers the domain off (0) or reports a crash (any other code).
pub fn shutdown(code: u32) {
    if on_xen() {
        let reason: u32 = if code == 0 { 0 } else { 3 };
        // SAFETY: SCHEDOP_shutdown takes a pointer to `struct
        // sched_shutdown { reason }`.
        unsafe { hypercall::call(__HYPERVISOR_sched_op, u64::from(SCHEDOP_shutdown), &raw const reason as u64, 0) };
    }
}

/// Sends the console to the ring the domain builder set up (HVM
/// parameters), when there is one.
fn start_console() {
    if let (Some(pfn), Some(port)) = (hvm_param(HVM_PARAM_CONSOLE_PFN), hvm_param(HVM_PARAM_CONSOLE_EVTCHN))
        && pfn != 0
    {
        console::init(pfn, port as u32);
    }
}

/// The options `init-xenstore-domain` and the host pass on the command
/// line: `--event N` (dom0's port for its ring, required); others are
/// reported and ignored.
fn parse_cmdline(cmdline: &str) -> Option<u32> {
    let mut words = cmdline.split_ascii_whitespace();
    let mut event = None;
    while let Some(w) = words.next() {
        match w {
            "--event" => event = words.next().and_then(|n| n.parse().ok()),
            other => crate::println!("stubdom: ignoring command-line word {other:?}"),
        }
    }
    event
}

fn run(cmdline: &str, memory: Option<Memory>, t0: u64) -> ! {
    let Some(event) = parse_cmdline(cmdline) else {
        crate::println!("stubdom: no `--event N` on the command line: not started by init-xenstore-domain?");
        crate::rt::exit(1)
    };
    let ram_end = memory.map_or(crate::heap::start(), |m| m.ram_end());
    let mut frames = platform::Frames::above(ram_end);
    let shared = match frames.take().map(events::SharedInfo::map) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            crate::println!("stubdom: cannot map the shared info page ({})", e.0);
            crate::rt::exit(1)
        }
        None => {
            crate::println!("stubdom: no free frame for the shared info page");
            crate::rt::exit(1)
        }
    };
    crate::println!("stubdom: {} Mcycles from entry to serving", (crate::arch::rdtsc() - t0) / 1_000_000);
    platform::serve(rxenstored_core::Config::default(), event, shared, frames)
}
