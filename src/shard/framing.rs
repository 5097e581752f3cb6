//! The websocket framing of a shard's connection, owned here rather than left to awc's `Framed`,
//! whose two fixed 8 KiB buffers per connection would be most of an idle shard's memory
//! (ARCHITECTURE.md, "Things that bite").
//!
//! Reading goes through one scratch buffer per thread; bytes are copied into a per-connection buffer
//! only while a frame is incomplete or being decoded, and that buffer is freed once it is empty. A
//! sent message is encoded into a buffer that lives until it is written. An idle shard holds no
//! buffer at all.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_codec::{Decoder, Encoder, Framed};
use actix_http::ws::{Codec, Frame, Message, ProtocolError};
use awc::BoxedSocket;
use bytes::{Buf, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};

/// Bytes read per call; the scratch buffer is this big, once per thread.
const SCRATCH: usize = 64 << 10;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Splits an upgraded connection into its reading and writing halves.
pub fn split(framed: Framed<BoxedSocket, Codec>) -> (Reader, Writer) {
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
        eof: false,
        busy: false,
    };
    let writer = Writer {
        io: write,
        codec: parts.codec,
        buf: BytesMut::new(),
        queued: 0,
    };
    (reader, writer)
}

/// The reading half: a stream of websocket frames.
pub struct Reader {
    io: ReadHalf<BoxedSocket>,
    codec: Codec,
    buf: BytesMut,
    eof: bool,
    /// The last read filled the scratch buffer (a burst is under way).
    busy: bool,
}

impl Stream for Reader {
    type Item = Result<Frame, ProtocolError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if !this.buf.is_empty() {
                match this.codec.decode(&mut this.buf) {
                    Ok(Some(frame)) => {
                        if this.buf.is_empty() && !this.busy {
                            // The frame holds its own bytes; nothing is kept for the next one.
                            this.buf = BytesMut::new();
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
            }
            if this.eof {
                return Poll::Ready(None);
            }
            let read = if this.busy {
                // The last read filled the scratch buffer: more is waiting, so read straight into
                // the connection's buffer instead of copying every byte twice.
                this.buf.reserve(SCRATCH);
                tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf)
            } else {
                SCRATCH_BUF.with(|scratch| {
                    let mut scratch = scratch.borrow_mut();
                    let mut rb = ReadBuf::new(&mut scratch[..]);
                    match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) => {
                            let filled = rb.filled();
                            this.buf.extend_from_slice(filled);
                            Poll::Ready(Ok(filled.len()))
                        }
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        Poll::Pending => Poll::Pending,
                    }
                })
            };
            match read {
                Poll::Pending => {
                    this.busy = false;
                    if this.buf.is_empty() {
                        // Caught up: an idle connection holds no buffer.
                        this.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(n)) => this.busy = n >= SCRATCH,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(ProtocolError::Io(e)))),
            }
        }
    }
}

/// The writing half: a sink of websocket messages.
pub struct Writer {
    io: WriteHalf<BoxedSocket>,
    codec: Codec,
    buf: BytesMut,
    queued: usize,
}

impl Writer {
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.buf.has_remaining() {
            match Pin::new(&mut self.io).poll_write(cx, &self.buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.buf.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Written: give the memory back rather than keep it for the next heartbeat.
        self.buf = BytesMut::new();
        self.queued = 0;
        Poll::Ready(Ok(()))
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
        this.codec.encode(item, &mut this.buf)
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
