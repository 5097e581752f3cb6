//! Whether a fleet process is ready to be counted on, for an orchestrator's readiness probe
//! (`/readyz`, docs/fleet.md "Health").

use std::fmt;
use std::time::Duration;

use crate::fleet::lease::lease_key;
use crate::phase::Phase;
use crate::Gateway;

/// How long each question (Redis, the shards' status) may take: a probe must answer in time, and
/// not answering is an answer.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// The answer of [`readiness`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Readiness {
    /// Redis answers, and this process runs shards (it holds their leases), every one READY.
    Serving {
        /// How many.
        shards: usize,
    },
    /// Redis answers, this process runs no shard, and there is none for it to take: every shard of
    /// the bot is held by a member of the fleet (more members than shards, or a pinned range
    /// another process holds).
    NothingToHold,
    /// Not ready, and why.
    NotReady(String),
}

impl Readiness {
    /// Whether the process is ready ([`Serving`](Self::Serving) or
    /// [`NothingToHold`](Self::NothingToHold)).
    pub fn is_ready(&self) -> bool {
        !matches!(self, Self::NotReady(_))
    }

    /// As a readiness check answers (`shardline::metrics::ReadinessCheck`, feature
    /// `metrics-endpoint`):
    /// `Ok(text)` when ready, `Err(text)` when not.
    pub fn into_result(self) -> Result<String, String> {
        let text = self.to_string();
        if self.is_ready() {
            Ok(text)
        } else {
            Err(text)
        }
    }
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Serving { shards } => write!(f, "ready: {shards} shards READY"),
            Self::NothingToHold => f.write_str("ready: a member with no shard to hold"),
            Self::NotReady(why) => write!(f, "not ready: {why}"),
        }
    }
}

/// Whether `gateway`, a process of a fleet, is ready: Redis answers `PING`, and either every shard
/// it runs is READY (it runs one only while it holds its lease), or it runs none and every
/// shard's lease is held. Not ready while it starts, while a shard of it identifies or resumes,
/// while it cannot reach Redis (its leases will lapse), and while free shards wait for it.
/// Each question is bounded (500 ms). A gateway not started with
/// [`start_fleet`](crate::Gateway::start_fleet) is judged by its shards alone.
pub async fn readiness(gateway: &Gateway) -> Readiness {
    let fleet = gateway.fleet();
    if let Some(fleet) = fleet {
        let mut conn = fleet.redis.conn();
        let ping = tokio::time::timeout(
            ASK_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        match ping {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Readiness::NotReady(format!("Redis: {e}")),
            Err(_) => return Readiness::NotReady("Redis does not answer".into()),
        }
    }
    let Ok(statuses) = tokio::time::timeout(ASK_TIMEOUT, gateway.status()).await else {
        return Readiness::NotReady("the shards' status did not come in time".into());
    };
    if let Some(waiting) = statuses.iter().find(|s| s.phase != Phase::Ready) {
        return Readiness::NotReady(format!("shard {} is {:?}", waiting.id, waiting.phase));
    }
    if !statuses.is_empty() {
        return Readiness::Serving {
            shards: statuses.len(),
        };
    }
    let Some(fleet) = fleet else {
        return Readiness::NotReady("no shard runs".into());
    };
    // One command for every shard: how many leases exist.
    let mut exists = redis::cmd("EXISTS");
    for shard in 0..fleet.total {
        exists.arg(lease_key(&fleet.redis, shard));
    }
    let mut conn = fleet.redis.conn();
    match tokio::time::timeout(ASK_TIMEOUT, exists.query_async::<u32>(&mut conn)).await {
        Ok(Ok(held)) if held >= fleet.total => Readiness::NothingToHold,
        Ok(Ok(held)) => Readiness::NotReady(format!(
            "runs no shard while {} of {} are free",
            fleet.total - held,
            fleet.total
        )),
        Ok(Err(e)) => Readiness::NotReady(format!("Redis: {e}")),
        Err(_) => Readiness::NotReady("Redis does not answer".into()),
    }
}
