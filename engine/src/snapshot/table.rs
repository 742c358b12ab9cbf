//! A snapshot's node table: path → node, persistent, shared between versions.
//!
//! A persistent hash-array-mapped trie (rpds) spends about 100 bytes of its
//! own on every entry (a trie leaf, the shared entry, its slot in a branch),
//! more than a whole node of C xenstored. So the nodes are kept in
//! *buckets* of a few, addressed by linear hashing: the table starts with
//! one bucket and splits one more, in order, each time the average load
//! passes [`LOAD`]. Growth is thus incremental (one small bucket rewritten
//! per insert at most, never a rehash of everything). A new bucket always
//! comes last, so the buckets sit in a persistent vector indexed by their
//! number: a radix trie with no keys and no hashing, whose cost is about
//! one pointer per bucket. A version that changes a node copies that
//! node's bucket (a few reference counts per node) plus the trie nodes
//! above it; every older version keeps its own.
//!
//! A bucket keeps its nodes in one exact-size array and their paths in one
//! byte string (see [`Bucket`]): a path costs its bytes and two more. The
//! table does not shrink: after mass removal the buckets stay, fewer nodes
//! in each.
//!
//! A bucket's address is the low bits of the hash, so paths that agree
//! there share a bucket, whose lookups and copies grow with it. Guests
//! choose path names; the hasher's seed is random per store (foldhash:
//! address-space layout and the clock, not a secret key), so crowding one
//! bucket needs the seed, and a guest's nodes are bounded by its quota.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::hash::BuildHasher;

use super::radix::Radix;
use crate::node::Node;
use crate::path::Path;

/// Hashes paths; random per table family (all versions of one store share it).
pub(crate) type Hasher = foldhash::fast::RandomState;
/// The average number of nodes per bucket above which the table grows by
/// one bucket. A lookup scans half a bucket's hashes on average, and a
/// version's first change in a bucket copies it whole; the trie's overhead
/// per node is divided by it.
const LOAD: usize = 8;

/// The nodes of one address, and their paths in one byte string: first a
/// byte of each path's hash (the top one: the address takes the low
/// ones), in node order, then each path after its length (LEB128). A path
/// costs its bytes plus two, and no allocation, header or pointer of its
/// own. A lookup scans the hash bytes, and compares a path only where they
/// match: about one in 256 of the others.
#[derive(Clone, Default)]
struct Bucket {
    nodes: Box<[Node]>,
    paths: Box<[u8]>,
}

/// The byte of a path's hash that a bucket keeps.
fn tag(hash: u64) -> u8 {
    (hash >> 56) as u8
}

/// The table's hash of a path's bytes.
fn hash_bytes(hasher: &Hasher, path: &[u8]) -> u64 {
    hasher.hash_one(path)
}

/// The bytes of a path's entry: its length (LEB128) and the path.
fn entry_len(len: usize) -> usize {
    let mut prefix = 1;
    while len.checked_shr(7 * prefix).is_some_and(|rest| rest != 0) {
        prefix += 1;
    }
    prefix as usize + len
}

/// Appends a path's entry (length and bytes) to a bucket's entries.
fn put_entry(out: &mut Vec<u8>, path: &[u8]) {
    let mut len = path.len();
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(path);
}

/// Where the path of the entry at `at` starts and ends.
#[inline]
fn entry(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
    let first = *bytes.get(at)?;
    if first < 0x80 {
        return Some((at + 1, at + 1 + usize::from(first)));
    }
    let (mut len, mut shift, mut i) = (0usize, 0, at);
    loop {
        let b = *bytes.get(i)?;
        i += 1;
        len |= usize::from(b & 0x7F) << shift;
        shift += 7;
        if b < 0x80 {
            return Some((i, i + len));
        }
    }
}

/// Where `path`, of hash `hash`, is among a bucket's `tags` and `entries`.
fn find_in(tags: &[u8], entries: &[u8], hash: u64, path: &[u8]) -> Option<usize> {
    let tag = tag(hash);
    // `at` is where entry `walked` starts.
    let (mut at, mut walked) = (0, 0);
    for (i, &t) in tags.iter().enumerate() {
        if t != tag {
            continue;
        }
        while walked < i {
            at = entry(entries, at)?.1;
            walked += 1;
        }
        let (start, end) = entry(entries, at)?;
        if entries.get(start..end) == Some(path) {
            return Some(i);
        }
        (at, walked) = (end, i + 1);
    }
    None
}

/// The entries of a bucket, in order: (entry start, entry end, path bytes),
/// offsets into the entries.
struct Entries<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = (usize, usize, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let at = self.at;
        let (start, end) = entry(self.bytes, at)?;
        self.at = end;
        Some((at, end, self.bytes.get(start..end)?))
    }
}

/// A stored path as a string: the bucket only ever stores a `&str`'s bytes.
fn as_str(path: &[u8]) -> &str {
    core::str::from_utf8(path).expect("bucket paths are stored from strings")
}

impl Bucket {
    fn tags(&self) -> &[u8] {
        self.paths.get(..self.nodes.len()).unwrap_or_default()
    }

    fn entries(&self) -> Entries<'_> {
        Entries { bytes: self.paths.get(self.nodes.len()..).unwrap_or_default(), at: 0 }
    }

    fn find(&self, hash: u64, path: &str) -> Option<usize> {
        let (tags, entries) = self.paths.split_at_checked(self.nodes.len())?;
        find_in(tags, entries, hash, path.as_bytes())
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &Node)> + '_ {
        self.entries().map(|(_, _, p)| as_str(p)).zip(self.nodes.iter())
    }

    /// Appends a node (the arrays are exact-size: one bucket of a version
    /// is rewritten per insert anyway).
    fn push(&mut self, hash: u64, path: &str, node: Node) {
        let paths = self.paths_with(hash, path);
        let mut nodes = core::mem::take(&mut self.nodes).into_vec();
        nodes.reserve_exact(1);
        nodes.push(node);
        *self = Bucket { nodes: nodes.into_boxed_slice(), paths };
    }

    /// A copy of this bucket with a node added (for a bucket another
    /// version shares: one copy, where a copy and then [`Bucket::push`]
    /// would make two).
    fn pushed(&self, hash: u64, path: &str, node: Node) -> Bucket {
        let mut nodes = Vec::with_capacity(self.nodes.len() + 1);
        nodes.extend(self.nodes.iter().cloned());
        nodes.push(node);
        Bucket { nodes: nodes.into_boxed_slice(), paths: self.paths_with(hash, path) }
    }

    /// This bucket's paths with one more entry.
    fn paths_with(&self, hash: u64, path: &str) -> Box<[u8]> {
        let mut paths = Vec::with_capacity(self.paths.len() + 1 + entry_len(path.len()));
        paths.extend_from_slice(self.tags());
        paths.push(tag(hash));
        paths.extend_from_slice(self.paths.get(self.nodes.len()..).unwrap_or_default());
        put_entry(&mut paths, path.as_bytes());
        paths.into_boxed_slice()
    }

    /// A copy of this bucket without node `i`, and that node.
    fn without(&self, i: usize) -> Option<(Bucket, Node)> {
        let removed = self.nodes.get(i)?.clone();
        let bytes =
            self.paths.len() - self.nodes.len() - self.entries().nth(i).map_or(0, |(start, end, _)| end - start);
        let mut copy = Builder::with_room(self.nodes.len() - 1, bytes);
        for (j, (((_, _, path), node), &t)) in self.entries().zip(self.nodes.iter()).zip(self.tags()).enumerate() {
            if j != i {
                copy.push(t, path, node.clone());
            }
        }
        Some((copy.build(), removed))
    }

    fn remove(&mut self, i: usize) -> Option<Node> {
        let n = self.nodes.len();
        let (start, end, _) = self.entries().nth(i)?;
        let mut paths = core::mem::take(&mut self.paths).into_vec();
        paths.drain(n + start..n + end);
        paths.remove(i);
        let mut nodes = core::mem::take(&mut self.nodes).into_vec();
        let removed = nodes.remove(i);
        *self = Bucket { nodes: nodes.into_boxed_slice(), paths: paths.into_boxed_slice() };
        Some(removed)
    }

    /// Splits off the nodes whose path's hash (by `hash`) has `bit` set.
    fn split(&self, hash: impl Fn(&[u8]) -> u64, bit: u64) -> (Bucket, Bucket) {
        // Sized exactly first: the new arrays are what the table keeps.
        let hashes: Vec<u64> = self.entries().map(|(_, _, path)| hash(path)).collect();
        let (mut kept, mut moved) = ((0, 0), (0, 0));
        for ((start, end, _), h) in self.entries().zip(&hashes) {
            let to = if h & bit != 0 { &mut moved } else { &mut kept };
            *to = (to.0 + 1, to.1 + end - start);
        }
        let (mut kept, mut moved) = (Builder::with_room(kept.0, kept.1), Builder::with_room(moved.0, moved.1));
        for (((_, _, path), node), &h) in self.entries().zip(self.nodes.iter()).zip(&hashes) {
            let to = if h & bit != 0 { &mut moved } else { &mut kept };
            to.push(tag(h), path, node.clone());
        }
        (kept.build(), moved.build())
    }
}

/// A bucket under construction.
#[derive(Default)]
struct Builder {
    nodes: Vec<Node>,
    tags: Vec<u8>,
    entries: Vec<u8>,
}

impl Builder {
    /// An empty builder with room for `nodes` nodes whose entries take
    /// `bytes` (so that [`Builder::build`] allocates nothing more).
    fn with_room(nodes: usize, bytes: usize) -> Builder {
        Builder {
            nodes: Vec::with_capacity(nodes),
            tags: Vec::with_capacity(nodes + bytes),
            entries: Vec::with_capacity(bytes),
        }
    }

    /// A builder holding a copy of `bucket`, with room for `nodes` more
    /// whose entries take `bytes`.
    fn copy_of(bucket: &Bucket, nodes: usize, bytes: usize) -> Builder {
        let entries = bucket.paths.get(bucket.nodes.len()..).unwrap_or_default();
        let mut built = Builder::with_room(bucket.nodes.len() + nodes, entries.len() + bytes);
        built.nodes.extend(bucket.nodes.iter().cloned());
        built.tags.extend_from_slice(bucket.tags());
        built.entries.extend_from_slice(entries);
        built
    }

    /// Adds a node, with its path's hash byte and its path.
    fn push(&mut self, tag: u8, path: &[u8], node: Node) {
        self.nodes.push(node);
        self.tags.push(tag);
        put_entry(&mut self.entries, path);
    }

    /// Whether `path` is in already.
    fn contains(&self, hash: u64, path: &str) -> bool {
        find_in(&self.tags, &self.entries, hash, path.as_bytes()).is_some()
    }

    fn build(mut self) -> Bucket {
        self.tags.extend_from_slice(&self.entries);
        Bucket { nodes: self.nodes.into_boxed_slice(), paths: self.tags.into_boxed_slice() }
    }
}

#[derive(Clone)]
pub(crate) struct NodeTable {
    /// Bucket `i` at index `i`: linear hashing only ever appends a bucket,
    /// so a persistent vector (a radix trie on the index: no keys, no
    /// hashing, no entry of its own per bucket) holds them.
    buckets: Radix<Bucket>,
    hasher: Hasher,
    len: usize,
    /// Linear hashing's round: buckets below `split` have been split into
    /// `2^(level+1)` addresses, the others are still at `2^level`.
    level: u32,
    split: usize,
}

/// Rounds stop here (2^31 buckets: far beyond any memory).
const MAX_LEVEL: u32 = 31;

impl NodeTable {
    pub(crate) fn new(hasher: Hasher) -> NodeTable {
        let mut buckets = Radix::new();
        buckets.push(Bucket::default());
        NodeTable { buckets, hasher, len: 0, level: 0, split: 0 }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The hash of a path's bytes (the same for a `&str` and for the bytes a
    /// bucket keeps, so that a split hashes those without decoding them).
    pub(crate) fn hash(&self, path: &str) -> u64 {
        hash_bytes(&self.hasher, path.as_bytes())
    }

    /// The bucket a path of this hash lives in.
    fn address(&self, hash: u64) -> usize {
        // Truncation intended: below 2^(MAX_LEVEL + 1).
        let low = (hash & ((1u64 << self.level) - 1)) as usize;
        if low < self.split { (hash & ((1u64 << (self.level + 1)) - 1)) as usize } else { low }
    }

    fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    fn bucket(&self, address: usize) -> Option<&Bucket> {
        self.buckets.get(address)
    }

    /// Where `path` is: its bucket and its index there.
    fn find(&self, hash: u64, path: &str) -> Option<(usize, usize)> {
        let address = self.address(hash);
        Some((address, self.bucket(address)?.find(hash, path)?))
    }

    pub(crate) fn get(&self, path: &str) -> Option<&Node> {
        let (address, i) = self.find(self.hash(path), path)?;
        self.bucket(address)?.nodes.get(i)
    }

    /// Asks the CPU for what a lookup of `path` will read (the bucket's
    /// arrays), without waiting for it.
    pub(crate) fn prefetch(&self, path: &str) {
        if let Some(bucket) = self.bucket(self.address(self.hash(path))) {
            super::prefetch(bucket.nodes.as_ptr());
            super::prefetch(bucket.paths.as_ptr());
        }
    }

    pub(crate) fn contains(&self, path: &str) -> bool {
        self.find(self.hash(path), path).is_some()
    }

    /// The node at `path`, made this version's own (its bucket and the trie
    /// nodes above are copied if another version shares them). A missing
    /// path copies nothing.
    pub(crate) fn get_mut(&mut self, path: &str) -> Option<&mut Node> {
        let (address, i) = self.find(self.hash(path), path)?;
        self.buckets.get_mut(address)?.nodes.get_mut(i)
    }

    /// Inserts `node` at `path`, replacing the node stored there, if any;
    /// true if `path` was new.
    pub(crate) fn insert(&mut self, path: &str, node: Node) -> bool {
        let hash = self.hash(path);
        if let Some((address, i)) = self.find(hash, path) {
            if let Some(old) = self.buckets.get_mut(address).and_then(|b| b.nodes.get_mut(i)) {
                *old = node;
            }
            return false;
        }
        self.buckets.update(self.address(hash), |bucket| match bucket {
            Ok(own) => (None, own.push(hash, path, node)),
            Err(shared) => (Some(shared.pushed(hash, path, node)), ()),
        });
        self.len += 1;
        if self.len > LOAD * self.bucket_count() {
            self.split_one();
        }
        true
    }

    pub(crate) fn remove(&mut self, path: &str) -> Option<Node> {
        let (address, i) = self.find(self.hash(path), path)?;
        let removed = self
            .buckets
            .update(address, |bucket| match bucket {
                Ok(own) => (None, own.remove(i)),
                Err(shared) => shared.without(i).map_or((None, None), |(copy, node)| (Some(copy), Some(node))),
            })
            .flatten()?;
        self.len -= 1;
        Some(removed)
    }

    /// Inserts paths that must be new, given with their hashes in the order
    /// of the reversed hashes, so that each bucket's come together: each
    /// bucket is then rebuilt once (a bulk load, after
    /// [`NodeTable::reserve`]). A path already there, or given twice, is
    /// returned as an error; the table then holds an unspecified part of
    /// the batch.
    pub(crate) fn insert_new_sorted(&mut self, items: impl Iterator<Item = (u64, Path, Node)>) -> Result<(), Path> {
        let mut items = items.peekable();
        let mut group: Vec<(u64, Path, Node)> = Vec::new();
        while let Some(first) = items.next() {
            let address = self.address(first.0);
            group.clear();
            group.push(first);
            while let Some(next) = items.next_if(|(hash, _, _)| self.address(*hash) == address) {
                group.push(next);
            }
            let bucket = self.bucket(address).ok_or_else(|| group[0].1.clone())?;
            let bytes = group.iter().map(|(_, path, _)| entry_len(path.as_str().len())).sum();
            let mut built = Builder::copy_of(bucket, group.len(), bytes);
            for (hash, path, node) in group.drain(..) {
                if built.contains(hash, path.as_str()) {
                    return Err(path);
                }
                built.push(tag(hash), path.as_str().as_bytes(), node);
                self.len += 1;
            }
            self.buckets.set(address, built.build());
        }
        while self.len > LOAD * self.bucket_count() && self.level < MAX_LEVEL {
            self.split_one();
        }
        Ok(())
    }

    /// Grows the table ahead of `additional` inserts, so that they cause no
    /// split (a bulk load then fills each bucket once, in address order).
    pub(crate) fn reserve(&mut self, additional: usize) {
        while self.len + additional > LOAD * self.bucket_count() && self.level < MAX_LEVEL {
            self.split_one();
        }
    }

    /// Splits the next bucket of the round: the nodes whose hash has bit
    /// `level` set move to the bucket `2^level` further, which is the new
    /// last one.
    fn split_one(&mut self) {
        if self.level >= MAX_LEVEL {
            return;
        }
        let from = self.split;
        let bit = 1u64 << self.level;
        debug_assert_eq!(from + (1usize << self.level), self.bucket_count());
        self.split += 1;
        if self.split == 1usize << self.level {
            self.level += 1;
            self.split = 0;
        }
        let hasher = &self.hasher;
        let hash = |path: &[u8]| hash_bytes(hasher, path);
        let (kept, moved) = self.bucket(from).map(|b| b.split(hash, bit)).unwrap_or_default();
        // A bucket nothing leaves stays as it is (shared with older versions).
        if !moved.nodes.is_empty() {
            self.buckets.set(from, kept);
        }
        self.buckets.push(moved);
    }

    /// Every node with its path, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Node)> + '_ {
        self.buckets.iter().flat_map(Bucket::iter)
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
    fn a_node_is_40_bytes() {
        assert_eq!(core::mem::size_of::<Node>(), 40);
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
            assert_eq!(model.get(p), Some(&n.generation), "{p:?}");
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
                        let new = table.insert(&path, node(g));
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
    fn paths_of_any_length_are_found_listed_and_removed() {
        let mut table = NodeTable::new(Hasher::default());
        let paths: Vec<String> = [1usize, 126, 127, 128, 129, 300, 16_383, 16_384, 20_000]
            .iter()
            .enumerate()
            .map(|(i, &len)| format!("/{i}{}", "x".repeat(len)))
            .collect();
        for (g, p) in paths.iter().enumerate() {
            assert!(table.insert(p, node(g as u64)));
        }
        for (g, p) in paths.iter().enumerate() {
            assert_eq!(table.get(p).map(|n| n.generation), Some(g as u64));
            assert!(!table.contains(&p[..p.len() - 1]));
        }
        let listed: BTreeMap<&str, u64> = table.iter().map(|(p, n)| (p, n.generation)).collect();
        assert_eq!(listed.len(), paths.len());
        for (i, p) in paths.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            assert_eq!(table.remove(p).map(|n| n.generation), Some(i as u64));
        }
        for (i, p) in paths.iter().enumerate() {
            assert_eq!(table.contains(p), i % 2 == 1, "{}", p.len());
        }
    }

    #[test]
    fn entry_len_is_what_put_entry_writes() {
        for len in [0usize, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            let mut out = Vec::new();
            put_entry(&mut out, &alloc::vec![b'x'; len]);
            assert_eq!(entry_len(len), out.len(), "{len}");
        }
    }

    #[test]
    fn grows_to_the_load_and_reserve_avoids_splits_during_a_bulk_load() {
        let mut table = NodeTable::new(Hasher::default());
        table.reserve(10_000);
        let buckets = table.bucket_count();
        assert!(buckets * LOAD >= 10_000 && (buckets - 1) * LOAD < 10_000);
        for i in 0..10_000u64 {
            assert!(table.insert(&format!("/n{i}"), node(i)));
        }
        assert_eq!(table.bucket_count(), buckets, "no split during the load");
        for i in 0..10_000u64 {
            assert_eq!(table.get(&format!("/n{i}")).map(|n| n.generation), Some(i));
        }
    }
}
