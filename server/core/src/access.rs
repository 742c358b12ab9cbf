//! Who is asking, and what they may do to a node (PROTOCOL.md §5.2–5.6).

use engine::{DomId, Perms};

/// The identity a request is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The domain it acts as.
    pub domid: DomId,
    /// The control domain, or a socket of a dom0 daemon (§5.3): bypasses
    /// every permission check and every quota.
    pub privileged: bool,
    /// Set by SET_TARGET: this stub domain acts for `target` (§5.6).
    pub target: Option<DomId>,
}

/// What a caller may do to one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rights {
    pub read: bool,
    pub write: bool,
    pub owner: bool,
}

/// The right an operation needs; decides the error of §5.4 too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
    /// SET_PERMS: write and ownership on the node; for hiding a missing
    /// node, write *or* ownership on the ancestor.
    WriteOwner,
}

impl Rights {
    const ALL: Rights = Rights { read: true, write: true, owner: true };

    /// Whether these rights satisfy `need` on the node itself.
    pub fn allow(self, need: Need) -> bool {
        match need {
            Need::Read => self.read,
            Need::Write => self.write,
            Need::WriteOwner => self.write && self.owner,
        }
    }

    /// Whether these rights, held on the nearest existing ancestor, let the
    /// caller learn that a node is missing (§5.4).
    pub fn reveal(self, need: Need) -> bool {
        match need {
            Need::WriteOwner => self.write || self.owner,
            other => self.allow(other),
        }
    }
}

impl Caller {
    /// A caller that bypasses every check (dom0 socket, tests).
    pub const fn privileged(domid: DomId) -> Caller {
        Caller { domid, privileged: true, target: None }
    }

    /// An unprivileged domain.
    pub const fn domain(domid: DomId) -> Caller {
        Caller { domid, privileged: false, target: None }
    }

    fn matches(&self, domid: DomId) -> bool {
        domid == self.domid || Some(domid) == self.target || domid == DomId::ANY
    }

    /// The access decision of §5.2: owner (or its SET_TARGET stub) gets
    /// everything; otherwise the first matching ACL entry decides; otherwise
    /// the owner entry's letter is the default.
    pub fn rights(&self, perms: &Perms) -> Rights {
        if self.privileged || self.matches(perms.owner()) {
            return Rights::ALL;
        }
        let entries = perms.entries();
        let access = entries[1..].iter().find(|p| self.matches(p.domid)).unwrap_or(&entries[0]).access;
        Rights { read: access.can_read(), write: access.can_write(), owner: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::{Access, Perm};

    fn perms(entries: &[(Access, u16)]) -> Perms {
        let v: alloc::vec::Vec<Perm> = entries.iter().map(|&(a, d)| Perm::new(a, DomId(d))).collect();
        Perms::new(&v).expect("non-empty")
    }

    #[test]
    fn owner_has_everything_whatever_its_letter() {
        let r = Caller::domain(DomId(5)).rights(&perms(&[(Access::None, 5)]));
        assert!(r.read && r.write && r.owner);
    }

    #[test]
    fn owner_letter_is_the_default_and_first_match_wins() {
        let p = perms(&[(Access::Read, 0)]);
        assert_eq!(Caller::domain(DomId(7)).rights(&p), Rights { read: true, write: false, owner: false });
        let p = perms(&[(Access::Both, 0), (Access::None, 7)]);
        assert!(!Caller::domain(DomId(7)).rights(&p).read);
        assert!(Caller::domain(DomId(8)).rights(&p).read);
        let p = perms(&[(Access::None, 0), (Access::Read, 7), (Access::Both, 7)]);
        assert_eq!(Caller::domain(DomId(7)).rights(&p), Rights { read: true, write: false, owner: false });
    }

    #[test]
    fn target_acts_for_its_domain_and_any_matches_all() {
        let stub = Caller { domid: DomId(6), privileged: false, target: Some(DomId(5)) };
        assert!(stub.rights(&perms(&[(Access::None, 5)])).owner);
        assert!(stub.rights(&perms(&[(Access::None, 0), (Access::Both, 5)])).write);
        let any = perms(&[(Access::None, 0), (Access::Read, 0x7FF5)]);
        assert!(Caller::domain(DomId(42)).rights(&any).read);
        assert!(Caller::privileged(DomId(0)).rights(&perms(&[(Access::None, 3)])).owner);
    }
}
