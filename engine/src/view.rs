//! What a transaction reads and changes: [`TxView`].
//!
//! A transaction run on the newest version under the commit lock
//! ([`crate::Store::update`]) changes that version itself. Any other
//! transaction keeps its changes to itself, in an *overlay*: the nodes it
//! created, changed or removed, over the version it forked from. Reads
//! look in the overlay first. Nothing of the shared version is copied: a
//! change to the shared trie would copy the node's bucket and the trie
//! nodes above it, only for the commit to replay the change onto the
//! newest version (copying again) and drop this copy.

use alloc::collections::BTreeMap;

use crate::node::Node;
use crate::path::Path;
use crate::perms::DomId;
use crate::snapshot::{Nodes, Snapshot};

/// A transaction's view of the tree: its fork point with its own changes.
#[derive(Debug)]
pub struct TxView(Repr);

#[derive(Debug)]
enum Repr {
    /// The newest version itself, changed in place (or copied on write).
    Whole(Snapshot),
    Overlay(Overlay),
}

/// A transaction's changes over the version it forked from.
struct Overlay {
    base: Snapshot,
    /// Each changed path: its node now, or `None` if this transaction
    /// removed it. Guests choose the paths: the hasher is seeded at random.
    nodes: hashbrown::HashMap<Path, Option<Node>, foldhash::fast::RandomState>,
    /// Owned-node count changes per domain.
    owners: BTreeMap<DomId, i64>,
    tree_nodes: isize,
    next_generation: u64,
}

impl core::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Overlay").field("changed", &self.nodes.len()).finish_non_exhaustive()
    }
}

impl TxView {
    /// A view that changes `snapshot` itself.
    pub(crate) fn whole(snapshot: Snapshot) -> TxView {
        TxView(Repr::Whole(snapshot))
    }

    /// A view that keeps its changes over `base`, which it never changes.
    pub(crate) fn overlay(base: Snapshot) -> TxView {
        let next_generation = base.next_generation();
        TxView(Repr::Overlay(Overlay {
            base,
            nodes: hashbrown::HashMap::with_hasher(foldhash::fast::RandomState::default()),
            owners: BTreeMap::new(),
            tree_nodes: 0,
            next_generation,
        }))
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        match &self.0 {
            Repr::Whole(s) => s.get(path),
            Repr::Overlay(o) => match o.nodes.get(path) {
                Some(changed) => changed.as_ref(),
                None => o.base.get(path),
            },
        }
    }

    pub fn contains(&self, path: &str) -> bool {
        self.get(path).is_some()
    }

    /// Tree nodes owned by `domid`, this transaction's changes included.
    pub fn owned_count(&self, domid: DomId) -> u32 {
        match &self.0 {
            Repr::Whole(s) => s.owned_count(domid),
            Repr::Overlay(o) => {
                let delta = o.owners.get(&domid).copied().unwrap_or(0);
                let n = i64::from(o.base.owned_count(domid)) + delta;
                u32::try_from(n.max(0)).unwrap_or(u32::MAX)
            }
        }
    }

    /// Nodes in the tree (special nodes not included).
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Whole(s) => s.len(),
            Repr::Overlay(o) => o.base.len().saturating_add_signed(o.tree_nodes),
        }
    }

    /// Never true: `/` always exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole version, for a transaction that changes the newest one
    /// itself ([`crate::Store::update`]): whole-tree walks need it.
    /// `None` for a transaction that keeps its changes to itself.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        match &self.0 {
            Repr::Whole(s) => Some(s),
            Repr::Overlay(_) => None,
        }
    }

    /// The version this view stands for: the whole version it changed, or
    /// the overlay's changes taken into the version it was built over.
    pub(crate) fn into_snapshot(self) -> Snapshot {
        match self.0 {
            Repr::Whole(s) => s,
            Repr::Overlay(o) => {
                let mut s = o.base;
                s.absorb(o.nodes, o.owners, o.tree_nodes, o.next_generation);
                s
            }
        }
    }
}

impl Nodes for TxView {
    fn node(&self, path: &str) -> Option<&Node> {
        self.get(path)
    }

    fn update_node(&mut self, path: &Path, f: impl FnOnce(&mut Node)) -> bool {
        match &mut self.0 {
            Repr::Whole(s) => s.update_node(path, f),
            Repr::Overlay(o) => {
                if let Some(changed) = o.nodes.get_mut(path.as_str()) {
                    return changed.as_mut().map(f).is_some();
                }
                let Some(node) = o.base.get(path.as_str()) else { return false };
                let mut node = node.clone();
                f(&mut node);
                o.nodes.insert(path.clone(), Some(node));
                true
            }
        }
    }

    fn insert_new(&mut self, path: Path, node: Node) {
        match &mut self.0 {
            Repr::Whole(s) => s.insert_new(path, node),
            Repr::Overlay(o) => {
                *o.owners.entry(node.perms().owner()).or_default() += 1;
                o.tree_nodes += 1;
                o.nodes.insert(path, Some(node));
            }
        }
    }

    fn remove_node(&mut self, path: &Path) {
        match &mut self.0 {
            Repr::Whole(s) => s.remove_node(path),
            Repr::Overlay(o) => {
                o.tree_nodes -= 1;
                if o.base.contains(path.as_str()) {
                    o.nodes.insert(path.clone(), None);
                } else {
                    o.nodes.remove(path.as_str());
                }
            }
        }
    }

    fn count_owner(&mut self, domid: DomId, delta: i64) {
        match &mut self.0 {
            Repr::Whole(s) => s.count_owner(domid, delta),
            Repr::Overlay(o) => *o.owners.entry(domid).or_default() += delta,
        }
    }

    fn next_generation(&self) -> u64 {
        match &self.0 {
            Repr::Whole(s) => s.next_generation(),
            Repr::Overlay(o) => o.next_generation,
        }
    }

    fn fresh_generation(&mut self) -> u64 {
        match &mut self.0 {
            Repr::Whole(s) => s.fresh_generation(),
            Repr::Overlay(o) => {
                let g = o.next_generation;
                o.next_generation += 1;
                g
            }
        }
    }
}
