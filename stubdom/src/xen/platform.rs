//! The core's platform under Xen, and the serving loop.
//!
//! - A guest's ring (and dom0's, the master domain's, at start) is grant
//!   reference 1 of that domain, mapped at a free physical frame of ours
//!   ([`Frames`]: frames above RAM, which nothing else uses). Its event
//!   channel is bound to the port INTRODUCE names, unless the page names
//!   its own (§8.1).
//! - Domain state comes from `XEN_DOMCTL_getdomaininfo`, which Xen allows
//!   the xenstore domain; `VIRQ_DOM_EXC` says when to ask (§8.3).
//! - The loop clears the pending bits of its ports, serves every ring
//!   until nothing moves, then waits in `SCHEDOP_poll`.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::NonNull;

use engine::DomId;
use rxenstored_core::ring::{Ring, RingIo, RingPage};
use rxenstored_core::{ConnId, Core, DomainState, Error, Platform, RingAttach, RingStart};
use xen_sys::{__HYPERVISOR_domctl, __HYPERVISOR_grant_table_op, VIRQ_DOM_EXC};

use super::events::{self, SharedInfo};
use super::{PAGE_SHIFT, hypercall};
use crate::println;
use crate::serve::{Rings, Server};

/// `GNTTABOP_*` and `GNTMAP_host_map` (public/grant_table.h).
const GNTTABOP_MAP_GRANT_REF: u64 = 0;
const GNTTABOP_UNMAP_GRANT_REF: u64 = 1;
const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// The grant reference of a domain's xenstore page (§10.6).
const GNTTAB_RESERVED_XENSTORE: u32 = 1;

/// `XEN_DOMCTL_getdomaininfo` of Xen 4.17's domctl interface (version
/// 0x15; Xen refuses any other version).
const XEN_DOMCTL_GETDOMAININFO: u32 = 5;
const XEN_DOMCTL_INTERFACE_VERSION: u32 = 0x15;
const XEN_DOMINF_DYING: u32 = 1 << 0;
const XEN_DOMINF_SHUTDOWN: u32 = 1 << 2;
const ESRCH: i64 = 3;

#[repr(C)]
struct MapGrantRef {
    host_addr: u64,
    flags: u32,
    gref: u32,
    dom: u16,
    status: i16,
    handle: u32,
    dev_bus_addr: u64,
}

#[repr(C)]
struct UnmapGrantRef {
    host_addr: u64,
    dev_bus_addr: u64,
    handle: u32,
    status: i16,
}

/// `struct xen_domctl`: a header, then a 128-byte union (8-aligned).
#[repr(C)]
struct Domctl {
    cmd: u32,
    interface_version: u32,
    domain: u16,
    _pad: [u16; 3],
    u: [u64; 16],
}

/// Free physical frames to map guests' pages at: a range above RAM and
/// below the local APIC (0xfee00000), inside the 4 GiB the boot page
/// tables map.
#[derive(Debug)]
pub struct Frames {
    next: u64,
    end: u64,
    free: Vec<u64>,
}

impl Frames {
    pub fn above(ram_end: u64) -> Frames {
        let first = ram_end.next_multiple_of(2 << 20) >> PAGE_SHIFT;
        Frames { next: first, end: 0xfee0_0000 >> PAGE_SHIFT, free: Vec::new() }
    }

    pub fn take(&mut self) -> Option<u64> {
        self.free.pop().or_else(|| {
            (self.next < self.end).then(|| {
                self.next += 1;
                self.next - 1
            })
        })
    }

    pub fn give_back(&mut self, gfn: u64) {
        self.free.push(gfn);
    }
}

/// A mapped ring page (identity-mapped: its address is the frame's).
#[derive(Debug, Clone, Copy)]
pub struct XenPage(NonNull<u8>);

// SAFETY: a 4 KiB frame where Xen mapped a domain's ring page; it stays
// mapped until `detach` drops the ring, and `rxenstored_core::ring` only uses
// atomics on it.
unsafe impl RingPage for XenPage {
    fn base(&self) -> NonNull<u8> {
        self.0
    }
}

#[derive(Debug)]
struct XenRing {
    ring: Ring<XenPage>,
    domid: DomId,
    local_port: u32,
    gfn: u64,
    handle: u32,
}

/// The core's platform under Xen.
#[derive(Debug)]
pub struct XenPlatform {
    rings: BTreeMap<ConnId, XenRing>,
    frames: Frames,
}

fn map_grant(domid: DomId, gfn: u64) -> Result<u32, String> {
    let mut op = MapGrantRef {
        host_addr: gfn << PAGE_SHIFT,
        flags: GNTMAP_HOST_MAP,
        gref: GNTTAB_RESERVED_XENSTORE,
        dom: domid.0,
        status: 0,
        handle: 0,
        dev_bus_addr: 0,
    };
    // SAFETY: one valid gnttab_map_grant_ref.
    let rc = unsafe { hypercall::call(__HYPERVISOR_grant_table_op, GNTTABOP_MAP_GRANT_REF, &raw mut op as u64, 1) };
    match (rc, op.status) {
        (0, 0) => Ok(op.handle),
        (0, status) => Err(alloc::format!("grant status {status}")),
        (rc, _) => Err(alloc::format!("grant_table_op {rc}")),
    }
}

fn unmap_grant(gfn: u64, handle: u32) {
    let mut op = UnmapGrantRef { host_addr: gfn << PAGE_SHIFT, dev_bus_addr: 0, handle, status: 0 };
    // SAFETY: one valid gnttab_unmap_grant_ref.
    unsafe { hypercall::call(__HYPERVISOR_grant_table_op, GNTTABOP_UNMAP_GRANT_REF, &raw mut op as u64, 1) };
}

/// The domain's `XEN_DOMINF_*` flags; `Ok(None)` if it does not exist.
fn domain_flags(domid: DomId) -> Result<Option<u32>, i64> {
    let mut op = Domctl {
        cmd: XEN_DOMCTL_GETDOMAININFO,
        interface_version: XEN_DOMCTL_INTERFACE_VERSION,
        domain: domid.0,
        _pad: [0; 3],
        u: [0; 16],
    };
    // SAFETY: a valid xen_domctl for getdomaininfo.
    let rc = unsafe { hypercall::call(__HYPERVISOR_domctl, &raw mut op as u64, 0, 0) };
    match rc {
        // Xen answers with the first domain at or above the one asked.
        0 => Ok(((op.u[0] & 0xffff) as u16 == domid.0).then_some((op.u[0] >> 32) as u32)),
        rc if rc == -ESRCH => Ok(None),
        rc => Err(rc),
    }
}

impl XenPlatform {
    pub fn new(frames: Frames) -> XenPlatform {
        XenPlatform { rings: BTreeMap::new(), frames }
    }

    /// The local ports of every ring.
    fn ports(&self, into: &mut Vec<u32>) {
        into.extend(self.rings.values().map(|r| r.local_port));
    }
}

impl Platform for XenPlatform {
    fn attach(&mut self, ring: RingAttach) -> Result<(), Error> {
        let RingAttach { conn, domid, port, features, start, .. } = ring;
        let gfn = self.frames.take().ok_or(Error::Platform("no free frame to map the ring at"))?;
        let handle = match map_grant(domid, gfn) {
            Ok(h) => h,
            Err(e) => {
                println!("stubdom: domain {}: cannot map its ring: {e}", domid.0);
                self.frames.give_back(gfn);
                return Err(Error::BadRequest);
            }
        };
        let page = XenPage(NonNull::new((gfn << PAGE_SHIFT) as *mut u8).ok_or(Error::BadRequest)?);
        let mut ring = Ring::new(page, features);
        let port = ring.port_to_bind(port);
        let local_port = match events::bind_interdomain(domid.0, port) {
            Ok(p) => p,
            Err(e) => {
                println!("stubdom: domain {}: cannot bind port {port}: {}", domid.0, e.0);
                unmap_grant(gfn, handle);
                self.frames.give_back(gfn);
                return Err(Error::BadRequest);
            }
        };
        match start {
            RingStart::Reset => drop(ring.reset()),
            RingStart::Resume => {
                ring.resume();
                println!(
                    "stubdom: domain {}: ring resumed, {} bytes of requests waiting",
                    domid.0,
                    ring.waiting_requests()
                );
            }
        }
        events::send(local_port);
        self.rings.insert(conn, XenRing { ring, domid, local_port, gfn, handle });
        Ok(())
    }

    fn rebind(&mut self, conn: ConnId, domid: DomId, port: u32) -> Result<(), Error> {
        let Some(r) = self.rings.get_mut(&conn) else { return Ok(()) };
        events::close(r.local_port);
        r.local_port = events::bind_interdomain(domid.0, port).map_err(|_| Error::BadRequest)?;
        r.ring.reset();
        events::send(r.local_port);
        Ok(())
    }

    fn detach(&mut self, conn: ConnId, _domid: DomId) {
        if let Some(r) = self.rings.remove(&conn) {
            events::close(r.local_port);
            unmap_grant(r.gfn, r.handle);
            self.frames.give_back(r.gfn);
        }
    }

    fn domain_exists(&self, domid: DomId) -> bool {
        // When Xen cannot be asked, assume it exists: never destroy a
        // domain on a guess.
        !matches!(domain_flags(domid), Ok(None))
    }

    fn domain_state(&mut self, domid: DomId) -> DomainState {
        match domain_flags(domid) {
            Ok(None) => DomainState::Gone,
            Ok(Some(f)) if f & XEN_DOMINF_DYING != 0 => DomainState::Gone,
            Ok(Some(f)) if f & XEN_DOMINF_SHUTDOWN != 0 => DomainState::Shutdown,
            Ok(Some(_)) => DomainState::Running,
            Err(rc) => {
                println!("stubdom: domain {}: getdomaininfo failed ({rc})", domid.0);
                DomainState::Running
            }
        }
    }

    fn ring(&mut self, conn: ConnId) -> Option<&mut dyn RingIo> {
        self.rings.get_mut(&conn).map(|r| &mut r.ring as &mut dyn RingIo)
    }

    fn notify(&mut self, conn: ConnId) {
        if let Some(r) = self.rings.get(&conn) {
            events::send(r.local_port);
        }
    }

    fn local_port(&self, conn: ConnId) -> Option<u32> {
        self.rings.get(&conn).map(|r| r.local_port)
    }
}

impl Rings for XenPlatform {
    fn ring_conns(&self, into: &mut Vec<ConnId>) {
        into.extend(self.rings.keys().copied());
    }

    fn describe(&self, conn: ConnId) -> String {
        match self.rings.get(&conn) {
            Some(r) => alloc::format!("domain {}'s ring", r.domid.0),
            None => alloc::format!("connection {conn:?}"),
        }
    }
}

/// Serves dom0 (whose kernel's ring `init-xenstore-domain` set up, bound
/// to dom0's port `event`) and every guest introduced later, for ever.
pub fn serve(config: rxenstored_core::Config, event: u32, shared: SharedInfo, frames: Frames) -> ! {
    let virq_port = match events::bind_virq(VIRQ_DOM_EXC) {
        Ok(p) => Some(p),
        Err(e) => {
            println!("stubdom: cannot bind VIRQ_DOM_EXC ({}): domain deaths go unnoticed", e.0);
            None
        }
    };
    let mut core = Core::with_platform(config, XenPlatform::new(frames));
    if let Err(e) = core.attach_own_ring(event) {
        println!("stubdom: cannot serve dom0's ring (port {event}): {e}");
        crate::rt::exit(1)
    }
    let mut server = Server::new(core);
    let (used, free) = crate::heap::usage();
    println!("stubdom: ready: serving dom0 on port {event}, heap {} KiB used / {} KiB free", used / 1024, free / 1024);
    // The rings' ports and VIRQ_DOM_EXC's, taken again after each pass (a
    // pass may bind or close some).
    let mut ports: Vec<u32> = Vec::new();
    let take_ports = |server: &mut Server<XenPlatform>, ports: &mut Vec<u32>| {
        ports.clear();
        server.core_mut().platform().ports(ports);
        ports.extend(virq_port);
    };
    take_ports(&mut server, &mut ports);
    loop {
        let mut dom_exc = false;
        for &p in &ports {
            dom_exc |= shared.take_pending(p) && Some(p) == virq_port;
        }
        if dom_exc {
            for d in server.core_mut().check_domains() {
                println!("stubdom: domain {} is gone", d.0);
            }
        }
        while server.turn() {}
        take_ports(&mut server, &mut ports);
        if ports.len() <= events::POLL_MAX_PORTS {
            if let Err(e) = events::poll(&ports) {
                println!("stubdom: SCHEDOP_poll failed ({})", e.0);
            }
        } else {
            // More ports than one poll can wait on: keep polling the rings.
            crate::arch::pause();
        }
    }
}
