//! Many processes running one bot through Redis (feature `redis`): a shared identify queue
//! ([`RedisIdentifyQueue`]), a shared session store ([`RedisSessionStore`]), shard leases with
//! fencing tokens and failover ([`lease`], [`Gateway::start_fleet`](crate::Gateway::start_fleet)), and an event stream for worker processes
//! ([`stream`]). The single-process runtime with its in-memory stores stays the default; nothing
//! here is used unless the bot asks for it.
//!
//! Every key lives under one prefix per bot (`shardline:<bot>` by default), so several bots can
//! share a Redis. Time-based rules (identify windows, lease expiry, session expiry) are kept by
//! Redis's own TTLs, never by comparing the processes' clocks (docs/fleet.md).

mod connect;
mod error;
mod health;
pub mod identify;
mod keeper;
pub mod lease;
mod options;
pub mod sessions;
pub mod stream;

pub use error::FleetError;
pub use health::{readiness, Readiness};
pub use identify::RedisIdentifyQueue;
pub use keeper::{fleet_view, FleetEvent, FleetShard, OwnershipChange};
pub use options::{FleetOptions, Placement};
pub use sessions::RedisSessionStore;

use std::sync::Arc;
use std::time::Duration;

pub use connect::FleetRedis;

impl FleetRedis {
    /// The connection of a fleet started with `options` by the bot of `token`.
    pub(crate) async fn for_fleet(
        options: &FleetOptions,
        token: &crate::Token,
    ) -> Result<Self, FleetError> {
        let prefix = options.prefix_for(token);
        Self::connect_with_ca(&options.redis_url, &prefix, options.redis_ca_pem.as_deref()).await
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
        let redis = FleetRedis::for_fleet(&options, &config.token)
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
            epoch: None,
            claims_from: None,
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
