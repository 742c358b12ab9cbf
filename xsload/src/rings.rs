//! Ring variants of `pairs` and `bootstorm`: the guests' requests go over
//! shared rings instead of the Unix socket. rxenstored runs with
//! `--sim-rings DIR` and the guests are `rxenstored_platform::sim::SimGuest`s in this
//! process (a 4 KiB page file per domain, FIFOs as event channels); dom0
//! (the toolstack, the watcher) stays on the socket. Only rxenstored can
//! serve these rings, so each case is also run with the same guests'
//! requests over the socket (a fresh daemon, same shape) and reported as
//! ring ÷ socket.
//!
//! * `pairs-ring`: G guests, one thread each, introduced from dom0 (home
//!   `/local/domain/<d>` owned by the guest), then sequential WRITE then
//!   READ pairs on `bench/k<i % keys>` (relative to the home), every reply
//!   checked. The socket counterpart is [`crate::pairs`] with G
//!   connections.
//! * `bootstorm-ring`: C creator connections on the socket create domains
//!   by transaction, as [`crate::bootstorm`] does, but give each frontend
//!   device directory to the guest (`n<d> r0`) and let it read the backend
//!   one (`n0 r<d>`), as a toolstack does; then INTRODUCE the guest. A pool
//!   of guest threads takes the introduced guests: each waits for its ring
//!   to connect, and per device reads its `backend` key, the backend's
//!   `state` and writes its own `state` = 4 over the ring. A watcher on the
//!   socket watches `/local/domain` and counts events, among them the
//!   guests' frontend `state` writes (4 per domain, checked). The socket
//!   counterpart creates the same domains (their files: a domain must
//!   exist to own nodes) and does the guests' part over one fresh socket
//!   connection per domain (dom0, absolute paths, no INTRODUCE).
//!
//! Every wait is bounded: a reply within the reply timeout (else a
//! stall), no new domain after the deadline, the watcher's sentinel
//! within the grace period.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::time::{Duration, Instant};

use rxenstored_platform::sim::{SimGuest, nul};
use wire::Op;
use wire::client::{Client, Reply};

use crate::bootstorm::{
    Attempt, BACKEND, CONFIG, CONFIG_VALUE, DEVICES, Devices, Stats, attempt, join_workers, start_creators, watching,
};
use crate::conn::{Conn, Fail, Res, join_all, show};
use crate::pairs;

/// Where the guests' requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Shared rings (simulated guests).
    Ring,
    /// The Unix socket.
    Socket,
}

impl Transport {
    /// Both, in report order.
    pub const BOTH: [Transport; 2] = [Transport::Ring, Transport::Socket];

    /// For case and metric names.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ring => "ring",
            Transport::Socket => "socket",
        }
    }
}

/// Attempts per domain before the run is declared failed (bounds the loop).
const MAX_ATTEMPTS: u32 = 10_000;
/// Written after the last domain; the watcher stops when it sees its event.
const SENTINEL: &str = "/local/domain/0/backend/xsload-ring-done";
/// The watcher's path.
const WATCHED: &str = "/local/domain";

fn io_fail(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Fail {
    move |e| Fail::from(e).context(what)
}

/// A request of a guest, the way its transport needs it.
trait GuestIo {
    /// READ `path`, which must hold `value`.
    fn read_expect(&mut self, path: &str, value: &[u8]) -> Res<()>;
    /// WRITE `value` to `path`, which must succeed.
    fn write_ok(&mut self, path: &str, value: &[u8]) -> Res<()>;
}

impl GuestIo for SimGuest {
    fn read_expect(&mut self, path: &str, value: &[u8]) -> Res<()> {
        match self.read(path).map_err(io_fail(format_args!("READ {path}")))? {
            Reply::Ok(v) if v == value => Ok(()),
            r => Err(Fail::Wrong(format!("READ {path}: expected {}, got {r:?}", show(value)))),
        }
    }

    fn write_ok(&mut self, path: &str, value: &[u8]) -> Res<()> {
        match self.write(path, value).map_err(io_fail(format_args!("WRITE {path}")))? {
            r if r == Reply::ok_nul() => Ok(()),
            r => Err(Fail::Wrong(format!("WRITE {path}: expected OK, got {r:?}"))),
        }
    }
}

impl GuestIo for Conn {
    fn read_expect(&mut self, path: &str, value: &[u8]) -> Res<()> {
        Conn::read_expect(self, 0, path.as_bytes(), value)
    }

    fn write_ok(&mut self, path: &str, value: &[u8]) -> Res<()> {
        self.write(0, path.as_bytes(), value)
    }
}

/// INTRODUCE's payload for domain `d`: domain id, grant frame (unused by
/// the simulation), event channel port.
fn introduce_args(d: u32) -> Vec<u8> {
    nul(&[&d.to_string(), "0", &(10 + d).to_string()])
}

/// Gives domain `d` a home it owns, INTRODUCEs it from `dom0` and waits for
/// its ring to connect. The guest's files must exist (`SimGuest::create`).
fn introduce(dom0: &mut Conn, g: &mut SimGuest, timeout: Duration) -> Res<()> {
    let d = g.domid();
    let home = format!("/local/domain/{d}");
    dom0.call_ok(Op::Mkdir, 0, &[home.as_bytes(), b"\0"])?;
    let perms = format!("n{d}\0");
    dom0.call_ok(Op::SetPerms, 0, &[home.as_bytes(), b"\0", perms.as_bytes()])?;
    dom0.call_ok(Op::Introduce, 0, &[&introduce_args(u32::from(d))])
        .map_err(|e| e.context(format_args!("INTRODUCE {d}")))?;
    g.wait_connected(timeout).map_err(io_fail(format_args!("domain {d}: ring never connected")))
}

/// Parameters of one `pairs-ring` run.
#[derive(Debug, Clone)]
pub struct PairsRing {
    /// Guests (threads), domains `first`..`first + guests`.
    pub guests: usize,
    /// The first guest's domain id (fresh domains for every run on one daemon).
    pub first: u16,
    /// WRITE+READ pairs per guest.
    pub pairs_per_guest: u64,
    /// Value length in bytes.
    pub value_bytes: usize,
    /// Distinct keys per guest.
    pub keys: u64,
    /// Longest wait for one reply.
    pub timeout: Duration,
}

/// Runs `pairs-ring` once over rings: requests per second over all guests,
/// from the moment every guest is connected to the last reply.
pub fn pairs(socket: &Path, rings: &Path, p: &PairsRing) -> Res<f64> {
    let mut dom0 = Conn::connect(socket, p.timeout)?;
    let mut guests = Vec::with_capacity(p.guests);
    for i in 0..p.guests {
        let d = u16::try_from(i)
            .ok()
            .and_then(|i| p.first.checked_add(i))
            .filter(|d| *d > 0 && *d < 0x7ff0)
            .ok_or_else(|| Fail::Wrong("guest domain ids out of range".into()))?;
        let mut g = SimGuest::create(rings, d).map_err(io_fail(format_args!("domain {d}: files")))?;
        g.set_timeout(p.timeout);
        introduce(&mut dom0, &mut g, p.timeout)?;
        guests.push(g);
    }
    let start = Arc::new(Barrier::new(p.guests + 1));
    let mut handles = Vec::with_capacity(p.guests);
    for mut g in guests {
        let (start, p) = (start.clone(), p.clone());
        let h = std::thread::Builder::new()
            .name(format!("guest-{}", g.domid()))
            .spawn(move || {
                start.wait();
                let d = g.domid();
                guest_pairs(&mut g, &p).map_err(|e| e.context(format_args!("domain {d}")))
            })
            .map_err(|e| Fail::Wrong(format!("spawn: {e}")))?;
        handles.push(h);
    }
    start.wait();
    let t0 = Instant::now();
    let joined = join_all(handles, "guest thread");
    let secs = t0.elapsed().as_secs_f64();
    joined?;
    Ok((2 * p.pairs_per_guest * p.guests as u64) as f64 / secs)
}

fn guest_pairs(g: &mut SimGuest, p: &PairsRing) -> Res<()> {
    let keys: Vec<String> = (0..p.keys).map(|k| format!("bench/k{k}")).collect();
    let mut value = vec![b'a'; p.value_bytes];
    for i in 0..p.pairs_per_guest {
        let path = &keys[(i % p.keys) as usize];
        pairs::pair_value(i, &mut value);
        g.write_ok(path, &value)?;
        g.read_expect(path, &value)?;
    }
    Ok(())
}

/// Parameters of one `bootstorm-ring` run.
#[derive(Debug, Clone)]
pub struct BootRing {
    /// Domains to create (domain ids 1..=D).
    pub domains: u32,
    /// Creator connections (dom0, socket).
    pub clients: usize,
    /// Guest threads serving the introduced guests.
    pub guest_threads: usize,
    /// Where the guests' requests go.
    pub transport: Transport,
    /// The simulated guests' directory (`--sim-rings`). Both transports
    /// create the domains' files there: a domain must exist to own nodes.
    pub rings: PathBuf,
    /// Longest wait for one reply (beyond it the client is stalled).
    pub reply_timeout: Duration,
    /// No new domain is started after this long.
    pub deadline: Duration,
    /// How long the watcher may take, after the last guest, to see the sentinel.
    pub grace: Duration,
}

/// The outcome of one `bootstorm-ring` run.
#[derive(Debug, Clone, Default)]
pub struct BootRingResult {
    /// From the start of the creators to the last guest finishing (seconds).
    pub elapsed: f64,
    /// Requests of the creators (INTRODUCE and retries included) and guests.
    pub requests: u64,
    /// Domains created whose guest finished.
    pub domains_done: u32,
    /// Transactions that ended in `EAGAIN` and were retried.
    pub retries: u64,
    /// Whether the deadline stopped the creators early.
    pub timed_out: bool,
    /// Events the watcher received (initial event and sentinel not counted).
    pub events: u64,
    /// Of which for the guests' frontend `state` writes.
    pub state_events: u64,
    /// Whether the watcher never saw the sentinel.
    pub watcher_stalled: bool,
}

/// What the guest threads get from the creators: the domain, and its
/// simulated guest on the ring transport.
type Handoff = (u32, Option<SimGuest>);

/// Prepares the store, starts the watcher, the creators and the guests.
pub fn bootstorm(socket: &Path, b: &BootRing) -> Res<BootRingResult> {
    if b.domains == 0 || b.domains > 30_000 {
        return Err(Fail::Wrong(format!("{} domains: expected 1..=30000", b.domains)));
    }
    let mut setup = Conn::connect(socket, b.reply_timeout)?;
    for dir in ["vif", "vbd"] {
        setup.call_ok(Op::Mkdir, 0, &[format!("{BACKEND}/{dir}").as_bytes(), b"\0"])?;
    }
    setup.write(0, CONFIG.as_bytes(), CONFIG_VALUE.as_bytes())?;

    // The watcher, past its initial event before timing.
    let client = watching(socket, WATCHED, "xsload-ring", b.reply_timeout).map_err(|e| e.context("watcher"))?;
    let abandon = Arc::new(AtomicBool::new(false));
    let watcher = {
        let abandon = abandon.clone();
        std::thread::Builder::new()
            .name("ring-watcher".into())
            .spawn(move || watch_loop(client, &abandon))
            .map_err(|e| Fail::Wrong(format!("spawn: {e}")))?
    };

    // Guest threads: they end when every creator has dropped its sender.
    let (tx, rx) = mpsc::channel::<Handoff>();
    let rx = Arc::new(Mutex::new(rx));
    let mut guests = Vec::new();
    for t in 0..b.guest_threads.max(1) {
        let (rx, b2, socket) = (rx.clone(), b.clone(), socket.to_path_buf());
        let h = std::thread::Builder::new()
            .name(format!("guests-{t}"))
            .spawn(move || {
                let mut stats = Stats::default();
                let r = loop {
                    let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((d, g)) = next else { break Ok(()) };
                    let r = match g {
                        Some(mut g) => g
                            .wait_connected(b2.reply_timeout)
                            .map_err(io_fail("ring never connected"))
                            .and_then(|()| guest_boot(&mut g, "", d, &mut stats)),
                        None => Conn::connect(&socket, b2.reply_timeout)
                            .and_then(|mut c| guest_boot(&mut c, &format!("/local/domain/{d}/"), d, &mut stats)),
                    };
                    if let Err(e) = r {
                        break Err(e.context(format_args!("guest {d}")));
                    }
                    stats.domains += 1;
                };
                (stats, r)
            })
            .map_err(|e| Fail::Wrong(format!("spawn: {e}")))?;
        guests.push(h);
    }

    let b2 = b.clone();
    let (creators, timed_out) =
        start_creators(socket, b.clients, b.domains, b.reply_timeout, b.deadline, move |conn, d, stats| {
            let g = create_domain(conn, &b2.rings, d, &b2, stats)?;
            tx.send((d, g)).map_err(|_| Fail::Wrong("every guest thread has failed".into()))
        })?;
    let t0 = Instant::now();

    let joined = join_workers(creators.into_iter().chain(guests));
    let mut res = BootRingResult {
        requests: joined.stats.requests,
        domains_done: joined.stats.domains,
        retries: joined.stats.retries,
        ..BootRingResult::default()
    };
    // A wrong reply says more than a stall it may have caused.
    let first_err = joined.wrong.into_iter().chain(joined.stalls).next();
    res.elapsed = t0.elapsed().as_secs_f64();
    res.timed_out = timed_out.load(Ordering::Relaxed);

    // The sentinel, then the grace period for the watcher to see it.
    let sentinel = setup.write(0, SENTINEL.as_bytes(), b"1");
    let grace_end = Instant::now() + b.grace;
    while !watcher.is_finished() && Instant::now() < grace_end {
        std::thread::sleep(Duration::from_millis(5));
    }
    abandon.store(true, Ordering::Relaxed);
    let w = watcher.join().unwrap_or(WatchCount { events: 0, state_events: 0, stalled: true });
    (res.events, res.state_events, res.watcher_stalled) = (w.events, w.state_events, w.stalled);
    if let Some(e) = first_err {
        return Err(e);
    }
    sentinel.map_err(|e| e.context("writing the sentinel"))?;
    if !res.watcher_stalled && res.state_events != 4 * u64::from(res.domains_done) {
        return Err(Fail::Wrong(format!(
            "the watcher saw {} frontend state events for {} domains (expected 4 each)",
            res.state_events, res.domains_done
        )));
    }
    Ok(res)
}

#[derive(Debug)]
struct WatchCount {
    events: u64,
    state_events: u64,
    stalled: bool,
}

fn watch_loop(mut client: Client, abandon: &AtomicBool) -> WatchCount {
    let mut w = WatchCount { events: 0, state_events: 0, stalled: true };
    while !abandon.load(Ordering::Relaxed) {
        if let Some((path, _)) = client.next_event(Duration::from_millis(200)) {
            if path == SENTINEL.as_bytes() {
                w.stalled = false;
                return w;
            }
            w.events += 1;
            if is_frontend_state(&path) {
                w.state_events += 1;
            }
        }
    }
    w
}

/// `/local/domain/<d>/device/<kind>/<n>/state` with `d` ≠ 0.
fn is_frontend_state(path: &[u8]) -> bool {
    let Some(rest) = path.strip_prefix(b"/local/domain/") else {
        return false;
    };
    let parts: Vec<&[u8]> = rest.split(|b| *b == b'/').collect();
    parts.len() == 5 && parts[0] != b"0" && parts[1] == b"device" && parts[4] == b"state"
}

/// The guest's part: per device, its `backend` key, the backend's `state`,
/// then its own `state` = 4. `prefix` is `""` (relative paths, over the
/// ring) or the home with a slash (over the socket).
fn guest_boot(g: &mut impl GuestIo, prefix: &str, d: u32, stats: &mut Stats) -> Res<()> {
    for (kind, n) in DEVICES {
        let fe = format!("{prefix}device/{kind}/{n}");
        let be = format!("{BACKEND}/{kind}/{d}/{n}");
        stats.requests += 3;
        g.read_expect(&format!("{fe}/backend"), be.as_bytes())?;
        g.read_expect(&format!("{be}/state"), b"1")?;
        g.write_ok(&format!("{fe}/state"), b"4")?;
    }
    Ok(())
}

/// Creates domain `d`: its guest's files (the domain then exists for the
/// daemon, which lets it own nodes), the transaction (retried on
/// `EAGAIN`), then, on the ring transport, INTRODUCE.
fn create_domain(conn: &mut Conn, rings: &Path, d: u32, b: &BootRing, stats: &mut Stats) -> Res<Option<SimGuest>> {
    let id = u16::try_from(d).map_err(|_| Fail::Wrong("domain id out of range".into()))?;
    let mut g = SimGuest::create(rings, id).map_err(io_fail("guest files"))?;
    g.set_timeout(b.reply_timeout);
    let guest = (b.transport == Transport::Ring).then_some(g);
    let mut committed = false;
    for _ in 0..MAX_ATTEMPTS {
        if matches!(attempt(conn, d, Devices::GuestAccess, &mut stats.requests)?, Attempt::Committed) {
            committed = true;
            break;
        }
        stats.retries += 1;
    }
    if !committed {
        return Err(Fail::Wrong(format!("no commit in {MAX_ATTEMPTS} attempts")));
    }
    // The guest thread waits for the ring to connect.
    if guest.is_some() {
        stats.requests += 1;
        conn.call_ok(Op::Introduce, 0, &[&introduce_args(d)]).map_err(|e| e.context("INTRODUCE"))?;
    }
    Ok(guest)
}
