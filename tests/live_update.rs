//! Live update (MIGRATION-STREAM.md §3): the running daemon dumps its
//! state, `exec`s the new binary with `-U`, and the new process carries on
//! with the same sockets. What can go wrong: a client's connection,
//! watch, half-sent request or queued reply lost across the `exec`; a
//! write acknowledged before the update missing after it; the update
//! going ahead over an open transaction without `-F`; a damaged state
//! file restored half-way instead of refused; and, across daemons, C
//! xenstored's stream not understood by rxenstored.
//!
//! The requests are sent raw over the socket as Debian's
//! `xenstore-control` sends them (§3.2); the C test drives Debian's real
//! `xenstore-control` and C xenstored through `../shared/peers` and is
//! skipped (with a message) where those cannot be had, unless
//! `XS_REQUIRE` names `cxenstored`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rxenstored_suite::daemon::{self, Kind, TestDaemon, rxenstored_bin, shared_dir};
use rxenstored_suite::harness::start_or_skip;
use wire::Op;
use wire::client::{Client, Reply};

fn lu_payload(args: &[&str]) -> Vec<u8> {
    let mut p = b"live-update\0".to_vec();
    for a in args {
        p.extend_from_slice(a.as_bytes());
        p.push(0);
    }
    p
}

fn text(r: &Reply) -> String {
    match r.ok() {
        Some(b) => String::from_utf8_lossy(b).trim_end_matches('\0').to_string(),
        None => format!("error {}", r.err().unwrap_or("?")),
    }
}

/// `-f BINARY` then `-s ARGS`: the reply to `-s`.
fn live_update(c: &mut Client, binary: &Path, start: &[&str]) -> String {
    let bin = binary.to_string_lossy().into_owned();
    let r = c.request(Op::Control, 0, &lu_payload(&["-f", &bin])).expect("-f");
    assert_eq!(text(&r), "OK", "-f {bin}");
    let mut args = vec!["-s"];
    args.extend_from_slice(start);
    let r = c.request(Op::Control, 0, &lu_payload(&args)).expect("-s reply");
    text(&r)
}

fn rx_bin() -> PathBuf {
    rxenstored_bin().expect("target directory")
}

fn start_rx() -> Option<TestDaemon> {
    start_or_skip(Kind::Rxenstored)
}

#[test]
fn rx_to_rx_keeps_connections_watches_partial_requests_and_every_write() {
    let Some(d) = start_rx() else { return };
    rx_to_rx_under_load(&d);
}

/// A daemon started with the deprecated `--socket-threads` (accepted and
/// ignored) still starts, and updates to a successor that gets the same
/// command line.
#[test]
fn rx_to_rx_with_the_deprecated_socket_threads_option() {
    let d = match daemon::start_rx(&["--socket-threads"]) {
        Ok(d) => d,
        Err(e) => return eprintln!("skipped: {e}"),
    };
    rx_to_rx_under_load(&d);
}

fn rx_to_rx_under_load(d: &TestDaemon) {
    let pid = d.pid();
    let mut admin = d.connect();
    admin.set_reply_timeout(Duration::from_secs(20));
    for i in 0..200 {
        assert!(admin.write(format!("/tree/n{i}"), format!("v{i}")).expect("write").is_ok());
    }
    // 20 socket clients, each watching its own node.
    let mut watchers: Vec<Client> = (0..20)
        .map(|i| {
            let mut c = d.connect();
            assert!(c.watch(format!("/w/{i}"), format!("tok{i}")).expect("watch").is_ok());
            assert_eq!(c.next_event(Duration::from_secs(5)).map(|e| e.1), Some(format!("tok{i}").into_bytes()));
            c
        })
        .collect();
    // One client with half a WRITE sent (header plus 3 payload bytes).
    let mut partial = d.connect();
    let mut msg = Vec::new();
    wire::encode(Op::Write, 77, 0, b"/partial\0done", &mut msg);
    partial.send_raw(&msg[..wire::HEADER_LEN + 3]).expect("send half");
    // One client with 500 reads of a 4 kB node sent and no reply taken:
    // 2 MB of replies wait (with threads, partly on its thread's side).
    let big = vec![b'b'; 4000];
    assert!(admin.write("/big", &big).expect("write").is_ok());
    let mut stalled = d.connect();
    let mut reads = Vec::new();
    for i in 0..500 {
        wire::encode(Op::Read, 1000 + i, 0, b"/big\0", &mut reads);
    }
    stalled.send_raw(&reads).expect("send the reads");
    // Writers keep going during the update.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (stop, acked) = (stop.clone(), acked.clone());
            let mut c = d.connect();
            c.set_reply_timeout(Duration::from_secs(20));
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let path = format!("/writer{w}/k{n}");
                    if c.write(&path, b"x").expect("write during update").is_ok() {
                        acked.lock().expect("lock").push(path);
                    }
                    n += 1;
                }
            })
        })
        .collect();
    // And a reader, during the update too.
    let reader = {
        let stop = stop.clone();
        let mut c = d.connect();
        c.set_reply_timeout(Duration::from_secs(20));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = c.read(format!("/tree/n{}", n % 200)).expect("read during update");
                assert_eq!(text(&r), format!("v{}", n % 200));
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let reply = live_update(&mut admin, &rx_bin(), &["-t", "5"]);
    assert_eq!(reply, "OK", "log:\n{}", d.log());
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }
    assert!(reader.join().expect("reader") > 10, "the reader made progress");
    for i in 0..500 {
        let m = stalled.recv_message(Duration::from_secs(10)).expect("receive").expect("a queued reply");
        assert_eq!(m.header.req_id, 1000 + i, "the stalled client's replies in order");
        assert!(m.payload == big, "reply {i}: {} bytes", m.payload.len());
    }
    assert!(d.log().contains("live update: restored"), "the new process restored the state; log:\n{}", d.log());
    assert_eq!(comm(pid), "rxenstored", "the same process (exec, no fork) serves");
    // Nothing acknowledged is lost.
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() > 10, "writers made progress: {}", acked.len());
    for p in &acked {
        assert_eq!(text(&admin.read(p).expect("read")), "x", "{p} was acknowledged");
    }
    for i in 0..200 {
        assert_eq!(text(&admin.read(format!("/tree/n{i}")).expect("read")), format!("v{i}"));
    }
    // The half-sent request completes on the new process.
    partial.send_raw(&msg[wire::HEADER_LEN + 3..]).expect("send rest");
    let r = partial.wait_reply(77).expect("reply to the partial write");
    assert_eq!(r.header.msg_type, Op::Write.code());
    assert_eq!(text(&admin.read("/partial").expect("read")), "done");
    // Every watch still fires, on its old connection.
    for (i, c) in watchers.iter_mut().enumerate() {
        assert!(admin.write(format!("/w/{i}"), b"after").expect("write").is_ok());
        assert_eq!(
            c.next_event(Duration::from_secs(5)),
            Some((format!("/w/{i}").into_bytes(), format!("tok{i}").into_bytes())),
            "watcher {i}"
        );
    }
}

#[test]
fn open_transaction_refuses_without_force_and_is_dropped_with_force() {
    let Some(d) = start_rx() else { return };
    let mut admin = d.connect();
    admin.set_reply_timeout(Duration::from_secs(20));
    let mut holder = d.connect();
    let tx = holder.start_tx().expect("transaction");
    assert!(holder.write_tx(tx, "/in-tx", b"1").expect("write").is_ok());
    // A TRANSACTION_START sent while the update is pending waits.
    let t0 = Instant::now();
    let mut late = d.connect();
    late.set_reply_timeout(Duration::from_secs(20));
    let late_thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let r = late.transaction_start().expect("late start");
        (r, Instant::now())
    });
    let reply = live_update(&mut admin, &rx_bin(), &["-t", "1"]);
    let refused_at = Instant::now();
    assert!(reply.starts_with("Domains with long running transactions:\nDomain 0: "), "{reply:?}");
    assert!(reply.ends_with(" s"), "{reply:?}");
    assert!(refused_at - t0 >= Duration::from_millis(900), "waited for the timeout");
    let (late_reply, late_at) = late_thread.join().expect("late");
    assert!(late_reply.is_ok(), "held-back TRANSACTION_START ran after the refusal: {late_reply:?}");
    assert!(late_at + Duration::from_millis(50) >= refused_at, "it was held back until the session ended");
    let r = admin.request(Op::Control, 0, &lu_payload(&["-a"])).expect("-a");
    assert_eq!(text(&r), "OK");
    // Forced: goes ahead at the timeout; the transaction is gone after.
    let reply = live_update(&mut admin, &rx_bin(), &["-t", "1", "-F"]);
    assert_eq!(reply, "OK", "log:\n{}", d.log());
    assert_eq!(holder.transaction_end(tx, true).expect("end").err(), Some("ENOENT"));
    assert!(admin.read("/in-tx").expect("read").err().is_some(), "its writes are lost, as with C");
}

#[test]
fn exec_failure_keeps_serving_and_reports_c_text() {
    let Some(d) = start_rx() else { return };
    let mut admin = d.connect();
    // A binary that passes -f's check and is gone when exec comes.
    let bogus = d.rundir().join("gone-binary");
    std::fs::write(&bogus, b"#!/bin/false\n").expect("write");
    std::fs::set_permissions(&bogus, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let mut w = d.connect();
    assert!(w.watch("/x", "t").expect("watch").is_ok());
    let _ = w.next_event(Duration::from_secs(5));
    let r = admin.request(Op::Control, 0, &lu_payload(&["-f", &bogus.to_string_lossy()])).expect("-f");
    assert_eq!(text(&r), "OK");
    std::fs::remove_file(&bogus).expect("rm");
    let r = admin.request(Op::Control, 0, &lu_payload(&["-s", "-t", "5"])).expect("-s");
    assert_eq!(text(&r), "Error activating new binary.");
    assert!(!d.rundir().join("state_dump").exists(), "no stale state file left");
    assert!(admin.write("/x", b"1").expect("write").is_ok());
    assert_eq!(w.next_event(Duration::from_secs(5)), Some((b"/x".to_vec(), b"t".to_vec())));
    let r = admin.request(Op::Control, 0, &lu_payload(&["-f", "/nonexistent/binary"])).expect("-f");
    assert_eq!(text(&r), "File not accessible.");
}

fn run_restore(rundir: &Path) -> std::process::Output {
    Command::new(rx_bin())
        .args(["--no-fork", "--no-rings", "-U"])
        .env("XENSTORED_RUNDIR", rundir)
        .env_remove("XENSTORED_PATH")
        .stdin(Stdio::null())
        .output()
        .expect("run rxenstored -U")
}

#[test]
fn damaged_state_file_is_refused_and_kept() {
    if !rx_bin().is_file() {
        eprintln!("SKIP: {} not built", rx_bin().display());
        return;
    }
    let dir = tempfile::Builder::new().prefix("xs-lu-bad-").tempdir_in("/tmp").expect("tempdir");
    let state = dir.path().join("state_dump");
    // A real stream (C 4.17's), truncated; then garbage; then missing.
    let golden = shared_dir().join("testdata/migration-stream/lu1-basic-4.17.state");
    let mut cases: Vec<(&str, Vec<u8>)> = vec![("garbage", b"not a xenstore stream at all".to_vec())];
    if let Ok(bytes) = std::fs::read(&golden) {
        cases.push(("truncated", bytes[..bytes.len() / 2].to_vec()));
        let mut corrupt = bytes.clone();
        corrupt[20] ^= 0xff; // the first record's length
        cases.push(("corrupt length", corrupt));
    }
    for (what, bytes) in cases {
        std::fs::write(&state, &bytes).expect("write state");
        let out = run_restore(dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: must fail");
        assert!(stderr.contains("state file") && stderr.contains("kept for inspection"), "{what}: {stderr}");
        assert_eq!(std::fs::read(&state).expect("kept"), bytes, "{what}: file kept as it was");
    }
    std::fs::remove_file(&state).expect("rm");
    let out = run_restore(dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the state file"));
}

/// The golden C 4.17 stream restores (its sockets are not ours: dropped
/// with warnings), and the tree is there.
#[test]
fn c_417_stream_restores() {
    let golden = shared_dir().join("testdata/migration-stream/lu1-basic-4.17.state");
    let Ok(bytes) = std::fs::read(&golden) else {
        eprintln!("SKIP: {} not found", golden.display());
        return;
    };
    let mut snap = rxenstored::live_update::stream::load(&bytes).expect("clean stream");
    // The stream's descriptor numbers are the C process's. In this test
    // process (other tests run on other threads) the same numbers may be
    // another test's pipes or sockets, which `import` would adopt or close
    // as inherited ones (it once closed a concurrent test's pipe): make
    // them name nothing, which is what "not ours" means here anyway.
    if let Some(g) = snap.global.as_mut() {
        g.socket_fd = -1;
        g.evtchn_fd = -1;
    }
    for c in &mut snap.connections {
        if let snapshot_tools::model::ConnectionKind::Socket { fd } = &mut c.kind {
            *fd = -1;
        }
    }
    let r =
        rxenstored::live_update::stream::import(rxenstored_core::Config::default(), rxenstored_core::NoRings, &snap)
            .expect("import");
    let tree = r.core.store().snapshot();
    assert_eq!(tree.len() as usize + 2, snap.nodes.len(), "every node (and the 2 special ones)");
    assert!(r.sockets.is_empty(), "fds of another process are never adopted");
    assert!(
        r.core.domain(engine::DomId(2)).is_some_and(|d| d.introduced),
        "ring connections re-introduce their domains"
    );
}

/// Kills an exec'd peer that the support guard would not recognise.
struct PidGuard(i32);
impl Drop for PidGuard {
    fn drop(&mut self) {
        // SAFETY: signalling the daemon this test started.
        unsafe { libc::kill(self.0, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

fn xen_tool(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(shared_dir().join("peers/xen-tool"))
        .args(args)
        .env("XENSTORED_PATH", socket)
        .stdin(Stdio::null())
        .output()
        .expect("xen-tool")
}

/// Every node as `path=value`, in tree order, through a client.
fn dump_tree(c: &mut Client, path: &str, out: &mut Vec<String>) {
    let v = c.read(path).expect("read");
    out.push(format!("{path}={}", text(&v)));
    let dir = c.directory(path).expect("directory");
    let names: Vec<String> = dir
        .ok()
        .map(|b| {
            b.split(|x| *x == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
        })
        .unwrap_or_default();
    for n in names {
        let child = if path == "/" { format!("/{n}") } else { format!("{path}/{n}") };
        dump_tree(c, &child, out);
    }
}

#[test]
fn c_xenstored_live_updates_to_rxenstored() {
    if !rx_bin().is_file() {
        eprintln!("SKIP: {} not built", rx_bin().display());
        return;
    }
    let Some(c_daemon) = start_or_skip(Kind::Cxenstored) else { return };
    let pid = c_daemon.pid();
    let socket = c_daemon.socket().to_path_buf();
    let mut admin = c_daemon.connect();
    for i in 0..50 {
        assert!(admin.write(format!("/data/n{i}"), format!("v{i}")).expect("write").is_ok());
    }
    assert!(admin.set_perms("/data/n3", &["b0", "r5"]).expect("perms").is_ok());
    let mut watcher = c_daemon.connect();
    assert!(watcher.watch("/data", "tok").expect("watch").is_ok());
    assert_eq!(watcher.next_event(Duration::from_secs(5)), Some((b"/data".to_vec(), b"tok".to_vec())));
    let mut before = Vec::new();
    dump_tree(&mut admin, "/", &mut before);
    // The peers' shim (LD_PRELOAD) is inherited across exec; rxenstored
    // copes with it, so no wrapper is needed.
    let out = xen_tool(&socket, &["xenstore-control", "live-update", "-t", "5", &rx_bin().to_string_lossy()]);
    let _guard = PidGuard(pid);
    assert!(out.status.success(), "xenstore-control: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert_eq!(comm(pid), "rxenstored", "C exec'd rxenstored in place; log:\n{}", c_daemon.log());
    let mut after = Vec::new();
    dump_tree(&mut admin, "/", &mut after);
    assert_eq!(before, after, "same tree through the same connection");
    assert_eq!(text(&admin.get_perms("/data/n3").expect("perms")), "b0\0r5");
    assert!(admin.write("/data/n7", b"changed").expect("write").is_ok());
    assert_eq!(watcher.next_event(Duration::from_secs(5)), Some((b"/data/n7".to_vec(), b"tok".to_vec())));
    // A new client is served on the inherited listening socket.
    let mut fresh = Client::connect(&socket).expect("connect after");
    assert_eq!(text(&fresh.read("/data/n7").expect("read")), "changed");
    let _ = std::io::stderr().flush();
}

/// Times `-s` to the first request answered by the new process (not a
/// timed test: run with `--ignored --nocapture`).
#[test]
#[ignore]
fn time_from_start_to_first_request() {
    for nodes in [1_000usize, 100_000] {
        let Some(d) = start_rx() else { return };
        let mut admin = d.connect();
        admin.set_reply_timeout(Duration::from_secs(120));
        for batch in (0..nodes).step_by(1000) {
            let mut msg = Vec::new();
            for i in batch..(batch + 1000).min(nodes) {
                wire::encode(Op::Write, 1, 0, format!("/t/{}/n{i}\0value-{i}", i % 100).as_bytes(), &mut msg);
            }
            admin.send_raw(&msg).expect("send");
            for _ in batch..(batch + 1000).min(nodes) {
                admin.recv_message(Duration::from_secs(30)).expect("reply").expect("reply in time");
            }
        }
        admin.sync().expect("sync");
        let r = admin.request(Op::Control, 0, &lu_payload(&["-f", &rx_bin().to_string_lossy()])).expect("-f");
        assert_eq!(text(&r), "OK");
        let mut other = d.connect();
        other.set_reply_timeout(Duration::from_secs(120));
        let t = Instant::now();
        let r = admin.request(Op::Control, 0, &lu_payload(&["-s", "-t", "5"])).expect("-s");
        let ok_at = t.elapsed();
        assert_eq!(text(&r), "OK");
        let _ = other.read("/t/0/n0").expect("read");
        let first = t.elapsed();
        println!("{nodes} nodes: -s to OK {ok_at:?}, to first other request served {first:?}");
    }
}

/// Handing back: rxenstored live-updates to Debian's C xenstored 4.17
/// (through a wrapper that sets up the peers' shim). Debian's 4.17
/// `xenstore-control` cannot send `-v`; rxenstored writes version 1 for a
/// binary that is not rxenstored.
#[test]
fn rxenstored_live_updates_to_c_xenstored_417() {
    // Makes sure the peers are unpacked (or reports the skip).
    let Some(probe) = start_or_skip(Kind::Cxenstored) else { return };
    drop(probe);
    let Some(d) = start_rx() else { return };
    let cache = std::env::var_os("XS_PEERS_CACHE").map_or_else(|| PathBuf::from("/tmp/xs-peers-cache"), PathBuf::from);
    let wrapper = d.rundir().join("c-xenstored");
    let script = format!(
        "#!/bin/sh\nC={}\nexport LD_LIBRARY_PATH=$C/root/usr/lib/x86_64-linux-gnu:$C/root/usr/lib/xen-4.17/lib\n\
         export LD_PRELOAD=$C/fakexen.so\ncp \"$XENSTORED_RUNDIR/state_dump\" \"$XENSTORED_RUNDIR/state_dump.copy\"\n\
         exec $C/root/usr/lib/xen-4.17/bin/xenstored \"$@\"\n",
        cache.display()
    );
    std::fs::write(&wrapper, script).expect("wrapper");
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let mut admin = d.connect();
    for i in 0..30 {
        assert!(admin.write(format!("/back/n{i}"), format!("v{i}")).expect("write").is_ok());
    }
    assert!(admin.set_perms("/back/n1", &["r0", "w3"]).expect("perms").is_ok());
    let mut watcher = d.connect();
    assert!(watcher.watch("/back", "tok").expect("watch").is_ok());
    assert!(watcher.next_event(Duration::from_secs(5)).is_some());
    let mut before = Vec::new();
    dump_tree(&mut admin, "/", &mut before);
    let out = xen_tool(d.socket(), &["xenstore-control", "live-update", "-t", "5", &wrapper.to_string_lossy()]);
    assert!(
        out.status.success(),
        "xenstore-control: {} {}\nlog:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    assert_eq!(comm(d.pid()), "xenstored", "rxenstored exec'd C xenstored in place");
    let copy = std::fs::read(d.rundir().join("state_dump.copy")).expect("the wrapper's copy");
    assert_eq!(rxenstored::live_update::stream::load(&copy).expect("clean").version, 1);
    let mut after = Vec::new();
    dump_tree(&mut admin, "/", &mut after);
    assert_eq!(before, after, "C restored the same tree");
    assert_eq!(text(&admin.get_perms("/back/n1").expect("perms")), "r0\0w3");
    assert!(admin.write("/back/n5", b"changed").expect("write").is_ok());
    assert_eq!(watcher.next_event(Duration::from_secs(5)), Some((b"/back/n5".to_vec(), b"tok".to_vec())));
}
