//! What the inspector shows, as values: the record listing (§6.4 style),
//! the `xenstore-ls -p`-like tree, the §5.1/§5.2 summary and a diff.
//! Text rendering lives next to each value so tests can check it without
//! running the binary; every value also serialises to JSON.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use wire::Op;

use crate::bytes::{escape, hex_words};
use crate::message::{Decoded, Message, decode_messages, type_name};
use crate::model::*;
use crate::read::{Item, Parsed, Severity, WatchExtLayout, record_type_name};

// ---------------------------------------------------------------- records

/// One record of the listing.
#[derive(Clone, Debug, Serialize)]
pub struct RecordLine {
    /// File offset of the header.
    pub offset: u64,
    /// Type name.
    #[serde(rename = "type")]
    pub type_name: &'static str,
    /// Type code.
    pub code: u32,
    /// Declared length.
    pub length: u32,
    /// One-line decode.
    pub decode: String,
    /// Decoded pending messages (connections only), one per line.
    pub pending: Vec<String>,
}

impl RecordLine {
    /// Text as in §6.4 (first line plus pending lines).
    pub fn text(&self) -> String {
        let head = match self.code {
            5 | 0 => format!("@0x{:04x} {:<9} len={}", self.offset, self.type_name, self.length),
            _ => format!("@0x{:04x} {:<18} len={}", self.offset, self.type_name, self.length),
        };
        let mut s = if self.decode.is_empty() { head } else { format!("{head} {}", self.decode) };
        for p in &self.pending {
            s.push('\n');
            s.push_str(p);
        }
        s
    }
}

/// The preamble line of the listing.
pub fn header_line(p: &Parsed) -> String {
    let order = match p.snapshot.byte_order {
        ByteOrder::Little => "little-endian",
        ByteOrder::Big => "big-endian",
    };
    format!("header: version={} flags=0x{:x} ({order}) size={}", p.snapshot.version, p.flags, p.file_len)
}

/// Lists every record with its offset and decode.
pub fn record_lines(p: &Parsed) -> Vec<RecordLine> {
    let s = &p.snapshot;
    p.records
        .iter()
        .map(|r| {
            let mut pending = Vec::new();
            let decode = match r.item {
                Item::Global => s
                    .global
                    .map(|g| format!("rw_sock_fd={} evtchn_fd={}", g.socket_fd, g.evtchn_fd))
                    .unwrap_or_default(),
                Item::GlobalQuota => s
                    .global_quota
                    .as_ref()
                    .map(|q| {
                        format!("per-domain=[{}] global=[{}]", quotas_text(&q.per_domain), quotas_text(&q.global_only))
                    })
                    .unwrap_or_default(),
                Item::Connection(i) => match s.connections.get(i) {
                    Some(c) => {
                        pending = pending_lines(c, s.byte_order);
                        connection_decode(c)
                    }
                    None => String::new(),
                },
                Item::Watch(i, layout) => s
                    .watches
                    .get(i)
                    .map(|w| {
                        let mut t = format!(
                            "conn_id={} path='{}\\0' token='{}\\0'",
                            w.conn_id,
                            escape(&w.path),
                            escape(&w.token)
                        );
                        if let Some(d) = w.depth {
                            t.push_str(&format!(" depth={d}"));
                        }
                        if layout == Some(WatchExtLayout::Bug422) {
                            t.push_str(" layout=4.22-bug");
                        }
                        t
                    })
                    .unwrap_or_default(),
                Item::Transaction(i) => s
                    .transactions
                    .get(i)
                    .map(|t| format!("conn_id={} tx_id={}", t.conn_id, t.tx_id))
                    .unwrap_or_default(),
                Item::Node(i) => s.nodes.get(i).map(node_decode).unwrap_or_default(),
                Item::Domain(i) => s
                    .domains
                    .get(i)
                    .map(|d| {
                        format!("domid={} features=0x{:x} quotas=[{}]", d.domid, d.features, quotas_text(&d.quotas))
                    })
                    .unwrap_or_default(),
                Item::End => String::new(),
                Item::Skipped => "(skipped)".into(),
            };
            RecordLine {
                offset: r.offset,
                type_name: record_type_name(r.rtype),
                code: r.rtype,
                length: r.length,
                decode,
                pending,
            }
        })
        .collect()
}

fn quotas_text(q: &[Quota]) -> String {
    q.iter().map(|q| format!("{}={}", escape(&q.name), q.value)).collect::<Vec<_>>().join(" ")
}

fn connection_decode(c: &Connection) -> String {
    let fields = if c.unique_id.is_some() { 1 } else { 0 };
    let kind = match c.kind {
        ConnectionKind::Ring { domid, target, evtchn } => {
            format!("ring dom={domid} tdom=0x{target:x} evtchn={evtchn}")
        }
        ConnectionKind::Socket { fd } => format!("socket fd={fd}"),
    };
    let mut s = format!(
        "conn_id={} fields=0x{fields:x} {kind} in={} resp={} out={}",
        c.conn_id,
        c.input.len(),
        c.partial_response_len,
        c.output.len()
    );
    if let Some(id) = c.unique_id {
        s.push_str(&format!(" unique_id=0x{id:016x}"));
    }
    s
}

fn node_decode(n: &Node) -> String {
    let mut s = format!("perms={:<10}path='{}'", perms_display(&n.perms), escape(&n.path));
    if !n.value.is_empty() {
        s.push_str(&format!(" value='{}'", escape(&n.value)));
    }
    if n.conn_id != 0 {
        s.push_str(&format!(" conn_id={} tx_id={} access={}", n.conn_id, n.tx_id, n.access));
    }
    s
}

fn message_line(dir: &str, bytes: &[u8], payload: &[u8], desc: &str) -> String {
    let mut left = format!("      {dir}: {}", hex_words(bytes.get(..16).unwrap_or(bytes)));
    if bytes.len() >= 16 {
        let shown = payload.get(..32).unwrap_or(payload);
        let more = if payload.len() > 32 { "..." } else { "" };
        left.push_str(&format!(" '{}'{more}", escape(shown)));
    }
    format!("{left:<58} ({desc})")
}

/// Describes one whole message in a line.
pub fn describe_message(m: &Message, input: bool) -> String {
    let h = m.header;
    let name = type_name(h.msg_type);
    if !input && m.is_lu_ok_reply() {
        return format!("the LU reply, req_id {}", h.req_id);
    }
    let strings = m.payload_strings();
    let arg = |i: usize| strings.get(i).map(|s| escape(s)).unwrap_or_default();
    let event = h.msg_type == Op::WatchEvent.code();
    let mut s = if event && !input {
        format!("WATCH_EVENT path='{}' token='{}'", arg(0), arg(1))
    } else {
        format!("{name} req {}", h.req_id)
    };
    if h.tx_id != 0 {
        s.push_str(&format!(" tx {}", h.tx_id));
    }
    if !event || input {
        s.push_str(&format!(", len {}", h.len));
    }
    if input {
        s = format!("delayed {s}");
    }
    s
}

/// Decoded pending data of a connection: (input, partial response, queued output).
pub fn pending_of(c: &Connection, order: ByteOrder) -> (Decoded, Vec<u8>, Decoded) {
    let input = decode_messages(&c.input, order);
    let resp = (c.partial_response_len as usize).min(c.output.len());
    let (partial, queued) = c.output.split_at(resp);
    (input, partial.to_vec(), decode_messages(queued, order))
}

fn pending_lines(c: &Connection, order: ByteOrder) -> Vec<String> {
    let (input, partial_resp, output) = pending_of(c, order);
    let mut out = Vec::new();
    for m in &input.messages {
        let bytes = c.input.get(m.offset..m.offset + 16 + m.payload.len()).unwrap_or(&[]);
        out.push(message_line("in ", bytes, &m.payload, &describe_message(m, true)));
    }
    if let Some(p) = &input.partial {
        let desc = match p.header {
            Some(h) => format!(
                "{} req {}, len {}, {} of {} bytes",
                type_name(h.msg_type),
                h.req_id,
                h.len,
                p.bytes.len() - 16,
                h.len
            ),
            None => {
                let t = crate::bytes::u32_at(&p.bytes, 0, order).map(type_name);
                match t {
                    Some(t) => format!(
                        "{} bytes of a{} {t} header",
                        p.bytes.len(),
                        if t.starts_with(['A', 'E', 'I', 'O', 'U']) { "n" } else { "" }
                    ),
                    None => format!("{} bytes of a header", p.bytes.len()),
                }
            }
        };
        out.push(message_line("in ", &p.bytes, p.bytes.get(16..).unwrap_or(&[]), &desc));
    }
    if !partial_resp.is_empty() {
        let desc = format!("rest of a partly sent response, {} bytes", partial_resp.len());
        out.push(format!(
            "{:<58} ({desc})",
            format!("      out: {}", hex_words(partial_resp.get(..16).unwrap_or(&partial_resp)))
        ));
    }
    for m in &output.messages {
        let start = m.offset + partial_resp.len();
        let bytes = c.output.get(start..start + 16 + m.payload.len()).unwrap_or(&[]);
        out.push(message_line("out", bytes, &m.payload, &describe_message(m, false)));
    }
    if let Some(p) = &output.partial {
        out.push(message_line("out", &p.bytes, &[], &format!("{} bytes that are not a whole message", p.bytes.len())));
    }
    out
}

// ------------------------------------------------------------------- tree

/// One line of the tree.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TreeEntry {
    /// Full path.
    pub path: String,
    /// Depth below the listed root (0 = its children).
    pub depth: usize,
    /// Last path component.
    pub name: String,
    /// Value, escaped.
    pub value: String,
    /// Permissions as `n0,r5`.
    pub perms: String,
}

impl TreeEntry {
    /// `xenstore-ls -p` style line: ` name = "value"  (n0)`.
    pub fn text(&self) -> String {
        format!("{}{} = \"{}\"  ({})", " ".repeat(self.depth), self.name, self.value, self.perms)
    }
}

/// Committed tree nodes: path → index, and children in stream order.
#[derive(Debug, Default)]
pub struct Tree<'a> {
    by_path: HashMap<&'a [u8], &'a Node>,
    children: HashMap<&'a [u8], Vec<&'a Node>>,
}

impl<'a> Tree<'a> {
    /// Builds the tree from committed non-special nodes (first record wins).
    pub fn build(snap: &'a Stream) -> Self {
        let mut t = Tree::default();
        for n in snap.nodes.iter().filter(|n| n.conn_id == 0 && !n.is_special()) {
            if t.by_path.contains_key(n.path.as_slice()) {
                continue;
            }
            t.by_path.insert(&n.path, n);
            if let Some(parent) = crate::read::parent_of(&n.path) {
                t.children.entry(parent).or_default().push(n);
            }
        }
        t
    }

    /// The node at `path`.
    pub fn get(&self, path: &[u8]) -> Option<&'a Node> {
        self.by_path.get(path).copied()
    }

    /// Lists everything below `root`, pre-order. Iterative, so a hostile
    /// file with very deep paths cannot overflow the stack.
    pub fn list(&self, root: &[u8]) -> Vec<TreeEntry> {
        let mut out = Vec::new();
        let kids = |p: &[u8]| self.children.get(p).map(Vec::as_slice).unwrap_or(&[]);
        let mut stack: Vec<(&[&'a Node], usize)> = vec![(kids(root), 0)];
        while let Some((list, depth)) = stack.pop() {
            let Some((child, rest)) = list.split_first() else {
                continue;
            };
            stack.push((rest, depth));
            let name = child.path.rsplit(|b| *b == b'/').next().unwrap_or(&[]);
            out.push(TreeEntry {
                path: escape(&child.path),
                depth,
                name: escape(name),
                value: escape(&child.value),
                perms: perms_display(&child.perms),
            });
            stack.push((kids(&child.path), depth + 1));
        }
        out
    }
}

// ---------------------------------------------------------------- summary

/// A message in pending data, for the summary.
#[derive(Clone, Debug, Serialize)]
pub struct PendingMessage {
    /// `delayed`, `partial-request`, `partial-response`, `queued`, `lu-reply`, `watch-event`.
    pub kind: &'static str,
    /// Human description.
    pub text: String,
}

/// One connection as the summary shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ConnSummary {
    /// conn-id.
    pub conn_id: u32,
    /// `ring` or `socket`.
    pub kind: &'static str,
    /// Ring: owning domain.
    pub domid: Option<u16>,
    /// Ring: SET_TARGET domain.
    pub target: Option<u16>,
    /// Ring: xenstored local port.
    pub evtchn: Option<u32>,
    /// Socket fd.
    pub fd: Option<i32>,
    /// 4.21+ unique id, hex.
    pub unique_id: Option<String>,
    /// Decoded pending input and output.
    pub pending: Vec<PendingMessage>,
    /// Watches: `path token [depth]`.
    pub watches: Vec<String>,
    /// Delayed TRANSACTION_STARTs (LU waited for / forced past transactions).
    pub delayed_transaction_starts: usize,
    /// Requests queued in input plus non-event output messages.
    pub outstanding: usize,
}

/// One domain as the summary shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DomainSummary {
    /// Domain id.
    pub domid: u16,
    /// conn-ids of its ring connections.
    pub connections: Vec<u32>,
    /// Target of its connection, if a stub domain.
    pub target: Option<u16>,
    /// Present in a DOMAIN_DATA record.
    pub has_domain_record: bool,
    /// Only referenced (no connection).
    pub referenced_only: bool,
    /// Feature names (DOMAIN_DATA).
    pub features: Vec<String>,
    /// Committed nodes it owns.
    pub nodes: usize,
    /// Watches of its connections.
    pub watches: usize,
    /// Effective quota table (global defaults + overrides).
    pub quotas: BTreeMap<String, u32>,
    /// Quotas exceeded: `nodes 1200 > 1000`.
    pub over_quota: Vec<String>,
}

/// The §5.1 parse report and §5.2 answers.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Input file name.
    pub file: String,
    /// `binary stream`, `oxenstored LU text`, …
    pub kind: String,
    /// Size in bytes.
    pub size: usize,
    /// Preamble version.
    pub version: u32,
    /// `little-endian` or `big-endian`.
    pub byte_order: &'static str,
    /// Would C 4.17–4.20 accept the preamble.
    pub preamble_ok_c417: bool,
    /// Would C 4.21+ accept the preamble.
    pub preamble_ok_c421: bool,
    /// Best guess at the producer and the evidence.
    pub producer: String,
    /// Evidence for the guess.
    pub evidence: Vec<String>,
    /// Count per record type name.
    pub record_counts: BTreeMap<String, usize>,
    /// Findings as text, with offsets.
    pub findings: Vec<FindingLine>,
    /// GLOBAL_DATA fds.
    pub global: Option<(i32, i32)>,
    /// Domains (ring connections, DOMAIN records, node owners).
    pub domains: Vec<DomainSummary>,
    /// Stub domains: (domid, target).
    pub stubdom_targets: Vec<(u16, u16)>,
    /// Event-channel ports used twice.
    pub duplicate_evtchns: Vec<u32>,
    /// Socket fds used twice (incl. the GLOBAL listening socket).
    pub duplicate_fds: Vec<i32>,
    /// Connections in stream order.
    pub connections: Vec<ConnSummary>,
    /// conn-ids whose output ends in the LU `"OK"` reply.
    pub lu_requesters: Vec<u32>,
    /// TRANSACTION_DATA records and transaction nodes.
    pub transactions: Vec<String>,
    /// Committed nodes (special ones included).
    pub node_count: usize,
    /// Largest value and its path.
    pub largest_value: Option<(usize, String)>,
    /// Longest path.
    pub longest_path: Option<(usize, String)>,
    /// Most permission entries on one node.
    pub max_perms: Option<(usize, String)>,
    /// `/` present.
    pub has_root: bool,
    /// `@releaseDomain` / `@introduceDomain` present.
    pub special_nodes: Vec<String>,
    /// Global quota table (GLOBAL_QUOTA_DATA).
    pub global_quotas: BTreeMap<String, u32>,
}

/// A finding in the summary.
#[derive(Clone, Debug, Serialize)]
pub struct FindingLine {
    /// File offset.
    pub offset: u64,
    /// Severity.
    pub severity: Severity,
    /// Message.
    pub message: String,
}

/// Default global quotas of C 4.22 (used when the stream carries none).
const C_DEFAULT_QUOTAS: [(&str, u32); 10] = [
    ("nodes", 1000),
    ("watches", 128),
    ("outstanding", 20),
    ("memory", 2_621_440),
    ("soft-memory", 2_097_152),
    ("transactions", 10),
    ("transaction-nodes", 1024),
    ("node-permissions", 5),
    ("path-max", 2048),
    ("node-size", 2048),
];

/// Builds the summary of a binary stream.
pub fn summarize(file: &str, p: &Parsed) -> Summary {
    let s = &p.snapshot;
    let (producer, evidence) = guess_producer(p);
    let connections: Vec<ConnSummary> = s.connections.iter().map(|c| conn_summary(s, c)).collect();
    let global_quotas = global_quotas(s);
    let committed: Vec<&Node> = s.nodes.iter().filter(|n| n.conn_id == 0).collect();
    let max_by = |f: &dyn Fn(&Node) -> usize| {
        committed.iter().map(|n| (f(n), n)).max_by_key(|(k, _)| *k).map(|(k, n)| (k, escape(&n.path)))
    };
    Summary {
        file: file.to_string(),
        kind: "binary stream".into(),
        size: p.file_len,
        version: s.version,
        byte_order: if s.byte_order == ByteOrder::Little { "little-endian" } else { "big-endian" },
        preamble_ok_c417: s.version == 1 && p.flags == 0,
        preamble_ok_c421: (1..=2).contains(&s.version) && p.flags == 0,
        producer,
        evidence,
        record_counts: record_counts(p),
        findings: p
            .findings
            .iter()
            .map(|f| FindingLine { offset: f.offset, severity: f.severity, message: f.problem.to_string() })
            .collect(),
        global: s.global.map(|g| (g.socket_fd, g.evtchn_fd)),
        domains: domain_summaries(s, &committed, &connections, &global_quotas),
        stubdom_targets: connections.iter().filter_map(|c| Some((c.domid?, c.target?))).collect(),
        duplicate_evtchns: repeated(connections.iter().filter_map(|c| c.evtchn)),
        duplicate_fds: repeated(connections.iter().filter_map(|c| c.fd).chain(listening_fd(s))),
        lu_requesters: connections
            .iter()
            .filter(|c| c.pending.last().is_some_and(|m| m.kind == LU_REPLY))
            .map(|c| c.conn_id)
            .collect(),
        connections,
        transactions: transaction_lines(s),
        node_count: committed.len(),
        largest_value: max_by(&|n| n.value.len()),
        longest_path: max_by(&|n| n.path.len()),
        max_perms: max_by(&|n| n.perms.len()),
        has_root: committed.iter().any(|n| n.path == b"/"),
        special_nodes: committed.iter().filter(|n| n.is_special()).map(|n| escape(&n.path)).collect(),
        global_quotas,
    }
}

/// How many records of each type.
fn record_counts(p: &Parsed) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in &p.records {
        *counts.entry(record_type_name(r.rtype).to_string()).or_insert(0) += 1;
    }
    counts
}

/// The kind of the queued `OK` that answers the live-update request.
const LU_REPLY: &str = "lu-reply";

/// One connection: what it is, its pending data and its watches.
fn conn_summary(s: &Stream, c: &Connection) -> ConnSummary {
    let (input, partial_resp, output) = pending_of(c, s.byte_order);
    let pending = pending_messages(&input, &partial_resp, &output);
    let (kind, domid, target, evtchn, fd) = match c.kind {
        ConnectionKind::Ring { domid, target, evtchn } => {
            ("ring", Some(domid), (target != DOMID_INVALID).then_some(target), Some(evtchn), None)
        }
        ConnectionKind::Socket { fd } => ("socket", None, None, None, Some(fd)),
    };
    let queued = pending.iter().filter(|m| m.kind == "queued").count();
    ConnSummary {
        conn_id: c.conn_id,
        kind,
        domid,
        target,
        evtchn,
        fd,
        unique_id: c.unique_id.map(|u| format!("0x{u:016x}")),
        watches: watch_lines(s, c.conn_id),
        delayed_transaction_starts: input
            .messages
            .iter()
            .filter(|m| m.header.msg_type == Op::TransactionStart.code())
            .count(),
        outstanding: input.messages.len() + queued,
        pending,
    }
}

/// A connection's pending data as messages: the requests held back, a
/// partial request, the rest of a partly sent response, the queued output
/// (replies, watch events, and the live-update reply if it comes last).
fn pending_messages(input: &Decoded, partial_resp: &[u8], output: &Decoded) -> Vec<PendingMessage> {
    let mut pending: Vec<PendingMessage> =
        input.messages.iter().map(|m| PendingMessage { kind: "delayed", text: describe_message(m, true) }).collect();
    if let Some(part) = &input.partial {
        let text = match (part.header, part.missing_payload()) {
            (Some(h), Some(missing)) => format!(
                "partial {} req {}, len {}: {} payload bytes missing",
                type_name(h.msg_type),
                h.req_id,
                h.len,
                missing
            ),
            _ => format!("partial header: {} of 16 bytes", part.bytes.len()),
        };
        pending.push(PendingMessage { kind: "partial-request", text });
    }
    if !partial_resp.is_empty() {
        pending.push(PendingMessage {
            kind: "partial-response",
            text: format!("{} bytes of a partly sent response", partial_resp.len()),
        });
    }
    for (i, m) in output.messages.iter().enumerate() {
        let last = i + 1 == output.messages.len();
        let kind = if last && m.is_lu_ok_reply() {
            LU_REPLY
        } else if m.header.msg_type == Op::WatchEvent.code() {
            "watch-event"
        } else {
            "queued"
        };
        pending.push(PendingMessage { kind, text: describe_message(m, false) });
    }
    pending
}

/// A connection's watches: `'path' token 'token' [depth d] [(relative)]`.
fn watch_lines(s: &Stream, conn_id: u32) -> Vec<String> {
    s.watches
        .iter()
        .filter(|w| w.conn_id == conn_id)
        .map(|w| {
            let rel = if w.path.first().is_some_and(|b| *b != b'/' && *b != b'@') { " (relative)" } else { "" };
            match w.depth {
                Some(d) => format!("'{}' token '{}' depth {d}{rel}", escape(&w.path), escape(&w.token)),
                None => format!("'{}' token '{}'{rel}", escape(&w.path), escape(&w.token)),
            }
        })
        .collect()
}

/// The values that occur more than once, in order.
fn repeated<T: Ord>(values: impl Iterator<Item = T>) -> Vec<T> {
    let mut seen = BTreeSet::new();
    let mut twice = BTreeSet::new();
    for v in values {
        if let Some(v) = seen.replace(v) {
            twice.insert(v);
        }
    }
    twice.into_iter().collect()
}

/// GLOBAL_DATA's listening socket, if it has one.
fn listening_fd(s: &Stream) -> Option<i32> {
    s.global.map(|g| g.socket_fd).filter(|fd| *fd >= 0)
}

/// The stream's global quota table (GLOBAL_QUOTA_DATA), by name.
fn global_quotas(s: &Stream) -> BTreeMap<String, u32> {
    let mut quotas = BTreeMap::new();
    if let Some(q) = &s.global_quota {
        for q in q.per_domain.iter().chain(&q.global_only) {
            quotas.insert(escape(&q.name), q.value);
        }
    }
    quotas
}

/// What the committed nodes say of each domain, in one pass (a million
/// nodes in a big file): the domains their permissions name, and per owner
/// the node count and the largest value, path and ACL (the per-node
/// limits, charged to the owner).
#[derive(Default)]
struct NodeUse {
    named: HashMap<u16, (), foldhash::fast::RandomState>,
    owned: HashMap<u16, usize, foldhash::fast::RandomState>,
    largest: HashMap<u16, (usize, usize, usize), foldhash::fast::RandomState>,
}

impl NodeUse {
    fn of(committed: &[&Node]) -> Self {
        let mut u = NodeUse::default();
        for n in committed {
            for p in &n.perms {
                if p.domid < DOMID_FIRST_RESERVED {
                    u.named.insert(p.domid, ());
                }
            }
            if let Some(owner) = n.owner() {
                *u.owned.entry(owner).or_default() += 1;
                let e = u.largest.entry(owner).or_default();
                e.0 = e.0.max(n.value.len());
                e.1 = e.1.max(n.path.len());
                e.2 = e.2.max(n.perms.len());
            }
        }
        u
    }
}

/// Every domain the stream mentions (ring connections and their targets,
/// DOMAIN records, node permissions), in order of domid.
fn domain_summaries(
    s: &Stream,
    committed: &[&Node],
    connections: &[ConnSummary],
    global_quotas: &BTreeMap<String, u32>,
) -> Vec<DomainSummary> {
    let defaults: BTreeMap<String, u32> = if s.global_quota.is_some() {
        global_quotas.clone()
    } else {
        C_DEFAULT_QUOTAS.iter().map(|(n, v)| ((*n).to_string(), *v)).collect()
    };
    let mut domids: BTreeSet<u16> = BTreeSet::new();
    for c in &s.connections {
        if let ConnectionKind::Ring { domid, target, .. } = c.kind {
            domids.insert(domid);
            if target != DOMID_INVALID {
                domids.insert(target);
            }
        }
    }
    domids.extend(s.domains.iter().map(|d| d.domid));
    let mut node_use = NodeUse::of(committed);
    domids.extend(std::mem::take(&mut node_use.named).into_keys());
    let mut conns_of: HashMap<u16, Vec<&ConnSummary>> = HashMap::new();
    for c in connections {
        if let Some(d) = c.domid {
            conns_of.entry(d).or_default().push(c);
        }
    }
    let records: HashMap<u16, &DomainData> = s.domains.iter().rev().map(|d| (d.domid, d)).collect();
    domids
        .into_iter()
        .map(|domid| {
            let conns = conns_of.get(&domid).map(Vec::as_slice).unwrap_or_default();
            domain_summary(domid, conns, records.get(&domid).copied(), &node_use, &defaults)
        })
        .collect()
}

/// One domain: its connections, its DOMAIN record, the nodes it owns, and
/// the quotas it is over.
fn domain_summary(
    domid: u16,
    conns: &[&ConnSummary],
    record: Option<&DomainData>,
    node_use: &NodeUse,
    defaults: &BTreeMap<String, u32>,
) -> DomainSummary {
    let nodes = node_use.owned.get(&domid).copied().unwrap_or(0);
    let watches: usize = conns.iter().map(|c| c.watches.len()).sum();
    let mut quotas = defaults.clone();
    if let Some(r) = record {
        for q in &r.quotas {
            quotas.insert(escape(&q.name), q.value);
        }
    }
    let (value, path, perms) = node_use.largest.get(&domid).copied().unwrap_or_default();
    let used = [
        ("nodes", nodes),
        ("watches", watches),
        ("outstanding", conns.iter().map(|c| c.outstanding).sum()),
        ("node-size", value),
        ("path-max", path),
        ("node-permissions", perms),
    ];
    DomainSummary {
        domid,
        connections: conns.iter().map(|c| c.conn_id).collect(),
        target: conns.iter().find_map(|c| c.target),
        has_domain_record: record.is_some(),
        referenced_only: conns.is_empty(),
        features: record.map(|r| feature_names(r.features)).unwrap_or_default(),
        nodes,
        watches,
        over_quota: over_quota(domid, &used, &quotas),
        quotas,
    }
}

/// The quotas that `used` exceeds: `nodes 1200 > 1000`.
fn over_quota(domid: u16, used: &[(&str, usize)], quotas: &BTreeMap<String, u32>) -> Vec<String> {
    // The privileged domain is exempt from quotas in C.
    if domid == 0 {
        return Vec::new();
    }
    used.iter()
        .filter_map(|&(name, used)| {
            let limit = *quotas.get(name)?;
            (limit != 0 && used > limit as usize).then(|| format!("{name} {used} > {limit}"))
        })
        .collect()
}

/// TRANSACTION_DATA records, then each transaction's nodes and what it
/// did to them.
fn transaction_lines(s: &Stream) -> Vec<String> {
    let mut lines: Vec<String> =
        s.transactions.iter().map(|t| format!("TRANSACTION_DATA conn {} tx {}", t.conn_id, t.tx_id)).collect();
    let mut tx_nodes: BTreeMap<(u32, u32), Vec<String>> = BTreeMap::new();
    for n in s.nodes.iter().filter(|n| n.conn_id != 0) {
        let how = match n.access {
            0 => "deleted",
            1 => "read",
            2 => "written",
            3 => "read+written",
            _ => "access?",
        };
        tx_nodes.entry((n.conn_id, n.tx_id)).or_default().push(format!("{} {how}", escape(&n.path)));
    }
    for ((c, t), nodes) in tx_nodes {
        lines.push(format!("conn {c} tx {t}: {}", nodes.join(", ")));
    }
    lines
}

/// Guesses which C release wrote the stream (§5.1).
pub fn guess_producer(p: &Parsed) -> (String, Vec<String>) {
    let s = &p.snapshot;
    let mut ev = Vec::new();
    ev.push(format!("version {}", s.version));
    let trailer = s.connections.iter().any(|c| c.unique_id.is_some());
    let ring_without =
        s.connections.iter().any(|c| matches!(c.kind, ConnectionKind::Ring { .. }) && c.unique_id.is_none());
    if trailer {
        ev.push("unique-id trailer on ring connections (4.21+)".into());
    } else if ring_without {
        ev.push("ring connections without unique-id (4.17-4.20, or a migration stream)".into());
    }
    if s.global_quota.is_some() {
        ev.push("GLOBAL_QUOTA_DATA present (4.22+)".into());
    }
    if !s.domains.is_empty() {
        let with_q = s.domains.iter().any(|d| !d.quotas.is_empty());
        ev.push(format!(
            "DOMAIN_DATA {} quotas ({})",
            if with_q { "with" } else { "without" },
            if with_q { "4.22+" } else { "4.21" }
        ));
    }
    if s.watches.iter().any(|w| w.depth.is_some()) {
        ev.push("WATCH_DATA_EXTENDED present (4.22+)".into());
    }
    let first_special = s.nodes.iter().position(Node::is_special);
    let first_tree = s.nodes.iter().position(|n| !n.is_special());
    match (first_special, first_tree) {
        (Some(a), Some(b)) if a < b => ev.push("special @ nodes before / (4.17)".into()),
        (Some(_), Some(_)) => ev.push("special @ nodes after the tree (4.18+)".into()),
        _ => {}
    }
    let guess = if s.global_quota.is_some() || s.domains.iter().any(|d| !d.quotas.is_empty()) {
        "C xenstored 4.22 or later"
    } else if trailer || !s.domains.is_empty() || s.version == 2 {
        "C xenstored 4.21"
    } else if matches!((first_special, first_tree), (Some(a), Some(b)) if a > b) {
        "C xenstored 4.18-4.20"
    } else if s.global.is_none() {
        "a migration stream (no GLOBAL_DATA)"
    } else {
        "C xenstored 4.17"
    };
    (guess.to_string(), ev)
}

/// Styling for text output; colour only on a terminal.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    /// Emit ANSI colour codes.
    pub colour: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.colour { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }
    /// Section heading.
    pub fn head(&self, s: &str) -> String {
        self.paint("1", s)
    }
    /// Error text.
    pub fn err(&self, s: &str) -> String {
        self.paint("31", s)
    }
    /// Warning text.
    pub fn warn(&self, s: &str) -> String {
        self.paint("33", s)
    }
    /// Good news.
    pub fn ok(&self, s: &str) -> String {
        self.paint("32", s)
    }
}

impl Summary {
    /// Human-readable rendering.
    pub fn text(&self, st: Style) -> String {
        let mut o = String::new();
        self.about_text(&mut o, st);
        self.findings_text(&mut o, st);
        self.domains_text(&mut o, st);
        self.connections_text(&mut o, st);
        self.contents_text(&mut o);
        o
    }

    /// The file, its format and its producer, and the records it holds.
    fn about_text(&self, o: &mut String, st: Style) {
        let yes = |b: bool| if b { "yes" } else { "no" };
        *o += &format!("{}\n", st.head(&format!("== {} ==", self.file)));
        *o += &format!("kind: {}, {} bytes, version {}, {}\n", self.kind, self.size, self.version, self.byte_order);
        if self.kind == "binary stream" {
            *o += &format!(
                "preamble accepted by C 4.17-4.20: {}, by C 4.21+: {}\n",
                yes(self.preamble_ok_c417),
                yes(self.preamble_ok_c421)
            );
        }
        *o += &format!("producer: {}\n", self.producer);
        for e in &self.evidence {
            *o += &format!("  - {e}\n");
        }
        let counts: Vec<String> = self.record_counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        *o += &format!("records: {}\n", counts.join(" "));
    }

    fn findings_text(&self, o: &mut String, st: Style) {
        if self.findings.is_empty() {
            *o += &format!("{}\n", st.ok("findings: none"));
        } else {
            *o += &format!("{}\n", st.head(&format!("findings ({}):", self.findings.len())));
            for f in &self.findings {
                let line = format!("  @0x{:04x} {:?}: {}", f.offset, f.severity, f.message);
                *o += &format!("{}\n", if f.severity == Severity::Error { st.err(&line) } else { st.warn(&line) });
            }
        }
    }

    /// GLOBAL_DATA, the domains, stub domains and resources used twice.
    fn domains_text(&self, o: &mut String, st: Style) {
        if let Some((sock, ev)) = self.global {
            *o += &format!("global: rw-socket-fd={sock} evtchn-fd={ev}\n");
        }
        *o += &format!("{}\n", st.head("domains:"));
        for d in &self.domains {
            let mut line = format!("  dom{}: ", d.domid);
            if d.referenced_only {
                line += "no connection (only referenced)";
            } else {
                line += &format!("conn {:?}", d.connections);
            }
            if let Some(t) = d.target {
                line += &format!(", stub domain for dom{t}");
            }
            line += &format!(", {} nodes, {} watches", d.nodes, d.watches);
            if d.has_domain_record {
                line += &format!(", DOMAIN_DATA features [{}]", d.features.join(","));
            }
            *o += &line;
            *o += "\n";
            if self.global_quotas.len() + usize::from(d.has_domain_record) > 0 && !d.quotas.is_empty() {
                let q: Vec<String> = d.quotas.iter().map(|(k, v)| format!("{k}={v}")).collect();
                *o += &format!("    quotas: {}\n", q.join(" "));
            }
            for q in &d.over_quota {
                *o += &format!("    {}\n", st.warn(&format!("over quota: {q}")));
            }
        }
        for (d, t) in &self.stubdom_targets {
            *o += &format!("stub domain: dom{d} acts for dom{t}\n");
        }
        if !self.duplicate_evtchns.is_empty() {
            *o += &format!("{}\n", st.warn(&format!("duplicate event channels: {:?}", self.duplicate_evtchns)));
        }
        if !self.duplicate_fds.is_empty() {
            *o += &format!("{}\n", st.warn(&format!("duplicate socket fds: {:?}", self.duplicate_fds)));
        }
    }

    /// Each connection with its pending data and watches, and who asked
    /// for the live update.
    fn connections_text(&self, o: &mut String, st: Style) {
        *o += &format!("{}\n", st.head("connections:"));
        for c in &self.connections {
            let what = match c.kind {
                "ring" => format!(
                    "ring dom{} evtchn {}{}",
                    c.domid.unwrap_or_default(),
                    c.evtchn.unwrap_or_default(),
                    c.target.map(|t| format!(" target dom{t}")).unwrap_or_default()
                ),
                _ => format!("socket fd {}", c.fd.unwrap_or_default()),
            };
            let uid = c.unique_id.as_ref().map(|u| format!(" unique-id {u}")).unwrap_or_default();
            *o += &format!("  conn {}: {what}{uid}\n", c.conn_id);
            for m in &c.pending {
                *o += &format!("    {}: {}\n", m.kind, m.text);
            }
            for w in &c.watches {
                *o += &format!("    watch {w}\n");
            }
            if c.delayed_transaction_starts > 0 {
                *o += &format!(
                    "    {} delayed TRANSACTION_START(s): the LU waited for or forced past transactions\n",
                    c.delayed_transaction_starts
                );
            }
        }
        match self.lu_requesters.as_slice() {
            [] => *o += "live update requested by: unknown (no \"OK\" reply queued)\n",
            [one] => *o += &format!("live update requested by: conn {one}\n"),
            many => *o += &format!("{}\n", st.warn(&format!("several LU replies queued: conns {many:?}"))),
        }
    }

    /// Open transactions, the tree's figures and the global quotas.
    fn contents_text(&self, o: &mut String) {
        if self.transactions.is_empty() {
            *o += "open transactions: none\n";
        } else {
            *o += "open transactions:\n";
            for t in &self.transactions {
                *o += &format!("  {t}\n");
            }
        }
        *o += &format!(
            "nodes: {} committed, root {}, special nodes [{}]\n",
            self.node_count,
            if self.has_root { "present" } else { "MISSING" },
            self.special_nodes.join(", ")
        );
        if let Some((n, p)) = &self.largest_value {
            *o += &format!("  largest value: {n} bytes ({p})\n");
        }
        if let Some((n, p)) = &self.longest_path {
            *o += &format!("  longest path: {n} bytes ({p})\n");
        }
        if let Some((n, p)) = &self.max_perms {
            *o += &format!("  most permissions: {n} ({p})\n");
        }
        if self.global_quotas.is_empty() {
            *o += "global quotas: not in stream (new binary's command line applies)\n";
        } else {
            let q: Vec<String> = self.global_quotas.iter().map(|(k, v)| format!("{k}={v}")).collect();
            *o += &format!("global quotas: {}\n", q.join(" "));
        }
    }
}

// ------------------------------------------------------------------- diff

/// Differences between two snapshots, one line each.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Diff {
    /// Node differences (`+ /a`, `- /b`, `~ /c value …`).
    pub nodes: Vec<String>,
    /// Connection differences, keyed by ring domid or socket fd.
    pub connections: Vec<String>,
    /// Watch differences.
    pub watches: Vec<String>,
    /// DOMAIN_DATA / global differences.
    pub other: Vec<String>,
}

impl Diff {
    /// True when nothing differs.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.connections.is_empty() && self.watches.is_empty() && self.other.is_empty()
    }
}

fn conn_key(c: &Connection) -> String {
    match c.kind {
        ConnectionKind::Ring { domid, .. } => format!("ring dom{domid}"),
        ConnectionKind::Socket { fd } => format!("socket fd {fd}"),
    }
}

/// Compares two snapshots by node path, connection, watch and domain.
pub fn diff(a: &Stream, b: &Stream) -> Diff {
    let mut d = Diff::default();
    let nodes = |s: &Stream| -> BTreeMap<Vec<u8>, Node> {
        s.nodes.iter().filter(|n| n.conn_id == 0).map(|n| (n.path.clone(), n.clone())).collect()
    };
    let (na, nb) = (nodes(a), nodes(b));
    for (p, n) in &na {
        match nb.get(p) {
            None => d.nodes.push(format!("- {}", escape(p))),
            Some(m) => {
                if n.value != m.value {
                    d.nodes.push(format!("~ {} value '{}' -> '{}'", escape(p), escape(&n.value), escape(&m.value)));
                }
                if n.perms != m.perms {
                    d.nodes.push(format!(
                        "~ {} perms {} -> {}",
                        escape(p),
                        perms_display(&n.perms),
                        perms_display(&m.perms)
                    ));
                }
            }
        }
    }
    for p in nb.keys().filter(|p| !na.contains_key(*p)) {
        d.nodes.push(format!("+ {}", escape(p)));
    }
    let conns = |s: &Stream| -> BTreeMap<String, Connection> {
        s.connections.iter().map(|c| (conn_key(c), c.clone())).collect()
    };
    let (ca, cb) = (conns(a), conns(b));
    for (k, c) in &ca {
        match cb.get(k) {
            None => d.connections.push(format!("- {k}")),
            Some(e) => {
                if let (
                    ConnectionKind::Ring { target: t1, evtchn: e1, .. },
                    ConnectionKind::Ring { target: t2, evtchn: e2, .. },
                ) = (c.kind, e.kind)
                {
                    if t1 != t2 {
                        d.connections.push(format!("~ {k} target 0x{t1:x} -> 0x{t2:x}"));
                    }
                    if e1 != e2 {
                        d.connections.push(format!("~ {k} evtchn {e1} -> {e2}"));
                    }
                }
                if c.input != e.input || c.output != e.output || c.partial_response_len != e.partial_response_len {
                    d.connections.push(format!(
                        "~ {k} pending in {}->{} out {}->{} bytes",
                        c.input.len(),
                        e.input.len(),
                        c.output.len(),
                        e.output.len()
                    ));
                }
                if c.unique_id != e.unique_id {
                    d.connections.push(format!("~ {k} unique-id {:?} -> {:?}", c.unique_id, e.unique_id));
                }
            }
        }
    }
    for k in cb.keys().filter(|k| !ca.contains_key(*k)) {
        d.connections.push(format!("+ {k}"));
    }
    let watches = |s: &Stream| -> BTreeSet<String> {
        let by_id: HashMap<u32, String> = s.connections.iter().map(|c| (c.conn_id, conn_key(c))).collect();
        s.watches
            .iter()
            .map(|w| {
                let owner = by_id.get(&w.conn_id).cloned().unwrap_or_else(|| format!("conn-id {}", w.conn_id));
                let depth = w.depth.map(|d| format!(" depth {d}")).unwrap_or_default();
                format!("{owner}: '{}' token '{}'{depth}", escape(&w.path), escape(&w.token))
            })
            .collect()
    };
    let (wa, wb) = (watches(a), watches(b));
    d.watches.extend(wa.difference(&wb).map(|w| format!("- {w}")));
    d.watches.extend(wb.difference(&wa).map(|w| format!("+ {w}")));
    if a.version != b.version {
        d.other.push(format!("~ version {} -> {}", a.version, b.version));
    }
    if a.global_quota != b.global_quota {
        d.other.push("~ GLOBAL_QUOTA_DATA differs".into());
    }
    let doms = |s: &Stream| -> BTreeMap<u16, DomainData> { s.domains.iter().map(|x| (x.domid, x.clone())).collect() };
    let (da, db) = (doms(a), doms(b));
    for (id, x) in &da {
        match db.get(id) {
            None => d.other.push(format!("- DOMAIN {id}")),
            Some(y) if x != y => d.other.push(format!("~ DOMAIN {id}")),
            _ => {}
        }
    }
    for id in db.keys().filter(|k| !da.contains_key(*k)) {
        d.other.push(format!("+ DOMAIN {id}"));
    }
    d
}
