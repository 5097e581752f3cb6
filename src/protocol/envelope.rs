//! The lazy parse of a received frame: its envelope (`op`, `s`, `t`) and where `d` lies, without
//! deserializing `d` (PROTOCOL.md §2).

use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Why a received frame could not be read as a gateway envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// The frame is not a JSON object with an integer `op` (the message says where it broke).
    Malformed(String),
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "malformed gateway frame: {why}"),
        }
    }
}

impl std::error::Error for EnvelopeError {}

/// The envelope of one received frame. Ranges index the frame the envelope was parsed from, so the
/// frame's bytes can be shared with handlers as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The opcode number; unknown ones are kept so the caller can log them.
    pub op: u8,
    /// The sequence number (`s`), present on dispatches.
    pub seq: Option<u64>,
    /// The event name (`t`): where it lies in the frame, or the unescaped name when it held escapes.
    pub event: Option<EventName>,
    /// Where the raw JSON of `d` lies in the frame; `None` when `d` is missing or `null`.
    pub data: Option<Range<usize>>,
}

/// Where a dispatch's event name is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventName {
    /// The name is these bytes of the frame (no escapes; valid UTF-8).
    Span(Range<usize>),
    /// The name held JSON escapes; this is its unescaped text.
    Owned(String),
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    op: u8,
    #[serde(borrow, default)]
    d: Option<&'a RawValue>,
    #[serde(default)]
    s: Option<u64>,
    #[serde(borrow = "'a", default)]
    t: Option<Name<'a>>,
}

/// A string that borrows from the frame unless it held escapes (serde's `Cow` in an `Option` never
/// borrows).
enum Name<'a> {
    Borrowed(&'a str),
    Owned(String),
}

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an event name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name::Owned(v.to_owned()))
            }
        }
        deserializer.deserialize_str(Visitor).map(|name| match name {
            Name::Borrowed(s) => Name::Borrowed(s),
            Name::Owned(s) => Name::Owned(s),
        })
    }
}

impl Envelope {
    /// Reads the envelope of `frame`. `d` is validated as JSON but not deserialized.
    pub fn parse(frame: &[u8]) -> Result<Self, EnvelopeError> {
        // Derived structs also accept a JSON array; an envelope is an object.
        if frame.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(EnvelopeError::Malformed("not a JSON object".into()));
        }
        let raw: RawEnvelope<'_> =
            serde_json::from_slice(frame).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        let base = frame.as_ptr() as usize;
        let span = |s: &str| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let data = raw.d.map(|d| d.get()).filter(|d| *d != "null").map(span);
        let event = raw.t.map(|t| match t {
            Name::Borrowed(name) => EventName::Span(span(name)),
            Name::Owned(name) => EventName::Owned(name),
        });
        Ok(Self {
            op: raw.op,
            seq: raw.s,
            event,
            data,
        })
    }

    /// The raw JSON of `d` within `frame`, or `"null"` when it is absent.
    pub fn data<'f>(&self, frame: &'f [u8]) -> &'f [u8] {
        self.data.clone().map_or(b"null", |r| &frame[r])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_field_in_any_key_order_with_whitespace() {
        let frame = br#" { "t" : "MESSAGE_CREATE", "s": 42, "d": {"t":"x", "n": [1, 2]} , "op":0 , "extra": true } "#;
        let env = Envelope::parse(frame).unwrap();
        assert_eq!(env.op, 0);
        assert_eq!(env.seq, Some(42));
        let Some(EventName::Span(t)) = env.event.clone() else { panic!("expected a span") };
        assert_eq!(&frame[t], b"MESSAGE_CREATE");
        assert_eq!(env.data(frame), br#"{"t":"x", "n": [1, 2]}"#);
    }

    #[test]
    fn missing_and_null_keys_are_none() {
        let env = Envelope::parse(br#"{"op":11}"#).unwrap();
        assert_eq!((env.seq, env.event, env.data), (None, None, None));
        let env = Envelope::parse(br#"{"op":1,"d":null,"s":null,"t":null}"#).unwrap();
        assert_eq!((env.seq, env.event.clone(), env.data.clone()), (None, None, None));
        assert_eq!(env.data(b""), b"null");
    }

    #[test]
    fn escaped_event_names_are_unescaped() {
        let env = Envelope::parse(br#"{"op":0,"s":1,"t":"A\u0042C","d":{}}"#).unwrap();
        assert_eq!(env.event, Some(EventName::Owned("ABC".into())));
    }

    #[test]
    fn rejects_what_is_not_an_envelope() {
        for bad in [&b"not json"[..], b"{\"op\":\"x\"}", b"{\"d\":1}", b"[1]", b"{\"op\":0", b"\xff\xfe"] {
            assert!(Envelope::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
