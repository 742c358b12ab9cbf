//! The engine's error types. The protocol's errno names are the server's
//! business: nothing here knows about the wire.

use crate::path::Path;

/// A primitive operation that cannot apply to the tree as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The node does not exist.
    #[error("no such node: {0}")]
    NotFound(Path),
    /// `/` cannot be removed.
    #[error("the root node cannot be removed")]
    RootRemoval,
    /// Special (`@...`) paths carry permissions only.
    #[error("special path {0} has no value or children")]
    SpecialPath(Path),
    /// An operation for special nodes was given a tree path.
    #[error("{0} is not a special path")]
    NotSpecial(Path),
    /// A walk of the whole tree inside a transaction that keeps its changes
    /// to itself: only one run on the newest version ([`crate::Store::update`])
    /// can walk its view as a [`crate::Snapshot`].
    #[error("a whole-tree walk needs a transaction on the newest version")]
    NotWholeVersion,
}

/// Why a commit did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError<E> {
    /// Something the transaction observed at `path` changed since it forked:
    /// re-running it now could give different replies. (The protocol's `EAGAIN`.)
    #[error("conflict at {path}")]
    Conflict { path: Path },
    /// The caller's check (quotas, typically) refused the result.
    #[error("commit rejected")]
    Rejected(E),
}

/// Entries that do not form a tree (see [`crate::Snapshot::from_entries`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The first entry must be `/`.
    #[error("the first entry is not the root node /")]
    MissingRoot,
    /// A node came before its parent, or its parent is absent.
    #[error("{0} appears before (or without) its parent")]
    MissingParent(Path),
    /// The same path twice.
    #[error("{0} appears twice")]
    Duplicate(Path),
}

/// A broken invariant found by [`crate::Snapshot::check_consistent`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Inconsistency {
    #[error("the root node / is missing")]
    MissingRoot,
    #[error("{0} is not listed exactly once by its parent")]
    NotListedByParent(Path),
    #[error("listed child {0} does not exist")]
    MissingChild(Path),
    #[error("special node {0} has children")]
    SpecialWithChildren(Path),
    #[error("{0} has a generation at or above the counter")]
    GenerationAhead(Path),
    #[error("node count {counted} differs from the recorded {recorded}")]
    NodeCount { counted: usize, recorded: usize },
    #[error("per-domain node counts differ from the tree")]
    OwnerCounts,
}
