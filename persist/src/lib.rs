//! rxenstored's on-disk state, so that a daemon killed with `kill -9`
//! restarts with its tree, its domains and its quotas.
//!
//! # Layout
//!
//! - [`SavedState`]: what is saved: a store [`engine::Snapshot`] (tree,
//!   permissions, generations), the domain records ([`DomainRecord`]:
//!   introduced domains with their ring frame, event channel, features,
//!   quotas, SET_TARGET, guest watches) and the global quotas.
//! - `checkpoint`: one file holding a whole [`SavedState`] (format in
//!   ARCHITECTURE.md and below).
//! - `log`: [`LogRecord`], one per commit (the exact states of the nodes
//!   it touched, its removals) or domain change; [`LogRecord::from_commit`].
//! - [`StateDir`]: the directory: atomic checkpoint files, the append-only
//!   commit log (group commit: one `fdatasync` for a batch), recovery
//!   ([`StateDir::load`]), pruning, setting a bad state aside.
//! - [`storage`]: the file-system operations the directory uses, behind the
//!   [`Storage`] trait ([`FsStorage`] is the real file system), with the
//!   durability contract the fsync and rename ordering relies on.
//!
//! Files: `checkpoint-<seq>.rxs` (the state after commit `seq`) and
//! `log-<seq>.rxl` (records from commit `seq` on). Both start with an
//! 8-byte magic and a format version; a newer version is refused with a
//! clear message. Every checkpoint body and every log record carries a
//! CRC-32. A checkpoint is written to a `.tmp` file, fsynced, renamed and
//! the directory fsynced: the last good one is never overwritten before the
//! new one is complete. A new log gets its header the same way, so a crash
//! never leaves a log without one (recovery removes such an empty last log
//! left by older versions, with a warning).
//!
//! Checkpoint layout (little-endian; `var` = LEB128, `bytes` = var length +
//! bytes): magic `RXSTATE\0`, version u32, seq u64, body length u64, body,
//! CRC-32 of the body u32. Body: next generation (var); node count (var);
//! each node: path (bytes), value (bytes), permission count (var) and
//! entries (letter u8, domid u16), generation (var) — the tree in
//! pre-order, then special nodes; the domain block (see `DomainRecord`);
//! the global quota block.
//!
//! Log layout: magic `RXLOG\0\0\0`, version u32, first seq u64; then
//! records: payload length u32, CRC-32 u32, payload (seq var, next
//! generation var, op count var, ops: 1 = node state (path, value, perms,
//! generation), 2 = removal (path), 3 = the whole domain and quota blocks).

mod checkpoint;
mod codec;
mod dir;
mod log;
pub mod storage;

use std::path::PathBuf;

pub use dir::{CheckpointWriter, Recovered, StateDir};
pub use log::{LogOp, LogRecord};
pub use storage::{FsStorage, Storage, StorageFile};

/// Version of both file formats written by this build.
pub const FORMAT_VERSION: u32 = 1;

/// Everything a restarted daemon needs to keep serving its guests.
#[derive(Clone, Debug)]
pub struct SavedState {
    pub snapshot: engine::Snapshot,
    pub domains: Vec<DomainRecord>,
    pub global_quotas: Vec<QuotaValue>,
}

/// One domain as the daemon tracks it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DomainRecord {
    pub domid: u16,
    /// INTRODUCE seen and not released: its ring must be re-attached.
    pub introduced: bool,
    pub gfn: u64,
    pub port: u32,
    pub features: u32,
    /// SET_TARGET: the domain this one acts for.
    pub target: Option<u16>,
    pub quotas: Vec<QuotaValue>,
    /// The watches of its ring connection: re-registered and fired once
    /// after a restart, so that the guest re-scans.
    pub watches: Vec<WatchRecord>,
}

/// A quota value by its C name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaValue {
    pub name: String,
    pub value: u32,
    pub soft: bool,
}

/// A guest's watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchRecord {
    /// As the guest gave it (relative paths stay relative).
    pub path: Vec<u8>,
    pub token: Vec<u8>,
    pub depth: Option<u32>,
}

/// Where in which file something is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub offset: u64,
    pub what: String,
}

/// State that cannot be loaded. The daemon refuses to start with it unless
/// told to set it aside (`--discard-state`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Reading the directory or a file failed.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A file is damaged, truncated or of an unknown format.
    #[error("{}: at byte {}: {}", path.display(), problem.offset, problem.what)]
    Corrupt { path: PathBuf, problem: Problem },
    /// A file written by a newer rxenstored.
    #[error("{}: format version {found} is newer than this rxenstored understands ({supported}); upgrade rxenstored or move the state away", path.display())]
    NewerVersion { path: PathBuf, found: u32, supported: u32 },
    /// The files do not fit together (a gap in the log, a tree that breaks
    /// its invariants).
    #[error("{}: {what}", path.display())]
    Inconsistent { path: PathBuf, what: String },
}
