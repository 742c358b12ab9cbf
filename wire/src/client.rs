//! A blocking client, for tests and tools (feature `std`).
//!
//! One [`Client`] is one xenstore connection: a Unix socket by default, or
//! any other byte stream through [`Transport`] (the Xen test harness uses
//! Linux's `/dev/xen/xenbus`). Requests are sent with an
//! incrementing `req_id`; while waiting for a reply, every other message
//! (watch events, stray replies) is kept in a backlog, so nothing is lost.
//! Watch events are read with [`Client::next_event`], raw messages with
//! [`Client::recv_message`].

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::string::String;
use std::time::{Duration, Instant};
use std::vec::Vec;

use crate::{Decoder, Message, Op, encode};

/// How long [`Client::request`] waits for its reply unless changed with
/// [`Client::set_reply_timeout`].
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reply {
    /// A reply of the request's type: its payload.
    Ok(Vec<u8>),
    /// An `ERROR` reply: the error name. A well-formed payload is exactly
    /// `NAME\0`; anything else is reported as `<malformed "...">` so that
    /// comparing with a name also checks the payload bytes.
    Err(String),
}

impl Reply {
    /// Builds the reply carried by `msg`.
    pub fn from_message(msg: &Message) -> Reply {
        if msg.header.msg_type == Op::Error.code() {
            Reply::Err(error_name(&msg.payload))
        } else {
            Reply::Ok(msg.payload.clone())
        }
    }

    /// Whether this is a success.
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Ok(_))
    }

    /// The payload of a success.
    pub fn ok(&self) -> Option<&[u8]> {
        match self {
            Reply::Ok(p) => Some(p),
            Reply::Err(_) => None,
        }
    }

    /// The error name of a failure.
    pub fn err(&self) -> Option<&str> {
        match self {
            Reply::Ok(_) => None,
            Reply::Err(e) => Some(e),
        }
    }

    /// A success with this payload.
    pub fn ok_from(payload: impl AsRef<[u8]>) -> Reply {
        Reply::Ok(payload.as_ref().to_vec())
    }

    /// A failure with this error name.
    pub fn err_from(name: &str) -> Reply {
        Reply::Err(name.into())
    }

    /// `OK\0`, the reply of operations that return no data.
    pub fn ok_nul() -> Reply {
        Reply::Ok(b"OK\0".to_vec())
    }
}

fn error_name(payload: &[u8]) -> String {
    match payload.split_last() {
        Some((0, name)) if !name.contains(&0) => String::from_utf8_lossy(name).into_owned(),
        _ => std::format!("<malformed {:?}>", String::from_utf8_lossy(payload)),
    }
}

/// A byte stream to a xenstore daemon.
pub trait Transport {
    /// Writes all of `bytes`.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Reads what is there, waiting at most `timeout`: `Ok(None)` if
    /// nothing came in time, `Ok(Some(0))` at end of stream.
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>>;
}

impl Transport for UnixStream {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        self.set_read_timeout(Some(timeout.max(Duration::from_micros(1))))?;
        loop {
            match self.read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl<T: Transport + ?Sized> Transport for std::boxed::Box<T> {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        (**self).send(bytes)
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        (**self).recv(buf, timeout)
    }
}

/// One blocking connection to a xenstore daemon.
#[derive(Debug)]
pub struct Client<T = UnixStream> {
    stream: T,
    decoder: Decoder,
    backlog: VecDeque<Message>,
    next_req_id: u32,
    reply_timeout: Duration,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Client> {
        Ok(Client::over(UnixStream::connect(path)?))
    }

    /// The socket (e.g. to shut it down).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

impl<T: Transport> Client<T> {
    /// A client speaking over `stream`.
    pub fn over(stream: T) -> Client<T> {
        Client {
            stream,
            decoder: Decoder::new(),
            backlog: VecDeque::new(),
            next_req_id: 1,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        }
    }

    /// Changes how long [`request`](Self::request) waits for a reply.
    pub fn set_reply_timeout(&mut self, timeout: Duration) {
        self.reply_timeout = timeout;
    }

    /// Sends a request with the next `req_id` and waits for its reply.
    pub fn request(&mut self, op: Op, tx_id: u32, payload: &[u8]) -> io::Result<Reply> {
        let req_id = self.take_req_id();
        let msg = self.request_msg(op.code(), req_id, tx_id, payload)?;
        Ok(Reply::from_message(&msg))
    }

    /// Sends a request of any type with the given ids and returns the whole
    /// reply message (the first non-event message carrying `req_id`).
    pub fn request_msg(&mut self, msg_type: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> io::Result<Message> {
        let mut bytes = Vec::new();
        encode(msg_type, req_id, tx_id, payload, &mut bytes);
        self.send_raw(&bytes)?;
        self.wait_reply(req_id)
    }

    /// Waits for the reply carrying `req_id` (after a [`send_raw`]
    /// (Self::send_raw)), keeping other messages in the backlog.
    pub fn wait_reply(&mut self, req_id: u32) -> io::Result<Message> {
        let is_reply = |m: &Message| m.header.msg_type != Op::WatchEvent.code() && m.header.req_id == req_id;
        if let Some(m) = self.backlog.iter().position(is_reply).and_then(|i| self.backlog.remove(i)) {
            return Ok(m);
        }
        let deadline = Instant::now() + self.reply_timeout;
        loop {
            match self.read_one(deadline)? {
                Some(m) if is_reply(&m) => return Ok(m),
                Some(m) => self.backlog.push_back(m),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        std::format!("no reply to req_id {req_id} within {:?}", self.reply_timeout),
                    ));
                }
            }
        }
    }

    /// Writes bytes to the socket as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.send(bytes)
    }

    /// The next message of any kind (backlog first), or `None` if nothing
    /// arrives within `timeout`. End of stream is an `UnexpectedEof` error.
    pub fn recv_message(&mut self, timeout: Duration) -> io::Result<Option<Message>> {
        if let Some(m) = self.backlog.pop_front() {
            return Ok(Some(m));
        }
        self.read_one(Instant::now() + timeout)
    }

    /// The next watch event `(path, token)`, waiting at most `timeout`.
    /// Non-event messages met meanwhile stay in the backlog. A closed or
    /// failed connection gives `None`.
    pub fn next_event(&mut self, timeout: Duration) -> Option<(Vec<u8>, Vec<u8>)> {
        let is_event = |m: &Message| m.header.msg_type == Op::WatchEvent.code();
        if let Some(i) = self.backlog.iter().position(is_event) {
            return self.backlog.remove(i).map(|m| split_event(&m.payload));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_one(deadline) {
                Ok(Some(m)) if is_event(&m) => return Some(split_event(&m.payload)),
                Ok(Some(m)) => self.backlog.push_back(m),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Removes and returns the watch events already received (in the
    /// backlog), without reading the socket. After a request round trip on
    /// this connection this is everything the daemon queued before that
    /// reply ([C] and [R] keep one ordered output queue per connection).
    pub fn take_events(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let (events, rest): (VecDeque<Message>, VecDeque<Message>) =
            self.backlog.drain(..).partition(|m| m.header.msg_type == Op::WatchEvent.code());
        self.backlog = rest;
        events.iter().map(|m| split_event(&m.payload)).collect()
    }

    /// The watch event messages already received, whole (to check headers).
    pub fn take_event_messages(&mut self) -> Vec<Message> {
        let (events, rest): (VecDeque<Message>, VecDeque<Message>) =
            self.backlog.drain(..).partition(|m| m.header.msg_type == Op::WatchEvent.code());
        self.backlog = rest;
        events.into()
    }

    /// A cheap round trip (GET_DOMAIN_PATH of domain 0): afterwards every
    /// event queued for this connection before now is in the backlog.
    pub fn sync(&mut self) -> io::Result<()> {
        self.request(Op::GetDomainPath, 0, b"0\0").map(|_| ())
    }

    fn take_req_id(&mut self) -> u32 {
        let id = self.next_req_id;
        self.next_req_id = self.next_req_id.wrapping_add(1);
        id
    }

    /// Reads until one message is decoded or the deadline passes.
    fn read_one(&mut self, deadline: Instant) -> io::Result<Option<Message>> {
        let mut buf = [0u8; 8192];
        loop {
            match self.decoder.next_message() {
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            match self.stream.recv(&mut buf, deadline - now)? {
                None => return Ok(None),
                Some(0) => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "daemon closed the connection"));
                }
                Some(n) => self.decoder.push(&buf[..n]),
            }
        }
    }
}

/// Splits an event payload `path\0token\0` (tolerating a malformed one: the
/// token is whatever follows the first NUL, minus one trailing NUL).
fn split_event(payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
    match crate::split_first(payload) {
        Some((path, rest)) => (path.to_vec(), rest.strip_suffix(b"\0").unwrap_or(rest).to_vec()),
        None => (payload.to_vec(), Vec::new()),
    }
}

fn nul(s: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s);
    v.push(0);
    v
}

/// Convenience requests. Paths and values are any byte strings; the
/// `_tx` forms take a transaction id.
impl<T: Transport> Client<T> {
    /// READ `path`.
    pub fn read(&mut self, path: impl AsRef<[u8]>) -> io::Result<Reply> {
        self.read_tx(0, path)
    }
    /// READ `path` in transaction `tx`.
    pub fn read_tx(&mut self, tx: u32, path: impl AsRef<[u8]>) -> io::Result<Reply> {
        self.request(Op::Read, tx, &nul(path.as_ref()))
    }
    /// WRITE `value` to `path`.
    pub fn write(&mut self, path: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> io::Result<Reply> {
        self.write_tx(0, path, value)
    }
    /// WRITE in transaction `tx`.
    pub fn write_tx(&mut self, tx: u32, path: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> io::Result<Reply> {
        let mut p = nul(path.as_ref());
        p.extend_from_slice(value.as_ref());
        self.request(Op::Write, tx, &p)
    }
    /// MKDIR `path`.
    pub fn mkdir(&mut self, path: impl AsRef<[u8]>) -> io::Result<Reply> {
        self.mkdir_tx(0, path)
    }
    /// MKDIR in transaction `tx`.
    pub fn mkdir_tx(&mut self, tx: u32, path: impl AsRef<[u8]>) -> io::Result<Reply> {
        self.request(Op::Mkdir, tx, &nul(path.as_ref()))
    }
    /// RM `path`.
    pub fn rm(&mut self, path: impl AsRef<[u8]>) -> io::Result<Reply> {
        self.rm_tx(0, path)
    }
    /// RM in transaction `tx`.
    pub fn rm_tx(&mut self, tx: u32, path: impl AsRef<[u8]>) -> io::Result<Reply> {
        self.request(Op::Rm, tx, &nul(path.as_ref()))
    }
    /// DIRECTORY `path`.
    pub fn directory(&mut self, path: impl AsRef<[u8]>) -> io::Result<Reply> {
        self.directory_tx(0, path)
    }
    /// DIRECTORY in transaction `tx`.
    pub fn directory_tx(&mut self, tx: u32, path: impl AsRef<[u8]>) -> io::Result<Reply> {
        self.request(Op::Directory, tx, &nul(path.as_ref()))
    }
    /// GET_PERMS `path`.
    pub fn get_perms(&mut self, path: impl AsRef<[u8]>) -> io::Result<Reply> {
        self.get_perms_tx(0, path)
    }
    /// GET_PERMS in transaction `tx`.
    pub fn get_perms_tx(&mut self, tx: u32, path: impl AsRef<[u8]>) -> io::Result<Reply> {
        self.request(Op::GetPerms, tx, &nul(path.as_ref()))
    }
    /// SET_PERMS `path` to `perms` (e.g. `["n0", "r5"]`).
    pub fn set_perms(&mut self, path: impl AsRef<[u8]>, perms: &[&str]) -> io::Result<Reply> {
        self.set_perms_tx(0, path, perms)
    }
    /// SET_PERMS in transaction `tx`.
    pub fn set_perms_tx(&mut self, tx: u32, path: impl AsRef<[u8]>, perms: &[&str]) -> io::Result<Reply> {
        let mut p = nul(path.as_ref());
        for perm in perms {
            p.extend_from_slice(perm.as_bytes());
            p.push(0);
        }
        self.request(Op::SetPerms, tx, &p)
    }
    /// WATCH `path` with `token`; the initial event stays in the backlog.
    pub fn watch(&mut self, path: impl AsRef<[u8]>, token: impl AsRef<[u8]>) -> io::Result<Reply> {
        let mut p = nul(path.as_ref());
        p.extend_from_slice(&nul(token.as_ref()));
        self.request(Op::Watch, 0, &p)
    }
    /// UNWATCH `path`/`token`.
    pub fn unwatch(&mut self, path: impl AsRef<[u8]>, token: impl AsRef<[u8]>) -> io::Result<Reply> {
        let mut p = nul(path.as_ref());
        p.extend_from_slice(&nul(token.as_ref()));
        self.request(Op::Unwatch, 0, &p)
    }
    /// TRANSACTION_START (payload `\0`); the reply carries `<id>\0`.
    pub fn transaction_start(&mut self) -> io::Result<Reply> {
        self.request(Op::TransactionStart, 0, b"\0")
    }
    /// TRANSACTION_START, parsing the id; a failure is an `Other` error.
    pub fn start_tx(&mut self) -> io::Result<u32> {
        match self.transaction_start()? {
            Reply::Ok(p) => std::str::from_utf8(p.strip_suffix(b"\0").unwrap_or(&p))
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| io::Error::other(std::format!("bad transaction id {p:?}"))),
            Reply::Err(e) => Err(io::Error::other(std::format!("TRANSACTION_START failed: {e}"))),
        }
    }
    /// TRANSACTION_END: commit if `commit`, else abort.
    pub fn transaction_end(&mut self, tx: u32, commit: bool) -> io::Result<Reply> {
        self.request(Op::TransactionEnd, tx, if commit { b"T\0" } else { b"F\0" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names() {
        assert_eq!(error_name(b"ENOENT\0"), "ENOENT");
        assert!(error_name(b"ENOENT").starts_with("<malformed"));
        assert!(error_name(b"EN\0OENT\0").starts_with("<malformed"));
        assert_eq!(split_event(b"/a\0t\0"), (b"/a".to_vec(), b"t".to_vec()));
        assert_eq!(split_event(b"/a"), (b"/a".to_vec(), b"".to_vec()));
    }
}
