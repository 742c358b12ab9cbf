//! `large-tree`: loads `dirs × per_dir` leaves (`/big/d<d>/n<n>`, 8-byte
//! values) with pipelined WRITEs into a fresh daemon and reports the growth
//! of its resident memory per node created (leaves, the directories and
//! `/big`), measured from `/proc/<pid>/status` before and after.

use std::path::Path;
use std::time::{Duration, Instant};

use wire::Op;

use crate::conn::{Conn, Fail, Res};
use crate::sys;

/// Parameters of one run.
#[derive(Debug, Clone)]
pub struct Large {
    /// Directories under `/big`.
    pub dirs: u64,
    /// Leaves per directory.
    pub per_dir: u64,
    /// Longest wait for one reply.
    pub timeout: Duration,
    /// Loading stops (between batches) after this long; the figures are
    /// then over the nodes loaded.
    pub budget: Duration,
}

/// The outcome.
#[derive(Debug, Clone)]
pub struct LargeResult {
    /// Nodes created.
    pub nodes: u64,
    /// Whether the budget stopped the load before the whole tree.
    pub partial: bool,
    /// VmRSS before loading (bytes).
    pub rss_before: u64,
    /// VmRSS after loading (bytes).
    pub rss_after: u64,
    /// VmHWM after loading (bytes).
    pub hwm: u64,
    /// WRITEs per second while loading.
    pub load_per_s: f64,
}

impl LargeResult {
    /// Resident bytes per node.
    pub fn per_node(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.nodes.max(1) as f64
    }
}

fn leaf(d: u64, n: u64) -> (Vec<u8>, Vec<u8>) {
    (format!("/big/d{d}/n{n}").into_bytes(), format!("{:08}", d * 1_000_000 + n).into_bytes())
}

/// Loads the tree into the daemon serving `socket`, whose pid is `pid`.
pub fn run(socket: &Path, pid: i32, l: &Large) -> Res<LargeResult> {
    let mut conn = Conn::connect(socket, l.timeout)?;
    // One round trip so that the connection exists before the baseline.
    conn.call(Op::GetDomainPath, 0, &[b"0\0"])?;
    let mem = |f: &str| sys::proc_status_kb(pid, f).map_err(|e| Fail::Wrong(format!("{f} of pid {pid}: {e}")));
    let rss_before = mem("VmRSS")?;
    let t = Instant::now();
    let (dirs, per_dir) = (l.dirs, l.per_dir);
    let writes = (0..dirs).flat_map(move |d| (0..per_dir).map(move |n| leaf(d, n)));
    let sent = conn.pipelined_writes(writes, 256, Some(t + l.budget))?;
    let load_per_s = sent as f64 / t.elapsed().as_secs_f64();
    // Spot checks: the first, a middle and the last leaf written read back.
    let dirs_used = sent.div_ceil(per_dir.max(1));
    if sent > 0 {
        for i in [0, sent / 2, sent - 1] {
            let (p, v) = leaf(i / per_dir, i % per_dir);
            conn.read_expect(0, &p, &v)?;
        }
    }
    Ok(LargeResult {
        nodes: sent + dirs_used + 1,
        partial: sent < dirs * per_dir,
        rss_before,
        rss_after: mem("VmRSS")?,
        hwm: mem("VmHWM")?,
        load_per_s,
    })
}
