//! `xsload`: the same workloads against rxenstored, Debian's C xenstored
//! and oxenstored and a null "floor" server, one after the other in one
//! run, over each one's Unix socket; prints absolute figures and the ratios
//! of rxenstored to the better reference daemon (and to the floor).
//!
//! # Layout
//!
//! * `daemons`: starting (fresh, per case) and stopping the servers.
//! * `conn`: the lean blocking connection of the timed loops, on `wire`'s
//!   codec; the `Fail` type (stalled vs wrong).
//! * `pairs`, `bootstorm` (also from a fresh tree), `readheavy`, `large`:
//!   the workloads.
//! * `idle`, `watchroot`, `lstree`: cases users meet, with the daemon and
//!   the client pinned to CPUs of their own (`--cpus`) and every figure
//!   also given as a ratio to C xenstored's: one active connection among
//!   many idle ones, a watcher on `/` while domains are written, and
//!   `xenstore-ls` of a large tree.
//! * `rings`: `pairs-ring` and `bootstorm-ring`, rxenstored only: the
//!   guests on simulated shared rings (`--sim-rings`), against the same
//!   workload over the socket (ring ÷ socket).
//! * `floor`: the null store server (`xsload floor-server SOCKET`).
//! * `report`: the sheet of results, as a table or JSON.
//! * `sys`: CPU affinity, `/proc` memory figures, the signal thread.
//!
//! Every case starts a fresh daemon, so memory figures and stalls of one
//! case never leak into the next.

mod bootstorm;
mod conn;
mod daemons;
mod floor;
mod idle;
mod large;
mod lstree;
mod pairs;
mod readheavy;
mod report;
mod rings;
mod sys;
mod watchroot;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;

use conn::{Fail, Res};
use daemons::{DaemonProcess, Kind, Programs, StartError};
use report::{Better, Cell, Metric, Sheet, Unit};

/// Side-by-side xenstore daemon load generator.
#[derive(Debug, Parser)]
#[command(name = "xsload", version, about)]
struct Cli {
    /// Tiny sizes (a smoke test of the tool, a few seconds per daemon).
    #[arg(long)]
    quick: bool,
    /// Workloads to run: pairs, bootstorm, bootstorm-fresh, read-heavy,
    /// large-tree, idle-conns, watch-root, ls-tree, pairs-ring,
    /// bootstorm-ring (comma-separated). The ring variants run rxenstored
    /// only, over simulated rings and over the socket.
    #[arg(long, value_delimiter = ',', default_values = WORKLOADS)]
    only: Vec<String>,
    /// Servers to compare: rxenstored, cxenstored, oxenstored, floor
    /// (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "rxenstored,cxenstored,oxenstored,floor")]
    daemons: Vec<String>,
    /// Also run `pairs` with the daemon (`taskset -c CPU`) and the client
    /// threads (sched_setaffinity) pinned to this CPU, as peers/README.md's
    /// reference figures were made. Also the CPU of read-heavy's 1-core case.
    #[arg(long, value_name = "CPU")]
    pin: Option<usize>,
    /// The rxenstored binary [default: `rxenstored` next to this program,
    /// else ../release/rxenstored; or $RXENSTORED_BIN].
    #[arg(long, value_name = "PATH")]
    rxenstored: Option<PathBuf>,
    /// The shared/ directory holding peers/start-peer [default: $XS_SHARED_DIR, else ../shared of the workspace].
    #[arg(long, value_name = "DIR")]
    shared: Option<PathBuf>,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Bootstorm cases as DOMAINS/CLIENTS (comma-separated) [default: 200/1,200/8,1000/16; quick: 20/4].
    #[arg(long, value_delimiter = ',', value_name = "D/C")]
    bootstorm: Vec<String>,
    /// bootstorm-fresh cases (the backend directories and the domains
    /// removed first) as DOMAINS/CLIENTS [default: 200/8; quick: 20/4].
    #[arg(long, value_delimiter = ',', value_name = "D/C")]
    bootstorm_fresh: Vec<String>,
    /// The CPUs of the daemon and of the client in idle-conns, watch-root
    /// and ls-tree, as DAEMON,CLIENT [default: 1,0; unpinned on a machine
    /// with one CPU].
    #[arg(long, value_delimiter = ',', value_name = "D,C", num_args = 2)]
    cpus: Vec<usize>,
    /// Idle connections of the idle-conns cases (comma-separated)
    /// [default: 0,500,1000,5000; quick: 0,50].
    #[arg(long, value_delimiter = ',', value_name = "N")]
    idle: Vec<usize>,
    /// Domains written in watch-root [default: 1000; quick: 20].
    #[arg(long, value_name = "N")]
    watch_domains: Option<u32>,
    /// Shape of the ls-tree tree as DIRS/LEAVES_PER_DIR, DIRS ≤ 1000
    /// [default: 1000/99 (100,000 nodes); quick: 20/49].
    #[arg(long, value_name = "D/L")]
    ls: Option<String>,
    /// bootstorm-ring cases as DOMAINS/CLIENTS [default: 100/4,1000/8; quick: 10/2].
    #[arg(long, value_delimiter = ',', value_name = "D/C")]
    bootstorm_ring: Vec<String>,
    /// Requests per `pairs` (and `pairs-ring`) run, over all connections [default: 40000; quick: 2000].
    #[arg(long, value_name = "N")]
    pairs_requests: Option<u64>,
    /// Timed phase of read-heavy, in seconds [default: 4; quick: 0.3].
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Shape of the large tree as DIRS/LEAVES_PER_DIR [default: 1000/1000; quick: 20/500].
    /// Loading stops after 45 s (quick: 30 s); figures are then over the nodes loaded.
    #[arg(long, value_name = "D/L")]
    large: Option<String>,
    #[command(subcommand)]
    cmd: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Serve the floor (null store) on SOCKET until killed.
    #[command(hide = true)]
    FloorServer { socket: PathBuf },
}

/// The sizes of one run.
#[derive(Debug, Clone)]
struct Sizes {
    pairs_requests: u64,
    pairs_conns: Vec<usize>,
    pairs_reps: usize,
    boot: Vec<(u32, usize)>,
    boot_fresh: Vec<(u32, usize)>,
    ring_boot: Vec<(u32, usize)>,
    ring_guest_threads: usize,
    watchers: usize,
    boot_deadline: Duration,
    boot_grace: Duration,
    rh_nodes: u64,
    rh_readers: usize,
    rh_duration: Duration,
    large_dirs: u64,
    large_per_dir: u64,
    large_budget: Duration,
    idle: Vec<usize>,
    idle_duration: Duration,
    watch_domains: u32,
    ls_dirs: u64,
    ls_per_dir: u64,
    /// The daemon's and the client's CPU in the pinned cases.
    split_cpus: Option<(usize, usize)>,
    reply_timeout: Duration,
}

impl Sizes {
    fn new(cli: &Cli) -> Result<Sizes, String> {
        let mut s = if cli.quick {
            Sizes {
                pairs_requests: 2_000,
                pairs_conns: vec![1, 16],
                pairs_reps: 1,
                boot: vec![(20, 4)],
                boot_fresh: vec![(20, 4)],
                ring_boot: vec![(10, 2)],
                ring_guest_threads: 2,
                watchers: 2,
                boot_deadline: Duration::from_secs(30),
                boot_grace: Duration::from_secs(5),
                rh_nodes: 2_000,
                rh_readers: 16,
                rh_duration: Duration::from_millis(300),
                large_dirs: 20,
                large_per_dir: 500,
                large_budget: Duration::from_secs(30),
                idle: vec![0, 50],
                idle_duration: Duration::from_millis(300),
                watch_domains: 20,
                ls_dirs: 20,
                ls_per_dir: 49,
                split_cpus: None,
                reply_timeout: Duration::from_secs(10),
            }
        } else {
            Sizes {
                pairs_requests: 40_000,
                pairs_conns: vec![1, 16],
                pairs_reps: 3,
                boot: vec![(200, 1), (200, 8), (1000, 16)],
                boot_fresh: vec![(200, 8)],
                ring_boot: vec![(100, 4), (1000, 8)],
                ring_guest_threads: 4,
                watchers: 2,
                boot_deadline: Duration::from_secs(90),
                boot_grace: Duration::from_secs(10),
                rh_nodes: 100_000,
                rh_readers: 16,
                rh_duration: Duration::from_secs(4),
                large_dirs: 1000,
                large_per_dir: 1000,
                large_budget: Duration::from_secs(45),
                idle: vec![0, 500, 1000, 5000],
                idle_duration: Duration::from_secs(2),
                watch_domains: 1000,
                ls_dirs: 1000,
                ls_per_dir: 99,
                split_cpus: None,
                reply_timeout: Duration::from_secs(10),
            }
        };
        if let Some(n) = cli.pairs_requests {
            s.pairs_requests = n;
        }
        if let Some(d) = cli.duration {
            if !(d > 0.0 && d < 3600.0) {
                return Err(format!("--duration {d}: expected 0 < SECS < 3600"));
            }
            s.rh_duration = Duration::from_secs_f64(d);
        }
        if let Some(shape) = &cli.large {
            let parsed = shape
                .split_once('/')
                .and_then(|(d, l)| Some((d.trim().parse::<u64>().ok()?, l.trim().parse::<u64>().ok()?)));
            match parsed {
                Some((d, l)) if d > 0 && l > 0 => (s.large_dirs, s.large_per_dir) = (d, l),
                _ => return Err(format!("--large {shape}: expected DIRS/LEAVES_PER_DIR")),
            }
        }
        if !cli.bootstorm.is_empty() {
            s.boot = parse_cases(&cli.bootstorm, u32::MAX)
                .map_err(|()| format!("--bootstorm {:?}: expected DOMAINS/CLIENTS (1..=256 clients)", cli.bootstorm))?;
        }
        if !cli.bootstorm_fresh.is_empty() {
            s.boot_fresh = parse_cases(&cli.bootstorm_fresh, u32::MAX).map_err(|()| {
                format!("--bootstorm-fresh {:?}: expected DOMAINS/CLIENTS (1..=256 clients)", cli.bootstorm_fresh)
            })?;
        }
        if !cli.idle.is_empty() {
            if cli.idle.iter().any(|&n| n > 100_000) {
                return Err(format!("--idle {:?}: at most 100000 connections", cli.idle));
            }
            s.idle = cli.idle.clone();
        }
        if let Some(n) = cli.watch_domains {
            if !(1..=100_000).contains(&n) {
                return Err(format!("--watch-domains {n}: expected 1..=100000"));
            }
            s.watch_domains = n;
        }
        if let Some(shape) = &cli.ls {
            let parsed = shape
                .split_once('/')
                .and_then(|(d, l)| Some((d.trim().parse::<u64>().ok()?, l.trim().parse::<u64>().ok()?)));
            match parsed {
                // /ls's list of names "0".."999" fits in one reply.
                Some((d, l)) if (1..=1000).contains(&d) && (1..=10_000).contains(&l) => {
                    (s.ls_dirs, s.ls_per_dir) = (d, l)
                }
                _ => {
                    return Err(format!("--ls {shape}: expected DIRS/LEAVES_PER_DIR, 1..=1000 dirs, 1..=10000 leaves"));
                }
            }
        }
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        s.split_cpus = match cli.cpus.as_slice() {
            [] if cpus >= 2 => Some((1, 0)),
            [] => None,
            &[d, c] if d != c && d < libc::CPU_SETSIZE as usize && c < libc::CPU_SETSIZE as usize => Some((d, c)),
            other => return Err(format!("--cpus {other:?}: expected two different CPUs, DAEMON,CLIENT")),
        };
        if !cli.bootstorm_ring.is_empty() {
            s.ring_boot = parse_cases(&cli.bootstorm_ring, 30_000).map_err(|()| {
                format!(
                    "--bootstorm-ring {:?}: expected DOMAINS/CLIENTS (1..=30000 domains, 1..=256 clients)",
                    cli.bootstorm_ring
                )
            })?;
        }
        Ok(s)
    }
}

/// Every workload, in the order they run.
const WORKLOADS: [&str; 10] = [
    "pairs",
    "bootstorm",
    "bootstorm-fresh",
    "read-heavy",
    "large-tree",
    "idle-conns",
    "watch-root",
    "ls-tree",
    "pairs-ring",
    "bootstorm-ring",
];

/// Parses `DOMAINS/CLIENTS` cases (1..=`max_domains`, 1..=256 clients).
fn parse_cases(cases: &[String], max_domains: u32) -> Result<Vec<(u32, usize)>, ()> {
    cases
        .iter()
        .map(|c| {
            let (d, n) = c.split_once('/').ok_or(())?;
            let (d, n) = (d.trim().parse::<u32>(), n.trim().parse::<usize>());
            match (d, n) {
                (Ok(d), Ok(n)) if (1..=max_domains).contains(&d) && (1..=256).contains(&n) => Ok((d, n)),
                _ => Err(()),
            }
        })
        .collect()
}

/// Starts daemons, remembers which ones are unavailable, records failures.
struct Runner {
    progs: Programs,
    sheet: Sheet,
    unavailable: BTreeMap<Kind, String>,
}

impl Runner {
    /// A fresh daemon for one case, or `None` (skipped or failed: noted).
    fn start(&mut self, kind: Kind, cpu: Option<usize>, case: &str) -> Option<DaemonProcess<Kind>> {
        self.started(kind, case, |progs| daemons::start(kind, progs, cpu))
    }

    /// `m` for every daemon of `kinds`: all up at once, `reps` runs of
    /// `run` taken in rounds (one run of each daemon per round: a slow
    /// phase of the machine then weighs on all of them, not on whichever
    /// ran during it, and the ratios hold better than the figures); the
    /// median is kept.
    fn medians_in_rounds(
        &mut self,
        kinds: &[Kind],
        cpu: Option<usize>,
        m: Metric,
        reps: usize,
        run: impl Fn(&std::path::Path) -> Res<f64>,
    ) {
        let mut entrants = Vec::new();
        for &kind in kinds {
            match self.start(kind, cpu, m.case) {
                Some(d) => entrants.push((kind, d, Vec::new(), None)),
                None => self.skip(&[m], kind),
            }
        }
        for _ in 0..reps {
            for (_, d, runs, failed) in &mut entrants {
                if failed.is_none() {
                    match run(d.socket()) {
                        Ok(v) => runs.push(v),
                        Err(e) => *failed = Some(e),
                    }
                }
            }
        }
        for (kind, d, mut runs, failed) in entrants {
            match failed {
                Some(e) => self.fail(&[m], kind, &e, &d),
                None => {
                    let median = median_of(m.case, kind, m.metric, &mut runs);
                    self.sheet.set(m, kind, Cell::Num(median));
                }
            }
            self.check_alive(&d, m.case);
        }
    }

    /// A fresh rxenstored serving simulated rings and their directory, or
    /// `None` (noted).
    fn start_rings(&mut self, case: &str) -> Option<(DaemonProcess<Kind>, PathBuf)> {
        self.started(Kind::Rxenstored, case, |progs| daemons::start_sim_rings(progs, None))
    }

    /// Runs `start` unless `kind` is known to be unavailable; notes why
    /// not, remembering an unavailable daemon for the rest of the run.
    fn started<T>(
        &mut self,
        kind: Kind,
        case: &str,
        start: impl FnOnce(&Programs) -> Result<T, StartError>,
    ) -> Option<T> {
        if self.unavailable.contains_key(&kind) {
            return None;
        }
        match start(&self.progs) {
            Ok(d) => Some(d),
            Err(StartError::Unavailable(m)) => {
                self.sheet.note(format!("{kind} skipped: {m}"));
                self.unavailable.insert(kind, m);
                None
            }
            Err(e) => {
                self.sheet.failures += 1;
                self.sheet.note(format!("{case}: {kind} failed to start: {e}"));
                None
            }
        }
    }

    /// Records a failed case: every metric of it gets `text`; a stall is
    /// noted, anything else is also a failure of the run.
    fn fail(&mut self, metrics: &[Metric<'_>], kind: Kind, e: &Fail, d: &DaemonProcess<Kind>) {
        let text = if e.is_stall() { "stalled" } else { "ERROR" };
        for m in metrics {
            self.sheet.set(*m, kind, Cell::Text(text.into()));
        }
        let case = metrics.first().map_or("", |m| m.case);
        if e.is_stall() {
            self.sheet.note(format!("{case}: {kind} {e}"));
        } else {
            self.sheet.failures += 1;
            self.sheet.note(format!("{case}: {kind} FAILED: {e} (daemon log: {})", d.log_tail()));
        }
    }

    /// A case's outcome: a failure is recorded (see [`fail`](Self::fail));
    /// a result is described on the progress line and returned.
    fn outcome<T>(
        &mut self,
        metrics: &[Metric<'_>],
        kind: Kind,
        d: &DaemonProcess<Kind>,
        outcome: Res<T>,
        describe: impl FnOnce(&T) -> String,
    ) -> Option<T> {
        match outcome {
            Ok(res) => {
                progress(metrics.first().map_or("", |m| m.case), kind, &describe(&res));
                Some(res)
            }
            Err(e) => {
                self.fail(metrics, kind, &e, d);
                None
            }
        }
    }

    /// Notes a daemon that died during a case (a failure).
    fn check_alive(&mut self, d: &DaemonProcess<Kind>, case: &str) {
        if !d.is_alive() {
            self.sheet.failures += 1;
            self.sheet.note(format!("{case}: {} died (log: {})", d.kind(), d.log_tail()));
        }
    }

    fn skip(&mut self, metrics: &[Metric<'_>], kind: Kind) {
        let text = if self.unavailable.contains_key(&kind) { "skipped" } else { "no start" };
        for m in metrics {
            self.sheet.set(*m, kind, Cell::Text(text.into()));
        }
    }
}

fn progress(case: &str, kind: Kind, what: &str) {
    eprintln!("xsload: {case}: {kind}: {what}");
}

fn run_pairs(r: &mut Runner, kinds: &[Kind], s: &Sizes, pin: Option<usize>) {
    let pinnings: Vec<Option<usize>> = match pin {
        Some(cpu) => vec![None, Some(cpu)],
        None => vec![None],
    };
    for cpu in pinnings {
        for &conns in &s.pairs_conns {
            let case = format!(
                "pairs {conns} conn{}{}",
                if conns == 1 { "" } else { "s" },
                cpu.map_or(String::new(), |c| format!(" pinned cpu{c}"))
            );
            let m = Metric { case: &case, metric: "req/s", unit: Unit::PerSec, better: Better::Higher };
            let p = pairs::Pairs {
                conns,
                pairs_per_conn: (s.pairs_requests / 2 / conns as u64).max(1),
                value_bytes: 16,
                keys: 16,
                pin: cpu,
                timeout: s.reply_timeout,
            };
            // Every daemon up at once, and the repetitions taken in
            // rounds (one run of each daemon per round): a slow phase of
            // the machine then weighs on all of them, not on whichever
            // ran during it, and the ratios hold better than the figures.
            r.medians_in_rounds(kinds, cpu, m, s.pairs_reps, |socket| pairs::run(socket, &p));
            r.sheet.floor_ratio(&case, "req/s");
        }
    }
}

fn run_bootstorm(r: &mut Runner, kinds: &[Kind], s: &Sizes, cases: &[(u32, usize)], fresh: bool) {
    for &(domains, clients) in cases {
        let case = format!("bootstorm{} {domains} dom/{clients} cl", if fresh { " fresh" } else { "" });
        let metric = |metric, unit, better| Metric { case: &case, metric, unit, better };
        let elapsed = metric("elapsed", Unit::Secs, Better::Lower);
        let reqs = metric("req/s", Unit::PerSec, Better::Higher);
        let doms = metric("domains/s", Unit::PerSec, Better::Higher);
        let retries = metric("EAGAIN retries", Unit::Count, Better::Lower);
        let watcher_names: Vec<String> = (1..=s.watchers).map(|w| format!("events, watcher {w}")).collect();
        let watchers: Vec<Metric<'_>> = watcher_names.iter().map(|n| metric(n, Unit::Count, Better::Neither)).collect();
        let hwm = metric("peak RSS (VmHWM)", Unit::Bytes, Better::Lower);
        let cpu_user = metric("daemon CPU, user", Unit::Secs, Better::Lower);
        let cpu_sys = metric("daemon CPU, system", Unit::Secs, Better::Lower);
        let mut all = vec![elapsed, reqs, doms, retries];
        all.extend(watchers.iter().copied());
        all.extend([hwm, cpu_user, cpu_sys]);
        for &kind in kinds.iter().filter(|k| **k != Kind::Floor) {
            let Some(d) = r.start(kind, None, &case) else {
                r.skip(&all, kind);
                continue;
            };
            let b = bootstorm::Boot {
                domains,
                clients,
                watchers: s.watchers,
                reply_timeout: s.reply_timeout,
                deadline: s.boot_deadline,
                grace: s.boot_grace,
                fresh,
            };
            let cpu_before = sys::cpu_times(d.pid());
            let outcome = bootstorm::run(d.socket(), &b);
            if let Some(res) = r.outcome(&all, kind, &d, outcome, |res| {
                format!(
                    "{} domains in {:.2} s, {} retries, {} stalled clients, watchers {:?}",
                    res.domains_done, res.elapsed, res.retries, res.stalled_clients, res.watchers
                )
            }) {
                if res.stalled_clients > 0 {
                    let t = format!("stalled ({}/{clients} cl)", res.stalled_clients);
                    for m in [elapsed, reqs, doms] {
                        r.sheet.set(m, kind, Cell::Text(t.clone()));
                    }
                    r.sheet.note(format!(
                        "{case}: {kind}: {} of {clients} creators stalled ({} of {domains} domains done): {}",
                        res.stalled_clients,
                        res.domains_done,
                        res.stall_note.as_deref().unwrap_or("")
                    ));
                } else if res.timed_out {
                    let t = format!("(timeout {}/{domains})", res.domains_done);
                    r.sheet.set(elapsed, kind, Cell::Text(format!(">{:.0} s", res.elapsed)));
                    r.sheet.set(reqs, kind, Cell::NumNote(res.requests as f64 / res.elapsed, t.clone()));
                    r.sheet.set(doms, kind, Cell::NumNote(res.domains_done as f64 / res.elapsed, t));
                    r.sheet.note(format!(
                        "{case}: {kind}: deadline of {:?} reached after {} of {domains} domains; rates are over the domains done",
                        s.boot_deadline, res.domains_done
                    ));
                } else {
                    r.sheet.set(elapsed, kind, Cell::Num(res.elapsed));
                    r.sheet.set(reqs, kind, Cell::Num(res.requests as f64 / res.elapsed));
                    r.sheet.set(doms, kind, Cell::Num(f64::from(res.domains_done) / res.elapsed));
                }
                r.sheet.set(retries, kind, Cell::Num(res.retries as f64));
                for (m, w) in watchers.iter().zip(&res.watchers) {
                    let cell = if w.stalled {
                        Cell::NumNote(w.events as f64, "stalled".into())
                    } else {
                        Cell::Num(w.events as f64)
                    };
                    r.sheet.set(*m, kind, cell);
                }
                if res.watchers.iter().any(|w| w.stalled) {
                    r.sheet.note(format!(
                        "{case}: {kind}: a watcher did not get the final event within {:?} after the last domain",
                        s.boot_grace
                    ));
                }
                let expected = bootstorm::EVENTS_PER_DOMAIN * u64::from(res.domains_done);
                if let Some(w) = res.watchers.iter().find(|w| !w.stalled && w.events != expected) {
                    r.sheet.note(format!(
                        "{case}: {kind}: a watcher got {} events for {expected} backend keys written",
                        w.events
                    ));
                }
                match sys::proc_status_kb(d.pid(), "VmHWM") {
                    Ok(v) => r.sheet.set(hwm, kind, Cell::Num(v as f64)),
                    Err(e) => r.sheet.set(hwm, kind, Cell::Text(format!("? ({e})"))),
                }
                // Includes the watchers' last events and the clients'
                // disconnects; the clock ticks in 10 ms.
                let cpu = match (&cpu_before, sys::cpu_times(d.pid())) {
                    (Ok(before), Ok(after)) => Ok((*before, after)),
                    (Err(e), _) => Err(e.to_string()),
                    (_, Err(e)) => Err(e.to_string()),
                };
                match cpu {
                    Ok(((u0, s0), (u1, s1))) => {
                        r.sheet.set(cpu_user, kind, Cell::Num(u1 - u0));
                        r.sheet.set(cpu_sys, kind, Cell::Num(s1 - s0));
                    }
                    Err(e) => {
                        for m in [cpu_user, cpu_sys] {
                            r.sheet.set(m, kind, Cell::Text(format!("? ({e})")));
                        }
                    }
                }
            }
            r.check_alive(&d, &case);
        }
    }
}

fn run_read_heavy(r: &mut Runner, kinds: &[Kind], s: &Sizes, pin: Option<usize>) {
    let one_cpu = pin.unwrap_or(0);
    let cases =
        [(format!("read-heavy 1 core (cpu{one_cpu})"), Some(one_cpu)), ("read-heavy 2 cores".to_string(), None)];
    for (case, cpu) in &cases {
        let metric = |metric, unit, better| Metric { case, metric, unit, better };
        let reads = metric("reads/s", Unit::PerSec, Better::Higher);
        let p50 = metric("read p50", Unit::Micros, Better::Lower);
        let p99 = metric("read p99", Unit::Micros, Better::Lower);
        let commits = metric("tx commits/s", Unit::PerSec, Better::Higher);
        let all = [reads, p50, p99, commits];
        for &kind in kinds.iter().filter(|k| **k != Kind::Floor) {
            let Some(d) = r.start(kind, *cpu, case) else {
                r.skip(&all, kind);
                continue;
            };
            let rh = readheavy::ReadHeavy {
                nodes: s.rh_nodes,
                readers: s.rh_readers,
                duration: s.rh_duration,
                timeout: s.reply_timeout,
            };
            let outcome = readheavy::run(d.socket(), &rh);
            if let Some(res) = r.outcome(&all, kind, &d, outcome, |res| {
                format!(
                    "{:.0} reads/s, p99 {:.0} µs, {:.0} commits/s ({} EAGAIN); populated at {:.0} writes/s",
                    res.reads_per_s, res.p99_us, res.commits_per_s, res.retries, res.populate_per_s
                )
            }) {
                r.sheet.set(reads, kind, Cell::Num(res.reads_per_s));
                r.sheet.set(p50, kind, Cell::Num(res.p50_us));
                r.sheet.set(p99, kind, Cell::Num(res.p99_us));
                r.sheet.set(commits, kind, Cell::Num(res.commits_per_s));
            }
            r.check_alive(&d, case);
        }
    }
    let scaling =
        Metric { case: "read-heavy 2 cores ÷ 1 core", metric: "reads/s", unit: Unit::Ratio, better: Better::Higher };
    for &kind in kinds.iter().filter(|k| **k != Kind::Floor) {
        let one = r.sheet.get(&cases[0].0, "reads/s", kind);
        let two = r.sheet.get(&cases[1].0, "reads/s", kind);
        let cell = match (one, two) {
            (Some(a), Some(b)) if a > 0.0 => Cell::Num(b / a),
            _ => Cell::Text("–".into()),
        };
        r.sheet.set(scaling, kind, cell);
    }
}

fn run_large(r: &mut Runner, kinds: &[Kind], s: &Sizes) {
    let n = s.large_dirs * s.large_per_dir;
    let case = if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("large tree {}M nodes", n / 1_000_000)
    } else {
        format!("large tree {}k nodes", n / 1000)
    };
    let metric = |metric, unit, better| Metric { case: &case, metric, unit, better };
    let per_node = metric("RSS per node", Unit::SmallBytes, Better::Lower);
    let rss = metric("RSS after load", Unit::Bytes, Better::Lower);
    let load = metric("load writes/s (pipelined)", Unit::PerSec, Better::Higher);
    let all = [per_node, rss, load];
    for &kind in kinds.iter().filter(|k| **k != Kind::Floor) {
        let Some(d) = r.start(kind, None, &case) else {
            r.skip(&all, kind);
            continue;
        };
        let l = large::Large {
            dirs: s.large_dirs,
            per_dir: s.large_per_dir,
            timeout: s.reply_timeout * 3,
            budget: s.large_budget,
        };
        let outcome = large::run(d.socket(), d.pid(), &l);
        if let Some(res) = r.outcome(&all, kind, &d, outcome, |res| {
            format!(
                "{} nodes, RSS {} → {} bytes ({:.0} B/node), HWM {}, {:.0} writes/s",
                res.nodes,
                res.rss_before,
                res.rss_after,
                res.per_node(),
                res.hwm,
                res.load_per_s
            )
        }) {
            if res.partial {
                let t = format!("({}k loaded)", res.nodes / 1000);
                r.sheet.set(per_node, kind, Cell::NumNote(res.per_node(), t.clone()));
                r.sheet.set(rss, kind, Cell::NumNote(res.rss_after as f64, t));
                r.sheet.note(format!(
                    "{case}: {kind}: loading stopped at the {:?} budget after {} nodes ({:.0} writes/s); RSS per node is over those",
                    s.large_budget, res.nodes, res.load_per_s
                ));
            } else {
                r.sheet.set(per_node, kind, Cell::Num(res.per_node()));
                r.sheet.set(rss, kind, Cell::Num(res.rss_after as f64));
            }
            r.sheet.set(load, kind, Cell::Num(res.load_per_s));
        }
        r.check_alive(&d, &case);
    }
}

/// Adds a row "`metric` ÷ C" to `case`: each daemon's figure divided by
/// C xenstored's, from the same run.
fn ratio_to_c(r: &mut Runner, case: &str, metric: &str, kinds: &[Kind]) {
    let Some(c) = r.sheet.get(case, metric, Kind::Cxenstored).filter(|c| *c > 0.0) else { return };
    let name = format!("{metric} ÷ C");
    let m = Metric { case, metric: &name, unit: Unit::Ratio, better: Better::Neither };
    for &kind in kinds {
        let cell = match r.sheet.get(case, metric, kind) {
            Some(v) => Cell::Num(v / c),
            None => Cell::Text("–".into()),
        };
        r.sheet.set(m, kind, cell);
    }
}

/// The daemons of the cases users meet: not the floor, which is no store.
fn store_kinds(kinds: &[Kind]) -> Vec<Kind> {
    kinds.iter().copied().filter(|k| *k != Kind::Floor).collect()
}

fn run_idle(r: &mut Runner, kinds: &[Kind], s: &Sizes) {
    let kinds = store_kinds(kinds);
    let (daemon_cpu, client_cpu) = (s.split_cpus.map(|c| c.0), s.split_cpus.map(|c| c.1));
    for &n in &s.idle {
        let case = format!("idle conns {n}");
        let m = Metric { case: &case, metric: "req/s", unit: Unit::PerSec, better: Better::Higher };
        // Each measurement opens its own idle connections and closes them.
        let p = idle::Idle { idle: n, duration: s.idle_duration, client_cpu, timeout: s.reply_timeout };
        r.medians_in_rounds(&kinds, daemon_cpu, m, s.pairs_reps, |socket| idle::run(socket, &p));
        ratio_to_c(r, &case, "req/s", &kinds);
    }
    // How flat: each daemon's figure with the most idle connections ÷ with none.
    if let (Some(&first), Some(&last)) = (s.idle.first(), s.idle.last())
        && first != last
    {
        let name = format!("idle conns {last} ÷ {first}");
        let m = Metric { case: &name, metric: "req/s", unit: Unit::Ratio, better: Better::Higher };
        for &kind in &kinds {
            let a = r.sheet.get(&format!("idle conns {last}"), "req/s", kind);
            let b = r.sheet.get(&format!("idle conns {first}"), "req/s", kind);
            let cell = match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => Cell::Num(a / b),
                _ => Cell::Text("–".into()),
            };
            r.sheet.set(m, kind, cell);
        }
    }
}

/// The median of `runs` (not empty), after noting them all.
fn median_of(case: &str, kind: Kind, what: &str, runs: &mut [f64]) -> f64 {
    runs.sort_by(f64::total_cmp);
    let all: Vec<String> = runs.iter().map(|v| format!("{v:.0}")).collect();
    let median = runs[runs.len() / 2];
    progress(case, kind, &format!("{what} {median:.0} (runs: {})", all.join(", ")));
    median
}

fn run_watch_root(r: &mut Runner, kinds: &[Kind], s: &Sizes) {
    let kinds = store_kinds(kinds);
    let (daemon_cpu, client_cpu) = (s.split_cpus.map(|c| c.0), s.split_cpus.map(|c| c.1));
    let case = format!("watch / while {} domains written", s.watch_domains);
    let metric = |metric, unit, better| Metric { case: &case, metric, unit, better };
    let plain = metric("writes/s, no watcher", Unit::PerSec, Better::Higher);
    let watched = metric("writes/s, watcher on /", Unit::PerSec, Better::Higher);
    let events = metric("events to the watcher", Unit::Count, Better::Neither);
    // Near zero when the watcher keeps up: no ratio.
    let lag = metric("watcher's lag after the last reply, max", Unit::Micros, Better::Neither);
    let all = [plain, watched, events, lag];
    // Every daemon up at once; in each round, each writes the domains
    // without and then with the watcher (and removes them after each).
    struct Entrant {
        kind: Kind,
        d: DaemonProcess<Kind>,
        plain: Vec<f64>,
        watched: Vec<f64>,
        events: u64,
        lag: f64,
        failed: Option<Fail>,
    }
    let mut entrants = Vec::new();
    for &kind in &kinds {
        match r.start(kind, daemon_cpu, &case) {
            Some(d) => entrants.push(Entrant {
                kind,
                d,
                plain: Vec::new(),
                watched: Vec::new(),
                events: 0,
                lag: 0.0,
                failed: None,
            }),
            None => r.skip(&all, kind),
        }
    }
    for _ in 0..s.pairs_reps {
        for e in &mut entrants {
            for watch in [false, true] {
                if e.failed.is_some() {
                    continue;
                }
                let p = watchroot::WatchRoot {
                    domains: s.watch_domains,
                    watch,
                    client_cpu,
                    timeout: s.reply_timeout,
                    grace: s.boot_grace,
                };
                match watchroot::run(e.d.socket(), &p) {
                    Err(f) => e.failed = Some(f),
                    Ok(res) => {
                        let rate = res.writes as f64 / res.elapsed;
                        if !watch {
                            e.plain.push(rate);
                            continue;
                        }
                        e.watched.push(rate);
                        e.lag = e.lag.max(res.lag);
                        e.events = res.events;
                        if res.events != res.writes {
                            r.sheet
                                .note(format!("{case}: {}: {} events for {} writes", e.kind, res.events, res.writes));
                        }
                    }
                }
            }
        }
    }
    for mut e in entrants {
        match e.failed {
            Some(f) => r.fail(&all, e.kind, &f, &e.d),
            None => {
                let v = median_of(&case, e.kind, "writes/s, no watcher:", &mut e.plain);
                r.sheet.set(plain, e.kind, Cell::Num(v));
                let v = median_of(&case, e.kind, "writes/s, watcher on /:", &mut e.watched);
                r.sheet.set(watched, e.kind, Cell::Num(v));
                r.sheet.set(events, e.kind, Cell::Num(e.events as f64));
                r.sheet.set(lag, e.kind, Cell::Num(e.lag * 1e6));
            }
        }
        r.check_alive(&e.d, &case);
    }
    for m in ["writes/s, no watcher", "writes/s, watcher on /"] {
        ratio_to_c(r, &case, m, &kinds);
    }
}

fn run_ls_tree(r: &mut Runner, kinds: &[Kind], s: &Sizes) {
    let kinds = store_kinds(kinds);
    let (daemon_cpu, client_cpu) = (s.split_cpus.map(|c| c.0), s.split_cpus.map(|c| c.1));
    let nodes = s.ls_dirs + s.ls_dirs * s.ls_per_dir;
    let case = if nodes >= 1000 { format!("ls {}k-node tree", nodes / 1000) } else { format!("ls {nodes}-node tree") };
    let metric = |metric, unit, better| Metric { case: &case, metric, unit, better };
    let walk = metric("walk (DIRECTORY+READ), nodes/s", Unit::PerSec, Better::Higher);
    let tool = metric("xenstore-ls, nodes/s", Unit::PerSec, Better::Higher);
    let tool_secs = metric("xenstore-ls, time", Unit::Secs, Better::Lower);
    // Debian's client tools are there once start-peer has unpacked them.
    let cache = std::env::var_os("XS_PEERS_CACHE").map_or_else(|| PathBuf::from("/tmp/xs-peers-cache"), PathBuf::from);
    let xen_tool =
        Some(r.progs.shared.join("peers/xen-tool")).filter(|p| p.is_file() && cache.join("root/.unpacked").exists());
    let all: &[Metric<'_>] = if xen_tool.is_some() { &[walk, tool, tool_secs] } else { &[walk] };
    if xen_tool.is_none() {
        r.sheet.note(format!("{case}: Debian's xenstore-ls is not unpacked here (peers/start-peer does it): not run"));
    }
    let l = lstree::LsTree {
        dirs: s.ls_dirs,
        per_dir: s.ls_per_dir,
        client_cpu,
        timeout: s.reply_timeout,
        xen_tool: xen_tool.clone(),
    };
    // Every daemon up and loaded at once; the listings in rounds.
    let mut entrants = Vec::new();
    for &kind in &kinds {
        let Some(d) = r.start(kind, daemon_cpu, &case) else {
            r.skip(all, kind);
            continue;
        };
        match lstree::load(d.socket(), &l) {
            Ok(rate) => {
                progress(&case, kind, &format!("{nodes} nodes loaded at {rate:.0} writes/s"));
                entrants.push((kind, d, Vec::new(), Vec::new(), None));
            }
            Err(e) => r.fail(all, kind, &e, &d),
        }
    }
    for _ in 0..s.pairs_reps {
        for (kind, d, walks, tools, failed) in &mut entrants {
            if failed.is_some() {
                continue;
            }
            match lstree::list(d.socket(), &l) {
                Err(e) => *failed = Some(e),
                Ok(listing) => {
                    walks.push(nodes as f64 / listing.walk_secs);
                    match listing.tool_secs {
                        Ok(t) => tools.push(t),
                        Err(_) if xen_tool.is_none() => {}
                        Err(e) => *failed = Some(Fail::Wrong(format!("xenstore-ls ({kind}): {e}"))),
                    }
                }
            }
        }
    }
    for (kind, d, mut walks, mut tools, failed) in entrants {
        match failed {
            Some(e) => r.fail(all, kind, &e, &d),
            None => {
                let v = median_of(&case, kind, "walk nodes/s:", &mut walks);
                r.sheet.set(walk, kind, Cell::Num(v));
                if !tools.is_empty() {
                    tools.sort_by(f64::total_cmp);
                    let t = tools[tools.len() / 2];
                    let all: Vec<String> = tools.iter().map(|v| format!("{v:.2}")).collect();
                    progress(&case, kind, &format!("xenstore-ls {t:.2} s (runs: {})", all.join(", ")));
                    r.sheet.set(tool, kind, Cell::Num(nodes as f64 / t));
                    r.sheet.set(tool_secs, kind, Cell::Num(t));
                }
            }
        }
        r.check_alive(&d, &case);
    }
    for m in ["walk (DIRECTORY+READ), nodes/s", "xenstore-ls, nodes/s"] {
        ratio_to_c(r, &case, m, &kinds);
    }
}

/// Notes a failed ring case (a stall, or a failure of the run) and
/// returns the text of its cells.
fn ring_fail(r: &mut Runner, case: &str, e: &Fail, d: &DaemonProcess<Kind>) -> String {
    let kind = Kind::Rxenstored;
    if e.is_stall() {
        r.sheet.note(format!("{case}: {kind} {e}"));
        "stalled".into()
    } else {
        r.sheet.failures += 1;
        r.sheet.note(format!("{case}: {kind} FAILED: {e} (daemon log: {})", d.log_tail()));
        "ERROR".into()
    }
}

/// Sets a "ring ÷ socket" row from two figures already in the sheet.
fn ring_ratio(r: &mut Runner, case: &str, metric: &str, ring: &str, socket: &str) {
    let kind = Kind::Rxenstored;
    let cell = match (r.sheet.get(case, ring, kind), r.sheet.get(case, socket, kind)) {
        (Some(a), Some(b)) if b > 0.0 => Cell::Num(a / b),
        _ => Cell::Text("–".into()),
    };
    let m = Metric { case, metric, unit: Unit::Ratio, better: Better::Higher };
    r.sheet.set(m, kind, cell);
}

fn run_pairs_ring(r: &mut Runner, s: &Sizes) {
    let kind = Kind::Rxenstored;
    for &guests in &s.pairs_conns {
        let case = format!("pairs-ring {guests} guest{}", if guests == 1 { "" } else { "s" });
        let per = (s.pairs_requests / 2 / guests as u64).max(1);
        let mut cells = Vec::new();
        for t in rings::Transport::BOTH {
            let Some((d, dir)) = r.start_rings(&case) else {
                cells.push(Cell::Text("no start".into()));
                continue;
            };
            let mut runs = Vec::new();
            let mut failed = None;
            for rep in 0..s.pairs_reps {
                let res = match t {
                    rings::Transport::Ring => {
                        let p = rings::PairsRing {
                            guests,
                            // Fresh domains for every run.
                            first: u16::try_from(1 + rep * guests).unwrap_or(u16::MAX),
                            pairs_per_guest: per,
                            value_bytes: 16,
                            keys: 16,
                            timeout: s.reply_timeout,
                        };
                        rings::pairs(d.socket(), &dir, &p)
                    }
                    rings::Transport::Socket => {
                        let p = pairs::Pairs {
                            conns: guests,
                            pairs_per_conn: per,
                            value_bytes: 16,
                            keys: 16,
                            pin: None,
                            timeout: s.reply_timeout,
                        };
                        pairs::run(d.socket(), &p)
                    }
                };
                match res {
                    Ok(v) => runs.push(v),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                Some(e) => cells.push(Cell::Text(ring_fail(r, &case, &e, &d))),
                None => {
                    runs.sort_by(f64::total_cmp);
                    let median = runs[runs.len() / 2];
                    progress(
                        &case,
                        kind,
                        &format!(
                            "over {}: {median:.0} req/s (runs: {})",
                            t.name(),
                            runs.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", ")
                        ),
                    );
                    cells.push(Cell::Num(median));
                }
            }
            r.check_alive(&d, &case);
        }
        let names = ["req/s over rings", "req/s over the socket"];
        for (name, cell) in names.iter().zip(cells) {
            let m = Metric { case: &case, metric: name, unit: Unit::PerSec, better: Better::Higher };
            r.sheet.set(m, kind, cell);
        }
        ring_ratio(r, &case, "req/s ring ÷ socket", names[0], names[1]);
    }
}

fn run_bootstorm_ring(r: &mut Runner, s: &Sizes) {
    let kind = Kind::Rxenstored;
    for &(domains, clients) in &s.ring_boot {
        let case = format!("bootstorm-ring {domains} dom/{clients} cl");
        // Per transport: the result and peak RSS, or the text of the cells.
        let mut outcomes: Vec<Result<(rings::BootRingResult, Cell), String>> = Vec::new();
        for t in rings::Transport::BOTH {
            let Some((d, dir)) = r.start_rings(&case) else {
                outcomes.push(Err("no start".into()));
                continue;
            };
            let b = rings::BootRing {
                domains,
                clients,
                guest_threads: s.ring_guest_threads,
                transport: t,
                rings: dir,
                reply_timeout: s.reply_timeout,
                deadline: s.boot_deadline,
                grace: s.boot_grace,
            };
            match rings::bootstorm(d.socket(), &b) {
                Err(e) => outcomes.push(Err(ring_fail(r, &case, &e, &d))),
                Ok(res) => {
                    progress(
                        &case,
                        kind,
                        &format!(
                            "guests over {}: {} domains in {:.2} s, {} requests, {} retries, {} events ({} frontend state)",
                            t.name(),
                            res.domains_done,
                            res.elapsed,
                            res.requests,
                            res.retries,
                            res.events,
                            res.state_events
                        ),
                    );
                    let over = |what: String| format!("{case}: guests over {}: {what}", t.name());
                    if res.timed_out {
                        r.sheet.note(over(format!(
                            "deadline of {:?} reached after {} of {domains} domains; rates are over the domains done",
                            s.boot_deadline, res.domains_done
                        )));
                    }
                    if res.watcher_stalled {
                        r.sheet
                            .note(over(format!("the watcher did not get the final event within {:?}", s.boot_grace)));
                    }
                    let hwm = match sys::proc_status_kb(d.pid(), "VmHWM") {
                        Ok(v) => Cell::Num(v as f64),
                        Err(e) => Cell::Text(format!("? ({e})")),
                    };
                    outcomes.push(Ok((res, hwm)));
                }
            }
            r.check_alive(&d, &case);
        }
        type Figure = fn(&rings::BootRingResult) -> Cell;
        let rate = |v: f64, res: &rings::BootRingResult| {
            if res.timed_out { Cell::NumNote(v, "(timeout)".into()) } else { Cell::Num(v) }
        };
        let rows: [(&str, Unit, Better, Option<Figure>); 7] = [
            ("elapsed", Unit::Secs, Better::Lower, Some(|res| Cell::Num(res.elapsed))),
            ("domains/s", Unit::PerSec, Better::Higher, None),
            ("req/s", Unit::PerSec, Better::Higher, None),
            ("EAGAIN retries", Unit::Count, Better::Lower, Some(|res| Cell::Num(res.retries as f64))),
            (
                "events, watcher",
                Unit::Count,
                Better::Neither,
                Some(|res| {
                    if res.watcher_stalled {
                        Cell::NumNote(res.events as f64, "stalled".into())
                    } else {
                        Cell::Num(res.events as f64)
                    }
                }),
            ),
            ("of which guests' state", Unit::Count, Better::Neither, Some(|res| Cell::Num(res.state_events as f64))),
            ("peak RSS (VmHWM)", Unit::Bytes, Better::Lower, None),
        ];
        for (name, unit, better, figure) in rows {
            let mut names = Vec::new();
            for (t, outcome) in rings::Transport::BOTH.into_iter().zip(&outcomes) {
                let metric = format!("{name} ({})", t.name());
                let cell = match outcome {
                    Err(text) => Cell::Text(text.clone()),
                    Ok((res, hwm)) => match (name, figure) {
                        (_, Some(f)) => f(res),
                        ("domains/s", _) => rate(f64::from(res.domains_done) / res.elapsed, res),
                        ("req/s", _) => rate(res.requests as f64 / res.elapsed, res),
                        _ => hwm.clone(),
                    },
                };
                let m = Metric { case: &case, metric: &metric, unit, better };
                r.sheet.set(m, kind, cell);
                names.push(metric);
            }
            if matches!(name, "domains/s" | "req/s") && names.len() == 2 {
                ring_ratio(r, &case, &format!("{name} ring ÷ socket"), &names[0], &names[1]);
            }
        }
    }
}

fn default_rxenstored(this_exe: &std::path::Path) -> PathBuf {
    if let Some(p) = std::env::var_os("RXENSTORED_BIN") {
        return PathBuf::from(p);
    }
    let dir = this_exe.parent().unwrap_or(std::path::Path::new("."));
    let sibling = dir.join("rxenstored");
    if sibling.is_file() {
        return sibling;
    }
    let release = dir.join("../release/rxenstored");
    if release.is_file() {
        return release;
    }
    sibling
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Sub::FloorServer { socket }) = &cli.cmd {
        return match floor::serve(socket) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xsload floor-server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = sys::install_signal_thread() {
        eprintln!("xsload: cannot install the signal thread: {e}");
        return ExitCode::FAILURE;
    }
    let sizes = match Sizes::new(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("xsload: {e}");
            return ExitCode::from(2);
        }
    };
    let mut kinds = Vec::new();
    for name in &cli.daemons {
        match Kind::from_name(name) {
            Some(k) if !kinds.contains(&k) => kinds.push(k),
            Some(_) => {}
            None => {
                eprintln!("xsload: unknown daemon {name:?} (rxenstored, cxenstored, oxenstored, floor)");
                return ExitCode::from(2);
            }
        }
    }
    for w in &cli.only {
        if !WORKLOADS.contains(&w.trim()) {
            eprintln!("xsload: unknown workload {w:?} ({})", WORKLOADS.join(", "));
            return ExitCode::from(2);
        }
    }
    let wants = |w: &str| cli.only.iter().any(|o| o.trim() == w);
    let this_exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("xsload: cannot find my own binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let progs = Programs {
        rxenstored: cli.rxenstored.clone().unwrap_or_else(|| default_rxenstored(&this_exe)),
        shared: cli.shared.clone().unwrap_or_else(|| match std::env::var_os("XS_SHARED_DIR") {
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")),
        }),
        this_exe,
    };
    let mut r = Runner { progs, sheet: Sheet::default(), unavailable: BTreeMap::new() };
    let started = std::time::Instant::now();
    if wants("pairs") {
        run_pairs(&mut r, &kinds, &sizes, cli.pin);
    }
    if wants("bootstorm") {
        run_bootstorm(&mut r, &kinds, &sizes, &sizes.boot, false);
    }
    if wants("bootstorm-fresh") {
        run_bootstorm(&mut r, &kinds, &sizes, &sizes.boot_fresh, true);
    }
    if wants("read-heavy") {
        run_read_heavy(&mut r, &kinds, &sizes, cli.pin);
    }
    if wants("large-tree") {
        run_large(&mut r, &kinds, &sizes);
    }
    if sizes.split_cpus.is_none() && (wants("idle-conns") || wants("watch-root") || wants("ls-tree")) {
        r.sheet.note("idle-conns, watch-root, ls-tree: one CPU only, so daemon and client are not pinned");
    }
    if wants("idle-conns") {
        run_idle(&mut r, &kinds, &sizes);
    }
    if wants("watch-root") {
        run_watch_root(&mut r, &kinds, &sizes);
    }
    if wants("ls-tree") {
        run_ls_tree(&mut r, &kinds, &sizes);
    }
    // The ring variants: rxenstored only (the reference daemons cannot
    // serve simulated rings).
    let ring_workloads = wants("pairs-ring") || wants("bootstorm-ring");
    if ring_workloads && !kinds.contains(&Kind::Rxenstored) {
        r.sheet.note("pairs-ring, bootstorm-ring skipped: rxenstored is not among --daemons");
    } else {
        if wants("pairs-ring") {
            run_pairs_ring(&mut r, &sizes);
        }
        if wants("bootstorm-ring") {
            run_bootstorm_ring(&mut r, &sizes);
        }
    }
    let took = started.elapsed().as_secs_f64();
    // Columns: the daemons asked for (the floor only if pairs ran).
    let columns: Vec<Kind> = kinds.iter().copied().filter(|k| *k != Kind::Floor || wants("pairs")).collect();
    if cli.json {
        let meta = json!({
            "command": std::env::args().collect::<Vec<_>>(),
            "quick": cli.quick,
            "pin": cli.pin,
            "daemons": columns.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "rxenstored": r.progs.rxenstored.display().to_string(),
            "unavailable": r.unavailable.iter().map(|(k, m)| (k.name().to_string(), json!(m))).collect::<serde_json::Map<_, _>>(),
            "sizes": format!("{sizes:?}"),
            "seconds": took,
            "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        });
        match serde_json::to_string_pretty(&r.sheet.json(meta)) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("xsload: JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", r.sheet.table(&columns));
        println!(
            "\n(↑ higher is better, ↓ lower; ratios are rxenstored ÷ the better of cxenstored/oxenstored, and ÷ the floor; ring rows: rxenstored only, ring ÷ socket; {took:.0} s)"
        );
    }
    if r.sheet.failures > 0 {
        eprintln!("xsload: {} failure(s)", r.sheet.failures);
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
