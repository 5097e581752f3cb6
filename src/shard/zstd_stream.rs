//! zstd-stream transport decompression: one decompression context per connection; each websocket
//! message is one gateway message that does not end the zstd frame (docs/protocol.md §6).

use bytes::Bytes;
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

use super::inflate::{decompress_message, InflateError};

/// The largest window a connection's stream may ask for: 2^23 bytes, 8 MiB (docs/protocol.md §6).
/// zstd's decoder would otherwise allocate up to 128 MiB for a window a single small frame declares,
/// whatever `Limits::max_decompressed_size` says; a stream asking for more is refused as corrupt.
pub const MAX_WINDOW_LOG: u32 = 23;

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
        let mut decoder = Decoder::new().map_err(|e| InflateError::Corrupt(e.to_string()))?;
        decoder
            .set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
            .map_err(|e| InflateError::Corrupt(e.to_string()))?;
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
        compress_with(Encoder::new(3).unwrap(), messages)
    }

    fn compress_with(mut encoder: Encoder<'static>, messages: &[&[u8]]) -> Vec<Vec<u8>> {
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

    /// An encoder whose frames declare a window of 2^`log` bytes.
    fn with_window(log: u32) -> Encoder<'static> {
        use zstd::stream::raw::CParameter;
        let mut encoder = Encoder::new(3).unwrap();
        encoder.set_parameter(CParameter::WindowLog(log)).unwrap();
        encoder
    }

    #[test]
    fn a_window_over_8_mib_is_refused_before_it_is_allocated() {
        // A stream that flushes without ending its frame declares its window up front: a few bytes
        // of it would make a decoder without a limit allocate 2^log bytes.
        let small: &[u8] = br#"{"op":10,"d":{"heartbeat_interval":41250}}"#;
        let fits = compress_with(with_window(MAX_WINDOW_LOG), &[small]);
        let mut stream = ZstdStream::new(1 << 20).unwrap();
        assert_eq!(&stream.push(&fits[0]).unwrap()[..], small);
        for log in [MAX_WINDOW_LOG + 1, 27, 30] {
            let bomb = compress_with(with_window(log), &[small]);
            assert!(bomb[0].len() < 100, "{}", bomb[0].len());
            let mut stream = ZstdStream::new(1 << 30).unwrap();
            assert!(
                matches!(stream.push(&bomb[0]), Err(InflateError::Corrupt(_))),
                "window 2^{log}"
            );
        }
    }

    #[test]
    fn the_cap_is_exact_whatever_it_is() {
        for cap in [0, 1, 100, 4095, 65_535, 65_536, 65_537, 100_000, 300_000] {
            let exact = vec![b'z'; cap];
            let over = vec![b'z'; cap + 1];
            let frames = compress_each(&[&exact, &over]);
            let mut stream = ZstdStream::new(cap).unwrap();
            assert_eq!(
                stream.push(&frames[0]).map(|m| m.len()),
                Ok(cap),
                "cap {cap}"
            );
            assert_eq!(
                stream.push(&frames[1]),
                Err(InflateError::TooLarge(cap)),
                "cap {cap}"
            );
        }
        // A small cap after a large message: the thread's scratch buffer is roomier than the cap.
        let big = vec![b'q'; 60_000];
        let frames = compress_each(&[&big]);
        let mut stream = ZstdStream::new(1 << 20).unwrap();
        stream.push(&frames[0]).unwrap();
        let mut small = ZstdStream::new(1000).unwrap();
        let frames = compress_each(&[&big[..1001]]);
        assert_eq!(small.push(&frames[0]), Err(InflateError::TooLarge(1000)));
    }
}
