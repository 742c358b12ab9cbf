//! Feature bits of PROTOCOL.md §8.7 that this daemon offers: advertised in
//! a ring's `server_features` field, asked for with GET/SET_FEATURE.

/// `RECONNECTION`: not offered (C does not either).
pub const RECONNECTION: u32 = 1;
/// `ERROR`: the ring's error field is valid.
pub const ERROR: u32 = 2;
/// `WATCHDEPTH`: WATCH takes a depth.
pub const WATCHDEPTH: u32 = 4;
/// `DOMID_ANY` in permission lists.
pub const DOMID_ANY: u32 = 8;
/// What C offers by default, and so do we.
pub const DEFAULT: u32 = ERROR | WATCHDEPTH | DOMID_ANY;
