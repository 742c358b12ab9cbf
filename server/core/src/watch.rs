//! Registered watches, indexed by path so that a modification finds the
//! watches on it and its ancestors without scanning them all.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use engine::Path;

use crate::conn::ConnId;

/// One watch (PROTOCOL.md §6.1), kept under its canonical (absolute or
/// `@`) path.
#[derive(Clone, Debug)]
pub(crate) struct Watch {
    pub conn: ConnId,
    /// The path as the client gave it; relative watches report relative paths.
    pub given: Vec<u8>,
    pub token: Vec<u8>,
    /// Depth limit (feature WATCHDEPTH); `None` is unlimited.
    pub depth: Option<u32>,
    /// Registration order, for a stable event order.
    seq: u64,
}

impl Watch {
    pub fn is_relative(&self) -> bool {
        !matches!(self.given.first(), Some(b'/' | b'@'))
    }

    /// The path reported for a modification of `modified`: relative to the
    /// connection's home `home` for relative watches (§6.5).
    pub fn event_path<'a>(&self, modified: &'a str, home: &str) -> &'a str {
        if self.is_relative()
            && let Some(rest) = modified.strip_prefix(home).and_then(|r| r.strip_prefix('/'))
        {
            return rest;
        }
        modified
    }

    /// Whether `depth` limits let a modification `levels` below fire.
    pub fn reaches(&self, levels: usize) -> bool {
        self.depth.is_none_or(|d| levels <= d as usize)
    }
}

/// Every watch of every connection.
#[derive(Debug, Default)]
pub(crate) struct Watches {
    by_path: BTreeMap<Path, Vec<Watch>>,
    next_seq: u64,
}

impl Watches {
    /// Registers a watch; `false` if the connection has one with the same
    /// path and token.
    pub fn add(&mut self, conn: ConnId, path: Path, given: Vec<u8>, token: Vec<u8>, depth: Option<u32>) -> bool {
        let list = self.by_path.entry(path).or_default();
        if list.iter().any(|w| w.conn == conn && w.token == token) {
            return false;
        }
        self.next_seq += 1;
        list.push(Watch { conn, given, token, depth, seq: self.next_seq });
        true
    }

    /// Removes one watch; `false` if there is none.
    pub fn remove(&mut self, conn: ConnId, path: &Path, token: &[u8]) -> bool {
        let Some(list) = self.by_path.get_mut(path.as_str()) else { return false };
        let before = list.len();
        list.retain(|w| !(w.conn == conn && w.token == token));
        let removed = list.len() != before;
        if list.is_empty() {
            self.by_path.remove(path.as_str());
        }
        removed
    }

    /// Removes every watch of `conn`; returns how many there were.
    pub fn remove_conn(&mut self, conn: ConnId) -> usize {
        let mut removed = 0;
        self.by_path.retain(|_, list| {
            let before = list.len();
            list.retain(|w| w.conn != conn);
            removed += before - list.len();
            !list.is_empty()
        });
        removed
    }

    /// Every watch, in registration order.
    pub fn in_order(&self) -> Vec<&Watch> {
        let mut all: Vec<&Watch> = self.by_path.values().flatten().collect();
        all.sort_by_key(|w| w.seq);
        all
    }

    /// Watches whose path is `path` exactly.
    pub fn on(&self, path: &str) -> &[Watch] {
        self.by_path.get(path).map_or(&[], Vec::as_slice)
    }

    /// Watches that fire for a modification of `modified` (§6.3 "matches
    /// subtree", §6.4 depth): on the path itself and on each ancestor, with
    /// the number of levels between them. Sorted by registration.
    pub fn matching(&self, modified: &Path) -> Vec<(&Watch, usize)> {
        let mut out: Vec<(&Watch, usize)> = Vec::new();
        if self.by_path.is_empty() {
            return out;
        }
        let s = modified.as_str();
        let mut levels = 0;
        let mut end = s.len();
        loop {
            let prefix = if end == 0 { "/" } else { &s[..end] };
            out.extend(self.on(prefix).iter().filter(|w| w.reaches(levels)).map(|w| (w, levels)));
            if end == 0 || modified.is_special() {
                break;
            }
            end = s[..end].rfind('/').unwrap_or(0);
            levels += 1;
        }
        out.sort_by_key(|(w, _)| w.seq);
        out
    }

    pub fn len(&self) -> usize {
        self.by_path.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        Path::new(s).expect("path")
    }

    #[test]
    fn matches_path_and_ancestors_only() {
        let mut w = Watches::default();
        for (i, path) in ["/a/b", "/a", "/", "/a/b/c", "/a/bb"].iter().enumerate() {
            assert!(w.add(ConnId(1), p(path), path.as_bytes().to_vec(), alloc::vec![b't', i as u8], None));
        }
        let hits: Vec<&[u8]> = w.matching(&p("/a/b")).iter().map(|(w, _)| &w.given[..]).collect();
        assert_eq!(hits, [&b"/a/b"[..], b"/a", b"/"]);
        assert!(w.matching(&p("@introduceDomain")).is_empty());
    }

    #[test]
    fn depth_limits() {
        let mut w = Watches::default();
        w.add(ConnId(1), p("/a"), b"/a".to_vec(), b"d0".to_vec(), Some(0));
        w.add(ConnId(1), p("/a"), b"/a".to_vec(), b"d1".to_vec(), Some(1));
        w.add(ConnId(1), p("/"), b"/".to_vec(), b"r1".to_vec(), Some(1));
        let tokens = |m: &str| -> Vec<Vec<u8>> { w.matching(&p(m)).iter().map(|(w, _)| w.token.clone()).collect() };
        assert_eq!(tokens("/a"), [b"d0".to_vec(), b"d1".to_vec(), b"r1".to_vec()]);
        assert_eq!(tokens("/a/x"), [b"d1".to_vec()]);
        assert!(tokens("/a/x/y").is_empty());
    }

    #[test]
    fn duplicates_and_removal() {
        let mut w = Watches::default();
        assert!(w.add(ConnId(1), p("/w"), b"/w".to_vec(), b"t".to_vec(), None));
        assert!(!w.add(ConnId(1), p("/w"), b"/w".to_vec(), b"t".to_vec(), None));
        assert!(w.add(ConnId(2), p("/w"), b"/w".to_vec(), b"t".to_vec(), None));
        assert!(w.add(ConnId(1), p("/w"), b"/w".to_vec(), b"u".to_vec(), None));
        assert!(!w.remove(ConnId(1), &p("/w"), b"nope"));
        assert!(w.remove(ConnId(1), &p("/w"), b"t"));
        assert_eq!(w.remove_conn(ConnId(1)), 1);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn relative_event_paths() {
        let mut w = Watches::default();
        w.add(ConnId(1), p("/local/domain/5/foo"), b"foo".to_vec(), b"t".to_vec(), None);
        let watch = &w.on("/local/domain/5/foo")[0];
        assert_eq!(watch.event_path("/local/domain/5/foo/bar", "/local/domain/5"), "foo/bar");
    }
}
