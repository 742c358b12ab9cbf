//! Hostile byte streams against the protocol core.
//!
//! Guards against a client (or a guest's ring) crashing or wedging the
//! daemon with malformed input: random message sequences mixing valid
//! operations, garbage payloads, NUL-laden and non-UTF-8 paths, bad
//! transaction ids and truncated or oversize headers, split at random
//! points. The core must never panic; an oversize length drops only that
//! connection; every whole request gets exactly one reply; and another
//! connection is served normally afterwards.

use proptest::prelude::*;
use rxenstored_core::{Config, Core};
use wire::{Decoder, Op};

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(prop::sample::select(b"/a\0b@-_.z/\0\0".to_vec()), 0..40),
        Just(b"/x\0value".to_vec()),
        Just(b"/x\0".to_vec()),
        Just(b"T\0".to_vec()),
        Just(b"/p\0n0\0r5\0".to_vec()),
        Just(b"/w\0tok\0".to_vec()),
        Just(b"/w\0tok\x001\0".to_vec()),
        Just(b"5\0 0\0 7\0".to_vec()),
        Just(b"quota\0".to_vec()),
    ]
}

#[derive(Debug, Clone)]
struct Msg {
    code: u32,
    tx: u32,
    payload: Vec<u8>,
}

fn msg() -> impl Strategy<Value = Msg> {
    let code = prop_oneof![8 => 0u32..27, 1 => Just(65535u32), 1 => any::<u32>()];
    let tx = prop_oneof![4 => Just(0u32), 2 => 1u32..4, 1 => any::<u32>()];
    (code, tx, payload()).prop_map(|(code, tx, payload)| Msg { code, tx, payload })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_streams_never_panic_and_every_request_is_answered(
        msgs in prop::collection::vec(msg(), 1..30),
        cuts in prop::collection::vec(1usize..40, 1..20),
        domu in any::<bool>(),
    ) {
        let mut core = Core::new(Config::default());
        let victim = if domu { core.connect_domain(engine::DomId(7)) } else { core.connect_socket() };
        let mut stream = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            wire::encode(m.code, i as u32, m.tx, &m.payload, &mut stream);
        }
        // Feed it in random-sized pieces.
        let mut at = 0;
        let mut cut = cuts.iter().cycle();
        while at < stream.len() {
            let n = (*cut.next().unwrap_or(&1)).min(stream.len() - at);
            prop_assert!(core.receive(victim, &stream[at..at + n]).is_ok(), "lengths are all ≤ 4096");
            at += n;
        }
        // One reply per request, in order (events may come in between).
        let mut decoder = Decoder::new();
        let out = core.output(victim).expect("connection");
        while let Some(front) = out.front() {
            let n = front.len();
            decoder.push(front);
            out.advance(n);
        }
        let mut replies = Vec::new();
        while let Some(m) = decoder.next_message().expect("the core writes valid frames") {
            if m.header.msg_type != Op::WatchEvent.code() {
                replies.push(m.header.req_id);
            }
        }
        prop_assert_eq!(replies, (0..msgs.len() as u32).collect::<Vec<_>>());
        // The store is intact and others are served.
        core.store().snapshot().check_consistent().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let other = core.connect_socket();
        let mut req = Vec::new();
        wire::encode(Op::Read, 99, 0, b"/tool/xenstored\0", &mut req);
        prop_assert!(core.receive(other, &req).is_ok());
        prop_assert_eq!(core.output(other).and_then(|o| o.front().map(|f| f[16..].to_vec())), Some(Vec::new()));
    }

    /// The threaded socket frontend's split, modelled without sockets: at
    /// each arrival, the whole snapshot reads at its start are answered by
    /// a `Reader` if the stream is between requests, and the rest goes to
    /// the core. The client must get the very bytes a core alone sends,
    /// whatever the requests and wherever the stream is cut (oversize
    /// lengths included: the core then closes the connection).
    #[test]
    fn snapshot_reads_answer_as_the_core_does_on_any_stream(
        setup in prop::collection::vec(msg(), 0..10),
        msgs in prop::collection::vec(msg(), 1..30),
        cuts in prop::collection::vec(1usize..60, 1..20),
        oversize in any::<bool>(),
    ) {
        let stream_of = |msgs: &[Msg], first_id: usize| {
            let mut stream = Vec::new();
            for (i, m) in msgs.iter().enumerate() {
                wire::encode(m.code, (first_id + i) as u32, m.tx, &m.payload, &mut stream);
            }
            stream
        };
        let mut stream = stream_of(&msgs, 0);
        if oversize {
            let mut header = Vec::new();
            wire::encode(Op::Read, 0, 0, &[], &mut header);
            header[12..16].copy_from_slice(&5000u32.to_le_bytes());
            stream.extend_from_slice(&header);
        }
        let drain = |core: &mut Core, id| {
            let out = core.output(id).expect("connection");
            let bytes = out.chunks().collect::<Vec<_>>().concat();
            out.consume(bytes.len());
            bytes
        };
        // Two cores in the same state (a tree made by random requests).
        let mut cores = [Core::new(Config::default()), Core::new(Config::default())];
        let mut ids = Vec::new();
        for core in &mut cores {
            let id = core.connect_socket();
            let _ = core.receive(id, &stream_of(&setup, 1000));
            drain(core, id);
            ids.push(id);
        }
        let [alone, split] = &mut cores;
        let reader = split.reader(ids[1]).expect("a socket client is privileged");
        let (mut expected, mut got) = (Vec::new(), Vec::new());
        let (mut at, mut cut) = (0, cuts.iter().cycle());
        while at < stream.len() {
            let n = (*cut.next().unwrap_or(&1)).min(stream.len() - at);
            let chunk = &stream[at..at + n];
            at += n;
            let closed_alone = alone.receive(ids[0], chunk).is_err();
            expected.extend(drain(alone, ids[0]));
            // As the daemon: only when nothing of the connection's is in
            // the core (its output was drained just above).
            let used = if split.idle(ids[1]) { reader.answer_leading(chunk, &mut got, usize::MAX) } else { 0 };
            let closed_split = split.receive(ids[1], &chunk[used..]).is_err();
            got.extend(drain(split, ids[1]));
            prop_assert_eq!(closed_alone, closed_split);
            if closed_alone {
                break;
            }
        }
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn oversize_lengths_drop_only_that_connection(prefix in prop::collection::vec(msg(), 0..5), len in 4097u32..) {
        let mut core = Core::new(Config::default());
        let bad = core.connect_socket();
        let mut stream = Vec::new();
        for m in &prefix {
            wire::encode(m.code, 1, m.tx, &m.payload, &mut stream);
        }
        let mut header = Vec::new();
        wire::encode(Op::Write, 7, 0, &[], &mut header);
        header[12..16].copy_from_slice(&len.to_le_bytes());
        stream.extend_from_slice(&header);
        prop_assert!(core.receive(bad, &stream).is_err());
        core.disconnect(bad);
        let good = core.connect_socket();
        let mut req = Vec::new();
        wire::encode(Op::Write, 1, 0, b"/ok\0yes", &mut req);
        prop_assert!(core.receive(good, &req).is_ok());
        prop_assert_eq!(core.output(good).and_then(|o| o.front().map(|f| f[16..].to_vec())), Some(b"OK\0".to_vec()));
    }
}
