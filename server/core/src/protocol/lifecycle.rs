//! What the ring frontends need of the core beyond requests: domain death
//! (§8.3), abandoned rings (§1.2, §10.2), the store domain's own ring
//! (§10.6) and the per-guest bounds on queued output (§9.1).

use alloc::vec::Vec;

use engine::DomId;

use super::{Core, quotas_for};
use crate::conn::{ConnId, ConnKind, OutQueue};
use crate::domain::{DomainState, Platform, RingStart};
use crate::error::Error;
use crate::quota::{Quota, QuotaHit};

impl<P: Platform> Core<P> {
    /// A ring the guest broke (bad indexes, oversize length): C ignores the
    /// connection from then on. Its watches, transactions, queued output
    /// and partial input are dropped; the domain stays introduced (RELEASE
    /// or death still clean it up, a new INTRODUCE revives the ring).
    pub fn ignore_connection(&mut self, id: ConnId) {
        self.watches.remove_conn(id);
        if let Some(c) = self.conns.get_mut(&id) {
            c.reset();
            c.watches = 0;
        }
    }

    /// After `VIRQ_DOM_EXC`: asks the platform about every domain with a
    /// record (§8.3). A gone or dying introduced domain is destroyed as by
    /// RELEASE; a shut-down one gets its `@releaseDomain` once; records of
    /// domains never introduced are forgotten silently when the domain is
    /// gone. Returns the domains destroyed.
    pub fn check_domains(&mut self) -> Vec<DomId> {
        let ids: Vec<DomId> = self
            .domains
            .keys()
            .copied()
            .filter(|d| *d != self.config.priv_domid && *d != self.config.store_domid)
            .collect();
        let mut destroyed = Vec::new();
        for domid in ids {
            let state = self.platform.domain_state(domid);
            let Some(d) = self.domains.get_mut(&domid) else { continue };
            match (state, d.introduced, d.conn) {
                (DomainState::Gone, true, Some(conn)) => {
                    self.destroy_domain(domid, conn);
                    destroyed.push(domid);
                }
                (DomainState::Gone, _, _) => {
                    self.domains.remove(&domid);
                }
                (DomainState::Shutdown, true, _) if !d.shutdown_reported => {
                    d.shutdown_reported = true;
                    self.fire_special("@releaseDomain", domid);
                }
                _ => {}
            }
        }
        destroyed
    }

    /// Connects the store domain's own ring (its kernel's xenbus, §10.6),
    /// as C does at start-up before any INTRODUCE: the platform maps the
    /// page itself (`gfn` is unused for this domain). The ring is resumed,
    /// not reset: what the kernel queued before the daemon ran is served,
    /// and the notification wakes its xenbus (which then probes dom0's
    /// backends).
    pub fn attach_own_ring(&mut self, port: u32) -> Result<ConnId, Error> {
        self.attach_domain(self.config.store_domid, 0, port, RingStart::Resume)
    }

    /// The `outstanding` quota of a ring connection (§9.1): the event loop
    /// reads no new request while this many replies and events wait to be
    /// consumed. `None`: no limit (sockets, the privileged domain, 0).
    pub fn outstanding_limit(&self, id: ConnId) -> Option<usize> {
        let conn = self.conns.get(&id)?;
        if conn.caller.privileged || conn.kind != ConnKind::Domain {
            return None;
        }
        let quotas = quotas_for(&self.domains, &self.config.quotas, conn.caller.domid);
        match quotas.hard(Quota::Outstanding) {
            0 => None,
            n => Some(n as usize),
        }
    }

    /// A connection's output queue together with the platform, for the
    /// frontend that copies one into the other's ring.
    pub fn output_and_platform(&mut self, id: ConnId) -> (Option<&mut OutQueue>, &mut P) {
        (self.conns.get_mut(&id).map(|c| &mut c.out), &mut self.platform)
    }

    /// The ring connections of introduced domains.
    pub fn domain_conns(&self) -> Vec<ConnId> {
        self.domains.values().filter(|d| d.introduced).filter_map(|d| d.conn).collect()
    }

    /// Whether an event of `len` bytes still fits the output bound of a
    /// connection: an unprivileged domain's queued output may not exceed
    /// its `memory` quota (C refuses the allocation, so the event is lost
    /// to that guest only; `Err` says by how much). Replies are bounded by
    /// `outstanding` instead.
    pub(super) fn event_fits(&self, id: ConnId, len: usize) -> Result<(), QuotaHit> {
        let Some(conn) = self.conns.get(&id) else { return Ok(()) };
        if conn.caller.privileged || conn.kind != ConnKind::Domain {
            return Ok(());
        }
        let quotas = quotas_for(&self.domains, &self.config.quotas, conn.caller.domid);
        let value = conn.out.bytes() + len;
        match quotas.hard(Quota::Memory) {
            0 => Ok(()),
            max if value <= max as usize => Ok(()),
            max => Err(QuotaHit { quota: Quota::Memory, value, limit: max }),
        }
    }
}
