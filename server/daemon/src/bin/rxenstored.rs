//! rxenstored: the xenstore daemon. Command line compatible with C
//! xenstored's where the options make sense for it.

/// mimalloc: no per-allocation header (the store is millions of small
/// allocations) and faster small allocations than glibc's (benches/README.md).
#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

/// mimalloc as the global allocator, through its plain entry points where
/// the alignment allows: every mimalloc block is aligned to at least a
/// word, and nearly all of this program's allocations ask for no more.
/// (The `mimalloc` crate calls the `_aligned` variants for every request,
/// which take a slower path; benches/README.md has what this saves.)
struct MiMalloc;

/// What `mi_malloc` guarantees of any block.
const MI_MIN_ALIGN: usize = std::mem::size_of::<usize>();

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free`
// takes blocks of either entry point); blocks from the plain entry points
// are only used for layouts whose alignment `MI_MIN_ALIGN` satisfies.
unsafe impl std::alloc::GlobalAlloc for MiMalloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        // SAFETY: plain allocation calls; mimalloc returns null on failure.
        unsafe {
            if layout.align() <= MI_MIN_ALIGN {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        // SAFETY: as in `alloc`.
        unsafe {
            if layout.align() <= MI_MIN_ALIGN {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from this allocator (the trait's contract).
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys as mi;
        // SAFETY: `ptr` came from this allocator with `layout` (the trait's
        // contract); the new block keeps the alignment.
        unsafe {
            if layout.align() <= MI_MIN_ALIGN {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use engine::DomId;
use rxenstored::cli::Args;
use rxenstored::live_update::exec::RENAMED_OPTIONS;
use rxenstored::live_update::stream;
use rxenstored::persistence::{self, Durability, PersistConfig, Persistence};
use rxenstored::serving::{self, Daemon};
use rxenstored_core::quota::{Quota, QuotaName};
use rxenstored_core::{Config, Core, NoRings, Platform};
use rxenstored_platform::sim::SimPlatform;
use rxenstored_platform::xen::XenPlatform;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

fn parse_quota(spec: &str) -> Result<(Quota, u32), String> {
    let (name, value) = spec.split_once('=').ok_or_else(|| format!("quota '{spec}': expected NAME=VALUE"))?;
    let quota = Quota::from_name(name.as_bytes()).ok_or_else(|| format!("quota '{spec}': unknown name '{name}'"))?;
    let value = value.parse::<u32>().map_err(|_| format!("quota '{spec}': '{value}' is not a number"))?;
    Ok((quota, value))
}

fn config(args: &Args) -> Result<Config, String> {
    let mut config =
        Config { priv_domid: DomId(args.priv_domid), keep_orphans: args.keep_orphans, ..Config::default() };
    let mut set = |q: Quota, v: u32| config.quotas.set(QuotaName { quota: q, soft: false }, v);
    for spec in &args.quota {
        let (q, v) = parse_quota(spec)?;
        set(q, v);
    }
    for (q, v) in [
        (Quota::Nodes, args.entry_nb),
        (Quota::Watches, args.watch_nb),
        (Quota::NodePermissions, args.perm_nb),
        (Quota::NodeSize, args.entry_size),
        (Quota::Transactions, args.transaction),
    ] {
        if let Some(v) = v {
            set(q, v);
        }
    }
    if let Some(v) = args.path_max {
        // C lets -M lower the limit, never raise it above 2048 (§3.3).
        set(Quota::PathMax, v.min(2048));
    }
    for spec in &args.quota_soft {
        let (q, v) = parse_quota(spec)?;
        config.quotas.set_soft(q, v);
    }
    Ok(config)
}

/// The hypervisor interface the command line asks for, and the event
/// channel of the daemon's own ring when it has one (Xen's xsd_port).
///
/// After a live update (`inherited_evtchn`: GLOBAL_DATA's `evtchn-fd`) Xen's
/// event-channel device is the one the previous process left open, with the
/// guests' ports still bound on it.
fn platform(
    args: &Args,
    config: &Config,
    inherited_evtchn: Option<i32>,
) -> Result<(BoxedPlatform, Option<u32>), String> {
    if let Some(dir) = &args.sim_rings {
        let sim = SimPlatform::new(dir, config.priv_domid)
            .map_err(|e| format!("cannot use {} for simulated rings: {e}", dir.display()))?;
        tracing::info!("serving simulated guests in {}", dir.display());
        return Ok((Box::new(sim), None));
    }
    if args.no_rings || (!args.xen && !std::path::Path::new("/dev/xen").exists()) {
        return Ok((Box::new(NoRings), None));
    }
    let xen = match inherited_evtchn {
        Some(fd) => XenPlatform::adopt(config.store_domid, fd),
        None => XenPlatform::open(config.store_domid),
    };
    let xen = xen.map_err(|e| format!("cannot use Xen: {e}"))?;
    Ok((Box::new(xen), XenPlatform::own_port()))
}

/// Detaches from the terminal as init scripts expect of a daemon started
/// without `--no-fork`: the command returns once the daemon serves, with
/// status 0, or with the daemon's own failure status if it could not start
/// (its error message on the caller's stderr).
///
/// The parent waits on a pipe until the child calls [`Detached::ready`] (it
/// listens and has written its pid file) or exits. The child runs in a new
/// session, with stdin on /dev/null; it keeps stdout and stderr until it is
/// ready, so that start-up errors reach the caller.
fn daemonize() -> io::Result<Detached> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just opened and are owned by nothing else.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: called before any thread is started; the child continues
    // with a copy of this single-threaded process.
    match unsafe { libc::fork() } {
        -1 => return Err(io::Error::last_os_error()),
        0 => {}
        child => {
            drop(write_end);
            std::process::exit(wait_for_child(read_end, child));
        }
    }
    drop(read_end);
    // SAFETY: plain system call without pointers from us.
    if unsafe { libc::setsid() } == -1 {
        return Err(io::Error::last_os_error());
    }
    let null = fs::File::open("/dev/null")?;
    use std::os::fd::AsRawFd;
    // SAFETY: duplicating a descriptor we own onto standard input.
    unsafe { libc::dup2(null.as_raw_fd(), 0) };
    Ok(Detached { ready: fs::File::from(write_end) })
}

/// The parent's side of [`daemonize`]: 0 once the child said it is ready;
/// else the child's exit status (1 if it has none to give).
fn wait_for_child(read_end: std::os::fd::OwnedFd, child: libc::pid_t) -> i32 {
    use std::io::Read;
    let mut byte = [0u8; 1];
    let mut pipe = fs::File::from(read_end);
    loop {
        match pipe.read(&mut byte) {
            Ok(1) => return 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            _ => break,
        }
    }
    // The child closed the pipe without a word: it has exited (or is about to).
    let mut status = 0;
    // SAFETY: waits for our own child, writing its status into our variable.
    if unsafe { libc::waitpid(child, &mut status, 0) } == child && libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => 1,
            code => code,
        }
    } else {
        1
    }
}

/// A detached daemon's link to the parent that waits for it.
struct Detached {
    ready: fs::File,
}

impl Detached {
    /// Lets the parent exit with success, and lets go of its output:
    /// stdout goes to /dev/null, stderr too unless it is where a
    /// supervisor collects the log (a regular file, or systemd's journal,
    /// which names its stream in `JOURNAL_STREAM`). A terminal or a pipe
    /// must not be held open by a daemon: the caller's session or pipeline
    /// would wait for it.
    fn ready(mut self) {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        if let Ok(null) = fs::OpenOptions::new().write(true).open("/dev/null") {
            let keep_stderr = stderr_is_a_log();
            for fd in [1, 2] {
                if fd == 2 && keep_stderr {
                    continue;
                }
                // SAFETY: duplicating a descriptor we own onto a standard one.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
        let _ = self.ready.write_all(b"R");
    }
}

/// Whether stderr is a regular file or systemd's journal stream.
fn stderr_is_a_log() -> bool {
    // SAFETY: `stat` is plain data (all zeroes is a valid value); fstat
    // fills the struct we own.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(2, &mut st) != 0 {
            return false;
        }
        st
    };
    if st.st_mode & libc::S_IFMT == libc::S_IFREG {
        return true;
    }
    // "DEVICE:INODE" of the journal's stream, in decimal (systemd.exec(5)).
    std::env::var("JOURNAL_STREAM").is_ok_and(|v| v == format!("{}:{}", st.st_dev, st.st_ino))
}

/// C xenstored's options that rxenstored does not have: (short, long,
/// takes a value). A live update from C passes C's command line on; these
/// are dropped with a warning instead of failing.
const C_ONLY_OPTIONS: [(Option<char>, &str, bool); 10] = [
    (Some('D'), "no-domain-init", false),
    (Some('e'), "event", true),
    (Some('m'), "master-domid", true),
    (Some('P'), "output-pid", false),
    (None, "trace-control", true),
    (Some('w'), "timeout", true),
    (Some('R'), "no-recovery", false),
    (Some('I'), "internal-db", false),
    (Some('V'), "verbose", false),
    (Some('H'), "help-c", false),
];

/// C's command line made ours: [`RENAMED_OPTIONS`] in our long forms
/// (`-p N` → `--priv-domid N`), C-only options dropped (with warnings).
fn c_compatible_args(argv: Vec<OsString>) -> (Vec<OsString>, Vec<String>) {
    let mut out = Vec::with_capacity(argv.len());
    let mut warnings = Vec::new();
    let mut it = argv.into_iter();
    if let Some(a0) = it.next() {
        out.push(a0);
    }
    while let Some(arg) = it.next() {
        let s = arg.to_string_lossy().into_owned();
        if s == "--" {
            out.push(arg);
            out.extend(it.by_ref());
            break;
        }
        if let Some((_, long)) = RENAMED_OPTIONS.iter().find(|(short, _)| s == format!("-{short}")) {
            out.push(format!("--{long}").into());
            continue;
        }
        let found = C_ONLY_OPTIONS.iter().find(|(short, long, _)| {
            s.strip_prefix("--").is_some_and(|l| l == *long || l.starts_with(&format!("{long}=")))
                || short.is_some_and(|c| {
                    s == format!("-{c}") || (s.len() > 2 && s.starts_with(&format!("-{c}")) && !s.starts_with("--"))
                })
        });
        match found {
            Some((short, long, takes_value)) => {
                let inline = s.contains('=')
                    || short.is_some_and(|c| s.len() > 2 && s.starts_with(&format!("-{c}")) && !s.starts_with("--"));
                let mut dropped = s.clone();
                if *takes_value
                    && !inline
                    && let Some(v) = it.next()
                {
                    dropped.push(' ');
                    dropped.push_str(&v.to_string_lossy());
                }
                warnings
                    .push(format!("ignoring C xenstored option '{dropped}' (--{long}): rxenstored has no equivalent"));
            }
            None => out.push(arg),
        }
    }
    (out, warnings)
}

/// The state a live update left: the file's bytes checked and decoded.
fn load_live_update_state() -> Result<(PathBuf, snapshot_tools::model::Stream), String> {
    let path = stream::state_file();
    let bytes =
        fs::read(&path).map_err(|e| format!("live update: cannot read the state file {}: {e}", path.display()))?;
    let snap = stream::load(&bytes).map_err(|e| {
        format!(
            "live update: the state file {} is unusable: {e}\n(kept for inspection: xenstore-inspect {})",
            path.display(),
            path.display()
        )
    })?;
    Ok((path, snap))
}

type BoxedPlatform = Box<dyn Platform + Send>;

/// Where the daemon's state comes from, decided before anything is served.
enum Startup {
    /// `-U`: the previous process's state, with its listening socket and
    /// its clients' sockets (the state file is removed once it serves).
    LiveUpdate { restored: Box<stream::Imported<BoxedPlatform>>, state_file: PathBuf },
    /// A new process: the platform to build the core over, from the state
    /// directory if that holds state.
    Fresh(BoxedPlatform),
}

impl Startup {
    fn new(args: &Args, config: &Config) -> Result<(Startup, Option<u32>), String> {
        if !args.live_update {
            let (platform, own_port) = platform(args, config, None)?;
            return Ok((Startup::Fresh(platform), own_port));
        }
        let (path, snap) = load_live_update_state()?;
        let evtchn = snap.global.map(|g| g.evtchn_fd).filter(|fd| *fd >= 0);
        // The store domain's own ring comes with the state: no port here.
        let (platform, _) = platform(args, config, evtchn)?;
        let t = std::time::Instant::now();
        let restored = stream::import(config.clone(), platform, &snap).map_err(|e| {
            format!(
                "live update: cannot restore {}: {e}\n(kept for inspection: xenstore-inspect {})",
                path.display(),
                path.display()
            )
        })?;
        for w in &restored.warnings {
            tracing::warn!("live update: {w}");
        }
        tracing::info!(
            "live update: restored {} nodes, {} connections (stream version {}) in {:?}",
            restored.core.store().snapshot().len(),
            snap.connections.len(),
            snap.version,
            t.elapsed()
        );
        if restored.listener.is_none() && snap.global.is_some_and(|g| g.socket_fd >= 0) {
            tracing::warn!("live update: no usable inherited listening socket; binding it again");
        }
        Ok((Startup::LiveUpdate { restored: Box::new(restored), state_file: path }, None))
    }

    /// The listening socket the previous process left, if any.
    fn take_listener(&mut self) -> Option<std::os::fd::OwnedFd> {
        match self {
            Startup::LiveUpdate { restored, .. } => restored.listener.take(),
            Startup::Fresh(_) => None,
        }
    }
}

/// `--state-dir` and `--durability` together, or neither.
fn persist_config(args: &Args) -> Result<Option<PersistConfig>, String> {
    match (&args.state_dir, args.durability) {
        (None, Durability::None) => Ok(None),
        (None, _) => Err("--durability needs --state-dir".into()),
        (Some(_), Durability::None) => Err("--state-dir needs --durability checkpoint or commit".into()),
        (Some(dir), durability) => Ok(Some(PersistConfig {
            dir: dir.clone(),
            durability,
            interval: Duration::from_secs(args.checkpoint_interval.max(1)),
            every_commits: args.checkpoint_commits.max(1),
        })),
    }
}

fn run(args: Args) -> Result<(), String> {
    let config = config(&args)?;
    let persist = persist_config(&args)?;
    let socket = serving::socket_path_from_env();
    let (mut startup, own_port) = Startup::new(&args, &config)?;
    let listener = match startup.take_listener() {
        Some(fd) => {
            let l = std::os::unix::net::UnixListener::from(fd);
            l.set_nonblocking(true).map_err(|e| format!("inherited listening socket: {e}"))?;
            mio::net::UnixListener::from_std(l)
        }
        None => serving::bind(&socket).map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?,
    };
    let trace = match &args.trace_file {
        Some(p) => Some(
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("cannot open trace file {}: {e}", p.display()))?,
        ),
        None => None,
    };
    // A live update keeps the process (and its pid): never detach again.
    let detached = if !args.no_fork && !args.live_update {
        Some(daemonize().map_err(|e| format!("cannot detach: {e}"))?)
    } else {
        None
    };
    let _pid_file = match &args.pid_file {
        Some(p) => Some(PidFile::write(p)?),
        None => None,
    };
    let (persistence, recovered) = match persist {
        Some(pc) => {
            let (p, recovered) = Persistence::open(pc, args.discard_state)?;
            (Some(p), recovered)
        }
        None => (None, None),
    };
    let (mut core, sockets, state_file) = match startup {
        // The live update's state is newer than the directory's.
        Startup::LiveUpdate { restored, state_file } => (restored.core, restored.sockets, Some(state_file)),
        Startup::Fresh(platform) => {
            let core = match recovered {
                Some(r) => {
                    for w in &r.warnings {
                        tracing::warn!("{w}");
                    }
                    let dir = args.state_dir.as_deref().unwrap_or(std::path::Path::new("?"));
                    tracing::info!(
                        "restored state of commit {} from {} ({} nodes)",
                        r.seq,
                        dir.display(),
                        r.state.snapshot.len()
                    );
                    persistence::restore(config, platform, r.state)
                }
                None => Core::with_platform(config, platform),
            };
            (core, Vec::new(), None)
        }
    };
    if let Some(port) = own_port {
        match core.attach_own_ring(port) {
            Ok(_) => tracing::info!("serving the store domain's own ring (port {port})"),
            Err(e) => tracing::warn!("cannot attach the store domain's own ring: {e}"),
        }
    }
    let mut persistence = persistence;
    if let Some(p) = persistence.as_mut() {
        p.start(&mut core).map_err(|e| format!("cannot write the initial checkpoint: {e}"))?;
    }
    let mut daemon = Daemon::new(core, listener, socket.clone(), trace).map_err(|e| format!("cannot start: {e}"))?;
    if args.socket_threads {
        tracing::warn!("--socket-threads is deprecated and ignored: the event loop serves every socket client");
    }
    daemon.set_quota_log_interval(Duration::from_secs(args.quota_log_interval));
    if let Some(p) = persistence {
        daemon.set_persistence(p);
    }
    for (id, fd) in sockets {
        if let Err(e) = daemon.adopt_client(id, std::os::unix::net::UnixStream::from(fd)) {
            tracing::warn!("live update: cannot serve connection {} again: {e}", id.0);
            daemon.core().disconnect(id);
        }
    }
    if let Some(path) = &state_file {
        // As C: the file is gone once its state is in use.
        if let Err(e) = fs::remove_file(path) {
            tracing::warn!("live update: cannot remove {}: {e}", path.display());
        }
        tracing::info!("live update: done; serving");
    }
    tracing::info!("rxenstored {} listening on {}", env!("CARGO_PKG_VERSION"), socket.display());
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(d) = detached {
        d.ready();
    }
    daemon.run().map_err(|e| format!("event loop failed: {e}"))?;
    Ok(())
}

/// The pid file, removed when the daemon ends (normally or with an error;
/// a live update's `exec` keeps it, and the successor, with the same pid,
/// writes it again).
struct PidFile(PathBuf);

impl PidFile {
    fn write(path: &std::path::Path) -> Result<PidFile, String> {
        fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| format!("cannot write pid file {}: {e}", path.display()))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Whether log lines get ANSI colours: only on a terminal (a log file, a
/// pipe or the journal gets plain text), and never with `NO_COLOR` set to
/// anything but the empty string (no-color.org).
fn colour_logs() -> bool {
    use std::io::IsTerminal;
    io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() -> ExitCode {
    let (argv, warnings) = c_compatible_args(std::env::args_os().collect());
    let args = Args::parse_from(argv);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log_level));
    let (writer, ansi) = match &args.log_file {
        Some(path) => match fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => (BoxMakeWriter::new(std::sync::Mutex::new(file)), false),
            Err(e) => {
                eprintln!("rxenstored: cannot open the log file {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => (BoxMakeWriter::new(io::stderr), colour_logs()),
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi).init();
    for w in warnings {
        tracing::warn!("{w}");
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("rxenstored: {e}");
            ExitCode::FAILURE
        }
    }
}
