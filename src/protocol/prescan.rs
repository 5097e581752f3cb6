//! The fast path of the envelope parse: read `op`, `s`, `t` and where `d` starts from the head of a
//! frame, without touching `d` itself (docs/protocol.md §2).
//!
//! Discord sends `d` last (`{"t":…,"s":…,"op":…,"d":{…}}`), so the head is a few dozen bytes however
//! large the event. Anything the fast path is not sure of — a key it cannot read before `d`, escapes in
//! a key, a nested value before `d` — returns `None`, and the caller falls back to the full parse.
//! Where `d` ends is decided separately ([`value_ends_at`]), only when someone reads `d`.
//!
//! One difference from the full parse is by design: a key repeated *after* `d` (invalid in a gateway
//! frame, and never sent) is not seen, because the fast path never reads past `d`'s start.

use std::ops::Range;

/// What the head of a frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `op`.
    pub op: u8,
    /// `s`, when present and not null.
    pub seq: Option<u64>,
    /// Where the text of `t` is (no escapes), when present and not null.
    pub event: Option<Range<usize>>,
    /// Where `d`'s value starts, when `d` is present and the last key; `None` when absent or null.
    pub data_start: Option<usize>,
    /// Where the object closes: one past the last byte of `d`'s value is at or before this.
    pub end: usize,
}

/// JSON's whitespace (RFC 8259 §2): narrower than `u8::is_ascii_whitespace`, which takes form feed.
#[inline(always)]
pub fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

#[inline(always)]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_json_ws(b[i]) {
        i += 1;
    }
    i
}

/// A string without escapes starting at `b[i] == '"'`: its contents' range and the index after it.
///
/// One pass over the bytes: the strings of a frame's head are a few bytes long (keys, event names),
/// where a plain loop beats a vectorised search plus separate checks.
#[inline(always)]
fn plain_string(b: &[u8], i: usize) -> Option<(Range<usize>, usize)> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let mut j = start;
    let mut ascii = true;
    // Eight bytes at a time while none of them is a quote, a backslash, a control character or
    // non-ASCII: event names are a dozen or more letters and underscores.
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    while let Some(chunk) = b.get(j..j + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let special = zero_byte(w ^ (ONES * u64::from(b'"')))
            | zero_byte(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
            | (w & HIGH);
        if special != 0 {
            break;
        }
        j += 8;
    }
    loop {
        match *b.get(j)? {
            b'"' => break,
            // An escape is for the full parse; a raw control character is not JSON.
            b'\\' | 0..=0x1f => return None,
            0x80.. => ascii = false,
            _ => {}
        }
        j += 1;
    }
    // Invalid UTF-8 is not JSON either; only non-ASCII bytes need the check.
    if !ascii && std::str::from_utf8(&b[start..j]).is_err() {
        return None;
    }
    Some((start..j, j + 1))
}

#[inline(always)]
fn integer(b: &[u8], mut i: usize) -> Option<(u64, usize)> {
    let start = i;
    let mut n: u64 = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        n = n.checked_mul(10)?.checked_add(u64::from(b[i] - b'0'))?;
        i += 1;
    }
    // JSON forbids leading zeros; a fraction or exponent is not an integer.
    if i == start
        || (b[start] == b'0' && i - start > 1)
        || matches!(b.get(i), Some(b'.' | b'e' | b'E'))
    {
        return None;
    }
    Some((n, i))
}

#[inline(always)]
fn null(b: &[u8], i: usize) -> Option<usize> {
    b[i..].starts_with(b"null").then_some(i + 4)
}

/// Reads the head of `frame`; `None` when the fast path cannot be sure (use the full parse).
pub fn prescan(frame: &[u8]) -> Option<Head> {
    let b = frame;
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    // The object must close at the end of the frame.
    let mut end = b.len();
    while end > i && matches!(b[end - 1], b' ' | b'\t' | b'\n' | b'\r') {
        end -= 1;
    }
    if end <= i + 1 || b[end - 1] != b'}' {
        return None;
    }
    let close = end - 1;
    i += 1;
    let (mut op, mut seq, mut event, mut seen) = (None, None, None, 0u8);
    loop {
        i = skip_ws(b, i);
        if i >= close {
            break;
        }
        // Discord writes the four keys compactly (`"op":`); those are matched whole, anything else
        // (whitespace, other keys) the general way.
        let key: &[u8] = match (b.get(i..i + 4), b.get(i..i + 5)) {
            (_, Some(b"\"op\":")) => {
                i += 5;
                b"op"
            }
            (Some(b"\"s\":"), _) => {
                i += 4;
                b"s"
            }
            (Some(b"\"t\":"), _) => {
                i += 4;
                b"t"
            }
            (Some(b"\"d\":"), _) => {
                i += 4;
                b"d"
            }
            _ => {
                let (key, next) = plain_string(b, i)?;
                i = skip_ws(b, next);
                if b.get(i) != Some(&b':') {
                    return None;
                }
                i += 1;
                &b[key]
            }
        };
        i = skip_ws(b, i);
        if i >= close {
            return None;
        }
        let bit = match key {
            b"op" => {
                let (n, next) = integer(b, i)?;
                op = Some(u8::try_from(n).ok()?);
                i = next;
                1
            }
            b"s" => {
                if let Some(next) = null(b, i) {
                    i = next;
                } else {
                    let (n, next) = integer(b, i)?;
                    seq = Some(n);
                    i = next;
                }
                2
            }
            b"t" => {
                if let Some(next) = null(b, i) {
                    i = next;
                } else {
                    let (name, next) = plain_string(b, i)?;
                    event = Some(name);
                    i = next;
                }
                4
            }
            b"d" => {
                if let Some(next) = null(b, i) {
                    i = next;
                    8
                } else if seen | 8 == 15 {
                    // `d` comes after op, s and t, as Discord sends it: everything up to the closing
                    // brace is taken to be its value (checked lazily, when `d` is read). The bytes
                    // around that brace are checked now, at no cost: a frame cut after `d`'s own
                    // closing bracket would otherwise pass for a whole one, its last `}` taken for
                    // the object's (docs/protocol.md §2: a frame is one JSON object).
                    if !tail_fits(b, i, close) {
                        return None;
                    }
                    return Some(Head {
                        op: op?,
                        seq,
                        event,
                        data_start: Some(i),
                        end: close,
                    });
                } else {
                    return None;
                }
            }
            // An unknown key with a scalar value can be stepped over; anything else is for the
            // full parse.
            _ => {
                i = skip_scalar(b, i)?;
                0
            }
        };
        if seen & bit != 0 {
            // A repeated key: the full parse decides.
            return None;
        }
        seen |= bit;
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') if i == close => break,
            _ => return None,
        }
    }
    Some(Head {
        op: op?,
        seq,
        event,
        data_start: None,
        end: close,
    })
}

/// Whether the bytes from `start` (`d`'s first byte) to `close` (the frame's last `}`) can be one value
/// followed by whitespace, judged from its ends only (`d` itself is not scanned): a container must end
/// with its closing bracket just before `close`, and a scalar or string is short enough to check whole.
///
/// `false` only means the fast path is not sure (the full parse decides): a key after `d` fails it.
/// What it cannot see — a bracket missing deep inside `d`, with the frame's last two bytes in place —
/// is found when `d` is read ([`value_ends_at`], or the handler's deserialization), never as a value.
#[inline(always)]
fn tail_fits(b: &[u8], start: usize, close: usize) -> bool {
    let Some(&first) = b.get(start) else {
        return false;
    };
    let closing = match first {
        b'{' => b'}',
        b'[' => b']',
        b'"' => {
            return string_end(b, start).is_some_and(|end| skip_ws(b, end) == close);
        }
        _ => return skip_scalar(b, start).is_some_and(|end| skip_ws(b, end) == close),
    };
    let mut last = close;
    while last > start && matches!(b[last - 1], b' ' | b'\t' | b'\n' | b'\r') {
        last -= 1;
    }
    // `last - 1` is the value's last byte; it must be past the opening bracket.
    last > start + 1 && b[last - 1] == closing
}

fn skip_scalar(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => plain_string(b, i).map(|(_, next)| next),
        b't' => b[i..].starts_with(b"true").then_some(i + 4),
        b'f' => b[i..].starts_with(b"false").then_some(i + 5),
        b'n' => null(b, i),
        b'-' | b'0'..=b'9' => number_end(b, i),
        _ => None,
    }
}

/// The index after the JSON number at `b[i]`, by JSON's grammar:
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], mut i: usize| {
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > start).then_some(i)
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match b.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(b, i)?,
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        i = digits(b, i + 1)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(b, i)?;
    }
    Some(i)
}

/// Where the JSON value starting at `start` ends (one past its last byte), if it is one well-formed
/// value as far as brackets and strings go. Used to check that `d` really is the last key.
pub fn value_ends_at(b: &[u8], start: usize) -> Option<usize> {
    let first = *b.get(start)?;
    match first {
        b'{' | b'[' => {
            // Only the value's own kind of bracket matters for its depth (strings aside).
            let (open, shut) = if first == b'{' {
                (b'{', b'}')
            } else {
                (b'[', b']')
            };
            let mut depth = 0usize;
            let mut i = start;
            loop {
                let at = i + memchr::memchr3(b'"', open, shut, b.get(i..)?)?;
                match b[at] {
                    b'"' => {
                        i = string_end(b, at)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    _ => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(at + 1);
                        }
                    }
                }
                i = at + 1;
            }
        }
        b'"' => string_end(b, start),
        _ => skip_scalar(b, start),
    }
}

/// The index after the string starting at `b[i] == '"'`, escapes and all.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        // An escape at the very end leaves `j` past the end: `get` ends the search there.
        j += memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[j] == b'\\' {
            j += 2;
        } else {
            return Some(j + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_head_of_discord_shaped_frames() {
        let f = br#"{"t":"MESSAGE_CREATE","s":42,"op":0,"d":{"content":"x","t":"y"}}"#;
        let h = prescan(f).unwrap();
        assert_eq!((h.op, h.seq), (0, Some(42)));
        assert_eq!(&f[h.event.unwrap()], b"MESSAGE_CREATE");
        let start = h.data_start.unwrap();
        assert_eq!(value_ends_at(f, start), Some(h.end));
        assert_eq!(&f[start..h.end], br#"{"content":"x","t":"y"}"#);

        let h = prescan(br#"{"op":11}"#).unwrap();
        assert_eq!((h.op, h.seq, h.event, h.data_start), (11, None, None, None));
        let h = prescan(br#" {"op":1,"d":null,"s":null,"t":null} "#).unwrap();
        assert_eq!((h.op, h.seq, h.data_start), (1, None, None));
        let h = prescan(br#"{"t":null,"s":null,"op":9,"d":false}"#).unwrap();
        assert_eq!(h.data_start, Some(30));
        // Scalars after d are read whole; numbers by JSON's grammar.
        for f in [
            &br#"{"t":null,"s":null,"op":9,"d":true }"#[..],
            br#"{"t":null,"s":null,"op":1,"d":-12.5e+3}"#,
            br#"{"t":null,"s":null,"op":1,"d":"a\"}"}"#,
            br#"{"x":-0.5E-2,"t":null,"s":null,"op":1,"d":0}"#,
        ] {
            assert!(prescan(f).is_some(), "{}", String::from_utf8_lossy(f));
        }
        // A non-null d before s or t: the full parse decides.
        assert_eq!(prescan(br#"{"op":9,"d":false}"#), None);
    }

    #[test]
    fn leaves_what_it_cannot_be_sure_of_to_the_full_parse() {
        for f in [
            &br#"{"d":{},"op":0}"#[..],                 // op after d
            br#"{"op":0,"s":1,"t":"A\"B","d":{}}"#,     // escaped name
            br#"{"op":0,"x":{"y":1},"d":{}}"#,          // nested value before d
            br#"{"op":0,"op":1,"s":1,"t":"A","d":{}}"#, // repeated key
            br#"{"op":256,"d":{}}"#,                    // op out of range
            br#"{"op":01,"d":{}}"#,                     // leading zero
            br#"[1]"#,
            br#"{"op":0"#,
            b"",
            // The object's own brace missing: the last `}` is d's, or there is none.
            br#"{"t":"X","s":1,"op":0,"d":{"id":"1"}"#,
            br#"{"t":"X","s":1,"op":0,"d":[{"id":"1"}"#,
            br#"{"t":"X","s":1,"op":0,"d":{}"#,
            br#"{"t":"X","s":1,"op":0,"d":"a}"#,
            br#"{"t":"X","s":1,"op":0,"d":12}"#.strip_suffix(b"}").unwrap_or_default(),
            br#"{"t":"X","s":1,"op":0,"d":1 2}"#,
            // Not JSON numbers: the head is read by JSON's grammar.
            br#"{"x":1..2,"op":0,"s":1,"t":"X","d":{}}"#,
            br#"{"x":-,"op":0,"s":1,"t":"X","d":{}}"#,
            br#"{"x":1e,"op":0,"s":1,"t":"X","d":{}}"#,
            br#"{"x":01,"op":0,"s":1,"t":"X","d":{}}"#,
        ] {
            assert_eq!(prescan(f), None, "{}", String::from_utf8_lossy(f));
        }
    }

    #[test]
    fn finds_where_values_end() {
        let f = br#"{"a":"}\"{","b":[{"c":"]"}]} , "x":1"#;
        assert_eq!(value_ends_at(f, 0), Some(28));
        assert_eq!(value_ends_at(br#"[1,[2],{"a":"]"}] "#, 0), Some(17));
        assert_eq!(value_ends_at(br#""a\\" x"#, 0), Some(5));
        assert_eq!(value_ends_at(b"123 ", 0), Some(3));
        assert_eq!(value_ends_at(br#"{"a":1"#, 0), None);
        // An array is tracked by its own brackets, with no brace anywhere after it.
        assert_eq!(value_ends_at(br#"[1,[2]]"#, 0), Some(7));
        // Cut inside an escape, or nothing there at all: no end, no panic.
        assert_eq!(value_ends_at(br#"{"a":"\"#, 0), None);
        assert_eq!(value_ends_at(br#""\"#, 0), None);
        assert_eq!(value_ends_at(b"", 0), None);
        assert_eq!(value_ends_at(b"{}", 7), None);
    }
}
