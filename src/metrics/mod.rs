//! Prometheus metrics for a fleet operator (feature `metrics`; the HTTP endpoint is feature
//! `metrics-endpoint`).
//!
//! A [`Metrics`] owns a `prometheus-client` registry; give it to
//! [`ConfigBuilder::metrics`](crate::ConfigBuilder::metrics) and read it with [`Metrics::render`] (the Prometheus text
//! format, version 0.0.4) or serve it with `Metrics::serve` (`GET /metrics`).
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `shardline_shards` | gauge | `phase` |
//! | `shardline_heartbeat_latency_seconds` | histogram | |
//! | `shardline_reconnects_total` | counter | `cause` |
//! | `shardline_events_received_total` | counter | `event` |
//! | `shardline_bytes_received_total` | counter | `stage` (`wire`, `decompressed`) |
//! | `shardline_handler_backlog_events` | gauge | |
//! | `shardline_handler_dropped_events_total` | counter | |
//! | `shardline_identify_queue_wait_seconds` | histogram | |
//! | `shardline_session_starts_remaining` | gauge (only while the identify queue knows it) | |
//! | `shardline_shard_phase` | gauge, opt-in | `shard`, `phase` |
//! | `shardline_shard_heartbeat_latency_seconds` | gauge, opt-in | `shard` |
//!
//! **Cardinality** does not grow with the shard count unless asked to: by default every series is
//! an aggregate over the process's shards (7 phases, 10 causes, at most one series per documented
//! event name plus `other`, fixed histogram buckets): at most 128 series for 1 shard or 10 000.
//! Event names come from the network, so only the names Discord documents
//! ([`KNOWN_EVENTS`](crate::protocol::events::KNOWN_EVENTS)) get a series of their own; anything
//! else counts as `event="other"`. The per-shard series (phase and latency, two per shard: 20 000
//! at 10 000 shards) are opt-in with [`MetricsOptions::per_shard_series`].
//!
//! **Cost**: the receive path only adds to plain integers the shard owns (bytes per frame, a count
//! per event found by one hash lookup of its name, or none when it repeats the previous event's
//! name); each shard adds them to the shared counters every [`MetricsOptions::flush_every`]. Phase
//! and latency are looked at once per handled frame and written only when they change.

use std::time::Duration;

#[cfg(feature = "metrics")]
mod exporter;
#[cfg(feature = "metrics")]
mod shard;

#[cfg(feature = "metrics")]
pub(crate) use exporter::Sink;
#[cfg(feature = "metrics")]
pub use exporter::{Metrics, MetricsOptions};
#[cfg(feature = "metrics-endpoint")]
pub use exporter::{MetricsServer, ReadinessCheck};
#[cfg(feature = "metrics")]
pub(crate) use shard::ShardMetrics;

/// Why a shard opens a new connection: the `cause` label of `shardline_reconnects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ReconnectCause {
    /// The gateway closed the connection with a close frame (docs/protocol.md §4).
    GatewayClose,
    /// The connection ended without a close frame.
    Dropped,
    /// The gateway asked for it: op 7 (docs/protocol.md §3.9).
    ReconnectRequested,
    /// op 9 (docs/protocol.md §3.8).
    InvalidSession,
    /// No heartbeat ACK since the last heartbeat (docs/protocol.md §3.6).
    Zombie,
    /// Hello, READY or RESUMED did not come in time.
    Timeout,
    /// A websocket protocol or write error.
    TransportError,
    /// A message that cannot be used: over the size limit, not decompressible, a Hello without
    /// an interval.
    BadMessage,
    /// The connection could not be opened (refused, timed out): the next attempt.
    ConnectFailed,
    /// None of the above was noted (kept so a new path is counted rather than lost).
    Other,
}

impl ReconnectCause {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) const ALL: [Self; 10] = [
        Self::GatewayClose,
        Self::Dropped,
        Self::ReconnectRequested,
        Self::InvalidSession,
        Self::Zombie,
        Self::Timeout,
        Self::TransportError,
        Self::BadMessage,
        Self::ConnectFailed,
        Self::Other,
    ];

    /// The label value.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::GatewayClose => "gateway_close",
            Self::Dropped => "dropped",
            Self::ReconnectRequested => "reconnect_requested",
            Self::InvalidSession => "invalid_session",
            Self::Zombie => "zombie",
            Self::Timeout => "timeout",
            Self::TransportError => "transport_error",
            Self::BadMessage => "bad_message",
            Self::ConnectFailed => "connect_failed",
            Self::Other => "other",
        }
    }

    /// The cause a frame with this opcode gives if the state machine reconnects on it: op 7, op 9,
    /// or a Hello it cannot use.
    pub(crate) fn for_op(op: u8) -> Option<Self> {
        match op {
            7 => Some(Self::ReconnectRequested),
            9 => Some(Self::InvalidSession),
            10 => Some(Self::BadMessage),
            _ => None,
        }
    }
}

/// Without the `metrics` feature: nothing is recorded, and a shard never has a recorder (the type
/// has no values, so every hook compiles to nothing).
#[cfg(not(feature = "metrics"))]
mod off {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::phase::Phase;
    use crate::queue::IdentifyQueue;

    use super::ReconnectCause;

    /// Where shards record: nowhere.
    #[derive(Clone, Default)]
    pub(crate) struct Sink;

    impl Sink {
        pub(crate) fn for_shard(&self, _shard: u32) -> Option<ShardMetrics> {
            None
        }

        pub(crate) fn watch_queue(&self, _queue: &Arc<dyn IdentifyQueue>) {}
    }

    /// A shard's recorder: none can exist.
    pub(crate) enum ShardMetrics {}

    impl ShardMetrics {
        pub(crate) fn flush_every(&self) -> Duration {
            match *self {}
        }
        pub(crate) fn wire(&mut self, _bytes: usize) {
            match *self {}
        }
        pub(crate) fn message(&mut self, _bytes: usize) {
            match *self {}
        }
        pub(crate) fn event(&mut self, _name: &str) {
            match *self {}
        }
        pub(crate) fn cause(&mut self, _cause: ReconnectCause) {
            match *self {}
        }
        pub(crate) fn reconnected(&mut self) {
            match *self {}
        }
        pub(crate) fn identify_waited(&self, _wait: Duration) {
            match *self {}
        }
        pub(crate) fn observe(&mut self, _phase: Phase, _latency: Option<Duration>) {
            match *self {}
        }
        pub(crate) fn flush(&mut self, _pending: usize, _dropped: u64) {
            match *self {}
        }
    }
}

#[cfg(not(feature = "metrics"))]
pub(crate) use off::{ShardMetrics, Sink};

/// How often a shard adds what it counted to the shared counters, unless set otherwise.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) const DEFAULT_FLUSH_EVERY: Duration = Duration::from_secs(1);
