//! The websocket framing of a shard's connection, owned here rather than left to awc's `Framed`,
//! whose two fixed 8 KiB buffers per connection would be most of an idle shard's memory
//! (docs/design.md, "What the libraries underneath do").
//!
//! Reading goes straight into a read buffer from the thread's [`read_pool`]; a frame is a slice of
//! it, handed on without a copy. A connection with nothing left to decode gives its buffer back,
//! and that buffer is reused once the frames read into it are gone. A sent message is encoded into
//! a buffer that lives until it is written. An idle shard holds no buffer at all.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_codec::{Decoder, Encoder, Framed};
use actix_http::ws::{Codec, Frame, Message, ProtocolError};
use awc::BoxedSocket;
use bytes::{Buf, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncWrite, ReadHalf, WriteHalf};

use crate::shard::read_pool;

/// Below this much free room a buffer is swapped for another before reading: reads stay large.
const MIN_ROOM: usize = read_pool::BUFFER / 4;

/// Splits an upgraded connection into its reading and writing halves; the reader refuses frames
/// over `max_frame` bytes (the limit the codec was built with).
pub fn split(framed: Framed<BoxedSocket, Codec>, max_frame: usize) -> (Reader, Writer) {
    let parts = framed.into_parts();
    let (read, write) = tokio::io::split(parts.io);
    // Bytes awc read past the upgrade response (often Hello) are the start of the stream.
    let buf = if parts.read_buf.is_empty() {
        BytesMut::new()
    } else {
        parts.read_buf
    };
    let reader = Reader {
        io: read,
        codec: parts.codec.clone(),
        buf,
        pooled: false,
        max_frame,
        eof: false,
    };
    let writer = Writer {
        io: write,
        codec: parts.codec,
        buf: BytesMut::new(),
        queued: 0,
        ends: std::collections::VecDeque::new(),
        written: 0,
        done: 0,
    };
    (reader, writer)
}

/// The reading half: a stream of websocket frames.
pub struct Reader {
    io: ReadHalf<BoxedSocket>,
    codec: Codec,
    buf: BytesMut,
    /// `buf` came from the read pool (and is no bigger than a read buffer): it goes back there.
    pooled: bool,
    /// Frames over this many bytes are refused (by the codec, which knows the same limit).
    max_frame: usize,
    eof: bool,
}

impl Reader {
    /// Reads into `next` from now on; the buffer it replaces goes back to the pool if it came from
    /// there.
    fn replace_buf(&mut self, next: BytesMut, pooled: bool) {
        let used = std::mem::replace(&mut self.buf, next);
        if std::mem::replace(&mut self.pooled, pooled) {
            read_pool::give_back(used);
        }
    }
}

impl Reader {
    /// The stream is over (an error ended it): what is buffered goes, and the next poll ends it.
    fn end(&mut self) {
        self.replace_buf(BytesMut::new(), false);
        self.eof = true;
    }
}

impl Stream for Reader {
    type Item = Result<Frame, ProtocolError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            // The frame under way, once its header is in.
            let header = frame_header(&this.buf);
            if header.is_some_and(|(_, payload)| payload > this.max_frame) {
                // Refused from its header: nothing of it is buffered (actix's decoder would read
                // all of it first), and the connection is done.
                this.end();
                return Poll::Ready(Some(Err(ProtocolError::Overflow)));
            }
            let frame = header.map(|(head, payload)| head.saturating_add(payload));
            // actix's decoder, handed part of a frame, makes room for the rest itself, moving the
            // part to memory of its own choosing: fine for a frame larger than a read buffer, but
            // a small one waits here until it is whole, in a buffer of ours.
            let large = frame.is_some_and(|n| n > read_pool::BUFFER);
            if large || frame.is_some_and(|n| n <= this.buf.len()) {
                if large {
                    // The decoder may grow the buffer: too big to keep afterwards.
                    this.pooled = false;
                }
                match this.codec.decode(&mut this.buf) {
                    Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                    Ok(None) => {}
                    Err(e) => {
                        // The codec leaves a frame it refuses in the buffer: decoding again would
                        // give the same error forever. The connection ends here, once.
                        this.end();
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
            if this.eof {
                return Poll::Ready(None);
            }
            let whole_fits = frame.is_none_or(|n| n <= this.buf.capacity());
            if !large && (this.buf.capacity() - this.buf.len() < MIN_ROOM || !whole_fits) {
                // Frames read earlier may still share this buffer's memory: continue in another
                // one, carrying over the start of a frame not yet whole (less than a read buffer).
                let mut fresh = read_pool::take();
                fresh.extend_from_slice(&this.buf);
                this.replace_buf(fresh, true);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf) {
                Poll::Pending => {
                    if this.buf.is_empty() {
                        // Caught up: an idle connection holds no buffer.
                        this.replace_buf(BytesMut::new(), false);
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.end();
                    return Poll::Ready(Some(Err(ProtocolError::Io(e))));
                }
            }
        }
    }
}

/// The header and payload lengths of the websocket frame at the start of `b` (RFC 6455 §5.2), once
/// enough of its header is there to tell.
fn frame_header(b: &[u8]) -> Option<(usize, usize)> {
    let second = *b.get(1)?;
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    let (header, payload) = match second & 0x7F {
        126 => (4, usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]))),
        127 => {
            let len = u64::from_be_bytes(b.get(2..10)?.try_into().ok()?);
            (10, usize::try_from(len).unwrap_or(usize::MAX))
        }
        n => (2, usize::from(n)),
    };
    Some((header + mask, payload))
}

/// The writing half: a sink of websocket messages. It tells how many of the messages it was given
/// the socket has taken whole ([`take_written`](Self::take_written)), so that a message counts as
/// sent exactly when all of its bytes are written, not before and not only once everything queued
/// behind it is.
pub struct Writer {
    io: WriteHalf<BoxedSocket>,
    codec: Codec,
    buf: BytesMut,
    queued: usize,
    /// Where each message encoded into `buf` and not yet written whole ends, counted in bytes
    /// from the start of `buf` as it was when it was last empty.
    ends: std::collections::VecDeque<usize>,
    /// Bytes of `buf` written since it was last empty.
    written: usize,
    /// Messages written whole since the last [`take_written`](Self::take_written).
    done: usize,
}

impl Writer {
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.buf.has_remaining() {
            match Pin::new(&mut self.io).poll_write(cx, &self.buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.buf.advance(n);
                    self.written += n;
                    while self.ends.front().is_some_and(|&end| end <= self.written) {
                        self.ends.pop_front();
                        self.done += 1;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Written: give the memory back rather than keep it for the next heartbeat.
        self.buf = BytesMut::new();
        self.queued = 0;
        self.written = 0;
        self.done += self.ends.len();
        self.ends = std::collections::VecDeque::new();
        Poll::Ready(Ok(()))
    }

    /// How many of the messages given to the sink the socket has taken whole since the last call,
    /// in the order they were given.
    pub fn take_written(&mut self) -> usize {
        std::mem::take(&mut self.done)
    }
}

impl Sink<Message> for Writer {
    type Error = ProtocolError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Keep at most a few messages' worth encoded before writing them out.
        if self.queued >= 16 {
            return self.poll_write_out(cx).map_err(ProtocolError::Io);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        let this = &mut *self;
        this.queued += 1;
        this.codec.encode(item, &mut this.buf)?;
        this.ends.push_back(this.written + this.buf.len());
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = &mut *self;
        std::task::ready!(this.poll_write_out(cx)).map_err(ProtocolError::Io)?;
        Pin::new(&mut this.io)
            .poll_flush(cx)
            .map_err(ProtocolError::Io)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        std::task::ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.io)
            .poll_shutdown(cx)
            .map_err(ProtocolError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;

    /// Frames as the gateway sends them (unmasked), encoded back to back.
    fn server_frames(messages: Vec<Message>) -> Vec<u8> {
        let mut codec = Codec::new();
        let mut out = BytesMut::new();
        for m in messages {
            codec.encode(m, &mut out).unwrap();
        }
        out.to_vec()
    }

    fn reader_over(io: tokio::io::DuplexStream, max_size: usize) -> Reader {
        let framed = Framed::new(
            Box::new(io) as BoxedSocket,
            Codec::new().client_mode().max_size(max_size),
        );
        split(framed, max_size).0
    }

    #[test]
    fn frame_header_reads_every_header_form() {
        assert_eq!(frame_header(&[0x81]), None, "one byte says nothing yet");
        assert_eq!(frame_header(&[0x81, 5]), Some((2, 5)));
        assert_eq!(
            frame_header(&[0x81, 0x85]),
            Some((6, 5)),
            "a mask adds four bytes"
        );
        assert_eq!(frame_header(&[0x81, 126, 0x0a]), None);
        assert_eq!(frame_header(&[0x81, 126, 0x0a, 0x28]), Some((4, 2600)));
        assert_eq!(frame_header(&[0x82, 127, 0, 0, 0, 0, 0, 0x50]), None);
        assert_eq!(
            frame_header(&[0x82, 127, 0, 0, 0, 0, 0, 0x50, 0, 0]),
            Some((10, 0x50 << 16))
        );
    }

    #[actix_rt::test]
    async fn frames_split_anywhere_arrive_whole_and_in_order() {
        let small = "m".repeat(2600);
        let large = "g".repeat(3 * read_pool::BUFFER + 17);
        let wire = server_frames(vec![
            Message::Text(small.clone().into()),
            Message::Text(large.clone().into()),
            Message::Ping(Bytes::from_static(b"p")),
            Message::Text(small.clone().into()),
        ]);
        // Cut points inside the first frame's header, its payload, the large frame's header and
        // payload, and between frames.
        for cut in [
            1,
            3,
            5,
            1000,
            2604,
            2605,
            2607,
            2700,
            70_000,
            wire.len() - 3,
        ] {
            let (client, mut server) = tokio::io::duplex(256 << 10);
            let mut reader = reader_over(client, 1 << 20);
            let (a, b) = wire.split_at(cut);
            let (a, b) = (a.to_vec(), b.to_vec());
            let writer = actix_rt::spawn(async move {
                server.write_all(&a).await.unwrap();
                tokio::task::yield_now().await;
                server.write_all(&b).await.unwrap();
                server
            });
            let mut got = Vec::new();
            for _ in 0..4 {
                got.push(reader.next().await.unwrap().unwrap());
            }
            drop(writer.await.unwrap());
            assert!(reader.next().await.is_none(), "cut {cut}: end of stream");
            assert_eq!(
                got,
                [
                    Frame::Text(Bytes::from(small.clone())),
                    Frame::Text(Bytes::from(large.clone())),
                    Frame::Ping(Bytes::from_static(b"p")),
                    Frame::Text(Bytes::from(small.clone())),
                ],
                "cut {cut}"
            );
        }
    }

    #[actix_rt::test]
    async fn an_oversized_frame_is_refused_from_its_header() {
        let (client, mut server) = tokio::io::duplex(64 << 10);
        let mut reader = reader_over(client, 1000);
        let wire = server_frames(vec![Message::Text("x".repeat(5000).into())]);
        // Only the header is sent: the refusal cannot wait for the payload.
        server.write_all(&wire[..4]).await.unwrap();
        assert!(matches!(
            reader.next().await,
            Some(Err(ProtocolError::Overflow))
        ));
        assert!(reader.next().await.is_none(), "and the stream ends there");
    }

    /// One frame as the gateway might send it, with the frame the reader must give back for it.
    fn any_frame() -> impl proptest::strategy::Strategy<Value = (Message, Frame)> {
        use actix_http::ws::{CloseCode, CloseReason};
        use proptest::prelude::*;
        // Payload sizes around every header form: 7-bit, 16-bit (126) and 64-bit (127) lengths,
        // and frames larger than a read buffer.
        let size = prop_oneof![
            6 => 0usize..=130,
            2 => 65_530usize..=65_540,
            1 => (read_pool::BUFFER + 1)..=(read_pool::BUFFER + 3000),
            1 => 126usize..=3000,
        ];
        let payload = (size, any::<u8>()).prop_map(|(n, b)| {
            // Cheap to build at any size, and not all one byte.
            (0..n).map(|i| b.wrapping_add(i as u8)).collect::<Vec<u8>>()
        });
        let control = prop::collection::vec(any::<u8>(), 0..=125);
        prop_oneof![
            4 => payload.clone().prop_map(|p| {
                let text: String = p.iter().map(|b| char::from(b'a' + b % 26)).collect();
                (
                    Message::Text(text.clone().into()),
                    Frame::Text(Bytes::from(text)),
                )
            }),
            3 => payload.prop_map(|p| {
                (
                    Message::Binary(Bytes::from(p.clone())),
                    Frame::Binary(Bytes::from(p)),
                )
            }),
            1 => control.clone().prop_map(|p| {
                (
                    Message::Ping(Bytes::from(p.clone())),
                    Frame::Ping(Bytes::from(p)),
                )
            }),
            1 => control.prop_map(|p| {
                (
                    Message::Pong(Bytes::from(p.clone())),
                    Frame::Pong(Bytes::from(p)),
                )
            }),
            // Codes a close frame may carry (RFC 6455 §7.4: not 1005, 1006 or 1015).
            1 => (prop_oneof![1000u16..=1003, 1007u16..=1011, 3000u16..5000], "[a-z ]{0,20}").prop_map(|(code, why)| {
                let reason = CloseReason {
                    code: CloseCode::from(code),
                    description: (!why.is_empty()).then_some(why),
                };
                (
                    Message::Close(Some(reason.clone())),
                    Frame::Close(Some(reason)),
                )
            }),
        ]
    }

    /// A server frame the websocket codec refuses, one of each kind of error it raises: reserved
    /// bits set, a mask (only clients mask), an opcode RFC 6455 reserves, a 64-bit length with its
    /// top bit set, a control frame too long or fragmented, a close frame with a one-byte payload,
    /// a continuation with nothing to continue.
    fn codec_error() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let mut ping_126 = vec![0x89, 126, 0, 126];
        ping_126.extend_from_slice(&[b'p'; 126]);
        prop_oneof![
            (1u8..8).prop_map(|rsv| vec![0x81 | (rsv << 4), 1, b'x']),
            Just(vec![0x81, 0x81, 1, 2, 3, 4, b'x']),
            prop_oneof![3u8..=7, 0xBu8..=0xF].prop_map(|op| vec![0x80 | op, 0]),
            Just(vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1]),
            Just(ping_126),
            Just(vec![0x09, 1, b'p']),
            Just(vec![0x88, 1, 3]),
            Just(vec![0x80, 1, b'x']),
            Just(vec![0x00, 1, b'x']),
        ]
    }

    #[actix_rt::test]
    async fn a_codec_error_ends_the_stream_once() {
        let bad: Vec<u8> = vec![0xC1, 1, b'x']; // RSV1 set, no extension negotiated
        let (client, mut server) = tokio::io::duplex(64 << 10);
        let mut reader = reader_over(client, 1 << 20);
        let mut wire = server_frames(vec![Message::Text("before".into())]);
        wire.extend_from_slice(&bad);
        wire.extend(server_frames(vec![Message::Text("after".into())]));
        server.write_all(&wire).await.unwrap();
        assert_eq!(
            reader.next().await.unwrap().unwrap(),
            Frame::Text(Bytes::from_static(b"before"))
        );
        assert!(reader.next().await.unwrap().is_err());
        // The socket is still open and more bytes follow: the stream has ended all the same.
        assert!(reader.next().await.is_none());
        assert!(reader.next().await.is_none());
        drop(server);
    }

    /// Writes `wire` in pieces cut at `cuts` (yielding between them, so the reader sees each piece
    /// on its own) through a pipe of `pipe` bytes, and reads until the stream ends or fails.
    fn read_all(
        wire: Vec<u8>,
        cuts: &[proptest::sample::Index],
        pipe: usize,
    ) -> Vec<Result<Frame, String>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        actix_rt::System::new().block_on(async move {
            let (client, mut server) = tokio::io::duplex(pipe);
            let mut reader = reader_over(client, 1 << 20);
            let writer = actix_rt::spawn(async move {
                let mut last = 0;
                for p in points {
                    // The reader may have given up (an error): nothing more to write then.
                    if server.write_all(&wire[last..p]).await.is_err() {
                        return;
                    }
                    last = p;
                    tokio::task::yield_now().await;
                }
            });
            // Read to the end of the stream: an error must end it. (A few items past an error are
            // collected, so a reader that repeats one fails the comparison instead of hanging.)
            let mut got = Vec::new();
            let mut after_error = 0;
            while let Some(item) = reader.next().await {
                got.push(item.map_err(|e| e.to_string()));
                if got.iter().any(Result::is_err) {
                    after_error += 1;
                    if after_error > 3 {
                        break;
                    }
                }
            }
            drop(reader);
            let _ = writer.await;
            got
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 48, ..Default::default() })]

        /// Any sequence of frames, cut anywhere across reads, comes out whole and in order; a frame
        /// the websocket codec refuses (every kind of error it raises for a server's frame) ends
        /// the stream with that error, once, and nothing after it is read.
        #[test]
        fn any_frames_cut_anywhere_arrive_whole_and_in_order(
            frames in proptest::collection::vec(any_frame(), 1..8),
            bad in proptest::option::weighted(0.3, (proptest::prelude::any::<proptest::sample::Index>(), codec_error())),
            cuts in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..12),
            pipe in 1usize..=(80 << 10),
        ) {
            let bad_at = bad.as_ref().map(|(i, _)| i.index(frames.len()));
            let mut wire = BytesMut::new();
            let mut expected = Vec::new();
            for (i, (message, frame)) in frames.into_iter().enumerate() {
                if let (Some(at), Some((_, bytes))) = (bad_at, &bad) {
                    if at == i {
                        wire.extend_from_slice(bytes);
                        let error = Codec::new()
                            .client_mode()
                            .max_size(1 << 20)
                            .decode(&mut BytesMut::from(&bytes[..]))
                            .expect_err("a frame the codec refuses");
                        expected.push(Err(error.to_string()));
                    }
                }
                Codec::new().encode(message, &mut wire).unwrap();
                if bad_at.is_none_or(|at| i < at) {
                    expected.push(Ok(frame));
                }
            }
            let got = read_all(wire.to_vec(), &cuts, pipe);
            proptest::prop_assert_eq!(got, expected);
        }

        /// Garbage gives frames or an error, and then the end: never a panic, never a hang.
        #[test]
        fn garbage_gives_frames_or_an_error_never_a_panic(
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            cuts in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..6),
            pipe in 1usize..=4096,
        ) {
            let got = read_all(garbage, &cuts, pipe);
            // Only the last item may be an error: the stream ends at the first.
            proptest::prop_assert!(got.iter().rev().skip(1).all(Result::is_ok));
        }
    }
}
