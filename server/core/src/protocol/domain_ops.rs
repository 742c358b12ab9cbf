//! Domain operations (PROTOCOL.md §2.2, §8): INTRODUCE, RELEASE,
//! IS_DOMAIN_INTRODUCED, RESUME, SET_TARGET, GET/SET_FEATURE, GET/SET_QUOTA.

use alloc::format;
use alloc::vec::Vec;

use engine::{Change, Commit, DomId, Path};
use wire::{one_arg, parse_lenient_u32, split_args};

use super::{Core, JournalEntry, parse_domid_arg};
use crate::conn::ConnId;
use crate::domain::{Domain, Platform, RingAttach, RingStart};
use crate::error::{Error, Result};
use crate::features;
use crate::quota::QuotaName;
use crate::reply::ok;

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

    pub(super) fn introduce(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
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
        self.attach_domain(domid, gfn, port, RingStart::Reset)?;
        if domid != self.config.priv_domid {
            self.fire_special("@introduceDomain", domid);
        }
        Ok(ok())
    }

    /// Gives `domid` a ring connection through the platform and records
    /// it as introduced (INTRODUCE of a new domain; the store domain's own
    /// ring at start-up).
    pub(super) fn attach_domain(&mut self, domid: DomId, gfn: u64, port: u32, start: RingStart) -> Result<ConnId> {
        let conn = self.connect_domain(domid);
        let features = self.conns.get(&conn).map_or(features::DEFAULT, |c| c.features);
        if let Err(e) = self.platform.attach(RingAttach { conn, domid, gfn, port, features, start }) {
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

    pub(super) fn release(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        let domid = self.releasable(payload)?;
        let conn = self.introduced(domid).and_then(|d| d.conn).ok_or(Error::BadRequest)?;
        self.destroy_domain(domid, conn);
        Ok(ok())
    }

    /// Everything that goes away with a domain (§8.2, §8.6).
    pub(super) fn destroy_domain(&mut self, domid: DomId, conn: ConnId) {
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
            let snap = tx.view().snapshot().cloned().ok_or(engine::EngineError::NotWholeVersion)?;
            let mut owned: Vec<Path> = Vec::new();
            let mut handed_over: Vec<(Path, engine::Perms)> = Vec::new();
            snap.for_each_in_tree(|path, node| {
                // (A stored path is always valid.)
                if node.perms().owner() != domid || path == "/" {
                    return;
                }
                let Ok(path) = Path::new(path) else { return };
                if keep {
                    handed_over.push((path, node.perms().with_owner(priv_domid)));
                } else if !owned.last().is_some_and(|top| path.is_under(top)) {
                    owned.push(path);
                }
            });
            for (path, perms) in handed_over {
                tx.set_perms(&path, perms)?;
            }
            for path in &owned {
                tx.remove(path)?;
            }
            let view = tx.view().snapshot().cloned().ok_or(engine::EngineError::NotWholeVersion)?;
            let mut stale: Vec<(Path, engine::Perms)> = Vec::new();
            let mut strip = |p: &str, n: &engine::Node| {
                if let Some(perms) = n.perms().without_acl_for(domid)
                    && let Ok(p) = Path::new(p)
                {
                    stale.push((p, perms));
                }
            };
            view.for_each_in_tree(&mut strip);
            for (p, n) in view.special_nodes() {
                strip(p.as_str(), n);
            }
            for (path, perms) in stale {
                tx.set_perms(&path, perms)?;
            }
            Ok::<_, engine::EngineError>(())
        });
        match result {
            Ok(((), mut commit)) => {
                // Everything is journaled; only removals fire watches.
                if let Some(j) = self.journal.as_mut()
                    && !commit.changes.is_empty()
                {
                    j.push(JournalEntry::Commit(commit.clone()));
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

    pub(super) fn is_domain_introduced(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        let domid = parse_domid_arg(one_arg(payload).ok_or(Error::BadRequest)?)?;
        let yes = domid == DomId::SELF || self.introduced(domid).is_some();
        Ok(if yes { b"T\0".to_vec() } else { b"F\0".to_vec() })
    }

    pub(super) fn resume(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        let domid = self.releasable(payload)?;
        if let Some(d) = self.domains.get_mut(&domid) {
            d.shutdown_reported = false;
        }
        Ok(ok())
    }

    pub(super) fn set_target(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
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

    pub(super) fn get_feature(&mut self, id: ConnId, payload: &[u8]) -> Result<Vec<u8>> {
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

    pub(super) fn set_feature(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
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

    pub(super) fn get_quota(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
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

    pub(super) fn set_quota(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
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

#[cfg(test)]
mod tests {
    use crate::protocol::{Config, Core};
    use engine::DomId;
    use wire::Op;

    /// Sends one request from dom0's socket connection; panics on anything
    /// but an OK.
    fn ok(core: &mut Core<crate::NoRings>, conn: crate::ConnId, op: Op, payload: &[u8]) {
        let mut req = Vec::new();
        wire::encode(op, 1, 0, payload, &mut req);
        core.receive(conn, &req).expect("well-formed");
        let out = core.output(conn).expect("connected");
        let mut bytes = Vec::new();
        while let Some(front) = out.front() {
            bytes.extend_from_slice(front);
            let n = front.len();
            out.advance(n);
        }
        assert_eq!(&bytes[16..], b"OK\0", "{op:?} {}", String::from_utf8_lossy(payload));
    }

    #[test]
    fn release_with_keep_orphans_hands_nodes_to_dom0_and_strips_acls() {
        let mut core = Core::new(Config { keep_orphans: true, ..Config::default() });
        let c = core.connect_socket();
        ok(&mut core, c, Op::Introduce, b"5\x001234\x003\x00");
        ok(&mut core, c, Op::Write, b"/own5/sub\0v");
        ok(&mut core, c, Op::SetPerms, b"/own5\0n5\0r7\0");
        ok(&mut core, c, Op::SetPerms, b"/own5/sub\0b5\0");
        ok(&mut core, c, Op::Write, b"/acl\0v");
        ok(&mut core, c, Op::SetPerms, b"/acl\0n0\0r5\0b6\0");
        ok(&mut core, c, Op::Release, b"5\0");
        let snap = core.store.snapshot();
        let perms = |p: &str| snap.get(p).map(|n| n.perms().to_wire());
        // Kept, owned by dom0 now, other entries untouched.
        assert_eq!(perms("/own5").as_deref(), Some(&b"n0\0r7\0"[..]));
        assert_eq!(perms("/own5/sub").as_deref(), Some(&b"b0\0"[..]));
        assert_eq!(perms("/acl").as_deref(), Some(&b"n0\0b6\0"[..]));
        assert_eq!(snap.owned_count(DomId(5)), 0);
        snap.check_consistent().expect("consistent");
    }
}
