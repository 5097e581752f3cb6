//! One shard's recorder: plain counters on the receive path, added to the shared ones on a timer.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::fast_hash::FastHash;
use crate::phase::Phase;
use crate::protocol::events::KNOWN_EVENTS;

use super::exporter::{lock, CauseLabel, EventLabel, Inner, Row, StageLabel};
use super::ReconnectCause;

/// The bucket of event names Discord does not document: names come from the network, and a series
/// per name would let a peer grow the series count without bound.
const OTHER: usize = KNOWN_EVENTS.len();

/// Each documented event name's bucket, for one hash lookup per event.
static EVENT_INDEX: LazyLock<HashMap<&'static str, usize, FastHash>> = LazyLock::new(|| {
    KNOWN_EVENTS
        .iter()
        .enumerate()
        .map(|(i, &e)| (e, i))
        .collect()
});

/// A shard actor's recorder.
pub(crate) struct ShardMetrics {
    shard: u32,
    /// Its row in the shard table (see [`Row::owner`]).
    owner: u64,
    shared: Arc<Inner>,
    wire: u64,
    message: u64,
    /// Events since the last flush, by bucket (`OTHER` last).
    events: Box<[u64]>,
    /// The bucket of the last event: a flood repeats one name, which then costs a string compare.
    last_event: usize,
    /// Why the next reconnect happens, noted just before the state machine is told what it reacts to.
    cause: ReconnectCause,
    phase: Phase,
    latency: Option<Duration>,
    pending: usize,
    dropped: u64,
}

impl ShardMetrics {
    pub(crate) fn new(shard: u32, shared: Arc<Inner>) -> Self {
        let owner = {
            let mut table = lock(&shared.table);
            table.next_owner += 1;
            let owner = table.next_owner;
            table.rows.insert(
                shard,
                Row {
                    owner,
                    phase: Phase::Disconnected,
                    latency: None,
                    pending: 0,
                },
            );
            owner
        };
        Self {
            shard,
            owner,
            shared,
            wire: 0,
            message: 0,
            events: vec![0; OTHER + 1].into_boxed_slice(),
            last_event: OTHER,
            cause: ReconnectCause::Other,
            phase: Phase::Disconnected,
            latency: None,
            pending: 0,
            dropped: 0,
        }
    }

    /// How often the shard should call [`flush`](Self::flush).
    pub(crate) fn flush_every(&self) -> Duration {
        self.shared.options.flush_interval()
    }

    /// A websocket frame of `bytes` arrived.
    #[inline]
    pub(crate) fn wire(&mut self, bytes: usize) {
        self.wire += bytes as u64;
    }

    /// A whole gateway message of `bytes` (after decompression) arrived.
    #[inline]
    pub(crate) fn message(&mut self, bytes: usize) {
        self.message += bytes as u64;
    }

    /// A dispatch named `name` was received.
    #[inline]
    pub(crate) fn event(&mut self, name: &str) {
        let bucket = match KNOWN_EVENTS.get(self.last_event) {
            Some(&last) if last == name => self.last_event,
            _ => {
                let bucket = EVENT_INDEX.get(name).copied().unwrap_or(OTHER);
                self.last_event = bucket;
                bucket
            }
        };
        self.events[bucket] += 1;
    }

    /// The next reconnect, if the state machine decides on one now, is for `cause`.
    pub(crate) fn cause(&mut self, cause: ReconnectCause) {
        self.cause = cause;
    }

    /// The shard is reconnecting, for the cause noted last.
    pub(crate) fn reconnected(&mut self) {
        let cause = std::mem::replace(&mut self.cause, ReconnectCause::Other);
        self.shared
            .reconnects
            .get_or_create(&CauseLabel {
                cause: cause.as_str(),
            })
            .inc();
    }

    /// An identify permit came after `wait`.
    pub(crate) fn identify_waited(&self, wait: Duration) {
        self.shared.identify_wait.observe(wait.as_secs_f64());
    }

    /// The shard has carried out what the state machine asked: its phase and last heartbeat
    /// latency now are written out if they changed (a new latency is a new heartbeat ACK, and goes
    /// into the histogram). A cause noted for a reconnect that did not happen (a Hello that was
    /// fine) is forgotten, so that it never labels a later one.
    #[inline]
    pub(crate) fn observe(&mut self, phase: Phase, latency: Option<Duration>) {
        self.cause = ReconnectCause::Other;
        if phase == self.phase && latency == self.latency {
            return;
        }
        if latency != self.latency {
            if let Some(latency) = latency {
                self.shared.latency.observe(latency.as_secs_f64());
            }
        }
        self.phase = phase;
        self.latency = latency;
        self.write_row();
    }

    /// Adds what was counted since the last flush to the shared counters; `pending` and `dropped`
    /// are the shard's delivery backlog and its drops so far.
    pub(crate) fn flush(&mut self, pending: usize, dropped: u64) {
        let shared = &self.shared;
        for (bucket, count) in self.events.iter_mut().enumerate() {
            if *count > 0 {
                let event = KNOWN_EVENTS.get(bucket).copied().unwrap_or("other");
                shared
                    .events
                    .get_or_create(&EventLabel { event })
                    .inc_by(std::mem::take(count));
            }
        }
        for (stage, bytes) in [
            ("wire", &mut self.wire),
            ("decompressed", &mut self.message),
        ] {
            if *bytes > 0 {
                shared
                    .bytes
                    .get_or_create(&StageLabel { stage })
                    .inc_by(std::mem::take(bytes));
            }
        }
        if dropped > self.dropped {
            shared.dropped.inc_by(dropped - self.dropped);
            self.dropped = dropped;
        }
        if pending != self.pending {
            self.pending = pending;
            self.write_row();
        }
    }

    fn write_row(&self) {
        let mut table = lock(&self.shared.table);
        let row = table.rows.entry(self.shard).or_insert(Row {
            owner: self.owner,
            phase: self.phase,
            latency: self.latency,
            pending: self.pending,
        });
        if row.owner == self.owner {
            row.phase = self.phase;
            row.latency = self.latency;
            row.pending = self.pending;
        }
    }
}

impl Drop for ShardMetrics {
    /// The actor is gone: what it counted is flushed; a shard stopped for good stays counted as
    /// stopped, any other leaves the table until its restarted actor writes its row again.
    fn drop(&mut self) {
        let (pending, dropped) = (0, self.dropped);
        self.flush(pending, dropped);
        let mut table = lock(&self.shared.table);
        if let Some(row) = table.rows.get(&self.shard) {
            if row.owner == self.owner && row.phase != Phase::Stopped {
                table.rows.remove(&self.shard);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::exporter::PHASES;
    use super::super::{Metrics, MetricsOptions};
    use super::*;

    fn recorder(metrics: &Metrics, shard: u32) -> ShardMetrics {
        crate::metrics::Sink(Some(metrics.clone()))
            .for_shard(shard)
            .expect("a recorder")
    }

    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
    }

    #[test]
    fn events_count_by_documented_name_and_everything_else_as_other() {
        let metrics = Metrics::new(MetricsOptions::default());
        let mut m = recorder(&metrics, 0);
        for name in [
            "MESSAGE_CREATE",
            "MESSAGE_CREATE",
            "GUILD_CREATE",
            "MESSAGE_CREATE",
        ] {
            m.event(name);
        }
        for i in 0..100 {
            m.event(&format!("MADE_UP_{i}"));
        }
        assert!(
            !metrics.render().contains("MESSAGE_CREATE"),
            "nothing shows before a flush"
        );
        m.flush(0, 0);
        let text = metrics.render();
        let count = |event: &str| {
            sample(
                &text,
                &format!("shardline_events_received_total{{event=\"{event}\"}}"),
            )
        };
        assert_eq!(count("MESSAGE_CREATE"), Some(3.0));
        assert_eq!(count("GUILD_CREATE"), Some(1.0));
        assert_eq!(count("other"), Some(100.0));
        assert!(!text.contains("MADE_UP"), "no series per unknown name");
    }

    #[test]
    fn a_shard_stopped_for_good_stays_counted_as_stopped_and_any_other_leaves_with_its_actor() {
        let metrics = Metrics::new(MetricsOptions::default().per_shard_series(true));
        let mut stopped = recorder(&metrics, 1);
        stopped.observe(Phase::Stopped, None);
        let mut ready = recorder(&metrics, 2);
        ready.observe(Phase::Ready, Some(Duration::from_millis(40)));
        let text = metrics.render();
        assert_eq!(
            sample(&text, "shardline_shards{phase=\"ready\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "shardline_shard_heartbeat_latency_seconds{shard=\"2\"}"
            ),
            Some(0.04)
        );
        // A restarted actor's row is its own: the old one going away later does not remove it.
        let successor = recorder(&metrics, 2);
        drop(ready);
        drop(stopped);
        let text = metrics.render();
        assert_eq!(
            sample(&text, "shardline_shards{phase=\"stopped\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "shardline_shards{phase=\"disconnected\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "shardline_shards{phase=\"ready\"}"),
            Some(0.0)
        );
        drop(successor);
        let text = metrics.render();
        assert_eq!(
            sample(&text, "shardline_shards{phase=\"disconnected\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "shardline_shard_phase{shard=\"1\",phase=\"stopped\"}"
            ),
            Some(1.0)
        );
    }

    fn series(text: &str) -> usize {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count()
    }

    #[test]
    fn ten_thousand_shards_export_as_many_series_as_a_hundred_unless_per_shard_series_are_asked_for(
    ) {
        let run = |options: MetricsOptions, shards: u32| {
            let metrics = Metrics::new(options);
            let mut recorders: Vec<ShardMetrics> =
                (0..shards).map(|id| recorder(&metrics, id)).collect();
            for (i, m) in recorders.iter_mut().enumerate() {
                // Every documented name (one per shard, in turn), a name no one documents on each
                // shard, every phase and cause, a latency each.
                m.event(KNOWN_EVENTS[i % KNOWN_EVENTS.len()]);
                m.event(&format!("NOT_DOCUMENTED_{i}"));
                m.wire(10);
                m.message(20);
                m.cause(ReconnectCause::ALL[i % ReconnectCause::ALL.len()]);
                m.reconnected();
                m.identify_waited(Duration::from_millis(i as u64));
                m.observe(
                    PHASES[i % PHASES.len()],
                    Some(Duration::from_millis(i as u64)),
                );
                m.flush(i, i as u64);
            }
            series(&metrics.render())
        };
        let one = run(MetricsOptions::default(), 100);
        let many = run(MetricsOptions::default(), 10_000);
        assert_eq!(one, many, "the default series do not grow with the shards");
        // 7 phases, the backlog, 10 causes, 77 names + other, 2 byte stages, drops, and two
        // histograms of 12 and 13 buckets with their sums and counts.
        assert_eq!(many, 7 + 1 + 10 + KNOWN_EVENTS.len() + 1 + 2 + 1 + 14 + 15);
        let per_shard = run(MetricsOptions::default().per_shard_series(true), 10_000);
        assert_eq!(per_shard, many + 2 * 10_000);
    }
}
