//! One node of the tree: value, permissions, ordered children, generation.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use triomphe::ThinArc;

use crate::path::Path;
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
/// a removed one closes its gap. Each entry is the child's own path, the
/// very allocation the trie uses as its key, so a listing costs no string
/// of its own and walking the tree needs no path building. Shared until
/// modified; a modification copies the list of pointers only when another
/// version shares it, so appending to a directory that no reader holds
/// costs O(1), however many children it has.
#[derive(Clone, Default)]
pub struct Children(Option<Arc<Vec<Path>>>);

impl Children {
    /// The children's names (last path components), in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &str> + ExactSizeIterator {
        self.as_slice().iter().map(Path::name)
    }

    /// The children's full paths, in order.
    pub fn paths(&self) -> impl DoubleEndedIterator<Item = &Path> + ExactSizeIterator {
        self.as_slice().iter()
    }

    fn as_slice(&self) -> &[Path] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(crate) fn from_paths(paths: Vec<Path>) -> Children {
        if paths.is_empty() { Children(None) } else { Children(Some(Arc::new(paths))) }
    }

    pub(crate) fn append(&mut self, child: Path) {
        match &mut self.0 {
            Some(list) => Arc::make_mut(list).push(child),
            None => self.0 = Some(Arc::new(alloc::vec![child])),
        }
    }

    pub(crate) fn remove(&mut self, name: &str) {
        if let Some(list) = &mut self.0 {
            let list = Arc::make_mut(list);
            list.retain(|p| p.name() != name);
            if list.is_empty() {
                self.0 = None;
            }
        }
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
        let mut out = Vec::with_capacity(self.iter().map(|n| n.len() + 1).sum());
        for n in self.iter() {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        out
    }
}

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
