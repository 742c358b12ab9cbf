//! Domains as the daemon knows them, and the narrow interface to the
//! hypervisor that INTRODUCE and RELEASE need.

use engine::DomId;

use crate::conn::ConnId;
use crate::error::Error;
use crate::quota::QuotaTable;

/// Feature bits of §8.7 that this daemon offers.
pub mod features {
    /// `RECONNECTION`: not offered (C does not either).
    pub const RECONNECTION: u32 = 1;
    /// `ERROR`: the ring's error field is valid.
    pub const ERROR: u32 = 2;
    /// `WATCHDEPTH`: WATCH takes a depth.
    pub const WATCHDEPTH: u32 = 4;
    /// `DOMID_ANY` in permission lists.
    pub const DOMID_ANY: u32 = 8;
    /// What C offers by default, and so do we.
    pub const DEFAULT: u32 = ERROR | WATCHDEPTH | DOMID_ANY;
}

/// What the core asks of the hypervisor. The daemon's ring frontend
/// implements it over Xen's devices or simulated rings; [`NoRings`] stands in
/// where no ring can exist.
pub trait Platform {
    /// INTRODUCE of a new domain: map its ring page (grant reference 1) and
    /// bind `port`; `conn` is the connection that will carry its traffic.
    fn attach(&mut self, conn: ConnId, domid: DomId, gfn: u64, port: u32) -> Result<(), Error>;
    /// INTRODUCE of an introduced domain: rebind its event channel to `port`.
    fn rebind(&mut self, conn: ConnId, domid: DomId, port: u32) -> Result<(), Error>;
    /// RELEASE or death: unbind and unmap.
    fn detach(&mut self, conn: ConnId, domid: DomId);
    /// Whether the hypervisor reports this domain as existing.
    fn domain_exists(&self, domid: DomId) -> bool;
}

/// A platform without rings, as on a machine without Xen: every domain
/// exists and INTRODUCE gives a connection that never speaks (as the
/// reference daemons behave under the peers' shim).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRings;

impl Platform for NoRings {
    fn attach(&mut self, _: ConnId, _: DomId, _: u64, _: u32) -> Result<(), Error> {
        Ok(())
    }
    fn rebind(&mut self, _: ConnId, _: DomId, _: u32) -> Result<(), Error> {
        Ok(())
    }
    fn detach(&mut self, _: ConnId, _: DomId) {}
    fn domain_exists(&self, _: DomId) -> bool {
        true
    }
}

/// A domain the daemon keeps a record of: introduced, or configured ahead of
/// its INTRODUCE (SET_FEATURE, SET_QUOTA).
#[derive(Debug, Clone)]
pub struct Domain {
    pub domid: DomId,
    /// INTRODUCE seen and not yet released.
    pub introduced: bool,
    /// Its ring connection, once introduced.
    pub conn: Option<ConnId>,
    pub gfn: u64,
    pub port: u32,
    /// `@releaseDomain` already fired for its current shutdown (§8.4).
    pub shutdown_reported: bool,
    pub features: u32,
    pub quotas: QuotaTable,
}

impl Domain {
    pub fn new(domid: DomId, quotas: QuotaTable) -> Domain {
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
