//! The reply-ordering rule of the socket frontend (server/daemon's
//! `serving` module docs), tested where users see it: each connection gets
//! the replies and watch events that serving the requests one at a time
//! would give it, whatever the interleaving of the clients and whichever
//! way the daemon serves them.
//!
//! Several real clients talk to the daemon started as a process, each
//! pipelining its requests in random chunks (cut anywhere, also inside a
//! message) with random pauses between them, concurrently. Each works in a
//! subtree of its own and watches it, so its reply stream does not depend
//! on how the clients interleave; the test compares it, message for
//! message, with what `rxenstored_core::Core` gives the same bytes served
//! serially. The sizes reach every path the daemon has for a socket
//! client: the loop's turns (several clients at once), solo runs (one
//! client alone for more than 8 polls and 5 ms), snapshot reads (plain
//! reads with nothing of the client's ahead of them: socket clients are
//! privileged), and snapshot replies the socket does not take (a client
//! that reads its replies late, after large reads filled its socket). The
//! failure it guards against: a reply or event overtaking an earlier one
//! of its connection when a client moves between these paths.
//!
//! Clients also run transactions (committed or not) in their subtrees:
//! the requests inside one must go through the core, never be answered
//! from the published snapshot, and a commit of one client's subtree must
//! never fail for another's work.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use rxenstored_core::{Config, Core};
use rxenstored_suite::harness::start_rx_or_skip;
use wire::{HEADER_LEN, Header, Op, encode};

/// One request of a client, on key `k{n}` of its own subtree.
#[derive(Debug, Clone)]
enum Step {
    Write(u8, u8),
    Read(u8),
    Directory,
    GetPerms(u8),
    Mkdir(u8),
    Rm(u8),
    Watch(u8),
    Unwatch(u8),
    /// Node operations in a transaction, then its end: commit (`true`) or
    /// abort.
    Transaction(Vec<Step>, bool),
}

/// A node operation inside a transaction, on two keys, so that its reads
/// often follow its own writes (which the published snapshot does not
/// have).
fn tx_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..2).prop_map(Step::Read),
        1 => Just(Step::Directory),
        1 => (0u8..2).prop_map(Step::GetPerms),
        3 => (0u8..2, any::<u8>()).prop_map(|(k, v)| Step::Write(k, v)),
        1 => (0u8..2).prop_map(Step::Mkdir),
        1 => (0u8..2).prop_map(Step::Rm),
    ]
}

fn step(reader: bool) -> impl Strategy<Value = Step> {
    // A reader's requests are nine in ten plain reads, many of them of
    // values of 3 kB (`Step::Write` with `v` 0), whose replies fill its
    // socket when it reads them late.
    let (reads, others, txs) = if reader { (18, 1, 0) } else { (3, 2, 2) };
    prop_oneof![
        reads => (0u8..4).prop_map(Step::Read),
        reads / 3 => Just(Step::Directory),
        reads / 3 => (0u8..4).prop_map(Step::GetPerms),
        others * 3 => (0u8..4, prop_oneof![1 => Just(0u8), 3 => any::<u8>()]).prop_map(|(k, v)| Step::Write(k, v)),
        others => (0u8..4).prop_map(Step::Mkdir),
        others => (0u8..4).prop_map(Step::Rm),
        others => (0u8..3).prop_map(Step::Watch),
        others => (0u8..3).prop_map(Step::Unwatch),
        // (Not a reader's: a transaction's requests are not plain reads.)
        txs => (prop::collection::vec(tx_step(), 0..6), prop::bool::weighted(0.8))
            .prop_map(|(steps, commit)| Step::Transaction(steps, commit)),
    ]
}

/// A client: its requests, and how they are cut and paced on the wire.
#[derive(Debug, Clone)]
struct Plan {
    steps: Vec<Step>,
    /// Bytes per send, cycled; or, with `whole`, messages per send.
    chunks: Vec<usize>,
    /// Sends are cut between messages, as most clients send: a request
    /// then often starts a read, where the daemon may answer it from the
    /// published snapshot.
    whole: bool,
    /// Pause after each send, in milliseconds, cycled.
    pauses: Vec<u8>,
    /// The client starts reading its replies only after this many
    /// milliseconds.
    late: u8,
}

fn plan() -> impl Strategy<Value = Plan> {
    any::<bool>()
        .prop_flat_map(|reader| {
            let len = if reader { 260..700usize } else { 1..120usize };
            // Half the readers read their replies late.
            let late = if reader { prop_oneof![1 => Just(0u8), 1 => 30u8..150].boxed() } else { Just(0u8).boxed() };
            (
                prop::collection::vec(step(reader), len),
                prop::collection::vec(prop_oneof![3 => 1usize..200, 1 => 200usize..3000], 1..8),
                prop::collection::vec(prop_oneof![1 => Just(0u8), 1 => 1u8..4], 1..8),
                any::<bool>(),
                late,
            )
        })
        .prop_map(|(mut steps, chunks, pauses, whole, late)| {
            if late == 0 {
                return Plan { steps, chunks, pauses, whole, late };
            }
            // Large values first, and the reads sent in whole messages a
            // millisecond apart (so that each send is read on its own,
            // starting a request), so that their replies (answered from
            // the snapshot) fill the socket before the client reads.
            steps.splice(0..0, (0..4).map(|k| Step::Write(k, 0)));
            Plan { steps, chunks, pauses: vec![1], whole: true, late }
        })
}

/// The bytes client `me` sends: its steps, then a read whose reply
/// (request id `u32::MAX`) ends its stream: every event its own writes
/// fire is queued before that reply. Requests are pipelined, transactions
/// included: the n-th TRANSACTION_START of a connection gets id n (which
/// `serial` checks), so the requests inside it can go before its reply.
fn request_bytes(me: usize, plan: &Plan) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ids = Ids::default();
    for s in &plan.steps {
        encode_step(&base(me), s, 0, &mut ids, &mut out);
    }
    encode(Op::Read, u32::MAX, 0, format!("{}\0", base(me)).as_bytes(), &mut out);
    out
}

/// Client `me`'s subtree, made before the clients start, so that their
/// transactions touch nothing they share.
fn base(me: usize) -> String {
    format!("/order/c{me}")
}

/// The request and transaction ids a client has used.
#[derive(Default)]
struct Ids {
    request: u32,
    transactions: u32,
}

fn encode_step(base: &str, s: &Step, tx: u32, ids: &mut Ids, out: &mut Vec<u8>) {
    ids.request += 1;
    let id = ids.request;
    let key = |k: &u8| format!("{base}/k{k}\0");
    match s {
        // (`v` 0: a large value, whose reads fill a socket quickly.)
        Step::Write(k, 0) => encode(Op::Write, id, tx, format!("{base}/k{k}\0{}", "x".repeat(3000)).as_bytes(), out),
        Step::Write(k, v) => encode(Op::Write, id, tx, format!("{base}/k{k}\0v{v}").as_bytes(), out),
        Step::Read(k) => encode(Op::Read, id, tx, key(k).as_bytes(), out),
        Step::Directory => encode(Op::Directory, id, tx, format!("{base}\0").as_bytes(), out),
        Step::GetPerms(k) => encode(Op::GetPerms, id, tx, key(k).as_bytes(), out),
        Step::Mkdir(k) => encode(Op::Mkdir, id, tx, key(k).as_bytes(), out),
        Step::Rm(k) => encode(Op::Rm, id, tx, key(k).as_bytes(), out),
        Step::Watch(k) => encode(Op::Watch, id, 0, format!("{base}/k{k}\0t{k}\0").as_bytes(), out),
        Step::Unwatch(k) => encode(Op::Unwatch, id, 0, format!("{base}/k{k}\0t{k}\0").as_bytes(), out),
        Step::Transaction(steps, commit) => {
            encode(Op::TransactionStart, id, 0, b"\0", out);
            ids.transactions += 1;
            let tx = ids.transactions;
            for s in steps {
                encode_step(base, s, tx, ids, out);
            }
            ids.request += 1;
            let end: &[u8] = if *commit { b"T\0" } else { b"F\0" };
            encode(Op::TransactionEnd, ids.request, tx, end, out);
        }
    }
}

/// A stream's messages, one `Vec` each.
fn messages(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while bytes.len() >= HEADER_LEN {
        let head: &[u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().expect("a header");
        let len = (HEADER_LEN + Header::parse(head).len as usize).min(bytes.len());
        out.push(bytes[..len].to_vec());
        bytes = &bytes[len..];
    }
    out
}

/// The bytes of the first `count` messages of `bytes` (all, if it has
/// fewer), found from their headers without copying them.
fn leading_messages_len(bytes: &[u8], count: usize) -> usize {
    let mut at = 0;
    for _ in 0..count {
        let Some(head) = bytes.get(at..at + HEADER_LEN) else { break };
        let head: &[u8; HEADER_LEN] = head.try_into().expect("a header");
        at = (at + HEADER_LEN + Header::parse(head).len as usize).min(bytes.len());
    }
    at
}

/// A message as its header's fields and its payload, for a readable diff.
fn show(message: &[u8]) -> String {
    let head: &[u8; HEADER_LEN] = message[..HEADER_LEN].try_into().expect("a header");
    let h = Header::parse(head);
    let op = Op::from_code(h.msg_type).map_or_else(|| h.msg_type.to_string(), |o| format!("{o:?}"));
    format!("{op} req {} tx {}: {:?}", h.req_id, h.tx_id, String::from_utf8_lossy(&message[HEADER_LEN..]))
}

fn is_last(message: &[u8]) -> bool {
    let head: &[u8; HEADER_LEN] = message[..HEADER_LEN].try_into().expect("a header");
    Header::parse(head).req_id == u32::MAX && Header::parse(head).msg_type != Op::WatchEvent.code()
}

/// What serial execution gives each client: the core alone, each
/// client's requests served one at a time (the subtrees are disjoint, so
/// any serial order gives each connection the same stream), its output
/// taken after each (so that no watch event is coalesced with an
/// identical one waiting unsent: §6.8, which the daemon does when its
/// client has not yet been sent the first).
fn serial(requests: &[Vec<u8>]) -> Vec<Vec<Vec<u8>>> {
    let mut core = Core::new(Config::default());
    let setup = core.connect_socket();
    core.receive(setup, &make_bases(requests.len())).expect("well framed");
    let ids: Vec<_> = requests.iter().map(|_| core.connect_socket()).collect();
    let mut outs = Vec::new();
    for (id, bytes) in ids.iter().zip(requests) {
        let mut got = Vec::new();
        let mut started = 0;
        for request in messages(bytes) {
            core.receive(*id, &request).expect("well framed");
            let out = core.output(*id).expect("connected");
            let n = got.len();
            got.extend(out.chunks().flatten());
            out.consume(got.len() - n);
            if request_op(&request) == Op::TransactionStart.code() {
                started += 1;
                let reply = messages(&got[n..]).pop().expect("a reply");
                assert_eq!(reply[HEADER_LEN..], *format!("{started}\0").as_bytes(), "transaction ids as predicted");
            }
        }
        outs.push(messages(&got));
    }
    outs
}

fn request_op(message: &[u8]) -> u32 {
    let head: &[u8; HEADER_LEN] = message[..HEADER_LEN].try_into().expect("a header");
    Header::parse(head).msg_type
}

/// The requests that make every client's subtree.
fn make_bases(clients: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for me in 0..clients {
        encode(Op::Mkdir, me as u32, 0, format!("{}\0", base(me)).as_bytes(), &mut out);
    }
    out
}

/// Makes the subtrees in the daemon before the clients start.
fn make_bases_in(socket: &std::path::Path, clients: usize) {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    stream.write_all(&make_bases(clients)).expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while messages(&got).len() < clients || messages(&got).iter().map(Vec::len).sum::<usize>() != got.len() {
        let n = stream.read(&mut buf).expect("the daemon answers");
        assert!(n > 0, "the daemon closed the connection");
        got.extend_from_slice(&buf[..n]);
    }
}

fn is_event(message: &[u8]) -> bool {
    let head: &[u8; HEADER_LEN] = message[..HEADER_LEN].try_into().expect("a header");
    Header::parse(head).msg_type == Op::WatchEvent.code()
}

/// Whether `got` is `serial` with, at most, watch events left out that
/// repeat one the connection got earlier (coalesced while it waited
/// unsent, §6.8); else where they part.
fn same_stream(got: &[Vec<u8>], serial: &[Vec<u8>]) -> Result<(), String> {
    let (mut i, mut j) = (0, 0);
    while j < serial.len() {
        if got.get(i) == Some(&serial[j]) {
            i += 1;
        } else if !(is_event(&serial[j]) && got[..i].contains(&serial[j])) {
            let around = |ms: &[Vec<u8>], n: usize| {
                ms[n.saturating_sub(4)..(n + 4).min(ms.len())].iter().map(|m| show(m)).collect::<Vec<_>>()
            };
            return Err(format!("message {i}: got {:#?}, serial {:#?}", around(got, i), around(serial, j)));
        }
        j += 1;
    }
    if i < got.len() {
        return Err(format!("{} more messages than serial execution gives: {}", got.len() - i, show(&got[i])));
    }
    Ok(())
}

/// Sends `bytes` as `plan` cuts and paces them, while a second thread
/// reads the replies up to the last one.
fn run_client(socket: &std::path::Path, plan: &Plan, bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut reading = stream.try_clone().expect("clone");
    let late = Duration::from_millis(plan.late.into());
    let reader = std::thread::spawn(move || {
        std::thread::sleep(late);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reading.read(&mut buf).expect("the daemon answers");
            assert!(n > 0, "the daemon closed the connection");
            got.extend_from_slice(&buf[..n]);
            let msgs = messages(&got);
            let whole = msgs.iter().map(Vec::len).sum::<usize>() == got.len();
            if whole && msgs.last().is_some_and(|m| is_last(m)) {
                return msgs;
            }
        }
    });
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let chunk = plan.chunks[i % plan.chunks.len()];
        let n = if plan.whole { leading_messages_len(rest, chunk % 4 + 1) } else { chunk };
        let n = n.min(rest.len());
        stream.write_all(&rest[..n]).expect("send");
        rest = &rest[n..];
        let pause = plan.pauses[i % plan.pauses.len()];
        if pause > 0 {
            std::thread::sleep(Duration::from_millis(pause.into()));
        }
        i += 1;
    }
    reader.join().expect("the reading thread")
}

/// Solo runs, and snapshot replies left for the poll by a full socket,
/// that the daemons logged over all cases: the sizes must reach both
/// paths.
static SOLO_RUNS: AtomicUsize = AtomicUsize::new(0);
static SOCKET_FULL: AtomicUsize = AtomicUsize::new(0);
/// Transactions ended (TRANSACTION_END replies) over all cases.
static TRANSACTIONS: AtomicUsize = AtomicUsize::new(0);

/// One case: `plans` run concurrently against a fresh daemon, each
/// client's stream compared with the serial one.
fn one_case(plans: &[Plan]) -> Result<(), TestCaseError> {
    let Some(d) = start_rx_or_skip(&["--log-level", "debug"]) else { return Ok(()) };
    let requests: Vec<Vec<u8>> = plans.iter().enumerate().map(|(i, p)| request_bytes(i, p)).collect();
    let want = serial(&requests);
    make_bases_in(d.socket(), plans.len());
    let got: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let socket = d.socket();
        let runs: Vec<_> =
            plans.iter().zip(&requests).map(|(p, bytes)| s.spawn(move || run_client(socket, p, bytes))).collect();
        runs.into_iter().map(|r| r.join().expect("a client")).collect()
    });
    let log = d.log();
    SOLO_RUNS.fetch_add(log.matches("solo run ended").count(), Ordering::Relaxed);
    SOCKET_FULL.fetch_add(log.matches("socket full: snapshot replies wait for the poll").count(), Ordering::Relaxed);
    let ends = got.iter().flatten().filter(|m| request_op(m) == Op::TransactionEnd.code()).count();
    TRANSACTIONS.fetch_add(ends, Ordering::Relaxed);
    for (i, (got, want)) in got.iter().zip(&want).enumerate() {
        if let Err(e) = same_stream(got, want) {
            prop_assert!(false, "client {}: {}", i, e);
        }
    }
    Ok(())
}

/// Any interleaving of 1 to 4 clients, over any mix of the daemon's ways
/// of serving them, gives each the stream serial execution gives.
#[test]
fn each_connection_gets_what_serial_execution_gives() {
    if start_rx_or_skip(&[]).is_none() {
        return;
    }
    let config = ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&prop::collection::vec(plan(), 1..5), |plans| one_case(&plans)) {
        panic!("{e}");
    }
    let (solo, full) = (SOLO_RUNS.load(Ordering::Relaxed), SOCKET_FULL.load(Ordering::Relaxed));
    let transactions = TRANSACTIONS.load(Ordering::Relaxed);
    eprintln!("paths reached: {solo} solo runs, {full} snapshot replies left to the poll, {transactions} transactions");
    assert!(transactions > 0, "no case ran a transaction");
    assert!(solo > 0, "no case had a solo run");
    assert!(full > 0, "no case filled a socket with snapshot replies");
}
