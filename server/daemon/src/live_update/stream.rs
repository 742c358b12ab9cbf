//! Live update, the state file: the core's live-update [`Image`] as a Xen
//! migration stream (MIGRATION-STREAM.md §1, written as C writes it:
//! version 2 as HEAD, version 1 as 4.17) and back, through
//! `snapshot-tools`.
//!
//! What a stream carries and how it maps onto the image:
//!
//! | stream | image |
//! | --- | --- |
//! | GLOBAL_DATA | the listening socket's fd (adopted); the event-channel fd (Xen: adopted with the guests' ports bound on it, VIRQ_DOM_EXC bound again; otherwise closed) |
//! | GLOBAL_QUOTA_DATA (v2) | [`Image::quotas`] |
//! | CONNECTION socket | a socket connection over the inherited fd |
//! | CONNECTION ring | a ring connection, its domain introduced again; the core takes the ring over (`Platform::reattach`, no reset) |
//! | pending input | held-back requests (run after the restore), then the partial request (decoder, or the ring's partial message) |
//! | pending output | the output queue, the partly sent message first |
//! | WATCH_DATA(_EXTENDED) | the connections' watches, not fired |
//! | NODE_DATA | the tree (`engine_conv`) |
//! | DOMAIN_DATA (v2) | features and quotas of domain records |
//!
//! Nothing here trusts the file: lengths, fds and paths are checked, and a
//! stream with any error-level finding is refused as a whole.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use engine::DomId;
use rxenstored_core::quota::{QuotaName, QuotaTable};
use rxenstored_core::{
    Config, ConnId, ConnImage, Core, DomainImage, Image, ImageKind, LuRequest, Platform, Transport, WatchImage,
};
use snapshot_tools::model::{self, DOMID_INVALID, WATCH_DEPTH_UNLIMITED};
use snapshot_tools::{WriteFormat, engine_conv, read_stream, write_stream};
use wire::{HEADER_LEN, Header, Message, Op, PAYLOAD_MAX};

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
    let priv_domid = core.config().priv_domid;
    stream(core.image(ImageKind::LiveUpdate), priv_domid, req, fds)
}

/// A live-update image as a stream model (see [`export`]).
fn stream(image: Image, priv_domid: DomId, req: &LuRequest, fds: &Fds) -> Result<model::Stream, String> {
    let v2 = req.version >= 2;
    let mut snap = model::Stream {
        version: req.version,
        global: Some(model::GlobalData { socket_fd: fds.listener, evtchn_fd: fds.evtchn }),
        ..model::Stream::default()
    };
    if v2 {
        snap.global_quota = Some(model::GlobalQuota { per_domain: quotas_of(&image.quotas), global_only: Vec::new() });
    }
    let mut next_id = 0u32;
    for c in image.connections {
        let kind = match c.transport {
            Transport::Socket => match fds.sockets.get(&c.id) {
                Some(&fd) => model::ConnectionKind::Socket { fd },
                None => continue,
            },
            Transport::Ring { domid, port } => model::ConnectionKind::Ring {
                domid: domid.0,
                target: c.target.map_or(DOMID_INVALID, |t| t.0),
                evtchn: port,
            },
        };
        let mut input = Vec::new();
        for m in &c.held_back {
            wire::encode(m.header.msg_type, m.header.req_id, m.header.tx_id, &m.payload, &mut input);
        }
        input.extend_from_slice(&c.partial_input);
        let partial_response_len = u16::try_from(c.partly_sent.len())
            .map_err(|_| format!("connection {}: partly sent message too long", c.id.0))?;
        let mut output = c.partly_sent;
        for m in &c.output {
            output.extend_from_slice(m);
        }
        if c.id == req.conn {
            wire::encode(Op::Control, req.req_id, req.tx_id, b"OK\0", &mut output);
        }
        next_id += 1;
        snap.connections.push(model::Connection {
            conn_id: next_id,
            kind,
            input,
            output,
            partial_response_len,
            unique_id: None,
        });
        for w in c.watches {
            let depth = match (w.depth, v2) {
                (Some(d), true) => {
                    Some(u16::try_from(d).unwrap_or(WATCH_DEPTH_UNLIMITED - 1).min(WATCH_DEPTH_UNLIMITED - 1))
                }
                (Some(_), false) => {
                    tracing::warn!(
                        "live-update: stream version 1 cannot keep the depth of watch {:?}",
                        String::from_utf8_lossy(&w.path)
                    );
                    None
                }
                (None, _) => None,
            };
            snap.watches.push(model::Watch { conn_id: next_id, path: w.path, token: w.token, depth });
        }
    }
    // C 4.17 builds its database when it restores the control domain's
    // ring connection (§6.2): a version-1 stream always has one.
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
    snap.nodes = engine_conv::from_engine(&image.tree);
    if v2 {
        for d in &image.domains {
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
pub struct Imported<P: Platform> {
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
fn split_output(c: &model::Connection) -> Result<(Vec<u8>, Vec<Vec<u8>>), String> {
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
        msgs.push(bytes.to_vec());
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
pub fn import<P: Platform>(config: Config, platform: P, snap: &model::Stream) -> Result<Imported<P>, String> {
    let mut warnings = Vec::new();
    let mut quotas = config.quotas.clone();
    if let Some(gq) = &snap.global_quota {
        apply_quotas(&mut quotas, &gq.per_domain, &mut warnings);
        apply_quotas(&mut quotas, &gq.global_only, &mut warnings);
    }
    let tree = engine_conv::to_engine(&snap.nodes).map_err(|e| format!("the nodes: {e}"))?;
    let mut taken = BTreeSet::new();
    let listener = match snap.global {
        Some(g) => {
            let adopted = platform.handover_fd() == Some(g.evtchn_fd);
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
    // The image's connections, by the stream's conn-id, and the descriptor
    // of each socket among them (in the image's order).
    let mut connections: Vec<ConnImage> = Vec::new();
    let mut index: BTreeMap<u32, usize> = BTreeMap::new();
    let mut fds: Vec<Option<OwnedFd>> = Vec::new();
    let mut domains: BTreeMap<DomId, DomainImage> = BTreeMap::new();
    for c in &snap.connections {
        let (msgs, partial) = split_input(&c.input).map_err(|e| format!("connection {}: {e}", c.conn_id))?;
        let (head, out) = split_output(c).map_err(|e| format!("connection {}: {e}", c.conn_id))?;
        let (transport, target, fd) = match c.kind {
            model::ConnectionKind::Socket { fd } => {
                let Some(owned) = adopt(fd, &mut taken) else {
                    warnings.push(format!("connection {}: fd {fd} is not an inherited socket: dropped", c.conn_id));
                    continue;
                };
                (Transport::Socket, None, Some(owned))
            }
            model::ConnectionKind::Ring { domid, target, evtchn } => {
                if domid >= model::DOMID_FIRST_RESERVED {
                    return Err(format!("connection {}: ring of reserved domain {domid}", c.conn_id));
                }
                let domid = DomId(domid);
                let d = domains.entry(domid).or_insert_with(|| domain_image(domid, &quotas));
                d.introduced = true;
                d.port = evtchn;
                let target = (target != DOMID_INVALID).then_some(DomId(target));
                (Transport::Ring { domid, port: evtchn }, target, None)
            }
        };
        if index.insert(c.conn_id, connections.len()).is_some() {
            return Err(format!("conn-id {} appears twice", c.conn_id));
        }
        let mut conn = ConnImage::new(ConnId(0), transport);
        conn.target = target;
        conn.held_back = msgs;
        conn.partial_input = partial.to_vec();
        conn.partly_sent = head;
        conn.output = out;
        connections.push(conn);
        fds.push(fd);
    }
    for w in &snap.watches {
        let Some(&i) = index.get(&w.conn_id) else {
            warnings.push(format!(
                "watch {:?}: conn-id {} is not restored",
                String::from_utf8_lossy(&w.path),
                w.conn_id
            ));
            continue;
        };
        let depth = w.depth.filter(|d| *d != WATCH_DEPTH_UNLIMITED).map(u32::from);
        connections[i].watches.push(WatchImage { path: w.path.clone(), token: w.token.clone(), depth });
    }
    for d in &snap.domains {
        let domid = DomId(d.domid);
        let rec = domains.entry(domid).or_insert_with(|| domain_image(domid, &quotas));
        if snap.version >= 2 {
            rec.features = d.features;
        }
        apply_quotas(&mut rec.quotas, &d.quotas, &mut warnings);
    }
    if !snap.transactions.is_empty() {
        warnings.push(format!("{} transaction records ignored (as C does)", snap.transactions.len()));
    }
    let image =
        Image { kind: ImageKind::LiveUpdate, tree, quotas, domains: domains.into_values().collect(), connections };
    let restored = Core::restore(config, platform, image);
    warnings.extend(restored.warnings);
    let sockets = restored.conns.into_iter().zip(fds).filter_map(|(id, fd)| Some((id?, fd?))).collect();
    Ok(Imported { core: restored.core, listener, sockets, warnings })
}

/// A domain record as a stream names it: the global quotas, C's default
/// features.
fn domain_image(domid: DomId, quotas: &QuotaTable) -> DomainImage {
    DomainImage {
        domid,
        introduced: false,
        gfn: 0,
        port: 0,
        features: rxenstored_core::features::DEFAULT,
        quotas: quotas.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rxenstored_core::NoRings;
    use rxenstored_core::quota::Quota;

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
        let mut config = Config::default();
        config.quotas.set(QuotaName { quota: Quota::Nodes, soft: false }, 77);
        let mut core = Core::new(config);
        let c = core.connect_socket();
        let mut req = Vec::new();
        wire::encode(Op::Write, 1, 0, b"/a\0v", &mut req);
        core.receive(c, &req).expect("ok");
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
        assert_eq!(r.core.config().quotas.hard(Quota::Nodes), 77);
        assert_eq!(r.core.store().snapshot().get("/a").map(|n| n.value().as_bytes().to_vec()), Some(b"v".to_vec()));
        assert!(r.sockets.is_empty());
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        // Truncations are refused, never a panic.
        for cut in [0, 10, 16, 40, bytes.len() / 2, bytes.len() - 8] {
            assert!(load(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
