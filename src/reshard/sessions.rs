//! The new set's sessions while it runs beside the old one: its shard ids are the old set's too,
//! so until the old set is closed they are kept apart, then written to the bot's store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::session::{SessionInfo, SessionStore};

/// A session store that keeps its sessions aside until [`promote`](Self::promote)d, then passes
/// everything through to the bot's store.
pub(crate) struct StagedSessions {
    inner: Arc<dyn SessionStore>,
    staged: Mutex<HashMap<u32, SessionInfo>>,
    promoted: AtomicBool,
}

impl StagedSessions {
    pub(crate) fn new(inner: Arc<dyn SessionStore>) -> Self {
        Self {
            inner,
            staged: Mutex::new(HashMap::new()),
            promoted: AtomicBool::new(false),
        }
    }

    fn staged(&self) -> MutexGuard<'_, HashMap<u32, SessionInfo>> {
        self.staged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The old set is closed (its sessions removed): the new set's go into the bot's store, and
    /// every later call goes straight there.
    pub(crate) fn promote(&self) {
        let mut staged = self.staged();
        for (shard, session) in staged.drain() {
            self.inner.save(shard, session);
        }
        // Set under the lock: a save racing with this one lands either in `staged` (drained
        // above) or, after it, in the bot's store.
        self.promoted.store(true, Ordering::Release);
    }

    /// `Some(guard)` while sessions are still staged.
    fn while_staged(&self) -> Option<MutexGuard<'_, HashMap<u32, SessionInfo>>> {
        if self.promoted.load(Ordering::Acquire) {
            return None;
        }
        let staged = self.staged();
        (!self.promoted.load(Ordering::Acquire)).then_some(staged)
    }
}

impl SessionStore for StagedSessions {
    fn load(&self, shard: u32) -> Option<SessionInfo> {
        match self.while_staged() {
            Some(staged) => staged.get(&shard).cloned(),
            None => self.inner.load(shard),
        }
    }

    fn save(&self, shard: u32, session: SessionInfo) {
        match self.while_staged() {
            Some(mut staged) => {
                staged.insert(shard, session);
            }
            None => self.inner.save(shard, session),
        }
    }

    fn set_seq(&self, shard: u32, seq: u64) {
        match self.while_staged() {
            Some(mut staged) => {
                if let Some(s) = staged.get_mut(&shard) {
                    s.seq = seq;
                }
            }
            None => self.inner.set_seq(shard, seq),
        }
    }

    fn remove(&self, shard: u32) {
        match self.while_staged() {
            Some(mut staged) => {
                staged.remove(&shard);
            }
            None => self.inner.remove(shard),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::MemorySessionStore;

    fn info(id: &str, seq: u64) -> SessionInfo {
        SessionInfo {
            session_id: id.into(),
            seq,
            resume_url: None,
        }
    }

    #[test]
    fn staged_sessions_stay_apart_from_the_old_sets_until_promoted() {
        let bot = MemorySessionStore::new();
        bot.save(0, info("old", 5));
        let staged = StagedSessions::new(Arc::new(bot.clone()));
        assert_eq!(staged.load(0), None);
        staged.save(0, info("new", 1));
        staged.set_seq(0, 3);
        assert_eq!(bot.load(0), Some(info("old", 5)));
        // The old set closes with 1000: its session is removed.
        bot.remove(0);
        staged.promote();
        assert_eq!(bot.load(0), Some(info("new", 3)));
        staged.set_seq(0, 4);
        assert_eq!(bot.load(0).map(|s| s.seq), Some(4));
    }
}
