//! The committed state: the newest snapshot, published for readers, and the
//! lock that serializes commits.

use crate::error::CommitError;
use crate::snapshot::Snapshot;
use crate::sync::{Mutex, RwLock};
use crate::txn::{Commit, Transaction};

/// The store shared by every connection.
///
/// Readers take [`Store::snapshot`] (a pointer copy under a read lock held
/// for nanoseconds) and never wait for a commit's validation or replay.
/// Commits serialize on one mutex held for the validation and replay of one
/// transaction only.
#[derive(Debug)]
pub struct Store {
    published: RwLock<Snapshot>,
    /// The commit lock. It guards an empty snapshot that stands in for the
    /// newest one while [`Store::apply_one`] changes that one in place.
    commit_lock: Mutex<Snapshot>,
}

impl Store {
    pub fn new(initial: Snapshot) -> Store {
        let placeholder = Snapshot::new(crate::Perms::owned_by(crate::DomId(0)));
        Store { published: RwLock::new(initial), commit_lock: Mutex::new(placeholder) }
    }

    /// The newest committed version.
    pub fn snapshot(&self) -> Snapshot {
        self.published.read().clone()
    }

    /// Starts a transaction on the newest version: O(1).
    pub fn begin(&self) -> Transaction {
        Transaction::new(self.snapshot())
    }

    /// Commits `tx` onto the newest version (see [`crate::txn`] for the rule).
    /// `check` sees the would-be result and may refuse it (quotas); nothing is
    /// published then. A transaction without mutations commits without
    /// taking the lock.
    pub fn commit<E>(
        &self,
        tx: Transaction,
        check: impl FnOnce(&Commit) -> Result<(), E>,
    ) -> Result<Commit, CommitError<E>> {
        if tx.is_read_only() {
            let base = tx.base().clone();
            let previous_generation = base.next_generation();
            return Ok(Commit { snapshot: base, changes: alloc::vec::Vec::new(), previous_generation });
        }
        let _guard = self.commit_lock.lock();
        let previous = self.snapshot();
        let (snapshot, changes) = tx.rebase(&previous).map_err(|path| CommitError::Conflict { path })?;
        let commit = Commit { snapshot, changes, previous_generation: previous.next_generation() };
        check(&commit).map_err(CommitError::Rejected)?;
        *self.published.write() = commit.snapshot.clone();
        Ok(commit)
    }

    /// Runs `f` on a transaction forked from the newest version while holding
    /// the commit lock, then publishes its result unless `f` fails. This is a
    /// non-transactional request: it can never conflict.
    pub fn update<R, E>(&self, f: impl FnOnce(&mut Transaction) -> Result<R, E>) -> Result<(R, Commit), E> {
        let placeholder = self.commit_lock.lock();
        let previous = self.snapshot();
        let previous_generation = previous.next_generation();
        let mut tx = Transaction::unrecorded(previous, placeholder.clone());
        let r = f(&mut tx)?;
        let read_only = tx.is_read_only();
        let (snapshot, changes) = tx.into_result();
        if !read_only {
            *self.published.write() = snapshot.clone();
        }
        Ok((r, Commit { snapshot, changes, previous_generation }))
    }

    /// [`Store::update`] for requests that make at most one mutation, as
    /// their last step, after every check that may fail (the protocol's
    /// node operations). When no reader or transaction holds the newest
    /// version, it is changed in place, without copying trie nodes; readers
    /// wait for that one mutation. If `f` fails after mutating (a broken
    /// contract), the completed mutation is published: the tree stays
    /// consistent, and a debug build panics.
    pub fn apply_one<R, E>(&self, f: impl FnOnce(&mut Transaction) -> Result<R, E>) -> Result<(R, Commit), E> {
        let placeholder = self.commit_lock.lock();
        let mut published = self.published.write();
        if !published.is_unique() {
            drop(published);
            drop(placeholder);
            return self.update(f);
        }
        let previous_generation = published.next_generation();
        let newest = core::mem::replace(&mut *published, placeholder.clone());
        let mut tx = Transaction::unrecorded(newest, placeholder.clone());
        let result = f(&mut tx);
        let mutated = !tx.is_read_only();
        let (snapshot, changes) = tx.into_result();
        *published = snapshot.clone();
        match result {
            Ok(r) => Ok((r, Commit { snapshot, changes, previous_generation })),
            Err(e) => {
                debug_assert!(!mutated, "apply_one: the request failed after mutating");
                Err(e)
            }
        }
    }

    /// Replaces the whole state (loading a checkpoint or a migration stream).
    pub fn replace(&self, snapshot: Snapshot) {
        let _guard = self.commit_lock.lock();
        *self.published.write() = snapshot;
    }
}
