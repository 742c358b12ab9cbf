//! Runs the built `xenstore-inspect` binary on the real files.
//!
//! Guards the operator-facing contract: output content, JSON shape, exit
//! status (0 clean / 1 problems or differences / 2 unreadable), error
//! messages that name the file and offset, and no panic on bad input.

mod support;

use support::{json, run, stderr, stdout};

fn data(name: &str) -> String {
    format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn records_prints_the_golden_decode() {
    let o = run(&["records", &data("lu1-basic-4.17.state")]);
    assert_eq!(o.status.code(), Some(0));
    let want = std::fs::read_to_string(data("lu1-basic-4.17.records.golden")).expect("golden");
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), want.lines().collect::<Vec<_>>());
    assert!(!stdout(&o).contains('\x1b'), "no colour when not a terminal");
}

#[test]
fn records_hex_and_json() {
    let o = run(&["records", "--hex", &data("lu1-basic-4.17.state")]);
    assert!(stdout(&o).contains("    0380: 05 00 00 00 38 00 00 00 00 00 00 00 00 00 00 00"));
    let o = run(&["--json", "records", &data("lu1-basic-4.17.state")]);
    let v = json(&o);
    let recs = v["records"].as_array().expect("records");
    assert_eq!(recs.len(), 30);
    assert_eq!(recs[1]["offset"], 0x20);
    assert_eq!(recs[1]["type"], "CONNECTION_DATA");
    assert_eq!(recs[29]["type"], "END");
}

#[test]
fn summary_text_and_json() {
    let f = data("lu1-basic-4.17.state");
    let o = run(&["summary", &f]);
    assert_eq!(o.status.code(), Some(0));
    let t = stdout(&o);
    for want in [
        "producer: C xenstored 4.17",
        "stub domain: dom2 acts for dom1",
        "live update requested by: conn 7",
        "partial-request: partial WRITE req 1, len 31: 26 payload bytes missing",
        "watch '@introduceDomain' token 'intro'",
        "open transactions: none",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    let v = json(&run(&["summary", "--json", &f]));
    assert_eq!(v["version"], 1);
    assert_eq!(v["lu_requesters"], serde_json::json!([7]));
    assert_eq!(v["connections"].as_array().map(Vec::len), Some(7));
    assert_eq!(v["domains"][1]["domid"], 1);
    assert_eq!(v["domains"][1]["nodes"], 2);
}

#[test]
fn summary_of_generated_busy_file() {
    let v = json(&run(&["--json", "summary", &data("lu2-busy-4.17.state")]));
    let conns = v["connections"].as_array().expect("conns");
    let watcher = conns.iter().find(|c| c["watches"].as_array().is_some_and(|w| w.len() == 3)).expect("watcher");
    assert!(watcher["watches"][1].as_str().is_some_and(|w| w.contains("(relative)")));
    let events = watcher["pending"].as_array().expect("pending");
    assert!(events.len() > 100 && events.iter().all(|e| e["kind"] == "watch-event"));
    assert!(conns.iter().any(|c| c["delayed_transaction_starts"] == 1));
    assert_eq!(v["stubdom_targets"], serde_json::json!([[3, 1]]));
    let v = json(&run(&["--json", "summary", &data("lu4-many-delayed-4.17.state")]));
    let delayed: u64 =
        v["connections"].as_array().expect("c").iter().filter_map(|c| c["delayed_transaction_starts"].as_u64()).sum();
    assert_eq!(delayed, 4);
}

#[test]
fn tree_and_get() {
    let f = data("lu1-basic-4.17.state");
    let o = run(&["tree", &f, "/local/domain/1"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "name = \"guest1\"  (b1,r2,w0)\ndata = \"\"  (n0)\n blob = \"bin\\0ary\\xff\\x01\"  (n0)\n");
    let o = run(&["get", &f, "/local/domain/2/name"]);
    assert_eq!(stdout(&o), "/local/domain/2/name = \"stubdom-for-1\"  (n0)  @0x0468\n");
    let v = json(&run(&["get", "--json", &f, "/local/domain/1/data/blob"]));
    assert_eq!(v["value_bytes"], serde_json::json!([98, 105, 110, 0, 97, 114, 121, 255, 1]));
    let o = run(&["get", &f, "/nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("lu1-basic-4.17.state: no node \"/nope\""), "{}", stderr(&o));
}

#[test]
fn validate_exit_codes() {
    for f in ["lu1-basic-4.17.state", "lu2-busy-4.17.state", "lu3-restored-4.17.state", "lu4-many-delayed-4.17.state"] {
        for v in ["4.17", "4.21", "4.22"] {
            let o = run(&["validate", &data(f), "--as-c", v]);
            assert_eq!(o.status.code(), Some(0), "{f} as {v}: {}", stdout(&o));
            assert!(stdout(&o).contains(&format!("C {v}: would restore this file")));
        }
    }
    let dir = tempfile::tempdir().expect("tmp");
    // Truncated inside the NODE at 0x380.
    let bytes = std::fs::read(data("lu1-basic-4.17.state")).expect("read");
    let cut = dir.path().join("cut.state");
    std::fs::write(&cut, &bytes[..0x3a0]).expect("write");
    let o = run(&["validate", cut.to_str().expect("path"), "--as-c", "4.21"]);
    assert_eq!(o.status.code(), Some(1));
    let t = stdout(&o);
    assert!(t.contains("@0x0380 error: NODE_DATA length 56 runs past end of file"), "{t}");
    assert!(t.contains("would NOT restore this file: first rule broken"), "{t}");
    // Not a stream at all.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"hello world, not xenstore").expect("write");
    let o = run(&["validate", junk.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("junk: offset 0x0: bad ident"), "{}", stderr(&o));
    // Missing file.
    let o = run(&["summary", "/nonexistent/state_dump"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/state_dump: cannot read"));
    // JSON verdict.
    let v = json(&run(&["--json", "validate", cut.to_str().expect("path"), "--as-c", "4.17"]));
    assert_eq!(v["clean"], false);
    assert_eq!(v["c"]["version"], "4.17");
}

#[test]
fn diff_shows_tree_and_connection_changes() {
    let o = run(&["diff", &data("lu2-busy-4.17.state"), &data("lu3-restored-4.17.state")]);
    assert_eq!(o.status.code(), Some(1));
    let t = stdout(&o);
    assert!(t.contains("+ /partial"), "{t}");
    assert!(t.contains("pending in 19->0"), "{t}");
    let f = data("lu1-basic-4.17.state");
    let o = run(&["diff", &f, &f]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("no differences"));
    let v = json(&run(&["--json", "diff", &f, &data("lu4-many-delayed-4.17.state")]));
    assert_eq!(v["same"], false);
}

#[test]
fn oxenstored_dump_is_understood() {
    let f = data("ox1-4.17.db");
    let o = run(&["summary", &f]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("kind: oxenstored LU text"));
    let o = run(&["tree", &f, "/local/domain/4"]);
    assert_eq!(stdout(&o), "name = \"guest4\"  (n0)\n");
    let o = run(&["validate", &f]);
    assert_eq!(o.status.code(), Some(0));
    let o = run(&["validate", &f, "--as-c", "4.17"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("C xenstored cannot load this format"));
}

#[test]
fn bad_arguments_are_rejected_cleanly() {
    let o = run(&["validate", &data("lu1-basic-4.17.state"), "--as-c", "3.0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown C version"));
}

const STREAMS: [&str; 4] =
    ["lu1-basic-4.17.state", "lu2-busy-4.17.state", "lu3-restored-4.17.state", "lu4-many-delayed-4.17.state"];

/// `diff --json` of two files: only the version may differ.
fn assert_same_content(a: &str, b: &str) {
    let v = json(&run(&["--json", "diff", a, b]));
    for k in ["nodes", "connections", "watches"] {
        assert_eq!(v["diff"][k], serde_json::json!([]), "{a} vs {b}: {k} differ: {v}");
    }
    let other = v["diff"]["other"].as_array().expect("other");
    assert!(other.iter().all(|l| l.as_str().is_some_and(|l| l.contains("version"))), "{a} vs {b}: {v}");
}

fn p(path: &std::path::Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

#[test]
fn convert_to_own_version_is_byte_identical_on_every_real_file() {
    let dir = tempfile::tempdir().expect("tmp");
    for f in STREAMS {
        let input = std::fs::read(data(f)).expect("read");
        let version = u32::from_be_bytes([input[8], input[9], input[10], input[11]]);
        let to = format!("v{version}");
        let outp = dir.path().join(format!("{f}.same"));
        let o = run(&["convert", "--to", &to, &data(f), p(&outp)]);
        assert_eq!(o.status.code(), Some(0), "{f}: {}", stderr(&o));
        assert!(stdout(&o).contains(&format!("version {version} stream, {} bytes", input.len())), "{}", stdout(&o));
        let written = std::fs::read(&outp).expect("output");
        assert!(written == input, "{f}: converting to {to} changed the bytes");
    }
}

#[test]
fn convert_v1_to_v2_and_back() {
    let dir = tempfile::tempdir().expect("tmp");
    for f in STREAMS {
        let input = std::fs::read(data(f)).expect("read");
        let v2 = dir.path().join(format!("{f}.v2"));
        let o = run(&["convert", "--to", "v2", &data(f), p(&v2)]);
        assert_eq!(o.status.code(), Some(0), "{f}: {}", stderr(&o));
        let bytes = std::fs::read(&v2).expect("v2");
        assert_eq!(&bytes[8..12], &2u32.to_be_bytes(), "{f}: preamble version");
        // Same content: no differences, and v2 puts special nodes after the tree.
        assert_same_content(&data(f), p(&v2));
        let v = json(&run(&["--json", "records", p(&v2)]));
        let recs = v["records"].as_array().expect("records");
        let first_node = recs.iter().find(|r| r["type"] == "NODE_DATA").expect("a node");
        assert!(
            first_node["decode"].as_str().is_some_and(|t| t.ends_with("path='/'")),
            "{f}: first node in v2 should be the root: {first_node}"
        );
        let o = run(&["validate", p(&v2), "--as-c", "4.22"]);
        assert_eq!(o.status.code(), Some(0), "{f}: {}", stdout(&o));
        // And back to v1: the 4.17 layout again, so the original bytes.
        let v1 = dir.path().join(format!("{f}.v1"));
        let o = run(&["--json", "convert", "--to", "v1", p(&v2), p(&v1)]);
        assert_eq!(o.status.code(), Some(0), "{f}: {}", stderr(&o));
        assert_eq!(json(&o)["input_version"], 2);
        assert!(std::fs::read(&v1).expect("v1") == input, "{f}: v1 -> v2 -> v1 changed the bytes");
    }
}

#[test]
fn convert_oxenstored_dump() {
    let dir = tempfile::tempdir().expect("tmp");
    for to in ["v1", "v2"] {
        let outp = dir.path().join(format!("ox.{to}"));
        let o = run(&["convert", "--to", to, &data("ox1-4.17.db"), p(&outp)]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(stdout(&o).contains("oxenstored LU text"), "{}", stdout(&o));
        let o = run(&["tree", p(&outp), "/local/domain/4"]);
        assert_eq!(stdout(&o), "name = \"guest4\"  (n0)\n");
        assert_same_content(&data("ox1-4.17.db"), p(&outp));
        let o = run(&["validate", p(&outp)]);
        assert_eq!(o.status.code(), Some(0), "{to}: {}", stdout(&o));
    }
}

#[test]
fn convert_errors_name_the_file_and_offset() {
    let dir = tempfile::tempdir().expect("tmp");
    let bytes = std::fs::read(data("lu1-basic-4.17.state")).expect("read");
    let cut = dir.path().join("cut.state");
    std::fs::write(&cut, &bytes[..0x3a0]).expect("write");
    let outp = dir.path().join("out");
    let o = run(&["convert", "--to", "v2", p(&cut), p(&outp)]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("cut.state: offset 0x0380: NODE_DATA length 56 runs past end of file"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(!outp.exists(), "nothing written for a damaged input");
    // Not a stream.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"hello world, not xenstore").expect("write");
    let o = run(&["convert", "--to", "v1", p(&junk), p(&outp)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("junk: offset 0x0: bad ident"), "{}", stderr(&o));
    // Unwritable output.
    let o = run(&["convert", "--to", "v1", &data("lu1-basic-4.17.state"), "/nonexistent-dir/out.state"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent-dir/out.state: cannot write"), "{}", stderr(&o));
    // Bad version.
    let o = run(&["convert", "--to", "v3", &data("lu1-basic-4.17.state"), p(&outp)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("v3"), "{}", stderr(&o));
}
