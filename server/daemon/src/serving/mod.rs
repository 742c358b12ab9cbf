//! The daemon's Unix-socket frontend: accepts clients, feeds their bytes to
//! the [`Core`] and writes back what it queued.
//!
//! Everything here is I/O; every protocol decision is the core's.
//!
//! # Reply order
//!
//! The one rule every path here keeps: **each connection gets the replies
//! and watch events that serving the requests one at a time, in the order
//! the daemon took them in, would give it.** A connection's requests are
//! answered in the order it sent them; a watch event queued for it before
//! one of its replies goes out before that reply. Requests of different
//! connections interleave in whatever order the daemon takes them in (a
//! read racing a concurrent commit may see the tree before or after it,
//! as a client could with C xenstored), but each connection sees one
//! serial order. `tests/reply_order.rs` checks the rule against a serial
//! model run on [`Core`] directly, over every path below.
//!
//! # Threads
//!
//! The core and everything that touches it (client table, rings,
//! persistence) sit behind one lock, in `LoopState`. The main loop polls
//! the sockets, as C xenstored does: one loop turn serves every ready
//! client and then writes, so a watcher gets a turn's events together
//! (a thread per client, tried as `--socket-threads` until 2026-12,
//! sent each request's events on their own, which cost a bootstorm with
//! watchers more than the parallel socket work gained; see
//! benches/README.md). Three adaptations, each kept for a workload users
//! have (what each buys, measured: benches/README.md):
//!
//! - **Snapshot reads.** The plain reads at the start of what a
//!   privileged client sent are answered from the store's published
//!   snapshot ([`Reader`]) when nothing of the client's is ahead of them
//!   (no output queued, no partial request, no earlier input in the core),
//!   without a turn of the core.
//! - **Solo runs** (`solo.rs`). A client alone for a while is served by a
//!   blocking `recv` until anyone else needs the loop: two system calls
//!   a request instead of three.
//! - **Readers on threads of their own.** A client that asks mostly reads
//!   outside transactions ([`rxenstored_core::RequestMix`], `promote`) is
//!   handed to a thread that blocks in `recv` and answers its snapshot
//!   reads itself, without the lock, so they run on every core at once;
//!   the rest of its input goes to a shared inbox. The core's work is
//!   *combined*: whichever thread gets the lock serves everything in the
//!   inbox and writes out what the core queued, while the others go
//!   straight back to `recv` (a thread that left input behind checks the
//!   inbox again after unlocking, so nothing is stranded). A client with
//!   too much input waiting (`INBOX_BYTES`) waits for the lock itself:
//!   that is the back-pressure a flooding client gets. Each connection's
//!   `Lane` keeps its replies in order: a read is answered on the thread
//!   only if it starts where a request starts ([`FrameTracker`]), none of
//!   the connection's earlier input is still in the core, and no output
//!   waits for it; otherwise it goes through the core like any request.
//!   A client thread sends the replies of the connections it served;
//!   other output (watch events) is left to the main loop, woken once,
//!   which sends it in batches.
//!
//! None of the three runs with a trace file (whose lines the core's
//! callers write) nor with commit durability (whose group commit needs a
//! loop turn to batch over, and a snapshot read could show what is not
//! durable yet).
//!
//! The main thread always runs the poll: the listening socket, signals,
//! the platform's event descriptor (rings), sockets whose output is
//! waiting for room, timers, and live update. Output is always written
//! with `MSG_DONTWAIT` under the lock (a connection's queued messages in
//! one `sendmsg`), so a client that stops reading
//! never blocks anyone; its bytes wait in the core's queue (where the
//! core's bounds apply) until the poll says the socket has room.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use foldhash::{HashMap, HashSet};
use mio::net::{UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use parking_lot::{Condvar, MappedMutexGuard, Mutex, MutexGuard};
use rxenstored_core::{ConnId, Core, LuRequest, OutQueue, Platform, Reader};

use crate::persistence::Persistence;
use crate::quota_log::QuotaLog;
use wire::FrameTracker;

mod rings;
mod solo;

const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 3);

/// How often a pending live update is checked (C: once a loop turn, its
/// loop waking at least every second).
const LIVE_UPDATE_CHECK: Duration = Duration::from_millis(100);
/// A client thread's stack: the core's work runs on it (the thread that
/// holds the lock serves), so it gets what the main thread would have; it
/// is address space, touched only as deep as a request goes.
const CLIENT_STACK: usize = 8 * 1024 * 1024;
/// Messages gathered into one `sendmsg` (Linux's `UIO_MAXIOV` is 1024).
const MAX_IOV: usize = 64;
/// Up to this many waiting messages, a smaller array gathers them.
const FEW_IOV: usize = 4;
/// Read buffer of a client thread.
const CLIENT_BUF: usize = 16 * 1024;
/// Snapshot replies a client thread builds before sending them (a read's
/// reply is at most 4 kB, a read request as small as 17 bytes).
const SNAPSHOT_REPLIES: usize = 64 * 1024;
/// Unserved input bytes after which a client's thread serves the inbox
/// itself (waiting for the lock) before reading more.
const INBOX_BYTES: usize = 64 * 1024;

/// Where the socket lives, as C xenstored decides it (§11): `$XENSTORED_PATH`,
/// else `$XENSTORED_RUNDIR/socket`, else `/var/run/xenstored/socket`.
pub fn socket_path_from_env() -> PathBuf {
    if let Some(p) = std::env::var_os("XENSTORED_PATH") {
        return PathBuf::from(p);
    }
    let rundir =
        std::env::var_os("XENSTORED_RUNDIR").map_or_else(|| PathBuf::from("/var/run/xenstored"), PathBuf::from);
    rundir.join("socket")
}

/// Creates the run directory if needed, removes a stale socket, binds and
/// restricts the socket to its owner (mode 0600, as C does).
pub fn bind(path: &FsPath) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// A socket client as the writers see it.
struct Client {
    /// Shared with the client's thread when a thread of its own reads it.
    stream: Arc<StdUnixStream>,
    /// Registered for writability (output is waiting).
    wants_write: bool,
    lane: Arc<Lane>,
    /// Read by a thread of its own (promoted from the loop as a reader),
    /// not by the poll.
    threaded: bool,
    /// Answers the client's leading plain reads from the published
    /// snapshot (privileged clients, [`LoopState::loop_snapshot_reads`]).
    reader: Option<Reader>,
}

/// What a client's thread shares with the holder of the lock about one
/// connection, for the snapshot reads the thread answers itself: they
/// must not overtake the connection's earlier replies.
#[derive(Default)]
struct Lane {
    /// Bytes handed to the inbox whose turn has not finished: while there
    /// are any, the core has requests of this connection to answer first.
    waiting: AtomicUsize,
    out: Mutex<LaneOut>,
}

#[derive(Default)]
struct LaneOut {
    /// The thread's snapshot replies that the socket did not take at once:
    /// they go before the core's queue.
    front: OutQueue,
    /// Output is waiting (here or in the core's queue), so a snapshot
    /// reply must queue behind it in the core. Set by the lock's holder
    /// (and by the thread when the socket did not take its replies).
    backlog: bool,
    /// The daemon closed the connection: nothing more is answered here.
    closed: bool,
}

/// Everything the core's callers share, behind [`Shared::state`].
pub(crate) struct LoopState<P: Platform> {
    core: Core<P>,
    clients: HashMap<ConnId, Client>,
    registry: Registry,
    trace: Option<fs::File>,
    /// Guests' rings, when the platform has them (`rings.rs`).
    rings: rings::RingState,
    /// The state directory, with `--state-dir`.
    persistence: Option<Persistence>,
    /// Set by a client thread that could not persist: the main loop stops.
    fatal: Option<io::Error>,
    /// Connections with output from a client thread's turn that did not
    /// ask for it (watch events): the main loop sends it, so that a busy
    /// stretch reaches a watcher in a few large writes, not one per event.
    deferred: HashSet<ConnId>,
    /// Rate-limited log lines for refusals by quotas (`quota_log.rs`).
    quota_log: QuotaLog,
}

/// The scratch of one turn of the core: what it served and what it must
/// flush. Empty between turns; kept, beside [`LoopState`] under the lock,
/// only for its allocations.
#[derive(Default)]
struct Turn {
    /// Connections whose input was served this turn: their replies go out
    /// at its end.
    served: Vec<ConnId>,
    /// Inbox input served this turn: its [`Lane::waiting`] drops when the
    /// turn has sent the replies.
    through: Vec<(Arc<Lane>, usize)>,
    /// The connections a turn flushes.
    dirty_ids: Vec<ConnId>,
    /// Snapshot replies being built.
    snapshot_out: Vec<u8>,
    /// Clients found to be readers this turn, promoted at its end.
    promote: Vec<ConnId>,
}

/// What [`Shared::state`] guards: the state, and the scratch of the turn
/// that whoever holds the lock runs.
struct Locked<P: Platform> {
    state: LoopState<P>,
    turn: Turn,
}

/// What a client thread read, waiting in the inbox for the core.
struct Input {
    id: ConnId,
    /// The bytes, or the connection's end (with why).
    bytes: Result<Vec<u8>, String>,
    lane: Arc<Lane>,
}

/// The least time between two log lines for one domain's refusals by one
/// quota, by default (`--quota-log-interval`).
pub const QUOTA_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What the main thread and the client threads share.
struct Shared<P: Platform> {
    state: Mutex<Locked<P>>,
    /// Input read by client threads; served by whoever holds `state`.
    inbox: SegQueue<Input>,
    /// Wakes the main loop (ring work queued, live update requested, fatal
    /// error) from a client thread.
    waker: Waker,
    /// The main loop has been woken to send deferred output.
    flush_wake: AtomicBool,
    /// Client threads stop reading while this is set (live update).
    paused: AtomicBool,
    pause: Mutex<bool>,
    resume: Condvar,
}

/// The main thread's handle on one client thread.
struct ClientThread {
    handle: JoinHandle<()>,
    /// Held by the thread from before its `recv` until the bytes are in the
    /// core: whoever holds it knows no bytes are in flight.
    gate: Arc<Mutex<()>>,
}

impl<P: Platform> std::fmt::Debug for Daemon<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("socket", &self.socket_path)
            .field("client_threads", &self.threads.len())
            .finish()
    }
}

/// The daemon: serves until SIGTERM or SIGINT, then finishes the requests
/// already read, flushes what it can and removes the socket.
pub struct Daemon<P: Platform> {
    shared: Arc<Shared<P>>,
    poll: Poll,
    listener: UnixListener,
    socket_path: PathBuf,
    threads: HashMap<ConnId, ClientThread>,
    /// Kept registered: a signal makes it readable.
    _signals: UnixStream,
    /// The live-update clock's origin (`live_update_tick`).
    started: Instant,
    last_live_update_check: Option<Instant>,
    /// Serves a lone client with a blocking `recv` (`solo.rs`).
    solo: solo::Solo,
}

impl<P: Platform + Send + 'static> Daemon<P> {
    pub fn new(
        core: Core<P>,
        listener: UnixListener,
        socket_path: PathBuf,
        trace: Option<fs::File>,
    ) -> io::Result<Daemon<P>> {
        let poll = Poll::new()?;
        let mut listener = listener;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let (sig_read, sig_write) = StdUnixStream::pair()?;
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::low_level::pipe::register(sig, sig_write.try_clone()?)?;
        }
        sig_read.set_nonblocking(true)?;
        let mut signals = UnixStream::from_std(sig_read);
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let mut core = core;
        let rings = rings::RingState::register(&poll, &mut core)?;
        core.set_live_update_file_check(crate::live_update::exec::check_binary);
        let state = LoopState {
            core,
            clients: HashMap::default(),
            registry: poll.registry().try_clone()?,
            trace,
            rings,
            persistence: None,
            fatal: None,
            deferred: HashSet::default(),
            quota_log: QuotaLog::new(QUOTA_LOG_INTERVAL),
        };
        let shared = Shared {
            state: Mutex::new(Locked { state, turn: Turn::default() }),
            inbox: SegQueue::new(),
            waker,
            flush_wake: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            pause: Mutex::new(false),
            resume: Condvar::new(),
        };
        let solo = solo::Solo::new(poll.as_raw_fd())?;
        Ok(Daemon {
            solo,
            shared: Arc::new(shared),
            poll,
            listener,
            socket_path,
            threads: HashMap::default(),
            _signals: signals,
            started: Instant::now(),
            last_live_update_check: None,
        })
    }

    /// The least time between two log lines for one domain's refusals by
    /// one quota (default [`QUOTA_LOG_INTERVAL`]).
    pub fn set_quota_log_interval(&mut self, interval: Duration) {
        self.shared.state.lock().state.quota_log = QuotaLog::new(interval);
    }

    /// Journals every change to `p` (see [`crate::persistence`]): in commit
    /// mode no reply leaves before the changes it acknowledges are durable,
    /// and the sockets are served from the main loop alone so that one
    /// `fsync` covers a whole turn's requests.
    pub fn set_persistence(&mut self, p: Persistence) {
        self.shared.state.lock().state.persistence = Some(p);
    }

    pub fn core(&self) -> MappedMutexGuard<'_, Core<P>> {
        MutexGuard::map(self.shared.state.lock(), |s| &mut s.state.core)
    }

    fn poll_timeout(&self, state: &LoopState<P>) -> Option<Duration> {
        let persist = state.persistence.as_ref().and_then(Persistence::timeout);
        let lu = state.core.live_update_pending().then_some(LIVE_UPDATE_CHECK);
        [state.rings.timeout(), persist, lu].into_iter().flatten().min()
    }

    /// Runs until a termination signal.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut writable = Vec::new();
        // Output restored by a live update (the requester's OK among it).
        let shared = Arc::clone(&self.shared);
        let mut timeout = {
            let mut locked = shared.state.lock();
            let Locked { state, turn } = &mut *locked;
            state.flush_dirty(turn);
            self.poll_timeout(state)
        };
        // Input adopted clients sent before the loop started. (Every
        // unlock is followed by this: a client thread that found the lock
        // taken left its input to whoever held it.)
        shared.combine();
        loop {
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let mut locked = shared.state.lock();
            let Locked { state, turn } = &mut *locked;
            // Deferred output is sent at the end of this turn.
            shared.flush_wake.store(false, Ordering::SeqCst);
            // The client that was the poll's only event, if so.
            let mut alone = None;
            let mut count = 0;
            for event in events.iter() {
                count += 1;
                match event.token() {
                    LISTENER => self.accept(state)?,
                    SIGNALS => {
                        tracing::info!("termination signal: shutting down");
                        state.shutdown(turn, &self.socket_path);
                        return Ok(());
                    }
                    rings::EVTCHN => state.ring_events(),
                    WAKER => {}
                    Token(t) => {
                        let id = ConnId(t as u64);
                        let polled = state.clients.get(&id).is_some_and(|c| !c.threaded);
                        if polled && (event.is_readable() || event.is_read_closed()) {
                            state.read_client(turn, id, &mut buf);
                            if !event.is_read_closed() && !event.is_writable() {
                                alone = Some(id);
                            }
                        }
                        if event.is_writable() || event.is_write_closed() {
                            writable.push(id);
                        }
                    }
                }
            }
            if let Some(e) = state.fatal.take() {
                return Err(e);
            }
            state.serve_inbox(turn, &shared.inbox);
            state.service_rings(turn);
            for id in writable.drain(..) {
                state.flush(id);
            }
            // Group commit: what this turn changed is durable before any
            // reply acknowledging it is written.
            state.finish_turn(turn, false)?;
            for id in turn.promote.drain(..) {
                self.promote(state, id);
            }
            let due = state.core.live_update_pending()
                && self.last_live_update_check.is_none_or(|t| t.elapsed() >= LIVE_UPDATE_CHECK);
            // (What client threads do after this wakes the loop if it
            // changes the timeout: rings made ready, a live update.)
            timeout = self.poll_timeout(state);
            let solo = self.solo.note_poll(alone.filter(|_| count == 1)) && !state.loop_needed();
            drop(locked);
            shared.combine();
            if due {
                self.last_live_update_check = Some(Instant::now());
                self.check_live_update();
            }
            if let Some(id) = alone.filter(|_| solo) {
                timeout = self.serve_solo(id, &mut buf, timeout)?;
            }
        }
    }

    /// Serves a socket connection the previous process accepted (`-U`).
    pub fn adopt_client(&mut self, id: ConnId, stream: StdUnixStream) -> io::Result<()> {
        let shared = Arc::clone(&self.shared);
        let mut locked = shared.state.lock();
        self.serve_client(&mut locked.state, id, stream)
    }

    fn accept(&mut self, state: &mut LoopState<P>) -> io::Result<()> {
        self.threads.retain(|_, t| !t.handle.is_finished());
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    // SAFETY: the descriptor comes straight from the accepted
                    // stream, which gives up ownership of it.
                    let stream = unsafe { StdUnixStream::from_raw_fd(stream.into_raw_fd()) };
                    let id = state.core.connect_socket();
                    if let Err(e) = self.serve_client(state, id, stream) {
                        tracing::warn!(conn = id.0, "cannot serve a new client: {e}");
                        state.core.disconnect(id);
                        continue;
                    }
                    tracing::debug!(conn = id.0, "client connected");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Out of descriptors and the like: keep serving the others.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    return Ok(());
                }
            }
        }
    }

    /// Puts a connected socket in service, polled by the main loop.
    fn serve_client(&mut self, state: &mut LoopState<P>, id: ConnId, stream: StdUnixStream) -> io::Result<()> {
        let stream = Arc::new(stream);
        let lane = Arc::new(Lane::default());
        stream.set_nonblocking(true)?;
        let fd = stream.as_raw_fd();
        state.registry.register(&mut SourceFd(&fd), Token(id.0 as usize), Interest::READABLE)?;
        let reader = state.loop_snapshot_reads().then(|| state.core.reader(id)).flatten().map(|(reader, _)| reader);
        state.clients.insert(id, Client { stream, wants_write: false, lane, threaded: false, reader });
        Ok(())
    }

    /// Starts the thread that reads a (blocking) client socket.
    fn spawn_client_thread(
        &mut self,
        id: ConnId,
        stream: &Arc<StdUnixStream>,
        lane: &Arc<Lane>,
        reads: Option<(Reader, FrameTracker)>,
    ) -> io::Result<()> {
        install_wakeup_signal();
        let gate = Arc::new(Mutex::new(()));
        let shared = Arc::clone(&self.shared);
        let thread = ClientSide { id, stream: Arc::clone(stream), gate: Arc::clone(&gate), lane: Arc::clone(lane) };
        let handle = std::thread::Builder::new()
            .name(format!("client-{}", id.0))
            .stack_size(CLIENT_STACK)
            .spawn(move || serve_socket(&shared, &thread, reads))?;
        self.threads.insert(id, ClientThread { handle, gate });
        Ok(())
    }

    /// Hands a client that asks mostly reads to a thread of its own,
    /// between its requests. Its reads are then answered from the published
    /// snapshot on that thread, in parallel with the loop and each other;
    /// the rest of its requests go through the inbox. Writers stay in the loop, whose turns batch
    /// them (a thread costs a wake-up per request).
    fn promote(&mut self, state: &mut LoopState<P>, id: ConnId) {
        let Some(client) = state.clients.get(&id).filter(|c| !c.threaded && !c.wants_write) else { return };
        if client.lane.out.lock().backlog || state.core.output(id).is_some_and(|o| !o.is_empty()) {
            return;
        }
        // Only privileged callers read from the snapshot.
        let Some(reads) = state.core.reader(id) else { return };
        let stream = Arc::clone(&client.stream);
        let lane = Arc::clone(&client.lane);
        let fd = stream.as_raw_fd();
        let handed = state
            .registry
            .deregister(&mut SourceFd(&fd))
            .and_then(|()| stream.set_nonblocking(false))
            .and_then(|()| self.spawn_client_thread(id, &stream, &lane, Some(reads)));
        match handed {
            Ok(()) => {
                if let Some(client) = state.clients.get_mut(&id) {
                    client.threaded = true;
                }
                tracing::debug!(conn = id.0, "a reader: served by a thread of its own");
            }
            Err(e) => {
                tracing::debug!(conn = id.0, "stays in the loop: {e}");
                state.poll_again(id, &stream);
            }
        }
    }

    /// With a live update pending: stops the client threads between
    /// requests (so no bytes read are left outside the core), lets the
    /// core decide, and dumps and `exec`s if it says so. Comes back only if
    /// the update is not due yet or failed; everything carries on then.
    fn check_live_update(&self) {
        let gates = self.pause_clients();
        let mut locked = self.shared.state.lock();
        let Locked { state, turn } = &mut *locked;
        // All that was read is in the core before it decides.
        state.serve_inbox(turn, &self.shared.inbox);
        if let Some(req) = state.core.live_update_tick(self.started.elapsed().as_secs()) {
            self.live_update(state, turn, &req);
        }
        // A refusal or a failure of the update has replies to send.
        let _ = state.finish_turn(turn, false);
        drop(locked);
        self.resume_clients(gates);
        self.shared.combine();
    }

    /// Dumps the state and `exec`s the new binary; comes back only if that
    /// failed.
    fn live_update(&self, state: &mut LoopState<P>, turn: &mut Turn, req: &LuRequest) {
        // What can still be sent now need not go through the file.
        state.flush_dirty(turn);
        state.fold_lanes();
        if let Some(p) = state.persistence.as_mut()
            && let Err(e) = p.after_requests(&mut state.core)
        {
            tracing::error!("live update: cannot persist the state first: {e}");
            state.core.live_update_failed("Dump write error");
            return;
        }
        // The successor (ours or C's) polls its sockets: it gets them
        // non-blocking, as the loop keeps them.
        let set_blocking = |state: &LoopState<P>, blocking: bool| {
            for c in state.clients.values().filter(|c| c.threaded) {
                let _ = c.stream.set_nonblocking(!blocking);
            }
        };
        set_blocking(state, false);
        let sockets: BTreeMap<ConnId, i32> = state.clients.iter().map(|(id, c)| (*id, c.stream.as_raw_fd())).collect();
        let listener = self.listener.as_raw_fd();
        let reason = crate::live_update::exec::dump_and_exec(&mut state.core, req, listener, sockets);
        set_blocking(state, true);
        tracing::error!("live update failed: {reason}");
        state.core.live_update_failed(reason);
    }

    /// Stops every client thread before its next `recv` and returns their
    /// gates, held. A thread blocked in `recv` is interrupted by a signal
    /// (sent again until it lets go: it may have been about to block).
    fn pause_clients(&self) -> Vec<parking_lot::ArcMutexGuard<parking_lot::RawMutex, ()>> {
        *self.shared.pause.lock() = true;
        self.shared.paused.store(true, Ordering::SeqCst);
        let mut held = Vec::with_capacity(self.threads.len());
        for t in self.threads.values() {
            loop {
                if let Some(g) = t.gate.try_lock_arc_for(Duration::from_millis(1)) {
                    held.push(g);
                    break;
                }
                // SAFETY: the handle is not joined, so its pthread_t is valid
                // (an exited thread only makes this fail with ESRCH).
                unsafe { libc::pthread_kill(t.handle.as_pthread_t(), wakeup_signal()) };
            }
        }
        held
    }

    fn resume_clients(&self, gates: Vec<parking_lot::ArcMutexGuard<parking_lot::RawMutex, ()>>) {
        *self.shared.pause.lock() = false;
        self.shared.paused.store(false, Ordering::SeqCst);
        self.shared.resume.notify_all();
        drop(gates);
    }
}

/// What a client thread holds of its connection.
struct ClientSide {
    id: ConnId,
    stream: Arc<StdUnixStream>,
    /// See [`ClientThread::gate`].
    gate: Arc<Mutex<()>>,
    lane: Arc<Lane>,
}

/// A client thread: reads until the connection ends, answering the
/// snapshot reads it can itself and handing the rest to the core through
/// the inbox.
fn serve_socket<P: Platform>(shared: &Shared<P>, me: &ClientSide, reads: Option<(Reader, FrameTracker)>) {
    let (reader, mut framing) = reads.unzip();
    let mut buf = vec![0u8; CLIENT_BUF];
    let mut replies = Vec::new();
    loop {
        let held = me.gate.lock();
        if shared.paused.load(Ordering::SeqCst) {
            drop(held);
            let mut paused = shared.pause.lock();
            while *paused {
                shared.resume.wait(&mut paused);
            }
            continue;
        }
        let got = recv_blocking(&me.stream, &mut buf);
        let got = match got {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(0) => Err(String::from("end of file")),
            Ok(n) => Ok(&buf[..n]),
            Err(e) => Err(e.to_string()),
        };
        let end = got.is_err();
        let got = match (got, &reader, &mut framing) {
            (Ok(bytes), Some(reader), Some(framing)) => {
                let used = answer_reads(shared, me, reader, framing, bytes, &mut replies);
                if replies.capacity() > CLIENT_BUF {
                    // A burst's buffer is not kept by every idle client.
                    replies = Vec::new();
                }
                framing.advance(&bytes[used..]);
                Ok(&bytes[used..])
            }
            (got, ..) => got,
        };
        if got.as_ref().is_ok_and(|b| b.is_empty()) {
            continue;
        }
        let id = me.id;
        if let Some(mut locked) = shared.state.try_lock() {
            // The lock was free: serve directly (after whatever waits,
            // which may include this client's earlier input).
            let Locked { state, turn } = &mut *locked;
            state.serve_inbox(turn, &shared.inbox);
            state.serve_input(turn, id, got.as_deref().map_err(String::as_str));
            shared.end_turn(state, turn);
        } else {
            let bytes = got.map(<[u8]>::to_vec);
            let len = bytes.as_ref().map_or(0, Vec::len);
            let waiting = me.lane.waiting.fetch_add(len, Ordering::SeqCst) + len;
            shared.inbox.push(Input { id, bytes, lane: Arc::clone(&me.lane) });
            if waiting >= INBOX_BYTES {
                let mut locked = shared.state.lock();
                let Locked { state, turn } = &mut *locked;
                state.serve_inbox(turn, &shared.inbox);
                shared.end_turn(state, turn);
            }
        }
        shared.combine();
        drop(held);
        if end {
            return;
        }
    }
}

/// Answers the snapshot reads at the start of `bytes` on the client's own
/// thread, without the lock, when nothing of the connection's is ahead of
/// them: no earlier request in the core, no output waiting. Returns the
/// bytes used. (A reply may then go out before a watch event that a
/// concurrent commit is queueing for this connection: the two are
/// concurrent, and either order is one the client could have seen.)
fn answer_reads<P: Platform>(
    shared: &Shared<P>,
    me: &ClientSide,
    reader: &Reader,
    framing: &FrameTracker,
    bytes: &[u8],
    replies: &mut Vec<u8>,
) -> usize {
    if !framing.at_boundary() || me.lane.waiting.load(Ordering::SeqCst) != 0 {
        return 0;
    }
    let (used, stuck) = send_snapshot_replies(&me.stream, &me.lane, reader, bytes, replies);
    if let Some(stuck) = stuck {
        shared.state.lock().state.snapshot_send_stopped(me.id, stuck);
        shared.combine();
    }
    used
}

/// The part of answering snapshot reads that needs no lock: answers the
/// leading reads of `bytes` and sends the replies, unless output already
/// waits for the connection (`backlog`). Returns the bytes used, and
/// whether sending stopped: `Ok` if the socket is full (the rest waits at
/// the front of the lane, `backlog` set: the caller must flush), `Err` if
/// it failed (the caller must close).
fn send_snapshot_replies(
    stream: &StdUnixStream,
    lane: &Lane,
    reader: &Reader,
    bytes: &[u8],
    replies: &mut Vec<u8>,
) -> (usize, Option<io::Result<()>>) {
    // Held until the replies are sent or queued: the lock's holder flushes
    // this connection (and sets `backlog`) under it too.
    let mut out = lane.out.lock();
    let mut used = 0;
    while !out.backlog && !out.closed {
        replies.clear();
        let n = reader.answer_leading(&bytes[used..], replies, SNAPSHOT_REPLIES);
        if n == 0 {
            break;
        }
        used += n;
        let sent = match send_nonblocking(stream, &[IoSlice::new(replies)]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        };
        match sent {
            Ok(n) if n == replies.len() => {}
            Ok(n) => {
                // The socket is full: the rest waits for the poll, ahead of
                // anything the core queues later.
                for reply in split_messages(replies) {
                    out.front.push(reply.to_vec(), false);
                }
                out.front.consume(n);
                out.backlog = true;
                tracing::debug!("socket full: {} bytes of snapshot replies wait for the poll", replies.len() - n);
                return (used, Some(Ok(())));
            }
            Err(e) => return (used, Some(Err(e))),
        }
    }
    (used, None)
}

/// The messages of a well-formed stream (replies this process encoded).
fn split_messages(mut bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let head: &[u8; wire::HEADER_LEN] = bytes.get(..wire::HEADER_LEN)?.try_into().ok()?;
        let len = (wire::HEADER_LEN + wire::Header::parse(head).len as usize).min(bytes.len());
        let (message, rest) = bytes.split_at(len);
        bytes = rest;
        Some(message)
    })
}

impl<P: Platform> Shared<P> {
    /// Serves the inbox if the lock is free, until it is empty or someone
    /// else holds the lock (who then serves it: every holder calls this
    /// after unlocking).
    fn combine(&self) {
        while !self.inbox.is_empty() {
            let Some(mut locked) = self.state.try_lock() else { return };
            let Locked { state, turn } = &mut *locked;
            state.serve_inbox(turn, &self.inbox);
            self.end_turn(state, turn);
        }
    }

    /// After serving input outside the main loop: output, persistence, and
    /// a wake-up for the main loop if it has work (rings made ready, a live
    /// update requested, a fatal error).
    fn end_turn(&self, state: &mut LoopState<P>, turn: &mut Turn) {
        if let Err(e) = state.finish_turn(turn, true) {
            state.fatal = Some(e);
        }
        let flush = !state.deferred.is_empty() && !self.flush_wake.swap(true, Ordering::SeqCst);
        if flush || state.fatal.is_some() || state.rings.has_ready() || state.core.live_update_pending() {
            let _ = self.waker.wake();
        }
    }
}

extern "C" fn on_wakeup_signal(_: libc::c_int) {}

/// The signal that interrupts a client thread's `recv` (its handler does
/// nothing; installed without `SA_RESTART`, so `recv` returns `EINTR`).
fn wakeup_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

fn install_wakeup_signal() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with a handler that does nothing
        // (async-signal-safe by construction) and an empty mask.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_wakeup_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            libc::sigaction(wakeup_signal(), &sa, std::ptr::null_mut());
        }
    });
}

impl<P: Platform> LoopState<P> {
    /// After requests: persistence (group commit before any reply), output,
    /// logs. With `defer` (a client thread's turn) only the replies of the
    /// connections it served are sent; the rest is left to the main loop.
    fn finish_turn(&mut self, turn: &mut Turn, defer: bool) -> io::Result<()> {
        if let Some(p) = self.persistence.as_mut()
            && let Err(e) = p.after_requests(&mut self.core)
        {
            tracing::error!("cannot persist the state: {e}; stopping rather than acknowledging what may be lost");
            // No snapshot read may pass the unsent replies either.
            turn.through.clear();
            return Err(e);
        }
        if defer {
            let mut ids = core::mem::take(&mut turn.dirty_ids);
            self.core.take_dirty_into(&mut ids);
            for id in ids.drain(..) {
                if turn.served.contains(&id) {
                    self.flush(id);
                } else {
                    self.deferred.insert(id);
                    if let Some(client) = self.clients.get(&id) {
                        client.lane.out.lock().backlog = true;
                    }
                }
            }
            turn.dirty_ids = ids;
        } else {
            self.flush_dirty(turn);
        }
        turn.served.clear();
        // The replies are out (or queued, with `backlog` set).
        for (lane, len) in turn.through.drain(..) {
            lane.waiting.fetch_sub(len, Ordering::SeqCst);
        }
        for line in self.core.take_logs() {
            tracing::info!(target: "xenstored", "{line}");
        }
        let refusals = self.core.take_quota_events();
        if !refusals.is_empty() || !self.quota_log.is_idle() {
            let now = Instant::now();
            let mut lines = self.quota_log.report(&refusals, now);
            lines.extend(self.quota_log.expire(now));
            for line in lines {
                tracing::warn!(target: "xenstored", "{line}");
            }
        }
        Ok(())
    }

    /// Hands the client threads' input to the core, in the order read.
    fn serve_inbox(&mut self, turn: &mut Turn, inbox: &SegQueue<Input>) {
        while let Some(input) = inbox.pop() {
            self.serve_input(turn, input.id, input.bytes.as_deref().map_err(String::as_str));
            turn.through.push((input.lane, input.bytes.as_ref().map_or(0, Vec::len)));
        }
    }

    /// What a client thread read: bytes, or the connection's end.
    fn serve_input(&mut self, turn: &mut Turn, id: ConnId, input: Result<&[u8], &str>) {
        match input {
            Ok(bytes) => {
                if self.clients.contains_key(&id) {
                    self.feed(turn, id, bytes);
                }
            }
            Err(reason) => self.close(id, reason),
        }
    }

    /// Hands received bytes to the core; false if it closed the connection.
    fn feed(&mut self, turn: &mut Turn, id: ConnId, bytes: &[u8]) -> bool {
        turn.served.push(id);
        if let Some(trace) = self.trace.as_mut() {
            let _ = writeln!(trace, "IN  conn {} {} bytes", id.0, bytes.len());
        }
        if let Err(e) = self.core.receive(id, bytes) {
            tracing::warn!(conn = id.0, "{e}: closing the connection");
            self.close(id, "protocol violation");
            return false;
        }
        true
    }

    /// Reads what a readable socket holds.
    fn read_client(&mut self, turn: &mut Turn, id: ConnId, buf: &mut [u8]) {
        loop {
            let Some(client) = self.clients.get(&id) else { return };
            let got = {
                let mut s = &*client.stream;
                s.read(buf)
            };
            match got {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(0) => return self.close(id, "end of file"),
                Ok(n) => {
                    let answered = self.answer_snapshot_reads(turn, id, &buf[..n]);
                    if !self.clients.contains_key(&id) || (answered < n && !self.feed(turn, id, &buf[answered..n])) {
                        return;
                    }
                    if self.loop_snapshot_reads()
                        && self.core.request_mix(id).is_some_and(|m| m.mostly_reads())
                        && !turn.promote.contains(&id)
                    {
                        turn.promote.push(id);
                    }
                    if n < buf.len() {
                        // A short read drained the socket.
                        return;
                    }
                }
                Err(e) => return self.close(id, &e.to_string()),
            }
        }
    }

    /// Answers the plain reads at the start of `bytes` from
    /// the published snapshot when nothing of the client's is ahead of
    /// them (as a client thread does, `answer_reads`). Returns the bytes
    /// used.
    fn answer_snapshot_reads(&mut self, turn: &mut Turn, id: ConnId, bytes: &[u8]) -> usize {
        if !self.core.idle(id) {
            return 0;
        }
        let Some(client) = self.clients.get(&id) else { return 0 };
        let Some(reader) = &client.reader else { return 0 };
        let (used, stuck) = send_snapshot_replies(&client.stream, &client.lane, reader, bytes, &mut turn.snapshot_out);
        if turn.snapshot_out.capacity() > CLIENT_BUF {
            // A burst's buffer is not kept.
            turn.snapshot_out = Vec::new();
        }
        self.core.count_snapshot_reads(id, split_messages(&bytes[..used]).count());
        if let Some(stuck) = stuck {
            self.snapshot_send_stopped(id, stuck);
        }
        used
    }

    /// After [`send_snapshot_replies`] stopped: the holder of the lock
    /// flushes the rest (which asks the poll for room) or closes the
    /// connection.
    fn snapshot_send_stopped(&mut self, id: ConnId, stuck: io::Result<()>) {
        match stuck {
            Ok(()) => self.flush(id),
            Err(e) => self.close(id, &e.to_string()),
        }
    }

    /// Plain reads at the start of what a client sent are
    /// answered from the published snapshot, and clients that ask mostly
    /// reads get a thread of their own ([`rxenstored_core::RequestMix`]); not
    /// with a trace file (whose lines the core's callers write), nor with
    /// group commit (a snapshot read could show what is not durable yet).
    fn loop_snapshot_reads(&self) -> bool {
        self.trace.is_none() && self.persistence.as_ref().is_none_or(|p| !p.group_commit())
    }

    /// Something only the main loop's turn handles: a fatal error, rings
    /// ready to serve, a live update pending. (No solo run starts, or
    /// goes on, then.)
    fn loop_needed(&self) -> bool {
        self.fatal.is_some() || self.rings.has_ready() || self.core.live_update_pending()
    }

    /// Puts a socket the loop had let go of (a solo run's, a failed
    /// hand-over's) back in the poll, non-blocking and without a receive
    /// timeout; closes the client if that fails. True if it is back.
    fn poll_again(&mut self, id: ConnId, stream: &StdUnixStream) -> bool {
        let back = stream.set_read_timeout(None).and_then(|()| stream.set_nonblocking(true)).and_then(|()| {
            self.registry.register(&mut SourceFd(&stream.as_raw_fd()), Token(id.0 as usize), Interest::READABLE)
        });
        match back {
            Ok(()) => true,
            Err(e) => {
                self.close(id, &format!("cannot poll the socket again: {e}"));
                false
            }
        }
    }

    /// Sends what every connection has waiting: output left to the main
    /// loop by client threads, and what the core queued since.
    fn flush_dirty(&mut self, turn: &mut Turn) {
        let mut ids = core::mem::take(&mut turn.dirty_ids);
        ids.extend(self.deferred.drain());
        self.core.take_dirty_into(&mut ids);
        for id in ids.drain(..) {
            self.flush(id);
            if self.rings.enabled() {
                self.flush_ring(id);
            }
        }
        turn.dirty_ids = ids;
    }

    /// Writes queued output until done or the socket is full; asks for
    /// writability in the latter case. A client thread's unsent snapshot
    /// replies go first.
    fn flush(&mut self, id: ConnId) {
        let Some(client) = self.clients.get_mut(&id) else { return };
        let Some(out) = self.core.output(id) else { return };
        let mut lane = client.lane.out.lock();
        let mut failed = None;
        while !lane.front.is_empty() || !out.is_empty() {
            // One system call for many queued messages (a watcher's events).
            let chunks = lane.front.chunks().chain(out.chunks());
            let sent = if lane.front.len() + out.len() <= FEW_IOV {
                send_gathered::<FEW_IOV>(&client.stream, chunks)
            } else {
                send_gathered::<MAX_IOV>(&client.stream, chunks)
            };
            match sent {
                Ok(n) => {
                    if let Some(trace) = self.trace.as_mut() {
                        let _ = writeln!(trace, "OUT conn {} {} bytes", id.0, n);
                    }
                    let ahead = n.min(lane.front.bytes());
                    lane.front.consume(ahead);
                    out.consume(n - ahead);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        let pending = !lane.front.is_empty() || !out.is_empty();
        lane.backlog = pending;
        drop(lane);
        if let Some(reason) = failed {
            return self.close(id, &reason);
        }
        if pending != client.wants_write {
            let fd = client.stream.as_raw_fd();
            let token = Token(id.0 as usize);
            let done = match (client.threaded, pending) {
                (false, true) => {
                    self.registry.reregister(&mut SourceFd(&fd), token, Interest::READABLE | Interest::WRITABLE)
                }
                (false, false) => self.registry.reregister(&mut SourceFd(&fd), token, Interest::READABLE),
                (true, true) => self.registry.register(&mut SourceFd(&fd), token, Interest::WRITABLE),
                (true, false) => self.registry.deregister(&mut SourceFd(&fd)),
            };
            if done.is_ok() {
                client.wants_write = pending;
            }
        }
    }

    /// Before a live-update dump: client threads' unsent snapshot replies
    /// join the core's queues, which the dump carries.
    fn fold_lanes(&mut self) {
        for (id, client) in &self.clients {
            let front = std::mem::take(&mut client.lane.out.lock().front);
            if let Some(out) = self.core.output(*id) {
                out.prepend(front);
            }
        }
    }

    fn close(&mut self, id: ConnId, reason: &str) {
        if let Some(client) = self.clients.remove(&id) {
            {
                let mut lane = client.lane.out.lock();
                lane.closed = true;
                lane.front.clear();
            }
            if !client.threaded || client.wants_write {
                let _ = self.registry.deregister(&mut SourceFd(&client.stream.as_raw_fd()));
            }
            // Wakes the client's thread, blocked in `recv` (it then sees the
            // connection gone); the descriptor closes with the last handle.
            let _ = client.stream.shutdown(std::net::Shutdown::Both);
            tracing::debug!(conn = id.0, "client closed: {reason}");
        }
        self.core.disconnect(id);
    }

    /// Finishes what was read, gives clients a moment to take their
    /// replies, and removes the socket.
    fn shutdown(&mut self, turn: &mut Turn, socket_path: &FsPath) {
        if let Some(p) = self.persistence.as_mut()
            && let Err(e) = p.shutdown(&mut self.core)
        {
            tracing::error!("final checkpoint failed: {e}");
        }
        self.flush_dirty(turn);
        let _ = fs::remove_file(socket_path);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends the first `N` chunks (or all, if fewer) in one `sendmsg`. (The
/// slice array is built on the stack: a small one for the usual reply or
/// two, a large one for a backlog.)
fn send_gathered<'a, const N: usize>(
    stream: &StdUnixStream,
    chunks: impl Iterator<Item = &'a [u8]>,
) -> io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); N];
    let mut count = 0;
    for (slot, chunk) in slices.iter_mut().zip(chunks) {
        *slot = IoSlice::new(chunk);
        count += 1;
    }
    send_nonblocking(stream, &slices[..count])
}

/// A client thread's `recv`, as the system call itself: glibc's `recv` is a
/// cancellation point, and in a threaded process it switches
/// asynchronous cancellation on and off around every call (a cost that
/// showed in the threaded daemon's profile, benches/README.md). Nothing
/// here is cancelled.
fn recv_blocking(stream: &StdUnixStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length for the call's
    // duration; no source address is asked for.
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            stream.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
            0,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `send` that never blocks nor raises SIGPIPE, whatever the descriptor's
/// mode (client threads keep theirs blocking for `recv`), and is retried
/// when a signal interrupts it.
fn send_nonblocking(stream: &StdUnixStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    loop {
        // SAFETY: an `IoSlice` has the layout of an `iovec` (std guarantees
        // it on Unix); the slices and the descriptor outlive the call.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = slices.as_ptr().cast_mut().cast();
            msg.msg_iovlen = slices.len() as _;
            // The system call itself: glibc's `sendmsg` is a cancellation
            // point, whose bookkeeping costs a threaded process about as
            // much as the wrapper (see `recv_blocking`).
            libc::syscall(
                libc::SYS_sendmsg,
                stream.as_raw_fd(),
                &raw const msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        match usize::try_from(n) {
            Ok(sent) => return Ok(sent),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}
