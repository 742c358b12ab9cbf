//! The two locks the store needs, from parking_lot with `std` and from `spin`
//! without, so that no call site carries a `#[cfg]`.
//!
//! Both are held only for a pointer copy (the published root) or for one
//! commit's validation and replay, never across I/O.

#[cfg(feature = "std")]
pub(crate) type Mutex<T> = parking_lot::Mutex<T>;
#[cfg(feature = "std")]
pub(crate) type RwLock<T> = parking_lot::RwLock<T>;

#[cfg(not(feature = "std"))]
pub(crate) type Mutex<T> = spin::Mutex<T>;
#[cfg(not(feature = "std"))]
pub(crate) type RwLock<T> = spin::RwLock<T>;
