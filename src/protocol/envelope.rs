//! The lazy parse of a received frame: its envelope (`op`, `s`, `t`) and where `d` lies, without
//! deserializing `d` (docs/protocol.md §2).

use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Why a received frame could not be read as a gateway envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The frame is not a JSON object with an integer `op` (the message says where it broke, and
    /// never quotes the frame).
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
    /// Where the raw JSON of `d` lies in the frame.
    pub data: DataSpan,
}

/// Where `d` lies in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataSpan {
    /// `d` is missing or `null`.
    Null,
    /// `d` is exactly these bytes (the full parse found it).
    Exact(usize, usize),
    /// `d` starts here and, as Discord sends it, is the last key: it runs to the closing brace, which
    /// [`DataSpan::resolve`] checks the first time `d` is read.
    Tail(usize, usize),
}

impl DataSpan {
    /// The exact range of `d` in `frame` (the frame this span came from); `None` when it is null.
    ///
    /// For a `Tail`, the value is scanned for its end; if that is not the closing brace (another key
    /// follows), the full parse decides. A frame that is not one JSON object (its `d` not valid JSON,
    /// or a bracket missing, so `d` runs past the brace the prescan took for the object's) keeps
    /// the tail as it is, so that deserializing it reports the error; [`DataSpan::checked`] tells
    /// such a frame apart instead. Never panics, whatever `frame` and the span's bounds are.
    pub fn resolve(self, frame: &[u8]) -> Option<Range<usize>> {
        match self.checked(frame) {
            Ok(range) => range,
            Err(_) => match self {
                Self::Tail(start, end) | Self::Exact(start, end) => {
                    let end = end.min(frame.len());
                    Some(start.min(end)..end)
                }
                Self::Null => None,
            },
        }
    }

    /// The exact range of `d` in `frame`, `None` when it is null, or why the frame is malformed:
    /// what a reader of `d` that must not be fooled (the shard, for Hello, op 9 and READY) uses.
    pub fn checked(self, frame: &[u8]) -> Result<Option<Range<usize>>, EnvelopeError> {
        match self {
            Self::Null => Ok(None),
            Self::Exact(start, end) if start <= end && end <= frame.len() => Ok(Some(start..end)),
            Self::Exact(..) => Err(EnvelopeError::Malformed("d lies outside the frame".into())),
            Self::Tail(start, end) => {
                let value_end = super::prescan::value_ends_at(frame, start);
                // `d` must end at or before the brace the prescan found, with only whitespace
                // between: a `d` that ends at that brace or past it means the object never closed.
                if let Some(e) = value_end {
                    if frame
                        .get(e..end)
                        .is_some_and(|rest| rest.iter().all(|&b| super::prescan::is_json_ws(b)))
                    {
                        return Ok(Some(start..e));
                    }
                }
                match Envelope::parse_full(frame)?.data {
                    Self::Exact(s, e) => Ok(Some(s..e)),
                    _ => Ok(None),
                }
            }
        }
    }
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
        deserializer
            .deserialize_str(Visitor)
            .map(|name| match name {
                Name::Borrowed(s) => Name::Borrowed(s),
                Name::Owned(s) => Name::Owned(s),
            })
    }
}

impl Envelope {
    /// Reads the envelope of `frame` without reading `d`: the fast path reads only the frame's head
    /// (see [`prescan`](super::prescan)); frames it is not sure of get the full parse.
    pub fn parse(frame: &[u8]) -> Result<Self, EnvelopeError> {
        match super::prescan::prescan(frame) {
            Some(head) => Ok(Self {
                op: head.op,
                seq: head.seq,
                event: head.event.map(EventName::Span),
                data: head
                    .data_start
                    .map_or(DataSpan::Null, |start| DataSpan::Tail(start, head.end)),
            }),
            None => Self::parse_full(frame),
        }
    }

    /// Reads the envelope with a full JSON parse; `d` is validated as JSON but not deserialized.
    pub fn parse_full(frame: &[u8]) -> Result<Self, EnvelopeError> {
        // Derived structs also accept a JSON array; an envelope is an object.
        if frame.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(EnvelopeError::Malformed("not a JSON object".into()));
        }
        let raw: RawEnvelope<'_> = serde_json::from_slice(frame).map_err(|e| {
            // Where and what kind, not serde's message: it quotes the frame's content (a
            // message's text, say), and this error is logged.
            EnvelopeError::Malformed(format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        let base = frame.as_ptr() as usize;
        let span = |s: &str| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let data = raw
            .d
            .map(|d| d.get())
            .filter(|d| *d != "null")
            .map(span)
            .map_or(DataSpan::Null, |r| DataSpan::Exact(r.start, r.end));
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

    /// The raw JSON of `d` within `frame` (the frame it was parsed from), or `"null"` when absent.
    pub fn data<'f>(&self, frame: &'f [u8]) -> &'f [u8] {
        self.data.resolve(frame).map_or(b"null", |r| &frame[r])
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
        let Some(EventName::Span(t)) = env.event.clone() else {
            panic!("expected a span")
        };
        assert_eq!(&frame[t], b"MESSAGE_CREATE");
        assert_eq!(env.data(frame), br#"{"t":"x", "n": [1, 2]}"#);
    }

    #[test]
    fn missing_and_null_keys_are_none() {
        let env = Envelope::parse(br#"{"op":11}"#).unwrap();
        assert_eq!((env.seq, env.event, env.data), (None, None, DataSpan::Null));
        let env = Envelope::parse(br#"{"op":1,"d":null,"s":null,"t":null}"#).unwrap();
        assert_eq!(
            (env.seq, env.event.clone(), env.data),
            (None, None, DataSpan::Null)
        );
        assert_eq!(env.data(b""), b"null");
    }

    #[test]
    fn a_key_after_d_is_found_by_the_full_parse() {
        let frame = br#"{"op":0,"s":3,"t":"X","d":{"a":[1]},"extra":{"b":2}}"#;
        let env = Envelope::parse(frame).unwrap();
        assert_eq!(env.data(frame), br#"{"a":[1]}"#);
        let frame = br#"{"op":0,"s":3,"t":"X","d":{"a":1} }"#;
        assert_eq!(Envelope::parse(frame).unwrap().data(frame), br#"{"a":1}"#);
    }

    #[test]
    fn a_frame_whose_object_never_closes_is_malformed_and_reading_d_never_panics() {
        // The object's brace is missing; the last `}` is `d`'s own. Same shape for a dispatch,
        // Hello, op 9 and READY.
        for frame in [
            &br#"{"t":"MESSAGE_CREATE","s":5,"op":0,"d":{"id":"1"}"#[..],
            br#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}"#,
            br#"{"t":null,"s":null,"op":9,"d":true"#,
            br#"{"t":"READY","s":1,"op":0,"d":{"v":10,"session_id":"abc"}"#,
            br#"{"t":"X","s":1,"op":0,"d":{"a":[1,2]} "#,
        ] {
            let text = String::from_utf8_lossy(frame);
            assert!(Envelope::parse(frame).is_err(), "{text}");
        }
        // Cut deeper, the frame's last two bytes still look whole: the prescan cannot tell without
        // reading `d`; whoever reads `d` can, and gets an error, not a value and not a panic.
        let frame = br#"{"t":"X","s":1,"op":0,"d":{"a":{"b":1}}"#;
        let env = Envelope::parse(frame).unwrap();
        assert!(env.data.checked(frame).is_err());
        assert!(serde_json::from_slice::<serde_json::Value>(env.data(frame)).is_err());
        // Spans that do not fit the frame they are read against.
        for span in [
            DataSpan::Tail(5, 2),
            DataSpan::Tail(0, 99),
            DataSpan::Exact(3, 1),
            DataSpan::Exact(0, 99),
        ] {
            assert!(span.checked(b"{}").is_err(), "{span:?}");
            let _ = span.resolve(b"{}");
            let _ = span.resolve(b"");
        }
        assert_eq!(
            Envelope::parse(br#"{"t":"X","s":1,"op":0,"d":{"a":1}}"#)
                .unwrap()
                .data
                .checked(br#"{"t":"X","s":1,"op":0,"d":{"a":1}}"#),
            Ok(Some(26..33))
        );
    }

    #[test]
    fn escaped_event_names_are_unescaped() {
        let env = Envelope::parse(br#"{"op":0,"s":1,"t":"A\u0042C","d":{}}"#).unwrap();
        assert_eq!(env.event, Some(EventName::Owned("ABC".into())));
    }

    #[test]
    fn rejects_what_is_not_an_envelope() {
        for bad in [
            &b"not json"[..],
            b"{\"op\":\"x\"}",
            b"{\"d\":1}",
            b"[1]",
            b"{\"op\":0",
            b"\xff\xfe",
            b"{\"op\":0,\"s\":1,\"t\":\"\xff\",\"d\":{}}",
        ] {
            assert!(
                Envelope::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
