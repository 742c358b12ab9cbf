//! Starting and stopping the xenstore daemons that the integration tests
//! (`tests/support`) and the load generator (`xsload`) drive, each in a
//! fresh run directory under /tmp, its stdout and stderr in
//! `<rundir>/daemon.log`:
//!
//! * rxenstored, as `rxenstored --no-fork` with `XENSTORED_RUNDIR`
//!   ([`DaemonProcess::rxenstored`]);
//! * Debian's Xen 4.17 C xenstored and oxenstored, through the peers'
//!   `start-peer` and `stop-peer` scripts in `shared/peers`
//!   ([`DaemonProcess::peer`]);
//! * any other program that serves `<rundir>/socket`
//!   ([`DaemonProcess::spawn`]).
//!
//! With a CPU given, the program runs under `taskset -c CPU`. A
//! [`DaemonProcess`] is stopped and its run directory removed when it is
//! dropped (also on panic); [`stop_all`] stops every one still running,
//! for a program's signal handling. A pid is signalled only while it
//! surely names the daemon: our own children are not reaped before, and a
//! peer's pid must still name a xenstore daemon's executable.

use std::fmt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use wire::client::Client;

/// How long a daemon may take to serve its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a child may take to exit on SIGTERM before it gets SIGKILL.
const TERM_TIMEOUT: Duration = Duration::from_secs(5);

/// One of the reference daemons that `start-peer` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// Debian's C xenstored 4.17.
    Cxenstored,
    /// Debian's OCaml oxenstored 4.17.
    Oxenstored,
}

impl Peer {
    /// The name `start-peer` takes.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Cxenstored => "cxenstored",
            Peer::Oxenstored => "oxenstored",
        }
    }
}

/// Why a daemon could not be started.
#[derive(Debug, Clone)]
pub enum StartError {
    /// The program or script is not where it was looked for.
    Missing(PathBuf),
    /// Not available on this machine (`start-peer` failed, e.g. without
    /// apt access).
    Unavailable(String),
    /// Available, but it did not come up: what happened, and its log.
    Failed {
        /// What went wrong.
        what: String,
        /// The daemon's whole log.
        log: String,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Missing(path) => write!(f, "{} does not exist", path.display()),
            StartError::Unavailable(m) => f.write_str(m),
            StartError::Failed { what, log } => write!(f, "{what}; log: {}", last_lines(log)),
        }
    }
}

/// The `shared/` directory (peers and spec): `$XS_SHARED_DIR`, else
/// `../shared` beside the workspace.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("XS_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")),
    }
}

/// Where the rxenstored binary is expected: `$RXENSTORED_BIN`, else
/// `rxenstored` in the running program's profile directory
/// (`<target>/<profile>/`, also from a test binary in its `deps/`).
pub fn rxenstored_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RXENSTORED_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") { dir.parent()? } else { dir };
    Some(profile_dir.join("rxenstored"))
}

/// A running daemon serving `<rundir>/socket`; stopped, and its run
/// directory removed, on drop. `K` names it in messages (the caller's own
/// notion of which daemon this is).
#[derive(Debug)]
pub struct DaemonProcess<K> {
    kind: K,
    pid: i32,
    rundir: PathBuf,
    socket: PathBuf,
    process: Slot,
}

/// What stopping a daemon takes, shared with [`stop_all`]; `None` once
/// stopped.
type Slot = Arc<Mutex<Option<Running>>>;

/// Every daemon started and not yet dropped.
static RUNNING: Mutex<Vec<Slot>> = Mutex::new(Vec::new());

// start-peer unpacks packages and builds its shim on first use; two at
// once in one process could race on that cache.
static START_LOCK: Mutex<()> = Mutex::new(());

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stops every daemon still running (for a signal handler's thread, before
/// the program exits). A daemon being stopped meanwhile by its drop is
/// waited for.
pub fn stop_all() {
    let slots: Vec<Slot> = lock(&RUNNING).clone();
    for slot in slots {
        if let Some(running) = lock(&slot).take() {
            running.stop();
        }
    }
}

impl<K: Copy + fmt::Display> DaemonProcess<K> {
    /// Starts `program` in a fresh run directory; `configure` adds its
    /// arguments and environment, given the run directory. The program must
    /// serve `<rundir>/socket` within 10 s.
    pub fn spawn(
        kind: K,
        program: &Path,
        cpu: Option<usize>,
        configure: impl FnOnce(&mut Command, &Path),
    ) -> Result<Self, StartError> {
        if !program.is_file() {
            return Err(StartError::Missing(program.to_path_buf()));
        }
        let rundir = new_rundir(&kind)?;
        let spawned = std::fs::File::create(rundir.join("daemon.log"))
            .and_then(|log| Ok((log.try_clone()?, log)))
            .map_err(|e| format!("cannot create daemon.log: {e}"))
            .and_then(|(out, err)| {
                let mut cmd = with_cpu(cpu, program);
                configure(&mut cmd, &rundir);
                cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().map_err(|e| format!("cannot run {kind}: {e}"))
            });
        let child = match spawned {
            Ok(child) => child,
            Err(what) => {
                let _ = std::fs::remove_dir_all(&rundir);
                return Err(StartError::Failed { what, log: String::new() });
            }
        };
        // The pid a child has fits in an i32 (pid_t).
        let pid = child.id() as i32;
        Self::started(kind, Running { pid, child: Some(child), stop_peer: None, rundir })
    }

    /// Starts rxenstored (`bin`) as `rxenstored --no-fork` with
    /// `XENSTORED_RUNDIR` set to a fresh run directory (and no
    /// `XENSTORED_PATH`); `configure` adds further arguments.
    pub fn rxenstored(
        kind: K,
        bin: &Path,
        cpu: Option<usize>,
        configure: impl FnOnce(&mut Command, &Path),
    ) -> Result<Self, StartError> {
        Self::spawn(kind, bin, cpu, |cmd, rundir| {
            cmd.arg("--no-fork").env("XENSTORED_RUNDIR", rundir).env_remove("XENSTORED_PATH");
            configure(cmd, rundir);
        })
    }

    /// Starts a reference daemon with `<shared>/peers/start-peer`, to be
    /// stopped with its `stop-peer`.
    pub fn peer(kind: K, peer: Peer, shared: &Path, cpu: Option<usize>) -> Result<Self, StartError> {
        let script = shared.join("peers/start-peer");
        if !script.is_file() {
            return Err(StartError::Missing(script));
        }
        let rundir = new_rundir(&kind)?;
        let out = {
            let _guard = lock(&START_LOCK);
            with_cpu(cpu, &script)
                .arg(peer.name())
                .arg(&rundir)
                .env_remove("XENSTORED_PATH")
                .stdin(Stdio::null())
                .output()
        };
        let pid = match &out {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("PEER_PID="))
                .and_then(|p| p.trim().parse::<i32>().ok()),
            _ => None,
        };
        let Some(pid) = pid else {
            let _ = std::fs::remove_dir_all(&rundir);
            return Err(StartError::Unavailable(match out {
                Err(e) => format!("cannot run {}: {e}", script.display()),
                Ok(out) => format!(
                    "start-peer {} failed ({}): {}",
                    peer.name(),
                    out.status,
                    last_lines(&String::from_utf8_lossy(&out.stderr))
                ),
            }));
        };
        let stop_peer = Some(shared.join("peers/stop-peer"));
        Self::started(kind, Running { pid, child: None, stop_peer, rundir })
    }

    /// Registers a started daemon and waits until it serves its socket.
    fn started(kind: K, running: Running) -> Result<Self, StartError> {
        let (pid, rundir) = (running.pid, running.rundir.clone());
        let process = Arc::new(Mutex::new(Some(running)));
        lock(&RUNNING).push(Arc::clone(&process));
        let d = DaemonProcess { kind, pid, socket: rundir.join("socket"), rundir, process };
        d.wait_ready()
    }

    /// Waits until the socket accepts connections; fails (and stops the
    /// process, through drop) if it does not in time or the process dies.
    fn wait_ready(self) -> Result<Self, StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(self);
            }
            let what = if !self.is_alive() {
                format!("{} exited before serving {}", self.kind, self.socket.display())
            } else if Instant::now() >= deadline {
                format!("{} did not serve {} within {READY_TIMEOUT:?}", self.kind, self.socket.display())
            } else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            return Err(StartError::Failed { what, log: self.log() });
        }
    }

    /// Which daemon this is.
    pub fn kind(&self) -> K {
        self.kind
    }

    /// A new connection (a fresh, privileged socket client); panics if the
    /// daemon does not take it.
    pub fn connect(&self) -> Client {
        Client::connect(&self.socket)
            .unwrap_or_else(|e| panic!("{}: connect {}: {e}", self.kind, self.socket.display()))
    }
}

impl<K> DaemonProcess<K> {
    /// The Unix socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The run directory.
    pub fn rundir(&self) -> &Path {
        &self.rundir
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The daemon's log (its stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.rundir.join("daemon.log")).unwrap_or_default()
    }

    /// The last lines of the log on one line, for short messages.
    pub fn log_tail(&self) -> String {
        last_lines(&self.log())
    }

    /// Whether the process still runs (a zombie counts as gone).
    pub fn is_alive(&self) -> bool {
        lock(&self.process).as_mut().is_some_and(Running::is_alive)
    }
}

impl<K> Drop for DaemonProcess<K> {
    fn drop(&mut self) {
        // Registered until stopped: `stop_all` meanwhile waits on the slot.
        if let Some(running) = lock(&self.process).take() {
            running.stop();
        }
        lock(&RUNNING).retain(|slot| !Arc::ptr_eq(slot, &self.process));
    }
}

/// A started daemon's process and run directory.
#[derive(Debug)]
struct Running {
    pid: i32,
    /// Our child (rxenstored, or another program we spawned); `None` for a
    /// peer, which start-peer detached.
    child: Option<Child>,
    /// The peer's `stop-peer` script.
    stop_peer: Option<PathBuf>,
    rundir: PathBuf,
}

impl Running {
    fn is_alive(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => names_xenstored(self.pid),
        }
    }

    /// Stops the process (a peer with stop-peer, our child with SIGTERM and,
    /// after a while, SIGKILL) and removes the run directory.
    fn stop(mut self) {
        if let Some(script) = &self.stop_peer {
            let stopped = Command::new(script)
                .arg(&self.rundir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !stopped && names_xenstored(self.pid) {
                kill(self.pid, libc::SIGKILL);
            }
        }
        if let Some(child) = &mut self.child {
            // Not reaped before this wait, so `pid` cannot have been reused.
            if matches!(child.try_wait(), Ok(None)) {
                kill(self.pid, libc::SIGTERM);
                let deadline = Instant::now() + TERM_TIMEOUT;
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.rundir);
    }
}

/// A fresh, empty run directory `/tmp/xs-<kind>.<pid>.<n>`.
fn new_rundir(kind: &dyn fmt::Display) -> Result<PathBuf, StartError> {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let dir = PathBuf::from(format!("/tmp/xs-{kind}.{}.{n}", std::process::id()));
    // Left over from an earlier process with this pid, killed before its
    // clean-up.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| StartError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

fn with_cpu(cpu: Option<usize>, program: &Path) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// The last five lines of `text`, joined by " / ".
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.trim().lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

/// Whether `pid` names a live (not zombie) process whose executable is a
/// xenstore daemon's, so that a recycled pid is never signalled.
fn names_xenstored(pid: i32) -> bool {
    pid_alive(pid)
        && std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "xenstored" || n == "oxenstored"))
}

/// Whether `pid` names a live, non-zombie process.
fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// Sends `sig` to `pid` (never to a group: `pid` must be positive).
fn kill(pid: i32, sig: libc::c_int) {
    if pid > 0 {
        // SAFETY: kill(2) has no memory-safety preconditions; pid > 0 names
        // one process, never a group.
        unsafe { libc::kill(pid, sig) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_missing() {
        let e = DaemonProcess::spawn("x", Path::new("/nonexistent/daemon"), None, |_, _| {}).unwrap_err();
        assert!(matches!(e, StartError::Missing(p) if p == Path::new("/nonexistent/daemon")));
    }

    /// A program that exits without serving is a failure with its log, and
    /// leaves neither a process nor its run directory behind.
    #[test]
    fn a_program_that_exits_fails_with_its_log() {
        let mut rundir = None;
        let e = DaemonProcess::spawn("sh", Path::new("/bin/sh"), None, |cmd, dir| {
            cmd.arg("-c").arg("echo going away; exit 3");
            rundir = Some(dir.to_path_buf());
        })
        .unwrap_err();
        let StartError::Failed { what, log } = &e else { panic!("{e:?}") };
        assert!(what.starts_with("sh exited before serving"), "{what}");
        assert_eq!(log, "going away\n");
        assert!(e.to_string().ends_with("; log: going away"), "{e}");
        assert!(!rundir.expect("configured").exists());
    }
}
