//! The fake gateway's side of a websocket: the upgrade, the frames the client sends, and the frames
//! sent to it.
//!
//! Outgoing frames are encoded straight into one buffer and leave as one chunk of the response body
//! per batch (a flood's chunk is a few hundred events), rather than as one channel message and one
//! encoding step per frame: under a flood the fake shares the machine with the client it measures,
//! so every microsecond it spends per event is one the benchmarks cannot show.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_codec::Decoder;
use actix_http::body::{BodyStream, MessageBody};
use actix_http::ws::{CloseReason, Codec, Frame, Item, Message, OpCode, Parser, ProtocolError};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::Stream;
use tokio::sync::mpsc;

/// Chunks queued while another is being written: the fake builds the next batch while the socket
/// takes the last one, and a frame's build time (a flood probe's "sent" time) is never more than two
/// chunks ahead of the socket.
const QUEUED_CHUNKS: usize = 1;

/// The largest websocket header: opcode byte, length byte, 8-byte extended length.
const MAX_HEADER: usize = 10;

/// Answers the upgrade: the 101 response (whose body is every frame sent later), the sending half
/// and the receiving half. Frames from the client over `max_frame` bytes are a protocol error.
pub(crate) fn accept(
    req: &HttpRequest,
    body: web::Payload,
    max_frame: usize,
) -> Result<(HttpResponse, Outgoing, Incoming), actix_web::Error> {
    let mut response = actix_http::ws::handshake(req.head())?;
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    let response = response.message_body(BodyStream::new(Chunks(rx)).boxed())?;
    let outgoing = Outgoing {
        tx: Some(tx),
        buf: BytesMut::new(),
    };
    let incoming = Incoming {
        payload: body.into_inner(),
        buf: BytesMut::new(),
        codec: Codec::new().max_size(max_frame),
        ended: false,
    };
    Ok((response.into(), outgoing, incoming))
}

/// The response body: the chunks the connection sends, until it drops its sender.
struct Chunks(mpsc::Receiver<Bytes>);

impl Stream for Chunks {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(Ok))
    }
}

/// Frames to the client: queued with [`Outgoing::message`], sent with [`Outgoing::flush`].
pub(crate) struct Outgoing {
    /// `None` once a close frame has gone out: nothing may follow it.
    tx: Option<mpsc::Sender<Bytes>>,
    buf: BytesMut,
}

impl Outgoing {
    /// Makes room for frames carrying `payload` bytes in all, `frames` frames, so queueing them
    /// writes each byte once instead of growing the buffer as it goes.
    pub fn reserve(&mut self, payload: usize, frames: usize) {
        self.buf.reserve(payload + frames * MAX_HEADER);
    }

    /// Queues one text frame.
    pub fn text(&mut self, text: &[u8]) {
        Parser::write_message(&mut self.buf, text, OpCode::Text, true, false);
    }

    /// Queues bytes as they are: whatever websocket framing they have is the caller's.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Queues one message (continuation frames as the parts they are).
    pub fn message(&mut self, message: Message) {
        let (payload, op, fin) = match message {
            Message::Text(text) => return self.text(text.as_bytes()),
            Message::Binary(bytes) => (bytes, OpCode::Binary, true),
            Message::Continuation(Item::FirstText(bytes)) => (bytes, OpCode::Text, false),
            Message::Continuation(Item::FirstBinary(bytes)) => (bytes, OpCode::Binary, false),
            Message::Continuation(Item::Continue(bytes)) => (bytes, OpCode::Continue, false),
            Message::Continuation(Item::Last(bytes)) => (bytes, OpCode::Continue, true),
            Message::Ping(bytes) => (bytes, OpCode::Ping, true),
            Message::Pong(bytes) => (bytes, OpCode::Pong, true),
            Message::Close(reason) => return Parser::write_close(&mut self.buf, reason, false),
            Message::Nop => return,
        };
        Parser::write_message(&mut self.buf, payload, op, fin, false);
    }

    /// Sends what is queued. False once the client's side is gone or the connection closed.
    pub async fn flush(&mut self) -> bool {
        let Some(tx) = &self.tx else {
            return false;
        };
        if self.buf.is_empty() {
            return true;
        }
        tx.send(self.buf.split().freeze()).await.is_ok()
    }

    /// Queues `message` and sends it with everything queued before it.
    pub async fn send(&mut self, message: Message) -> bool {
        self.message(message);
        self.flush().await
    }

    /// Sends a close frame (after what is queued) and ends the response.
    pub async fn close(&mut self, reason: Option<CloseReason>) {
        self.message(Message::Close(reason));
        self.flush().await;
        self.tx = None;
    }
}

/// Frames from the client, as whole messages or continuation parts.
pub(crate) struct Incoming {
    payload: actix_http::Payload,
    buf: BytesMut,
    codec: Codec,
    ended: bool,
}

impl Stream for Incoming {
    type Item = Result<Message, ProtocolError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            // What is buffered first: a frame already here must not wait for more bytes.
            match this.codec.decode(&mut this.buf) {
                Ok(Some(frame)) => return Poll::Ready(Some(message(frame))),
                Ok(None) => {}
                Err(e) => {
                    // Nothing after a broken frame can be read.
                    this.ended = true;
                    this.buf.clear();
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => this.buf.extend_from_slice(&bytes),
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(ProtocolError::Io(std::io::Error::other(e)))));
                }
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A decoded frame as a message; a text frame must be UTF-8.
fn message(frame: Frame) -> Result<Message, ProtocolError> {
    Ok(match frame {
        Frame::Text(bytes) => Message::Text(ByteString::try_from(bytes).map_err(|e| {
            ProtocolError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?),
        Frame::Binary(bytes) => Message::Binary(bytes),
        Frame::Continuation(item) => Message::Continuation(item),
        Frame::Ping(bytes) => Message::Ping(bytes),
        Frame::Pong(bytes) => Message::Pong(bytes),
        Frame::Close(reason) => Message::Close(reason),
    })
}
