//! Session state shared by all shards (session id, last sequence, resume URL), so that a shard — or a
//! new supervisor after a restart — can resume instead of identifying.

use std::sync::Arc;

use dashmap::DashMap;

use crate::fast_hash::FastHash;

/// What a shard needs to resume its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session id from READY.
    pub session_id: String,
    /// The last sequence number received.
    pub seq: u64,
    /// Where to resume: `resume_gateway_url` from READY, if it passed the host check.
    pub resume_url: Option<String>,
}

/// Where sessions are kept. The in-process [`MemorySessionStore`] is the default; other stores (e.g.
/// Redis) let another process resume the shards.
///
/// Every method is called from a shard's own thread and must not block for long.
pub trait SessionStore: Send + Sync + 'static {
    /// The session of `shard`, if one is kept.
    fn load(&self, shard: u32) -> Option<SessionInfo>;
    /// Keeps the session of `shard` (after READY or RESUMED).
    fn save(&self, shard: u32, session: SessionInfo);
    /// Records how far the handlers of `shard` got: every event of the current session at or below
    /// `seq` was finished by every handler it went to. It trails what the shard received (so a
    /// shard resumed from it replays what the handlers had not finished: a crash replays, never
    /// loses), rises with every call, and is called as it advances, not once per event.
    fn set_seq(&self, shard: u32, seq: u64);
    /// Forgets the session of `shard` (it was invalidated or closed for good).
    fn remove(&self, shard: u32);
}

/// The default session store: a `dashmap` shared by all shards of the process, readable by the bot.
///
/// ```
/// use shardline::session::{MemorySessionStore, SessionInfo, SessionStore};
/// let store = MemorySessionStore::new();
/// store.save(3, SessionInfo { session_id: "abc".into(), seq: 1, resume_url: None });
/// store.set_seq(3, 42);
/// assert_eq!(store.load(3).map(|s| s.seq), Some(42));
/// ```
#[derive(Debug, Default, Clone)]
pub struct MemorySessionStore {
    sessions: Arc<DashMap<u32, SessionInfo, FastHash>>,
}

impl MemorySessionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every session kept, by shard id (sorted).
    pub fn snapshot(&self) -> Vec<(u32, SessionInfo)> {
        let mut all: Vec<_> = self
            .sessions
            .iter()
            .map(|e| (*e.key(), e.value().clone()))
            .collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }
}

impl SessionStore for MemorySessionStore {
    fn load(&self, shard: u32) -> Option<SessionInfo> {
        self.sessions.get(&shard).map(|s| s.clone())
    }

    fn save(&self, shard: u32, session: SessionInfo) {
        self.sessions.insert(shard, session);
    }

    fn set_seq(&self, shard: u32, seq: u64) {
        if let Some(mut session) = self.sessions.get_mut(&shard) {
            session.seq = seq;
        }
    }

    fn remove(&self, shard: u32) {
        self.sessions.remove(&shard);
    }
}
