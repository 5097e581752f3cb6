//! Where a shard is in its life: what the status API, the lifecycle and metrics report. Its own
//! module, below the shard that moves through it and the metrics that count it.

/// Where a shard is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// No connection; one will be opened (after a backoff delay, if reconnecting).
    Disconnected,
    /// The socket is open; waiting for Hello.
    AwaitingHello,
    /// Hello received; waiting for an identify permit.
    AwaitingIdentify,
    /// Identify sent; waiting for READY.
    Identifying,
    /// Resume sent; waiting for RESUMED.
    Resuming,
    /// READY or RESUMED received: events flow.
    Ready,
    /// Stopped for good (fatal close code or final shutdown).
    Stopped,
}
