//! Bounds-checked integer access in the stream byte order, and padding.
//!
//! Every read returns `Option`: a length field from the file is never
//! trusted to fit, so callers turn `None` into a finding with an offset.

use crate::model::ByteOrder;

/// Rounds up to the next multiple of 8, as every record length is.
pub fn roundup8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// Reads a `u16` at `off`, or `None` if it does not fit in `buf`.
pub fn u16_at(buf: &[u8], off: usize, order: ByteOrder) -> Option<u16> {
    let b: [u8; 2] = buf.get(off..off.checked_add(2)?)?.try_into().ok()?;
    Some(match order {
        ByteOrder::Little => u16::from_le_bytes(b),
        ByteOrder::Big => u16::from_be_bytes(b),
    })
}

/// Reads a `u32` at `off`, or `None` if it does not fit in `buf`.
pub fn u32_at(buf: &[u8], off: usize, order: ByteOrder) -> Option<u32> {
    let b: [u8; 4] = buf.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(match order {
        ByteOrder::Little => u32::from_le_bytes(b),
        ByteOrder::Big => u32::from_be_bytes(b),
    })
}

/// Reads a `u64` at `off`, or `None` if it does not fit in `buf`.
pub fn u64_at(buf: &[u8], off: usize, order: ByteOrder) -> Option<u64> {
    let b: [u8; 8] = buf.get(off..off.checked_add(8)?)?.try_into().ok()?;
    Some(match order {
        ByteOrder::Little => u64::from_le_bytes(b),
        ByteOrder::Big => u64::from_be_bytes(b),
    })
}

/// Appends integers in the stream byte order.
#[derive(Debug)]
pub struct Out {
    /// Bytes written so far.
    pub buf: Vec<u8>,
    /// Byte order of records.
    pub order: ByteOrder,
}

impl Out {
    /// Appends a `u16`.
    pub fn u16(&mut self, v: u16) {
        match self.order {
            ByteOrder::Little => self.buf.extend_from_slice(&v.to_le_bytes()),
            ByteOrder::Big => self.buf.extend_from_slice(&v.to_be_bytes()),
        }
    }

    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) {
        match self.order {
            ByteOrder::Little => self.buf.extend_from_slice(&v.to_le_bytes()),
            ByteOrder::Big => self.buf.extend_from_slice(&v.to_be_bytes()),
        }
    }

    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) {
        match self.order {
            ByteOrder::Little => self.buf.extend_from_slice(&v.to_le_bytes()),
            ByteOrder::Big => self.buf.extend_from_slice(&v.to_be_bytes()),
        }
    }

    /// Appends zeros up to the next multiple of 8 (file position, as C does).
    pub fn pad8(&mut self) {
        let len = roundup8(self.buf.len());
        self.buf.resize(len, 0);
    }
}

/// Escapes bytes for display: printable ASCII as is, `\\`, `\'`, `\0`,
/// `\n`, `\t`, and `\xHH` for the rest.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'\'' => s.push_str("\\'"),
            0 => s.push_str("\\0"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

/// Lowercase hex of bytes, grouped in 4-byte words (`0b000000 01000000`).
pub fn hex_words(bytes: &[u8]) -> String {
    bytes.chunks(4).map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>()).collect::<Vec<_>>().join(" ")
}
