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
    commit_lock: Mutex<()>,
}

impl Store {
    pub fn new(initial: Snapshot) -> Store {
        Store { published: RwLock::new(initial), commit_lock: Mutex::new(()) }
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
            return Ok(Commit { previous: base.clone(), snapshot: base, changes: alloc::vec::Vec::new() });
        }
        let _guard = self.commit_lock.lock();
        let previous = self.snapshot();
        let (snapshot, changes) = tx.rebase(&previous).map_err(|path| CommitError::Conflict { path })?;
        let commit = Commit { previous, snapshot, changes };
        check(&commit).map_err(CommitError::Rejected)?;
        *self.published.write() = commit.snapshot.clone();
        Ok(commit)
    }

    /// Runs `f` on a transaction forked from the newest version while holding
    /// the commit lock, then publishes its result unless `f` fails. This is a
    /// non-transactional request: it can never conflict.
    pub fn update<R, E>(&self, f: impl FnOnce(&mut Transaction) -> Result<R, E>) -> Result<(R, Commit), E> {
        let _guard = self.commit_lock.lock();
        let previous = self.snapshot();
        let mut tx = Transaction::unrecorded(previous.clone());
        let r = f(&mut tx)?;
        let read_only = tx.is_read_only();
        let (snapshot, changes) = tx.into_result();
        if !read_only {
            *self.published.write() = snapshot.clone();
        }
        Ok((r, Commit { previous, snapshot, changes }))
    }

    /// Replaces the whole state (loading a checkpoint or a migration stream).
    pub fn replace(&self, snapshot: Snapshot) {
        let _guard = self.commit_lock.lock();
        *self.published.write() = snapshot;
    }
}
