//! The hypervisor under rxenstored's core on Linux: implementations of the
//! core's `Platform` (map a guest's ring, bind and notify its event
//! channel, report domain state) and the guests' side of the simulation.
//!
//! - [`xen`]: [`XenPlatform`](xen::XenPlatform), over Linux's Xen devices
//!   (`/dev/xen/evtchn`, `gntdev`, privcmd, `/proc/xen/xsd_kva`).
//! - [`sim`]: Xen simulated in a directory of files, both sides:
//!   [`SimPlatform`](sim::SimPlatform) (`rxenstored --sim-rings DIR`) and
//!   [`SimGuest`](sim::SimGuest), a guest that xsload and the tests play.
//! - `os`: the Linux calls both share (a mapped page, an epoll set).
//!
//! A crate of its own, not a part of the daemon, so that the simulated
//! guests need nothing of it: no event loop, allocator or persistence.

pub mod os;
pub mod sim;
pub mod xen;
