//! Property tests of the receive path (unit tests: they drive the crate's internals): frame → envelope (prescan vs full parse) → state machine, and
//! the zlib-stream inflater, and the whole receive path from websocket bytes to the state machine.
//! Bounded by PROPTEST_CASES (default 256 per property; 16 for the whole path, each of whose cases
//! runs every split point); a failure prints the seed and the shrunk input to replay it.

use std::sync::Arc;
use std::time::Instant;

use crate::protocol::{Envelope, EventName};
use crate::shard::state::{Action, IdentifyParams, ShardState};
use bytes::Bytes;
use proptest::prelude::*;
use serde_json::Value;

/// A JSON value as text, with random whitespace and some strings that look like envelope keys.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::to_string(&f).unwrap()),
        json_string(),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec((inner.clone(), ws()), 0..6).prop_map(|items| format!(
                "[{}]",
                items
                    .into_iter()
                    .map(|(v, w)| format!("{w}{v}{w}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            prop::collection::vec((json_string(), inner, ws()), 0..6).prop_map(|members| {
                let body: Vec<String> = members
                    .into_iter()
                    .map(|(k, v, w)| format!("{w}{k}{w}:{w}{v}"))
                    .collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        // Things that would fool a naive key search.
        Just(r#""\"t\":\"MESSAGE_CREATE\",\"op\":0""#.to_owned()),
        Just(r#""}\\""#.to_owned()),
        Just(r#""{\"d\":""#.to_owned()),
        Just(r#""\u0074""#.to_owned()),
        "[a-z_]{0,8}".prop_map(|s| format!("\"{s}\"")),
    ]
}

fn ws() -> impl Strategy<Value = &'static str> {
    prop_oneof![4 => Just(""), 1 => Just(" "), 1 => Just("\n\t "), 1 => Just("\r\n")]
}

/// A whole gateway frame: op, s, t, d and unknown keys, each maybe absent, in any order.
fn frame() -> impl Strategy<Value = String> {
    let op = prop_oneof![
        Just(0u64),
        Just(1),
        Just(7),
        Just(9),
        Just(10),
        Just(11),
        0u64..300,
        // The whole range a JSON integer the shard reads as u64 may take, and its edges.
        any::<u64>(),
        Just(u64::MAX),
    ];
    let s = prop_oneof![
        Just("null".to_owned()),
        any::<u64>().prop_map(|n| n.to_string()),
        prop_oneof![Just(0u64), Just(1), Just(u64::MAX - 1), Just(u64::MAX)]
            .prop_map(|n| n.to_string()),
    ];
    let t = prop_oneof![
        Just("null".to_owned()),
        Just(r#""MESSAGE_CREATE""#.to_owned()),
        Just(r#""GUILD_\u0043REATE""#.to_owned()),
        json_string(),
    ];
    let extra = prop::collection::vec((json_string(), json_value()), 0..3);
    (
        op,
        prop::option::weighted(0.95, s),
        prop::option::weighted(0.95, t),
        prop::option::weighted(0.9, json_value()),
        extra,
        ws(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(op, s, t, d, extra, w, order)| {
            let mut members = vec![format!(r#""op"{w}:{w}{op}"#)];
            if let Some(s) = s {
                members.push(format!(r#""s":{w}{s}"#));
            }
            if let Some(t) = t {
                members.push(format!(r#""t"{w}:{t}"#));
            }
            if let Some(d) = d {
                members.push(format!(r#"{w}"d":{d}{w}"#));
            }
            for (k, v) in extra {
                // Unknown keys only, however spelled: a repeated key makes the frame invalid, and after
                // `d` only a full scan could see it (documented on `prescan`).
                let decoded: String = serde_json::from_str(&k).unwrap();
                if !matches!(decoded.as_str(), "op" | "s" | "t" | "d") {
                    members.push(format!("{k}:{v}"));
                }
            }
            let n = members.len();
            members.rotate_left(order.index(n));
            format!("{w}{{{}}}{w}", members.join(","))
        })
}

/// A frame broken the ways a wire or a bug breaks one: cut short anywhere, a brace or bracket dropped
/// or added, an unbalanced quote, garbage nested in, a stray byte — or left whole.
fn mangled() -> impl Strategy<Value = Vec<u8>> {
    let damage = prop_oneof![
        2 => Just(Damage::Cut),
        2 => Just(Damage::DropLastBrace),
        2 => Just(Damage::DropBracket),
        2 => Just(Damage::Insert(&["{", "}", "[", "]"])),
        1 => Just(Damage::Insert(&["\"", "\\", "\\\""])),
        2 => Just(Damage::Insert(&[
            r#"{"a":["#,
            "]}}",
            r#"{"x":{"y":"#,
            r#""}"#,
            "}]}",
            r#","d":{"#,
            r#"{"op":0,"d":"#,
        ])),
        1 => Just(Damage::Insert(&["\u{c}", "\0", "\u{ff}", " ", "x", "-", "1e", "."])),
        1 => Just(Damage::None),
    ];
    (
        frame(),
        prop::collection::vec((damage, any::<prop::sample::Index>()), 1..3),
    )
        .prop_map(|(frame, damages)| {
            let mut b = frame.into_bytes();
            for (damage, at) in damages {
                damage.apply(&mut b, at);
            }
            b
        })
}

#[derive(Debug, Clone)]
enum Damage {
    /// Cut the frame at a position.
    Cut,
    /// Drop the last `}`: the object never closes, and the brace before it may be `d`'s.
    DropLastBrace,
    /// Drop one of the brackets or braces.
    DropBracket,
    /// Insert one of these at a position.
    Insert(&'static [&'static str]),
    None,
}

impl Damage {
    fn apply(&self, b: &mut Vec<u8>, at: prop::sample::Index) {
        match self {
            Self::Cut => b.truncate(at.index(b.len() + 1)),
            Self::DropLastBrace => {
                if let Some(i) = b.iter().rposition(|&c| c == b'}') {
                    b.remove(i);
                }
            }
            Self::DropBracket => {
                let brackets: Vec<usize> = (0..b.len())
                    .filter(|&i| matches!(b[i], b'{' | b'}' | b'[' | b']'))
                    .collect();
                if !brackets.is_empty() {
                    b.remove(brackets[at.index(brackets.len())]);
                }
            }
            Self::Insert(what) => {
                let text = what[at.index(what.len())];
                let i = at.index(b.len() + 1);
                b.splice(i..i, text.bytes());
            }
            Self::None => {}
        }
    }
}

fn name(frame: &[u8], env: &Envelope) -> Option<String> {
    env.event.as_ref().map(|e| match e {
        EventName::Span(r) => String::from_utf8(frame[r.clone()].to_vec()).unwrap(),
        EventName::Owned(s) => s.clone(),
    })
}

fn params() -> Arc<IdentifyParams> {
    Arc::new(IdentifyParams {
        token: crate::Token::new("prop-token"),
        intents: 1,
        properties: Default::default(),
        large_threshold: 50,
        presence: None,
        gateway_url: "wss://gateway.discord.gg".into(),
        allowed_resume_domains: vec!["discord.gg".into()],
    })
}

proptest! {
    #[test]
    fn the_prescan_agrees_with_a_full_parse(frame in frame()) {
        let bytes = frame.as_bytes();
        let full = Envelope::parse_full(bytes);
        let fast = Envelope::parse(bytes);
        match full {
            Ok(full) => {
                let fast = fast.expect("the fast path never rejects what the full parse reads");
                prop_assert_eq!(fast.op, full.op);
                prop_assert_eq!(fast.seq, full.seq);
                prop_assert_eq!(name(bytes, &fast), name(bytes, &full));
                let d_fast: Value = serde_json::from_slice(fast.data(bytes)).unwrap();
                let d_full: Value = serde_json::from_slice(full.data(bytes)).unwrap();
                prop_assert_eq!(d_fast, d_full);
                prop_assert_eq!(fast.data(bytes), full.data(bytes));
                // A delivered event reads the same `d` by every route, tail-first or scanned.
                if let Some(dispatch) = crate::Dispatch::from_frame(0, Bytes::copy_from_slice(bytes)) {
                    let expected: Value = serde_json::from_slice(full.data(bytes)).unwrap();
                    prop_assert_eq!(dispatch.parse::<Value>().unwrap(), expected.clone());
                    prop_assert_eq!(dispatch.raw().unwrap().get().as_bytes(), full.data(bytes));
                    prop_assert_eq!(dispatch.data(), full.data(bytes));
                }
            }
            // What the full parse refuses (e.g. op over 255, a bad number in s), the fast path refuses too.
            Err(e) => prop_assert!(fast.is_err(), "full parse: {}; fast path accepted {:?}", e, fast),
        }
    }

    /// Whatever the bytes, reading a frame never panics; what the prescan takes reads the same as
    /// the full parse whenever that accepts the frame, and a frame the full parse refuses never
    /// yields a value of `d` (the shard skips it, or a handler's read of `d` fails).
    #[test]
    fn a_broken_frame_never_panics_and_never_reads_as_a_value(bytes in mangled()) {
        let bytes = &bytes[..];
        let full = Envelope::parse_full(bytes);
        let Ok(fast) = Envelope::parse(bytes) else {
            prop_assert!(full.is_err(), "the fast path refused what the full parse reads");
            return Ok(());
        };
        let checked = fast.data.checked(bytes);
        let _ = fast.data(bytes);
        let dispatch = crate::Dispatch::from_frame(0, Bytes::copy_from_slice(bytes));
        let read = dispatch.as_ref().map(|d| {
            let _ = d.data();
            let _ = d.data_bytes();
            (d.parse::<Value>().ok(), d.raw().ok().map(|r| r.get().to_owned()))
        });
        match full {
            Ok(full) => {
                prop_assert_eq!(fast.op, full.op);
                prop_assert_eq!(fast.seq, full.seq);
                prop_assert_eq!(name(bytes, &fast), name(bytes, &full));
                prop_assert_eq!(fast.data(bytes), full.data(bytes));
                prop_assert_eq!(
                    checked.clone().map(|r| r.map(|r| bytes[r].to_vec())),
                    Ok(full.data.resolve(bytes).map(|r| bytes[r].to_vec()))
                );
                if let (Some(d), Some((value, raw))) = (&dispatch, read) {
                    let expected: Value = serde_json::from_slice(full.data(bytes)).unwrap();
                    prop_assert_eq!(value, Some(expected));
                    let expected_raw = String::from_utf8(full.data(bytes).to_vec()).unwrap();
                    prop_assert_eq!(raw, Some(expected_raw));
                    prop_assert_eq!(d.data(), full.data(bytes));
                }
            }
            Err(e) => {
                // The shard's own reads of `d` (Hello, op 9, READY) go through `checked`, which
                // checks structure only: what it passes must still fail to deserialize (bad UTF-8
                // or a bad escape inside a string is the deserializer's to find).
                let value_read = match &checked {
                    Ok(Some(range)) => serde_json::from_slice::<Value>(&bytes[range.clone()]).is_ok(),
                    Ok(None) | Err(_) => false,
                };
                prop_assert!(
                    !value_read || fast.data == crate::protocol::DataSpan::Null,
                    "full parse: {}; checked read of d: {:?} deserialized", e, checked
                );
                if let Some((value, raw)) = read {
                    prop_assert!(value.is_none() && raw.is_none(), "full parse: {}; a handler read d", e);
                }
            }
        }
    }

    #[test]
    fn the_state_machine_takes_any_frame_without_panicking(frames in prop::collection::vec(prop_oneof![
        frame().prop_map(String::into_bytes),
        mangled(),
        prop::collection::vec(any::<u8>(), 0..64),
        // Hello and READY with numbers anywhere in their range.
        any::<u64>().prop_map(|n| format!(r#"{{"op":10,"d":{{"heartbeat_interval":{n}}}}}"#).into_bytes()),
        prop_oneof![any::<u64>(), Just(u64::MAX)].prop_map(|n| format!(r#"{{"t":"READY","s":{n},"op":0,"d":{{"session_id":"x"}}}}"#).into_bytes()),
    ], 1..20)) {
        let mut state = ShardState::new(0, 1, params(), None);
        state.on_open();
        let now = Instant::now();
        let mut last: Option<u64> = None;
        for frame in frames {
            let frame = Bytes::from(frame);
            if state.seq().is_none() {
                // A new session (Identify, op 9 false): numbered afresh.
                last = None;
            }
            if let Ok(env) = Envelope::parse(&frame) {
                state.on_frame(&frame, &env, || now, 0.5);
                state.on_identify_permit();
                state.on_heartbeat_due(now);
            }
            while let Some(action) = state.poll_action() {
                if let Action::Deliver(d) = action {
                    // Within a session, sequence numbers only rise; READY starts a session.
                    if d.event() == "READY" {
                        last = None;
                    }
                    prop_assert!(last.is_none_or(|l| d.seq() > l), "{} after {:?}", d.seq(), last);
                    last = Some(d.seq());
                    let _ = d.data();
                    let whole = Envelope::parse_full(d.frame()).is_ok();
                    // A delivered event of a broken frame never reads as a value.
                    prop_assert!(whole || (d.raw().is_err() && d.parse::<Value>().is_err()));
                }
            }
        }
    }

    #[test]
    fn the_inflater_reassembles_any_split_and_survives_garbage(
        // Never empty: a sync flush with no new input emits nothing at all (zlib's rule), and no
        // gateway message is empty.
        messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..2000), 1..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        garbage in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        use flate2::{Compress, Compression, FlushCompress};
        let mut z = Compress::new(Compression::fast(), true);
        let mut inflater = crate::shard::inflate::Inflater::new(1 << 20);
        for message in &messages {
            let mut out = Vec::with_capacity(message.len() * 2 + 64);
            z.compress_vec(message, &mut out, FlushCompress::Sync).unwrap();
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(out.len() + 1)).collect();
            points.sort_unstable();
            let mut got = None;
            let mut last = 0;
            for p in points.into_iter().chain([out.len()]) {
                if p > last || p == out.len() {
                    if let Some(m) = inflater.push(&out[last..p]).unwrap() {
                        got = Some(m);
                    }
                    last = p;
                }
            }
            prop_assert_eq!(got.as_deref(), Some(&message[..]));
        }
        let mut fresh = crate::shard::inflate::Inflater::new(1 << 20);
        let mut with_marker = garbage.clone();
        with_marker.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let _ = fresh.push(&garbage);
        let _ = fresh.push(&with_marker);
    }
}

/// The receive path as the shard runs it, without a socket: websocket bytes → frame reader →
/// transport decompression → envelope → state machine.
mod whole_path {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use actix_codec::{Encoder, Framed};
    use actix_http::ws::{Codec, Frame, Message};
    use futures_util::{FutureExt, StreamExt};

    use super::*;
    use crate::shard::inflate::InflateError;

    /// Bytes handed to the reader in the pieces given, then the end of the stream; writes vanish.
    pub struct Pieces(pub VecDeque<Vec<u8>>);

    impl tokio::io::AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            // An empty piece is no read at all (zero bytes would be the end of the stream).
            while self.0.front().is_some_and(Vec::is_empty) {
                self.0.pop_front();
            }
            if let Some(mut piece) = self.0.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.0.push_front(piece.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    impl tokio::io::AsyncWrite for Pieces {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Transport compression of the messages a test sends.
    #[derive(Debug, Clone, Copy)]
    pub enum Mode {
        None,
        Zlib,
        #[cfg(feature = "zstd")]
        Zstd,
    }

    pub fn mode() -> impl Strategy<Value = Mode> {
        #[cfg(feature = "zstd")]
        return prop_oneof![Just(Mode::None), Just(Mode::Zlib), Just(Mode::Zstd)];
        #[cfg(not(feature = "zstd"))]
        return prop_oneof![Just(Mode::None), Just(Mode::Zlib)];
    }

    /// The wire bytes of `messages` as the gateway sends them under `mode`, one websocket frame
    /// each, with `garbage` (if any) after the `at`-th.
    pub fn wire(mode: Mode, messages: &[Vec<u8>], garbage: Option<(usize, &[u8])>) -> Vec<u8> {
        let mut codec = Codec::new();
        let mut out = bytes::BytesMut::new();
        let mut zlib = flate2::Compress::new(flate2::Compression::fast(), true);
        #[cfg(feature = "zstd")]
        let mut zstd = zstd::stream::raw::Encoder::new(3).unwrap();
        for (i, m) in messages.iter().enumerate() {
            let message = match mode {
                Mode::None => Message::Text(bytestring::ByteString::from(
                    String::from_utf8_lossy(m).into_owned(),
                )),
                Mode::Zlib => {
                    let mut c = Vec::with_capacity(m.len() * 2 + 64);
                    zlib.compress_vec(m, &mut c, flate2::FlushCompress::Sync)
                        .unwrap();
                    Message::Binary(c.into())
                }
                #[cfg(feature = "zstd")]
                Mode::Zstd => {
                    use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                    let mut c = Vec::with_capacity(m.len() * 2 + 64);
                    let mut input = InBuffer::around(m);
                    while input.pos() < m.len() {
                        let pos = c.len();
                        zstd.run(&mut input, &mut OutBuffer::around_pos(&mut c, pos))
                            .unwrap();
                        if c.len() == c.capacity() {
                            c.reserve(c.len());
                        }
                    }
                    loop {
                        let pos = c.len();
                        if c.len() == c.capacity() {
                            c.reserve(64);
                        }
                        if zstd.flush(&mut OutBuffer::around_pos(&mut c, pos)).unwrap() == 0 {
                            break;
                        }
                    }
                    Message::Binary(c.into())
                }
            };
            codec.encode(message, &mut out).unwrap();
            if let Some((at, bytes)) = garbage {
                if at == i {
                    out.extend_from_slice(bytes);
                }
            }
        }
        out.to_vec()
    }

    /// What the shard got out of `wire` delivered in `pieces`: the messages it decoded (before any
    /// error), and whether the stream ended in an error.
    pub fn receive(mode: Mode, pieces: VecDeque<Vec<u8>>) -> (Vec<Vec<u8>>, bool) {
        let framed = Framed::new(
            Box::new(Pieces(pieces)) as awc::BoxedSocket,
            Codec::new().client_mode().max_size(1 << 20),
        );
        let (mut reader, _writer) = crate::shard::framing::split(framed, 1 << 20);
        let mut zlib = crate::shard::inflate::Inflater::new(1 << 20);
        #[cfg(feature = "zstd")]
        let mut zstd = crate::shard::zstd_stream::ZstdStream::new(1 << 20).unwrap();
        let mut state = ShardState::new(0, 1, params(), None);
        state.on_open();
        let now = Instant::now();
        let mut got = Vec::new();
        let mut failed = false;
        // The pieces never run dry without ending: every poll is ready.
        for _ in 0..100_000 {
            let item = reader
                .next()
                .now_or_never()
                .expect("an in-memory stream never waits");
            let frame = match item {
                None => return (got, failed),
                Some(Err(_)) => {
                    failed = true;
                    continue;
                }
                Some(Ok(frame)) => frame,
            };
            assert!(!failed, "an item after the reader's error");
            let message: Result<Option<Bytes>, InflateError> = match (frame, mode) {
                (Frame::Text(b), _) => Ok(Some(b)),
                (Frame::Binary(b), Mode::None) => Ok(Some(b)),
                (Frame::Binary(b), Mode::Zlib) => zlib.push(&b),
                #[cfg(feature = "zstd")]
                (Frame::Binary(b), Mode::Zstd) => zstd.push(&b).map(Some),
                _ => Ok(None),
            };
            match message {
                Ok(Some(m)) => {
                    if let Ok(env) = Envelope::parse(&m) {
                        state.on_frame(&m, &env, || now, 0.5);
                        state.on_identify_permit();
                        while state.poll_action().is_some() {}
                    }
                    got.push(m.to_vec());
                }
                Ok(None) => {}
                // The connection would be reset here; nothing after it is read.
                Err(_) => return (got, true),
            }
        }
        panic!("the reader never ended");
    }
}

/// Cases of the whole-path property: 16 by default (each runs every split point), or
/// `PROPTEST_CASES` for a longer run on demand (README, "Reliability").
fn whole_path_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(16)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: whole_path_cases(), ..ProptestConfig::default() })]

    /// Gateway messages, compressed or not, with or without garbage in between, split into two
    /// reads at every point: the shard never panics and never hangs; without garbage it decodes
    /// exactly the messages sent, whatever the split; with garbage, the stream ends at the first
    /// error (and everything before the garbage was decoded first).
    #[test]
    fn the_receive_path_takes_any_bytes_split_at_every_point(
        mode in whole_path::mode(),
        messages in prop::collection::vec(prop_oneof![
            frame().prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 1..48),
        ], 1..4),
        garbage in prop::option::weighted(0.5, (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..24))),
    ) {
        let garbage = garbage.map(|(at, bytes)| (at.index(messages.len()), bytes));
        let wire = whole_path::wire(mode, &messages, garbage.as_ref().map(|(at, b)| (*at, &b[..])));
        // Text frames carry the message as UTF-8 (lossily, for arbitrary bytes).
        let expected: Vec<Vec<u8>> = messages
            .iter()
            .map(|m| match mode {
                whole_path::Mode::None => String::from_utf8_lossy(m).into_owned().into_bytes(),
                _ => m.clone(),
            })
            .collect();
        for cut in 0..=wire.len() {
            let pieces = [wire[..cut].to_vec(), wire[cut..].to_vec()].into_iter().collect();
            let (got, _failed) = whole_path::receive(mode, pieces);
            match &garbage {
                None => prop_assert_eq!(&got, &expected, "cut {}", cut),
                Some((at, _)) => {
                    // Garbage may decode as frames of its own, but everything before it comes
                    // out whole and first.
                    prop_assert!(got.len() > *at, "cut {}: {} messages", cut, got.len());
                    prop_assert_eq!(&got[..=*at], &expected[..=*at], "cut {}", cut);
                }
            }
        }
    }
}
