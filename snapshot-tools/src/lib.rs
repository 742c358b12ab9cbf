//! Reader, writer and inspector support for Xen's xenstore migration
//! stream (the `state_dump` file of a live update) and oxenstored's text
//! dump. The format is described in `spec/MIGRATION-STREAM.md`.
//!
//! # Layout
//!
//! * [`model`]: the plain-data [`Stream`] (global data, connections with
//!   their pending bytes, watches, transactions, nodes, quotas, domains).
//!   No behaviour, no links other than `conn_id`.
//! * [`read`]: [`read_stream`], the tolerant reader. It returns a
//!   [`Parsed`]: the snapshot, every record with its file offset, and the
//!   malformed-record [`Finding`]s of §5.3. It never panics on file data.
//! * [`write`](mod@write): [`write_stream`], the byte-exact writer of §1.6 for a
//!   [`WriteFormat`] (4.17 v1, HEAD v2, HEAD `-v 1`).
//! * [`message`]: a small decoder of xenstore wire messages for the pending
//!   input/output bytes of connections.
//! * [`engine_conv`]: to and from the engine's store snapshot.
//! * [`checkpoint`]: rxenstored's own checkpoints and state directories
//!   (the `persist` crate), read into the same model.
//! * [`cver`]: the §1.7 rules: would C 4.17 / 4.21 / 4.22 restore this?
//! * [`oxenstored`]: oxenstored's `$xenstored-dump-format` text, read into
//!   the same model.
//! * [`report`]: what `xenstore-inspect` shows (record listing, tree,
//!   summary, diff), as plain values with JSON support.
//! * [`cli`]: the inspector's command line (clap), shared with the
//!   generator of its manual page and completions.
//! * `src/bin/xenstore-inspect.rs`: the command-line inspector.
//!
//! # Invariants
//!
//! * No `unwrap()` or indexing that can fail on file data: every length
//!   from the file is checked against the bytes that are really there.
//! * Read then write with [`WriteFormat::detect`] reproduces the input
//!   bytes for every stream a C writer produced.
//! * This crate does not depend on the server or the `wire` crate; it
//!   converts to and from the engine's store in [`engine_conv`].

pub mod bytes;
pub mod checkpoint;
pub mod cli;
pub mod cver;
pub mod engine_conv;
#[doc(hidden)]
pub mod exercise;
pub mod message;
pub mod model;
pub mod oxenstored;
pub mod read;
pub mod report;
pub mod write;

pub use bytes::escape;
pub use model::*;
pub use read::{Finding, Parsed, Problem, ReadError, Severity, read_stream};
pub use write::{SpecialNodes, WriteError, WriteFormat, write_stream};
