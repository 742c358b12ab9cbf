//! Immutable versions of the whole store, and the primitive mutations that
//! derive one version from another.
//!
//! A [`Snapshot`] is a persistent table from [`Path`] to [`Node`] (small
//! buckets of nodes in a persistent vector, see `table.rs`) plus
//! the per-domain node counts and the generation counter. Cloning one is a
//! reference-count increment; a mutation copies only the changed nodes'
//! buckets and the trie nodes on the way to them (`O(log n)`), so every
//! older version stays valid and shared.
//!
//! Invariants (checked by [`Snapshot::check_consistent`]):
//! 1. `/` exists; every other tree node's parent exists and lists it exactly
//!    once among its children; every listed child exists.
//! 2. Special nodes (`@...`) have no parent and no children.
//! 3. `owned_count(d)` equals the number of tree nodes whose owner is `d`.
//! 4. Every node's generation is below `next_generation()`.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use archery::ArcTK;
use rpds::HashTrieMap;

use crate::error::{BuildError, EngineError, Inconsistency};
use crate::node::{Children, Node, Value};
use crate::path::Path;
use crate::perms::{DomId, Perms};

type CountMap = HashTrieMap<DomId, u32, ArcTK, foldhash::fast::RandomState>;

mod radix;
mod table;
use table::{Hasher, NodeTable};

/// One immutable version of the store. `Send + Sync`: readers on any thread
/// may hold one while commits publish newer versions.
#[derive(Clone)]
pub struct Snapshot(Arc<Inner>);

#[derive(Clone)]
struct Inner {
    nodes: NodeTable,
    owners: CountMap,
    tree_nodes: usize,
    next_generation: u64,
    /// Paths of the special nodes, in insertion order (a handful): listing
    /// them must not scan the whole trie. Shared between versions: a new
    /// version of the store must not copy it.
    specials: Arc<[Path]>,
}

/// A hint to the CPU that `p` will be read soon; never faults.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    // SAFETY: a prefetch is only a hint: it reads nothing architecturally
    // and does not fault on any address.
    unsafe {
        core::arch::x86_64::_mm_prefetch(p.cast::<i8>(), core::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    let _ = p;
}

/// Nodes of [`Snapshot::from_entries`] completed but not yet stored.
struct Pending {
    nodes: Vec<Option<(Path, Node)>>,
}

/// What one primitive mutation did, as the server needs it to fire watches
/// (PROTOCOL.md §6.3) and as a commit reports it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Change {
    /// `path` was written, or created (with any missing ancestors) by WRITE
    /// or MKDIR.
    Written { path: Path, created: bool },
    /// `path` and its subtree were removed. `descendants` lists the removed
    /// nodes below `path`, children before parents, each with the
    /// permissions it had.
    Removed { path: Path, perms: Perms, descendants: Vec<(Path, Perms)> },
    /// The permissions of `path` changed from `old` to `new`.
    PermsSet { path: Path, old: Perms, new: Perms },
}

impl Change {
    pub fn path(&self) -> &Path {
        match self {
            Change::Written { path, .. } | Change::Removed { path, .. } | Change::PermsSet { path, .. } => path,
        }
    }
}

/// A primitive mutation. Transactions log these and replay them onto the
/// newest root at commit.
#[derive(Clone, Debug)]
pub(crate) enum Mutation {
    /// Set the value of `path`, creating it and missing ancestors if needed.
    /// Created nodes copy their parent's permissions, with the owner
    /// replaced by `creator` when given (PROTOCOL.md §4.2).
    Write { path: Path, value: Value, creator: Option<DomId> },
    /// Create `path` with an empty value if it is missing.
    Mkdir { path: Path, creator: Option<DomId> },
    /// Remove `path` and its subtree if it exists.
    Remove { path: Path },
    /// Replace the permissions of an existing node (special nodes included).
    SetPerms { path: Path, perms: Perms },
}

/// One node of a snapshot in a form that can be written out and read back:
/// the unit of [`Snapshot::iter_tree`] and [`Snapshot::from_entries`].
#[derive(Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TreeEntry<V = Vec<u8>> {
    pub path: Path,
    /// The value's bytes: owned, or borrowed from a buffer being decoded
    /// (a checkpoint loader then copies each value once, into the store).
    pub value: V,
    pub perms: Perms,
    pub generation: u64,
}

impl Snapshot {
    /// A store holding only `/` with the given permissions.
    pub fn new(root_perms: Perms) -> Snapshot {
        Snapshot::with_hasher(root_perms, Hasher::default())
    }

    fn with_hasher(root_perms: Perms, hasher: Hasher) -> Snapshot {
        let mut s = Snapshot(Arc::new(Inner {
            nodes: NodeTable::new(hasher),
            owners: CountMap::new_with_hasher_and_ptr_kind(foldhash::fast::RandomState::default()),
            tree_nodes: 0,
            next_generation: 0,
            specials: Arc::from([]),
        }));
        let generation = s.fresh_generation();
        s.insert_new(
            Path::root(),
            Node { value: Value::default(), perms: root_perms, children: Children::default(), generation },
        );
        s
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.0.nodes.get(path)
    }

    pub fn contains(&self, path: &str) -> bool {
        self.0.nodes.contains(path)
    }

    /// Nodes in the tree (special nodes not included).
    pub fn len(&self) -> usize {
        self.0.tree_nodes
    }

    /// Never true: `/` always exists.
    pub fn is_empty(&self) -> bool {
        self.0.tree_nodes == 0
    }

    /// Tree nodes owned by `domid` (entry 0 of their permissions).
    pub fn owned_count(&self, domid: DomId) -> u32 {
        self.0.owners.get(&domid).copied().unwrap_or(0)
    }

    /// Every domain owning at least one node, with its count.
    pub fn owners(&self) -> impl Iterator<Item = (DomId, u32)> + '_ {
        self.0.owners.iter().map(|(d, n)| (*d, *n))
    }

    /// The generation the next modified node will get.
    pub fn next_generation(&self) -> u64 {
        self.0.next_generation
    }

    /// True if nothing else holds this version (it may change in place).
    pub(crate) fn is_unique(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// True if both are the very same version (O(1)).
    pub fn same_version(&self, other: &Snapshot) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The tree in pre-order from `/`, children in creation order: the order
    /// checkpoints and the migration stream use. Special nodes are not included.
    pub fn iter_tree(&self) -> TreeIter<'_> {
        self.iter_subtree(&Path::root())
    }

    /// The subtree at `path` in pre-order (empty if `path` is missing).
    pub fn iter_subtree(&self, path: &Path) -> TreeIter<'_> {
        let stack = if self.contains(path.as_str()) { alloc::vec![path.clone()] } else { Vec::new() };
        TreeIter { snapshot: self, stack }
    }

    /// The whole tree in the order of [`Snapshot::iter_tree`], for walks of
    /// every node (checkpoints, live-update dumps): each path is built in
    /// one buffer as the walk goes, so the walk allocates nothing per node.
    ///
    /// Each lookup is a chain of cache misses (trie levels, bucket, paths),
    /// so the walk asks for the buckets of the siblings [`AHEAD`] places
    /// further while it visits one: their misses overlap instead of coming
    /// one after another.
    pub fn for_each_in_tree(&self, mut f: impl FnMut(&str, &Node)) {
        const AHEAD: usize = 16;
        let Some(root) = self.get("/") else { return };
        f("/", root);
        let (mut path, mut ahead_path) = (alloc::string::String::from("/"), alloc::string::String::new());
        let mut ask = |parent: &str, name: &str| {
            crate::path::join(&mut ahead_path, parent, name);
            self.0.nodes.prefetch(&ahead_path);
        };
        // Each open node: its children still to visit, the ones to ask for
        // next, and its path's length.
        let mut ahead = root.children.iter();
        ahead.by_ref().take(AHEAD).for_each(|n| ask("/", n));
        let mut open: Vec<(crate::node::NameIter<'_>, crate::node::NameIter<'_>, usize)> =
            alloc::vec![(root.children.iter(), ahead, 1)];
        while let Some((names, ahead, len)) = open.last_mut() {
            let Some(name) = names.next() else {
                open.pop();
                continue;
            };
            path.truncate(*len);
            if let Some(next) = ahead.next() {
                ask(&path, next);
            }
            if *len > 1 {
                path.push('/');
            }
            path.push_str(name);
            let Some(node) = self.get(&path) else { continue };
            f(&path, node);
            if !node.children.is_empty() {
                let mut ahead = node.children.iter();
                ahead.by_ref().take(AHEAD).for_each(|n| ask(&path, n));
                open.push((node.children.iter(), ahead, path.len()));
            }
        }
    }

    /// The special nodes (`@introduceDomain`, `@releaseDomain`, ...).
    pub fn special_nodes(&self) -> impl Iterator<Item = (&Path, &Node)> + '_ {
        self.0.specials.iter().filter_map(|p| Some((p, self.get(p.as_str())?)))
    }

    /// Stores a special node (no parent, no children, not counted).
    fn insert_special(&mut self, path: Path, node: Node) {
        let inner = self.inner();
        if !inner.specials.contains(&path) {
            inner.specials = inner.specials.iter().cloned().chain([path.clone()]).collect();
        }
        inner.nodes.insert(path.as_str(), node);
    }

    /// Every node as a [`TreeEntry`]: the tree in pre-order, then special nodes.
    pub fn entries(&self) -> impl Iterator<Item = TreeEntry> + '_ {
        let entry = |(path, node): (&Path, &Node)| TreeEntry {
            path: path.clone(),
            value: node.value.as_bytes().to_vec(),
            perms: node.perms.clone(),
            generation: node.generation,
        };
        self.iter_tree().map(move |(p, n)| entry((&p, n))).chain(self.special_nodes().map(entry))
    }

    /// Rebuilds a snapshot from entries as [`Snapshot::entries`] yields them:
    /// `/` first, every tree node after its parent (children are listed in
    /// the order they appear), special nodes anywhere. Generations are kept;
    /// the counter resumes above the largest.
    pub fn from_entries<V: AsRef<[u8]>, I: IntoIterator<Item = TreeEntry<V>>>(
        entries: I,
    ) -> Result<Snapshot, BuildError> {
        let mut iter = entries.into_iter();
        let root = iter.next().ok_or(BuildError::MissingRoot)?;
        if !root.path.is_root() {
            return Err(BuildError::MissingRoot);
        }
        let mut s = Snapshot::with_hasher(root.perms.clone(), Hasher::default());
        let mut pending = Pending { nodes: Vec::new() };
        let mut max_generation = root.generation;
        // The chain of nodes whose children are still being collected: each
        // is a child of the one below. In pre-order input every node is
        // completed when the walk leaves its subtree, so each children list
        // is built once (linear time); other parent-first orders fall back
        // to appending to an already stored parent.
        let node = |e: &TreeEntry<V>| Node {
            value: Value::new(e.value.as_ref()),
            perms: e.perms.clone(),
            children: Children::default(),
            generation: e.generation,
        };
        let mut open: Vec<(Path, Node, Vec<Path>)> = alloc::vec![(root.path.clone(), node(&root), Vec::new())];
        for e in iter {
            max_generation = max_generation.max(e.generation);
            if e.path.is_special() {
                if s.contains(e.path.as_str()) {
                    return Err(BuildError::Duplicate(e.path));
                }
                let n = node(&e);
                s.insert_special(e.path, n);
                continue;
            }
            let parent = e.path.parent_str().ok_or(BuildError::Duplicate(e.path.clone()))?;
            while let Some((top, _, _)) = open.last() {
                if crate::path::is_under(parent, top.as_str()) {
                    break;
                }
                s.close_built(&mut open, &mut pending);
            }
            // Duplicates of stored nodes are caught when stored (the trie
            // does not grow); of open ones here.
            if open.iter().any(|(p, _, _)| *p == e.path) {
                return Err(BuildError::Duplicate(e.path));
            }
            match open.last_mut() {
                Some((top, _, children)) if top.as_str() == parent => children.push(e.path.clone()),
                _ => {
                    // Not pre-order: the parent was closed already.
                    s.store_pending(&mut pending)?;
                    let parent = e.path.parent().ok_or(BuildError::MissingRoot)?;
                    if s.contains(e.path.as_str()) {
                        return Err(BuildError::Duplicate(e.path));
                    }
                    if !s.update_node(&parent, |p| p.children.append(e.path.name())) {
                        return Err(BuildError::MissingParent(e.path));
                    }
                }
            }
            let n = node(&e);
            open.push((e.path, n, Vec::new()));
        }
        while !open.is_empty() {
            s.close_built(&mut open, &mut pending);
        }
        s.store_pending(&mut pending)?;
        s.inner().next_generation = max_generation + 1;
        Ok(s)
    }

    /// Completes the innermost open node of `from_entries` with its
    /// children and queues it for storing (the root is stored at once).
    fn close_built(&mut self, open: &mut Vec<(Path, Node, Vec<Path>)>, pending: &mut Pending) {
        let Some((path, mut node, children)) = open.pop() else { return };
        if !children.is_empty() {
            node.children = Children::from_names(children.iter().map(Path::name));
        }
        if path.is_root() {
            // `Snapshot::new` stored and counted the root already.
            let old_owner = self.get("/").map(|n| n.perms.owner());
            if let Some(o) = old_owner {
                self.count_owner(o, -1);
            }
            self.count_owner(node.perms.owner(), 1);
            self.inner().nodes.insert(path.as_str(), node);
        } else {
            pending.nodes.push(Some((path, node)));
        }
    }

    /// Stores the queued nodes in the trie's own order (the hash, lowest
    /// bits first, as the trie indexes it): each insert then walks the
    /// trie nodes the previous one just touched, instead of a cold path
    /// per node. This halves the time to build a 1M-node tree.
    fn store_pending(&mut self, pending: &mut Pending) -> Result<(), BuildError> {
        let mut nodes: Vec<Option<(Path, Node)>> = core::mem::take(&mut pending.nodes);
        let table = &mut self.inner().nodes;
        // Sort small (key, index) pairs, not the nodes themselves. A
        // bucket's address is the low bits of the hash: in the order of the
        // reversed hash, each bucket's nodes come together. With the table
        // grown first, each bucket is then filled in one go.
        table.reserve(nodes.len());
        let mut order: Vec<(u64, usize)> = nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| Some((table.hash(n.as_ref()?.0.as_str()).reverse_bits(), i)))
            .collect();
        order.sort_unstable();
        // Owners are counted once per domain at the end, not per node.
        let mut owners: alloc::collections::BTreeMap<DomId, i64> = alloc::collections::BTreeMap::new();
        const AHEAD: usize = 16;
        let count = order.len();
        let sorted = (0..count).filter_map(|j| {
            // The nodes come in hash order, so their memory is visited at
            // random: ask for the slot 2×AHEAD ahead, and for the key of
            // the one AHEAD ahead (its slot is in cache by then).
            if let Some(&(_, far)) = order.get(j + 2 * AHEAD) {
                prefetch(nodes.as_ptr().wrapping_add(far));
            }
            if let Some(Some((p, _))) = order.get(j + AHEAD).and_then(|&(_, near)| nodes.get(near)) {
                prefetch(p.as_str().as_ptr());
            }
            let (key, i) = order[j];
            let (path, node) = nodes.get_mut(i).and_then(Option::take)?;
            *owners.entry(node.perms.owner()).or_default() += 1;
            Some((key.reverse_bits(), path, node))
        });
        table.insert_new_sorted(sorted).map_err(BuildError::Duplicate)?;
        self.inner().tree_nodes += count;
        for (domid, n) in owners {
            self.count_owner(domid, n);
        }
        Ok(())
    }

    /// Verifies the invariants listed in the module documentation, in one
    /// pass without per-node allocation.
    ///
    /// "Listed exactly once" follows from: every listed child exists, no
    /// list names a child twice, every non-root node's parent exists, and
    /// the lists hold as many entries as there are non-root nodes (a listed
    /// path is determined by its parent and name, so distinct entries are
    /// distinct nodes).
    pub fn check_consistent(&self) -> Result<(), Inconsistency> {
        if !self.contains("/") {
            return Err(Inconsistency::MissingRoot);
        }
        let mut counts: alloc::collections::BTreeMap<DomId, u32> = alloc::collections::BTreeMap::new();
        let mut tree_nodes = 0usize;
        let mut listed = 0usize;
        let mut names: Vec<&str> = Vec::new();
        let mut child = alloc::string::String::new();
        for (path, node) in self.0.nodes.iter() {
            if node.generation >= self.0.next_generation {
                return Err(Inconsistency::GenerationAhead(Path::stored(path)));
            }
            if path.starts_with('@') {
                if !node.children.is_empty() {
                    return Err(Inconsistency::SpecialWithChildren(Path::stored(path)));
                }
                continue;
            }
            tree_nodes += 1;
            *counts.entry(node.perms.owner()).or_default() += 1;
            if crate::path::parent_of(path).is_some_and(|p| !self.contains(p)) {
                return Err(Inconsistency::NotListedByParent(Path::stored(path)));
            }
            names.clear();
            for name in node.children.iter() {
                crate::path::join(&mut child, path, name);
                if name.is_empty() || name.contains('/') || !self.contains(&child) {
                    return Err(Inconsistency::MissingChild(Path::stored(&child)));
                }
                names.push(name);
            }
            names.sort_unstable();
            if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                return Err(Inconsistency::NotListedByParent(Path::stored(path).child(w[0])));
            }
            listed += names.len();
        }
        if tree_nodes != self.0.tree_nodes {
            return Err(Inconsistency::NodeCount { counted: tree_nodes, recorded: self.0.tree_nodes });
        }
        if listed + 1 != tree_nodes {
            return Err(Inconsistency::NodeCount { counted: listed + 1, recorded: tree_nodes });
        }
        let recorded: alloc::collections::BTreeMap<DomId, u32> = self.owners().filter(|(_, n)| *n > 0).collect();
        if counts != recorded {
            return Err(Inconsistency::OwnerCounts);
        }
        Ok(())
    }

    // ---- recovery: replaying logged node states exactly ----

    /// Sets `path` to exactly this value, permissions and generation, as a
    /// commit log recorded it: an existing node keeps its children and its
    /// place; a missing one is appended to its parent's children (the parent
    /// must exist). The generation counter moves above `generation`.
    pub fn restore_node(&mut self, path: &Path, value: &[u8], perms: Perms, generation: u64) -> Result<(), BuildError> {
        let value = Value::new(value);
        if path.is_special() {
            let node = Node { value: Value::default(), perms, children: Children::default(), generation };
            self.insert_special(path.clone(), node);
        } else if let Some(old) = self.get(path.as_str()) {
            let old_owner = old.perms.owner();
            self.count_owner(old_owner, -1);
            self.count_owner(perms.owner(), 1);
            self.update_node(path, |n| {
                n.value = value;
                n.perms = perms;
                n.generation = generation;
            });
        } else {
            let parent = path.parent().ok_or(BuildError::MissingRoot)?;
            if !self.update_node(&parent, |p| p.children.append(path.name())) {
                return Err(BuildError::MissingParent(path.clone()));
            }
            self.insert_new(path.clone(), Node { value, perms, children: Children::default(), generation });
        }
        let inner = self.inner();
        inner.next_generation = inner.next_generation.max(generation + 1);
        Ok(())
    }

    /// Removes `path` and its subtree as a commit log recorded it; the
    /// parent's generation is left to its own logged state. Missing: no-op.
    pub fn restore_removal(&mut self, path: &Path) -> Result<(), BuildError> {
        if path.is_root() || path.is_special() {
            return Err(BuildError::MissingRoot);
        }
        let parent_generation = path.parent().and_then(|p| self.get(p.as_str()).map(|n| n.generation));
        let counter = self.0.next_generation;
        if remove(self, path).is_some() {
            if let (Some(parent), Some(g)) = (path.parent(), parent_generation) {
                self.update_node(&parent, |n| n.generation = g);
            }
            self.inner().next_generation = counter;
        }
        Ok(())
    }

    /// Takes a transaction overlay's changes as they are (`view.rs`): each
    /// changed node replaced or removed, the owner and node counts moved by
    /// the overlay's deltas, the generation counter set past the overlay's.
    /// Only for the version the overlay was built over: the result is what
    /// replaying its mutations would give, for one table change per node.
    pub(crate) fn absorb(
        &mut self,
        nodes: impl IntoIterator<Item = (Path, Option<Node>)>,
        owners: impl IntoIterator<Item = (DomId, i64)>,
        tree_delta: isize,
        next_generation: u64,
    ) {
        let table = &mut self.inner().nodes;
        for (path, node) in nodes {
            match node {
                Some(node) => {
                    table.insert(path.as_str(), node);
                }
                None => {
                    table.remove(path.as_str());
                }
            }
        }
        for (domid, delta) in owners {
            if delta != 0 {
                self.count_owner(domid, delta);
            }
        }
        let inner = self.inner();
        inner.tree_nodes = inner.tree_nodes.saturating_add_signed(tree_delta);
        inner.next_generation = inner.next_generation.max(next_generation);
    }

    /// Raises the generation counter to at least `next`.
    pub fn restore_next_generation(&mut self, next: u64) {
        let inner = self.inner();
        inner.next_generation = inner.next_generation.max(next);
    }

    // ---- primitive mutations (crate-internal) ----

    fn inner(&mut self) -> &mut Inner {
        Arc::make_mut(&mut self.0)
    }

    /// This version with the special node `path` (`@introduceDomain`, ...)
    /// installed or replaced: how a daemon sets up its initial state.
    pub fn with_special(mut self, path: &Path, perms: Perms) -> Result<Snapshot, EngineError> {
        if !path.is_special() {
            return Err(EngineError::NotSpecial(path.clone()));
        }
        let generation = self.fresh_generation();
        let node = Node { value: Value::default(), perms, children: Children::default(), generation };
        self.insert_special(path.clone(), node);
        Ok(self)
    }
}

/// What the primitive mutations need of the version they change: a whole
/// [`Snapshot`] (changed in place where it owns its parts, copied on write
/// where it shares them) or a transaction's private overlay over one
/// (`view.rs`), which copies nothing of the shared version.
pub(crate) trait Nodes {
    fn node(&self, path: &str) -> Option<&Node>;
    /// Applies `f` to the node at `path`; `false` if it is missing.
    fn update_node(&mut self, path: &Path, f: impl FnOnce(&mut Node)) -> bool;
    /// Stores a node that did not exist, counting it for its owner.
    fn insert_new(&mut self, path: Path, node: Node);
    /// Forgets a tree node (the caller uncounts its owner).
    fn remove_node(&mut self, path: &Path);
    fn count_owner(&mut self, domid: DomId, delta: i64);
    /// The generation [`Nodes::fresh_generation`] will give next.
    fn next_generation(&self) -> u64;
    fn fresh_generation(&mut self) -> u64;
}

impl Nodes for Snapshot {
    fn node(&self, path: &str) -> Option<&Node> {
        self.get(path)
    }

    fn update_node(&mut self, path: &Path, f: impl FnOnce(&mut Node)) -> bool {
        // In place where this version owns the bucket and the trie nodes
        // on the way (a version's first change copies them, later ones do
        // not).
        match self.inner().nodes.get_mut(path.as_str()) {
            Some(node) => {
                f(node);
                true
            }
            None => false,
        }
    }

    fn insert_new(&mut self, path: Path, node: Node) {
        self.count_owner(node.perms.owner(), 1);
        let inner = self.inner();
        inner.tree_nodes += 1;
        inner.nodes.insert(path.as_str(), node);
    }

    fn remove_node(&mut self, path: &Path) {
        let inner = self.inner();
        if inner.nodes.remove(path.as_str()).is_some() {
            inner.tree_nodes -= 1;
        }
    }

    fn count_owner(&mut self, domid: DomId, delta: i64) {
        let inner = self.inner();
        let n = i64::from(inner.owners.get(&domid).copied().unwrap_or(0)) + delta;
        if n <= 0 {
            inner.owners.remove_mut(&domid);
        } else {
            inner.owners.insert_mut(domid, u32::try_from(n).unwrap_or(u32::MAX));
        }
    }

    fn next_generation(&self) -> u64 {
        Snapshot::next_generation(self)
    }

    fn fresh_generation(&mut self) -> u64 {
        let inner = self.inner();
        let g = inner.next_generation;
        inner.next_generation += 1;
        g
    }
}

/// Applies one primitive mutation; `Ok(None)` when it changes nothing.
pub(crate) fn apply(nodes: &mut impl Nodes, m: &Mutation) -> Result<Option<Change>, EngineError> {
    match m {
        Mutation::Write { path, value, creator } => {
            reject_special(path)?;
            // Most writes overwrite: one lookup that finds and changes the node.
            if overwrite(nodes, path, || value.clone(), |_| Ok::<_, core::convert::Infallible>(())).is_some() {
                Ok(Some(Change::Written { path: path.clone(), created: false }))
            } else {
                create(nodes, path, value.clone(), *creator);
                Ok(Some(Change::Written { path: path.clone(), created: true }))
            }
        }
        Mutation::Mkdir { path, creator } => {
            reject_special(path)?;
            if nodes.node(path.as_str()).is_some() {
                return Ok(None);
            }
            create(nodes, path, Value::default(), *creator);
            Ok(Some(Change::Written { path: path.clone(), created: true }))
        }
        Mutation::Remove { path } => {
            reject_special(path)?;
            if path.is_root() {
                return Err(EngineError::RootRemoval);
            }
            Ok(remove(nodes, path))
        }
        Mutation::SetPerms { path, perms } => {
            let old = nodes.node(path.as_str()).ok_or_else(|| EngineError::NotFound(path.clone()))?;
            let old = old.perms.clone();
            if !path.is_special() {
                nodes.count_owner(old.owner(), -1);
                nodes.count_owner(perms.owner(), 1);
            }
            let generation = nodes.fresh_generation();
            nodes.update_node(path, |n| {
                n.perms = perms.clone();
                n.generation = generation;
            });
            Ok(Some(Change::PermsSet { path: path.clone(), old, new: perms.clone() }))
        }
    }
}

/// Sets the value of the existing `path` to `value()` if `allow` accepts the
/// node as it is, on the one lookup that finds it, taking a generation only
/// if it does; `None` if `path` is missing.
pub(crate) fn overwrite<E>(
    nodes: &mut impl Nodes,
    path: &Path,
    value: impl FnOnce() -> Value,
    allow: impl FnOnce(&Node) -> Result<(), E>,
) -> Option<Result<(), E>> {
    let generation = nodes.next_generation();
    let mut verdict = None;
    nodes.update_node(path, |n| {
        let v = allow(n);
        if v.is_ok() {
            n.value = value();
            n.generation = generation;
        }
        verdict = Some(v);
    });
    if let Some(Ok(())) = verdict {
        nodes.fresh_generation();
    }
    verdict
}

/// Creates `path` and its missing ancestors top-down (PROTOCOL.md §4.2).
fn create(nodes: &mut impl Nodes, path: &Path, value: Value, creator: Option<DomId>) {
    // Walk up to the nearest existing ancestor, remembering the way down;
    // new nodes start from its permissions.
    let mut missing = alloc::vec![path.clone()];
    let mut parent = path.parent();
    let mut found = None;
    while let Some(p) = parent.take() {
        if let Some(n) = nodes.node(p.as_str()) {
            found = Some((p, n.perms.clone()));
            break;
        }
        parent = p.parent();
        missing.push(p);
    }
    let Some((mut parent, mut perms)) = found else { return };
    if let Some(creator) = creator {
        perms = perms.with_owner(creator);
    }
    while let Some(p) = missing.pop() {
        let parent_generation = nodes.fresh_generation();
        nodes.update_node(&parent, |n| {
            n.children.append(p.name());
            n.generation = parent_generation;
        });
        let value = if missing.is_empty() { value.clone() } else { Value::default() };
        let generation = nodes.fresh_generation();
        let node = Node { value, perms: perms.clone(), children: Children::default(), generation };
        nodes.insert_new(p.clone(), node);
        parent = p;
    }
}

/// Removes `path` and its subtree; `None` if it does not exist.
fn remove(nodes: &mut impl Nodes, path: &Path) -> Option<Change> {
    let perms = nodes.node(path.as_str())?.perms.clone();
    // Children before parents, as C fires the RM events (§6.3).
    let mut doomed: Vec<(Path, Perms)> = Vec::new();
    let mut stack: Vec<(Path, bool)> = alloc::vec![(path.clone(), false)];
    while let Some((p, expanded)) = stack.pop() {
        let Some(node) = nodes.node(p.as_str()) else { continue };
        if expanded {
            doomed.push((p, node.perms.clone()));
        } else {
            let children: Vec<Path> = node.children.iter().rev().map(|c| p.child(c)).collect();
            stack.push((p, true));
            stack.extend(children.into_iter().map(|c| (c, false)));
        }
    }
    for (p, perms) in &doomed {
        nodes.count_owner(perms.owner(), -1);
        nodes.remove_node(p);
    }
    if let Some(parent) = path.parent() {
        let generation = nodes.fresh_generation();
        let name = path.name();
        nodes.update_node(&parent, |n| {
            n.children.remove(name);
            n.generation = generation;
        });
    }
    doomed.pop(); // the last one is `path` itself
    Some(Change::Removed { path: path.clone(), perms, descendants: doomed })
}

fn reject_special(path: &Path) -> Result<(), EngineError> {
    if path.is_special() { Err(EngineError::SpecialPath(path.clone())) } else { Ok(()) }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("nodes", &self.len())
            .field("next_generation", &self.next_generation())
            .finish_non_exhaustive()
    }
}

/// Pre-order iterator over a (sub)tree; see [`Snapshot::iter_tree`].
#[derive(Debug)]
pub struct TreeIter<'a> {
    snapshot: &'a Snapshot,
    stack: Vec<Path>,
}

impl<'a> Iterator for TreeIter<'a> {
    type Item = (Path, &'a Node);

    fn next(&mut self) -> Option<Self::Item> {
        let path = self.stack.pop()?;
        let node = self.snapshot.get(path.as_str())?;
        self.stack.extend(node.children.iter().rev().map(|c| path.child(c)));
        Some((path, node))
    }
}

#[cfg(test)]
mod tests;
