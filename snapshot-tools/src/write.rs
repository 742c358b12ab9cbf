//! Byte-exact writer following MIGRATION-STREAM.md §1.6.
//!
//! Record order: preamble, GLOBAL, GLOBAL_QUOTA, each connection followed
//! by its watches, TRANSACTION records, nodes (special `@` nodes before or
//! after the tree, see [`SpecialNodes`]), DOMAIN records, END. Every
//! record is zero-padded to a multiple of 8 and `length` includes the
//! padding. Type 8 uses the design-doc layout, never the 4.22 bug.

use crate::bytes::{Out, roundup8};
use crate::model::*;
use crate::read::{IDENT, rtype};

/// Why a model cannot be written as a stream.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteError {
    /// Only versions 1 and 2 exist.
    #[error("stream version {0} is not supported (1 or 2)")]
    BadVersion(u32),
    /// WATCH_DATA_EXTENDED needs version 2.
    #[error("watch {path:?} of conn-id {conn_id} has a depth, which needs version 2")]
    DepthInV1 { conn_id: u32, path: String },
    /// DOMAIN_DATA `features` needs version 2.
    #[error("domain {0} has features, which need version 2")]
    FeaturesInV1(u16),
    /// A watch or transaction names no connection of the model.
    #[error("{what} refers to conn-id {conn_id}, which has no connection")]
    UnknownConn { what: &'static str, conn_id: u32 },
    /// A length does not fit its on-disk field (C would truncate; we refuse).
    #[error("{what} is {len} bytes, more than its field can hold")]
    TooLong { what: &'static str, len: usize },
    /// `partial_response_len` is larger than the output bytes.
    #[error("conn-id {0}: partial response longer than the output data")]
    RespLenTooBig(u32),
}

/// Where the `@releaseDomain` / `@introduceDomain` records go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialNodes {
    /// 4.17: before `/`.
    BeforeTree,
    /// 4.18 and later: after the tree.
    AfterTree,
}

/// Which C writer to imitate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteFormat {
    /// Preamble version (1 or 2).
    pub version: u32,
    /// Placement of special nodes.
    pub special_nodes: SpecialNodes,
}

impl WriteFormat {
    /// Version 1 as Xen 4.17 writes it.
    pub const C417: WriteFormat = WriteFormat { version: 1, special_nodes: SpecialNodes::BeforeTree };
    /// Version 2 as HEAD (4.22) writes it.
    pub const HEAD: WriteFormat = WriteFormat { version: 2, special_nodes: SpecialNodes::AfterTree };
    /// Version 1 as a 4.18+ writer produces it (`-v 1` on 4.21+).
    pub const HEAD_V1: WriteFormat = WriteFormat { version: 1, special_nodes: SpecialNodes::AfterTree };

    /// The format a version is normally written in: v1 as 4.17, v2 as HEAD.
    pub fn for_version(version: u32) -> WriteFormat {
        if version == 1 { WriteFormat::C417 } else { WriteFormat { version, ..WriteFormat::HEAD } }
    }

    /// The format that reproduces `snap` as read: its version, with the
    /// special nodes where they were found.
    pub fn detect(snap: &Stream) -> WriteFormat {
        let first_special = snap.nodes.iter().position(Node::is_special);
        let first_tree = snap.nodes.iter().position(|n| !n.is_special());
        let special_nodes = match (first_special, first_tree) {
            (Some(s), Some(t)) if s < t => SpecialNodes::BeforeTree,
            (Some(_), Some(_)) => SpecialNodes::AfterTree,
            _ => WriteFormat::for_version(snap.version).special_nodes,
        };
        WriteFormat { version: snap.version, special_nodes }
    }
}

fn len16(what: &'static str, len: usize) -> Result<u16, WriteError> {
    u16::try_from(len).map_err(|_| WriteError::TooLong { what, len })
}

fn len32(what: &'static str, len: usize) -> Result<u32, WriteError> {
    u32::try_from(len).map_err(|_| WriteError::TooLong { what, len })
}

/// Writes `snap` as a complete stream.
pub fn write_stream(snap: &Stream, format: WriteFormat) -> Result<Vec<u8>, WriteError> {
    if !(1..=2).contains(&format.version) {
        return Err(WriteError::BadVersion(format.version));
    }
    let mut w = Writer { out: Out { buf: Vec::new(), order: snap.byte_order } };
    w.out.buf.extend_from_slice(IDENT);
    w.out.buf.extend_from_slice(&format.version.to_be_bytes());
    let flags: u32 = if snap.byte_order == ByteOrder::Big { 1 } else { 0 };
    w.out.buf.extend_from_slice(&flags.to_be_bytes());

    if let Some(g) = snap.global {
        w.record(rtype::GLOBAL, |o| {
            o.u32(g.socket_fd as u32);
            o.u32(g.evtchn_fd as u32);
            Ok(())
        })?;
    }
    if let Some(q) = &snap.global_quota {
        w.record(rtype::GLOBAL_QUOTA, |o| {
            o.u16(len16("global quota count", q.per_domain.len())?);
            o.u16(len16("global quota count", q.global_only.len())?);
            quota_list(o, q.per_domain.iter().chain(&q.global_only));
            Ok(())
        })?;
    }
    for w_ in &snap.watches {
        if !snap.connections.iter().any(|c| c.conn_id == w_.conn_id) {
            return Err(WriteError::UnknownConn { what: "watch", conn_id: w_.conn_id });
        }
    }
    for c in &snap.connections {
        w.connection(c)?;
        for watch in snap.watches.iter().filter(|x| x.conn_id == c.conn_id) {
            w.watch(watch, format.version)?;
        }
    }
    for t in &snap.transactions {
        w.record(rtype::TRANSACTION, |o| {
            o.u32(t.conn_id);
            o.u32(t.tx_id);
            Ok(())
        })?;
    }
    let (special, tree): (Vec<&Node>, Vec<&Node>) = snap.nodes.iter().partition(|n| n.is_special());
    let ordered: Vec<&Node> = match format.special_nodes {
        SpecialNodes::BeforeTree => special.into_iter().chain(tree).collect(),
        SpecialNodes::AfterTree => tree.into_iter().chain(special).collect(),
    };
    for n in ordered {
        w.node(n)?;
    }
    for d in &snap.domains {
        if format.version < 2 && d.features != 0 {
            return Err(WriteError::FeaturesInV1(d.domid));
        }
        w.record(rtype::DOMAIN, |o| {
            o.u16(d.domid);
            o.u16(len16("domain quota count", d.quotas.len())?);
            o.u32(d.features);
            quota_list(o, d.quotas.iter());
            Ok(())
        })?;
    }
    w.record(rtype::END, |_| Ok(()))?;
    Ok(w.out.buf)
}

fn quota_list<'a>(o: &mut Out, quotas: impl Iterator<Item = &'a Quota> + Clone) {
    for q in quotas.clone() {
        o.u32(q.value);
    }
    for q in quotas {
        o.buf.extend_from_slice(&q.name);
        o.buf.push(0);
    }
}

struct Writer {
    out: Out,
}

impl Writer {
    /// Writes a record header, the body produced by `body`, and padding,
    /// then patches `length` to the padded body size.
    fn record(&mut self, t: u32, body: impl FnOnce(&mut Out) -> Result<(), WriteError>) -> Result<(), WriteError> {
        self.out.u32(t);
        let len_at = self.out.buf.len();
        self.out.u32(0);
        let start = self.out.buf.len();
        body(&mut self.out)?;
        self.out.pad8();
        let length = len32("record", self.out.buf.len() - start)?;
        let bytes = match self.out.order {
            ByteOrder::Little => length.to_le_bytes(),
            ByteOrder::Big => length.to_be_bytes(),
        };
        self.out.buf[len_at..len_at + 4].copy_from_slice(&bytes);
        Ok(())
    }

    fn connection(&mut self, c: &Connection) -> Result<(), WriteError> {
        let in_len = len16("pending input", c.input.len())?;
        let out_len = len32("pending output", c.output.len())?;
        if c.partial_response_len as usize > c.output.len() {
            return Err(WriteError::RespLenTooBig(c.conn_id));
        }
        self.record(rtype::CONNECTION, |o| {
            o.u32(c.conn_id);
            match c.kind {
                ConnectionKind::Ring { .. } => o.u16(0),
                ConnectionKind::Socket { .. } => o.u16(1),
            }
            o.u16(if c.unique_id.is_some() { 1 } else { 0 });
            match c.kind {
                ConnectionKind::Ring { domid, target, evtchn } => {
                    o.u16(domid);
                    o.u16(target);
                    o.u32(evtchn);
                }
                ConnectionKind::Socket { fd } => {
                    o.u32(fd as u32);
                    o.u32(0);
                }
            }
            o.u16(in_len);
            o.u16(c.partial_response_len);
            o.u32(out_len);
            o.buf.extend_from_slice(&c.input);
            o.buf.extend_from_slice(&c.output);
            if let Some(id) = c.unique_id {
                o.pad8();
                o.u64(id);
            }
            Ok(())
        })
    }

    fn watch(&mut self, w: &Watch, version: u32) -> Result<(), WriteError> {
        let plen = len16("watch path", w.path.len() + 1)?;
        let tlen = len16("watch token", w.token.len() + 1)?;
        let t = match w.depth {
            None => rtype::WATCH,
            Some(_) if version < 2 => {
                return Err(WriteError::DepthInV1 {
                    conn_id: w.conn_id,
                    path: String::from_utf8_lossy(&w.path).into_owned(),
                });
            }
            Some(_) => rtype::WATCH_EXT,
        };
        self.record(t, |o| {
            o.u32(w.conn_id);
            o.u16(plen);
            o.u16(tlen);
            if let Some(depth) = w.depth {
                o.u16(depth);
                o.u16(0);
            }
            o.buf.extend_from_slice(&w.path);
            o.buf.push(0);
            o.buf.extend_from_slice(&w.token);
            o.buf.push(0);
            Ok(())
        })
    }

    fn node(&mut self, n: &Node) -> Result<(), WriteError> {
        let plen = len16("node path", n.path.len() + 1)?;
        let vlen = len16("node value", n.value.len())?;
        let nperm = len16("permission list", n.perms.len())?;
        self.record(rtype::NODE, |o| {
            o.u32(n.conn_id);
            o.u32(n.tx_id);
            o.u16(plen);
            o.u16(vlen);
            o.u16(n.access);
            o.u16(nperm);
            for p in &n.perms {
                o.buf.push(p.letter);
                o.buf.push(p.flags);
                o.u16(p.domid);
            }
            o.buf.extend_from_slice(&n.path);
            o.buf.push(0);
            o.buf.extend_from_slice(&n.value);
            Ok(())
        })
    }
}

/// Expected `length` of a CONNECTION record (§1.5.3 formula).
pub fn connection_length(c: &Connection) -> usize {
    roundup8(24 + c.input.len() + c.output.len()) + if c.unique_id.is_some() { 8 } else { 0 }
}
