//! Byte-exact round trips and hand-made streams.
//!
//! Guards against the writer drifting from what C writes (§1.6): every
//! real file must come back byte for byte, and streams in the HEAD layout
//! (v2, DOMAIN, GLOBAL_QUOTA, unique-id, WATCH_EXT) must survive a
//! write/read/write cycle. Also checks that the malformed-record checks of
//! §5.3 fire on damaged input, with the right offsets.

use snapshot_tools::read::{Item, WatchExtLayout};
use snapshot_tools::*;

fn data(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn real_files() -> Vec<(String, Vec<u8>)> {
    let dir = format!("{}/tests/data", env!("CARGO_MANIFEST_DIR"));
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("data dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".state"))
        .map(|n| {
            let bytes = data(&n);
            (n, bytes)
        })
        .collect();
    out.sort();
    assert!(out.len() >= 4, "expected the shared file and the generated ones");
    out
}

#[test]
fn every_real_file_round_trips_byte_exact() {
    for (name, bytes) in real_files() {
        let p = read_stream(&bytes).expect(&name);
        assert!(p.findings.is_empty(), "{name}: {:?}", p.findings);
        let v = p.snapshot.version;
        let again = write_stream(&p.snapshot, WriteFormat::for_version(v)).expect(&name);
        assert_eq!(again, bytes, "{name}: for_version({v})");
        let again = write_stream(&p.snapshot, WriteFormat::detect(&p.snapshot)).expect(&name);
        assert_eq!(again, bytes, "{name}: detect");
        // Per-record bytes too (what a golden test of another writer would compare).
        for r in &p.records {
            let start = r.offset as usize;
            let end = start + 8 + r.length as usize;
            assert_eq!(again.get(start..end), bytes.get(start..end), "{name} record @{start:#x}");
        }
    }
}

#[test]
fn v1_written_as_head_moves_special_nodes_after_tree() {
    let p = read_stream(&data("lu1-basic-4.17.state")).expect("lu1");
    let head_v1 = write_stream(&p.snapshot, WriteFormat::HEAD_V1).expect("write");
    assert_eq!(head_v1.len(), 1328);
    let q = read_stream(&head_v1).expect("read");
    assert!(q.is_clean());
    assert_eq!(q.snapshot.nodes.first().map(|n| n.path.clone()), Some(b"/".to_vec()));
    assert_eq!(q.snapshot.nodes.last().map(|n| n.path.clone()), Some(b"@introduceDomain".to_vec()));
    assert_eq!(WriteFormat::detect(&q.snapshot), WriteFormat::HEAD_V1);
    // Converting back gives the original bytes.
    assert_eq!(write_stream(&q.snapshot, WriteFormat::C417).expect("write"), data("lu1-basic-4.17.state"));
}

/// A stream the way HEAD would write it, with every v2 feature.
fn head_snapshot() -> Stream {
    let ring = |id, domid, target, evtchn, uid| Connection {
        conn_id: id,
        kind: ConnectionKind::Ring { domid, target, evtchn },
        input: Vec::new(),
        output: Vec::new(),
        partial_response_len: 0,
        unique_id: Some(uid),
    };
    let mut sock = Connection {
        conn_id: 3,
        kind: ConnectionKind::Socket { fd: 17 },
        input: b"\x06\0\0\0\x05\0\0\0\0\0\0\0\x01\0\0\0\0".to_vec(),
        output: b"RESP\0\0\0\0\x09\0\0\0\0\0\0\0\x03\0\0\0OK\0".to_vec(),
        partial_response_len: 4,
        unique_id: None,
    };
    sock.input.extend_from_slice(b"\x0b\0\0");
    Stream {
        version: 2,
        byte_order: ByteOrder::Little,
        global: Some(GlobalData { socket_fd: 3, evtchn_fd: 6 }),
        global_quota: Some(GlobalQuota {
            per_domain: vec![Quota::new("nodes", 1000), Quota::new("soft-memory", 2_097_152)],
            global_only: vec![],
        }),
        connections: vec![
            ring(1, 0, DOMID_INVALID, 1, 0x11),
            ring(2, 7, DOMID_INVALID, 9, 0xdead_beef_0000_0007),
            sock,
        ],
        watches: vec![
            Watch { conn_id: 2, path: b"device".to_vec(), token: b"t1".to_vec(), depth: None },
            Watch { conn_id: 2, path: b"/local/domain/7/x".to_vec(), token: b"t".to_vec(), depth: Some(2) },
        ],
        transactions: vec![],
        nodes: vec![
            Node::committed("/", "", vec![Perm::new(b'n', 0)]),
            Node::committed("/local", "", vec![Perm::new(b'n', 0)]),
            Node::committed("/local/domain", "", vec![Perm::new(b'n', 0)]),
            Node::committed("/local/domain/7", "", vec![Perm::new(b'n', 7), Perm { letter: b'r', flags: 1, domid: 9 }]),
            Node::committed("@releaseDomain", "", vec![Perm::new(b'n', 0), Perm::new(b'r', DOMID_ANY)]),
            Node::committed("@introduceDomain", "", vec![Perm::new(b'n', 0)]),
        ],
        domains: vec![
            DomainData { domid: 0, features: 14, quotas: vec![] },
            DomainData { domid: 7, features: 14, quotas: vec![Quota::new("watches", 256)] },
        ],
    }
}

#[test]
fn head_layout_round_trips() {
    let snap = head_snapshot();
    let bytes = write_stream(&snap, WriteFormat::HEAD).expect("write");
    let p = read_stream(&bytes).expect("read");
    assert!(p.is_clean(), "{:?}", p.findings);
    assert_eq!(p.snapshot, snap);
    assert_eq!(write_stream(&p.snapshot, WriteFormat::HEAD).expect("write"), bytes);
    // Ring connections carry the trailer: roundup8(24) + 8.
    assert_eq!(p.records[3].length, 32);
    // The design layout was used for type 8.
    assert!(p.records.iter().any(|r| matches!(r.item, Item::Watch(_, Some(WatchExtLayout::Design)))));
    let (producer, _) = report::guess_producer(&p);
    assert_eq!(producer, "C xenstored 4.22 or later");
    let s = report::summarize("head", &p);
    let c3 = &s.connections[2];
    let kinds: Vec<&str> = c3.pending.iter().map(|m| m.kind).collect();
    assert_eq!(kinds, ["delayed", "partial-request", "partial-response", "lu-reply"]);
    assert_eq!(s.lu_requesters, vec![3]);
    assert_eq!(s.domains[1].features, ["error-indicator", "watch-depth", "domid-any"]);
    assert_eq!(s.domains[1].quotas.get("watches"), Some(&256));
    // 4.22 misreads type 8; 4.21 drops it and the quota part of DOMAIN 7.
    let v422 = cver::check(&p, cver::CVersion::V422);
    assert_eq!(v422.breaks.first().map(|b| b.rule), Some("1.5.5"));
    let v421 = cver::check(&p, cver::CVersion::V421);
    assert!(v421.accepted, "{:?}", v421.breaks);
    assert_eq!(v421.dropped.len(), 3, "{:?}", v421.dropped);
    let v417 = cver::check(&p, cver::CVersion::V417);
    assert_eq!(v417.breaks.first().map(|b| b.rule), Some("1.9"));
}

#[test]
fn writer_refuses_what_the_version_cannot_carry() {
    let snap = head_snapshot();
    assert!(matches!(write_stream(&snap, WriteFormat::HEAD_V1), Err(WriteError::DepthInV1 { .. })));
    let mut s = snap.clone();
    s.watches.retain(|w| w.depth.is_none());
    assert_eq!(write_stream(&s, WriteFormat::HEAD_V1), Err(WriteError::FeaturesInV1(0)));
    let mut s = snap.clone();
    s.connections[2].input = vec![0; 70_000];
    assert!(matches!(write_stream(&s, WriteFormat::HEAD), Err(WriteError::TooLong { .. })));
    let mut s = snap;
    s.watches[0].conn_id = 99;
    assert!(matches!(write_stream(&s, WriteFormat::HEAD), Err(WriteError::UnknownConn { conn_id: 99, .. })));
}

/// Builds the record a buggy 4.22 writer emits for a depth-limited watch.
fn bug_watch_ext(conn_id: u32, path: &[u8], token: &[u8]) -> Vec<u8> {
    let plen = path.len() + 1;
    let tlen = token.len() + 1;
    let declared = (12 + plen + tlen).div_ceil(8) * 8;
    let mut r = Vec::new();
    r.extend_from_slice(&8u32.to_le_bytes());
    r.extend_from_slice(&(declared as u32).to_le_bytes());
    r.extend_from_slice(&conn_id.to_le_bytes());
    r.extend_from_slice(&(plen as u16).to_le_bytes());
    r.extend_from_slice(&(tlen as u16).to_le_bytes());
    r.extend_from_slice(path);
    r.push(0);
    r.extend_from_slice(token);
    r.push(0);
    while r.len() % 8 != 0 {
        r.push(0);
    }
    r
}

#[test]
fn watch_ext_422_bug_layout_is_recognised_and_skipped_over() {
    let mut snap = head_snapshot();
    snap.watches.retain(|w| w.depth.is_none());
    let good = write_stream(&snap, WriteFormat::HEAD).expect("write");
    // Insert a buggy record right after connection 2's watch; (plen+tlen) % 8 == 0
    // makes the declared length 8 bytes longer than what was written.
    let p = read_stream(&good).expect("read");
    let after_watch = p
        .records
        .iter()
        .find(|r| matches!(r.item, Item::Watch(..)))
        .map(|r| r.offset as usize + 8 + r.length as usize)
        .expect("a watch");
    let rec = bug_watch_ext(2, b"/abcdefghij", b"tok");
    assert_eq!((12 + 4) % 8, 0);
    let mut bytes = good[..after_watch].to_vec();
    bytes.extend_from_slice(&rec);
    bytes.extend_from_slice(&good[after_watch..]);
    let q = read_stream(&bytes).expect("read");
    let bug = q.findings.iter().find(|f| f.problem == Problem::WatchExtBugLayout).expect("bug finding");
    assert_eq!(bug.offset, after_watch as u64);
    // The reader followed the bytes really written: everything else decoded.
    assert_eq!(q.snapshot.nodes, snap.nodes);
    assert_eq!(q.snapshot.domains, snap.domains);
    let w = q.snapshot.watches.iter().find(|w| w.depth.is_some()).expect("ext watch");
    assert_eq!(w.path, b"/abcdefghij");
    assert_eq!(q.findings.iter().filter(|f| f.severity == Severity::Error).count(), 1, "{:?}", q.findings);
}

fn finding_at(bytes: &[u8], want: impl Fn(&Problem) -> bool) -> u64 {
    let p = read_stream(bytes).expect("preamble");
    p.findings.iter().find(|f| want(&f.problem)).map(|f| f.offset).unwrap_or_else(|| panic!("{:?}", p.findings))
}

#[test]
fn malformed_records_are_reported_with_offsets() {
    let lu1 = data("lu1-basic-4.17.state");
    // Truncation inside a record: runs past end, and no END.
    let cut = &lu1[..0x3a0];
    assert_eq!(finding_at(cut, |p| matches!(p, Problem::PastEndOfFile { .. })), 0x380);
    assert_eq!(finding_at(cut, |p| matches!(p, Problem::MissingEnd)), 0x3a0);
    // Bytes after END.
    let mut long = lu1.clone();
    long.extend_from_slice(&[0; 8]);
    assert_eq!(finding_at(&long, |p| matches!(p, Problem::TrailingData(8))), 0x530);
    // Version 3.
    let mut v = lu1.clone();
    v[11] = 3;
    assert_eq!(finding_at(&v, |p| matches!(p, Problem::BadVersion(3))), 8);
    // Unknown record type replacing the GLOBAL record.
    let mut t = lu1.clone();
    t[0x10] = 0x42;
    assert_eq!(finding_at(&t, |p| matches!(p, Problem::UnknownType(0x42))), 0x10);
    // conn-type 2 on the first connection.
    let mut c = lu1.clone();
    c[0x2c] = 2;
    assert_eq!(finding_at(&c, |p| matches!(p, Problem::BadConnType(2))), 0x20);
    // Duplicate conn-id: connection 2 claims id 1.
    let mut d = lu1.clone();
    d[0x48] = 1;
    assert_eq!(finding_at(&d, |p| matches!(p, Problem::DuplicateConnId(1))), 0x40);
    // WATCH for an unknown connection.
    let mut w = lu1.clone();
    w[0xa8] = 9;
    assert_eq!(finding_at(&w, |p| matches!(p, Problem::UnknownConn { conn_id: 9, .. })), 0xa0);
    // Permission letter 'x' on /local/domain/1/name.
    let mut l = lu1.clone();
    l[0x398] = b'x';
    assert_eq!(finding_at(&l, |p| matches!(p, Problem::BadPermLetter { letter: b'x', .. })), 0x380);
    // Path length overflowing the record.
    let mut o = lu1.clone();
    o[0x390] = 0xff;
    assert_eq!(finding_at(&o, |p| matches!(p, Problem::StringOverflow { .. })), 0x380);
    // Non-zero padding byte after "guest1".
    let mut pad = lu1.clone();
    pad[0x3bf] = 1;
    assert_eq!(finding_at(&pad, |p| matches!(p, Problem::NonZeroPadding { .. })), 0x380);
    // Parent missing: rename "/local/domain/1/data" so "blob" has no parent.
    let mut par = lu1.clone();
    let at = 0x3c0 + 8 + 16 + 4 + 16; // the 'd' of "data" in that record's path
    assert_eq!(par[at], b'd');
    par[at] = b'D';
    assert_eq!(finding_at(&par, |p| matches!(p, Problem::ParentMissing(path) if path.ends_with("data/blob"))), 0x3f8);
    // A record length that is not a multiple of 8 is a warning.
    let mut un = lu1.clone();
    un[0x14] = 9;
    assert!(
        read_stream(&un).expect("read").findings.iter().any(|f| matches!(f.problem, Problem::UnalignedLength { .. }))
    );
}

#[test]
fn fatal_preamble_errors() {
    assert_eq!(read_stream(b"xenstore"), Err(ReadError::TooShort(8)));
    assert!(matches!(read_stream(b"XENSTORE\0\0\0\x01\0\0\0\0"), Err(ReadError::BadIdent(_))));
    let msg = read_stream(b"short").expect_err("short").to_string();
    assert!(msg.contains("offset 0x0"), "{msg}");
}

#[test]
fn c_rules_name_the_first_one_broken() {
    let lu1 = data("lu1-basic-4.17.state");
    let p = read_stream(&lu1).expect("lu1");
    // Move all NODE records in front of the connections: rule 3.
    let mut snap = p.snapshot.clone();
    snap.connections.retain(|c| !matches!(c.kind, ConnectionKind::Ring { domid: 0, .. }));
    let bytes = write_stream(&snap, WriteFormat::C417).expect("write");
    let q = read_stream(&bytes).expect("read");
    let v = cver::check(&q, cver::CVersion::V417);
    assert!(!v.accepted);
    assert_eq!(v.breaks[0].rule, "1.7 rule 3");
    assert!(v.breaks[0].message.contains("NODE before privileged ring CONNECTION"));
    // A DOMAIN record for a domain never mentioned: rule 7 on 4.21, dropped on 4.17.
    let mut snap = p.snapshot.clone();
    snap.version = 2;
    snap.domains.push(DomainData { domid: 42, features: 0, quotas: vec![] });
    let q = read_stream(&write_stream(&snap, WriteFormat::HEAD).expect("write")).expect("read");
    assert!(q.findings.iter().any(|f| f.problem == Problem::DomainUnseen(42)));
    let v = cver::check(&q, cver::CVersion::V421);
    assert_eq!(v.breaks[0].rule, "1.7 rule 7");
    assert_eq!(v.breaks[0].message, "DOMAIN 42 with no prior reference");
}

#[test]
fn oxenstored_dump_reads_and_writes_back() {
    let text = data("ox1-4.17.db");
    let (p, extras) = oxenstored::read_dump_full(&text).expect("ox");
    assert!(p.findings.is_empty(), "{:?}", p.findings);
    let s = &p.snapshot;
    assert_eq!(s.global, Some(GlobalData { socket_fd: 3, evtchn_fd: 5 }));
    assert_eq!(s.connections.len(), 4);
    assert_eq!(s.connections[1].kind, ConnectionKind::Ring { domid: 4, target: DOMID_INVALID, evtchn: 3 });
    assert_eq!(s.watches.len(), 2);
    assert!(s.watches.iter().all(|w| w.conn_id == 4));
    let d4 = s.nodes.iter().find(|n| n.path == b"/local/domain/4").expect("dom4");
    assert_eq!(d4.perms, vec![Perm::new(b'n', 4), Perm::new(b'r', 0), Perm::new(b'b', 5)]);
    let all = s.nodes.iter().find(|n| n.path == b"/bin/allbytes").expect("allbytes");
    assert_eq!(all.value, (0..=255u8).collect::<Vec<u8>>());
    assert!(s.nodes.iter().any(|n| n.path == b"@releaseDomain"));
    assert_eq!(oxenstored::write_dump(s, &extras).as_bytes(), text.as_slice());
    // And the same model converts to a binary stream a C reader accepts.
    let bin = write_stream(s, WriteFormat::HEAD_V1).expect("write");
    let q = read_stream(&bin).expect("read");
    assert!(q.is_clean(), "{:?}", q.findings);
    assert!(cver::check(&q, cver::CVersion::V417).accepted);
}

#[test]
fn more_section_5_3_checks_fire() {
    let mut snap = head_snapshot();
    snap.watches.retain(|w| w.depth.is_none());
    // Socket with a unique-id trailer; a transaction node without TRANSACTION_DATA;
    // a committed node with no permissions; an oversized queued message.
    snap.connections[2].unique_id = Some(5);
    snap.connections[2].output = b"\x02\0\0\0\0\0\0\0\0\0\0\0\x01\x20\0\0".to_vec();
    snap.connections[2].partial_response_len = 0;
    snap.nodes.push(Node { path: b"/tx".to_vec(), value: vec![], perms: vec![], conn_id: 3, tx_id: 9, access: 2 });
    snap.nodes.push(Node::committed("/noperm", "", vec![]));
    snap.domains.push(DomainData { domid: 7, features: 0x30, quotas: vec![Quota::new("bogus", 1)] });
    let bytes = write_stream(&snap, WriteFormat::HEAD).expect("write");
    let p = read_stream(&bytes).expect("read");
    let has = |f: &dyn Fn(&Problem) -> bool| p.findings.iter().any(|x| f(&x.problem));
    assert!(has(&|p| matches!(p, Problem::SocketUniqueId)));
    assert!(has(&|p| matches!(p, Problem::OversizedMessage { part: "output", len: 0x2001, .. })));
    assert!(has(&|p| matches!(p, Problem::PendingNotWhole { part: "output", .. })));
    assert!(has(&|p| matches!(p, Problem::NodeWithoutTransaction { conn_id: 3, tx_id: 9, .. })));
    assert!(has(&|p| matches!(p, Problem::NoPerms(path) if path == "/noperm")));
    assert!(has(&|p| matches!(p, Problem::UnknownFeatures { domid: 7, bits: 0x30 })));
    assert!(has(&|p| matches!(p, Problem::UnknownQuota { .. })));
    // With TRANSACTION_DATA first the transaction node is fine, but C would
    // still apply it as committed.
    snap.transactions.push(Transaction { conn_id: 3, tx_id: 9 });
    let p = read_stream(&write_stream(&snap, WriteFormat::HEAD).expect("write")).expect("read");
    assert!(!p.findings.iter().any(|f| matches!(f.problem, Problem::NodeWithoutTransaction { .. })));
    let v = cver::check(&p, cver::CVersion::V421);
    assert!(v.breaks.iter().any(|b| b.message.contains("would be applied as committed")));
    assert!(v.dropped.iter().any(|d| d.rule == "1.5.6"));

    // Byte patches: conn length mismatch, out-resp-len > out, features in v1,
    // a second GLOBAL, a ring domid in the reserved range, tdomid == domid.
    let lu1 = data("lu1-basic-4.17.state");
    let mut b = lu1.clone();
    b[0x24] = 0x38; // CONNECTION 1 length 24 -> 56, eats the next records
    assert!(
        read_stream(&b)
            .expect("r")
            .findings
            .iter()
            .any(|f| f.offset == 0x20
                && matches!(f.problem, Problem::ConnLengthMismatch { length: 56, expected: 24, .. }))
    );
    let mut b = lu1.clone();
    b[0x192] = 0x20; // conn 7 out-resp-len 32 > out 19
    assert!(
        read_stream(&b).expect("r").findings.iter().any(|f| f.problem == Problem::RespLenTooBig { resp: 32, out: 19 })
    );
    let mut b = lu1.clone();
    b[0x20] = 1; // CONNECTION 1 becomes a second GLOBAL
    assert!(
        read_stream(&b).expect("r").findings.iter().any(|f| f.offset == 0x20 && f.problem == Problem::DuplicateGlobal)
    );
    let mut b = lu1.clone();
    b[0x50] = 0xf1; // dom 1 -> 0x7ff1
    b[0x51] = 0x7f;
    assert!(read_stream(&b).expect("r").findings.iter().any(|f| f.problem == Problem::ReservedDomid(0x7ff1)));
    let mut b = lu1.clone();
    b[0x72] = 2; // dom 2 targets itself
    b[0x73] = 0;
    assert!(read_stream(&b).expect("r").findings.iter().any(|f| f.problem == Problem::SelfTarget(2)));
    let mut p = read_stream(&lu1).expect("lu1").snapshot;
    p.domains.push(DomainData { domid: 1, features: 0, quotas: vec![] });
    let mut b = write_stream(&p, WriteFormat::C417).expect("write");
    let dom_at = b.len() - 8 - 16; // DOMAIN record (8 + 8) before END (8)
    b[dom_at + 12] = 2; // features = 2 in a v1 stream
    assert!(read_stream(&b).expect("r").findings.iter().any(|f| f.problem == Problem::FeaturesInV1(1)));
}
