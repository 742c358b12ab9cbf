//! Several threads forking, reading and committing at once.
//!
//! Guards against lost updates under real parallelism (the commit lock and
//! the published root are the only shared state) and against readers ever
//! seeing a half-applied commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use engine::{CommitError, DomId, Path, Perms, Snapshot, Store};

const THREADS: usize = 4;
const ROUNDS: usize = 300;

fn p(s: &str) -> Path {
    Path::new(s).expect("valid path")
}

#[test]
fn concurrent_read_modify_write_loses_no_update() {
    let store = Arc::new(Store::new(Snapshot::new(Perms::owned_by(DomId(0)))));
    store.update(|tx| tx.write(&p("/counter"), b"0", None)).expect("setup");
    store.update(|tx| tx.mkdir(&p("/children"), None)).expect("setup");
    let stop = Arc::new(AtomicBool::new(false));

    // A reader checking that every snapshot it sees is a consistent whole:
    // each commit below writes /counter and creates one child together.
    let reader = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        thread::spawn(move || {
            let mut seen = 0;
            while !stop.load(Ordering::Relaxed) {
                let snap = store.snapshot();
                let counter: usize = std::str::from_utf8(snap.get("/counter").expect("counter").value().as_bytes())
                    .expect("utf8")
                    .parse()
                    .expect("number");
                let children = snap.get("/children").expect("dir").children().len();
                assert_eq!(counter, children, "a snapshot shows a half-applied commit");
                seen += 1;
            }
            seen
        })
    };

    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut conflicts = 0;
                for round in 0..ROUNDS {
                    loop {
                        let mut tx = store.begin();
                        let n: usize = std::str::from_utf8(tx.value(&p("/counter")).expect("counter").as_bytes())
                            .expect("utf8")
                            .parse()
                            .expect("number");
                        tx.write(&p("/counter"), (n + 1).to_string().as_bytes(), None).expect("write");
                        tx.write(&p(&format!("/children/t{t}r{round}")), b"", None).expect("write");
                        // Work in a private subtree too: never a conflict source.
                        tx.write(&p(&format!("/private/t{t}")), round.to_string().as_bytes(), None).expect("write");
                        match store.commit(tx, |_| Ok::<_, ()>(())) {
                            Ok(_) => break,
                            Err(CommitError::Conflict { path }) => {
                                assert_eq!(path.as_str(), "/counter", "only the counter is contended");
                                conflicts += 1;
                            }
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let conflicts: usize = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("reader");

    let snap = store.snapshot();
    assert_eq!(snap.get("/counter").expect("counter").value().as_bytes(), (THREADS * ROUNDS).to_string().as_bytes());
    assert_eq!(snap.get("/children").expect("dir").children().len(), THREADS * ROUNDS);
    snap.check_consistent().expect("consistent");
    assert!(reads > 0);
    eprintln!("{} commits, {conflicts} conflicts retried, {reads} snapshots checked", THREADS * ROUNDS);
}

#[test]
fn concurrent_creations_under_one_parent_all_commit_first_time() {
    let store = Arc::new(Store::new(Snapshot::new(Perms::owned_by(DomId(0)))));
    store.update(|tx| tx.write(&p("/local/domain/0/backend/vif"), b"", None)).expect("setup");
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                for i in 0..ROUNDS {
                    let d = t * ROUNDS + i + 1;
                    let mut tx = store.begin();
                    tx.write(&p(&format!("/local/domain/{d}/name")), b"guest", None).expect("write");
                    tx.write(&p(&format!("/local/domain/0/backend/vif/{d}/0/state")), b"1", None).expect("write");
                    store.commit(tx, |_| Ok::<_, ()>(())).expect("disjoint creations must coalesce");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let snap = store.snapshot();
    assert_eq!(snap.get("/local/domain").expect("dir").children().len(), THREADS * ROUNDS + 1);
    assert_eq!(snap.get("/local/domain/0/backend/vif").expect("dir").children().len(), THREADS * ROUNDS);
    snap.check_consistent().expect("consistent");
}
