//! Starting and stopping the daemons under test, each in a fresh run
//! directory under /tmp, each stopped when its [`Daemon`] guard is dropped
//! (also on panic, and by the signal thread on SIGINT/SIGTERM).
//!
//! * `rxenstored`: run as `rxenstored --no-fork` with `XENSTORED_RUNDIR`.
//! * `cxenstored`, `oxenstored`: Debian's 4.17 daemons through
//!   `peers/start-peer` and `peers/stop-peer`.
//! * `floor`: this binary's hidden `floor-server` subcommand (a null store).
//!
//! With a CPU given, the daemon is started under `taskset -c CPU`.
//! [`Daemon::start_sim_rings`] starts rxenstored with `--sim-rings
//! <rundir>/rings`: simulated guests (`rxenstored_platform::sim`) in that directory.

use std::fmt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sys;

/// Which server a [`Daemon`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Ours, in its default mode (sockets served by the event loop).
    Rxenstored,
    /// Ours with `--socket-threads` (a thread per socket client).
    RxThreads,
    /// Debian's C xenstored 4.17.
    Cxenstored,
    /// Debian's OCaml oxenstored 4.17.
    Oxenstored,
    /// The null store server inside this tool.
    Floor,
}

impl Kind {
    /// Every kind, in table order.
    pub const ALL: [Kind; 5] = [Kind::Rxenstored, Kind::RxThreads, Kind::Cxenstored, Kind::Oxenstored, Kind::Floor];

    /// The name used on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Rxenstored => "rxenstored",
            Kind::RxThreads => "rx-threads",
            Kind::Cxenstored => "cxenstored",
            Kind::Oxenstored => "oxenstored",
            Kind::Floor => "floor",
        }
    }

    /// Parses a [`name`](Self::name).
    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s.trim())
    }

    /// Whether this is one of the reference daemons (C or OCaml).
    pub fn is_reference(self) -> bool {
        matches!(self, Kind::Cxenstored | Kind::Oxenstored)
    }

    /// Whether this is rxenstored, in either mode.
    pub fn is_ours(self) -> bool {
        matches!(self, Kind::Rxenstored | Kind::RxThreads)
    }

    fn is_peer(self) -> bool {
        self.is_reference()
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the programs are.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The rxenstored binary.
    pub rxenstored: PathBuf,
    /// The `shared/` directory holding `peers/start-peer`.
    pub shared: PathBuf,
    /// This tool's own binary (for the floor server).
    pub this_exe: PathBuf,
}

/// Why a daemon could not be started.
#[derive(Debug, Clone)]
pub enum StartError {
    /// Not available on this machine (reported and skipped).
    Unavailable(String),
    /// Available but it did not come up (an error of the run).
    Failed(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Unavailable(m) => write!(f, "unavailable: {m}"),
            StartError::Failed(m) => write!(f, "failed to start: {m}"),
        }
    }
}

/// A running server; stopped (and its run directory removed) on drop.
#[derive(Debug)]
pub struct Daemon {
    kind: Kind,
    pid: i32,
    /// Set when we spawned the process ourselves (rxenstored, floor).
    child: Option<Child>,
    rundir: PathBuf,
    socket: PathBuf,
    reg_id: u64,
    shared: PathBuf,
    /// The `--sim-rings` directory, if the daemon serves simulated guests.
    rings: Option<PathBuf>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn new_rundir(kind: Kind) -> Result<(PathBuf, u64), StartError> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let dir = PathBuf::from(format!("/tmp/xsload.{}.{}.{id}", std::process::id(), kind.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| StartError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
    Ok((dir, id))
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

impl Daemon {
    /// Starts a fresh server of `kind`, pinned to `cpu` if given.
    pub fn start(kind: Kind, progs: &Programs, cpu: Option<usize>) -> Result<Daemon, StartError> {
        if kind.is_peer() { Daemon::start_peer(kind, progs, cpu) } else { Daemon::start_child(kind, progs, cpu, false) }
    }

    /// Starts a fresh rxenstored serving simulated guests in
    /// [`rings_dir`](Self::rings_dir) (inside its run directory, removed
    /// with it) besides its socket.
    pub fn start_sim_rings(progs: &Programs, cpu: Option<usize>) -> Result<Daemon, StartError> {
        Daemon::start_child(Kind::Rxenstored, progs, cpu, true)
    }

    fn start_child(kind: Kind, progs: &Programs, cpu: Option<usize>, sim_rings: bool) -> Result<Daemon, StartError> {
        let (rundir, reg_id) = new_rundir(kind)?;
        let socket = rundir.join("socket");
        let rings = sim_rings.then(|| rundir.join("rings"));
        let mut cmd = match kind {
            Kind::Floor => {
                let mut c = with_cpu(cpu, &progs.this_exe);
                c.arg("floor-server").arg(&socket);
                c
            }
            _ => {
                if !progs.rxenstored.is_file() {
                    let _ = std::fs::remove_dir_all(&rundir);
                    return Err(StartError::Unavailable(format!(
                        "{} does not exist (build it: cargo build --release -p rxenstored, or pass --rxenstored)",
                        progs.rxenstored.display()
                    )));
                }
                let mut c = with_cpu(cpu, &progs.rxenstored);
                c.arg("--no-fork").env("XENSTORED_RUNDIR", &rundir).env_remove("XENSTORED_PATH");
                if kind == Kind::RxThreads {
                    c.arg("--socket-threads");
                }
                if let Some(dir) = &rings {
                    c.arg("--sim-rings").arg(dir);
                }
                c
            }
        };
        let log = std::fs::File::create(rundir.join("daemon.log"))
            .and_then(|f| Ok((f.try_clone()?, f)))
            .map_err(|e| StartError::Failed(format!("cannot create daemon.log: {e}")))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.0)
            .stderr(log.1)
            .spawn()
            .map_err(|e| StartError::Failed(format!("cannot run {kind}: {e}")))?;
        let pid = i32::try_from(child.id()).map_err(|_| StartError::Failed("pid does not fit in i32".into()))?;
        let d = Daemon { kind, pid, child: Some(child), rundir, socket, reg_id, shared: progs.shared.clone(), rings };
        d.register();
        d.wait_ready(Duration::from_secs(10))
    }

    fn start_peer(kind: Kind, progs: &Programs, cpu: Option<usize>) -> Result<Daemon, StartError> {
        let script = progs.shared.join("peers/start-peer");
        if !script.is_file() {
            return Err(StartError::Unavailable(format!("{} not found (pass --shared)", script.display())));
        }
        let (rundir, reg_id) = new_rundir(kind)?;
        let out = with_cpu(cpu, &script)
            .arg(kind.name())
            .arg(&rundir)
            .env_remove("XENSTORED_PATH")
            .stdin(Stdio::null())
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&rundir);
                return Err(StartError::Unavailable(format!("cannot run {}: {e}", script.display())));
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let pid = stdout.lines().find_map(|l| l.strip_prefix("PEER_PID=")).and_then(|p| p.trim().parse::<i32>().ok());
        let Some(pid) = pid.filter(|_| out.status.success()) else {
            let _ = std::fs::remove_dir_all(&rundir);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last: Vec<&str> = stderr.lines().rev().take(3).collect();
            return Err(StartError::Unavailable(format!(
                "start-peer {kind} failed ({}): {}",
                out.status,
                last.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )));
        };
        let d = Daemon {
            kind,
            pid,
            child: None,
            socket: rundir.join("socket"),
            rundir,
            reg_id,
            shared: progs.shared.clone(),
            rings: None,
        };
        d.register();
        d.wait_ready(Duration::from_secs(10))
    }

    /// Lets the signal thread stop this daemon.
    fn register(&self) {
        let (kind, pid, rundir, shared) = (self.kind, self.pid, self.rundir.clone(), self.shared.clone());
        let stop: sys::StopFn = Box::new(move || {
            stop_process(kind, pid, &rundir, &shared);
            let _ = std::fs::remove_dir_all(&rundir);
        });
        sys::RUNNING.lock().unwrap_or_else(|e| e.into_inner()).push((self.reg_id, stop));
    }

    fn wait_ready(mut self, timeout: Duration) -> Result<Daemon, StartError> {
        let deadline = Instant::now() + timeout;
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(self);
            }
            if !self.is_alive() {
                return Err(StartError::Failed(format!(
                    "{} exited before serving {}; log: {}",
                    self.kind,
                    self.socket.display(),
                    self.log_tail()
                )));
            }
            if Instant::now() >= deadline {
                return Err(StartError::Failed(format!(
                    "{} did not serve {} within {timeout:?}; log: {}",
                    self.kind,
                    self.socket.display(),
                    self.log_tail()
                )));
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

    /// The simulated guests' directory (`--sim-rings`), if any.
    pub fn rings_dir(&self) -> Option<&Path> {
        self.rings.as_deref()
    }

    /// The server's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the process still runs.
    pub fn is_alive(&mut self) -> bool {
        if let Some(child) = &mut self.child {
            return matches!(child.try_wait(), Ok(None));
        }
        sys::pid_alive(self.pid)
    }

    /// The last lines of the daemon's log, for messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.rundir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
    }

    /// CPU time used so far, user and system, in seconds.
    pub fn cpu_times(&self) -> std::io::Result<(f64, f64)> {
        sys::cpu_times(self.pid)
    }

    /// `VmHWM` (peak resident set) in bytes.
    pub fn hwm(&self) -> std::io::Result<u64> {
        sys::proc_status_kb(self.pid, "VmHWM")
    }
}

/// Stops a server: start-peer's daemons through stop-peer, our children
/// with SIGTERM then SIGKILL. Never signals a pid that does not name the
/// expected program.
fn stop_process(kind: Kind, pid: i32, rundir: &Path, shared: &Path) {
    if kind.is_peer() {
        let stopped = Command::new(shared.join("peers/stop-peer"))
            .arg(rundir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped && sys::pid_alive(pid) && matches!(sys::exe_name(pid).as_deref(), Some("xenstored" | "oxenstored"))
        {
            sys::kill(pid, libc::SIGKILL);
        }
        return;
    }
    // Our own child, not reaped yet: the pid cannot have been recycled.
    if !sys::pid_alive(pid) {
        return;
    }
    sys::kill(pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sys::pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if sys::pid_alive(pid) {
        sys::kill(pid, libc::SIGKILL);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let mut running = sys::RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|(id, _)| *id != self.reg_id);
        stop_process(self.kind, self.pid, &self.rundir, &self.shared);
        if let Some(child) = &mut self.child {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        drop(running);
        let _ = std::fs::remove_dir_all(&self.rundir);
    }
}
