//! The xenstore wire protocol, without IO.
//!
//! # Layout
//!
//! * [`Op`], [`Header`], [`Errno`] and the constants: the vocabulary of the
//!   protocol (PROTOCOL.md §0, §1.1, §1.5, §2.1).
//! * [`Decoder`]: bytes in, whole [`Message`]s out; splits anywhere, never
//!   panics, refuses payloads above [`PAYLOAD_MAX`] (§1.2).
//! * [`encode`], [`encode_error`], [`encode_watch_event`]: messages out.
//! * [`one_arg`], [`split_args`], [`parse_domid`], [`parse_lenient_u32`]:
//!   the payload parsing primitives of §1.3 and §2.2.
//! * `client` (feature `std`): a blocking Unix-socket client for tests and
//!   tools.
//!
//! Invariants: this crate does no IO except in `client`, allocates only in
//! [`Decoder`] and the encoders, and never panics on data from outside.
#![no_std]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

mod decoder;
mod errno;
mod header;
mod op;
mod payload;

#[cfg(feature = "std")]
pub mod client;

pub use decoder::{Decoder, FrameError, Message};
pub use errno::Errno;
pub use header::{Header, encode, encode_error, encode_watch_event};
pub use op::Op;
pub use payload::{Args, one_arg, parse_domid, parse_lenient_u32, split_args, split_first};

/// Length of the fixed message header (§1.1).
pub const HEADER_LEN: usize = 16;
/// Largest payload allowed in either direction (`XENSTORE_PAYLOAD_MAX`, §1.2).
pub const PAYLOAD_MAX: usize = 4096;

/// First domain id reserved by the hypervisor (§0).
pub const DOMID_FIRST_RESERVED: u16 = 0x7FF0;
/// "The calling domain" (§0).
pub const DOMID_SELF: u16 = 0x7FF0;
/// No domain (§0).
pub const DOMID_INVALID: u16 = 0x7FF4;
/// Any domain, usable as an ACL entry at HEAD (§0, §5.1).
pub const DOMID_ANY: u16 = 0x7FF5;
