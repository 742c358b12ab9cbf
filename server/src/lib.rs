//! rxenstored's protocol core and daemon.
//!
//! # Layout
//!
//! The sans-IO core (builds without `std`):
//! - [`protocol`]: [`Core`], the state machine: connections in, replies and
//!   watch events out; request pipeline, transactions, watch firing.
//! - [`reader`]: [`Reader`], non-transactional reads answered from the
//!   published snapshot outside the core (the threaded socket frontend).
//! - [`ops`]: the node operations (READ, WRITE, MKDIR, RM, DIRECTORY,
//!   DIRECTORY_PART, GET_PERMS, SET_PERMS) over an engine transaction.
//! - `domain_ops`: INTRODUCE, RELEASE, SET_TARGET, features and quotas.
//! - `control`: CONTROL sub-commands.
//! - [`access`]: [`Caller`] and the permission decision; [`quota`]: C's
//!   quota table; [`watch`]: the watch index; [`conn`]: per-connection
//!   state and output queue; [`domain`]: domain records and the
//!   [`Platform`] trait (the hypervisor, as INTRODUCE needs it).
//! - [`error`]: [`Error`] and its single mapping to wire errno names.
//! - [`ring`]: the shared ring page (§10), both ends, over any mapped page.
//! - `lifecycle`: domain death (§8.3) and broken rings, for the frontends.
//!
//! The `std` edge: `daemon` (the event loop over the Unix socket and the
//! rings), the platforms [`xen`] (Linux's Xen devices) and [`sim`]
//! (simulated guests in shared files), `quota_log` (rate-limited quota
//! lines), `cli` (the command line) and the `rxenstored` binary.

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod access;
pub mod conn;
mod control;
pub mod domain;
mod domain_ops;
pub mod error;
mod lifecycle;
pub mod live_update;
pub mod ops;
pub mod protocol;
pub mod quota;
pub mod reader;
pub mod ring;
pub mod watch;

#[cfg(feature = "std")]
pub mod cli;
#[cfg(feature = "std")]
pub mod daemon;
#[cfg(feature = "std")]
pub mod live_update_exec;
#[cfg(feature = "std")]
pub mod lu_stream;
#[cfg(feature = "std")]
mod os;
#[cfg(feature = "std")]
pub mod persistence;
#[cfg(feature = "std")]
pub mod quota_log;
#[cfg(feature = "std")]
pub mod sim;
#[cfg(feature = "std")]
pub mod xen;

pub use access::Caller;
pub use conn::{ConnId, ConnKind, OutQueue};
pub use domain::{DomainState, NoRings, Platform, RingStart};
pub use error::Error;
pub use protocol::{Config, Core, JournalEntry, ProtocolViolation, QuotaEvent, initial_snapshot};
pub use reader::Reader;
