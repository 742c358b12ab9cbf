//! Error names sent on the wire (PROTOCOL.md §1.5).

/// The 16 error names of `xs_wire.h`, in table order (the discriminant is
/// the table index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Errno {
    /// Malformed request, bad path or argument; also the fallback name.
    Einval = 0,
    /// Permission denied.
    Eacces = 1,
    /// Duplicate watch.
    Eexist = 2,
    /// Never produced by current daemons.
    Eisdir = 3,
    /// No such node, domain, watch or transaction.
    Enoent = 4,
    /// Out of memory, memory quota, doomed transaction.
    Enomem = 5,
    /// Quota exceeded.
    Enospc = 6,
    /// Internal error.
    Eio = 7,
    /// Never produced.
    Enotempty = 8,
    /// Unknown or unsupported operation.
    Enosys = 9,
    /// Never produced.
    Erofs = 10,
    /// Nested transaction; SET_FEATURE after INTRODUCE.
    Ebusy = 11,
    /// Transaction conflict.
    Eagain = 12,
    /// Never produced.
    Eisconn = 13,
    /// Reply too large.
    E2big = 14,
    /// Unprivileged owner change.
    Eperm = 15,
}

impl Errno {
    /// Every name, in table order.
    pub const ALL: [Errno; 16] = [
        Errno::Einval,
        Errno::Eacces,
        Errno::Eexist,
        Errno::Eisdir,
        Errno::Enoent,
        Errno::Enomem,
        Errno::Enospc,
        Errno::Eio,
        Errno::Enotempty,
        Errno::Enosys,
        Errno::Erofs,
        Errno::Ebusy,
        Errno::Eagain,
        Errno::Eisconn,
        Errno::E2big,
        Errno::Eperm,
    ];

    /// The name sent on the wire (without the NUL).
    pub fn name(self) -> &'static str {
        match self {
            Errno::Einval => "EINVAL",
            Errno::Eacces => "EACCES",
            Errno::Eexist => "EEXIST",
            Errno::Eisdir => "EISDIR",
            Errno::Enoent => "ENOENT",
            Errno::Enomem => "ENOMEM",
            Errno::Enospc => "ENOSPC",
            Errno::Eio => "EIO",
            Errno::Enotempty => "ENOTEMPTY",
            Errno::Enosys => "ENOSYS",
            Errno::Erofs => "EROFS",
            Errno::Ebusy => "EBUSY",
            Errno::Eagain => "EAGAIN",
            Errno::Eisconn => "EISCONN",
            Errno::E2big => "E2BIG",
            Errno::Eperm => "EPERM",
        }
    }

    /// The errno with this exact name (case-sensitive, no NUL), if any.
    pub fn from_name(name: &[u8]) -> Option<Errno> {
        Errno::ALL.into_iter().find(|e| e.name().as_bytes() == name)
    }

    /// The Linux errno value of the constant (never sent on the wire).
    pub fn linux_errno(self) -> i32 {
        match self {
            Errno::Einval => 22,
            Errno::Eacces => 13,
            Errno::Eexist => 17,
            Errno::Eisdir => 21,
            Errno::Enoent => 2,
            Errno::Enomem => 12,
            Errno::Enospc => 28,
            Errno::Eio => 5,
            Errno::Enotempty => 39,
            Errno::Enosys => 38,
            Errno::Erofs => 30,
            Errno::Ebusy => 16,
            Errno::Eagain => 11,
            Errno::Eisconn => 106,
            Errno::E2big => 7,
            Errno::Eperm => 1,
        }
    }
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_order() {
        for (i, e) in Errno::ALL.into_iter().enumerate() {
            assert_eq!(e as usize, i);
            assert_eq!(Errno::from_name(e.name().as_bytes()), Some(e));
        }
        assert_eq!(Errno::ALL[0].name(), "EINVAL");
        assert_eq!(Errno::ALL[15].name(), "EPERM");
    }

    #[test]
    fn unknown_names() {
        for n in [&b"EQUOTA"[..], b"", b"einval", b"EINVAL\0", b"ENOENTX"] {
            assert_eq!(Errno::from_name(n), None);
        }
    }
}
