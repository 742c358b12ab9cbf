//! The rxenstored storage engine: the xenstore tree as immutable, shared
//! versions, with transactions that fork in O(1) and commit with path-level
//! conflict detection.
//!
//! # Layout
//!
//! - [`path`]: [`Path`], a validated absolute or special (`@...`) path.
//! - [`perms`]: [`DomId`], [`Perm`], [`Perms`] (owner entry plus ACL).
//! - [`node`]: [`Node`] with its [`Value`], ordered [`Children`] and generation.
//! - [`snapshot`]: [`Snapshot`], one immutable version (a persistent
//!   vector of buckets of nodes by path's hash, plus per-domain node counts),
//!   the primitive mutations, and tree-order iteration for checkpoints.
//! - [`txn`]: [`Transaction`], what it observed and the commit rule.
//! - [`view`]: [`TxView`], what a transaction reads: its changes over its
//!   fork point.
//! - [`store`]: [`Store`], the newest version and the commit lock.
//!
//! The engine does no I/O, keeps no clock and starts no thread; it builds
//! without `std` (`default-features = false`) for the stub domain.
//!
//! # Example
//!
//! ```
//! use engine::{DomId, Path, Perms, Snapshot, Store};
//!
//! let store = Store::new(Snapshot::new(Perms::owned_by(DomId(0))));
//! let dir = Path::new("/local/domain").unwrap();
//! store.update(|tx| tx.mkdir(&dir, None)).unwrap();
//!
//! // Two guests' creations under one parent: both commit.
//! let mut a = store.begin();
//! let mut b = store.begin();
//! a.write(&dir.child("1"), b"x", None).unwrap();
//! b.write(&dir.child("2"), b"y", None).unwrap();
//! store.commit(a, |_| Ok::<_, ()>(())).unwrap();
//! store.commit(b, |_| Ok::<_, ()>(())).unwrap();
//! let children = store.snapshot().get("/local/domain").unwrap().children().to_wire();
//! assert_eq!(children, b"1\x002\x00");
//! ```

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod error;
pub mod node;
pub mod path;
pub mod perms;
pub mod snapshot;
pub mod store;
mod sync;
pub mod txn;
pub mod view;

pub use error::{BuildError, CommitError, EngineError, Inconsistency};
pub use node::{Children, NameIter, Node, Value};
pub use path::{Path, PathError};
pub use perms::{Access, DomId, EmptyPerms, Perm, Perms};
pub use snapshot::{Change, Snapshot, TreeEntry, TreeIter};
pub use store::Store;
pub use txn::{Commit, Transaction};
pub use view::TxView;

// Snapshots and the store cross threads: assert it at compile time.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Snapshot>();
    assert_send_sync::<Store>();
    assert_send_sync::<Transaction>();
};
