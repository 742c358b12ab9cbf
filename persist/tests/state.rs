//! Checkpoints and commit logs: round trips, replay, and damaged files.
//!
//! Guards against the two ways persistence fails users: a restarted daemon
//! whose tree differs from the one it acknowledged (lost or reordered
//! commits, lost generations), and a damaged file that is loaded silently
//! wrong or crashes the daemon instead of being reported.

use engine::{DomId, Path, Perms, Snapshot, Store, TreeEntry};
use persist::{DomainRecord, LoadError, LogRecord, QuotaValue, SavedState, StateDir, WatchRecord};
use proptest::prelude::*;

const PATHS: &[&str] = &["/a", "/a/b", "/a/c", "/a/b/d", "/b", "/b/x", "@releaseDomain"];

#[derive(Clone, Debug)]
enum Op {
    Write(usize, u8),
    Rm(usize),
    Perms(usize, u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PATHS.len() - 1, any::<u8>()).prop_map(|(p, v)| Op::Write(p, v)),
        1 => (0..PATHS.len() - 1).prop_map(Op::Rm),
        1 => (0..PATHS.len(), 0..4u16).prop_map(|(p, d)| Op::Perms(p, d)),
    ]
}

fn path(i: usize) -> Path {
    Path::new(PATHS[i]).expect("valid")
}

fn fresh_store() -> Store {
    let snap =
        Snapshot::new(Perms::owned_by(DomId(0))).with_special(&path(6), Perms::owned_by(DomId(0))).expect("special");
    Store::new(snap)
}

/// Runs transactions of `ops` (chunks of 3) and returns the log records.
fn run(store: &Store, ops: &[Op]) -> Vec<LogRecord> {
    let mut records = Vec::new();
    for chunk in ops.chunks(3) {
        let mut tx = store.begin();
        for op in chunk {
            let _ = match *op {
                Op::Write(p, v) => tx.write(&path(p), &[v, 0, v], None).map(|_| ()),
                Op::Rm(p) => tx.remove(&path(p)).map(|_| ()),
                Op::Perms(p, d) => tx.set_perms(&path(p), Perms::owned_by(DomId(d))).map(|_| ()),
            };
        }
        if tx.is_read_only() {
            continue;
        }
        let commit = store.commit(tx, |_| Ok::<_, ()>(())).expect("no concurrency, no conflict");
        records.push(LogRecord::from_commit(records.len() as u64 + 1, &commit));
    }
    records
}

fn entries(s: &Snapshot) -> Vec<TreeEntry> {
    s.entries().collect()
}

fn domains() -> Vec<DomainRecord> {
    vec![DomainRecord {
        domid: 5,
        introduced: true,
        gfn: 0xfeffe,
        port: 7,
        features: 14,
        target: Some(3),
        quotas: vec![QuotaValue { name: "nodes".into(), value: 500, soft: false }],
        watches: vec![WatchRecord { path: b"device".to_vec(), token: b"tok".to_vec(), depth: Some(1) }],
    }]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn checkpoints_round_trip_with_generations(ops in prop::collection::vec(op(), 0..30)) {
        let store = fresh_store();
        run(&store, &ops);
        let dir = tempfile::tempdir().expect("tempdir");
        let state = SavedState { snapshot: store.snapshot(), domains: domains(), global_quotas: vec![QuotaValue { name: "memory".into(), value: 9, soft: true }] };
        StateDir::write_checkpoint(dir.path(), &state, 42).expect("write");
        let got = StateDir::open(dir.path()).expect("open").load().expect("load").expect("state");
        prop_assert_eq!(got.seq, 42);
        prop_assert_eq!(entries(&got.state.snapshot), entries(&state.snapshot));
        prop_assert_eq!(got.state.snapshot.next_generation(), state.snapshot.next_generation());
        prop_assert_eq!(got.state.domains, state.domains);
        prop_assert_eq!(got.state.global_quotas, state.global_quotas);
    }

    #[test]
    fn log_replay_reproduces_the_store(ops in prop::collection::vec(op(), 0..40), cut in 0usize..15) {
        let store = fresh_store();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sd = StateDir::open(dir.path()).expect("open");
        // A checkpoint after the first `cut` records, the log for the rest.
        let records = run(&store, &ops);
        let cut = cut.min(records.len());
        let replay = fresh_store();
        let mut snap = replay.snapshot();
        for r in &records[..cut] {
            r.apply(&mut snap).expect("apply");
        }
        let state = SavedState { snapshot: snap, domains: Vec::new(), global_quotas: Vec::new() };
        StateDir::write_checkpoint(dir.path(), &state, cut as u64).expect("checkpoint");
        sd.start_log(cut as u64 + 1).expect("log");
        sd.append(&records[cut..]).expect("append");
        let got = sd.load().expect("load").expect("state");
        prop_assert_eq!(got.seq, records.len() as u64);
        prop_assert_eq!(entries(&got.state.snapshot), entries(&store.snapshot()));
        prop_assert_eq!(got.state.snapshot.next_generation(), store.snapshot().next_generation());
        prop_assert!(got.warnings.is_empty());
    }

    #[test]
    fn damaged_checkpoints_are_reported_never_loaded(ops in prop::collection::vec(op(), 1..20), at in any::<prop::sample::Index>(), bit in 0u8..8, truncate in any::<bool>()) {
        let store = fresh_store();
        run(&store, &ops);
        let dir = tempfile::tempdir().expect("tempdir");
        let state = SavedState { snapshot: store.snapshot(), domains: domains(), global_quotas: Vec::new() };
        let file = StateDir::write_checkpoint(dir.path(), &state, 1).expect("write");
        let mut bytes = std::fs::read(&file).expect("read");
        let i = at.index(bytes.len());
        if truncate { bytes.truncate(i) } else { bytes[i] ^= 1 << bit }
        std::fs::write(&file, &bytes).expect("write");
        match StateDir::open(dir.path()).expect("open").load() {
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("checkpoint-"), "error names the file: {}", msg);
            }
            // A flip inside the format-version field may announce a newer
            // version; anything else must fail. Nothing loads silently.
            Ok(_) => prop_assert!(false, "damaged checkpoint loaded (byte {} of {})", i, bytes.len()),
        }
    }
}

#[test]
fn torn_last_record_is_dropped_with_a_warning() {
    let store = fresh_store();
    let records = run(&store, &[Op::Write(0, 1), Op::Write(1, 2), Op::Write(4, 3), Op::Write(2, 4)]);
    assert_eq!(records.len(), 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sd = StateDir::open(dir.path()).expect("open");
    sd.start_log(1).expect("log");
    sd.append(&records).expect("append");
    let log = dir.path().join(format!("log-{:020}.rxl", 1));
    let len = std::fs::metadata(&log).expect("log").len();
    let f = std::fs::OpenOptions::new().write(true).open(&log).expect("open");
    f.set_len(len - 3).expect("truncate");
    let got = sd.load().expect("load").expect("state");
    assert_eq!(got.seq, 1, "the torn second record is gone");
    assert_eq!(got.warnings.len(), 1, "{:?}", got.warnings);
    // The file was repaired: a second load has nothing to warn about.
    assert!(sd.load().expect("load").expect("state").warnings.is_empty());
}

#[test]
fn a_log_whose_header_a_crash_cut_short_is_removed_with_a_warning() {
    // A daemon killed while it started a new log (older versions created
    // the file before writing its header): the log holds nothing.
    let store = fresh_store();
    let records = run(&store, &[Op::Write(0, 1), Op::Write(1, 2)]);
    for kept in [0usize, 5, 19] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sd = StateDir::open(dir.path()).expect("open");
        sd.start_log(1).expect("log");
        sd.append(&records).expect("append");
        let next = dir.path().join(format!("log-{:020}.rxl", records.len() + 1));
        let header = std::fs::read(dir.path().join(format!("log-{:020}.rxl", 1))).expect("first log");
        std::fs::write(&next, &header[..kept]).expect("torn log");
        let got = sd.load().expect("load").expect("state");
        assert_eq!(got.seq, records.len() as u64, "{kept} bytes kept");
        assert_eq!(got.warnings.len(), 1, "{:?}", got.warnings);
        assert!(!next.exists(), "the empty log is gone");
        // A new log can start where the torn one was, and recovery goes on.
        sd.start_log(records.len() as u64 + 1).expect("log");
        assert!(sd.load().expect("load").expect("state").warnings.is_empty());
    }
    // Cut short anywhere but at the end, it is corruption as before.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sd = StateDir::open(dir.path()).expect("open");
    sd.start_log(1).expect("log");
    std::fs::write(dir.path().join(format!("log-{:020}.rxl", 1)), b"RXLOG").expect("torn log");
    sd.start_log(2).expect("log");
    assert!(matches!(sd.load().expect_err("corrupt"), LoadError::Corrupt { .. }));
}

#[test]
fn damage_inside_the_log_is_corruption() {
    let store = fresh_store();
    let records =
        run(&store, &[Op::Write(0, 1), Op::Write(1, 2), Op::Write(4, 3), Op::Write(2, 4), Op::Write(5, 5), Op::Rm(0)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sd = StateDir::open(dir.path()).expect("open");
    sd.start_log(1).expect("log");
    sd.append(&records).expect("append");
    let log = dir.path().join(format!("log-{:020}.rxl", 1));
    let mut bytes = std::fs::read(&log).expect("read");
    bytes[30] ^= 0x40;
    std::fs::write(&log, &bytes).expect("write");
    let err = sd.load().expect_err("corrupt");
    assert!(matches!(err, LoadError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("log-"), "{err}");
}

#[test]
fn newer_format_versions_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = SavedState { snapshot: fresh_store().snapshot(), domains: Vec::new(), global_quotas: Vec::new() };
    let file = StateDir::write_checkpoint(dir.path(), &state, 1).expect("write");
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&file, &bytes).expect("write");
    let err = StateDir::open(dir.path()).expect("open").load().expect_err("newer");
    assert!(matches!(err, LoadError::NewerVersion { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("newer than this rxenstored"));
}

#[test]
fn a_gap_in_the_log_is_refused() {
    let store = fresh_store();
    let mut records = run(&store, &[Op::Write(0, 1), Op::Write(1, 2), Op::Write(4, 3), Op::Write(2, 4)]);
    records.remove(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sd = StateDir::open(dir.path()).expect("open");
    sd.start_log(1).expect("log");
    sd.append(&records).expect("append");
    let err = sd.load().expect_err("gap");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn prune_keeps_what_recovery_needs_and_set_aside_keeps_everything() {
    let store = fresh_store();
    let records = run(
        &store,
        &[Op::Write(0, 1), Op::Write(1, 2), Op::Write(4, 3), Op::Write(2, 4), Op::Write(5, 1), Op::Write(3, 9)],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sd = StateDir::open(dir.path()).expect("open");
    sd.start_log(1).expect("log");
    sd.append(&records[..1]).expect("append");
    // Checkpoint after commit 1, new log from 2.
    let mut snap = fresh_store().snapshot();
    records[0].apply(&mut snap).expect("apply");
    sd.start_log(2).expect("log");
    sd.append(&records[1..]).expect("append");
    StateDir::write_checkpoint(
        dir.path(),
        &SavedState { snapshot: snap, domains: Vec::new(), global_quotas: Vec::new() },
        1,
    )
    .expect("cp");
    sd.prune(1).expect("prune");
    let got = sd.load().expect("load").expect("state");
    assert_eq!(entries(&got.state.snapshot), entries(&store.snapshot()));
    assert!(!dir.path().join(format!("log-{:020}.rxl", 1)).exists(), "the log before the checkpoint is gone");
    let aside = sd.set_aside().expect("set aside").expect("there was state");
    assert!(sd.load().expect("load").is_none());
    assert_eq!(std::fs::read_dir(aside).expect("dir").count(), 2);
}

#[test]
fn open_creates_missing_directories_and_refuses_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nested = dir.path().join("a/b/state");
    let sd = StateDir::open(&nested).expect("open creates the levels");
    assert!(nested.is_dir());
    assert!(sd.load().expect("load").is_none());
    StateDir::open(&nested).expect("open an existing directory");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    assert!(StateDir::open(&file).is_err(), "a file is not a state directory");
}

#[test]
fn a_zero_filled_tail_is_dropped_with_a_warning() {
    // A power loss can leave a log's new length on disk without its data
    // (XFS, ext4 with data=writeback): zeros where the last records were
    // being written, or after the first bytes of them. Eight zero bytes
    // even look like a record with an empty payload and a valid checksum.
    let store = fresh_store();
    let records = run(&store, &[Op::Write(0, 1), Op::Write(1, 2), Op::Write(4, 3), Op::Write(2, 4)]);
    assert_eq!(records.len(), 2);
    let log = |dir: &std::path::Path| dir.join(format!("log-{:020}.rxl", 1));
    let setup = || {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sd = StateDir::open(dir.path()).expect("open");
        sd.start_log(1).expect("log");
        sd.append(&records[..1]).expect("append");
        let len = std::fs::metadata(log(dir.path())).expect("log").len() as usize;
        sd.append(&records[1..]).expect("append");
        (dir, sd, len)
    };
    for zeros_after in [0usize, 1, 9] {
        for extra in [0usize, 8, 100] {
            let (dir, sd, first_end) = setup();
            let mut bytes = std::fs::read(log(dir.path())).expect("read");
            let cut = (first_end + zeros_after).min(bytes.len());
            bytes[cut..].fill(0);
            bytes.resize(bytes.len() + extra, 0);
            std::fs::write(log(dir.path()), &bytes).expect("write");
            let got = sd.load().expect("load").expect("state");
            assert_eq!(got.seq, 1, "zeros from byte {cut}, {extra} more");
            assert_eq!(got.warnings.len(), 1, "{:?}", got.warnings);
            assert_eq!(std::fs::metadata(log(dir.path())).expect("log").len() as usize, first_end, "cut back");
        }
    }
    // Zeros with a record after them are damage, not a torn write.
    let (dir, sd, _) = setup();
    let mut bytes = std::fs::read(log(dir.path())).expect("read");
    bytes[28..36].fill(0);
    std::fs::write(log(dir.path()), &bytes).expect("write");
    assert!(matches!(sd.load().expect_err("corrupt"), LoadError::Corrupt { .. }));
    // And zeros at the end of a log that is not the last one too.
    let (dir, mut sd, _) = setup();
    let mut f = std::fs::OpenOptions::new().append(true).open(log(dir.path())).expect("open");
    std::io::Write::write_all(&mut f, &[0; 16]).expect("zeros");
    sd.start_log(3).expect("log");
    assert!(matches!(sd.load().expect_err("corrupt"), LoadError::Corrupt { .. }));
}
