//! Real state files written by C xenstored 4.17, loaded into the engine's
//! store and written back: the tree a live update would hand over.

use snapshot_tools::engine_conv::{from_engine, to_engine};
use snapshot_tools::read_stream;

#[test]
fn real_files_load_into_the_engine_and_back() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).expect("data dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "state") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read");
        let parsed = read_stream(&bytes).expect("parse");
        let store = to_engine(&parsed.snapshot.nodes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        store.check_consistent().expect("consistent");
        let committed: Vec<_> = parsed.snapshot.nodes.iter().filter(|n| n.conn_id == 0).collect();
        assert_eq!(store.len() + store.special_nodes().count(), committed.len(), "{}", path.display());
        // Every node keeps its value and permissions.
        let back = from_engine(&store);
        for n in &committed {
            let b = back.iter().find(|b| b.path == n.path).unwrap_or_else(|| panic!("{} lost", n.path_str()));
            assert_eq!((&b.value, &b.perms), (&n.value, &n.perms), "{}", n.path_str());
        }
        checked += 1;
    }
    assert!(checked >= 1, "no real state files found");
}
