//! Plain-data model of one xenstore migration stream (or oxenstored dump).
//!
//! Every type here is a passive value: no IO, no validation, no links
//! between records other than the ids the stream itself uses (`conn_id`).
//! The model keeps exactly what the stream carries (raw pending bytes,
//! permission flags, `conn-id`/`tx-id`/`access` of nodes) so that a stream
//! read and written again with the same [`crate::WriteFormat`] is
//! byte-identical. Strings are byte vectors *without* their NUL
//! terminator, because values, tokens and even paths in a damaged file are
//! not guaranteed to be UTF-8; use [`crate::escape`] to show them.
//!
//! Conversion into the engine's snapshot type is deliberately not here:
//! this crate must not depend on `engine`.

use std::borrow::Cow;

/// `DOMID_INVALID`: "no target" in a ring connection's `tdomid`.
pub const DOMID_INVALID: u16 = 0x7FF4;
/// `DOMID_ANY`: allowed in HEAD permissions (feature bit 3).
pub const DOMID_ANY: u16 = 0x7FF5;
/// First reserved domain id; ring connections must be below it.
pub const DOMID_FIRST_RESERVED: u16 = 0x7FF0;
/// `depth` value of a WATCH_DATA_EXTENDED meaning "unlimited".
pub const WATCH_DEPTH_UNLIMITED: u16 = 0xFFFF;

/// Byte order of everything after the preamble (preamble `flags` bit 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum ByteOrder {
    /// `flags` = 0; every x86 and Arm stream.
    #[default]
    Little,
    /// `flags` = 1; never seen in practice, read and written for completeness.
    Big,
}

/// Whole content of one stream, in the order the C writer would emit it
/// (connections in list order, nodes in stream order).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Stream {
    /// Preamble `version` (1 or 2 are defined).
    pub version: u32,
    /// Byte order of records (from preamble `flags`).
    pub byte_order: ByteOrder,
    /// GLOBAL_DATA (type 1); `None` in a migration stream.
    pub global: Option<GlobalData>,
    /// GLOBAL_QUOTA_DATA (type 6), written by 4.22+.
    pub global_quota: Option<GlobalQuota>,
    /// CONNECTION_DATA records (type 2) in stream order.
    pub connections: Vec<Connection>,
    /// WATCH_DATA and WATCH_DATA_EXTENDED records (types 3 and 8) in
    /// stream order; each names its connection by `conn_id`.
    pub watches: Vec<Watch>,
    /// TRANSACTION_DATA records (type 4); C never writes them.
    pub transactions: Vec<Transaction>,
    /// NODE_DATA records (type 5) in stream order, special `@` nodes
    /// included wherever the stream put them.
    pub nodes: Vec<Node>,
    /// DOMAIN_DATA records (type 7), written by 4.21+.
    pub domains: Vec<DomainData>,
}

/// GLOBAL_DATA: descriptors that survive `exec()` of the new daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GlobalData {
    /// Listening Unix socket fd, -1 if none.
    pub socket_fd: i32,
    /// Event-channel device fd.
    pub evtchn_fd: i32,
}

/// One client connection with the bytes it had in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// `conn-id`, referenced by WATCH / TRANSACTION / NODE records.
    pub conn_id: u32,
    /// Ring (a domain) or socket (a dom0 tool).
    pub kind: ConnectionKind,
    /// Input received but not processed: delayed complete requests, then
    /// at most one partial request. Raw wire bytes.
    pub input: Vec<u8>,
    /// Output not yet sent: `partial_response_len` bytes of a partly sent
    /// response, then complete messages. Raw wire bytes.
    pub output: Vec<u8>,
    /// `out-resp-len`: how many leading `output` bytes are a partly sent
    /// response (raw, not a whole message).
    pub partial_response_len: u16,
    /// 4.21+ `unique-id` trailer (`fields` bit 0); `None` when absent.
    pub unique_id: Option<u64>,
}

/// Transport-specific part of a connection (`conn-type` + `conn-spec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionKind {
    /// `conn-type` 0: a domain's shared ring page.
    Ring {
        /// Domain owning the ring.
        domid: u16,
        /// SET_TARGET domain, or [`DOMID_INVALID`].
        target: u16,
        /// xenstored's *local* event-channel port.
        evtchn: u32,
    },
    /// `conn-type` 1: an accepted Unix socket.
    Socket {
        /// fd in the xenstored process.
        fd: i32,
    },
}

/// One registered watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    /// Owning connection.
    pub conn_id: u32,
    /// Path as the client gave it (relative paths stay relative), no NUL.
    pub path: Vec<u8>,
    /// Client token, no NUL.
    pub token: Vec<u8>,
    /// `Some(depth)` for a WATCH_DATA_EXTENDED record, `None` for WATCH_DATA.
    pub depth: Option<u16>,
}

/// TRANSACTION_DATA: a transaction open on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// Owning connection.
    pub conn_id: u32,
    /// Id the client was given.
    pub tx_id: u32,
}

/// One NODE_DATA record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Absolute path or `@…` special name, no NUL.
    pub path: Vec<u8>,
    /// Value bytes (may contain NULs).
    pub value: Vec<u8>,
    /// Owner first, then the ACL.
    pub perms: Vec<Perm>,
    /// 0 for a committed node, else the connection of its transaction.
    pub conn_id: u32,
    /// Transaction id (meaningful only when `conn_id` ≠ 0).
    pub tx_id: u32,
    /// Transaction access bits: 1 read, 2 written, 0 deleted.
    pub access: u16,
}

impl Node {
    /// A committed node as C writes it (`conn-id`/`tx-id`/`access` 0).
    pub fn committed(path: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, perms: Vec<Perm>) -> Self {
        Node { path: path.into(), value: value.into(), perms, conn_id: 0, tx_id: 0, access: 0 }
    }

    /// True for `@releaseDomain` and friends.
    pub fn is_special(&self) -> bool {
        self.path.first() == Some(&b'@')
    }

    /// Path for display (lossy if not UTF-8).
    pub fn path_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.path)
    }

    /// Owner domain (`perm[0].domid`), the one charged for the node.
    pub fn owner(&self) -> Option<u16> {
        self.perms.first().map(|p| p.domid)
    }
}

/// One permission entry; `perm[0]` is the owner and the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perm {
    /// ASCII `n`, `r`, `w` or `b` (kept raw so damaged files round-trip).
    pub letter: u8,
    /// Bit 0 = stale entry (C `XS_PERM_IGNORE`); other bits reserved.
    pub flags: u8,
    /// Domain the entry names.
    pub domid: u16,
}

impl Perm {
    /// Flag bit for a stale permission entry.
    pub const IGNORE: u8 = 0x01;

    /// Entry with no flags.
    pub fn new(letter: u8, domid: u16) -> Self {
        Perm { letter, flags: 0, domid }
    }

    /// `n0`, `r5!` (`!` = stale), as `xenstore-ls -p` and §5.2 show it.
    pub fn display(&self) -> String {
        let letter = if self.letter.is_ascii_graphic() { self.letter as char } else { '?' };
        let stale = if self.flags & Perm::IGNORE != 0 { "!" } else { "" };
        format!("{letter}{}{stale}", self.domid)
    }
}

/// Formats a permission list as `n0,r5`.
pub fn perms_display(perms: &[Perm]) -> String {
    perms.iter().map(Perm::display).collect::<Vec<_>>().join(",")
}

/// One named quota value; 0 means unlimited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Name such as `nodes` or `soft-memory`, no NUL.
    pub name: Vec<u8>,
    /// Value; 0 = unlimited.
    pub value: u32,
}

impl Quota {
    /// Builds a quota entry from a name.
    pub fn new(name: &str, value: u32) -> Self {
        Quota { name: name.as_bytes().to_vec(), value }
    }
}

/// GLOBAL_QUOTA_DATA: daemon-wide defaults.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GlobalQuota {
    /// Values that are per-domain defaults (C 4.22 puts all here).
    pub per_domain: Vec<Quota>,
    /// Values that apply globally only.
    pub global_only: Vec<Quota>,
}

/// DOMAIN_DATA: per-domain features and quota overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainData {
    /// Domain id.
    pub domid: u16,
    /// Server feature bits (v2 only; must be 0 in v1).
    pub features: u32,
    /// Quota overrides (4.22); empty in 4.21.
    pub quotas: Vec<Quota>,
}

/// Names of the server feature bits (`docs/misc/xenstore-ring.txt`).
pub fn feature_names(features: u32) -> Vec<String> {
    const NAMES: [&str; 4] = ["reconnection", "error-indicator", "watch-depth", "domid-any"];
    (0..32)
        .filter(|bit| features & (1 << bit) != 0)
        .map(|bit| NAMES.get(bit).map_or_else(|| format!("unknown-bit-{bit}"), |n| (*n).to_string()))
        .collect()
}

/// Quota names C 4.22 knows (with optional `soft-` prefix).
pub const KNOWN_QUOTAS: [&str; 9] = [
    "nodes",
    "watches",
    "outstanding",
    "memory",
    "transactions",
    "transaction-nodes",
    "node-permissions",
    "path-max",
    "node-size",
];

/// Whether `name` is a quota C would recognise.
pub fn is_known_quota(name: &[u8]) -> bool {
    let base = name.strip_prefix(b"soft-").unwrap_or(name);
    KNOWN_QUOTAS.iter().any(|k| k.as_bytes() == base)
}
