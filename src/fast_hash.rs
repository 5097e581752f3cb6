//! A fast hasher for the runtime's own small maps, looked up for every event: handlers by event
//! name and sessions by shard id.
//!
//! std's SipHash defends a map that untrusted input can grow against collision floods. These maps
//! are fixed when the runtime starts (the router) or keyed by the process's own shard ids (the
//! session store), so that defence buys nothing and SipHash cost a few percent of a shard's CPU
//! in a flood. This is the multiply-rotate hash rustc uses for its own tables.

use std::hash::{BuildHasherDefault, Hasher};

/// Builds [`FastHasher`]s.
pub type FastHash = BuildHasherDefault<FastHasher>;

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// A multiply-rotate hasher, a word at a time. Not for maps that untrusted input can grow.
#[derive(Default, Clone, Copy)]
pub struct FastHasher {
    hash: u64,
}

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn event_names_and_shard_ids_spread() {
        let names = [
            "MESSAGE_CREATE",
            "MESSAGE_UPDATE",
            "MESSAGE_DELETE",
            "GUILD_CREATE",
            "GUILD_UPDATE",
            "TYPING_START",
            "PRESENCE_UPDATE",
            "READY",
            "RESUMED",
        ];
        let hashes: HashSet<u64> = names
            .iter()
            .map(|n| FastHash::default().hash_one(n))
            .collect();
        assert_eq!(hashes.len(), names.len());
        // dashmap picks its shard from the bits below the top seven: consecutive shard ids must not
        // all land in one.
        let high: HashSet<u64> = (0..64u32)
            .map(|id| (FastHash::default().hash_one(id) << 7) >> 60)
            .collect();
        assert!(high.len() >= 8, "{high:?}");
    }
}
