//! rxenstored's own state (the `persist` crate's checkpoint files and state
//! directories), read into the same model so that `xenstore-inspect` shows
//! them with the same reports.
//!
//! What is shown: the tree (via [`crate::engine_conv::from_engine`]), one
//! DOMAIN_DATA per domain record that is introduced or named by a node
//! (features, quota overrides), one ring
//! connection per *introduced* domain (with its SET_TARGET and its
//! watches) and the global quotas. A checkpoint has no sockets, pending
//! bytes or transactions. The ring's `evtchn` is the port the daemon
//! recorded for the domain (rxenstored keeps the guest's port, not a local
//! one).

use std::path::{Path, PathBuf};

use crate::model::*;
use crate::read::Parsed;

/// First 8 bytes of a persist checkpoint file.
pub const CHECKPOINT_MAGIC: &[u8; 8] = b"RXSTATE\0";

/// Why rxenstored state could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Copying the file into a scratch directory failed.
    #[error("{}: cannot stage the checkpoint for loading: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// persist refused the state (names file and byte offset).
    #[error("{0}")]
    Load(#[from] persist::LoadError),
    /// A directory without any checkpoint or log.
    #[error("{}: no rxenstored state (no checkpoint-*.rxs or log-*.rxl files)", path.display())]
    Empty { path: PathBuf },
}

/// What was loaded, with the last commit included.
#[derive(Debug)]
pub struct LoadedState {
    /// The model, as a v2 snapshot (records empty, no findings).
    pub parsed: Parsed,
    /// Sequence number of the last commit included.
    pub seq: u64,
    /// persist's repair warnings (a torn last log record).
    pub warnings: Vec<String>,
}

/// True if `data` starts like a persist checkpoint.
pub fn is_checkpoint(data: &[u8]) -> bool {
    data.starts_with(CHECKPOINT_MAGIC)
}

/// Loads a state directory (newest checkpoint plus the logs after it).
pub fn load_dir(dir: &Path) -> Result<LoadedState, CheckpointError> {
    // StateDir::open creates a missing directory; callers pass an existing one.
    let sd = persist::StateDir::open(dir).map_err(|source| CheckpointError::Io { path: dir.to_path_buf(), source })?;
    let rec = sd.load()?.ok_or_else(|| CheckpointError::Empty { path: dir.to_path_buf() })?;
    let file_len = std::fs::read_dir(dir)
        .map(|it| it.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len() as usize).sum())
        .unwrap_or(0);
    Ok(LoadedState { parsed: parsed_from_state(&rec.state, file_len), seq: rec.seq, warnings: rec.warnings })
}

/// Loads one checkpoint file.
///
/// persist has no public single-file loader (only `StateDir::load` of a
/// whole directory), so the file is copied into a fresh temporary
/// directory under a checkpoint name and that directory is loaded. Errors
/// are renamed to name the original file, not the temporary copy.
pub fn load_file(path: &Path) -> Result<LoadedState, CheckpointError> {
    let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    let scratch = tempfile::tempdir().map_err(io)?;
    // Keep the original name when it already is a checkpoint name (persist
    // picks the newest by the number in it); otherwise sequence 0.
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.starts_with("checkpoint-") && n.ends_with(".rxs"))
        .unwrap_or("checkpoint-0.rxs");
    let staged = scratch.path().join(name);
    std::fs::copy(path, &staged).map_err(io)?;
    let file_len = std::fs::metadata(path).map(|m| m.len() as usize).unwrap_or(0);
    let sd = persist::StateDir::open(scratch.path()).map_err(io)?;
    let rec = sd
        .load()
        .map_err(|e| rename_error(e, path))?
        .ok_or_else(|| CheckpointError::Empty { path: path.to_path_buf() })?;
    Ok(LoadedState { parsed: parsed_from_state(&rec.state, file_len), seq: rec.seq, warnings: rec.warnings })
}

/// persist's error with the staged copy's path replaced by `original`.
fn rename_error(e: persist::LoadError, original: &Path) -> persist::LoadError {
    use persist::LoadError as E;
    let path = original.to_path_buf();
    match e {
        E::Io { source, .. } => E::Io { path, source },
        E::Corrupt { problem, .. } => E::Corrupt { path, problem },
        E::NewerVersion { found, supported, .. } => E::NewerVersion { path, found, supported },
        E::Inconsistent { what, .. } => E::Inconsistent { path, what },
        other => other,
    }
}

fn quotas(q: &[persist::QuotaValue]) -> Vec<Quota> {
    q.iter().map(|q| Quota::new(&q.name, q.value)).collect()
}

/// A saved [`persist::SavedState`] as a stream (version 2, little-endian).
pub fn stream_from_state(state: &persist::SavedState) -> Stream {
    let mut snap = Stream { version: 2, nodes: crate::engine_conv::from_engine(&state.snapshot), ..Stream::default() };
    if !state.global_quotas.is_empty() {
        snap.global_quota = Some(GlobalQuota { per_domain: quotas(&state.global_quotas), global_only: Vec::new() });
    }
    // A DOMAIN_DATA record must follow a reference to its domain (a ring or
    // a node permission, §5.3); a record of a domain that is neither
    // introduced nor named by any node is not shown.
    let named: std::collections::BTreeSet<u16> =
        snap.nodes.iter().flat_map(|n| n.perms.iter().map(|p| p.domid)).collect();
    let mut conn_id = 0u32;
    for d in &state.domains {
        if !d.introduced && !named.contains(&d.domid) {
            continue;
        }
        snap.domains.push(DomainData { domid: d.domid, features: d.features, quotas: quotas(&d.quotas) });
        if !d.introduced {
            continue;
        }
        conn_id += 1;
        snap.connections.push(Connection {
            conn_id,
            kind: ConnectionKind::Ring { domid: d.domid, target: d.target.unwrap_or(DOMID_INVALID), evtchn: d.port },
            input: Vec::new(),
            output: Vec::new(),
            partial_response_len: 0,
            unique_id: None,
        });
        for w in &d.watches {
            snap.watches.push(Watch {
                conn_id,
                path: w.path.clone(),
                token: w.token.clone(),
                depth: w.depth.map(|x| u16::try_from(x).unwrap_or(WATCH_DEPTH_UNLIMITED)),
            });
        }
    }
    snap
}

/// The state as a [`Parsed`] without records or findings.
pub fn parsed_from_state(state: &persist::SavedState, file_len: usize) -> Parsed {
    Parsed { file_len, flags: 0, snapshot: stream_from_state(state), records: Vec::new(), findings: Vec::new() }
}
