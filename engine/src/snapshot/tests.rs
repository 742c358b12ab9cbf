//! Unit tests of the tree operations, through transactions on a store as
//! the server uses them.

use alloc::string::String;
use alloc::vec::Vec;

use crate::{Access, Change, DomId, Path, Perm, Perms, Snapshot, Store, TreeEntry};

fn p(s: &str) -> Path {
    Path::new(s).expect("test path")
}

fn store() -> Store {
    Store::new(Snapshot::new(Perms::owned_by(DomId(0))))
}

fn write(store: &Store, path: &str, value: &[u8]) -> Change {
    let (c, _) = store.update(|tx| tx.write(&p(path), value, None)).expect("write");
    c
}

fn names(s: &Snapshot, path: &str) -> Vec<String> {
    s.get(path).expect("node").children().iter().map(String::from).collect()
}

fn perms(entries: &[(Access, u16)]) -> Perms {
    let v: Vec<Perm> = entries.iter().map(|&(a, d)| Perm::new(a, DomId(d))).collect();
    Perms::new(&v).expect("non-empty")
}

#[test]
fn write_creates_missing_ancestors_with_empty_values() {
    let s = store();
    assert_eq!(write(&s, "/a/b/c", b"v"), Change::Written { path: p("/a/b/c"), created: true });
    let snap = s.snapshot();
    assert_eq!(snap.get("/a").unwrap().value().as_bytes(), b"");
    assert_eq!(snap.get("/a/b").unwrap().value().as_bytes(), b"");
    assert_eq!(snap.get("/a/b/c").unwrap().value().as_bytes(), b"v");
    assert_eq!(names(&snap, "/"), ["a"]);
    assert_eq!(names(&snap, "/a"), ["b"]);
    assert_eq!(snap.len(), 4);
    snap.check_consistent().unwrap();
}

#[test]
fn values_are_binary_safe_and_may_be_empty() {
    let s = store();
    write(&s, "/bin", b"a\0b");
    write(&s, "/empty", b"");
    let snap = s.snapshot();
    assert_eq!(snap.get("/bin").unwrap().value().as_bytes(), b"a\0b");
    assert!(snap.get("/empty").unwrap().value().is_empty());
}

#[test]
fn rewrite_of_existing_node_keeps_children_and_perms() {
    let s = store();
    write(&s, "/a/b", b"1");
    assert_eq!(write(&s, "/a", b"x"), Change::Written { path: p("/a"), created: false });
    let snap = s.snapshot();
    assert_eq!(names(&snap, "/a"), ["b"]);
    assert_eq!(snap.get("/a").unwrap().value().as_bytes(), b"x");
}

#[test]
fn implicit_creation_copies_parent_perms_and_replaces_owner_for_creator() {
    let s = store();
    write(&s, "/w", b"");
    let w_perms = perms(&[(Access::None, 0), (Access::Both, 5)]);
    s.update(|tx| tx.set_perms(&p("/w"), w_perms.clone())).unwrap();
    // Privileged creation: copied unchanged.
    s.update(|tx| tx.write(&p("/w/priv/x"), b"", None)).unwrap();
    // Creation on behalf of domain 5: owner replaced, letter and ACL kept.
    s.update(|tx| tx.mkdir(&p("/w/x/y"), Some(DomId(5)))).unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.get("/w/priv").unwrap().perms(), &w_perms);
    assert_eq!(snap.get("/w/priv/x").unwrap().perms(), &w_perms);
    assert_eq!(snap.get("/w/x").unwrap().perms().to_wire(), b"n5\0b5\0");
    assert_eq!(snap.get("/w/x/y").unwrap().perms().to_wire(), b"n5\0b5\0");
    assert_eq!(snap.owned_count(DomId(5)), 2);
    assert_eq!(snap.owned_count(DomId(0)), 4);
    snap.check_consistent().unwrap();
}

#[test]
fn mkdir_of_existing_node_changes_nothing() {
    let s = store();
    write(&s, "/m", b"v");
    let before = s.snapshot();
    let (c, _) = s.update(|tx| tx.mkdir(&p("/m"), None)).unwrap();
    assert_eq!(c, None);
    assert!(s.snapshot().same_version(&before), "no new version published");
    assert_eq!(s.snapshot().get("/m").unwrap().value().as_bytes(), b"v");
}

#[test]
fn remove_deletes_subtree_children_first() {
    let s = store();
    write(&s, "/a/b/c", b"");
    write(&s, "/a/d", b"");
    write(&s, "/keep", b"");
    let (c, _) = s.update(|tx| tx.remove(&p("/a"))).unwrap();
    let Some(Change::Removed { path, descendants, .. }) = c else { panic!("expected Removed, got {c:?}") };
    assert_eq!(path, p("/a"));
    let order: Vec<&str> = descendants.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(order, ["/a/b/c", "/a/b", "/a/d"]);
    let snap = s.snapshot();
    assert!(!snap.contains("/a") && !snap.contains("/a/b/c"));
    assert_eq!(names(&snap, "/"), ["keep"]);
    assert_eq!(snap.len(), 2);
    assert_eq!(snap.owned_count(DomId(0)), 2);
    snap.check_consistent().unwrap();
}

#[test]
fn remove_of_missing_node_and_of_root() {
    let s = store();
    assert_eq!(s.update(|tx| tx.remove(&p("/nope"))).unwrap().0, None);
    assert!(s.update(|tx| tx.remove(&Path::root())).is_err());
    assert!(s.update(|tx| tx.remove(&p("@releaseDomain"))).is_err());
}

#[test]
fn children_keep_creation_order_across_delete_and_recreate() {
    let s = store();
    for n in ["z", "a", "m"] {
        write(&s, &alloc::format!("/d/{n}"), b"");
    }
    assert_eq!(names(&s.snapshot(), "/d"), ["z", "a", "m"]);
    s.update(|tx| tx.remove(&p("/d/z"))).unwrap();
    write(&s, "/d/z", b"");
    assert_eq!(names(&s.snapshot(), "/d"), ["a", "m", "z"]);
    assert_eq!(s.snapshot().get("/d").unwrap().children().to_wire(), b"a\0m\0z\0");
}

#[test]
fn generations_are_fresh_for_every_modified_node() {
    let s = store();
    write(&s, "/d", b"");
    let g0 = s.snapshot().get("/d").unwrap().generation();
    write(&s, "/d/x", b"");
    let snap = s.snapshot();
    let g1 = snap.get("/d").unwrap().generation();
    let gx = snap.get("/d/x").unwrap().generation();
    assert!(g1 > g0, "adding a child bumps the parent");
    assert_ne!(g1, gx);
    write(&s, "/d/x", b"same");
    let g2 = s.snapshot().get("/d/x").unwrap().generation();
    assert!(g2 > gx);
    assert_eq!(s.snapshot().get("/d").unwrap().generation(), g1, "writing a child's value leaves the parent");
    s.update(|tx| tx.set_perms(&p("/d"), Perms::owned_by(DomId(3)))).unwrap();
    assert!(s.snapshot().get("/d").unwrap().generation() > g2);
    s.snapshot().check_consistent().unwrap();
}

#[test]
fn set_perms_moves_ownership_counts() {
    let s = store();
    write(&s, "/q/x", b"");
    s.update(|tx| tx.set_perms(&p("/q"), Perms::owned_by(DomId(7)))).unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.owned_count(DomId(7)), 1);
    assert_eq!(snap.owned_count(DomId(0)), 2);
    assert!(s.update(|tx| tx.set_perms(&p("/missing"), Perms::owned_by(DomId(1)))).is_err());
}

#[test]
fn special_nodes_carry_perms_only_and_stay_out_of_the_tree() {
    let rel = p("@releaseDomain");
    let snap = Snapshot::new(Perms::owned_by(DomId(0)))
        .with_special(&rel, perms(&[(Access::None, 0), (Access::Read, 0x7FF5)]))
        .unwrap();
    let s = Store::new(snap);
    assert!(s.update(|tx| tx.write(&rel, b"x", None)).is_err());
    assert!(s.update(|tx| tx.mkdir(&p("@releaseDomain/5"), None)).is_err());
    s.update(|tx| tx.set_perms(&rel, Perms::owned_by(DomId(0)))).unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.get("@releaseDomain").unwrap().perms().to_wire(), b"n0\0");
    assert!(names(&snap, "/").is_empty());
    assert_eq!(snap.len(), 1);
    assert_eq!(snap.iter_tree().count(), 1);
    assert_eq!(snap.special_nodes().count(), 1);
    snap.check_consistent().unwrap();
}

#[test]
fn entries_round_trip_through_from_entries() {
    let s = store();
    write(&s, "/b/y", b"1");
    write(&s, "/a", b"\0\xff");
    write(&s, "/b/x", b"2");
    s.update(|tx| tx.set_perms(&p("/b/x"), perms(&[(Access::Read, 4), (Access::Write, 9)]))).unwrap();
    let snap = s.snapshot().with_special(&p("@introduceDomain"), Perms::owned_by(DomId(0))).unwrap();
    let entries: Vec<TreeEntry> = snap.entries().collect();
    let order: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(order, ["/", "/b", "/b/y", "/b/x", "/a", "@introduceDomain"]);
    let back = Snapshot::from_entries(entries.clone()).unwrap();
    back.check_consistent().unwrap();
    assert_eq!(back.entries().collect::<Vec<_>>(), entries);
    assert_eq!(back.next_generation(), snap.next_generation());
    assert_eq!(back.owned_count(DomId(4)), 1);
}

#[test]
fn from_entries_rejects_non_trees() {
    let e =
        |path: &str| TreeEntry { path: p(path), value: Vec::new(), perms: Perms::owned_by(DomId(0)), generation: 0 };
    assert!(Snapshot::from_entries::<Vec<u8>, _>([]).is_err());
    assert!(Snapshot::from_entries([e("/a")]).is_err());
    assert!(Snapshot::from_entries([e("/"), e("/a/b")]).is_err());
    assert!(Snapshot::from_entries([e("/"), e("/a"), e("/a")]).is_err());
    // A sibling repeated after another: both copies wait in one batch.
    assert!(Snapshot::from_entries([e("/"), e("/a"), e("/a/b"), e("/a/c"), e("/a/b")]).is_err());
    assert!(Snapshot::from_entries([e("/"), e("/a"), e("/a/b")]).is_ok());
}

#[test]
fn restore_primitives_replay_exact_states() {
    let s = store();
    write(&s, "/a/b", b"1");
    write(&s, "/a/c", b"2");
    let live = s.snapshot();
    // Rebuild the same tree from logged states, in the order a log has them.
    let mut r = Snapshot::new(Perms::owned_by(DomId(0)));
    for (path, node) in live.iter_tree() {
        r.restore_node(&path, node.value().as_bytes(), node.perms().clone(), node.generation()).unwrap();
    }
    r.restore_next_generation(live.next_generation());
    assert_eq!(r.entries().collect::<Vec<_>>(), live.entries().collect::<Vec<_>>());
    assert_eq!(r.next_generation(), live.next_generation());
    r.check_consistent().unwrap();
    // A removal keeps the parent's generation; its own upsert sets it.
    let g = r.get("/a").unwrap().generation();
    r.restore_removal(&p("/a/b")).unwrap();
    assert_eq!(r.get("/a").unwrap().generation(), g);
    assert_eq!(names(&r, "/a"), ["c"]);
    r.check_consistent().unwrap();
    assert!(r.restore_node(&p("/x/y"), b"", Perms::owned_by(DomId(0)), 1).is_err(), "parent missing");
}

#[test]
fn from_entries_accepts_any_parent_first_order() {
    let e = |path: &str| TreeEntry {
        path: p(path),
        value: path.as_bytes().to_vec(),
        perms: Perms::owned_by(DomId(3)),
        generation: 2,
    };
    // Breadth-first rather than pre-order.
    let snap = Snapshot::from_entries([e("/"), e("/a"), e("/b"), e("/a/x"), e("/b/y"), e("/a/z")]).unwrap();
    snap.check_consistent().unwrap();
    assert_eq!(names(&snap, "/"), ["a", "b"]);
    assert_eq!(names(&snap, "/a"), ["x", "z"]);
    assert_eq!(snap.owned_count(DomId(3)), 6);
    assert_eq!(snap.get("/b/y").unwrap().value().as_bytes(), b"/b/y");
    assert!(Snapshot::from_entries([e("/"), e("/a"), e("/a/x"), e("/b"), e("/a/x")]).is_err(), "duplicate after close");
}
