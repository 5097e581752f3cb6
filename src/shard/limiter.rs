//! The per-connection command limiter: at most `limit` frames per `window`, with room reserved for
//! heartbeats (docs/protocol.md §5: 120 / 60 s, over → close 4008).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Counts the frames sent on one connection in a sliding window.
#[derive(Debug)]
pub struct CommandLimiter {
    limit: u32,
    window: Duration,
    reserve: u32,
    /// Send times within the window, oldest first. Allocated only once a frame is sent.
    sent: VecDeque<Instant>,
}

impl CommandLimiter {
    /// A limiter for `limit` frames per `window`, reserving room for the heartbeats one window holds.
    pub fn new(limit: u32, window: Duration, heartbeat_interval: Option<Duration>) -> Self {
        let beats = heartbeat_interval.map_or(2, |hb| {
            let per_window = window.as_nanos() / hb.as_nanos().max(1);
            // One more for a server-requested heartbeat.
            // The interval is the gateway's number: a tiny one must not wrap the count.
            u32::try_from(per_window)
                .unwrap_or(u32::MAX)
                .saturating_add(2)
        });
        Self {
            limit,
            // The gateway counts frames as they arrive; jitter can bring two sends a window apart
            // closer than that. Counting over 5% more than the window keeps a margin for it.
            window: window + window / 20,
            reserve: beats.min(limit / 2),
            sent: VecDeque::new(),
        }
    }

    fn expire(&mut self, now: Instant) {
        while self
            .sent
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= self.window)
        {
            self.sent.pop_front();
        }
        if self.sent.is_empty() && self.sent.capacity() > 0 {
            self.sent = VecDeque::new();
        }
    }

    /// Records a heartbeat; it may use the reserved room. Returns false only when even that is
    /// exhausted (the heartbeat should then wait too).
    pub fn try_heartbeat(&mut self, now: Instant) -> bool {
        self.expire(now);
        if (self.sent.len() as u32) < self.limit {
            self.sent.push_back(now);
            true
        } else {
            false
        }
    }

    /// Records a command if it fits outside the heartbeat reserve; else returns when to try again.
    pub fn try_command(&mut self, now: Instant) -> Result<(), Duration> {
        self.expire(now);
        let budget = self.limit - self.reserve;
        let used = self.sent.len() as u32;
        if used < budget {
            self.sent.push_back(now);
            return Ok(());
        }
        // The (used - budget + 1)-th oldest send must expire first.
        let index = (used - budget) as usize;
        let wait = self.sent.get(index).map_or(self.window, |&t| {
            (t + self.window).saturating_duration_since(now)
        });
        Err(wait.max(Duration::from_millis(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_leave_room_for_heartbeats_and_wait_for_the_window() {
        let window = Duration::from_secs(60);
        let mut limiter = CommandLimiter::new(120, window, Some(Duration::from_millis(41_250)));
        let t0 = Instant::now();
        let mut sent = 0;
        while limiter.try_command(t0).is_ok() {
            sent += 1;
        }
        // 60 / 41.25 → 1 heartbeat per window, + 2 spare = 3 reserved.
        assert_eq!(sent, 117);
        for _ in 0..3 {
            assert!(limiter.try_heartbeat(t0));
        }
        assert!(!limiter.try_heartbeat(t0));
        // 60 s plus the 5% margin: 63 s after the burst.
        assert_eq!(
            limiter.try_command(t0 + Duration::from_secs(10)),
            Err(Duration::from_secs(53))
        );
        assert!(limiter.try_command(t0 + window).is_err());
        assert!(limiter.try_command(t0 + Duration::from_secs(63)).is_ok());
    }

    #[test]
    fn never_more_than_the_limit_in_any_window() {
        let window = Duration::from_secs(60);
        let mut limiter = CommandLimiter::new(120, window, Some(Duration::from_secs(1)));
        let t0 = Instant::now();
        let mut times = Vec::new();
        for ms in (0..300_000).step_by(250) {
            let now = t0 + Duration::from_millis(ms);
            if ms % 1000 == 0 && limiter.try_heartbeat(now) {
                times.push(now);
            }
            if limiter.try_command(now).is_ok() {
                times.push(now);
            }
        }
        for (i, &t) in times.iter().enumerate() {
            let in_window = times[i..].iter().take_while(|&&u| u - t < window).count();
            assert!(in_window <= 120, "{in_window} frames in one window");
        }
    }
}
