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
use rxenstored_core::ring::{PAGE_SIZE, Ring, RingIo, RingPage};
use rxenstored_core::{ConnId, Core, Error, Platform, RingAttach, RingStart};

use crate::println;
use crate::serve::{Server, Stats};

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
    fn attach(&mut self, ring: RingAttach) -> Result<(), Error> {
        let RingAttach { conn, domid, gfn, features, start, .. } = ring;
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

impl crate::serve::Rings for ShmPlatform {
    fn ring_conns(&self, into: &mut Vec<ConnId>) {
        into.extend(self.rings.keys().copied());
    }

    fn describe(&self, conn: ConnId) -> alloc::string::String {
        match self.rings.get(&conn) {
            Some(r) => alloc::format!("ring page {} ({:?})", r.page_index, r.domid),
            None => alloc::format!("connection {conn:?}"),
        }
    }
}

/// The polling loop over the shared region.
#[derive(Debug)]
pub struct Frontend {
    server: Server<ShmPlatform>,
    shm: Shm,
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
        Frontend { server: Server::new(core), shm }
    }

    /// Tells the host the rings are served.
    pub fn announce_ready(&self) {
        self.shm.info(info::STATE).store(1, Ordering::Release);
    }

    /// Serves until the host asks to stop (there are no event channels
    /// under QEMU: the loop polls).
    pub fn run(&mut self) -> Stats {
        loop {
            if self.shm.info(info::SHUTDOWN).load(Ordering::Acquire) != 0 {
                return self.server.stats();
            }
            let turns = self.server.stats().turns;
            if turns.is_multiple_of(1024) {
                self.shm.info(info::ROUNDS).store(turns as u32, Ordering::Relaxed);
            }
            if !self.server.turn() {
                crate::arch::pause();
            }
        }
    }

    pub fn core(&self) -> &Core<ShmPlatform> {
        self.server.core()
    }
}
