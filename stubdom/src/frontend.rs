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
//! between ring pages and the core; the protocol is all in `rxenstored_core::Core`.
//!
//! The rings themselves are `rxenstored_core::ring::Ring` (§10.2–10.3 index checks,
//! fences, the `error` field) over [`ShmPage`]; [`ShmPlatform`] is the
//! core's `Platform`: INTRODUCE's `attach` maps page `gfn` of the region
//! (where Xen would map grant reference 1), RELEASE's `detach` forgets it.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use engine::DomId;
use rxenstored_core::features;
use rxenstored_core::ring::{PAGE_SIZE, Ring, RingError, RingIo, RingPage};
use rxenstored_core::{ConnId, Core, Error, Platform, RingStart};

use crate::println;

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
        // SAFETY: in the region (checked), page-aligned, mapped for good.
        ShmPage(unsafe { self.base.add(index * PAGE_SIZE) })
    }

    fn info(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: page 0, aligned word offsets.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast()) }
    }
}

/// One 4 KiB page of the region.
#[derive(Debug, Clone, Copy)]
pub struct ShmPage(NonNull<u8>);

// SAFETY: a page of the region, mapped and 4 KiB-aligned for the life of
// the image (`Shm::new`'s contract); `rxenstored_core::ring` only uses atomics.
unsafe impl RingPage for ShmPage {
    fn base(&self) -> NonNull<u8> {
        self.0
    }
}

/// A ring the frontend serves.
#[derive(Debug)]
struct Served {
    page_index: usize,
    ring: Ring<ShmPage>,
    /// The guest domain; `None` for control rings.
    domid: Option<DomId>,
}

/// The core's platform under QEMU: rings in the shared region.
#[derive(Debug)]
pub struct ShmPlatform {
    shm: Shm,
    rings: BTreeMap<ConnId, Served>,
}

impl ShmPlatform {
    fn add(&mut self, conn: ConnId, index: usize, domid: Option<DomId>, features: u32, start: RingStart) {
        let mut ring = Ring::new(self.shm.page(index), features);
        match start {
            RingStart::Reset => drop(ring.reset()),
            RingStart::Resume => ring.resume(),
        }
        if let Some(d) = domid {
            println!("stubdom: serving {d} on page {index}");
        }
        self.rings.insert(conn, Served { page_index: index, ring, domid });
    }
}

impl Platform for ShmPlatform {
    fn attach(
        &mut self,
        conn: ConnId,
        domid: DomId,
        gfn: u64,
        _port: u32,
        features: u32,
        start: RingStart,
    ) -> Result<(), Error> {
        let index = usize::try_from(gfn).unwrap_or(usize::MAX);
        if index < FIRST_GUEST_PAGE || index >= self.shm.pages() {
            return Err(Error::Platform("gfn is not a guest page of the shared region"));
        }
        if self.rings.values().any(|r| r.page_index == index) {
            return Err(Error::Platform("page already serves a ring"));
        }
        self.add(conn, index, Some(domid), features, start);
        Ok(())
    }

    fn rebind(&mut self, conn: ConnId, _domid: DomId, _port: u32) -> Result<(), Error> {
        if let Some(r) = self.rings.get_mut(&conn) {
            r.ring.reset();
        }
        Ok(())
    }

    fn detach(&mut self, conn: ConnId, _domid: DomId) {
        self.rings.remove(&conn);
    }

    fn domain_exists(&self, _domid: DomId) -> bool {
        true
    }

    fn ring(&mut self, conn: ConnId) -> Option<&mut dyn RingIo> {
        self.rings.get_mut(&conn).map(|r| &mut r.ring as &mut dyn RingIo)
    }
}

/// Counters reported at shutdown.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub rounds: u64,
    pub requests: u64,
    pub bytes_out: u64,
}

/// Requests taken from one ring per polling round (fairness).
const BURST: usize = 8;

/// The polling loop over the shared region.
#[derive(Debug)]
pub struct Frontend {
    core: Core<ShmPlatform>,
    shm: Shm,
    stats: Stats,
}

impl Frontend {
    /// Opens the control rings' connections over a new core.
    pub fn new(config: rxenstored_core::Config, shm: Shm) -> Frontend {
        let mut core = Core::with_platform(config, ShmPlatform { shm, rings: BTreeMap::new() });
        let priv_domid = core.config().priv_domid;
        let controls = CONTROL_RINGS.min(shm.pages().saturating_sub(1));
        for index in 1..=controls {
            let conn = core.connect_domain(priv_domid);
            core.platform().add(conn, index, None, features::DEFAULT, RingStart::Reset);
        }
        shm.info(info::VERSION).store(info::LAYOUT_VERSION, Ordering::Relaxed);
        shm.info(info::PAGES).store(shm.pages() as u32, Ordering::Relaxed);
        shm.info(info::CONTROL_RINGS).store(controls as u32, Ordering::Relaxed);
        shm.info(info::FIRST_GUEST_PAGE).store(FIRST_GUEST_PAGE as u32, Ordering::Relaxed);
        shm.info(info::SHUTDOWN).store(0, Ordering::Relaxed);
        shm.info(info::MAGIC).store(info::MAGIC_VALUE, Ordering::Release);
        Frontend { core, shm, stats: Stats::default() }
    }

    /// Tells the host the rings are served.
    pub fn announce_ready(&self) {
        self.shm.info(info::STATE).store(1, Ordering::Release);
    }

    /// Serves until the host asks to stop.
    pub fn run(&mut self) -> Stats {
        let mut buf = Vec::with_capacity(16 + 4096);
        let mut ids: Vec<ConnId> = Vec::new();
        loop {
            if self.shm.info(info::SHUTDOWN).load(Ordering::Acquire) != 0 {
                return self.stats;
            }
            self.stats.rounds += 1;
            if self.stats.rounds.is_multiple_of(1024) {
                self.shm.info(info::ROUNDS).store(self.stats.rounds as u32, Ordering::Relaxed);
            }
            ids.clear();
            ids.extend(self.core.platform().rings.keys().copied());
            let mut progressed = false;
            for &id in &ids {
                progressed |= self.serve(id, &mut buf);
            }
            let _ = self.core.take_dirty();
            for &id in &ids {
                progressed |= self.flush(id);
            }
            if !progressed {
                crate::arch::pause();
            }
        }
    }

    /// Takes up to [`BURST`] requests from a ring into the core, within the
    /// connection's `outstanding` quota.
    fn serve(&mut self, id: ConnId, buf: &mut Vec<u8>) -> bool {
        let mut progressed = false;
        for _ in 0..BURST {
            if let Some(limit) = self.core.outstanding_limit(id)
                && self.core.output(id).is_some_and(|q| q.len() >= limit)
            {
                break;
            }
            let Some(ring) = self.core.platform().ring(id) else { break };
            if !ring.has_input() {
                break;
            }
            match ring.read_message(buf) {
                Ok(polled) => {
                    progressed |= polled.consumed;
                    if !polled.complete {
                        break;
                    }
                }
                Err(e) => {
                    self.abandon(id, e);
                    break;
                }
            }
            self.stats.requests += 1;
            if let Err(v) = self.core.receive(id, buf) {
                self.abandon(id, RingError::Protocol { len: v.len });
                break;
            }
            // The request stays in the ring until its reply is written.
            let (queue, platform) = self.core.output_and_platform(id);
            if let (Some(q), Some(ring)) = (queue, platform.ring(id)) {
                ring.note_request(q.pushed());
            }
        }
        progressed
    }

    /// A guest broke its ring: the `error` field tells it why (the ring
    /// did that), the core ignores the connection from now on (as C).
    fn abandon(&mut self, id: ConnId, e: RingError) {
        if let Some(ring) = self.core.platform().ring(id) {
            ring.fail(e);
        }
        let r = &self.core.platform().rings[&id];
        println!("stubdom: ring page {} ({:?}) abandoned: {e} (error {})", r.page_index, r.domid, e.code());
        self.core.ignore_connection(id);
    }

    /// Copies queued replies and events into the ring as space allows, and
    /// releases the requests they answer.
    fn flush(&mut self, id: ConnId) -> bool {
        let mut progressed = false;
        let (queue, platform) = self.core.output_and_platform(id);
        let (Some(q), Some(ring)) = (queue, platform.ring(id)) else { return false };
        if ring.error().is_some() {
            return false;
        }
        while let Some(front) = q.front() {
            let len = front.len();
            let Ok(n) = ring.write(front) else { break };
            q.advance(n);
            self.stats.bytes_out += n as u64;
            progressed |= n > 0;
            if n < len {
                break;
            }
        }
        // Requests whose replies are now out give their space back.
        progressed |= ring.release_answered(q.gone());
        progressed
    }

    pub fn core(&self) -> &Core<ShmPlatform> {
        &self.core
    }
}
