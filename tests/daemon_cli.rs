//! The daemon as an operator or an init system starts it: its log output
//! and its command line.
//!
//! Guards against: colour escapes in log files (stderr sent to a file, as
//! dom0's init scripts do), colour despite `NO_COLOR`, and no colour on a
//! terminal; a daemon that, started as Debian's /etc/init.d/xen and Xen's
//! launch-xenstore start it (no `--no-fork`, `--pid-file FILE`), returns
//! before its pid file exists or before it serves, reports success when it
//! could not start, or holds the caller's pipe open.

use std::fs::File;
use std::io::Read as _;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rxenstored_suite::daemon::{self, rxenstored_bin};
use wire::client::{Client, Reply};

const ESC: u8 = 0x1b;

/// The rxenstored binary, or `None` (the test is skipped) while it is not built.
fn binary() -> Option<PathBuf> {
    let bin = rxenstored_bin()?;
    if bin.is_file() {
        Some(bin)
    } else {
        eprintln!("SKIP: {} not built", bin.display());
        None
    }
}

/// SIGTERM, then waits for the child.
fn stop(child: &mut Child) {
    let pid = i32::try_from(child.id()).expect("pid fits in i32");
    // SAFETY: kill(2) on the child we spawned (positive pid).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A pseudo-terminal: the master end (read by the test) and the path of
/// its slave (the daemon's stderr).
fn open_pty() -> (File, PathBuf) {
    // SAFETY: plain calls on a descriptor we own; ptsname_r writes into our
    // buffer within its stated length.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        assert_eq!(libc::grantpt(master), 0, "grantpt");
        assert_eq!(libc::unlockpt(master), 0, "unlockpt");
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0, "ptsname_r");
        let path = std::ffi::CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned();
        let flags = libc::fcntl(master, libc::F_GETFL);
        libc::fcntl(master, libc::F_SETFL, flags | libc::O_NONBLOCK);
        (File::from_raw_fd(master), PathBuf::from(path))
    }
}

/// Starts the daemon with its stderr on a terminal (and `NO_COLOR` as
/// given) and returns what it wrote there up to its "listening" line.
fn terminal_log(bin: &PathBuf, no_color: Option<&str>) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut master, slave) = open_pty();
    let tty = File::options().read(true).write(true).open(&slave).expect("open the pty's slave");
    let mut cmd = Command::new(bin);
    cmd.args(["--no-fork", "--no-rings"])
        .env("XENSTORED_RUNDIR", dir.path())
        .env_remove("XENSTORED_PATH")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(tty);
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let mut child = cmd.spawn().expect("rxenstored starts");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&out).contains("listening on") {
        let mut buf = [0u8; 4096];
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "no 'listening' line on the terminal: {:?}",
                    String::from_utf8_lossy(&out)
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("reading the pty (fd {}): {e}", master.as_raw_fd()),
        }
    }
    stop(&mut child);
    out
}

#[test]
fn log_written_to_a_file_has_no_colour() {
    if binary().is_none() {
        return;
    }
    // The suite's daemons write stderr to daemon.log in their run directory.
    let d = daemon::start_rx(&[]).expect("rxenstored starts");
    let mut c = d.connect();
    c.write("/log/check", "v").expect("WRITE");
    let log = d.log();
    assert!(log.contains("listening on"), "the log has the start-up line: {log:?}");
    assert!(!log.as_bytes().contains(&ESC), "colour escapes in a log file: {log:?}");
}

#[test]
fn log_on_a_terminal_is_coloured_unless_no_color() {
    let Some(bin) = binary() else { return };
    let coloured = terminal_log(&bin, None);
    assert!(coloured.contains(&ESC), "no colour on a terminal: {:?}", String::from_utf8_lossy(&coloured));
    let plain = terminal_log(&bin, Some("1"));
    assert!(plain.windows(12).any(|w| w == b"listening on"), "{:?}", String::from_utf8_lossy(&plain));
    assert!(!plain.contains(&ESC), "colour despite NO_COLOR=1: {:?}", String::from_utf8_lossy(&plain));
    // An empty NO_COLOR does not count (no-color.org).
    let empty = terminal_log(&bin, Some(""));
    assert!(empty.contains(&ESC), "no colour with an empty NO_COLOR: {:?}", String::from_utf8_lossy(&empty));
}

/// Whether `pid` runs (a zombie counts as gone: the detached daemon's
/// parent is not this process, and nothing may reap it here).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X'])))
}

/// Runs the daemon without `--no-fork` and waits for the command to
/// return, as an init script does; returns its status and what it wrote to
/// stderr (a pipe: read to its end, so the daemon must have let go of it).
fn run_detached(bin: &PathBuf, rundir: &std::path::Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(bin)
        .args(args)
        .env("XENSTORED_RUNDIR", rundir)
        .env_remove("XENSTORED_PATH")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rxenstored starts");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the command did not return within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = rx.recv_timeout(Duration::from_secs(10)).expect("the daemon let go of the caller's stderr");
    (status, text)
}

/// Reads the pid file, checks the daemon serves, stops it with SIGTERM and
/// checks it cleaned up after itself.
fn check_detached_daemon(rundir: &std::path::Path, pid_file: &std::path::Path) {
    let text = std::fs::read_to_string(pid_file).expect("the pid file exists when the command returns");
    let pid: i32 = text.trim().parse().expect("a pid in the pid file");
    assert!(alive(pid), "pid {pid} from the pid file runs");
    let socket = rundir.join("socket");
    let mut c = Client::connect(&socket).expect("the daemon serves when the command returns");
    assert_eq!(c.write("/detached", "yes").expect("WRITE"), Reply::ok_nul());
    assert_eq!(c.read("/detached").expect("READ"), Reply::ok_from("yes"));
    drop(c);
    // SAFETY: kill(2) on the daemon's pid, checked alive above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!alive(pid), "SIGTERM stops the detached daemon");
    assert!(!pid_file.exists(), "the pid file is removed at exit");
    assert!(!socket.exists(), "the socket is removed at exit");
}

#[test]
fn detaches_as_debian_init_starts_it() {
    let Some(bin) = binary() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("xenstore.pid");
    let log_file = dir.path().join("xenstored.log");
    // /etc/init.d/xen: $XENSTORED $XENSTORED_ARGS --pid-file FILE.
    let pid_arg = format!("--pid-file={}", pid_file.display());
    let log_arg = format!("--log-file={}", log_file.display());
    let (status, stderr) = run_detached(&bin, dir.path(), &["--no-rings", &log_arg, &pid_arg]);
    assert!(status.success(), "{status}: {stderr}");
    let log = std::fs::read_to_string(&log_file).expect("the log file");
    assert!(log.contains("listening on"), "the log file has the start-up line: {log:?}");
    assert!(!log.as_bytes().contains(&ESC), "colour escapes in the log file: {log:?}");
    check_detached_daemon(dir.path(), &pid_file);
}

#[test]
fn detaches_as_launch_xenstore_starts_it() {
    let Some(bin) = binary() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("xenstored.pid");
    // launch-xenstore: $XENSTORED --pid-file FILE $XENSTORED_ARGS.
    let pid_file_arg = pid_file.display().to_string();
    let (status, stderr) = run_detached(&bin, dir.path(), &["--pid-file", &pid_file_arg, "--no-rings"]);
    assert!(status.success(), "{status}: {stderr}");
    check_detached_daemon(dir.path(), &pid_file);
}

#[test]
fn a_detached_daemon_that_cannot_start_fails_the_command() {
    let Some(bin) = binary() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("xenstored.pid");
    let pid_file_arg = pid_file.display().to_string();
    // Refused after the fork: the parent must report the child's failure.
    let (status, stderr) =
        run_detached(&bin, dir.path(), &["--pid-file", &pid_file_arg, "--no-rings", "--durability", "commit"]);
    assert!(!status.success(), "the command failed: {stderr}");
    assert!(stderr.contains("--durability needs --state-dir"), "the reason reaches the caller: {stderr:?}");
    assert!(!pid_file.exists(), "no pid file is left behind");
}
