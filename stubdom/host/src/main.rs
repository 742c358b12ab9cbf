//! Host side of the stub domain's QEMU test: simulated guests and
//! toolstacks speaking xenstore over ring pages in the `ivshmem` file
//! (`/dev/shm/NAME`) that the stub domain serves.
//!
//! Usage: `stubdom-ring-test /dev/shm/NAME [--guests N]`
//!
//! Runs, against the stub domain:
//! 1. conformance basics over a control ring (acting as the privileged
//!    domain): READ/WRITE/MKDIR/RM/DIRECTORY/GET_PERMS/SET_PERMS, error
//!    names, the §1.6 pipeline, a watch and its events, transactions
//!    (commit and abort), a 4 KiB value (replies larger than the 1 KiB
//!    ring), hundreds of pipelined requests (indexes wrap many times);
//! 2. a guest introduced on its own ring page: its home, relative paths,
//!    permissions, `@introduceDomain`/`@releaseDomain`, RELEASE removing
//!    its nodes;
//! 3. a bootstorm: every control ring creates domains in transactions that
//!    all commit at the same moment (none may fail with EAGAIN: they create
//!    different children of one parent), introduces them, each guest
//!    talks over its ring, then all are released;
//! 4. a broken guest (payload length above 4096): its ring's `error` field
//!    becomes 3 and the others keep working.
//!
//! Prints one line per check and closes with `N passed, M failed`; exit
//! status 0 only if none failed. Finally asks the stub to shut down
//! (info page word), unless `--keep-running`.
//!
//! The guests' end of each ring is the ring issue's
//! `rxenstored_core::ring::GuestRing`, the same one the daemon's simulated guests use.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use rxenstored_core::ring::RingPage;
use wire::Message;

const PAGE: usize = 4096;
const SERVER_FEATURES: usize = 2064;

// Info page (the stub's frontend.rs documents the same layout).
const INFO_MAGIC: usize = 0;
const INFO_PAGES: usize = 8;
const INFO_CONTROL_RINGS: usize = 12;
const INFO_FIRST_GUEST_PAGE: usize = 16;
const INFO_STATE: usize = 20;
const INFO_SHUTDOWN: usize = 28;
const MAGIC: u32 = u32::from_le_bytes(*b"RXSB");

// Wire codes (PROTOCOL.md §2.1).
const DIRECTORY: u32 = 1;
const READ: u32 = 2;
const GET_PERMS: u32 = 3;
const WATCH: u32 = 4;
const UNWATCH: u32 = 5;
const TRANSACTION_START: u32 = 6;
const TRANSACTION_END: u32 = 7;
const INTRODUCE: u32 = 8;
const RELEASE: u32 = 9;
const GET_DOMAIN_PATH: u32 = 10;
const WRITE: u32 = 11;
const MKDIR: u32 = 12;
const RM: u32 = 13;
const SET_PERMS: u32 = 14;
const WATCH_EVENT: u32 = 15;
const ERROR: u32 = 16;
const IS_DOMAIN_INTRODUCED: u32 = 17;

const TIMEOUT: Duration = Duration::from_secs(20);

/// The mapped shared file.
#[derive(Clone, Copy)]
struct Region {
    base: *mut u8,
    len: usize,
}

// SAFETY: the region is shared memory accessed through atomics only.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    fn map(path: &str) -> Result<Region, String> {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| format!("{path}: {e}"))?;
        let len = file.metadata().map_err(|e| e.to_string())?.len() as usize;
        // SAFETY: mapping a file we opened read-write; the mapping outlives
        // the descriptor, which is fine for MAP_SHARED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(format!("mmap {path}: {}", std::io::Error::last_os_error()));
        }
        Ok(Region { base: base.cast(), len })
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        assert!(offset + 4 <= self.len && offset % 4 == 0);
        // SAFETY: in bounds and aligned (checked); shared through atomics.
        unsafe { AtomicU32::from_ptr(self.base.add(offset).cast()) }
    }
}

/// One ring page of the mapped file.
#[derive(Clone, Copy)]
struct HostPage(std::ptr::NonNull<u8>);

// SAFETY: a 4 KiB page inside the shared mapping, which lives for the
// whole process; `rxenstored_core::ring` accesses it through atomics only.
unsafe impl RingPage for HostPage {
    fn base(&self) -> std::ptr::NonNull<u8> {
        self.0
    }
}

// SAFETY: shared memory, atomics only.
unsafe impl Send for HostPage {}

/// A simulated guest: the ring issue's `rxenstored_core::ring::GuestRing` (the
/// guest's end, as Linux's xenbus drives it) plus waiting and bookkeeping.
struct GuestRing {
    region: Region,
    page: usize,
    inner: rxenstored_core::ring::GuestRing<HostPage>,
    /// Watch events received while waiting for a reply.
    events: Vec<Message>,
    next_req: u32,
}

impl GuestRing {
    fn new(region: Region, page: usize) -> GuestRing {
        assert!((page + 1) * PAGE <= region.len);
        // SAFETY: in the mapping (checked).
        let base = std::ptr::NonNull::new(unsafe { region.base.add(page * PAGE) }).expect("mapped");
        GuestRing {
            region,
            page,
            inner: rxenstored_core::ring::GuestRing::new(HostPage(base)),
            events: Vec::new(),
            next_req: 0x100,
        }
    }

    fn w(&self, field: usize) -> &AtomicU32 {
        self.region.word(self.page * PAGE + field)
    }

    fn error_field(&self) -> u32 {
        self.inner.server_error()
    }

    /// Writes all of `bytes` into the request ring, waiting for space.
    fn send(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        let deadline = Instant::now() + TIMEOUT;
        while !bytes.is_empty() {
            let n = self.inner.send(bytes).map_err(|e| format!("page {}: {e:?}", self.page))?;
            bytes = &bytes[n..];
            if n == 0 {
                // Drain replies meanwhile so the daemon is never stuck on us.
                self.inner.pull().map_err(|e| format!("page {}: {e:?}", self.page))?;
                if Instant::now() > deadline {
                    return Err(format!("page {}: request ring full for {TIMEOUT:?}", self.page));
                }
                std::thread::yield_now();
            }
        }
        Ok(())
    }

    /// The next whole message (reply or event).
    fn next(&mut self) -> Result<Message, String> {
        let deadline = Instant::now() + TIMEOUT;
        let mut spins = 0u32;
        loop {
            if let Some(m) = self.inner.next_message().map_err(|e| format!("page {}: {e:?}", self.page))? {
                return Ok(m);
            }
            if self.inner.pull().map_err(|e| format!("page {}: {e:?}", self.page))? == 0 {
                if Instant::now() > deadline {
                    return Err(format!(
                        "page {}: no reply within {TIMEOUT:?} (error field {})",
                        self.page,
                        self.error_field()
                    ));
                }
                spins += 1;
                if spins > 1000 {
                    std::thread::sleep(Duration::from_micros(50));
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Sends a request and waits for its reply; events that arrive first
    /// are kept in `events`.
    fn request(&mut self, op: u32, tx: u32, payload: &[u8]) -> Result<Message, String> {
        let req_id = self.send_only(op, tx, payload)?;
        self.reply_to(req_id)
    }

    fn send_only(&mut self, op: u32, tx: u32, payload: &[u8]) -> Result<u32, String> {
        self.next_req += 1;
        let mut bytes = Vec::new();
        wire::encode(op, self.next_req, tx, payload, &mut bytes);
        self.send(&bytes)?;
        Ok(self.next_req)
    }

    fn reply_to(&mut self, req_id: u32) -> Result<Message, String> {
        loop {
            let m = self.next()?;
            if m.header.msg_type == WATCH_EVENT {
                self.events.push(m);
                continue;
            }
            if m.header.req_id != req_id {
                return Err(format!("reply for request {} while waiting for {req_id}", m.header.req_id));
            }
            return Ok(m);
        }
    }

    /// Waits for a watch event if none is queued.
    fn event(&mut self) -> Result<Message, String> {
        if !self.events.is_empty() {
            return Ok(self.events.remove(0));
        }
        let m = self.next()?;
        if m.header.msg_type != WATCH_EVENT {
            return Err(format!("expected a watch event, got type {}", m.header.msg_type));
        }
        Ok(m)
    }
}

fn show(m: &Message) -> String {
    let name = match m.header.msg_type {
        ERROR => "ERROR".to_string(),
        WATCH_EVENT => "EVENT".to_string(),
        t => format!("type {t}"),
    };
    format!("{name} {:?}", String::from_utf8_lossy(&m.payload))
}

/// Results of the run.
struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    fn check(&mut self, name: &str, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.passed += 1;
                println!("PASS {name}");
            }
            Err(e) => {
                self.failed += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }
}

/// Expects a reply of type `ty` with exactly `payload`.
fn expect(m: Result<Message, String>, ty: u32, payload: &[u8]) -> Result<Message, String> {
    let m = m?;
    if m.header.msg_type == ty && m.payload == payload {
        Ok(m)
    } else {
        Err(format!("got {}, want type {ty} {:?}", show(&m), String::from_utf8_lossy(payload)))
    }
}

fn ok(r: Result<Message, String>, op: u32) -> Result<(), String> {
    expect(r, op, b"OK\0").map(|_| ())
}

fn err(r: Result<Message, String>, name: &str) -> Result<(), String> {
    let mut want = name.as_bytes().to_vec();
    want.push(0);
    expect(r, ERROR, &want).map(|_| ())
}

fn tx_start(c: &mut GuestRing) -> Result<u32, String> {
    let m = c.request(TRANSACTION_START, 0, b"\0")?;
    if m.header.msg_type != TRANSACTION_START {
        return Err(format!("TRANSACTION_START: {}", show(&m)));
    }
    let s = String::from_utf8_lossy(m.payload.strip_suffix(b"\0").unwrap_or(&m.payload)).into_owned();
    s.parse().map_err(|_| format!("transaction id {s:?}"))
}

fn expect_event(c: &mut GuestRing, path: &str, token: &str) -> Result<(), String> {
    let want = format!("{path}\0{token}\0");
    expect(c.event(), WATCH_EVENT, want.as_bytes()).map(|_| ())
}

fn conformance(r: &mut Report, c: &mut GuestRing) {
    r.check("server features advertised", {
        let f = c.w(SERVER_FEATURES).load(Ordering::Acquire);
        if f & 2 != 0 { Ok(()) } else { Err(format!("server_features {f:#x} lacks ERROR (2)")) }
    });
    r.check("READ missing node: ENOENT", err(c.request(READ, 0, b"/rxs/none\0"), "ENOENT"));
    r.check(
        "WRITE then READ",
        ok(c.request(WRITE, 0, b"/rxs/a\0value-a"), WRITE)
            .and_then(|()| expect(c.request(READ, 0, b"/rxs/a\0"), READ, b"value-a").map(|_| ())),
    );
    r.check(
        "MKDIR and DIRECTORY in creation order",
        ok(c.request(MKDIR, 0, b"/rxs/d\0"), MKDIR)
            .and_then(|()| expect(c.request(DIRECTORY, 0, b"/rxs\0"), DIRECTORY, b"a\0d\0").map(|_| ())),
    );
    r.check("MKDIR existing node: OK", ok(c.request(MKDIR, 0, b"/rxs/d\0"), MKDIR));
    r.check("GET_PERMS default", expect(c.request(GET_PERMS, 0, b"/rxs/a\0"), GET_PERMS, b"n0\0").map(|_| ()));
    r.check(
        "SET_PERMS then GET_PERMS",
        ok(c.request(SET_PERMS, 0, b"/rxs/a\0n0\0r5\0"), SET_PERMS)
            .and_then(|()| expect(c.request(GET_PERMS, 0, b"/rxs/a\0"), GET_PERMS, b"n0\0r5\0").map(|_| ())),
    );
    r.check(
        "RM then DIRECTORY",
        ok(c.request(RM, 0, b"/rxs/d\0"), RM)
            .and_then(|()| expect(c.request(DIRECTORY, 0, b"/rxs\0"), DIRECTORY, b"a\0").map(|_| ())),
    );
    r.check("RM missing node: ENOENT", err(c.request(RM, 0, b"/rxs/none/deeper\0"), "ENOENT"));
    r.check(
        "GET_DOMAIN_PATH",
        expect(c.request(GET_DOMAIN_PATH, 0, b"7\0"), GET_DOMAIN_PATH, b"/local/domain/7\0").map(|_| ()),
    );
    r.check("unknown operation: ENOSYS", err(c.request(99, 0, b""), "ENOSYS"));
    r.check("WATCH_EVENT as a request: ENOSYS", err(c.request(WATCH_EVENT, 0, b""), "ENOSYS"));
    r.check("unknown transaction: ENOENT", err(c.request(READ, 4242, b"/rxs/a\0"), "ENOENT"));
    r.check("invalid path: EINVAL", err(c.request(WRITE, 0, b"/rxs/bad//path\0x"), "EINVAL"));
    r.check(
        "IS_DOMAIN_INTRODUCED 0",
        expect(c.request(IS_DOMAIN_INTRODUCED, 0, b"0\0"), IS_DOMAIN_INTRODUCED, b"T\0").map(|_| ()),
    );

    r.check(
        "WATCH: OK, then the initial event",
        (|| {
            ok(c.request(WATCH, 0, b"/rxs\0w1\0"), WATCH)?;
            expect_event(c, "/rxs", "w1")
        })(),
    );
    r.check(
        "WRITE fires the watch before its reply",
        (|| {
            let id = c.send_only(WRITE, 0, b"/rxs/b\0x")?;
            expect(c.next(), WATCH_EVENT, b"/rxs/b\0w1\0")?;
            expect(c.reply_to(id), WRITE, b"OK\0").map(|_| ())
        })(),
    );

    r.check(
        "transaction commit: invisible outside until END",
        (|| {
            let tx = tx_start(c)?;
            ok(c.request(WRITE, tx, b"/rxs/t\0in"), WRITE)?;
            expect(c.request(READ, tx, b"/rxs/t\0"), READ, b"in")?;
            err(c.request(READ, 0, b"/rxs/t\0"), "ENOENT")?;
            ok(c.request(TRANSACTION_END, tx, b"T\0"), TRANSACTION_END)?;
            expect_event(c, "/rxs/t", "w1")?;
            expect(c.request(READ, 0, b"/rxs/t\0"), READ, b"in").map(|_| ())
        })(),
    );
    r.check(
        "transaction abort: nothing published",
        (|| {
            let tx = tx_start(c)?;
            ok(c.request(WRITE, tx, b"/rxs/u\0no"), WRITE)?;
            ok(c.request(TRANSACTION_END, tx, b"F\0"), TRANSACTION_END)?;
            err(c.request(READ, 0, b"/rxs/u\0"), "ENOENT")?;
            err(c.request(READ, tx, b"/rxs/u\0"), "ENOENT")
        })(),
    );
    r.check("UNWATCH", ok(c.request(UNWATCH, 0, b"/rxs\0w1\0"), UNWATCH));
    r.check(
        "SET_PERMS inside a transaction is committed",
        (|| {
            let tx = tx_start(c)?;
            ok(c.request(MKDIR, tx, b"/rxs/tp\0"), MKDIR)?;
            ok(c.request(SET_PERMS, tx, b"/rxs/tp\0n3\0r0\0"), SET_PERMS)?;
            expect(c.request(GET_PERMS, tx, b"/rxs/tp\0"), GET_PERMS, b"n3\0r0\0")?;
            ok(c.request(WRITE, tx, b"/rxs/tp/child\0v"), WRITE)?;
            ok(c.request(TRANSACTION_END, tx, b"T\0"), TRANSACTION_END)?;
            expect(c.request(GET_PERMS, 0, b"/rxs/tp\0"), GET_PERMS, b"n3\0r0\0")?;
            expect(c.request(GET_PERMS, 0, b"/rxs/tp/child\0"), GET_PERMS, b"n3\0r0\0").map(|_| ())
        })(),
    );

    r.check(
        "4096-byte payload, reply four times the ring size",
        (|| {
            let mut value = Vec::new();
            let path = b"/rxs/big\0";
            while value.len() + path.len() < 4096 {
                value.push(b'a' + (value.len() % 26) as u8);
            }
            let mut payload = path.to_vec();
            payload.extend_from_slice(&value);
            ok(c.request(WRITE, 0, &payload), WRITE)?;
            expect(c.request(READ, 0, b"/rxs/big\0"), READ, &value).map(|_| ())
        })(),
    );
    r.check(
        "300 pipelined requests, indexes wrap",
        (|| {
            let mut ids = Vec::new();
            for i in 0..300 {
                let payload = format!("/rxs/p/{}\0{}", i % 10, i);
                ids.push(c.send_only(WRITE, 0, payload.as_bytes())?);
            }
            for id in ids {
                expect(c.reply_to(id), WRITE, b"OK\0")?;
            }
            expect(c.request(READ, 0, b"/rxs/p/9\0"), READ, b"299").map(|_| ())
        })(),
    );
    r.check(
        "RM subtree",
        ok(c.request(RM, 0, b"/rxs\0"), RM).and_then(|()| err(c.request(READ, 0, b"/rxs/a\0"), "ENOENT")),
    );
}

/// Pages for guest domains: page = base + domid.
fn guest_page(first_guest: usize, domid: u32) -> usize {
    first_guest + domid as usize
}

fn introduce(c: &mut GuestRing, domid: u32, page: usize) -> Result<(), String> {
    let payload = format!("{domid}\0{page}\0{}\0", 1000 + domid);
    ok(c.request(INTRODUCE, 0, payload.as_bytes()), INTRODUCE)
}

fn guest_lifecycle(r: &mut Report, region: Region, c: &mut GuestRing, first_guest: usize) {
    let domid = 200u32;
    let page = guest_page(first_guest, domid);
    let home = format!("/local/domain/{domid}");
    r.check(
        "toolstack sets up a guest's home",
        (|| {
            ok(c.request(WATCH, 0, b"@introduceDomain\0intro\0"), WATCH)?;
            expect_event(c, "@introduceDomain", "intro")?;
            ok(c.request(WATCH, 0, b"@releaseDomain\0rel\0"), WATCH)?;
            expect_event(c, "@releaseDomain", "rel")?;
            ok(c.request(MKDIR, 0, format!("{home}\0").as_bytes()), MKDIR)?;
            ok(c.request(SET_PERMS, 0, format!("{home}\0n{domid}\0").as_bytes()), SET_PERMS)?;
            ok(c.request(WRITE, 0, format!("{home}/name\0guest-{domid}").as_bytes()), WRITE)
        })(),
    );
    r.check(
        "INTRODUCE fires @introduceDomain",
        (|| {
            introduce(c, domid, page)?;
            expect_event(c, "@introduceDomain", "intro")?;
            expect(c.request(IS_DOMAIN_INTRODUCED, 0, format!("{domid}\0").as_bytes()), IS_DOMAIN_INTRODUCED, b"T\0")
                .map(|_| ())
        })(),
    );
    let mut g = GuestRing::new(region, page);
    r.check(
        "guest reads its name (relative path)",
        expect(g.request(READ, 0, b"name\0"), READ, format!("guest-{domid}").as_bytes()).map(|_| ()),
    );
    r.check("guest writes in its home", ok(g.request(WRITE, 0, b"device/vif/0/state\04"), WRITE));
    r.check(
        "guest may not write outside its home: EACCES",
        err(g.request(WRITE, 0, b"/local/domain/0/x\0y"), "EACCES"),
    );
    r.check("guest may not INTRODUCE: EACCES", err(g.request(INTRODUCE, 0, b"9\09\09\0"), "EACCES"));
    r.check(
        "guest watch fires on the toolstack's write",
        (|| {
            ok(g.request(WATCH, 0, b"control\0ctl\0"), WATCH)?;
            expect_event(&mut g, "control", "ctl")?;
            ok(c.request(WRITE, 0, format!("{home}/control/shutdown\0poweroff").as_bytes()), WRITE)?;
            expect_event(&mut g, "control/shutdown", "ctl")
        })(),
    );
    r.check(
        "toolstack reads what the guest wrote",
        expect(c.request(READ, 0, format!("{home}/device/vif/0/state\0").as_bytes()), READ, b"4").map(|_| ()),
    );
    r.check(
        "RELEASE fires @releaseDomain and removes the guest's nodes",
        (|| {
            ok(c.request(RELEASE, 0, format!("{domid}\0").as_bytes()), RELEASE)?;
            expect_event(c, "@releaseDomain", "rel")?;
            err(c.request(READ, 0, format!("{home}/name\0").as_bytes()), "ENOENT")?;
            expect(c.request(IS_DOMAIN_INTRODUCED, 0, format!("{domid}\0").as_bytes()), IS_DOMAIN_INTRODUCED, b"F\0")?;
            ok(c.request(UNWATCH, 0, b"@introduceDomain\0intro\0"), UNWATCH)?;
            ok(c.request(UNWATCH, 0, b"@releaseDomain\0rel\0"), UNWATCH)
        })(),
    );
}

/// One toolstack of the bootstorm: creates `per` domains, all commits of a
/// round at the same moment across toolstacks.
fn toolstack(
    region: Region,
    ring_page: usize,
    first_guest: usize,
    ids: Vec<u32>,
    barrier: Arc<Barrier>,
) -> Result<u32, String> {
    let mut c = GuestRing::new(region, ring_page);
    let mut eagain = 0;
    for &domid in &ids {
        let home = format!("/local/domain/{domid}");
        let tx = tx_start(&mut c)?;
        // The home first, owned by the guest: what is created below inherits.
        ok(c.request(MKDIR, tx, format!("{home}\0").as_bytes()), MKDIR)?;
        ok(c.request(SET_PERMS, tx, format!("{home}\0n{domid}\0r0\0").as_bytes()), SET_PERMS)?;
        let mut w = |path: String, value: &str| -> Result<(), String> {
            let mut p = path.into_bytes();
            p.push(0);
            p.extend_from_slice(value.as_bytes());
            ok(c.request(WRITE, tx, &p), WRITE)
        };
        w(format!("{home}/name"), &format!("storm-{domid}"))?;
        w(format!("{home}/domid"), &domid.to_string())?;
        w(format!("{home}/device/vif/0/backend"), &format!("/local/domain/0/backend/vif/{domid}/0"))?;
        w(format!("{home}/device/vif/0/state"), "1")?;
        w(format!("/local/domain/0/backend/vif/{domid}/0/frontend"), &format!("{home}/device/vif/0"))?;
        w(format!("/local/domain/0/backend/vif/{domid}/0/state"), "1")?;
        w(format!("/vm/storm-{domid}/uuid"), &format!("{domid:08x}"))?;
        // The guest must be able to read the backend's state to see its events (§6.7).
        ok(
            c.request(SET_PERMS, tx, format!("/local/domain/0/backend/vif/{domid}/0/state\0n0\0r{domid}\0").as_bytes()),
            SET_PERMS,
        )?;
        barrier.wait();
        let m = c.request(TRANSACTION_END, tx, b"T\0")?;
        if m.header.msg_type == ERROR && m.payload == b"EAGAIN\0" {
            eagain += 1;
            continue;
        }
        ok(Ok(m), TRANSACTION_END)?;
        introduce(&mut c, domid, guest_page(first_guest, domid))?;
    }
    // Each guest: read its name, connect its "device", as a frontend does.
    for &domid in &ids {
        let mut g = GuestRing::new(region, guest_page(first_guest, domid));
        expect(g.request(READ, 0, b"name\0"), READ, format!("storm-{domid}").as_bytes())?;
        ok(g.request(WATCH, 0, format!("/local/domain/0/backend/vif/{domid}/0/state\0be\0").as_bytes()), WATCH)?;
        expect_event(&mut g, &format!("/local/domain/0/backend/vif/{domid}/0/state"), "be")?;
        ok(g.request(WRITE, 0, b"device/vif/0/state\04"), WRITE)?;
        ok(c.request(WRITE, 0, format!("/local/domain/0/backend/vif/{domid}/0/state\04").as_bytes()), WRITE)?;
        expect_event(&mut g, &format!("/local/domain/0/backend/vif/{domid}/0/state"), "be")?;
        expect(c.request(READ, 0, format!("/local/domain/{domid}/device/vif/0/state\0").as_bytes()), READ, b"4")?;
    }
    for &domid in &ids {
        ok(c.request(RELEASE, 0, format!("{domid}\0").as_bytes()), RELEASE)?;
        ok(c.request(RM, 0, format!("/local/domain/0/backend/vif/{domid}\0").as_bytes()), RM)?;
        ok(c.request(RM, 0, format!("/vm/storm-{domid}\0").as_bytes()), RM)?;
    }
    Ok(eagain)
}

fn bootstorm(r: &mut Report, region: Region, control: &[usize], first_guest: usize, per: u32) {
    let barrier = Arc::new(Barrier::new(control.len()));
    let start = Instant::now();
    let handles: Vec<_> = control
        .iter()
        .enumerate()
        .map(|(k, &page)| {
            let ids: Vec<u32> = (0..per).map(|i| 1 + k as u32 * per + i).collect();
            let barrier = barrier.clone();
            std::thread::spawn(move || toolstack(region, page, first_guest, ids, barrier))
        })
        .collect();
    let mut eagain = 0;
    let mut errors = String::new();
    for h in handles {
        match h.join() {
            Ok(Ok(n)) => eagain += n,
            Ok(Err(e)) => {
                let _ = write!(errors, "{e}; ");
            }
            Err(_) => errors.push_str("a toolstack thread panicked; "),
        }
    }
    let total = per * control.len() as u32;
    let elapsed = start.elapsed();
    r.check(
        &format!(
            "bootstorm: {} toolstacks x {per} domains, concurrent commits, guests connect, all released",
            control.len()
        ),
        if errors.is_empty() { Ok(()) } else { Err(errors) },
    );
    r.check(
        "bootstorm: no transaction failed with EAGAIN",
        if eagain == 0 { Ok(()) } else { Err(format!("{eagain} EAGAIN")) },
    );
    println!(
        "bootstorm: {total} domains in {:.2} s ({:.1} domains/s under QEMU TCG)",
        elapsed.as_secs_f64(),
        f64::from(total) / elapsed.as_secs_f64()
    );
}

fn introduce_burst(r: &mut Report, region: Region, c: &mut GuestRing, first_guest: usize) {
    r.check(
        "three INTRODUCEs in one burst: every ring is served",
        (|| {
            let domids = [210u32, 211, 212];
            let mut ids = Vec::new();
            for d in domids {
                ids.push(c.send_only(
                    INTRODUCE,
                    0,
                    format!("{d}\0{}\0{}\0", guest_page(first_guest, d), 1000 + d).as_bytes(),
                )?);
            }
            for id in ids {
                expect(c.reply_to(id), INTRODUCE, b"OK\0")?;
            }
            for d in domids {
                let mut g = GuestRing::new(region, guest_page(first_guest, d));
                expect(
                    g.request(GET_DOMAIN_PATH, 0, format!("{d}\0").as_bytes()),
                    GET_DOMAIN_PATH,
                    format!("/local/domain/{d}\0").as_bytes(),
                )?;
            }
            for d in domids {
                ok(c.request(RELEASE, 0, format!("{d}\0").as_bytes()), RELEASE)?;
            }
            Ok(())
        })(),
    );
}

fn broken_guest(r: &mut Report, region: Region, c: &mut GuestRing, first_guest: usize) {
    let domid = 250u32;
    let page = guest_page(first_guest, domid);
    r.check(
        "broken guest: oversize length sets error 3, others unaffected",
        (|| {
            introduce(c, domid, page)?;
            let mut g = GuestRing::new(region, page);
            err(g.request(WRITE, 0, b"/tool/x\0y"), "EACCES")?;
            let mut bad = Vec::new();
            for word in [READ, 1, 0, 4097] {
                bad.extend_from_slice(&u32::to_le_bytes(word));
            }
            g.send(&bad)?;
            let deadline = Instant::now() + TIMEOUT;
            while g.error_field() != 3 {
                if Instant::now() > deadline {
                    return Err(format!("error field {}", g.error_field()));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            expect(c.request(GET_DOMAIN_PATH, 0, b"1\0"), GET_DOMAIN_PATH, b"/local/domain/1\0")?;
            ok(c.request(RELEASE, 0, format!("{domid}\0").as_bytes()), RELEASE)
        })(),
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: stubdom-ring-test /dev/shm/NAME [--guests-per-toolstack N] [--keep-running]");
        std::process::exit(2);
    };
    let mut per = 6u32;
    let mut keep_running = false;
    let mut toolstacks = usize::MAX;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--guests-per-toolstack" => per = args.next().and_then(|v| v.parse().ok()).unwrap_or(per),
            "--keep-running" => keep_running = true,
            "--toolstacks" => toolstacks = args.next().and_then(|v| v.parse().ok()).unwrap_or(toolstacks),
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let region = match Region::map(&path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stubdom-ring-test: {e}");
            std::process::exit(2);
        }
    };
    let deadline = Instant::now() + TIMEOUT;
    while region.word(INFO_MAGIC).load(Ordering::Acquire) != MAGIC
        || region.word(INFO_STATE).load(Ordering::Acquire) != 1
    {
        if Instant::now() > deadline {
            eprintln!("stubdom-ring-test: the stub domain never marked the region ready");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let pages = region.word(INFO_PAGES).load(Ordering::Relaxed) as usize;
    let controls = region.word(INFO_CONTROL_RINGS).load(Ordering::Relaxed) as usize;
    let first_guest = region.word(INFO_FIRST_GUEST_PAGE).load(Ordering::Relaxed) as usize;
    println!("region: {pages} pages, {controls} control rings, guest pages from {first_guest}");
    let control: Vec<usize> = (1..=controls.min(toolstacks)).collect();
    assert!(guest_page(first_guest, 250) < pages, "region too small for the test's domids");

    let mut r = Report { passed: 0, failed: 0 };
    let t = Instant::now();
    let mut c = GuestRing::new(region, control[0]);
    conformance(&mut r, &mut c);
    println!("conformance: {:.2} s", t.elapsed().as_secs_f64());
    guest_lifecycle(&mut r, region, &mut c, first_guest);
    introduce_burst(&mut r, region, &mut c, first_guest);
    drop(c);
    bootstorm(&mut r, region, &control, first_guest, per);
    let mut c = GuestRing::new(region, control[0]);
    broken_guest(&mut r, region, &mut c, first_guest);

    println!("{} passed, {} failed", r.passed, r.failed);
    if !keep_running {
        region.word(INFO_SHUTDOWN).store(1, Ordering::Release);
    }
    std::process::exit(if r.failed == 0 { 0 } else { 1 });
}
