//! A table-friendly driver for the protocol core: requests in as bytes,
//! replies and events out as values, exactly as a frontend would see them.

#![allow(dead_code)]

use std::collections::HashMap;

use engine::DomId;
use rxenstored_core::{Config, ConnId, Core};
use wire::{Decoder, Op};

/// A reply: `Ok(payload)` or `Err(errno name)`.
pub type Reply = Result<Vec<u8>, String>;

pub struct Harness {
    pub core: Core,
    next_req: u32,
    /// Events drained while looking for a reply, kept for `events`.
    pending: HashMap<ConnId, Vec<wire::Message>>,
}

impl Default for Harness {
    fn default() -> Harness {
        Harness::new(Config::default())
    }
}

impl Harness {
    pub fn new(config: Config) -> Harness {
        Harness { core: Core::new(config), next_req: 1, pending: HashMap::new() }
    }

    /// The dom0 socket client.
    pub fn socket(&mut self) -> ConnId {
        self.core.connect_socket()
    }

    /// A connection acting as domain `domid` (its ring, in the daemon).
    pub fn domu(&mut self, domid: u16) -> ConnId {
        self.core.connect_domain(DomId(domid))
    }

    /// TRANSACTION_START on `conn`: the new transaction's id.
    pub fn start_tx(&mut self, conn: ConnId) -> u32 {
        let reply = self.call(conn, Op::TransactionStart, 0, b"\0").expect("TRANSACTION_START");
        String::from_utf8(reply).expect("ASCII id").trim_end_matches('\0').parse().expect("a number")
    }

    /// Sends one request and returns its reply; events stay queued for
    /// [`Harness::events`].
    pub fn call(&mut self, conn: ConnId, op: Op, tx: u32, payload: &[u8]) -> Reply {
        let req_id = self.next_req;
        self.next_req += 1;
        let mut bytes = Vec::new();
        wire::encode(op, req_id, tx, payload, &mut bytes);
        self.core.receive(conn, &bytes).expect("well-formed request");
        let mut reply = None;
        let mut rest = Vec::new();
        for msg in self.drain(conn) {
            if reply.is_none() && msg.header.req_id == req_id && msg.header.msg_type != Op::WatchEvent.code() {
                assert_eq!(msg.header.tx_id, tx, "reply echoes tx_id");
                reply = Some(if msg.header.msg_type == Op::Error.code() {
                    let name = msg.payload.strip_suffix(b"\0").expect("NUL-terminated error");
                    Err(String::from_utf8(name.to_vec()).expect("ASCII errno"))
                } else {
                    assert_eq!(msg.header.msg_type, op.code(), "reply carries the request's type");
                    Ok(msg.payload)
                });
            } else {
                rest.push(msg);
            }
        }
        self.requeue(conn, rest);
        reply.expect("a reply to every request")
    }

    fn drain(&mut self, conn: ConnId) -> Vec<wire::Message> {
        let mut decoder = Decoder::new();
        let out = self.core.output(conn).expect("connection");
        while let Some(front) = out.front() {
            let n = front.len();
            decoder.push(front);
            out.advance(n);
        }
        let mut msgs = Vec::new();
        while let Some(m) = decoder.next_message().expect("valid output") {
            msgs.push(m);
        }
        msgs
    }

    fn requeue(&mut self, conn: ConnId, msgs: Vec<wire::Message>) {
        self.pending.entry(conn).or_default().extend(msgs);
    }

    /// Every event queued for `conn` so far, as (path, token).
    pub fn events(&mut self, conn: ConnId) -> Vec<(String, String)> {
        let mut all = self.pending.remove(&conn).unwrap_or_default();
        all.extend(self.drain(conn));
        all.into_iter()
            .map(|m| {
                assert_eq!(m.header.msg_type, Op::WatchEvent.code());
                assert_eq!((m.header.req_id, m.header.tx_id), (0, 0), "events carry zero ids");
                let mut parts = m.payload.split(|&b| b == 0);
                let path = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let token = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                (path, token)
            })
            .collect()
    }
}

/// `a\0b\0c\0` from ["a", "b", "c"].
pub fn args(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

pub fn ok(s: &str) -> Reply {
    Ok(s.as_bytes().to_vec())
}

pub fn okk() -> Reply {
    ok("OK\0")
}

pub fn err(name: &str) -> Reply {
    Err(name.to_string())
}

pub fn ev(path: &str, token: &str) -> (String, String) {
    (path.to_string(), token.to_string())
}
