//! zstd-stream transport decompression: one decompression context per connection; each websocket
//! message is one gateway message that does not end the zstd frame (docs/protocol.md §6).

use bytes::Bytes;
use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

use super::inflate::{decompress_message, InflateError};

/// The decompression context of one zstd-stream connection.
pub struct ZstdStream {
    decoder: Decoder<'static>,
    max_output: usize,
}

impl std::fmt::Debug for ZstdStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZstdStream")
    }
}

impl ZstdStream {
    /// A fresh context whose messages may decompress to at most `max_output` bytes.
    pub fn new(max_output: usize) -> Result<Self, InflateError> {
        let decoder = Decoder::new().map_err(|e| InflateError::Corrupt(e.to_string()))?;
        Ok(Self {
            decoder,
            max_output,
        })
    }

    /// Decompresses one websocket message into one gateway message: until the input is consumed and
    /// the output stops.
    pub fn push(&mut self, data: &[u8]) -> Result<Bytes, InflateError> {
        let mut input = InBuffer::around(data);
        let decoder = &mut self.decoder;
        decompress_message(self.max_output, |out| {
            let pos = out.len();
            let mut output = OutBuffer::around_pos(out, pos);
            decoder
                .run(&mut input, &mut output)
                .map_err(|e| InflateError::Corrupt(e.to_string()))?;
            let progressed = output.pos() > pos;
            let consumed = input.pos() == data.len();
            Ok(consumed && (out.len() < out.capacity() || !progressed))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zstd::stream::raw::Encoder;

    fn compress_each(messages: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut encoder = Encoder::new(3).unwrap();
        messages
            .iter()
            .map(|m| {
                let mut out = Vec::with_capacity(m.len() + 1024);
                let mut input = InBuffer::around(m);
                while input.pos() < m.len() {
                    let pos = out.len();
                    let mut o = OutBuffer::around_pos(&mut out, pos);
                    encoder.run(&mut input, &mut o).unwrap();
                }
                let pos = out.len();
                let mut o = OutBuffer::around_pos(&mut out, pos);
                while encoder.flush(&mut o).unwrap() > 0 {}
                out
            })
            .collect()
    }

    #[test]
    fn one_context_decompresses_a_stream_of_flushed_messages() {
        let big = vec![b'y'; 300_000];
        let msgs: [&[u8]; 3] = [br#"{"op":10}"#, br#"{"op":11}"#, &big];
        let frames = compress_each(&msgs);
        let mut stream = ZstdStream::new(1 << 20).unwrap();
        for (frame, msg) in frames.iter().zip(msgs) {
            assert_eq!(&stream.push(frame).unwrap()[..], msg);
        }
    }

    #[test]
    fn a_bomb_hits_the_cap_and_garbage_is_corrupt() {
        let frames = compress_each(&[&vec![0u8; 8 << 20]]);
        let mut stream = ZstdStream::new(1 << 20).unwrap();
        assert_eq!(
            stream.push(&frames[0]),
            Err(InflateError::TooLarge(1 << 20))
        );
        let mut stream = ZstdStream::new(1 << 20).unwrap();
        assert!(matches!(
            stream.push(b"definitely not zstd"),
            Err(InflateError::Corrupt(_))
        ));
    }
}
