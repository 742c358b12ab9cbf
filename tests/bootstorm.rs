//! A bootstorm on a fresh host, over the socket:
//! domains created at once by several toolstack connections, each in one
//! transaction, while `/local/domain/0/backend` does not exist yet.
//!
//! Every first transaction creates the missing levels `/local/domain/0/
//! backend`, `…/backend/vif` and `…/backend/vbd`, then writes more keys
//! below them (each creation reads the permissions of the level it is
//! created under). None of this may conflict: the guard is zero `EAGAIN`,
//! every watch event delivered exactly once to both backend watchers, and
//! the tree of serial execution (permissions, children) at the end.
//!
//! The first transaction of every creator is forked before any of them
//! commits (they meet at a barrier before `TRANSACTION_END`), so the case
//! that failed (7 `EAGAIN` with 8 creators) happens in every run; the
//! domains after those run freely.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use rxenstored_suite::harness::start_rx_or_skip;
use wire::client::Client;

/// The daemon's arguments for each run (one: the event loop is the only
/// way of serving sockets).
const MODES: [&[&str]; 1] = [&[]];
const DOMAINS: u32 = 200;
const CREATORS: usize = 8;
const WATCHERS: usize = 2;
const BACKEND: &str = "/local/domain/0/backend";
const SENTINEL: &str = "/local/domain/0/backend/done";
const DEVICES: [(&str, u32); 4] = [("vif", 0), ("vif", 1), ("vbd", 51712), ("vbd", 51728)];
const FRONTEND_KEYS: [&str; 8] =
    ["backend", "backend-id", "state", "handle", "ring-ref", "event-channel", "protocol", "feature"];
const BACKEND_KEYS: [&str; 8] = ["frontend", "frontend-id", "online", "state", "script", "mac", "bridge", "handle"];

fn ok(what: &str, r: std::io::Result<wire::client::Reply>) {
    let r = r.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(r.is_ok(), "{what}: {:?}", r.err());
}

/// The backend keys domain `d`'s transaction writes (the watchers' events).
fn backend_keys(d: u32) -> impl Iterator<Item = String> {
    DEVICES
        .into_iter()
        .flat_map(move |(class, devid)| BACKEND_KEYS.iter().map(move |k| format!("{BACKEND}/{class}/{d}/{devid}/{k}")))
}

/// Domain `d`'s transaction, as a toolstack sends it, until it commits;
/// `before_commit` runs before its first `TRANSACTION_END`. Returns the
/// number of `EAGAIN` replies.
fn create_domain(c: &mut Client, d: u32, mut before_commit: impl FnMut()) -> u32 {
    let mut retries = 0;
    loop {
        let tx = c.start_tx().unwrap_or_else(|e| panic!("domain {d}: TRANSACTION_START: {e}"));
        let home = format!("/local/domain/{d}");
        ok("MKDIR", c.mkdir_tx(tx, &home));
        for (key, value) in [("name", format!("guest-{d}")), ("vm", format!("/vm/{d}")), ("domid", d.to_string())] {
            ok("WRITE", c.write_tx(tx, format!("{home}/{key}"), value));
        }
        ok("SET_PERMS", c.set_perms_tx(tx, &home, &["n0", &format!("r{d}")]));
        let config = c.read_tx(tx, "/vm/shared/config").expect("READ");
        assert_eq!(config.ok(), Some(&b"shared"[..]), "domain {d}");
        for (class, devid) in DEVICES {
            let front = format!("{home}/device/{class}/{devid}");
            let back = format!("{BACKEND}/{class}/{d}/{devid}");
            for k in FRONTEND_KEYS {
                ok("WRITE", c.write_tx(tx, format!("{front}/{k}"), &back));
            }
            for k in BACKEND_KEYS {
                ok("WRITE", c.write_tx(tx, format!("{back}/{k}"), &front));
            }
        }
        before_commit();
        let end = c.transaction_end(tx, true).unwrap_or_else(|e| panic!("domain {d}: TRANSACTION_END: {e}"));
        match end.err() {
            None => return retries,
            Some("EAGAIN") => retries += 1,
            Some(e) => panic!("domain {d}: TRANSACTION_END: {e}"),
        }
    }
}

#[test]
fn a_bootstorm_on_a_fresh_backend_tree_gets_no_eagain_and_every_event() {
    for args in MODES {
        let Some(d) = start_rx_or_skip(args) else { return };
        let mut setup = d.connect();
        setup.set_reply_timeout(Duration::from_secs(20));
        // A host that ran domains before: then the backend tree and every
        // domain's home are removed, as the run does.
        ok("WRITE", setup.write("/vm/shared/config", "shared"));
        ok("WRITE", setup.write(format!("{BACKEND}/vif/1/0/state"), "4"));
        ok("WRITE", setup.write("/local/domain/1/name", "old"));
        ok("RM", setup.rm(BACKEND));
        ok("RM", setup.rm("/local/domain/1"));
        assert_eq!(setup.read(BACKEND).expect("READ").err(), Some("ENOENT"));

        let mut watchers: Vec<Client> = (0..WATCHERS)
            .map(|w| {
                let mut c = d.connect();
                ok("WATCH", c.watch(BACKEND, format!("w{w}")));
                let (path, _) = c.next_event(Duration::from_secs(5)).expect("the initial event");
                assert_eq!(path, BACKEND.as_bytes());
                c
            })
            .collect();

        let next = Arc::new(AtomicU32::new(1));
        let first_round = Arc::new(Barrier::new(CREATORS));
        let creators: Vec<_> = (0..CREATORS)
            .map(|_| {
                let mut c = d.connect();
                c.set_reply_timeout(Duration::from_secs(20));
                let (next, first_round) = (Arc::clone(&next), Arc::clone(&first_round));
                std::thread::spawn(move || {
                    let mut retries = 0;
                    let mut first = true;
                    loop {
                        let dom = next.fetch_add(1, Ordering::SeqCst);
                        if dom > DOMAINS {
                            return retries;
                        }
                        retries += create_domain(&mut c, dom, || {
                            if std::mem::take(&mut first) {
                                first_round.wait();
                            }
                        });
                    }
                })
            })
            .collect();
        let retries: u32 = creators.into_iter().map(|h| h.join().expect("creator thread")).sum();
        assert_eq!(retries, 0, "{args:?}: EAGAIN retries");

        ok("WRITE", setup.write(SENTINEL, "1"));
        let expected: BTreeSet<String> = (1..=DOMAINS).flat_map(backend_keys).collect();
        for (w, watcher) in watchers.iter_mut().enumerate() {
            let mut seen = BTreeSet::new();
            loop {
                let (path, token) = watcher
                    .next_event(Duration::from_secs(10))
                    .unwrap_or_else(|| panic!("{args:?}: watcher {w}: events stopped after {}", seen.len()));
                assert_eq!(token, format!("w{w}").as_bytes());
                let path = String::from_utf8(path).expect("UTF-8 path");
                if path == SENTINEL {
                    break;
                }
                assert!(seen.insert(path.clone()), "{args:?}: watcher {w}: {path} twice");
            }
            assert_eq!(seen.len(), expected.len(), "{args:?}: watcher {w}: events");
            assert!(seen == expected, "{args:?}: watcher {w}: other events than the keys written");
        }

        // The tree of serial execution: the shared levels have dom0's
        // permissions and list each domain once.
        let mut check = d.connect();
        for level in [BACKEND.to_string(), format!("{BACKEND}/vif"), format!("{BACKEND}/vbd")] {
            let perms = check.get_perms(&level).expect("GET_PERMS");
            assert_eq!(perms.ok(), Some(&b"n0\0"[..]), "{args:?}: {level}");
        }
        let names = check.directory(BACKEND).expect("DIRECTORY");
        let mut names: Vec<&[u8]> = names.ok().expect("listed").split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
        names.sort_unstable();
        assert_eq!(names, [&b"done"[..], b"vbd", b"vif"], "{args:?}");
        for class in ["vif", "vbd"] {
            let listed = check.directory(format!("{BACKEND}/{class}")).expect("DIRECTORY");
            let listed = listed.ok().expect("listed");
            assert_eq!(listed.iter().filter(|&&b| b == 0).count(), DOMAINS as usize, "{args:?}: {class}");
        }
        for dom in [1, DOMAINS / 2, DOMAINS] {
            let perms = check.get_perms(format!("/local/domain/{dom}")).expect("GET_PERMS");
            assert_eq!(perms.ok(), Some(format!("n0\0r{dom}\0").as_bytes()), "{args:?}");
        }
        assert!(d.log().lines().all(|l| !l.contains("panicked")), "{}", d.log());
    }
}
