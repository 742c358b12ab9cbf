//! Quotas and limits of C xenstored (PROTOCOL.md §9.1), by their C names.

use core::fmt::Write as _;

use alloc::string::String;

/// One quota of §9.1. The value 0 disables its check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Quota {
    /// Nodes owned by the domain.
    Nodes,
    /// Watches of the connection.
    Watches,
    /// Replies and events queued but not yet consumed.
    Outstanding,
    /// Bytes accounted to the domain.
    Memory,
    /// Concurrently open transactions.
    Transactions,
    /// Distinct nodes accessed in one transaction.
    TransactionNodes,
    /// Entries in a SET_PERMS request.
    NodePermissions,
    /// Checked path length (§3.3).
    PathMax,
    /// Size of a node: 16 + 8 × entries + value + Σ(child name + 1).
    NodeSize,
}

impl Quota {
    /// In the order C lists them (GET_QUOTA with an empty payload).
    pub const ALL: [Quota; 9] = [
        Quota::Nodes,
        Quota::Watches,
        Quota::Outstanding,
        Quota::Memory,
        Quota::Transactions,
        Quota::TransactionNodes,
        Quota::NodePermissions,
        Quota::PathMax,
        Quota::NodeSize,
    ];

    /// C's name (GET/SET_QUOTA, CONTROL `quota`).
    pub fn name(self) -> &'static str {
        match self {
            Quota::Nodes => "nodes",
            Quota::Watches => "watches",
            Quota::Outstanding => "outstanding",
            Quota::Memory => "memory",
            Quota::Transactions => "transactions",
            Quota::TransactionNodes => "transaction-nodes",
            Quota::NodePermissions => "node-permissions",
            Quota::PathMax => "path-max",
            Quota::NodeSize => "node-size",
        }
    }

    /// The quota C calls `name`.
    pub fn from_name(name: &[u8]) -> Option<Quota> {
        Quota::ALL.into_iter().find(|q| q.name().as_bytes() == name)
    }

    /// Whether the quota bounds something a domain holds (so that it has a
    /// current use to show), rather than the size of one request.
    pub fn is_held(self) -> bool {
        matches!(self, Quota::Nodes | Quota::Watches | Quota::Outstanding | Quota::Memory | Quota::Transactions)
    }

    /// What the quota counts, for messages: "2100 bytes of a node".
    pub fn unit(self) -> &'static str {
        match self {
            Quota::Nodes => "nodes owned",
            Quota::Watches => "watches",
            Quota::Outstanding => "requests outstanding",
            Quota::Memory => "bytes of queued events",
            Quota::Transactions => "open transactions",
            Quota::TransactionNodes => "nodes accessed in the transaction",
            Quota::NodePermissions => "permission entries",
            Quota::PathMax => "bytes of path",
            Quota::NodeSize => "bytes of a node",
        }
    }

    /// C's default hard value.
    pub fn default_hard(self) -> u32 {
        match self {
            Quota::Nodes => 1000,
            Quota::Watches => 128,
            Quota::Outstanding => 20,
            Quota::Memory => 2_621_440,
            Quota::Transactions => 10,
            Quota::TransactionNodes => 1024,
            Quota::NodePermissions => 5,
            Quota::PathMax => 2048,
            Quota::NodeSize => 2048,
        }
    }
}

/// A request refused by a quota: which one, what the request would have
/// brought the count or size to (`value`, compared with the HEAD boundary
/// rule: refused at `value ≥ limit`), and the limit. It travels in the
/// error ([`crate::Error::Quota`]) up to the core, which reports it to the
/// frontend ([`crate::Core::take_quota_events`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaHit {
    /// The quota.
    pub quota: Quota,
    /// The count or size the request would have brought it to.
    pub value: usize,
    /// The limit it hit.
    pub limit: u32,
}

impl core::fmt::Display for QuotaHit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} quota: {} {} with this request, limit {}",
            self.quota.name(),
            self.value,
            self.quota.unit(),
            self.limit
        )
    }
}

/// A quota name as GET/SET_QUOTA address it: hard, or `soft-<name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaName {
    /// The quota.
    pub quota: Quota,
    /// Its soft (warning) value rather than its hard one.
    pub soft: bool,
}

impl QuotaName {
    /// A name GET/SET_QUOTA may use with `table`: hard, or the soft variant
    /// of a quota that has one.
    pub fn parse(name: &[u8], table: &QuotaTable) -> Option<QuotaName> {
        QuotaName::from_name(name).filter(|n| !n.soft || table.soft(n.quota).is_some())
    }

    /// `nodes` or `soft-nodes`, whatever the quota (saved state names
    /// them so).
    pub fn from_name(name: &[u8]) -> Option<QuotaName> {
        match name.strip_prefix(b"soft-") {
            Some(soft) => Quota::from_name(soft).map(|quota| QuotaName { quota, soft: true }),
            None => Quota::from_name(name).map(|quota| QuotaName { quota, soft: false }),
        }
    }
}

impl core::fmt::Display for QuotaName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let prefix = if self.soft { "soft-" } else { "" };
        write!(f, "{prefix}{}", self.quota.name())
    }
}

/// Hard values, and soft values where a quota has one (only `memory` by
/// default). Indexed by `Quota as usize`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaTable {
    hard: [u32; 9],
    soft: [Option<u32>; 9],
}

impl Default for QuotaTable {
    fn default() -> QuotaTable {
        let mut soft = [None; 9];
        soft[Quota::Memory as usize] = Some(2_097_152);
        QuotaTable { hard: Quota::ALL.map(Quota::default_hard), soft }
    }
}

impl QuotaTable {
    /// The hard value: a request reaching it is refused (0: no limit).
    pub fn hard(&self, q: Quota) -> u32 {
        self.hard[q as usize]
    }

    /// The soft value, where the quota has one.
    pub fn soft(&self, q: Quota) -> Option<u32> {
        self.soft[q as usize]
    }

    /// The value `name` addresses (a missing soft value reads as 0).
    pub fn get(&self, name: QuotaName) -> u32 {
        if name.soft { self.soft(name.quota).unwrap_or(0) } else { self.hard(name.quota) }
    }

    /// Sets the value `name` addresses.
    pub fn set(&mut self, name: QuotaName, value: u32) {
        if name.soft {
            self.soft[name.quota as usize] = Some(value);
        } else {
            self.hard[name.quota as usize] = value;
        }
    }

    /// Every value the table holds: each quota's hard value, then its soft
    /// one where it has one (what checkpoints and live-update streams keep).
    pub fn values(&self) -> impl Iterator<Item = (QuotaName, u32)> + '_ {
        Quota::ALL.into_iter().flat_map(move |quota| {
            let hard = (QuotaName { quota, soft: false }, self.hard(quota));
            let soft = self.soft(quota).map(|v| (QuotaName { quota, soft: true }, v));
            core::iter::once(hard).chain(soft)
        })
    }

    /// Sets a soft value, giving the quota a soft variant if it had none.
    pub fn set_soft(&mut self, q: Quota, value: u32) {
        self.soft[q as usize] = Some(value);
    }

    /// Whether `count` (the value after the request) is refused: the HEAD
    /// boundary rule, "≥ quota", with 0 disabling the check.
    pub fn exceeded(&self, q: Quota, count: usize) -> bool {
        let limit = self.hard(q);
        limit != 0 && count >= limit as usize
    }

    /// [`QuotaTable::exceeded`] as a result: the hit, if `value` is refused.
    pub fn check(&self, q: Quota, value: usize) -> Result<(), QuotaHit> {
        if self.exceeded(q, value) { Err(QuotaHit { quota: q, value, limit: self.hard(q) }) } else { Ok(()) }
    }

    /// The names GET_QUOTA lists: every hard name, and `soft-<name>` right
    /// after each quota that has a soft variant.
    pub fn names(&self) -> String {
        let mut s = String::new();
        for q in Quota::ALL {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(q.name());
            if self.soft(q).is_some() {
                let _ = write!(s, " soft-{}", q.name());
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_c_order() {
        assert_eq!(
            QuotaTable::default().names(),
            "nodes watches outstanding memory soft-memory transactions transaction-nodes node-permissions path-max node-size"
        );
    }

    #[test]
    fn boundary_rule() {
        let t = QuotaTable::default();
        assert!(!t.exceeded(Quota::Watches, 127));
        assert!(t.exceeded(Quota::Watches, 128));
        let mut t = t;
        t.set(QuotaName { quota: Quota::Watches, soft: false }, 0);
        assert!(!t.exceeded(Quota::Watches, 1_000_000));
    }

    #[test]
    fn check_reports_what_was_hit() {
        let t = QuotaTable::default();
        assert_eq!(t.check(Quota::Watches, 127), Ok(()));
        let hit = t.check(Quota::Watches, 128).expect_err("refused at the limit");
        assert_eq!(hit, QuotaHit { quota: Quota::Watches, value: 128, limit: 128 });
        assert_eq!(alloc::format!("{hit}"), "watches quota: 128 watches with this request, limit 128");
    }

    #[test]
    fn soft_names() {
        let t = QuotaTable::default();
        assert_eq!(QuotaName::parse(b"soft-memory", &t), Some(QuotaName { quota: Quota::Memory, soft: true }));
        assert_eq!(QuotaName::parse(b"soft-nodes", &t), None);
        assert_eq!(QuotaName::parse(b"nosuch", &t), None);
    }
}
