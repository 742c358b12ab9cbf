//! Decoding of the xenstore wire messages held in a connection's pending
//! input and output bytes (PROTOCOL.md §1–2).
//!
//! This is a small, self-contained decoder on purpose: the `wire` crate is
//! built separately and this crate must stand alone. It never fails: bytes
//! that do not form a whole message become a [`Partial`] tail.

use crate::model::ByteOrder;

/// Size of the wire header (`type`, `req_id`, `tx_id`, `len`).
pub const HEADER_LEN: usize = 16;
/// `XENSTORE_PAYLOAD_MAX`.
pub const PAYLOAD_MAX: u32 = 4096;
/// Message type of XS_CONTROL (the LU request and its reply).
pub const XS_CONTROL: u32 = 0;
/// Message type of WATCH_EVENT.
pub const XS_WATCH_EVENT: u32 = 15;
/// Message type of an error reply.
pub const XS_ERROR: u32 = 16;
/// Message type of TRANSACTION_START.
pub const XS_TRANSACTION_START: u32 = 6;

/// Header of one wire message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Operation code.
    pub msg_type: u32,
    /// Client-chosen request id.
    pub req_id: u32,
    /// Transaction id (0 = none).
    pub tx_id: u32,
    /// Payload length announced by the header.
    pub len: u32,
}

impl Header {
    /// Encodes the header in the given byte order.
    pub fn encode(&self, order: ByteOrder) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        for (i, v) in [self.msg_type, self.req_id, self.tx_id, self.len].into_iter().enumerate() {
            let bytes = match order {
                ByteOrder::Little => v.to_le_bytes(),
                ByteOrder::Big => v.to_be_bytes(),
            };
            out[i * 4..i * 4 + 4].copy_from_slice(&bytes);
        }
        out
    }

    fn decode(bytes: &[u8], order: ByteOrder) -> Option<Header> {
        let word = |i: usize| -> Option<u32> {
            let b: [u8; 4] = bytes.get(i * 4..i * 4 + 4)?.try_into().ok()?;
            Some(match order {
                ByteOrder::Little => u32::from_le_bytes(b),
                ByteOrder::Big => u32::from_be_bytes(b),
            })
        };
        Some(Header { msg_type: word(0)?, req_id: word(1)?, tx_id: word(2)?, len: word(3)? })
    }
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
        self.header.msg_type == XS_CONTROL && self.payload == b"OK\0"
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
        let Some(header) = Header::decode(rest, order) else {
            out.partial = Some(Partial { offset: pos, header: None, bytes: rest.to_vec() });
            break;
        };
        if header.len > PAYLOAD_MAX {
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
    let mut out = header.encode(order).to_vec();
    out.extend_from_slice(payload);
    out
}

/// Name of a message type code (PROTOCOL.md §2.1).
pub fn type_name(code: u32) -> &'static str {
    const NAMES: [&str; 27] = [
        "CONTROL",
        "DIRECTORY",
        "READ",
        "GET_PERMS",
        "WATCH",
        "UNWATCH",
        "TRANSACTION_START",
        "TRANSACTION_END",
        "INTRODUCE",
        "RELEASE",
        "GET_DOMAIN_PATH",
        "WRITE",
        "MKDIR",
        "RM",
        "SET_PERMS",
        "WATCH_EVENT",
        "ERROR",
        "IS_DOMAIN_INTRODUCED",
        "RESUME",
        "SET_TARGET",
        "RESTRICT",
        "RESET_WATCHES",
        "DIRECTORY_PART",
        "GET_FEATURE",
        "SET_FEATURE",
        "GET_QUOTA",
        "SET_QUOTA",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_whole_and_partial() {
        let mut bytes =
            encode_message(&Header { msg_type: 2, req_id: 7, tx_id: 0, len: 3 }, b"/a\0", ByteOrder::Little);
        bytes.extend_from_slice(&Header { msg_type: 11, req_id: 1, tx_id: 0, len: 31 }.encode(ByteOrder::Little));
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
