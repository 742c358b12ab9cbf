//! One turn of serving rings, for any platform whose rings the core
//! reads through `Platform::ring`: the QEMU test platform (`frontend`)
//! and Xen (`xen::platform`) differ only in how rings are found and how
//! the loop waits between turns.

use alloc::vec::Vec;

use rxenstored_core::ring::RingError;
use rxenstored_core::{ConnId, Core, Platform};

use crate::println;

/// Requests taken from one ring per turn (fairness between rings).
const BURST: usize = 8;

/// Counters reported at shutdown.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub turns: u64,
    pub requests: u64,
    pub bytes_out: u64,
}

/// What the turn needs of a platform besides `Platform`.
pub trait Rings: Platform {
    /// The connections that have a ring, in a stable order.
    fn ring_conns(&self, into: &mut Vec<ConnId>);
    /// A short description of a connection's ring for the log.
    fn describe(&self, conn: ConnId) -> alloc::string::String;
}

/// The core and the buffers of its turns.
#[derive(Debug)]
pub struct Server<P: Rings> {
    core: Core<P>,
    stats: Stats,
    buf: Vec<u8>,
    ids: Vec<ConnId>,
    moved: Vec<bool>,
}

impl<P: Rings> Server<P> {
    pub fn new(core: Core<P>) -> Server<P> {
        Server { core, stats: Stats::default(), buf: Vec::with_capacity(16 + 4096), ids: Vec::new(), moved: Vec::new() }
    }

    pub fn core(&self) -> &Core<P> {
        &self.core
    }

    #[cfg_attr(not(feature = "xen"), allow(dead_code))]
    pub fn core_mut(&mut self) -> &mut Core<P> {
        &mut self.core
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Takes requests from every ring, then copies queued replies and
    /// events into every ring, and kicks the other end of each ring that
    /// moved. Returns whether any ring moved.
    pub fn turn(&mut self) -> bool {
        self.stats.turns += 1;
        self.ids.clear();
        self.core.platform().ring_conns(&mut self.ids);
        self.moved.clear();
        self.moved.resize(self.ids.len(), false);
        for i in 0..self.ids.len() {
            self.moved[i] = self.serve(self.ids[i]);
        }
        let _ = self.core.take_dirty();
        let mut any = false;
        for i in 0..self.ids.len() {
            let id = self.ids[i];
            let moved = self.flush(id) | self.moved[i];
            if moved {
                self.core.platform().notify(id);
            }
            any |= moved;
        }
        any
    }

    /// Takes up to [`BURST`] requests from a ring into the core, within the
    /// connection's `outstanding` quota.
    fn serve(&mut self, id: ConnId) -> bool {
        let mut moved = false;
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
            match ring.read_message(&mut self.buf) {
                Ok(polled) => {
                    moved |= polled.consumed;
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
            if let Err(v) = self.core.receive(id, &self.buf) {
                self.abandon(id, RingError::Protocol { len: v.len });
                break;
            }
            // The request stays in the ring until its reply is written.
            let (queue, platform) = self.core.output_and_platform(id);
            if let (Some(q), Some(ring)) = (queue, platform.ring(id)) {
                ring.note_request(q.pushed());
            }
        }
        moved
    }

    /// A guest broke its ring: the `error` field tells it why (the ring
    /// did that), the core ignores the connection from now on (as C).
    fn abandon(&mut self, id: ConnId, e: RingError) {
        if let Some(ring) = self.core.platform().ring(id) {
            ring.fail(e);
        }
        println!("stubdom: {} abandoned: {e} (error {})", self.core.platform().describe(id), e.code());
        self.core.ignore_connection(id);
    }

    /// Copies queued replies and events into the ring as space allows, and
    /// releases the requests they answer.
    fn flush(&mut self, id: ConnId) -> bool {
        let mut moved = false;
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
            moved |= n > 0;
            if n < len {
                break;
            }
        }
        // Requests whose replies are now out give their space back.
        moved |= ring.release_answered(q.gone());
        moved
    }
}
