//! The protocol core's error type, and the one place where errors become
//! wire errno names.

use engine::{EngineError, PathError};
use wire::Errno;

use crate::quota::{Quota, QuotaHit};

/// Why a request failed. [`Error::errno`] is the only mapping to the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Malformed payload: wrong argument count, bad number, bad letter.
    #[error("malformed request")]
    BadRequest,
    /// A path that breaks the rules of PROTOCOL.md §3.
    #[error("invalid path: {0}")]
    BadPath(#[from] PathError),
    /// A path too long for an unprivileged domain (§3.3): the `path-max`
    /// quota, answered with EINVAL as C does.
    #[error("path too long: {0}")]
    PathTooLong(QuotaHit),
    /// The caller lacks the right (or may not learn that the node is missing, §5.4).
    #[error("permission denied")]
    Denied,
    /// No such node, domain, watch or transaction.
    #[error("not found")]
    NotFound,
    /// Duplicate watch.
    #[error("already exists")]
    Exists,
    /// A quota of §9.1 would be exceeded: which, and by how much.
    #[error("{0}")]
    Quota(QuotaHit),
    /// The transaction was doomed by an earlier failure (§7.3 step 1).
    #[error("transaction failed earlier")]
    TransactionDoomed,
    /// Transaction commit conflict.
    #[error("transaction conflict")]
    Conflict,
    /// Unknown or removed operation.
    #[error("unsupported operation")]
    Unsupported,
    /// Nested transaction, or SET_FEATURE after INTRODUCE.
    #[error("busy")]
    Busy,
    /// A reply above the 4096-byte payload limit.
    #[error("reply too large")]
    TooBig,
    /// An unprivileged caller tried to give its node away (§5.7).
    #[error("owner change not permitted")]
    OwnerChange,
    /// The hypervisor interface failed (mapping a ring, binding a port).
    #[error("hypervisor interface failed: {0}")]
    Platform(&'static str),
}

impl Error {
    /// The errno name C xenstored sends for this failure.
    pub fn errno(&self) -> Errno {
        match self {
            Error::BadRequest | Error::BadPath(_) | Error::PathTooLong(_) | Error::Platform(_) => Errno::Einval,
            Error::Denied => Errno::Eacces,
            Error::NotFound => Errno::Enoent,
            Error::Exists => Errno::Eexist,
            Error::Quota(_) => Errno::Enospc,
            Error::TransactionDoomed => Errno::Enomem,
            Error::Conflict => Errno::Eagain,
            Error::Unsupported => Errno::Enosys,
            Error::Busy => Errno::Ebusy,
            Error::TooBig => Errno::E2big,
            Error::OwnerChange => Errno::Eperm,
        }
    }
}

impl Error {
    /// The quota a refused request hit, if that is why it failed.
    pub fn quota_hit(&self) -> Option<QuotaHit> {
        match self {
            Error::Quota(hit) | Error::PathTooLong(hit) => Some(*hit),
            _ => None,
        }
    }
}

/// A quota's refusal as C answers it: EINVAL for `path-max`, else ENOSPC.
impl From<QuotaHit> for Error {
    fn from(hit: QuotaHit) -> Error {
        if hit.quota == Quota::PathMax { Error::PathTooLong(hit) } else { Error::Quota(hit) }
    }
}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Error {
        match e {
            EngineError::NotFound(_) => Error::NotFound,
            // Removing `/`, or a value for an `@` path: both EINVAL in C.
            _ => Error::BadRequest,
        }
    }
}

pub type Result<T, E = Error> = core::result::Result<T, E>;
