//! Permission lists (PROTOCOL.md §5.1): an owner entry followed by an ACL.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::fmt::Write as _;
use triomphe::ThinArc;

/// A Xen domain id. Ordinary domains are 0..=0x7FEF; a few reserved values
/// above that have meanings of their own.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DomId(pub u16);

impl DomId {
    /// The control domain.
    pub const DOM0: DomId = DomId(0);
    /// `DOMID_SELF`.
    pub const SELF: DomId = DomId(0x7FF0);
    /// `DOMID_INVALID`.
    pub const INVALID: DomId = DomId(0x7FF4);
    /// `DOMID_ANY`: as an ACL entry it matches every domain.
    pub const ANY: DomId = DomId(0x7FF5);
}

impl fmt::Display for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dom{}", self.0)
    }
}

/// The access letter of a permission entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Access {
    /// `n`
    None,
    /// `r`
    Read,
    /// `w`
    Write,
    /// `b`: read and write.
    Both,
}

impl Access {
    pub fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }

    pub fn from_letter(c: u8) -> Option<Access> {
        Some(match c {
            b'n' => Access::None,
            b'r' => Access::Read,
            b'w' => Access::Write,
            b'b' => Access::Both,
            _ => return None,
        })
    }

    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

/// One entry: an access letter and a domain (`r5`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Perm {
    pub access: Access,
    pub domid: DomId,
}

impl Perm {
    pub const fn new(access: Access, domid: DomId) -> Perm {
        Perm { access, domid }
    }

    /// Parses the wire form `<letter><decimal domid>` (`b5`, `n0`).
    /// C's rule: a letter, then a strict decimal number that fits 16 bits.
    pub fn parse(s: &[u8]) -> Option<Perm> {
        let (&letter, digits) = s.split_first()?;
        let access = Access::from_letter(letter)?;
        if digits.is_empty() {
            return None;
        }
        let mut n: u16 = 0;
        for &d in digits {
            if !d.is_ascii_digit() {
                return None;
            }
            n = n.checked_mul(10)?.checked_add(u16::from(d - b'0'))?;
        }
        Some(Perm::new(access, DomId(n)))
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid.0)
    }
}

/// A node's permission list: entry 0 names the owner and, through its letter,
/// the default access of every domain without an entry of its own; the rest
/// is an ACL where the first match wins.
///
/// Invariant: never empty. Shared between nodes by reference count, since
/// implicitly created nodes copy their parent's list; one word (the length
/// lives in the shared allocation), as it sits in every node.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Perms(ThinArc<(), Perm>);

/// An empty list was given where a permission list needs an owner entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a permission list needs at least the owner entry")]
pub struct EmptyPerms;

impl Perms {
    pub fn new(entries: &[Perm]) -> Result<Perms, EmptyPerms> {
        if entries.is_empty() {
            return Err(EmptyPerms);
        }
        Ok(Perms::shared(entries))
    }

    /// A list with only the owner entry: `n<owner>`.
    pub fn owned_by(owner: DomId) -> Perms {
        Perms::shared(&[Perm::new(Access::None, owner)])
    }

    fn shared(entries: &[Perm]) -> Perms {
        Perms(ThinArc::from_header_and_slice((), entries))
    }

    pub fn owner(&self) -> DomId {
        self.entries()[0].domid
    }

    pub fn entries(&self) -> &[Perm] {
        &self.0.slice
    }

    /// The list with entry 0's domain replaced by `owner` (letter kept), as a
    /// node created by an unprivileged domain gets it (§4.2). Shares the
    /// original when nothing changes.
    pub fn with_owner(&self, owner: DomId) -> Perms {
        if self.owner() == owner {
            return self.clone();
        }
        let mut v: Vec<Perm> = self.entries().to_vec();
        v[0].domid = owner;
        Perms::shared(&v)
    }

    /// The list without ACL entries (index ≥ 1) naming `domid`; the owner
    /// entry is kept. `None` when nothing would change.
    pub fn without_acl_for(&self, domid: DomId) -> Option<Perms> {
        let entries = self.entries();
        if !entries[1..].iter().any(|p| p.domid == domid) {
            return None;
        }
        let v: Vec<Perm> =
            core::iter::once(entries[0]).chain(entries[1..].iter().copied().filter(|p| p.domid != domid)).collect();
        Some(Perms::shared(&v))
    }

    /// The wire form: each entry followed by a NUL (`n0\0r5\0`).
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries().len() * 4);
        for p in self.entries() {
            let mut s = String::new();
            let _ = write!(s, "{p}");
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        out
    }

    /// True if both lists are the same shared allocation (O(1) equality).
    pub fn ptr_eq(&self, other: &Perms) -> bool {
        self.0.as_ptr() == other.0.as_ptr()
    }
}

impl fmt::Debug for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, p) in self.entries().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{p}")?;
        }
        f.write_str("]")
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Perms {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(self.entries(), s)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Perms {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Perms, D::Error> {
        let v: Vec<Perm> = serde::Deserialize::deserialize(d)?;
        Perms::new(&v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        assert_eq!(Perm::parse(b"b5"), Some(Perm::new(Access::Both, DomId(5))));
        assert_eq!(Perm::parse(b"n0"), Some(Perm::new(Access::None, DomId(0))));
        assert_eq!(Perm::parse(b"r65535"), Some(Perm::new(Access::Read, DomId(65535))));
        assert_eq!(Perm::parse(b"w000007"), Some(Perm::new(Access::Write, DomId(7))));
        for bad in [&b""[..], b"x5", b"r", b"r5z", b"r65536", b"r-1", b" r5", b"r 5"] {
            assert_eq!(Perm::parse(bad), None, "{bad:?}");
        }
        let p = Perms::new(&[
            Perm::new(Access::None, DomId(0)),
            Perm::new(Access::Read, DomId(5)),
            Perm::new(Access::Write, DomId(6)),
        ])
        .unwrap();
        assert_eq!(p.to_wire(), b"n0\0r5\0w6\0");
        assert_eq!(p.owner(), DomId(0));
        assert!(Perms::new(&[]).is_err());
    }

    #[test]
    fn owner_replacement_and_acl_removal() {
        let p = Perms::new(&[Perm::new(Access::Read, DomId(0)), Perm::new(Access::Both, DomId(5))]).unwrap();
        assert_eq!(p.with_owner(DomId(5)).to_wire(), b"r5\0b5\0");
        assert!(p.with_owner(DomId(0)).ptr_eq(&p));
        assert_eq!(p.without_acl_for(DomId(5)).unwrap().to_wire(), b"r0\0");
        assert!(p.without_acl_for(DomId(7)).is_none());
        // The owner entry is never removed.
        assert!(p.without_acl_for(DomId(0)).is_none());
    }
}
