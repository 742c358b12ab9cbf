//! Live update, the process side (`std`): write the state file, leave the
//! descriptors the new process needs open across `exec`, and `exec`.
//!
//! Hypervisor resources are never released by hand before `exec`: every
//! descriptor of the platforms (event channels, grant mappings, the
//! simulation's FIFOs and epoll set, inotify) is close-on-exec, so the
//! kernel releases them only when `exec` has succeeded, and a failed
//! `exec` leaves them exactly as they were (C unbinds `VIRQ_DOM_EXC` first
//! and loses domain-death notification when `exec` fails: §3.3 step 6).
//! The descriptors handed over (listening socket, accepted sockets, a
//! stand-in event-channel descriptor for a C successor) have close-on-exec
//! cleared just before `exec` and set again if it fails.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::conn::ConnId;
use crate::domain::Platform;
use crate::live_update::LuRequest;
use crate::lu_stream::{self, Fds};
use crate::protocol::Core;

/// `-f`'s check: `None` if the file cannot be found, else whether some
/// execute bit is set (C's test).
pub fn check_binary(path: &[u8]) -> Option<bool> {
    let meta = fs::metadata(std::ffi::OsStr::from_bytes(path)).ok()?;
    Some(meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The new process's argv: `[binary, -c words..., -U]`, or ours with
/// argv[0] replaced and `-U` added if missing (as C builds it).
pub fn new_argv(req: &LuRequest, ours: &[OsString]) -> Vec<OsString> {
    let binary = OsString::from_vec(req.binary.clone());
    let mut argv = vec![binary];
    match &req.cmdline {
        Some(words) => argv.extend(words.iter().map(|w| OsString::from_vec(w.clone()))),
        None => argv.extend(ours.iter().skip(1).cloned()),
    }
    if !argv.iter().skip(1).any(|a| a == "-U" || a == "--live-update") {
        argv.push(OsString::from("-U"));
    }
    argv
}

/// Writes `$XENSTORED_RUNDIR/state_dump` and `exec`s; returns only on
/// failure, with C's reply text. The state file is removed again then (a
/// stale dump must never be restored by a later `-U`).
pub fn dump_and_exec<P: Platform>(core: &mut Core<P>, req: &LuRequest, listener: RawFd, sockets: BTreeMap<ConnId, RawFd>) -> &'static str {
    // A C successor insists on an event-channel descriptor; ours reopen
    // their devices. A pipe stands in (both ends inherited: it never
    // becomes readable). A successor of ours closes the read end.
    let mut pipe = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    let evtchn = if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } == 0 { pipe[0] } else { -1 };
    let close_pipe = || {
        for fd in pipe.into_iter().filter(|fd| *fd >= 0) {
            // SAFETY: closing the pipe we created above.
            unsafe { libc::close(fd) };
        }
    };
    let fds = Fds { listener, evtchn, sockets };
    let bytes = match lu_stream::encode(core, req, &fds) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("live update: {e}");
            close_pipe();
            return "Dump write error";
        }
    };
    let path = lu_stream::state_file();
    let file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("live update: cannot open {}: {e}", path.display());
            close_pipe();
            return "Dump state open error";
        }
    };
    if let Err(e) = file.write_all(&bytes).and_then(|()| file.sync_all()) {
        tracing::error!("live update: cannot write {}: {e}", path.display());
        let _ = fs::remove_file(&path);
        close_pipe();
        return "Dump write error";
    }
    drop(file);
    let handed: Vec<RawFd> = [listener].into_iter().chain(fds.sockets.values().copied()).chain(pipe).filter(|fd| *fd >= 0).collect();
    let mut cleared = Vec::new();
    let mut failed = false;
    for &fd in &handed {
        match set_cloexec(fd, false) {
            Ok(()) => cleared.push(fd),
            Err(e) => {
                tracing::error!("live update: cannot keep fd {fd} open across exec: {e}");
                failed = true;
                break;
            }
        }
    }
    let ours: Vec<OsString> = std::env::args_os().collect();
    let argv = new_argv(req, &ours);
    if !failed {
        tracing::info!(
            "live update: state ({} bytes, version {}) in {}; exec {:?}",
            bytes.len(),
            req.version,
            path.display(),
            argv
        );
        let err = Command::new(&argv[0]).args(&argv[1..]).exec();
        tracing::error!("live update: exec {:?} failed: {err}", argv[0]);
    }
    for fd in cleared {
        let _ = set_cloexec(fd, true);
    }
    let _ = fs::remove_file(&path);
    close_pipe();
    "Error activating new binary."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_keeps_ours_or_takes_the_cmdline_and_adds_u_once() {
        let mut req = LuRequest { conn: ConnId(1), req_id: 0, tx_id: 0, binary: b"/new".to_vec(), cmdline: None, version: 2 };
        let ours: Vec<OsString> = ["/old", "-N", "--pid-file", "/p"].iter().map(OsString::from).collect();
        assert_eq!(new_argv(&req, &ours), ["/new", "-N", "--pid-file", "/p", "-U"].map(OsString::from));
        let ours_u: Vec<OsString> = ["/old", "-U", "-N"].iter().map(OsString::from).collect();
        assert_eq!(new_argv(&req, &ours_u), ["/new", "-U", "-N"].map(OsString::from));
        req.cmdline = Some(vec![b"-N".to_vec(), b"-T".to_vec(), b"/t".to_vec()]);
        assert_eq!(new_argv(&req, &ours), ["/new", "-N", "-T", "/t", "-U"].map(OsString::from));
    }

    #[test]
    fn binary_check() {
        assert_eq!(check_binary(b"/bin/sh"), Some(true));
        let plain = std::env::temp_dir().join(format!("lu-check-{}", std::process::id()));
        fs::write(&plain, b"x").expect("write");
        fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(check_binary(plain.as_os_str().as_bytes()), Some(false));
        let _ = fs::remove_file(&plain);
        assert_eq!(check_binary(b"/nonexistent/x"), None);
    }
}
