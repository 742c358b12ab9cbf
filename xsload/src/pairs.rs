//! `pairs`: xsbench's workload. Each of N connections (one thread each)
//! sends sequential WRITE then READ pairs on its own keys
//! (`/bench/c<conn>/k<i % keys>`), waiting for every reply, and checks that
//! each READ returns the value just written. Requests per second over all
//! connections, from the moment every connection is open to the last reply.

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use wire::Op;

use crate::conn::{Conn, Fail, Res, expect_ok, expect_value, join_all};
use crate::sys;

/// Parameters of one run.
#[derive(Debug, Clone)]
pub struct Pairs {
    /// Connections (threads).
    pub conns: usize,
    /// WRITE+READ pairs per connection.
    pub pairs_per_conn: u64,
    /// Value length in bytes.
    pub value_bytes: usize,
    /// Distinct keys per connection.
    pub keys: u64,
    /// Pin every client thread to this CPU.
    pub pin: Option<usize>,
    /// Longest wait for one reply.
    pub timeout: Duration,
}

/// Runs once; returns requests per second.
pub fn run(socket: &Path, p: &Pairs) -> Res<f64> {
    let start = Arc::new(Barrier::new(p.conns + 1));
    let mut handles = Vec::with_capacity(p.conns);
    for c in 0..p.conns {
        let (start, p, socket) = (start.clone(), p.clone(), socket.to_path_buf());
        let h = std::thread::Builder::new()
            .name(format!("pairs-{c}"))
            .spawn(move || {
                // Every thread reaches the barrier, even after a failure.
                let ready = prepare(&socket, &p);
                start.wait();
                worker(ready?, c, &p)
            })
            .map_err(|e| Fail::Wrong(format!("spawn: {e}")))?;
        handles.push(h);
    }
    start.wait();
    let t0 = Instant::now();
    let joined = join_all(handles, "client thread");
    let secs = t0.elapsed().as_secs_f64();
    joined?;
    Ok((2 * p.pairs_per_conn * p.conns as u64) as f64 / secs)
}

fn prepare(socket: &Path, p: &Pairs) -> Res<Conn> {
    if let Some(cpu) = p.pin {
        sys::pin_current_thread(cpu).map_err(|e| Fail::Wrong(format!("pin to CPU {cpu}: {e}")))?;
    }
    Conn::connect(socket, p.timeout)
}

/// The value of pair `i`, distinct from its neighbours': the pair number,
/// padded with a letter.
pub fn pair_value(i: u64, value: &mut [u8]) {
    value.fill(b'a' + (i % 26) as u8);
    let num = i.to_string();
    let n = num.len().min(value.len());
    value[..n].copy_from_slice(&num.as_bytes()[..n]);
}

fn worker(mut conn: Conn, c: usize, p: &Pairs) -> Res<()> {
    let keys: Vec<Vec<u8>> = (0..p.keys).map(|k| format!("/bench/c{c}/k{k}").into_bytes()).collect();
    let mut value = vec![b'a'; p.value_bytes];
    for i in 0..p.pairs_per_conn {
        let path = &keys[(i % p.keys) as usize];
        pair_value(i, &mut value);
        let id = conn.queue(Op::Write, 0, &[path, b"\0", &value]);
        conn.flush()?;
        let m = conn.reply(Op::Write, id)?;
        expect_ok(&m, Op::Write, &[path]).map_err(|e| e.context(format_args!("conn {c}")))?;

        let id = conn.queue(Op::Read, 0, &[path, b"\0"]);
        conn.flush()?;
        let m = conn.reply(Op::Read, id)?;
        expect_value(&m, path, &value).map_err(|e| e.context(format_args!("conn {c}")))?;
    }
    Ok(())
}
