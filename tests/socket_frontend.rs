//! The Unix-socket frontend under concurrency.
//!
//! - Many clients at once each get every reply, in order, with the right
//!   contents.
//! - A watcher that stops reading holds up nobody: writers keep being
//!   answered while its events pile up (a socket client is dom0, whose
//!   queue C does not bound either), and when it reads again it gets every
//!   event, in order.
//! - A client that floods requests without reading replies is answered
//!   in full once it reads, and others are served meanwhile.
//! - Reads that a reader's thread answers itself from the published
//!   snapshot keep their place among the client's other requests:
//!   a read sent after a write sees it, and replies come in request order,
//!   also when the client stops reading them for a while.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rxenstored_suite::daemon::TestDaemon;
use rxenstored_suite::harness::start_rx_or_skip;
use wire::{Op, client::Client};

/// A client watching `path`, its initial event already taken.
fn watching(d: &TestDaemon, path: &str) -> Client {
    let mut watcher = d.connect();
    assert!(watcher.watch(path, "tok").expect("watch").is_ok());
    assert!(watcher.next_event(Duration::from_secs(5)).is_some(), "the initial event");
    watcher
}

#[test]
fn concurrent_clients_each_get_their_own_replies_in_order() {
    let Some(d) = start_rx_or_skip(&[]) else { return };
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let mut client = d.connect();
            client.set_reply_timeout(Duration::from_secs(20));
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                for i in 0..400 {
                    let path = format!("/conc/c{c}/k{}", i % 7);
                    let value = format!("{c}-{i}");
                    assert!(client.write(&path, &value).expect("write").is_ok());
                    let r = client.read(&path).expect("read");
                    assert_eq!(r.ok(), Some(value.as_bytes()), "client {c} request {i}");
                }
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    assert_eq!(done.load(Ordering::SeqCst), 16);
    assert!(d.connect().read("/conc/c15/k0").expect("read").is_ok());
}

#[test]
fn a_watcher_that_stops_reading_blocks_nobody_and_loses_nothing() {
    let Some(d) = start_rx_or_skip(&[]) else { return };
    let mut watcher = watching(&d, "/busy");
    // From here the watcher reads nothing: about 5 MB of events pile up,
    // far past what the socket buffers hold.
    let value = vec![b'v'; 64];
    let mut writer = d.connect();
    writer.set_reply_timeout(Duration::from_secs(10));
    let writes = 20_000;
    let started = Instant::now();
    for i in 0..writes {
        let path = format!("/busy/node-with-a-long-name-to-fill-the-queue-faster/{i:0>200}");
        assert!(writer.write(&path, &value).expect("writer answered").is_ok(), "write {i}");
    }
    // A third client is served as well.
    assert!(d.connect().read("/busy").expect("read").is_ok());
    assert!(started.elapsed() < Duration::from_secs(60), "writes took {:?}", started.elapsed());
    // The watcher catches up: every event, in order.
    for i in 0..writes {
        let (path, token) = watcher.next_event(Duration::from_secs(10)).unwrap_or_else(|| panic!("event {i} missing"));
        assert_eq!(token, b"tok");
        let want = format!("/busy/node-with-a-long-name-to-fill-the-queue-faster/{i:0>200}");
        assert_eq!(String::from_utf8_lossy(&path), want);
    }
    assert!(d.log().lines().all(|l| !l.contains("panicked")), "{}", d.log());
}

#[test]
fn a_client_flooding_requests_gets_every_reply_and_others_are_served() {
    let Some(d) = start_rx_or_skip(&[]) else { return };
    let mut flood = Client::connect(d.socket()).expect("connect");
    flood.set_reply_timeout(Duration::from_secs(20));
    // 5,000 pipelined writes, sent before any reply is read (a thread
    // writes: the socket fills while the daemon is still answering).
    let count = 5_000u32;
    let mut bytes = Vec::new();
    for i in 0..count {
        wire::encode(Op::Write, i, 0, format!("/flood/k{i}\0value-{i}").as_bytes(), &mut bytes);
    }
    let mut stream = flood.stream().try_clone().expect("clone");
    let sender = std::thread::spawn(move || stream.write_all(&bytes).expect("send the flood"));
    let mut other = d.connect();
    other.set_reply_timeout(Duration::from_secs(10));
    for i in 0..50 {
        assert!(other.write(format!("/other/{i}"), "x").expect("other served").is_ok());
    }
    for i in 0..count {
        let m = flood.wait_reply(i).expect("reply");
        assert_eq!(m.header.msg_type, Op::Write.code(), "reply {i}: {:?}", m.payload);
    }
    sender.join().expect("sender");
    assert_eq!(d.connect().read("/flood/k4999").expect("read").ok(), Some(&b"value-4999"[..]));
}

#[test]
fn clients_that_come_and_go_are_served_and_leave_nothing_behind() {
    let Some(d) = start_rx_or_skip(&[]) else { return };
    let mut watcher = watching(&d, "/churn");
    // 8 threads, 50 short connections each: one write, then gone
    // (half of them without waiting for the reply).
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let socket = d.socket().to_path_buf();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let mut c = Client::connect(&socket).expect("connect");
                    let path = format!("/churn/w{w}-{i}");
                    if i % 2 == 0 {
                        assert!(c.write(&path, "x").expect("write").is_ok());
                    } else {
                        let mut bytes = Vec::new();
                        wire::encode(Op::Write, 1, 0, format!("{path}\0x").as_bytes(), &mut bytes);
                        c.send_raw(&bytes).expect("send");
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    // Every write is applied (a request fully sent is served even if its
    // sender is gone) and the watcher saw each one.
    let mut seen = 0;
    while watcher.next_event(Duration::from_secs(5)).is_some() {
        seen += 1;
        if seen == 400 {
            break;
        }
    }
    assert_eq!(seen, 400);
    let listing = d.connect().directory("/churn").expect("directory");
    assert_eq!(listing.ok().map(|l| l.split(|b| *b == 0).filter(|n| !n.is_empty()).count()), Some(400));
}

/// Sends `count` requests made by `request(i)` one `write` each (so that
/// the daemon reads them one by one, as a client waiting for nothing
/// would send them), from a thread.
fn send_each(
    client: &Client,
    count: u32,
    request: impl Fn(u32, &mut Vec<u8>) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let mut stream = client.stream().try_clone().expect("clone");
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        for i in 0..count {
            bytes.clear();
            request(i, &mut bytes);
            stream.write_all(&bytes).expect("send");
        }
    })
}

/// The next `count` replies, in the order they arrive.
fn replies_in_order(client: &mut Client, count: u32) -> Vec<wire::Message> {
    (0..count)
        .map(|i| {
            client
                .recv_message(Duration::from_secs(20))
                .expect("receive")
                .unwrap_or_else(|| panic!("reply {i} missing"))
        })
        .collect()
}

#[test]
fn reads_keep_their_place_among_a_clients_writes_under_contention() {
    let Some(d) = start_rx_or_skip(&[]) else { return };
    // Writers keep the loop busy, so that the client's reads arrive
    // while its writes still wait behind theirs.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammers: Vec<_> = (0..4)
        .map(|h| {
            let mut c = d.connect();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    assert!(c.write(format!("/hammer/{h}"), n.to_string()).expect("hammer").is_ok());
                    n += 1;
                }
            })
        })
        .collect();
    let mut client = d.connect();
    let rounds = 3_000u32;
    // Per round: WRITE /order/k = i, READ it, DIRECTORY /order, GET_PERMS.
    let sender = send_each(&client, rounds * 4, |n, bytes| {
        let (i, step) = (n / 4, n % 4);
        match step {
            0 => wire::encode(Op::Write, n, 0, format!("/order/k\0{i}").as_bytes(), bytes),
            1 => wire::encode(Op::Read, n, 0, b"/order/k\0", bytes),
            2 => wire::encode(Op::Directory, n, 0, b"/order\0", bytes),
            _ => wire::encode(Op::GetPerms, n, 0, b"/order/k\0", bytes),
        }
    });
    let got = replies_in_order(&mut client, rounds * 4);
    sender.join().expect("sender");
    stop.store(true, Ordering::Relaxed);
    for h in hammers {
        h.join().expect("hammer");
    }
    for (n, m) in got.iter().enumerate() {
        let (i, step) = (n / 4, n % 4);
        assert_eq!(m.header.req_id, n as u32, "replies in request order");
        let expected: Vec<u8> = match step {
            0 => b"OK\0".to_vec(),
            1 => i.to_string().into_bytes(),
            2 => b"k\0".to_vec(),
            _ => b"n0\0".to_vec(),
        };
        assert_eq!(m.payload, expected, "round {i} step {step}");
    }
}

#[test]
fn a_reader_that_stops_taking_replies_gets_them_all_in_order() {
    let Some(d) = start_rx_or_skip(&[]) else { return };
    let big = vec![b'b'; 4000];
    let mut admin = d.connect();
    assert!(admin.write("/big", &big).expect("write").is_ok());
    // 3,000 reads of 4 kB: 12 MB of replies, far past the socket's
    // buffer, sent while nothing is read; then a write and a read.
    let mut reader = d.connect();
    let count = 3_000u32;
    let sender = send_each(&reader, count + 2, move |i, bytes| match i {
        _ if i < count => wire::encode(Op::Read, i, 0, b"/big\0", bytes),
        _ if i == count => wire::encode(Op::Write, i, 0, b"/big\0small", bytes),
        _ => wire::encode(Op::Read, i, 0, b"/big\0", bytes),
    });
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile others are served.
    let mut other = d.connect();
    other.set_reply_timeout(Duration::from_secs(5));
    assert!(other.write("/other", "x").expect("other served").is_ok());
    let got = replies_in_order(&mut reader, count + 2);
    sender.join().expect("sender");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.header.req_id, i as u32, "replies in request order");
        let expected: &[u8] = match i as u32 {
            i if i < count => &big,
            i if i == count => b"OK\0",
            _ => b"small",
        };
        assert!(m.payload == expected, "reply {i} has {} bytes", m.payload.len());
    }
}

/// A client alone for a while is served by a blocking `recv` on its socket
/// (the loop's solo runs): whoever else turns up is served at
/// once, events cross between the two both ways, the lone client keeps
/// its order, and its leaving or misbehaving mid-run harms nobody.
#[test]
fn a_lone_client_gives_way_at_once_and_keeps_its_order() {
    let Some(d) = start_rx_or_skip(&["--log-level", "debug"]) else { return };
    let mut lone = d.connect();
    lone.set_reply_timeout(Duration::from_secs(10));
    let write_read = |c: &mut Client, round: &str, count: u32| {
        for i in 0..count {
            let path = format!("/lone/{round}/k{i}");
            let value = format!("{round}-{i}");
            assert!(c.write(&path, &value).expect("write").is_ok());
            assert_eq!(c.read(&path).expect("read").ok(), Some(value.as_bytes()), "{round} {i}");
        }
    };
    // Well past the few polls and milliseconds a run waits for.
    write_read(&mut lone, "first", 2000);
    // A newcomer, while the lone client sits in its `recv`, is answered
    // (the test's timeout is only a guard: the answer comes at once).
    let mut other = d.connect();
    other.set_reply_timeout(Duration::from_secs(10));
    assert!(other.read("/lone/first/k0").expect("other's read").is_ok());
    // Events from the lone client's run reach a watcher, in order (more
    // than its socket holds: the rest wait for room, which ends the run).
    let mut watcher = watching(&d, "/lone/second");
    write_read(&mut lone, "second", 300);
    for i in 0..300 {
        let (path, _) = watcher
            .next_event(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("event {i} missing; log:\n{}", d.log()));
        assert_eq!(String::from_utf8_lossy(&path), format!("/lone/second/k{i}"));
    }
    // And events caused by another client reach the lone one mid-run.
    assert!(lone.watch("/from-other", "t").expect("watch").is_ok());
    assert!(lone.next_event(Duration::from_secs(10)).is_some(), "the initial event");
    write_read(&mut lone, "third", 200);
    assert!(other.write("/from-other/x", "1").expect("other's write").is_ok());
    let (path, token) = lone.next_event(Duration::from_secs(10)).expect("the other's event");
    assert_eq!((path.as_slice(), token.as_slice()), (&b"/from-other/x"[..], &b"t"[..]));
    write_read(&mut lone, "fourth", 50);
    // Leaving mid-run, and a malformed header mid-run, end only that client.
    drop(lone);
    let mut rude = d.connect();
    write_read(&mut rude, "rude", 100);
    rude.send_raw(&[0xff; 16]).expect("send garbage");
    let mut after = d.connect();
    after.set_reply_timeout(Duration::from_secs(10));
    write_read(&mut after, "after", 100);
    assert!(other.read("/lone/after/k0").expect("read").is_ok());
    let log = d.log();
    assert!(log.contains("solo run ended"), "no solo run happened:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// A timer due while a lone client idles in its solo `recv` still fires:
/// here the periodic checkpoint of the client's writes.
#[test]
fn a_checkpoint_falls_due_while_a_lone_client_idles() {
    let state = tempfile::tempdir().expect("state dir");
    let dir = state.path().to_str().expect("utf-8 path");
    let Some(d) = start_rx_or_skip(&[
        "--log-level",
        "debug",
        "--state-dir",
        dir,
        "--durability",
        "checkpoint",
        "--checkpoint-interval",
        "1",
    ]) else {
        return;
    };
    let checkpoints = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(state.path())
            .expect("list")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".rxs"))
            .collect();
        names.sort();
        names
    };
    let mut lone = d.connect();
    let started = Instant::now();
    for i in 0.. {
        assert!(lone.write("/idle/k", format!("{i}")).expect("write").is_ok());
        // Well past the few polls and milliseconds a solo run waits for.
        if i >= 100 && started.elapsed() > Duration::from_millis(100) {
            break;
        }
    }
    let before = checkpoints();
    assert!(lone.write("/idle/last", "x").expect("write").is_ok());
    // From here the client sends nothing: only the timer can end its run
    // and write a checkpoint with the last write.
    let started = Instant::now();
    while checkpoints().iter().all(|c| before.contains(c)) || !d.log().contains("solo run ended") {
        assert!(started.elapsed() < Duration::from_secs(20), "no checkpoint, or no solo run; log:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(lone.read("/idle/k").expect("read").is_ok());
}

/// A client that pipelines mostly reads beside a busy neighbour (its
/// reads answered from the snapshot, its write through the core) keeps
/// its conversation: replies in order, each read seeing its own write,
/// then others' events and its transactions.
#[test]
fn a_pipelined_reader_beside_a_busy_neighbour_keeps_its_conversation() {
    let Some(d) = start_rx_or_skip(&["--log-level", "debug"]) else { return };
    let mut admin = d.connect();
    assert!(admin.write("/r/k", "0").expect("write").is_ok());
    let mut reader = d.connect();
    reader.set_reply_timeout(Duration::from_secs(10));
    assert!(reader.watch("/r", "w").expect("watch").is_ok());
    assert!(reader.next_event(Duration::from_secs(5)).is_some(), "the initial event");
    // A busy neighbour, so that the reader is never alone (a lone client
    // gets a solo run).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let neighbour = {
        let mut c = d.connect();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                assert!(c.write("/neighbour", "x").expect("neighbour's write").is_ok());
            }
        })
    };
    // Pipelined reads, three windows' worth, with a write of the reader's
    // own in the middle: replies come in order and see the write.
    let count = 800u32;
    let sender = send_each(&reader, count, |i, bytes| {
        if i == 400 {
            wire::encode(Op::Write, i, 0, b"/r/k\0mine", bytes);
        } else {
            wire::encode(Op::Read, i, 0, b"/r/k\0", bytes);
        }
    });
    let got = replies_in_order(&mut reader, count + 1);
    sender.join().expect("sender");
    stop.store(true, Ordering::Relaxed);
    neighbour.join().expect("neighbour");
    let replies: Vec<_> = got.iter().filter(|m| m.header.op() != Some(Op::WatchEvent)).collect();
    assert_eq!(replies.len(), count as usize, "one watch event among the replies");
    for (i, m) in replies.iter().enumerate() {
        assert_eq!(m.header.req_id, i as u32, "replies in request order");
        let want: &[u8] = match i {
            400 => b"OK\0",
            _ if i < 400 => b"0",
            _ => b"mine",
        };
        assert_eq!(m.payload, want, "reply {i}");
    }
    // Afterwards: others' writes reach it as events, its transactions work.
    assert!(admin.write("/r/other", "1").expect("write").is_ok());
    let (path, token) = reader.next_event(Duration::from_secs(10)).expect("the admin's event");
    assert_eq!((path.as_slice(), token.as_slice()), (&b"/r/other"[..], &b"w"[..]));
    let tx = reader.start_tx().expect("start");
    assert!(reader.write_tx(tx, "/r/k", "in-tx").expect("write").is_ok());
    assert!(reader.transaction_end(tx, true).expect("commit").is_ok());
    assert_eq!(admin.read("/r/k").expect("read").ok(), Some(&b"in-tx"[..]));
    drop(reader);
    assert!(admin.read("/r/k").expect("read after the reader left").is_ok());
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

/// A lone client (in a solo run) that sends a burst of reads in one
/// write, whose replies are far more than its socket holds, gets them all
/// once it reads: the run hands the rest to the poll.
#[test]
fn a_lone_clients_burst_of_reads_larger_than_its_socket_arrives_whole() {
    let Some(d) = start_rx_or_skip(&[]) else { return };
    let big = vec![b'b'; 4000];
    let mut lone = d.connect();
    lone.set_reply_timeout(Duration::from_secs(10));
    assert!(lone.write("/big", &big).expect("write").is_ok());
    // Alone long enough for a run to start.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(100) {
        assert!(lone.write("/small", "x").expect("write").is_ok());
    }
    // Bursts of every size around what the socket holds (about 200 kB):
    // in some, the socket fills on the last of the replies.
    for round in 0..60u32 {
        let count = 20 + round;
        let mut burst = Vec::new();
        for i in 0..count {
            wire::encode(Op::Read, i, 0, b"/big\0", &mut burst);
        }
        // Nothing is read while the burst is answered.
        lone.send_raw(&burst).expect("send");
        std::thread::sleep(Duration::from_millis(20));
        let got = replies_in_order(&mut lone, count);
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.header.req_id, i as u32, "round {round}: replies in request order");
            assert!(m.payload == big, "round {round}: reply {i} has {} bytes", m.payload.len());
        }
    }
    assert!(lone.read("/small").expect("read").is_ok());
}
