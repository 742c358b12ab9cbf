//! Simulated guests: rings in shared files, event channels as FIFOs, so
//! that another process (a test, `xs-sim-guest`) can play a Xen guest
//! without a hypervisor.
//!
//! # The simulation directory
//!
//! The daemon runs with `--sim-rings DIR`. Domain `D` is made of files in
//! `DIR`, all created by the guest side ([`SimGuest::create`]):
//!
//! | file | what it stands for |
//! | --- | --- |
//! | `D.ring` | the 4 KiB ring page (grant reference 1); the domain *exists* while this file does |
//! | `D.to-store` | FIFO: a byte written is an event on the daemon's port for `D` |
//! | `D.to-guest` | FIFO: a byte written is an event on the guest's port |
//! | `D.shutdown` | present: the domain is shut down (not yet dying) |
//!
//! INTRODUCE(D, gfn, port) maps `D.ring` and opens both FIFOs (read/write,
//! non-blocking, so neither side ever waits for the other to open them);
//! the port is recorded, nothing more. Removing `D.ring` kills the domain
//! and creating `D.shutdown` shuts it down: the daemon watches `DIR` with
//! inotify: a ring removed or a shutdown file created is `VIRQ_DOM_EXC`. The daemon
//! polls a single descriptor, an epoll set over the `to-store` FIFOs and
//! the inotify descriptor, as it polls `/dev/xen/evtchn` under Xen.
//!
//! A guest created by [`SimGuest::create`] starts with `connection` = 1
//! (reconnect requested, as Xen leaves dom0less guests) and sends nothing
//! until the daemon's INTRODUCE writes 0, so nothing it sends can be lost
//! to INTRODUCE's index reset.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engine::DomId;
use rxenstored_core::ring::{self, GuestRing, Ring, RingIo, layout};
use rxenstored_core::{ConnId, DomainState, Error, Platform, RingAttach, RingStart};
use wire::Op;
use wire::client::Reply;

use crate::os::{self, Epoll, MappedPage};

/// The epoll tag of the inotify descriptor (ring connections use their id).
const DOM_EXC: u64 = u64::MAX;

fn ring_file(dir: &Path, domid: DomId) -> PathBuf {
    dir.join(format!("{}.ring", domid.0))
}

fn fifo(dir: &Path, domid: DomId, to: &str) -> PathBuf {
    dir.join(format!("{}.to-{to}", domid.0))
}

fn shutdown_file(dir: &Path, domid: DomId) -> PathBuf {
    dir.join(format!("{}.shutdown", domid.0))
}

/// Opens a FIFO read/write and non-blocking: never blocks on open, never
/// sees end of file.
fn open_fifo(path: &Path) -> io::Result<File> {
    if !fs::metadata(path)?.file_type().is_fifo() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a FIFO", path.display())));
    }
    OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(path)
}

fn map_file(path: &Path) -> io::Result<MappedPage> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    if file.metadata()?.len() < ring::PAGE_SIZE as u64 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} is shorter than a page", path.display())));
    }
    MappedPage::map(file.as_fd(), 0)
}

#[derive(Debug)]
struct SimRing {
    ring: Ring<MappedPage>,
    to_store: File,
    to_guest: File,
}

/// The daemon's side of the simulation (see the module documentation).
#[derive(Debug)]
pub struct SimPlatform {
    dir: PathBuf,
    epoll: Epoll,
    _inotify: OwnedFd,
    rings: HashMap<ConnId, SimRing>,
    /// The control domain: exists without files.
    control: DomId,
}

impl SimPlatform {
    /// Serves the guests whose files appear in `dir` (created if needed);
    /// `control` (the daemon's own domain) always exists.
    pub fn new(dir: impl Into<PathBuf>, control: DomId) -> io::Result<SimPlatform> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let epoll = Epoll::new()?;
        // SAFETY: plain system call.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just got and own.
        let inotify = unsafe { OwnedFd::from_raw_fd(fd) };
        let cdir =
            CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mask = libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_MOVED_TO;
        // SAFETY: a NUL-terminated path and an inotify descriptor.
        if unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), cdir.as_ptr(), mask) } < 0 {
            return Err(io::Error::last_os_error());
        }
        epoll.add(inotify.as_raw_fd(), DOM_EXC)?;
        Ok(SimPlatform { dir, epoll, _inotify: inotify, rings: HashMap::new(), control })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads every queued inotify event; true if one was a domain
    /// exception: a `D.ring` removed (the domain died) or a `D.shutdown`
    /// created. Guests being created (their FIFOs, the ring renamed into
    /// place) are not, as Xen raises no VIRQ_DOM_EXC for a new domain; a
    /// queue overflow is treated as one so that nothing is missed.
    fn drain_inotify(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut dom_exc = false;
        loop {
            // SAFETY: reading into a buffer we own.
            let n = unsafe { libc::read(self._inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(n) = usize::try_from(n) else { return dom_exc };
            if n == 0 {
                return dom_exc;
            }
            dom_exc |= inotify_events(&buf[..n]).any(|(mask, name)| is_dom_exc(mask, name));
        }
    }
}

/// `(mask, name)` of each `struct inotify_event` in `buf` (the kernel
/// writes whole events only); stops at anything malformed.
fn inotify_events(buf: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    const HEADER: usize = 16; // wd, mask, cookie, len: four 32-bit fields
    let mut rest = buf;
    std::iter::from_fn(move || {
        let header = rest.get(..HEADER)?;
        let field = |i: usize| u32::from_ne_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (mask, len) = (field(4), field(12) as usize);
        let name = rest.get(HEADER..HEADER + len)?;
        rest = &rest[HEADER + len..];
        // The name is NUL-padded to an alignment boundary.
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        Some((mask, &name[..end]))
    })
}

fn is_dom_exc(mask: u32, name: &[u8]) -> bool {
    if mask & libc::IN_Q_OVERFLOW != 0 {
        return true;
    }
    let gone = mask & (libc::IN_DELETE | libc::IN_MOVED_FROM) != 0;
    let came = mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0;
    (gone && name.ends_with(b".ring") && !name.starts_with(b".")) || (came && name.ends_with(b".shutdown"))
}

impl Platform for SimPlatform {
    fn attach(&mut self, ring: RingAttach) -> Result<(), Error> {
        let RingAttach { conn, domid, features, start, .. } = ring;
        let open = || -> io::Result<SimRing> {
            let page = map_file(&ring_file(&self.dir, domid))?;
            let to_store = open_fifo(&fifo(&self.dir, domid, "store"))?;
            let to_guest = open_fifo(&fifo(&self.dir, domid, "guest"))?;
            Ok(SimRing { ring: Ring::new(page, features), to_store, to_guest })
        };
        // C turns mapping failures into EINVAL (§8.1).
        let mut sim = open().map_err(|_| Error::BadRequest)?;
        self.epoll.add(sim.to_store.as_raw_fd(), conn.0).map_err(|_| Error::BadRequest)?;
        match start {
            RingStart::Reset => drop(sim.ring.reset()),
            RingStart::Resume => sim.ring.resume(),
        }
        // Always kick: the guest may wait for `connection` to become 0, or
        // for an answer to what it queued.
        os::kick(&sim.to_guest);
        self.rings.insert(conn, sim);
        Ok(())
    }

    fn reattach(&mut self, conn: ConnId, domid: DomId, _port: u32, features: u32) -> Result<(), Error> {
        let open = || -> io::Result<SimRing> {
            let page = map_file(&ring_file(&self.dir, domid))?;
            let to_store = open_fifo(&fifo(&self.dir, domid, "store"))?;
            let to_guest = open_fifo(&fifo(&self.dir, domid, "guest"))?;
            Ok(SimRing { ring: Ring::new(page, features), to_store, to_guest })
        };
        let sim = open().map_err(|_| Error::BadRequest)?;
        self.epoll.add(sim.to_store.as_raw_fd(), conn.0).map_err(|_| Error::BadRequest)?;
        // No reset: the page carries on. A kick makes the guest look again.
        os::kick(&sim.to_guest);
        self.rings.insert(conn, sim);
        Ok(())
    }

    fn live_update_rings(&self) -> bool {
        true
    }

    fn rebind(&mut self, conn: ConnId, _domid: DomId, _port: u32) -> Result<(), Error> {
        if let Some(sim) = self.rings.get_mut(&conn) {
            sim.ring.reset();
            os::drain(&mut sim.to_store);
            os::kick(&sim.to_guest);
        }
        Ok(())
    }

    fn detach(&mut self, conn: ConnId, _domid: DomId) {
        if let Some(sim) = self.rings.remove(&conn) {
            self.epoll.remove(sim.to_store.as_raw_fd());
        }
    }

    fn domain_exists(&self, domid: DomId) -> bool {
        domid == self.control || ring_file(&self.dir, domid).exists()
    }

    fn domain_state(&mut self, domid: DomId) -> DomainState {
        if domid == self.control {
            DomainState::Running
        } else if !ring_file(&self.dir, domid).exists() {
            DomainState::Gone
        } else if shutdown_file(&self.dir, domid).exists() {
            DomainState::Shutdown
        } else {
            DomainState::Running
        }
    }

    fn ring(&mut self, conn: ConnId) -> Option<&mut dyn RingIo> {
        self.rings.get_mut(&conn).map(|s| &mut s.ring as &mut dyn RingIo)
    }

    fn notify(&mut self, conn: ConnId) {
        if let Some(sim) = self.rings.get_mut(&conn) {
            os::kick(&sim.to_guest);
        }
    }

    fn event_fd(&self) -> Option<i32> {
        Some(self.epoll.raw())
    }

    fn pending(&mut self, fired: &mut Vec<ConnId>) -> bool {
        let mut dom_exc = false;
        let mut tags = Vec::new();
        loop {
            tags.clear();
            if self.epoll.ready(&mut tags).is_err() {
                return dom_exc;
            }
            let mut any = false;
            for &tag in &tags {
                if tag == DOM_EXC {
                    dom_exc |= self.drain_inotify();
                    any = true;
                } else if let Some(sim) = self.rings.get_mut(&ConnId(tag))
                    && os::drain(&mut sim.to_store)
                {
                    any = true;
                    if !fired.contains(&ConnId(tag)) {
                        fired.push(ConnId(tag));
                    }
                }
            }
            if !any {
                return dom_exc;
            }
        }
    }
}

/// A simulated guest: the guest side of the files above, speaking the
/// protocol over the ring as Linux's xenbus does (one request at a time
/// here; replies matched by `req_id`, events kept aside).
#[derive(Debug)]
pub struct SimGuest {
    dir: PathBuf,
    domid: DomId,
    ring: GuestRing<MappedPage>,
    to_store: File,
    to_guest: File,
    next_req: u32,
    events: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// Replies met while waiting for another (`req_id` → reply).
    replies: HashMap<u32, wire::Message>,
    timeout: Duration,
}

impl SimGuest {
    /// Creates domain `domid`'s files in `dir` (replacing stale ones) with
    /// `connection` = 1, and opens them. INTRODUCE it next.
    pub fn create(dir: &Path, domid: u16) -> io::Result<SimGuest> {
        let domid = DomId(domid);
        fs::create_dir_all(dir)?;
        let _ = fs::remove_file(shutdown_file(dir, domid));
        for to in ["store", "guest"] {
            let path = fifo(dir, domid, to);
            let _ = fs::remove_file(&path);
            let c =
                CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: a NUL-terminated path.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // Written whole under a temporary name, then renamed: the daemon
        // never sees a short page.
        let tmp = dir.join(format!(".{}.ring.tmp", domid.0));
        {
            let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
            f.set_len(ring::PAGE_SIZE as u64)?;
            let page = MappedPage::map(f.as_fd(), 0)?;
            ring::store(&page, layout::CONNECTION, ring::connection::RECONNECT);
        }
        fs::rename(&tmp, ring_file(dir, domid))?;
        SimGuest::open(dir, domid.0)
    }

    /// Opens an existing simulated domain (another process created it).
    pub fn open(dir: &Path, domid: u16) -> io::Result<SimGuest> {
        let domid = DomId(domid);
        let page = map_file(&ring_file(dir, domid))?;
        Ok(SimGuest {
            dir: dir.to_path_buf(),
            domid,
            ring: GuestRing::new(page),
            to_store: open_fifo(&fifo(dir, domid, "store"))?,
            to_guest: open_fifo(&fifo(dir, domid, "guest"))?,
            next_req: 1,
            events: VecDeque::new(),
            replies: HashMap::new(),
            timeout: Duration::from_secs(10),
        })
    }

    pub fn domid(&self) -> u16 {
        self.domid.0
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The page, for tests that play a misbehaving guest.
    pub fn page(&self) -> &MappedPage {
        self.ring.page()
    }

    /// The daemon's `error` field.
    pub fn server_error(&self) -> u32 {
        self.ring.server_error()
    }

    pub fn server_features(&self) -> u32 {
        self.ring.server_features()
    }

    /// Notifies the daemon (an event on its port).
    pub fn kick(&self) {
        os::kick(&self.to_store);
    }

    /// Waits until the daemon has connected the ring (INTRODUCE wrote 0 to
    /// `connection`).
    pub fn wait_connected(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        while ring::load(self.ring.page(), layout::CONNECTION) != ring::connection::CONNECTED {
            self.wait(deadline)?;
        }
        Ok(())
    }

    /// Sleeps until the daemon kicks us or `deadline` passes.
    fn wait(&mut self, deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("domain {}: no answer from the daemon", self.domid.0),
            ));
        }
        // Kicks may coalesce: wake at least every 50 ms to look again.
        let ms = left.as_millis().min(50) as i32;
        if os::wait_readable(self.to_guest.as_raw_fd(), ms.max(1)) {
            os::drain(&mut self.to_guest);
        }
        Ok(())
    }

    fn check_error(&self) -> io::Result<()> {
        match self.ring.server_error() {
            0 => Ok(()),
            e => Err(io::Error::new(io::ErrorKind::ConnectionAborted, format!("daemon set ring error {e}"))),
        }
    }

    /// Writes raw bytes into the request ring, waiting for space.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let deadline = Instant::now() + self.timeout;
        let mut sent = 0;
        while sent < bytes.len() {
            let n = self.ring.send(&bytes[sent..]).map_err(|e| io::Error::other(format!("{e:?}")))?;
            sent += n;
            if n > 0 {
                self.kick();
            } else {
                self.check_error()?;
                // Take replies meanwhile: the daemon may be waiting for us.
                self.pump()?;
                self.wait(deadline)?;
            }
        }
        Ok(())
    }

    /// Sends one request; returns its `req_id`.
    pub fn send(&mut self, op: Op, tx: u32, payload: &[u8]) -> io::Result<u32> {
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        let mut bytes = Vec::new();
        wire::encode(op, req_id, tx, payload, &mut bytes);
        self.send_raw(&bytes)?;
        Ok(req_id)
    }

    /// Pulls what the daemon produced and sorts it into replies and events.
    fn pump(&mut self) -> io::Result<()> {
        loop {
            let n = self.ring.pull().map_err(|e| io::Error::other(format!("{e:?}")))?;
            if n > 0 {
                self.kick();
            }
            while let Some(m) = self.ring.next_message().map_err(|e| io::Error::other(format!("{e:?}")))? {
                if m.header.msg_type == Op::WatchEvent.code() {
                    self.events.push_back(split_event(&m.payload));
                } else {
                    self.replies.insert(m.header.req_id, m);
                }
            }
            if n == 0 {
                return Ok(());
            }
        }
    }

    /// Waits for the reply to `req_id`.
    pub fn wait_reply(&mut self, req_id: u32) -> io::Result<wire::Message> {
        let deadline = Instant::now() + self.timeout;
        loop {
            self.pump()?;
            if let Some(m) = self.replies.remove(&req_id) {
                return Ok(m);
            }
            self.check_error()?;
            self.wait(deadline)?;
        }
    }

    /// One request, its reply.
    pub fn request(&mut self, op: Op, tx: u32, payload: &[u8]) -> io::Result<Reply> {
        let id = self.send(op, tx, payload)?;
        self.wait_reply(id).map(|m| Reply::from_message(&m))
    }

    pub fn read(&mut self, path: &str) -> io::Result<Reply> {
        self.request(Op::Read, 0, &nul(&[path]))
    }

    pub fn write(&mut self, path: &str, value: &[u8]) -> io::Result<Reply> {
        let mut p = nul(&[path]);
        p.extend_from_slice(value);
        self.request(Op::Write, 0, &p)
    }

    /// The next watch event `(path, token)`, waiting at most `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump()?;
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.wait(deadline)?;
        }
    }

    /// Marks the domain shut down (the daemon sees `VIRQ_DOM_EXC`).
    pub fn shutdown(&self) -> io::Result<()> {
        File::create(shutdown_file(&self.dir, self.domid)).map(|_| ())
    }

    /// Destroys the domain: its page disappears (the mapping stays valid
    /// for both sides until unmapped), the daemon sees `VIRQ_DOM_EXC`.
    pub fn destroy(&self) -> io::Result<()> {
        let _ = fs::remove_file(shutdown_file(&self.dir, self.domid));
        for to in ["store", "guest"] {
            let _ = fs::remove_file(fifo(&self.dir, self.domid, to));
        }
        fs::remove_file(ring_file(&self.dir, self.domid))
    }
}

/// `a\0b\0...`
pub fn nul(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

fn split_event(payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut parts = payload.split(|b| *b == 0);
    let path = parts.next().unwrap_or_default().to_vec();
    let token = parts.next().unwrap_or_default().to_vec();
    (path, token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(mask: u32, name: &str) -> Vec<u8> {
        let mut padded = name.as_bytes().to_vec();
        padded.resize((name.len() + 1).next_multiple_of(16), 0);
        let mut e = Vec::new();
        for field in [1u32, mask, 0, padded.len() as u32] {
            e.extend_from_slice(&field.to_ne_bytes());
        }
        e.extend_from_slice(&padded);
        e
    }

    #[test]
    fn only_deaths_and_shutdowns_are_domain_exceptions() {
        let creation = [
            event(libc::IN_CREATE, "7.to-store"),
            event(libc::IN_CREATE, "7.to-guest"),
            event(libc::IN_CREATE, ".7.ring.tmp"),
            event(libc::IN_MOVED_FROM, ".7.ring.tmp"),
            event(libc::IN_MOVED_TO, "7.ring"),
        ]
        .concat();
        assert_eq!(inotify_events(&creation).count(), 5);
        assert!(!inotify_events(&creation).any(|(m, n)| is_dom_exc(m, n)));
        for (mask, name) in
            [(libc::IN_DELETE, "7.ring"), (libc::IN_MOVED_FROM, "7.ring"), (libc::IN_CREATE, "7.shutdown")]
        {
            let buf = [creation.clone(), event(mask, name)].concat();
            assert!(inotify_events(&buf).any(|(m, n)| is_dom_exc(m, n)), "{name}");
        }
        assert!(is_dom_exc(libc::IN_Q_OVERFLOW, b""));
        // A truncated event ends the walk instead of reading past the buffer.
        assert_eq!(inotify_events(&creation[..creation.len() - 3]).count(), 4);
    }
}
