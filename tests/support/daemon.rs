//! Starting and stopping the daemons under test, each in its own temporary
//! run directory under /tmp.
//!
//! * `cxenstored`, `oxenstored`: Debian's Xen 4.17 daemons, started with
//!   `shared/peers/start-peer` (shared/ is `../shared` from the workspace
//!   root, or `$XS_SHARED_DIR`). Unavailable (skipped, with a message) when
//!   start-peer fails, e.g. without apt access.
//! * `rxenstored`: `<target>/debug/rxenstored` (the target directory found
//!   from the test binary's own path, `<target>/debug/deps/…`) or
//!   `$RXENSTORED_BIN`, run as `rxenstored --no-fork` with
//!   `XENSTORED_RUNDIR=<rundir>`. Unavailable (skipped) while the binary does
//!   not exist; a binary that exists but does not come up is a failure.
//!
//! A [`Daemon`] is stopped when dropped (SIGTERM, up to 5 s, then SIGKILL),
//! so a failing test never leaks a process.

use std::fmt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wire::client::Client;

/// Which implementation a [`Daemon`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Ours; expected to behave like the C daemon at Xen HEAD.
    Rxenstored,
    /// Debian's C xenstored from Xen 4.17.
    Cxenstored,
    /// Debian's OCaml oxenstored from Xen 4.17.
    Oxenstored,
}

impl Kind {
    /// The name used in messages and in `$XS_DAEMONS`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Rxenstored => "rxenstored",
            Kind::Cxenstored => "cxenstored",
            Kind::Oxenstored => "oxenstored",
        }
    }

    /// Parses a name as [`name`](Self::name) gives it.
    pub fn from_name(s: &str) -> Option<Kind> {
        match s.trim() {
            "rxenstored" => Some(Kind::Rxenstored),
            "cxenstored" => Some(Kind::Cxenstored),
            "oxenstored" => Some(Kind::Oxenstored),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A running daemon serving `socket`; stopped on drop.
#[derive(Debug)]
pub struct Daemon {
    kind: Kind,
    pid: i32,
    /// Set when we spawned the process ourselves (rxenstored): reaped on stop.
    child: Option<Child>,
    socket: PathBuf,
    // Dropped after `Drop::drop` has stopped the process.
    rundir: tempfile::TempDir,
}

/// Why a daemon kind is not available here.
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The shared/ directory (peers and spec).
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("XS_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")),
    }
}

/// Where the rxenstored binary is expected: `$RXENSTORED_BIN`, else
/// `<target>/debug/rxenstored` next to this test binary's `deps/` folder.
pub fn rxenstored_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RXENSTORED_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    let profile_dir = if deps.file_name().is_some_and(|n| n == "deps") { deps.parent()? } else { deps };
    Some(profile_dir.join("rxenstored"))
}

// start-peer unpacks packages and builds its shim on first use; running two
// at once in one process could race on that cache.
static START_LOCK: Mutex<()> = Mutex::new(());

fn new_rundir(kind: Kind) -> Result<tempfile::TempDir, Unavailable> {
    tempfile::Builder::new()
        .prefix(&format!("xs-{}-", kind.name()))
        .tempdir_in("/tmp")
        .map_err(|e| Unavailable(format!("cannot create a run directory under /tmp: {e}")))
}

impl Daemon {
    /// Starts a daemon of `kind` in a fresh run directory.
    ///
    /// `Err` means "not available here" (to be reported as a skip); a daemon
    /// that is available but fails to come up panics.
    pub fn start(kind: Kind) -> Result<Daemon, Unavailable> {
        match kind {
            Kind::Rxenstored => Daemon::start_rx(&[]),
            Kind::Cxenstored | Kind::Oxenstored => Daemon::start_peer(kind),
        }
    }

    /// Starts rxenstored with extra command-line arguments.
    pub fn start_rx(args: &[&str]) -> Result<Daemon, Unavailable> {
        let bin = rxenstored_bin().ok_or_else(|| Unavailable("cannot locate the target directory".into()))?;
        if !bin.is_file() {
            return Err(Unavailable(format!(
                "{} does not exist (build it with `cargo build -p server`, or set RXENSTORED_BIN)",
                bin.display()
            )));
        }
        let rundir = new_rundir(Kind::Rxenstored)?;
        let log = std::fs::File::create(rundir.path().join("daemon.log"))
            .map_err(|e| Unavailable(format!("cannot create daemon.log: {e}")))?;
        let log2 = log.try_clone().map_err(|e| Unavailable(format!("cannot dup daemon.log: {e}")))?;
        let child = Command::new(&bin)
            .arg("--no-fork")
            .args(args)
            // `RXENSTORED_ARGS`: extra options for every rxenstored the
            // tests start (run-tests runs the socket suites again with
            // `--socket-threads`).
            .args(std::env::var("RXENSTORED_ARGS").unwrap_or_default().split_whitespace().filter(|a| !args.contains(a)))
            .env("XENSTORED_RUNDIR", rundir.path())
            .env_remove("XENSTORED_PATH")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let pid = i32::try_from(child.id()).expect("pid fits in i32");
        let socket = rundir.path().join("socket");
        let mut d = Daemon { kind: Kind::Rxenstored, pid, child: Some(child), socket, rundir };
        d.wait_ready(Duration::from_secs(10));
        Ok(d)
    }

    fn start_peer(kind: Kind) -> Result<Daemon, Unavailable> {
        let script = shared_dir().join("peers/start-peer");
        if !script.is_file() {
            return Err(Unavailable(format!("{} not found (set XS_SHARED_DIR)", script.display())));
        }
        let rundir = new_rundir(kind)?;
        let out = {
            let _guard = START_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            Command::new(&script)
                .arg(kind.name())
                .arg(rundir.path())
                .env_remove("XENSTORED_PATH")
                .stdin(Stdio::null())
                .output()
                .map_err(|e| Unavailable(format!("cannot run {}: {e}", script.display())))?
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let pid = stdout.lines().find_map(|l| l.strip_prefix("PEER_PID=")).and_then(|p| p.trim().parse::<i32>().ok());
        let pid = match (out.status.success(), pid) {
            (true, Some(pid)) => pid,
            _ => {
                return Err(Unavailable(format!(
                    "start-peer {} failed ({}): {}",
                    kind.name(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        };
        let socket = rundir.path().join("socket");
        let mut d = Daemon { kind, pid, child: None, socket, rundir };
        d.wait_ready(Duration::from_secs(10));
        Ok(d)
    }

    /// Waits until the socket accepts connections; panics (after stopping
    /// the process, through drop) if it does not in time or the process dies.
    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if !self.is_alive() {
                panic!("{} exited before serving {}; log:\n{}", self.kind, self.socket.display(), self.log());
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not serve {} within {timeout:?}; log:\n{}",
                    self.kind,
                    self.socket.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The implementation.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The Unix socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The run directory.
    pub fn rundir(&self) -> &Path {
        self.rundir.path()
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A new connection (a fresh, privileged socket client).
    pub fn connect(&self) -> Client {
        Client::connect(&self.socket)
            .unwrap_or_else(|e| panic!("{}: connect {}: {e}", self.kind, self.socket.display()))
    }

    /// The daemon's log (stdout and stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.rundir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Whether the process still runs (a zombie counts as gone).
    pub fn is_alive(&mut self) -> bool {
        if let Some(child) = &mut self.child {
            return matches!(child.try_wait(), Ok(None));
        }
        // Not our child (start-peer daemonised it): make sure the pid still
        // names a xenstore daemon, so that a recycled pid is never signalled.
        pid_alive(self.pid) && pid_is_xenstored(self.pid)
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL. Idempotent.
    pub fn stop(&mut self) {
        if self.pid <= 0 {
            return;
        }
        if self.is_alive() {
            // SAFETY: kill(2) has no memory-safety preconditions; `pid` is the
            // daemon we started (positive, so never a process group).
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.is_alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.is_alive() {
                // SAFETY: as above.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                let deadline = Instant::now() + Duration::from_secs(5);
                while self.is_alive() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        if let Some(child) = &mut self.child {
            let _ = child.wait();
        }
        self.pid = 0;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `pid` names a live, non-zombie process.
fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// Whether `pid`'s command name is one of the peer daemons'.
fn pid_is_xenstored(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| matches!(c.trim(), "xenstored" | "oxenstored"))
}
