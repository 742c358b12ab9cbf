//! Running one scenario against every available daemon, and assertions
//! that print bytes readably.
//!
//! Environment:
//! * `XS_DAEMONS`: comma-separated kinds to run against (default
//!   `rxenstored,cxenstored`).
//! * `XS_REQUIRE`: comma-separated kinds that must be available; a missing
//!   one fails the test instead of being skipped (for CI).

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Write as _};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

use wire::client::Reply;

use crate::daemon::{self, Kind, TestDaemon, Unavailable};

fn kinds_from_env(var: &str, default: &str) -> Vec<Kind> {
    let s = std::env::var(var).unwrap_or_else(|_| default.to_string());
    s.split(',')
        .filter(|k| !k.trim().is_empty())
        .map(|k| Kind::from_name(k).unwrap_or_else(|| panic!("{var}: unknown daemon kind {k:?}")))
        .collect()
}

/// The kinds selected by `$XS_DAEMONS`.
pub fn selected_kinds() -> Vec<Kind> {
    kinds_from_env("XS_DAEMONS", "rxenstored,cxenstored")
}

static SKIPS_REPORTED: Mutex<Option<HashSet<Kind>>> = Mutex::new(None);

/// Prints (once per process and kind, bypassing the test harness's output
/// capture so that it is seen) why `kind` is skipped.
pub fn report_skip(kind: Kind, why: &dyn fmt::Display) {
    let mut guard = SKIPS_REPORTED.lock().unwrap_or_else(|e| e.into_inner());
    if guard.get_or_insert_with(HashSet::new).insert(kind) {
        let _ = writeln!(io::stderr(), "SKIP {kind}: {why}");
    }
}

/// Starts `kind`, or reports the skip (or fails, if `$XS_REQUIRE` names it).
pub fn start_or_skip(kind: Kind) -> Option<TestDaemon> {
    started_or_skipped(kind, daemon::start(kind))
}

/// Starts rxenstored with `args`, or reports the skip (or fails, if
/// `$XS_REQUIRE` names it).
pub fn start_rx_or_skip(args: &[&str]) -> Option<TestDaemon> {
    started_or_skipped(Kind::Rxenstored, daemon::start_rx(args))
}

fn started_or_skipped(kind: Kind, started: Result<TestDaemon, Unavailable>) -> Option<TestDaemon> {
    match started {
        Ok(d) => Some(d),
        Err(why) => {
            if kinds_from_env("XS_REQUIRE", "").contains(&kind) {
                panic!("{kind} is required (XS_REQUIRE) but unavailable: {why}");
            }
            report_skip(kind, &why);
            None
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic)".to_string()
    }
}

/// Runs `scenario` against a fresh instance of every selected, available
/// daemon (each with an empty store), and fails if it fails on any of them,
/// naming which.
pub fn each_daemon(scenario: impl Fn(&TestDaemon)) {
    let mut failures = Vec::new();
    for kind in selected_kinds() {
        let Some(daemon) = start_or_skip(kind) else {
            continue;
        };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| scenario(&daemon))) {
            failures.push(format!("on {kind}: {}", panic_message(&*p)));
        }
        drop(daemon);
    }
    if !failures.is_empty() {
        panic!("scenario failed {}", failures.join("\n"));
    }
}

/// Bytes as a readable string (`\0` for NUL, `\xNN` for others).
pub fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// A reply, readably.
pub fn show_reply(r: &Reply) -> String {
    match r {
        Reply::Ok(p) => format!("Ok(\"{}\")", show(p)),
        Reply::Err(e) => format!("Err({e})"),
    }
}

/// Expected: a success with exactly this payload.
pub fn ok(payload: impl AsRef<[u8]>) -> Reply {
    Reply::Ok(payload.as_ref().to_vec())
}

/// Expected: exactly `OK\0`.
pub fn okk() -> Reply {
    Reply::Ok(b"OK\0".to_vec())
}

/// Expected: an error reply with exactly `NAME\0`.
pub fn err(name: &str) -> Reply {
    Reply::Err(name.to_string())
}

/// Asserts that a request got exactly the expected reply.
#[track_caller]
pub fn expect(got: io::Result<Reply>, want: Reply, what: impl fmt::Display) {
    match got {
        Ok(r) if r == want => {}
        Ok(r) => panic!("{what}: expected {}, got {}", show_reply(&want), show_reply(&r)),
        Err(e) => panic!("{what}: expected {}, got I/O error {e}", show_reply(&want)),
    }
}

/// Asserts success and returns the payload.
#[track_caller]
pub fn expect_ok(got: io::Result<Reply>, what: impl fmt::Display) -> Vec<u8> {
    match got {
        Ok(Reply::Ok(p)) => p,
        Ok(r) => panic!("{what}: expected success, got {}", show_reply(&r)),
        Err(e) => panic!("{what}: I/O error {e}"),
    }
}

/// Events as readable `path token` strings.
pub fn show_events(events: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    events.iter().map(|(p, t)| format!("{} {}", show(p), show(t))).collect()
}

/// One expected event.
pub fn ev(path: &str, token: &str) -> (Vec<u8>, Vec<u8>) {
    (path.as_bytes().to_vec(), token.as_bytes().to_vec())
}

/// Payload `a\0b\0…` from strings.
pub fn args(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}
