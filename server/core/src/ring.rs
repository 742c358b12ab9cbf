//! The shared ring page (PROTOCOL.md §10): sans-IO, `no_std`.
//!
//! A guest and the daemon share one 4 KiB page holding two 1024-byte byte
//! rings (`req`, guest → daemon; `rsp`, daemon → guest), their free-running
//! 32-bit indexes and a few control fields. This module moves bytes through
//! such a page and nothing else: it does not know how the page was mapped
//! (grant, `/proc/xen/xsd_kva`, a shared file, a test buffer — see
//! [`RingPage`]) nor how the other side is notified (the caller does that
//! when [`Polled::consumed`] or a write made progress).
//!
//! - [`Ring`]: the daemon's end. [`Ring::read_message`] reassembles one
//!   request at a time from any number of partial transfers, so the caller
//!   can stop reading between requests (the `outstanding` quota);
//!   [`Ring::write`] copies as much output as fits. A broken guest (indexes
//!   more than 1024 apart, a length above 4096) makes the ring *bad*: the
//!   `error` field is set as C does (if the domain has the `ERROR` feature)
//!   and every later call fails, until [`Ring::reset`] (a new INTRODUCE).
//! - [`GuestRing`]: the guest's end, as a Linux guest's xenbus drives it;
//!   used by the simulated guests and the tests.
//!
//! Every access to the page is an atomic load or store (the other side
//! writes the same memory concurrently), with the fences of §10.3.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, AtomicU32, Ordering, fence};

use wire::{Decoder, FrameError, HEADER_LEN, Message, PAYLOAD_MAX};

use crate::features;

/// The size of the shared page.
pub const PAGE_SIZE: usize = 4096;
/// `XENSTORE_RING_SIZE`: bytes in each of the two rings (a power of two).
pub const RING_SIZE: u32 = 1024;

/// Byte offsets of the page's fields (§10.1).
pub mod layout {
    /// `req[1024]`: requests, guest → daemon.
    pub const REQ: usize = 0;
    /// `rsp[1024]`: replies and events, daemon → guest.
    pub const RSP: usize = 1024;
    /// `req_cons`: how far the daemon has consumed `req`.
    pub const REQ_CONS: usize = 2048;
    /// `req_prod`: how far the guest has filled `req`.
    pub const REQ_PROD: usize = 2052;
    /// `rsp_cons`: how far the guest has consumed `rsp`.
    pub const RSP_CONS: usize = 2056;
    /// `rsp_prod`: how far the daemon has filled `rsp`.
    pub const RSP_PROD: usize = 2060;
    /// `server_features`: the feature bits the daemon offers (§8.7).
    pub const SERVER_FEATURES: usize = 2064;
    /// `connection`: see [`super::connection`].
    pub const CONNECTION: usize = 2068;
    /// `error`: see [`super::error_code`].
    pub const ERROR: usize = 2072;
    /// `evtchn_port`: the port the domain builder allocated (0: none).
    pub const EVTCHN_PORT: usize = 2076;
}

/// Values of the `connection` field.
pub mod connection {
    /// The daemon serves the ring.
    pub const CONNECTED: u32 = 0;
    /// The guest asks for the ring to be reset (§10.5).
    pub const RECONNECT: u32 = 1;
}

/// Values of the `error` field (meaningful with feature `ERROR`).
pub mod error_code {
    /// `XENSTORE_ERROR_NONE`.
    pub const NONE: u32 = 0;
    /// `XENSTORE_ERROR_COMM`: a communication problem.
    pub const COMM: u32 = 1;
    /// `XENSTORE_ERROR_RINGIDX`: indexes more than a ring apart.
    pub const RINGIDX: u32 = 2;
    /// `XENSTORE_ERROR_PROTO`: a message the protocol forbids.
    pub const PROTO: u32 = 3;
}

/// A mapped ring page.
///
/// # Safety
///
/// [`base`](RingPage::base) must return the same pointer for the whole life
/// of the value, to [`PAGE_SIZE`] bytes aligned to 4, readable and writable
/// for that whole life. Another party (the guest) may change any of those
/// bytes at any time; this module only ever touches them through atomics.
pub unsafe trait RingPage {
    /// The page's first byte.
    fn base(&self) -> NonNull<u8>;
}

// SAFETY: forwards to a page that upholds the contract.
unsafe impl<T: RingPage + ?Sized> RingPage for Arc<T> {
    fn base(&self) -> NonNull<u8> {
        (**self).base()
    }
}

// SAFETY: forwards to a page that upholds the contract.
unsafe impl<T: RingPage + ?Sized> RingPage for &T {
    fn base(&self) -> NonNull<u8> {
        (**self).base()
    }
}

/// A page in ordinary memory: for tests, and for a guest and a daemon
/// played by two threads of one process.
#[derive(Debug)]
pub struct HeapPage(alloc::boxed::Box<[AtomicU32; PAGE_SIZE / 4]>);

impl HeapPage {
    /// A zeroed page.
    pub fn new() -> HeapPage {
        HeapPage(alloc::boxed::Box::new([const { AtomicU32::new(0) }; PAGE_SIZE / 4]))
    }
}

impl Default for HeapPage {
    fn default() -> HeapPage {
        HeapPage::new()
    }
}

// SAFETY: a boxed array of 1024 words: 4096 bytes, 4-aligned, never moved
// while the box lives, and only accessed through atomics.
unsafe impl RingPage for HeapPage {
    fn base(&self) -> NonNull<u8> {
        NonNull::from(&*self.0).cast()
    }
}

/// The 32-bit field at `offset` (a multiple of 4 below [`PAGE_SIZE`]).
fn word<P: RingPage + ?Sized>(page: &P, offset: usize) -> &AtomicU32 {
    debug_assert!(offset.is_multiple_of(4) && offset + 4 <= PAGE_SIZE);
    // SAFETY: in bounds and aligned by the callers' constant offsets and
    // the RingPage contract; concurrent access is through atomics only.
    unsafe { AtomicU32::from_ptr(page.base().as_ptr().add(offset).cast::<u32>()) }
}

fn byte<P: RingPage + ?Sized>(page: &P, offset: usize) -> &AtomicU8 {
    debug_assert!(offset < PAGE_SIZE);
    // SAFETY: as for `word`; bytes need no alignment.
    unsafe { AtomicU8::from_ptr(page.base().as_ptr().add(offset)) }
}

/// Reads a 32-bit field of the page.
pub fn load<P: RingPage + ?Sized>(page: &P, offset: usize) -> u32 {
    word(page, offset).load(Ordering::Relaxed)
}

/// Writes a 32-bit field of the page.
pub fn store<P: RingPage + ?Sized>(page: &P, offset: usize, value: u32) {
    word(page, offset).store(value, Ordering::Relaxed)
}

/// One of the two byte rings: its data area and its two indexes.
#[derive(Clone, Copy, Debug)]
struct Half {
    data: usize,
    cons: usize,
    prod: usize,
}

const REQ: Half = Half { data: layout::REQ, cons: layout::REQ_CONS, prod: layout::REQ_PROD };
const RSP: Half = Half { data: layout::RSP, cons: layout::RSP_CONS, prod: layout::RSP_PROD };

/// The other side wrote indexes more than [`RING_SIZE`] apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BadIndexes;

/// Takes up to `buf.len()` bytes from a ring (§10.3, reading).
fn consume<P: RingPage + ?Sized>(page: &P, half: Half, buf: &mut [u8]) -> Result<usize, BadIndexes> {
    let cons = word(page, half.cons).load(Ordering::Relaxed);
    let prod = word(page, half.prod).load(Ordering::Relaxed);
    // The data must not be read before the producer index.
    fence(Ordering::SeqCst);
    let avail = prod.wrapping_sub(cons);
    if avail > RING_SIZE {
        return Err(BadIndexes);
    }
    let n = buf.len().min(avail as usize);
    if n == 0 {
        return Ok(0);
    }
    for (i, b) in buf[..n].iter_mut().enumerate() {
        let at = (cons.wrapping_add(i as u32) & (RING_SIZE - 1)) as usize;
        *b = byte(page, half.data + at).load(Ordering::Relaxed);
    }
    // The copies complete before the space is handed back.
    fence(Ordering::SeqCst);
    word(page, half.cons).store(cons.wrapping_add(n as u32), Ordering::Relaxed);
    Ok(n)
}

/// Copies up to `buf.len()` request bytes from stream offset `from` without
/// handing their space back: the daemon's reading, which releases the space
/// (`req_cons`) only once the requests are answered ([`Ring::release`]).
/// `released` is the `req_cons` the daemon last stored: the guest may never
/// be more than [`RING_SIZE`] ahead of it.
fn copy_requests<P: RingPage + ?Sized>(
    page: &P,
    released: u32,
    from: u32,
    buf: &mut [u8],
) -> Result<usize, BadIndexes> {
    let prod = word(page, REQ.prod).load(Ordering::Relaxed);
    // The data must not be read before the producer index.
    fence(Ordering::SeqCst);
    if prod.wrapping_sub(released) > RING_SIZE {
        return Err(BadIndexes);
    }
    let n = buf.len().min(prod.wrapping_sub(from) as usize);
    for (i, b) in buf[..n].iter_mut().enumerate() {
        let at = (from.wrapping_add(i as u32) & (RING_SIZE - 1)) as usize;
        *b = byte(page, REQ.data + at).load(Ordering::Relaxed);
    }
    Ok(n)
}

/// Puts as many of `bytes` as fit into a ring (§10.3, writing).
fn produce<P: RingPage + ?Sized>(page: &P, half: Half, bytes: &[u8]) -> Result<usize, BadIndexes> {
    let cons = word(page, half.cons).load(Ordering::Relaxed);
    let prod = word(page, half.prod).load(Ordering::Relaxed);
    // The consumer index is read before the space it frees is overwritten.
    fence(Ordering::SeqCst);
    let used = prod.wrapping_sub(cons);
    if used > RING_SIZE {
        return Err(BadIndexes);
    }
    let n = bytes.len().min((RING_SIZE - used) as usize);
    if n == 0 {
        return Ok(0);
    }
    for (i, b) in bytes[..n].iter().enumerate() {
        let at = (prod.wrapping_add(i as u32) & (RING_SIZE - 1)) as usize;
        byte(page, half.data + at).store(*b, Ordering::Relaxed);
    }
    // The data is visible before the index that publishes it.
    fence(Ordering::Release);
    word(page, half.prod).store(prod.wrapping_add(n as u32), Ordering::Relaxed);
    Ok(n)
}

/// Why a ring was abandoned. The `error` field gets [`RingError::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// `prod − cons > 1024` on either ring.
    BadIndex,
    /// A header announced more than 4096 payload bytes.
    Protocol {
        /// The announced payload length.
        len: u32,
    },
}

impl RingError {
    /// The value C stores in the page's `error` field.
    pub fn code(self) -> u32 {
        match self {
            RingError::BadIndex => error_code::RINGIDX,
            RingError::Protocol { .. } => error_code::PROTO,
        }
    }
}

impl core::fmt::Display for RingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RingError::BadIndex => f.write_str("inconsistent ring indexes"),
            RingError::Protocol { len } => write!(f, "payload length {len} above {PAYLOAD_MAX}"),
        }
    }
}

/// What one [`Ring::read_message`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Polled {
    /// A whole message is in the caller's buffer.
    pub complete: bool,
    /// Request space was handed back (a message longer than the ring's
    /// free space is read in pieces): the guest may be waiting for it and
    /// should be notified.
    pub consumed: bool,
}

/// The daemon's end of one domain's ring.
///
/// A request's bytes stay in the ring (`req_cons` does not pass them)
/// until its reply has been written into the ring: the daemon notes where
/// each request's reply ends in the connection's output
/// ([`note_request`](Ring::note_request)) and releases the requests whose
/// replies are out ([`release_answered`](Ring::release_answered)). So if the
/// daemon dies, every request the guest has no answer to is still in the
/// ring for the restarted daemon, which resumes the ring as it is.
#[derive(Debug)]
pub struct Ring<P> {
    page: P,
    features: u32,
    /// The message being received: header, then payload.
    partial: Vec<u8>,
    bad: Option<RingError>,
    /// Where reading goes on (stream offset): everything before it is in
    /// `partial` or was handed out.
    cursor: u32,
    /// The `req_cons` last stored: requests before it are answered.
    released: u32,
    /// Requests handed out and not yet released, oldest first: where each
    /// ends in the request stream, and where its reply ends in the
    /// connection's output (its `OutQueue::pushed` after the request).
    unanswered: VecDeque<(u32, u64)>,
}

impl<P: RingPage> Ring<P> {
    /// Wraps a mapped page; `features` is the domain's mask (§8.7). The
    /// page is not touched until [`reset`](Ring::reset) or
    /// [`resume`](Ring::resume).
    pub fn new(page: P, features: u32) -> Ring<P> {
        let released = load(&page, layout::REQ_CONS);
        Ring { page, features, partial: Vec::new(), bad: None, cursor: released, released, unanswered: VecDeque::new() }
    }

    /// The page.
    pub fn page(&self) -> &P {
        &self.page
    }

    /// INTRODUCE (§8.1 steps 3–4): forget partial input, zero the four
    /// indexes, advertise the features, clear the error; if the guest
    /// asked for a reconnection (`connection` = 1) acknowledge it. Returns
    /// whether the guest must be notified.
    pub fn reset(&mut self) -> bool {
        self.partial.clear();
        self.bad = None;
        self.cursor = 0;
        self.released = 0;
        self.unanswered.clear();
        for off in [layout::REQ_CONS, layout::REQ_PROD, layout::RSP_CONS, layout::RSP_PROD] {
            store(&self.page, off, 0);
        }
        store(&self.page, layout::SERVER_FEATURES, self.features);
        store(&self.page, layout::ERROR, error_code::NONE);
        fence(Ordering::SeqCst);
        if load(&self.page, layout::CONNECTION) == connection::RECONNECT {
            store(&self.page, layout::CONNECTION, connection::CONNECTED);
            fence(Ordering::SeqCst);
            return true;
        }
        false
    }

    /// Takes the ring up as the other side left it (the store domain's own
    /// ring at start-up, a guest's after a restart): indexes and queued
    /// bytes carry on, the features are advertised and the error cleared.
    /// Inconsistent indexes make the ring bad at once; a pending
    /// reconnection request is honoured with a [`reset`](Ring::reset).
    /// The other side must be notified afterwards: it may be waiting.
    pub fn resume(&mut self) {
        if load(&self.page, layout::CONNECTION) == connection::RECONNECT {
            self.reset();
            return;
        }
        self.partial.clear();
        self.bad = None;
        self.released = load(&self.page, layout::REQ_CONS);
        self.cursor = self.released;
        self.unanswered.clear();
        store(&self.page, layout::SERVER_FEATURES, self.features);
        store(&self.page, layout::ERROR, error_code::NONE);
        fence(Ordering::SeqCst);
        for half in [REQ, RSP] {
            let used = load(&self.page, half.prod).wrapping_sub(load(&self.page, half.cons));
            if used > RING_SIZE {
                self.fail(RingError::BadIndex);
            }
        }
    }

    /// Request bytes the guest has put in the ring and not had answered.
    pub fn waiting_requests(&self) -> u32 {
        load(&self.page, layout::REQ_PROD).wrapping_sub(self.released)
    }

    /// The port the domain builder left in the page (0: none, §8.1).
    pub fn evtchn_port(&self) -> u32 {
        load(&self.page, layout::EVTCHN_PORT)
    }

    /// The guest's port to bind: the one the page names, else the one
    /// INTRODUCE gave (§8.1).
    pub fn port_to_bind(&self, introduced: u32) -> u32 {
        match self.evtchn_port() {
            0 => introduced,
            named => named,
        }
    }

    /// Why the ring was abandoned, if it was.
    pub fn error(&self) -> Option<RingError> {
        self.bad
    }

    /// Abandons the ring: every later call fails; the guest learns why
    /// through the `error` field if it has the `ERROR` feature.
    pub fn fail(&mut self, e: RingError) {
        if self.bad.is_none() {
            self.bad = Some(e);
            self.partial = Vec::new();
            if self.features & features::ERROR != 0 {
                store(&self.page, layout::ERROR, e.code());
                fence(Ordering::SeqCst);
            }
        }
    }

    /// Whether the guest has produced bytes not yet taken (or a message
    /// is half received).
    pub fn has_input(&self) -> bool {
        self.bad.is_none() && (!self.partial.is_empty() || load(&self.page, layout::REQ_PROD) != self.cursor)
    }

    /// The request just read ([`read_message`](Ring::read_message)) is
    /// answered once the connection's output has been sent up to
    /// `reply_end` (its `OutQueue::pushed` after the request).
    pub fn note_request(&mut self, reply_end: u64) {
        let end = self.cursor.wrapping_sub(self.partial.len() as u32);
        self.unanswered.push_back((end, reply_end));
    }

    /// Hands back the space of the requests whose replies are written
    /// (the output sent up to `sent`); returns whether `req_cons` moved
    /// (the guest may be waiting for space: notify it).
    pub fn release_answered(&mut self, sent: u64) -> bool {
        let mut upto = None;
        while let Some(&(end, reply_end)) = self.unanswered.front() {
            if reply_end > sent {
                break;
            }
            upto = Some(end);
            self.unanswered.pop_front();
        }
        let moved = upto.is_some_and(|end| self.release(end));
        self.release_partial_if_idle() || moved
    }

    /// Hands back the space of everything read, answered or not, the
    /// partial message included: before a live update, whose stream carries
    /// the replies still to send and the partial message.
    pub fn release_taken(&mut self) -> bool {
        self.unanswered.clear();
        self.release(self.cursor)
    }

    /// A message can be longer than the ring: when the ring is full and
    /// the message still incomplete, the guest can only go on if the space
    /// of what was read is handed back, answered or not. (Those requests
    /// lose their place in the ring should the daemon die before answering.)
    fn release_if_stuck(&mut self) -> bool {
        let full = load(&self.page, layout::REQ_PROD).wrapping_sub(self.released) >= RING_SIZE;
        if self.partial.is_empty() || !full {
            return self.release_partial_if_idle();
        }
        self.release_taken()
    }

    /// The rest of a half-received message comes without a notification
    /// unless the part read is handed back: Linux's xenbus writer kicks the
    /// event channel only when it finds the ring drained (`req_cons` at its
    /// old `req_prod`), and writes a header and its payload as two chunks.
    /// So when nothing unanswered precedes it, the part read is released
    /// (it is lost, as with C, should the daemon die before the rest
    /// arrives). With requests unanswered before it, their release comes
    /// first and this runs then.
    fn release_partial_if_idle(&mut self) -> bool {
        if self.partial.is_empty() || !self.unanswered.is_empty() {
            return false;
        }
        self.release(self.cursor)
    }

    fn release(&mut self, upto: u32) -> bool {
        if self.bad.is_some() || upto == self.released {
            return false;
        }
        // The copies completed before the space is handed back.
        fence(Ordering::SeqCst);
        store(&self.page, layout::REQ_CONS, upto);
        self.released = upto;
        true
    }

    /// Takes request bytes until one whole message is in `out` (cleared
    /// first) or the ring is empty; a partial message is kept for the next
    /// call. Never reads beyond the message, so the caller decides when the
    /// next request is taken.
    pub fn read_message(&mut self, out: &mut Vec<u8>) -> Result<Polled, RingError> {
        if let Some(e) = self.bad {
            return Err(e);
        }
        out.clear();
        loop {
            let have = self.partial.len();
            let want = if have < HEADER_LEN {
                HEADER_LEN
            } else {
                let len = u32::from_le_bytes([self.partial[12], self.partial[13], self.partial[14], self.partial[15]]);
                if len as usize > PAYLOAD_MAX {
                    let e = RingError::Protocol { len };
                    self.fail(e);
                    return Err(e);
                }
                HEADER_LEN + len as usize
            };
            if have == want {
                core::mem::swap(out, &mut self.partial);
                self.partial.clear();
                return Ok(Polled { complete: true, consumed: false });
            }
            self.partial.resize(want, 0);
            match copy_requests(&self.page, self.released, self.cursor, &mut self.partial[have..want]) {
                Ok(n) => {
                    self.partial.truncate(have + n);
                    self.cursor = self.cursor.wrapping_add(n as u32);
                    if n == 0 {
                        return Ok(Polled { complete: false, consumed: self.release_if_stuck() });
                    }
                }
                Err(BadIndexes) => {
                    self.fail(RingError::BadIndex);
                    return Err(RingError::BadIndex);
                }
            }
        }
    }

    /// Copies as much of `bytes` as fits into the reply ring.
    pub fn write(&mut self, bytes: &[u8]) -> Result<usize, RingError> {
        if let Some(e) = self.bad {
            return Err(e);
        }
        produce(&self.page, RSP, bytes).map_err(|BadIndexes| {
            self.fail(RingError::BadIndex);
            RingError::BadIndex
        })
    }
}

/// The daemon's view of a ring, whatever its page: what a platform hands
/// the event loop.
pub trait RingIo {
    /// See [`Ring::read_message`].
    fn read_message(&mut self, out: &mut Vec<u8>) -> Result<Polled, RingError>;
    /// See [`Ring::write`].
    fn write(&mut self, bytes: &[u8]) -> Result<usize, RingError>;
    /// See [`Ring::fail`].
    fn fail(&mut self, e: RingError);
    /// See [`Ring::error`].
    fn error(&self) -> Option<RingError>;
    /// See [`Ring::has_input`].
    fn has_input(&self) -> bool;
    /// See [`Ring::note_request`].
    fn note_request(&mut self, reply_end: u64);
    /// See [`Ring::release_answered`].
    fn release_answered(&mut self, sent: u64) -> bool;
    /// See [`Ring::release_taken`].
    fn release_taken(&mut self) -> bool;
    /// Request bytes taken from the page but not yet a whole message (a
    /// live-update dump carries them).
    fn partial(&self) -> &[u8] {
        &[]
    }
    /// Puts back the bytes of [`partial`](RingIo::partial) after a live
    /// update: the rest of the message is still in the page.
    fn restore_partial(&mut self, _bytes: &[u8]) {}
}

impl<P: RingPage> RingIo for Ring<P> {
    fn read_message(&mut self, out: &mut Vec<u8>) -> Result<Polled, RingError> {
        Ring::read_message(self, out)
    }
    fn write(&mut self, bytes: &[u8]) -> Result<usize, RingError> {
        Ring::write(self, bytes)
    }
    fn fail(&mut self, e: RingError) {
        Ring::fail(self, e)
    }
    fn error(&self) -> Option<RingError> {
        self.bad
    }
    fn has_input(&self) -> bool {
        Ring::has_input(self)
    }
    fn note_request(&mut self, reply_end: u64) {
        Ring::note_request(self, reply_end)
    }
    fn release_answered(&mut self, sent: u64) -> bool {
        Ring::release_answered(self, sent)
    }
    fn release_taken(&mut self) -> bool {
        Ring::release_taken(self)
    }
    fn partial(&self) -> &[u8] {
        &self.partial
    }
    fn restore_partial(&mut self, bytes: &[u8]) {
        self.partial.clear();
        self.partial.extend_from_slice(bytes);
    }
}

/// Why a guest cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestError {
    /// The daemon's indexes are inconsistent.
    BadIndex,
    /// The daemon sent a length above 4096.
    Protocol,
    /// The daemon set the `error` field (its value).
    Server(u32),
}

/// A guest's end of a ring, as Linux's xenbus drives it: requests into
/// `req`, replies and events out of `rsp`, reassembled by a [`Decoder`].
#[derive(Debug)]
pub struct GuestRing<P> {
    page: P,
    decoder: Decoder,
}

impl<P: RingPage> GuestRing<P> {
    /// The guest's end of the ring in `page`.
    pub fn new(page: P) -> GuestRing<P> {
        GuestRing { page, decoder: Decoder::new() }
    }

    /// The page.
    pub fn page(&self) -> &P {
        &self.page
    }

    /// The daemon's `error` field.
    pub fn server_error(&self) -> u32 {
        load(&self.page, layout::ERROR)
    }

    /// The features the daemon advertises.
    pub fn server_features(&self) -> u32 {
        load(&self.page, layout::SERVER_FEATURES)
    }

    /// Copies as much of `bytes` as fits into the request ring; the caller
    /// notifies the daemon if it returned more than 0.
    pub fn send(&mut self, bytes: &[u8]) -> Result<usize, GuestError> {
        produce(&self.page, REQ, bytes).map_err(|BadIndexes| GuestError::BadIndex)
    }

    /// Takes what the daemon produced; returns the number of bytes taken
    /// (notify the daemon if non-zero: it may wait for space).
    pub fn pull(&mut self) -> Result<usize, GuestError> {
        let mut buf = [0u8; RING_SIZE as usize];
        let n = consume(&self.page, RSP, &mut buf).map_err(|BadIndexes| GuestError::BadIndex)?;
        self.decoder.push(&buf[..n]);
        Ok(n)
    }

    /// The next whole message already pulled.
    pub fn next_message(&mut self) -> Result<Option<Message>, GuestError> {
        self.decoder.next_message().map_err(|_: FrameError| GuestError::Protocol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;
    use wire::Op;

    fn msg(op: Op, req_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        wire::encode(op, req_id, 0, payload, &mut v);
        v
    }

    /// A model guest written independently of `consume`/`produce`: it
    /// keeps its own copy of the indexes and writes the page with plain
    /// field stores, as a C guest would.
    struct ModelGuest {
        prod: u32,
        cons: u32,
    }

    impl ModelGuest {
        fn at(page: &HeapPage, start: u32) -> ModelGuest {
            store(page, layout::REQ_PROD, start);
            store(page, layout::REQ_CONS, start);
            store(page, layout::RSP_PROD, start);
            store(page, layout::RSP_CONS, start);
            ModelGuest { prod: start, cons: start }
        }

        /// Writes up to `max` bytes of `data`; returns how many.
        fn put(&mut self, page: &HeapPage, data: &[u8], max: usize) -> usize {
            let free = RING_SIZE - self.prod.wrapping_sub(load(page, layout::REQ_CONS));
            let n = data.len().min(free as usize).min(max);
            for (i, b) in data[..n].iter().enumerate() {
                let at = (self.prod.wrapping_add(i as u32) % RING_SIZE) as usize;
                byte(page, layout::REQ + at).store(*b, Ordering::Relaxed);
            }
            self.prod = self.prod.wrapping_add(n as u32);
            fence(Ordering::SeqCst);
            store(page, layout::REQ_PROD, self.prod);
            n
        }

        fn take(&mut self, page: &HeapPage, out: &mut Vec<u8>, max: usize) {
            let prod = load(page, layout::RSP_PROD);
            fence(Ordering::SeqCst);
            let n = (prod.wrapping_sub(self.cons) as usize).min(max);
            for i in 0..n {
                let at = (self.cons.wrapping_add(i as u32) % RING_SIZE) as usize;
                out.push(byte(page, layout::RSP + at).load(Ordering::Relaxed));
            }
            self.cons = self.cons.wrapping_add(n as u32);
            fence(Ordering::SeqCst);
            store(page, layout::RSP_CONS, self.cons);
        }
    }

    #[test]
    fn reset_zeroes_indexes_advertises_features_and_acks_reconnect() {
        let page = Arc::new(HeapPage::new());
        for off in [layout::REQ_CONS, layout::REQ_PROD, layout::RSP_CONS, layout::RSP_PROD] {
            store(&*page, off, 77);
        }
        store(&*page, layout::CONNECTION, connection::RECONNECT);
        store(&*page, layout::ERROR, 3);
        let mut ring = Ring::new(page.clone(), features::DEFAULT);
        assert!(ring.reset(), "a reconnect request needs a notification");
        for off in [layout::REQ_CONS, layout::REQ_PROD, layout::RSP_CONS, layout::RSP_PROD, layout::ERROR] {
            assert_eq!(load(&*page, off), 0);
        }
        assert_eq!(load(&*page, layout::SERVER_FEATURES), 14);
        assert_eq!(load(&*page, layout::CONNECTION), connection::CONNECTED);
        assert!(!ring.reset(), "no reconnect pending: no notification");
    }

    #[test]
    fn a_half_received_message_after_an_unanswered_one_is_released_with_it() {
        let page = HeapPage::new();
        let mut g = ModelGuest::at(&page, 0);
        let mut ring = Ring::new(&page, features::DEFAULT);
        let first = msg(Op::Read, 1, b"/a\0");
        let second = msg(Op::Write, 2, b"/b\0value");
        let mut out = Vec::new();
        g.put(&page, &first, 100);
        assert!(ring.read_message(&mut out).expect("good ring").complete);
        ring.note_request(10);
        g.put(&page, &second[..HEADER_LEN], 100);
        // The header waits behind the unanswered request: req_cons stays
        // where the first request starts.
        assert_eq!(ring.read_message(&mut out), Ok(Polled { complete: false, consumed: false }));
        assert_eq!(load(&page, layout::REQ_CONS), 0);
        // The first reply out: both the request and the header go back, so
        // the guest's payload write finds a drained ring and kicks.
        assert!(ring.release_answered(10));
        assert_eq!(load(&page, layout::REQ_CONS), load(&page, layout::REQ_PROD));
        g.put(&page, &second[HEADER_LEN..], 100);
        let p = ring.read_message(&mut out).expect("good ring");
        assert!(p.complete);
        assert_eq!(out, second);
    }

    #[test]
    fn messages_across_the_wrap_point_and_in_pieces() {
        let page = HeapPage::new();
        let mut g = ModelGuest::at(&page, u32::MAX - 9);
        let mut ring = Ring::new(&page, features::DEFAULT);
        let m = msg(Op::Write, 7, b"/a/b\0value");
        let mut out = Vec::new();
        // Three bytes of header only: handed back at once (nothing
        // unanswered before them), so that a writer who kicks only a
        // drained ring kicks for the rest.
        assert_eq!(g.put(&page, &m, 3), 3);
        assert_eq!(ring.read_message(&mut out), Ok(Polled { complete: false, consumed: true }));
        assert_eq!(load(&page, layout::REQ_CONS), load(&page, layout::REQ_PROD));
        assert_eq!(ring.read_message(&mut out), Ok(Polled { complete: false, consumed: false }));
        assert!(ring.has_input(), "a half-received message counts as input");
        g.put(&page, &m[3..], 100);
        let p = ring.read_message(&mut out).expect("good ring");
        assert!(p.complete);
        assert_eq!(out, m);
        assert!(!ring.has_input());
        // Its space is handed back once its reply is out.
        ring.note_request(10);
        assert!(ring.release_answered(10));
        assert_eq!(load(&page, layout::REQ_CONS), load(&page, layout::REQ_PROD));
        // The indexes wrapped through zero.
        assert!(load(&page, layout::REQ_CONS) < 100);
    }

    #[test]
    fn reads_stop_at_the_end_of_one_message() {
        let page = HeapPage::new();
        let mut g = ModelGuest::at(&page, 0);
        let mut ring = Ring::new(&page, features::DEFAULT);
        let (a, b) = (msg(Op::Read, 1, b"/a\0"), msg(Op::Read, 2, b"/b\0"));
        g.put(&page, &[a.clone(), b.clone()].concat(), 1024);
        let mut out = Vec::new();
        assert!(ring.read_message(&mut out).expect("ok").complete);
        assert_eq!(out, a);
        ring.note_request(0);
        assert!(ring.release_answered(0));
        assert_eq!(load(&page, layout::REQ_CONS), a.len() as u32, "the second request stays in the ring");
        assert!(ring.read_message(&mut out).expect("ok").complete);
        assert_eq!(out, b);
    }

    /// The daemon may die between reading a request and writing its reply:
    /// the request stays in the ring until its reply is out, so the next
    /// daemon (resuming the ring) reads it again; nothing the guest waits
    /// for is lost.
    #[test]
    fn a_request_keeps_its_place_in_the_ring_until_its_reply_is_out() {
        let page = HeapPage::new();
        let mut g = ModelGuest::at(&page, 5);
        let mut ring = Ring::new(&page, features::DEFAULT);
        let (a, b) = (msg(Op::Write, 1, b"/a\0x"), msg(Op::Write, 2, b"/b\0y"));
        g.put(&page, &[a.clone(), b.clone()].concat(), 1024);
        let mut out = Vec::new();
        assert!(ring.read_message(&mut out).expect("ok").complete);
        ring.note_request(40); // a's reply ends at output byte 40
        assert!(ring.read_message(&mut out).expect("ok").complete);
        ring.note_request(80);
        assert_eq!(load(&page, layout::REQ_CONS), 5, "nothing answered yet");
        assert!(!ring.release_answered(39), "a's reply is not wholly out");
        assert!(ring.release_answered(40));
        assert_eq!(load(&page, layout::REQ_CONS), 5 + a.len() as u32);

        // The daemon dies here, b answered in its memory only: the next one
        // resumes the ring and finds b again.
        let mut next = Ring::new(&page, features::DEFAULT);
        next.resume();
        assert!(next.read_message(&mut out).expect("ok").complete);
        assert_eq!(out, b);
        assert!(!next.has_input());
    }

    /// Before a live update everything read is released: the stream carries
    /// the replies still to send and the partial message instead.
    #[test]
    fn release_taken_hands_back_the_partial_message_too() {
        let page = HeapPage::new();
        let mut g = ModelGuest::at(&page, 0);
        let mut ring = Ring::new(&page, features::DEFAULT);
        let a = msg(Op::Read, 1, b"/a\0");
        g.put(&page, &a, 1024);
        g.put(&page, &msg(Op::Read, 2, b"/bb\0")[..7], 1024);
        let mut out = Vec::new();
        assert!(ring.read_message(&mut out).expect("ok").complete);
        ring.note_request(100);
        assert!(!ring.read_message(&mut out).expect("ok").complete);
        assert_eq!(ring.partial().len(), 7);
        assert!(ring.release_taken());
        assert_eq!(load(&page, layout::REQ_CONS), a.len() as u32 + 7);
        assert!(!ring.release_answered(100), "nothing left to release");
    }

    #[test]
    fn oversize_length_marks_the_ring_bad_with_error_3() {
        let page = HeapPage::new();
        let mut g = ModelGuest::at(&page, 0);
        let mut ring = Ring::new(&page, features::DEFAULT);
        let mut hdr = msg(Op::Read, 1, b"");
        hdr[12..16].copy_from_slice(&4097u32.to_le_bytes());
        g.put(&page, &hdr, 16);
        let mut out = Vec::new();
        assert_eq!(ring.read_message(&mut out), Err(RingError::Protocol { len: 4097 }));
        assert_eq!(load(&page, layout::ERROR), error_code::PROTO);
        // Ignored from now on, even for well-formed input.
        g.put(&page, &msg(Op::Read, 2, b"/\0"), 100);
        assert_eq!(ring.read_message(&mut out), Err(RingError::Protocol { len: 4097 }));
        assert_eq!(ring.write(b"x"), Err(RingError::Protocol { len: 4097 }));
        assert!(!ring.has_input());
        // A new INTRODUCE brings it back.
        ring.reset();
        assert_eq!(ring.error(), None);
        assert_eq!(load(&page, layout::ERROR), 0);
    }

    #[test]
    fn exactly_4096_payload_bytes_are_accepted() {
        let page = Arc::new(HeapPage::new());
        let mut ring = Ring::new(page.clone(), features::DEFAULT);
        let mut guest = GuestRing::new(page.clone());
        let m = msg(Op::Write, 1, &vec![b'x'; 4096]);
        let (mut sent, mut out) = (0, Vec::new());
        loop {
            sent += guest.send(&m[sent..]).expect("ok");
            let p = ring.read_message(&mut out).expect("ok");
            if p.complete {
                break;
            }
        }
        assert_eq!(out, m);
    }

    #[test]
    fn inconsistent_indexes_mark_the_ring_bad_with_error_2() {
        for (field_prod, field_cons, write) in
            [(layout::REQ_PROD, layout::REQ_CONS, false), (layout::RSP_PROD, layout::RSP_CONS, true)]
        {
            let page = HeapPage::new();
            let mut ring = Ring::new(&page, features::DEFAULT);
            store(&page, field_cons, 10);
            store(&page, field_prod, 10 + RING_SIZE + 1);
            let mut out = Vec::new();
            let r = if write { ring.write(b"abc").map(|_| ()) } else { ring.read_message(&mut out).map(|_| ()) };
            assert_eq!(r, Err(RingError::BadIndex));
            assert_eq!(load(&page, layout::ERROR), error_code::RINGIDX);
            assert_eq!(load(&page, field_prod), 10 + RING_SIZE + 1, "the bad ring is not touched");
        }
        // Exactly RING_SIZE apart is a full ring, not an error.
        let page = HeapPage::new();
        let mut ring = Ring::new(&page, features::DEFAULT);
        store(&page, layout::RSP_PROD, RING_SIZE);
        assert_eq!(ring.write(b"abc"), Ok(0));
        assert_eq!(ring.error(), None);
    }

    #[test]
    fn error_field_only_with_the_error_feature() {
        let page = HeapPage::new();
        let mut ring = Ring::new(&page, features::WATCHDEPTH);
        store(&page, layout::REQ_PROD, 5000);
        assert_eq!(ring.read_message(&mut Vec::new()), Err(RingError::BadIndex));
        assert_eq!(load(&page, layout::ERROR), 0);
    }

    #[test]
    fn writes_fill_the_ring_and_resume_after_the_guest_consumes() {
        let page = HeapPage::new();
        let mut g = ModelGuest::at(&page, 1000);
        let mut ring = Ring::new(&page, features::DEFAULT);
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut written = 0;
        let mut got = Vec::new();
        while written < data.len() {
            let n = ring.write(&data[written..]).expect("good ring");
            assert!(n <= RING_SIZE as usize);
            written += n;
            g.take(&page, &mut got, 333);
        }
        g.take(&page, &mut got, usize::MAX);
        g.take(&page, &mut got, usize::MAX);
        assert_eq!(got, data);
    }

    proptest! {
        /// Any sequence of messages, cut into any pieces at any starting
        /// index, comes out of `read_message` whole and in order; replies
        /// written in any pieces reach the model guest unchanged.
        #[test]
        fn model_guest_round_trip(
            start in any::<u32>(),
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1500), 1..12),
            cuts in proptest::collection::vec(1usize..700, 1..40),
            reply_cuts in proptest::collection::vec(1usize..900, 1..40),
        ) {
            let page = HeapPage::new();
            let mut g = ModelGuest::at(&page, start);
            let mut ring = Ring::new(&page, features::DEFAULT);
            let msgs: Vec<Vec<u8>> = payloads.iter().enumerate().map(|(i, p)| msg(Op::Write, i as u32, p)).collect();
            let stream: Vec<u8> = msgs.concat();
            let (mut sent, mut k, mut got, mut out) = (0, 0, Vec::new(), Vec::new());
            while got.len() < msgs.len() {
                let cut = cuts[k % cuts.len()];
                k += 1;
                sent += g.put(&page, &stream[sent..], cut);
                loop {
                    let p = ring.read_message(&mut out).expect("consistent ring");
                    if !p.complete { break; }
                    got.push(out.clone());
                    // Answered at once: its space goes back.
                    ring.note_request(got.len() as u64);
                    ring.release_answered(got.len() as u64);
                }
                prop_assert!(k < 10_000, "no progress");
            }
            prop_assert_eq!(&got, &msgs);
            prop_assert!(!ring.has_input());
            // Replies, the other way.
            let (mut written, mut k, mut back) = (0, 0, Vec::new());
            while back.len() < stream.len() {
                let cut = reply_cuts[k % reply_cuts.len()];
                k += 1;
                written += ring.write(&stream[written..(written + cut).min(stream.len())]).expect("consistent ring");
                g.take(&page, &mut back, cut / 2 + 1);
                prop_assert!(k < 100_000, "no progress");
            }
            prop_assert_eq!(back, stream);
        }

        /// Whatever a hostile guest writes into the indexes and the ring,
        /// the daemon's end never panics, never reads or writes past the
        /// claimed bytes, and either serves or fails with the right code.
        #[test]
        fn arbitrary_page_contents_never_panic(
            words in proptest::collection::vec(any::<u32>(), 8),
            data in proptest::collection::vec(any::<u8>(), 1024),
        ) {
            let page = HeapPage::new();
            for (i, b) in data.iter().enumerate() {
                byte(&page, layout::REQ + i).store(*b, Ordering::Relaxed);
            }
            for (i, w) in words.iter().enumerate() {
                store(&page, layout::REQ_CONS + 4 * i, *w);
            }
            let mut ring = Ring::new(&page, features::DEFAULT);
            let mut out = Vec::new();
            for _ in 0..100 {
                match ring.read_message(&mut out) {
                    Ok(p) if p.complete => prop_assert!(out.len() >= HEADER_LEN && out.len() <= HEADER_LEN + PAYLOAD_MAX),
                    Ok(_) => break,
                    Err(e) => {
                        prop_assert_eq!(load(&page, layout::ERROR), e.code());
                        break;
                    }
                }
            }
            let _ = ring.write(&[1, 2, 3]);
            if let Some(e) = ring.error() {
                prop_assert_eq!(load(&page, layout::ERROR), e.code());
            }
        }
    }
}
