//! The fake gateway's side of transport compression: one compressor per connection, flushed (not
//! ended) after every message (docs/protocol.md §6).

use flate2::{Compress, Compression, FlushCompress};

/// A connection's compressor.
pub(crate) enum Compressor {
    Zlib(Compress),
    Zstd(Box<zstd::stream::raw::Encoder<'static>>),
}

impl Compressor {
    /// The compressor for a `compress` query value; `None` for one the gateway does not speak.
    pub fn for_query(value: &str) -> Option<Self> {
        match value {
            "zlib-stream" => Some(Self::Zlib(Compress::new(Compression::fast(), true))),
            "zstd-stream" => zstd::stream::raw::Encoder::new(3)
                .ok()
                .map(|e| Self::Zstd(Box::new(e))),
            _ => None,
        }
    }

    /// One message, compressed and flushed so the client can decompress it on its own.
    pub fn compress(&mut self, input: &[u8]) -> Vec<u8> {
        match self {
            Self::Zlib(z) => {
                let mut out = Vec::with_capacity(input.len() / 2 + 64);
                let start = z.total_in();
                loop {
                    let consumed = (z.total_in() - start) as usize;
                    if z.compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
                        .is_err()
                    {
                        break;
                    }
                    let done = (z.total_in() - start) as usize == input.len();
                    if done && out.len() < out.capacity() {
                        break;
                    }
                    out.reserve(out.capacity().max(64));
                }
                out
            }
            Self::Zstd(encoder) => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                let mut out = Vec::with_capacity(input.len() / 2 + 128);
                let mut src = InBuffer::around(input);
                loop {
                    if out.len() == out.capacity() {
                        out.reserve(out.capacity().max(128));
                    }
                    let pos = out.len();
                    let mut dst = OutBuffer::around_pos(&mut out, pos);
                    if encoder.run(&mut src, &mut dst).is_err() {
                        break;
                    }
                    if src.pos() == input.len() {
                        break;
                    }
                }
                loop {
                    if out.len() == out.capacity() {
                        out.reserve(out.capacity().max(128));
                    }
                    let pos = out.len();
                    let mut dst = OutBuffer::around_pos(&mut out, pos);
                    match encoder.flush(&mut dst) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                out
            }
        }
    }
}
