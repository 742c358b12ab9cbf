//! Checkpoint write and load time and file size at 100k and 1M nodes
//! (issue 6's targets: 1M nodes written and loaded in under 1 s each).
//!
//! `cargo bench --bench persist`. Prints the file sizes; criterion times
//! encode+write+fsync and read+decode+verify (not the drop of the loaded
//! state: a daemon keeps what it loads).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use persist::{SavedState, StateDir};
use rxenstored_suite::tree::host_shaped;

fn state(nodes: usize) -> SavedState {
    SavedState { snapshot: host_shaped(nodes), domains: Vec::new(), global_quotas: Vec::new() }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("checkpoint");
    group.sample_size(10);
    for size in [100_000usize, 1_000_000] {
        let st = state(size);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StateDir::write_checkpoint(dir.path(), &st, 1).expect("write");
        eprintln!("checkpoint of {size} nodes: {} bytes", std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0));
        group.bench_with_input(BenchmarkId::new("write", size), &st, |b, st| {
            b.iter(|| StateDir::write_checkpoint(dir.path(), st, 1).expect("write"))
        });
        let sd = StateDir::open(dir.path()).expect("open");
        group.bench_function(BenchmarkId::new("load", size), |b| {
            b.iter_with_large_drop(|| sd.load().expect("load").expect("state"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
