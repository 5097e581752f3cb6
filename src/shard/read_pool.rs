//! Read buffers kept for reuse, a few per thread.
//!
//! A received frame is a slice of the buffer it was read into, shared with the handlers that still
//! hold its events, so a shard cannot read into that buffer again until they let go. Without reuse
//! every burst allocates fresh buffers and frees the old ones on the handlers' threads, and the
//! allocator hands that memory back to the kernel and faults it in again: a quarter of the client's
//! CPU in a flood. Buffers here are handed back once their frames are gone, so a steady stream
//! reads into the same few buffers.

use std::cell::RefCell;

use bytes::BytesMut;

/// Size of a read buffer: what one read can take in.
pub const BUFFER: usize = 64 << 10;

/// Buffers kept per thread. A bound, not a target: an idle process keeps at most this many
/// (2 MiB per thread, less where reads were small), however many shards it runs.
const KEPT: usize = 32;

thread_local! {
    static KEPT_BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for [`BUFFER`] bytes: a kept one whose frames are all gone, or a new one.
pub fn take() -> BytesMut {
    KEPT_BUFFERS.with(|kept| {
        let mut kept = kept.borrow_mut();
        // `try_reclaim` succeeds only once no frame shares the buffer, and then costs no copy.
        let free = kept.iter_mut().position(|b| b.try_reclaim(BUFFER));
        match free {
            Some(i) => kept.swap_remove(i),
            None => BytesMut::with_capacity(BUFFER),
        }
    })
}

/// Hands `buf` back for reuse, once the frames read into it are gone. Its contents are discarded.
pub fn give_back(mut buf: BytesMut) {
    if buf.capacity() == 0 && buf.is_empty() {
        // Never allocated (or already taken apart): nothing worth keeping.
        return;
    }
    buf.clear();
    KEPT_BUFFERS.with(|kept| {
        let mut kept = kept.borrow_mut();
        if kept.len() < KEPT {
            kept.push(buf);
        }
        // Otherwise dropped: its memory goes when its last frame does.
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_reused_once_its_frames_are_gone_and_not_before() {
        let mut buf = take();
        let start = buf.spare_capacity_mut().as_ptr() as usize;
        buf.extend_from_slice(&[7; 1000]);
        let frame = buf.split_to(1000).freeze();
        give_back(buf);

        // A frame still holds it: a different buffer comes out.
        let mut other = take();
        assert_ne!(other.spare_capacity_mut().as_ptr() as usize, start);
        assert!(other.capacity() >= BUFFER);

        drop(frame);
        let mut again = take();
        assert_eq!(
            again.spare_capacity_mut().as_ptr() as usize,
            start,
            "the same memory, from its start"
        );
        assert!(again.is_empty() && again.capacity() >= BUFFER);
        give_back(again);
        give_back(other);
    }

    #[test]
    fn at_most_a_few_buffers_are_kept() {
        for _ in 0..KEPT * 2 {
            let mut b = BytesMut::with_capacity(BUFFER);
            b.extend_from_slice(b"x");
            give_back(b);
        }
        assert_eq!(KEPT_BUFFERS.with(|k| k.borrow().len()), KEPT);
        assert!(KEPT_BUFFERS.with(|k| k.borrow().iter().all(BytesMut::is_empty)));
    }
}
