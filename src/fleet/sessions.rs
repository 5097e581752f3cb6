//! The session store shared by every process of a bot: session id, sequence and resume URL of
//! every shard in Redis, so that a process started after another stopped (a deploy) or died (a
//! crash) resumes the shards instead of identifying them (docs/fleet.md "Sessions").
//!
//! Nothing waits for Redis on the event path: [`SessionStore::set_seq`] writes a local map, and a
//! background task writes what changed every `flush_every` (and at once after READY, on
//! [`flush`](RedisSessionStore::flush), and at shutdown). The sequences a shard records trail what
//! its handlers have finished, and a crash loses at most the sequence numbers of the last
//! `flush_every`: the next owner resumes from the last flushed one and the gateway replays, so
//! events after it may be delivered again, never lost.
//!
//! Writes are fenced: a shard's session is written only while the lease token this process holds
//! for it is still the one in Redis (a script compares them), so a process that lost a shard while
//! it was paused cannot write over the new owner's session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use redis::Script;

use crate::error::FleetError;
use crate::fast_hash::FastHash;
use crate::fleet::connect::FleetRedis;
use crate::session::{SessionInfo, SessionStore};

/// Writes one shard's session (or deletes it) if the fence still holds.
///
/// KEYS: session, lease (unused when ARGV[1] is empty). ARGV: fence, op ("set"/"del"), ttl ms,
/// session id, seq, resume url. Answers 1 when written, 0 when fenced off.
const WRITE: &str = r#"
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'del' then
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('HSET', KEYS[1], 'session_id', ARGV[4], 'seq', ARGV[5], 'resume_url', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// How a [`RedisSessionStore`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStoreOptions {
    /// How often changed sequences are written (default 100 ms): the most a crash can replay.
    pub flush_every: Duration,
    /// How long a session stays in Redis after its last write (default 3 min). Discord does not
    /// document how long it keeps a disconnected session; a resume of one it forgot costs an
    /// op 9 and a new Identify, nothing more. Live sessions are rewritten well within this.
    pub ttl: Duration,
    /// Whether the sequence written for a shard waits for the event stream (default off; see
    /// [`RedisSessionStore::confirm_published`]). Turn it on when a
    /// [`StreamPublisher`](crate::fleet::stream::StreamPublisher) publishes this bot's events: a
    /// resume then never starts after an event that is not in the stream yet.
    pub gate_on_publish: bool,
}

impl Default for SessionStoreOptions {
    fn default() -> Self {
        Self {
            flush_every: Duration::from_millis(100),
            ttl: Duration::from_secs(180),
            gate_on_publish: false,
        }
    }
}

impl SessionStoreOptions {
    /// Sets [`flush_every`](Self::flush_every).
    pub fn flush_every(mut self, every: Duration) -> Self {
        self.flush_every = every;
        self
    }

    /// Sets [`ttl`](Self::ttl).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets [`gate_on_publish`](Self::gate_on_publish).
    pub fn gate_on_publish(mut self, gate: bool) -> Self {
        self.gate_on_publish = gate;
        self
    }
}

#[derive(Debug, Clone)]
struct Entry {
    /// `None`: the session was removed and the removal is not written yet.
    session: Option<SessionInfo>,
    dirty: bool,
    /// The highest sequence of this session known to be in the event stream (or the sequence the
    /// session was stored or loaded with: nothing before it can be replayed). With the publish gate,
    /// the sequence written is never above it.
    published: u64,
}

impl Entry {
    fn new(session: Option<SessionInfo>, dirty: bool) -> Self {
        let published = session.as_ref().map_or(0, |s| s.seq);
        Self {
            session,
            dirty,
            published,
        }
    }

    /// The session as it may be written: with the gate, its sequence is held at what was published.
    fn to_write(&self, gated: bool) -> Option<SessionInfo> {
        let mut session = self.session.clone()?;
        if gated {
            session.seq = session.seq.min(self.published);
        }
        Some(session)
    }
}

/// A [`SessionStore`] in Redis, shared by every process of a bot.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use shardline::fleet::{FleetRedis, RedisSessionStore};
/// use shardline::fleet::sessions::SessionStoreOptions;
/// let redis = FleetRedis::connect("redis://127.0.0.1:6379", "shardline:mybot").await?;
/// let sessions = RedisSessionStore::new(redis, SessionStoreOptions::default());
/// sessions.load_from_redis(&[0, 1, 2, 3]).await?;
/// let config = shardline::Config::builder("token")
///     .session_store(Arc::new(sessions.clone()))
///     .build()?;
/// # let _ = config; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisSessionStore {
    inner: Arc<Inner>,
}

struct Inner {
    redis: FleetRedis,
    options: SessionStoreOptions,
    local: DashMap<u32, Entry, FastHash>,
    /// Per shard, the lease value (`owner:token`) writes are fenced with; none: unfenced.
    fences: DashMap<u32, String, FastHash>,
    wake: tokio::sync::Notify,
    /// Whether the last flush reached Redis (for logging a change once, not every tick).
    healthy: AtomicBool,
    /// One flush at a time: the background task and an explicit flush must not interleave
    /// their writes of one shard.
    flushing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("redis", &self.inner.redis)
            .field("options", &self.inner.options)
            .field("sessions", &self.inner.local.len())
            .finish()
    }
}

impl RedisSessionStore {
    /// A store over `redis`; starts its background writer on the current runtime, which ends when
    /// the last clone of the store is dropped.
    pub fn new(redis: FleetRedis, options: SessionStoreOptions) -> Self {
        let inner = Arc::new(Inner {
            redis,
            options,
            local: DashMap::default(),
            fences: DashMap::default(),
            wake: tokio::sync::Notify::new(),
            healthy: AtomicBool::new(true),
            flushing: tokio::sync::Mutex::new(()),
        });
        let task = inner.clone();
        let every = options.flush_every;
        let refresh_every = (options.ttl / 3).max(every);
        tokio::spawn(async move {
            let mut since_refresh = Duration::ZERO;
            // The task's own reference is the last one once every store handle is gone.
            while Arc::strong_count(&task) > 1 {
                let woken = tokio::time::timeout(every, task.wake.notified())
                    .await
                    .is_ok();
                if !woken {
                    since_refresh += every;
                }
                let refresh = since_refresh >= refresh_every;
                if refresh {
                    since_refresh = Duration::ZERO;
                }
                let _ = flush_inner(&task, refresh).await;
            }
        });
        Self { inner }
    }

    /// Reads the sessions of `shards` from Redis into this process (before their shards start:
    /// [`SessionStore::load`] answers from memory). A shard without a session in Redis keeps none.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn load_from_redis(&self, shards: &[u32]) -> Result<usize, FleetError> {
        let mut pipe = redis::pipe();
        for &shard in shards {
            pipe.cmd("HGETALL").arg(self.session_key(shard));
        }
        let found: Vec<std::collections::HashMap<String, String>> =
            pipe.query_async(&mut self.inner.redis.conn()).await?;
        let mut loaded = 0;
        for (&shard, fields) in shards.iter().zip(found) {
            let session = parse_session(&fields);
            if session.is_some() {
                loaded += 1;
            }
            match session {
                Some(session) => {
                    self.inner
                        .local
                        .insert(shard, Entry::new(Some(session), false));
                }
                None => {
                    self.inner.local.remove(&shard);
                }
            }
        }
        Ok(loaded)
    }

    /// The session of `shard` as Redis holds it now (for operators and tests).
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn read_from_redis(&self, shard: u32) -> Result<Option<SessionInfo>, FleetError> {
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.session_key(shard))
            .query_async(&mut self.inner.redis.conn())
            .await?;
        Ok(parse_session(&fields))
    }

    /// Fences the writes of `shard`'s session with the lease value this process holds for it
    /// (`None`: unfenced, for a bot without leases). Called by the lease keeper.
    pub fn set_fence(&self, shard: u32, fence: Option<String>) {
        match fence {
            Some(fence) => {
                self.inner.fences.insert(shard, fence);
            }
            None => {
                self.inner.fences.remove(&shard);
            }
        }
    }

    /// Forgets `shard` in this process without touching Redis (its lease moved to another
    /// process, which now owns the session there).
    pub fn forget_local(&self, shard: u32) {
        self.inner.local.remove(&shard);
        self.inner.fences.remove(&shard);
    }

    /// Tells the store that the events of `shard`'s session `session_id` up to `seq` are in the
    /// event stream (called by the [`StreamPublisher`](crate::fleet::stream::StreamPublisher) after
    /// each batch is written, for every event of it, published or not).
    ///
    /// With [`SessionStoreOptions::gate_on_publish`], the sequence written to Redis for a shard is
    /// the lower of the one handed to its handlers and this one. Without it, a process that died
    /// after writing sequence `n` but before its publisher wrote event `n` would be resumed after
    /// `n` by the next owner, and the event would never reach the stream. A confirmation for
    /// another session than the shard's current one (a batch written late, after the shard
    /// identified again) changes nothing.
    pub fn confirm_published(&self, shard: u32, session_id: &str, seq: u64) {
        if let Some(mut entry) = self.inner.local.get_mut(&shard) {
            let current = entry
                .session
                .as_ref()
                .is_some_and(|s| s.session_id == session_id);
            if current && seq > entry.published {
                entry.published = seq;
                if self.inner.options.gate_on_publish {
                    // The sequence held back can now be written.
                    entry.dirty = true;
                }
            }
        }
    }

    /// Writes every change now and waits for it (used at shutdown).
    ///
    /// # Errors
    /// When Redis cannot be reached; the changes stay queued for the next flush.
    pub async fn flush(&self) -> Result<(), FleetError> {
        flush_inner(&self.inner, false).await
    }

    fn session_key(&self, shard: u32) -> String {
        session_key(&self.inner.redis, shard)
    }
}

fn session_key(redis: &FleetRedis, shard: u32) -> String {
    redis.shard_key("session", shard)
}

fn lease_key(redis: &FleetRedis, shard: u32) -> String {
    crate::fleet::lease::lease_key(redis, shard)
}

fn parse_session(fields: &std::collections::HashMap<String, String>) -> Option<SessionInfo> {
    let session_id = fields.get("session_id")?.clone();
    let seq = fields.get("seq")?.parse().ok()?;
    let resume_url = fields.get("resume_url").filter(|u| !u.is_empty()).cloned();
    Some(SessionInfo {
        session_id,
        seq,
        resume_url,
    })
}

/// Writes the changed sessions (and, with `refresh`, every session, to renew its TTL).
async fn flush_inner(inner: &Inner, refresh: bool) -> Result<(), FleetError> {
    let _one_at_a_time = inner.flushing.lock().await;
    // Taken out of the map before the write, so a change made meanwhile is dirty again and is
    // written by the next flush rather than lost.
    let gated = inner.options.gate_on_publish;
    let mut batch: Vec<(u32, Option<SessionInfo>)> = Vec::new();
    for mut entry in inner.local.iter_mut() {
        if entry.dirty || (refresh && entry.session.is_some()) {
            entry.dirty = false;
            batch.push((*entry.key(), entry.to_write(gated)));
        }
    }
    if batch.is_empty() {
        return Ok(());
    }
    let script = Script::new(WRITE);
    let ttl_ms = inner.options.ttl.as_millis().max(1) as u64;
    let mut pipe = redis::pipe();
    // Loaded in the same round trip: a restarted Redis has forgotten every script.
    pipe.load_script(&script).ignore();
    for (shard, session) in &batch {
        let fence = inner
            .fences
            .get(shard)
            .map(|f| f.clone())
            .unwrap_or_default();
        let mut call = script.prepare_invoke();
        call.key(session_key(&inner.redis, *shard))
            .key(lease_key(&inner.redis, *shard))
            .arg(fence);
        match session {
            Some(s) => call
                .arg("set")
                .arg(ttl_ms)
                .arg(&s.session_id)
                .arg(s.seq)
                .arg(s.resume_url.as_deref().unwrap_or("")),
            None => call.arg("del").arg(ttl_ms).arg("").arg(0).arg(""),
        };
        pipe.invoke_script(&call);
    }
    let written: Result<Vec<u8>, _> = pipe.query_async(&mut inner.redis.conn()).await;
    match written {
        Ok(results) => {
            if !inner.healthy.swap(true, Ordering::Relaxed) {
                tracing::info!("session store: Redis reachable again; changes written");
            }
            for ((shard, session), ok) in batch.iter().zip(results) {
                if ok == 0 {
                    tracing::warn!(shard.id = shard, "session store: write refused, this process no longer holds the shard's lease");
                } else if session.is_none() {
                    // Written removals leave no trace.
                    inner
                        .local
                        .remove_if(shard, |_, e| e.session.is_none() && !e.dirty);
                }
            }
            Ok(())
        }
        Err(e) => {
            // Put the batch back, unless newer changes came meanwhile.
            for (shard, _) in &batch {
                if let Some(mut entry) = inner.local.get_mut(shard) {
                    entry.dirty = true;
                }
            }
            if inner.healthy.swap(false, Ordering::Relaxed) {
                tracing::warn!(error = %e, "session store: Redis unreachable; keeping changes in memory and retrying");
            }
            Err(e.into())
        }
    }
}

impl SessionStore for RedisSessionStore {
    fn load(&self, shard: u32) -> Option<SessionInfo> {
        self.inner.local.get(&shard).and_then(|e| e.session.clone())
    }

    fn save(&self, shard: u32, session: SessionInfo) {
        self.inner
            .local
            .insert(shard, Entry::new(Some(session), true));
        // A new session is worth writing at once: a crash right after READY would otherwise
        // cost a session start.
        self.inner.wake.notify_one();
    }

    fn set_seq(&self, shard: u32, seq: u64) {
        if let Some(mut entry) = self.inner.local.get_mut(&shard) {
            if let Some(session) = &mut entry.session {
                session.seq = seq;
                entry.dirty = true;
            }
        }
    }

    fn remove(&self, shard: u32) {
        self.inner.local.insert(shard, Entry::new(None, true));
        self.inner.wake.notify_one();
    }
}
