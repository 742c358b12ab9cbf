//! Tolerant, bounds-checked reader of the binary migration stream.
//!
//! [`read_stream`] fails only when the preamble cannot be read at all.
//! Everything else (every malformed-record check of MIGRATION-STREAM.md
//! §5.3) becomes a [`Finding`] with its file offset, and reading goes on
//! at the next record whenever the record length allows it.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};

/// Maps keyed per record: SipHash was the largest cost of reading a
/// 1M-node stream, and nothing here needs DoS-resistant hashing beyond
/// foldhash's random seed.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

use crate::bytes::{roundup8, u16_at, u32_at, u64_at};
use crate::message::{PAYLOAD_MAX, decode_messages};
use crate::model::*;

/// `"xenstore"`, the preamble ident.
pub const IDENT: &[u8; 8] = b"xenstore";
/// Size of the preamble.
pub const PREAMBLE_LEN: usize = 16;

/// Record type codes (§1.4).
pub mod rtype {
    /// END.
    pub const END: u32 = 0;
    /// GLOBAL_DATA.
    pub const GLOBAL: u32 = 1;
    /// CONNECTION_DATA.
    pub const CONNECTION: u32 = 2;
    /// WATCH_DATA.
    pub const WATCH: u32 = 3;
    /// TRANSACTION_DATA.
    pub const TRANSACTION: u32 = 4;
    /// NODE_DATA.
    pub const NODE: u32 = 5;
    /// GLOBAL_QUOTA_DATA.
    pub const GLOBAL_QUOTA: u32 = 6;
    /// DOMAIN_DATA.
    pub const DOMAIN: u32 = 7;
    /// WATCH_DATA_EXTENDED.
    pub const WATCH_EXT: u32 = 8;
}

/// Name of a record type, as the golden decode prints it.
pub fn record_type_name(t: u32) -> &'static str {
    match t {
        rtype::END => "END",
        rtype::GLOBAL => "GLOBAL_DATA",
        rtype::CONNECTION => "CONNECTION_DATA",
        rtype::WATCH => "WATCH_DATA",
        rtype::TRANSACTION => "TRANSACTION_DATA",
        rtype::NODE => "NODE_DATA",
        rtype::GLOBAL_QUOTA => "GLOBAL_QUOTA_DATA",
        rtype::DOMAIN => "DOMAIN_DATA",
        rtype::WATCH_EXT => "WATCH_DATA_EXTENDED",
        _ => "UNKNOWN",
    }
}

/// Fatal reader errors: the input is not a stream we can walk at all.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadError {
    /// Fewer than 16 bytes: no preamble.
    #[error("offset 0x0: file is {0} bytes, too short for the 16-byte preamble")]
    TooShort(usize),
    /// The first 8 bytes are not `"xenstore"`.
    #[error("offset 0x0: bad ident {0:02x?}, not a xenstore migration stream")]
    BadIdent([u8; 8]),
}

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing (unknown quota names, …).
    Info,
    /// Unusual but harmless (padding bytes, data after END, …).
    Warning,
    /// The record is malformed.
    Error,
}

/// One malformed-record check that failed (§5.3).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    #[error("unsupported stream version {0} (defined: 1, 2)")]
    BadVersion(u32),
    #[error("preamble flags 0x{0:x} have reserved bits set")]
    ReservedFlags(u32),
    #[error("big-endian stream (flags bit 0); a little-endian C reader rejects it")]
    ForeignByteOrder,
    #[error("file ends before END record")]
    MissingEnd,
    #[error("{0} bytes after END record")]
    TrailingData(usize),
    #[error("record header truncated: {0} bytes left")]
    TruncatedHeader(usize),
    #[error("{name} length {length} is not a multiple of 8")]
    UnalignedLength { name: &'static str, length: u32 },
    #[error("{name} length {length} is smaller than its fixed part ({min} bytes)")]
    LengthTooSmall { name: &'static str, length: u32, min: usize },
    #[error("{name} length {length} runs past end of file ({available} bytes left)")]
    PastEndOfFile { name: &'static str, length: u32, available: usize },
    #[error("{name}: non-zero padding or reserved bytes")]
    NonZeroPadding { name: &'static str },
    #[error("unknown record type {0}")]
    UnknownType(u32),
    #[error("END record with length {0}")]
    EndWithBody(u32),
    #[error("GLOBAL_DATA appears more than once")]
    DuplicateGlobal,
    #[error("GLOBAL_QUOTA_DATA appears more than once")]
    DuplicateGlobalQuota,
    #[error("GLOBAL_DATA is not the first record")]
    GlobalNotFirst,
    #[error("CONNECTION conn-id 0")]
    ZeroConnId,
    #[error("CONNECTION conn-id {0} used twice")]
    DuplicateConnId(u32),
    #[error("CONNECTION conn-type {0} is reserved")]
    BadConnType(u16),
    #[error("CONNECTION fields 0x{0:x} has unknown bits")]
    UnknownConnFields(u16),
    #[error("CONNECTION unique-id trailer on a socket connection")]
    SocketUniqueId,
    #[error("CONNECTION length {length}, expected {expected} from in={input} out={output}")]
    ConnLengthMismatch { length: u32, expected: usize, input: u16, output: u32 },
    #[error("CONNECTION out-resp-len {resp} > out-data-len {out}")]
    RespLenTooBig { resp: u16, out: u32 },
    #[error("CONNECTION {part} data does not split into whole messages ({bytes} trailing bytes)")]
    PendingNotWhole { part: &'static str, bytes: usize },
    #[error("CONNECTION {part} message at data offset {at} has len {len} > 4096")]
    OversizedMessage { part: &'static str, at: usize, len: u32 },
    #[error("ring CONNECTION domid 0x{0:x} is reserved (>= 0x7ff0)")]
    ReservedDomid(u16),
    #[error("ring CONNECTION tdomid equals domid {0}")]
    SelfTarget(u16),
    #[error("{name}: string lengths overflow the record")]
    StringOverflow { name: &'static str },
    #[error("{name}: {what} is not NUL-terminated or contains a NUL")]
    BadTerminator { name: &'static str, what: &'static str },
    #[error("{name} conn-id {conn_id} unknown")]
    UnknownConn { name: &'static str, conn_id: u32 },
    #[error("{name} conn-id {conn_id} refers to a CONNECTION that comes later")]
    ConnLater { name: &'static str, conn_id: u32 },
    #[error("WATCH_DATA_EXTENDED in a version 1 stream")]
    WatchExtInV1,
    #[error("WATCH_DATA_EXTENDED only parses under the 4.22 writer-bug layout (strings at 8, no depth)")]
    WatchExtBugLayout,
    #[error("WATCH for conn-id {0} in a migration stream whose connection is {1}")]
    MigrationWatchOtherConn(u32, u32),
    #[error("NODE path {0:?} is neither absolute nor @special")]
    BadPath(String),
    #[error("NODE {0:?} has perm-count 0 but is committed")]
    NoPerms(String),
    #[error("NODE {path:?} permission letter 0x{letter:02x} is not n/r/w/b")]
    BadPermLetter { path: String, letter: u8 },
    #[error("NODE {path:?} permission flags 0x{flags:02x} have unknown bits")]
    BadPermFlags { path: String, flags: u8 },
    #[error("NODE path {0:?} longer than 3072 bytes")]
    PathTooLong(String),
    #[error("NODE {path:?} value of {len} bytes exceeds 4096")]
    ValueTooLong { path: String, len: usize },
    #[error("NODE {0:?} appears twice")]
    DuplicatePath(String),
    #[error("NODE {0:?}: parent missing")]
    ParentMissing(String),
    #[error("NODE {0:?}: parent comes later in the stream")]
    ParentLater(String),
    #[error("NODE {path:?} in transaction (conn {conn_id}, tx {tx_id}) without a TRANSACTION_DATA before it")]
    NodeWithoutTransaction { path: String, conn_id: u32, tx_id: u32 },
    #[error("{name}: quota value count and name list do not match")]
    QuotaNamesMismatch { name: &'static str },
    #[error("{name}: unknown quota name {quota:?}")]
    UnknownQuota { name: &'static str, quota: String },
    #[error("DOMAIN {0} was never referenced before it")]
    DomainUnseen(u16),
    #[error("DOMAIN {0} features non-zero in a version 1 stream")]
    FeaturesInV1(u16),
    #[error("DOMAIN {domid} has unknown feature bits 0x{bits:x}")]
    UnknownFeatures { domid: u16, bits: u32 },
    /// A line of an oxenstored text dump that could not be used.
    #[error("oxenstored dump line {line}: {message}")]
    OxLine { line: usize, message: String },
}

impl Problem {
    /// Severity of the finding (§5.3 marks some as warnings).
    pub fn severity(&self) -> Severity {
        use Problem::*;
        match self {
            TrailingData(_) | UnalignedLength { .. } | NonZeroPadding { .. } | EndWithBody(_) => Severity::Warning,
            UnknownFeatures { .. } | MigrationWatchOtherConn(..) => Severity::Warning,
            UnknownQuota { .. } => Severity::Info,
            _ => Severity::Error,
        }
    }
}

/// A problem found at a file offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// File offset of the record (or field) concerned.
    pub offset: u64,
    /// Severity, from [`Problem::severity`].
    pub severity: Severity,
    /// What is wrong.
    pub problem: Problem,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "@0x{:04x} {sev}: {}", self.offset, self.problem)
    }
}

/// Which layout a WATCH_DATA_EXTENDED record was read with (§1.5.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WatchExtLayout {
    /// Design-doc layout: depth at 8, strings at 12.
    Design,
    /// What the 4.22 C writer really emits: strings at 8, no depth.
    Bug422,
}

/// What a record turned into in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// The GLOBAL_DATA (see [`Stream::global`]).
    Global,
    /// The GLOBAL_QUOTA_DATA.
    GlobalQuota,
    /// Index into [`Stream::connections`].
    Connection(usize),
    /// Index into [`Stream::watches`]; layout for type 8.
    Watch(usize, Option<WatchExtLayout>),
    /// Index into [`Stream::transactions`].
    Transaction(usize),
    /// Index into [`Stream::nodes`].
    Node(usize),
    /// Index into [`Stream::domains`].
    Domain(usize),
    /// END.
    End,
    /// Skipped: unknown type or too damaged to decode.
    Skipped,
}

/// One record as found in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordInfo {
    /// File offset of the record header.
    pub offset: u64,
    /// Record type code.
    pub rtype: u32,
    /// Declared body length.
    pub length: u32,
    /// Where its content went in the model.
    pub item: Item,
}

/// Everything learnt from one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Size of the input in bytes.
    pub file_len: usize,
    /// Raw preamble `flags`.
    pub flags: u32,
    /// Decoded content.
    pub snapshot: Stream,
    /// Records in file order with offsets.
    pub records: Vec<RecordInfo>,
    /// Every check that failed, in file order.
    pub findings: Vec<Finding>,
}

impl Parsed {
    /// True if no finding is an error.
    pub fn is_clean(&self) -> bool {
        !self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// First error-level finding, if any.
    pub fn first_error(&self) -> Option<&Finding> {
        self.findings.iter().find(|f| f.severity == Severity::Error)
    }

    /// Offset of the given record kind's `i`th item (for reports).
    pub fn offset_of(&self, item: Item) -> Option<u64> {
        self.records.iter().find(|r| r.item == item).map(|r| r.offset)
    }
}

/// Reads a whole stream from memory.
pub fn read_stream(buf: &[u8]) -> Result<Parsed, ReadError> {
    if buf.len() < PREAMBLE_LEN {
        return Err(ReadError::TooShort(buf.len()));
    }
    let mut ident = [0u8; 8];
    ident.copy_from_slice(&buf[..8]);
    if &ident != IDENT {
        return Err(ReadError::BadIdent(ident));
    }
    let version = u32_at(buf, 8, ByteOrder::Big).unwrap_or(0);
    let flags = u32_at(buf, 12, ByteOrder::Big).unwrap_or(0);
    let order = if flags & 1 != 0 { ByteOrder::Big } else { ByteOrder::Little };
    let mut r = StreamReader {
        buf,
        order,
        parsed: Parsed {
            file_len: buf.len(),
            flags,
            snapshot: Stream { version, byte_order: order, ..Stream::default() },
            records: Vec::new(),
            findings: Vec::new(),
        },
        conn_index: FastMap::default(),
        node_paths: FastMap::default(),
        waiting_parent: Vec::new(),
        ancestry: Vec::new(),
        transactions: FastSet::default(),
        domids_seen: BTreeSet::new(),
        global_quota_seen: false,
    };
    if version == 0 || version > 2 {
        r.find(8, Problem::BadVersion(version));
    }
    if flags & !1 != 0 {
        r.find(12, Problem::ReservedFlags(flags));
    }
    if order == ByteOrder::Big {
        r.find(12, Problem::ForeignByteOrder);
    }
    r.reserve();
    r.walk();
    r.finish();
    Ok(r.parsed)
}

struct StreamReader<'a> {
    buf: &'a [u8],
    order: ByteOrder,
    parsed: Parsed,
    /// conn-id → index of its connection.
    conn_index: FastMap<u32, usize>,
    /// committed path (borrowed from the input) → offset of its record.
    node_paths: FastMap<&'a [u8], u64>,
    /// (offset, path) of nodes whose parent was not seen yet.
    waiting_parent: Vec<(u64, &'a [u8])>,
    /// Committed paths from the root down to the previous node (see
    /// [`StreamReader::parent_seen`]).
    ancestry: Vec<&'a [u8]>,
    /// (conn-id, tx-id) of TRANSACTION_DATA seen so far.
    transactions: FastSet<(u32, u32)>,
    /// Domain ids referenced so far (connections, targets, node owners).
    domids_seen: BTreeSet<u16>,
    global_quota_seen: bool,
}

impl<'a> StreamReader<'a> {
    fn find(&mut self, offset: u64, problem: Problem) {
        let severity = problem.severity();
        self.parsed.findings.push(Finding { offset, severity, problem });
    }

    /// Sizes the per-record tables from a pass over the record headers
    /// alone, so that a 1M-node stream is not rehashed and copied
    /// twenty times as it grows. The counts are of records really present,
    /// so a hostile length cannot make this reserve more than the file holds.
    fn reserve(&mut self) {
        let (mut records, mut nodes) = (0usize, 0usize);
        let mut pos = PREAMBLE_LEN;
        while let (Some(t), Some(length)) = (u32_at(self.buf, pos, self.order), u32_at(self.buf, pos + 4, self.order)) {
            records += 1;
            if t == rtype::NODE {
                nodes += 1;
            }
            if t == rtype::END {
                break;
            }
            pos = pos.saturating_add(8).saturating_add(length as usize);
        }
        self.parsed.records.reserve(records);
        self.parsed.snapshot.nodes.reserve(nodes);
        self.node_paths.reserve(nodes);
    }

    fn walk(&mut self) {
        let mut pos = PREAMBLE_LEN;
        loop {
            let left = self.buf.len() - pos;
            if left == 0 {
                self.find(pos as u64, Problem::MissingEnd);
                return;
            }
            if left < 8 {
                self.find(pos as u64, Problem::TruncatedHeader(left));
                self.find(self.buf.len() as u64, Problem::MissingEnd);
                return;
            }
            let (Some(t), Some(length)) = (u32_at(self.buf, pos, self.order), u32_at(self.buf, pos + 4, self.order))
            else {
                return;
            };
            let at = pos as u64;
            let name = record_type_name(t);
            if length % 8 != 0 {
                self.find(at, Problem::UnalignedLength { name, length });
            }
            let body_start = pos + 8;
            let available = self.buf.len() - body_start;
            if length as usize > available {
                self.find(at, Problem::PastEndOfFile { name, length, available });
                self.parsed.records.push(RecordInfo { offset: at, rtype: t, length, item: Item::Skipped });
                self.find(self.buf.len() as u64, Problem::MissingEnd);
                return;
            }
            let body = &self.buf[body_start..body_start + length as usize];
            let item = self.record(at, t, length, body);
            self.parsed.records.push(RecordInfo { offset: at, rtype: t, length, item });
            if t == rtype::END {
                if length != 0 {
                    self.find(at, Problem::EndWithBody(length));
                }
                let after = body_start + length as usize;
                if after < self.buf.len() {
                    self.find(after as u64, Problem::TrailingData(self.buf.len() - after));
                }
                return;
            }
            // A WATCH_EXT written by the buggy 4.22 writer is shorter than it
            // says; follow the bytes that were really written.
            let mut next = body_start + length as usize;
            if let Item::Watch(i, Some(WatchExtLayout::Bug422)) = item
                && let Some(w) = self.parsed.snapshot.watches.get(i)
            {
                let written = body_start + roundup8(8 + w.path.len() + 1 + w.token.len() + 1);
                if written != next && self.plausible_record_at(written) && !self.plausible_record_at(next) {
                    next = written;
                }
            }
            pos = next;
        }
    }

    fn plausible_record_at(&self, pos: usize) -> bool {
        match (u32_at(self.buf, pos, self.order), u32_at(self.buf, pos + 4, self.order)) {
            (Some(t), Some(len)) => t <= 8 && len % 8 == 0 && (len as usize) <= self.buf.len().saturating_sub(pos + 8),
            _ => false,
        }
    }

    fn check_padding(&mut self, at: u64, name: &'static str, pad: &[u8]) {
        if pad.iter().any(|b| *b != 0) {
            self.find(at, Problem::NonZeroPadding { name });
        }
    }

    fn too_small(&mut self, at: u64, name: &'static str, length: u32, min: usize) -> bool {
        if (length as usize) < min {
            self.find(at, Problem::LengthTooSmall { name, length, min });
            true
        } else {
            false
        }
    }

    fn record(&mut self, at: u64, t: u32, length: u32, body: &'a [u8]) -> Item {
        let first = self.parsed.records.is_empty();
        match t {
            rtype::END => Item::End,
            rtype::GLOBAL => self.global(at, length, body, first),
            rtype::CONNECTION => self.connection(at, length, body),
            rtype::WATCH | rtype::WATCH_EXT => self.watch(at, t, length, body),
            rtype::TRANSACTION => self.transaction(at, length, body),
            rtype::NODE => self.node(at, length, body),
            rtype::GLOBAL_QUOTA => self.global_quota(at, length, body),
            rtype::DOMAIN => self.domain(at, length, body),
            _ => {
                self.find(at, Problem::UnknownType(t));
                Item::Skipped
            }
        }
    }

    fn global(&mut self, at: u64, length: u32, body: &[u8], first: bool) -> Item {
        const NAME: &str = "GLOBAL_DATA";
        if self.too_small(at, NAME, length, 8) {
            return Item::Skipped;
        }
        if self.parsed.snapshot.global.is_some() {
            self.find(at, Problem::DuplicateGlobal);
            return Item::Skipped;
        }
        if !first {
            self.find(at, Problem::GlobalNotFirst);
        }
        let socket_fd = u32_at(body, 0, self.order).unwrap_or(0) as i32;
        let evtchn_fd = u32_at(body, 4, self.order).unwrap_or(0) as i32;
        self.check_padding(at, NAME, body.get(8..).unwrap_or(&[]));
        self.parsed.snapshot.global = Some(GlobalData { socket_fd, evtchn_fd });
        Item::Global
    }

    fn connection(&mut self, at: u64, length: u32, body: &[u8]) -> Item {
        const NAME: &str = "CONNECTION_DATA";
        if self.too_small(at, NAME, length, 24) {
            return Item::Skipped;
        }
        let o = self.order;
        let conn_id = u32_at(body, 0, o).unwrap_or(0);
        let conn_type = u16_at(body, 4, o).unwrap_or(0);
        let fields = u16_at(body, 6, o).unwrap_or(0);
        let in_len = u16_at(body, 16, o).unwrap_or(0);
        let resp_len = u16_at(body, 18, o).unwrap_or(0);
        let out_len = u32_at(body, 20, o).unwrap_or(0);
        let kind = match conn_type {
            0 => {
                let domid = u16_at(body, 8, o).unwrap_or(0);
                let target = u16_at(body, 10, o).unwrap_or(0);
                let evtchn = u32_at(body, 12, o).unwrap_or(0);
                if domid >= DOMID_FIRST_RESERVED {
                    self.find(at, Problem::ReservedDomid(domid));
                }
                if target == domid {
                    self.find(at, Problem::SelfTarget(domid));
                }
                ConnectionKind::Ring { domid, target, evtchn }
            }
            1 => {
                let fd = u32_at(body, 8, o).unwrap_or(0) as i32;
                self.check_padding(at, NAME, body.get(12..16).unwrap_or(&[]));
                ConnectionKind::Socket { fd }
            }
            other => {
                self.find(at, Problem::BadConnType(other));
                return Item::Skipped;
            }
        };
        if conn_id == 0 {
            self.find(at, Problem::ZeroConnId);
        }
        if fields & !1 != 0 {
            self.find(at, Problem::UnknownConnFields(fields));
        }
        let has_trailer = fields & 1 != 0;
        if has_trailer && matches!(kind, ConnectionKind::Socket { .. }) {
            self.find(at, Problem::SocketUniqueId);
        }
        let data_end = 24usize + in_len as usize + out_len as usize;
        let expected = roundup8(data_end) + if has_trailer { 8 } else { 0 };
        if expected != length as usize {
            self.find(at, Problem::ConnLengthMismatch { length, expected, input: in_len, output: out_len });
        }
        let Some(data) = body.get(24..data_end) else {
            return Item::Skipped;
        };
        let (input, output) = data.split_at(in_len as usize);
        let unique_id = if has_trailer { u64_at(body, roundup8(data_end), o) } else { None };
        if has_trailer && unique_id.is_none() {
            return Item::Skipped;
        }
        let pad_end = if has_trailer { roundup8(data_end) } else { body.len() };
        self.check_padding(at, NAME, body.get(data_end..pad_end).unwrap_or(&[]));
        if resp_len as u32 > out_len {
            self.find(at, Problem::RespLenTooBig { resp: resp_len, out: out_len });
        }
        self.check_pending(at, input, output, resp_len);
        if conn_id != 0 && self.conn_index.contains_key(&conn_id) {
            self.find(at, Problem::DuplicateConnId(conn_id));
        }
        if let ConnectionKind::Ring { domid, target, .. } = kind {
            self.domids_seen.insert(domid);
            if target != DOMID_INVALID {
                self.domids_seen.insert(target);
            }
        }
        let conn = Connection {
            conn_id,
            kind,
            input: input.to_vec(),
            output: output.to_vec(),
            partial_response_len: resp_len,
            unique_id,
        };
        let idx = self.parsed.snapshot.connections.len();
        self.parsed.snapshot.connections.push(conn);
        self.conn_index.entry(conn_id).or_insert(idx);
        Item::Connection(idx)
    }

    fn check_pending(&mut self, at: u64, input: &[u8], output: &[u8], resp_len: u16) {
        let d = decode_messages(input, self.order);
        for off in d.oversized {
            let len = u32_at(input, off + 12, self.order).unwrap_or(0);
            self.find(at, Problem::OversizedMessage { part: "input", at: off, len });
        }
        let queued = output.get(resp_len as usize..).unwrap_or(&[]);
        let d = decode_messages(queued, self.order);
        for off in d.oversized {
            let len = u32_at(queued, off + 12, self.order).unwrap_or(0);
            self.find(at, Problem::OversizedMessage { part: "output", at: off + resp_len as usize, len });
        }
        if let Some(p) = d.partial {
            self.find(at, Problem::PendingNotWhole { part: "output", bytes: p.bytes.len() });
        }
    }

    fn watch(&mut self, at: u64, t: u32, length: u32, body: &[u8]) -> Item {
        let ext = t == rtype::WATCH_EXT;
        let name = record_type_name(t);
        if self.too_small(at, name, length, if ext { 12 } else { 8 }) {
            return Item::Skipped;
        }
        if ext && self.parsed.snapshot.version < 2 {
            self.find(at, Problem::WatchExtInV1);
        }
        let o = self.order;
        let conn_id = u32_at(body, 0, o).unwrap_or(0);
        let plen = u16_at(body, 4, o).unwrap_or(0) as usize;
        let tlen = u16_at(body, 6, o).unwrap_or(0) as usize;
        let strings_ok = |start: usize| -> Option<(&[u8], &[u8])> {
            let path = body.get(start..start + plen)?;
            let token = body.get(start + plen..start + plen + tlen)?;
            Some((path, token))
        };
        let terminated = |s: &[u8]| s.last() == Some(&0) && !s[..s.len() - 1].contains(&0);
        let (start, depth, layout) = if ext {
            let design = strings_ok(12).filter(|(p, t)| terminated(p) && terminated(t));
            let bug = strings_ok(8).filter(|(p, t)| terminated(p) && terminated(t));
            match (design, bug) {
                (Some(_), _) | (None, None) => (12, u16_at(body, 8, o), Some(WatchExtLayout::Design)),
                (None, Some(_)) => {
                    self.find(at, Problem::WatchExtBugLayout);
                    (8, Some(WATCH_DEPTH_UNLIMITED), Some(WatchExtLayout::Bug422))
                }
            }
        } else {
            (8, None, None)
        };
        let Some((path, token)) = strings_ok(start) else {
            self.find(at, Problem::StringOverflow { name });
            return Item::Skipped;
        };
        if layout == Some(WatchExtLayout::Design) {
            self.check_padding(at, name, body.get(10..12).unwrap_or(&[]));
        }
        if !terminated(path) {
            self.find(at, Problem::BadTerminator { name, what: "path" });
        }
        if !terminated(token) {
            self.find(at, Problem::BadTerminator { name, what: "token" });
        }
        if layout != Some(WatchExtLayout::Bug422) {
            self.check_padding(at, name, body.get(start + plen + tlen..).unwrap_or(&[]));
        }
        self.check_conn_ref(at, name, conn_id);
        let strip = |s: &[u8]| s.strip_suffix(&[0]).unwrap_or(s).to_vec();
        let w = Watch { conn_id, path: strip(path), token: strip(token), depth };
        let idx = self.parsed.snapshot.watches.len();
        self.parsed.snapshot.watches.push(w);
        Item::Watch(idx, layout)
    }

    fn check_conn_ref(&mut self, at: u64, name: &'static str, conn_id: u32) {
        if !self.conn_index.contains_key(&conn_id) {
            // Resolved against later connections in `finish`.
            self.find(at, Problem::UnknownConn { name, conn_id });
        }
    }

    fn transaction(&mut self, at: u64, length: u32, body: &[u8]) -> Item {
        const NAME: &str = "TRANSACTION_DATA";
        if self.too_small(at, NAME, length, 8) {
            return Item::Skipped;
        }
        let conn_id = u32_at(body, 0, self.order).unwrap_or(0);
        let tx_id = u32_at(body, 4, self.order).unwrap_or(0);
        self.check_padding(at, NAME, body.get(8..).unwrap_or(&[]));
        self.check_conn_ref(at, NAME, conn_id);
        self.transactions.insert((conn_id, tx_id));
        let idx = self.parsed.snapshot.transactions.len();
        self.parsed.snapshot.transactions.push(Transaction { conn_id, tx_id });
        Item::Transaction(idx)
    }

    /// Whether `parent` was seen. Writers emit the tree in pre-order, so
    /// the parent is almost always on the chain of the previous node's
    /// ancestors: check that chain first and hash only when it is not.
    fn parent_seen(&mut self, parent: &[u8]) -> bool {
        while let Some(top) = self.ancestry.last() {
            if *top == parent {
                return true;
            }
            self.ancestry.pop();
        }
        self.node_paths.contains_key(parent)
    }

    fn node(&mut self, at: u64, length: u32, body: &'a [u8]) -> Item {
        const NAME: &str = "NODE_DATA";
        if self.too_small(at, NAME, length, 16) {
            return Item::Skipped;
        }
        let o = self.order;
        let conn_id = u32_at(body, 0, o).unwrap_or(0);
        let tx_id = u32_at(body, 4, o).unwrap_or(0);
        let plen = u16_at(body, 8, o).unwrap_or(0) as usize;
        let vlen = u16_at(body, 10, o).unwrap_or(0) as usize;
        let access = u16_at(body, 12, o).unwrap_or(0);
        let nperm = u16_at(body, 14, o).unwrap_or(0) as usize;
        let path_start = 16 + 4 * nperm;
        let (Some(perm_bytes), Some(path), Some(value)) = (
            body.get(16..path_start),
            body.get(path_start..path_start + plen),
            body.get(path_start + plen..path_start + plen + vlen),
        ) else {
            self.find(at, Problem::StringOverflow { name: NAME });
            return Item::Skipped;
        };
        self.check_padding(at, NAME, body.get(path_start + plen + vlen..).unwrap_or(&[]));
        let terminated = path.last() == Some(&0) && !path[..path.len() - 1].contains(&0);
        if !terminated {
            self.find(at, Problem::BadTerminator { name: NAME, what: "path" });
        }
        let path: &'a [u8] = path.strip_suffix(&[0]).unwrap_or(path);
        // Only built when a finding needs it: most nodes have none.
        let shown = || String::from_utf8_lossy(path).into_owned();
        if !matches!(path.first(), Some(b'/') | Some(b'@')) {
            self.find(at, Problem::BadPath(shown()));
        }
        if path.len() > 3072 {
            self.find(at, Problem::PathTooLong(shown()));
        }
        if value.len() > PAYLOAD_MAX {
            self.find(at, Problem::ValueTooLong { path: shown(), len: value.len() });
        }
        let perms: Vec<Perm> = perm_bytes
            .chunks_exact(4)
            .map(|c| Perm { letter: c[0], flags: c[1], domid: u16_at(c, 2, o).unwrap_or(0) })
            .collect();
        for p in &perms {
            if !matches!(p.letter, b'n' | b'r' | b'w' | b'b') {
                self.find(at, Problem::BadPermLetter { path: shown(), letter: p.letter });
            }
            if p.flags & !Perm::IGNORE != 0 {
                self.find(at, Problem::BadPermFlags { path: shown(), flags: p.flags });
            }
        }
        if conn_id == 0 {
            if perms.is_empty() {
                self.find(at, Problem::NoPerms(shown()));
            }
            match self.node_paths.entry(path) {
                Entry::Occupied(_) => self.find(at, Problem::DuplicatePath(shown())),
                Entry::Vacant(v) => {
                    v.insert(at);
                }
            }
            if let Some(parent) = parent_of(path)
                && !self.parent_seen(parent)
            {
                self.waiting_parent.push((at, path));
            }
            self.ancestry.push(path);
            if let Some(owner) = perms.first() {
                self.domids_seen.insert(owner.domid);
            }
        } else if !self.transactions.contains(&(conn_id, tx_id)) {
            self.find(at, Problem::NodeWithoutTransaction { path: shown(), conn_id, tx_id });
        }
        let node = Node { path: path.to_vec(), value: value.to_vec(), perms, conn_id, tx_id, access };
        let idx = self.parsed.snapshot.nodes.len();
        self.parsed.snapshot.nodes.push(node);
        Item::Node(idx)
    }

    /// Parses `count` u32 values at `vals_at` then `count` NUL-terminated names.
    fn quotas(&mut self, at: u64, name: &'static str, body: &[u8], vals_at: usize, count: usize) -> Option<Vec<Quota>> {
        let names_at = vals_at + 4 * count;
        let Some(vals) = body.get(vals_at..names_at) else {
            self.find(at, Problem::StringOverflow { name });
            return None;
        };
        let mut rest = body.get(names_at..).unwrap_or(&[]);
        let mut out = Vec::with_capacity(count);
        for chunk in vals.chunks_exact(4) {
            let value = u32_at(chunk, 0, self.order).unwrap_or(0);
            let Some(nul) = rest.iter().position(|b| *b == 0) else {
                self.find(at, Problem::QuotaNamesMismatch { name });
                return None;
            };
            let qname = rest[..nul].to_vec();
            rest = &rest[nul + 1..];
            if !is_known_quota(&qname) {
                let quota = String::from_utf8_lossy(&qname).into_owned();
                self.find(at, Problem::UnknownQuota { name, quota });
            }
            out.push(Quota { name: qname, value });
        }
        if rest.iter().any(|b| *b != 0) {
            self.find(at, Problem::QuotaNamesMismatch { name });
        }
        Some(out)
    }

    fn global_quota(&mut self, at: u64, length: u32, body: &[u8]) -> Item {
        const NAME: &str = "GLOBAL_QUOTA_DATA";
        if self.too_small(at, NAME, length, 4) {
            return Item::Skipped;
        }
        if self.global_quota_seen {
            self.find(at, Problem::DuplicateGlobalQuota);
            return Item::Skipped;
        }
        self.global_quota_seen = true;
        let d = u16_at(body, 0, self.order).unwrap_or(0) as usize;
        let g = u16_at(body, 2, self.order).unwrap_or(0) as usize;
        let Some(mut all) = self.quotas(at, NAME, body, 4, d + g) else {
            return Item::Skipped;
        };
        let global_only = all.split_off(d);
        self.parsed.snapshot.global_quota = Some(GlobalQuota { per_domain: all, global_only });
        Item::GlobalQuota
    }

    fn domain(&mut self, at: u64, length: u32, body: &[u8]) -> Item {
        const NAME: &str = "DOMAIN_DATA";
        if self.too_small(at, NAME, length, 8) {
            return Item::Skipped;
        }
        let domid = u16_at(body, 0, self.order).unwrap_or(0);
        let n = u16_at(body, 2, self.order).unwrap_or(0) as usize;
        let features = u32_at(body, 4, self.order).unwrap_or(0);
        if !self.domids_seen.contains(&domid) {
            self.find(at, Problem::DomainUnseen(domid));
        }
        if features != 0 && self.parsed.snapshot.version < 2 {
            self.find(at, Problem::FeaturesInV1(domid));
        }
        if features & !0xF != 0 {
            self.find(at, Problem::UnknownFeatures { domid, bits: features & !0xF });
        }
        let Some(quotas) = self.quotas(at, NAME, body, 8, n) else {
            return Item::Skipped;
        };
        let idx = self.parsed.snapshot.domains.len();
        self.parsed.snapshot.domains.push(DomainData { domid, features, quotas });
        Item::Domain(idx)
    }

    /// Checks that need the whole stream: forward references.
    fn finish(&mut self) {
        let waiting = std::mem::take(&mut self.waiting_parent);
        for (at, path) in waiting {
            let shown = String::from_utf8_lossy(path).into_owned();
            let parent = parent_of(path).unwrap_or(b"/");
            let problem = match self.node_paths.get(parent) {
                Some(p_at) if *p_at > at => Problem::ParentLater(shown),
                _ => Problem::ParentMissing(shown),
            };
            self.find(at, problem);
        }
        // Unknown conn-ids that do exist later become "comes later".
        for f in &mut self.parsed.findings {
            if let Problem::UnknownConn { name, conn_id } = f.problem
                && self.conn_index.contains_key(&conn_id)
            {
                f.problem = Problem::ConnLater { name, conn_id };
            }
        }
        // Migration stream (no GLOBAL): watches must belong to its one connection.
        let snap = &self.parsed.snapshot;
        if snap.global.is_none()
            && let Some(first) = snap.connections.first().map(|c| c.conn_id)
        {
            let bad: Vec<(u64, u32)> = self
                .parsed
                .records
                .iter()
                .filter_map(|r| match r.item {
                    Item::Watch(i, _) => snap.watches.get(i).map(|w| (r.offset, w.conn_id)),
                    _ => None,
                })
                .filter(|(_, c)| *c != first)
                .collect();
            for (at, c) in bad {
                self.find(at, Problem::MigrationWatchOtherConn(c, first));
            }
        }
        self.parsed.findings.sort_by_key(|f| f.offset);
    }
}

/// Parent path of an absolute path (`/a/b` → `/a`, `/a` → `/`); `None`
/// for `/` and `@` names.
pub fn parent_of(path: &[u8]) -> Option<&[u8]> {
    if path.first() != Some(&b'/') || path == b"/" {
        return None;
    }
    let cut = path.iter().rposition(|b| *b == b'/')?;
    Some(if cut == 0 { b"/" } else { &path[..cut] })
}
