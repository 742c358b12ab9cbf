//! The core as an image: what of it outlives its process, taken out of a
//! core and put into a new one. Checkpoints (`--state-dir`) and live update
//! both go through it, one way out ([`Core::image`]) and one way in
//! ([`Core::restore`]); their file formats (`persist`'s checkpoints, Xen's
//! migration stream) are the daemon's, and only translate an image.
//!
//! What the two kinds keep and how they come back:
//!
//! | | [`ImageKind::Checkpoint`] | [`ImageKind::LiveUpdate`] |
//! | --- | --- | --- |
//! | tree, global quotas, domain records | yes | yes |
//! | connections | guests' rings: target and watches | every one, with held-back requests, partial input and unsent output |
//! | a guest's ring comes back | mapped again as it is ([`RingStart::Resume`]), transactions it names adopted as lost | taken over ([`Platform::reattach`]): the new process carries on with the page and the port |
//! | watches | fired once (the guest re-scans) | not fired |
//! | afterwards | `@introduceDomain` for each guest | held-back requests run, dead domains released |
//!
//! The control domain's own ring is not in a checkpoint's restore: the
//! frontend attaches it at start-up ([`Core::attach_own_ring`]).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use engine::{DomId, Snapshot, Store};
use wire::{Header, Message, Op, encode_watch_event};

use super::{Config, Core};
use crate::conn::{ConnId, ConnKind};
use crate::domain::{Domain, Platform, RingAttach, RingStart};
use crate::quota::QuotaTable;

/// What an image is taken for: it decides what the image holds and how
/// [`Core::restore`] brings guests' rings back (see the module
/// documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// A checkpoint: what a restart after a crash or a stop needs. Taking
    /// it changes nothing.
    Checkpoint,
    /// A live update: everything, for the process that `exec` starts.
    /// Taking it releases the requests the rings have read (the image
    /// carries them): the core must not serve again afterwards, unless the
    /// update fails before `exec`.
    LiveUpdate,
}

/// A core's state, as [`Core::image`] takes it and [`Core::restore`] puts
/// it back.
#[derive(Clone, Debug)]
pub struct Image {
    /// What the image is for.
    pub kind: ImageKind,
    /// The tree.
    pub tree: Snapshot,
    /// The global quotas ([`Config::quotas`]).
    pub quotas: QuotaTable,
    /// The domain records, in domain order.
    pub domains: Vec<DomainImage>,
    /// The connections, in the order they were made.
    pub connections: Vec<ConnImage>,
}

/// A domain record: introduced, or configured ahead of its INTRODUCE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainImage {
    /// The domain.
    pub domid: DomId,
    /// INTRODUCE seen and not yet released.
    pub introduced: bool,
    /// Its ring's frame (INTRODUCE's argument).
    pub gfn: u64,
    /// Its event channel port (INTRODUCE's argument).
    pub port: u32,
    /// The features it may use (§8.7).
    pub features: u32,
    /// Its quotas, whole.
    pub quotas: QuotaTable,
}

/// What a connection's bytes travel over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A Unix socket client (the frontend keeps the socket).
    Socket,
    /// The shared ring of a domain.
    Ring {
        /// The domain.
        domid: DomId,
        /// The event channel to take the ring over with: the daemon's
        /// local port where the platform binds one itself
        /// ([`Platform::local_port`]), else the domain's.
        port: u32,
    },
}

/// One connection.
#[derive(Clone, Debug)]
pub struct ConnImage {
    /// Its id in the core the image was taken from: the frontend's key for
    /// the connection's socket. An image read from a file has none to give
    /// (any value does): a restored connection gets a new id, see
    /// [`Restored::conns`].
    pub id: ConnId,
    /// Socket or ring.
    pub transport: Transport,
    /// SET_TARGET's domain (§5.6).
    pub target: Option<DomId>,
    /// Its watches, in registration order.
    pub watches: Vec<WatchImage>,
    /// Requests held back by a pending live update, in arrival order: they
    /// run once the image is restored.
    pub held_back: Vec<Message>,
    /// The start of a request not yet received whole.
    pub partial_input: Vec<u8>,
    /// The rest of a message partly sent.
    pub partly_sent: Vec<u8>,
    /// Whole messages not yet sent (replies and watch events), in order.
    pub output: Vec<Vec<u8>>,
}

impl ConnImage {
    /// A connection with nothing but its transport.
    pub fn new(id: ConnId, transport: Transport) -> ConnImage {
        ConnImage {
            id,
            transport,
            target: None,
            watches: Vec::new(),
            held_back: Vec::new(),
            partial_input: Vec::new(),
            partly_sent: Vec::new(),
            output: Vec::new(),
        }
    }
}

/// A watch (§6.1) as its connection gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchImage {
    /// The path as given: relative ones are under the connection's home.
    pub path: Vec<u8>,
    /// The token.
    pub token: Vec<u8>,
    /// Depth limit (feature WATCHDEPTH); `None` is unlimited.
    pub depth: Option<u32>,
}

/// A core rebuilt from an image ([`Core::restore`]).
#[derive(Debug)]
pub struct Restored<P: Platform> {
    /// The core.
    pub core: Core<P>,
    /// The image's connections as they came back, in its order: `None`
    /// for one that did not (a checkpoint's guest that went away meanwhile,
    /// the control domain's ring of a checkpoint).
    pub conns: Vec<Option<ConnId>>,
    /// What could not be restored as it was, for the log.
    pub warnings: Vec<String>,
}

impl<P: Platform> Core<P> {
    /// The core as an image of `kind`. See the module documentation.
    pub fn image(&mut self, kind: ImageKind) -> Image {
        let domains = self
            .domains
            .values()
            .map(|d| DomainImage {
                domid: d.domid,
                introduced: d.introduced,
                gfn: d.gfn,
                port: d.port,
                features: d.features,
                quotas: d.quotas.clone(),
            })
            .collect();
        let mut watches = self.watch_images();
        let connections = match kind {
            ImageKind::Checkpoint => self
                .domains
                .values()
                .filter_map(|d| {
                    let id = d.conn?;
                    let conn = self.conns.get(&id)?;
                    let mut c = ConnImage::new(id, Transport::Ring { domid: d.domid, port: d.port });
                    c.target = conn.caller.target;
                    c.watches = watches.remove(&id).unwrap_or_default();
                    Some(c)
                })
                .collect(),
            ImageKind::LiveUpdate => {
                let ids: Vec<ConnId> = self.conns.keys().copied().collect();
                ids.into_iter()
                    .filter_map(|id| {
                        let mut c = self.conn_image(id)?;
                        c.watches = watches.remove(&id).unwrap_or_default();
                        Some(c)
                    })
                    .collect()
            }
        };
        Image { kind, tree: self.store.snapshot(), quotas: self.config.quotas.clone(), domains, connections }
    }

    /// Every connection's watches, in registration order, in one pass.
    fn watch_images(&self) -> BTreeMap<ConnId, Vec<WatchImage>> {
        let mut by_conn: BTreeMap<ConnId, Vec<WatchImage>> = BTreeMap::new();
        for w in self.watches.in_order() {
            let image = WatchImage { path: w.given.clone(), token: w.token.clone(), depth: w.depth };
            by_conn.entry(w.conn).or_default().push(image);
        }
        by_conn
    }

    /// A connection as a live update carries it on (its watches apart).
    fn conn_image(&mut self, id: ConnId) -> Option<ConnImage> {
        let conn = self.conns.get(&id)?;
        let (transport, partial_input) = match conn.kind {
            ConnKind::Socket => (Transport::Socket, conn.partial_input()),
            ConnKind::Domain => {
                let domid = conn.caller.domid;
                // Where the platform binds ports itself (Xen), the local
                // one, as C records it; otherwise the port INTRODUCE named.
                let introduced = self.domains.get(&domid).filter(|d| d.conn == Some(id)).map_or(0, |d| d.port);
                let port = self.platform.local_port(id).unwrap_or(introduced);
                let partial = match self.platform.ring(id) {
                    Some(ring) => {
                        // The image carries what was read and not answered
                        // (its replies, the partial message): the next
                        // process must not read it from the ring again.
                        ring.release_taken();
                        ring.partial().to_vec()
                    }
                    None => Vec::new(),
                };
                (Transport::Ring { domid, port }, partial)
            }
        };
        let (partly_sent, output) = conn.out.split_unsent();
        let mut c = ConnImage::new(id, transport);
        c.target = conn.caller.target;
        c.partial_input = partial_input;
        c.partly_sent = partly_sent;
        c.output = output;
        c.held_back = self.live_update_delayed(id).to_vec();
        Some(c)
    }

    /// A core over `platform` from an image: `config` with the image's
    /// quotas, the image's tree, domain records and connections, taken up
    /// as its kind says (see the module documentation).
    pub fn restore(config: Config, platform: P, image: Image) -> Restored<P> {
        let Image { kind, tree, quotas, domains, connections } = image;
        let mut core = Core::with_store(Config { quotas, ..config }, platform, Store::new(tree));
        for d in domains {
            let is_priv = d.domid == core.config.priv_domid;
            let mut rec = Domain::new(d.domid, d.quotas);
            rec.introduced = d.introduced || is_priv;
            rec.gfn = d.gfn;
            rec.port = d.port;
            rec.features = d.features;
            core.domains.insert(d.domid, rec);
        }
        let mut warnings = Vec::new();
        let mut conns = Vec::with_capacity(connections.len());
        let mut held_back = Vec::new();
        let mut resumed = Vec::new();
        for c in connections {
            let (id, taken_up) = match (c.transport, kind) {
                (Transport::Socket, _) => {
                    let id = core.connect_socket();
                    if let Some(conn) = core.conns.get_mut(&id) {
                        conn.decoder.push(&c.partial_input);
                    }
                    (id, true)
                }
                (Transport::Ring { domid, .. }, ImageKind::Checkpoint) => {
                    let Some(id) = core.resume_ring(domid, &mut warnings) else {
                        conns.push(None);
                        continue;
                    };
                    resumed.push(domid);
                    (id, true)
                }
                (Transport::Ring { domid, port }, ImageKind::LiveUpdate) => {
                    core.take_ring_over(domid, port, &c.partial_input, &mut warnings)
                }
            };
            if let Some(conn) = core.conns.get_mut(&id) {
                conn.caller.target = c.target;
            }
            if !c.partly_sent.is_empty() {
                core.push_output(id, c.partly_sent, false);
            }
            for m in c.output {
                let is_event = m.first_chunk().is_some_and(|h| Header::parse(h).msg_type == Op::WatchEvent.code());
                core.push_output(id, m, is_event);
            }
            for w in c.watches {
                core.restore_watch(id, w, kind, &mut warnings);
            }
            if !taken_up {
                // As C: kept, ignored, so that its death is still seen.
                core.ignore_connection(id);
            }
            held_back.extend(c.held_back.into_iter().map(|m| (id, m)));
            conns.push(Some(id));
        }
        // Requests that waited for the update run now, in order.
        for (id, msg) in held_back {
            core.handle(id, msg);
        }
        match kind {
            ImageKind::Checkpoint => {
                for domid in resumed {
                    core.fire_special("@introduceDomain", domid);
                }
            }
            ImageKind::LiveUpdate => {
                for domid in core.check_domains() {
                    warnings.push(format!("domain {domid} died during the update: released"));
                }
            }
        }
        Restored { core, conns, warnings }
    }

    /// A checkpoint's guest ring, mapped again as it is: a request the
    /// guest queued while the daemon was down, or that a crash left
    /// unanswered, is served now; a transaction it names that this core
    /// does not know was begun before, and is adopted as lost. `None` for
    /// a domain not introduced, the control domain (its own ring is the
    /// frontend's to attach), or a guest that went away meanwhile (released).
    fn resume_ring(&mut self, domid: DomId, warnings: &mut Vec<String>) -> Option<ConnId> {
        let d = self.domains.get(&domid).filter(|d| d.introduced && d.domid != self.config.priv_domid)?;
        let (gfn, port, features) = (d.gfn, d.port, d.features);
        let conn = self.connect_domain(domid);
        if let Err(e) = self.platform.attach(RingAttach { conn, domid, gfn, port, features, start: RingStart::Resume })
        {
            warnings.push(format!("domain {domid}: cannot re-attach its ring ({e}); releasing it"));
            self.destroy_domain(domid, conn);
            return None;
        }
        if let Some(d) = self.domains.get_mut(&domid) {
            d.conn = Some(conn);
        }
        self.adopt_lost_transactions(conn);
        Some(conn)
    }

    /// A live update's guest ring, taken over as the previous process left
    /// it, with the partial request it had read; `false` with it if the
    /// platform cannot (the connection is then kept but ignored).
    fn take_ring_over(
        &mut self,
        domid: DomId,
        port: u32,
        partial: &[u8],
        warnings: &mut Vec<String>,
    ) -> (ConnId, bool) {
        let quotas = self.config.quotas.clone();
        let d = self.domains.entry(domid).or_insert_with(|| Domain::new(domid, quotas));
        d.introduced = true;
        d.port = port;
        let features = d.features;
        let id = self.connect_domain(domid);
        if let Some(d) = self.domains.get_mut(&domid) {
            d.conn = Some(id);
        }
        match self.platform.reattach(id, domid, port, features) {
            Ok(()) => {
                if let Some(ring) = self.platform.ring(id) {
                    ring.restore_partial(partial);
                }
                (id, true)
            }
            Err(e) => {
                warnings.push(format!("domain {domid}: cannot take its ring over ({e}): connection ignored"));
                (id, false)
            }
        }
    }

    /// Registers a watch of a restored connection; a checkpoint's fires
    /// once, so that the guest re-scans what it watches.
    fn restore_watch(&mut self, conn: ConnId, w: WatchImage, kind: ImageKind, warnings: &mut Vec<String>) {
        match self.add_watch_as_given(conn, &w.path, &w.token, w.depth) {
            Ok(true) if kind == ImageKind::Checkpoint => {
                let mut event = Vec::new();
                encode_watch_event(&w.path, &w.token, &mut event);
                self.queue_event(conn, event, true);
            }
            Ok(_) => {}
            Err(e) => warnings
                .push(format!("dropping a watch with an invalid path {:?}: {e}", String::from_utf8_lossy(&w.path))),
        }
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use wire::{Decoder, encode};

    use super::*;
    use crate::NoRings;

    fn send(core: &mut Core, id: ConnId, op: Op, payload: &[u8]) {
        let mut bytes = Vec::new();
        encode(op, 7, 0, payload, &mut bytes);
        core.receive(id, &bytes).expect("well framed");
    }

    /// The messages queued for `id`, drained.
    fn drain(core: &mut Core, id: ConnId) -> Vec<Message> {
        let out = core.output(id).expect("connected");
        let bytes = out.chunks().collect::<Vec<_>>().concat();
        out.consume(bytes.len());
        let mut d = Decoder::new();
        d.push(&bytes);
        let mut msgs = vec![];
        while let Ok(Some(m)) = d.next_message() {
            msgs.push(m);
        }
        msgs
    }

    /// Everything but the connections' ids, which a restore renews.
    fn assert_same(a: &Image, b: &Image) {
        assert_eq!(a.kind, b.kind);
        assert_eq!(a.tree.entries().collect::<Vec<_>>(), b.tree.entries().collect::<Vec<_>>());
        assert_eq!(a.quotas, b.quotas);
        assert_eq!(a.domains, b.domains);
        assert_eq!(a.connections.len(), b.connections.len());
        for (x, y) in a.connections.iter().zip(&b.connections) {
            assert_eq!((x.transport, x.target, &x.watches), (y.transport, y.target, &y.watches));
            // (A partly sent message comes back as a message of the rest.)
            let out = |c: &ConnImage| [&c.partly_sent[..], &c.output.concat()].concat();
            assert_eq!((&x.partial_input, out(x)), (&y.partial_input, out(y)));
            let held = |c: &ConnImage| c.held_back.iter().map(|m| (m.header, m.payload.clone())).collect::<Vec<_>>();
            assert_eq!(held(x), held(y));
        }
    }

    /// dom0 on a socket, two guests (one the other's stub domain) with
    /// watches, a quota of their own, and a domain configured ahead of its
    /// INTRODUCE.
    fn populated() -> (Core, ConnId) {
        let mut core = Core::new(Config::default());
        let s = core.connect_socket();
        send(&mut core, s, Op::Write, b"/local/domain/5/data\0v");
        send(&mut core, s, Op::Write, b"/local/domain/6\0");
        send(&mut core, s, Op::SetPerms, b"/local/domain/5\0n5\0");
        send(&mut core, s, Op::SetPerms, b"/local/domain/6\0n6\0");
        send(&mut core, s, Op::Introduce, b"5\x0077\x004\0");
        send(&mut core, s, Op::Introduce, b"6\x0078\x009\0");
        send(&mut core, s, Op::SetTarget, b"6\x005\0");
        send(&mut core, s, Op::SetQuota, b"5\0watches\x0042\0");
        send(&mut core, s, Op::SetFeature, b"8\x002\0");
        send(&mut core, s, Op::Watch, b"@releaseDomain\0dom0\0");
        let guest = core.domain(DomId(5)).and_then(|d| d.conn).expect("introduced");
        send(&mut core, guest, Op::Watch, b"data\0rel\0");
        send(&mut core, guest, Op::Watch, b"/local/domain/5\0abs\x001\0");
        drain(&mut core, s);
        drain(&mut core, guest);
        (core, s)
    }

    #[test]
    fn a_checkpoint_restores_what_it_took() {
        let (mut core, _) = populated();
        let image = core.image(ImageKind::Checkpoint);
        assert_eq!(image.connections.len(), 2, "the guests' rings, not the socket");
        let mut restored = Core::restore(Config::default(), NoRings, image.clone());
        assert!(restored.warnings.is_empty(), "{:?}", restored.warnings);
        assert_same(&image, &restored.core.image(ImageKind::Checkpoint));
        // The guest's watches fire once, so that it re-scans.
        let guest = restored.conns[0].expect("resumed");
        let events: Vec<Vec<u8>> = drain(&mut restored.core, guest).into_iter().map(|m| m.payload).collect();
        assert_eq!(events, [b"data\0rel\0".to_vec(), b"/local/domain/5\0abs\0".to_vec()]);
        assert_eq!(restored.core.conn(guest).and_then(|c| c.caller().target), None);
        let stub = restored.conns[1].expect("resumed");
        assert_eq!(restored.core.conn(stub).and_then(|c| c.caller().target), Some(DomId(5)));
    }

    #[test]
    fn a_live_update_restores_what_it_took() {
        let (mut core, s) = populated();
        // Unsent output, a partly sent message, a partial request.
        send(&mut core, s, Op::Read, b"/local/domain/5/data\0");
        send(&mut core, s, Op::Read, b"/local/domain/5/data\0");
        core.output(s).expect("connected").consume(3);
        let mut partial = Vec::new();
        encode(Op::Write, 9, 0, b"/x\0yyyy", &mut partial);
        core.receive(s, &partial[..20]).expect("well framed");
        let image = core.image(ImageKind::LiveUpdate);
        assert_eq!(image.connections.len(), 3);
        assert_eq!(image.connections[0].partial_input, partial[..20]);
        assert_eq!(image.connections[0].output.len(), 1);
        let mut restored = Core::restore(Config::default(), NoRings, image.clone());
        assert!(restored.warnings.is_empty(), "{:?}", restored.warnings);
        assert_same(&image, &restored.core.image(ImageKind::LiveUpdate));
        // The partial request completes where it stopped.
        let s = restored.conns[0].expect("socket");
        let rest = image.connections[0].partly_sent.len();
        restored.core.output(s).expect("connected").consume(rest);
        restored.core.receive(s, &partial[20..]).expect("well framed");
        let replies = drain(&mut restored.core, s);
        assert_eq!(replies.last().map(|m| (m.header.req_id, m.payload.clone())), Some((9, b"OK\0".to_vec())));
    }
}
