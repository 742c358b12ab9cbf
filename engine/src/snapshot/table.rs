//! A snapshot's node table: path → node, persistent, shared between versions.
//!
//! A persistent hash-array-mapped trie (rpds) spends about 100 bytes of its
//! own on every entry (a trie leaf, the shared entry, its slot in a branch),
//! more than a whole node of C xenstored. So the trie's entries here are
//! *buckets* of a few nodes, kept in one exact-size array each, addressed by
//! linear hashing: the table starts with one bucket and splits one more,
//! in order, each time the average load passes [`LOAD`]. Growth is thus
//! incremental (one small bucket rewritten per insert at most, never a
//! rehash of everything), and the trie's overhead is shared by about
//! [`LOAD`] nodes. A version that changes a node copies that node's bucket
//! (a few reference counts per slot) plus the trie nodes above it; every
//! older version keeps its own.
//!
//! Each slot keeps its path's full hash: a lookup compares hashes before
//! touching a path's bytes, and a split needs no rehashing. The table does
//! not shrink: after mass removal the buckets stay, fewer nodes in each.
//!
//! A bucket's address is the low bits of the hash, so paths that agree
//! there share a bucket, whose lookups and copies grow with it. Guests
//! choose path names; the hasher's seed is random per store (foldhash:
//! address-space layout and the clock, not a secret key), so crowding one
//! bucket needs the seed, and a guest's nodes are bounded by its quota.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::hash::BuildHasher;

use archery::ArcTK;
use rpds::HashTrieMap;

use crate::node::Node;
use crate::path::Path;

/// Hashes paths; random per table family (all versions of one store share it).
pub(crate) type Hasher = foldhash::fast::RandomState;
/// Hashes bucket numbers for the trie (they are dense small integers).
type BucketHasher = foldhash::fast::FixedState;

/// Children per trie node. A commit copies one node per level: wide nodes
/// make the trie shallow but each copy (and the reference counts it
/// touches) dearer. Chosen by measurement (benches/README.md) when each
/// entry was one node; not measured again with buckets.
const TRIE_DEGREE: u8 = 16;
/// The average number of nodes per bucket above which the table grows by
/// one bucket. A lookup scans half a bucket's hashes on average, and a
/// version's first change in a bucket copies it whole; the trie's overhead
/// per node is divided by it.
const LOAD: usize = 8;

/// One node with its path and the path's hash: 64 bytes.
#[derive(Clone)]
struct Slot {
    hash: u64,
    path: Path,
    node: Node,
}

impl Slot {
    /// Whether this is the slot of `path`, whose hash is `hash` (compared
    /// first: it is in the slot, the path's bytes are not).
    fn is(&self, hash: u64, path: &str) -> bool {
        self.hash == hash && self.path.as_str() == path
    }
}

#[derive(Clone)]
pub(crate) struct NodeTable {
    buckets: HashTrieMap<u64, Box<[Slot]>, ArcTK, BucketHasher>,
    hasher: Hasher,
    len: usize,
    /// Linear hashing's round: buckets below `split` have been split into
    /// `2^(level+1)` addresses, the others are still at `2^level`.
    level: u32,
    split: u64,
}

impl NodeTable {
    pub(crate) fn new(hasher: Hasher) -> NodeTable {
        NodeTable {
            buckets: HashTrieMap::new_with_hasher_and_degree_and_ptr_kind(BucketHasher::default(), TRIE_DEGREE),
            hasher,
            len: 0,
            level: 0,
            split: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn hash(&self, path: &str) -> u64 {
        self.hasher.hash_one(path)
    }

    /// The bucket a path of this hash lives in.
    pub(crate) fn address(&self, hash: u64) -> u64 {
        let low = hash & ((1u64 << self.level) - 1);
        if low < self.split { hash & ((1u64 << (self.level + 1)) - 1) } else { low }
    }

    fn bucket_count(&self) -> u64 {
        (1u64 << self.level) + self.split
    }

    pub(crate) fn get(&self, path: &str) -> Option<&Node> {
        self.get_key_value(path).map(|(_, node)| node)
    }

    /// The node with the stored path itself (the allocation the parent's
    /// child list shares).
    pub(crate) fn get_key_value(&self, path: &str) -> Option<(&Path, &Node)> {
        let hash = self.hash(path);
        let bucket = self.buckets.get(&self.address(hash))?;
        bucket.iter().find(|s| s.is(hash, path)).map(|s| (&s.path, &s.node))
    }

    pub(crate) fn contains(&self, path: &str) -> bool {
        self.get(path).is_some()
    }

    /// The node at `path`, made this version's own (its bucket and the trie
    /// nodes above are copied if another version shares them).
    pub(crate) fn get_mut(&mut self, path: &str) -> Option<&mut Node> {
        let hash = self.hash(path);
        let address = self.address(hash);
        let bucket = self.buckets.get_mut(&address)?;
        bucket.iter_mut().find(|s| s.is(hash, path)).map(|s| &mut s.node)
    }

    /// Inserts `node` at `path`, replacing the path and node stored there,
    /// if any; true if `path` was new. (The parent's child list should hold
    /// this very `path`: see [`crate::Snapshot::for_each_in_tree`].)
    pub(crate) fn insert(&mut self, path: Path, node: Node) -> bool {
        self.insert_hashed(self.hash(path.as_str()), path, node)
    }

    /// [`NodeTable::insert`] with the path's [`NodeTable::hash`] known.
    pub(crate) fn insert_hashed(&mut self, hash: u64, path: Path, node: Node) -> bool {
        debug_assert_eq!(hash, self.hash(path.as_str()));
        let address = self.address(hash);
        let slot = Slot { hash, path, node };
        match self.buckets.get_mut(&address) {
            Some(bucket) => {
                if let Some(old) = bucket.iter_mut().find(|s| s.is(hash, slot.path.as_str())) {
                    *old = slot;
                    return false;
                }
                let mut slots = core::mem::take(bucket).into_vec();
                slots.reserve_exact(1);
                slots.push(slot);
                *bucket = slots.into_boxed_slice();
            }
            None => {
                self.buckets.insert_mut(address, Box::new([slot]));
            }
        }
        self.len += 1;
        if self.len > LOAD * self.bucket_count() as usize {
            self.split_one();
        }
        true
    }

    pub(crate) fn remove(&mut self, path: &str) -> Option<Node> {
        let hash = self.hash(path);
        let address = self.address(hash);
        let bucket = self.buckets.get_mut(&address)?;
        let i = bucket.iter().position(|s| s.is(hash, path))?;
        let mut slots = core::mem::take(bucket).into_vec();
        let removed = slots.remove(i);
        if slots.is_empty() {
            self.buckets.remove_mut(&address);
        } else {
            *bucket = slots.into_boxed_slice();
        }
        self.len -= 1;
        Some(removed.node)
    }

    /// Grows the table ahead of `additional` inserts, so that they cause no
    /// split (a bulk load then fills each bucket once, in address order).
    pub(crate) fn reserve(&mut self, additional: usize) {
        while self.len + additional > LOAD * self.bucket_count() as usize {
            self.split_one();
        }
    }

    /// Splits the next bucket of the round: the nodes whose hash has bit
    /// `level` set move to the bucket `2^level` further.
    fn split_one(&mut self) {
        let from = self.split;
        let bit = 1u64 << self.level;
        self.split += 1;
        if self.split == bit {
            self.level += 1;
            self.split = 0;
        }
        // (Nothing moves from a full bucket once in 2^LOAD splits: not
        // worth a second lookup to avoid copying it then.)
        let Some(bucket) = self.buckets.get_mut(&from) else { return };
        let (moved, kept): (Vec<Slot>, Vec<Slot>) =
            core::mem::take(bucket).into_vec().into_iter().partition(|s| s.hash & bit != 0);
        if kept.is_empty() {
            self.buckets.remove_mut(&from);
        } else {
            *bucket = kept.into_boxed_slice();
        }
        if !moved.is_empty() {
            self.buckets.insert_mut(from + bit, moved.into_boxed_slice());
        }
    }


    /// Every node, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Path, &Node)> + '_ {
        self.buckets.values().flat_map(|b| b.iter().map(|s| (&s.path, &s.node)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Children, Value};
    use crate::perms::{DomId, Perms};
    use alloc::collections::BTreeMap;
    use alloc::format;
    use alloc::string::String;
    use proptest::prelude::*;

    fn node(generation: u64) -> Node {
        Node { value: Value::default(), perms: Perms::owned_by(DomId(0)), children: Children::default(), generation }
    }

    #[test]
    fn a_slot_is_one_cache_line() {
        assert_eq!(core::mem::size_of::<Slot>(), 64);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u64),
        Remove(u16),
        Update(u16, u64),
        Snapshot,
    }

    fn op() -> impl Strategy<Value = Op> {
        // A small key space, so that keys are removed and re-inserted.
        prop_oneof![
            4 => (0u16..600, any::<u64>()).prop_map(|(k, g)| Op::Insert(k, g)),
            2 => (0u16..600).prop_map(Op::Remove),
            1 => (0u16..600, any::<u64>()).prop_map(|(k, g)| Op::Update(k, g)),
            1 => Just(Op::Snapshot),
        ]
    }

    fn check(table: &NodeTable, model: &BTreeMap<String, u64>) {
        assert_eq!(table.len(), model.len());
        assert_eq!(table.iter().count(), model.len());
        for (p, n) in table.iter() {
            assert_eq!(model.get(p.as_str()), Some(&n.generation), "{p:?}");
        }
        for (k, g) in model {
            assert_eq!(table.get(k).map(|n| n.generation), Some(*g), "{k}");
        }
    }

    proptest! {
        /// The table against a map, with older versions kept unchanged by
        /// the newer ones' inserts, removals, updates and splits.
        #[test]
        fn behaves_like_a_map_and_versions_stay_apart(ops in proptest::collection::vec(op(), 1..1500)) {
            let mut table = NodeTable::new(Hasher::default());
            let mut model: BTreeMap<String, u64> = BTreeMap::new();
            let mut kept: Vec<(NodeTable, BTreeMap<String, u64>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(k, g) => {
                        let path = format!("/k/{k}");
                        let new = table.insert(Path::new(&path).unwrap(), node(g));
                        prop_assert_eq!(new, model.insert(path, g).is_none());
                    }
                    Op::Remove(k) => {
                        let path = format!("/k/{k}");
                        let removed = table.remove(&path).map(|n| n.generation);
                        prop_assert_eq!(removed, model.remove(&path));
                    }
                    Op::Update(k, g) => {
                        let path = format!("/k/{k}");
                        if let Some(n) = table.get_mut(&path) {
                            n.generation = g;
                        }
                        if let Some(m) = model.get_mut(&path) {
                            *m = g;
                        }
                    }
                    Op::Snapshot => kept.push((table.clone(), model.clone())),
                }
                prop_assert!(!table.contains("/k/none"));
            }
            check(&table, &model);
            for (t, m) in &kept {
                check(t, m);
            }
        }
    }

    #[test]
    fn grows_to_the_load_and_reserve_avoids_splits_during_a_bulk_load() {
        let mut table = NodeTable::new(Hasher::default());
        table.reserve(10_000);
        let buckets = table.bucket_count();
        assert!(buckets as usize * LOAD >= 10_000 && (buckets as usize - 1) * LOAD < 10_000);
        for i in 0..10_000u64 {
            assert!(table.insert(Path::new(&format!("/n{i}")).unwrap(), node(i)));
        }
        assert_eq!(table.bucket_count(), buckets, "no split during the load");
        for i in 0..10_000u64 {
            assert_eq!(table.get(&format!("/n{i}")).map(|n| n.generation), Some(i));
        }
    }
}
