//! `ls-tree`: listing a whole tree of about 100,000 nodes, as
//! `xenstore-ls` does it: for each node, READ its value and DIRECTORY its
//! children, one request at a time, depth first. The tree
//! (`/ls/<d>/k<n>`, 8-byte values; `D` directories of `L` leaves, D ≤
//! 1000 so that `/ls`'s list fits in one reply) is loaded beforehand with
//! pipelined WRITEs, untimed, and may be listed several times. The daemon
//! and the client are pinned to CPUs of their own.
//!
//! Two listings: the walk above, done by this tool over its lean
//! connection (every reply checked), and Debian's own `xenstore-ls /ls`
//! through `peers/xen-tool` (its output lines counted), when the peers'
//! packages are unpacked here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wire::Op;

use crate::conn::{Conn, Fail, Res, error_name, show};
use crate::sys;

/// Parameters of one run.
#[derive(Debug, Clone)]
pub struct LsTree {
    /// Directories under `/ls` (at most 1000).
    pub dirs: u64,
    /// Leaves per directory.
    pub per_dir: u64,
    /// Pin the client (and `xenstore-ls`) to this CPU.
    pub client_cpu: Option<usize>,
    /// Longest wait for one reply.
    pub timeout: Duration,
    /// `peers/xen-tool`, to run Debian's `xenstore-ls` too.
    pub xen_tool: Option<PathBuf>,
}

/// One listing of the tree, both ways.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Seconds for the walk.
    pub walk_secs: f64,
    /// Seconds for Debian's `xenstore-ls`, or why it did not run.
    pub tool_secs: Result<f64, String>,
}

fn leaf_value(d: u64, n: u64) -> Vec<u8> {
    format!("{:08}", d * 10_000 + n).into_bytes()
}

impl LsTree {
    /// Nodes below `/ls`.
    pub fn nodes(&self) -> u64 {
        self.dirs + self.dirs * self.per_dir
    }
}

/// Loads the tree (pipelined WRITEs); WRITEs per second.
pub fn load(socket: &Path, l: &LsTree) -> Res<f64> {
    let mut conn = Conn::connect(socket, l.timeout)?;
    let t = Instant::now();
    let (dirs, per_dir) = (l.dirs, l.per_dir);
    let writes = (0..dirs)
        .flat_map(move |d| (0..per_dir).map(move |n| (format!("/ls/{d}/k{n}").into_bytes(), leaf_value(d, n))));
    let sent = conn.pipelined_writes(writes, 256, None)?;
    Ok(sent as f64 / t.elapsed().as_secs_f64())
}

/// Lists the loaded tree both ways.
pub fn list(socket: &Path, l: &LsTree) -> Res<Listing> {
    let nodes = l.nodes();
    let (socket2, l2) = (socket.to_path_buf(), l.clone());
    let (walk_secs, listed) = sys::on_cpu(l.client_cpu, "ls-walk", move || {
        let mut conn = Conn::connect(&socket2, l2.timeout)?;
        let t = Instant::now();
        let mut listed = 0;
        walk(&mut conn, "/ls", &mut listed)?;
        Ok((t.elapsed().as_secs_f64(), listed))
    })?;
    if listed != nodes {
        return Err(Fail::Wrong(format!("the walk listed {listed} nodes of {nodes}")));
    }
    let tool_secs = match &l.xen_tool {
        None => Err("no peers/xen-tool".to_string()),
        Some(tool) => xenstore_ls(tool, socket, l.client_cpu, nodes),
    };
    Ok(Listing { walk_secs, tool_secs })
}

/// The names in a DIRECTORY reply's payload.
fn names(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    payload.split(|&b| b == 0).filter(|n| !n.is_empty())
}

/// Lists everything below `dir` as xenstore-ls does (DIRECTORY, then for
/// each child its READ and, before the next child, its own listing); adds
/// the nodes listed to `listed`.
fn walk(conn: &mut Conn, dir: &str, listed: &mut u64) -> Res<()> {
    let m = conn.call(Op::Directory, 0, &[dir.as_bytes(), b"\0"])?;
    if let Some(e) = error_name(&m) {
        return Err(Fail::Wrong(format!("DIRECTORY {dir}: {}", show(e))));
    }
    for name in names(&m.payload) {
        let child = format!("{dir}/{}", String::from_utf8_lossy(name));
        let v = conn.call(Op::Read, 0, &[child.as_bytes(), b"\0"])?;
        if let Some(e) = error_name(&v) {
            return Err(Fail::Wrong(format!("READ {child}: {}", show(e))));
        }
        check_value(&child, &v.payload)?;
        *listed += 1;
        walk(conn, &child, listed)?;
    }
    Ok(())
}

/// A leaf `/ls/<d>/k<n>` holds its number; a directory nothing.
fn check_value(path: &str, value: &[u8]) -> Res<()> {
    let expected = match path.strip_prefix("/ls/").and_then(|r| r.split_once("/k")) {
        Some((d, n)) => match (d.parse::<u64>(), n.parse::<u64>()) {
            (Ok(d), Ok(n)) => leaf_value(d, n),
            _ => return Err(Fail::Wrong(format!("unexpected node {path}"))),
        },
        None => Vec::new(),
    };
    if value == expected {
        Ok(())
    } else {
        Err(Fail::Wrong(format!("READ {path}: {}, expected {}", show(value), show(&expected))))
    }
}

/// Runs `xenstore-ls /ls` against `socket`; its time, if it listed `nodes`
/// lines.
fn xenstore_ls(tool: &Path, socket: &Path, cpu: Option<usize>, nodes: u64) -> Result<f64, String> {
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(tool);
            c
        }
        None => Command::new(tool),
    };
    cmd.arg("xenstore-ls").arg("/ls").env("XENSTORED_PATH", socket).stdin(Stdio::null());
    let t = Instant::now();
    let out = cmd.output().map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("xenstore-ls: {}: {}", out.status, err.lines().last().unwrap_or("")));
    }
    let lines = out.stdout.iter().filter(|&&b| b == b'\n').count() as u64;
    if lines != nodes {
        return Err(format!("xenstore-ls printed {lines} lines for {nodes} nodes"));
    }
    Ok(secs)
}
