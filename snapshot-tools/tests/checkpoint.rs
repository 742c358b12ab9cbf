//! rxenstored's own checkpoints (persist crate) open in the same tool:
//! a checkpoint file or a state directory, made here with
//! `persist::StateDir::write_checkpoint`.

use std::path::{Path, PathBuf};

use snapshot_tools::{Node, Perm, checkpoint, engine_conv};

mod support;

use support::{json, run, stderr, stdout};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn nodes() -> Vec<Node> {
    let n0 = || vec![Perm::new(b'n', 0)];
    vec![
        Node::committed("/", "", n0()),
        Node::committed("/local", "", n0()),
        Node::committed("/local/domain", "", n0()),
        Node::committed("/local/domain/1", "", vec![Perm::new(b'n', 1), Perm::new(b'r', 2)]),
        Node::committed("/local/domain/1/name", "guest1", vec![Perm::new(b'b', 1), Perm::new(b'r', 2)]),
        Node::committed("/local/domain/1/blob", "a\0\u{7f}", vec![Perm::new(b'n', 1)]),
        Node::committed("/local/domain/2", "", vec![Perm::new(b'n', 2)]),
        Node::committed("@introduceDomain", "", n0()),
    ]
}

fn quota(name: &str, value: u32) -> persist::QuotaValue {
    persist::QuotaValue { name: name.into(), value, soft: false }
}

fn state() -> persist::SavedState {
    let store = engine_conv::to_engine(&nodes()).expect("tree");
    persist::SavedState {
        snapshot: store,
        domains: vec![
            persist::DomainRecord {
                domid: 1,
                introduced: true,
                gfn: 0x1234,
                port: 7,
                features: 1,
                target: None,
                quotas: vec![quota("nodes", 500)],
                watches: vec![persist::WatchRecord {
                    path: b"@releaseDomain".to_vec(),
                    token: b"rel".to_vec(),
                    depth: None,
                }],
            },
            persist::DomainRecord {
                domid: 2,
                introduced: true,
                gfn: 0x5678,
                port: 9,
                target: Some(1),
                ..Default::default()
            },
            persist::DomainRecord { domid: 5, introduced: false, ..Default::default() },
        ],
        global_quotas: vec![quota("nodes", 1000)],
    }
}

/// A state directory holding one checkpoint after commit 42.
fn make(dir: &Path) -> PathBuf {
    persist::StateDir::write_checkpoint(dir, &state(), 42).expect("write checkpoint")
}

#[test]
fn library_loads_file_and_directory_alike() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = make(dir.path());
    let data = std::fs::read(&file).expect("read");
    assert!(checkpoint::is_checkpoint(&data));
    let from_file = checkpoint::load_file(&file).expect("file");
    let from_dir = checkpoint::load_dir(dir.path()).expect("dir");
    assert_eq!(from_file.seq, 42);
    assert_eq!(from_dir.seq, 42);
    assert_eq!(from_file.parsed.snapshot, from_dir.parsed.snapshot);
    let snap = &from_file.parsed.snapshot;
    // from_engine order: the tree in pre-order, then special nodes.
    assert_eq!(snap.nodes, nodes());
    // dom5: neither introduced nor named by a node, so no DOMAIN_DATA.
    assert_eq!(snap.domains.iter().map(|d| d.domid).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(snap.domains[0].features, 1);
    assert_eq!(snap.domains[0].quotas, vec![snapshot_tools::Quota::new("nodes", 500)]);
    // Only introduced domains have a ring.
    assert_eq!(snap.connections.len(), 2);
    assert_eq!(snap.watches.len(), 1);
    assert_eq!(snap.watches[0].token, b"rel");
}

#[test]
fn summary_and_tree_of_a_checkpoint_file_and_a_state_dir() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = make(dir.path());
    for target in [s(&file), s(dir.path())] {
        let o = run(&["summary", target]);
        assert_eq!(o.status.code(), Some(0), "{target}: {}", stderr(&o));
        let t = stdout(&o);
        assert!(t.contains("rxenstored state after commit 42"), "{t}");
        assert!(t.contains("stub domain: dom2 acts for dom1"), "{t}");
        assert!(t.contains("watch '@releaseDomain' token 'rel'"), "{t}");
        let v = json(&run(&["--json", "summary", target]));
        assert_eq!(v["version"], 2);
        assert_eq!(v["stubdom_targets"], serde_json::json!([[2, 1]]));
        let o = run(&["tree", target, "/local/domain/1"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(stdout(&o), "name = \"guest1\"  (b1,r2)\nblob = \"a\\0\\x7f\"  (n1)\n", "{target}");
        let o = run(&["get", target, "/local/domain/1/name"]);
        assert_eq!(stdout(&o), "/local/domain/1/name = \"guest1\"  (b1,r2)\n");
    }
    let kind = json(&run(&["--json", "summary", s(&file)]));
    assert_eq!(kind["kind"], "rxenstored checkpoint");
    let kind = json(&run(&["--json", "summary", s(dir.path())]));
    assert_eq!(kind["kind"], "rxenstored state directory");
}

#[test]
fn checkpoint_converts_to_a_clean_v2_stream() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = make(dir.path());
    let out = tempfile::tempdir().expect("tmp");
    let v2 = out.path().join("from-checkpoint.state");
    let o = run(&["convert", "--to", "v2", s(&file), s(&v2)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&["validate", s(&v2)]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    // No fds to hand over: a C daemon would not take it as a live update.
    let o = run(&["validate", s(&v2), "--as-c", "4.22"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("no GLOBAL_DATA"), "{}", stdout(&o));
    let o = run(&["tree", s(&v2), "/local/domain/1"]);
    assert_eq!(stdout(&o), "name = \"guest1\"  (b1,r2)\nblob = \"a\\0\\x7f\"  (n1)\n");
    // v1 cannot hold domain features: a clear refusal, nothing written.
    let v1 = out.path().join("v1.state");
    let o = run(&["convert", "--to", "v1", s(&file), s(&v1)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot be written as a version 1 stream: domain 1 has features"), "{}", stderr(&o));
    assert!(!v1.exists());
}

#[test]
fn damaged_or_missing_state_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = make(dir.path());
    let mut data = std::fs::read(&file).expect("read");
    let last = data.len() - 10;
    data[last] ^= 0xff;
    let bad_dir = tempfile::tempdir().expect("tmp");
    let bad = bad_dir.path().join("copy.rxs");
    std::fs::write(&bad, &data).expect("write");
    let o = run(&["summary", s(&bad)]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    // Named by the file given, not by the scratch copy.
    assert!(e.contains(&format!("{}: at byte ", bad.display())), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    // Truncated right after the magic.
    std::fs::write(&bad, b"RXSTATE\0\x01").expect("write");
    let o = run(&["tree", s(&bad)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("copy.rxs: at byte"), "{}", stderr(&o));
    // A directory without state.
    let empty = tempfile::tempdir().expect("tmp");
    let o = run(&["summary", s(empty.path())]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no rxenstored state"), "{}", stderr(&o));
}
