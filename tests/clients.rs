//! The unmodified client programs against rxenstored: Debian's
//! `xenstore-*` tools, Xen's `test-xenstore`, and the pyxs library.
//!
//! Guards against wire-level details that hand-written tests share with the
//! daemon's own assumptions: these programs were written against C
//! xenstored. Each test is skipped with a message when the program is not
//! available (no apt access for the packages, no pyxs); CI makes them
//! available and sets `XS_REQUIRE=rxenstored,cxenstored` so they run.

use std::path::PathBuf;
use std::process::{Command, Output};

use rxenstored_suite::daemon::{Kind, TestDaemon, shared_dir};
use rxenstored_suite::harness::start_or_skip;

fn xen_tool() -> PathBuf {
    shared_dir().join("peers/xen-tool")
}

/// Runs a Xen client program against `d`; `None` if the tools cannot be had.
fn tool(d: &TestDaemon, args: &[&str]) -> Option<Output> {
    let out = Command::new(xen_tool()).args(args).env("XENSTORED_PATH", d.socket()).output().expect("run xen-tool");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && (stderr.contains("apt-get") || stderr.contains("not found")) {
        assert!(!required(), "{} is required (XS_REQUIRE) but unavailable: {stderr}", args[0]);
        eprintln!("SKIP {}: client tools unavailable: {stderr}", args[0]);
        return None;
    }
    Some(out)
}

/// CI sets `XS_REQUIRE`: then a missing client program is a failure.
fn required() -> bool {
    std::env::var("XS_REQUIRE").is_ok_and(|v| !v.is_empty())
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn rx() -> Option<TestDaemon> {
    start_or_skip(Kind::Rxenstored)
}

#[test]
fn debian_client_tools() {
    let Some(d) = rx() else { return };
    let Some(w) = tool(&d, &["xenstore-write", "/tools/a", "1", "/tools/b/c", "two words"]) else { return };
    assert!(w.status.success(), "xenstore-write: {w:?}");
    let r = tool(&d, &["xenstore-read", "/tools/a", "/tools/b/c"]).expect("tools");
    assert_eq!(stdout(&r), "1\ntwo words\n");
    let e = tool(&d, &["xenstore-exists", "/tools/b"]).expect("tools");
    assert!(e.status.success());
    let e = tool(&d, &["xenstore-exists", "/tools/nope"]).expect("tools");
    assert!(!e.status.success(), "exists of a missing node fails");
    let l = tool(&d, &["xenstore-list", "/tools"]).expect("tools");
    assert_eq!(stdout(&l), "a\nb\n");
    let c = tool(&d, &["xenstore-chmod", "/tools/a", "n0", "r5"]).expect("tools");
    assert!(c.status.success(), "{c:?}");
    let ls = tool(&d, &["xenstore-ls", "-p", "/tools"]).expect("tools");
    let ls = stdout(&ls);
    assert!(ls.contains("a = \"1\"") && ls.contains("(n0,r5)"), "xenstore-ls -p: {ls}");
    let rm = tool(&d, &["xenstore-rm", "/tools/b"]).expect("tools");
    assert!(rm.status.success());
    let l = tool(&d, &["xenstore-list", "/tools"]).expect("tools");
    assert_eq!(stdout(&l), "a\n");
    // xenstore-watch -n 2: the initial event, then one for our write.
    let watch = Command::new(xen_tool())
        .args(["xenstore-watch", "-n", "2", "/tools/a"])
        .env("XENSTORED_PATH", d.socket())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn xenstore-watch");
    std::thread::sleep(std::time::Duration::from_millis(300));
    tool(&d, &["xenstore-write", "/tools/a", "2"]).expect("tools");
    let out = watch.wait_with_output().expect("watch exits after 2 events");
    assert_eq!(stdout(&out), "/tools/a\n/tools/a\n");
    let help = tool(&d, &["xenstore-control", "help"]).expect("tools");
    assert!(stdout(&help).contains("quota"), "{help:?}");
}

#[test]
fn test_xenstore_all_tests_and_1000_iterations() {
    let Some(d) = rx() else { return };
    let Some(out) = tool(&d, &["test-xenstore"]) else { return };
    assert!(out.status.success(), "test-xenstore failed:\n{}\n{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    let out = tool(&d, &["test-xenstore", "-i", "1000"]).expect("tools");
    assert!(out.status.success(), "test-xenstore -i 1000 failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn pyxs_smoke() {
    let Some(d) = rx() else { return };
    let has_pyxs = Command::new("python3").args(["-c", "import pyxs"]).status().is_ok_and(|s| s.success());
    if !has_pyxs {
        assert!(!required(), "pyxs is required (XS_REQUIRE) but python3 cannot import it");
        eprintln!("SKIP pyxs_smoke: python3 with pyxs unavailable (pip install pyxs)");
        return;
    }
    let out = Command::new("python3")
        .arg(shared_dir().join("peers/pyxs_smoke.py"))
        .env("XENSTORED_PATH", d.socket())
        .output()
        .expect("run python3");
    let text = stdout(&out);
    assert!(
        out.status.success() && text.contains(" 0 failed"),
        "pyxs_smoke:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
