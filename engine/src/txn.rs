//! Transactions: an O(1) fork of a snapshot, a record of what was observed,
//! and a log of mutations that commit replays onto the newest root.
//!
//! # The commit rule
//!
//! Every read records the *aspect* it looked at (existence, value,
//! permissions, children, generation) of the version the transaction forked
//! from, unless the transaction's own earlier mutations fully determine that
//! aspect. At commit, each recorded aspect is compared with the newest
//! committed version. If all are equal, every reply the transaction got is
//! exactly what running its requests now would give, so its mutation log is
//! replayed onto the newest version and published: the transaction is
//! serialized at its commit point. If one differs, the commit fails with
//! [`crate::CommitError::Conflict`] (the protocol's `EAGAIN`).
//!
//! Mutations record only what they depend on: creating `/a/x` observes that
//! `/a/x` is absent and that `/a` exists with its permissions (which the new
//! node copies), but not `/a`'s list of children, which it merely appends to.
//! So two transactions creating different children of one parent both
//! commit. A transaction without mutations always commits: it is
//! serializable at its fork point.
//!
//! A missing intermediate level that a creation adds (creating `/a/x/y`
//! when `/a/x` is missing adds `/a/x`), first seen by the transaction
//! then, records its absence with an exception: a node that someone else
//! created there meanwhile with an empty value and the permissions this
//! transaction gave the level satisfies it too. Replaying the log onto the
//! newest version then creates only the levels below that node, copying
//! its (equal) permissions; node counts, generations and the changes
//! reported (watch events) come from that replay, so they are those of the
//! serial order "the other one, then this one". Every reply the
//! transaction got about the level's existence, value and permissions is
//! the same in that order, so reading them keeps the exception: in
//! particular each further creation below the level, which reads the
//! permissions of its nearest existing ancestor (the level) to copy them.
//! Its children list and generation are not the same (the other node has
//! other children): reading either, or having read the level before
//! creating it, makes its absence strict again.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::error::EngineError;
use crate::node::{Children, Node, Value};
use crate::path::Path;
use crate::perms::{DomId, Perms};
use crate::snapshot::{Change, Mutation, Snapshot};
use crate::view::TxView;

/// What a transaction knows about one path: what it saw of the fork-point
/// version (`None` = not observed) and which aspects its own mutations decide.
#[derive(Default, Debug)]
struct Record {
    exists: Option<bool>,
    value: Option<Value>,
    perms: Option<Perms>,
    children: Option<Children>,
    generation: Option<u64>,
    /// Created by this transaction: every aspect is its own.
    created: bool,
    value_own: bool,
    perms_own: bool,
    /// Modified in any way (a child added or removed counts): its generation
    /// in the transaction's view is provisional.
    touched: bool,
    /// Created only as a missing intermediate level of a deeper creation,
    /// with these permissions, and first seen then: its recorded absence is
    /// also satisfied by a node someone else created meanwhile with an
    /// empty value and these same permissions (replay then creates only the
    /// levels below it), unless this transaction listed the node afterwards.
    /// Its existence, value and permissions as this transaction saw them are
    /// then exactly the other node's, so reading those (as every further
    /// creation below it does, for the permissions it copies) keeps the
    /// exception.
    implicit: Option<Perms>,
    /// Its children or generation read after this transaction created it:
    /// a node created meanwhile by someone else has other children (and
    /// another generation), so the exception above no longer holds.
    listed_after_create: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Aspect {
    Exists,
    Value,
    Perms,
    Children,
    Generation,
}

/// An open transaction. Reads see the transaction's own writes over its
/// fork-point snapshot. See the module documentation for the commit rule.
#[derive(Debug)]
pub struct Transaction {
    base: Snapshot,
    /// An overlay of this transaction's changes over `base`, or (run under
    /// the commit lock) the newest version itself.
    view: TxView,
    records: BTreeMap<Path, Record>,
    /// Roots of subtrees this transaction removed: paths below them that it
    /// has not re-created are absent by its own doing.
    removed_roots: Vec<Path>,
    /// The mutations, to replay on a newer version at commit (recording
    /// transactions only: the others are applied to the newest already).
    log: Vec<Mutation>,
    /// Some mutation was applied.
    mutated: bool,
    /// The changes of the mutations as applied to `view`.
    changes: Vec<Change>,
    /// Off for [`crate::Store::update`]: a transaction run under the commit
    /// lock on the newest version has nothing to validate.
    recording: bool,
}

/// A published commit.
#[derive(Clone, Debug)]
pub struct Commit {
    /// The version it produced (now the newest).
    pub snapshot: Snapshot,
    /// What changed, in order, for firing watches.
    pub changes: Vec<Change>,
    /// The generation counter of the version the commit was applied to:
    /// every node the commit modified has a generation at least this.
    pub previous_generation: u64,
}

impl Transaction {
    /// Forks `base`: O(1).
    pub fn new(base: Snapshot) -> Transaction {
        Transaction {
            view: TxView::overlay(base.clone()),
            base,
            records: BTreeMap::new(),
            removed_roots: Vec::new(),
            log: Vec::new(),
            mutated: false,
            changes: Vec::new(),
            recording: true,
        }
    }

    /// A transaction that records no observations: only for changes made
    /// under the commit lock on the newest version, which cannot conflict.
    /// `base` is not kept: `view` may be the only reference to its version,
    /// so that mutations change it in place.
    pub(crate) fn unrecorded(view: Snapshot, placeholder: Snapshot) -> Transaction {
        Transaction {
            base: placeholder,
            view: TxView::whole(view),
            records: BTreeMap::new(),
            removed_roots: Vec::new(),
            log: Vec::new(),
            mutated: false,
            changes: Vec::new(),
            recording: false,
        }
    }

    /// The version this transaction forked from.
    pub fn base(&self) -> &Snapshot {
        &self.base
    }

    /// The fork-point version with this transaction's own mutations applied.
    /// Reading through it records nothing: use it for checks whose outcome
    /// must not be part of the commit rule (or that are re-checked at commit).
    pub fn view(&self) -> &TxView {
        &self.view
    }

    /// Distinct paths this transaction has read or written (C's
    /// `transaction-nodes` quota counts these).
    pub fn accessed_paths(&self) -> usize {
        self.records.len()
    }

    pub fn is_read_only(&self) -> bool {
        !self.mutated
    }

    /// Changes made so far, as they apply to the view.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    // ---- reads: each records the aspect it returns ----

    pub fn exists(&mut self, path: &Path) -> bool {
        self.observe(path, Aspect::Exists);
        self.view.contains(path.as_str())
    }

    pub fn value(&mut self, path: &Path) -> Option<Value> {
        self.observe(path, Aspect::Value);
        self.view.get(path.as_str()).map(|n| n.value().clone())
    }

    pub fn perms(&mut self, path: &Path) -> Option<Perms> {
        self.observe(path, Aspect::Perms);
        self.view.get(path.as_str()).map(|n| n.perms().clone())
    }

    pub fn children(&mut self, path: &Path) -> Option<Children> {
        self.observe(path, Aspect::Children);
        self.view.get(path.as_str()).map(|n| n.children().clone())
    }

    /// The node's generation (DIRECTORY_PART reports it). Provisional for a
    /// node this transaction modified.
    pub fn generation(&mut self, path: &Path) -> Option<u64> {
        self.observe(path, Aspect::Generation);
        self.view.get(path.as_str()).map(|n| n.generation())
    }

    // ---- mutations ----

    /// Sets the value of `path`, creating it and any missing ancestors; new
    /// nodes copy their parent's permissions with the owner replaced by
    /// `creator` if given. Returns the change.
    pub fn write(&mut self, path: &Path, value: &[u8], creator: Option<DomId>) -> Result<Change, EngineError> {
        let m = Mutation::Write { path: path.clone(), value: Value::new(value), creator };
        if !self.recording {
            return self.apply(m)?.ok_or_else(|| EngineError::NotFound(path.clone()));
        }
        if self.exists(path) {
            let rec = self.records.entry(path.clone()).or_default();
            rec.value_own = true;
            rec.touched = true;
        } else {
            self.prepare_create(path, creator)?;
        }
        self.apply(m)?.ok_or_else(|| EngineError::NotFound(path.clone()))
    }

    /// Sets the value of the existing `path` if `allow` accepts the node as
    /// it is, in one lookup: for a request outside a transaction (an
    /// unrecorded one: [`crate::Store::update`], [`crate::Store::apply_one`])
    /// whose checks need the node anyway. `None` if this transaction records
    /// what it reads, or `path` is missing or special: the caller then takes
    /// the general way ([`Transaction::perms`], [`Transaction::write`]).
    /// A refusal changes no node (the node's bucket may have been made this
    /// version's own).
    pub fn overwrite<E>(
        &mut self,
        path: &Path,
        value: &[u8],
        allow: impl FnOnce(&Node) -> Result<(), E>,
    ) -> Option<Result<Change, E>> {
        if self.recording || path.is_special() {
            return None;
        }
        if let Err(e) = crate::snapshot::overwrite(&mut self.view, path, || Value::new(value), allow)? {
            return Some(Err(e));
        }
        self.mutated = true;
        let change = Change::Written { path: path.clone(), created: false };
        self.changes.push(change.clone());
        Some(Ok(change))
    }

    /// Creates `path` (empty value) and missing ancestors if it is missing;
    /// `None` if it already existed.
    pub fn mkdir(&mut self, path: &Path, creator: Option<DomId>) -> Result<Option<Change>, EngineError> {
        if self.exists(path) {
            return Ok(None);
        }
        if self.recording {
            self.prepare_create(path, creator)?;
        }
        self.apply(Mutation::Mkdir { path: path.clone(), creator })
    }

    /// Removes `path` and its subtree; `None` if it did not exist.
    pub fn remove(&mut self, path: &Path) -> Result<Option<Change>, EngineError> {
        if path.is_root() {
            return Err(EngineError::RootRemoval);
        }
        if path.is_special() {
            return Err(EngineError::SpecialPath(path.clone()));
        }
        if !self.exists(path) {
            return Ok(None);
        }
        if !self.recording {
            return self.apply(Mutation::Remove { path: path.clone() });
        }
        if let Some(parent) = path.parent() {
            self.records.entry(parent).or_default().touched = true;
        }
        self.removed_roots.push(path.clone());
        // Everything this transaction created below is gone again.
        for (p, rec) in self.records.range_mut(path.clone()..) {
            if !p.is_under(path) {
                break;
            }
            rec.created = false;
        }
        self.apply(Mutation::Remove { path: path.clone() })
    }

    /// Replaces the permissions of an existing node (special nodes included).
    pub fn set_perms(&mut self, path: &Path, perms: Perms) -> Result<Change, EngineError> {
        if !self.exists(path) {
            return Err(EngineError::NotFound(path.clone()));
        }
        if self.recording {
            let rec = self.records.entry(path.clone()).or_default();
            rec.perms_own = true;
            rec.touched = true;
        }
        self.apply(Mutation::SetPerms { path: path.clone(), perms })?.ok_or_else(|| EngineError::NotFound(path.clone()))
    }

    /// Observes the chain a creation of `path` depends on: each missing
    /// ancestor's absence, and the nearest existing ancestor's existence and
    /// permissions (the new nodes copy them). Marks the nodes it will create.
    fn prepare_create(&mut self, path: &Path, creator: Option<DomId>) -> Result<(), EngineError> {
        if path.is_special() {
            return Err(EngineError::SpecialPath(path.clone()));
        }
        let mut created = alloc::vec![(path.clone(), false)];
        let mut cur = path.parent();
        let mut perms = None;
        while let Some(p) = cur {
            let first_seen = !self.records.contains_key(&p);
            if self.exists(&p) {
                perms = self.perms(&p);
                self.records.entry(p).or_default().touched = true;
                break;
            }
            cur = p.parent();
            created.push((p, first_seen));
        }
        let perms = match (perms, creator) {
            (Some(p), Some(c)) => Some(p.with_owner(c)),
            (p, None) => p,
            (None, Some(_)) => None,
        };
        for (p, first_seen) in created {
            let rec = self.records.entry(p).or_default();
            if first_seen {
                rec.implicit = perms.clone();
            }
            rec.created = true;
            rec.touched = true;
        }
        Ok(())
    }

    fn apply(&mut self, m: Mutation) -> Result<Option<Change>, EngineError> {
        let change = crate::snapshot::apply(&mut self.view, &m)?;
        self.mutated = true;
        if self.recording {
            self.log.push(m);
        }
        if let Some(c) = &change {
            self.changes.push(c.clone());
        }
        Ok(change)
    }

    /// Records `aspect` of `path` as seen in the fork-point version, unless it
    /// is already recorded or this transaction's own mutations decide it.
    fn observe(&mut self, path: &Path, aspect: Aspect) {
        if !self.recording {
            return;
        }
        let removed_by_us = self.removed_roots.iter().any(|r| path.is_under(r));
        let base = &self.base;
        let rec = self.records.entry(path.clone()).or_default();
        if rec.created {
            if matches!(aspect, Aspect::Children | Aspect::Generation) {
                rec.listed_after_create = true;
            }
            return;
        }
        if removed_by_us {
            return;
        }
        // Known missing, or this aspect recorded already (or decided by our
        // own mutations): nothing to look up.
        let wanted = match aspect {
            Aspect::Exists => false,
            Aspect::Value => !rec.value_own && rec.value.is_none(),
            Aspect::Perms => !rec.perms_own && rec.perms.is_none(),
            Aspect::Children => rec.children.is_none(),
            Aspect::Generation => !rec.touched && rec.generation.is_none(),
        };
        if rec.exists == Some(false) || (rec.exists.is_some() && !wanted) {
            return;
        }
        let node = base.get(path.as_str());
        if rec.exists.is_none() {
            rec.exists = Some(node.is_some());
        }
        let Some(node) = node else { return };
        match aspect {
            Aspect::Exists => {}
            Aspect::Value if !rec.value_own && rec.value.is_none() => rec.value = Some(node.value().clone()),
            Aspect::Perms if !rec.perms_own && rec.perms.is_none() => rec.perms = Some(node.perms().clone()),
            Aspect::Children if rec.children.is_none() => rec.children = Some(node.children().clone()),
            Aspect::Generation if !rec.touched && rec.generation.is_none() => rec.generation = Some(node.generation()),
            _ => {}
        }
    }

    /// The first path whose recorded observation differs in `newest`.
    fn first_conflict(&self, newest: &Snapshot) -> Option<&Path> {
        self.records.iter().find_map(|(path, rec)| {
            let node = newest.get(path.as_str());
            let created_meanwhile_alike = || {
                !rec.listed_after_create
                    && rec
                        .implicit
                        .as_ref()
                        .is_some_and(|perms| node.is_some_and(|n| n.value().is_empty() && n.perms() == perms))
            };
            let same = rec.exists.is_none_or(|e| e == node.is_some() || (!e && created_meanwhile_alike()))
                && rec.value.as_ref().is_none_or(|v| node.is_some_and(|n| n.value().same(v)))
                && rec.perms.as_ref().is_none_or(|p| node.is_some_and(|n| n.perms() == p))
                && rec.children.as_ref().is_none_or(|c| node.is_some_and(|n| n.children().same(c)))
                && rec.generation.is_none_or(|g| node.is_some_and(|n| n.generation() == g));
            (!same).then_some(path)
        })
    }

    /// Turns this transaction into the version to publish on top of `newest`,
    /// or the path of the first conflict. If nothing was published since it
    /// forked, its view is that version; otherwise its mutations are
    /// replayed onto `newest`.
    pub(crate) fn rebase(self, newest: &Snapshot) -> Result<(Snapshot, Vec<Change>), Path> {
        if newest.same_version(&self.base) {
            return Ok(self.into_result());
        }
        if let Some(path) = self.first_conflict(newest) {
            return Err(path.clone());
        }
        replay(&self.log, newest.clone())
    }

    /// The view as a version, with its changes.
    pub(crate) fn into_result(self) -> (Snapshot, Vec<Change>) {
        (self.view.into_snapshot(), self.changes)
    }
}

/// Applies logged mutations to `next`; the path of the first that does not
/// apply (validation guarantees they do: an error here is an engine bug,
/// reported as a conflict rather than a panic).
fn replay(log: &[Mutation], mut next: Snapshot) -> Result<(Snapshot, Vec<Change>), Path> {
    let mut changes = Vec::with_capacity(log.len());
    for m in log {
        match crate::snapshot::apply(&mut next, m) {
            Ok(Some(c)) => changes.push(c),
            Ok(None) => {}
            Err(_) => return Err(mutation_path(m).clone()),
        }
    }
    Ok((next, changes))
}

fn mutation_path(m: &Mutation) -> &Path {
    match m {
        Mutation::Write { path, .. }
        | Mutation::Mkdir { path, .. }
        | Mutation::Remove { path }
        | Mutation::SetPerms { path, .. } => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Node;
    use crate::perms::{DomId, Perm};
    use crate::{CommitError, Store};

    fn p(s: &str) -> Path {
        Path::new(s).expect("test path")
    }

    fn store_with(paths: &[&str]) -> Store {
        let store = Store::new(Snapshot::new(Perms::owned_by(DomId(0))));
        for path in paths {
            store.update(|tx| tx.write(&p(path), b"init", None)).expect("setup");
        }
        store
    }

    fn commit(store: &Store, tx: Transaction) -> Result<Commit, CommitError<()>> {
        store.commit(tx, |_| Ok(()))
    }

    fn is_conflict(r: Result<Commit, CommitError<()>>, at: &str) -> bool {
        matches!(r, Err(CommitError::Conflict { path }) if path.as_str() == at)
    }

    #[test]
    fn own_writes_are_visible_inside_and_invisible_outside() {
        let store = store_with(&["/x"]);
        let mut tx = store.begin();
        tx.write(&p("/x"), b"new", None).unwrap();
        assert_eq!(tx.value(&p("/x")).unwrap().as_bytes(), b"new");
        assert_eq!(store.snapshot().get("/x").unwrap().value().as_bytes(), b"init");
        commit(&store, tx).unwrap();
        assert_eq!(store.snapshot().get("/x").unwrap().value().as_bytes(), b"new");
    }

    #[test]
    fn read_then_concurrent_write_conflicts() {
        let store = store_with(&["/x", "/y"]);
        let mut tx = store.begin();
        tx.value(&p("/x"));
        tx.write(&p("/y"), b"1", None).unwrap();
        store.update(|t| t.write(&p("/x"), b"other", None)).unwrap();
        let before = store.snapshot();
        assert!(is_conflict(commit(&store, tx), "/x"));
        assert!(store.snapshot().same_version(&before), "nothing published");
    }

    #[test]
    fn reading_a_missing_node_then_its_creation_conflicts() {
        let store = store_with(&["/y"]);
        let mut tx = store.begin();
        assert!(tx.value(&p("/x")).is_none());
        tx.write(&p("/y"), b"1", None).unwrap();
        store.update(|t| t.write(&p("/x"), b"now", None)).unwrap();
        assert!(is_conflict(commit(&store, tx), "/x"));
    }

    #[test]
    fn creations_of_different_children_of_one_parent_coalesce() {
        let store = store_with(&["/local/domain/0"]);
        let mut a = store.begin();
        let mut b = store.begin();
        a.write(&p("/local/domain/1/name"), b"a", None).unwrap();
        b.write(&p("/local/domain/2/name"), b"b", None).unwrap();
        store.update(|t| t.write(&p("/local/domain/3"), b"", None)).unwrap();
        commit(&store, b).unwrap();
        commit(&store, a).unwrap();
        let snap = store.snapshot();
        let order = snap.get("/local/domain").unwrap().children().to_wire();
        assert_eq!(order, b"0\x003\x002\x001\x00", "appended in commit order");
        snap.check_consistent().unwrap();
    }

    #[test]
    fn creating_the_same_child_twice_conflicts() {
        let store = store_with(&["/d"]);
        let mut a = store.begin();
        let mut b = store.begin();
        a.write(&p("/d/x"), b"a", None).unwrap();
        b.write(&p("/d/x"), b"b", None).unwrap();
        commit(&store, a).unwrap();
        assert!(is_conflict(commit(&store, b), "/d/x"));
        assert_eq!(store.snapshot().get("/d/x").unwrap().value().as_bytes(), b"a");
    }

    #[test]
    fn listing_children_then_a_concurrent_creation_conflicts() {
        let store = store_with(&["/d/a"]);
        let mut tx = store.begin();
        tx.children(&p("/d"));
        tx.write(&p("/e"), b"", None).unwrap();
        store.update(|t| t.write(&p("/d/b"), b"", None)).unwrap();
        assert!(is_conflict(commit(&store, tx), "/d"));
    }

    #[test]
    fn write_skew_is_refused() {
        let store = store_with(&["/x", "/y"]);
        let mut t1 = store.begin();
        let mut t2 = store.begin();
        t1.value(&p("/x"));
        t1.write(&p("/y"), b"t1", None).unwrap();
        t2.value(&p("/y"));
        t2.write(&p("/x"), b"t2", None).unwrap();
        commit(&store, t1).unwrap();
        assert!(is_conflict(commit(&store, t2), "/y"));
    }

    #[test]
    fn disjoint_subtrees_commit() {
        let store = store_with(&["/t1/a", "/t2/a"]);
        let mut tx = store.begin();
        tx.value(&p("/t1/a"));
        tx.write(&p("/t1/a"), b"tx", None).unwrap();
        store.update(|t| t.write(&p("/t2/a"), b"other", None)).unwrap();
        store.update(|t| t.remove(&p("/t2/a"))).unwrap();
        commit(&store, tx).unwrap();
        assert_eq!(store.snapshot().get("/t1/a").unwrap().value().as_bytes(), b"tx");
    }

    #[test]
    fn read_only_transactions_always_commit() {
        let store = store_with(&["/x"]);
        let mut tx = store.begin();
        assert_eq!(tx.value(&p("/x")).unwrap().as_bytes(), b"init");
        store.update(|t| t.write(&p("/x"), b"changed", None)).unwrap();
        // Repeatable: the transaction keeps reading its fork point.
        assert_eq!(tx.value(&p("/x")).unwrap().as_bytes(), b"init");
        assert!(commit(&store, tx).unwrap().changes.is_empty());
        let empty = store.begin();
        commit(&store, empty).unwrap();
    }

    #[test]
    fn removal_applies_to_the_newest_subtree() {
        // Serially, RM /a after the concurrent creation of /a/new removes it too.
        let store = store_with(&["/a/old"]);
        let mut tx = store.begin();
        tx.remove(&p("/a")).unwrap();
        tx.write(&p("/a/b"), b"fresh", None).unwrap();
        store.update(|t| t.write(&p("/a/new"), b"", None)).unwrap();
        let c = commit(&store, tx).unwrap();
        let snap = store.snapshot();
        assert_eq!(snap.get("/a").unwrap().children().to_wire(), b"b\0");
        match &c.changes[0] {
            Change::Removed { descendants, .. } => {
                let d: Vec<&str> = descendants.iter().map(|(p, _)| p.as_str()).collect();
                assert_eq!(d, ["/a/old", "/a/new"], "events for what the newest tree held");
            }
            other => panic!("expected Removed, got {other:?}"),
        }
        snap.check_consistent().unwrap();
    }

    #[test]
    fn own_creations_need_no_observation_of_later_reads() {
        let store = store_with(&["/d"]);
        let mut tx = store.begin();
        tx.write(&p("/d/x/y"), b"1", None).unwrap();
        assert_eq!(tx.children(&p("/d/x")).unwrap().to_wire(), b"y\0");
        assert_eq!(tx.value(&p("/d/x/y")).unwrap().as_bytes(), b"1");
        // Someone else rewrites /d's value: we never looked at it.
        store.update(|t| t.write(&p("/d"), b"v", None)).unwrap();
        commit(&store, tx).unwrap();
    }

    #[test]
    fn permission_change_of_the_copied_ancestor_conflicts() {
        let store = store_with(&["/d"]);
        let mut tx = store.begin();
        tx.write(&p("/d/x"), b"1", Some(DomId(5))).unwrap();
        store.update(|t| t.set_perms(&p("/d"), Perms::owned_by(DomId(9)))).unwrap();
        assert!(is_conflict(commit(&store, tx), "/d"));
    }

    #[test]
    fn generation_observation_detects_any_change_of_the_node() {
        let store = store_with(&["/d/a"]);
        let mut tx = store.begin();
        tx.generation(&p("/d"));
        tx.write(&p("/e"), b"", None).unwrap();
        store.update(|t| t.write(&p("/d"), b"value", None)).unwrap();
        assert!(is_conflict(commit(&store, tx), "/d"));
    }

    #[test]
    fn a_rejected_commit_publishes_nothing() {
        let store = store_with(&[]);
        let mut tx = store.begin();
        tx.write(&p("/q"), b"", Some(DomId(5))).unwrap();
        let before = store.snapshot();
        let r = store.commit(tx, |c| if c.snapshot.owned_count(DomId(5)) > 0 { Err("quota") } else { Ok(()) });
        assert!(matches!(r, Err(CommitError::Rejected("quota"))));
        assert!(store.snapshot().same_version(&before));
    }

    #[test]
    fn concurrent_implicit_creation_of_one_intermediate_level_coalesces() {
        let store = store_with(&[]);
        let mut a = store.begin();
        let mut b = store.begin();
        a.write(&p("/storm/0/a"), b"1", None).unwrap();
        b.write(&p("/storm/1/a"), b"1", None).unwrap();
        commit(&store, a).unwrap();
        commit(&store, b).unwrap();
        let snap = store.snapshot();
        assert_eq!(snap.get("/storm").unwrap().children().to_wire(), b"0\x001\x00");
        assert_eq!(snap.owned_count(DomId(0)), 6);
        snap.check_consistent().unwrap();
    }

    /// One domain of a bootstorm on a host without backend directories, in
    /// the order a toolstack sends it: its home with permissions, then a
    /// vif and a vbd, each with a frontend and a backend key. The second
    /// backend key's nearest existing ancestor is `/local/domain/0/backend`,
    /// which the first one created: its creation reads that level's
    /// permissions (to copy them), as the protocol's write access check does.
    fn create_domain(tx: &mut Transaction, d: u32) {
        let home = p(&alloc::format!("/local/domain/{d}"));
        tx.mkdir(&home, None).expect("mkdir");
        let readable = Perm::parse(alloc::format!("r{d}").as_bytes()).expect("perm");
        tx.set_perms(&home, Perms::new(&[Perm::parse(b"n0").expect("perm"), readable]).expect("perms"))
            .expect("set_perms");
        assert_eq!(tx.value(&p("/vm/config")).expect("config").as_bytes(), b"init");
        for (class, devid) in [("vif", 0), ("vbd", 51712)] {
            let front = p(&alloc::format!("/local/domain/{d}/device/{class}/{devid}/state"));
            let back = p(&alloc::format!("/local/domain/0/backend/{class}/{d}/{devid}/state"));
            for key in [front, back] {
                // The checks of a WRITE: the node, then the permissions of
                // its nearest existing ancestor.
                assert!(tx.perms(&key).is_none());
                let mut up = key.parent();
                while let Some(a) = up {
                    if tx.view().contains(a.as_str()) {
                        assert!(tx.perms(&a).is_some());
                        break;
                    }
                    up = a.parent();
                }
                tx.write(&key, b"1", None).expect("write");
            }
        }
        // GET_PERMS and READ of the shared level it created: the same in
        // any serial order.
        assert_eq!(tx.perms(&p("/local/domain/0/backend")).expect("backend"), Perms::owned_by(DomId(0)));
        assert!(tx.value(&p("/local/domain/0/backend")).expect("backend").is_empty());
    }

    #[test]
    fn a_bootstorm_on_a_fresh_backend_tree_commits_as_serial_execution_does() {
        let setup = ["/local/domain/0/name", "/vm/config"];
        let concurrent = store_with(&setup);
        let mut txs: Vec<Transaction> = (1..=4).map(|_| concurrent.begin()).collect();
        for (d, tx) in (1..).zip(txs.iter_mut()) {
            create_domain(tx, d);
        }
        // Committed in another order than begun; each commit's changes (the
        // watch events) and the tree after it must be those of running the
        // same requests one after the other, outside transactions.
        let serial = store_with(&setup);
        for d in [3, 1, 4, 2] {
            let tx = txs.remove(
                txs.iter()
                    .position(|t| t.records.contains_key(&p(&alloc::format!("/local/domain/{d}"))))
                    .expect("the domain's transaction"),
            );
            let got = commit(&concurrent, tx).expect("no conflict");
            let ((), expected) = serial
                .update(|t| {
                    create_domain(t, d);
                    Ok::<_, ()>(())
                })
                .expect("serial");
            assert_eq!(got.changes, expected.changes, "domain {d}");
            let (a, b) = (concurrent.snapshot(), serial.snapshot());
            assert_eq!(a.entries().collect::<Vec<_>>(), b.entries().collect::<Vec<_>>(), "domain {d}");
            assert_eq!(a.owned_count(DomId(0)), b.owned_count(DomId(0)));
            assert_eq!(a.next_generation(), b.next_generation());
            a.check_consistent().expect("consistent");
        }
        let snap = concurrent.snapshot();
        assert_eq!(snap.get("/local/domain/0/backend").expect("node").children().to_wire(), b"vif\0vbd\0");
        assert_eq!(
            snap.get("/local/domain/0/backend/vif").expect("node").children().to_wire(),
            b"3\x001\x004\x002\x00"
        );
    }

    #[test]
    fn listing_a_shared_fresh_level_after_creating_it_conflicts() {
        for listing in [Aspect::Children, Aspect::Generation] {
            let store = store_with(&[]);
            let mut a = store.begin();
            a.write(&p("/s/0/a"), b"1", None).expect("write");
            a.write(&p("/s/1/a"), b"1", None).expect("write");
            match listing {
                Aspect::Children => assert!(a.children(&p("/s")).is_some()),
                _ => assert!(a.generation(&p("/s")).is_some()),
            }
            store.update(|t| t.write(&p("/s/2/a"), b"1", None)).expect("concurrent write");
            assert!(is_conflict(commit(&store, a), "/s"));
        }
    }

    #[test]
    fn a_shared_fresh_level_given_a_value_meanwhile_conflicts() {
        let store = store_with(&[]);
        let mut a = store.begin();
        a.write(&p("/s/0/a"), b"1", None).expect("write");
        a.write(&p("/s/1/a"), b"1", None).expect("write");
        store.update(|t| t.write(&p("/s"), b"not empty", None)).expect("concurrent write");
        assert!(is_conflict(commit(&store, a), "/s"));
    }

    #[test]
    fn own_permissions_of_a_shared_fresh_level_apply_after_the_other_creation() {
        // Serially: the other transaction creates /s, then this one gives
        // it new permissions and creates /s/1 below it with those.
        let store = store_with(&[]);
        let mut a = store.begin();
        a.write(&p("/s/0/a"), b"1", None).expect("write");
        a.set_perms(&p("/s"), Perms::owned_by(DomId(7))).expect("set_perms");
        a.write(&p("/s/1/a"), b"1", None).expect("write");
        assert_eq!(a.perms(&p("/s")).expect("own level"), Perms::owned_by(DomId(7)));
        store.update(|t| t.write(&p("/s/2/a"), b"1", None)).expect("concurrent write");
        commit(&store, a).expect("no conflict");
        let snap = store.snapshot();
        assert_eq!(snap.get("/s").expect("node").perms(), &Perms::owned_by(DomId(7)));
        assert_eq!(snap.get("/s/1").expect("node").perms(), &Perms::owned_by(DomId(7)));
        assert_eq!(snap.get("/s/2").expect("node").perms(), &Perms::owned_by(DomId(0)));
        assert_eq!(snap.get("/s").expect("node").children().to_wire(), b"2\x000\x001\x00");
        snap.check_consistent().expect("consistent");
    }

    #[test]
    fn reading_an_implicitly_created_level_keeps_the_strict_rule() {
        let store = store_with(&[]);
        let mut a = store.begin();
        a.write(&p("/s/0/a"), b"1", None).unwrap();
        assert_eq!(a.children(&p("/s")).unwrap().to_wire(), b"0\0");
        store.update(|t| t.write(&p("/s/1/a"), b"1", None)).unwrap();
        assert!(is_conflict(commit(&store, a), "/s"));
    }

    #[test]
    fn an_intermediate_level_created_with_other_permissions_conflicts() {
        let store = store_with(&[]);
        let mut guest = store.begin();
        guest.write(&p("/q/x/a"), b"1", Some(DomId(5))).unwrap();
        store.update(|t| t.write(&p("/q/y"), b"", None)).unwrap();
        assert!(is_conflict(commit(&store, guest), "/q"));
    }

    #[test]
    fn an_explicitly_read_missing_level_keeps_the_strict_rule() {
        let store = store_with(&[]);
        let mut a = store.begin();
        assert!(a.value(&p("/m")).is_none());
        a.write(&p("/m/0/a"), b"1", None).unwrap();
        store.update(|t| t.write(&p("/m/1"), b"", None)).unwrap();
        assert!(is_conflict(commit(&store, a), "/m"));
    }

    #[test]
    fn overwrite_checks_and_writes_an_existing_node_outside_transactions_only() {
        let store = store_with(&["/a"]);
        let before = store.snapshot();
        let g = before.get("/a").unwrap().generation();
        // Refused: nothing changes, and the refusal is the caller's.
        let refused = store.update(|tx| match tx.overwrite(&p("/a"), b"no", |_| Err("denied")) {
            Some(Err(e)) => Err::<(), _>(e),
            other => panic!("expected a refusal, got {other:?}"),
        });
        assert_eq!(refused.err(), Some("denied"));
        assert_eq!(store.snapshot().get("/a").unwrap().value().as_bytes(), b"init");
        // Allowed: what `write` of an existing node does.
        let (change, commit) = store
            .update(|tx| {
                let seen =
                    tx.overwrite(&p("/a"), b"yes", |n| if n.value().as_bytes() == b"init" { Ok(()) } else { Err(()) });
                seen.expect("an existing node outside a transaction")
            })
            .unwrap();
        assert_eq!(change, Change::Written { path: p("/a"), created: false });
        assert_eq!(commit.changes, [change]);
        let now = store.snapshot();
        assert_eq!(now.get("/a").unwrap().value().as_bytes(), b"yes");
        assert!(now.get("/a").unwrap().generation() > g);
        assert_eq!(now.next_generation(), before.next_generation() + 1);
        now.check_consistent().unwrap();
        // Missing, special, or in a transaction: the general way.
        store
            .update(|tx| {
                assert!(tx.overwrite(&p("/missing"), b"x", |_| Ok::<_, ()>(())).is_none());
                assert!(tx.overwrite(&p("@introduceDomain"), b"x", |_| Ok::<_, ()>(())).is_none());
                Ok::<_, ()>(())
            })
            .unwrap();
        let mut tx = store.begin();
        assert!(tx.overwrite(&p("/a"), b"x", |_| Ok::<_, ()>(())).is_none());
    }

    #[test]
    fn accessed_paths_count_distinct_paths() {
        let store = store_with(&["/a"]);
        let mut tx = store.begin();
        tx.value(&p("/a"));
        tx.value(&p("/a"));
        tx.perms(&p("/b"));
        tx.write(&p("/c/d"), b"", None).unwrap();
        // /a, /b, /c/d, /c, and / (the nearest existing ancestor).
        assert_eq!(tx.accessed_paths(), 5);
    }

    #[test]
    fn a_committed_overlay_that_recreates_and_changes_nodes_is_consistent() {
        // Removed and re-created in one transaction, and only changed.
        let store = store_with(&["/b/b", "/c"]);
        let mut tx = store.begin();
        tx.remove(&p("/b")).unwrap();
        tx.write(&p("/b/x0"), b"0", None).unwrap();
        tx.write(&p("/c"), b"changed", None).unwrap();
        tx.write(&p("/c/d"), b"", None).unwrap();
        commit(&store, tx).unwrap();
        let snap = store.snapshot();
        snap.check_consistent().unwrap();
        assert_eq!(snap.get("/b").unwrap().children().to_wire(), b"x0\0");
        assert_eq!(snap.get("/c").unwrap().children().to_wire(), b"d\0");
    }

    mod overlay_against_replay {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Write(u8, u8),
            Mkdir(u8),
            Remove(u8),
            Chown(u8, u8),
        }

        /// Paths of a small tree, deep enough for subtrees and implicit levels.
        fn path(i: u8) -> Path {
            let names = ["a", "b", "c"];
            let i = usize::from(i);
            let s = match i % 4 {
                0 => alloc::format!("/{}", names[i % 3]),
                1 => alloc::format!("/{}/{}", names[i % 3], names[(i / 3) % 3]),
                2 => alloc::format!("/{}/{}/{}", names[i % 3], names[(i / 3) % 3], names[(i / 9) % 3]),
                _ => alloc::format!("/{}/x{}", names[i % 3], i % 5),
            };
            Path::new(&s).expect("test path")
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (any::<u8>(), any::<u8>()).prop_map(|(p, v)| Op::Write(p, v)),
                1 => any::<u8>().prop_map(Op::Mkdir),
                2 => any::<u8>().prop_map(Op::Remove),
                1 => (any::<u8>(), 0u8..4).prop_map(|(p, d)| Op::Chown(p, d)),
            ]
        }

        fn run(tx: &mut Transaction, ops: &[Op]) {
            for op in ops {
                // Refusals (a missing node, say) are part of the sequence.
                let _ = match op {
                    Op::Write(p, v) => tx.write(&path(*p), &[*v], Some(DomId(u16::from(*v % 3)))).map(drop),
                    Op::Mkdir(p) => tx.mkdir(&path(*p), None).map(drop),
                    Op::Remove(p) => tx.remove(&path(*p)).map(drop),
                    Op::Chown(p, d) => tx.set_perms(&path(*p), Perms::owned_by(DomId(u16::from(*d)))).map(drop),
                };
            }
        }

        fn same(a: &Snapshot, b: &Snapshot) {
            assert_eq!(a.entries().collect::<Vec<_>>(), b.entries().collect::<Vec<_>>());
            assert_eq!(a.owners().collect::<Vec<_>>().len(), b.owners().collect::<Vec<_>>().len());
            for (d, n) in a.owners() {
                assert_eq!(b.owned_count(d), n, "{d:?}");
            }
            assert_eq!(a.len(), b.len());
            assert_eq!(a.next_generation(), b.next_generation());
            a.check_consistent().expect("consistent");
        }

        proptest! {
            /// A transaction's overlay, taken into its fork point, is exactly
            /// what replaying its mutations there gives: nodes, generations,
            /// counts, and the changes reported.
            #[test]
            fn absorbing_equals_replaying(setup in proptest::collection::vec(op(), 0..30), ops in proptest::collection::vec(op(), 1..30)) {
                let store = Store::new(Snapshot::new(Perms::owned_by(DomId(0))));
                store.update(|tx| { run(tx, &setup); Ok::<_, ()>(()) }).expect("setup");
                let mut tx = store.begin();
                run(&mut tx, &ops);
                // The view answers like the version it stands for.
                let log = tx.log.clone();
                let base = tx.base().clone();
                let view_len = tx.view().len();
                let view_nodes: Vec<(Path, Option<u64>)> = (0..=255u8).map(|i| (path(i), tx.view().get(path(i).as_str()).map(Node::generation))).collect();
                let (absorbed, changes) = tx.into_result();
                let (replayed, replayed_changes) = replay(&log, base).expect("replays onto its own fork point");
                same(&absorbed, &replayed);
                prop_assert_eq!(changes, replayed_changes);
                prop_assert_eq!(view_len, absorbed.len());
                for (p, g) in view_nodes {
                    prop_assert_eq!(absorbed.get(p.as_str()).map(Node::generation), g);
                }
            }
        }
    }
}
