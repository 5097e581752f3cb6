//! Reconnect delays: `backoff`'s exponential policy with jitter, capped, never giving up; the first
//! reconnect after a healthy connection goes at once.

use std::time::Duration;

use backoff::backoff::Backoff as _;
use backoff::ExponentialBackoff;

use crate::config::Backoff;

/// The reconnect delays of one shard.
#[derive(Debug)]
pub struct ReconnectBackoff {
    policy: ExponentialBackoff,
    /// The last connection reached READY/RESUMED and nothing has failed since: the next reconnect
    /// (an op 7, a drop after hours of service) owes no delay. Only failures in a row back off.
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

    /// The delay before the next attempt: none for the first after a healthy connection, then
    /// growing exponentially (with jitter) while attempts keep failing.
    pub fn next_delay(&mut self) -> Duration {
        if std::mem::take(&mut self.healthy) {
            return Duration::ZERO;
        }
        self.policy
            .next_backoff()
            .unwrap_or(self.policy.max_interval)
    }

    /// A connection became healthy (READY or RESUMED): the next reconnect goes at once, and the
    /// ones after it start again from the first delay.
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
        assert_eq!(backoff.next_delay(), Duration::ZERO);
        assert!((50..=150).contains(&backoff.next_delay().as_millis()));
    }

    #[test]
    fn the_first_reconnect_after_a_healthy_connection_has_no_delay() {
        let config = Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            randomization: 0.5,
        };
        let mut backoff = ReconnectBackoff::new(&config);
        // A first connection that never became healthy backs off from the start.
        assert!(backoff.next_delay() >= Duration::from_secs(5));
        backoff.next_delay();
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::ZERO);
        // That reconnect failing: the delays start over from the first, with jitter.
        let again: Vec<_> = (0..2).map(|_| backoff.next_delay()).collect();
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
        assert_eq!(backoff.next_delay(), Duration::ZERO);
        assert!(backoff.next_delay() >= Duration::from_secs(5));
    }
}
