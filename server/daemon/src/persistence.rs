//! Durability for the daemon (`--state-dir`, `--durability`): what the
//! core journals goes to the `persist` crate's checkpoints and commit log,
//! and a restarted daemon takes its state back from there.
//!
//! - `none`: nothing is written (C xenstored's behaviour).
//! - `checkpoint`: every `--checkpoint-interval` seconds or
//!   `--checkpoint-commits` commits, a checkpoint is written from a snapshot
//!   by a background thread while the daemon keeps serving.
//! - `commit`: additionally every commit is appended to the log and made
//!   durable before any reply leaves the daemon; all requests handled in
//!   one turn of the event loop share one `fdatasync` (group commit).
//!
//! Restart: the newest checkpoint plus the log after it. Guests' domains
//! are re-attached through the platform, their watches re-registered and
//! fired once (as C does after a live update) so that they re-scan, and
//! `@introduceDomain` fires for each. Socket clients reconnect: their
//! watches and transactions are not kept.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use engine::DomId;
use persist::{DomainRecord, LogRecord, QuotaValue, Recovered, SavedState, StateDir, WatchRecord};
use rxenstored_core::quota::{Quota, QuotaName, QuotaTable};
use rxenstored_core::{
    Config, ConnId, ConnImage, Core, DomainImage, Image, ImageKind, JournalEntry, Platform, Transport, WatchImage,
};

/// How much survives a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Memory only.
    None,
    /// Periodic background checkpoints: a crash loses the commits since the last one.
    Checkpoint,
    /// Every acknowledged commit survives a crash.
    Commit,
}

/// Settings from the command line.
#[derive(Clone, Debug)]
pub struct PersistConfig {
    pub dir: PathBuf,
    pub durability: Durability,
    pub interval: Duration,
    pub every_commits: u64,
}

/// The daemon's link to its state directory.
#[derive(Debug)]
pub struct Persistence {
    dir: StateDir,
    config: PersistConfig,
    /// Sequence number of the last journaled change.
    seq: u64,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    /// A checkpoint being written in the background, and the seq it covers.
    writing: Option<(u64, JoinHandle<std::io::Result<PathBuf>>)>,
}

impl Persistence {
    /// Opens the state directory and loads what it holds. Corrupt state is
    /// an error unless `discard` (then it is moved aside, never deleted).
    pub fn open(config: PersistConfig, discard: bool) -> Result<(Persistence, Option<Recovered>), String> {
        let dir = StateDir::open(&config.dir).map_err(|e| format!("state directory {}: {e}", config.dir.display()))?;
        let recovered = match dir.load() {
            Ok(r) => r,
            Err(e) if discard => {
                let aside = dir.set_aside().map_err(|io| format!("cannot set the damaged state aside: {io}"))?;
                tracing::warn!(
                    "discarding unusable state ({e}); moved to {}",
                    aside.map_or_else(String::new, |p| p.display().to_string())
                );
                None
            }
            Err(e) => return Err(format!("{e}\n(start with --discard-state to set it aside and start empty)")),
        };
        let seq = recovered.as_ref().map_or(0, |r| r.seq);
        let p = Persistence { dir, config, seq, since_checkpoint: 0, last_checkpoint: Instant::now(), writing: None };
        Ok((p, recovered))
    }

    /// After start-up (and any restore): a checkpoint of the state as it is,
    /// written before serving, a fresh log, old files pruned.
    pub fn start<P: Platform>(&mut self, core: &mut Core<P>) -> std::io::Result<()> {
        core.enable_journal();
        let state = export(core);
        self.dir.checkpoint_writer().write(&state, self.seq)?;
        if self.config.durability == Durability::Commit {
            self.dir.start_log(self.seq + 1)?;
        }
        self.dir.prune(self.seq)?;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Called once per turn of the event loop, before any reply is sent:
    /// journals what the core did and, in commit mode, makes it durable.
    pub fn after_requests<P: Platform>(&mut self, core: &mut Core<P>) -> std::io::Result<()> {
        let entries = core.take_journal();
        if !entries.is_empty() {
            self.since_checkpoint += entries.len() as u64;
            let mut records = Vec::with_capacity(entries.len());
            for entry in entries {
                self.seq += 1;
                if self.config.durability == Durability::Commit {
                    records.push(match entry {
                        JournalEntry::Commit(c) => LogRecord::from_commit(self.seq, &c),
                        JournalEntry::Domains => {
                            let state = export(core);
                            let generation = state.snapshot.next_generation();
                            LogRecord::domains(self.seq, generation, state.domains, state.global_quotas)
                        }
                    });
                }
            }
            self.dir.append(&records)?;
        }
        self.maybe_checkpoint(core)
    }

    /// Commit durability: every turn's changes are made durable together
    /// before its replies leave.
    pub fn group_commit(&self) -> bool {
        self.config.durability == Durability::Commit
    }

    /// How long the event loop may sleep before a checkpoint is due (no
    /// limit while nothing changed since the last one).
    pub fn timeout(&self) -> Option<Duration> {
        if self.config.durability == Durability::None || self.since_checkpoint == 0 {
            return None;
        }
        Some(self.config.interval.saturating_sub(self.last_checkpoint.elapsed()).max(Duration::from_millis(10)))
    }

    fn maybe_checkpoint<P: Platform>(&mut self, core: &mut Core<P>) -> std::io::Result<()> {
        if let Some((seq, handle)) = self.writing.take_if(|(_, h)| h.is_finished()) {
            match handle.join() {
                Ok(Ok(path)) => {
                    tracing::debug!("checkpoint {} written", path.display());
                    self.dir.prune(seq)?;
                }
                Ok(Err(e)) => tracing::error!("background checkpoint failed: {e}"),
                Err(_) => tracing::error!("background checkpoint thread panicked"),
            }
        }
        let due = self.since_checkpoint > 0
            && (self.since_checkpoint >= self.config.every_commits
                || self.last_checkpoint.elapsed() >= self.config.interval);
        if !due || self.writing.is_some() {
            return Ok(());
        }
        // The snapshot is immutable: the thread writes it while commits go on.
        let state = export(core);
        let seq = self.seq;
        if self.config.durability == Durability::Commit {
            self.dir.start_log(seq + 1)?;
        }
        let writer = self.dir.checkpoint_writer();
        let handle = std::thread::Builder::new().name("checkpoint".into()).spawn(move || writer.write(&state, seq))?;
        self.writing = Some((seq, handle));
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// On a clean stop: waits for a background checkpoint, writes a final one.
    pub fn shutdown<P: Platform>(&mut self, core: &mut Core<P>) -> std::io::Result<()> {
        self.after_requests(core)?;
        if let Some((_, handle)) = self.writing.take() {
            let _ = handle.join();
        }
        if self.config.durability != Durability::None {
            self.dir.checkpoint_writer().write(&export(core), self.seq)?;
            self.dir.prune(self.seq)?;
        }
        Ok(())
    }
}

/// The daemon's state as `persist` saves it: the core's checkpoint
/// [`Image`], each guest's target and watches in its domain's record.
pub fn export<P: Platform>(core: &mut Core<P>) -> SavedState {
    let image = core.image(ImageKind::Checkpoint);
    let mut rings: BTreeMap<DomId, ConnImage> = BTreeMap::new();
    for c in image.connections {
        if let Transport::Ring { domid, .. } = c.transport {
            rings.insert(domid, c);
        }
    }
    let domains = image
        .domains
        .iter()
        .map(|d| {
            let conn = rings.remove(&d.domid);
            DomainRecord {
                domid: d.domid.0,
                introduced: d.introduced,
                gfn: d.gfn,
                port: d.port,
                features: d.features,
                target: conn.as_ref().and_then(|c| c.target).map(|t| t.0),
                quotas: quota_values(&d.quotas),
                watches: conn
                    .map(|c| {
                        c.watches
                            .into_iter()
                            .map(|w| WatchRecord { path: w.path, token: w.token, depth: w.depth })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    SavedState { snapshot: image.tree, domains, global_quotas: quota_values(&image.quotas) }
}

fn quota_values(table: &QuotaTable) -> Vec<QuotaValue> {
    table.values().map(|(n, value)| QuotaValue { name: n.quota.name().into(), value, soft: n.soft }).collect()
}

/// `base` with the saved values over it.
fn quota_table(values: &[QuotaValue], base: &QuotaTable) -> QuotaTable {
    let mut t = base.clone();
    for v in values {
        let Some(quota) = Quota::from_name(v.name.as_bytes()) else {
            tracing::warn!("ignoring unknown saved quota {:?}", v.name);
            continue;
        };
        t.set(QuotaName { quota, soft: v.soft }, v.value);
    }
    t
}

/// Recovered state as the core's checkpoint [`Image`], over `config`'s
/// quotas.
fn image(config: &Config, state: SavedState) -> Image {
    let quotas = quota_table(&state.global_quotas, &config.quotas);
    let mut domains = Vec::with_capacity(state.domains.len());
    let mut connections = Vec::new();
    for rec in state.domains {
        let domid = DomId(rec.domid);
        domains.push(DomainImage {
            domid,
            introduced: rec.introduced,
            gfn: rec.gfn,
            port: rec.port,
            features: rec.features,
            quotas: quota_table(&rec.quotas, &quotas),
        });
        if rec.introduced {
            // (The connection's id was the previous process's: not saved.)
            let mut c = ConnImage::new(ConnId(0), Transport::Ring { domid, port: rec.port });
            c.target = rec.target.map(DomId);
            c.watches =
                rec.watches.into_iter().map(|w| WatchImage { path: w.path, token: w.token, depth: w.depth }).collect();
            connections.push(c);
        }
    }
    Image { kind: ImageKind::Checkpoint, tree: state.snapshot, quotas, domains, connections }
}

/// A core over recovered state: the tree, the quotas, the domains with
/// their rings re-attached and their watches re-registered and fired once
/// ([`ImageKind::Checkpoint`]).
pub fn restore<P: Platform>(config: Config, platform: P, state: SavedState) -> Core<P> {
    let image = image(&config, state);
    let restored = Core::restore(config, platform, image);
    for w in &restored.warnings {
        tracing::warn!("{w}");
    }
    restored.core
}
