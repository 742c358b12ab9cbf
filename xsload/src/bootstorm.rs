//! `bootstorm`: many domains created at once, as a toolstack does it.
//!
//! C creator connections share the domain ids 1..=D. Per domain, one
//! transaction (retried on `EAGAIN`):
//!
//! * READ the shared configuration node `/tool/xsload/config`;
//! * MKDIR `/local/domain/<d>`, SET_PERMS `n0 r<d>`, WRITE `name`, `vm`,
//!   `domid`;
//! * two vif and two vbd devices: eight keys each under
//!   `/local/domain/<d>/device/<kind>/<n>/` (frontend) and under
//!   `/local/domain/0/backend/<kind>/<d>/<n>/` (backend);
//!
//! then, after the commit and outside any transaction, the four frontend
//! `state` keys. W watcher connections watch `/local/domain/0/backend` and
//! count events until a sentinel node written after the last domain shows
//! up; a watcher that does not see it within the grace period is reported
//! as stalled, and so is a creator whose reply does not come in time.
//!
//! The backend directories `…/backend/vif` and `…/backend/vbd` exist
//! before the run, as on a host that has run domains; with `fresh` they do
//! not: `/local/domain/0/backend` and every `/local/domain/<d>` are removed
//! first (a host's first domains), so the first transactions all create
//! the missing levels `/local/domain/0/backend`, `…/vif` and `…/vbd`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wire::Op;
use wire::client::{Client, Reply};

use crate::conn::{Conn, Fail, Res, error_name, expect_ok, expect_value, show};

/// The watched directory.
pub const BACKEND: &str = "/local/domain/0/backend";
/// The shared node every transaction reads.
pub const CONFIG: &str = "/tool/xsload/config";
pub const CONFIG_VALUE: &str = "xsload shared configuration: bridge=xenbr0 script=vif-bridge";
/// Written after the last domain; watchers stop when they see its event.
const SENTINEL: &str = "/local/domain/0/backend/xsload-done";
/// Attempts per domain before the run is declared failed (bounds the loop).
const MAX_ATTEMPTS: u32 = 10_000;

/// Parameters of one run.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Domains to create.
    pub domains: u32,
    /// Creator connections.
    pub clients: usize,
    /// Watcher connections.
    pub watchers: usize,
    /// Longest wait for one reply (beyond it the creator is stalled).
    pub reply_timeout: Duration,
    /// No new domain is started after this long.
    pub deadline: Duration,
    /// How long watchers may take, after the last domain, to see the sentinel.
    pub grace: Duration,
    /// Start from a tree without the backend directories and the domains.
    pub fresh: bool,
}

/// Events a watcher of the backend directory gets per domain: one per
/// backend key written.
pub const EVENTS_PER_DOMAIN: u64 = 8 * DEVICES.len() as u64;

/// What one watcher saw.
#[derive(Debug, Clone, Copy)]
pub struct Watcher {
    /// Events received (the initial event and the sentinel not counted).
    pub events: u64,
    /// Whether the sentinel never arrived.
    pub stalled: bool,
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct BootResult {
    /// From the start of the creators to the last one finishing (seconds).
    pub elapsed: f64,
    /// Requests sent by the creators (retried transactions included).
    pub requests: u64,
    /// Domains completely created.
    pub domains_done: u32,
    /// Transactions that ended in `EAGAIN` and were retried.
    pub retries: u64,
    /// Creators that stopped waiting for a reply.
    pub stalled_clients: usize,
    /// Whether the deadline stopped the creators early.
    pub timed_out: bool,
    /// Per watcher.
    pub watchers: Vec<Watcher>,
    /// A first stall message, if any.
    pub stall_note: Option<String>,
}

/// What a thread of a bootstorm did.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests sent (retried transactions included).
    pub requests: u64,
    /// Domains completed.
    pub domains: u32,
    /// Transactions that ended in `EAGAIN` and were retried.
    pub retries: u64,
}

/// A bootstorm thread: what it did, and how it ended.
pub type Worker = JoinHandle<(Stats, Res<()>)>;

/// Starts `clients` creator threads sharing the domain ids 1..=`domains`:
/// each connects, and once all have (the run's start, when this returns),
/// calls `create` for the next domain until none is left or `deadline` has
/// passed (then the returned flag is set).
pub fn start_creators<F>(
    socket: &Path,
    clients: usize,
    domains: u32,
    reply_timeout: Duration,
    deadline: Duration,
    create: F,
) -> Res<(Vec<Worker>, Arc<AtomicBool>)>
where
    F: Fn(&mut Conn, u32, &mut Stats) -> Res<()> + Clone + Send + 'static,
{
    let next = Arc::new(AtomicU32::new(1));
    let timed_out = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(clients + 1));
    let mut creators = Vec::new();
    for c in 0..clients {
        let (next, timed_out, start) = (next.clone(), timed_out.clone(), start.clone());
        let (create, socket) = (create.clone(), socket.to_path_buf());
        let h = std::thread::Builder::new()
            .name(format!("creator-{c}"))
            .spawn(move || {
                let conn = Conn::connect(&socket, reply_timeout);
                start.wait();
                let mut stats = Stats::default();
                let r = conn.and_then(|mut conn| {
                    let deadline = Instant::now() + deadline;
                    loop {
                        if Instant::now() >= deadline {
                            timed_out.store(true, Ordering::Relaxed);
                            return Ok(());
                        }
                        let d = next.fetch_add(1, Ordering::Relaxed);
                        if d > domains {
                            return Ok(());
                        }
                        create(&mut conn, d, &mut stats)
                            .map_err(|e| e.context(format_args!("creator {c}, domain {d}")))?;
                    }
                });
                (stats, r)
            })
            .map_err(|e| Fail::Wrong(format!("spawn: {e}")))?;
        creators.push(h);
    }
    start.wait();
    Ok((creators, timed_out))
}

/// What a run's threads came to.
#[derive(Debug, Default)]
pub struct Joined {
    /// Their figures, summed.
    pub stats: Stats,
    /// The stalls, in the order the threads were given.
    pub stalls: Vec<Fail>,
    /// The other failures, likewise.
    pub wrong: Vec<Fail>,
}

/// Waits for every thread of a run.
pub fn join_workers(workers: impl IntoIterator<Item = Worker>) -> Joined {
    let mut joined = Joined::default();
    for h in workers {
        let name = h.thread().name().unwrap_or("a").to_string();
        let (stats, r) =
            h.join().unwrap_or_else(|_| (Stats::default(), Err(Fail::Wrong(format!("{name} thread panicked")))));
        joined.stats.requests += stats.requests;
        joined.stats.domains += stats.domains;
        joined.stats.retries += stats.retries;
        match r {
            Ok(()) => {}
            Err(e) if e.is_stall() => joined.stalls.push(e),
            Err(e) => joined.wrong.push(e),
        }
    }
    joined
}

/// Prepares the store, starts the watchers, runs the creators.
pub fn run(socket: &Path, b: &Boot) -> Res<BootResult> {
    let mut setup = Conn::connect(socket, b.reply_timeout)?;
    if b.fresh {
        setup.call_ok(Op::Mkdir, 0, &[b"/local/domain/0\0"])?;
        remove(&mut setup, BACKEND)?;
        for d in 1..=b.domains {
            remove(&mut setup, &format!("/local/domain/{d}"))?;
        }
    } else {
        for dir in ["vif", "vbd"] {
            setup.call_ok(Op::Mkdir, 0, &[format!("{BACKEND}/{dir}").as_bytes(), b"\0"])?;
        }
    }
    setup.write(0, CONFIG.as_bytes(), CONFIG_VALUE.as_bytes())?;

    // Watchers, registered and past their initial event before timing.
    let abandon = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut watchers = Vec::new();
    for w in 0..b.watchers {
        let client = watching(socket, BACKEND, &format!("xsload-w{w}"), b.reply_timeout)
            .map_err(|e| e.context(format_args!("watcher {w}")))?;
        let (abandon, done_tx) = (abandon.clone(), done_tx.clone());
        let h = std::thread::Builder::new()
            .name(format!("watcher-{w}"))
            .spawn(move || watch_loop(client, &abandon, &done_tx))
            .map_err(|e| Fail::Wrong(format!("spawn: {e}")))?;
        watchers.push(h);
    }
    drop(done_tx);

    let (creators, timed_out) =
        start_creators(socket, b.clients, b.domains, b.reply_timeout, b.deadline, |conn, d, stats| {
            create_domain(conn, d, stats)?;
            stats.domains += 1;
            Ok(())
        })?;
    let t0 = Instant::now();

    let joined = join_workers(creators);
    let mut res = BootResult {
        elapsed: 0.0,
        requests: joined.stats.requests,
        domains_done: joined.stats.domains,
        retries: joined.stats.retries,
        stalled_clients: joined.stalls.len(),
        timed_out: false,
        watchers: Vec::new(),
        stall_note: joined.stalls.first().map(Fail::to_string),
    };
    let mut wrong = joined.wrong.into_iter().next();
    res.elapsed = t0.elapsed().as_secs_f64();
    res.timed_out = timed_out.load(Ordering::Relaxed);

    // The sentinel, then give the watchers the grace period to see it.
    if let Err(e) = setup.write(0, SENTINEL.as_bytes(), b"1")
        && !e.is_stall()
    {
        wrong.get_or_insert(e.context("writing the sentinel"));
    }
    let grace_end = Instant::now() + b.grace;
    let mut finished = 0;
    while finished < watchers.len() {
        let left = grace_end.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok(()) => finished += 1,
            Err(_) => break,
        }
    }
    abandon.store(true, Ordering::Relaxed);
    for h in watchers {
        let w = h.join().unwrap_or(Watcher { events: 0, stalled: true });
        res.watchers.push(w);
    }
    match wrong {
        Some(e) => Err(e),
        None => Ok(res),
    }
}

/// A client watching `path` with `token`, past the watch's initial event,
/// for the run's watchers (their replies within `timeout`).
pub fn watching(socket: &Path, path: &str, token: &str, timeout: Duration) -> Res<Client> {
    let mut client = Client::connect(socket).map_err(|e| Fail::from(e).context("connect"))?;
    client.set_reply_timeout(timeout);
    match client.watch(path, token).map_err(|e| Fail::from(e).context("WATCH"))? {
        Reply::Ok(_) => {}
        Reply::Err(e) => return Err(Fail::Wrong(format!("WATCH: {e}"))),
    }
    match client.next_event(timeout) {
        Some((event, _)) if event == path.as_bytes() => Ok(client),
        Some((event, _)) => Err(Fail::Wrong(format!("initial event for {}", show(&event)))),
        None => Err(Fail::Stalled("no initial event".into())),
    }
}

/// RM `path`, which may be missing.
fn remove(conn: &mut Conn, path: &str) -> Res<()> {
    let m = conn.call(Op::Rm, 0, &[path.as_bytes(), b"\0"])?;
    match error_name(&m) {
        Some(b"ENOENT") => Ok(()),
        _ => expect_ok(&m, Op::Rm, &[path.as_bytes()]),
    }
}

fn watch_loop(mut client: Client, abandon: &AtomicBool, done: &mpsc::Sender<()>) -> Watcher {
    let mut events = 0;
    while !abandon.load(Ordering::Relaxed) {
        if let Some((path, _)) = client.next_event(Duration::from_millis(200)) {
            if path == SENTINEL.as_bytes() {
                let _ = done.send(());
                return Watcher { events, stalled: false };
            }
            events += 1;
        }
    }
    Watcher { events, stalled: true }
}

/// Eight (key, value) pairs of a device's frontend directory (without
/// `state`, written after the commit) and eight of its backend directory.
pub fn device_keys(kind: &str, d: u32, n: u32, fe: &str, be: &str) -> [[(&'static str, String); 8]; 2] {
    let mac = format!("00:16:3e:{:02x}:{:02x}:{:02x}", (d >> 8) & 0xff, d & 0xff, n);
    if kind == "vif" {
        [
            [
                ("backend", be.to_string()),
                ("backend-id", "0".into()),
                ("handle", n.to_string()),
                ("mac", mac.clone()),
                ("mtu", "1500".into()),
                ("tx-ring-ref", (8 + 2 * n).to_string()),
                ("rx-ring-ref", (9 + 2 * n).to_string()),
                ("event-channel", (20 + n).to_string()),
            ],
            [
                ("frontend", fe.to_string()),
                ("frontend-id", d.to_string()),
                ("online", "1".into()),
                ("state", "1".into()),
                ("script", "/etc/xen/scripts/vif-bridge".into()),
                ("mac", mac),
                ("bridge", "xenbr0".into()),
                ("handle", n.to_string()),
            ],
        ]
    } else {
        let vdev = (202 << 8) | (n << 4);
        [
            [
                ("backend", be.to_string()),
                ("backend-id", "0".into()),
                ("virtual-device", vdev.to_string()),
                ("device-type", "disk".into()),
                ("ring-ref", (30 + n).to_string()),
                ("event-channel", (40 + n).to_string()),
                ("protocol", "x86_64-abi".into()),
                ("feature-persistent", "1".into()),
            ],
            [
                ("frontend", fe.to_string()),
                ("frontend-id", d.to_string()),
                ("online", "1".into()),
                ("state", "1".into()),
                ("params", format!("/var/lib/xen/images/guest{d}-disk{n}.img")),
                ("type", "phy".into()),
                ("mode", "w".into()),
                ("dev", format!("xvd{}", char::from(b'a' + n as u8))),
            ],
        ]
    }
}

pub const DEVICES: [(&str, u32); 4] = [("vif", 0), ("vif", 1), ("vbd", 0), ("vbd", 1)];

/// Why a transaction attempt did not commit.
pub(crate) enum Attempt {
    Committed,
    Conflict,
}

fn create_domain(conn: &mut Conn, d: u32, stats: &mut Stats) -> Res<()> {
    for _ in 0..MAX_ATTEMPTS {
        match attempt(conn, d, Devices::Inherit, &mut stats.requests)? {
            Attempt::Committed => {
                for (kind, n) in DEVICES {
                    let path = format!("/local/domain/{d}/device/{kind}/{n}/state");
                    stats.requests += 1;
                    conn.write(0, path.as_bytes(), b"4")?;
                }
                return Ok(());
            }
            Attempt::Conflict => stats.retries += 1,
        }
    }
    Err(Fail::Wrong(format!("no commit in {MAX_ATTEMPTS} attempts")))
}

/// Permissions of a new domain's device directories.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Devices {
    /// Inherited from their parents, as a plain toolstack leaves them.
    Inherit,
    /// Made and given permissions before their keys are written: the
    /// frontend directories to the guest, the backend ones readable by it
    /// (what a guest on a ring needs, `rings.rs`).
    GuestAccess,
}

/// One transaction creating domain `d`, counting its requests in
/// `requests`; `EAGAIN` from any request of it is a conflict (the
/// transaction is then ended without committing and retried).
pub(crate) fn attempt(conn: &mut Conn, d: u32, devices: Devices, requests: &mut u64) -> Res<Attempt> {
    *requests += 1;
    let tx = conn.transaction_start()?;

    match body(conn, tx, d, devices, requests) {
        Ok(()) => {}
        Err(Some(e)) => return Err(e),
        Err(None) => {
            *requests += 1;
            conn.call(Op::TransactionEnd, tx, &[b"F\0"])?;
            return Ok(Attempt::Conflict);
        }
    }
    *requests += 1;
    let m = conn.call(Op::TransactionEnd, tx, &[b"T\0"])?;
    match error_name(&m) {
        Some(b"EAGAIN") => Ok(Attempt::Conflict),
        _ => expect_ok(&m, Op::TransactionEnd, &[b"commit"]).map(|()| Attempt::Committed),
    }
}

/// The requests of one transaction. `Err(None)` is an `EAGAIN` reply.
fn body(conn: &mut Conn, tx: u32, d: u32, devices: Devices, requests: &mut u64) -> Result<(), Option<Fail>> {
    let mut req = |op: Op, parts: &[&[u8]], expect: Option<&[u8]>| -> Result<(), Option<Fail>> {
        *requests += 1;
        let m = conn.call(op, tx, parts).map_err(Some)?;
        if error_name(&m) == Some(b"EAGAIN") {
            return Err(None);
        }
        match expect {
            Some(v) => expect_value(&m, parts[0], v),
            None => expect_ok(&m, op, parts),
        }
        .map_err(Some)
    };
    req(Op::Read, &[CONFIG.as_bytes(), b"\0"], Some(CONFIG_VALUE.as_bytes()))?;
    let dom = format!("/local/domain/{d}");
    req(Op::Mkdir, &[dom.as_bytes(), b"\0"], None)?;
    // The domain's home and its backend directories: dom0's, readable by
    // the domain; its frontend directories: the domain's, readable by dom0.
    let (dom_perms, fe_perms) = (format!("n0\0r{d}\0"), format!("n{d}\0r0\0"));
    let be_perms = &dom_perms;
    req(Op::SetPerms, &[dom.as_bytes(), b"\0", dom_perms.as_bytes()], None)?;
    let vm = format!("/vm/00000000-0000-4000-8000-{d:012}");
    for (key, value) in [("name", format!("xsload-guest-{d}")), ("vm", vm), ("domid", d.to_string())] {
        let path = format!("{dom}/{key}");
        req(Op::Write, &[path.as_bytes(), b"\0", value.as_bytes()], None)?;
    }
    for (kind, n) in DEVICES {
        let fe = format!("{dom}/device/{kind}/{n}");
        let be = format!("{BACKEND}/{kind}/{d}/{n}");
        let [front, back] = device_keys(kind, d, n, &fe, &be);
        for (dir, perms, keys) in [(&fe, &fe_perms, front), (&be, be_perms, back)] {
            if devices == Devices::GuestAccess {
                req(Op::Mkdir, &[dir.as_bytes(), b"\0"], None)?;
                req(Op::SetPerms, &[dir.as_bytes(), b"\0", perms.as_bytes()], None)?;
            }
            for (key, value) in keys {
                let path = format!("{dir}/{key}");
                req(Op::Write, &[path.as_bytes(), b"\0", value.as_bytes()], None)?;
            }
        }
    }
    Ok(())
}
