//! The daemon as an operator or an init system starts it: its log output
//! and its command line.
//!
//! Guards against: colour escapes in log files (stderr sent to a file, as
//! dom0's init scripts do), colour despite `NO_COLOR`, and no colour on a
//! terminal.

use std::fs::File;
use std::io::Read as _;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rxenstored_suite::daemon::{Daemon, rxenstored_bin};

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
    let d = Daemon::start_rx(&[]).expect("rxenstored starts");
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
