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
//! connections interleave in whatever order the daemon takes them in, but
//! each connection sees one serial order. `tests/reply_order.rs` checks
//! the rule against a serial model run on [`Core`] directly, over every
//! path below.
//!
//! # One thread
//!
//! The main thread polls the sockets, as C xenstored does: one loop turn
//! serves every ready client (and ring) and then writes, so a watcher gets
//! a turn's events together. Nothing else touches the core. Two
//! adaptations, each kept for a workload users have (what each buys,
//! measured: benches/README.md):
//!
//! - **Snapshot reads.** The plain reads at the start of what a
//!   privileged client sent are answered from the store's published
//!   snapshot ([`Reader`]) when nothing of the client's is ahead of them
//!   (no output queued, no partial request in the core), without a turn
//!   of the core. A reply the socket does not take joins the (empty)
//!   queue of the connection in the core, which later replies follow.
//! - **Solo runs** (`solo.rs`). A client alone for a while is served by a
//!   blocking `recv` until anyone else needs the loop: two system calls
//!   a request instead of three.
//!
//! Neither runs with a trace file (whose lines the loop writes per read
//! and write) nor with commit durability (whose group commit needs a loop
//! turn to batch over, and a snapshot read could show what is not durable
//! yet). Client threads (`--socket-threads`, then readers handed to
//! threads of their own) were tried until 2026-12 and removed: on the
//! workloads of `xsload` they bought no throughput and cost latency
//! (benches/README.md).
//!
//! Output is always written with `MSG_DONTWAIT` (a connection's queued
//! messages in one `sendmsg`), so a client that stops reading never blocks
//! anyone; its bytes wait in the core's queue (where the core's bounds
//! apply) until the poll says the socket has room.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::HashMap;
use mio::net::{UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use rxenstored_core::{ConnId, Core, LuRequest, Platform, Reader};

use crate::persistence::Persistence;
use crate::quota_log::QuotaLog;

mod rings;
mod solo;

const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);

/// How often a pending live update is checked (C: once a loop turn, its
/// loop waking at least every second).
const LIVE_UPDATE_CHECK: Duration = Duration::from_millis(100);
/// Messages gathered into one `sendmsg` (Linux's `UIO_MAXIOV` is 1024).
const MAX_IOV: usize = 64;
/// Up to this many waiting messages, a smaller array gathers them.
const FEW_IOV: usize = 4;
/// Snapshot replies built before they are sent (a read's reply is at most
/// 4 kB, a read request as small as 17 bytes); a burst's larger buffer is
/// not kept.
const SNAPSHOT_REPLIES: usize = 64 * 1024;

/// The least time between two log lines for one domain's refusals by one
/// quota, by default (`--quota-log-interval`).
pub const QUOTA_LOG_INTERVAL: Duration = Duration::from_secs(60);

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

/// A socket client.
struct Client {
    /// Shared with a solo run while it blocks in `recv` on it.
    stream: Arc<StdUnixStream>,
    /// Registered for writability (output is waiting).
    wants_write: bool,
    /// Answers the client's leading plain reads from the published
    /// snapshot (privileged clients, [`LoopState::snapshot_reads`]).
    reader: Option<Reader>,
}

/// The core and what serves it: the client table, rings, persistence.
pub(crate) struct LoopState<P: Platform> {
    core: Core<P>,
    clients: HashMap<ConnId, Client>,
    registry: Registry,
    trace: Option<fs::File>,
    /// Guests' rings, when the platform has them (`rings.rs`).
    rings: rings::RingState,
    /// The state directory, with `--state-dir`.
    persistence: Option<Persistence>,
    /// Rate-limited log lines for refusals by quotas (`quota_log.rs`).
    quota_log: QuotaLog,
}

/// The scratch of one turn of the core. Empty between turns; kept only for
/// its allocations.
#[derive(Default)]
struct Turn {
    /// The connections a turn flushes.
    dirty_ids: Vec<ConnId>,
    /// Snapshot replies being built.
    snapshot_out: Vec<u8>,
}

impl<P: Platform> std::fmt::Debug for Daemon<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("socket", &self.socket_path).field("clients", &self.state.clients.len()).finish()
    }
}

/// The daemon: serves until SIGTERM or SIGINT, then finishes the requests
/// already read, flushes what it can and removes the socket.
pub struct Daemon<P: Platform> {
    state: LoopState<P>,
    turn: Turn,
    poll: Poll,
    listener: UnixListener,
    socket_path: PathBuf,
    /// Kept registered: a signal makes it readable.
    _signals: UnixStream,
    /// The live-update clock's origin (`live_update_tick`).
    started: Instant,
    last_live_update_check: Option<Instant>,
    /// Serves a lone client with a blocking `recv` (`solo.rs`).
    solo: solo::Solo,
}

impl<P: Platform> Daemon<P> {
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
            quota_log: QuotaLog::new(QUOTA_LOG_INTERVAL),
        };
        let solo = solo::Solo::new(poll.as_raw_fd())?;
        Ok(Daemon {
            state,
            turn: Turn::default(),
            solo,
            poll,
            listener,
            socket_path,
            _signals: signals,
            started: Instant::now(),
            last_live_update_check: None,
        })
    }

    /// The least time between two log lines for one domain's refusals by
    /// one quota (default [`QUOTA_LOG_INTERVAL`]).
    pub fn set_quota_log_interval(&mut self, interval: Duration) {
        self.state.quota_log = QuotaLog::new(interval);
    }

    /// Journals every change to `p` (see [`crate::persistence`]): in commit
    /// mode no reply leaves before the changes it acknowledges are durable,
    /// so that one `fsync` covers a whole turn's requests.
    pub fn set_persistence(&mut self, p: Persistence) {
        self.state.persistence = Some(p);
    }

    pub fn core(&mut self) -> &mut Core<P> {
        &mut self.state.core
    }

    /// Runs until a termination signal.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut writable = Vec::new();
        // Output restored by a live update (the requester's OK among it).
        self.state.flush_dirty(&mut self.turn);
        let mut timeout = self.state.poll_timeout();
        loop {
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            // The client that was the poll's only event, if so.
            let mut alone = None;
            let mut count = 0;
            for event in events.iter() {
                count += 1;
                match event.token() {
                    LISTENER => self.accept()?,
                    SIGNALS => {
                        tracing::info!("termination signal: shutting down");
                        self.state.shutdown(&mut self.turn, &self.socket_path);
                        return Ok(());
                    }
                    rings::EVTCHN => self.state.ring_events(),
                    Token(t) => {
                        let id = ConnId(t as u64);
                        if event.is_readable() || event.is_read_closed() {
                            self.state.read_client(&mut self.turn, id, &mut buf);
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
            self.state.service_rings(&mut self.turn);
            for id in writable.drain(..) {
                self.state.flush(id);
            }
            // Group commit: what this turn changed is durable before any
            // reply acknowledging it is written.
            self.state.finish_turn(&mut self.turn)?;
            let due = self.state.core.live_update_pending()
                && self.last_live_update_check.is_none_or(|t| t.elapsed() >= LIVE_UPDATE_CHECK);
            if due {
                self.last_live_update_check = Some(Instant::now());
                self.check_live_update();
            }
            timeout = self.state.poll_timeout();
            let solo = self.solo.note_poll(alone.filter(|_| count == 1)) && !self.state.loop_needed();
            if let Some(id) = alone.filter(|_| solo) {
                timeout = self.serve_solo(id, &mut buf, timeout)?;
            }
        }
    }

    /// Serves a socket connection the previous process accepted (`-U`).
    pub fn adopt_client(&mut self, id: ConnId, stream: StdUnixStream) -> io::Result<()> {
        self.state.serve_client(id, stream)
    }

    fn accept(&mut self) -> io::Result<()> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    // SAFETY: the descriptor comes straight from the accepted
                    // stream, which gives up ownership of it.
                    let stream = unsafe { StdUnixStream::from_raw_fd(stream.into_raw_fd()) };
                    let id = self.state.core.connect_socket();
                    if let Err(e) = self.state.serve_client(id, stream) {
                        tracing::warn!(conn = id.0, "cannot serve a new client: {e}");
                        self.state.core.disconnect(id);
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

    /// With a live update pending: lets the core decide, and dumps and
    /// `exec`s if it says so. Comes back only if the update is not due yet
    /// or failed; everything carries on then.
    fn check_live_update(&mut self) {
        if let Some(req) = self.state.core.live_update_tick(self.started.elapsed().as_secs()) {
            self.live_update(&req);
        }
        // A refusal or a failure of the update has replies to send.
        let _ = self.state.finish_turn(&mut self.turn);
    }

    /// Dumps the state and `exec`s the new binary; comes back only if that
    /// failed.
    fn live_update(&mut self, req: &LuRequest) {
        let state = &mut self.state;
        // What can still be sent now need not go through the file.
        state.flush_dirty(&mut self.turn);
        if let Some(p) = state.persistence.as_mut()
            && let Err(e) = p.after_requests(&mut state.core)
        {
            tracing::error!("live update: cannot persist the state first: {e}");
            state.core.live_update_failed("Dump write error");
            return;
        }
        // The successor (ours or C's) polls its sockets: they are
        // non-blocking, as the loop keeps them (no solo run is under way).
        let sockets: BTreeMap<ConnId, i32> = state.clients.iter().map(|(id, c)| (*id, c.stream.as_raw_fd())).collect();
        let listener = self.listener.as_raw_fd();
        let reason = crate::live_update::exec::dump_and_exec(&mut state.core, req, listener, sockets);
        tracing::error!("live update failed: {reason}");
        state.core.live_update_failed(reason);
    }
}

/// What became of the bytes a client sent ([`LoopState::received`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Received {
    /// All of them were plain reads, answered from the snapshot.
    Answered,
    /// Some went to the core.
    Fed,
    /// The connection is gone.
    Closed,
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

impl<P: Platform> LoopState<P> {
    fn poll_timeout(&self) -> Option<Duration> {
        let persist = self.persistence.as_ref().and_then(Persistence::timeout);
        let lu = self.core.live_update_pending().then_some(LIVE_UPDATE_CHECK);
        [self.rings.timeout(), persist, lu].into_iter().flatten().min()
    }

    /// Puts a connected socket in service, polled by the main loop.
    fn serve_client(&mut self, id: ConnId, stream: StdUnixStream) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let fd = stream.as_raw_fd();
        self.registry.register(&mut SourceFd(&fd), Token(id.0 as usize), Interest::READABLE)?;
        let reader = if self.snapshot_reads() { self.core.reader(id) } else { None };
        self.clients.insert(id, Client { stream: Arc::new(stream), wants_write: false, reader });
        Ok(())
    }

    /// After requests: persistence (group commit before any reply), output,
    /// logs.
    fn finish_turn(&mut self, turn: &mut Turn) -> io::Result<()> {
        if let Some(p) = self.persistence.as_mut()
            && let Err(e) = p.after_requests(&mut self.core)
        {
            tracing::error!("cannot persist the state: {e}; stopping rather than acknowledging what may be lost");
            return Err(e);
        }
        self.flush_dirty(turn);
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

    /// Hands received bytes to the core; false if it closed the connection.
    fn feed(&mut self, id: ConnId, bytes: &[u8]) -> bool {
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

    /// What a client sent: its leading plain reads answered from the
    /// snapshot, the rest handed to the core.
    fn received(&mut self, turn: &mut Turn, id: ConnId, bytes: &[u8]) -> Received {
        let answered = self.answer_snapshot_reads(turn, id, bytes);
        if !self.clients.contains_key(&id) {
            Received::Closed
        } else if answered == bytes.len() {
            Received::Answered
        } else if self.feed(id, &bytes[answered..]) {
            Received::Fed
        } else {
            Received::Closed
        }
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
                    // (A short read drained the socket.)
                    if self.received(turn, id, &buf[..n]) == Received::Closed || n < buf.len() {
                        return;
                    }
                }
                Err(e) => return self.close(id, &e.to_string()),
            }
        }
    }

    /// Answers the plain reads at the start of `bytes` from the published
    /// snapshot when nothing of the client's is ahead of them. Returns the
    /// bytes used.
    fn answer_snapshot_reads(&mut self, turn: &mut Turn, id: ConnId, bytes: &[u8]) -> usize {
        if !self.core.idle(id) {
            return 0;
        }
        let Some(client) = self.clients.get(&id) else { return 0 };
        let Some(reader) = &client.reader else { return 0 };
        let mut used = 0;
        let mut stuck = None;
        loop {
            turn.snapshot_out.clear();
            let n = reader.answer_leading(&bytes[used..], &mut turn.snapshot_out, SNAPSHOT_REPLIES);
            if n == 0 {
                break;
            }
            used += n;
            match send_nonblocking(&client.stream, &[IoSlice::new(&turn.snapshot_out)]) {
                Ok(sent) if sent == turn.snapshot_out.len() => {}
                Ok(sent) => {
                    stuck = Some(Ok(sent));
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    stuck = Some(Ok(0));
                    break;
                }
                Err(e) => {
                    stuck = Some(Err(e));
                    break;
                }
            }
        }
        match stuck {
            None => {}
            Some(Ok(sent)) => {
                // The socket is full: the rest waits for the poll in the
                // connection's queue (empty, as the connection was idle),
                // ahead of the replies to the bytes that follow.
                if let Some(out) = self.core.output(id) {
                    for reply in split_messages(&turn.snapshot_out) {
                        out.push(reply.to_vec(), false);
                    }
                    out.consume(sent);
                }
                tracing::debug!(conn = id.0, "socket full: snapshot replies wait for the poll");
                self.flush(id);
            }
            Some(Err(e)) => self.close(id, &e.to_string()),
        }
        if turn.snapshot_out.capacity() > SNAPSHOT_REPLIES {
            turn.snapshot_out = Vec::new();
        }
        used
    }

    /// Plain reads at the start of what a client sent are answered from
    /// the published snapshot; not with a trace file (whose lines the loop
    /// writes), nor with group commit (a snapshot read could show what is
    /// not durable yet).
    fn snapshot_reads(&self) -> bool {
        self.trace.is_none() && self.persistence.as_ref().is_none_or(|p| !p.group_commit())
    }

    /// Something only the main loop's turn handles: rings ready to serve,
    /// a live update pending. (No solo run starts, or goes on, then.)
    fn loop_needed(&self) -> bool {
        self.rings.has_ready() || self.core.live_update_pending()
    }

    /// Whether output waits for the connection in the core's queue.
    fn output_waiting(&mut self, id: ConnId) -> bool {
        self.core.output(id).is_some_and(|o| !o.is_empty())
    }

    /// Puts a socket a solo run had taken out of the poll back in it,
    /// non-blocking and without a receive timeout; closes the client if
    /// that fails. True if it is back.
    fn poll_again(&mut self, id: ConnId, stream: &StdUnixStream) -> bool {
        let back = stream.set_read_timeout(None).and_then(|()| stream.set_nonblocking(true)).and_then(|()| {
            self.registry.register(&mut SourceFd(&stream.as_raw_fd()), Token(id.0 as usize), Interest::READABLE)
        });
        match back {
            Ok(()) => {
                if let Some(client) = self.clients.get_mut(&id) {
                    client.wants_write = false;
                }
                true
            }
            Err(e) => {
                self.close(id, &format!("cannot poll the socket again: {e}"));
                false
            }
        }
    }

    /// Sends what the core queued since the last turn.
    fn flush_dirty(&mut self, turn: &mut Turn) {
        let mut ids = core::mem::take(&mut turn.dirty_ids);
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
    /// writability in the latter case.
    fn flush(&mut self, id: ConnId) {
        let Some(client) = self.clients.get_mut(&id) else { return };
        let Some(out) = self.core.output(id) else { return };
        let mut failed = None;
        while !out.is_empty() {
            // One system call for many queued messages (a watcher's events).
            let sent = if out.len() <= FEW_IOV {
                send_gathered::<FEW_IOV>(&client.stream, out.chunks())
            } else {
                send_gathered::<MAX_IOV>(&client.stream, out.chunks())
            };
            match sent {
                Ok(n) => {
                    if let Some(trace) = self.trace.as_mut() {
                        let _ = writeln!(trace, "OUT conn {} {} bytes", id.0, n);
                    }
                    out.consume(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        let pending = !out.is_empty();
        if let Some(reason) = failed {
            return self.close(id, &reason);
        }
        if pending != client.wants_write {
            let fd = client.stream.as_raw_fd();
            let interest = if pending { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            // (Fails for a socket a solo run has taken out of the poll: the
            // run ends on the output waiting, and puts it back.)
            if self.registry.reregister(&mut SourceFd(&fd), Token(id.0 as usize), interest).is_ok() {
                client.wants_write = pending;
            }
        }
    }

    fn close(&mut self, id: ConnId, reason: &str) {
        if let Some(client) = self.clients.remove(&id) {
            // (The descriptor closes with the last handle: a solo run may
            // still hold one.)
            let _ = self.registry.deregister(&mut SourceFd(&client.stream.as_raw_fd()));
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

/// `send` that never blocks nor raises SIGPIPE, whatever the descriptor's
/// mode (a solo run keeps it blocking for `recv`), and is retried when a
/// signal interrupts it.
fn send_nonblocking(stream: &StdUnixStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    loop {
        // SAFETY: an `IoSlice` has the layout of an `iovec` (std guarantees
        // it on Unix); the slices and the descriptor outlive the call.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = slices.as_ptr().cast_mut().cast();
            msg.msg_iovlen = slices.len() as _;
            // The system call itself: glibc's `sendmsg` is a cancellation
            // point, whose bookkeeping costs a process with threads (the
            // solo runs' helper) about as much as the call (see
            // `solo::recv_blocking`).
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
