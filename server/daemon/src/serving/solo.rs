//! Solo runs (a child module of `serving`): one socket
//! client talking to the daemon alone is served with a blocking `recv` on
//! its socket instead of a poll, a read and a write per request.
//!
//! The poll costs a third of the system calls of a lone client's request
//! (a toolstack building a domain, `xenstore-ls` of a large tree): with it
//! the loop stays well below the socket's floor, without it it reaches
//! what a thread per client reaches (benches/README.md). Under load a poll returns many clients at
//! once and costs nothing extra, so a solo run starts only after the same
//! client was the only one ready for a few polls in a row and a few
//! milliseconds ([`Solo::note_poll`]).
//!
//! While the main thread blocks in `recv`, the client's socket is taken out
//! of the poll and a helper thread waits on the poll's descriptor itself
//! (an epoll descriptor is readable while events wait in it, and polling
//! it consumes none). Anything else (a new client, another client's
//! bytes, a ring's event, a signal, room on a socket with output waiting)
//! makes the helper interrupt the `recv` with a signal; the main thread
//! then puts the socket back and the loop serves the rest as usual. A
//! timer (ring sweep, checkpoint) ends the run at its deadline through the
//! socket's receive timeout.
//!
//! The signal is re-sent until the main thread acknowledges it: one
//! delivered just before the main thread enters `recv` would otherwise be
//! lost and leave it blocked.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use parking_lot::{Condvar, Mutex};

use rxenstored_core::{ConnId, Platform};

use super::{Daemon, Received};

/// How often the helper repeats an unacknowledged interruption.
const RESIGNAL: Duration = Duration::from_millis(2);

/// What the helper is to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Nothing: the main loop polls for itself.
    Idle,
    /// Watch the poll descriptor and interrupt this thread (the main
    /// thread, in its solo `recv`) when it is readable.
    Armed(libc::pthread_t),
    /// The interruption is sent and not yet acknowledged.
    Fired(libc::pthread_t),
    /// The daemon is going away.
    Quit,
}

struct Signalling {
    phase: Mutex<Phase>,
    changed: Condvar,
    /// Set with `Fired`: the main thread's solo loop checks it around each
    /// `recv`.
    fired: AtomicBool,
    /// Takes the helper out of its wait on the poll descriptor (an eventfd).
    wake: OwnedFd,
    /// The main loop's epoll descriptor.
    poll_fd: RawFd,
}

/// The main loop's side: when to start a solo run, and the helper.
pub(super) struct Solo {
    signalling: Arc<Signalling>,
    helper: Option<JoinHandle<()>>,
    /// The client that was alone in the last polls.
    streak: Option<Streak>,
    /// Polls in a row a client must be alone in before a run starts:
    /// doubled after a run that served few requests (two clients taking
    /// turns would otherwise start and end runs all the time), reset
    /// after a long one.
    start_after: u32,
}

/// A client alone in the polls since `since`.
struct Streak {
    id: ConnId,
    polls: u32,
    since: Instant,
}

impl Solo {
    pub(super) const START_AFTER: u32 = 8;
    const QUIET: Duration = Duration::from_millis(5);
    const START_AFTER_MAX: u32 = 1 << 14;
    /// A run serving fewer requests than this did not pay for itself
    /// (starting and ending one costs about eight system calls and two
    /// wake-ups of the helper).
    const SHORT_RUN: u64 = 64;

    pub(super) fn new(poll_fd: RawFd) -> io::Result<Solo> {
        // SAFETY: eventfd has no memory-safety preconditions; a
        // non-negative result is a new descriptor that we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let signalling = Signalling {
            phase: Mutex::new(Phase::Idle),
            changed: Condvar::new(),
            fired: AtomicBool::new(false),
            wake,
            poll_fd,
        };
        Ok(Solo { signalling: Arc::new(signalling), helper: None, streak: None, start_after: Self::START_AFTER })
    }

    /// Counts a poll: `alone` is the client that was its only event (and
    /// readable), if so. True when that client should now get a solo run:
    /// it was alone for the last [`Solo::START_AFTER`] polls (or more,
    /// after short runs) and for [`Solo::QUIET`] at least, so that clients
    /// merely waiting for a CPU do not look absent.
    pub(super) fn note_poll(&mut self, alone: Option<ConnId>) -> bool {
        let Some(id) = alone else {
            self.streak = None;
            return false;
        };
        match &mut self.streak {
            Some(streak) if streak.id == id => {
                streak.polls += 1;
                streak.polls >= self.start_after && streak.since.elapsed() >= Self::QUIET
            }
            _ => {
                self.streak = Some(Streak { id, polls: 1, since: Instant::now() });
                false
            }
        }
    }

    /// Starts watching the poll for the calling thread, which is about to
    /// block in `recv`.
    pub(super) fn arm(&mut self) -> io::Result<()> {
        if self.helper.is_none() {
            install_wakeup_signal();
            let signalling = Arc::clone(&self.signalling);
            let helper = std::thread::Builder::new()
                .name("solo-watch".into())
                .stack_size(64 * 1024)
                .spawn(move || watch(&signalling))?;
            self.helper = Some(helper);
        }
        let mut phase = self.signalling.phase.lock();
        // SAFETY: pthread_self has no preconditions.
        *phase = Phase::Armed(unsafe { libc::pthread_self() });
        self.signalling.fired.store(false, Ordering::SeqCst);
        self.signalling.changed.notify_all();
        Ok(())
    }

    /// Whether the helper asks the main thread to go back to the poll.
    pub(super) fn interrupted(&self) -> bool {
        self.signalling.fired.load(Ordering::SeqCst)
    }

    /// Ends a run that served `served` requests (acknowledging an
    /// interruption, or taking the helper out of its wait).
    pub(super) fn disarm(&mut self, served: u64) {
        let was = {
            let mut phase = self.signalling.phase.lock();
            let was = std::mem::replace(&mut *phase, Phase::Idle);
            self.signalling.fired.store(false, Ordering::SeqCst);
            self.signalling.changed.notify_all();
            was
        };
        if matches!(was, Phase::Armed(_)) {
            nudge(&self.signalling.wake);
        }
        self.streak = None;
        self.start_after = if served < Self::SHORT_RUN {
            (self.start_after * 2).min(Self::START_AFTER_MAX)
        } else {
            Self::START_AFTER
        };
    }
}

impl Drop for Solo {
    fn drop(&mut self) {
        *self.signalling.phase.lock() = Phase::Quit;
        self.signalling.changed.notify_all();
        nudge(&self.signalling.wake);
        if let Some(helper) = self.helper.take() {
            let _ = helper.join();
        }
    }
}

/// Adds one to an eventfd (it is then readable).
fn nudge(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to a descriptor we own. (A
    // full counter, which would take 2^64 nudges, only fails the write.)
    unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
}

/// The helper thread.
fn watch(s: &Signalling) {
    let mut phase = s.phase.lock();
    loop {
        let target = match *phase {
            Phase::Quit => return,
            Phase::Armed(t) => t,
            Phase::Idle | Phase::Fired(_) => {
                s.changed.wait(&mut phase);
                continue;
            }
        };
        let ready = parking_lot::MutexGuard::unlocked(&mut phase, || wait_readable(s));
        if !ready || *phase != Phase::Armed(target) {
            continue;
        }
        *phase = Phase::Fired(target);
        s.fired.store(true, Ordering::SeqCst);
        while *phase == Phase::Fired(target) {
            // SAFETY: `target` is the main thread, which outlives this
            // helper (the daemon joins it on drop); the signal's handler
            // does nothing.
            unsafe { libc::pthread_kill(target, wakeup_signal()) };
            s.changed.wait_for(&mut phase, RESIGNAL);
        }
    }
}

/// Waits until the poll descriptor is readable (true) or the helper is
/// nudged (false; the nudge is taken).
fn wait_readable(s: &Signalling) -> bool {
    let mut fds = [
        libc::pollfd { fd: s.poll_fd, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: s.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: `fds` is a live array of two pollfd for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n >= 0 {
            break;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // Cannot watch: report readiness, so the main thread polls.
            return true;
        }
    }
    if fds[1].revents != 0 {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from a descriptor we own.
        unsafe { libc::read(s.wake.as_raw_fd(), (&raw mut count).cast(), 8) };
    }
    fds[0].revents != 0
}

/// Why a solo run ended.
enum End {
    /// Something else needs the loop; the client stays.
    Loop,
    /// The client is gone (closed by the core, or end of file).
    Closed,
}

impl<P: Platform> Daemon<P> {
    /// Serves `id` alone until anything else needs the loop (see the module
    /// doc), then hands its socket back to the poll. `timeout` is the
    /// poll's: the run ends by then. Returns the poll's next timeout.
    pub(super) fn serve_solo(
        &mut self,
        id: ConnId,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> io::Result<Option<Duration>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let Some(client) = self.state.clients.get(&id).filter(|c| !c.wants_write) else {
            return Ok(timeout);
        };
        let stream = Arc::clone(&client.stream);
        if let Err(e) = self.state.registry.deregister(&mut SourceFd(&stream.as_raw_fd())) {
            tracing::debug!(conn = id.0, "no solo run: {e}");
            return Ok(timeout);
        }
        let blocking = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(timeout.map(|t| t.max(Duration::from_millis(1)))))
            .and_then(|()| self.solo.arm());
        let mut served = 0u64;
        let end = match blocking {
            Ok(()) => {
                let end = self.solo_turns(id, &stream, buf, deadline, &mut served);
                self.solo.disarm(served);
                tracing::debug!(conn = id.0, served, "solo run ended");
                end
            }
            Err(e) => {
                tracing::debug!(conn = id.0, "no solo run: {e}");
                // Counts as a short run: the next try waits longer.
                self.solo.disarm(0);
                Ok(End::Loop)
            }
        };
        if matches!(end, Ok(End::Loop)) && self.state.clients.contains_key(&id) && self.state.poll_again(id, &stream) {
            // Output the socket did not take waits for writability now.
            self.state.flush(id);
        }
        end?;
        Ok(self.state.poll_timeout())
    }

    /// The requests of a solo run, one `recv` each. Reads at the start of
    /// what arrives are answered from the published snapshot, as in the
    /// loop: every earlier request of the client is through the core and
    /// its output sent, or the run would have ended.
    fn solo_turns(
        &mut self,
        id: ConnId,
        stream: &StdUnixStream,
        buf: &mut [u8],
        deadline: Option<Instant>,
        served: &mut u64,
    ) -> io::Result<End> {
        loop {
            if self.solo.interrupted() {
                return Ok(End::Loop);
            }
            let open = match recv_blocking(stream, buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The receive timeout: a timer is due.
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Ok(End::Loop);
                }
                Ok(0) => {
                    self.state.close(id, "end of file");
                    false
                }
                Ok(n) => match self.state.received(&mut self.turn, id, &buf[..n]) {
                    Received::Answered if !self.state.output_waiting(id) => {
                        // Only reads, answered: the core has nothing new,
                        // so only the run's deadline can have changed.
                        *served += 1;
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            return Ok(End::Loop);
                        }
                        continue;
                    }
                    Received::Closed => false,
                    Received::Answered | Received::Fed => true,
                },
                Err(e) => {
                    self.state.close(id, &e.to_string());
                    false
                }
            };
            *served += 1;
            self.state.finish_turn(&mut self.turn)?;
            if !open || !self.state.clients.contains_key(&id) {
                return Ok(End::Closed);
            }
            let now = Instant::now();
            // A timer sooner than the run's deadline, or the deadline.
            let sooner = self
                .state
                .poll_timeout()
                .is_some_and(|t| deadline.is_none_or(|d| now + t + Duration::from_millis(1) < d));
            if sooner || deadline.is_some_and(|d| now >= d) || self.state.output_waiting(id) || self.state.loop_needed()
            {
                return Ok(End::Loop);
            }
        }
    }
}

extern "C" fn on_wakeup_signal(_: libc::c_int) {}

/// The signal that interrupts the main thread's `recv` (its handler does
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

/// A solo run's `recv`, as the system call itself: glibc's `recv` is a
/// cancellation point, and in a process with threads (the helper) it
/// switches asynchronous cancellation on and off around every call.
/// Nothing here is cancelled.
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
