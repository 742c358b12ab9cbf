use std::time::Instant;
use engine::{DomId, Path, Perms, Snapshot, TreeEntry};
fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let perms = Perms::owned_by(DomId(0));
    let entry = |path: String| TreeEntry { path: Path::new(&path).unwrap(), value: b"value".to_vec(), perms: perms.clone(), generation: 1 };
    let mut entries = vec![entry("/".into()), entry("/local".into()), entry("/local/domain".into())];
    'outer: for d in 0.. { entries.push(entry(format!("/local/domain/{d}"))); for k in 0..100 { if entries.len() >= n { break 'outer; } entries.push(entry(format!("/local/domain/{d}/key{k}"))); } }
    let t = Instant::now();
    let s = Snapshot::from_entries(entries.clone()).unwrap();
    eprintln!("from_entries {:?}", t.elapsed());
    let t = Instant::now();
    s.check_consistent().unwrap();
    eprintln!("check {:?}", t.elapsed());
    let t = Instant::now();
    let v: Vec<_> = s.entries().collect();
    eprintln!("entries {:?} {}", t.elapsed(), v.len());
}
