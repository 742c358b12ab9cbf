//! rxenstored's protocol core: sans-IO and `no_std` (with `alloc`), the
//! same in the daemon (`rxenstored`) and in the stub domain.
//!
//! A frontend makes a [`Core`] over a [`Platform`] (the hypervisor, as
//! INTRODUCE and the rings need it), feeds it the bytes each connection
//! sends ([`Core::receive`]) and drains what each connection must be sent
//! ([`Core::take_dirty`], [`Core::output`]). Replies and watch events are
//! values; the core has no sockets, threads, clocks or files.
//!
//! # Layout
//!
//! The modules, lowest first (each uses only modules above it in this
//! list; `tests/layers.rs` checks that there is no cycle):
//!
//! - `features` (public): the feature bits of §8.7.
//! - `access`: [`Caller`] and the permission decision (§5).
//! - [`quota`]: C's quota table, by C's names.
//! - `error`: [`Error`] and its single mapping to wire errno names.
//! - `reply`: a request's result as its reply message.
//! - `ops`: the node operations (READ, WRITE, MKDIR, RM, DIRECTORY,
//!   DIRECTORY_PART, GET_PERMS, SET_PERMS) over an engine transaction.
//! - [`ring`]: the shared ring page (§10), both ends, over any mapped page.
//! - `conn`: per-connection state: decoder, [`OutQueue`], transactions.
//! - `watch`: the watch index.
//! - `domain`: [`Domain`] records and the [`Platform`] trait.
//! - `reader`: [`Reader`], non-transactional reads answered from the
//!   published snapshot outside the core (the daemon's snapshot reads).
//! - `protocol`: [`Core`], the state machine: the request pipeline (§1.6),
//!   transactions, watch firing; in files of their own, as parts of the
//!   same type, the domain operations (INTRODUCE, RELEASE, ...), CONTROL,
//!   [`live_update`]'s session, the frontends' lifecycle calls (domain
//!   death, broken rings) and the [`Image`] a core is saved as and
//!   restored from.

#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

mod access;
mod conn;
mod domain;
mod error;
pub mod features;
mod ops;
mod protocol;
pub mod quota;
mod reader;
mod reply;
pub mod ring;
mod watch;

/// Live update, the core's half (MIGRATION-STREAM.md §3.2–3.3): the CONTROL
/// `live-update` session, the hold on new transactions while an update is
/// pending, the wait for open ones. [`Core::live_update_tick`] says when
/// to go ahead, with a [`LuRequest`]; the daemon writes the state and
/// `exec`s.
pub mod live_update {
    pub use crate::protocol::live_update::{DEFAULT_VERSION, FileCheck, LuRequest, default_version, is_rxenstored};
}

pub use access::Caller;
pub use conn::{Conn, ConnId, ConnKind, OutQueue};
pub use domain::{Domain, DomainState, NoRings, Platform, RingAttach, RingStart};
pub use error::Error;
pub use live_update::LuRequest;
pub use protocol::{
    Config, ConnImage, Core, DomainImage, Image, ImageKind, JournalEntry, ProtocolViolation, QuotaEvent, Restored,
    Transport, WatchImage, initial_snapshot,
};
pub use reader::Reader;
