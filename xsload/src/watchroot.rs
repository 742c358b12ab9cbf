//! `watch-root`: one connection writes a thousand domains' worth of nodes
//! (each domain as the bootstorm makes it: `name`, `vm`, `domid`, and
//! eight frontend and eight backend keys for each of two vifs and two
//! vbds: 67 nodes), one WRITE at a time outside transactions, while a
//! second connection watches `/` and so gets an event for every one of
//! them: what a monitoring agent or a debugging session adds to a host.
//! The daemon and the clients are pinned to CPUs of their own.
//!
//! Timed from the first WRITE to the watcher's receipt of the event of a
//! sentinel node written last (without a watcher: to the sentinel's
//! reply). The watcher counts its events; every WRITE must reach it. Then,
//! untimed, the watch is removed and so is everything written, so that
//! runs can follow each other on one daemon.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use wire::Op;
use wire::client::{Client, Reply};

use crate::bootstorm::{BACKEND, DEVICES, device_keys};
use crate::conn::{Conn, Fail, Res, show};
use crate::sys;

/// The node written after the last domain.
const SENTINEL: &str = "/tool/xsload/watch-done";
/// The watcher's token.
const TOKEN: &str = "xsload-root";

/// Parameters of one run.
#[derive(Debug, Clone)]
pub struct WatchRoot {
    /// Domains whose nodes are written.
    pub domains: u32,
    /// Whether a connection watches `/` meanwhile.
    pub watch: bool,
    /// Pin the clients to this CPU.
    pub client_cpu: Option<usize>,
    /// Longest wait for one reply.
    pub timeout: Duration,
    /// How long the watcher may take, after the last reply, to see the sentinel.
    pub grace: Duration,
}

/// The outcome.
#[derive(Debug, Clone)]
pub struct WatchRootResult {
    /// WRITEs (the sentinel not counted).
    pub writes: u64,
    /// Seconds from the first WRITE to the sentinel's event (or reply).
    pub elapsed: f64,
    /// Events the watcher got (the initial event and the sentinel's not
    /// counted); 0 without a watcher.
    pub events: u64,
    /// Seconds from the sentinel's reply to its event.
    pub lag: f64,
}

/// The (path, value) pairs of domain `d`, in the order they are written.
fn domain_nodes(d: u32) -> Vec<(String, String)> {
    let home = format!("/local/domain/{d}");
    let mut nodes = vec![
        (format!("{home}/name"), format!("xsload-guest-{d}")),
        (format!("{home}/vm"), format!("/vm/00000000-0000-4000-8000-{d:012}")),
        (format!("{home}/domid"), d.to_string()),
    ];
    for (kind, n) in DEVICES {
        let fe = format!("{home}/device/{kind}/{n}");
        let be = format!("{BACKEND}/{kind}/{d}/{n}");
        let [front, back] = device_keys(kind, d, n, &fe, &be);
        nodes.extend(front.into_iter().map(|(k, v)| (format!("{fe}/{k}"), v)));
        nodes.extend(back.into_iter().map(|(k, v)| (format!("{be}/{k}"), v)));
    }
    nodes
}

/// The watcher, registered and past its initial event: counts events in
/// `seen` and sends when the sentinel's came; gives up once `abandon` is set.
struct Watcher {
    done: mpsc::Receiver<Instant>,
    seen: Arc<AtomicU64>,
    abandon: Arc<AtomicBool>,
}

fn start_watcher(socket: &Path, p: &WatchRoot) -> Res<Watcher> {
    let mut client = Client::connect(socket).map_err(|e| Fail::Wrong(format!("watcher: connect: {e}")))?;
    client.set_reply_timeout(p.timeout);
    match client.watch("/", TOKEN)? {
        Reply::Ok(_) => {}
        Reply::Err(e) => return Err(Fail::Wrong(format!("watcher: WATCH /: {e}"))),
    }
    match client.next_event(p.timeout) {
        Some((path, _)) if path == b"/" => {}
        Some((path, _)) => return Err(Fail::Wrong(format!("watcher: initial event for {}", show(&path)))),
        None => return Err(Fail::Stalled("watcher: no initial event".into())),
    }
    let (tx, done) = mpsc::channel();
    let (seen, abandon) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let (seen2, abandon2) = (seen.clone(), abandon.clone());
    // Pinned as the thread that starts it.
    std::thread::Builder::new()
        .name("watch-root-events".into())
        .spawn(move || {
            while !abandon2.load(Ordering::Relaxed) {
                match client.next_event(Duration::from_millis(200)) {
                    Some((path, _)) if path == SENTINEL.as_bytes() => {
                        let when = Instant::now();
                        // Gone before the clean-up's removals fire it.
                        let _ = client.unwatch("/", TOKEN);
                        let _ = tx.send(when);
                        return;
                    }
                    Some(_) => {
                        seen2.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {}
                }
            }
        })
        .map_err(|e| Fail::Wrong(format!("spawn: {e}")))?;
    Ok(Watcher { done, seen, abandon })
}

/// Runs once against the daemon serving `socket`, on a thread of its own
/// (pinned, if asked: threads it starts inherit the pinning).
pub fn run(socket: &Path, p: &WatchRoot) -> Res<WatchRootResult> {
    sys::on_cpu(p.client_cpu, "watch-root", {
        let (socket, p) = (socket.to_path_buf(), p.clone());
        move || writer(&socket, &p)
    })
}

fn writer(socket: &Path, p: &WatchRoot) -> Res<WatchRootResult> {
    let mut conn = Conn::connect(socket, p.timeout)?;
    let watcher = if p.watch { Some(start_watcher(socket, p)?) } else { None };
    let t0 = Instant::now();
    let mut writes = 0u64;
    for d in 1..=p.domains {
        for (path, value) in domain_nodes(d) {
            conn.write(0, path.as_bytes(), value.as_bytes()).map_err(|e| e.context(format_args!("domain {d}")))?;
            writes += 1;
        }
    }
    conn.write(0, SENTINEL.as_bytes(), b"1")?;
    let replied = Instant::now();
    let res = match watcher {
        None => WatchRootResult { writes, elapsed: (replied - t0).as_secs_f64(), events: 0, lag: 0.0 },
        Some(w) => {
            let got = w.done.recv_timeout(p.grace);
            w.abandon.store(true, Ordering::Relaxed);
            let events = w.seen.load(Ordering::Relaxed);
            let Ok(when) = got else {
                return Err(Fail::Stalled(format!(
                    "watcher: no event for the sentinel within {:?} of its reply ({events} of {writes} events)",
                    p.grace
                )));
            };
            WatchRootResult {
                writes,
                elapsed: (when - t0).as_secs_f64(),
                events,
                lag: when.saturating_duration_since(replied).as_secs_f64(),
            }
        }
    };
    for d in 1..=p.domains {
        conn.call_ok(Op::Rm, 0, &[format!("/local/domain/{d}").as_bytes(), b"\0"])?;
    }
    for path in [BACKEND, SENTINEL] {
        conn.call_ok(Op::Rm, 0, &[path.as_bytes(), b"\0"])?;
    }
    Ok(res)
}
