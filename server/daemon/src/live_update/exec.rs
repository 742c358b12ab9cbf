//! Live update, the process side (`std`): write the state file, leave the
//! descriptors the new process needs open across `exec`, and `exec`.
//!
//! Hypervisor resources are released by the kernel, not by hand: the
//! platforms' descriptors (grant mappings, the simulation's FIFOs and
//! epoll set, inotify) are close-on-exec, so they go only when `exec` has
//! succeeded and a failed `exec` leaves them as they were. The one
//! exception is Xen's `VIRQ_DOM_EXC`: it is bound on the event-channel
//! device, which the next process inherits with the guests' ports and
//! binds the VIRQ on again, so it is unbound right before `exec` and bound
//! again if `exec` fails (C does not, and loses domain-death notification
//! then: §3.3 step 6). The descriptors handed over (listening socket,
//! accepted sockets, the event-channel device or a stand-in for a C
//! successor) have close-on-exec cleared just before `exec` and set again
//! if it fails.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use rxenstored_core::{ConnId, Core, LuRequest, Platform};

use super::stream::{self, Fds};

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

/// rxenstored's options that C xenstored does not know, and whether each
/// takes a value: a C successor would refuse to start with them.
/// (`cli::tests::every_option_is_c_s_or_known_to_be_ours_alone` keeps
/// this list whole.)
pub const RXENSTORED_ONLY_OPTIONS: [(&str, bool); 12] = [
    ("xen", false),
    ("sim-rings", true),
    ("no-rings", false),
    ("socket-threads", false),
    ("state-dir", true),
    ("durability", true),
    ("checkpoint-interval", true),
    ("checkpoint-commits", true),
    ("discard-state", false),
    ("log-level", true),
    ("log-file", true),
    ("quota-log-interval", true),
];

/// Options both daemons have, under C's short name and our long one (C's
/// own long names for them differ between its versions).
pub const RENAMED_OPTIONS: [(char, &str); 2] = [('p', "priv-domid"), ('K', "keep-orphans")];

/// Our command line as C xenstored reads it: our own options dropped,
/// [`RENAMED_OPTIONS`] in C's short forms.
pub fn args_for_c(ours: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::with_capacity(ours.len());
    let mut it = ours.iter();
    while let Some(arg) = it.next() {
        let s = arg.to_string_lossy();
        if s == "--" {
            out.extend(it.by_ref().cloned());
            break;
        }
        let Some(long) = s.strip_prefix("--") else {
            out.push(arg.clone());
            continue;
        };
        let (name, inline_value) = match long.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (long, None),
        };
        if let Some((short, _)) = RENAMED_OPTIONS.iter().find(|(_, n)| *n == name) {
            out.push(format!("-{short}").into());
            out.extend(inline_value.map(OsString::from));
            continue;
        }
        match RXENSTORED_ONLY_OPTIONS.iter().find(|(n, _)| *n == name) {
            Some((_, takes_value)) => {
                if *takes_value && inline_value.is_none() {
                    it.next();
                }
            }
            None => out.push(arg.clone()),
        }
    }
    out
}

/// The new process's argv: `[binary, -c words..., -U]`, or ours with
/// `argv[0]` replaced and `-U` added if missing (as C builds it); for a C
/// successor, ours without the options only rxenstored has.
pub fn new_argv(req: &LuRequest, ours: &[OsString]) -> Vec<OsString> {
    let binary = OsString::from_vec(req.binary.clone());
    let mut argv = vec![binary];
    match &req.cmdline {
        Some(words) => argv.extend(words.iter().map(|w| OsString::from_vec(w.clone()))),
        None if rxenstored_core::live_update::is_rxenstored(&req.binary) => argv.extend(ours.iter().skip(1).cloned()),
        None => argv.extend(args_for_c(ours.get(1..).unwrap_or_default())),
    }
    if !argv.iter().skip(1).any(|a| a == "-U" || a == "--live-update") {
        argv.push(OsString::from("-U"));
    }
    argv
}

/// Writes `$XENSTORED_RUNDIR/state_dump` and `exec`s; returns only on
/// failure, with C's reply text. The state file is removed again then (a
/// stale dump must never be restored by a later `-U`).
pub fn dump_and_exec<P: Platform>(
    core: &mut Core<P>,
    req: &LuRequest,
    listener: RawFd,
    sockets: BTreeMap<ConnId, RawFd>,
) -> &'static str {
    dump_and_exec_to(core, req, listener, sockets, &stream::state_file())
}

fn dump_and_exec_to<P: Platform>(
    core: &mut Core<P>,
    req: &LuRequest,
    listener: RawFd,
    sockets: BTreeMap<ConnId, RawFd>,
    path: &std::path::Path,
) -> &'static str {
    // The platform's event-channel device goes to the next process with
    // the guests' ports bound on it. Without one (sockets only, simulated
    // rings), a C successor still insists on a descriptor: a pipe stands
    // in (both ends inherited: it never becomes readable), and a successor
    // of ours closes it.
    let device = core.platform().handover_fd();
    let mut pipe = [-1; 2];
    let evtchn = match device {
        Some(fd) => fd,
        // SAFETY: pipe2 writes two descriptors into the array we own.
        None if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } == 0 => pipe[0],
        None => -1,
    };
    let close_pipe = || {
        for fd in pipe.into_iter().filter(|fd| *fd >= 0) {
            // SAFETY: closing the pipe we created above.
            unsafe { libc::close(fd) };
        }
    };
    let fds = Fds { listener, evtchn, sockets };
    let bytes = match stream::encode(core, req, &fds) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("live update: {e}");
            close_pipe();
            return "Dump write error";
        }
    };
    let file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path);
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
        let _ = fs::remove_file(path);
        close_pipe();
        return "Dump write error";
    }
    drop(file);
    let handed: Vec<RawFd> = [listener]
        .into_iter()
        .chain(fds.sockets.values().copied())
        .chain(pipe)
        .chain(device)
        .filter(|fd| *fd >= 0)
        .collect();
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
        core.platform().release_for_exec();
        let err = Command::new(&argv[0]).args(&argv[1..]).exec();
        tracing::error!("live update: exec {:?} failed: {err}", argv[0]);
        core.platform().reclaim_after_failed_exec();
    }
    for fd in cleared {
        let _ = set_cloexec(fd, true);
    }
    let _ = fs::remove_file(path);
    close_pipe();
    "Error activating new binary."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_keeps_ours_or_takes_the_cmdline_and_adds_u_once() {
        let mut req =
            LuRequest { conn: ConnId(1), req_id: 0, tx_id: 0, binary: b"/new".to_vec(), cmdline: None, version: 2 };
        let ours: Vec<OsString> = ["/old", "-N", "--pid-file", "/p"].iter().map(OsString::from).collect();
        assert_eq!(new_argv(&req, &ours), ["/new", "-N", "--pid-file", "/p", "-U"].map(OsString::from));
        let ours_u: Vec<OsString> = ["/old", "-U", "-N"].iter().map(OsString::from).collect();
        assert_eq!(new_argv(&req, &ours_u), ["/new", "-U", "-N"].map(OsString::from));
        req.cmdline = Some(vec![b"-N".to_vec(), b"-T".to_vec(), b"/t".to_vec()]);
        assert_eq!(new_argv(&req, &ours), ["/new", "-N", "-T", "/t", "-U"].map(OsString::from));
    }

    #[test]
    fn a_c_successor_gets_only_options_c_knows() {
        let req = LuRequest {
            conn: ConnId(1),
            req_id: 0,
            tx_id: 0,
            binary: b"/usr/lib/xen-4.17/bin/xenstored".to_vec(),
            cmdline: None,
            version: 1,
        };
        let ours: Vec<OsString> = [
            "/usr/sbin/rxenstored",
            "--pid-file",
            "/p",
            "--state-dir",
            "/s",
            "--durability=commit",
            "--xen",
            "--priv-domid",
            "7",
            "--keep-orphans",
            "-E",
            "100",
            "--log-file",
            "/l",
            "-T",
            "/t",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(
            new_argv(&req, &ours),
            ["/usr/lib/xen-4.17/bin/xenstored", "--pid-file", "/p", "-p", "7", "-K", "-E", "100", "-T", "/t", "-U"]
                .map(OsString::from)
        );
        let inline: Vec<OsString> = ["--priv-domid=9", "--log-level=debug"].iter().map(OsString::from).collect();
        assert_eq!(args_for_c(&inline), ["-p", "9"].map(OsString::from));
    }

    /// A platform with an event-channel device to hand over (a pipe here)
    /// that counts what the live update asks of it.
    struct Handing {
        fd: RawFd,
        released: u32,
        reclaimed: u32,
    }

    impl Platform for Handing {
        fn attach(&mut self, _: rxenstored_core::RingAttach) -> Result<(), rxenstored_core::Error> {
            Ok(())
        }
        fn rebind(&mut self, _: ConnId, _: engine::DomId, _: u32) -> Result<(), rxenstored_core::Error> {
            Ok(())
        }
        fn detach(&mut self, _: ConnId, _: engine::DomId) {}
        fn domain_exists(&self, _: engine::DomId) -> bool {
            true
        }
        fn handover_fd(&self) -> Option<i32> {
            Some(self.fd)
        }
        fn release_for_exec(&mut self) {
            self.released += 1;
        }
        fn reclaim_after_failed_exec(&mut self) {
            self.reclaimed += 1;
        }
    }

    #[test]
    fn failed_exec_takes_back_what_it_released_and_keeps_the_device_private() {
        let mut pipe = [-1; 2];
        // SAFETY: pipe2 writes two descriptors into the array we own.
        assert_eq!(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let mut core =
            Core::with_platform(rxenstored_core::Config::default(), Handing { fd: pipe[0], released: 0, reclaimed: 0 });
        let conn = core.connect_socket();
        let req = LuRequest {
            conn,
            req_id: 1,
            tx_id: 0,
            binary: b"/nonexistent/rxenstored".to_vec(),
            cmdline: None,
            version: 2,
        };
        let dir = std::env::temp_dir().join(format!("lu-exec-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let state = dir.join("state_dump");
        let reply = dump_and_exec_to(&mut core, &req, -1, BTreeMap::new(), &state);
        assert_eq!(reply, "Error activating new binary.");
        assert_eq!((core.platform().released, core.platform().reclaimed), (1, 1));
        // SAFETY: fcntl on a descriptor we own.
        let flags = unsafe { libc::fcntl(pipe[0], libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC, "close-on-exec set again");
        assert!(!state.exists(), "no stale state file");
        for fd in pipe {
            // SAFETY: closing the pipe we created.
            unsafe { libc::close(fd) };
        }
        let _ = fs::remove_dir_all(&dir);
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
