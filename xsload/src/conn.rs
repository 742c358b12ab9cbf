//! A lean blocking connection for the timed loops, on `wire`'s codec, and
//! the error type of every workload.
//!
//! Unlike `wire::client::Client` it sets the socket timeouts once (not per
//! read), builds requests in a reused buffer and can pipeline: several
//! requests queued and sent in one write, replies read in order. A reply
//! that does not come within the timeout is a [`Fail::Stalled`]; a wrong
//! one is a [`Fail::Wrong`].

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use wire::{Decoder, Header, Message, Op};

/// Why a workload could not finish.
#[derive(Debug, Clone)]
pub enum Fail {
    /// The daemon did not answer within the timeout.
    Stalled(String),
    /// A reply was wrong, an error was unexpected, or the connection broke.
    Wrong(String),
}

impl Fail {
    /// Adds context in front of the message.
    pub fn context(self, what: impl fmt::Display) -> Fail {
        match self {
            Fail::Stalled(m) => Fail::Stalled(format!("{what}: {m}")),
            Fail::Wrong(m) => Fail::Wrong(format!("{what}: {m}")),
        }
    }

    /// Whether this is a stall (not an error of the daemon's answers).
    pub fn is_stall(&self) -> bool {
        matches!(self, Fail::Stalled(_))
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Stalled(m) => write!(f, "stalled: {m}"),
            Fail::Wrong(m) => write!(f, "{m}"),
        }
    }
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Fail {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Fail::Stalled(format!("no reply: {e}")),
            _ => Fail::Wrong(format!("connection: {e}")),
        }
    }
}

/// Result of the workloads.
pub type Res<T> = Result<T, Fail>;

/// Shows a payload for messages.
pub fn show(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.len() > 60 { format!("{:?}…", &s[..s.floor_char_boundary(60)]) } else { format!("{s:?}") }
}

/// The error name of an `ERROR` reply, if `msg` is one.
pub fn error_name(msg: &Message) -> Option<&[u8]> {
    (msg.header.msg_type == Op::Error.code()).then(|| msg.payload.strip_suffix(b"\0").unwrap_or(&msg.payload))
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    stream: UnixStream,
    decoder: Decoder,
    out: Vec<u8>,
    rbuf: Vec<u8>,
    next_req_id: u32,
}

impl Conn {
    /// Connects; every read and write waits at most `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Res<Conn> {
        let stream =
            UnixStream::connect(socket).map_err(|e| Fail::Wrong(format!("connect {}: {e}", socket.display())))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Conn {
            stream,
            decoder: Decoder::new(),
            out: Vec::with_capacity(4096),
            rbuf: vec![0; 16384],
            next_req_id: 1,
        })
    }

    /// Appends a request whose payload is `parts` concatenated to the
    /// output buffer (not sent yet); returns its `req_id`.
    pub fn queue(&mut self, op: Op, tx_id: u32, parts: &[&[u8]]) -> u32 {
        let req_id = self.next_req_id;
        self.next_req_id = self.next_req_id.wrapping_add(1);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let header = Header { msg_type: op.code(), req_id, tx_id, len: len as u32 };
        self.out.extend_from_slice(&header.to_bytes());
        for p in parts {
            self.out.extend_from_slice(p);
        }
        req_id
    }

    /// Sends everything queued.
    pub fn flush(&mut self) -> Res<()> {
        let r = self.stream.write_all(&self.out);
        self.out.clear();
        Ok(r?)
    }

    /// The next message of any kind.
    pub fn recv(&mut self) -> Res<Message> {
        loop {
            match self.decoder.next_message() {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(e) => return Err(Fail::Wrong(format!("undecodable reply: {e}"))),
            }
            let n = loop {
                match self.stream.read(&mut self.rbuf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            };
            if n == 0 {
                return Err(Fail::Wrong("daemon closed the connection".into()));
            }
            self.decoder.push(&self.rbuf[..n]);
        }
    }

    /// The reply to `req_id` of type `op` (or `ERROR`): the next message,
    /// which must carry `req_id` (this connection has no watches).
    pub fn reply(&mut self, op: Op, req_id: u32) -> Res<Message> {
        let m = self.recv()?;
        if m.header.req_id != req_id || (m.header.msg_type != op.code() && m.header.msg_type != Op::Error.code()) {
            return Err(Fail::Wrong(format!(
                "{} req {req_id}: got a message of type {} for req {}: {}",
                op.name(),
                m.header.msg_type,
                m.header.req_id,
                show(&m.payload)
            )));
        }
        Ok(m)
    }

    /// The socket, for a connection kept open without further use.
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// Sends one request and waits for its reply.
    pub fn call(&mut self, op: Op, tx_id: u32, parts: &[&[u8]]) -> Res<Message> {
        let id = self.queue(op, tx_id, parts);
        self.flush()?;
        self.reply(op, id)
    }

    /// Sends one request and checks that the reply is `OK\0`.
    pub fn call_ok(&mut self, op: Op, tx_id: u32, parts: &[&[u8]]) -> Res<()> {
        let m = self.call(op, tx_id, parts)?;
        expect_ok(&m, op, parts)
    }

    /// TRANSACTION_START; the new transaction's id.
    pub fn transaction_start(&mut self) -> Res<u32> {
        let m = self.call(Op::TransactionStart, 0, &[b"\0"])?;
        if let Some(e) = error_name(&m) {
            return Err(Fail::Wrong(format!("TRANSACTION_START: {}", show(e))));
        }
        std::str::from_utf8(m.payload.strip_suffix(b"\0").unwrap_or(&m.payload))
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Fail::Wrong(format!("TRANSACTION_START reply {}", show(&m.payload))))
    }

    /// WRITE `value` to `path` (outside any transaction unless `tx_id`).
    pub fn write(&mut self, tx_id: u32, path: &[u8], value: &[u8]) -> Res<()> {
        self.call_ok(Op::Write, tx_id, &[path, b"\0", value])
    }

    /// READ `path`, which must hold `value`.
    pub fn read_expect(&mut self, tx_id: u32, path: &[u8], value: &[u8]) -> Res<()> {
        let m = self.call(Op::Read, tx_id, &[path, b"\0"])?;
        expect_value(&m, path, value)
    }

    /// Sends `writes` pipelined, `window` requests per write(2), checking
    /// every reply; returns how many were sent. With a deadline, stops
    /// (between batches) once it has passed.
    pub fn pipelined_writes<I>(&mut self, writes: I, window: usize, deadline: Option<std::time::Instant>) -> Res<u64>
    where
        I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    {
        let mut it = writes.into_iter();
        let mut total = 0u64;
        let mut batch: Vec<(u32, Vec<u8>)> = Vec::with_capacity(window);
        loop {
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(total);
            }
            batch.clear();
            for (path, value) in it.by_ref().take(window.max(1)) {
                let id = self.queue(Op::Write, 0, &[&path, b"\0", &value]);
                batch.push((id, path));
            }
            if batch.is_empty() {
                return Ok(total);
            }
            self.flush()?;
            for (id, path) in &batch {
                let m = self.reply(Op::Write, *id)?;
                expect_ok(&m, Op::Write, &[path])?;
            }
            total += batch.len() as u64;
        }
    }
}

/// Checks that `m` is the success `OK\0`.
pub fn expect_ok(m: &Message, op: Op, parts: &[&[u8]]) -> Res<()> {
    if m.header.msg_type == op.code() && m.payload == b"OK\0" {
        return Ok(());
    }
    Err(Fail::Wrong(format!(
        "{} {}: expected OK, got {}{}",
        op.name(),
        show(parts.first().copied().unwrap_or_default()),
        if error_name(m).is_some() { "error " } else { "" },
        show(&m.payload)
    )))
}

/// Checks that `m` is a READ reply carrying `value`.
pub fn expect_value(m: &Message, path: &[u8], value: &[u8]) -> Res<()> {
    if m.header.msg_type == Op::Read.code() && m.payload == value {
        return Ok(());
    }
    Err(Fail::Wrong(format!(
        "READ {}: expected {}, got {}{}",
        show(path),
        show(value),
        if error_name(m).is_some() { "error " } else { "" },
        show(&m.payload)
    )))
}

/// Joins every client thread (all of them, even after a failure) and gives
/// their results in order, or the first failure; a thread that panicked is
/// a failure naming `what` it was.
pub fn join_all<T>(handles: Vec<std::thread::JoinHandle<Res<T>>>, what: &str) -> Res<Vec<T>> {
    let mut results = Vec::with_capacity(handles.len());
    let mut first_err = None;
    for h in handles {
        match h.join().unwrap_or_else(|_| Err(Fail::Wrong(format!("{what} panicked")))) {
            Ok(v) => results.push(v),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(results),
    }
}
