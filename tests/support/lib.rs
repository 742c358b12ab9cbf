//! Shared helpers for the workspace integration tests.
//!
//! * [`daemon`]: start and stop the daemons under test (ours and the
//!   Debian 4.17 peers), each in its own run directory.
//! * [`harness`]: run a scenario against every available daemon; readable
//!   byte-level assertions.
//! * [`tree`]: trees for the benchmarks.

pub mod daemon;
pub mod harness;
pub mod tree;
