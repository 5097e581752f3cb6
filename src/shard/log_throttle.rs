//! Warnings a remote peer can cause (a malformed frame, an unknown opcode, a command over the
//! send limit) at a bounded rate: a gateway that sends garbage in a loop must not turn into a log
//! stream. The first line is written at once; after it, at most one line per [`EVERY`] for each
//! kind and shard, carrying how many were left out since the last one.

use std::time::{Duration, Instant};

/// At most one line per this long for one kind of warning of one shard.
pub const EVERY: Duration = Duration::from_secs(1);

/// The rate limit of one kind of warning.
#[derive(Debug, Default)]
pub struct Throttle {
    /// When the next line may be written; `None` before the first.
    next_at: Option<Instant>,
    /// Lines left out since the last one written.
    suppressed: u64,
}

impl Throttle {
    /// Whether to write the warning at `now`: `Some(left out since the last line)` if so.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.next_at.is_some_and(|at| now < at) {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.next_at = now.checked_add(EVERY);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Throttles allocated only once a peer has caused a warning of their kind: a shard that never
/// sees bad input keeps one pointer for all of them.
#[derive(Debug, Default)]
pub struct Throttles<const N: usize>(Option<Box<[Throttle; N]>>);

impl<const N: usize> Throttles<N> {
    /// [`Throttle::allow`] for the `kind`-th kind of warning.
    pub fn allow(&mut self, kind: usize, now: Instant) -> Option<u64> {
        let all = self
            .0
            .get_or_insert_with(|| Box::new(std::array::from_fn(|_| Throttle::default())));
        all.get_mut(kind)?.allow(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_carrying_the_count_left_out() {
        let t0 = Instant::now();
        let mut t = Throttle::default();
        assert_eq!(t.allow(t0), Some(0), "the first is written at once");
        for i in 1..=1000 {
            assert_eq!(t.allow(t0 + Duration::from_micros(i)), None);
        }
        assert_eq!(t.allow(t0 + EVERY), Some(1000));
        assert_eq!(t.allow(t0 + EVERY + Duration::from_millis(1)), None);
        assert_eq!(t.allow(t0 + EVERY * 5), Some(1));
    }

    #[test]
    fn kinds_are_limited_apart() {
        let t0 = Instant::now();
        let mut all = Throttles::<2>::default();
        assert_eq!(all.allow(0, t0), Some(0));
        assert_eq!(all.allow(1, t0), Some(0));
        assert_eq!(all.allow(0, t0), None);
        assert_eq!(all.allow(2, t0), None, "no such kind: nothing written");
    }
}
