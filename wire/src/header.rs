//! The 16-byte header (PROTOCOL.md §1.1) and message encoding.

use alloc::vec::Vec;

use crate::{Errno, HEADER_LEN, Op};

/// A message header. All fields are little-endian `u32` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Header {
    /// Operation code; see [`Op`]. Kept raw because invalid codes must be
    /// answered (`ENOSYS`), not rejected by the framing.
    pub msg_type: u32,
    /// Client-chosen id, echoed in the reply; 0 in watch events.
    pub req_id: u32,
    /// Transaction id, 0 outside transactions.
    pub tx_id: u32,
    /// Payload length in bytes.
    pub len: u32,
}

impl Header {
    /// Decodes a header.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Header { msg_type: word(0), req_id: word(4), tx_id: word(8), len: word(12) }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.msg_type.to_le_bytes());
        out[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        out[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        out[12..16].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// The operation named by `msg_type`, if it is a valid code.
    pub fn op(&self) -> Option<Op> {
        Op::from_code(self.msg_type)
    }
}

/// Appends one message (header and payload) to `out`.
///
/// The payload length is not checked against [`crate::PAYLOAD_MAX`]: callers
/// that must respect it (the server) check before, and tests may want to
/// send oversize messages. A payload longer than `u32::MAX` is announced
/// with a truncated length (it cannot be sent meaningfully anyway).
pub fn encode(msg_type: impl Into<u32>, req_id: u32, tx_id: u32, payload: &[u8], out: &mut Vec<u8>) {
    let header = Header { msg_type: msg_type.into(), req_id, tx_id, len: payload.len() as u32 };
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
}

/// Appends an error reply: type `ERROR`, payload `NAME\0` (§1.5).
pub fn encode_error(errno: Errno, req_id: u32, tx_id: u32, out: &mut Vec<u8>) {
    let name = errno.name().as_bytes();
    let header = Header { msg_type: Op::Error.code(), req_id, tx_id, len: name.len() as u32 + 1 };
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(name);
    out.push(0);
}

/// Appends a watch event: type `WATCH_EVENT`, ids 0, payload
/// `path\0token\0` (§6.5).
pub fn encode_watch_event(path: &[u8], token: &[u8], out: &mut Vec<u8>) {
    let header =
        Header { msg_type: Op::WatchEvent.code(), req_id: 0, tx_id: 0, len: (path.len() + token.len() + 2) as u32 };
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(path);
    out.push(0);
    out.extend_from_slice(token);
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn header_round_trip_le() {
        let h = Header { msg_type: 2, req_id: 0xDEAD_BEEF, tx_id: 7, len: 0x0102_0304 };
        let b = h.to_bytes();
        assert_eq!(b, [2, 0, 0, 0, 0xEF, 0xBE, 0xAD, 0xDE, 7, 0, 0, 0, 4, 3, 2, 1]);
        assert_eq!(Header::parse(&b), h);
        assert_eq!(h.op(), Some(Op::Read));
    }

    #[test]
    fn encodes() {
        let mut out = vec![];
        encode(Op::Read, 1, 2, b"/a\0", &mut out);
        assert_eq!(out, [&[2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0][..], b"/a\0"].concat());
        out.clear();
        encode_error(Errno::Enoent, 5, 6, &mut out);
        assert_eq!(out, [&[16, 0, 0, 0, 5, 0, 0, 0, 6, 0, 0, 0, 7, 0, 0, 0][..], b"ENOENT\0"].concat());
        out.clear();
        encode_watch_event(b"/w", b"tok", &mut out);
        assert_eq!(out, [&[15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0][..], b"/w\0tok\0"].concat());
    }
}
