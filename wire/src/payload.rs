//! Payload parsing primitives (PROTOCOL.md §1.3, §2.2).

/// The single argument of a "onearg" payload, without its NUL.
///
/// Valid iff the payload is non-empty and its first NUL is its last byte
/// (§1.3). `b"/a\0"` gives `b"/a"`; `b"\0"` gives the empty string (which
/// the path rules then reject); `b""`, `b"/a"`, `b"/a\0\0"`, `b"/\0a\0"`
/// give `None`.
pub fn one_arg(payload: &[u8]) -> Option<&[u8]> {
    let (last, rest) = payload.split_last()?;
    if *last == 0 && !rest.contains(&0) { Some(rest) } else { None }
}

/// The NUL-terminated strings of a payload, scanning from the start;
/// trailing bytes after the last NUL are not an argument (§1.3).
///
/// `split_args(b"a\0b\0c").count() == 2`.
pub fn split_args(payload: &[u8]) -> Args<'_> {
    Args { rest: payload }
}

/// Splits at the first NUL: `(before, after)`, as WRITE does with
/// `path\0<value>` (§2.2). `None` if there is no NUL.
pub fn split_first(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = payload.iter().position(|&b| b == 0)?;
    Some((&payload[..nul], &payload[nul + 1..]))
}

/// Iterator over the NUL-terminated strings of a payload (without their
/// NULs); see [`split_args`].
#[derive(Debug, Clone)]
pub struct Args<'a> {
    rest: &'a [u8],
}

impl<'a> Args<'a> {
    /// The bytes not yet returned (after all strings: the unterminated tail).
    pub fn remainder(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Args<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (arg, rest) = split_first(self.rest)?;
        self.rest = rest;
        Some(arg)
    }
}

/// A domain id in [C]'s strict decimal form (§2.2 INTRODUCE, GET_DOMAIN_PATH;
/// §15 item 13): ASCII digits only, value ≤ 65535. The empty string parses
/// as 0 (as in [C]). Signs, spaces, hex and any other byte give `None`.
pub fn parse_domid(s: &[u8]) -> Option<u16> {
    let mut value: u32 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
        if value > u32::from(u16::MAX) {
            return None;
        }
    }
    u16::try_from(value).ok()
}

/// A "lenient decimal" value as [C] reads SET_QUOTA and SET_FEATURE values
/// (§2.2 SET_FEATURE, SET_QUOTA: "decimal (lenient)", with `-1` becoming
/// 4294967295) and DIRECTORY_PART offsets (§2.2: "garbage → 0, no range
/// check"). It never fails.
///
/// The rule is that of C `(unsigned int)strtoul(s, NULL, 10)` on a 64-bit
/// Linux machine: skip leading white space (space, `\t \n \v \f \r`), accept
/// one optional `+` or `-`, then read decimal digits up to the first other
/// byte (the rest is ignored; no digits at all gives 0). The magnitude
/// saturates at 2⁶⁴−1 on overflow; a `-` negates it modulo 2⁶⁴ unless it
/// saturated; the result is truncated to 32 bits. So `"12abc"` → 12,
/// `"  +7"` → 7, `"abc"` → 0, `"0x10"` → 0, `"-1"` → 4294967295,
/// `"4294967296"` → 0, `"99999999999999999999"` → 4294967295.
pub fn parse_lenient_u32(s: &[u8]) -> u32 {
    let mut i = 0;
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r') {
        i += 1;
    }
    let mut negative = false;
    if let Some(&sign @ (b'+' | b'-')) = s.get(i) {
        negative = sign == b'-';
        i += 1;
    }
    let mut value: u64 = 0;
    let mut saturated = false;
    while let Some(&b) = s.get(i) {
        if !b.is_ascii_digit() {
            break;
        }
        match value.checked_mul(10).and_then(|v| v.checked_add(u64::from(b - b'0'))) {
            Some(v) => value = v,
            None => {
                saturated = true;
                value = u64::MAX;
            }
        }
        i += 1;
    }
    if negative && !saturated {
        value = value.wrapping_neg();
    }
    value as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn one_arg_rule() {
        assert_eq!(one_arg(b"/a\0"), Some(&b"/a"[..]));
        assert_eq!(one_arg(b"\0"), Some(&b""[..]));
        assert_eq!(one_arg(b""), None);
        assert_eq!(one_arg(b"/a"), None);
        assert_eq!(one_arg(b"/a\0\0"), None);
        assert_eq!(one_arg(b"/\0a\0"), None);
        assert_eq!(one_arg(b"\0a"), None);
    }

    #[test]
    fn split_rule() {
        let v: Vec<&[u8]> = split_args(b"a\0\0bc\0tail").collect();
        assert_eq!(v, [&b"a"[..], b"", b"bc"]);
        let mut a = split_args(b"x\0y");
        assert_eq!(a.next(), Some(&b"x"[..]));
        assert_eq!(a.next(), None);
        assert_eq!(a.remainder(), b"y");
        assert_eq!(split_args(b"").count(), 0);
        assert_eq!(split_args(b"abc").count(), 0);
        assert_eq!(split_first(b"/p\0v\0"), Some((&b"/p"[..], &b"v\0"[..])));
        assert_eq!(split_first(b"/p"), None);
    }

    #[test]
    fn domid_rule() {
        assert_eq!(parse_domid(b"7"), Some(7));
        assert_eq!(parse_domid(b"007"), Some(7));
        assert_eq!(parse_domid(b""), Some(0));
        assert_eq!(parse_domid(b"65535"), Some(65535));
        assert_eq!(parse_domid(b"65536"), None);
        assert_eq!(parse_domid(b"70000"), None);
        assert_eq!(parse_domid(b"4294967303"), None);
        assert_eq!(parse_domid(b"99999999999999999999999"), None);
        for bad in [&b"x"[..], b"-1", b"+7", b" 7", b"7 ", b"0x7", b"7a"] {
            assert_eq!(parse_domid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lenient_rule() {
        let cases: [(&[u8], u32); 13] = [
            (b"12abc", 12),
            (b"  +7", 7),
            (b"\t\n13", 13),
            (b"abc", 0),
            (b"", 0),
            (b"0x10", 0),
            (b"-1", u32::MAX),
            (b"-2", u32::MAX - 1),
            (b"4294967295", u32::MAX),
            (b"4294967296", 0),
            (b"4294967297", 1),
            (b"99999999999999999999", u32::MAX),
            (b"- 5", 0),
        ];
        for (s, v) in cases {
            assert_eq!(parse_lenient_u32(s), v, "{s:?}");
        }
    }
}
