//! One node of the tree: value, permissions, ordered children, generation.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use triomphe::{Arc, ThinArc};

use crate::perms::Perms;

/// A node's value: arbitrary bytes (NULs included). Values of up to
/// [`Value::INLINE`] bytes (most: states, ids, names, the empty value of
/// directories) are stored in the node itself: no allocation. Longer ones
/// are shared, never copied, between versions of the node, behind a
/// one-word pointer (the length is in the allocation), so that a value
/// takes 16 bytes of its node.
#[derive(Clone)]
pub struct Value(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; Value::INLINE] },
    Shared(ThinArc<(), u8>),
}

impl Default for Value {
    fn default() -> Value {
        Value(Repr::Inline { len: 0, bytes: [0; Value::INLINE] })
    }
}

impl Value {
    /// The longest value kept inline: what fits beside the tag and the
    /// length in 16 bytes.
    pub const INLINE: usize = 14;

    pub fn new(bytes: &[u8]) -> Value {
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= Value::INLINE => {
                let mut inline = [0; Value::INLINE];
                inline[..bytes.len()].copy_from_slice(bytes);
                Value(Repr::Inline { len, bytes: inline })
            }
            _ => Value(Repr::Shared(ThinArc::from_header_and_slice((), bytes))),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Shared(b) => &b.slice,
        }
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Same bytes; O(1) when both share one allocation.
    pub fn same(&self, other: &Value) -> bool {
        match (&self.0, &other.0) {
            (Repr::Shared(a), Repr::Shared(b)) if a.as_ptr() == b.as_ptr() => true,
            _ => self.as_bytes() == other.as_bytes(),
        }
    }
}

impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Value {
        Value::new(b)
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.same(other)
    }
}
impl Eq for Value {}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.as_bytes().escape_ascii())
    }
}

/// Children in creation order (PROTOCOL.md §4.4): a new child is appended,
/// a removed one closes its gap. Kept as their names, each followed by a
/// NUL: the wire form of DIRECTORY, which a listing copies as it is. A
/// child's full path is its parent's plus its name, so no path is stored
/// twice. Shared until modified; a modification copies the names only
/// when another version shares them, so appending to a directory that no
/// reader holds costs O(1), however many children it has.
#[derive(Clone, Default)]
pub struct Children(Option<Arc<Names>>);

#[derive(Clone, Default, PartialEq, Eq)]
struct Names {
    count: usize,
    /// `name\0name\0...`
    wire: String,
}

impl Names {
    fn push(&mut self, name: &str) {
        self.wire.reserve(name.len() + 1);
        self.wire.push_str(name);
        self.wire.push('\0');
        self.count += 1;
    }
}

impl Children {
    /// The children's names (last path components), in order.
    pub fn iter(&self) -> NameIter<'_> {
        match &self.0 {
            Some(names) => NameIter { rest: &names.wire, left: names.count },
            None => NameIter { rest: "", left: 0 },
        }
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |n| n.count)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Children named by valid path components, in order.
    pub(crate) fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Children {
        let mut children = Names::default();
        for name in names {
            children.push(name);
        }
        if children.count == 0 { Children(None) } else { Children(Some(Arc::new(children))) }
    }

    pub(crate) fn append(&mut self, name: &str) {
        Arc::make_mut(self.0.get_or_insert_with(Arc::default)).push(name);
    }

    pub(crate) fn remove(&mut self, name: &str) {
        let Some(start) = self.offset_of(name) else { return };
        let Some(names) = &mut self.0 else { return };
        if names.count == 1 {
            self.0 = None;
            return;
        }
        let names = Arc::make_mut(names);
        names.wire.replace_range(start..start + name.len() + 1, "");
        names.count -= 1;
    }

    /// Where `name`'s entry starts in the wire form, if it is a child.
    fn offset_of(&self, name: &str) -> Option<usize> {
        let mut start = 0;
        for n in self.iter() {
            if n == name {
                return Some(start);
            }
            start += n.len() + 1;
        }
        None
    }

    /// Same children in the same order; O(1) when both share one allocation.
    pub fn same(&self, other: &Children) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            (None, None) => true,
            _ => false,
        }
    }

    /// The wire form of DIRECTORY: each name followed by a NUL.
    pub fn to_wire(&self) -> Vec<u8> {
        self.wire().as_bytes().to_vec()
    }

    /// The length of [`Children::to_wire`], without building it.
    pub fn wire_len(&self) -> usize {
        self.wire().len()
    }

    fn wire(&self) -> &str {
        self.0.as_ref().map_or("", |n| &n.wire)
    }
}

/// The names of [`Children`], in order (either way).
#[derive(Clone, Debug)]
pub struct NameIter<'a> {
    /// Names still to yield, each followed by a NUL.
    rest: &'a str,
    left: usize,
}

impl<'a> Iterator for NameIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let (name, rest) = self.rest.split_once('\0')?;
        self.rest = rest;
        self.left -= 1;
        Some(name)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<'a> DoubleEndedIterator for NameIter<'a> {
    fn next_back(&mut self) -> Option<&'a str> {
        let body = self.rest.strip_suffix('\0')?;
        let start = body.rfind('\0').map_or(0, |i| i + 1);
        self.rest = &self.rest[..start];
        self.left -= 1;
        Some(&body[start..])
    }
}

impl ExactSizeIterator for NameIter<'_> {}

impl PartialEq for Children {
    fn eq(&self, other: &Children) -> bool {
        self.same(other)
    }
}
impl Eq for Children {}

impl fmt::Debug for Children {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A node as stored in a snapshot. Cheap to clone (three reference counts).
#[derive(Clone, PartialEq, Eq)]
pub struct Node {
    pub(crate) value: Value,
    pub(crate) perms: Perms,
    pub(crate) children: Children,
    pub(crate) generation: u64,
}

impl Node {
    pub fn value(&self) -> &Value {
        &self.value
    }

    pub fn perms(&self) -> &Perms {
        &self.perms
    }

    pub fn children(&self) -> &Children {
        &self.children
    }

    /// The value of the global generation counter when this node was last
    /// modified (created, written, permissions or children changed).
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("value", &self.value)
            .field("perms", &self.perms)
            .field("children", &self.children)
            .field("generation", &self.generation)
            .finish()
    }
}

#[cfg(test)]
mod value_tests {
    use super::*;

    #[test]
    fn short_values_are_inline_long_ones_shared_and_all_compare_by_content() {
        assert_eq!(core::mem::size_of::<Value>(), 16, "a value must not grow the node");
        for len in [0, 1, Value::INLINE, Value::INLINE + 1, 4096] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let v = Value::new(&bytes);
            assert_eq!(v.as_bytes(), bytes.as_slice());
            assert_eq!(v.len(), len);
            assert_eq!(v.is_empty(), len == 0);
            assert_eq!(v, Value::new(&bytes));
            assert!(v.same(&v.clone()));
            assert_ne!(v, Value::new(b"\0other\0bytes that differ from all of these"));
        }
        assert_eq!(Value::default(), Value::new(b""));
    }
}

#[cfg(test)]
mod children_tests {
    use super::*;

    fn names(c: &Children) -> Vec<&str> {
        c.iter().collect()
    }

    #[test]
    fn names_come_in_order_from_either_end_with_an_exact_count() {
        let c = Children::from_names(["a", "bb", "c"]);
        assert_eq!(names(&c), ["a", "bb", "c"]);
        assert_eq!(c.iter().rev().collect::<Vec<_>>(), ["c", "bb", "a"]);
        let mut it = c.iter();
        assert_eq!((it.len(), it.next(), it.next_back(), it.len()), (3, Some("a"), Some("c"), 1));
        assert_eq!((it.next(), it.next(), it.next_back()), (Some("bb"), None, None));
        assert_eq!(c.to_wire(), b"a\0bb\0c\0");
        assert_eq!(c.wire_len(), 7);
        assert!(c.iter().any(|n| n == "bb") && !c.iter().any(|n| n == "b"));
        assert!(Children::from_names([]).is_empty());
    }

    #[test]
    fn remove_closes_the_gap_and_leaves_other_versions_alone() {
        let full = Children::from_names(["a", "ab", "b", "c"]);
        for (gone, left) in [("a", "ab b c"), ("ab", "a b c"), ("c", "a ab b"), ("x", "a ab b c"), ("", "a ab b c")] {
            let mut c = full.clone();
            c.remove(gone);
            assert_eq!(names(&c).join(" "), left, "removing {gone:?}");
            assert_eq!(c.len(), names(&c).len());
        }
        assert_eq!(names(&full), ["a", "ab", "b", "c"]);
        let mut one = Children::from_names(["only"]);
        one.remove("only");
        assert!(one.is_empty() && one.iter().len() == 0 && one.to_wire().is_empty());
    }

    #[test]
    fn append_copies_only_a_shared_list() {
        let mut c = Children::default();
        c.append("x");
        let kept = c.clone();
        c.append("y");
        assert_eq!(names(&kept), ["x"]);
        assert_eq!(names(&c), ["x", "y"]);
        assert!(!c.same(&kept) && c.same(&c.clone()));
        assert!(Children::from_names(["x", "y"]).same(&c));
    }
}
