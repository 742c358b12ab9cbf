//! Golden decode of the real Xen 4.17 file (MIGRATION-STREAM.md §6.4).
//! Guards against any drift in how records, offsets, pending messages,
//! permissions and escaped values are decoded and shown.

use snapshot_tools::report::{self, Style, Tree};
use snapshot_tools::*;

const LU1: &[u8] = include_bytes!("data/lu1-basic-4.17.state");
const LU1_GOLDEN: &str = include_str!("data/lu1-basic-4.17.records.golden");

fn lu1() -> Parsed {
    read_stream(LU1).expect("lu1 reads")
}

#[test]
fn records_listing_matches_spec_golden_text() {
    let p = lu1();
    let mut text = report::header_line(&p);
    for r in report::record_lines(&p) {
        text.push('\n');
        text.push_str(&r.text());
    }
    let want: Vec<&str> = LU1_GOLDEN.lines().collect();
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got, want);
}

#[test]
fn model_content() {
    let p = lu1();
    assert!(p.findings.is_empty(), "{:?}", p.findings);
    let s = &p.snapshot;
    assert_eq!(s.version, 1);
    assert_eq!(s.global, Some(GlobalData { socket_fd: 4, evtchn_fd: 7 }));
    assert_eq!(s.connections.len(), 7);
    assert_eq!(s.connections[2].kind, ConnectionKind::Ring { domid: 2, target: 1, evtchn: 12 });
    assert_eq!(s.connections[3].kind, ConnectionKind::Socket { fd: 9 });
    assert_eq!(s.connections[4].input.len(), 21);
    assert_eq!(s.connections[5].input, [2, 0, 0, 0, 1, 0]);
    assert_eq!(s.connections[6].output, b"\0\0\0\0\0\0\0\0\0\0\0\0\x03\0\0\0OK\0");
    assert!(s.connections.iter().all(|c| c.unique_id.is_none()));
    assert_eq!(s.watches.len(), 3);
    assert!(s.watches.iter().all(|w| w.conn_id == 4 && w.depth.is_none()));
    assert_eq!(s.watches[1].path, b"@releaseDomain");
    assert_eq!(s.watches[2].token, b"intro");
    assert_eq!(s.nodes.len(), 18);
    assert_eq!(s.nodes[0].path, b"@releaseDomain");
    assert_eq!(s.nodes[2].path, b"/");
    let blob = s.nodes.iter().find(|n| n.path == b"/local/domain/1/data/blob").expect("blob");
    assert_eq!(blob.value, b"bin\0ary\xff\x01");
    let name1 = s.nodes.iter().find(|n| n.path == b"/local/domain/1/name").expect("name");
    assert_eq!(name1.perms, vec![Perm::new(b'b', 1), Perm::new(b'r', 2), Perm::new(b'w', 0)]);
    assert!(s.transactions.is_empty() && s.domains.is_empty() && s.global_quota.is_none());
    assert_eq!(p.records.len(), 30);
    assert_eq!(p.records.last().map(|r| r.offset), Some(0x528));
}

#[test]
fn summary_answers() {
    let p = lu1();
    let s = report::summarize("lu1", &p);
    assert_eq!(s.producer, "C xenstored 4.17");
    assert_eq!(s.lu_requesters, vec![7]);
    assert_eq!(s.stubdom_targets, vec![(2, 1)]);
    assert!(s.duplicate_evtchns.is_empty() && s.duplicate_fds.is_empty());
    let doms: Vec<(u16, usize)> = s.domains.iter().map(|d| (d.domid, d.nodes)).collect();
    assert_eq!(doms, vec![(0, 15), (1, 2), (2, 1)]);
    let c5 = &s.connections[4];
    assert_eq!(c5.pending.len(), 1);
    assert_eq!(c5.pending[0].kind, "partial-request");
    assert!(c5.pending[0].text.contains("WRITE req 1, len 31: 26 payload bytes missing"));
    assert_eq!(s.connections[5].pending[0].text, "partial header: 6 of 16 bytes");
    assert_eq!(s.connections[3].watches.len(), 3);
    assert!(s.transactions.is_empty());
    assert!(s.has_root);
    let text = s.text(Style { colour: false });
    assert!(text.contains("live update requested by: conn 7"));
    assert!(text.contains("stub domain: dom2 acts for dom1"));
    assert!(!text.contains('\x1b'));
}

#[test]
fn tree_like_xenstore_ls() {
    let p = lu1();
    let tree = Tree::build(&p.snapshot);
    let lines: Vec<String> = tree.list(b"/local/domain/1").iter().map(|e| e.text()).collect();
    assert_eq!(
        lines,
        vec!["name = \"guest1\"  (b1,r2,w0)", "data = \"\"  (n0)", " blob = \"bin\\0ary\\xff\\x01\"  (n0)",]
    );
    assert_eq!(tree.list(b"/").len(), 15);
}

#[test]
fn c_versions_accept_it() {
    let p = lu1();
    for v in [cver::CVersion::V417, cver::CVersion::V421, cver::CVersion::V422] {
        let verdict = cver::check(&p, v);
        assert!(verdict.accepted, "{v}: {:?}", verdict.breaks);
    }
}
