//! Property tests.
//!
//! 1. Any model the writer accepts reads back equal (both formats, both
//!    byte orders): guards against asymmetric field layouts or padding.
//! 2. Random corruption, truncation and splicing of the real files never
//!    panics anywhere (reader, reports, C-rule check, writer), and a
//!    damaged file is reported with offsets inside the file. This is the
//!    fuzz-style test of the reader.

use proptest::prelude::*;
use snapshot_tools::*;

fn bytes_no_nul(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(1u8..=255, 0..max)
}

fn perm() -> impl Strategy<Value = Perm> {
    (prop::sample::select(b"nrwb".to_vec()), 0u8..=1, any::<u16>()).prop_map(|(letter, flags, domid)| Perm {
        letter,
        flags,
        domid,
    })
}

fn quota() -> impl Strategy<Value = Quota> {
    (bytes_no_nul(12), any::<u32>()).prop_map(|(name, value)| Quota { name, value })
}

fn connection(conn_id: u32) -> impl Strategy<Value = Connection> {
    let kind = prop_oneof![
        (any::<u16>(), any::<u16>(), any::<u32>())
            .prop_map(|(domid, target, evtchn)| { ConnectionKind::Ring { domid, target, evtchn } }),
        any::<i32>().prop_map(|fd| ConnectionKind::Socket { fd }),
    ];
    (
        kind,
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(any::<u8>(), 0..64),
        any::<u16>(),
        prop::option::of(any::<u64>()),
    )
        .prop_map(move |(kind, input, output, resp, unique_id)| {
            let partial_response_len = if output.is_empty() { 0 } else { resp % (output.len() as u16 + 1) };
            Connection { conn_id, kind, input, output, partial_response_len, unique_id }
        })
}

fn node(special: bool) -> impl Strategy<Value = Node> {
    (
        bytes_no_nul(40),
        prop::collection::vec(any::<u8>(), 0..80),
        prop::collection::vec(perm(), 0..5),
        any::<u32>(),
        any::<u32>(),
        any::<u16>(),
    )
        .prop_map(move |(mut path, value, perms, conn_id, tx_id, access)| {
            path.insert(0, if special { b'@' } else { b'/' });
            Node { path, value, perms, conn_id, tx_id, access }
        })
}

/// A model whose record order is the one the writer produces for `v2`
/// (HEAD layout) or v1 (4.17 layout), so write/read is the identity.
fn snapshot() -> impl Strategy<Value = (Stream, WriteFormat)> {
    (any::<bool>(), any::<bool>(), 0usize..5)
        .prop_flat_map(|(v2, big, nconn)| {
            let conns: Vec<_> = (1..=nconn as u32).map(connection).collect();
            let watches = prop::collection::vec(
                (0..nconn.max(1), bytes_no_nul(20), bytes_no_nul(20), prop::option::of(any::<u16>())),
                0..6,
            );
            let domains =
                prop::collection::vec((any::<u16>(), any::<u32>(), prop::collection::vec(quota(), 0..4)), 0..4);
            (
                Just((v2, big, nconn)),
                prop::option::of((any::<i32>(), any::<i32>())),
                prop::option::of((prop::collection::vec(quota(), 0..4), prop::collection::vec(quota(), 0..3))),
                conns,
                watches,
                prop::collection::vec((any::<u32>(), any::<u32>()), 0..3),
                prop::collection::vec(node(false), 0..8),
                prop::collection::vec(node(true), 0..3),
                domains,
            )
        })
        .prop_map(|((v2, big, nconn), global, gq, connections, watches, txs, tree, special, domains)| {
            let version = if v2 { 2 } else { 1 };
            let format = WriteFormat::for_version(version);
            // The writer emits watches grouped by connection, in connection order.
            let mut ws: Vec<Watch> = watches
                .into_iter()
                .filter(|_| nconn > 0)
                .map(|(c, path, token, depth)| Watch {
                    conn_id: c as u32 + 1,
                    path,
                    token,
                    depth: if v2 { depth } else { None },
                })
                .collect();
            ws.sort_by_key(|w| w.conn_id);
            let nodes = match format.special_nodes {
                SpecialNodes::BeforeTree => special.into_iter().chain(tree).collect(),
                SpecialNodes::AfterTree => tree.into_iter().chain(special).collect(),
            };
            let snap = Stream {
                version,
                byte_order: if big { ByteOrder::Big } else { ByteOrder::Little },
                global: global.map(|(socket_fd, evtchn_fd)| GlobalData { socket_fd, evtchn_fd }),
                global_quota: gq.map(|(per_domain, global_only)| GlobalQuota { per_domain, global_only }),
                connections,
                watches: ws,
                transactions: txs.into_iter().map(|(conn_id, tx_id)| Transaction { conn_id, tx_id }).collect(),
                nodes,
                domains: domains
                    .into_iter()
                    .map(|(domid, features, quotas)| DomainData {
                        domid,
                        features: if v2 { features } else { 0 },
                        quotas,
                    })
                    .collect(),
            };
            (snap, format)
        })
}

fn real_files() -> Vec<Vec<u8>> {
    let dir = format!("{}/tests/data", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("data dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".state"))
        .collect();
    names.sort();
    names.iter().map(|n| std::fs::read(format!("{dir}/{n}")).expect("read")).collect()
}

/// Runs everything the inspector would run on a parsed file.
fn exercise(p: &Parsed) {
    for r in report::record_lines(p) {
        let _ = r.text();
    }
    let _ = report::summarize("x", p).text(report::Style { colour: true });
    let tree = report::Tree::build(&p.snapshot);
    let _ = tree.list(b"/");
    for v in [cver::CVersion::V417, cver::CVersion::V421, cver::CVersion::V422] {
        let _ = cver::check(p, v);
    }
    let _ = report::diff(&p.snapshot, &Stream::default());
    let _ = write_stream(&p.snapshot, WriteFormat::detect(&p.snapshot));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn written_models_read_back_equal((snap, format) in snapshot()) {
        let bytes = write_stream(&snap, format).expect("writable model");
        prop_assert_eq!(bytes.len() % 8, 0);
        let p = read_stream(&bytes).expect("preamble");
        prop_assert_eq!(&p.snapshot, &snap);
        // Writing the read model again is byte-identical.
        prop_assert_eq!(write_stream(&p.snapshot, format).expect("write"), bytes);
        exercise(&p);
    }

    #[test]
    fn corrupted_real_files_never_panic(
        file in 0usize..16,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
    ) {
        let files = real_files();
        let mut bytes = files[file % files.len()].clone();
        for (at, val) in flips {
            let i = at.index(bytes.len());
            bytes[i] = val;
        }
        match read_stream(&bytes) {
            Err(e) => prop_assert!(e.to_string().contains("offset")),
            Ok(p) => {
                for f in &p.findings {
                    prop_assert!(f.offset <= bytes.len() as u64, "{}", f);
                }
                exercise(&p);
            }
        }
    }

    #[test]
    fn truncated_real_files_report_an_offset(file in 0usize..16, cut in any::<prop::sample::Index>()) {
        let files = real_files();
        let full = &files[file % files.len()];
        let len = cut.index(full.len()); // strictly shorter than the file
        let bytes = &full[..len];
        match read_stream(bytes) {
            Err(e) => prop_assert!(e.to_string().contains("offset 0x0")),
            Ok(p) => {
                let err = p.first_error().expect("a truncated file has an error");
                prop_assert!(err.offset <= len as u64);
                prop_assert!(p.findings.iter().any(|f| matches!(f.problem, Problem::MissingEnd)));
                exercise(&p);
            }
        }
    }

    #[test]
    fn random_bytes_after_a_preamble_never_panic(
        version in 0u32..4,
        flags in 0u32..3,
        body in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = b"xenstore".to_vec();
        bytes.extend_from_slice(&version.to_be_bytes());
        bytes.extend_from_slice(&flags.to_be_bytes());
        bytes.extend_from_slice(&body);
        let p = read_stream(&bytes).expect("preamble is fine");
        for f in &p.findings {
            prop_assert!(f.offset <= bytes.len() as u64);
        }
        exercise(&p);
    }

    #[test]
    fn spliced_records_never_panic(
        a in 0usize..16, b in 0usize..16,
        cut_a in any::<prop::sample::Index>(), cut_b in any::<prop::sample::Index>(),
    ) {
        let files = real_files();
        let fa = &files[a % files.len()];
        let fb = &files[b % files.len()];
        let mut bytes = fa[..16.max(cut_a.index(fa.len()))].to_vec();
        bytes.extend_from_slice(&fb[cut_b.index(fb.len())..]);
        if let Ok(p) = read_stream(&bytes) {
            exercise(&p);
        }
    }

    #[test]
    fn oxenstored_reader_never_panics(lines in prop::collection::vec("[a-z@,0-9-]{0,40}", 0..20)) {
        let text = format!("{}\n{}", oxenstored::HEADER, lines.join("\n"));
        if let Ok(p) = oxenstored::read_dump(text.as_bytes()) {
            exercise(&p);
        }
    }
}
