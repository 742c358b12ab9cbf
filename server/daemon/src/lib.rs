//! rxenstored, the daemon: the protocol core (`rxenstored_core`) served
//! over the Unix socket and guests' rings, with persistence and live
//! update. Everything here is I/O and policy; every protocol decision is
//! the core's.
//!
//! # Layout
//!
//! - [`serving`]: the event loop ([`serving::Daemon`]) over the Unix
//!   socket and the platform's rings, snapshot reads, solo runs.
//! - [`persistence`]: `--state-dir`, `--durability`: the core's journal
//!   to `persist`'s checkpoints and commit log, and back.
//! - [`live_update`]: the state file (the core's image as a Xen migration
//!   stream) and the `exec`.
//! - [`quota_log`]: rate-limited log lines for refusals by quotas.
//! - [`cli`]: the command line (clap `Args`, public so that `packaging`
//!   generates the manual page and completions from it).
//! - `bin/rxenstored.rs`: configuration, logging, daemonizing, and where
//!   the state comes from (`Startup`).
//!
//! The platforms the core runs over (Xen's devices, simulated rings) are
//! the `rxenstored_platform` crate.

pub mod cli;
pub mod live_update;
pub mod persistence;
pub mod quota_log;
pub mod serving;
