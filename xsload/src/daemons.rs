//! The servers a run compares, started through the `launch` crate (a fresh
//! run directory under /tmp each, stopped when dropped, also on panic, and
//! by the signal thread on SIGINT/SIGTERM through `launch::stop_all`):
//!
//! * `rxenstored`: run as `rxenstored --no-fork` with `XENSTORED_RUNDIR`;
//! * `cxenstored`, `oxenstored`: Debian's 4.17 daemons through
//!   `peers/start-peer` and `peers/stop-peer`;
//! * `floor`: this binary's hidden `floor-server` subcommand (a null store).
//!
//! With a CPU given, the server is started under `taskset -c CPU`.
//! [`start_sim_rings`] starts rxenstored with `--sim-rings <rundir>/rings`:
//! simulated guests (`rxenstored_platform::sim`) in that directory.

use std::fmt;
use std::path::PathBuf;

use launch::Peer;
pub use launch::{DaemonProcess, StartError};

/// Which server a [`DaemonProcess`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Ours.
    Rxenstored,
    /// Debian's C xenstored 4.17.
    Cxenstored,
    /// Debian's OCaml oxenstored 4.17.
    Oxenstored,
    /// The null store server inside this tool.
    Floor,
}

impl Kind {
    /// Every kind, in table order.
    pub const ALL: [Kind; 4] = [Kind::Rxenstored, Kind::Cxenstored, Kind::Oxenstored, Kind::Floor];

    /// The name used on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Rxenstored => "rxenstored",
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

/// Starts a fresh server of `kind`, pinned to `cpu` if given.
pub fn start(kind: Kind, progs: &Programs, cpu: Option<usize>) -> Result<DaemonProcess<Kind>, StartError> {
    let started = match kind {
        Kind::Rxenstored => DaemonProcess::rxenstored(kind, &progs.rxenstored, cpu, |_, _| {}),
        Kind::Cxenstored => DaemonProcess::peer(kind, Peer::Cxenstored, &progs.shared, cpu),
        Kind::Oxenstored => DaemonProcess::peer(kind, Peer::Oxenstored, &progs.shared, cpu),
        Kind::Floor => DaemonProcess::spawn(kind, &progs.this_exe, cpu, |c, rundir| {
            c.arg("floor-server").arg(rundir.join("socket"));
        }),
    };
    let hint = if kind.is_reference() { PEERS_HINT } else { RX_HINT };
    started.map_err(|e| with_hint(e, hint))
}

/// Starts a fresh rxenstored serving simulated guests besides its socket;
/// returns it and the guests' directory (inside its run directory, removed
/// with it).
pub fn start_sim_rings(progs: &Programs, cpu: Option<usize>) -> Result<(DaemonProcess<Kind>, PathBuf), StartError> {
    let d = DaemonProcess::rxenstored(Kind::Rxenstored, &progs.rxenstored, cpu, |c, rundir| {
        c.arg("--sim-rings").arg(rundir.join("rings"));
    })
    .map_err(|e| with_hint(e, RX_HINT))?;
    let rings = d.rundir().join("rings");
    Ok((d, rings))
}

const RX_HINT: &str = "build it: cargo build --release -p rxenstored, or pass --rxenstored";
const PEERS_HINT: &str = "pass --shared";

/// A missing program as unavailable, saying how to get it.
fn with_hint(e: StartError, hint: &str) -> StartError {
    match e {
        StartError::Missing(_) => StartError::Unavailable(format!("{e} ({hint})")),
        e => e,
    }
}
