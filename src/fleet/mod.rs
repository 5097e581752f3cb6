//! Many processes running one bot through Redis (feature `redis`): a shared identify queue
//! ([`RedisIdentifyQueue`]), a shared session store ([`RedisSessionStore`]), shard leases with
//! fencing tokens and failover ([`lease`], [`Gateway::start_fleet`](crate::Gateway::start_fleet)), and an event stream for worker processes
//! ([`stream`]). The single-process runtime with its in-memory stores stays the default; nothing
//! here is used unless the bot asks for it.
//!
//! Every key lives under one prefix per bot (`shardline:<bot>` by default), so several bots can
//! share a Redis. Time-based rules (identify windows, lease expiry, session expiry) are kept by
//! Redis's own TTLs, never by comparing the processes' clocks (docs/fleet.md).

mod error;
pub mod identify;
mod keeper;
pub mod lease;
mod options;
pub mod sessions;
pub mod stream;

pub use error::FleetError;
pub use identify::RedisIdentifyQueue;
pub use keeper::{fleet_view, FleetEvent, FleetShard, OwnershipChange};
pub use options::{FleetOptions, Placement};
pub use sessions::RedisSessionStore;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A connection to the fleet's Redis and the prefix of the bot's keys. Cheap to clone: clones share
/// one multiplexed connection, which reconnects by itself after Redis comes back.
#[derive(Clone)]
pub struct FleetRedis {
    conn: ConnectionManager,
    /// For connections of their own (a blocking read must not hold up the shared one).
    client: redis::Client,
    prefix: Arc<str>,
    /// The bot's shard total, part of every per-shard key once known ([`for_total`](Self::for_total)).
    total: Option<u32>,
}

impl std::fmt::Debug for FleetRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetRedis")
            .field("prefix", &self.prefix)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

/// How long one Redis command may take before it counts as failed: a lease renewal must know in
/// time that it did not get through.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting may take, at start and on each reconnect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl FleetRedis {
    /// Connects to `url` (`redis://host:port/db`) and checks that Redis answers. `prefix` names the
    /// bot: every key of it starts with `prefix:`. Must run inside a tokio (actix) runtime.
    ///
    /// # Errors
    /// [`FleetError::Connect`] when Redis cannot be reached or does not answer `PING`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, FleetError> {
        let client = redis::Client::open(url).map_err(|e| FleetError::Connect {
            url: redact_url(url),
            reason: e.to_string(),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connecting = client.get_connection_manager_with_config(config);
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT * 3, connecting)
            .await
            .map_err(|_| FleetError::Connect {
                url: redact_url(url),
                reason: "timed out".into(),
            })?
            .map_err(|e| FleetError::Connect {
                url: redact_url(url),
                reason: e.to_string(),
            })?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| FleetError::Connect {
                url: redact_url(url),
                reason: e.to_string(),
            })?;
        if pong != "PONG" {
            return Err(FleetError::Connect {
                url: redact_url(url),
                reason: format!("unexpected answer to PING: {pong}"),
            });
        }
        Ok(Self {
            conn,
            client,
            prefix: prefix.into(),
            total: None,
        })
    }

    /// The same connection, for a bot of `total` shards: every per-shard key (lease, fencing
    /// counter, session, status) then carries the total, so processes that disagree on it never
    /// share a shard's lease or session, and a fleet resharded to another total keeps its keys
    /// apart from the old ones (docs/fleet.md "Keys").
    pub fn for_total(mut self, total: u32) -> Self {
        self.total = Some(total);
        self
    }

    /// The shard total per-shard keys carry, if set.
    pub fn total(&self) -> Option<u32> {
        self.total
    }

    /// The key `prefix:part`.
    pub(crate) fn key(&self, part: std::fmt::Arguments<'_>) -> String {
        format!("{}:{}", self.prefix, part)
    }

    /// The key of one shard's `kind` of state: `prefix:<total>:kind:<shard>` (or
    /// `prefix:kind:<shard>` while no total is set).
    pub(crate) fn shard_key(&self, kind: &str, shard: u32) -> String {
        match self.total {
            Some(total) => format!("{}:{total}:{kind}:{shard}", self.prefix),
            None => format!("{}:{kind}:{shard}", self.prefix),
        }
    }

    /// The bot's key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A handle on the shared connection, for one command or pipeline.
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The same bot over a connection of its own, driven by the runtime this is called in: the
    /// lease renewals run on a thread of their own, so that nothing else the process does (a
    /// blocked thread, a large batch on the shared connection) can hold them up.
    pub(crate) async fn isolated(&self) -> Result<FleetRedis, FleetError> {
        let conn = self.dedicated(Duration::ZERO).await?;
        Ok(Self {
            conn,
            client: self.client.clone(),
            prefix: self.prefix.clone(),
            total: self.total,
        })
    }

    /// A connection of its own, reconnecting like the shared one, whose commands may take up to
    /// `wait` longer than usual: for blocking reads (`XREADGROUP ... BLOCK`), which would hold up
    /// every command behind them on the shared connection.
    pub(crate) async fn dedicated(&self, wait: Duration) -> Result<ConnectionManager, FleetError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT + wait))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connecting = self.client.get_connection_manager_with_config(config);
        tokio::time::timeout(CONNECT_TIMEOUT * 3, connecting)
            .await
            .map_err(|_| FleetError::Command("connecting timed out".into()))?
            .map_err(FleetError::from)
    }
}

/// This process's place in a fleet, kept by a [`Gateway`](crate::Gateway) started with
/// [`Gateway::start_fleet`](crate::Gateway::start_fleet).
#[derive(Debug, Clone)]
pub struct FleetHandle {
    commands: tokio::sync::mpsc::Sender<keeper::KeeperCommand>,
    owner: Arc<str>,
    redis: FleetRedis,
    total: u32,
    sessions: RedisSessionStore,
}

impl FleetHandle {
    /// This process's name in the fleet.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Every shard of the bot with its owner and last reported status, read from Redis.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn view(&self) -> Result<Vec<FleetShard>, FleetError> {
        fleet_view(&self.redis, self.total).await
    }

    /// The shared session store this process writes.
    pub fn sessions(&self) -> &RedisSessionStore {
        &self.sessions
    }

    async fn leave_fleet(&self, resumable: bool) {
        let (done, left) = tokio::sync::oneshot::channel();
        if self
            .commands
            .send(keeper::KeeperCommand::Leave { resumable, done })
            .await
            .is_ok()
        {
            let _ = left.await;
        }
    }
}

impl crate::supervisor::Membership for FleetHandle {
    fn leave(
        &self,
        resumable: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
        Box::pin(self.leave_fleet(resumable))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl crate::Gateway {
    /// Joins a fleet of processes that run one bot together through Redis, and runs the shards
    /// this process is given: a shared identify queue and session store, and a lease per shard
    /// (docs/fleet.md). The config's shard plan gives the bot's shard total (`Count(n)`, or
    /// `Recommended`); [`FleetOptions::placement`] says which of them this process runs.
    /// [`shutdown(true)`](crate::Gateway::shutdown) hands every shard over resumably.
    ///
    /// `events` receives every change of ownership in this process.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use shardline::fleet::FleetOptions;
    /// use shardline::{Config, Gateway, ShardPlan};
    /// let config = Config::builder(std::env::var("DISCORD_TOKEN")?)
    ///     .shards(ShardPlan::Recommended)
    ///     .build()?;
    /// let gateway = Gateway::start_fleet(config, FleetOptions::new("redis://127.0.0.1:6379"), Vec::new()).await?;
    /// // ... until SIGTERM:
    /// gateway.shutdown(true).await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StartError::Fleet`](crate::StartError::Fleet) when Redis cannot be reached or the fleet
    /// options are unusable; otherwise as [`Gateway::start`](crate::Gateway::start).
    pub async fn start_fleet(
        mut config: crate::Config,
        options: FleetOptions,
        mut events: Vec<actix::Recipient<FleetEvent>>,
    ) -> Result<Self, crate::StartError> {
        use crate::config::ShardPlan;
        use crate::StartError;
        let redis = FleetRedis::connect(&options.redis_url, &options.prefix)
            .await
            .map_err(StartError::Fleet)?;
        // The same resolution as a single process: GET /gateway/bot for what the config leaves open.
        let plan = crate::supervisor::resolve(&config).await?;
        let placement = match &config.plan {
            // A range in the config pins this process to it.
            ShardPlan::Range { ids, .. } => Placement::Pinned(ids.clone()),
            _ => options.placement.clone(),
        };
        let (total, max_concurrency, gateway_bot) =
            (plan.total, plan.max_concurrency, plan.gateway_bot);
        options.validate(total).map_err(StartError::Fleet)?;
        // Every per-shard key carries the total from here on.
        let redis = redis.for_total(total);
        join_generation(&redis, total, options.lease_time)
            .await
            .map_err(StartError::Fleet)?;
        // The session-start budget is read from Discord even when the config names everything
        // else: a fleet that does not know it could not keep it.
        let limit = match gateway_bot {
            Some(bot) => bot.session_start_limit,
            None => crate::rest::gateway_bot(&config).await?.session_start_limit,
        };
        let rest_config = config.clone();
        let source: identify::BudgetSource = Arc::new(move || {
            let config = rest_config.clone();
            Box::pin(async move {
                crate::rest::gateway_bot(&config)
                    .await
                    .map(|bot| bot.session_start_limit)
                    .map_err(|e| e.to_string())
            })
        });
        let queue = RedisIdentifyQueue::new(
            redis.clone(),
            max_concurrency,
            config.identify_window,
            &options.owner,
        )
        .budget_source(source);
        queue
            .set_budget(
                limit.remaining,
                limit.total,
                Duration::from_millis(limit.reset_after.max(1)),
            )
            .await
            .map_err(StartError::Fleet)?;
        let publishing = !options.stream_events.is_empty();
        let sessions =
            RedisSessionStore::new(redis.clone(), options.sessions.gate_on_publish(publishing));
        if publishing {
            // It must see every event of each shard (READY gives the session; every sequence is
            // confirmed to the store's gate), so it joins the router as a catch-all batch handler.
            let publisher = stream::StreamPublisher::builder(redis.clone())
                .events(&options.stream_events)
                .session_store(sessions.clone())
                .start();
            // It forgets a shard's session whenever the shard changes hands.
            events.push(publisher.clone().recipient());
            let mut router = (*config.router).clone();
            router.add_batch_all(publisher.recipient());
            config.router = Arc::new(router.finish());
        }
        let leases = lease::Leases::new(redis.clone(), &options.owner, options.lease_time)
            .map_err(StartError::Fleet)?;
        config.gateway_url = Some(plan.gateway_url);
        config.max_concurrency = Some(max_concurrency);
        config.plan = ShardPlan::Count(total);
        config.identify_queue = Some(Arc::new(queue));
        config.sessions = Arc::new(sessions.clone());
        config.dynamic_shards = true;
        config.fleet_owner = Some(options.owner.clone());
        let mut gateway = Self::start(config).await?;
        let (commands, receiver) = tokio::sync::mpsc::channel(1);
        let keeper = keeper::Keeper {
            redis: redis.clone(),
            leases,
            store: sessions.clone(),
            supervisor: gateway.supervisor().clone(),
            placement,
            total,
            events,
            held: Default::default(),
            redis_ok: true,
            status_busy: Default::default(),
        };
        actix_rt::spawn(keeper.run(receiver));
        gateway.membership = Some(Arc::new(FleetHandle {
            commands,
            owner: options.owner.as_str().into(),
            redis,
            total,
            sessions,
        }));
        Ok(gateway)
    }

    /// This process's place in its fleet, when started with [`start_fleet`](Self::start_fleet).
    pub fn fleet(&self) -> Option<&FleetHandle> {
        self.membership.as_ref()?.as_any().downcast_ref()
    }
}

/// Joins the fleet's generation: the shard total its live members run (kept while any member
/// heartbeats). KEYS: total. ARGV: total, ttl ms. Answers 0, or the other total running.
const JOIN_GENERATION: &str = r#"
local running = redis.call('GET', KEYS[1])
if running and running ~= ARGV[1] then return tonumber(running) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 0
"#;

/// Refuses to join a fleet whose live members run another shard total.
async fn join_generation(
    redis: &FleetRedis,
    total: u32,
    lease: Duration,
) -> Result<(), FleetError> {
    let running: u32 = redis::Script::new(JOIN_GENERATION)
        .key(redis.key(format_args!("total")))
        .arg(total)
        .arg(lease.as_millis() as u64)
        .invoke_async(&mut redis.conn())
        .await?;
    if running != 0 {
        return Err(FleetError::TotalMismatch {
            fleet: running,
            ours: total,
        });
    }
    Ok(())
}

/// A Redis URL without its password, for errors and logs.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<redacted>@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_show_in_urls() {
        assert_eq!(
            super::redact_url("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://<redacted>@10.0.0.1:6379/0"
        );
        assert_eq!(
            super::redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
