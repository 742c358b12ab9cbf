//! The image's own end-to-end check, run at every boot before the rings
//! are served: a fresh core, the control domain setting up a guest's home,
//! and a connection acting as that guest sending raw wire requests —
//! WRITE, READ (absolute and relative), DIRECTORY, a refused write, a
//! watch, a transaction — with every reply checked byte for byte.

use alloc::vec::Vec;

use engine::DomId;
use rxenstored_core::{Config, ConnId, Core, NoRings};
use wire::{Decoder, Message};

use crate::println;

// Operation codes and the reply types, as numbers on purpose: these are the
// bytes on the wire (PROTOCOL.md §2.1).
const DIRECTORY: u32 = 1;
const READ: u32 = 2;
const WATCH: u32 = 4;
const TRANSACTION_START: u32 = 6;
const TRANSACTION_END: u32 = 7;
const WRITE: u32 = 11;
const MKDIR: u32 = 12;
const SET_PERMS: u32 = 14;
const WATCH_EVENT: u32 = 15;
const ERROR: u32 = 16;

/// One request as raw bytes: the 16-byte little-endian header, then the
/// payload.
fn raw(msg_type: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + payload.len());
    for word in [msg_type, req_id, tx_id, payload.len() as u32] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(payload);
    out
}

struct Check {
    core: Core<NoRings>,
    failures: u32,
    checks: u32,
    next_req: u32,
}

impl Check {
    /// Sends one request, returns everything the connection was sent.
    fn send(&mut self, conn: ConnId, msg_type: u32, tx_id: u32, payload: &[u8]) -> (u32, Vec<Message>) {
        self.next_req += 1;
        let req_id = self.next_req;
        let bytes = raw(msg_type, req_id, tx_id, payload);
        // Split in two to exercise reassembly.
        let (a, b) = bytes.split_at(bytes.len() / 2);
        let ok = self.core.receive(conn, a).is_ok() && self.core.receive(conn, b).is_ok();
        assert!(ok, "self-test request refused");
        let mut dec = Decoder::new();
        if let Some(q) = self.core.output(conn) {
            while let Some(front) = q.front() {
                let n = front.len();
                dec.push(front);
                q.advance(n);
            }
        }
        let mut msgs = Vec::new();
        while let Ok(Some(m)) = dec.next_message() {
            msgs.push(m);
        }
        (req_id, msgs)
    }

    fn expect(
        &mut self,
        what: &str,
        conn: ConnId,
        msg_type: u32,
        tx_id: u32,
        payload: &[u8],
        want: &[(u32, &[u8])],
    ) -> Vec<Message> {
        let (req_id, got) = self.send(conn, msg_type, tx_id, payload);
        self.checks += 1;
        let ok = got.len() == want.len()
            && got.iter().zip(want).all(|(m, (t, p))| {
                m.header.msg_type == *t && m.payload == *p && (*t == WATCH_EVENT || m.header.req_id == req_id)
            });
        if ok {
            println!("selftest: {what}: ok");
        } else {
            self.failures += 1;
            println!("selftest: {what}: FAILED");
            for m in &got {
                println!(
                    "  got type {} req {} payload {:?}",
                    m.header.msg_type,
                    m.header.req_id,
                    core::str::from_utf8(&m.payload)
                );
            }
        }
        got
    }
}

/// Runs the check; true if every reply was as expected.
pub fn run() -> bool {
    let mut c = Check { core: Core::new(Config::default()), failures: 0, checks: 0, next_req: 0 };
    let dom0 = c.core.connect_domain(DomId(0));
    let guest = c.core.connect_domain(DomId(1));

    c.expect("dom0 MKDIR home", dom0, MKDIR, 0, b"/local/domain/1\0", &[(MKDIR, b"OK\0")]);
    c.expect("dom0 SET_PERMS home", dom0, SET_PERMS, 0, b"/local/domain/1\0n1\0", &[(SET_PERMS, b"OK\0")]);

    c.expect("guest WRITE", guest, WRITE, 0, b"/local/domain/1/data/x\0hello", &[(WRITE, b"OK\0")]);
    c.expect("guest READ", guest, READ, 0, b"/local/domain/1/data/x\0", &[(READ, b"hello")]);
    c.expect("guest READ relative", guest, READ, 0, b"data/x\0", &[(READ, b"hello")]);
    c.expect("guest WRITE second", guest, WRITE, 0, b"data/w\0", &[(WRITE, b"OK\0")]);
    c.expect("guest DIRECTORY", guest, DIRECTORY, 0, b"/local/domain/1/data\0", &[(DIRECTORY, b"x\0w\0")]);
    c.expect("guest WRITE outside home", guest, WRITE, 0, b"/tool/x\0no", &[(ERROR, b"EACCES\0")]);
    c.expect("guest READ missing", guest, READ, 0, b"data/none\0", &[(ERROR, b"ENOENT\0")]);
    c.expect(
        "guest WATCH",
        guest,
        WATCH,
        0,
        b"/local/domain/1/data\0tok\0",
        &[(WATCH, b"OK\0"), (WATCH_EVENT, b"/local/domain/1/data\0tok\0")],
    );

    // The transaction id is the daemon's choice: take it from the reply.
    let (_, started) = c.send(guest, TRANSACTION_START, 0, b"\0");
    let tx = started
        .first()
        .filter(|m| m.header.msg_type == TRANSACTION_START)
        .and_then(|m| core::str::from_utf8(m.payload.strip_suffix(b"\0")?).ok()?.parse::<u32>().ok());
    c.checks += 1;
    match tx {
        Some(tx) if tx != 0 => {
            println!("selftest: transaction id {tx}: ok");
            c.expect("guest WRITE in transaction", guest, WRITE, tx, b"data/y\0in-tx", &[(WRITE, b"OK\0")]);
            c.expect("guest READ in transaction", guest, READ, tx, b"data/y\0", &[(READ, b"in-tx")]);
            c.expect("guest READ outside transaction", guest, READ, 0, b"data/y\0", &[(ERROR, b"ENOENT\0")]);
            c.expect(
                "guest TRANSACTION_END commit",
                guest,
                TRANSACTION_END,
                tx,
                b"T\0",
                &[(WATCH_EVENT, b"/local/domain/1/data/y\0tok\0"), (TRANSACTION_END, b"OK\0")],
            );
            c.expect("guest READ committed", guest, READ, 0, b"data/y\0", &[(READ, b"in-tx")]);
        }
        _ => {
            c.failures += 1;
            println!("selftest: TRANSACTION_START gave no id: FAILED");
        }
    }
    c.expect("dom0 WRITE fires guest watch", dom0, WRITE, 0, b"/local/domain/1/data/x\0bye", &[(WRITE, b"OK\0")]);
    c.expect(
        "guest sees event",
        guest,
        READ,
        0,
        b"data/x\0",
        &[(WATCH_EVENT, b"/local/domain/1/data/x\0tok\0"), (READ, b"bye")],
    );

    println!("selftest: {} checks, {} failed", c.checks, c.failures);
    c.failures == 0
}
