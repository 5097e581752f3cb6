//! zlib-stream transport decompression: one inflate context per connection, a message ends where the
//! data ends in `00 00 FF FF` (docs/protocol.md §6).

use bytes::{Bytes, BytesMut};
use flate2::{Decompress, FlushDecompress, Status};

const SYNC_FLUSH: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Buffers larger than this are freed after use rather than kept for the next message, so an idle
/// shard does not hold the memory of its largest `GUILD_CREATE`.
const KEEP_CAPACITY: usize = 16 << 10;

/// Why a compressed message could not be inflated. The stream state is lost: reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflateError {
    /// The data is not a valid zlib stream.
    Corrupt(String),
    /// The message inflates to more than the configured cap (a decompression bomb, or a limit set
    /// too low).
    TooLarge(usize),
    /// Compressed data without its end marker grew past the cap.
    Unterminated(usize),
}

impl std::fmt::Display for InflateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Corrupt(e) => write!(f, "corrupt zlib stream: {e}"),
            Self::TooLarge(cap) => write!(f, "message inflates past the {cap}-byte cap"),
            Self::Unterminated(cap) => {
                write!(f, "compressed message without end marker past {cap} bytes")
            }
        }
    }
}

impl std::error::Error for InflateError {}

/// The scratch buffer a thread decompresses into, kept between messages up to this size.
const SCRATCH_KEPT: usize = 64 << 10;

thread_local! {
    // A message is decompressed here and copied out at its exact size. Its compressed size says
    // little about its decompressed size (a stream's window can shrink a repeated 2.6 KB event to a
    // few dozen bytes), so writing it straight into a buffer sized from its input took several
    // passes of the decompressor and as many reallocations per message.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `step` (one pass of a decompressor appending to the buffer; `true` once the message is
/// whole) over this thread's scratch buffer and returns the message, or [`InflateError::TooLarge`]
/// once it is longer than `max_output` bytes: exactly, whatever the cap and however much room the
/// buffer happens to have.
pub(crate) fn decompress_message(
    max_output: usize,
    mut step: impl FnMut(&mut Vec<u8>) -> Result<bool, InflateError>,
) -> Result<Bytes, InflateError> {
    // One byte past the cap is what tells a message of exactly the cap (it stops short of it) from
    // a longer one (it reaches it).
    let limit = max_output.saturating_add(1);
    SCRATCH.with_borrow_mut(|out| {
        out.clear();
        out.reserve(SCRATCH_KEPT.min(limit));
        let message = loop {
            make_room(out, limit);
            match step(out) {
                // The buffer may be roomier than the limit (kept from a larger message): the length,
                // not the room, decides.
                Ok(_) if out.len() > max_output => break Err(InflateError::TooLarge(max_output)),
                Ok(true) => break Ok(Bytes::copy_from_slice(out)),
                Ok(false) => {}
                Err(e) => break Err(e),
            }
        };
        if out.capacity() > SCRATCH_KEPT {
            // A large message (a big GUILD_CREATE) does not keep its memory with the thread.
            *out = Vec::new();
        }
        message
    })
}

/// Doubles a full output buffer, up to `limit` bytes (the caller stops at a message longer than
/// the cap before the buffer is full at the limit).
fn make_room(out: &mut Vec<u8>, limit: usize) {
    if out.len() == out.capacity() {
        let grow = out.capacity().max(1).min(limit - out.len());
        out.reserve_exact(grow);
    }
}

/// The inflate context of one zlib-stream connection.
pub struct Inflater {
    zlib: Decompress,
    pending: BytesMut,
    max_output: usize,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Inflater {
    /// A fresh context (one per connection) whose messages may inflate to at most `max_output` bytes.
    pub fn new(max_output: usize) -> Self {
        Self {
            zlib: Decompress::new(true),
            pending: BytesMut::new(),
            max_output,
        }
    }

    /// Feeds one websocket message's bytes; returns a whole inflated gateway message once the data so
    /// far ends with the sync-flush marker.
    pub fn push(&mut self, data: &[u8]) -> Result<Option<Bytes>, InflateError> {
        if self.pending.is_empty() && data.ends_with(&SYNC_FLUSH) {
            return self.inflate(data).map(Some);
        }
        if self.pending.len() + data.len() > self.max_output {
            self.pending = BytesMut::new();
            return Err(InflateError::Unterminated(self.max_output));
        }
        self.pending.extend_from_slice(data);
        if !self.pending.ends_with(&SYNC_FLUSH) {
            return Ok(None);
        }
        let input = std::mem::take(&mut self.pending);
        let out = self.inflate(&input);
        if input.capacity() <= KEEP_CAPACITY {
            self.pending = input;
            self.pending.clear();
        }
        out.map(Some)
    }

    fn inflate(&mut self, mut input: &[u8]) -> Result<Bytes, InflateError> {
        let zlib = &mut self.zlib;
        decompress_message(self.max_output, |out| {
            let before_in = zlib.total_in();
            let before_out = zlib.total_out();
            let status = zlib
                .decompress_vec(input, out, FlushDecompress::Sync)
                .map_err(|e| InflateError::Corrupt(e.to_string()))?;
            let consumed = (zlib.total_in() - before_in) as usize;
            let produced = zlib.total_out() - before_out;
            input = &input[consumed..];
            let out_full = out.len() == out.capacity();
            match status {
                Status::StreamEnd => Ok(true),
                _ if input.is_empty() && !out_full => Ok(true),
                Status::BufError if consumed == 0 && produced == 0 && !out_full => {
                    Err(InflateError::Corrupt("no progress".into()))
                }
                _ => Ok(false),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    fn compress_each(messages: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut z = Compress::new(Compression::fast(), true);
        messages
            .iter()
            .map(|m| {
                // Deflate never grows data by more than a few bytes per 16 KiB block.
                let mut out = Vec::with_capacity(m.len() + m.len() / 100 + 64);
                z.compress_vec(m, &mut out, FlushCompress::Sync).unwrap();
                assert_eq!(
                    z.total_in() as usize,
                    messages
                        .iter()
                        .take_while(|x| !std::ptr::eq(**x, *m))
                        .map(|x| x.len())
                        .sum::<usize>()
                        + m.len()
                );
                out
            })
            .collect()
    }

    #[test]
    fn one_context_inflates_a_stream_of_messages() {
        let msgs: [&[u8]; 3] = [br#"{"op":10}"#, br#"{"op":11}"#, &[b'x'; 100_000]];
        let frames = compress_each(&msgs);
        assert_eq!(&frames[0][..2], &[0x78, 0x01]);
        let mut inflater = Inflater::new(1 << 20);
        for (frame, msg) in frames.iter().zip(msgs) {
            assert_eq!(inflater.push(frame).unwrap().as_deref(), Some(msg));
        }
    }

    #[test]
    fn a_message_split_over_frames_is_assembled() {
        let frames = compress_each(&[b"{\"op\":0,\"d\":\"hello\"}"]);
        let (a, b) = frames[0].split_at(5);
        let mut inflater = Inflater::new(1 << 20);
        assert_eq!(inflater.push(a).unwrap(), None);
        assert_eq!(
            inflater.push(b).unwrap().as_deref(),
            Some(&b"{\"op\":0,\"d\":\"hello\"}"[..])
        );
    }

    #[test]
    fn a_bomb_hits_the_cap_and_garbage_is_corrupt() {
        // A bomb is packed as tightly as deflate allows (level 1 in zlib-rs favours speed).
        let mut z = Compress::new(Compression::best(), true);
        let mut bomb = Vec::with_capacity(256 << 10);
        z.compress_vec(&vec![b'a'; 10 << 20], &mut bomb, FlushCompress::Sync)
            .unwrap();
        let frames = [bomb];
        assert!(frames[0].len() < 64 << 10, "{}", frames[0].len());
        let mut inflater = Inflater::new(1 << 20);
        assert_eq!(
            inflater.push(&frames[0]),
            Err(InflateError::TooLarge(1 << 20))
        );
        let mut inflater = Inflater::new(1 << 20);
        assert!(matches!(
            inflater.push(b"garbage\x00\x00\xff\xff"),
            Err(InflateError::Corrupt(_))
        ));
        let mut inflater = Inflater::new(4096);
        assert_eq!(inflater.push(&[1u8; 3000]).unwrap(), None);
        assert_eq!(
            inflater.push(&[1u8; 3000]),
            Err(InflateError::Unterminated(4096))
        );
    }

    #[test]
    fn the_cap_is_exact_whatever_it_is() {
        for cap in [1, 100, 4095, 65_535, 65_536, 65_537, 100_000, 300_000] {
            let exact = vec![b'z'; cap];
            let over = vec![b'z'; cap + 1];
            let frames = compress_each(&[&exact, &over]);
            let mut inflater = Inflater::new(cap + 64);
            // The compressed form must fit the cap too: these compress well.
            let mut inflater_exact = Inflater::new(cap);
            assert_eq!(
                inflater_exact.push(&frames[0]).map(|m| m.map(|m| m.len())),
                Ok(Some(cap)),
                "cap {cap}"
            );
            assert_eq!(
                inflater_exact.push(&frames[1]),
                Err(InflateError::TooLarge(cap)),
                "cap {cap}"
            );
            assert_eq!(
                inflater.push(&frames[0]).map(|m| m.map(|m| m.len())),
                Ok(Some(cap))
            );
        }
        // A small cap after a large message: the thread's scratch buffer is roomier than the cap.
        let big = vec![b'q'; 60_000];
        Inflater::new(1 << 20)
            .push(&compress_each(&[&big])[0])
            .unwrap();
        let mut small = Inflater::new(1000);
        assert_eq!(
            small.push(&compress_each(&[&big[..1001]])[0]),
            Err(InflateError::TooLarge(1000))
        );
        let mut small = Inflater::new(1000);
        assert_eq!(
            small
                .push(&compress_each(&[&big[..1000]])[0])
                .map(|m| m.map(|m| m.len())),
            Ok(Some(1000))
        );
    }
}
