//! CONTROL (DEBUG) sub-commands (PROTOCOL.md §12), with C xenstored's
//! texts where clients or operators read them.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use engine::DomId;
use wire::{parse_lenient_u32, split_args};

use super::{Core, parse_domid_arg};
use crate::conn::ConnId;
use crate::domain::Platform;
use crate::error::{Error, Result};
use crate::quota::{Quota, QuotaName, QuotaTable};
use crate::reply::{ok, text};

/// The trace switches of C's `log` command.
#[derive(Debug, Clone, Default)]
pub(super) struct Trace {
    on: bool,
    switches: [bool; 5],
}

impl Trace {
    const NAMES: [&'static str; 5] = ["obj", "io", "wrl", "acc", "tdb"];

    fn index(name: &[u8]) -> Option<usize> {
        Self::NAMES.iter().position(|n| n.as_bytes() == name)
    }
}

const HELP: &str = "check\t\n\
log\ton|off|+<switch>|-<switch>\n\
live-update\t[-c <cmdline>] [-F] [-t <timeout>] <file>\n    Default timeout is 60 seconds.\n\
logfile\t<file>\n\
print\t<string>\n\
quota\t[set <name> <val>|<domid>|max [-r]]\n\
quota-soft\t[set <name> <val>]\n\
help\t\n";

fn describe(q: Quota) -> &'static str {
    match q {
        Quota::Nodes => "Nodes per domain",
        Quota::Watches => "Watches per domain",
        Quota::Transactions => "Transactions per domain",
        Quota::Outstanding => "Outstanding requests per domain",
        Quota::TransactionNodes => "Max. number of accessed nodes per transaction",
        Quota::Memory => "Total Xenstore memory per domain (error level)",
        Quota::NodeSize => "Max. size of a node",
        Quota::PathMax => "Max. length of a node path",
        Quota::NodePermissions => "Max. number of permissions per node",
    }
}

/// The order C prints its quota table in.
const TABLE_ORDER: [Quota; 9] = [
    Quota::Nodes,
    Quota::Watches,
    Quota::Transactions,
    Quota::Outstanding,
    Quota::TransactionNodes,
    Quota::Memory,
    Quota::NodeSize,
    Quota::PathMax,
    Quota::NodePermissions,
];

/// The global quota table, in C's format; with `highest`, each quota a
/// domain holds is followed by the highest current use among unprivileged
/// domains and whose it is.
fn quota_table(table: &QuotaTable, soft: bool, highest: &BTreeMap<DomId, Usage>) -> String {
    let mut s = String::from("Quota settings:\n");
    for q in TABLE_ORDER {
        let (value, what) = if soft {
            match table.soft(q) {
                Some(v) => (v, describe(q).replace("(error level)", "(warning level)")),
                None => continue,
            }
        } else {
            (table.hard(q), String::from(describe(q)))
        };
        let name = if q == Quota::NodePermissions { "permissions" } else { q.name() };
        let _ = write!(s, "{name:<17}: {value:>8} {what}");
        let top = highest
            .iter()
            .filter_map(|(d, u)| Some((u.get(q)?, *d)))
            .max_by_key(|(used, d)| (*used, core::cmp::Reverse(*d)));
        if let Some((used, domid)) = top.filter(|(used, _)| *used > 0) {
            let _ = write!(s, "; highest use {used} (domain {})", domid.0);
        }
        s.push('\n');
    }
    s
}

/// Current use of the quotas a domain holds.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    nodes: usize,
    watches: usize,
    transactions: usize,
    outstanding: usize,
    memory: usize,
}

impl Usage {
    fn get(&self, q: Quota) -> Option<usize> {
        match q {
            Quota::Nodes => Some(self.nodes),
            Quota::Watches => Some(self.watches),
            Quota::Transactions => Some(self.transactions),
            Quota::Outstanding => Some(self.outstanding),
            Quota::Memory => Some(self.memory),
            _ => None,
        }
    }

    fn max(self, other: Usage) -> Usage {
        Usage {
            nodes: self.nodes.max(other.nodes),
            watches: self.watches.max(other.watches),
            transactions: self.transactions.max(other.transactions),
            outstanding: self.outstanding.max(other.outstanding),
            memory: self.memory.max(other.memory),
        }
    }
}

/// "use of limit" lines for the quotas a domain holds, with `limits`.
fn usage_text(title: &str, u: &Usage, limits: &QuotaTable) -> String {
    let mut s = format!("{title}:\n");
    for q in TABLE_ORDER.into_iter().filter(|q| q.is_held()) {
        let used = u.get(q).unwrap_or(0);
        let _ = match limits.hard(q) {
            0 => writeln!(s, "{:<16}: {used:>8} (no limit)", q.name()),
            limit => writeln!(s, "{:<16}: {used:>8} of {limit:>8}", q.name()),
        };
    }
    s
}

impl<P: Platform> Core<P> {
    /// Current use by each of `domids`: one walk of the tree for all of
    /// them (node memory), not one per domain.
    fn usages(&self, domids: &[DomId]) -> BTreeMap<DomId, Usage> {
        let snap = self.store.snapshot();
        let mut all: BTreeMap<DomId, Usage> =
            domids.iter().map(|&d| (d, Usage { nodes: snap.owned_count(d) as usize, ..Usage::default() })).collect();
        for conn in self.conns.values() {
            if let Some(u) = all.get_mut(&conn.domid()) {
                u.watches += conn.watches;
                u.transactions += conn.open_transactions();
                u.outstanding += conn.out.len();
                u.memory += conn.out.bytes();
            }
        }
        // Node memory as C accounts it: header, permissions, value, child
        // names, path.
        for (path, node) in snap.iter_tree() {
            if let Some(u) = all.get_mut(&node.perms().owner()) {
                u.memory += 16 + 8 * node.perms().entries().len() + node.value().len() + path.as_str().len();
                u.memory += node.children().wire_len();
            }
        }
        all
    }

    /// The domains quotas apply to: every tracked one but the privileged.
    fn unprivileged_domains(&self) -> Vec<DomId> {
        self.domains.keys().copied().filter(|d| *d != self.config.priv_domid).collect()
    }

    pub(super) fn control(&mut self, id: ConnId, payload: &[u8]) -> Result<Vec<u8>> {
        let args: Vec<&[u8]> = split_args(payload).collect();
        let (&cmd, rest) = args.split_first().ok_or(Error::BadRequest)?;
        match (cmd, rest) {
            (b"help", []) => Ok(text(HELP)),
            (b"check", []) => match self.store.snapshot().check_consistent() {
                Ok(()) => Ok(ok()),
                Err(e) => {
                    self.logs.push(format!("check: {e}"));
                    Ok(text(&format!("store inconsistent: {e}")))
                }
            },
            (b"print", [msg]) => {
                self.logs.push(String::from_utf8_lossy(msg).into_owned());
                Ok(ok())
            }
            (b"log", []) => {
                let mut s = String::new();
                for (i, name) in Trace::NAMES.iter().enumerate() {
                    let _ = writeln!(s, "{name}: {}", if self.trace.switches[i] { "on" } else { "off" });
                }
                Ok(text(&s))
            }
            (b"log", [b"on"]) => {
                self.trace.on = true;
                Ok(ok())
            }
            (b"log", [b"off"]) => {
                self.trace.on = false;
                Ok(ok())
            }
            (b"log", [switch]) => {
                let (on, name) = match switch.split_first() {
                    Some((b'+', name)) => (true, name),
                    Some((b'-', name)) => (false, name),
                    _ => return Err(Error::BadRequest),
                };
                let i = Trace::index(name).ok_or(Error::BadRequest)?;
                self.trace.switches[i] = on;
                Ok(ok())
            }
            (b"logfile", [file]) => {
                self.logs.push(format!("trace file requested: {}", String::from_utf8_lossy(file)));
                Ok(ok())
            }
            (b"quota", []) => {
                let highest = self.usages(&self.unprivileged_domains());
                Ok(text(&quota_table(&self.config.quotas, false, &highest)))
            }
            (b"quota-soft", []) => Ok(text(&quota_table(&self.config.quotas, true, &BTreeMap::new()))),
            (b"quota" | b"quota-soft", [b"set", name, value]) => {
                let soft = cmd == b"quota-soft";
                let quota = Quota::from_name(name).ok_or(Error::BadRequest)?;
                let value = parse_lenient_u32(value);
                if value == 0 || value == u32::MAX {
                    return Err(Error::BadRequest);
                }
                if soft {
                    self.config.quotas.set_soft(quota, value);
                } else {
                    self.config.quotas.set(QuotaName { quota, soft: false }, value);
                }
                Ok(ok())
            }
            (b"quota", [b"max", flags @ ..]) if flags.is_empty() || flags == [b"-r"] => {
                // The largest current use over unprivileged domains.
                let max = self.usages(&self.unprivileged_domains()).into_values().fold(Usage::default(), Usage::max);
                Ok(text(&usage_text("Max. quota usage", &max, &self.config.quotas)))
            }
            (b"quota", [domid]) => {
                let domid = parse_domid_arg(domid)?;
                let Some(d) = self.domains.get(&domid) else { return Err(Error::NotFound) };
                let u = self.usages(&[domid]).remove(&domid).unwrap_or_default();
                Ok(text(&usage_text(&format!("Domain {}", domid.0), &u, &d.quotas)))
            }
            (b"live-update", args) => self.live_update_control(id, args),
            _ => Err(Error::BadRequest),
        }
    }
}
