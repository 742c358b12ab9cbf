//! The platform under Xen, through Linux's Xen devices (PROTOCOL.md §8,
//! §10.4, §10.6): `/dev/xen/gntdev` maps a guest's ring (grant reference
//! 1), `/dev/xen/evtchn` binds, notifies and reports event channels
//! (including `VIRQ_DOM_EXC`), `/proc/xen/xsd_kva` and `/proc/xen/xsd_port`
//! give the daemon's own domain its ring, and `/dev/xen/privcmd` asks the
//! hypervisor about domains (domctl `getdomaininfo`).
//!
//! The ioctl layer is written here over `libc` (xen-sys is for guests and
//! does not link into a Linux program). It cannot run without Xen: it is
//! kept to the facts of the interfaces (ioctl numbers, structure layouts)
//! and every call is checked. Without `/dev/xen` [`XenPlatform::open`]
//! fails with a message saying so.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;

use engine::DomId;
use rxenstored_core::ring::{PAGE_SIZE, Ring, RingIo, RingPage};
use rxenstored_core::{ConnId, DomainState, Error, Platform, RingAttach, RingStart};

use crate::os::MappedPage;

/// `_IOC(_IOC_NONE, kind, nr, size)` of Linux's ioctl encoding.
const fn ioc_none(kind: u8, nr: u8, size: usize) -> libc::c_ulong {
    ((size as libc::c_ulong) << 16) | ((kind as libc::c_ulong) << 8) | nr as libc::c_ulong
}

// /dev/xen/evtchn (Linux include/uapi/xen/evtchn.h).
const IOCTL_EVTCHN_BIND_VIRQ: libc::c_ulong = ioc_none(b'E', 0, 4);
const IOCTL_EVTCHN_BIND_INTERDOMAIN: libc::c_ulong = ioc_none(b'E', 1, 8);
const IOCTL_EVTCHN_UNBIND: libc::c_ulong = ioc_none(b'E', 3, 4);
const IOCTL_EVTCHN_NOTIFY: libc::c_ulong = ioc_none(b'E', 4, 4);
// /dev/xen/gntdev (include/uapi/xen/gntdev.h): map_grant_ref with one
// reference is {u32 count, u32 pad, u64 index, {u32 domid, u32 ref}}.
const IOCTL_GNTDEV_MAP_GRANT_REF: libc::c_ulong = ioc_none(b'G', 0, 24);
const IOCTL_GNTDEV_UNMAP_GRANT_REF: libc::c_ulong = ioc_none(b'G', 1, 16);
// /dev/xen/privcmd: {u64 op, u64 arg[5]}.
const IOCTL_PRIVCMD_HYPERCALL: libc::c_ulong = ioc_none(b'P', 0, 48);

/// `VIRQ_DOM_EXC`: some domain changed state (§8.3).
const VIRQ_DOM_EXC: u32 = 3;
/// `GNTTAB_RESERVED_XENSTORE`.
const XENSTORE_GRANT_REF: u32 = 1;
const HYPERVISOR_DOMCTL: u64 = 36;
const XEN_DOMCTL_GETDOMAININFO: u32 = 5;
const XEN_DOMINF_DYING: u32 = 1 << 0;
const XEN_DOMINF_SHUTDOWN: u32 = 1 << 2;
/// `struct xen_domctl`: cmd, interface_version, domain, 6 bytes of pad,
/// then a 128-byte union.
const DOMCTL_SIZE: usize = 16 + 128;
/// Domctl interface versions tried in turn (Xen refuses a mismatch with
/// EACCES); the first accepted one is kept. 0x12 ≈ Xen 4.13 … 0x18 ≈ 4.22.
const DOMCTL_VERSIONS: std::ops::RangeInclusive<u32> = 0x12..=0x1f;

/// An ioctl, tried again when a signal interrupted it (the event loop's
/// helper thread signals the main thread to end a solo run).
fn ioctl<T>(fd: &File, request: libc::c_ulong, arg: &mut T) -> io::Result<i32> {
    loop {
        // SAFETY: `arg` is the structure the request expects (layouts
        // above), valid and exclusively borrowed for the call.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T) };
        if r >= 0 {
            return Ok(r);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn open_dev(path: &str) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}

/// A guest's page mapped through gntdev; unmapped (mapping, then grant)
/// on drop.
#[derive(Debug)]
struct GrantPage {
    page: Option<MappedPage>,
    index: u64,
    gntdev: File,
}

impl Drop for GrantPage {
    fn drop(&mut self) {
        self.page = None;
        let mut unmap = [0u64; 2];
        unmap[0] = self.index;
        unmap[1] = 1; // count = 1, pad = 0 (little-endian u32 pair)
        let _ = ioctl(&self.gntdev, IOCTL_GNTDEV_UNMAP_GRANT_REF, &mut unmap);
    }
}

#[derive(Debug)]
enum XenPage {
    Grant(GrantPage),
    /// The daemon's own domain: `/proc/xen/xsd_kva`.
    Kva(MappedPage),
}

// SAFETY: forwards to the mapping, which lives as long as the value.
unsafe impl RingPage for XenPage {
    fn base(&self) -> NonNull<u8> {
        match self {
            XenPage::Grant(g) => g.page.as_ref().map_or(NonNull::dangling(), |p| p.base()),
            XenPage::Kva(p) => p.base(),
        }
    }
}

#[derive(Debug)]
struct XenRing {
    ring: Ring<XenPage>,
    local_port: u32,
}

/// A page the hypervisor may read and write during a hypercall: from
/// `/dev/xen/hypercall` when the kernel has it, else locked anonymous
/// memory.
#[derive(Debug)]
struct HypercallBuf {
    ptr: NonNull<u8>,
}

// SAFETY: the buffer is process-wide memory owned by this value alone;
// it is used through `&mut self` only (one hypercall at a time).
unsafe impl Send for HypercallBuf {}

impl HypercallBuf {
    fn new() -> io::Result<HypercallBuf> {
        let dev = open_dev("/dev/xen/hypercall").ok();
        let (fd, flags) = match &dev {
            Some(f) => (f.as_raw_fd(), libc::MAP_SHARED),
            None => (-1, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS),
        };
        // SAFETY: a fresh mapping; nothing aliases it.
        let p =
            unsafe { libc::mmap(std::ptr::null_mut(), PAGE_SIZE, libc::PROT_READ | libc::PROT_WRITE, flags, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the mapping above. (A device page is already suitable.)
        if dev.is_none() && unsafe { libc::mlock(p, PAGE_SIZE) } < 0 {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p.cast::<u8>()).map(|ptr| HypercallBuf { ptr }).ok_or_else(|| io::Error::other("mmap gave NULL"))
    }
}

impl Drop for HypercallBuf {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), PAGE_SIZE) };
    }
}

/// The Xen platform (see the module documentation).
#[derive(Debug)]
pub struct XenPlatform {
    evtchn: File,
    gntdev: File,
    privcmd: File,
    hcall: HypercallBuf,
    domctl_version: Cell<Option<u32>>,
    virq_port: u32,
    store_domid: DomId,
    rings: HashMap<ConnId, XenRing>,
    ports: HashMap<u32, ConnId>,
}

impl XenPlatform {
    /// Opens the devices and binds `VIRQ_DOM_EXC`. Fails with a clear
    /// message when this is not a Xen control domain.
    pub fn open(store_domid: DomId) -> io::Result<XenPlatform> {
        Self::check_xen()?;
        let evtchn = open_dev("/dev/xen/evtchn")?;
        Self::with_evtchn(store_domid, evtchn)
    }

    /// Live update (`-U`): the event-channel device the previous process
    /// left open as `fd` (GLOBAL_DATA `evtchn-fd`), with the guests' ports
    /// still bound on it; VIRQ_DOM_EXC is bound again, as C does.
    pub fn adopt(store_domid: DomId, fd: i32) -> io::Result<XenPlatform> {
        Self::check_xen()?;
        // A predecessor without Xen rings passes a stand-in (a pipe): then
        // start afresh (the stand-in is closed with the restore).
        let is_device = fd >= 3
            && std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok_and(|p| p == Path::new("/dev/xen/evtchn"));
        if !is_device {
            tracing::warn!(
                "live update: inherited fd {fd} is not /dev/xen/evtchn: binding the guests' ports afresh is not possible"
            );
            return Self::open(store_domid);
        }
        // SAFETY: the previous process handed this descriptor to us and
        // nothing else in this process owns it.
        let evtchn = unsafe { File::from_raw_fd(fd) };
        // Close it again at the next exec unless a live update clears this.
        // SAFETY: setting a flag on a descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        Self::with_evtchn(store_domid, evtchn)
    }

    fn check_xen() -> io::Result<()> {
        if !Path::new("/dev/xen").exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "/dev/xen does not exist: not running on Xen (is the xen kernel support loaded? \
                 without Xen run without --xen, or with --sim-rings DIR)",
            ));
        }
        Ok(())
    }

    fn with_evtchn(store_domid: DomId, evtchn: File) -> io::Result<XenPlatform> {
        // SAFETY: setting a flag on a descriptor we own.
        unsafe { libc::fcntl(evtchn.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        let gntdev = open_dev("/dev/xen/gntdev")?;
        let privcmd = open_dev("/dev/xen/privcmd")?;
        let hcall = HypercallBuf::new()?;
        let virq_port = Self::bind_virq(&evtchn)?;
        Ok(XenPlatform {
            evtchn,
            gntdev,
            privcmd,
            hcall,
            domctl_version: Cell::new(None),
            virq_port,
            store_domid,
            rings: HashMap::new(),
            ports: HashMap::new(),
        })
    }

    fn bind_virq(evtchn: &File) -> io::Result<u32> {
        let mut virq = [VIRQ_DOM_EXC];
        ioctl(evtchn, IOCTL_EVTCHN_BIND_VIRQ, &mut virq)
            .map(|p| p as u32)
            .map_err(|e| io::Error::new(e.kind(), format!("binding VIRQ_DOM_EXC: {e}")))
    }

    /// The ring page of `domid`: grant reference 1, or the daemon's own
    /// page for the store domain (C ignores INTRODUCE's gfn, §8.1, §10.6).
    fn map_ring(&self, domid: DomId) -> Result<XenPage, Error> {
        let page = if domid == self.store_domid {
            Self::map_own().map(XenPage::Kva)
        } else {
            self.map_grant(domid).map(XenPage::Grant)
        };
        page.map_err(|e| {
            tracing::warn!("domain {}: cannot map the ring: {e}", domid.0);
            Error::BadRequest
        })
    }

    /// The event channel of the daemon's own domain's ring
    /// (`/proc/xen/xsd_port`), if this kernel offers one.
    pub fn own_port() -> Option<u32> {
        let mut s = String::new();
        File::open("/proc/xen/xsd_port").ok()?.read_to_string(&mut s).ok()?;
        s.trim().parse().ok()
    }

    fn map_grant(&self, domid: DomId) -> io::Result<GrantPage> {
        // {count, pad, index, domid, ref}
        #[repr(C)]
        struct MapGrant {
            count: u32,
            pad: u32,
            index: u64,
            domid: u32,
            gref: u32,
        }
        let mut m = MapGrant { count: 1, pad: 0, index: 0, domid: u32::from(domid.0), gref: XENSTORE_GRANT_REF };
        ioctl(&self.gntdev, IOCTL_GNTDEV_MAP_GRANT_REF, &mut m)?;
        let gntdev = self.gntdev.try_clone()?;
        let mut grant = GrantPage { page: None, index: m.index, gntdev };
        grant.page = Some(MappedPage::map(self.gntdev.as_fd(), m.index)?);
        Ok(grant)
    }

    fn map_own() -> io::Result<MappedPage> {
        let f = OpenOptions::new().read(true).write(true).open("/proc/xen/xsd_kva")?;
        MappedPage::map(f.as_fd(), 0)
    }

    fn bind(&self, domid: DomId, port: u32) -> io::Result<u32> {
        let mut b = [u32::from(domid.0), port];
        ioctl(&self.evtchn, IOCTL_EVTCHN_BIND_INTERDOMAIN, &mut b).map(|p| p as u32)
    }

    fn unbind(&self, local: u32) {
        let mut p = [local];
        let _ = ioctl(&self.evtchn, IOCTL_EVTCHN_UNBIND, &mut p);
    }

    fn kick(&self, local: u32) {
        let mut p = [local];
        let _ = ioctl(&self.evtchn, IOCTL_EVTCHN_NOTIFY, &mut p);
    }

    /// domctl getdomaininfo: `Ok(Some(flags))`, `Ok(None)` if the domain
    /// does not exist, `Err` if the hypervisor cannot be asked.
    fn domain_flags(&self, domid: DomId) -> io::Result<Option<u32>> {
        let versions: Vec<u32> = match self.domctl_version.get() {
            Some(v) => vec![v],
            None => DOMCTL_VERSIONS.collect(),
        };
        let mut last = io::Error::other("no domctl interface version accepted");
        for version in versions {
            let buf = self.hcall.ptr.as_ptr();
            let mut d = [0u8; DOMCTL_SIZE];
            d[0..4].copy_from_slice(&XEN_DOMCTL_GETDOMAININFO.to_le_bytes());
            d[4..8].copy_from_slice(&version.to_le_bytes());
            d[8..10].copy_from_slice(&domid.0.to_le_bytes());
            // SAFETY: the buffer is a whole page of our own mapping.
            unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), buf, DOMCTL_SIZE) };
            let mut call = [HYPERVISOR_DOMCTL, buf as u64, 0, 0, 0, 0];
            match ioctl(&self.privcmd, IOCTL_PRIVCMD_HYPERCALL, &mut call) {
                Ok(_) => {
                    self.domctl_version.set(Some(version));
                    // SAFETY: as above; the hypervisor filled the union.
                    unsafe { std::ptr::copy_nonoverlapping(buf, d.as_mut_ptr(), DOMCTL_SIZE) };
                    let got = u16::from_le_bytes([d[16], d[17]]);
                    let flags = u32::from_le_bytes([d[20], d[21], d[22], d[23]]);
                    return Ok((got == domid.0).then_some(flags));
                }
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    self.domctl_version.set(Some(version));
                    return Ok(None);
                }
                Err(e) if e.raw_os_error() == Some(libc::EACCES) && self.domctl_version.get().is_none() => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}

impl Platform for XenPlatform {
    fn attach(&mut self, ring: RingAttach) -> Result<(), Error> {
        let RingAttach { conn, domid, port, features, start, .. } = ring;
        let mut ring = Ring::new(self.map_ring(domid)?, features);
        let port = ring.port_to_bind(port);
        let local = self.bind(domid, port).map_err(|e| {
            tracing::warn!("domain {}: cannot bind port {port}: {e}", domid.0);
            Error::BadRequest
        })?;
        let notify = match start {
            RingStart::Reset => ring.reset(),
            RingStart::Resume => {
                ring.resume();
                match ring.error() {
                    Some(e) => tracing::warn!("domain {}: its ring cannot be resumed: {e}", domid.0),
                    None => tracing::info!(
                        "domain {}: ring resumed, {} bytes of requests waiting to be answered",
                        domid.0,
                        ring.waiting_requests()
                    ),
                }
                true
            }
        };
        self.ports.insert(local, conn);
        self.rings.insert(conn, XenRing { ring, local_port: local });
        if notify {
            self.kick(local);
        }
        Ok(())
    }

    fn rebind(&mut self, conn: ConnId, domid: DomId, port: u32) -> Result<(), Error> {
        let Some(old) = self.rings.get(&conn).map(|r| r.local_port) else { return Ok(()) };
        self.unbind(old);
        self.ports.remove(&old);
        let local = self.bind(domid, port).map_err(|_| Error::BadRequest)?;
        self.ports.insert(local, conn);
        if let Some(r) = self.rings.get_mut(&conn) {
            r.local_port = local;
            if r.ring.reset() {
                self.kick(local);
            }
        }
        Ok(())
    }

    /// The page is mapped again as it is (indexes and bytes carry on); the
    /// port is the local one the previous process bound on the inherited
    /// device, used without binding again.
    fn reattach(&mut self, conn: ConnId, domid: DomId, port: u32, features: u32) -> Result<(), Error> {
        let ring = Ring::new(self.map_ring(domid)?, features);
        self.ports.insert(port, conn);
        self.rings.insert(conn, XenRing { ring, local_port: port });
        Ok(())
    }

    fn live_update_rings(&self) -> bool {
        true
    }

    fn handover_fd(&self) -> Option<i32> {
        Some(self.evtchn.as_raw_fd())
    }

    fn local_port(&self, conn: ConnId) -> Option<u32> {
        self.rings.get(&conn).map(|r| r.local_port)
    }

    fn release_for_exec(&mut self) {
        self.unbind(self.virq_port);
    }

    fn reclaim_after_failed_exec(&mut self) {
        match Self::bind_virq(&self.evtchn) {
            Ok(port) => self.virq_port = port,
            Err(e) => tracing::error!("live update failed and {e}: domain deaths go unnoticed until restart"),
        }
    }

    fn detach(&mut self, conn: ConnId, _domid: DomId) {
        if let Some(r) = self.rings.remove(&conn) {
            self.unbind(r.local_port);
            self.ports.remove(&r.local_port);
        }
    }

    fn domain_exists(&self, domid: DomId) -> bool {
        // When the hypervisor cannot be asked, assume it exists: never
        // destroy a domain on a guess.
        !matches!(self.domain_flags(domid), Ok(None))
    }

    fn domain_state(&mut self, domid: DomId) -> DomainState {
        match self.domain_flags(domid) {
            Ok(None) => DomainState::Gone,
            Ok(Some(f)) if f & XEN_DOMINF_DYING != 0 => DomainState::Gone,
            Ok(Some(f)) if f & XEN_DOMINF_SHUTDOWN != 0 => DomainState::Shutdown,
            Ok(Some(_)) => DomainState::Running,
            Err(e) => {
                tracing::warn!("domain {}: getdomaininfo failed: {e}", domid.0);
                DomainState::Running
            }
        }
    }

    fn ring(&mut self, conn: ConnId) -> Option<&mut dyn RingIo> {
        self.rings.get_mut(&conn).map(|r| &mut r.ring as &mut dyn RingIo)
    }

    fn notify(&mut self, conn: ConnId) {
        if let Some(local) = self.rings.get(&conn).map(|r| r.local_port) {
            self.kick(local);
        }
    }

    fn event_fd(&self) -> Option<i32> {
        Some(self.evtchn.as_raw_fd())
    }

    fn pending(&mut self, fired: &mut Vec<ConnId>) -> bool {
        let mut dom_exc = false;
        let mut buf = [0u8; 4 * 64];
        loop {
            let n = match self.evtchn.read(&mut buf) {
                Ok(n) if n >= 4 => n,
                _ => return dom_exc,
            };
            let ports: Vec<u32> =
                buf[..n - n % 4].chunks_exact(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect();
            for &port in &ports {
                if port == self.virq_port {
                    dom_exc = true;
                } else if let Some(&conn) = self.ports.get(&port)
                    && !fired.contains(&conn)
                {
                    fired.push(conn);
                }
            }
            // Writing the ports back unmasks them (§10.4).
            let bytes: Vec<u8> = ports.iter().flat_map(|p| p.to_ne_bytes()).collect();
            let _ = self.evtchn.write(&bytes);
        }
    }
}
