//! The protocol core: connections in, replies and watch events out.
//!
//! [`Core`] owns the store, the connections, the watches and the domain
//! records. A frontend feeds it the bytes a connection sent
//! ([`Core::receive`]) and drains what each connection must be sent
//! ([`Core::output`], [`Core::take_dirty`]). There are no sockets, threads
//! or clocks in here: the same core serves the daemon, the stub domain and
//! the tests.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use engine::{Access, Change, Commit, CommitError, DomId, Path, Perm, Perms, Snapshot, Store, TreeEntry};
use wire::{FrameError, Header, Message, Op, PAYLOAD_MAX, encode_watch_event, one_arg, split_args};

use crate::access::Caller;
use crate::conn::{Conn, ConnId, ConnKind, OpenTx, OutQueue};
use crate::domain::{Domain, NoRings, Platform};
use crate::error::{Error, Result};
use crate::features;
use crate::ops::{self, Ctx, home_of};
use crate::quota::{Quota, QuotaHit, QuotaTable};
use crate::reader::Reader;
use crate::reply::{encode_reply, ok};
use crate::watch::Watches;

mod control;
mod domain_ops;
mod image;
mod lifecycle;
pub(crate) mod live_update;

pub use image::{ConnImage, DomainImage, Image, ImageKind, Restored, Transport, WatchImage};

/// Daemon-wide settings (the C daemon's command line).
#[derive(Clone, Debug)]
pub struct Config {
    /// The control domain: its connections are privileged (`--priv-domid`).
    pub priv_domid: DomId,
    /// The domain the daemon runs in; socket connections act as it.
    pub store_domid: DomId,
    /// RELEASE hands a domain's nodes to `priv_domid` instead of deleting
    /// them (`--keep-orphans`).
    pub keep_orphans: bool,
    /// Global quotas: the defaults each newly tracked domain copies.
    pub quotas: QuotaTable,
}

impl Default for Config {
    fn default() -> Config {
        Config { priv_domid: DomId(0), store_domid: DomId(0), keep_orphans: false, quotas: QuotaTable::default() }
    }
}

/// A change the daemon's persistence must record, in order.
#[derive(Debug, Clone)]
pub enum JournalEntry {
    /// A published commit of the store.
    Commit(Commit),
    /// The domain table, quotas or guests' watches changed.
    Domains,
}

/// A refusal by a quota, for the frontend to log (the core has no clock to
/// rate-limit with): see [`Core::take_quota_events`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaEvent {
    /// The domain refused (an unprivileged socket client's is the store domain).
    pub domid: DomId,
    /// The request refused; `None` for a watch event dropped because the
    /// domain's queued events reached its `memory` quota.
    pub op: Option<Op>,
    /// The quota, and the latest refusal's value and limit.
    pub hit: QuotaHit,
    /// The limit is the domain's own (SET_QUOTA changed it), not the global one.
    pub own_limit: bool,
    /// Refusals of this domain by this quota since the last take.
    pub count: u32,
}

/// A connection must be closed: its peer broke the framing rules (§1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("protocol violation: payload length {len} above 4096")]
pub struct ProtocolViolation {
    /// The length the header announced (0: the decoder refused the
    /// stream otherwise).
    pub len: u32,
}

/// The protocol state machine. See the module documentation.
pub struct Core<P: Platform = NoRings> {
    /// Shared with [`Reader`]s, which read its published snapshot.
    store: Arc<Store>,
    conns: BTreeMap<ConnId, Conn>,
    watches: Watches,
    domains: BTreeMap<DomId, Domain>,
    config: Config,
    platform: P,
    next_conn: u64,
    /// Connections with new output, each once (its `Conn::dirty` says
    /// whether it is listed), in the order they got it.
    dirty: Vec<ConnId>,
    /// Lines for the daemon's log (CONTROL print, trace switches...).
    logs: Vec<String>,
    /// An event to queue right after the reply being built (WATCH's initial event).
    after_reply: Option<Vec<u8>>,
    /// What changed, for the daemon's persistence; `None` when not wanted.
    journal: Option<Vec<JournalEntry>>,
    trace: control::Trace,
    /// The live-update session and held-back requests (`live_update.rs`).
    live_update: live_update::LiveUpdate,
    /// Refusals by quotas since the last take, one entry per domain and
    /// quota (so bounded by the domains, whatever a guest sends).
    quota_events: BTreeMap<(DomId, Quota), QuotaEvent>,
}

impl<P: Platform> core::fmt::Debug for Core<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Core")
            .field("nodes", &self.store.snapshot().len())
            .field("connections", &self.conns.len())
            .field("watches", &self.watches.len())
            .finish_non_exhaustive()
    }
}

/// The initial tree of C xenstored (§4.5).
pub fn initial_snapshot(priv_domid: DomId) -> Snapshot {
    let owner = Perms::owned_by(priv_domid);
    let entry = |p: &str| TreeEntry {
        path: Path::new(p).expect("static path"),
        value: Vec::new(),
        perms: owner.clone(),
        generation: 0,
    };
    let release =
        Perms::new(&[Perm::new(Access::None, priv_domid), Perm::new(Access::Read, DomId::ANY)]).expect("non-empty");
    let special = |p: &str, perms: Perms| TreeEntry { perms, ..entry(p) };
    Snapshot::from_entries([
        entry("/"),
        entry("/tool"),
        entry("/tool/xenstored"),
        special("@introduceDomain", owner.clone()),
        special("@releaseDomain", release),
    ])
    .expect("static tree")
}

impl Core<NoRings> {
    /// A core without rings, for sockets only and for tests.
    pub fn new(config: Config) -> Core<NoRings> {
        Core::with_platform(config, NoRings)
    }
}

impl<P: Platform> Core<P> {
    /// A core over `platform`, with C's initial tree (§4.5) and the control
    /// domain introduced.
    pub fn with_platform(config: Config, platform: P) -> Core<P> {
        let store = Store::new(initial_snapshot(config.priv_domid));
        Core::with_store(config, platform, store)
    }

    /// A core over an existing store (a restored image).
    fn with_store(config: Config, platform: P, store: Store) -> Core<P> {
        let mut domains = BTreeMap::new();
        // The control domain is introduced from the start (§8.1 start-up).
        let mut dom0 = Domain::new(config.priv_domid, config.quotas.clone());
        dom0.introduced = true;
        domains.insert(config.priv_domid, dom0);
        Core {
            store: Arc::new(store),
            conns: BTreeMap::new(),
            watches: Watches::default(),
            domains,
            config,
            platform,
            next_conn: 0,
            dirty: Vec::new(),
            logs: Vec::new(),
            after_reply: None,
            journal: None,
            trace: control::Trace::default(),
            live_update: live_update::LiveUpdate::default(),
            quota_events: BTreeMap::new(),
        }
    }

    /// The store (its published snapshot is the tree).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The platform, for the frontend's part of the rings (their event
    /// channels, the bytes in them).
    pub fn platform(&mut self) -> &mut P {
        &mut self.platform
    }

    /// The settings, with the global quotas as CONTROL `quota set` left
    /// them.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The record of a domain, if the core keeps one.
    pub fn domain(&self, domid: DomId) -> Option<&Domain> {
        self.domains.get(&domid)
    }

    // ---- connections ----

    /// A new Unix-socket client: it acts as the store domain (§5.3).
    pub fn connect_socket(&mut self) -> ConnId {
        let domid = self.config.store_domid;
        let caller = Caller { domid, privileged: domid == self.config.priv_domid, target: None };
        self.add_conn(ConnKind::Socket, caller, features::DEFAULT)
    }

    /// A connection acting as domain `domid`, as its ring would. INTRODUCE
    /// makes these; tests use it directly to play a guest.
    pub fn connect_domain(&mut self, domid: DomId) -> ConnId {
        let caller = Caller { domid, privileged: domid == self.config.priv_domid, target: None };
        let features = self.domains.get(&domid).map_or(features::DEFAULT, |d| d.features);
        self.add_conn(ConnKind::Domain, caller, features)
    }

    fn add_conn(&mut self, kind: ConnKind, caller: Caller, features: u32) -> ConnId {
        self.next_conn += 1;
        let id = ConnId(self.next_conn);
        self.conns.insert(id, Conn::new(kind, caller, features));
        id
    }

    /// A connection, while it is open.
    pub fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(&id)
    }

    /// The connection is gone (EOF, error, protocol violation): its watches
    /// and transactions vanish.
    pub fn disconnect(&mut self, id: ConnId) {
        if self.conns.remove(&id).is_some() {
            self.watches.remove_conn(id);
            self.dirty.retain(|d| *d != id);
        }
        for d in self.domains.values_mut() {
            if d.conn == Some(id) {
                d.conn = None;
            }
        }
    }

    /// Bytes a connection sent. Whole requests are handled at once, in
    /// order; a partial one waits for more bytes. An oversize length is a
    /// protocol violation: the caller must drop the connection (§1.2).
    pub fn receive(&mut self, id: ConnId, bytes: &[u8]) -> core::result::Result<(), ProtocolViolation> {
        let Some(conn) = self.conns.get_mut(&id) else { return Ok(()) };
        conn.decoder.push(bytes);
        loop {
            let Some(conn) = self.conns.get_mut(&id) else { return Ok(()) };
            match conn.decoder.next_message() {
                Ok(Some(msg)) => self.handle(id, msg),
                Ok(None) => return Ok(()),
                Err(FrameError::PayloadTooLong { len }) => return Err(ProtocolViolation { len }),
                Err(_) => return Err(ProtocolViolation { len: 0 }),
            }
        }
    }

    /// The output queue of a connection, for the frontend to drain.
    pub fn output(&mut self, id: ConnId) -> Option<&mut OutQueue> {
        self.conns.get_mut(&id).map(|c| &mut c.out)
    }

    /// Connections that got output since the last call.
    pub fn take_dirty(&mut self) -> Vec<ConnId> {
        let mut dirty = Vec::new();
        self.take_dirty_into(&mut dirty);
        dirty
    }

    /// [`Core::take_dirty`] appended to `into`: a daemon calls it every
    /// turn, and neither list's allocation is given up.
    pub fn take_dirty_into(&mut self, into: &mut Vec<ConnId>) {
        for id in self.dirty.drain(..) {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.dirty = false;
            }
            into.push(id);
        }
    }

    /// Log lines produced since the last call.
    pub fn take_logs(&mut self) -> Vec<String> {
        core::mem::take(&mut self.logs)
    }

    /// The refusals by quotas since the last call, one per domain and
    /// quota (with their count), in domain order. The daemon logs them,
    /// rate-limited; nothing else in the core depends on them.
    pub fn take_quota_events(&mut self) -> Vec<QuotaEvent> {
        if self.quota_events.is_empty() {
            return Vec::new();
        }
        core::mem::take(&mut self.quota_events).into_values().collect()
    }

    /// Records a refusal of connection `id`'s request `op` by a quota.
    fn note_quota(&mut self, id: ConnId, op: Option<Op>, hit: QuotaHit) {
        let Some(conn) = self.conns.get(&id) else { return };
        let domid = conn.caller.domid;
        let own_limit =
            self.domains.get(&domid).is_some_and(|d| d.quotas.hard(hit.quota) != self.config.quotas.hard(hit.quota));
        let event = QuotaEvent { domid, op, hit, own_limit, count: 1 };
        self.quota_events
            .entry((domid, hit.quota))
            .and_modify(|e| *e = QuotaEvent { count: e.count.saturating_add(1), ..event })
            .or_insert(event);
    }

    /// Starts recording [`JournalEntry`]s for [`Core::take_journal`].
    pub fn enable_journal(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// What changed since the last call, in order (empty unless enabled).
    pub fn take_journal(&mut self) -> Vec<JournalEntry> {
        self.journal.as_mut().map(core::mem::take).unwrap_or_default()
    }

    /// Records a published commit, and fires its watches.
    fn committed(&mut self, commit: Commit) {
        self.fire(&commit);
        if let Some(j) = self.journal.as_mut()
            && !commit.changes.is_empty()
        {
            j.push(JournalEntry::Commit(commit));
        }
    }

    fn journal_domains(&mut self) {
        if let Some(j) = self.journal.as_mut()
            && !matches!(j.last(), Some(JournalEntry::Domains))
        {
            j.push(JournalEntry::Domains);
        }
    }

    fn push_output(&mut self, id: ConnId, bytes: Vec<u8>, is_event: bool) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.out.push(bytes, is_event);
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    // ---- requests ----

    /// Handles one whole request and queues its reply (after the events it
    /// caused, as C does, §6.8).
    fn handle(&mut self, id: ConnId, msg: Message) {
        let Some(msg) = self.live_update_filter(id, msg) else { return };
        let hdr = msg.header;
        let result = self.dispatch(id, &hdr, &msg.payload);
        if let Err(e) = &result
            && let Some(hit) = e.quota_hit()
        {
            self.note_quota(id, hdr.op(), hit);
        }
        if result.is_ok() && self.journal.is_some() && self.changes_domains(id, &hdr, &msg.payload) {
            self.journal_domains();
        }
        // Sized for the reply (an error's payload is its errno name).
        let mut out = Vec::with_capacity(wire::HEADER_LEN + result.as_ref().map_or(16, Vec::len));
        encode_reply(&hdr, result, &mut out);
        self.push_output(id, out, false);
        if let Some(event) = self.after_reply.take() {
            self.push_output(id, event, true);
        }
    }

    /// Whether a connection's output queue is empty and no part of a
    /// request waits in its decoder: a reply made outside the core may
    /// then go out next without overtaking anything.
    pub fn idle(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| c.out.is_empty() && c.decoder.buffered() == 0)
    }

    /// Answers a connection's non-transactional reads outside the core, if
    /// they depend on the tree alone (a privileged caller's): see
    /// [`Reader`]. The caller answers only reads that start where the
    /// connection's input stands when it is [idle](Self::idle).
    pub fn reader(&self, id: ConnId) -> Option<Reader> {
        let conn = self.conns.get(&id)?;
        Reader::for_caller(Arc::clone(&self.store), conn.caller)
    }

    /// Whether a successful request changed what persistence keeps of
    /// domains: their records, quotas, targets, or a guest's watches.
    fn changes_domains(&self, id: ConnId, hdr: &Header, payload: &[u8]) -> bool {
        match hdr.op() {
            Some(Op::Introduce | Op::Release | Op::Resume | Op::SetTarget | Op::SetFeature | Op::SetQuota) => true,
            Some(Op::Control) => payload.windows(3).any(|w| w == b"set"),
            Some(Op::Watch | Op::Unwatch | Op::ResetWatches) => {
                self.conns.get(&id).is_some_and(|c| c.kind == ConnKind::Domain)
            }
            _ => false,
        }
    }

    /// The pipeline of §1.6.
    fn dispatch(&mut self, id: ConnId, hdr: &Header, payload: &[u8]) -> Result<Vec<u8>> {
        let op = hdr.op().ok_or(Error::Unsupported)?;
        if matches!(op, Op::WatchEvent | Op::Error) {
            return Err(Error::Unsupported);
        }
        let conn = self.conns.get(&id).ok_or(Error::NotFound)?;
        if op.is_privileged() && !conn.caller.privileged {
            return Err(Error::Denied);
        }
        let known_tx =
            matches!(op, Op::Watch | Op::Unwatch) || hdr.tx_id == 0 || conn.transactions.contains_key(&hdr.tx_id);
        if !known_tx && (op == Op::TransactionStart || !self.adopt_lost_transaction(id, hdr.tx_id)) {
            return Err(Error::NotFound);
        }
        match op {
            Op::Read
            | Op::Write
            | Op::Mkdir
            | Op::Rm
            | Op::Directory
            | Op::DirectoryPart
            | Op::GetPerms
            | Op::SetPerms => self.node_op(id, op, hdr.tx_id, payload),
            Op::Watch => self.watch(id, payload),
            Op::Unwatch => self.unwatch(id, payload),
            Op::ResetWatches => {
                self.watches.remove_conn(id);
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.watches = 0;
                    conn.transactions.clear();
                }
                Ok(ok())
            }
            Op::TransactionStart => self.transaction_start(id, hdr.tx_id),
            Op::TransactionEnd => self.transaction_end(id, hdr.tx_id, payload),
            Op::Control => self.control(id, payload),
            Op::Introduce => self.introduce(payload),
            Op::Release => self.release(payload),
            Op::GetDomainPath => {
                let domid = parse_domid_arg(one_arg(payload).ok_or(Error::BadRequest)?)?;
                let mut reply = home_of(domid).into_bytes();
                reply.push(0);
                Ok(reply)
            }
            Op::IsDomainIntroduced => self.is_domain_introduced(payload),
            Op::Resume => self.resume(payload),
            Op::SetTarget => self.set_target(payload),
            Op::GetFeature => self.get_feature(id, payload),
            Op::SetFeature => self.set_feature(payload),
            Op::GetQuota => self.get_quota(payload),
            Op::SetQuota => self.set_quota(payload),
            Op::WatchEvent | Op::Error => Err(Error::Unsupported),
        }
    }

    fn node_op(&mut self, id: ConnId, op: Op, tx_id: u32, payload: &[u8]) -> Result<Vec<u8>> {
        let conn = self.conns.get_mut(&id).ok_or(Error::NotFound)?;
        let caller = conn.caller;
        let quotas = quotas_for(&self.domains, &self.config.quotas, caller.domid);
        let ctx = Ctx { caller, quotas, domain_exists: &|d| self.platform.domain_exists(d) };
        if tx_id != 0 {
            let open = conn.transactions.get_mut(&tx_id).ok_or(Error::NotFound)?;
            let result = ops::run(&ctx, &mut open.tx, op, payload);
            if !caller.privileged
                && let Err(hit) = quotas.check(Quota::TransactionNodes, open.tx.accessed_paths())
            {
                open.doomed = true;
                return Err(hit.into());
            }
            return result;
        }
        if ops::is_read(op) {
            let snapshot = self.store.snapshot();
            return ops::run_read(&ctx, &mut ops::SnapshotView(&snapshot), op, payload);
        }
        // Node operations check everything first and mutate once, last.
        let (reply, commit) = self.store.apply_one(|tx| ops::run(&ctx, tx, op, payload))?;
        self.committed(commit);
        Ok(reply)
    }

    // ---- transactions ----

    fn transaction_start(&mut self, id: ConnId, tx_id: u32) -> Result<Vec<u8>> {
        if tx_id != 0 {
            return Err(Error::Busy);
        }
        let conn = self.conns.get_mut(&id).ok_or(Error::NotFound)?;
        if !conn.caller.privileged {
            let quotas = quotas_for(&self.domains, &self.config.quotas, conn.caller.domid);
            quotas.check(Quota::Transactions, conn.transactions.len() + 1)?;
        }
        let tx_id = conn.allocate_tx_id();
        conn.transactions.insert(tx_id, OpenTx { tx: self.store.begin(), doomed: false, lost: false });
        Ok(format!("{tx_id}\0").into_bytes())
    }

    /// A connection restored after a crash names a transaction begun
    /// before it: adopted, within the transaction quota, as a fresh one
    /// that cannot commit. (C would answer ENOENT to a transaction it does
    /// not know, which a guest's kernel takes as a failure of whatever it
    /// was doing; EAGAIN at the end makes it start the transaction again.)
    fn adopt_lost_transaction(&mut self, id: ConnId, tx_id: u32) -> bool {
        let Some(conn) = self.conns.get_mut(&id) else { return false };
        if !conn.adopts_lost_transactions {
            return false;
        }
        if !conn.caller.privileged {
            let quotas = quotas_for(&self.domains, &self.config.quotas, conn.caller.domid);
            if quotas.check(Quota::Transactions, conn.transactions.len() + 1).is_err() {
                return false;
            }
        }
        self.logs.push(format!(
            "domain {}: transaction {tx_id} was open before the restart: it ends with EAGAIN",
            conn.caller.domid.0
        ));
        conn.transactions.insert(tx_id, OpenTx { tx: self.store.begin(), doomed: false, lost: true });
        true
    }

    /// The connection is a guest's ring taken up again after a crash
    /// restart: a transaction it names that this core does not know was
    /// begun before the crash, and is adopted as lost (it runs on, and its
    /// commit answers EAGAIN) instead of refused with ENOENT.
    pub fn adopt_lost_transactions(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.adopts_lost_transactions = true;
        }
    }

    fn transaction_end(&mut self, id: ConnId, tx_id: u32, payload: &[u8]) -> Result<Vec<u8>> {
        let conn = self.conns.get_mut(&id).ok_or(Error::NotFound)?;
        if tx_id == 0 {
            return Err(Error::NotFound);
        }
        let commit = match one_arg(payload) {
            Some(b"T") => true,
            Some(b"F") => false,
            _ => return Err(Error::BadRequest),
        };
        let open = conn.transactions.remove(&tx_id).ok_or(Error::NotFound)?;
        if !commit {
            return Ok(ok());
        }
        if open.lost {
            return Err(Error::Conflict);
        }
        if open.doomed {
            return Err(Error::TransactionDoomed);
        }
        let caller = conn.caller;
        let quotas = quotas_for(&self.domains, &self.config.quotas, caller.domid).clone();
        let result = self.store.commit(open.tx, |c: &Commit| {
            if caller.privileged {
                return Ok(());
            }
            // C's rule: a transaction that created nodes must leave their
            // owner within the node quota.
            let created = c.changes.iter().any(|ch| matches!(ch, Change::Written { created: true, .. }));
            if created {
                quotas.check(Quota::Nodes, c.snapshot.owned_count(caller.domid) as usize)?;
            }
            // Parents that gained children may have outgrown node-size.
            for change in &c.changes {
                if let Change::Written { path, created: true } = change
                    && let Some(parent) = path.parent_str().and_then(|p| c.snapshot.get(p))
                {
                    quotas.check(Quota::NodeSize, ops::node_size_of(parent))?;
                }
            }
            Ok(())
        });
        match result {
            Ok(commit) => {
                self.committed(commit);
                Ok(ok())
            }
            Err(CommitError::Conflict { .. }) => Err(Error::Conflict),
            Err(CommitError::Rejected(e)) => Err(e),
            Err(_) => Err(Error::Conflict),
        }
    }

    // ---- watches ----

    fn watch(&mut self, id: ConnId, payload: &[u8]) -> Result<Vec<u8>> {
        let conn = self.conns.get(&id).ok_or(Error::NotFound)?;
        let args: Vec<&[u8]> = split_args(payload).collect();
        let depth = match (args.len(), conn.features & features::WATCHDEPTH != 0) {
            (2, _) => None,
            (3, true) => {
                let d = wire::parse_lenient_u32(args[2]);
                if d > i32::MAX as u32 {
                    return Err(Error::BadRequest);
                }
                Some(d)
            }
            _ => return Err(Error::BadRequest),
        };
        let (raw, token) = (args[0], args[1]);
        let caller = conn.caller;
        let quotas = quotas_for(&self.domains, &self.config.quotas, caller.domid);
        let ctx = Ctx { caller, quotas, domain_exists: &|d| self.platform.domain_exists(d) };
        let path = ctx.path(raw, true)?;
        if !caller.privileged {
            quotas.check(Quota::Watches, conn.watches + 1)?;
        }
        if !self.watches.add(id, path, raw.to_vec(), token.to_vec(), depth) {
            return Err(Error::Exists);
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.watches += 1;
        }
        // The initial event, unconditionally, with the path as given (§6.2).
        let mut event = Vec::new();
        encode_watch_event(raw, token, &mut event);
        self.after_reply = Some(event);
        Ok(ok())
    }

    fn unwatch(&mut self, id: ConnId, payload: &[u8]) -> Result<Vec<u8>> {
        let conn = self.conns.get(&id).ok_or(Error::NotFound)?;
        let args: Vec<&[u8]> = split_args(payload).collect();
        let [raw, token] = args[..] else { return Err(Error::BadRequest) };
        let quotas = QuotaTable::default();
        let ctx = Ctx { caller: Caller { privileged: true, ..conn.caller }, quotas: &quotas, domain_exists: &|_| true };
        let path = ctx.path(raw, true)?;
        if !self.watches.remove(id, &path, token) {
            return Err(Error::NotFound);
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.watches = conn.watches.saturating_sub(1);
        }
        Ok(ok())
    }

    /// Registers a watch of `conn` exactly as it was given (relative paths
    /// under the connection's home), as persistence and live update restore
    /// them; `Ok(false)` if the connection already has it.
    fn add_watch_as_given(
        &mut self,
        conn: ConnId,
        given: &[u8],
        token: &[u8],
        depth: Option<u32>,
    ) -> core::result::Result<bool, engine::PathError> {
        let Some(c) = self.conns.get(&conn) else { return Ok(false) };
        let path = ops::absolute(c.caller.domid, given)?;
        if !self.watches.add(conn, path, given.to_vec(), token.to_vec(), depth) {
            return Ok(false);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.watches += 1;
        }
        Ok(true)
    }

    /// Fires the watches for a commit's changes (§6.3, §6.7).
    fn fire(&mut self, commit: &Commit) {
        if self.watches.is_empty() {
            return;
        }
        for change in &commit.changes {
            match change {
                Change::Written { path, .. } => {
                    let perms = commit.snapshot.get(path.as_str()).map(|n| n.perms().clone());
                    self.fire_path(path, perms.as_ref(), None, &commit.snapshot);
                }
                Change::PermsSet { path, old, new } => self.fire_path(path, Some(new), Some(old), &commit.snapshot),
                Change::Removed { path, perms, descendants } => {
                    for (d, dperms) in descendants {
                        self.fire_exact(d, dperms, &commit.snapshot);
                    }
                    self.fire_path(path, Some(perms), None, &commit.snapshot);
                }
            }
        }
    }

    /// Events for the watches on `path` and its ancestors.
    fn fire_path(&mut self, path: &Path, perms: Option<&Perms>, old: Option<&Perms>, after: &Snapshot) {
        let mut events: Vec<(ConnId, Vec<u8>)> = Vec::new();
        for (w, _) in self.watches.matching(path) {
            let Some(conn) = self.conns.get(&w.conn) else { continue };
            if !may_see(conn.caller, path, perms, old, after) {
                continue;
            }
            let home = home_of(conn.caller.domid);
            let mut out = Vec::new();
            encode_watch_event(w.event_path(path.as_str(), &home).as_bytes(), &w.token, &mut out);
            events.push((w.conn, out));
        }
        for (conn, event) in events {
            self.queue_event(conn, event, path.is_special());
        }
    }

    /// Events for watches on exactly `path`, a removed descendant (§6.3).
    fn fire_exact(&mut self, path: &Path, perms: &Perms, after: &Snapshot) {
        let mut events: Vec<(ConnId, Vec<u8>)> = Vec::new();
        for w in self.watches.on(path.as_str()) {
            let Some(conn) = self.conns.get(&w.conn) else { continue };
            if !may_see(conn.caller, path, Some(perms), None, after) {
                continue;
            }
            let mut out = Vec::new();
            encode_watch_event(&w.given, &w.token, &mut out);
            events.push((w.conn, out));
        }
        for (conn, event) in events {
            self.queue_event(conn, event, false);
        }
    }

    /// Fires a special event (`@introduceDomain`, `@releaseDomain`) for
    /// domain `domid` (§6.6).
    fn fire_special(&mut self, source: &str, domid: DomId) {
        let snapshot = self.store.snapshot();
        let node_perms = snapshot.get(source).map(|n| n.perms().clone());
        let with_domid = format!("{source}/{}", domid.0);
        let mut events: Vec<(ConnId, Vec<u8>)> = Vec::new();
        for (watched, exact) in [(source, true), (with_domid.as_str(), false)] {
            for w in self.watches.on(watched) {
                let epath = match (exact, w.depth) {
                    (true, None) => source,
                    (true, Some(0)) => continue,
                    _ => with_domid.as_str(),
                };
                let Some(conn) = self.conns.get(&w.conn) else { continue };
                let readable = conn.caller.privileged
                    || node_perms.as_ref().is_some_and(|p| conn.caller.rights(p).read)
                    || snapshot.get("/").is_some_and(|n| conn.caller.rights(n.perms()).read);
                if !readable {
                    continue;
                }
                let mut out = Vec::new();
                encode_watch_event(epath.as_bytes(), &w.token, &mut out);
                events.push((w.conn, out));
            }
        }
        for (conn, event) in events {
            self.queue_event(conn, event, true);
        }
    }

    /// Queues an event unless it is too large or (for ordinary paths) an
    /// identical one is still waiting unsent (§6.8).
    fn queue_event(&mut self, conn: ConnId, event: Vec<u8>, special: bool) {
        if event.len() > PAYLOAD_MAX + wire::HEADER_LEN {
            return;
        }
        if let Some(c) = self.conns.get(&conn)
            && !special
            && c.out.has_unsent_event(&event)
        {
            return;
        }
        if let Err(hit) = self.event_fits(conn, event.len()) {
            self.note_quota(conn, None, hit);
            return;
        }
        self.push_output(conn, event, true);
    }
}

/// The permission filter of §6.7: read access to the node (or, for
/// SET_PERMS, under its old permissions), or to its parent.
fn may_see(caller: Caller, path: &Path, perms: Option<&Perms>, old: Option<&Perms>, after: &Snapshot) -> bool {
    if caller.privileged {
        return true;
    }
    let readable = |p: &Perms| caller.rights(p).read;
    perms.is_some_and(readable)
        || old.is_some_and(readable)
        || path.parent_str().and_then(|p| after.get(p)).is_some_and(|n| readable(n.perms()))
}

/// The quotas that apply to `domid`: its own once the daemon keeps a record
/// of it (SET_QUOTA, INTRODUCE), else the global ones. (Free, not a method:
/// callers hold a connection of the core mutably at the same time.)
fn quotas_for<'a>(domains: &'a BTreeMap<DomId, Domain>, global: &'a QuotaTable, domid: DomId) -> &'a QuotaTable {
    domains.get(&domid).map_or(global, |d| &d.quotas)
}

/// A domid argument in C's strict form (§2.2).
fn parse_domid_arg(raw: &[u8]) -> Result<DomId> {
    wire::parse_domid(raw).map(DomId).ok_or(Error::BadRequest)
}
