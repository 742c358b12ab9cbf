//! Engine micro-benchmarks: transaction fork, point read, a one-write commit
//! and a 50-path transaction commit, on trees of 1k, 100k and 1M nodes.
//!
//! Fork must be flat across sizes (it is a pointer copy); the others grow
//! with the depth of the trie (log32 of the size).
//!
//! `cargo bench --bench engine`; `-- --quick` for a fast pass.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use engine::{Path, Store};
use rxenstored_suite::tree::host_shaped;

/// A tree shaped like a host's: /local/domain/<d>/<k> with 100 keys a domain.
fn tree(nodes: usize) -> Store {
    Store::new(host_shaped(nodes))
}

fn bench(c: &mut Criterion) {
    for size in [1_000usize, 100_000, 1_000_000] {
        let store = tree(size);
        let existing = Path::new("/local/domain/3/key42").expect("valid");

        c.bench_with_input(BenchmarkId::new("fork", size), &store, |b, s| b.iter(|| black_box(s.begin())));

        c.bench_with_input(BenchmarkId::new("point_read", size), &store, |b, s| {
            let snap = s.snapshot();
            b.iter(|| black_box(snap.get(black_box(existing.as_str())).map(|n| n.value().len())))
        });

        c.bench_with_input(BenchmarkId::new("write_commit", size), &store, |b, s| {
            b.iter(|| {
                let mut tx = s.begin();
                tx.write(&existing, b"new value", None).expect("write");
                s.commit(tx, |_| Ok::<_, ()>(())).expect("commit")
            })
        });

        // A toolstack-style transaction: 50 writes creating a fresh subtree
        // (removed again outside the timing so the tree does not grow).
        let paths: Vec<Path> = (0..50)
            .map(|i| Path::new(&format!("/local/domain/99999/device/vif/{}/k{}", i / 10, i % 10)).expect("valid"))
            .collect();
        let home = Path::new("/local/domain/99999").expect("valid");
        c.bench_with_input(BenchmarkId::new("txn50_commit", size), &store, |b, s| {
            b.iter_batched(
                || {
                    s.update(|tx| tx.remove(&home)).expect("reset");
                },
                |()| {
                    let mut tx = s.begin();
                    for p in &paths {
                        tx.write(p, b"v", None).expect("write");
                    }
                    s.commit(tx, |_| Ok::<_, ()>(())).expect("commit")
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
