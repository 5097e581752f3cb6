//! Reconnect delays: `backoff`'s exponential policy with jitter, capped, never giving up.

use std::time::Duration;

use backoff::backoff::Backoff as _;
use backoff::ExponentialBackoff;

use crate::config::Backoff;

/// The reconnect delays of one shard.
#[derive(Debug)]
pub struct ReconnectBackoff {
    policy: ExponentialBackoff,
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
        Self { policy }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.policy
            .next_backoff()
            .unwrap_or(self.policy.max_interval)
    }

    /// Back to the first delay, after a healthy session.
    pub fn reset(&mut self) {
        self.policy.reset();
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
        assert!(backoff.next_delay().as_millis() <= 150);
    }
}
