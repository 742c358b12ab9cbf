//! `idle-conns`: one connection's sequential WRITE+READ pairs (as in
//! `pairs`) while N other connections are open and idle, with the daemon
//! and the client each pinned to a CPU of its own. A host has many such
//! connections (qemu processes, agents, toolstack daemons); a daemon that
//! looks at every connection on every turn of its loop slows down with N,
//! one that waits only for the ready ones does not.
//!
//! The idle connections are opened before the timed phase, each answered
//! once (so the daemon has accepted and registered it), and closed after.
//! The timed phase runs for a fixed time after a short warm-up; every
//! READ is checked against the value just written.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use wire::Op;

use crate::conn::{Conn, Fail, Res, expect_ok, expect_value};
use crate::sys;

/// Parameters of one measurement.
#[derive(Debug, Clone)]
pub struct Idle {
    /// Idle connections open meanwhile.
    pub idle: usize,
    /// Timed phase.
    pub duration: Duration,
    /// Pin the client to this CPU.
    pub client_cpu: Option<usize>,
    /// Longest wait for one reply.
    pub timeout: Duration,
}

/// Connections opened at once before their requests are answered: the
/// daemon accepts them in its loop, and a connect blocks while its listen
/// backlog is full.
const OPEN_BATCH: usize = 100;

/// Opens `n` connections and has each answered once (GET_DOMAIN_PATH).
pub fn open_idle(socket: &Path, n: usize, timeout: Duration) -> Res<Vec<UnixStream>> {
    let mut open = Vec::with_capacity(n);
    while open.len() < n {
        let batch = OPEN_BATCH.min(n - open.len());
        let mut conns = Vec::with_capacity(batch);
        for _ in 0..batch {
            let mut c = Conn::connect(socket, timeout)
                .map_err(|e| e.context(format_args!("idle connection {}", open.len() + conns.len())))?;
            let id = c.queue(Op::GetDomainPath, 0, &[b"0\0"]);
            c.flush()?;
            conns.push((c, id));
        }
        for (mut c, id) in conns {
            let m = c
                .reply(Op::GetDomainPath, id)
                .map_err(|e| e.context(format_args!("idle connection {}", open.len())))?;
            if m.payload != b"/local/domain/0\0" {
                return Err(Fail::Wrong(format!("GET_DOMAIN_PATH 0: {}", crate::conn::show(&m.payload))));
            }
            open.push(c.into_stream());
        }
    }
    Ok(open)
}

/// One measurement: requests per second of the active connection.
pub fn run(socket: &Path, p: &Idle) -> Res<f64> {
    let idle = open_idle(socket, p.idle, p.timeout)?;
    let (socket, p) = (socket.to_path_buf(), p.clone());
    let r = sys::on_cpu(p.client_cpu, "idle-active", move || {
        let mut conn = Conn::connect(&socket, p.timeout)?;
        let warm = Duration::from_millis(200).min(p.duration);
        pairs_for(&mut conn, warm, 0)?;
        let t = Instant::now();
        let n = pairs_for(&mut conn, p.duration, 1_000_000)?;
        Ok(n as f64 / t.elapsed().as_secs_f64())
    });
    drop(idle);
    r
}

/// WRITE+READ pairs on 16 keys for `time`; the number of requests. `seed`
/// keeps the values of two calls apart.
fn pairs_for(conn: &mut Conn, time: Duration, seed: u64) -> Res<u64> {
    let keys: Vec<Vec<u8>> = (0..16).map(|k| format!("/idle/k{k}").into_bytes()).collect();
    let end = Instant::now() + time;
    let mut i = 0u64;
    while Instant::now() < end {
        let path = &keys[(i % 16) as usize];
        let value = format!("{:016}", seed + i).into_bytes();
        let id = conn.queue(Op::Write, 0, &[path, b"\0", &value]);
        conn.flush()?;
        let m = conn.reply(Op::Write, id)?;
        expect_ok(&m, Op::Write, &[path])?;
        let id = conn.queue(Op::Read, 0, &[path, b"\0"]);
        conn.flush()?;
        let m = conn.reply(Op::Read, id)?;
        expect_value(&m, path, &value)?;
        i += 1;
    }
    Ok(2 * i)
}
