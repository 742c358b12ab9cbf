//! `kill -9` at random moments under a write storm, then restart.
//!
//! Guards against the failure persistence exists to prevent: a restarted
//! daemon that lost an acknowledged write (`--durability commit`), or that
//! came back with a state that never existed — half a transaction, a later
//! write without an earlier one (`--durability checkpoint`).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rxenstored_suite::daemon::rxenstored_bin;
use wire::Op;
use wire::client::{Client, Reply};

const CLIENTS: usize = 4;

struct Rx {
    child: Child,
    socket: PathBuf,
}

impl Rx {
    fn start(bin: &Path, run: &Path, state: &Path, durability: &str) -> Rx {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(run.join("daemon.log")).expect("log");
        let child = Command::new(bin)
            .args(["--no-fork", "--state-dir"])
            .arg(state)
            .args(["--durability", durability, "--checkpoint-interval", "1", "--checkpoint-commits", "50"])
            .env("XENSTORED_RUNDIR", run)
            .env_remove("XENSTORED_PATH")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start rxenstored");
        let socket = run.join("socket");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Client::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "rxenstored did not come up:\n{}",
                std::fs::read_to_string(run.join("daemon.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(20));
        }
        Rx { child, socket }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait");
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL, not exited: {status:?}");
    }
}

impl Drop for Rx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ok(r: std::io::Result<Reply>, what: &str) -> Vec<u8> {
    match r {
        Ok(Reply::Ok(p)) => p,
        other => panic!("{what}: {other:?}"),
    }
}

/// Each client writes `n` to /storm/<c>/a and /storm/<c>/b in one
/// transaction, n = from + 1, from + 2, ...; returns the last n acknowledged.
fn storm(socket: PathBuf, c: usize, from: u64, stop: Arc<AtomicBool>) -> u64 {
    let Ok(mut cl) = Client::connect(&socket) else { return 0 };
    cl.set_reply_timeout(Duration::from_secs(5));
    let mut acked = from;
    for n in from + 1.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok(tx) = cl.start_tx() else { break };
        let v = n.to_string();
        let a = cl.write_tx(tx, format!("/storm/{c}/a"), &v);
        let b = cl.write_tx(tx, format!("/storm/{c}/b"), &v);
        if !matches!((a, b), (Ok(Reply::Ok(_)), Ok(Reply::Ok(_)))) {
            break;
        }
        match cl.transaction_end(tx, true) {
            Ok(Reply::Ok(_)) => acked = n,
            Ok(Reply::Err(e)) => panic!("commit of disjoint keys failed: {e}"),
            Err(_) => break,
        }
    }
    acked
}

fn value(cl: &mut Client, path: &str) -> u64 {
    match cl.read(path).expect("read") {
        Reply::Ok(v) => String::from_utf8(v).expect("utf8").parse().expect("number"),
        Reply::Err(e) if e == "ENOENT" => 0,
        Reply::Err(e) => panic!("READ {path}: {e}"),
    }
}

fn crash_rounds(durability: &str) {
    let Some(bin) = rxenstored_bin().filter(|b| b.is_file()) else {
        eprintln!("SKIP: rxenstored binary not built");
        return;
    };
    let run = tempfile::tempdir().expect("run dir");
    let state_tmp = tempfile::tempdir().expect("state dir");
    // XS_KEEP_STATE=DIR keeps the state files for inspection.
    let state: PathBuf = match std::env::var_os("XS_KEEP_STATE") {
        Some(d) => {
            let p = PathBuf::from(d).join(durability);
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("state dir");
            p
        }
        None => state_tmp.path().to_path_buf(),
    };
    let mut floor = [0u64; CLIENTS];
    for round in 0..5u64 {
        if let Some(d) = std::env::var_os("XS_KEEP_STATE") {
            let copy = PathBuf::from(d).join(format!("{durability}-before-{round}"));
            let _ = std::fs::remove_dir_all(&copy);
            std::fs::create_dir_all(&copy).expect("copy dir");
            for e in std::fs::read_dir(&state).expect("state") {
                let e = e.expect("entry");
                std::fs::copy(e.path(), copy.join(e.file_name())).expect("copy");
            }
        }
        let mut rx = Rx::start(&bin, run.path(), &state, durability);
        // What the previous incarnation acknowledged is all there.
        let mut cl = Client::connect(&rx.socket).expect("connect");
        assert_eq!(ok(cl.request(Op::Control, 0, b"check\0"), "CONTROL check"), b"OK\0", "consistent tree");
        for (c, f) in floor.iter_mut().enumerate() {
            let a = value(&mut cl, &format!("/storm/{c}/a"));
            let b = value(&mut cl, &format!("/storm/{c}/b"));
            assert_eq!(a, b, "round {round} client {c}: half a transaction survived");
            if durability == "commit" {
                assert!(a >= *f, "round {round} client {c}: acknowledged write {f} lost (found {a})");
            }
            // Checkpoint mode: an earlier state, never a newer one.
            *f = if durability == "commit" { a } else { (*f).max(a) };
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (socket, stop, from) = (rx.socket.clone(), Arc::clone(&stop), floor[c]);
                thread::spawn(move || storm(socket, c, from, stop))
            })
            .collect();
        // A different kill point each round.
        thread::sleep(Duration::from_millis(150 + 170 * round));
        rx.kill9();
        stop.store(true, Ordering::Relaxed);
        for (c, w) in writers.into_iter().enumerate() {
            let acked = w.join().expect("writer");
            if durability == "commit" {
                floor[c] = floor[c].max(acked);
            }
        }
    }
    let rx = Rx::start(&bin, run.path(), &state, durability);
    let mut cl = Client::connect(&rx.socket).expect("connect");
    for (c, f) in floor.iter().enumerate() {
        let a = value(&mut cl, &format!("/storm/{c}/a"));
        assert_eq!(a, value(&mut cl, &format!("/storm/{c}/b")));
        if durability == "commit" {
            assert!(a >= *f, "final: client {c} lost acknowledged write {f} (found {a})");
        }
    }
    eprintln!("{durability}: final acknowledged writes per client {floor:?}");
}

#[test]
fn commit_durability_survives_kill_9() {
    crash_rounds("commit");
}

#[test]
fn checkpoint_durability_restarts_from_a_consistent_snapshot() {
    crash_rounds("checkpoint");
}
