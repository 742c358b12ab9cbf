//! Non-transactional reads answered without the core, from the store's
//! newest published snapshot.
//!
//! A privileged connection's READ, DIRECTORY, DIRECTORY_PART or GET_PERMS
//! outside a transaction depends on nothing but the committed tree: not on
//! the connection's transactions or watches, the domain table, quotas (a
//! privileged caller has none) or a live update (which holds back only
//! transaction starts and unprivileged callers). A frontend that reads a
//! connection on a thread of its own can therefore answer such requests
//! there, in parallel with the core and with each other, as MVCC promises.
//! The answer is the one [`Core::handle`](crate::Core::handle) would give,
//! byte for byte: both run `ops::run_read` and `encode_reply`.
//!
//! What the frontend keeps for itself is the order: a reply must not
//! overtake the replies to the same connection's earlier requests (see the
//! daemon's threaded mode).

use alloc::sync::Arc;
use alloc::vec::Vec;

use engine::Store;
use wire::{HEADER_LEN, Header, PAYLOAD_MAX};

use crate::access::Caller;
use crate::ops::{self, Ctx};
use crate::quota::QuotaTable;
use crate::reply::encode_reply;

/// Answers one connection's snapshot reads. Cheap to share between threads.
#[derive(Debug, Clone)]
pub struct Reader {
    store: Arc<Store>,
    caller: Caller,
    /// Never consulted for a privileged caller; [`Ctx`] wants a table.
    quotas: Arc<QuotaTable>,
}

impl Reader {
    /// A reader for `caller`, if its reads need nothing but the tree.
    pub(crate) fn for_caller(store: Arc<Store>, caller: Caller) -> Option<Reader> {
        caller.privileged.then(|| Reader { store, caller, quotas: Arc::new(QuotaTable::default()) })
    }

    /// Whether this reader answers a request with this header.
    pub fn takes(&self, header: &Header) -> bool {
        header.tx_id == 0 && header.len as usize <= PAYLOAD_MAX && header.op().is_some_and(ops::is_read)
    }

    /// Answers the whole requests at the start of `bytes` that it
    /// [takes](Self::takes), appending the replies to `out`, and stops at
    /// the first one it does not take or that is incomplete, or once `out`
    /// holds `limit` bytes. Returns the bytes consumed.
    pub fn answer_leading(&self, bytes: &[u8], out: &mut Vec<u8>, limit: usize) -> usize {
        let mut used = 0;
        let mut snapshot = None;
        while out.len() < limit
            && let Some(head) = bytes.get(used..used + HEADER_LEN)
        {
            let Ok(head) = <&[u8; HEADER_LEN]>::try_from(head) else { break };
            let header = Header::parse(head);
            let Some(op) = header.op().filter(|_| self.takes(&header)) else { break };
            let end = used + HEADER_LEN + header.len as usize;
            let Some(payload) = bytes.get(used + HEADER_LEN..end) else { break };
            // One snapshot for a batch: requests read together may be
            // answered as of one moment.
            let snapshot = snapshot.get_or_insert_with(|| self.store.snapshot());
            // Reads never ask whether a domain exists (SET_PERMS does).
            let ctx = Ctx { caller: self.caller, quotas: &self.quotas, domain_exists: &|_| true };
            let result = ops::run_read(&ctx, &mut ops::SnapshotView(snapshot), op, payload);
            encode_reply(&header, result, out);
            used = end;
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use alloc::format;
    use alloc::vec;

    use proptest::prelude::*;
    use wire::{Op, encode};

    use crate::protocol::{Config, Core};

    fn drain(core: &mut Core, id: crate::ConnId) -> Vec<u8> {
        let out = core.output(id).expect("connected");
        let bytes = out.chunks().collect::<Vec<_>>().concat();
        out.consume(bytes.len());
        bytes
    }

    const PATHS: [&str; 8] = ["/a", "/a/b", "a/b", "/", "@introduceDomain", "/missing/x", "/a//b", ""];

    proptest! {
        /// Byte for byte the replies the core gives the same requests,
        /// errors included.
        #[test]
        fn the_reader_answers_as_the_core_does(
            writes in prop::collection::vec((0usize..3, "[a-z]{0,5}"), 0..12),
            reads in prop::collection::vec((0u8..5, 0usize..PATHS.len(), any::<u32>()), 1..30),
        ) {
            let mut core = Core::new(Config::default());
            let id = core.connect_socket();
            let mut bytes = vec![];
            for (i, (path, value)) in writes.iter().enumerate() {
                encode(Op::Write, i as u32, 0, format!("{}\0{value}", PATHS[*path]).as_bytes(), &mut bytes);
            }
            core.receive(id, &bytes).expect("well framed");
            drain(&mut core, id);
            bytes.clear();
            for (op, path, req) in &reads {
                let path = PATHS[*path];
                match op {
                    0 => encode(Op::Read, *req, 0, format!("{path}\0").as_bytes(), &mut bytes),
                    1 => encode(Op::Directory, *req, 0, format!("{path}\0").as_bytes(), &mut bytes),
                    2 => encode(Op::GetPerms, *req, 0, format!("{path}\0").as_bytes(), &mut bytes),
                    3 => encode(Op::DirectoryPart, *req, 0, format!("{path}\0{}\0", req % 3).as_bytes(), &mut bytes),
                    _ => encode(Op::Read, *req, 0, path.as_bytes(), &mut bytes),
                }
            }
            let reader = core.reader(id).expect("a socket client is privileged");
            prop_assert!(core.idle(id));
            let mut fast = vec![];
            prop_assert_eq!(reader.answer_leading(&bytes, &mut fast, usize::MAX), bytes.len());
            core.receive(id, &bytes).expect("well framed");
            prop_assert_eq!(fast, drain(&mut core, id));
        }
    }

    #[test]
    fn only_untransacted_reads_of_privileged_callers_are_taken() {
        let mut core = Core::new(Config::default());
        let socket = core.connect_socket();
        let guest = core.connect_domain(engine::DomId(3));
        assert!(core.reader(guest).is_none(), "a guest's reads need its quotas and the domain table");
        let reader = core.reader(socket).expect("dom0");
        let mut bytes = vec![];
        encode(Op::Read, 1, 0, b"/\0", &mut bytes);
        encode(Op::Read, 2, 5, b"/\0", &mut bytes);
        let mut out = vec![];
        assert_eq!(
            reader.answer_leading(&bytes, &mut out, usize::MAX),
            bytes.len() / 2,
            "stops at the transaction's read"
        );
        bytes.clear();
        encode(Op::Write, 1, 0, b"/x\0y", &mut bytes);
        assert_eq!(reader.answer_leading(&bytes, &mut out, usize::MAX), 0, "writes go to the core");
        assert_eq!(reader.answer_leading(&bytes[..10], &mut out, usize::MAX), 0, "half a header waits");
    }
}
