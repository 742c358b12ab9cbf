//! Event channels: binding, closing, kicking, and waiting.
//!
//! The image never takes interrupts: upcalls stay masked and the serving
//! loop waits in `SCHEDOP_poll` on the ports it has bound. A port's
//! pending bit lives in the shared info page (2-level ABI), which this
//! module maps into the physical address space; the loop clears the bits
//! before it looks at the rings, so an event that arrives while it works
//! leaves its bit set and the next poll returns at once.

use core::mem::offset_of;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use xen_sys::{
    __HYPERVISOR_event_channel_op, __HYPERVISOR_memory_op, __HYPERVISOR_sched_op, EVTCHNOP_bind_interdomain,
    EVTCHNOP_bind_virq, EVTCHNOP_close, EVTCHNOP_send, SCHEDOP_poll, evtchn_bind_interdomain, evtchn_bind_virq,
    evtchn_close, evtchn_send, sched_poll, shared_info, vcpu_info,
};

use super::hypercall;

/// `XENMEM_add_to_physmap` and the shared info space (public/memory.h).
const XENMEM_ADD_TO_PHYSMAP: u64 = 7;
const XENMAPSPACE_SHARED_INFO: u32 = 0;
/// Most ports one `SCHEDOP_poll` may wait on (Xen refuses more).
pub const POLL_MAX_PORTS: usize = 128;

#[repr(C)]
struct AddToPhysmap {
    domid: u16,
    size: u16,
    space: u32,
    idx: u64,
    gpfn: u64,
}

/// An event-channel error: Xen's `-errno`.
#[derive(Debug, Clone, Copy)]
pub struct Errno(pub i64);

fn check(rc: i64) -> Result<(), Errno> {
    if rc == 0 { Ok(()) } else { Err(Errno(rc)) }
}

/// The shared info page, mapped at a frame of ours.
#[derive(Debug)]
pub struct SharedInfo {
    base: *mut u8,
}

impl SharedInfo {
    /// Asks Xen to place the shared info page at physical frame `gfn`
    /// (identity-mapped, not RAM: the frame only ever holds this page),
    /// and masks upcalls on vCPU 0.
    pub fn map(gfn: u64) -> Result<SharedInfo, Errno> {
        let mut op =
            AddToPhysmap { domid: super::DOMID_SELF, size: 0, space: XENMAPSPACE_SHARED_INFO, idx: 0, gpfn: gfn };
        // SAFETY: a valid xen_add_to_physmap for the shared info space.
        check(unsafe { hypercall::call(__HYPERVISOR_memory_op, XENMEM_ADD_TO_PHYSMAP, &raw mut op as u64, 0) })?;
        let info = SharedInfo { base: (gfn << super::PAGE_SHIFT) as *mut u8 };
        info.byte(offset_of!(shared_info, vcpu_info) + offset_of!(vcpu_info, evtchn_upcall_mask))
            .store(1, Ordering::SeqCst);
        Ok(info)
    }

    fn byte(&self, offset: usize) -> &AtomicU8 {
        // SAFETY: an offset inside the mapped page, which stays mapped for
        // the life of the image.
        unsafe { AtomicU8::from_ptr(self.base.add(offset)) }
    }

    fn pending_word(&self, port: u32) -> &AtomicU64 {
        let offset = offset_of!(shared_info, evtchn_pending) + (port as usize / 64) * 8;
        // SAFETY: ports below 4096 (the 2-level limit) index the 64-word
        // bitmap inside the page; callers only pass bound ports.
        unsafe { AtomicU64::from_ptr(self.base.add(offset).cast()) }
    }

    /// Clears `port`'s pending bit; whether it was set.
    pub fn take_pending(&self, port: u32) -> bool {
        if port >= 4096 {
            return false;
        }
        let bit = 1u64 << (port % 64);
        self.pending_word(port).fetch_and(!bit, Ordering::SeqCst) & bit != 0
    }
}

/// Binds a local port to (`domid`, `remote_port`).
pub fn bind_interdomain(domid: u16, remote_port: u32) -> Result<u32, Errno> {
    let mut op = evtchn_bind_interdomain { remote_dom: domid, remote_port, local_port: 0 };
    // SAFETY: a valid argument structure.
    check(unsafe {
        hypercall::call(__HYPERVISOR_event_channel_op, u64::from(EVTCHNOP_bind_interdomain), &raw mut op as u64, 0)
    })?;
    Ok(op.local_port)
}

/// Binds a virtual IRQ (`VIRQ_DOM_EXC`) on vCPU 0.
pub fn bind_virq(virq: u32) -> Result<u32, Errno> {
    let mut op = evtchn_bind_virq { virq, vcpu: 0, port: 0 };
    // SAFETY: a valid argument structure.
    check(unsafe {
        hypercall::call(__HYPERVISOR_event_channel_op, u64::from(EVTCHNOP_bind_virq), &raw mut op as u64, 0)
    })?;
    Ok(op.port)
}

/// Closes a local port.
pub fn close(port: u32) {
    let mut op = evtchn_close { port };
    // SAFETY: a valid argument structure.
    unsafe { hypercall::call(__HYPERVISOR_event_channel_op, u64::from(EVTCHNOP_close), &raw mut op as u64, 0) };
}

/// Kicks a local port's other end.
pub fn send(port: u32) {
    let mut op = evtchn_send { port };
    // SAFETY: a valid argument structure.
    unsafe { hypercall::call(__HYPERVISOR_event_channel_op, u64::from(EVTCHNOP_send), &raw mut op as u64, 0) };
}

/// Blocks until one of `ports` (at most [`POLL_MAX_PORTS`]) is pending.
pub fn poll(ports: &[u32]) -> Result<(), Errno> {
    let mut op = sched_poll { ports: ports.as_ptr().cast_mut(), nr_ports: ports.len() as u32, timeout: 0 };
    // SAFETY: Xen reads `nr_ports` ports from the slice.
    check(unsafe { hypercall::call(__HYPERVISOR_sched_op, u64::from(SCHEDOP_poll), &raw mut op as u64, 0) })
}
