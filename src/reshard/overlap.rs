//! The overlap of two shard sets, sans IO: which events each set's handlers are given while an old
//! set (delivering) and a new set (held) both receive the bot's events, and when the new set is
//! complete enough to take over (docs/resharding.md).
//!
//! Duplicates are recognised by a keyed hash of (event name, raw `d` bytes): Discord sends each
//! shard set its own copy of an event, byte for byte the same payload, under each set's own
//! sequence numbers. Only the unmatched lag between the sets is remembered, for at most `window`.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::fast_hash::FastHash;
use crate::router::Dispatch;

/// One shard of the new set, as the overlap sees it.
#[derive(Default)]
struct NewShard {
    /// When its READY was read.
    ready_at: Option<Instant>,
    /// Guilds its READY listed as unavailable whose GUILD_CREATE has not come yet.
    pending_guilds: HashSet<u64>,
    /// Held events, oldest first; `None` once a later copy from the old set was delivered.
    held: VecDeque<Option<Dispatch>>,
    /// The serial of `held[0]`.
    first_serial: u64,
    /// Its held events were handed back after the cut: it delivers directly.
    released: bool,
}

impl NewShard {
    fn push(&mut self, dispatch: Dispatch) -> u64 {
        self.held.push_back(Some(dispatch));
        self.first_serial + self.held.len() as u64 - 1
    }
}

/// Whether the new set may take over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Shards not READY yet, guilds still awaited (within their timeout), and old shards not
    /// yet caught up (within the catch-up timeout).
    Waiting {
        shards: usize,
        guilds: usize,
        lagging: usize,
    },
    /// Every new shard is READY with its guilds and the old set has caught up; `timed_out` lists
    /// the guilds given up on, `lagging` the old shards not waited for any longer.
    Ready { timed_out: Vec<u64>, lagging: usize },
}

/// One shard of the old set, as the overlap sees it.
struct OldShard {
    /// It runs: the cut waits for it to catch up (a shard stopped for good has nothing to read).
    active: bool,
    /// By new shard: an event this shard delivered was also received by that new shard. Then
    /// this shard has read everything sent before that new shard's session began: whatever it
    /// reads from then on, that new shard receives too.
    matched: Vec<bool>,
}

/// What the cut found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CutStats {
    /// Events held by the new set and not matched by the old: delivered after the cut.
    pub held: usize,
    /// Copies from the new set dropped so far because the old set had delivered them.
    pub duplicates: u64,
}

/// The overlap of an old shard set and a new one (of `new_total` shards).
pub(crate) struct Overlap {
    keys: RandomState,
    window: Duration,
    guild_timeout: Duration,
    cut: bool,
    /// Old-set deliveries no copy from the new set has matched yet: hash → (arrival, old shard),
    /// oldest first (a match takes the oldest); and every arrival in order, for expiry.
    old_unmatched: HashMap<u64, VecDeque<(Instant, u32)>, FastHash>,
    old_order: VecDeque<(Instant, u64)>,
    /// Held new-set events no old copy has matched yet: hash → (arrival, shard, serial), oldest
    /// first; and every arrival in order, for expiry.
    held_index: HashMap<u64, VecDeque<(Instant, u32, u64)>, FastHash>,
    held_order: VecDeque<(Instant, u64)>,
    shards: Vec<NewShard>,
    olds: Vec<OldShard>,
    /// Old and new shard ids share guilds only if they are equal modulo this (the gcd of the
    /// totals): guild `g` is on old shard `g % old` and new shard `g % new` (of `g = id >> 22`).
    gcd: u32,
    catch_up: Duration,
    /// When every new shard was first READY with its guilds.
    ready_since: Option<Instant>,
    duplicates: u64,
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}

#[derive(Deserialize)]
struct ReadyGuilds {
    #[serde(default)]
    guilds: Vec<GuildId>,
}

#[derive(Deserialize)]
struct GuildId {
    id: Snowflake,
}

/// A snowflake as Discord sends it (a string), or as a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Snowflake {
    Text(String),
    Number(u64),
}

impl Snowflake {
    fn get(&self) -> Option<u64> {
        match self {
            Self::Text(s) => s.parse().ok(),
            Self::Number(n) => Some(*n),
        }
    }
}

impl Overlap {
    /// An overlap of `old_total` shards with a new set of `new_total`. A copy is recognised if it
    /// arrives within `window` of the other; a guild a READY listed is waited for `guild_timeout`
    /// from the READY; an old shard not caught up, `catch_up` from when the new set is complete.
    pub(crate) fn new(
        old_total: u32,
        new_total: u32,
        window: Duration,
        guild_timeout: Duration,
        catch_up: Duration,
    ) -> Self {
        Self {
            olds: (0..old_total)
                .map(|_| OldShard {
                    active: true,
                    matched: vec![false; new_total as usize],
                })
                .collect(),
            gcd: gcd(old_total, new_total),
            catch_up,
            ready_since: None,
            keys: RandomState::new(),
            window,
            guild_timeout,
            cut: false,
            old_unmatched: HashMap::default(),
            old_order: VecDeque::new(),
            held_index: HashMap::default(),
            held_order: VecDeque::new(),
            shards: (0..new_total).map(|_| NewShard::default()).collect(),
            duplicates: 0,
        }
    }

    fn hash(&self, dispatch: &Dispatch) -> u64 {
        let mut h = self.keys.build_hasher();
        h.write(dispatch.event().as_bytes());
        h.write_u8(0xff);
        h.write(dispatch.data());
        h.finish()
    }

    /// Forgets what is older than the window: a copy arriving later than that is not recognised.
    fn expire(&mut self, now: Instant) {
        let window = self.window;
        expire(
            &mut self.old_order,
            &mut self.old_unmatched,
            now,
            window,
            |e| e.0,
        );
        expire(
            &mut self.held_order,
            &mut self.held_index,
            now,
            window,
            |e| e.0,
        );
    }

    fn matched(&mut self, old: u32, new: u32) {
        if let Some(m) = self
            .olds
            .get_mut(old as usize)
            .and_then(|o| o.matched.get_mut(new as usize))
        {
            *m = true;
        }
    }

    /// Old shard `shard` stopped for good: the cut does not wait for it to catch up.
    pub(crate) fn old_shard_gone(&mut self, shard: u32) {
        if let Some(o) = self.olds.get_mut(shard as usize) {
            o.active = false;
        }
    }

    /// A dispatch of old shard `shard`: whether its handlers get it (before the cut always;
    /// after, never).
    pub(crate) fn old(&mut self, shard: u32, dispatch: &Dispatch, now: Instant) -> bool {
        if self.cut {
            return false;
        }
        self.expire(now);
        let h = self.hash(dispatch);
        if let Some(q) = self.held_index.get_mut(&h) {
            // The new set has this one held: this copy goes now, the held one never.
            if let Some((_, new_shard, serial)) = q.pop_front() {
                if q.is_empty() {
                    self.held_index.remove(&h);
                }
                self.matched(shard, new_shard);
                let shard = new_shard;
                if let Some(s) = self.shards.get_mut(shard as usize) {
                    if let Some(slot) = serial
                        .checked_sub(s.first_serial)
                        .and_then(|i| s.held.get_mut(i as usize))
                    {
                        *slot = None;
                    }
                }
                self.duplicates += 1;
                return true;
            }
        }
        self.old_unmatched
            .entry(h)
            .or_default()
            .push_back((now, shard));
        self.old_order.push_back((now, h));
        true
    }

    /// A new-set dispatch of shard `shard`: `Some` to deliver now (only once the shard is
    /// released after the cut), `None` if held or dropped.
    pub(crate) fn new_event(
        &mut self,
        shard: u32,
        dispatch: Dispatch,
        now: Instant,
    ) -> Option<Dispatch> {
        let cut = self.cut;
        let s = self.shards.get_mut(shard as usize)?;
        if !cut {
            // The new set's own handshake: its handlers know these guilds from the old set.
            match dispatch.event() {
                "READY" => {
                    s.ready_at = Some(now);
                    s.pending_guilds = dispatch
                        .parse::<ReadyGuilds>()
                        .map(|r| r.guilds.iter().filter_map(|g| g.id.get()).collect())
                        .unwrap_or_default();
                    return None;
                }
                "RESUMED" => return None,
                "GUILD_CREATE" if !s.pending_guilds.is_empty() => {
                    let id = dispatch.parse::<GuildId>().ok().and_then(|g| g.id.get());
                    if id.is_some_and(|id| s.pending_guilds.remove(&id)) {
                        return None;
                    }
                }
                _ => {}
            }
        }
        self.expire(now);
        let h = self.hash(&dispatch);
        if let Some(q) = self.old_unmatched.get_mut(&h) {
            // The old set delivered this one already (the oldest such delivery is the match).
            let old = q.pop_front().map(|e| e.1);
            if q.is_empty() {
                self.old_unmatched.remove(&h);
            }
            if let Some(old) = old {
                self.matched(old, shard);
            }
            self.duplicates += 1;
            return None;
        }
        let s = &mut self.shards[shard as usize];
        if s.released {
            return Some(dispatch);
        }
        let serial = s.push(dispatch);
        if !cut {
            self.held_index
                .entry(h)
                .or_default()
                .push_back((now, shard, serial));
            self.held_order.push_back((now, h));
        }
        None
    }

    /// Whether every new shard is READY and has every guild its READY listed (or waited
    /// `guild_timeout` for the rest), and every active old shard has caught up with the new shards
    /// it shares guilds with (or `catch_up` passed since the rest was ready): only then has the
    /// old set delivered everything sent before the new sessions began, which the new set lacks.
    pub(crate) fn readiness(&mut self, now: Instant) -> Readiness {
        let mut shards = 0;
        let mut guilds = 0;
        let mut timed_out = Vec::new();
        for s in &self.shards {
            match s.ready_at {
                None => shards += 1,
                Some(at) if now.saturating_duration_since(at) >= self.guild_timeout => {
                    timed_out.extend(s.pending_guilds.iter().copied());
                }
                Some(_) => guilds += s.pending_guilds.len(),
            }
        }
        if shards > 0 || guilds > 0 {
            return Readiness::Waiting {
                shards,
                guilds,
                lagging: 0,
            };
        }
        let since = *self.ready_since.get_or_insert(now);
        let g = self.gcd;
        let lagging = self
            .olds
            .iter()
            .enumerate()
            .filter(|(o, old)| {
                old.active
                    && old
                        .matched
                        .iter()
                        .enumerate()
                        .any(|(n, &m)| !m && (*o as u32) % g == (n as u32) % g)
            })
            .count();
        if lagging > 0 && now.saturating_duration_since(since) < self.catch_up {
            return Readiness::Waiting {
                shards: 0,
                guilds: 0,
                lagging,
            };
        }
        timed_out.sort_unstable();
        Readiness::Ready { timed_out, lagging }
    }

    /// The cut: from now on the old set's events are dropped and the new set's go to handlers
    /// (each shard's held events first, once [`release`](Self::release)d).
    pub(crate) fn cut(&mut self) -> CutStats {
        self.cut = true;
        self.held_index.clear();
        self.held_order.clear();
        CutStats {
            held: self
                .shards
                .iter()
                .map(|s| s.held.iter().flatten().count())
                .sum(),
            duplicates: self.duplicates,
        }
    }

    /// Whether the cut was made.
    #[cfg(test)]
    pub(crate) fn is_cut(&self) -> bool {
        self.cut
    }

    /// After the cut: shard `shard`'s held events, in order; it delivers directly from now on.
    pub(crate) fn release(&mut self, shard: u32) -> Vec<Dispatch> {
        if !self.cut {
            return Vec::new();
        }
        let Some(s) = self.shards.get_mut(shard as usize) else {
            return Vec::new();
        };
        s.released = true;
        s.first_serial += s.held.len() as u64;
        s.held.drain(..).flatten().collect()
    }

    /// Whether every new shard has been released.
    pub(crate) fn all_released(&self) -> bool {
        self.cut && self.shards.iter().all(|s| s.released)
    }

    /// Copies from the new set dropped so far.
    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Events held by the new set now (matched ones excluded).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.held.iter().flatten().count())
            .sum()
    }
}

/// Drops from `order` the arrivals older than `window`, and from `index` the entries they were
/// (those a match took already are gone: an index's entries are in arrival order, so what is left
/// at or before an expired arrival is exactly what expires with it).
fn expire<T>(
    order: &mut VecDeque<(Instant, u64)>,
    index: &mut HashMap<u64, VecDeque<T>, FastHash>,
    now: Instant,
    window: Duration,
    at: impl Fn(&T) -> Instant,
) {
    while let Some(&(t, h)) = order.front() {
        if now.saturating_duration_since(t) <= window {
            break;
        }
        order.pop_front();
        if let Some(q) = index.get_mut(&h) {
            while q.front().is_some_and(|e| at(e) <= t) {
                q.pop_front();
            }
            if q.is_empty() {
                index.remove(&h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const W: Duration = Duration::from_secs(5);

    fn ev(shard: u32, seq: u64, event: &str, d: &str) -> Dispatch {
        Dispatch::from_data(shard, seq, event, Bytes::from(d.to_owned()))
    }

    fn msg(n: u32) -> String {
        format!(r#"{{"nonce":"{n}"}}"#)
    }

    fn nonces(events: &[Dispatch]) -> Vec<String> {
        events
            .iter()
            .map(|d| String::from_utf8_lossy(d.data()).into_owned())
            .collect()
    }

    fn ready(overlap: &mut Overlap, shard: u32, guilds: &[u64], now: Instant) {
        let list: Vec<String> = guilds
            .iter()
            .map(|g| format!(r#"{{"id":"{g}","unavailable":true}}"#))
            .collect();
        let d = format!(r#"{{"guilds":[{}]}}"#, list.join(","));
        assert!(overlap
            .new_event(shard, ev(shard, 1, "READY", &d), now)
            .is_none());
    }

    #[test]
    fn a_copy_the_old_set_delivered_first_is_dropped_from_the_new_set() {
        let now = Instant::now();
        let mut o = Overlap::new(1, 1, W, W, W);
        ready(&mut o, 0, &[], now);
        assert!(o.old(0, &ev(0, 10, "MESSAGE_CREATE", &msg(1)), now));
        assert!(o
            .new_event(0, ev(0, 2, "MESSAGE_CREATE", &msg(1)), now)
            .is_none());
        assert_eq!(o.held(), 0);
        assert_eq!(o.duplicates(), 1);
        o.cut();
        assert!(o.release(0).is_empty());
    }

    #[test]
    fn a_held_copy_is_cancelled_when_the_old_set_delivers_it_later() {
        let now = Instant::now();
        let mut o = Overlap::new(1, 1, W, W, W);
        ready(&mut o, 0, &[], now);
        assert!(o
            .new_event(0, ev(0, 2, "MESSAGE_CREATE", &msg(1)), now)
            .is_none());
        assert!(o
            .new_event(0, ev(0, 3, "MESSAGE_CREATE", &msg(2)), now)
            .is_none());
        assert_eq!(o.held(), 2);
        assert!(o.old(0, &ev(0, 10, "MESSAGE_CREATE", &msg(1)), now));
        assert_eq!(o.held(), 1);
        assert_eq!(o.cut().held, 1);
        // After the cut the old set's copy of 2 is dropped, and the held one goes.
        assert!(!o.old(0, &ev(0, 11, "MESSAGE_CREATE", &msg(2)), now));
        assert_eq!(nonces(&o.release(0)), [msg(2)]);
    }

    #[test]
    fn after_the_cut_new_events_queue_behind_the_held_ones_until_released_then_pass() {
        let now = Instant::now();
        let mut o = Overlap::new(1, 2, W, W, W);
        ready(&mut o, 0, &[], now);
        ready(&mut o, 1, &[], now);
        assert!(o
            .new_event(1, ev(1, 2, "MESSAGE_CREATE", &msg(1)), now)
            .is_none());
        o.cut();
        assert!(o
            .new_event(1, ev(1, 3, "MESSAGE_CREATE", &msg(2)), now)
            .is_none());
        assert!(!o.all_released());
        assert_eq!(nonces(&o.release(1)), [msg(1), msg(2)]);
        let passed = o.new_event(1, ev(1, 4, "MESSAGE_CREATE", &msg(3)), now);
        assert_eq!(passed.map(|d| d.seq()), Some(4));
        assert!(o.release(0).is_empty());
        assert!(o.all_released());
    }

    #[test]
    fn an_event_the_old_set_delivered_just_before_the_cut_is_not_delivered_again_after_it() {
        let now = Instant::now();
        let mut o = Overlap::new(1, 1, W, W, W);
        ready(&mut o, 0, &[], now);
        assert!(o.old(0, &ev(0, 10, "MESSAGE_CREATE", &msg(7)), now));
        o.cut();
        assert!(o.release(0).is_empty());
        // The new set lagged: its copy comes after the cut.
        assert!(o
            .new_event(0, ev(0, 2, "MESSAGE_CREATE", &msg(7)), now)
            .is_none());
        assert!(o
            .new_event(0, ev(0, 3, "MESSAGE_CREATE", &msg(8)), now)
            .is_some());
    }

    #[test]
    fn copies_are_counted_so_that_identical_events_are_matched_one_for_one() {
        let now = Instant::now();
        let mut o = Overlap::new(1, 1, W, W, W);
        ready(&mut o, 0, &[], now);
        let same = r#"{"status":"online"}"#;
        assert!(o.old(0, &ev(0, 10, "PRESENCE_UPDATE", same), now));
        assert!(o.old(0, &ev(0, 11, "PRESENCE_UPDATE", same), now));
        assert!(o
            .new_event(0, ev(0, 2, "PRESENCE_UPDATE", same), now)
            .is_none());
        assert!(o
            .new_event(0, ev(0, 3, "PRESENCE_UPDATE", same), now)
            .is_none());
        // A third one only the new set received is not a copy of anything: held, then delivered.
        assert!(o
            .new_event(0, ev(0, 4, "PRESENCE_UPDATE", same), now)
            .is_none());
        o.cut();
        assert_eq!(o.release(0).len(), 1);
    }

    #[test]
    fn the_same_bytes_under_another_event_name_are_not_a_copy() {
        let now = Instant::now();
        let mut o = Overlap::new(1, 1, W, W, W);
        ready(&mut o, 0, &[], now);
        assert!(o.old(0, &ev(0, 10, "MESSAGE_CREATE", &msg(1)), now));
        assert!(o
            .new_event(0, ev(0, 2, "MESSAGE_UPDATE", &msg(1)), now)
            .is_none());
        o.cut();
        assert_eq!(o.release(0).len(), 1);
    }

    #[test]
    fn a_copy_later_than_the_window_is_not_recognised() {
        let t0 = Instant::now();
        let mut o = Overlap::new(1, 1, W, W, W);
        ready(&mut o, 0, &[], t0);
        assert!(o.old(0, &ev(0, 10, "MESSAGE_CREATE", &msg(1)), t0));
        let late = t0 + W + Duration::from_millis(1);
        assert!(o
            .new_event(0, ev(0, 2, "MESSAGE_CREATE", &msg(1)), late)
            .is_none());
        assert_eq!(o.held(), 1, "held as a new event");
        assert_eq!(o.duplicates(), 0);
    }

    #[test]
    fn the_new_sets_ready_and_initial_guilds_are_not_delivered_and_decide_readiness() {
        let t0 = Instant::now();
        let mut o = Overlap::new(1, 2, W, Duration::from_secs(1), W);
        o.old_shard_gone(0);
        assert_eq!(
            o.readiness(t0),
            Readiness::Waiting {
                shards: 2,
                guilds: 0,
                lagging: 0
            }
        );
        ready(&mut o, 0, &[100, 200], t0);
        ready(&mut o, 1, &[], t0);
        assert_eq!(
            o.readiness(t0),
            Readiness::Waiting {
                shards: 0,
                guilds: 2,
                lagging: 0
            }
        );
        let gc = ev(0, 2, "GUILD_CREATE", r#"{"id":"100","name":"a"}"#);
        assert!(o.new_event(0, gc, t0).is_none());
        assert_eq!(o.held(), 0, "an initial GUILD_CREATE is not held");
        assert_eq!(
            o.readiness(t0),
            Readiness::Waiting {
                shards: 0,
                guilds: 1,
                lagging: 0
            }
        );
        // A GUILD_CREATE of a guild the READY did not list is an event like any other: held.
        assert!(o
            .new_event(0, ev(0, 3, "GUILD_CREATE", r#"{"id":"300"}"#), t0)
            .is_none());
        assert_eq!(o.held(), 1);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            o.readiness(later),
            Readiness::Ready {
                timed_out: vec![200],
                lagging: 0
            }
        );
        let gc = ev(0, 4, "GUILD_CREATE", r#"{"id":"200"}"#);
        assert!(o.new_event(0, gc, later).is_none());
        assert_eq!(
            o.readiness(later),
            Readiness::Ready {
                timed_out: vec![],
                lagging: 0
            }
        );
    }

    #[test]
    fn the_cut_waits_until_each_running_old_shard_has_caught_up_with_the_new_shards_it_shares_guilds_with(
    ) {
        let t0 = Instant::now();
        // 2 → 4 shards: old 0 shares guilds with new 0 and 2, old 1 with new 1 and 3.
        let mut o = Overlap::new(2, 4, W, W, Duration::from_secs(1));
        for n in 0..4 {
            ready(&mut o, n, &[], t0);
        }
        // Both are waited for, even before they deliver anything (one may be reading a backlog).
        assert_eq!(
            o.readiness(t0),
            Readiness::Waiting {
                shards: 0,
                guilds: 0,
                lagging: 2
            }
        );
        // Old shard 1 stopped for good: not waited for. Old shard 0 delivers.
        o.old_shard_gone(1);
        assert!(o.old(0, &ev(0, 1, "MESSAGE_CREATE", &msg(1)), t0));
        assert_eq!(
            o.readiness(t0),
            Readiness::Waiting {
                shards: 0,
                guilds: 0,
                lagging: 1
            }
        );
        // New shard 0 received it too: old 0 is past new 0's start, not yet past new 2's.
        assert!(o
            .new_event(0, ev(0, 2, "MESSAGE_CREATE", &msg(1)), t0)
            .is_none());
        assert_eq!(
            o.readiness(t0),
            Readiness::Waiting {
                shards: 0,
                guilds: 0,
                lagging: 1
            }
        );
        // New shard 2 holds one that old 0 delivers next: caught up.
        assert!(o
            .new_event(2, ev(2, 2, "MESSAGE_CREATE", &msg(2)), t0)
            .is_none());
        assert!(o.old(0, &ev(0, 2, "MESSAGE_CREATE", &msg(2)), t0));
        assert_eq!(
            o.readiness(t0),
            Readiness::Ready {
                timed_out: vec![],
                lagging: 0
            }
        );
    }

    #[test]
    fn an_old_shard_that_never_catches_up_is_waited_for_only_the_catch_up_time() {
        let t0 = Instant::now();
        let mut o = Overlap::new(1, 1, W, W, Duration::from_secs(1));
        ready(&mut o, 0, &[], t0);
        assert!(o.old(0, &ev(0, 1, "MESSAGE_CREATE", &msg(1)), t0));
        assert_eq!(
            o.readiness(t0),
            Readiness::Waiting {
                shards: 0,
                guilds: 0,
                lagging: 1
            }
        );
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            o.readiness(later),
            Readiness::Ready {
                timed_out: vec![],
                lagging: 1
            }
        );
    }

    #[test]
    fn memory_holds_only_the_unmatched_lag() {
        let now = Instant::now();
        let mut o = Overlap::new(1, 1, W, W, W);
        ready(&mut o, 0, &[], now);
        for n in 0..1000 {
            assert!(o.old(0, &ev(0, n, "MESSAGE_CREATE", &msg(n as u32)), now));
            assert!(o
                .new_event(0, ev(0, n + 2, "MESSAGE_CREATE", &msg(n as u32)), now)
                .is_none());
        }
        assert!(o.old_unmatched.is_empty() && o.held_index.is_empty());
        assert_eq!(o.held(), 0);
        assert_eq!(o.duplicates(), 1000);
    }

    #[test]
    fn the_old_set_delivers_until_the_cut_and_nothing_after() {
        let now = Instant::now();
        let mut o = Overlap::new(1, 1, W, W, W);
        assert!(o.old(0, &ev(0, 1, "TYPING_START", "{}"), now));
        assert!(!o.is_cut());
        o.cut();
        assert!(!o.old(0, &ev(0, 2, "TYPING_START", "{}"), now));
    }

    /// Runs one overlap of an old shard receiving events `0..n` and a new shard receiving
    /// `start..n` (its session began later), the two streams merged as `merge` says; the cut as
    /// soon as allowed after step `cut_after`, the release `release_after` steps later. What the
    /// handlers got, in order.
    fn simulate(
        n: u64,
        start: u64,
        merge: &[bool],
        cut_after: usize,
        release_after: usize,
    ) -> Vec<u64> {
        let t0 = Instant::now();
        let mut o = Overlap::new(1, 1, W, W, Duration::from_secs(3600));
        ready(&mut o, 0, &[], t0);
        let (mut old, mut new) = (0u64, start);
        let mut delivered = Vec::new();
        let mut cut_at: Option<usize> = None;
        let mut released = false;
        let mut step = 0;
        let mut bits = merge.iter().copied().chain(std::iter::repeat(true));
        let nonce = |d: &Dispatch| -> u64 {
            let v: serde_json::Value = serde_json::from_slice(d.data()).unwrap();
            v["nonce"].as_str().unwrap().parse().unwrap()
        };
        while old < n || new < n {
            let take_old = match (old < n, new < n) {
                (true, true) => bits.next().unwrap_or(true),
                (o_left, _) => o_left,
            };
            if take_old {
                let d = ev(0, old + 1, "MESSAGE_CREATE", &msg(old as u32));
                if o.old(0, &d, t0) {
                    delivered.push(old);
                }
                old += 1;
            } else {
                let d = ev(0, new + 2, "MESSAGE_CREATE", &msg(new as u32));
                if let Some(d) = o.new_event(0, d, t0) {
                    delivered.push(nonce(&d));
                }
                new += 1;
            }
            step += 1;
            if cut_at.is_none() && step >= cut_after {
                if let Readiness::Ready { .. } = o.readiness(t0) {
                    o.cut();
                    cut_at = Some(step);
                }
            }
            if !released && cut_at.is_some_and(|c| step >= c + release_after) {
                delivered.extend(o.release(0).iter().map(nonce));
                released = true;
            }
        }
        if cut_at.is_none() {
            // The streams ended before the cut: with nothing in common (or the cut due later
            // than the last step), it comes once the catch-up wait runs out.
            let _ = o.readiness(t0);
            assert!(matches!(
                o.readiness(t0 + Duration::from_secs(3600)),
                Readiness::Ready { .. }
            ));
            o.cut();
        }
        if !released {
            delivered.extend(o.release(0).iter().map(nonce));
        }
        delivered
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 512, ..Default::default() })]

        /// However the two sets' streams interleave, and wherever the cut and the release fall,
        /// the handlers get every event exactly once, in order.
        #[test]
        fn any_interleaving_delivers_every_event_once_in_order(
            n in 0u64..40,
            start in proptest::prelude::any::<proptest::sample::Index>(),
            merge in proptest::collection::vec(proptest::prelude::any::<bool>(), 0..80),
            cut_after in 0usize..80,
            release_after in 0usize..10,
        ) {
            let start = start.index(n as usize + 1) as u64;
            let delivered = simulate(n, start, &merge, cut_after, release_after);
            proptest::prop_assert_eq!(delivered, (0..n).collect::<Vec<_>>());
        }
    }
}
