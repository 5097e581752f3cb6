//! Where on the clock a heartbeat is sent.
//!
//! Each shard's heartbeats are due at its own jittered times, so thousands of idle shards would wake
//! their thread once per heartbeat. Moving each due time *earlier* onto a coarse grid shared by the
//! process lets one wakeup send every heartbeat that falls in the same slot (and their ACKs arrive
//! together), which is most of an idle shard's CPU. The slot is small against the interval (at most
//! 0.5 % of it, never over 200 ms), so heartbeats stay spread out and are never late.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The grid's origin: the same for every shard in the process.
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The slot width for heartbeats every `interval`.
pub fn slot(interval: Duration) -> Duration {
    (interval / 200).clamp(Duration::from_millis(1), Duration::from_millis(200))
}

/// `due` moved back to the start of its slot on the process-wide grid (never later than `due`).
pub fn aligned(due: Instant, interval: Duration) -> Instant {
    let epoch = *EPOCH.get_or_init(Instant::now);
    let slot = slot(interval).as_nanos();
    let since = due.saturating_duration_since(epoch).as_nanos();
    let back = since % slot;
    due.checked_sub(Duration::from_nanos(back as u64))
        .unwrap_or(due)
}

/// The due time after `due`: one interval later, but not in the past (a stalled thread catches up
/// with one heartbeat, not a burst).
pub fn next_due(due: Instant, interval: Duration, now: Instant) -> Instant {
    (due + interval).max(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_small_against_the_interval() {
        assert_eq!(
            slot(Duration::from_millis(41_250)),
            Duration::from_millis(200)
        );
        assert_eq!(
            slot(Duration::from_millis(10_000)),
            Duration::from_millis(50)
        );
        assert_eq!(slot(Duration::from_millis(100)), Duration::from_millis(1));
    }

    #[test]
    fn due_times_in_one_slot_share_a_wakeup_and_are_never_late() {
        let interval = Duration::from_millis(41_250);
        let base = aligned(Instant::now() + Duration::from_secs(1), interval);
        let a = aligned(base + Duration::from_millis(10), interval);
        let b = aligned(base + Duration::from_millis(150), interval);
        let c = aligned(base + Duration::from_millis(210), interval);
        assert_eq!(a, base);
        assert_eq!(b, base);
        assert_eq!(c, base + Duration::from_millis(200));
        for due in [10, 150, 199, 200, 210] {
            let due = base + Duration::from_millis(due);
            let at = aligned(due, interval);
            assert!(at <= due && due - at < slot(interval));
        }
    }

    #[test]
    fn a_stalled_thread_catches_up_with_one_heartbeat() {
        let interval = Duration::from_secs(1);
        let due = Instant::now();
        assert_eq!(next_due(due, interval, due), due + interval);
        let late = due + Duration::from_secs(5);
        assert_eq!(next_due(due, interval, late), late);
    }
}
