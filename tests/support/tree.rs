//! Trees for the benchmarks.

use engine::{DomId, Path, Perms, Snapshot, TreeEntry};

/// A tree of `nodes` nodes shaped like a host's: `/local/domain/<d>/key<k>`
/// with 100 keys a domain, every value `value`, everything owned by dom0.
pub fn host_shaped(nodes: usize) -> Snapshot {
    let perms = Perms::owned_by(DomId(0));
    let entry = |path: String| TreeEntry {
        path: Path::new(&path).expect("valid"),
        value: b"value".to_vec(),
        perms: perms.clone(),
        generation: 1,
    };
    let mut entries = vec![entry("/".into()), entry("/local".into()), entry("/local/domain".into())];
    'outer: for d in 0.. {
        entries.push(entry(format!("/local/domain/{d}")));
        for k in 0..100 {
            if entries.len() >= nodes {
                break 'outer;
            }
            entries.push(entry(format!("/local/domain/{d}/key{k}")));
        }
    }
    Snapshot::from_entries(entries).expect("tree")
}
