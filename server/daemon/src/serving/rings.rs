//! The ring half of the event loop (a child module of `daemon`): guests'
//! shared rings, served beside the socket clients from the same poll.
//!
//! The platform gives one descriptor (the event-channel device, or the
//! simulation's epoll set) that becomes readable when ports fired. Fired
//! rings go into a ready queue; each loop turn serves every ready ring a
//! few requests at most, so one flooding guest cannot starve the others
//! (a ring with more input goes back to the end of the queue and the poll
//! does not sleep). A ring whose guest leaves `outstanding` replies and
//! events unconsumed is not read until the guest catches up (§9.1). Rings
//! are also swept every second: notifications are never relied on alone
//! (§10.3).

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use foldhash::HashSet;
use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};
use rxenstored_core::ring::RingError;
use rxenstored_core::{ConnId, Core, Platform};

use super::{LoopState, Turn};

pub(super) const EVTCHN: Token = Token(usize::MAX - 2);

/// Requests served per ring per loop turn.
const BUDGET: usize = 8;
/// The safety sweep's period.
const SWEEP: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct RingState {
    /// The platform has rings at all (else everything here is skipped).
    enabled: bool,
    ready: VecDeque<ConnId>,
    queued: HashSet<ConnId>,
    fired: Vec<ConnId>,
    buf: Vec<u8>,
    last_sweep: Instant,
}

impl RingState {
    /// Registers the platform's event descriptor, if it has one.
    pub(super) fn register<P: Platform>(poll: &Poll, core: &mut Core<P>) -> io::Result<RingState> {
        let fd = core.platform().event_fd();
        if let Some(fd) = fd {
            poll.registry().register(&mut SourceFd(&fd), EVTCHN, Interest::READABLE)?;
        }
        Ok(RingState {
            enabled: fd.is_some(),
            ready: VecDeque::new(),
            queued: HashSet::default(),
            fired: Vec::new(),
            buf: Vec::with_capacity(wire::HEADER_LEN + wire::PAYLOAD_MAX),
            last_sweep: Instant::now(),
        })
    }

    /// How long the poll may sleep: not at all while rings have work, at
    /// most until the next sweep when there are rings.
    pub(super) fn timeout(&self) -> Option<Duration> {
        if !self.enabled {
            None
        } else if !self.ready.is_empty() {
            Some(Duration::ZERO)
        } else {
            Some(SWEEP.saturating_sub(self.last_sweep.elapsed()))
        }
    }

    fn enqueue(&mut self, id: ConnId) {
        if self.queued.insert(id) {
            self.ready.push_back(id);
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Rings wait to be served beyond a turn's budget (no solo run starts
    /// or goes on then).
    pub(super) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }
}

impl<P: Platform> LoopState<P> {
    /// The event descriptor fired: collect fired rings, handle domain
    /// state changes.
    pub(super) fn ring_events(&mut self) {
        let mut fired = std::mem::take(&mut self.rings.fired);
        fired.clear();
        let dom_exc = self.core.platform().pending(&mut fired);
        for &id in &fired {
            self.rings.enqueue(id);
        }
        self.rings.fired = fired;
        if dom_exc {
            for domid in self.core.check_domains() {
                tracing::info!("domain {} is gone: destroyed", domid.0);
            }
        }
    }

    /// One turn over the ready rings (and the periodic sweep).
    pub(super) fn service_rings(&mut self, turn: &mut Turn) {
        if !self.rings.enabled {
            return;
        }
        if self.rings.last_sweep.elapsed() >= SWEEP {
            self.rings.last_sweep = Instant::now();
            for id in self.core.domain_conns() {
                self.rings.enqueue(id);
            }
        }
        for _ in 0..self.rings.ready.len() {
            let Some(id) = self.rings.ready.pop_front() else { break };
            self.rings.queued.remove(&id);
            if self.serve_ring(turn, id) {
                self.rings.enqueue(id);
            }
        }
    }

    /// Output written, then up to [`BUDGET`] requests read and handled;
    /// returns whether the ring has more to do right away.
    fn serve_ring(&mut self, turn: &mut Turn, id: ConnId) -> bool {
        let Some(ring) = self.core.platform().ring(id) else { return false };
        if ring.error().is_some() {
            return false;
        }
        let limit = self.core.outstanding_limit(id);
        let mut notify = false;
        let mut more = false;
        // With group commit, replies wait for the turn's fsync
        // (`finish_turn` flushes them): none may be seen before the
        // changes it acknowledges are durable.
        let hold = self.persistence.as_ref().is_some_and(|p| p.group_commit());
        for served in 0..=BUDGET {
            if !hold {
                match self.write_ring(id) {
                    Ok(wrote) => notify |= wrote,
                    Err(()) => return false,
                }
            }
            let queued = self.core.output(id).map_or(0, |o| o.len());
            if limit.is_some_and(|l| queued >= l) {
                // Wait for the guest to consume: it notifies us.
                tracing::debug!(conn = id.0, queued, "ring: waiting for the guest to take its replies");
                break;
            }
            let Some(ring) = self.core.platform().ring(id) else { return false };
            if served == BUDGET {
                more = ring.has_input();
                break;
            }
            match ring.read_message(&mut self.rings.buf) {
                Ok(p) => {
                    notify |= p.consumed;
                    if !p.complete {
                        break;
                    }
                }
                Err(e) => return self.abandon(id, e),
            }
            if tracing::enabled!(tracing::Level::TRACE)
                && let Some(h) = self.rings.buf.first_chunk::<{ wire::HEADER_LEN }>()
            {
                tracing::trace!(conn = id.0, header = ?wire::Header::parse(h), "ring: request");
            }
            if let Err(v) = self.core.receive(id, &self.rings.buf) {
                return self.abandon(id, RingError::Protocol { len: v.len });
            }
            // The request stays in the ring until this much output is out.
            let (out, platform) = self.core.output_and_platform(id);
            if let (Some(out), Some(ring)) = (out, platform.ring(id)) {
                ring.note_request(out.pushed());
            }
        }
        if hold {
            // Written by the turn's flush, after the fsync.
            turn.dirty_ids.push(id);
        } else {
            match self.write_ring(id) {
                Ok(wrote) => notify |= wrote,
                Err(()) => return false,
            }
        }
        if notify {
            self.core.platform().notify(id);
        }
        more
    }

    /// Copies queued output into the ring and releases the requests now
    /// answered; `Ok(true)` if either moved (the guest is to be notified).
    fn write_ring(&mut self, id: ConnId) -> Result<bool, ()> {
        let (out, platform) = self.core.output_and_platform(id);
        let (Some(out), Some(ring)) = (out, platform.ring(id)) else { return Ok(false) };
        let mut wrote = false;
        while let Some(front) = out.front() {
            match ring.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    tracing::trace!(conn = id.0, bytes = n, "ring: output");
                    out.advance(n);
                    wrote = true;
                }
                Err(e) => {
                    self.abandon(id, e);
                    return Err(());
                }
            }
        }
        let (out, platform) = self.core.output_and_platform(id);
        if let (Some(out), Some(ring)) = (out, platform.ring(id)) {
            wrote |= ring.release_answered(out.gone());
        }
        Ok(wrote)
    }

    /// The guest broke its ring: only this connection is given up.
    fn abandon(&mut self, id: ConnId, e: RingError) -> bool {
        let domid = self.core.conn(id).map(|c| c.domid().0);
        tracing::warn!(conn = id.0, domid, "ring abandoned: {e}");
        if let Some(ring) = self.core.platform().ring(id) {
            ring.fail(e);
        }
        self.core.ignore_connection(id);
        self.core.platform().notify(id);
        false
    }

    /// A ring connection got output outside its own turn (watch events,
    /// INTRODUCE's domain): send it now.
    pub(super) fn flush_ring(&mut self, id: ConnId) {
        if !self.rings.enabled {
            return;
        }
        if self.core.platform().ring(id).is_none_or(|ring| ring.error().is_some()) {
            return;
        }
        if let Ok(true) = self.write_ring(id) {
            self.core.platform().notify(id);
        }
        // Looked at after the release: a guest that wrote while its
        // requests held `req_cons` back did not kick (it kicks only a
        // drained ring).
        let has_input = self.core.platform().ring(id).is_some_and(|ring| ring.has_input());
        if has_input {
            // It may have been waiting for room under its quota.
            self.rings.enqueue(id);
        }
    }
}
