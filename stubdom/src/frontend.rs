//! The QEMU test platform: xenstore rings in the `ivshmem-plain` shared
//! region, served by polling (no event channels under QEMU).
//!
//! Region layout (4 KiB pages; the host test program uses the same):
//!
//! | page | what |
//! | ---: | --- |
//! | 0 | info page: magic, layout, state, the host's shutdown request |
//! | 1 ..= [`CONTROL_RINGS`] | control rings: each a connection acting as the privileged domain (the toolstack) |
//! | the rest | guest rings: INTRODUCE's `gfn` names the page (standing in for the guest's grant reference 1) |
//!
//! Every ring page has the §10.1 layout. The frontend only moves bytes
//! between ring pages and the core; the protocol is all in `server::Core`.
//!
//! SEAM (ring issue): the core's `Platform` trait is being extended under
//! the ring issue (`attach` gains the feature bits, the ring moves behind
//! `Platform::ring`). Until that lands the frontend runs the core over
//! `NoRings` and learns about INTRODUCE and RELEASE by watching the
//! control rings' requests go by and reading the core's domain records
//! (`Core::domain`). When it lands: implement `Platform` for [`Shm`]
//! (`attach` = map page `gfn`, reset it; `detach` = forget it) and drop
//! [`Frontend::sync_domains`].

use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use engine::DomId;
use server::domain::features;
use server::{ConnId, Core, NoRings};
use wire::{Decoder, Op};

use crate::println;
use crate::ring::{PAGE_SIZE, ShmPage, error_code};

/// Number of control rings (pages 1..=4).
pub const CONTROL_RINGS: usize = 4;
/// First page INTRODUCE may name.
pub const FIRST_GUEST_PAGE: usize = 1 + CONTROL_RINGS;

/// Info page words (u32 offsets in bytes).
mod info {
    pub const MAGIC: usize = 0; // "RXSB"
    pub const VERSION: usize = 4;
    pub const PAGES: usize = 8;
    pub const CONTROL_RINGS: usize = 12;
    pub const FIRST_GUEST_PAGE: usize = 16;
    /// 1 once the rings are reset and served.
    pub const STATE: usize = 20;
    /// Polling rounds (a heartbeat for the host).
    pub const ROUNDS: usize = 24;
    /// The host stores 1 here to ask the stub to stop (QEMU exits 1, i.e.
    /// debug-exit code 0).
    pub const SHUTDOWN: usize = 28;
    pub const MAGIC_VALUE: u32 = u32::from_le_bytes(*b"RXSB");
    pub const LAYOUT_VERSION: u32 = 1;
}

/// The mapped shared region.
#[derive(Debug, Clone, Copy)]
pub struct Shm {
    base: NonNull<u8>,
    pages: usize,
}

impl Shm {
    /// # Safety
    /// `base..base + len` is mapped, page-aligned, owned by this frontend
    /// (and the host) for the rest of the image's life.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Shm {
        Shm { base, pages: len / PAGE_SIZE }
    }

    pub fn pages(&self) -> usize {
        self.pages
    }

    fn page(&self, index: usize) -> ShmPage {
        assert!(index < self.pages);
        // SAFETY: in the region (checked), page-aligned; all accesses to
        // ring pages are atomic.
        unsafe { ShmPage::new(self.base.add(index * PAGE_SIZE)) }
    }

    fn info(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: page 0, aligned word offsets.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast()) }
    }
}

/// A ring the frontend serves.
#[derive(Debug)]
struct Served {
    conn: ConnId,
    page: ShmPage,
    page_index: usize,
    /// The guest domain; `None` for control rings.
    domid: Option<DomId>,
    /// Control rings: a copy of the request stream, to see INTRODUCE and
    /// RELEASE go by (SEAM, see the module docs).
    sniff: Option<Decoder>,
    /// Broken by its peer: no longer served (until a new INTRODUCE).
    dead: bool,
}

/// Counters reported at shutdown.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub rounds: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub introduced: u64,
    pub released: u64,
}

/// The polling loop over the shared region.
#[derive(Debug)]
pub struct Frontend {
    core: Core<NoRings>,
    shm: Shm,
    rings: Vec<Served>,
    /// Domains named by INTRODUCE requests seen since the last sync.
    introduced: Vec<DomId>,
    stats: Stats,
}

impl Frontend {
    /// Resets the control rings and opens their connections.
    pub fn new(mut core: Core<NoRings>, shm: Shm) -> Frontend {
        let priv_domid = core.config().priv_domid;
        let mut rings = Vec::new();
        for index in 1..=CONTROL_RINGS.min(shm.pages().saturating_sub(1)) {
            let page = shm.page(index);
            page.reset(features::DEFAULT);
            let conn = core.connect_domain(priv_domid);
            rings.push(Served { conn, page, page_index: index, domid: None, sniff: Some(Decoder::new()), dead: false });
        }
        shm.info(info::VERSION).store(info::LAYOUT_VERSION, Ordering::Relaxed);
        shm.info(info::PAGES).store(shm.pages() as u32, Ordering::Relaxed);
        shm.info(info::CONTROL_RINGS).store(rings.len() as u32, Ordering::Relaxed);
        shm.info(info::FIRST_GUEST_PAGE).store(FIRST_GUEST_PAGE as u32, Ordering::Relaxed);
        shm.info(info::SHUTDOWN).store(0, Ordering::Relaxed);
        shm.info(info::MAGIC).store(info::MAGIC_VALUE, Ordering::Release);
        Frontend { core, shm, rings, introduced: Vec::new(), stats: Stats::default() }
    }

    /// Tells the host the rings are served.
    pub fn announce_ready(&self) {
        self.shm.info(info::STATE).store(1, Ordering::Release);
    }

    /// Serves until the host asks to stop.
    pub fn run(&mut self) -> Stats {
        let mut buf = vec![0u8; 1024];
        loop {
            if self.shm.info(info::SHUTDOWN).load(Ordering::Acquire) != 0 {
                return self.stats;
            }
            self.stats.rounds += 1;
            if self.stats.rounds % 1024 == 0 {
                self.shm.info(info::ROUNDS).store(self.stats.rounds as u32, Ordering::Relaxed);
            }
            let mut progressed = false;
            let mut domains_changed = false;
            for i in 0..self.rings.len() {
                let r = &mut self.rings[i];
                if r.dead || !r.page.has_input() {
                    continue;
                }
                let n = match r.page.read(&mut buf) {
                    Ok(n) => n,
                    Err(_) => {
                        self.fail(i, error_code::RINGIDX);
                        continue;
                    }
                };
                progressed = true;
                self.stats.bytes_in += n as u64;
                if let Some(sniff) = r.sniff.as_mut() {
                    sniff.push(&buf[..n]);
                    while let Ok(Some(m)) = sniff.next_message() {
                        match m.header.op() {
                            Some(Op::Introduce) => {
                                let domid = wire::split_args(&m.payload).next().and_then(wire::parse_domid);
                                self.introduced.extend(domid.map(DomId));
                                domains_changed = true;
                            }
                            Some(Op::Release) => domains_changed = true,
                            _ => {}
                        }
                    }
                }
                let conn = r.conn;
                if self.core.receive(conn, &buf[..n]).is_err() {
                    self.fail(i, error_code::PROTO);
                }
            }
            if domains_changed {
                self.sync_domains();
            }
            let _ = self.core.take_dirty();
            progressed |= self.flush();
            if !progressed {
                crate::arch::pause();
            }
        }
    }

    /// A peer broke the ring or the framing: record it in the page's
    /// `error` field and stop serving it (C does the same, §10.1).
    fn fail(&mut self, i: usize, code: u32) {
        let r = &mut self.rings[i];
        r.page.set_error(code);
        r.dead = true;
        println!("stubdom: ring page {} ({:?}) broken: error {code}", r.page_index, r.domid);
        if r.domid.is_none() {
            // A control connection has no domain record to keep.
            self.core.disconnect(r.conn);
        }
    }

    /// Copies queued replies and events into the rings as space allows.
    fn flush(&mut self) -> bool {
        let mut progressed = false;
        for i in 0..self.rings.len() {
            if self.rings[i].dead {
                continue;
            }
            let (conn, page) = (self.rings[i].conn, self.rings[i].page);
            loop {
                let Some(q) = self.core.output(conn) else { break };
                let Some(front) = q.front() else { break };
                let len = front.len();
                let n = match page.write(front) {
                    Ok(n) => n,
                    Err(_) => {
                        self.fail(i, error_code::RINGIDX);
                        break;
                    }
                };
                q.advance(n);
                self.stats.bytes_out += n as u64;
                progressed |= n > 0;
                if n < len {
                    break;
                }
            }
        }
        progressed
    }

    /// SEAM (see the module docs): serves the rings of domains the core
    /// has just introduced, and forgets those it released.
    fn sync_domains(&mut self) {
        let core = &self.core;
        let before = self.rings.len();
        self.rings.retain(|r| match r.domid {
            None => true,
            Some(d) => core.domain(d).is_some_and(|rec| rec.introduced && rec.conn == Some(r.conn)),
        });
        self.stats.released += (before - self.rings.len()) as u64;

        // Which domains may be new: those named by INTRODUCE requests the
        // control rings carried. The core's records say which succeeded.
        for domid in core::mem::take(&mut self.introduced) {
            let Some(rec) = self.core.domain(domid) else { continue };
            let Some(conn) = rec.conn.filter(|_| rec.introduced) else { continue };
            if self.rings.iter().any(|r| r.conn == conn) {
                continue;
            }
            let index = rec.gfn as usize;
            let in_use = self.rings.iter().any(|r| r.page_index == index);
            if index < FIRST_GUEST_PAGE || index >= self.shm.pages() || in_use {
                println!("stubdom: INTRODUCE {domid}: gfn {index} is not a free guest page; not served");
                continue;
            }
            let page = self.shm.page(index);
            page.reset(rec.features);
            println!("stubdom: serving {domid} on page {index}");
            self.rings.push(Served { conn, page, page_index: index, domid: Some(domid), sniff: None, dead: false });
            self.stats.introduced += 1;
        }
    }

    pub fn core(&self) -> &Core<NoRings> {
        &self.core
    }
}
