//! Live update, the process side (MIGRATION-STREAM.md §3): the core's half
//! (the CONTROL session, when to go ahead) is `rxenstored_core::live_update`.
//!
//! - [`stream`]: the core's [`Image`](rxenstored_core::Image) as a Xen
//!   migration stream (`$XENSTORED_RUNDIR/state_dump`) and back.
//! - [`exec`]: writing the state file, the descriptors handed over, `exec`;
//!   the command line a successor gets.

pub mod exec;
pub mod stream;
