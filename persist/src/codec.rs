//! Byte-level encoding shared by checkpoints and the commit log: LEB128
//! varints, length-prefixed byte strings, and a reader that never trusts a
//! length it has not checked against the bytes really there.

use engine::{Access, DomId, Path, Perm, Perms};

use crate::Problem;

#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn var(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.var(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    pub(crate) fn perms(&mut self, p: &Perms) {
        self.var(p.entries().len() as u64);
        for e in p.entries() {
            self.u8(e.access.letter() as u8);
            self.u16(e.domid.0);
        }
    }
}

/// A cursor over untrusted bytes. Every read is bounds-checked; errors
/// carry the offset (relative to `base`) where the problem is.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    base: u64,
    last_perms: Option<Perms>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8], base: u64) -> Reader<'a> {
        Reader { data, pos: 0, base, last_perms: None }
    }

    pub(crate) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Everything read so far.
    pub(crate) fn consumed(&self) -> &'a [u8] {
        &self.data[..self.pos]
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn fail(&self, what: &str) -> Problem {
        Problem { offset: self.offset(), what: what.to_string() }
    }

    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Problem> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| self.fail(&format!("truncated {what}")))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, Problem> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &str) -> Result<u16, Problem> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, Problem> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, Problem> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn var(&mut self, what: &str) -> Result<u64, Problem> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.fail(&format!("overlong varint in {what}")))
    }

    /// A count of items that each take at least `min_size` bytes: refused if
    /// the rest of the data could not hold them (no huge allocations).
    pub(crate) fn count(&mut self, min_size: usize, what: &str) -> Result<usize, Problem> {
        let n = self.var(what)?;
        let room = (self.data.len() - self.pos) / min_size.max(1);
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= room)
            .ok_or_else(|| self.fail(&format!("impossible count {n} of {what}")))
    }

    pub(crate) fn bytes(&mut self, what: &str) -> Result<&'a [u8], Problem> {
        let n = self.var(what)?;
        let n = usize::try_from(n).map_err(|_| self.fail(&format!("impossible length of {what}")))?;
        self.take(n, what)
    }

    pub(crate) fn path(&mut self) -> Result<Path, Problem> {
        let at = self.offset();
        let b = self.bytes("path")?;
        Path::from_bytes(b)
            .map_err(|e| Problem { offset: at, what: format!("invalid path {:?}: {e}", b.escape_ascii().to_string()) })
    }

    /// A permission list. Lists equal to the previous one read are shared
    /// with it, as they are in the store (children copy their parent's).
    pub(crate) fn perms(&mut self) -> Result<Perms, Problem> {
        let n = self.count(3, "permission entries")?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let letter = self.u8("permission letter")?;
            let access =
                Access::from_letter(letter).ok_or_else(|| self.fail(&format!("bad permission letter {letter:#x}")))?;
            v.push(Perm::new(access, DomId(self.u16("permission domid")?)));
        }
        if let Some(last) = self.last_perms.as_ref().filter(|p| p.entries() == v.as_slice()) {
            return Ok(last.clone());
        }
        let perms = Perms::new(&v).map_err(|_| self.fail("empty permission list"))?;
        self.last_perms = Some(perms.clone());
        Ok(perms)
    }
}
