//! Checkpoint files: one whole [`SavedState`].

use engine::{Snapshot, TreeEntry};

use crate::codec::{Reader, Writer};
use crate::{DomainRecord, FORMAT_VERSION, Problem, QuotaValue, SavedState, WatchRecord};

pub(crate) const MAGIC: &[u8; 8] = b"RXSTATE\0";

/// Encodes `state` as the state after commit `seq`.
pub(crate) fn encode(state: &SavedState, seq: u64) -> Vec<u8> {
    let snap = &state.snapshot;
    let mut body = Writer { buf: Vec::with_capacity(64 * snap.len() + 4096) };
    body.var(snap.next_generation());
    let specials = snap.special_nodes().count();
    body.var((snap.len() + specials) as u64);
    let mut node = |path: &str, n: &engine::Node| {
        body.bytes(path.as_bytes());
        body.bytes(n.value().as_bytes());
        body.perms(n.perms());
        body.var(n.generation());
    };
    snap.for_each_in_tree(|path, n| node(path, n));
    for (path, n) in snap.special_nodes() {
        node(path.as_str(), n);
    }
    encode_domains(&mut body, &state.domains, &state.global_quotas);

    let mut out = Writer { buf: Vec::with_capacity(body.buf.len() + 32) };
    out.buf.extend_from_slice(MAGIC);
    out.u32(FORMAT_VERSION);
    out.u64(seq);
    out.u64(body.buf.len() as u64);
    out.buf.extend_from_slice(&body.buf);
    // The checksum covers the header too: a damaged sequence number must
    // not pass either.
    let crc = crc32fast::hash(&out.buf);
    out.u32(crc);
    out.buf
}

pub(crate) fn encode_domains(w: &mut Writer, domains: &[DomainRecord], global: &[QuotaValue]) {
    w.var(domains.len() as u64);
    for d in domains {
        w.u16(d.domid);
        w.u8(u8::from(d.introduced));
        w.var(d.gfn);
        w.var(u64::from(d.port));
        w.var(u64::from(d.features));
        w.var(d.target.map_or(0, |t| u64::from(t) + 1));
        encode_quotas(w, &d.quotas);
        w.var(d.watches.len() as u64);
        for watch in &d.watches {
            w.bytes(&watch.path);
            w.bytes(&watch.token);
            w.var(watch.depth.map_or(0, |x| u64::from(x) + 1));
        }
    }
    encode_quotas(w, global);
}

fn encode_quotas(w: &mut Writer, quotas: &[QuotaValue]) {
    w.var(quotas.len() as u64);
    for q in quotas {
        w.bytes(q.name.as_bytes());
        w.var(u64::from(q.value));
        w.u8(u8::from(q.soft));
    }
}

/// The header of a checkpoint: its version and seq, after checking the magic.
pub(crate) fn header(r: &mut Reader<'_>) -> Result<(u32, u64), Problem> {
    let magic = r.take(8, "magic")?;
    if magic != MAGIC {
        return Err(Problem { offset: 0, what: "not an rxenstored checkpoint (bad magic)".into() });
    }
    Ok((r.u32("format version")?, r.u64("sequence number")?))
}

/// Decodes the body that follows the header.
pub(crate) fn decode_body(r: &mut Reader<'_>) -> Result<SavedState, Problem> {
    let len = r.u64("body length")?;
    let len =
        usize::try_from(len).map_err(|_| Problem { offset: r.offset(), what: "impossible body length".into() })?;
    let body_at = r.offset();
    let body = r.take(len, "checkpoint body")?;
    let covered = r.consumed();
    let stored = r.u32("checksum")?;
    if crc32fast::hash(covered) != stored {
        return Err(Problem { offset: 0, what: "checksum mismatch: the checkpoint is damaged".into() });
    }
    let mut b = Reader::new(body, body_at);
    let next_generation = b.var("generation counter")?;
    let n = b.count(5, "nodes")?;
    // Decoded as the tree is built, not collected first: no second copy
    // of a million entries, and each is still in cache when stored.
    let mut failure = None;
    let entries = (0..n).map_while(|_| {
        let entry = (|| {
            let path = b.path()?;
            let value = b.bytes("value")?;
            let perms = b.perms()?;
            let generation = b.var("generation")?;
            Ok(TreeEntry { path, value, perms, generation })
        })();
        entry.map_err(|p| failure = Some(p)).ok()
    });
    let built = Snapshot::from_entries(entries);
    if let Some(problem) = failure {
        return Err(problem);
    }
    let at = b.offset();
    let mut snapshot = built.map_err(|e| Problem { offset: at, what: format!("the nodes do not form a tree: {e}") })?;
    snapshot.restore_next_generation(next_generation);
    let (domains, global_quotas) = decode_domains(&mut b)?;
    if !b.is_empty() {
        return Err(Problem { offset: b.offset(), what: "trailing bytes after the checkpoint body".into() });
    }
    Ok(SavedState { snapshot, domains, global_quotas })
}

pub(crate) fn decode_domains(r: &mut Reader<'_>) -> Result<(Vec<DomainRecord>, Vec<QuotaValue>), Problem> {
    let n = r.count(8, "domains")?;
    let mut domains = Vec::with_capacity(n);
    for _ in 0..n {
        let domid = r.u16("domid")?;
        let introduced = r.u8("introduced flag")? != 0;
        let gfn = r.var("gfn")?;
        let port = u32::try_from(r.var("event channel")?).unwrap_or(u32::MAX);
        let features = u32::try_from(r.var("features")?).unwrap_or(0);
        let target = match r.var("target")? {
            0 => None,
            t => Some(
                u16::try_from(t - 1).map_err(|_| Problem { offset: r.offset(), what: "bad target domid".into() })?,
            ),
        };
        let quotas = decode_quotas(r)?;
        let nw = r.count(3, "watches")?;
        let mut watches = Vec::with_capacity(nw);
        for _ in 0..nw {
            let path = r.bytes("watch path")?.to_vec();
            let token = r.bytes("watch token")?.to_vec();
            let depth = match r.var("watch depth")? {
                0 => None,
                d => Some(u32::try_from(d - 1).unwrap_or(u32::MAX)),
            };
            watches.push(WatchRecord { path, token, depth });
        }
        domains.push(DomainRecord { domid, introduced, gfn, port, features, target, quotas, watches });
    }
    Ok((domains, decode_quotas(r)?))
}

fn decode_quotas(r: &mut Reader<'_>) -> Result<Vec<QuotaValue>, Problem> {
    let n = r.count(3, "quotas")?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let name = String::from_utf8_lossy(r.bytes("quota name")?).into_owned();
        let value = u32::try_from(r.var("quota value")?).unwrap_or(u32::MAX);
        let soft = r.u8("quota kind")? != 0;
        v.push(QuotaValue { name, value, soft });
    }
    Ok(v)
}
