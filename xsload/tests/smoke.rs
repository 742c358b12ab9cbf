//! Smoke run of the load generator: `xsload --quick` against rxenstored
//! (in both socket modes), the floor and (when start-peer can run them here) C xenstored and
//! oxenstored. Guards against the tool rotting: it must exit 0, run every
//! workload, check every reply, and give rxenstored and the floor a figure
//! in every row that applies to them. The ring variants (`pairs-ring`,
//! `bootstorm-ring`: rxenstored over simulated rings and over the socket)
//! are part of the quick run.
//!
//! rxenstored is the binary next to xsload (`cargo build -p rxenstored` in the
//! same target directory), else `../release/rxenstored`, else
//! `$RXENSTORED_BIN`. A missing binary or peer is skipped by the tool with
//! a message, unless `$XS_REQUIRE` (comma-separated daemon names) names it.

use std::process::Command;

use serde_json::Value;

const CASES: [&str; 14] = [
    "pairs 1 conn",
    "pairs 16 conns",
    "bootstorm 20 dom/4 cl",
    "bootstorm fresh 20 dom/4 cl",
    "read-heavy 1 core",
    "read-heavy 2 cores",
    "large tree",
    "idle conns 0",
    "idle conns 50",
    "watch / while 20 domains written",
    "ls 1k-node tree",
    "pairs-ring 1 guest",
    "pairs-ring 16 guests",
    "bootstorm-ring 10 dom/2 cl",
];

/// Rows of the ring variants that must be there, with a figure.
const RING_ROWS: [(&str, &str); 6] = [
    ("pairs-ring 1 guest", "req/s over rings"),
    ("pairs-ring 16 guests", "req/s ring ÷ socket"),
    ("bootstorm-ring 10 dom/2 cl", "domains/s (ring)"),
    ("bootstorm-ring 10 dom/2 cl", "domains/s ring ÷ socket"),
    ("bootstorm-ring 10 dom/2 cl", "of which guests' state (ring)"),
    ("bootstorm-ring 10 dom/2 cl", "peak RSS (VmHWM) (ring)"),
];

fn required() -> Vec<String> {
    std::env::var("XS_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn xsload(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xsload")).args(args).output().expect("run xsload");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn quick_run_all_daemons_json() {
    let (ok, stdout, stderr) = xsload(&["--quick", "--json", "--daemons", "rxenstored,cxenstored,oxenstored,floor"]);
    assert!(ok, "xsload failed:\n{stderr}\n{stdout}");
    let doc: Value = serde_json::from_str(&stdout).expect("JSON output");
    assert_eq!(doc["failures"], 0, "{stderr}");
    let unavailable = doc["meta"]["unavailable"].as_object().expect("unavailable map");
    for (kind, why) in unavailable {
        eprintln!("smoke: {kind} skipped by xsload: {why}");
        assert!(!required().contains(kind), "{kind} is required (XS_REQUIRE) but unavailable: {why}");
    }
    let rows = doc["rows"].as_array().expect("rows");
    for case in CASES {
        assert!(
            rows.iter().any(|r| r["case"].as_str().is_some_and(|c| c.starts_with(case))),
            "no row for {case}:\n{stdout}"
        );
    }
    if !unavailable.contains_key("rxenstored") {
        for (case, metric) in RING_ROWS {
            let row = rows
                .iter()
                .find(|r| r["case"] == case && r["metric"] == metric)
                .unwrap_or_else(|| panic!("no row {case} / {metric}:\n{stdout}"));
            assert!(row["values"]["rxenstored"].is_number(), "{case} / {metric}: {row}");
        }
        let state = rows
            .iter()
            .find(|r| r["case"] == "bootstorm-ring 10 dom/2 cl" && r["metric"] == "of which guests' state (ring)")
            .and_then(|r| r["values"]["rxenstored"].as_f64());
        assert_eq!(state, Some(40.0), "4 frontend state events per guest");
    }
    // A fresh tree: every creator's first transaction creates the missing
    // backend levels, and none of them may conflict.
    if !unavailable.contains_key("rxenstored") {
        let kind = "rxenstored";
        let retries = rows
            .iter()
            .find(|r| r["case"] == "bootstorm fresh 20 dom/4 cl" && r["metric"] == "EAGAIN retries")
            .and_then(|r| r["values"][kind].as_f64());
        assert_eq!(retries, Some(0.0), "{kind}: EAGAIN on a fresh tree\n{stdout}");
    }
    for r in rows {
        let case = r["case"].as_str().unwrap_or_default();
        let values = r["values"].as_object().expect("values");
        for (kind, v) in values {
            if unavailable.contains_key(kind) {
                continue;
            }
            // Every daemon that ran has a figure, nothing stalled at these
            // sizes (oxenstored stalls only with 16 creators and watchers).
            assert!(v.is_number(), "{case} / {}: {kind} has {v} instead of a figure\n{stderr}", r["metric"]);
        }
        let applies_to_floor = case.starts_with("pairs ");
        for kind in ["rxenstored", "floor"] {
            if unavailable.contains_key(kind) || (kind == "floor" && !applies_to_floor) {
                continue;
            }
            assert!(values.contains_key(kind), "{case}: no {kind} value");
        }
    }
}

#[test]
fn quick_run_table_names_every_workload() {
    let (ok, stdout, stderr) = xsload(&["--quick", "--daemons", "rxenstored,floor"]);
    assert!(ok, "xsload failed:\n{stderr}\n{stdout}");
    for case in CASES {
        assert!(stdout.contains(case), "no {case} in the table:\n{stdout}");
    }
    assert!(stdout.contains("rx ÷ floor"), "{stdout}");
    assert!(!stdout.contains("ERROR") && !stdout.contains("stalled"), "{stdout}");
}
