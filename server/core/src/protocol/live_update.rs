//! Live update, the core's half (MIGRATION-STREAM.md §3.2–3.3): the
//! CONTROL `live-update` session bound to the connection that opened it,
//! TRANSACTION_START held back while an update is pending, the wait for
//! open transactions (`-t`, `-F`) and C's reply texts.
//!
//! The core never touches a file or a clock. The frontend calls
//! [`Core::live_update_tick`] after each turn of its loop with the time in
//! seconds; when the update may go ahead it gets a [`LuRequest`] back, dumps
//! the state (with the requester's `OK` reply in its output, which the new
//! process sends) and `exec`s. If that fails it calls
//! [`Core::live_update_failed`] with C's text and everything carries on.
//!
//! Difference from C: the age of an open transaction is counted from the
//! first tick after `-s` at the earliest (C stamps every 0 → 1 transaction
//! count change). With `-F` this only means the update goes ahead at the
//! timeout instead of possibly earlier; without `-F` the refusal comes at
//! the same time with the same text.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use wire::{Message, Op, encode, split_args};

use super::Core;
use crate::conn::{ConnId, ConnKind};
use crate::domain::Platform;
use crate::error::{Error, Result};
use crate::reply::text;

/// Stream version written to a successor that is rxenstored (or a C
/// 4.21+), unless `-v` says otherwise.
pub const DEFAULT_VERSION: u32 = 2;

/// The stream version for `binary` when `-v` was not given: 2 for
/// rxenstored (its file name says so), else 1, which every C xenstored
/// reads (4.17's `xenstore-control` cannot send `-v`, and 4.17 refuses
/// version 2).
pub fn default_version(binary: &[u8]) -> u32 {
    if is_rxenstored(binary) { DEFAULT_VERSION } else { 1 }
}

/// Whether the live update's new binary is rxenstored (its file name says
/// so); anything else is taken for a C xenstored.
pub fn is_rxenstored(binary: &[u8]) -> bool {
    let name = binary.rsplit(|b| *b == b'/').next().unwrap_or(binary);
    name.windows(10).any(|w| w == b"rxenstored")
}

/// What `-s` asked for, once accepted.
#[derive(Debug, Clone)]
struct Start {
    req_id: u32,
    tx_id: u32,
    force: bool,
    timeout: u64,
    version: Option<u32>,
    /// Set by the first tick after `-s`.
    started_at: Option<u64>,
}

/// An open live-update session (`-f` seen).
#[derive(Debug, Clone)]
struct Session {
    conn: ConnId,
    binary: Vec<u8>,
    /// Words of `-c`, if given.
    cmdline: Option<Vec<Vec<u8>>>,
    start: Option<Start>,
    /// A [`LuRequest`] was handed out and not yet answered by
    /// [`Core::live_update_failed`].
    performing: bool,
}

/// The live-update state of a core.
#[derive(Debug, Default)]
pub(super) struct LiveUpdate {
    session: Option<Session>,
    /// Requests held back while an update is pending, per connection, in
    /// arrival order.
    delayed: BTreeMap<ConnId, Vec<Message>>,
    /// When each connection was first seen with open transactions.
    tx_since: BTreeMap<ConnId, u64>,
    /// `-f`'s check of the new binary (the frontend's: the core has no
    /// files): `None` not accessible, `Some(executable)`.
    file_check: Option<FileCheck>,
}

/// `-f`'s check of a binary: `None` not accessible, `Some(executable)`.
pub type FileCheck = fn(&[u8]) -> Option<bool>;

/// "Perform the update now": what the frontend needs to dump and exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuRequest {
    /// The connection that sent `-s`; its `OK` goes into the dump.
    pub conn: ConnId,
    /// The `-s` request's id, for its reply.
    pub req_id: u32,
    /// The `-s` request's transaction id (0), for its reply.
    pub tx_id: u32,
    /// The new binary (`-f`).
    pub binary: Vec<u8>,
    /// The new command line (`-c`), split on blanks; `None`: keep ours.
    pub cmdline: Option<Vec<Vec<u8>>>,
    /// Stream version to write (1 or 2): `-v`, else [`default_version`].
    pub version: u32,
}

const OK: &str = "OK";

impl<P: Platform> Core<P> {
    /// Whether an update has been asked for (`-s`) and not yet finished:
    /// the frontend should tick at least once a second.
    pub fn live_update_pending(&self) -> bool {
        self.live_update.session.as_ref().is_some_and(|s| s.start.is_some())
    }

    /// How `-f` checks the new binary; without one every binary is "not
    /// accessible" (a frontend that cannot exec).
    pub fn set_live_update_file_check(&mut self, check: FileCheck) {
        self.live_update.file_check = Some(check);
    }

    /// Requests held back on a connection (they go into the dump's input).
    pub(super) fn live_update_delayed(&self, id: ConnId) -> &[Message] {
        self.live_update.delayed.get(&id).map_or(&[], Vec::as_slice)
    }

    /// Called by [`Core::handle`] first: holds back what must wait for a
    /// pending update, and takes `live-update -s` (whose reply is
    /// withheld). Returns the message when it is to be handled normally.
    pub(super) fn live_update_filter(&mut self, id: ConnId, msg: Message) -> Option<Message> {
        if self.live_update.session.is_none() && self.live_update.delayed.is_empty() {
            return Some(msg);
        }
        let conn = self.conns.get(&id)?;
        let privileged = conn.caller.privileged;
        let idle = conn.transactions.is_empty();
        if self.live_update_pending() {
            let stalled = !privileged && self.live_update.delayed.contains_key(&id);
            let tx_start = msg.header.op() == Some(Op::TransactionStart) && idle;
            if stalled || tx_start {
                self.live_update.delayed.entry(id).or_default().push(msg);
                return None;
            }
        }
        if msg.header.op() == Some(Op::Control) && privileged && msg.header.tx_id == 0 {
            let args: Vec<&[u8]> = split_args(&msg.payload).collect();
            if let [b"live-update", b"-s", rest @ ..] = args.as_slice() {
                let rest: Vec<Vec<u8>> = rest.iter().map(|a| a.to_vec()).collect();
                match self.live_update_start(id, &msg, &rest) {
                    Ok(None) => {}
                    Ok(Some(reply)) => self.reply_control(id, msg.header.req_id, msg.header.tx_id, &reply),
                    Err(e) => {
                        let mut out = Vec::new();
                        wire::encode_error(e.errno(), msg.header.req_id, msg.header.tx_id, &mut out);
                        self.push_output(id, out, false);
                    }
                }
                return None;
            }
        }
        Some(msg)
    }

    fn reply_control(&mut self, id: ConnId, req_id: u32, tx_id: u32, payload: &[u8]) {
        let mut out = Vec::new();
        encode(Op::Control, req_id, tx_id, payload, &mut out);
        self.push_output(id, out, false);
    }

    /// `-s [-t <secs>] [-F] [-v <version>]`: `Ok(None)` when accepted (the
    /// reply waits), `Ok(Some(text))` for an immediate text reply.
    fn live_update_start(&mut self, id: ConnId, msg: &Message, args: &[Vec<u8>]) -> Result<Option<Vec<u8>>> {
        let (mut force, mut timeout, mut version) = (false, 0u64, None);
        let mut i = 0;
        while i < args.len() {
            match (args[i].as_slice(), args.get(i + 1)) {
                (b"-F", _) => force = true,
                (b"-t", Some(v)) => {
                    timeout = u64::from(wire::parse_lenient_u32(v));
                    i += 1;
                }
                (b"-v", Some(v)) => {
                    let v = wire::parse_lenient_u32(v);
                    if !(1..=2).contains(&v) {
                        return Err(Error::BadRequest);
                    }
                    version = Some(v);
                    i += 1;
                }
                _ => return Err(Error::BadRequest),
            }
            i += 1;
        }
        let Some(session) = self.live_update.session.as_mut().filter(|s| s.conn == id) else {
            return Ok(Some(text("Not in live-update session.")));
        };
        if session.start.is_some() {
            return Ok(Some(text("live-update session already active.")));
        }
        session.start = Some(Start {
            req_id: msg.header.req_id,
            tx_id: msg.header.tx_id,
            force,
            timeout,
            version,
            started_at: None,
        });
        self.logs.push(format!("live-update: requested (timeout {timeout} s{})", if force { ", forced" } else { "" }));
        Ok(None)
    }

    /// CONTROL `live-update` other than `-s` (control.rs): `-f`, `-c`, `-a`.
    pub(super) fn live_update_control(&mut self, id: ConnId, args: &[&[u8]]) -> Result<Vec<u8>> {
        match args {
            [b"-f", file] => {
                if self.live_update.session.is_some() {
                    return Ok(text("live-update session already active."));
                }
                // As C: the session is open even if the file is refused;
                // the client aborts it.
                self.live_update.session =
                    Some(Session { conn: id, binary: file.to_vec(), cmdline: None, start: None, performing: false });
                let check = self.live_update.file_check.unwrap_or(|_| None);
                match check(file) {
                    None => Ok(text("File not accessible.")),
                    Some(false) => Ok(text("File not executable.")),
                    Some(true) => Ok(text(OK)),
                }
            }
            [b"-c", words @ ..] if !words.is_empty() => {
                let Some(session) = self.live_update.session.as_mut().filter(|s| s.conn == id) else {
                    return Ok(text("Not in live-update session."));
                };
                let joined = words.join(&b' ');
                let split =
                    joined.split(|b| *b == b' ' || *b == b'\t').filter(|w| !w.is_empty()).map(<[u8]>::to_vec).collect();
                session.cmdline = Some(split);
                Ok(text(OK))
            }
            [b"-a"] => {
                if let Some(session) = self.live_update.session.take() {
                    if let Some(start) = &session.start {
                        self.reply_control(
                            session.conn,
                            start.req_id,
                            start.tx_id,
                            &text("Cancellation was requested"),
                        );
                    }
                    self.logs.push(String::from("live-update: aborted"));
                    self.live_update_end();
                }
                Ok(text(OK))
            }
            _ => Err(Error::BadRequest),
        }
    }

    /// Ends the session's wait: runs the held-back requests.
    fn live_update_end(&mut self) {
        self.live_update.session = None;
        self.live_update.tx_since.clear();
        let delayed = core::mem::take(&mut self.live_update.delayed);
        for (id, msgs) in delayed {
            for msg in msgs {
                if self.conns.contains_key(&id) {
                    self.handle(id, msg);
                }
            }
        }
    }

    /// The frontend's clock: `now` in seconds (any fixed origin). Returns
    /// the update to perform once it may go ahead (§3.3 steps 3–5);
    /// replies to the requester and ends the session if it is refused.
    pub fn live_update_tick(&mut self, now: u64) -> Option<LuRequest> {
        let session = self.live_update.session.as_ref()?;
        if !self.conns.contains_key(&session.conn) {
            // The requester left: the session goes with it (§3.3 step 8).
            self.logs.push(String::from("live-update: requesting connection closed, session ended"));
            self.live_update_end();
            return None;
        }
        if session.performing {
            return None;
        }
        let conn = session.conn;
        let start = session.start.clone()?;
        let started_at = *self
            .live_update
            .session
            .as_mut()
            .and_then(|s| s.start.as_mut())
            .map(|s| s.started_at.get_or_insert(now))?;
        // Transaction ages.
        let busy: Vec<ConnId> =
            self.conns.iter().filter(|(_, c)| !c.transactions.is_empty()).map(|(id, _)| *id).collect();
        self.live_update.tx_since.retain(|id, _| busy.contains(id));
        for id in &busy {
            self.live_update.tx_since.entry(*id).or_insert(now);
        }
        let mut long = false;
        let mut young = false;
        for since in self.live_update.tx_since.values() {
            if now.saturating_sub(*since) >= start.timeout {
                long = true;
            } else {
                young = true;
            }
        }
        let allowed = !young && (!long || start.force);
        if !allowed {
            if now < started_at.saturating_add(start.timeout) {
                return None;
            }
            if !start.force {
                let reason = self.reject_reason(now, start.timeout);
                self.logs.push(format!("live-update: refused: {}", reason.replace('\n', "; ")));
                self.reply_control(conn, start.req_id, start.tx_id, &text(&reason));
                self.live_update_end();
                return None;
            }
        }
        if !self.platform.live_update_rings() && self.conns.values().any(|c| c.kind == ConnKind::Domain) {
            let reason = "Live update of guests' rings is not supported on this platform.";
            self.reply_control(conn, start.req_id, start.tx_id, &text(reason));
            self.logs.push(format!("live-update: refused: {reason}"));
            self.live_update_end();
            return None;
        }
        let session = self.live_update.session.as_mut()?;
        session.performing = true;
        Some(LuRequest {
            conn: session.conn,
            req_id: start.req_id,
            tx_id: start.tx_id,
            binary: session.binary.clone(),
            cmdline: session.cmdline.clone(),
            version: start.version.unwrap_or_else(|| default_version(&session.binary)),
        })
    }

    /// C's `lu_reject_reason`.
    fn reject_reason(&self, now: u64, timeout: u64) -> String {
        let mut s = String::new();
        for (id, since) in &self.live_update.tx_since {
            let age = now.saturating_sub(*since);
            if age >= timeout {
                let domid = self.conns.get(id).map_or(0, |c| c.caller.domid.0);
                if s.is_empty() {
                    s.push_str("Domains with long running transactions:");
                }
                s.push_str(&format!("\nDomain {domid}: {age} s"));
            }
        }
        if s.is_empty() { String::from("Overlapping transactions") } else { s }
    }

    /// The dump or `exec` failed: the requester gets `reason`, the session
    /// ends and held-back requests run.
    pub fn live_update_failed(&mut self, reason: &str) {
        let Some(session) = self.live_update.session.as_ref() else { return };
        if let Some(start) = &session.start {
            let (conn, req_id, tx_id) = (session.conn, start.req_id, start.tx_id);
            self.reply_control(conn, req_id, tx_id, &text(reason));
        }
        self.logs.push(format!("live-update: failed: {reason}"));
        self.live_update_end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Config;
    use alloc::vec;
    use wire::Decoder;

    fn new_core() -> Core {
        let mut core = Core::new(Config::default());
        core.set_live_update_file_check(|f| match f {
            b"/bin/sh" => Some(true),
            b"/etc/passwd" => Some(false),
            _ => None,
        });
        core
    }

    fn req(op: Op, req_id: u32, tx: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(op, req_id, tx, payload, &mut v);
        v
    }

    fn lu(args: &[&str]) -> Vec<u8> {
        let mut p = b"live-update\0".to_vec();
        for a in args {
            p.extend_from_slice(a.as_bytes());
            p.push(0);
        }
        p
    }

    fn replies(core: &mut Core, id: ConnId) -> Vec<(u32, u32, Vec<u8>)> {
        let mut d = Decoder::new();
        let out = core.output(id).expect("conn");
        while let Some(front) = out.front() {
            let n = front.len();
            d.push(front);
            out.advance(n);
        }
        let mut v = vec![];
        while let Ok(Some(m)) = d.next_message() {
            v.push((m.header.msg_type, m.header.req_id, m.payload));
        }
        v
    }

    #[test]
    fn session_is_bound_to_its_connection_and_texts_match_c() {
        let mut core = new_core();
        let a = core.connect_socket();
        let b = core.connect_socket();
        core.receive(a, &req(Op::Control, 1, 0, &lu(&["-f", "/bin/sh"]))).expect("ok");
        core.receive(b, &req(Op::Control, 2, 0, &lu(&["-f", "/bin/sh"]))).expect("ok");
        core.receive(b, &req(Op::Control, 3, 0, &lu(&["-s", "-t", "5"]))).expect("ok");
        core.receive(b, &req(Op::Control, 4, 0, &lu(&["-c", "x"]))).expect("ok");
        assert_eq!(replies(&mut core, a), vec![(0, 1, b"OK\0".to_vec())]);
        assert_eq!(
            replies(&mut core, b),
            vec![
                (0, 2, b"live-update session already active.\0".to_vec()),
                (0, 3, b"Not in live-update session.\0".to_vec()),
                (0, 4, b"Not in live-update session.\0".to_vec()),
            ]
        );
        // -a from anyone privileged ends it.
        core.receive(b, &req(Op::Control, 5, 0, &lu(&["-a"]))).expect("ok");
        core.receive(b, &req(Op::Control, 6, 0, &lu(&["-f", "/bin/sh"]))).expect("ok");
        assert_eq!(replies(&mut core, b), vec![(0, 5, b"OK\0".to_vec()), (0, 6, b"OK\0".to_vec())]);
        core.receive(b, &req(Op::Control, 7, 0, &lu(&["-a"]))).expect("ok");
        core.receive(b, &req(Op::Control, 8, 0, &lu(&["-f", "/nonexistent"]))).expect("ok");
        core.receive(b, &req(Op::Control, 9, 0, &lu(&["-a"]))).expect("ok");
        core.receive(b, &req(Op::Control, 10, 0, &lu(&["-f", "/etc/passwd"]))).expect("ok");
        let got = replies(&mut core, b);
        assert_eq!(got[1], (0, 8, b"File not accessible.\0".to_vec()));
        assert_eq!(got[3], (0, 10, b"File not executable.\0".to_vec()));
    }

    #[test]
    fn transaction_start_waits_and_refusal_names_the_domain() {
        let mut core = new_core();
        let lu_conn = core.connect_socket();
        let holder = core.connect_socket();
        let late = core.connect_socket();
        core.receive(holder, &req(Op::TransactionStart, 1, 0, b"\0")).expect("ok");
        assert_eq!(replies(&mut core, holder).len(), 1);
        core.receive(lu_conn, &req(Op::Control, 1, 0, &lu(&["-f", "/bin/sh"]))).expect("ok");
        core.receive(lu_conn, &req(Op::Control, 2, 0, &lu(&["-s", "-t", "2"]))).expect("ok");
        assert_eq!(replies(&mut core, lu_conn), vec![(0, 1, b"OK\0".to_vec())], "-s reply withheld");
        assert!(core.live_update_pending());
        core.receive(late, &req(Op::TransactionStart, 7, 0, b"\0")).expect("ok");
        core.receive(late, &req(Op::Read, 8, 0, b"/tool\0")).expect("ok");
        assert_eq!(replies(&mut core, late).len(), 1, "READ answered, TRANSACTION_START held back");
        assert_eq!(core.live_update_tick(100), None);
        assert_eq!(core.live_update_tick(101), None);
        assert_eq!(core.live_update_tick(102), None);
        assert_eq!(
            replies(&mut core, lu_conn),
            vec![(0, 2, b"Domains with long running transactions:\nDomain 0: 2 s\0".to_vec())]
        );
        assert!(!core.live_update_pending());
        let late_replies = replies(&mut core, late);
        assert_eq!(late_replies.len(), 1);
        assert_eq!(late_replies[0].0, Op::TransactionStart as u32, "held-back request ran after the refusal");
    }

    #[test]
    fn forced_update_goes_ahead_at_the_timeout() {
        let mut core = new_core();
        let lu_conn = core.connect_socket();
        let holder = core.connect_socket();
        core.receive(holder, &req(Op::TransactionStart, 1, 0, b"\0")).expect("ok");
        core.receive(lu_conn, &req(Op::Control, 1, 0, &lu(&["-f", "/bin/sh"]))).expect("ok");
        core.receive(lu_conn, &req(Op::Control, 9, 0, &lu(&["-s", "-t", "3", "-F", "-v", "1"]))).expect("ok");
        assert_eq!(core.live_update_tick(10), None);
        assert_eq!(core.live_update_tick(12), None);
        let r = core.live_update_tick(13).expect("forced");
        assert_eq!((r.conn, r.req_id, r.version, r.binary.as_slice()), (lu_conn, 9, 1, &b"/bin/sh"[..]));
        assert_eq!(core.live_update_tick(14), None, "handed out once");
        core.live_update_failed("Error activating new binary.");
        let got = replies(&mut core, lu_conn);
        assert_eq!(got.last(), Some(&(0, 9, b"Error activating new binary.\0".to_vec())));
    }

    #[test]
    fn no_transactions_goes_ahead_at_once_and_closing_ends_the_session() {
        let mut core = new_core();
        let c = core.connect_socket();
        core.receive(c, &req(Op::Control, 1, 0, &lu(&["-f", "/bin/sh"]))).expect("ok");
        core.receive(c, &req(Op::Control, 2, 0, &lu(&["-c", "a  b\tc"]))).expect("ok");
        core.receive(c, &req(Op::Control, 3, 0, &lu(&["-s", "-t", "60"]))).expect("ok");
        let r = core.live_update_tick(0).expect("allowed");
        assert_eq!(r.cmdline, Some(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]));
        assert_eq!(r.version, 1, "/bin/sh is not rxenstored: a stream every C reads");
        assert_eq!(default_version(b"/usr/sbin/rxenstored"), 2);
        assert_eq!(default_version(b"/usr/sbin/xenstored"), 1);
        core.disconnect(c);
        assert_eq!(core.live_update_tick(1), None);
        assert!(!core.live_update_pending());
    }

    #[test]
    fn unprivileged_cannot_and_bad_arguments_are_einval() {
        let mut core = new_core();
        let c = core.connect_socket();
        core.receive(c, &req(Op::Control, 1, 0, &lu(&["-f", "/bin/sh"]))).expect("ok");
        core.receive(c, &req(Op::Control, 2, 0, &lu(&["-s", "-x"]))).expect("ok");
        core.receive(c, &req(Op::Control, 3, 0, &lu(&["-s", "-v", "3"]))).expect("ok");
        let got = replies(&mut core, c);
        assert_eq!(got[1], (Op::Error as u32, 2, b"EINVAL\0".to_vec()));
        assert_eq!(got[2], (Op::Error as u32, 3, b"EINVAL\0".to_vec()));
        let g = core.connect_domain(engine::DomId(5));
        core.receive(g, &req(Op::Control, 4, 0, &lu(&["-a"]))).expect("ok");
        assert_eq!(replies(&mut core, g), vec![(Op::Error as u32, 4, b"EACCES\0".to_vec())]);
    }
}
