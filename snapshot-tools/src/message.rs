//! Decoding of the xenstore wire messages held in a connection's pending
//! input and output bytes (PROTOCOL.md §1–2).
//!
//! The header, its limits and the operation codes are `wire`'s; what is
//! added here is the stream's byte order (a stream may be big-endian, the
//! wire never is) and decoding that never fails: bytes that do not form a
//! whole message become a [`Partial`] tail.

use wire::Op;
pub use wire::{HEADER_LEN, Header, PAYLOAD_MAX};

use crate::model::ByteOrder;

/// Encodes a header in the stream's byte order.
pub fn encode_header(h: &Header, order: ByteOrder) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    for (i, v) in [h.msg_type, h.req_id, h.tx_id, h.len].into_iter().enumerate() {
        let bytes = match order {
            ByteOrder::Little => v.to_le_bytes(),
            ByteOrder::Big => v.to_be_bytes(),
        };
        out[i * 4..i * 4 + 4].copy_from_slice(&bytes);
    }
    out
}

fn decode_header(bytes: &[u8], order: ByteOrder) -> Option<Header> {
    let word = |i: usize| -> Option<u32> {
        let b: [u8; 4] = bytes.get(i * 4..i * 4 + 4)?.try_into().ok()?;
        Some(match order {
            ByteOrder::Little => u32::from_le_bytes(b),
            ByteOrder::Big => u32::from_be_bytes(b),
        })
    };
    Some(Header { msg_type: word(0)?, req_id: word(1)?, tx_id: word(2)?, len: word(3)? })
}

/// One complete message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Offset of the header inside the pending bytes it came from.
    pub offset: usize,
    /// Decoded header.
    pub header: Header,
    /// `header.len` payload bytes.
    pub payload: Vec<u8>,
}

impl Message {
    /// Name of the operation (`WRITE`, `WATCH_EVENT`, …).
    pub fn type_name(&self) -> &'static str {
        type_name(self.header.msg_type)
    }

    /// Payload split at NULs, for display: `["/a", "tok"]`.
    pub fn payload_strings(&self) -> Vec<Vec<u8>> {
        let mut parts: Vec<Vec<u8>> = self.payload.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
        if self.payload.last() == Some(&0) {
            parts.pop();
        }
        parts
    }

    /// Whether this is the synthetic XS_CONTROL `"OK\0"` reply of a live update.
    pub fn is_lu_ok_reply(&self) -> bool {
        self.header.msg_type == Op::Control.code() && self.payload == b"OK\0"
    }
}

/// Trailing bytes that do not form a whole message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partial {
    /// Offset of the first byte inside the pending bytes.
    pub offset: usize,
    /// Header, if all 16 header bytes are present.
    pub header: Option<Header>,
    /// All bytes of the partial message (header bytes included).
    pub bytes: Vec<u8>,
}

impl Partial {
    /// Payload bytes still missing, when the header is complete.
    pub fn missing_payload(&self) -> Option<usize> {
        let header = self.header?;
        let have = self.bytes.len().saturating_sub(HEADER_LEN);
        Some((header.len as usize).saturating_sub(have))
    }
}

/// Result of splitting pending bytes into messages.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Decoded {
    /// Whole messages, in order.
    pub messages: Vec<Message>,
    /// An incomplete final message, if any.
    pub partial: Option<Partial>,
    /// Offsets of messages whose `len` exceeds [`PAYLOAD_MAX`].
    pub oversized: Vec<usize>,
}

/// Splits `bytes` into whole messages plus at most one partial tail.
///
/// Never trusts `len`: a message whose payload runs past the end becomes
/// the partial tail.
pub fn decode_messages(bytes: &[u8], order: ByteOrder) -> Decoded {
    let mut out = Decoded::default();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let Some(header) = decode_header(rest, order) else {
            out.partial = Some(Partial { offset: pos, header: None, bytes: rest.to_vec() });
            break;
        };
        if header.len as usize > PAYLOAD_MAX {
            out.oversized.push(pos);
        }
        let end = HEADER_LEN.checked_add(header.len as usize);
        match end.and_then(|end| rest.get(HEADER_LEN..end)) {
            Some(payload) => {
                out.messages.push(Message { offset: pos, header, payload: payload.to_vec() });
                pos += HEADER_LEN + payload.len();
            }
            None => {
                out.partial = Some(Partial { offset: pos, header: Some(header), bytes: rest.to_vec() });
                break;
            }
        }
    }
    out
}

/// Encodes a whole message.
pub fn encode_message(header: &Header, payload: &[u8], order: ByteOrder) -> Vec<u8> {
    let mut out = encode_header(header, order).to_vec();
    out.extend_from_slice(payload);
    out
}

/// Name of a message type code (PROTOCOL.md §2.1).
pub fn type_name(code: u32) -> &'static str {
    match Op::from_code(code) {
        Some(op) => op.name(),
        // Removed from Xen, but a stream may still hold one.
        None if code == 20 => "RESTRICT",
        None => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_whole_and_partial() {
        let mut bytes =
            encode_message(&Header { msg_type: 2, req_id: 7, tx_id: 0, len: 3 }, b"/a\0", ByteOrder::Little);
        bytes.extend_from_slice(&encode_header(
            &Header { msg_type: 11, req_id: 1, tx_id: 0, len: 31 },
            ByteOrder::Little,
        ));
        bytes.extend_from_slice(b"/loca");
        let d = decode_messages(&bytes, ByteOrder::Little);
        assert_eq!(d.messages.len(), 1);
        assert_eq!(d.messages[0].type_name(), "READ");
        let p = d.partial.expect("partial");
        assert_eq!(p.offset, 19);
        assert_eq!(p.missing_payload(), Some(26));
    }

    #[test]
    fn short_header_is_partial() {
        let d = decode_messages(&[2, 0, 0, 0, 1, 0], ByteOrder::Little);
        assert!(d.messages.is_empty());
        assert_eq!(d.partial.map(|p| p.header), Some(None));
    }
}
