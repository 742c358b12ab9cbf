//! One client connection: a Unix socket or a domain's ring.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use engine::{DomId, Transaction};
use wire::Decoder;

use crate::access::Caller;

/// Identifies a connection for the lifetime of the core; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Where a connection's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnKind {
    /// A Unix socket client: acts as the store domain (normally dom0).
    Socket,
    /// The shared ring of a domain.
    Domain,
}

/// Replies and watch events waiting to be sent, in order.
#[derive(Debug, Default)]
pub struct OutQueue {
    messages: VecDeque<Outgoing>,
    /// Bytes of the front message already handed to the transport.
    sent: usize,
    bytes: usize,
    /// Fingerprints of the events not yet begun, with their counts: the
    /// duplicate check looks here first instead of scanning the queue (a
    /// watcher that stops reading can have a very long one).
    unsent_events: BTreeMap<u64, u32>,
    /// Bytes ever queued, and ever sent (or dropped): a ring releases a
    /// request once `gone` reaches where its reply ended in `pushed`.
    pushed: u64,
    gone: u64,
}

/// FNV-1a: a fingerprint only (a match is confirmed by comparing bytes;
/// colliding paths cost their sender a scan of its own queue).
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[derive(Debug)]
struct Outgoing {
    bytes: Vec<u8>,
    is_event: bool,
}

impl OutQueue {
    /// Queues a message: a reply, or a watch event (`is_event`, which the
    /// duplicate check of §6.8 looks at).
    pub fn push(&mut self, bytes: Vec<u8>, is_event: bool) {
        self.bytes += bytes.len();
        self.pushed += bytes.len() as u64;
        if is_event {
            *self.unsent_events.entry(fingerprint(&bytes)).or_default() += 1;
        }
        self.messages.push_back(Outgoing { bytes, is_event });
    }

    /// True if an identical event is queued and not yet begun (C drops the
    /// new one then, §6.8).
    pub(crate) fn has_unsent_event(&self, bytes: &[u8]) -> bool {
        if !self.unsent_events.contains_key(&fingerprint(bytes)) {
            return false;
        }
        let skip = usize::from(self.sent > 0);
        self.messages.iter().skip(skip).any(|m| m.is_event && m.bytes == bytes)
    }

    /// The unsent bytes of the front message.
    pub fn front(&self) -> Option<&[u8]> {
        self.messages.front().map(|m| &m.bytes[self.sent..])
    }

    /// The unsent bytes in order, a message at a time (the front one's
    /// rest first), for a gathering write.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        self.messages.iter().enumerate().map(|(i, m)| if i == 0 { &m.bytes[self.sent..] } else { &m.bytes[..] })
    }

    /// Marks `n` bytes as sent, across as many messages as they cover.
    pub fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(rest) = self.front().map(<[u8]>::len) else { return };
            let step = n.min(rest);
            self.advance(step);
            n -= step;
        }
    }

    /// Marks `n` bytes of the front message as sent.
    pub fn advance(&mut self, n: usize) {
        let Some(front) = self.messages.front() else { return };
        if self.sent == 0 && n > 0 && front.is_event {
            // Begun: no longer a duplicate candidate.
            let key = fingerprint(&front.bytes);
            if let Some(count) = self.unsent_events.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    self.unsent_events.remove(&key);
                }
            }
        }
        let n = n.min(front.bytes.len() - self.sent);
        self.sent += n;
        self.gone += n as u64;
        self.bytes = self.bytes.saturating_sub(n);
        if self.sent >= front.bytes.len() {
            self.messages.pop_front();
            self.sent = 0;
        }
    }

    /// Whether nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Messages waiting (the one being sent included).
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Unsent bytes in all.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes ever queued (a position in the connection's output stream).
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Bytes ever sent or dropped: the output stream is out up to here.
    pub fn gone(&self) -> u64 {
        self.gone
    }

    /// Everything not yet sent, for an image: the rest of the front message
    /// if it is partly sent (else empty), and the whole messages after it.
    pub(crate) fn split_unsent(&self) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut whole = self.messages.iter();
        let partly_sent = match self.messages.front() {
            Some(front) if self.sent > 0 => {
                whole.next();
                front.bytes[self.sent..].to_vec()
            }
            _ => Vec::new(),
        };
        (partly_sent, whole.map(|m| m.bytes.clone()).collect())
    }

    /// Puts `earlier`, output that must go first, in front of this queue,
    /// whose front message must not be begun (the frontend sent `earlier`'s
    /// bytes before this queue's).
    pub fn prepend(&mut self, mut earlier: OutQueue) {
        debug_assert!(self.sent == 0 || earlier.is_empty(), "prepend: the queue's front is partly sent");
        if earlier.is_empty() {
            return;
        }
        earlier.messages.extend(self.messages.drain(..));
        for (key, count) in core::mem::take(&mut self.unsent_events) {
            *earlier.unsent_events.entry(key).or_default() += count;
        }
        earlier.bytes += self.bytes;
        earlier.pushed += self.pushed;
        earlier.gone += self.gone;
        *self = earlier;
    }

    /// Drops everything unsent (counted as gone).
    pub fn clear(&mut self) {
        self.unsent_events.clear();
        self.messages.clear();
        self.sent = 0;
        self.bytes = 0;
        self.gone = self.pushed;
    }
}

/// An open transaction of a connection.
#[derive(Debug)]
pub(crate) struct OpenTx {
    pub(crate) tx: Transaction,
    /// Doomed by an earlier failure: commit answers ENOMEM (§7.3 step 1).
    pub(crate) doomed: bool,
    /// Begun before the daemon restarted after a crash: its earlier
    /// requests are lost, so it runs on but its commit answers EAGAIN (the
    /// client starts it again, as after any conflict).
    pub(crate) lost: bool,
}

/// Per-connection protocol state.
#[derive(Debug)]
pub struct Conn {
    pub(crate) kind: ConnKind,
    pub(crate) caller: Caller,
    pub(crate) decoder: Decoder,
    pub(crate) out: OutQueue,
    pub(crate) transactions: BTreeMap<u32, OpenTx>,
    pub(crate) last_tx_id: u32,
    pub(crate) watches: usize,
    /// Server features this connection may use (§8.7).
    pub(crate) features: u32,
    /// Listed in the core's dirty list since its last drain.
    pub(crate) dirty: bool,
    /// A guest's ring taken up again after a crash restart: a request in a
    /// transaction this daemon does not know was begun before the crash,
    /// and is adopted as lost instead of refused with ENOENT.
    pub(crate) adopts_lost_transactions: bool,
}

impl Conn {
    pub(crate) fn new(kind: ConnKind, caller: Caller, features: u32) -> Conn {
        Conn {
            kind,
            caller,
            decoder: Decoder::new(),
            out: OutQueue::default(),
            transactions: BTreeMap::new(),
            last_tx_id: 0,
            watches: 0,
            features,
            dirty: false,
            adopts_lost_transactions: false,
        }
    }

    /// Socket or ring.
    pub fn kind(&self) -> ConnKind {
        self.kind
    }

    /// The domain the connection acts as.
    pub fn domid(&self) -> DomId {
        self.caller.domid
    }

    /// Who its requests are checked as.
    pub fn caller(&self) -> Caller {
        self.caller
    }

    /// How many transactions it has open.
    pub fn open_transactions(&self) -> usize {
        self.transactions.len()
    }

    /// The next transaction id: a counter from 1, wrapping, skipping 0 and
    /// ids still open (§7.1).
    pub(crate) fn allocate_tx_id(&mut self) -> u32 {
        loop {
            self.last_tx_id = self.last_tx_id.wrapping_add(1);
            if self.last_tx_id != 0 && !self.transactions.contains_key(&self.last_tx_id) {
                return self.last_tx_id;
            }
        }
    }

    /// The bytes of a request received only in part, for a live-update
    /// dump. (The decoder does not expose its buffer: a copy of it is
    /// completed with zeros, and the message it then yields is cut back to
    /// the bytes really received. A prefix of a valid header stays valid
    /// when completed with zeros; an invalid one is dropped, as the
    /// connection would be when the rest arrived.)
    pub fn partial_input(&self) -> Vec<u8> {
        let have = self.decoder.buffered();
        if have == 0 || self.decoder.is_poisoned() {
            return Vec::new();
        }
        let mut d = self.decoder.clone();
        let zeros = [0u8; wire::HEADER_LEN + wire::PAYLOAD_MAX];
        while d.bytes_needed() > 0 {
            let n = d.bytes_needed().min(zeros.len());
            d.push(&zeros[..n]);
        }
        match d.next_message() {
            Ok(Some(m)) => {
                let mut v = Vec::with_capacity(wire::HEADER_LEN + m.payload.len());
                wire::encode(m.header.msg_type, m.header.req_id, m.header.tx_id, &m.payload, &mut v);
                v.truncate(have);
                v
            }
            _ => Vec::new(),
        }
    }

    /// Drops transactions, queued output and partial input (INTRODUCE of an
    /// introduced domain, §8.1 step 3). Watches are the core's to drop.
    pub(crate) fn reset(&mut self) {
        self.transactions.clear();
        self.out.clear();
        self.decoder = Decoder::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The duplicate check as the queue itself says it: a scan.
    fn scan(q: &OutQueue, bytes: &[u8]) -> bool {
        q.messages.iter().skip(usize::from(q.sent > 0)).any(|m| m.is_event && m.bytes == bytes)
    }

    #[test]
    fn consume_spans_messages_and_chunks_follow() {
        let mut q = OutQueue::default();
        for m in [&b"abc"[..], b"de", b"fghi"] {
            q.push(m.to_vec(), true);
        }
        q.consume(4);
        assert_eq!(q.chunks().collect::<Vec<_>>(), [&b"e"[..], b"fghi"]);
        assert_eq!(q.bytes(), 5);
        assert!(!q.has_unsent_event(b"de"), "begun");
        assert!(q.has_unsent_event(b"fghi"));
        q.consume(100);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn an_event_stops_counting_as_a_duplicate_once_begun() {
        let mut q = OutQueue::default();
        q.push(b"reply".to_vec(), false);
        assert!(!q.has_unsent_event(b"reply"), "replies are never duplicates");
        q.push(b"event".to_vec(), true);
        assert!(q.has_unsent_event(b"event"));
        q.advance(5);
        assert!(q.has_unsent_event(b"event"), "the reply went, the event has not begun");
        q.advance(1);
        assert!(!q.has_unsent_event(b"event"), "begun");
        q.push(b"event".to_vec(), true);
        assert!(q.has_unsent_event(b"event"));
        q.clear();
        assert!(!q.has_unsent_event(b"event"));
    }

    #[test]
    fn prepend_puts_a_partly_sent_queue_first_and_keeps_the_index() {
        let mut earlier = OutQueue::default();
        earlier.push(b"r1".to_vec(), false);
        earlier.push(b"r2".to_vec(), false);
        earlier.consume(1);
        let mut q = OutQueue::default();
        q.push(b"ev".to_vec(), true);
        q.push(b"r3".to_vec(), false);
        q.prepend(earlier);
        assert_eq!(q.chunks().collect::<Vec<_>>(), [&b"1"[..], b"r2", b"ev", b"r3"]);
        assert_eq!(q.bytes(), 7);
        let whole = ["r2", "ev", "r3"].map(|m| m.as_bytes().to_vec()).to_vec();
        assert_eq!(q.split_unsent(), (b"1".to_vec(), whole), "an image sees the partly sent reply");
        assert!(q.has_unsent_event(b"ev"));
        q.prepend(OutQueue::default());
        assert_eq!(q.len(), 4, "nothing to put first changes nothing");
    }

    proptest! {
        #[test]
        fn the_fingerprint_index_agrees_with_a_scan(ops in prop::collection::vec((0u8..4, 0usize..3, any::<bool>(), 1usize..4), 1..60)) {
            let mut q = OutQueue::default();
            let names: [&[u8]; 3] = [b"a\0t\0", b"bb\0t\0", b"a\0u\0"];
            for (op, which, is_event, n) in ops {
                match op {
                    0 | 1 => q.push(names[which].to_vec(), is_event),
                    2 => q.advance(n),
                    _ => {}
                }
                for name in names {
                    prop_assert_eq!(q.has_unsent_event(name), scan(&q, name));
                }
            }
        }
    }
}
