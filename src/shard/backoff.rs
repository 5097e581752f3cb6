//! Reconnect delays: `backoff`'s exponential policy with jitter, capped, never giving up; a
//! reconnect the gateway asked for (op 7) on a healthy connection goes at once.

use std::time::Duration;

use backoff::backoff::Backoff as _;
use backoff::ExponentialBackoff;

use crate::config::Backoff;

/// The reconnect delays of one shard.
#[derive(Debug)]
pub struct ReconnectBackoff {
    policy: ExponentialBackoff,
    /// The last connection reached READY/RESUMED and no attempt has been made since: a reconnect
    /// the gateway asks for now owes no delay.
    healthy: bool,
}

impl ReconnectBackoff {
    /// Delays per `config`.
    pub fn new(config: &Backoff) -> Self {
        let policy = ExponentialBackoff {
            current_interval: config.initial,
            initial_interval: config.initial,
            randomization_factor: config.randomization,
            multiplier: config.multiplier,
            max_interval: config.max,
            // A gateway runtime retries forever; the cap bounds each delay instead.
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        };
        Self {
            policy,
            healthy: false,
        }
    }

    /// The delay before the next attempt, which nobody asked for: see [`next_delay_for`](Self::next_delay_for).
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_for(false)
    }

    /// The delay before the next attempt: none when the gateway asked for it (`asked`, op 7) and
    /// the connection it leaves was healthy; otherwise growing exponentially (with jitter) while
    /// attempts keep failing. A drop or close is not asked for: shards that fail together (a
    /// network partition, a gateway restart) must spread out, not come back in one burst.
    pub fn next_delay_for(&mut self, asked: bool) -> Duration {
        if std::mem::take(&mut self.healthy) && asked {
            return Duration::ZERO;
        }
        self.policy
            .next_backoff()
            .unwrap_or(self.policy.max_interval)
    }

    /// A connection became healthy (READY or RESUMED): delays start again from the first, and a
    /// reconnect the gateway asks for next goes at once.
    pub fn reset(&mut self) {
        self.policy.reset();
        self.healthy = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_up_to_the_cap_and_resets() {
        let config = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            multiplier: 2.0,
            randomization: 0.5,
        };
        let mut backoff = ReconnectBackoff::new(&config);
        let delays: Vec<_> = (0..8).map(|_| backoff.next_delay()).collect();
        assert!((50..=150).contains(&delays[0].as_millis()), "{delays:?}");
        assert!((100..=300).contains(&delays[1].as_millis()), "{delays:?}");
        assert!(delays.iter().all(|d| d.as_millis() <= 1500), "{delays:?}");
        assert!(delays[7].as_millis() >= 500, "{delays:?}");
        backoff.reset();
        // A drop after a healthy connection still waits the first delay: shards dropped together
        // spread out.
        assert!((50..=150).contains(&backoff.next_delay().as_millis()));
    }

    #[test]
    fn a_reconnect_asked_for_after_a_healthy_connection_has_no_delay() {
        let config = Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            randomization: 0.5,
        };
        let mut backoff = ReconnectBackoff::new(&config);
        // Never healthy yet: asked or not, the delay applies.
        assert!(backoff.next_delay_for(true) >= Duration::from_secs(5));
        backoff.next_delay();
        backoff.reset();
        assert_eq!(backoff.next_delay_for(true), Duration::ZERO);
        // That attempt failing: the delays start over from the first, with jitter, asked or not.
        let again: Vec<_> = [true, false]
            .map(|asked| backoff.next_delay_for(asked))
            .to_vec();
        assert!(
            (5_000..=15_000).contains(&again[0].as_millis()),
            "{again:?}"
        );
        assert!(
            (10_000..=30_000).contains(&again[1].as_millis()),
            "{again:?}"
        );
        // Healthy once more: at once again, exactly once.
        backoff.reset();
        assert_eq!(backoff.next_delay_for(true), Duration::ZERO);
        assert!(backoff.next_delay_for(true) >= Duration::from_secs(5));
    }
}
