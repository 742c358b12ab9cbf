//! Operation codes (PROTOCOL.md §2.1).

/// A message type. Codes without an operation (20, 27 and up, 65535) have no
/// variant; [`Op::from_code`] returns `None` for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum Op {
    /// Administrative commands (alias `DEBUG`); privileged.
    Control = 0,
    /// List the children of a node.
    Directory = 1,
    /// Read a node's value.
    Read = 2,
    /// Read a node's permissions.
    GetPerms = 3,
    /// Register a watch.
    Watch = 4,
    /// Remove a watch.
    Unwatch = 5,
    /// Begin a transaction.
    TransactionStart = 6,
    /// Commit or abort a transaction.
    TransactionEnd = 7,
    /// Attach a domain's ring; privileged.
    Introduce = 8,
    /// Detach a domain; privileged.
    Release = 9,
    /// Home path of a domain.
    GetDomainPath = 10,
    /// Write a value, creating the node.
    Write = 11,
    /// Create a node.
    Mkdir = 12,
    /// Remove a subtree.
    Rm = 13,
    /// Set a node's permissions.
    SetPerms = 14,
    /// Server to client only: a watch fired.
    WatchEvent = 15,
    /// Server to client only: an error reply.
    Error = 16,
    /// Is a domain introduced; privileged.
    IsDomainIntroduced = 17,
    /// Re-arm shutdown reporting; privileged.
    Resume = 18,
    /// Stub-domain target; privileged.
    SetTarget = 19,
    /// Drop the connection's watches and transactions.
    ResetWatches = 21,
    /// Paged directory listing.
    DirectoryPart = 22,
    /// Feature bitmap.
    GetFeature = 23,
    /// Set a domain's features; privileged.
    SetFeature = 24,
    /// Read a quota; privileged.
    GetQuota = 25,
    /// Set a quota; privileged.
    SetQuota = 26,
}

impl Op {
    /// Every operation, in code order.
    pub const ALL: [Op; 26] = [
        Op::Control,
        Op::Directory,
        Op::Read,
        Op::GetPerms,
        Op::Watch,
        Op::Unwatch,
        Op::TransactionStart,
        Op::TransactionEnd,
        Op::Introduce,
        Op::Release,
        Op::GetDomainPath,
        Op::Write,
        Op::Mkdir,
        Op::Rm,
        Op::SetPerms,
        Op::WatchEvent,
        Op::Error,
        Op::IsDomainIntroduced,
        Op::Resume,
        Op::SetTarget,
        Op::ResetWatches,
        Op::DirectoryPart,
        Op::GetFeature,
        Op::SetFeature,
        Op::GetQuota,
        Op::SetQuota,
    ];

    /// The operation with this code, or `None` for 20 (removed `RESTRICT`),
    /// 27 and above, and 65535 (`INVALID`).
    pub fn from_code(code: u32) -> Option<Op> {
        let op = match code {
            0 => Op::Control,
            1 => Op::Directory,
            2 => Op::Read,
            3 => Op::GetPerms,
            4 => Op::Watch,
            5 => Op::Unwatch,
            6 => Op::TransactionStart,
            7 => Op::TransactionEnd,
            8 => Op::Introduce,
            9 => Op::Release,
            10 => Op::GetDomainPath,
            11 => Op::Write,
            12 => Op::Mkdir,
            13 => Op::Rm,
            14 => Op::SetPerms,
            15 => Op::WatchEvent,
            16 => Op::Error,
            17 => Op::IsDomainIntroduced,
            18 => Op::Resume,
            19 => Op::SetTarget,
            21 => Op::ResetWatches,
            22 => Op::DirectoryPart,
            23 => Op::GetFeature,
            24 => Op::SetFeature,
            25 => Op::GetQuota,
            26 => Op::SetQuota,
            _ => return None,
        };
        Some(op)
    }

    /// The numeric code sent on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The name as in `xs_wire.h` without the `XS_` prefix (`CONTROL` for 0).
    pub fn name(self) -> &'static str {
        match self {
            Op::Control => "CONTROL",
            Op::Directory => "DIRECTORY",
            Op::Read => "READ",
            Op::GetPerms => "GET_PERMS",
            Op::Watch => "WATCH",
            Op::Unwatch => "UNWATCH",
            Op::TransactionStart => "TRANSACTION_START",
            Op::TransactionEnd => "TRANSACTION_END",
            Op::Introduce => "INTRODUCE",
            Op::Release => "RELEASE",
            Op::GetDomainPath => "GET_DOMAIN_PATH",
            Op::Write => "WRITE",
            Op::Mkdir => "MKDIR",
            Op::Rm => "RM",
            Op::SetPerms => "SET_PERMS",
            Op::WatchEvent => "WATCH_EVENT",
            Op::Error => "ERROR",
            Op::IsDomainIntroduced => "IS_DOMAIN_INTRODUCED",
            Op::Resume => "RESUME",
            Op::SetTarget => "SET_TARGET",
            Op::ResetWatches => "RESET_WATCHES",
            Op::DirectoryPart => "DIRECTORY_PART",
            Op::GetFeature => "GET_FEATURE",
            Op::SetFeature => "SET_FEATURE",
            Op::GetQuota => "GET_QUOTA",
            Op::SetQuota => "SET_QUOTA",
        }
    }

    /// Whether [C] always requires a privileged connection (§2.1 "Priv.").
    /// `GET_FEATURE` is privileged only with a domid argument and so is not
    /// listed; `WATCH_EVENT` and `ERROR` have no handler at all.
    pub fn is_privileged(self) -> bool {
        matches!(
            self,
            Op::Control
                | Op::Introduce
                | Op::Release
                | Op::IsDomainIntroduced
                | Op::Resume
                | Op::SetTarget
                | Op::SetFeature
                | Op::GetQuota
                | Op::SetQuota
        )
    }
}

impl From<Op> for u32 {
    fn from(op: Op) -> u32 {
        op.code()
    }
}

impl core::fmt::Display for Op {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn codes_round_trip() {
        for op in Op::ALL {
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
        assert_eq!(Op::ALL.len(), 26);
    }

    #[test]
    fn invalid_codes() {
        for code in [20, 27, 28, 100, 0xFFFF, u32::MAX] {
            assert_eq!(Op::from_code(code), None, "code {code}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(Op::Control.name(), "CONTROL");
        assert_eq!(Op::DirectoryPart.name(), "DIRECTORY_PART");
        assert_eq!(Op::SetQuota.to_string(), "SET_QUOTA");
        assert_eq!(Op::WatchEvent.code(), 15);
        assert_eq!(u32::from(Op::Error), 16);
    }

    #[test]
    fn privilege() {
        assert!(Op::Introduce.is_privileged());
        assert!(Op::IsDomainIntroduced.is_privileged());
        assert!(!Op::SetPerms.is_privileged());
        assert!(!Op::GetFeature.is_privileged());
    }
}
