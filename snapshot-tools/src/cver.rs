//! Would a given C xenstored restore this stream? (MIGRATION-STREAM.md §1.7)
//!
//! Walks the records in file order the way the C reader would, and names
//! every rule it breaks (fatal or corrupting) and everything it would
//! silently drop. The first break is the answer to "why did LU fail".

use std::collections::HashSet;

use crate::model::{ConnectionKind, DOMID_INVALID};
use crate::read::{Item, Parsed, Problem, WatchExtLayout, parent_of, record_type_name, rtype};

/// C releases whose reader behaves differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum CVersion {
    /// 4.17–4.20: version 1 only; types 6, 7, 8 skipped.
    #[serde(rename = "4.17")]
    V417,
    /// 4.21: versions 1–2; DOMAIN understood.
    #[serde(rename = "4.21")]
    V421,
    /// 4.22/HEAD: GLOBAL_QUOTA and WATCH_EXT (buggy) understood.
    #[serde(rename = "4.22")]
    V422,
}

impl std::str::FromStr for CVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "4.17" | "4.18" | "4.19" | "4.20" => Ok(CVersion::V417),
            "4.21" => Ok(CVersion::V421),
            "4.22" | "head" | "HEAD" => Ok(CVersion::V422),
            other => Err(format!("unknown C version {other:?} (4.17, 4.21 or 4.22)")),
        }
    }
}

impl std::fmt::Display for CVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CVersion::V417 => "4.17",
            CVersion::V421 => "4.21",
            CVersion::V422 => "4.22",
        })
    }
}

/// One rule the C reader would trip over.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RuleBreak {
    /// File offset of the offending record.
    pub offset: u64,
    /// Rule label, e.g. "1.7 rule 3".
    pub rule: &'static str,
    /// What goes wrong.
    pub message: String,
}

/// Verdict for one C version.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CVerdict {
    /// Version checked.
    pub version: CVersion,
    /// True when no rule is broken.
    pub accepted: bool,
    /// Rules broken, in file order.
    pub breaks: Vec<RuleBreak>,
    /// Records C would skip or ignore (data lost, not fatal).
    pub dropped: Vec<RuleBreak>,
}

/// Checks `parsed` against the reader of C `version`.
pub fn check(parsed: &Parsed, version: CVersion) -> CVerdict {
    let snap = &parsed.snapshot;
    let mut breaks = Vec::new();
    let mut dropped = Vec::new();
    let mut brk = |offset: u64, rule: &'static str, message: String| breaks.push(RuleBreak { offset, rule, message });
    let mut drop = |offset: u64, rule: &'static str, message: String| dropped.push(RuleBreak { offset, rule, message });

    let ok_version = match version {
        CVersion::V417 => snap.version == 1,
        _ => (1..=2).contains(&snap.version),
    };
    if !ok_version {
        brk(8, "1.9", format!("stream version {} not supported by C {version}", snap.version));
    }
    if parsed.flags != 0 {
        brk(12, "1.2", format!("flags 0x{:x} differ from a little-endian host's 0", parsed.flags));
    }
    // Structural damage C does not check for: it reads out of bounds.
    for f in &parsed.findings {
        if matches!(
            f.problem,
            Problem::PastEndOfFile { .. }
                | Problem::LengthTooSmall { .. }
                | Problem::StringOverflow { .. }
                | Problem::ConnLengthMismatch { .. }
                | Problem::BadConnType(_)
        ) {
            brk(f.offset, "2.2", format!("C reads this record without bounds checks: {}", f.problem));
        }
        if matches!(f.problem, Problem::MissingEnd) && version != CVersion::V417 {
            brk(f.offset, "1.7 rule 8", "no END: the sequential reader fails at end of file".into());
        }
    }

    let mut global_seen = false;
    let mut conn_or_node_seen = false;
    let mut priv_seen = false;
    let mut conns: HashSet<u32> = HashSet::new();
    let mut domains: HashSet<u16> = HashSet::new();
    let mut paths: HashSet<&[u8]> = HashSet::new();
    for rec in &parsed.records {
        let at = rec.offset;
        match rec.item {
            Item::Global => global_seen = true,
            Item::GlobalQuota => match version {
                CVersion::V422 if conn_or_node_seen => {
                    brk(at, "1.7 rule 2", "GLOBAL_QUOTA_DATA after a CONNECTION or NODE".into())
                }
                CVersion::V422 => {}
                _ => drop(at, "1.4", format!("GLOBAL_QUOTA_DATA ignored by C {version}: global quotas lost")),
            },
            Item::Connection(i) => {
                conn_or_node_seen = true;
                let Some(c) = snap.connections.get(i) else {
                    continue;
                };
                conns.insert(c.conn_id);
                if let ConnectionKind::Ring { domid, target, .. } = c.kind {
                    if !global_seen {
                        brk(at, "1.7 rule 1", format!("ring CONNECTION (domain {domid}) before GLOBAL_DATA"));
                    }
                    if domid == 0 {
                        priv_seen = true;
                    }
                    domains.insert(domid);
                    if target != DOMID_INVALID {
                        domains.insert(target);
                    }
                }
            }
            Item::Watch(i, layout) => {
                let Some(w) = snap.watches.get(i) else {
                    continue;
                };
                if rec.rtype == rtype::WATCH_EXT {
                    if version != CVersion::V422 {
                        drop(at, "1.9", format!("WATCH_DATA_EXTENDED skipped by C {version}: watch lost"));
                        continue;
                    }
                    let how = match layout {
                        Some(WatchExtLayout::Bug422) => "the 4.22 reader takes depth from the path's first bytes",
                        _ => "the 4.22 reader expects strings at offset 10, not 12",
                    };
                    brk(at, "1.5.5", format!("WATCH_DATA_EXTENDED would be misread: {how}"));
                }
                if !conns.contains(&w.conn_id) {
                    brk(at, "1.7 rule 4", format!("WATCH conn-id {} unknown", w.conn_id));
                }
            }
            Item::Transaction(_) => drop(at, "1.5.6", "TRANSACTION_DATA ignored by every C reader".into()),
            Item::Node(i) => {
                conn_or_node_seen = true;
                let Some(n) = snap.nodes.get(i) else { continue };
                if !priv_seen {
                    brk(at, "1.7 rule 3", "NODE before privileged ring CONNECTION".into());
                    priv_seen = true; // report once
                }
                if n.conn_id != 0 {
                    brk(at, "1.5.7", format!("transaction NODE {:?} would be applied as committed", n.path_str()));
                }
                if let Some(owner) = n.owner() {
                    domains.insert(owner);
                }
                if n.is_special() {
                    continue;
                }
                if !paths.insert(&n.path) {
                    brk(at, "1.7 rule 6", format!("NODE {:?} twice: its children are unlinked", n.path_str()));
                }
                if let Some(parent) = parent_of(&n.path)
                    && parent != b"/"
                    && !paths.contains(parent)
                {
                    brk(at, "1.7 rule 6", format!("read parent error restoring node {:?}", n.path_str()));
                }
            }
            Item::Domain(i) => {
                let Some(d) = snap.domains.get(i) else {
                    continue;
                };
                if version == CVersion::V417 {
                    drop(at, "1.4", format!("DOMAIN {} ignored by C 4.17: features/quotas lost", d.domid));
                } else if !domains.contains(&d.domid) {
                    brk(at, "1.7 rule 7", format!("DOMAIN {} with no prior reference", d.domid));
                } else if version == CVersion::V421 && !d.quotas.is_empty() {
                    drop(at, "1.5.9", format!("DOMAIN {} quotas ignored by C 4.21", d.domid));
                }
            }
            Item::End => break,
            Item::Skipped => {
                if rec.rtype > rtype::WATCH_EXT {
                    drop(at, "1.4", format!("unknown record type {} skipped", rec.rtype));
                } else {
                    brk(at, "2.2", format!("damaged {} record", record_type_name(rec.rtype)));
                }
            }
        }
    }
    if !global_seen && snap.connections.iter().any(|c| matches!(c.kind, ConnectionKind::Ring { .. })) {
        brk(16, "1.7 rule 1", "no GLOBAL_DATA: ring connections cannot be restored".into());
    }
    if !snap.nodes.is_empty() && !snap.nodes.iter().any(|n| n.path == b"/") {
        dropped.push(RuleBreak {
            offset: 16,
            rule: "1.8",
            message: "no NODE for /: its permissions are defaults".into(),
        });
    }
    breaks.sort_by_key(|b| b.offset);
    CVerdict { version, accepted: breaks.is_empty(), breaks, dropped }
}
