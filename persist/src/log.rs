//! Commit-log records: what one commit (or domain change) did, as exact
//! node states, so that replay reproduces the store byte for byte.

use engine::{Change, Commit, Path, Perms, Snapshot};

use crate::checkpoint::{decode_domains, encode_domains};
use crate::codec::{Reader, Writer};
use crate::{DomainRecord, Problem, QuotaValue};

pub(crate) const MAGIC: &[u8; 8] = b"RXLOG\0\0\0";

/// One step of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogOp {
    /// The node now has exactly this value, these permissions and this
    /// generation (created, appended to its parent's children, if missing).
    Node { path: Path, value: Vec<u8>, perms: Perms, generation: u64 },
    /// The node and its subtree are gone.
    Removed { path: Path },
    /// The whole domain table and global quotas, after a domain change.
    Domains { domains: Vec<DomainRecord>, global_quotas: Vec<QuotaValue> },
}

/// One log record: the changes of commit number `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub seq: u64,
    /// The store's generation counter after the commit.
    pub next_generation: u64,
    pub ops: Vec<LogOp>,
}

/// The domain table and global quotas a record may carry.
pub type DomainsAndQuotas = (Vec<DomainRecord>, Vec<QuotaValue>);

impl LogRecord {
    /// The record of a commit: every node it created or modified (found from
    /// its changes: a node was modified by this commit iff its generation is
    /// at least the previous version's counter), ancestors before
    /// descendants, and its removals, in commit order.
    pub fn from_commit(seq: u64, commit: &Commit) -> LogRecord {
        let threshold = commit.previous_generation;
        let after = &commit.snapshot;
        let mut ops = Vec::new();
        for change in &commit.changes {
            match change {
                Change::Written { path, .. } | Change::PermsSet { path, .. } => {
                    push_modified_chain(&mut ops, after, path, threshold);
                }
                Change::Removed { path, .. } => {
                    ops.push(LogOp::Removed { path: path.clone() });
                    if let Some(parent) = path.parent() {
                        push_modified_chain(&mut ops, after, &parent, threshold);
                    }
                }
            }
        }
        LogRecord { seq, next_generation: after.next_generation(), ops }
    }

    /// A record carrying only the domain table (INTRODUCE, RELEASE, quotas...).
    pub fn domains(
        seq: u64,
        next_generation: u64,
        domains: Vec<DomainRecord>,
        global_quotas: Vec<QuotaValue>,
    ) -> LogRecord {
        LogRecord { seq, next_generation, ops: vec![LogOp::Domains { domains, global_quotas }] }
    }

    /// Applies the record's node operations to `snapshot`; returns the
    /// domain table if the record carries one.
    pub fn apply(&self, snapshot: &mut Snapshot) -> Result<Option<DomainsAndQuotas>, String> {
        let mut domains = None;
        for op in &self.ops {
            match op {
                LogOp::Node { path, value, perms, generation } => {
                    snapshot.restore_node(path, value, perms.clone(), *generation).map_err(|e| e.to_string())?
                }
                LogOp::Removed { path } => snapshot.restore_removal(path).map_err(|e| e.to_string())?,
                LogOp::Domains { domains: d, global_quotas } => domains = Some((d.clone(), global_quotas.clone())),
            }
        }
        snapshot.restore_next_generation(self.next_generation);
        Ok(domains)
    }

    /// The framed record: payload length, CRC-32, payload.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer::default();
        w.var(self.seq);
        w.var(self.next_generation);
        w.var(self.ops.len() as u64);
        for op in &self.ops {
            match op {
                LogOp::Node { path, value, perms, generation } => {
                    w.u8(1);
                    w.bytes(path.as_str().as_bytes());
                    w.bytes(value);
                    w.perms(perms);
                    w.var(*generation);
                }
                LogOp::Removed { path } => {
                    w.u8(2);
                    w.bytes(path.as_str().as_bytes());
                }
                LogOp::Domains { domains, global_quotas } => {
                    w.u8(3);
                    encode_domains(&mut w, domains, global_quotas);
                }
            }
        }
        out.extend_from_slice(&(w.buf.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&w.buf).to_le_bytes());
        out.extend_from_slice(&w.buf);
    }

    pub(crate) fn decode_payload(r: &mut Reader<'_>) -> Result<LogRecord, Problem> {
        let seq = r.var("record sequence number")?;
        let next_generation = r.var("generation counter")?;
        let n = r.count(2, "record operations")?;
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            let at = r.offset();
            ops.push(match r.u8("operation tag")? {
                1 => LogOp::Node {
                    path: r.path()?,
                    value: r.bytes("value")?.to_vec(),
                    perms: r.perms()?,
                    generation: r.var("generation")?,
                },
                2 => LogOp::Removed { path: r.path()? },
                3 => {
                    let (domains, global_quotas) = decode_domains(r)?;
                    LogOp::Domains { domains, global_quotas }
                }
                t => return Err(Problem { offset: at, what: format!("unknown operation tag {t}") }),
            });
        }
        if !r.is_empty() {
            return Err(Problem { offset: r.offset(), what: "trailing bytes in a log record".into() });
        }
        Ok(LogRecord { seq, next_generation, ops })
    }
}

/// Pushes `path` and those of its ancestors this commit modified, top-down.
fn push_modified_chain(ops: &mut Vec<LogOp>, after: &Snapshot, path: &Path, threshold: u64) {
    let mut chain = Vec::new();
    let mut cur = Some(path.clone());
    while let Some(p) = cur {
        match after.get(p.as_str()) {
            Some(n) if n.generation() >= threshold => {
                chain.push(LogOp::Node {
                    path: p.clone(),
                    value: n.value().as_bytes().to_vec(),
                    perms: n.perms().clone(),
                    generation: n.generation(),
                });
            }
            // Unmodified: its ancestors were not touched for this change.
            Some(_) => break,
            // Gone again later in the same commit; its ancestors may have
            // been created for it and stayed.
            None => {}
        }
        cur = p.parent();
    }
    ops.extend(chain.into_iter().rev());
}
