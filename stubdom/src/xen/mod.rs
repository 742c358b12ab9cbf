//! The Xen PVH platform (feature `xen`). Compiled in CI, cannot run here:
//! reviewed against PROTOCOL.md §8 and §10 and Xen's public headers
//! (facts only). Hypercalls go through `xen-sys` (`hypercall_N`, its
//! constants and event-channel structures); what it lacks — the hypercall
//! page set-up, HVM parameters, grant-table mapping — is here.
//!
//! What runs under Xen (as `init-xenstore-domain` starts a stub):
//! - [`init`]: detect Xen (CPUID 0x40000000 "XenVMMXenVMM"), register
//!   [`HYPERCALL_PAGE`] through the MSR that leaf base+2 names, read the
//!   stub's own xenstore ring and event channel (HVM params STORE_PFN,
//!   STORE_EVTCHN — §10.6: "these come from the stub's own start info").
//! - [`console_write`]: the hypervisor console (`console_io`), in
//!   addition to port 0xE9.
//! - [`map_guest_ring`]: grant reference 1 of a guest (§8.1, §10.6) mapped
//!   at a frame of our own; [`bind_interdomain`], [`notify`]: the event
//!   channel of §10.4.
//! - [`shutdown`], SCHEDOP_shutdown(poweroff).
//!
//! Not done yet (see README.md): a `Platform` over these calls for the
//! core (the QEMU one, `frontend::ShmPlatform`, is the model), the event
//! channel pending bitmap in the shared info page, `VIRQ_DOM_EXC` and
//! `get_domain_state` for domain death (§8.3), the stub's own ring as a
//! connection.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use xen_sys::{
    __HYPERVISOR_event_channel_op, __HYPERVISOR_grant_table_op, __HYPERVISOR_hvm_op, __HYPERVISOR_sched_op,
    EVTCHNOP_bind_interdomain, EVTCHNOP_send, SCHEDOP_shutdown, evtchn_bind_interdomain, evtchn_send, hypercall_2,
    hypercall_3,
};

// The page Xen fills with one 32-byte call stub per hypercall; `xen-sys`
// calls `HYPERCALL_PAGE + 32 * op`.
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

static ON_XEN: AtomicBool = AtomicBool::new(false);
static STORE_PFN: AtomicU64 = AtomicU64::new(0);
static STORE_EVTCHN: AtomicU64 = AtomicU64::new(0);

/// `HVMOP_get_param` and the parameters (public/hvm/params.h).
const HVMOP_GET_PARAM: u64 = 1;
const HVM_PARAM_STORE_PFN: u32 = 1;
const HVM_PARAM_STORE_EVTCHN: u32 = 2;
/// `DOMID_SELF`.
const DOMID_SELF: u16 = 0x7FF0;

#[repr(C)]
struct HvmParam {
    domid: u16,
    _pad: u16,
    index: u32,
    value: u64,
}

/// `GNTTABOP_map_grant_ref` (public/grant_table.h).
const GNTTABOP_MAP_GRANT_REF: u64 = 0;
const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// The grant reference a guest's xenstore page has (§10.6).
pub const GNTTAB_RESERVED_XENSTORE: u32 = 1;

#[repr(C)]
struct GnttabMapGrantRef {
    host_addr: u64,
    flags: u32,
    gref: u32,
    dom: u16,
    status: i16,
    handle: u32,
    dev_bus_addr: u64,
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

/// Detects Xen and prepares the hypercall page; records the stub's own
/// xenstore ring. Without Xen (QEMU) it does nothing.
pub fn init(_start_info: Option<&crate::start_info::StartInfo>) {
    let Some(base) = xen_cpuid_base() else {
        crate::println!("stubdom: not on Xen");
        return;
    };
    let (_, msr, _, _) = cpuid(base + 2);
    // SAFETY: the page is ours, identity-mapped; Xen overwrites it with the
    // call stubs when its physical address is written to the MSR.
    let page = (&raw const HYPERCALL_PAGE) as u64;
    // SAFETY: the MSR Xen named for the hypercall page (§ CPUID leaf base+2).
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") page as u32, in("edx") (page >> 32) as u32, options(nostack));
    }
    ON_XEN.store(true, Ordering::Release);
    STORE_PFN.store(hvm_param(HVM_PARAM_STORE_PFN).unwrap_or(0), Ordering::Relaxed);
    STORE_EVTCHN.store(hvm_param(HVM_PARAM_STORE_EVTCHN).unwrap_or(0), Ordering::Relaxed);
    crate::println!(
        "stubdom: Xen (CPUID base {base:#x}), own store ring pfn {:#x}, event channel {}",
        STORE_PFN.load(Ordering::Relaxed),
        STORE_EVTCHN.load(Ordering::Relaxed)
    );
}

fn on_xen() -> bool {
    ON_XEN.load(Ordering::Acquire)
}

fn hvm_param(index: u32) -> Option<u64> {
    let mut p = HvmParam { domid: DOMID_SELF, _pad: 0, index, value: 0 };
    // SAFETY: a valid argument structure for HVMOP_get_param.
    let rc = unsafe { hypercall_2(__HYPERVISOR_hvm_op, HVMOP_GET_PARAM, &raw mut p as u64) };
    (rc == 0).then_some(p.value)
}

/// Writes to the hypervisor console.
pub fn console_write(bytes: &[u8]) {
    if on_xen() {
        // SAFETY: CONSOLEIO_write reads `bytes` only.
        unsafe { xen_sys::hypercall::console_io(xen_sys::hypercall::ConsoleIO::Write, bytes) };
    }
}

/// Powers the domain off (`SCHEDOP_shutdown` takes a pointer to
/// `struct sched_shutdown { reason }` on x86, which `xen-sys`'s
/// `sched_op` does not pass, hence the direct call). 0 = poweroff, other
/// codes = crash.
pub fn shutdown(code: u32) {
    if on_xen() {
        let reason: u32 = if code == 0 { 0 } else { 3 };
        // SAFETY: a valid sched_shutdown argument.
        unsafe { hypercall_2(__HYPERVISOR_sched_op, u64::from(SCHEDOP_shutdown), &raw const reason as u64) };
    }
}

/// Maps grant reference 1 of `domid` (its xenstore page) at the physical
/// frame `frame` of this domain (PVH: auto-translated, `host_addr` is a
/// guest-physical address). Returns the grant handle for unmapping.
pub fn map_guest_ring(domid: u16, frame: u64) -> Result<u32, i16> {
    let mut op = GnttabMapGrantRef {
        host_addr: frame << 12,
        flags: GNTMAP_HOST_MAP,
        gref: GNTTAB_RESERVED_XENSTORE,
        dom: domid,
        status: 0,
        handle: 0,
        dev_bus_addr: 0,
    };
    // SAFETY: one valid map_grant_ref argument.
    let rc = unsafe { hypercall_3(__HYPERVISOR_grant_table_op, GNTTABOP_MAP_GRANT_REF, &raw mut op as u64, 1) };
    match (rc, op.status) {
        (0, 0) => Ok(op.handle),
        (0, s) => Err(s),
        _ => Err(-1),
    }
}

/// Binds an inter-domain event channel to (domid, port); the local port.
pub fn bind_interdomain(domid: u16, remote_port: u32) -> Option<u32> {
    let mut op = evtchn_bind_interdomain { remote_dom: domid, remote_port, local_port: 0 };
    // SAFETY: a valid argument structure.
    let rc =
        unsafe { hypercall_2(__HYPERVISOR_event_channel_op, u64::from(EVTCHNOP_bind_interdomain), &raw mut op as u64) };
    (rc == 0).then_some(op.local_port)
}

/// Kicks a local event-channel port (§10.4).
pub fn notify(port: u32) {
    let mut op = evtchn_send { port };
    // SAFETY: a valid argument structure.
    unsafe { hypercall_2(__HYPERVISOR_event_channel_op, u64::from(EVTCHNOP_send), &raw mut op as u64) };
}

/// What the (not yet written) Xen platform will call.
type XenCalls = (fn(u16, u64) -> Result<u32, i16>, fn(u16, u32) -> Option<u32>, fn(u32));

#[allow(dead_code)]
fn keep_linked() -> XenCalls {
    (map_guest_ring, bind_interdomain, notify)
}
