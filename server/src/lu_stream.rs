//! Live update, the state file (`std`): the core as a Xen migration stream
//! (MIGRATION-STREAM.md §1, written as C writes it: version 2 as HEAD,
//! version 1 as 4.17) and back, through `snapshot-tools`.
//!
//! What a stream carries and how it maps onto the core:
//!
//! | stream | core |
//! | --- | --- |
//! | GLOBAL_DATA | the listening socket's fd (adopted); the event-channel fd (Xen: adopted with the guests' ports bound on it, VIRQ_DOM_EXC bound again; otherwise closed) |
//! | GLOBAL_QUOTA_DATA (v2) | `Config::quotas` |
//! | CONNECTION socket | a socket connection over the inherited fd |
//! | CONNECTION ring | the domain introduced again, its ring taken over by [`Platform::reattach`] (no reset) |
//! | pending input | held-back requests (run after the restore), then the partial request (decoder, or the ring's partial message) |
//! | pending output | the output queue, the partly sent message first |
//! | WATCH_DATA(_EXTENDED) | watches, not fired |
//! | NODE_DATA | the store (`engine_conv`) |
//! | DOMAIN_DATA (v2) | features and quotas of domain records |
//!
//! Nothing here trusts the file: lengths, fds and paths are checked, and a
//! stream with any error-level finding is refused as a whole.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use engine::{DomId, Store};
use snapshot_tools::model::{self, DOMID_INVALID, WATCH_DEPTH_UNLIMITED};
use snapshot_tools::{WriteFormat, engine_conv, read_stream, write_stream};
use wire::{HEADER_LEN, Header, Message, Op, PAYLOAD_MAX};

use crate::conn::{ConnId, ConnKind};
use crate::domain::{Domain, Platform};
use crate::live_update::LuRequest;
use crate::protocol::{Config, Core};
use crate::quota::{QuotaName, QuotaTable};

/// `$XENSTORED_RUNDIR/state_dump` (default rundir `/var/run/xenstored`),
/// where C writes and reads it.
pub fn state_file() -> PathBuf {
    let rundir =
        std::env::var_os("XENSTORED_RUNDIR").map_or_else(|| PathBuf::from("/var/run/xenstored"), PathBuf::from);
    rundir.join("state_dump")
}

/// The descriptors the new process inherits.
#[derive(Debug, Default, Clone)]
pub struct Fds {
    /// The listening socket.
    pub listener: RawFd,
    /// Written as GLOBAL_DATA's event-channel fd (-1: none).
    pub evtchn: RawFd,
    /// Each socket connection's fd.
    pub sockets: BTreeMap<ConnId, RawFd>,
}

fn quotas_of(table: &QuotaTable) -> Vec<model::Quota> {
    table.values().map(|(name, value)| model::Quota::new(&name.to_string(), value)).collect()
}

fn apply_quotas(table: &mut QuotaTable, quotas: &[model::Quota], warnings: &mut Vec<String>) {
    for q in quotas {
        match QuotaName::from_name(&q.name) {
            Some(name) => table.set(name, q.value),
            None => warnings.push(format!("ignoring unknown quota {:?}", String::from_utf8_lossy(&q.name))),
        }
    }
}

/// The core's state as a stream model, the requester's `OK` reply last in
/// its output (the new process sends it).
pub fn export<P: Platform>(core: &mut Core<P>, req: &LuRequest, fds: &Fds) -> Result<model::Stream, String> {
    let v2 = req.version >= 2;
    let mut snap = model::Stream {
        version: req.version,
        global: Some(model::GlobalData { socket_fd: fds.listener, evtchn_fd: fds.evtchn }),
        ..model::Stream::default()
    };
    if v2 {
        snap.global_quota =
            Some(model::GlobalQuota { per_domain: quotas_of(&core.config.quotas), global_only: Vec::new() });
    }
    let ids: Vec<ConnId> = core.conns.keys().copied().collect();
    let mut next_id = 0u32;
    for id in ids {
        let Some(conn) = core.conns.get(&id) else { continue };
        let kind = match conn.kind {
            ConnKind::Socket => match fds.sockets.get(&id) {
                Some(&fd) => model::ConnectionKind::Socket { fd },
                None => continue,
            },
            ConnKind::Domain => {
                let domid = conn.caller.domid;
                // Where the platform binds ports itself (Xen), the local
                // one, as C records it; otherwise the port INTRODUCE named.
                let introduced = core.domains.get(&domid).filter(|d| d.conn == Some(id)).map_or(0, |d| d.port);
                let port = core.platform.local_port(id).unwrap_or(introduced);
                model::ConnectionKind::Ring {
                    domid: domid.0,
                    target: conn.caller.target.map_or(DOMID_INVALID, |t| t.0),
                    evtchn: port,
                }
            }
        };
        let mut input = Vec::new();
        for m in core.live_update_delayed(id) {
            wire::encode(m.header.msg_type, m.header.req_id, m.header.tx_id, &m.payload, &mut input);
        }
        let partial = match conn.kind {
            ConnKind::Socket => conn.partial_input(),
            ConnKind::Domain => match core.platform.ring(id) {
                Some(ring) => {
                    // The stream carries what was read and not answered
                    // (its replies, the partial message): the next process
                    // must not read it from the ring again.
                    ring.release_taken();
                    ring.partial().to_vec()
                }
                None => Vec::new(),
            },
        };
        input.extend_from_slice(&partial);
        let Some(conn) = core.conns.get(&id) else { continue };
        let (mut output, partial_out) = conn.out.unsent();
        if id == req.conn {
            wire::encode(Op::Control, req.req_id, req.tx_id, b"OK\0", &mut output);
        }
        next_id += 1;
        let partial_response_len =
            u16::try_from(partial_out).map_err(|_| format!("connection {}: partly sent message too long", id.0))?;
        snap.connections.push(model::Connection {
            conn_id: next_id,
            kind,
            input,
            output,
            partial_response_len,
            unique_id: None,
        });
        for w in core.watches.of_conn(id) {
            let depth = match (w.depth, v2) {
                (Some(d), true) => {
                    Some(u16::try_from(d).unwrap_or(WATCH_DEPTH_UNLIMITED - 1).min(WATCH_DEPTH_UNLIMITED - 1))
                }
                (Some(_), false) => {
                    core.logs.push(format!(
                        "live-update: stream version 1 cannot keep the depth of watch {:?}",
                        String::from_utf8_lossy(&w.given)
                    ));
                    None
                }
                (None, _) => None,
            };
            snap.watches.push(model::Watch { conn_id: next_id, path: w.given.clone(), token: w.token.clone(), depth });
        }
    }
    // C 4.17 builds its database when it restores the control domain's
    // ring connection (§6.2): a version-1 stream always has one.
    let priv_domid = core.config.priv_domid;
    let has_priv_ring = snap
        .connections
        .iter()
        .any(|c| matches!(c.kind, model::ConnectionKind::Ring { domid, .. } if domid == priv_domid.0));
    if !v2 && !has_priv_ring {
        next_id += 1;
        let kind = model::ConnectionKind::Ring { domid: priv_domid.0, target: DOMID_INVALID, evtchn: 0 };
        let conn = model::Connection {
            conn_id: next_id,
            kind,
            input: Vec::new(),
            output: Vec::new(),
            partial_response_len: 0,
            unique_id: None,
        };
        snap.connections.insert(0, conn);
    }
    snap.nodes = engine_conv::from_engine(&core.store.snapshot());
    if v2 {
        for d in core.domains.values() {
            snap.domains.push(model::DomainData {
                domid: d.domid.0,
                features: d.features,
                quotas: quotas_of(&d.quotas),
            });
        }
    }
    Ok(snap)
}

/// The stream bytes for `req.version`: version 1 exactly as 4.17 writes
/// it (so that C 4.17 restores it), version 2 as HEAD.
pub fn encode<P: Platform>(core: &mut Core<P>, req: &LuRequest, fds: &Fds) -> Result<Vec<u8>, String> {
    let snap = export(core, req, fds)?;
    write_stream(&snap, WriteFormat::for_version(req.version)).map_err(|e| format!("Dump write error: {e}"))
}

/// Reads and checks a state file: any error-level finding refuses it.
pub fn load(bytes: &[u8]) -> Result<model::Stream, String> {
    let parsed = read_stream(bytes).map_err(|e| e.to_string())?;
    if let Some(f) = parsed.first_error() {
        return Err(format!("{f}"));
    }
    if !(1..=2).contains(&parsed.snapshot.version) {
        return Err(format!("unsupported stream version {}", parsed.snapshot.version));
    }
    Ok(parsed.snapshot)
}

/// A core rebuilt from a stream, with the descriptors it names.
#[derive(Debug)]
pub struct Restored<P: Platform> {
    pub core: Core<P>,
    /// The listening socket (GLOBAL_DATA), if it was a socket.
    pub listener: Option<OwnedFd>,
    /// Socket connections and their inherited descriptors.
    pub sockets: Vec<(ConnId, OwnedFd)>,
    pub warnings: Vec<String>,
}

/// Whether `fd` is an open socket of this process.
fn is_socket(fd: RawFd) -> bool {
    if fd < 3 {
        return false;
    }
    // SAFETY: `stat` is plain data, for which all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into a stat we own; any fd number is acceptable
    // to the call.
    (unsafe { libc::fstat(fd, &mut st) } == 0) && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
}

/// Takes ownership of an inherited descriptor, once, if it is a socket.
fn adopt(fd: RawFd, taken: &mut BTreeSet<RawFd>) -> Option<OwnedFd> {
    if !is_socket(fd) || !taken.insert(fd) {
        return None;
    }
    // SAFETY: the previous process left this descriptor open for us (the
    // stream names it), it is a socket, and nothing else here owns it
    // (each number is adopted at most once).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: setting a flag on a descriptor we own.
    unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::F_SETFD, libc::FD_CLOEXEC) };
    Some(fd)
}

/// Splits pending input into whole messages and a trailing partial one.
fn split_input(bytes: &[u8]) -> Result<(Vec<Message>, &[u8]), String> {
    let mut msgs = Vec::new();
    let mut rest = bytes;
    while rest.len() >= HEADER_LEN {
        let Ok(hdr) = <&[u8; HEADER_LEN]>::try_from(&rest[..HEADER_LEN]) else { break };
        let header = Header::parse(hdr);
        if header.len as usize > PAYLOAD_MAX {
            return Err(format!("pending request with payload length {}", header.len));
        }
        let total = HEADER_LEN + header.len as usize;
        if rest.len() < total {
            break;
        }
        msgs.push(Message { header, payload: rest[HEADER_LEN..total].to_vec() });
        rest = &rest[total..];
    }
    Ok((msgs, rest))
}

/// Splits pending output into the partly sent part and whole messages.
/// Restored output: the partly sent bytes, then (message, is an event).
type Output = (Vec<u8>, Vec<(Vec<u8>, bool)>);

fn split_output(c: &model::Connection) -> Result<Output, String> {
    let resp = usize::from(c.partial_response_len);
    let head = c.output.get(..resp).ok_or("partial response longer than the output")?.to_vec();
    let mut rest = c.output.get(resp..).unwrap_or_default();
    let mut msgs = Vec::new();
    while !rest.is_empty() {
        let hdr = rest
            .get(..HEADER_LEN)
            .and_then(|h| <&[u8; HEADER_LEN]>::try_from(h).ok())
            .ok_or("truncated output message")?;
        let header = Header::parse(hdr);
        let total = HEADER_LEN + header.len as usize;
        let bytes = rest.get(..total).ok_or("truncated output message")?;
        msgs.push((bytes.to_vec(), header.msg_type == Op::WatchEvent as u32));
        rest = &rest[total..];
    }
    Ok((head, msgs))
}

/// Rebuilds a core from a stream: see the module documentation. `Err` for
/// a stream that cannot be restored (the caller keeps the file).
///
/// The descriptor numbers in the stream are taken as inherited: sockets
/// among them are adopted (and closed when dropped), a stand-in
/// event-channel descriptor is closed. Call it only in the process that
/// inherited them (`rxenstored -U`: those numbers stay its own until
/// then), or clear them from `snap` first.
pub fn import<P: Platform>(mut config: Config, platform: P, snap: &model::Stream) -> Result<Restored<P>, String> {
    let mut warnings = Vec::new();
    if let Some(gq) = &snap.global_quota {
        apply_quotas(&mut config.quotas, &gq.per_domain, &mut warnings);
        apply_quotas(&mut config.quotas, &gq.global_only, &mut warnings);
    }
    let tree = engine_conv::to_engine(&snap.nodes).map_err(|e| format!("the nodes: {e}"))?;
    let mut core = Core::with_store(config, platform, Store::new(tree));
    let mut taken = BTreeSet::new();
    let listener = match snap.global {
        Some(g) => {
            let adopted = core.platform.handover_fd() == Some(g.evtchn_fd);
            if g.evtchn_fd >= 3 && g.evtchn_fd != g.socket_fd && !adopted {
                // A stand-in, or a device this platform does not use: it
                // would leak.
                // SAFETY: closing a descriptor the previous process left us
                // and nothing here uses.
                unsafe { libc::close(g.evtchn_fd) };
            }
            let l = adopt(g.socket_fd, &mut taken);
            if l.is_none() && g.socket_fd >= 0 {
                warnings.push(format!("listening socket fd {} is not a socket: binding again", g.socket_fd));
            }
            l
        }
        None => None,
    };
    let mut ids: BTreeMap<u32, ConnId> = BTreeMap::new();
    let mut sockets = Vec::new();
    let mut run_later: Vec<(ConnId, Message)> = Vec::new();
    for c in &snap.connections {
        let (msgs, partial) = split_input(&c.input).map_err(|e| format!("connection {}: {e}", c.conn_id))?;
        let (head, out) = split_output(c).map_err(|e| format!("connection {}: {e}", c.conn_id))?;
        let id = match c.kind {
            model::ConnectionKind::Socket { fd } => {
                let Some(owned) = adopt(fd, &mut taken) else {
                    warnings.push(format!("connection {}: fd {fd} is not an inherited socket: dropped", c.conn_id));
                    continue;
                };
                let id = core.connect_socket();
                sockets.push((id, owned));
                if let Some(conn) = core.conns.get_mut(&id) {
                    conn.decoder.push(partial);
                }
                id
            }
            model::ConnectionKind::Ring { domid, target, evtchn } => {
                if domid >= model::DOMID_FIRST_RESERVED {
                    return Err(format!("connection {}: ring of reserved domain {domid}", c.conn_id));
                }
                let domid = DomId(domid);
                let quotas = core.config.quotas.clone();
                let d = core.domains.entry(domid).or_insert_with(|| Domain::new(domid, quotas));
                d.introduced = true;
                d.port = evtchn;
                let features = d.features;
                let id = core.connect_domain(domid);
                if let Some(d) = core.domains.get_mut(&domid) {
                    d.conn = Some(id);
                }
                if let Some(conn) = core.conns.get_mut(&id) {
                    conn.caller.target = (target != DOMID_INVALID).then_some(DomId(target));
                }
                match core.platform.reattach(id, domid, evtchn, features) {
                    Ok(()) => {
                        if let Some(ring) = core.platform.ring(id) {
                            ring.restore_partial(partial);
                        }
                    }
                    Err(e) => {
                        // As C: kept, ignored, so that its death is still seen.
                        warnings
                            .push(format!("domain {}: cannot take its ring over ({e}): connection ignored", domid.0));
                        core.ignore_connection(id);
                    }
                }
                id
            }
        };
        if ids.insert(c.conn_id, id).is_some() {
            return Err(format!("conn-id {} appears twice", c.conn_id));
        }
        if !head.is_empty() {
            core.push_output(id, head, false);
        }
        for (bytes, is_event) in out {
            core.push_output(id, bytes, is_event);
        }
        run_later.extend(msgs.into_iter().map(|m| (id, m)));
    }
    for w in &snap.watches {
        let Some(&id) = ids.get(&w.conn_id) else {
            warnings.push(format!(
                "watch {:?}: conn-id {} is not restored",
                String::from_utf8_lossy(&w.path),
                w.conn_id
            ));
            continue;
        };
        let depth = w.depth.filter(|d| *d != WATCH_DEPTH_UNLIMITED).map(u32::from);
        if let Err(e) = core.add_watch_as_given(id, &w.path, &w.token, depth) {
            warnings.push(format!("dropping watch with invalid path {:?}: {e}", String::from_utf8_lossy(&w.path)));
        }
    }
    for d in &snap.domains {
        let domid = DomId(d.domid);
        let base = core.config.quotas.clone();
        let rec = core.domains.entry(domid).or_insert_with(|| Domain::new(domid, base));
        if snap.version >= 2 {
            rec.features = d.features;
        }
        let mut table = rec.quotas.clone();
        apply_quotas(&mut table, &d.quotas, &mut warnings);
        rec.quotas = table;
        if let Some(conn) = rec.conn.and_then(|c| core.conns.get_mut(&c)) {
            conn.features = d.features;
        }
    }
    if !snap.transactions.is_empty() {
        warnings.push(format!("{} transaction records ignored (as C does)", snap.transactions.len()));
    }
    // Requests that waited for the update run now, in order.
    for (id, msg) in run_later {
        core.handle(id, msg);
    }
    for domid in core.check_domains() {
        warnings.push(format!("domain {} died during the update: released", domid.0));
    }
    Ok(Restored { core, listener, sockets, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoRings;
    use crate::quota::Quota;

    #[test]
    fn pending_bytes_split_into_messages() {
        let mut input = Vec::new();
        wire::encode(Op::TransactionStart, 3, 0, b"\0", &mut input);
        wire::encode(Op::Write, 4, 0, b"/a\0xyz", &mut input);
        input.truncate(input.len() - 2);
        let (msgs, partial) = split_input(&input).expect("valid");
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].header.req_id, 3);
        assert_eq!(partial.len(), HEADER_LEN + 4);
        let mut bad = Vec::new();
        wire::encode(Op::Write, 4, 0, b"", &mut bad);
        bad[12..16].copy_from_slice(&5000u32.to_le_bytes());
        assert!(split_input(&bad).is_err());
    }

    #[test]
    fn round_trip_keeps_tree_quotas_and_the_ok_reply() {
        let mut core = Core::new(Config::default());
        let c = core.connect_socket();
        let mut req = Vec::new();
        wire::encode(Op::Write, 1, 0, b"/a\0v", &mut req);
        core.receive(c, &req).expect("ok");
        core.config.quotas.set(QuotaName { quota: Quota::Nodes, soft: false }, 77);
        let lu = LuRequest { conn: c, req_id: 9, tx_id: 0, binary: b"/bin/true".to_vec(), cmdline: None, version: 2 };
        let fds = Fds { listener: -1, evtchn: -1, sockets: BTreeMap::from([(c, 1000)]) };
        let bytes = encode(&mut core, &lu, &fds).expect("encode");
        let snap = load(&bytes).expect("clean");
        assert_eq!(snap.connections.len(), 1);
        // The reply to the WRITE is still queued, then the OK.
        let (_, out) = split_output(&snap.connections[0]).expect("output");
        assert_eq!(out.len(), 2);
        // fd 1000 is not ours: the connection is dropped, the rest restored.
        let r = import(Config::default(), NoRings, &snap).expect("import");
        assert_eq!(r.core.config.quotas.hard(Quota::Nodes), 77);
        assert_eq!(r.core.store.snapshot().get("/a").map(|n| n.value().as_bytes().to_vec()), Some(b"v".to_vec()));
        assert!(r.sockets.is_empty());
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        // Truncations are refused, never a panic.
        for cut in [0, 10, 16, 40, bytes.len() / 2, bytes.len() - 8] {
            assert!(load(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
