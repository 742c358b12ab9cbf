//! oxenstored's live-update text dump (`/var/run/xenstored/db`, §2.3),
//! read into the same [`Stream`] model as the binary stream.
//!
//! Mapping: `dom` → ring connection (local port when given, else the
//! remote one), `socket` → socket connection, `watch` → watch, `store` →
//! committed node (`/@name` becomes `@name`), `global` + `evtchn-dev` →
//! [`GlobalData`]. Connection ids are assigned 1, 2, … in file order, as C
//! does. Values oxenstored has but the model lacks (mfn, remote port, VIRQ
//! port) are returned in [`OxExtras`].

use crate::model::*;
use crate::read::{Finding, Parsed, Problem};

/// First line of an oxenstored LU dump.
pub const HEADER: &str = "$xenstored-dump-format";

/// Fatal errors reading an oxenstored dump.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OxError {
    /// The first line is not [`HEADER`].
    #[error("offset 0x0: first line is not \"$xenstored-dump-format\"")]
    BadHeader,
}

/// Per-domain values oxenstored records that the binary model has no field for.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OxExtras {
    /// Local port bound to VIRQ_DOM_EXC (`evtchn-dev` third field).
    pub virq_port: Option<i64>,
    /// (domid, mfn, remote port, local port) of each `dom` line.
    pub domains: Vec<(u16, i64, u32, Option<u32>)>,
}

/// Reads a dump into a [`Parsed`] (records empty; findings at line offsets).
pub fn read_dump(data: &[u8]) -> Result<Parsed, OxError> {
    read_dump_full(data).map(|(p, _)| p)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

fn parse_perms(raw: &[u8]) -> Option<Vec<Perm>> {
    raw.split(|b| *b == 0)
        .map(|p| {
            let (&letter, digits) = p.split_first()?;
            let domid = std::str::from_utf8(digits).ok()?.parse::<u16>().ok()?;
            Some(Perm::new(letter, domid))
        })
        .collect()
}

/// Reads a dump, also returning the values the model has no room for.
pub fn read_dump_full(data: &[u8]) -> Result<(Parsed, OxExtras), OxError> {
    let mut snap = Stream { version: 1, ..Stream::default() };
    let mut extras = OxExtras::default();
    let mut findings = Vec::new();
    let mut offset = 0usize;
    let mut global = GlobalData { socket_fd: -1, evtchn_fd: -1 };
    let mut have_global = false;
    for (i, raw_line) in data.split(|b| *b == b'\n').enumerate() {
        let line_no = i + 1;
        let at = offset as u64;
        offset += raw_line.len() + 1;
        let mut bad = |message: String| {
            let problem = Problem::OxLine { line: line_no, message };
            findings.push(Finding { offset: at, severity: problem.severity(), problem });
        };
        let Ok(line) = std::str::from_utf8(raw_line) else {
            bad("not UTF-8".into());
            continue;
        };
        if i == 0 {
            if line != HEADER {
                return Err(OxError::BadHeader);
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let num = |j: usize| f.get(j).and_then(|s| s.parse::<i64>().ok());
        let next_id = snap.connections.len() as u32 + 1;
        match f.first().copied() {
            Some("global") => match num(1) {
                Some(fd) => {
                    global.socket_fd = fd as i32;
                    have_global = true;
                }
                None => bad("bad global line".into()),
            },
            Some("evtchn-dev") => match num(1) {
                Some(fd) => {
                    global.evtchn_fd = fd as i32;
                    extras.virq_port = num(2);
                    have_global = true;
                }
                None => bad("bad evtchn-dev line".into()),
            },
            Some("dom") => match (num(1).and_then(|d| u16::try_from(d).ok()), num(2), num(3)) {
                (Some(domid), Some(mfn), Some(remote)) => {
                    let local = num(4).and_then(|p| u32::try_from(p).ok());
                    let remote = u32::try_from(remote).unwrap_or(0);
                    extras.domains.push((domid, mfn, remote, local));
                    snap.connections.push(Connection {
                        conn_id: next_id,
                        kind: ConnectionKind::Ring { domid, target: DOMID_INVALID, evtchn: local.unwrap_or(remote) },
                        input: Vec::new(),
                        output: Vec::new(),
                        partial_response_len: 0,
                        unique_id: None,
                    });
                }
                _ => bad("bad dom line".into()),
            },
            Some("socket") => match num(1).and_then(|fd| i32::try_from(fd).ok()) {
                Some(fd) => snap.connections.push(Connection {
                    conn_id: next_id,
                    kind: ConnectionKind::Socket { fd },
                    input: Vec::new(),
                    output: Vec::new(),
                    partial_response_len: 0,
                    unique_id: None,
                }),
                None => bad("bad socket line".into()),
            },
            Some("watch") => {
                let (Some(id), Some(path), Some(token)) =
                    (num(1), f.get(2).and_then(|s| unhex(s)), f.get(3).and_then(|s| unhex(s)))
                else {
                    bad("bad watch line".into());
                    continue;
                };
                let owner = snap.connections.iter().find(|c| match c.kind {
                    ConnectionKind::Ring { domid, .. } => id >= 0 && i64::from(domid) == id,
                    ConnectionKind::Socket { fd } => id < 0 && i64::from(fd) == -id,
                });
                match owner {
                    Some(c) => snap.watches.push(Watch { conn_id: c.conn_id, path, token, depth: None }),
                    None => bad(format!("watch for unknown connection {id}")),
                }
            }
            Some("store") => {
                let (Some(path), Some(perms), Some(value)) =
                    (f.get(1).and_then(|s| unhex(s)), f.get(2).and_then(|s| unhex(s)), f.get(3).and_then(|s| unhex(s)))
                else {
                    bad("bad store line".into());
                    continue;
                };
                let Some(perms) = parse_perms(&perms) else {
                    bad("bad permissions".into());
                    continue;
                };
                let path = match path.strip_prefix(b"/@") {
                    Some(rest) => [b"@".as_slice(), rest].concat(),
                    None => path,
                };
                snap.nodes.push(Node::committed(path, value, perms));
            }
            Some(other) => bad(format!("unknown line kind {other:?} (skipped, as oxenstored does)")),
            None => {}
        }
    }
    if have_global {
        snap.global = Some(global);
    }
    let parsed = Parsed { file_len: data.len(), flags: 0, snapshot: snap, records: Vec::new(), findings };
    Ok((parsed, extras))
}

/// Writes a snapshot as an oxenstored dump (inverse of [`read_dump_full`],
/// given the same extras; pending data, targets and quotas are dropped).
pub fn write_dump(snap: &Stream, extras: &OxExtras) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut o = format!("{HEADER}\n");
    if let Some(g) = snap.global {
        o += &format!("global,{}\n", g.socket_fd);
        match extras.virq_port {
            Some(v) => o += &format!("evtchn-dev,{},{v}\n", g.evtchn_fd),
            None => o += &format!("evtchn-dev,{}\n", g.evtchn_fd),
        }
    }
    for c in &snap.connections {
        let id = match c.kind {
            ConnectionKind::Ring { domid, evtchn, .. } => {
                let (mfn, remote, local) = extras
                    .domains
                    .iter()
                    .find(|d| d.0 == domid)
                    .map(|d| (d.1, d.2, d.3))
                    .unwrap_or((0, evtchn, Some(evtchn)));
                match local {
                    Some(l) => o += &format!("dom,{domid},{mfn},{remote},{l}\n"),
                    None => o += &format!("dom,{domid},{mfn},{remote}\n"),
                }
                i64::from(domid)
            }
            ConnectionKind::Socket { fd } => {
                o += &format!("socket,{fd}\n");
                -i64::from(fd)
            }
        };
        for w in snap.watches.iter().filter(|w| w.conn_id == c.conn_id) {
            o += &format!("watch,{id},{},{}\n", hex(&w.path), hex(&w.token));
        }
    }
    for n in &snap.nodes {
        let path = if n.is_special() { [b"/".as_slice(), &n.path].concat() } else { n.path.clone() };
        let perms: Vec<String> = n.perms.iter().map(|p| format!("{}{}", p.letter as char, p.domid)).collect();
        o += &format!("store,{},{},{}\n", hex(&path), hex(perms.join("\0").as_bytes()), hex(&n.value));
    }
    o
}
