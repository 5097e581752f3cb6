//! The registry, what is computed at scrape time, and the optional HTTP endpoint.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::phase::Phase;
use crate::queue::IdentifyQueue;

use super::{ReconnectCause, ShardMetrics, DEFAULT_FLUSH_EVERY};

/// What [`Metrics`] records beyond the defaults.
///
/// ```
/// use std::time::Duration;
/// use shardline::metrics::MetricsOptions;
/// let options = MetricsOptions::default()
///     .per_shard_series(true)
///     .flush_every(Duration::from_millis(500));
/// assert!(options.per_shard());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsOptions {
    per_shard: bool,
    flush_every: Duration,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        Self {
            per_shard: false,
            flush_every: DEFAULT_FLUSH_EVERY,
        }
    }
}

impl MetricsOptions {
    /// Also export `shardline_shard_phase{shard, phase}` and
    /// `shardline_shard_heartbeat_latency_seconds{shard}`: two series per shard (off by default,
    /// so that the series count does not grow with the shard count).
    pub fn per_shard_series(mut self, on: bool) -> Self {
        self.per_shard = on;
        self
    }

    /// How often each shard adds its event and byte counts, its backlog and its drops to the
    /// exported values (default 1 s): a scrape sees them at most this late.
    pub fn flush_every(mut self, every: Duration) -> Self {
        self.flush_every = every.max(Duration::from_millis(1));
        self
    }

    /// Whether per-shard series are exported.
    pub fn per_shard(&self) -> bool {
        self.per_shard
    }

    /// How often shards flush what they counted.
    pub fn flush_interval(&self) -> Duration {
        self.flush_every
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EventLabel {
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CauseLabel {
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StageLabel {
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardPhaseLabel {
    shard: u32,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: u32,
}

pub(crate) const PHASES: [Phase; 7] = [
    Phase::Disconnected,
    Phase::AwaitingHello,
    Phase::AwaitingIdentify,
    Phase::Identifying,
    Phase::Resuming,
    Phase::Ready,
    Phase::Stopped,
];

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Disconnected => "disconnected",
        Phase::AwaitingHello => "awaiting_hello",
        Phase::AwaitingIdentify => "awaiting_identify",
        Phase::Identifying => "identifying",
        Phase::Resuming => "resuming",
        Phase::Ready => "ready",
        Phase::Stopped => "stopped",
    }
}

/// One shard as the last scrape-time values know it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    /// The recorder that wrote it: a shard actor that is replaced does not remove its successor's row.
    pub owner: u64,
    pub phase: Phase,
    pub latency: Option<Duration>,
    pub pending: usize,
}

/// The shards' phases, latencies and backlogs, written when they change and read at each scrape.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub rows: BTreeMap<u32, Row>,
    pub next_owner: u64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a panic mid-update of plain values: they are still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The scrape-time part: aggregates over the shard table (and the per-shard series, if asked for).
#[derive(Debug)]
struct ShardTable {
    table: Arc<Mutex<Table>>,
    per_shard: bool,
}

impl Collector for ShardTable {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let table = lock(&self.table);
        let mut counts = [0i64; PHASES.len()];
        let mut backlog = 0i64;
        for row in table.rows.values() {
            if let Some(i) = PHASES.iter().position(|p| *p == row.phase) {
                counts[i] += 1;
            }
            backlog += i64::try_from(row.pending).unwrap_or(i64::MAX);
        }
        let mut shards = encoder.encode_descriptor(
            "shardline_shards",
            "Shards of this process by phase",
            None,
            MetricType::Gauge,
        )?;
        for (phase, count) in PHASES.iter().zip(counts) {
            let label = PhaseLabel {
                phase: phase_name(*phase),
            };
            ConstGauge::new(count).encode(shards.encode_family(&label)?)?;
        }
        let gauge = ConstGauge::new(backlog);
        gauge.encode(encoder.encode_descriptor(
            "shardline_handler_backlog_events",
            "Events read but not yet taken by every handler (waiting for a full mailbox), over all shards",
            None,
            gauge.metric_type(),
        )?)?;
        if self.per_shard {
            let mut phases = encoder.encode_descriptor(
                "shardline_shard_phase",
                "1 for each shard's current phase",
                None,
                MetricType::Gauge,
            )?;
            for (&shard, row) in &table.rows {
                let label = ShardPhaseLabel {
                    shard,
                    phase: phase_name(row.phase),
                };
                ConstGauge::new(1i64).encode(phases.encode_family(&label)?)?;
            }
            let mut latencies = encoder.encode_descriptor(
                "shardline_shard_heartbeat_latency_seconds",
                "Each shard's last heartbeat round trip",
                None,
                MetricType::Gauge,
            )?;
            for (&shard, row) in &table.rows {
                if let Some(latency) = row.latency {
                    ConstGauge::new(latency.as_secs_f64())
                        .encode(latencies.encode_family(&ShardLabel { shard })?)?;
                }
            }
        }
        Ok(())
    }
}

/// The session-start budget, asked of the identify queue at scrape time.
#[derive(Debug, Default)]
struct SessionStarts {
    queue: Mutex<Option<QueueRef>>,
}

struct QueueRef(Weak<dyn IdentifyQueue>);

impl std::fmt::Debug for QueueRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentifyQueue")
    }
}

impl Collector for SessionStarts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let queue = lock(&self.queue).as_ref().and_then(|q| q.0.upgrade());
        // Unknown (no queue yet, or one that keeps no budget) is no series rather than a 0 that
        // would read as "exhausted".
        let Some(remaining) = queue.and_then(|q| q.session_starts_remaining()) else {
            return Ok(());
        };
        let gauge = ConstGauge::new(i64::from(remaining));
        gauge.encode(encoder.encode_descriptor(
            "shardline_session_starts_remaining",
            "Identifies left in the current session-start budget period",
            None,
            gauge.metric_type(),
        )?)
    }
}

/// What every shard recorder of one [`Metrics`] writes to.
#[derive(Debug)]
pub(crate) struct Inner {
    pub options: MetricsOptions,
    registry: Registry,
    pub events: Family<EventLabel, Counter>,
    pub bytes: Family<StageLabel, Counter>,
    pub reconnects: Family<CauseLabel, Counter>,
    pub dropped: Counter,
    pub latency: Histogram,
    pub identify_wait: Histogram,
    pub table: Arc<Mutex<Table>>,
    session_starts: Arc<SessionStarts>,
}

/// A process's shardline metrics, in a registry of their own: pass a clone to
/// [`ConfigBuilder::metrics`](crate::ConfigBuilder::metrics), read them with
/// [`render`](Self::render) (or serve them with `serve`, feature `metrics-endpoint`). See the
/// [module docs](crate::metrics) for what is exported.
///
/// ```
/// use shardline::metrics::{Metrics, MetricsOptions};
/// let metrics = Metrics::new(MetricsOptions::default());
/// let config = shardline::Config::builder("token").metrics(metrics.clone()).build().unwrap();
/// assert!(metrics.render().contains("# TYPE shardline_reconnects_total counter"));
/// # drop(config);
/// ```
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(MetricsOptions::default())
    }
}

impl Metrics {
    /// Metrics with these options.
    pub fn new(options: MetricsOptions) -> Self {
        let mut registry = Registry::default();
        let events = Family::<EventLabel, Counter>::default();
        registry.register(
            "shardline_events_received",
            "Dispatch events received, by name (names Discord does not document count as other)",
            events.clone(),
        );
        let bytes = Family::<StageLabel, Counter>::default();
        registry.register(
            "shardline_bytes_received",
            "Bytes received: stage=wire as the websocket frames carried them, stage=decompressed as gateway messages after transport decompression",
            bytes.clone(),
        );
        let reconnects = Family::<CauseLabel, Counter>::default();
        registry.register(
            "shardline_reconnects",
            "New connections after a connection ended or failed to open, by cause",
            reconnects.clone(),
        );
        // Every cause from the start: a rate over a series that appears at its first increment
        // misses that increment.
        for cause in ReconnectCause::ALL {
            drop(reconnects.get_or_create(&CauseLabel {
                cause: cause.as_str(),
            }));
        }
        let dropped = Counter::default();
        registry.register(
            "shardline_handler_dropped_events",
            "Deliveries to handlers dropped (mailbox full under SlowHandlers::Drop, handler stalled or stopped)",
            dropped.clone(),
        );
        let latency = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "shardline_heartbeat_latency_seconds",
            "Heartbeat round trips (op 1 to its ACK), every shard's",
            latency.clone(),
        );
        // Start-up at 16 buckets and 10 000 shards has the last shard wait about 50 minutes.
        let identify_wait = Histogram::new([
            0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
        ]);
        registry.register(
            "shardline_identify_queue_wait_seconds",
            "Time from asking the identify queue for a permit to getting it",
            identify_wait.clone(),
        );
        let table = Arc::new(Mutex::new(Table::default()));
        registry.register_collector(Box::new(ShardTable {
            table: Arc::clone(&table),
            per_shard: options.per_shard,
        }));
        let session_starts = Arc::new(SessionStarts::default());
        registry.register_collector(Box::new(Arc::clone(&session_starts)));
        Self {
            inner: Arc::new(Inner {
                options,
                registry,
                events,
                bytes,
                reconnects,
                dropped,
                latency,
                identify_wait,
                table,
                session_starts,
            }),
        }
    }

    /// The options these metrics were made with.
    pub fn options(&self) -> MetricsOptions {
        self.inner.options
    }

    /// Everything, in the Prometheus text format (version 0.0.4; its content type is
    /// [`CONTENT_TYPE`](Self::CONTENT_TYPE)).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.registry)
        {
            // Writing to a String does not fail; a label value that cannot be written would.
            tracing::warn!(error = %e, "could not encode the metrics");
        }
        out
    }

    /// The HTTP `Content-Type` of [`render`](Self::render)'s text.
    pub const CONTENT_TYPE: &'static str =
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
}

/// Where a gateway's shards record: the bot's [`Metrics`], if it gave one.
#[derive(Clone, Default, Debug)]
pub(crate) struct Sink(pub Option<Metrics>);

impl Sink {
    /// A recorder for one shard actor.
    pub(crate) fn for_shard(&self, shard: u32) -> Option<ShardMetrics> {
        self.0
            .as_ref()
            .map(|m| ShardMetrics::new(shard, Arc::clone(&m.inner)))
    }

    /// Reads the session-start budget from `queue` at each scrape.
    pub(crate) fn watch_queue(&self, queue: &Arc<dyn IdentifyQueue>) {
        if let Some(metrics) = &self.0 {
            *lock(&metrics.inner.session_starts.queue) = Some(QueueRef(Arc::downgrade(queue)));
        }
    }
}

#[cfg(feature = "metrics-endpoint")]
mod endpoint {
    use std::future::Future;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::time::Duration;

    use actix_web::{web, App, HttpResponse, HttpServer};

    use super::Metrics;

    /// What `GET /readyz` asks (see [`Metrics::serve_with_readiness`]): `Ok(why)` answers 200,
    /// `Err(why)` 503, each with `why` as the body. Called once per request, on the server's own
    /// thread.
    pub type ReadinessCheck =
        Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>>>> + Send + Sync>;

    /// How long `/readyz` waits for its check: a check that hangs (a shard actor that does not
    /// answer, Redis that does not) is an answer too, and probes time out at 1 s by default.
    const READINESS_TIMEOUT: Duration = Duration::from_millis(800);

    /// A running `GET /metrics`, `/healthz` and `/readyz` server (see [`Metrics::serve`]).
    #[derive(Debug)]
    pub struct MetricsServer {
        addr: SocketAddr,
        handle: actix_web::dev::ServerHandle,
    }

    impl MetricsServer {
        /// The address it listens on (the real port when bound to port 0).
        pub fn local_addr(&self) -> SocketAddr {
            self.addr
        }

        /// Stops the server and waits until it has.
        pub async fn stop(self) {
            self.handle.stop(true).await;
        }
    }

    async fn scrape(metrics: web::Data<Metrics>) -> HttpResponse {
        HttpResponse::Ok()
            .content_type(Metrics::CONTENT_TYPE)
            .body(metrics.render())
    }

    /// Alive: the process answers HTTP, so its actix system runs.
    async fn healthz() -> HttpResponse {
        HttpResponse::Ok().content_type("text/plain").body("ok\n")
    }

    async fn readyz(check: web::Data<Option<ReadinessCheck>>) -> HttpResponse {
        let answer = match check.get_ref() {
            None => Err("no readiness check registered".to_owned()),
            Some(check) => tokio::time::timeout(READINESS_TIMEOUT, check())
                .await
                .unwrap_or_else(|_| Err("the readiness check did not answer in time".into())),
        };
        let (mut response, why) = match answer {
            Ok(why) => (HttpResponse::Ok(), why),
            Err(why) => (HttpResponse::ServiceUnavailable(), why),
        };
        response.content_type("text/plain").body(why + "\n")
    }

    impl Metrics {
        /// Serves [`render`](Self::render) at `GET /metrics` on `addr` (one worker thread; port 0
        /// picks a free port), and `GET /healthz` (200 while the process's actix system runs)
        /// beside it; `GET /readyz` answers 503 (no check: see
        /// [`serve_with_readiness`](Self::serve_with_readiness)). Must run inside an actix system;
        /// the server runs until [`MetricsServer::stop`] or the system ends.
        ///
        /// ```no_run
        /// # actix_rt::System::new().block_on(async {
        /// let metrics = shardline::metrics::Metrics::default();
        /// let server = metrics.serve(("0.0.0.0", 9100)).unwrap();
        /// println!("scrape http://{}/metrics", server.local_addr());
        /// # });
        /// ```
        pub fn serve(&self, addr: impl std::net::ToSocketAddrs) -> std::io::Result<MetricsServer> {
            self.serve_inner(addr, None)
        }

        /// [`serve`](Self::serve), with `GET /readyz` answering what `check` says (200 or 503,
        /// its text as the body; 503 when it takes more than 800 ms). For a fleet process,
        /// `shardline::fleet::readiness` is the check (docs/fleet.md, "Health").
        pub fn serve_with_readiness(
            &self,
            addr: impl std::net::ToSocketAddrs,
            check: ReadinessCheck,
        ) -> std::io::Result<MetricsServer> {
            self.serve_inner(addr, Some(check))
        }

        fn serve_inner(
            &self,
            addr: impl std::net::ToSocketAddrs,
            check: Option<ReadinessCheck>,
        ) -> std::io::Result<MetricsServer> {
            let data = web::Data::new(self.clone());
            let check = web::Data::new(check);
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .app_data(check.clone())
                    .route("/metrics", web::get().to(scrape))
                    .route("/healthz", web::get().to(healthz))
                    .route("/readyz", web::get().to(readyz))
            })
            .workers(1)
            .disable_signals()
            .shutdown_timeout(1)
            .bind(addr)?;
            let addr = server.addrs().first().copied().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "bound to no address")
            })?;
            let server = server.run();
            let handle = server.handle();
            actix_rt::spawn(server);
            tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
            Ok(MetricsServer { addr, handle })
        }
    }
}

#[cfg(feature = "metrics-endpoint")]
pub use endpoint::{MetricsServer, ReadinessCheck};
