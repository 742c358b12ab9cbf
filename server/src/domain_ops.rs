//! Domain operations (PROTOCOL.md §2.2, §8): INTRODUCE, RELEASE,
//! IS_DOMAIN_INTRODUCED, RESUME, SET_TARGET, GET/SET_FEATURE, GET/SET_QUOTA.

use alloc::format;
use alloc::vec::Vec;

use engine::{Change, Commit, DomId, Path};
use wire::{one_arg, parse_lenient_u32, split_args};

use crate::protocol::{Core, parse_domid_arg};
use crate::domain::{Domain, Platform, features};
use crate::error::{Error, Result};
use crate::ops::ok;
use crate::quota::QuotaName;

impl<P: Platform> Core<P> {
    /// The record of `domid`, created (with the global quotas) if the
    /// hypervisor knows the domain; ENOENT otherwise.
    fn tracked(&mut self, domid: DomId) -> Result<&mut Domain> {
        if !self.domains.contains_key(&domid) && !self.platform.domain_exists(domid) {
            return Err(Error::NotFound);
        }
        let quotas = self.config.quotas.clone();
        Ok(self.domains.entry(domid).or_insert_with(|| Domain::new(domid, quotas)))
    }

    fn introduced(&self, domid: DomId) -> Option<&Domain> {
        self.domains.get(&domid).filter(|d| d.introduced)
    }

    pub(crate) fn introduce(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        let args: Vec<&[u8]> = split_args(payload).collect();
        let [domid, gfn, port, ..] = args[..] else { return Err(Error::BadRequest) };
        let domid = parse_domid_arg(domid)?;
        let gfn = u64::from(parse_lenient_u32(gfn));
        let port = parse_lenient_u32(port);
        if port == 0 {
            return Err(Error::BadRequest);
        }
        if let Some(existing) = self.introduced(domid) {
            // Re-INTRODUCE: rebind the event channel and reset the
            // connection; no @introduceDomain (§8.1 steps 2–3).
            if let Some(conn) = existing.conn {
                self.platform.rebind(conn, domid, port)?;
                self.watches.remove_conn(conn);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.reset();
                    c.watches = 0;
                }
            }
            if let Some(d) = self.domains.get_mut(&domid) {
                d.port = port;
            }
            return Ok(ok());
        }
        self.attach_domain(domid, gfn, port)?;
        if domid != self.config.priv_domid {
            self.fire_special("@introduceDomain", domid);
        }
        Ok(ok())
    }

    /// Gives `domid` a ring connection through the platform and records
    /// it as introduced (INTRODUCE of a new domain; the store domain's own
    /// ring at start-up).
    pub(crate) fn attach_domain(&mut self, domid: DomId, gfn: u64, port: u32) -> Result<crate::conn::ConnId> {
        let conn = self.connect_domain(domid);
        let features = self.conns.get(&conn).map_or(features::DEFAULT, |c| c.features);
        if let Err(e) = self.platform.attach(conn, domid, gfn, port, features) {
            self.disconnect(conn);
            return Err(e);
        }
        let quotas = self.config.quotas.clone();
        let d = self.domains.entry(domid).or_insert_with(|| Domain::new(domid, quotas));
        d.introduced = true;
        d.conn = Some(conn);
        d.gfn = gfn;
        d.port = port;
        d.shutdown_reported = false;
        Ok(conn)
    }

    /// RELEASE's checks, shared with RESUME (§2.2).
    fn releasable(&self, payload: &[u8]) -> Result<DomId> {
        let domid = parse_domid_arg(one_arg(payload).ok_or(Error::BadRequest)?)?;
        if domid == self.config.store_domid || domid == self.config.priv_domid {
            return Err(Error::BadRequest);
        }
        self.introduced(domid).ok_or(Error::NotFound)?;
        Ok(domid)
    }

    pub(crate) fn release(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        let domid = self.releasable(payload)?;
        let conn = self.introduced(domid).and_then(|d| d.conn).ok_or(Error::BadRequest)?;
        self.destroy_domain(domid, conn);
        Ok(ok())
    }

    /// Everything that goes away with a domain (§8.2, §8.6).
    pub fn destroy_domain(&mut self, domid: DomId, conn: crate::conn::ConnId) {
        // Its watches first, so it gets no events for its own cleanup.
        self.watches.remove_conn(conn);
        self.disconnect(conn);
        let commit = self.forget_domain_nodes(domid);
        self.fire(&commit);
        self.journal_domains();
        self.platform.detach(conn, domid);
        self.domains.remove(&domid);
        self.fire_special("@releaseDomain", domid);
    }

    /// Deletes (or with `keep_orphans` hands to the control domain) the
    /// nodes `domid` owns and strips ACL entries naming it from every node.
    /// Only the deletions fire watches.
    fn forget_domain_nodes(&mut self, domid: DomId) -> Commit {
        let (keep, priv_domid) = (self.config.keep_orphans, self.config.priv_domid);
        let result = self.store.update(|tx| {
            let snap = tx.view().clone();
            let mut owned: Vec<Path> = Vec::new();
            for (path, node) in snap.iter_tree() {
                if node.perms().owner() != domid || path.is_root() {
                    continue;
                }
                if keep {
                    tx.set_perms(&path, node.perms().with_owner(priv_domid))?;
                } else if !owned.last().is_some_and(|top| path.is_under(top)) {
                    owned.push(path);
                }
            }
            for path in &owned {
                tx.remove(path)?;
            }
            let stale: Vec<(Path, engine::Perms)> = tx
                .view()
                .iter_tree()
                .chain(tx.view().special_nodes().map(|(p, n)| (p.clone(), n)))
                .filter_map(|(p, n)| n.perms().without_acl_for(domid).map(|perms| (p, perms)))
                .collect();
            for (path, perms) in stale {
                tx.set_perms(&path, perms)?;
            }
            Ok::<_, engine::EngineError>(())
        });
        match result {
            Ok(((), mut commit)) => {
                // Everything is journaled; only removals fire watches.
                if let Some(j) = self.journal.as_mut()
                    && !commit.changes.is_empty() {
                        j.push(crate::protocol::JournalEntry::Commit(commit.clone()));
                    }
                commit.changes.retain(|c| matches!(c, Change::Removed { .. }));
                commit
            }
            // Nothing above can fail on a consistent tree; if it did, the
            // update was not published and there is nothing to fire.
            Err(e) => {
                self.logs.push(format!("cleanup of domain {domid} failed: {e}"));
                let s = self.store.snapshot();
                Commit { previous_generation: s.next_generation(), snapshot: s, changes: Vec::new() }
            }
        }
    }

    pub(crate) fn is_domain_introduced(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        let domid = parse_domid_arg(one_arg(payload).ok_or(Error::BadRequest)?)?;
        let yes = domid == DomId::SELF || self.introduced(domid).is_some();
        Ok(if yes { b"T\0".to_vec() } else { b"F\0".to_vec() })
    }

    pub(crate) fn resume(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        let domid = self.releasable(payload)?;
        if let Some(d) = self.domains.get_mut(&domid) {
            d.shutdown_reported = false;
        }
        Ok(ok())
    }

    pub(crate) fn set_target(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        let args: Vec<&[u8]> = split_args(payload).collect();
        let [domid, target, ..] = args[..] else { return Err(Error::BadRequest) };
        let (domid, target) = (parse_domid_arg(domid)?, parse_domid_arg(target)?);
        let stub = self.introduced(domid).ok_or(Error::NotFound)?.conn;
        let target_conn = self.introduced(target).ok_or(Error::NotFound)?.conn;
        let (Some(stub), Some(_)) = (stub, target_conn) else { return Err(Error::BadRequest) };
        let conn = self.conns.get_mut(&stub).ok_or(Error::BadRequest)?;
        conn.caller.target = Some(target);
        Ok(ok())
    }

    pub(crate) fn get_feature(&mut self, id: crate::conn::ConnId, payload: &[u8]) -> Result<Vec<u8>> {
        let conn = self.conns.get(&id).ok_or(Error::NotFound)?;
        let args: Vec<&[u8]> = split_args(payload).collect();
        let mask = match args[..] {
            [] => conn.features,
            [domid] => {
                if !conn.caller.privileged {
                    return Err(Error::Denied);
                }
                let domid = parse_domid_arg(domid)?;
                self.tracked(domid)?.features
            }
            _ => return Err(Error::BadRequest),
        };
        Ok(format!("{mask}\0").into_bytes())
    }

    pub(crate) fn set_feature(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        let args: Vec<&[u8]> = split_args(payload).collect();
        let [domid, value] = args[..] else { return Err(Error::BadRequest) };
        let domid = parse_domid_arg(domid)?;
        let value = parse_lenient_u32(value);
        let d = self.tracked(domid)?;
        if d.introduced {
            return Err(Error::Busy);
        }
        if value & !features::DEFAULT != 0 {
            return Err(Error::BadRequest);
        }
        d.features = value;
        Ok(ok())
    }

    pub(crate) fn get_quota(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        let args: Vec<&[u8]> = split_args(payload).collect();
        let value = match args[..] {
            [] => return Ok(format!("{}\0", self.config.quotas.names()).into_bytes()),
            [name] => {
                let name = QuotaName::parse(name, &self.config.quotas).ok_or(Error::BadRequest)?;
                self.config.quotas.get(name)
            }
            [domid, name] => {
                let domid = parse_domid_arg(domid)?;
                let name = QuotaName::parse(name, &self.config.quotas).ok_or(Error::BadRequest)?;
                self.tracked(domid)?.quotas.get(name)
            }
            _ => return Err(Error::BadRequest),
        };
        Ok(format!("{value}\0").into_bytes())
    }

    pub(crate) fn set_quota(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        let args: Vec<&[u8]> = split_args(payload).collect();
        let (domid, name, value) = match args[..] {
            [name, value] => (None, name, value),
            [domid, name, value] => (Some(parse_domid_arg(domid)?), name, value),
            _ => return Err(Error::BadRequest),
        };
        let name = QuotaName::parse(name, &self.config.quotas).ok_or(Error::BadRequest)?;
        let value = parse_lenient_u32(value);
        if value == u32::MAX {
            return Err(Error::BadRequest);
        }
        match domid {
            None => self.config.quotas.set(name, value),
            Some(domid) => self.tracked(domid)?.quotas.set(name, value),
        }
        Ok(ok())
    }
}
