//! The daemon's command line, apart from the binary so that the manual
//! page and the shell completions are generated from the same definitions
//! (the `packaging` crate, when the Debian package is built).

use std::path::PathBuf;

use clap::{CommandFactory, Parser};

use crate::persistence::Durability;

/// The `rxenstored` command, as its manual page and completions see it.
pub fn command() -> clap::Command {
    Args::command()
}

/// A xenstore daemon: the configuration store of a Xen host.
///
/// The socket is at $XENSTORED_PATH, else $XENSTORED_RUNDIR/socket, else
/// /var/run/xenstored/socket. The store is kept in memory.
#[derive(Parser, Debug)]
#[command(name = "rxenstored", version, after_long_help = AFTER_HELP)]
pub struct Args {
    /// Do not detach from the terminal (run in the foreground).
    #[arg(short = 'N', long = "no-fork")]
    pub no_fork: bool,

    /// Write the daemon's process id to this file.
    #[arg(short = 'F', long = "pid-file")]
    pub pid_file: Option<PathBuf>,

    /// Trace every message received and sent to this file.
    #[arg(short = 'T', long = "trace-file")]
    pub trace_file: Option<PathBuf>,

    /// Set a hard quota: NAME=VALUE, NAME one of nodes, watches,
    /// outstanding, memory, transactions, transaction-nodes,
    /// node-permissions, path-max, node-size. Repeatable.
    #[arg(short = 'Q', long = "quota", value_name = "NAME=VALUE")]
    pub quota: Vec<String>,

    /// Set a soft quota (logged only): NAME=VALUE. Repeatable.
    #[arg(short = 'q', long = "quota-soft", value_name = "NAME=VALUE")]
    pub quota_soft: Vec<String>,

    /// Nodes a domain may own (same as -Q nodes=N).
    #[arg(short = 'E', long = "entry-nb")]
    pub entry_nb: Option<u32>,

    /// Watches a domain may hold (same as -Q watches=N).
    #[arg(short = 'W', long = "watch-nb")]
    pub watch_nb: Option<u32>,

    /// Permission entries a node may carry (same as -Q node-permissions=N).
    #[arg(short = 'A', long = "perm-nb")]
    pub perm_nb: Option<u32>,

    /// Longest path an unprivileged domain may use (at most 2048).
    #[arg(short = 'M', long = "path-max")]
    pub path_max: Option<u32>,

    /// Largest node size (same as -Q node-size=N).
    #[arg(short = 'S', long = "entry-size")]
    pub entry_size: Option<u32>,

    /// Concurrent transactions per domain (same as -Q transactions=N).
    #[arg(short = 't', long = "transaction")]
    pub transaction: Option<u32>,

    /// The privileged (control) domain.
    #[arg(long = "priv-domid", default_value_t = 0)]
    pub priv_domid: u16,

    /// Give a released domain's nodes to the control domain instead of
    /// deleting them.
    #[arg(long = "keep-orphans")]
    pub keep_orphans: bool,

    /// Serve guests' rings through Xen's devices (/dev/xen/evtchn, gntdev,
    /// privcmd). The default when /dev/xen exists.
    #[arg(long = "xen", conflicts_with_all = ["sim_rings", "no_rings"])]
    pub xen: bool,

    /// Serve simulated guests instead: rings are files in DIR, event
    /// channels FIFOs (see the rxenstored_platform::sim documentation).
    #[arg(long = "sim-rings", value_name = "DIR", conflicts_with = "no_rings")]
    pub sim_rings: Option<PathBuf>,

    /// Serve the socket only, even where /dev/xen exists.
    #[arg(long = "no-rings")]
    pub no_rings: bool,

    /// Deprecated and ignored: one event loop serves every socket client.
    /// Still accepted so that an existing command line, and a live update
    /// from a daemon started with it, keep working.
    #[arg(long = "socket-threads", hide = true)]
    pub socket_threads: bool,

    /// Keep the state in this directory: restart after a crash with it.
    #[arg(long = "state-dir", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// What survives a crash (with --state-dir): none, checkpoint (periodic
    /// background checkpoints), commit (every acknowledged commit).
    #[arg(long = "durability", value_enum, default_value = "none")]
    pub durability: Durability,

    /// Seconds between checkpoints (checkpoint and commit modes).
    #[arg(long = "checkpoint-interval", value_name = "SECS", default_value_t = 60)]
    pub checkpoint_interval: u64,

    /// Commits between checkpoints (checkpoint and commit modes).
    #[arg(long = "checkpoint-commits", value_name = "N", default_value_t = 100_000)]
    pub checkpoint_commits: u64,

    /// If the state directory holds damaged state, move it aside and start
    /// empty instead of refusing to start.
    #[arg(long = "discard-state")]
    pub discard_state: bool,

    /// Live update: take over from the previous process (C xenstored's or
    /// ours) through $XENSTORED_RUNDIR/state_dump and the descriptors it
    /// left open. Set by the live update itself, not by hand.
    #[arg(short = 'U', long = "live-update")]
    pub live_update: bool,

    /// Log verbosity (error, warn, info, debug, trace); RUST_LOG overrides.
    #[arg(long = "log-level", default_value = "info")]
    pub log_level: String,

    /// Least seconds between two log lines about one domain hitting one
    /// quota (the refusals in between are counted, and the count logged).
    #[arg(long = "quota-log-interval", value_name = "SECS", default_value_t = crate::serving::QUOTA_LOG_INTERVAL.as_secs())]
    pub quota_log_interval: u64,

    /// Append the log to this file instead of writing it to stderr.
    #[arg(long = "log-file", value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

/// The end of `--help` and the manual page: environment, signals, files.
/// Paragraphs of plain sentences, which both a terminal and man(1) reflow.
const AFTER_HELP: &str = "\
Environment: XENSTORED_PATH is the socket's path, else XENSTORED_RUNDIR/socket \
(XENSTORED_RUNDIR also holds a live update's state_dump), else /var/run/xenstored/socket. \
RUST_LOG filters the log, over --log-level. NO_COLOR, set and not empty, turns colour \
off; only a terminal gets colour anyway. NOTIFY_SOCKET (systemd) is told when the \
daemon is ready.

Without --no-fork the command returns once the daemon serves (status 0), or with the \
daemon's failure status and message if it could not start.

Signals: SIGTERM and SIGINT stop the daemon; it finishes what it has read, removes its \
socket and its pid file.

The Debian package's /usr/share/doc/rxenstored/README.Debian says how to switch a Xen \
host to rxenstored and back.";

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::live_update::exec::RXENSTORED_ONLY_OPTIONS;

    /// C xenstored 4.17's long options (`xenstored --help` and its getopt
    /// table).
    const C_OPTIONS: [&str; 24] = [
        "no-domain-init",
        "pid-file",
        "help",
        "no-fork",
        "output-pid",
        "trace-file",
        "entry-nb",
        "entry-size",
        "watch-nb",
        "transaction",
        "perm-nb",
        "path-max",
        "quota",
        "quota-soft",
        "timeout",
        "no-recovery",
        "internal-db",
        "keep-orphans",
        "verbose",
        "event",
        "master-domid",
        "priv-domid",
        "live-update",
        "trace-control",
    ];

    /// A live update to C passes on only what C knows: every option of
    /// ours is either C's too or listed as ours alone, with whether it
    /// takes a value (so that the value is dropped with it).
    #[test]
    fn every_option_is_c_s_or_known_to_be_ours_alone() {
        let mut command = Args::command();
        command.build();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "version" {
                continue;
            }
            let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
            match RXENSTORED_ONLY_OPTIONS.iter().find(|(n, _)| *n == long) {
                Some((_, listed)) => assert_eq!(*listed, takes_value, "--{long}: whether it takes a value"),
                None => assert!(C_OPTIONS.contains(&long), "--{long} is neither C's nor in RXENSTORED_ONLY_OPTIONS"),
            }
        }
    }
}
