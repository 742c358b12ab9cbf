//! The daemon's Unix-socket frontend: one event loop that accepts clients,
//! feeds their bytes to the [`Core`] and writes back what it queued.
//!
//! Everything here is I/O; every protocol decision is the core's.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};

use crate::conn::ConnId;
use crate::domain::Platform;
use crate::persistence::Persistence;
use crate::protocol::Core;

#[path = "daemon_rings.rs"]
mod rings;

const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);

/// Where the socket lives, as C xenstored decides it (§11): `$XENSTORED_PATH`,
/// else `$XENSTORED_RUNDIR/socket`, else `/var/run/xenstored/socket`.
pub fn socket_path_from_env() -> PathBuf {
    if let Some(p) = std::env::var_os("XENSTORED_PATH") {
        return PathBuf::from(p);
    }
    let rundir = std::env::var_os("XENSTORED_RUNDIR").map_or_else(|| PathBuf::from("/var/run/xenstored"), PathBuf::from);
    rundir.join("socket")
}

/// Creates the run directory if needed, removes a stale socket, binds and
/// restricts the socket to its owner (mode 0600, as C does).
pub fn bind(path: &FsPath) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists() {
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

struct Client {
    stream: UnixStream,
    /// Registered for writability (output is waiting).
    wants_write: bool,
}

impl<P: Platform> std::fmt::Debug for Daemon<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("socket", &self.socket_path).field("clients", &self.clients.len()).finish()
    }
}

/// The event loop: serves until SIGTERM or SIGINT, then finishes the
/// requests already read, flushes what it can and removes the socket.
pub struct Daemon<P: Platform> {
    core: Core<P>,
    poll: Poll,
    listener: UnixListener,
    socket_path: PathBuf,
    clients: HashMap<ConnId, Client>,
    /// Kept registered: a signal makes it readable.
    _signals: UnixStream,
    trace: Option<fs::File>,
    /// Guests' rings, when the platform has them (`daemon_rings.rs`).
    rings: rings::RingState,
    /// The state directory, with `--state-dir`.
    persistence: Option<Persistence>,
    /// The live-update clock's origin (`live_update_tick`).
    started: std::time::Instant,
}

impl<P: Platform> Daemon<P> {
    pub fn new(core: Core<P>, listener: UnixListener, socket_path: PathBuf, trace: Option<fs::File>) -> io::Result<Daemon<P>> {
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
        core.set_live_update_file_check(crate::live_update_exec::check_binary);
        Ok(Daemon {
            core,
            poll,
            listener,
            socket_path,
            clients: HashMap::new(),
            _signals: signals,
            trace,
            rings,
            persistence: None,
            started: std::time::Instant::now(),
        })
    }

    /// Journals every change to `p` (see [`crate::persistence`]): in commit
    /// mode no reply leaves before the changes it acknowledges are durable.
    pub fn set_persistence(&mut self, p: Persistence) {
        self.persistence = Some(p);
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let persist = self.persistence.as_ref().and_then(Persistence::timeout);
        // A pending live update is checked at least once a second.
        let lu = self.core.live_update_pending().then_some(Duration::from_secs(1));
        [self.rings.timeout(), persist, lu].into_iter().flatten().min()
    }

    pub fn core(&mut self) -> &mut Core<P> {
        &mut self.core
    }

    /// Runs until a termination signal.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut writable = Vec::new();
        // Output restored by a live update (the requester's OK among it).
        self.flush_dirty();
        loop {
            match self.poll.poll(&mut events, self.poll_timeout()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept()?,
                    SIGNALS => {
                        tracing::info!("termination signal: shutting down");
                        self.shutdown();
                        return Ok(());
                    }
                    rings::EVTCHN => self.ring_events(),
                    Token(t) => {
                        let id = ConnId(t as u64);
                        if event.is_readable() || event.is_read_closed() {
                            self.read_client(id, &mut buf);
                        }
                        if event.is_writable() {
                            writable.push(id);
                        }
                    }
                }
            }
            self.service_rings();
            // Group commit: what this turn changed is durable before any
            // reply acknowledging it is written.
            if let Some(p) = self.persistence.as_mut()
                && let Err(e) = p.after_requests(&mut self.core) {
                    tracing::error!("cannot persist the state: {e}; stopping rather than acknowledging what may be lost");
                    return Err(e);
                }
            for id in writable.drain(..) {
                self.flush(id);
            }
            self.flush_dirty();
            if let Some(req) = self.core.live_update_tick(self.started.elapsed().as_secs()) {
                self.live_update(req);
            }
            // A refusal or a failure of the update has replies to send.
            self.flush_dirty();
            for line in self.core.take_logs() {
                tracing::info!(target: "xenstored", "{line}");
            }
        }
    }

    /// Serves a socket connection the previous process accepted (`-U`).
    pub fn adopt_client(&mut self, id: ConnId, stream: StdUnixStream) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let mut stream = UnixStream::from_std(stream);
        self.poll.registry().register(&mut stream, Token(id.0 as usize), Interest::READABLE)?;
        self.clients.insert(id, Client { stream, wants_write: false });
        Ok(())
    }

    /// Dumps the state and `exec`s the new binary; comes back only if that
    /// failed, after which everything carries on as before.
    fn live_update(&mut self, req: crate::live_update::LuRequest) {
        use std::os::fd::AsRawFd;
        // What can still be sent now need not go through the file.
        self.flush_dirty();
        if let Some(p) = self.persistence.as_mut()
            && let Err(e) = p.after_requests(&mut self.core) {
                tracing::error!("live update: cannot persist the state first: {e}");
                self.core.live_update_failed("Dump write error");
                return;
            }
        let sockets = self.clients.iter().map(|(id, c)| (*id, c.stream.as_raw_fd())).collect();
        let listener = self.listener.as_raw_fd();
        let reason = crate::live_update_exec::dump_and_exec(&mut self.core, &req, listener, sockets);
        tracing::error!("live update failed: {reason}");
        self.core.live_update_failed(reason);
    }

    fn accept(&mut self) -> io::Result<()> {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let id = self.core.connect_socket();
                    let token = Token(id.0 as usize);
                    self.poll.registry().register(&mut stream, token, Interest::READABLE)?;
                    self.clients.insert(id, Client { stream, wants_write: false });
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

    fn read_client(&mut self, id: ConnId, buf: &mut [u8]) {
        loop {
            let Some(client) = self.clients.get_mut(&id) else { return };
            match client.stream.read(buf) {
                Ok(0) => return self.close(id, "end of file"),
                Ok(n) => {
                    if let Some(trace) = self.trace.as_mut() {
                        let _ = writeln!(trace, "IN  conn {} {} bytes", id.0, n);
                    }
                    if let Err(e) = self.core.receive(id, &buf[..n]) {
                        tracing::warn!(conn = id.0, "{e}: closing the connection");
                        return self.close(id, "protocol violation");
                    }
                    // A short read drained the socket: wait for the next event.
                    if n < buf.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.close(id, &e.to_string()),
            }
        }
    }

    fn flush_dirty(&mut self) {
        for id in self.core.take_dirty() {
            self.flush(id);
            if self.rings.enabled() {
                self.flush_ring(id);
            }
        }
    }

    /// Writes queued output until done or the socket is full; asks for
    /// writability in the latter case.
    fn flush(&mut self, id: ConnId) {
        let Some(client) = self.clients.get_mut(&id) else { return };
        let Some(out) = self.core.output(id) else { return };
        let mut failed = None;
        while let Some(front) = out.front() {
            match client.stream.write(front) {
                Ok(n) => {
                    if let Some(trace) = self.trace.as_mut() {
                        let _ = writeln!(trace, "OUT conn {} {} bytes", id.0, n);
                    }
                    out.advance(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(reason) = failed {
            return self.close(id, &reason);
        }
        let pending = !out.is_empty();
        if pending != client.wants_write {
            let interest = if pending { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            let token = Token(id.0 as usize);
            if self.poll.registry().reregister(&mut client.stream, token, interest).is_ok() {
                client.wants_write = pending;
            }
        }
    }

    fn close(&mut self, id: ConnId, reason: &str) {
        if let Some(mut client) = self.clients.remove(&id) {
            let _ = self.poll.registry().deregister(&mut client.stream);
            tracing::debug!(conn = id.0, "client closed: {reason}");
        }
        self.core.disconnect(id);
    }

    /// Finishes what was read, gives clients a moment to take their
    /// replies, and removes the socket.
    fn shutdown(&mut self) {
        if let Some(p) = self.persistence.as_mut()
            && let Err(e) = p.shutdown(&mut self.core) {
                tracing::error!("final checkpoint failed: {e}");
            }
        self.flush_dirty();
        let ids: Vec<ConnId> = self.clients.keys().copied().collect();
        for id in ids {
            if let Some(client) = self.clients.get_mut(&id) {
                let _ = client.stream.flush();
            }
        }
        let _ = fs::remove_file(&self.socket_path);
        std::thread::sleep(Duration::from_millis(1));
    }
}
