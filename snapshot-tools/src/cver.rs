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
    let mut out = Outcome { version, breaks: Vec::new(), dropped: Vec::new() };
    out.preamble(parsed);
    out.damage(parsed);
    let global_seen = RecordWalk::new(parsed).run(&mut out);
    out.whole_stream(parsed, global_seen);
    let Outcome { mut breaks, dropped, .. } = out;
    breaks.sort_by_key(|b| b.offset);
    CVerdict { version, accepted: breaks.is_empty(), breaks, dropped }
}

/// What the reader of one C version makes of the stream, as found so far.
struct Outcome {
    version: CVersion,
    breaks: Vec<RuleBreak>,
    dropped: Vec<RuleBreak>,
}

impl Outcome {
    /// A rule broken at `offset`.
    fn broken(&mut self, offset: u64, rule: &'static str, message: String) {
        self.breaks.push(RuleBreak { offset, rule, message });
    }

    /// Data the reader skips or ignores at `offset`.
    fn drops(&mut self, offset: u64, rule: &'static str, message: String) {
        self.dropped.push(RuleBreak { offset, rule, message });
    }

    /// The preamble: the version the reader takes, and the byte order.
    fn preamble(&mut self, parsed: &Parsed) {
        let version = self.version;
        let stream = parsed.snapshot.version;
        let ok_version = match version {
            CVersion::V417 => stream == 1,
            _ => (1..=2).contains(&stream),
        };
        if !ok_version {
            self.broken(8, "1.9", format!("stream version {stream} not supported by C {version}"));
        }
        if parsed.flags != 0 {
            self.broken(12, "1.2", format!("flags 0x{:x} differ from a little-endian host's 0", parsed.flags));
        }
    }

    /// Structural damage, which C does not check for: it reads out of
    /// bounds.
    fn damage(&mut self, parsed: &Parsed) {
        for f in &parsed.findings {
            if matches!(
                f.problem,
                Problem::PastEndOfFile { .. }
                    | Problem::LengthTooSmall { .. }
                    | Problem::StringOverflow { .. }
                    | Problem::ConnLengthMismatch { .. }
                    | Problem::BadConnType(_)
            ) {
                self.broken(f.offset, "2.2", format!("C reads this record without bounds checks: {}", f.problem));
            }
            if matches!(f.problem, Problem::MissingEnd) && self.version != CVersion::V417 {
                self.broken(f.offset, "1.7 rule 8", "no END: the sequential reader fails at end of file".into());
            }
        }
    }

    /// What only the whole stream shows: ring connections without
    /// GLOBAL_DATA (`global_seen`: the reader met one), a tree without its
    /// root.
    fn whole_stream(&mut self, parsed: &Parsed, global_seen: bool) {
        let snap = &parsed.snapshot;
        if !global_seen && snap.connections.iter().any(|c| matches!(c.kind, ConnectionKind::Ring { .. })) {
            self.broken(16, "1.7 rule 1", "no GLOBAL_DATA: ring connections cannot be restored".into());
        }
        if !snap.nodes.is_empty() && !snap.nodes.iter().any(|n| n.path == b"/") {
            self.drops(16, "1.8", "no NODE for /: its permissions are defaults".into());
        }
    }
}

/// The records in file order, with what the C reader knows when it reaches
/// each (up to END: it reads nothing after).
struct RecordWalk<'a> {
    parsed: &'a Parsed,
    global_seen: bool,
    conn_or_node_seen: bool,
    /// A privileged ring connection (or the one report of its absence).
    priv_seen: bool,
    conns: HashSet<u32>,
    domains: HashSet<u16>,
    paths: HashSet<&'a [u8]>,
}

impl<'a> RecordWalk<'a> {
    fn new(parsed: &'a Parsed) -> Self {
        RecordWalk {
            parsed,
            global_seen: false,
            conn_or_node_seen: false,
            priv_seen: false,
            conns: HashSet::new(),
            domains: HashSet::new(),
            paths: HashSet::new(),
        }
    }

    /// Walks the records; returns whether the reader met a GLOBAL_DATA.
    fn run(mut self, out: &mut Outcome) -> bool {
        for rec in &self.parsed.records {
            let at = rec.offset;
            match rec.item {
                Item::Global => self.global_seen = true,
                Item::GlobalQuota => self.global_quota(at, out),
                Item::Connection(i) => self.connection(at, i, out),
                Item::Watch(i, layout) => self.watch(at, rec.rtype, i, layout, out),
                Item::Transaction(_) => out.drops(at, "1.5.6", "TRANSACTION_DATA ignored by every C reader".into()),
                Item::Node(i) => self.node(at, i, out),
                Item::Domain(i) => self.domain(at, i, out),
                Item::End => break,
                Item::Skipped => {
                    if rec.rtype > rtype::WATCH_EXT {
                        out.drops(at, "1.4", format!("unknown record type {} skipped", rec.rtype));
                    } else {
                        out.broken(at, "2.2", format!("damaged {} record", record_type_name(rec.rtype)));
                    }
                }
            }
        }
        self.global_seen
    }

    fn global_quota(&self, at: u64, out: &mut Outcome) {
        match out.version {
            CVersion::V422 if self.conn_or_node_seen => {
                out.broken(at, "1.7 rule 2", "GLOBAL_QUOTA_DATA after a CONNECTION or NODE".into())
            }
            CVersion::V422 => {}
            version => out.drops(at, "1.4", format!("GLOBAL_QUOTA_DATA ignored by C {version}: global quotas lost")),
        }
    }

    fn connection(&mut self, at: u64, i: usize, out: &mut Outcome) {
        self.conn_or_node_seen = true;
        let Some(c) = self.parsed.snapshot.connections.get(i) else {
            return;
        };
        self.conns.insert(c.conn_id);
        if let ConnectionKind::Ring { domid, target, .. } = c.kind {
            if !self.global_seen {
                out.broken(at, "1.7 rule 1", format!("ring CONNECTION (domain {domid}) before GLOBAL_DATA"));
            }
            if domid == 0 {
                self.priv_seen = true;
            }
            self.domains.insert(domid);
            if target != DOMID_INVALID {
                self.domains.insert(target);
            }
        }
    }

    fn watch(&self, at: u64, record_type: u32, i: usize, layout: Option<WatchExtLayout>, out: &mut Outcome) {
        let Some(w) = self.parsed.snapshot.watches.get(i) else {
            return;
        };
        if record_type == rtype::WATCH_EXT {
            let version = out.version;
            if version != CVersion::V422 {
                out.drops(at, "1.9", format!("WATCH_DATA_EXTENDED skipped by C {version}: watch lost"));
                return;
            }
            let how = match layout {
                Some(WatchExtLayout::Bug422) => "the 4.22 reader takes depth from the path's first bytes",
                _ => "the 4.22 reader expects strings at offset 10, not 12",
            };
            out.broken(at, "1.5.5", format!("WATCH_DATA_EXTENDED would be misread: {how}"));
        }
        if !self.conns.contains(&w.conn_id) {
            out.broken(at, "1.7 rule 4", format!("WATCH conn-id {} unknown", w.conn_id));
        }
    }

    fn node(&mut self, at: u64, i: usize, out: &mut Outcome) {
        self.conn_or_node_seen = true;
        let Some(n) = self.parsed.snapshot.nodes.get(i) else {
            return;
        };
        if !self.priv_seen {
            out.broken(at, "1.7 rule 3", "NODE before privileged ring CONNECTION".into());
            self.priv_seen = true; // report once
        }
        if n.conn_id != 0 {
            out.broken(at, "1.5.7", format!("transaction NODE {:?} would be applied as committed", n.path_str()));
        }
        if let Some(owner) = n.owner() {
            self.domains.insert(owner);
        }
        if n.is_special() {
            return;
        }
        if !self.paths.insert(&n.path) {
            out.broken(at, "1.7 rule 6", format!("NODE {:?} twice: its children are unlinked", n.path_str()));
        }
        if let Some(parent) = parent_of(&n.path)
            && parent != b"/"
            && !self.paths.contains(parent)
        {
            out.broken(at, "1.7 rule 6", format!("read parent error restoring node {:?}", n.path_str()));
        }
    }

    fn domain(&self, at: u64, i: usize, out: &mut Outcome) {
        let Some(d) = self.parsed.snapshot.domains.get(i) else {
            return;
        };
        let version = out.version;
        if version == CVersion::V417 {
            out.drops(at, "1.4", format!("DOMAIN {} ignored by C 4.17: features/quotas lost", d.domid));
        } else if !self.domains.contains(&d.domid) {
            out.broken(at, "1.7 rule 7", format!("DOMAIN {} with no prior reference", d.domid));
        } else if version == CVersion::V421 && !d.quotas.is_empty() {
            out.drops(at, "1.5.9", format!("DOMAIN {} quotas ignored by C 4.21", d.domid));
        }
    }
}
