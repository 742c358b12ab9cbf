//! Node paths: `/local/domain/5/device` and the special `@...` paths.

use alloc::string::String;
use core::borrow::Borrow;
use core::cmp::Ordering;
use core::fmt;
use core::hash::{Hash, Hasher};

use triomphe::ThinArc;

/// A syntactically valid xenstore path (PROTOCOL.md §3.1), either absolute
/// (`/`, `/a/b`) or special (`@releaseDomain`, `@releaseDomain/5`).
///
/// Invariants: non-empty; only `A–Z a–z 0–9 - _ @ /`; no `//`; no trailing
/// `/` except for the root; starts with `/` or `@`. Relative paths are the
/// server's business: it resolves them before they reach the engine.
///
/// Cloning is a reference-count increment. One word: the length lives in
/// the shared allocation, beside the count (requests, changes, watch
/// events and transaction records all carry paths). The node table does
/// not hold `Path`s: it keeps each path's bytes inside its bucket.
///
/// Compared, ordered and hashed as its string, so that maps keyed by paths
/// can be searched with a `&str`.
#[derive(Clone)]
pub struct Path(ThinArc<(), u8>);

/// Why a string is not a [`Path`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The empty string.
    #[error("empty path")]
    Empty,
    /// Neither `/` nor `@` at the start (a relative path).
    #[error("path is not absolute")]
    NotAbsolute,
    /// A byte outside `A–Z a–z 0–9 - _ @ /`.
    #[error("invalid character in path")]
    BadCharacter,
    /// `//` somewhere, or a trailing `/` on a path other than `/`.
    #[error("empty path component")]
    EmptyComponent,
}

impl Path {
    /// Validates `s` as an absolute or special path.
    pub fn new(s: &str) -> Result<Path, PathError> {
        validate(s.as_bytes())?;
        Ok(Path::shared(s))
    }

    /// The only constructor of the representation: the bytes stored are
    /// always a whole `&str`'s (what `as_str` relies on).
    fn shared(s: &str) -> Path {
        Path(ThinArc::from_header_and_slice((), s.as_bytes()))
    }

    /// Validates raw bytes from the wire.
    pub fn from_bytes(b: &[u8]) -> Result<Path, PathError> {
        validate(b)?;
        // SAFETY: validate() admits only ASCII bytes, which are UTF-8. (Every
        // request parses a path: a second scan of the bytes showed in the
        // daemon's profile, benches/README.md.)
        Ok(Path::shared(unsafe { core::str::from_utf8_unchecked(b) }))
    }

    /// A string the engine stored as a path (a table's key): valid already.
    pub(crate) fn stored(s: &str) -> Path {
        debug_assert!(validate(s.as_bytes()).is_ok(), "{s:?}");
        Path::shared(s)
    }

    /// The root node `/`.
    pub fn root() -> Path {
        Path::shared("/")
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: `Path::shared` is the only constructor, and it stores the
        // bytes of a `&str`.
        unsafe { core::str::from_utf8_unchecked(&self.0.slice) }
    }

    pub fn is_root(&self) -> bool {
        self.as_str() == "/"
    }

    /// `@introduceDomain`, `@releaseDomain/5`, ...: event sources, not tree nodes.
    pub fn is_special(&self) -> bool {
        self.as_str().starts_with('@')
    }

    /// The parent of an absolute path; `None` for `/` and for special paths.
    pub fn parent(&self) -> Option<Path> {
        self.parent_str().map(Path::shared)
    }

    /// The parent as a borrowed string, without allocating.
    pub fn parent_str(&self) -> Option<&str> {
        parent_of(self.as_str())
    }

    /// The last component (`c` for `/a/b/c`); empty for `/`.
    pub fn name(&self) -> &str {
        let s = self.as_str();
        match s.rfind('/') {
            Some(i) => &s[i + 1..],
            None => s,
        }
    }

    /// The path of child `name` (which must be one valid component).
    pub fn child(&self, name: &str) -> Path {
        let mut s = String::new();
        join(&mut s, self.as_str(), name);
        Path::shared(&s)
    }

    /// True if `self` is `other` or lies below it (`/a/b` is under `/a` and `/`,
    /// not under `/a/bb`'s sibling `/a/b`... nor is `/a/bb` under `/a/b`).
    pub fn is_under(&self, other: &Path) -> bool {
        is_under(self.as_str(), other.as_str())
    }

    /// Number of components (`/` is 0, `/a/b` is 2).
    pub fn depth(&self) -> usize {
        if self.is_root() { 0 } else { self.as_str().bytes().filter(|&b| b == b'/').count() }
    }
}

/// String form of [`Path::parent_str`], for callers holding `&str`.
pub(crate) fn parent_of(s: &str) -> Option<&str> {
    if s.starts_with('@') || s == "/" {
        return None;
    }
    let cut = s.rfind('/')?;
    Some(if cut == 0 { "/" } else { &s[..cut] })
}

/// Sets `out` to the path of child `name` of `parent` (reusing its buffer).
pub(crate) fn join(out: &mut String, parent: &str, name: &str) {
    out.clear();
    out.reserve(parent.len() + 1 + name.len());
    out.push_str(parent);
    if parent != "/" {
        out.push('/');
    }
    out.push_str(name);
}

/// String form of [`Path::is_under`], for callers holding `&str`.
pub fn is_under(path: &str, ancestor: &str) -> bool {
    if ancestor == "/" {
        return path.starts_with('/');
    }
    path.starts_with(ancestor) && (path.len() == ancestor.len() || path.as_bytes()[ancestor.len()] == b'/')
}

/// One pass over the bytes (every request's path comes through here): the
/// character set first (a bad character is reported even after an empty
/// component), then empty components.
/// The bytes a path may hold: `A–Z a–z 0–9 - _ @ /`.
const PATH_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'@' | b'/');
        c += 1;
    }
    table
};

fn validate(b: &[u8]) -> Result<(), PathError> {
    let (&first, rest) = b.split_first().ok_or(PathError::Empty)?;
    if first != b'/' && first != b'@' {
        return Err(PathError::NotAbsolute);
    }
    let mut previous_slash = first == b'/';
    let mut empty_component = false;
    let mut bad = false;
    for &c in rest {
        let slash = c == b'/';
        bad |= !PATH_BYTE[usize::from(c)];
        empty_component |= slash && previous_slash;
        previous_slash = slash;
    }
    if bad {
        return Err(PathError::BadCharacter);
    }
    // A trailing slash is an empty last component, except for `/` itself.
    if empty_component || (previous_slash && !rest.is_empty()) {
        return Err(PathError::EmptyComponent);
    }
    Ok(())
}

impl PartialEq for Path {
    fn eq(&self, other: &Path) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Path {}

impl PartialOrd for Path {
    fn partial_cmp(&self, other: &Path) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Path {
    fn cmp(&self, other: &Path) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// As `str` hashes: [`Borrow<str>`] requires it.
impl Hash for Path {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Borrow<str> for Path {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Path {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl TryFrom<&str> for Path {
    type Error = PathError;
    fn try_from(s: &str) -> Result<Path, PathError> {
        Path::new(s)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Path {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Path {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Path, D::Error> {
        let s = <alloc::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        Path::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_paths() {
        for p in ["/", "/a", "/a-b_c@d/E9", "@introduceDomain", "@releaseDomain/5"] {
            assert!(Path::new(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn rejects_invalid_paths() {
        assert_eq!(Path::new(""), Err(PathError::Empty));
        assert_eq!(Path::new("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(Path::new("/a/"), Err(PathError::EmptyComponent));
        assert_eq!(Path::new("/a//b"), Err(PathError::EmptyComponent));
        assert_eq!(Path::new("//"), Err(PathError::EmptyComponent));
        for p in ["/a.b", "/a b", "/a:b", "/é", "/a\0b", "/a+b"] {
            assert_eq!(Path::new(p), Err(PathError::BadCharacter), "{p:?}");
        }
        assert_eq!(Path::from_bytes(b"/a\xff"), Err(PathError::BadCharacter));
    }

    #[test]
    fn parent_name_child() {
        let p = Path::new("/a/b/c").unwrap();
        assert_eq!(p.parent().unwrap().as_str(), "/a/b");
        assert_eq!(p.name(), "c");
        assert_eq!(Path::new("/a").unwrap().parent().unwrap().as_str(), "/");
        assert_eq!(Path::root().parent(), None);
        assert_eq!(Path::new("@releaseDomain").unwrap().parent(), None);
        assert_eq!(Path::root().child("x").as_str(), "/x");
        assert_eq!(p.child("d").as_str(), "/a/b/c/d");
        assert_eq!(Path::root().depth(), 0);
        assert_eq!(p.depth(), 3);
    }

    #[test]
    fn under() {
        let ab = Path::new("/a/b").unwrap();
        assert!(ab.is_under(&Path::new("/a").unwrap()));
        assert!(ab.is_under(&Path::root()));
        assert!(ab.is_under(&ab));
        assert!(!Path::new("/a/bb").unwrap().is_under(&ab));
        assert!(!Path::new("/a").unwrap().is_under(&ab));
        assert!(!Path::new("@x").unwrap().is_under(&Path::root()));
    }

    /// The rules as PROTOCOL.md states them, one at a time.
    fn validate_by_the_rules(b: &[u8]) -> Result<(), PathError> {
        let (&first, _) = b.split_first().ok_or(PathError::Empty)?;
        if first != b'/' && first != b'@' {
            return Err(PathError::NotAbsolute);
        }
        if !b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'@' | b'/')) {
            return Err(PathError::BadCharacter);
        }
        if b != b"/" && (b.ends_with(b"/") || b.windows(2).any(|w| w == b"//")) {
            return Err(PathError::EmptyComponent);
        }
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn the_one_pass_check_agrees_with_the_rules(b in proptest::collection::vec(proptest::sample::select(b"/@a-_Z9 .\0".to_vec()), 0..12)) {
            proptest::prop_assert_eq!(validate(&b), validate_by_the_rules(&b));
        }

        /// Any bytes at all: the same verdict, and nothing but ASCII passes
        /// (`from_bytes` relies on it).
        #[test]
        fn only_ascii_passes(rest in proptest::collection::vec(proptest::num::u8::ANY, 0..12)) {
            for b in [rest.clone(), [&b"/"[..], &rest].concat()] {
                proptest::prop_assert_eq!(validate(&b), validate_by_the_rules(&b));
                if validate(&b).is_ok() {
                    proptest::prop_assert!(b.is_ascii());
                }
            }
        }
    }
}
