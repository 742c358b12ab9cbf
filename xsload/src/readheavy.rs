//! `read-heavy`: R reader connections READ random existing nodes of a
//! populated tree (`/rh/g<i / 1000>/n<i>`, written beforehand with
//! pipelined WRITEs, untimed) for a fixed time, while one more connection
//! commits small transactions (READ one tree node, WRITE two nodes under
//! `/rh-tx`). Reads per second, read latency percentiles, commits per
//! second. Every READ is checked against the value written.

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use wire::Op;

use crate::conn::{Conn, Fail, Res, error_name, expect_ok, expect_value, join_all};

/// Parameters of one run.
#[derive(Debug, Clone)]
pub struct ReadHeavy {
    /// Nodes in the tree (leaves).
    pub nodes: u64,
    /// Reader connections.
    pub readers: usize,
    /// Timed phase.
    pub duration: Duration,
    /// Longest wait for one reply.
    pub timeout: Duration,
}

/// The outcome.
#[derive(Debug, Clone)]
pub struct RhResult {
    /// READs per second, all readers.
    pub reads_per_s: f64,
    /// Median READ latency (µs).
    pub p50_us: f64,
    /// 99th percentile READ latency (µs).
    pub p99_us: f64,
    /// Committed transactions per second (the writer).
    pub commits_per_s: f64,
    /// Writer transactions that got `EAGAIN`.
    pub retries: u64,
    /// Requests per second while populating (pipelined WRITEs).
    pub populate_per_s: f64,
}

fn path(i: u64) -> Vec<u8> {
    format!("/rh/g{}/n{i}", i / 1000).into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    format!("value-{i:08}").into_bytes()
}

/// A small fast generator (xorshift64*), seeded per thread.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// The next number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Populates, then runs the timed phase.
pub fn run(socket: &Path, r: &ReadHeavy) -> Res<RhResult> {
    let mut setup = Conn::connect(socket, r.timeout)?;
    let t = Instant::now();
    let n = setup.pipelined_writes((0..r.nodes).map(|i| (path(i), value(i))), 256, None)?;
    let populate_per_s = n as f64 / t.elapsed().as_secs_f64();
    drop(setup);

    let start = Arc::new(Barrier::new(r.readers + 2));
    let mut readers = Vec::new();
    for k in 0..r.readers {
        let (start, r, socket) = (start.clone(), r.clone(), socket.to_path_buf());
        let h = std::thread::Builder::new()
            .name(format!("reader-{k}"))
            .spawn(move || {
                let conn = Conn::connect(&socket, r.timeout);
                start.wait();
                reader(conn?, k as u64, &r)
            })
            .map_err(|e| Fail::Wrong(format!("spawn: {e}")))?;
        readers.push(h);
    }
    let writer = {
        let (start, r, socket) = (start.clone(), r.clone(), socket.to_path_buf());
        std::thread::Builder::new()
            .name("tx-writer".into())
            .spawn(move || {
                let conn = Conn::connect(&socket, r.timeout);
                start.wait();
                tx_writer(conn?, &r)
            })
            .map_err(|e| Fail::Wrong(format!("spawn: {e}")))?
    };
    start.wait();
    let t0 = Instant::now();
    let joined = join_all(readers, "reader");
    let secs = t0.elapsed().as_secs_f64();
    let w = writer.join().unwrap_or_else(|_| Err(Fail::Wrong("writer panicked".into())));
    let wsecs = t0.elapsed().as_secs_f64();
    let mut lat: Vec<u32> = joined?.into_iter().flatten().collect();
    let (commits, retries) = w?;
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        f64::from(lat[i]) / 1000.0
    };
    Ok(RhResult {
        reads_per_s: lat.len() as f64 / secs,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        commits_per_s: commits as f64 / wsecs,
        retries,
        populate_per_s,
    })
}

/// READs until the time is up; returns each READ's latency in ns.
fn reader(mut conn: Conn, k: u64, r: &ReadHeavy) -> Res<Vec<u32>> {
    let mut rng = Rng::new(0x1234_5678 + k);
    let end = Instant::now() + r.duration;
    let mut lat = Vec::with_capacity(1 << 16);
    loop {
        let t = Instant::now();
        if t >= end {
            return Ok(lat);
        }
        let i = rng.below(r.nodes);
        let (p, v) = (path(i), value(i));
        let id = conn.queue(Op::Read, 0, &[&p, b"\0"]);
        conn.flush()?;
        let m = conn.reply(Op::Read, id)?;
        let ns = t.elapsed().as_nanos();
        expect_value(&m, &p, &v)?;
        lat.push(u32::try_from(ns).unwrap_or(u32::MAX));
    }
}

/// Commits transactions until the time is up; returns (commits, EAGAINs).
fn tx_writer(mut conn: Conn, r: &ReadHeavy) -> Res<(u64, u64)> {
    let mut rng = Rng::new(0xfeed);
    let end = Instant::now() + r.duration;
    let (mut commits, mut retries) = (0u64, 0u64);
    while Instant::now() < end {
        let tx = conn.transaction_start()?;
        let i = rng.below(r.nodes);
        conn.read_expect(tx, &path(i), &value(i))?;
        let n = commits.to_string();
        conn.write(tx, format!("/rh-tx/k{}", commits % 64).as_bytes(), n.as_bytes())?;
        conn.write(tx, b"/rh-tx/last", n.as_bytes())?;
        let m = conn.call(Op::TransactionEnd, tx, &[b"T\0"])?;
        if error_name(&m) == Some(b"EAGAIN") {
            retries += 1;
            continue;
        }
        expect_ok(&m, Op::TransactionEnd, &[b"commit"])?;
        commits += 1;
    }
    Ok((commits, retries))
}
