//! Domains as the daemon knows them, and the narrow interface to the
//! hypervisor that INTRODUCE and RELEASE need.

use engine::DomId;

use crate::conn::ConnId;
use crate::error::Error;
use crate::features;
use crate::quota::QuotaTable;
use crate::ring::RingIo;

/// What the hypervisor reports about a domain (§8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    /// Running (or paused): nothing to do.
    Running,
    /// Shut down (suspended, crashed, halted) but not yet dying:
    /// `@releaseDomain` fires once.
    Shutdown,
    /// Dying, dead or gone: the daemon destroys it as RELEASE does.
    Gone,
}

/// How [`Platform::attach`] takes up a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingStart {
    /// INTRODUCE: the ring starts afresh, its indexes zeroed (§8.1 step 3).
    Reset,
    /// The ring is taken as it is and the other side is notified: what it
    /// queued before is served. The store domain's own ring at start-up
    /// (its kernel may have queued requests before the daemon ran, and
    /// waits for a notification to probe its devices, as C does), and a
    /// guest's ring after a restart.
    Resume,
}

/// A domain's ring as [`Platform::attach`] is asked to take it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingAttach {
    /// The connection that will carry the ring's traffic.
    pub conn: ConnId,
    /// The domain whose ring it is.
    pub domid: DomId,
    /// The ring page's frame as INTRODUCE named it (a platform that maps
    /// grant reference 1 instead ignores it).
    pub gfn: u64,
    /// The event channel port INTRODUCE named (unless the page names
    /// another, §8.1).
    pub port: u32,
    /// The server features to advertise in the page.
    pub features: u32,
    /// Whether the ring starts afresh or is taken as it is.
    pub start: RingStart,
}

/// What the core and the event loop ask of the hypervisor: map a guest's
/// ring, bind and notify its event channel, report pending ports and
/// domain state. The daemon implements it over Xen's devices
/// (`xen::XenPlatform`) or simulated rings (`sim::SimPlatform`); [`NoRings`]
/// stands in where no ring can exist. Everything after `domain_exists` has
/// a default for ring-less platforms.
pub trait Platform {
    /// A new domain's ring: map its page (grant reference 1, or the
    /// daemon's own page for the store domain), bind its port, advertise
    /// its features and take it up as [`RingAttach::start`] says.
    fn attach(&mut self, ring: RingAttach) -> Result<(), Error>;
    /// INTRODUCE of an introduced domain: rebind its event channel to
    /// `port` and reset its ring (§8.1 steps 2–4).
    fn rebind(&mut self, conn: ConnId, domid: DomId, port: u32) -> Result<(), Error>;
    /// RELEASE or death: unbind and unmap.
    fn detach(&mut self, conn: ConnId, domid: DomId);
    /// Whether the hypervisor reports this domain as existing.
    fn domain_exists(&self, domid: DomId) -> bool;

    /// The domain's state, asked after `VIRQ_DOM_EXC` fired (§8.3).
    fn domain_state(&mut self, domid: DomId) -> DomainState {
        if self.domain_exists(domid) { DomainState::Running } else { DomainState::Gone }
    }
    /// Live update (`-U`): take over the ring of a domain the previous
    /// process served, as it is: map the page without resetting it (the
    /// indexes and the bytes in it carry on), use the event channel the
    /// previous process had bound (`port`, its local port) without binding
    /// again. The default refuses: the platform cannot take rings over.
    fn reattach(&mut self, _conn: ConnId, _domid: DomId, _port: u32, _features: u32) -> Result<(), Error> {
        Err(Error::Unsupported)
    }
    /// Whether [`reattach`](Platform::reattach) works: a live update may
    /// only go ahead if the new process can take the rings over.
    fn live_update_rings(&self) -> bool {
        false
    }
    /// The daemon-side (local) event-channel port of a connection's ring,
    /// where the platform binds one: what a live-update stream records for
    /// a ring connection (MIGRATION-STREAM.md: "xenstored's local port").
    fn local_port(&self, _conn: ConnId) -> Option<u32> {
        None
    }
    /// Live update: the event-channel device descriptor the next process
    /// inherits (recorded as GLOBAL_DATA `evtchn-fd`): the interdomain
    /// ports bound on it stay bound across `exec`, as C's do. `None`: the
    /// platform has no such device (a placeholder is passed on).
    fn handover_fd(&self) -> Option<i32> {
        None
    }
    /// Live update, just before `exec`: give up what the next process
    /// binds again itself (`VIRQ_DOM_EXC`).
    fn release_for_exec(&mut self) {}
    /// Live update, `exec` failed: take back what
    /// [`release_for_exec`](Platform::release_for_exec) gave up, so that
    /// domain deaths are still noticed (C loses them here, §3.3 step 6).
    fn reclaim_after_failed_exec(&mut self) {}
    /// The ring of a connection `attach` accepted.
    fn ring(&mut self, _conn: ConnId) -> Option<&mut dyn RingIo> {
        None
    }
    /// Kicks the event channel of a connection's ring.
    fn notify(&mut self, _conn: ConnId) {}
    /// A descriptor the event loop polls: readable when
    /// [`pending`](Platform::pending) has something to report.
    fn event_fd(&self) -> Option<i32> {
        None
    }
    /// Adds to `fired` the ring connections whose event channel fired
    /// since the last call (and unmasks them); returns whether
    /// `VIRQ_DOM_EXC` fired (some domain changed state).
    fn pending(&mut self, _fired: &mut alloc::vec::Vec<ConnId>) -> bool {
        false
    }
}

/// A platform chosen at run time (the daemon's command line).
impl<T: Platform + ?Sized> Platform for alloc::boxed::Box<T> {
    fn attach(&mut self, ring: RingAttach) -> Result<(), Error> {
        (**self).attach(ring)
    }
    fn rebind(&mut self, conn: ConnId, domid: DomId, port: u32) -> Result<(), Error> {
        (**self).rebind(conn, domid, port)
    }
    fn detach(&mut self, conn: ConnId, domid: DomId) {
        (**self).detach(conn, domid)
    }
    fn domain_exists(&self, domid: DomId) -> bool {
        (**self).domain_exists(domid)
    }
    fn domain_state(&mut self, domid: DomId) -> DomainState {
        (**self).domain_state(domid)
    }
    fn reattach(&mut self, conn: ConnId, domid: DomId, port: u32, features: u32) -> Result<(), Error> {
        (**self).reattach(conn, domid, port, features)
    }
    fn live_update_rings(&self) -> bool {
        (**self).live_update_rings()
    }
    fn handover_fd(&self) -> Option<i32> {
        (**self).handover_fd()
    }
    fn local_port(&self, conn: ConnId) -> Option<u32> {
        (**self).local_port(conn)
    }
    fn release_for_exec(&mut self) {
        (**self).release_for_exec()
    }
    fn reclaim_after_failed_exec(&mut self) {
        (**self).reclaim_after_failed_exec()
    }
    fn ring(&mut self, conn: ConnId) -> Option<&mut dyn RingIo> {
        (**self).ring(conn)
    }
    fn notify(&mut self, conn: ConnId) {
        (**self).notify(conn)
    }
    fn event_fd(&self) -> Option<i32> {
        (**self).event_fd()
    }
    fn pending(&mut self, fired: &mut alloc::vec::Vec<ConnId>) -> bool {
        (**self).pending(fired)
    }
}

/// A platform without rings, as on a machine without Xen: every domain
/// exists and INTRODUCE gives a connection that never speaks (as the
/// reference daemons behave under the peers' shim).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRings;

impl Platform for NoRings {
    fn attach(&mut self, _: RingAttach) -> Result<(), Error> {
        Ok(())
    }
    fn rebind(&mut self, _: ConnId, _: DomId, _: u32) -> Result<(), Error> {
        Ok(())
    }
    fn detach(&mut self, _: ConnId, _: DomId) {}
    fn domain_exists(&self, _: DomId) -> bool {
        true
    }
    fn reattach(&mut self, _: ConnId, _: DomId, _: u32, _: u32) -> Result<(), Error> {
        Ok(())
    }
    fn live_update_rings(&self) -> bool {
        true
    }
}

/// A domain the daemon keeps a record of: introduced, or configured ahead of
/// its INTRODUCE (SET_FEATURE, SET_QUOTA).
#[derive(Debug, Clone)]
pub struct Domain {
    /// The domain.
    pub domid: DomId,
    /// INTRODUCE seen and not yet released.
    pub introduced: bool,
    /// Its ring connection, once introduced.
    pub conn: Option<ConnId>,
    /// Its ring's frame, as INTRODUCE gave it.
    pub gfn: u64,
    /// Its event channel port, as INTRODUCE gave it.
    pub port: u32,
    /// `@releaseDomain` already fired for its current shutdown (§8.4).
    pub shutdown_reported: bool,
    /// The features its connection may use (§8.7).
    pub features: u32,
    /// Its quotas (the global ones, as they were when the record was
    /// made, unless SET_QUOTA changed them).
    pub quotas: QuotaTable,
}

impl Domain {
    pub(crate) fn new(domid: DomId, quotas: QuotaTable) -> Domain {
        Domain {
            domid,
            introduced: false,
            conn: None,
            gfn: 0,
            port: 0,
            shutdown_reported: false,
            features: features::DEFAULT,
            quotas,
        }
    }
}
