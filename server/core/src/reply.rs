//! The wire form of replies: a request's result as the message that
//! answers it.

use alloc::vec::Vec;

use wire::{Header, PAYLOAD_MAX, encode, encode_error};

use crate::error::{Error, Result};

/// Appends the reply to a request: its payload, or its error (and E2BIG
/// for a payload the wire cannot carry).
pub(crate) fn encode_reply(hdr: &Header, result: Result<Vec<u8>>, out: &mut Vec<u8>) {
    match result {
        Ok(payload) if payload.len() > PAYLOAD_MAX => encode_error(Error::TooBig.errno(), hdr.req_id, hdr.tx_id, out),
        Ok(payload) => encode(hdr.msg_type, hdr.req_id, hdr.tx_id, &payload, out),
        Err(e) => encode_error(e.errno(), hdr.req_id, hdr.tx_id, out),
    }
}

/// The reply `OK\0`.
pub(crate) fn ok() -> Vec<u8> {
    b"OK\0".to_vec()
}

/// A text reply: `s` and its NUL.
pub(crate) fn text(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}
