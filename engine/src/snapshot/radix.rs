//! A persistent vector that only grows: the node table's buckets, by number.
//!
//! A radix trie of 16-way nodes on the index, each element behind its own
//! shared pointer. Cloning is O(1); changing or appending an element copies
//! the trie nodes on its way (and the element, if shared) and nothing
//! else, so every other version keeps its own. A lookup is a shift and a
//! mask per level, no hashing and no keys: the table looks a bucket up on
//! every node access, so this is on every request's path.

use alloc::vec::Vec;

use triomphe::Arc;

/// Log2 of the children per trie node. A change copies one node per level:
/// wide nodes make the trie shallow but each copy (and the reference
/// counts it touches) dearer.
const BITS: u32 = 4;
const WIDTH: usize = 1 << BITS;
const MASK: usize = WIDTH - 1;

#[derive(Clone)]
enum Trie<T> {
    /// Up to `WIDTH` subtries, each covering the next bits of the index.
    Branch(Vec<Arc<Trie<T>>>),
    Leaf(Vec<Arc<T>>),
}

#[derive(Clone)]
pub(crate) struct Radix<T> {
    root: Arc<Trie<T>>,
    len: usize,
    /// `BITS` times the root's height: the root's children split the index
    /// at this bit.
    shift: u32,
}

impl<T: Clone> Radix<T> {
    pub(crate) fn new() -> Radix<T> {
        Radix { root: Arc::new(Trie::Leaf(Vec::new())), len: 0, shift: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        if index >= self.len {
            return None;
        }
        let (mut trie, mut shift) = (&*self.root, self.shift);
        loop {
            match trie {
                Trie::Branch(children) => {
                    trie = children.get((index >> shift) & MASK)?;
                    shift = shift.checked_sub(BITS)?;
                }
                Trie::Leaf(items) => return items.get(index & MASK).map(|item| &**item),
            }
        }
    }

    /// The element at `index`, made this version's own: it and the trie
    /// nodes above it are copied if another version shares them.
    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.slot_mut(index).map(Arc::make_mut)
    }

    /// Replaces the element at `index` (the trie nodes above it are copied
    /// if shared; the old element is not); false if out of range.
    pub(crate) fn set(&mut self, index: usize, value: T) -> bool {
        self.slot_mut(index).map(|slot| *slot = Arc::new(value)).is_some()
    }

    /// Changes the element at `index` through `f`, which gets it as
    /// `Ok(&mut T)` where this version alone holds it and as `Err(&T)`
    /// where it is shared, and returns what replaces it, if anything: a
    /// copy made with the change, instead of a copy and then the change.
    /// `None` if out of range.
    pub(crate) fn update<R>(
        &mut self,
        index: usize,
        f: impl FnOnce(Result<&mut T, &T>) -> (Option<T>, R),
    ) -> Option<R> {
        let slot = self.slot_mut(index)?;
        let (replacement, r) = if slot.is_unique() { f(Ok(Arc::get_mut(slot)?)) } else { f(Err(&**slot)) };
        if let Some(new) = replacement {
            *slot = Arc::new(new);
        }
        Some(r)
    }

    /// The pointer to the element at `index`, the trie nodes above it made
    /// this version's own.
    fn slot_mut(&mut self, index: usize) -> Option<&mut Arc<T>> {
        if index >= self.len {
            return None;
        }
        let (mut trie, mut shift) = (Arc::make_mut(&mut self.root), self.shift);
        loop {
            match trie {
                Trie::Branch(children) => {
                    trie = Arc::make_mut(children.get_mut((index >> shift) & MASK)?);
                    shift = shift.checked_sub(BITS)?;
                }
                Trie::Leaf(items) => return items.get_mut(index & MASK),
            }
        }
    }

    pub(crate) fn push(&mut self, value: T) {
        let index = self.len;
        if index == WIDTH << self.shift {
            // Full: the root becomes the first child of a new one.
            let old = core::mem::replace(&mut self.root, Arc::new(Trie::Branch(Vec::new())));
            if let Trie::Branch(children) = Arc::make_mut(&mut self.root) {
                children.push(old);
            }
            self.shift += BITS;
        }
        let (mut trie, mut shift) = (Arc::make_mut(&mut self.root), self.shift);
        loop {
            match trie {
                Trie::Branch(children) => {
                    let slot = (index >> shift) & MASK;
                    if slot == children.len() {
                        let fresh = if shift == BITS { Trie::Leaf(Vec::new()) } else { Trie::Branch(Vec::new()) };
                        children.push(Arc::new(fresh));
                    }
                    let Some(child) = children.get_mut(slot) else { return };
                    trie = Arc::make_mut(child);
                    shift -= BITS;
                }
                Trie::Leaf(items) => {
                    items.push(Arc::new(value));
                    break;
                }
            }
        }
        self.len += 1;
    }

    /// Every element, in index order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        (0..self.len).filter_map(|i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against a `Vec`, with older versions unchanged by later pushes
        /// and changes.
        #[test]
        fn behaves_like_a_vec_and_versions_stay_apart(ops in proptest::collection::vec((0u8..6, any::<u16>()), 1..700)) {
            let (mut radix, mut model) = (Radix::new(), Vec::new());
            let mut kept: Vec<(Radix<u16>, Vec<u16>)> = Vec::new();
            for (op, x) in ops {
                match op {
                    0 | 1 => {
                        radix.push(x);
                        model.push(x);
                    }
                    2 if !model.is_empty() => {
                        let i = usize::from(x) % model.len();
                        *radix.get_mut(i).expect("in range") = x;
                        model[i] = x;
                    }
                    3 if !model.is_empty() => {
                        let i = usize::from(x) % model.len();
                        prop_assert!(radix.set(i, x));
                        model[i] = x;
                    }
                    4 if !model.is_empty() => {
                        // In place where unshared, as a new element where shared.
                        let i = usize::from(x) % model.len();
                        let old = radix.update(i, |e| match e {
                            Ok(own) => (None, core::mem::replace(own, x)),
                            Err(shared) => (Some(x), *shared),
                        });
                        prop_assert_eq!(old, Some(model[i]));
                        model[i] = x;
                    }
                    _ => kept.push((radix.clone(), model.clone())),
                }
            }
            prop_assert!(!radix.set(model.len(), 0) && radix.update(model.len(), |_| (None, ())).is_none());
            kept.push((radix, model));
            for (r, m) in &kept {
                prop_assert_eq!(r.len(), m.len());
                prop_assert_eq!(r.iter().copied().collect::<Vec<_>>(), m.clone());
                prop_assert!(r.get(m.len()).is_none());
            }
        }
    }

    #[test]
    fn grows_through_several_levels() {
        let mut r = Radix::new();
        for i in 0..5000u32 {
            r.push(i);
        }
        assert_eq!(r.shift, 3 * BITS);
        assert!((0..5000u32).all(|i| r.get(i as usize) == Some(&i)));
        assert!(r.get(5000).is_none());
    }
}
