//! Guests over shared rings, against the real daemon (`rxenstored
//! --sim-rings DIR`): simulated guests (`rxenstored_platform::sim::SimGuest`) in this
//! process, dom0 over the socket. Guards against a ring frontend that
//! loses or reorders requests, that lets one guest's broken ring, flood or
//! unread replies hurt the others, or that misses a domain's death.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use rxenstored_core::ring::{self, GuestRing, layout};
use rxenstored_platform::sim::{SimGuest, nul};
use wire::Op;
use wire::client::{Client, Reply};

const T: Duration = Duration::from_secs(10);

/// A daemon serving simulated rings in its own directory; killed on drop.
struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    fn start(extra: &[&str]) -> Daemon {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir =
            std::env::temp_dir().join(format!("rxs-rings-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rings")).expect("test directory");
        let socket = dir.join("socket");
        let child = Command::new(env!("CARGO_BIN_EXE_rxenstored"))
            .args(["--no-fork", "--log-level", "warn", "--sim-rings"])
            .arg(dir.join("rings"))
            .args(extra)
            .env("XENSTORED_PATH", &socket)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .spawn()
            .expect("rxenstored starts");
        let deadline = Instant::now() + T;
        while Client::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "the daemon never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon { child, dir, socket }
    }

    fn rings(&self) -> PathBuf {
        self.dir.join("rings")
    }

    fn dom0(&self) -> Client {
        Client::connect(&self.socket).expect("socket")
    }

    /// A guest with files, a home `/local/domain/<d>` it owns, introduced.
    fn guest(&self, dom0: &mut Client, domid: u16) -> SimGuest {
        let mut g = SimGuest::create(&self.rings(), domid).expect("guest files");
        let home = format!("/local/domain/{domid}");
        assert_eq!(dom0.mkdir(&home).expect("io"), Reply::ok_nul());
        assert_eq!(dom0.set_perms(&home, &[&format!("n{domid}")]).expect("io"), Reply::ok_nul());
        let port = format!("{}", 10 + domid);
        assert_eq!(
            dom0.request(Op::Introduce, 0, &nul(&[&domid.to_string(), "0", &port])).expect("io"),
            Reply::ok_nul()
        );
        g.wait_connected(T).expect("INTRODUCE connects the ring");
        g
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ok(s: &str) -> Reply {
    Reply::ok_from(s)
}

fn err(s: &str) -> Reply {
    Reply::err_from(s)
}

fn event(path: &str, token: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    Some((path.as_bytes().to_vec(), token.as_bytes().to_vec()))
}

fn introduced(dom0: &mut Client, domid: u16) -> Reply {
    dom0.request(Op::IsDomainIntroduced, 0, &nul(&[&domid.to_string()])).expect("io")
}

#[test]
fn guest_requests_relative_paths_and_permissions_over_its_ring() {
    let d = Daemon::start(&[]);
    let mut dom0 = d.dom0();
    let mut g = d.guest(&mut dom0, 5);
    assert_eq!(g.server_features(), 14, "INTRODUCE advertises C's default features");
    // Relative paths resolve under the home; the guest owns what it creates.
    assert_eq!(g.write("x/y", b"v").expect("io"), Reply::ok_nul());
    assert_eq!(dom0.read("/local/domain/5/x/y").expect("io"), ok("v"));
    assert_eq!(dom0.get_perms("/local/domain/5/x/y").expect("io"), ok("n5\0"));
    assert_eq!(g.request(Op::GetDomainPath, 0, &nul(&["5"])).expect("io"), ok("/local/domain/5\0"));
    // Permissions: dom0's private node is hidden, privileged ops refused.
    dom0.write("/private/x", "secret").expect("io");
    assert_eq!(g.read("/private/x").expect("io"), err("EACCES"));
    assert_eq!(g.read("/local/domain/5/nothing").expect("io"), err("ENOENT"));
    assert_eq!(g.request(Op::Introduce, 0, &nul(&["9", "0", "1"])).expect("io"), err("EACCES"));
    // A 4096-byte payload crosses the 1024-byte ring in pieces.
    let big = vec![b'b'; 2000];
    assert_eq!(g.write("big", &big).expect("io"), Reply::ok_nul());
    assert_eq!(g.read("big").expect("io"), Reply::Ok(big));
    let mut p = nul(&["/local/domain/5/huge"]);
    p.extend(std::iter::repeat_n(b'h', 4096 - p.len()));
    assert_eq!(g.request(Op::Write, 0, &p).expect("io"), err("ENOSPC"), "node-size quota, not a broken ring");
    assert_eq!(g.server_error(), 0);
}

#[test]
fn watches_over_rings_are_filtered_relative_and_depth_limited() {
    let d = Daemon::start(&[]);
    let mut dom0 = d.dom0();
    let mut g = d.guest(&mut dom0, 5);
    dom0.mkdir("/w").expect("io");
    assert_eq!(dom0.set_perms("/w", &["n0", "r5"]).expect("io"), Reply::ok_nul());
    assert_eq!(g.request(Op::Watch, 0, &nul(&["/w", "tok"])).expect("io"), Reply::ok_nul());
    assert_eq!(g.next_event(T).expect("io"), event("/w", "tok"), "initial event");
    // Events follow read access: to the node, or (SET_PERMS) its old
    // permissions, or its parent.
    dom0.write("/w/pub", "1").expect("io");
    assert_eq!(g.next_event(T).expect("io"), event("/w/pub", "tok"));
    dom0.write("/w/pub/secret", "2").expect("io");
    assert_eq!(dom0.set_perms("/w/pub/secret", &["n0"]).expect("io"), Reply::ok_nul());
    assert_eq!(dom0.set_perms("/w/pub", &["n0"]).expect("io"), Reply::ok_nul());
    assert_eq!(g.next_event(T).expect("io"), event("/w/pub/secret", "tok"), "parent /w/pub readable at the time");
    assert_eq!(g.next_event(T).expect("io"), event("/w/pub/secret", "tok"), "SET_PERMS: old perms");
    assert_eq!(g.next_event(T).expect("io"), event("/w/pub", "tok"), "SET_PERMS of /w/pub: old perms");
    dom0.write("/w/pub/secret", "3").expect("io");
    // Relative watches report relative paths; depth limits.
    assert_eq!(g.request(Op::Watch, 0, &nul(&["rel", "r"])).expect("io"), Reply::ok_nul());
    assert_eq!(g.request(Op::Watch, 0, &nul(&["deep", "d0", "0"])).expect("io"), Reply::ok_nul());
    assert_eq!(g.next_event(T).expect("io"), event("rel", "r"), "no event for the unreadable write");
    assert_eq!(g.next_event(T).expect("io"), event("deep", "d0"));
    g.write("rel/a", b"").expect("io");
    assert_eq!(g.next_event(T).expect("io"), event("rel/a", "r"));
    g.write("deep", b"x").expect("io");
    g.write("deep/a", b"").expect("io");
    assert_eq!(g.next_event(T).expect("io"), event("deep", "d0"), "depth 0: only the node itself");
    assert_eq!(g.next_event(Duration::from_millis(200)).expect("io"), None);
}

#[test]
fn quotas_apply_to_ring_guests() {
    let d = Daemon::start(&["-W", "3"]);
    let mut dom0 = d.dom0();
    let mut g = d.guest(&mut dom0, 5);
    // HEAD rule: refused when the count after the request would be >= 3.
    assert_eq!(g.request(Op::Watch, 0, &nul(&["a", "1"])).expect("io"), Reply::ok_nul());
    assert_eq!(g.request(Op::Watch, 0, &nul(&["b", "2"])).expect("io"), Reply::ok_nul());
    assert_eq!(g.request(Op::Watch, 0, &nul(&["c", "3"])).expect("io"), err("ENOSPC"));
    assert_eq!(dom0.request(Op::SetQuota, 0, &nul(&["5", "transactions", "1"])).expect("io"), Reply::ok_nul());
    assert_eq!(g.request(Op::TransactionStart, 0, b"\0").expect("io"), err("ENOSPC"));
    // dom0 is exempt.
    for i in 0..5 {
        assert!(dom0.watch(format!("/d{i}"), "t").expect("io").is_ok());
    }
}

#[test]
fn domain_death_and_shutdown_fire_release_domain_for_dom0_and_guests() {
    let d = Daemon::start(&[]);
    let mut dom0 = d.dom0();
    let mut watcher = d.guest(&mut dom0, 6);
    let victim = d.guest(&mut dom0, 7);
    assert_eq!(watcher.request(Op::Watch, 0, &nul(&["@releaseDomain", "rel"])).expect("io"), Reply::ok_nul());
    assert_eq!(watcher.next_event(T).expect("io"), event("@releaseDomain", "rel"));
    assert_eq!(dom0.watch("@releaseDomain", "d0").expect("io"), Reply::ok_nul());
    assert_eq!(dom0.next_event(T), event("@releaseDomain", "d0"));
    // Shut down: one @releaseDomain, the domain stays.
    victim.shutdown().expect("shutdown file");
    assert_eq!(dom0.next_event(T), event("@releaseDomain", "d0"));
    assert_eq!(watcher.next_event(T).expect("io"), event("@releaseDomain", "rel"));
    assert_eq!(introduced(&mut dom0, 7), ok("T\0"));
    assert_eq!(dom0.next_event(Duration::from_millis(300)), None, "reported once");
    // Dies: destroyed as by RELEASE.
    victim.destroy().expect("remove ring");
    assert_eq!(dom0.next_event(T), event("@releaseDomain", "d0"));
    assert_eq!(watcher.next_event(T).expect("io"), event("@releaseDomain", "rel"));
    assert_eq!(introduced(&mut dom0, 7), ok("F\0"));
    assert_eq!(dom0.read("/local/domain/7").expect("io"), err("ENOENT"), "owned nodes deleted");
    // The watcher is unaffected.
    assert_eq!(watcher.write("still", b"here").expect("io"), Reply::ok_nul());
}

#[test]
fn re_introduce_resets_the_ring_and_release_detaches_it() {
    let d = Daemon::start(&[]);
    let mut dom0 = d.dom0();
    let mut g = d.guest(&mut dom0, 5);
    assert_eq!(g.request(Op::Watch, 0, &nul(&["a", "1"])).expect("io"), Reply::ok_nul());
    // A reconnect request, then INTRODUCE again: indexes zeroed, watches gone.
    ring::store(g.page(), layout::CONNECTION, ring::connection::RECONNECT);
    assert_eq!(dom0.request(Op::Introduce, 0, &nul(&["5", "0", "15"])).expect("io"), Reply::ok_nul());
    let mut g = SimGuest::open(&d.rings(), 5).expect("reopen");
    g.wait_connected(T).expect("reconnected");
    assert_eq!(ring::load(g.page(), layout::RSP_PROD), 0);
    assert_eq!(g.request(Op::Unwatch, 0, &nul(&["a", "1"])).expect("io"), err("ENOENT"), "watches dropped");
    assert_eq!(dom0.request(Op::Release, 0, &nul(&["5"])).expect("io"), Reply::ok_nul());
    assert_eq!(introduced(&mut dom0, 5), ok("F\0"));
}

#[test]
fn a_hundred_guests_with_transactions_and_watches_beside_dom0_tools() {
    const N: u16 = 100;
    let d = Daemon::start(&[]);
    let mut dom0 = d.dom0();
    let guests: Vec<SimGuest> = (1..=N).map(|i| d.guest(&mut dom0, i)).collect();
    let barrier = Arc::new(Barrier::new(usize::from(N) + 1));
    let threads: Vec<_> = guests
        .into_iter()
        .map(|mut g| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let id = g.domid();
                assert_eq!(g.request(Op::Watch, 0, &nul(&["ping", "p"])).expect("io"), Reply::ok_nul());
                assert_eq!(g.next_event(T).expect("io"), event("ping", "p"));
                barrier.wait();
                for round in 0..5 {
                    loop {
                        let tx = g.request(Op::TransactionStart, 0, b"\0").expect("io");
                        let tx: u32 = std::str::from_utf8(tx.ok().expect("tx id"))
                            .expect("ascii")
                            .trim_end_matches('\0')
                            .parse()
                            .expect("number");
                        for k in 0..4 {
                            let mut p = nul(&[&format!("data/{k}")]);
                            p.extend_from_slice(format!("{id}-{round}").as_bytes());
                            assert_eq!(g.request(Op::Write, tx, &p).expect("io"), Reply::ok_nul());
                        }
                        match g.request(Op::TransactionEnd, tx, b"T\0").expect("io") {
                            r if r.is_ok() => break,
                            r => assert_eq!(r, err("EAGAIN")),
                        }
                    }
                    assert_eq!(g.read("data/3").expect("io"), Reply::Ok(format!("{id}-{round}").into_bytes()));
                }
                // dom0 pings every guest once all are done writing.
                assert_eq!(g.next_event(T).expect("io"), event("ping", "p"));
                assert_eq!(g.read("ping").expect("io"), ok("pong"));
            })
        })
        .collect();
    // dom0 tools meanwhile, over the socket.
    barrier.wait();
    let t0 = Instant::now();
    let mut tool = d.dom0();
    for i in 0..200 {
        assert_eq!(tool.write(format!("/tool/load/{i}"), "x").expect("io"), Reply::ok_nul());
        assert_eq!(tool.read("/tool/load/0").expect("io"), ok("x"));
    }
    for i in 1..=N {
        assert_eq!(dom0.write(format!("/local/domain/{i}/ping"), "pong").expect("io"), Reply::ok_nul());
    }
    for t in threads {
        t.join().expect("guest thread");
    }
    for i in 1..=N {
        assert_eq!(
            dom0.read(format!("/local/domain/{i}/data/0")).expect("io"),
            Reply::Ok(format!("{i}-4").into_bytes())
        );
        assert_eq!(
            dom0.get_perms(format!("/local/domain/{i}/data/0")).expect("io"),
            Reply::Ok(format!("n{i}\0").into_bytes())
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(60));
}

/// Round trip of a well-behaved guest, worst case over `n` requests.
fn worst_latency(g: &mut SimGuest, n: usize) -> Duration {
    let mut worst = Duration::ZERO;
    for i in 0..n {
        let t = Instant::now();
        assert_eq!(g.write(&format!("k{}", i % 7), format!("{i}").as_bytes()).expect("io"), Reply::ok_nul());
        assert_eq!(g.read(&format!("k{}", i % 7)).expect("io"), Reply::Ok(format!("{i}").into_bytes()));
        worst = worst.max(t.elapsed());
    }
    worst
}

#[test]
fn hostile_guests_hurt_only_themselves() {
    let d = Daemon::start(&[]);
    let mut dom0 = d.dom0();
    let mut good = d.guest(&mut dom0, 2);
    let baseline = worst_latency(&mut good, 50);

    // Bad indexes: error 2, ring ignored.
    let bad_idx = d.guest(&mut dom0, 3);
    ring::store(bad_idx.page(), layout::REQ_PROD, 5000);
    bad_idx.kick();
    // Oversize length: error 3.
    let oversize = d.guest(&mut dom0, 4);
    let mut hdr = Vec::new();
    wire::encode(Op::Write, 1, 0, b"", &mut hdr);
    hdr[12..16].copy_from_slice(&5000u32.to_le_bytes());
    let mut raw = GuestRing::new(oversize.page());
    assert_eq!(raw.send(&hdr), Ok(16));
    oversize.kick();
    // Never consumes its replies, requests as much as the ring takes.
    let mut deaf = d.guest(&mut dom0, 5);
    assert_eq!(dom0.write("/local/domain/5/big", vec![b'v'; 1000]).expect("io"), Reply::ok_nul());
    assert_eq!(dom0.mkdir("/pub").expect("io"), Reply::ok_nul());
    assert_eq!(dom0.set_perms("/pub", &["n0", "r5"]).expect("io"), Reply::ok_nul());
    assert_eq!(deaf.request(Op::Watch, 0, &nul(&["/pub", "spy"])).expect("io"), Reply::ok_nul());
    assert_eq!(deaf.next_event(T).expect("io"), event("/pub", "spy"));
    let mut deaf_ring = GuestRing::new(deaf.page());
    let mut req = Vec::new();
    for i in 0..40 {
        wire::encode(Op::Read, 100 + i, 0, b"big\0", &mut req);
    }
    assert_eq!(req.len(), 800);
    let start_cons = ring::load(deaf.page(), layout::REQ_CONS);
    assert_eq!(deaf_ring.send(&req), Ok(800));
    deaf.kick();
    // A flooder: as fast as it can, consuming replies.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooder = d.guest(&mut dom0, 6);
    let stop2 = stop.clone();
    let flood = std::thread::spawn(move || {
        let mut n = 0u32;
        while !stop2.load(Ordering::Relaxed) {
            let ids: Vec<u32> = (0..20).map(|_| flooder.send(Op::Write, 0, b"f\0x").expect("io")).collect();
            for id in ids {
                assert!(Reply::from_message(&flooder.wait_reply(id).expect("io")).is_ok());
            }
            n += 20;
        }
        n
    });

    let start = Instant::now();
    while (bad_idx.server_error() == 0 || oversize.server_error() == 0) && start.elapsed() < T {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(bad_idx.server_error(), ring::error_code::RINGIDX);
    assert_eq!(oversize.server_error(), ring::error_code::PROTO);

    // The good guest and dom0 are served with bounded latency while the
    // deaf guest's queue is full and the flooder floods.
    let under_attack = worst_latency(&mut good, 200);
    for i in 0..50 {
        assert_eq!(dom0.write(format!("/pub/d{i}"), "v").expect("io"), Reply::ok_nul());
    }
    stop.store(true, Ordering::Relaxed);
    let flooded = flood.join().expect("flooder");
    assert!(flooded >= 20, "the flooder was served too");
    assert!(
        under_attack < Duration::from_secs(1) + baseline * 20,
        "worst round trip {under_attack:?} (baseline {baseline:?})"
    );

    // The deaf guest: read no further than its outstanding quota (20)
    // plus what fits the ring, and keeps the rest of its requests there.
    let taken = ring::load(deaf.page(), layout::REQ_CONS).wrapping_sub(start_cons);
    assert!(taken < 600, "requests stay unread while replies are unconsumed ({taken} of 800 bytes taken)");
    // Once it reads, everything arrives, in order, nothing lost.
    let (mut got, mut events) = (Vec::new(), 0);
    let deadline = Instant::now() + T;
    while (got.len() < 40 || events < 50) && Instant::now() < deadline {
        let n = deaf_ring.pull().expect("consistent ring");
        if n > 0 {
            deaf.kick();
        }
        while let Some(m) = deaf_ring.next_message().expect("well-formed") {
            if m.header.msg_type != Op::WatchEvent.code() {
                assert_eq!(m.payload.len(), 1000);
                got.push(m.header.req_id);
            } else {
                events += 1;
            }
        }
        if n == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert_eq!(got, (100..140).collect::<Vec<u32>>());
    assert_eq!(events, 50, "every event for the deaf guest kept");

    // The broken domains are still introduced and can be released.
    for id in ["3", "4"] {
        assert_eq!(introduced(&mut dom0, id.parse().expect("domid")), ok("T\0"));
        assert_eq!(dom0.request(Op::Release, 0, &nul(&[id])).expect("io"), Reply::ok_nul());
    }
    assert_eq!(good.read("k0").expect("io"), ok("196"));
}
