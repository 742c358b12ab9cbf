//! The floor: a null store server. One thread per connection, blocking
//! I/O, a per-connection table (no tree, no permissions, no transactions,
//! no watches). It answers WRITE (`OK`) and READ (the value, or `ENOENT`);
//! anything else gets `ENOSYS`. What it costs per request is what the
//! socket round trip and the framing cost: the lower bound for a daemon.
//!
//! Run as `xsload floor-server SOCKET` (a separate process, so that it is
//! started, pinned and measured exactly like the daemons).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use wire::{Decoder, Errno, Message, Op, encode, encode_error};

/// Serves `socket` until killed.
pub fn serve(socket: &Path) -> io::Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        std::thread::Builder::new().name("floor-conn".into()).spawn(move || {
            // A broken client only ends its own connection.
            let _ = serve_conn(stream);
        })?;
    }
    Ok(())
}

fn serve_conn(mut stream: UnixStream) -> io::Result<()> {
    let mut table: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 16384];
    let mut out = Vec::with_capacity(4096);
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        decoder.push(&buf[..n]);
        while let Some(m) = decoder.next_message().map_err(io::Error::other)? {
            answer(&mut table, &m, &mut out);
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
    }
}

fn answer(table: &mut HashMap<Vec<u8>, Vec<u8>>, m: &Message, out: &mut Vec<u8>) {
    let h = m.header;
    match Op::from_code(h.msg_type) {
        Some(Op::Write) => match wire::split_first(&m.payload) {
            Some((path, value)) => {
                table.insert(path.to_vec(), value.to_vec());
                encode(Op::Write.code(), h.req_id, h.tx_id, b"OK\0", out);
            }
            None => encode_error(Errno::Einval, h.req_id, h.tx_id, out),
        },
        Some(Op::Read) => {
            let path = m.payload.strip_suffix(b"\0").unwrap_or(&m.payload);
            match table.get(path) {
                Some(v) => encode(Op::Read.code(), h.req_id, h.tx_id, v, out),
                None => encode_error(Errno::Enoent, h.req_id, h.tx_id, out),
            }
        }
        _ => encode_error(Errno::Enosys, h.req_id, h.tx_id, out),
    }
}
