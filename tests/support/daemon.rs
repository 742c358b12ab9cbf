//! The daemons under test, started through the `launch` crate, each in its
//! own run directory under /tmp:
//!
//! * `cxenstored`, `oxenstored`: Debian's Xen 4.17 daemons, started with
//!   `shared/peers/start-peer` (shared/ is `../shared` from the workspace
//!   root, or `$XS_SHARED_DIR`). Unavailable (skipped, with a message) when
//!   start-peer fails, e.g. without apt access.
//! * `rxenstored`: `<target>/debug/rxenstored` (the target directory found
//!   from the test binary's own path, `<target>/debug/deps/…`) or
//!   `$RXENSTORED_BIN`, run as `rxenstored --no-fork` with
//!   `XENSTORED_RUNDIR=<rundir>`, and the options in `$RXENSTORED_ARGS`.
//!   Unavailable (skipped) while the binary does not exist; a binary that
//!   exists but does not come up is a failure.
//!
//! A [`DaemonProcess`] is stopped when dropped (SIGTERM, then SIGKILL), so
//! a failing test never leaks a process.

use std::fmt;

pub use launch::{DaemonProcess, rxenstored_bin, shared_dir};
use launch::{Peer, StartError};

/// Which implementation a [`DaemonProcess`] runs.
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

/// A daemon under test.
pub type TestDaemon = DaemonProcess<Kind>;

/// Why a daemon kind is not available here.
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Starts a daemon of `kind` in a fresh run directory.
///
/// `Err` means "not available here" (to be reported as a skip); a daemon
/// that is available but fails to come up panics.
pub fn start(kind: Kind) -> Result<TestDaemon, Unavailable> {
    let started = match kind {
        Kind::Rxenstored => return start_rx(&[]),
        Kind::Cxenstored => DaemonProcess::peer(kind, Peer::Cxenstored, &shared_dir(), None),
        Kind::Oxenstored => DaemonProcess::peer(kind, Peer::Oxenstored, &shared_dir(), None),
    };
    started.map_err(|e| unavailable_or_panic(e, "set XS_SHARED_DIR"))
}

/// Starts rxenstored with extra command-line arguments (and those of
/// `$RXENSTORED_ARGS` that `args` does not have, to run a suite against a
/// differently started daemon).
pub fn start_rx(args: &[&str]) -> Result<TestDaemon, Unavailable> {
    let bin = rxenstored_bin().ok_or_else(|| Unavailable("cannot locate the target directory".into()))?;
    let env_args = std::env::var("RXENSTORED_ARGS").unwrap_or_default();
    DaemonProcess::rxenstored(Kind::Rxenstored, &bin, None, |cmd, _| {
        cmd.args(args).args(env_args.split_whitespace().filter(|a| !args.contains(a)));
    })
    .map_err(|e| unavailable_or_panic(e, "build it with `cargo build -p rxenstored`, or set RXENSTORED_BIN"))
}

/// A daemon that could not start: unavailable (a skip, `hint` saying what
/// to do when a program is missing), or, if available, a failure.
fn unavailable_or_panic(e: StartError, hint: &str) -> Unavailable {
    match e {
        StartError::Missing(_) => Unavailable(format!("{e} ({hint})")),
        StartError::Unavailable(m) => Unavailable(m),
        StartError::Failed { what, log } => panic!("{what}; log:\n{log}"),
    }
}
