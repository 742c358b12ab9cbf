//! Incremental message decoder (PROTOCOL.md §1.1, §1.2).

use alloc::vec::Vec;

use crate::{HEADER_LEN, Header, PAYLOAD_MAX};

/// One whole message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Message {
    /// The header; `header.len == payload.len()`.
    pub header: Header,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

/// Why the byte stream cannot be decoded any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameError {
    /// A header announced more than [`PAYLOAD_MAX`] bytes; [C] closes the
    /// connection without a reply (§1.2).
    PayloadTooLong {
        /// The announced length.
        len: u32,
    },
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::PayloadTooLong { len } => {
                write!(f, "payload length {len} exceeds the maximum of {PAYLOAD_MAX}")
            }
        }
    }
}

impl core::error::Error for FrameError {}

/// Turns a byte stream split anywhere into [`Message`]s.
///
/// Feed bytes with [`push`](Self::push), take messages with
/// [`next_message`](Self::next_message) until it returns `Ok(None)`.
/// Once a [`FrameError`] has been returned the decoder is poisoned: every
/// later call returns the same error (the stream cannot be resynchronised).
#[derive(Debug, Default, Clone)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    pos: usize,
    error: Option<FrameError>,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let Some(header) = self.peek_header() else {
            return Ok(None);
        };
        if header.len as usize > PAYLOAD_MAX {
            let e = FrameError::PayloadTooLong { len: header.len };
            self.error = Some(e);
            self.buf = Vec::new();
            self.pos = 0;
            return Err(e);
        }
        let total = HEADER_LEN + header.len as usize;
        let avail = &self.buf[self.pos..];
        if avail.len() < total {
            return Ok(None);
        }
        let payload = avail[HEADER_LEN..total].to_vec();
        self.pos += total;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        Ok(Some(Message { header, payload }))
    }

    /// How many more bytes must be pushed before [`next_message`]
    /// (Self::next_message) can make progress: 0 when a message (or an
    /// error) is ready. While the header is incomplete this counts only the
    /// rest of the header.
    pub fn bytes_needed(&self) -> usize {
        if self.error.is_some() {
            return 0;
        }
        let avail = self.buf.len() - self.pos;
        match self.peek_header() {
            None => HEADER_LEN - avail,
            Some(h) if h.len as usize > PAYLOAD_MAX => 0,
            Some(h) => (HEADER_LEN + h.len as usize).saturating_sub(avail),
        }
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether a [`FrameError`] has been returned.
    pub fn is_poisoned(&self) -> bool {
        self.error.is_some()
    }

    /// Forgets everything, including a previous error (a connection reset).
    pub fn reset(&mut self) {
        *self = Decoder::default();
    }

    fn peek_header(&self) -> Option<Header> {
        let avail = &self.buf[self.pos..];
        let bytes: &[u8; HEADER_LEN] = avail.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header::parse(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Op, encode};
    use alloc::vec;

    #[test]
    fn byte_by_byte() {
        let mut bytes = vec![];
        encode(Op::Write, 1, 0, b"/a\0v", &mut bytes);
        encode(Op::Read, 2, 3, b"", &mut bytes);
        let mut d = Decoder::new();
        let mut got = vec![];
        assert_eq!(d.bytes_needed(), 16);
        for b in &bytes {
            d.push(core::slice::from_ref(b));
            while let Some(m) = d.next_message().expect("valid stream") {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].header.req_id, 1);
        assert_eq!(got[0].payload, b"/a\0v");
        assert_eq!(got[1].header.tx_id, 3);
        assert!(got[1].payload.is_empty());
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn needed_counts() {
        let mut d = Decoder::new();
        d.push(&[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(d.bytes_needed(), 8);
        d.push(&[0, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!(d.bytes_needed(), 5);
        assert_eq!(d.next_message(), Ok(None));
        d.push(b"/a\0");
        assert_eq!(d.bytes_needed(), 2);
        d.push(b"xy");
        assert_eq!(d.bytes_needed(), 0);
        assert!(d.next_message().expect("ok").is_some());
        assert_eq!(d.bytes_needed(), 16);
    }

    #[test]
    fn max_payload_accepted_longer_refused() {
        let mut d = Decoder::new();
        let mut bytes = vec![];
        encode(Op::Write, 1, 0, &[7u8; PAYLOAD_MAX], &mut bytes);
        d.push(&bytes);
        assert_eq!(d.next_message().expect("ok").map(|m| m.payload.len()), Some(PAYLOAD_MAX));

        let h = Header { msg_type: 2, req_id: 0, tx_id: 0, len: 4097 };
        d.push(&h.to_bytes());
        assert_eq!(d.bytes_needed(), 0);
        assert_eq!(d.next_message(), Err(FrameError::PayloadTooLong { len: 4097 }));
        assert!(d.is_poisoned());
        d.push(b"more");
        assert_eq!(d.next_message(), Err(FrameError::PayloadTooLong { len: 4097 }));
        d.reset();
        assert_eq!(d.next_message(), Ok(None));
    }
}
