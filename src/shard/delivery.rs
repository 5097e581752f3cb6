//! Handing a shard's events to its handler actors: the queue of events waiting for a handler with
//! a full mailbox, the batches for batch handlers, the slow-handler policy, the decision to stop
//! reading the socket while handlers are behind, and the stored sequence, which trails what every
//! handler has finished.
//!
//! Why it trails: a process that dies takes its handlers' mailboxes with it. Had the store recorded
//! an event's sequence as it entered a mailbox, the next owner would resume after events no handler
//! ever handled. So each message handed over carries a mark ([`crate::router::Done`]) that, dropped
//! when the handler is done with it, records its sequence in that handler's progress; the stored
//! sequence is the highest one with every event at or below it finished by every handler it went to
//! (a handler given up on as stalled excepted: it misses events anyway). A crash replays what was not
//! finished, and loses nothing.
//!
//! The shard actor owns one [`Delivery`] and calls it; the waits it starts run on the actor's
//! context and come back to it through [`Deliver`].

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::dev::SendError;
use actix::prelude::*;

use crate::config::SlowHandlers;
use crate::event::ShardEvent;
use crate::router::{Dispatch, DispatchBatch, Done, Progress, Router};
use crate::session::SessionStore;
use crate::shard::pause::PauseGate;

/// Events queued before they are handed over even though the read batch is not done.
const FLUSH_AT: usize = 64;

/// While drops go on, at most one warning per this long (besides the first drop's own line).
const DROP_LOG_EVERY: Duration = Duration::from_secs(1);

/// While a handler still holds events of this shard, how often the shard looks again at what it
/// finished, so the stored sequence catches up when the shard goes quiet (an idle shard whose
/// handlers are done arms nothing).
const PROGRESS_EVERY: Duration = Duration::from_millis(20);

/// What one handler was handed by this shard in the current session and is not known to have
/// finished.
#[derive(Default)]
struct Track {
    /// Written by the handler's thread as it drops a message (see [`Done`]); made on first use and
    /// replaced at each new session, so a late mark of an old session lands in one no one reads.
    progress: Option<Progress>,
    /// The first and last sequence of each message handed over and not yet seen finished, oldest
    /// first (a handler gets its messages, and finishes them, in sequence order).
    unfinished: VecDeque<(u64, u64)>,
}

impl Track {
    /// Notes a message of events `first..=last` about to be handed over; its mark.
    fn mark(&mut self, first: u64, last: u64) -> Done {
        let progress = self.progress.get_or_insert_with(Progress::default);
        self.unfinished.push_back((first, last));
        Done::new(progress, last)
    }

    /// The message just marked was not handed over after all.
    fn unmark(&mut self) {
        self.unfinished.pop_back();
    }

    /// Forgets what the handler has finished; the lowest sequence it still holds.
    fn holds(&mut self) -> Option<u64> {
        let done = self
            .progress
            .as_ref()?
            .load(std::sync::atomic::Ordering::Acquire);
        while self
            .unfinished
            .front()
            .is_some_and(|&(_, last)| last <= done)
        {
            self.unfinished.pop_front();
        }
        self.unfinished.front().map(|&(first, _)| first)
    }
}

/// An actor that delivers its events through a [`Delivery`] it owns.
pub(crate) trait Deliver: Actor<Context = Context<Self>> {
    /// The actor's delivery state.
    fn delivery(&mut self) -> &mut Delivery;
    /// Reports a lifecycle event (a stalled handler).
    fn emit(&self, event: ShardEvent);
}

/// An event waiting for handlers.
struct Pending {
    dispatch: Dispatch,
    /// The index of the next per-event handler to offer it to.
    from: u32,
    /// The session it came from (see [`Delivery::new_session`]).
    session: u32,
}

/// A hand-over waiting for room in a full mailbox.
struct Wait {
    id: u64,
    handler: Handler,
    /// The handler's [`Track`], by index.
    track: usize,
    /// The session the hand-over's events came from (see [`Delivery::new_session`]).
    session: u32,
    /// Events in the hand-over.
    count: u64,
    /// For a per-event handler: the event, and the index of the handler after this one, to which it
    /// goes once this one took it.
    then: Option<(Dispatch, u32)>,
}

/// A handler waited for.
#[derive(PartialEq)]
enum Handler {
    Each(Recipient<Dispatch>),
    /// A batch handler, by router index.
    Batch(usize),
}

impl Handler {
    fn is_each(&self, handler: &Recipient<Dispatch>) -> bool {
        matches!(self, Self::Each(h) if h == handler)
    }

    fn index_for_log(&self, then: Option<&(Dispatch, u32)>) -> usize {
        match self {
            Self::Each(_) => then.map_or(0, |(_, next)| *next as usize - 1),
            Self::Batch(i) => *i,
        }
    }
}

/// Rate-limits drop warnings: under overload there is one drop per event, and a line per drop
/// would be a log storm exactly when the process is busiest. The first drop is logged at once;
/// after it, drops are summed and reported once per [`DROP_LOG_EVERY`] while they go on. The
/// exact count is in the shard's status either way.
#[derive(Debug, Default)]
struct DropLog {
    /// A summary is due: drops in the current window are summed, not logged one by one.
    open: bool,
    since: u64,
}

impl DropLog {
    /// Counts a drop of `count`; true if it opens a window (log it now, summarize later).
    fn note(&mut self, count: u64) -> bool {
        if self.open {
            self.since += count;
            false
        } else {
            self.open = true;
            true
        }
    }

    /// The window ended: the drops to report, or `None` if there were none (the window closes,
    /// and the next drop is logged at once again).
    fn tick(&mut self) -> Option<u64> {
        if self.since == 0 {
            self.open = false;
            None
        } else {
            Some(std::mem::take(&mut self.since))
        }
    }
}

/// Why an event missed a handler.
#[derive(Debug, Clone, Copy)]
enum Missed {
    Full,
    Stalled,
    Stopped,
}

impl Missed {
    fn as_str(self) -> &'static str {
        match self {
            Self::Full => "handler mailbox full",
            Self::Stalled => "handler stalled",
            Self::Stopped => "handler stopped",
        }
    }
}

/// One shard's delivery state.
pub(crate) struct Delivery {
    shard: u32,
    policy: SlowHandlers,
    sessions: Arc<dyn SessionStore>,
    /// The session events are recorded against; events of an earlier one are delivered but do not
    /// move the stored sequence.
    session: u32,
    /// The handlers of this shard's thread: the shared ones plus its thread's own.
    router: Arc<Router>,
    /// Events waiting for handlers.
    pending: VecDeque<Pending>,
    /// Hand-overs waiting for room in a full handler's mailbox; nothing else is offered meanwhile.
    waits: Vec<Wait>,
    next_wait: u64,
    /// Per batch handler (by router index), the events of the current hand-over.
    batches: Vec<Vec<Dispatch>>,
    /// Per batch handler, the first and last sequence of the current session's events in its batch.
    batch_spans: Vec<Option<(u64, u64)>>,
    /// Per handler (per-event handlers by router number, then batch handlers by router index), what
    /// it holds of the current session.
    tracks: Vec<Track>,
    /// The highest sequence of the current session offered to its handlers.
    offered: u64,
    /// The sequence last given to the session store for the current session.
    recorded: u64,
    progress_timer: Option<SpawnHandle>,
    dropped: u64,
    drops: DropLog,
    reading: Rc<PauseGate>,
    /// Since when the shard has held reads back for its handlers (across reconnects).
    behind_since: Option<Instant>,
    /// The connection is in its handshake: reads are not paused until READY or RESUMED is read.
    handshake: bool,
    /// Reads were paused at some point and the reader has not caught up with the socket since
    /// (see [`reads_held_lately`](Self::reads_held_lately)).
    paused_lately: bool,
    stall_timer: Option<SpawnHandle>,
    /// Waits given up on when they held the shard back for `max_pause`: until such a handler takes
    /// what it was last given, it misses (and the shard counts) whatever finds its mailbox full,
    /// instead of pausing the shard again.
    stalled: Vec<Wait>,
    span: tracing::Span,
}

impl Delivery {
    /// Delivery for `shard` to the handlers of `router` (already this thread's), under `policy`.
    pub(crate) fn new(
        shard: u32,
        policy: SlowHandlers,
        router: Arc<Router>,
        sessions: Arc<dyn SessionStore>,
        span: tracing::Span,
    ) -> Self {
        // One list per batch handler (unallocated until used): the router is fixed at start.
        let batches = (0..router.batch_handler_count())
            .map(|_| Vec::new())
            .collect();
        let batch_spans = vec![None; router.batch_handler_count()];
        let tracks = (0..router.each_handler_count() + router.batch_handler_count())
            .map(|_| Track::default())
            .collect();
        Self {
            shard,
            policy,
            sessions,
            session: 0,
            router,
            pending: VecDeque::new(),
            waits: Vec::new(),
            next_wait: 0,
            batch_spans,
            batches,
            tracks,
            offered: 0,
            recorded: 0,
            progress_timer: None,
            dropped: 0,
            drops: DropLog::default(),
            reading: Rc::new(PauseGate::default()),
            behind_since: None,
            handshake: false,
            paused_lately: false,
            stall_timer: None,
            stalled: Vec::new(),
            span,
        }
    }

    /// The gate the shard's socket reader waits behind while handlers are behind.
    pub(crate) fn gate(&self) -> Rc<PauseGate> {
        Rc::clone(&self.reading)
    }

    /// Whether reads are paused, or were and the reader has not yet read all the socket held
    /// since: an ACK that arrived meanwhile may still be sitting unread behind events (reads may
    /// have resumed for a frame or two and paused again), so a missing one proves nothing yet.
    pub(crate) fn reads_held_lately(&self) -> bool {
        self.paused_lately || self.reading.is_paused()
    }

    /// The reader found nothing more in the socket: if it was reading (not paused), everything
    /// that arrived has been read.
    pub(crate) fn caught_up(&mut self) {
        if !self.reading.is_paused() {
            self.paused_lately = false;
        }
    }

    /// Since when the shard has held reads back because handlers are behind.
    pub(crate) fn behind_since(&self) -> Option<Instant> {
        self.behind_since
    }

    /// Handlers currently missing events because they stalled the shard for `max_pause`.
    pub(crate) fn stalled_handlers(&self) -> usize {
        self.stalled.len()
    }

    fn is_stalled(&self, handler: &Handler) -> bool {
        self.stalled.iter().any(|w| w.handler == *handler)
    }

    /// Events received but not yet handed to every handler.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Deliveries dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The session was replaced or forgotten: events still queued from before no longer move the
    /// stored sequence (it would be the new session's).
    pub(crate) fn new_session(&mut self) {
        self.session = self.session.wrapping_add(1);
        self.offered = 0;
        self.recorded = 0;
        for track in &mut self.tracks {
            *track = Track::default();
        }
        for span in &mut self.batch_spans {
            *span = None;
        }
    }

    /// Gives the session store the highest sequence of the current session with every event at or
    /// below it finished by every handler it went to. Returns whether some handler still holds an
    /// event handed over (the stored sequence is behind what was offered).
    fn advance(&mut self) -> bool {
        let mut upto = self.offered;
        if let Some(next) = self.pending.iter().find(|p| p.session == self.session) {
            upto = upto.min(next.dispatch.seq().saturating_sub(1));
        }
        for wait in &self.waits {
            if let Some((dispatch, _)) = &wait.then {
                // Not yet given to the handlers after the full one.
                upto = upto.min(dispatch.seq().saturating_sub(1));
            }
        }
        for (i, track) in self.tracks.iter_mut().enumerate() {
            if let Some(first) = track.holds() {
                if !self.stalled.iter().any(|w| w.track == i) {
                    upto = upto.min(first.saturating_sub(1));
                }
            }
        }
        if upto > self.recorded {
            self.recorded = upto;
            self.sessions.set_seq(self.shard, upto);
        }
        upto < self.offered
    }

    /// The shard stopped: the last word on the stored sequence is what the handlers finished by now.
    /// Not while a hand-over waits for a full mailbox: the stopping actor drops that message, and
    /// its mark would count it as finished.
    pub(crate) fn stopped(&mut self) {
        if self.waits.is_empty() {
            self.advance();
        }
    }

    /// [`advance`](Self::advance)s, and looks again later while a handler still holds events.
    fn record<A: Deliver>(&mut self, ctx: &mut Context<A>) {
        let behind = self.advance();
        if !behind {
            // Every handler has caught up (rarely right after a hand-over, as they run elsewhere: in
            // practice once the shard goes quiet): an idle shard keeps no buffers for them.
            for track in &mut self.tracks {
                if track.unfinished.is_empty() && track.unfinished.capacity() > 0 {
                    track.unfinished = VecDeque::new();
                }
            }
        }
        if behind && self.progress_timer.is_none() {
            self.progress_timer = Some(ctx.run_later(PROGRESS_EVERY, |act, ctx| {
                let this = act.delivery();
                this.progress_timer = None;
                this.record(ctx);
            }));
        }
    }

    /// Whether every event received was handed over and finished by its handlers (those given up
    /// on as stalled excepted); records the stored sequence on the way.
    pub(crate) fn settled(&mut self) -> bool {
        let behind = self.advance();
        self.pending.is_empty() && self.waits.is_empty() && !behind
    }

    /// A new connection is open: it reads its handshake even if handlers are still behind, up to
    /// READY or RESUMED (a resume's replay comes before RESUMED, so the replay is read on past
    /// `max_pending`, up to twice it: see [`deliver`](Self::deliver)). Paused from the start, it
    /// would wait for a Hello or a RESUMED it never reads until its handshake timed out, over and
    /// over. How long the shard has been behind still counts from the first pause, and
    /// `max_pause` still bounds it.
    pub(crate) fn connection_opened(&mut self) {
        self.handshake = true;
        self.reading.set_paused(false);
    }

    /// READY or RESUMED was read: if handlers are still behind, reads pause again.
    pub(crate) fn connection_ready<A: Deliver>(&mut self, ctx: &mut Context<A>) {
        self.handshake = false;
        if let SlowHandlers::Backpressure {
            max_pending,
            max_pause,
        } = self.policy
        {
            if self.pending.len() >= max_pending && !self.waits.is_empty() {
                self.pause(max_pending, max_pause, ctx);
            }
        }
    }

    /// Queues `dispatch` for its handlers. The hand-over happens once the frames already received are
    /// handled (the actor's read loop calls [`hand_over`](Self::hand_over)), not per event: a handler
    /// on another thread is then woken once per burst rather than once per event, which is most of
    /// the cost of delivering a small event.
    pub(crate) fn deliver<A: Deliver>(&mut self, dispatch: Dispatch, ctx: &mut Context<A>) {
        self.pending.push_back(Pending {
            dispatch,
            from: 0,
            session: self.session,
        });
        if !self.waits.is_empty() {
            if let SlowHandlers::Backpressure {
                max_pending,
                max_pause,
            } = self.policy
            {
                // Before READY/RESUMED the shard reads on past `max_pending`, up to twice it, so a
                // resume's replay does not keep it from reading its RESUMED; past that it pauses
                // as well (`max_pause` bounds it), so a gateway that streams dispatches before
                // RESUMED cannot grow the queue for the whole handshake timeout.
                let limit = if self.handshake {
                    max_pending.saturating_mul(2)
                } else {
                    max_pending
                };
                if self.pending.len() >= limit && !self.reading.is_paused() {
                    self.pause(max_pending, max_pause, ctx);
                }
            }
            // The handler that blocks hands over the rest when it takes its event.
            return;
        }
        let flush_at = match self.policy {
            SlowHandlers::Backpressure { max_pending, .. } => max_pending.min(FLUSH_AT),
            SlowHandlers::Drop => FLUSH_AT,
        };
        if self.pending.len() >= flush_at {
            self.drain(ctx);
        }
        // Otherwise the read loop hands the batch over when it has read what is there.
    }

    /// Stops reading the socket; `max_pause` after the stretch of it began, stops waiting for the
    /// handlers that hold the shard back. Every pause is under a timer, however it began: a pause
    /// with none would last as long as a hung handler hangs.
    fn pause<A: Deliver>(&mut self, max_pending: usize, max_pause: Duration, ctx: &mut Context<A>) {
        self.reading.set_paused(true);
        self.paused_lately = true;
        if self.behind_since.is_none() {
            tracing::warn!(
                parent: &self.span,
                max_pending,
                ?max_pause,
                "handlers are behind: pausing reads until they catch up"
            );
        }
        let since = *self.behind_since.get_or_insert_with(Instant::now);
        if self.stall_timer.is_none() {
            let left = max_pause.saturating_sub(since.elapsed());
            self.stall_timer = Some(ctx.run_later(left, |act, ctx| {
                let this = act.delivery();
                this.stall_timer = None;
                if let Some(event) = this.stall(ctx) {
                    act.emit(event);
                }
            }));
        }
    }

    /// `max_pause` is over and the shard is still held back: the handlers it waits for are marked
    /// stalled (they miss what finds their mailbox full, counted as drops, until they take the
    /// event they were last given) and the shard reads again. Waiting on would keep the shard deaf
    /// for as long as a hung handler hangs, with its zombie detection off.
    ///
    /// The stretch of pause ends here even if another handler fills up as the queue goes out (a
    /// second hung one): reads go on, and if they fill the queue again a new stretch begins, under
    /// a timer of its own. So no stretch lasts longer than `max_pause`, however many handlers hang,
    /// and between two the shard reads (a dead connection stays unnoticed for no longer).
    fn stall<A: Deliver>(&mut self, ctx: &mut Context<A>) -> Option<ShardEvent> {
        let since = self.behind_since?;
        if self.waits.is_empty() {
            self.drain(ctx);
            self.end_stretch();
            return None;
        }
        for mut wait in std::mem::take(&mut self.waits) {
            if let Some((dispatch, next)) = wait.then.take() {
                // It stays in the stalled handler's mailbox; the handlers after it get it now.
                self.pending.push_front(Pending {
                    dispatch,
                    from: next,
                    session: wait.session,
                });
            }
            self.stalled.push(wait);
        }
        let paused_for = since.elapsed();
        let pending = self.pending.len();
        tracing::warn!(
            parent: &self.span,
            pending,
            ?paused_for,
            stalled = self.stalled.len(),
            "handlers held the shard back for max_pause: reading again, dropping what finds a stalled handler's mailbox full until it catches up"
        );
        self.drain(ctx);
        self.end_stretch();
        Some(ShardEvent::HandlerStalled {
            shard: self.shard,
            pending,
            paused_for,
        })
    }

    /// Reads again after a stretch of pause that lasted `max_pause`, even if handlers still hold
    /// the queue back: the next event read past `max_pending` starts a new stretch.
    fn end_stretch(&mut self) {
        if self.reading.is_paused() {
            tracing::warn!(
                parent: &self.span,
                pending = self.pending.len(),
                waiting_for = self.waits.len(),
                "another handler is full as well: reading again all the same, for at most max_pause more if it stays full"
            );
            self.reading.set_paused(false);
            self.behind_since = None;
        }
    }

    /// Gives the handlers what the frames read so far produced, unless a full handler holds
    /// everything back.
    pub(crate) fn hand_over<A: Deliver>(&mut self, ctx: &mut Context<A>) {
        if !self.pending.is_empty() && self.waits.is_empty() {
            self.drain(ctx);
        }
    }

    /// Counts `count` deliveries missed, logging at most one line per [`DROP_LOG_EVERY`].
    fn missed<A: Deliver>(
        &mut self,
        count: u64,
        why: Missed,
        seq: u64,
        handler: usize,
        ctx: &mut Context<A>,
    ) {
        self.dropped += count;
        if self.drops.note(count) {
            tracing::warn!(
                parent: &self.span,
                seq,
                count,
                handler,
                reason = why.as_str(),
                dropped = self.dropped,
                "events not delivered to a handler (further drops are summed up every second)"
            );
            ctx.run_later(DROP_LOG_EVERY, |act, ctx| act.delivery().drop_summary(ctx));
        }
    }

    fn drop_summary<A: Deliver>(&mut self, ctx: &mut Context<A>) {
        if let Some(count) = self.drops.tick() {
            tracing::warn!(
                parent: &self.span,
                count,
                dropped = self.dropped,
                "events not delivered to handlers in the last second"
            );
            ctx.run_later(DROP_LOG_EVERY, |act, ctx| act.delivery().drop_summary(ctx));
        }
    }

    /// Offers the event to its handlers from the `from`-th on (and, the first time, adds it to its
    /// batch handlers' batches); on a full mailbox, waits for that handler to take it before
    /// anything else is offered.
    fn offer<A: Deliver>(&mut self, pending: Pending, ctx: &mut Context<A>) {
        let Pending {
            dispatch,
            from,
            session,
        } = pending;
        // One lookup of the event's handlers per offer.
        let route = self.router.route_of(dispatch.event());
        let seq = dispatch.seq();
        // Only the current session's events are tracked (and so move the stored sequence): an
        // event of an earlier session goes to its handlers unmarked.
        let current = session == self.session;
        if from == 0 {
            if current {
                self.offered = seq;
            }
            for &i in route.batched() {
                self.batches[i].push(dispatch.clone());
                if current {
                    let span = &mut self.batch_spans[i];
                    *span = Some((span.map_or(seq, |(first, _)| first), seq));
                }
            }
        }
        let drop_when_full = self.policy == SlowHandlers::Drop;
        let mut missed: Option<(u64, Missed, usize)> = None;
        let mut full = None;
        let ids = route.handler_ids();
        for (i, handler) in route.handlers().iter().enumerate().skip(from as usize) {
            let id = ids.get(i).map_or(usize::MAX, |&id| id as usize);
            let track = Some(id).filter(|&id| current && id != usize::MAX);
            let message = match track {
                Some(t) => dispatch.marked(self.tracks[t].mark(seq, seq)),
                None => dispatch.clone(),
            };
            let refused = match handler.try_send(message) {
                Ok(()) => continue,
                Err(refused) => refused,
            };
            if let Some(t) = track {
                self.tracks[t].unmark();
            }
            let why = match refused {
                SendError::Full(message) if drop_when_full => {
                    message.disarm();
                    Missed::Full
                }
                SendError::Full(message) => {
                    message.disarm();
                    // Looked at only when a mailbox is full: the common path pays nothing for it.
                    if !self.stalled.is_empty()
                        && self.stalled.iter().any(|w| w.handler.is_each(handler))
                    {
                        Missed::Stalled
                    } else {
                        full = Some((i, handler.clone(), track, id));
                        break;
                    }
                }
                SendError::Closed(message) => {
                    message.disarm();
                    Missed::Stopped
                }
            };
            let (count, _, _) = missed.get_or_insert((0, why, i));
            *count += 1;
        }
        if let Some((count, why, handler)) = missed {
            self.missed(count, why, dispatch.seq(), handler, ctx);
        }
        let Some((index, handler, track, id_of_handler)) = full else {
            return;
        };
        let id = self.next_wait;
        self.next_wait += 1;
        let message = match track {
            Some(t) => dispatch.marked(self.tracks[t].mark(seq, seq)),
            None => dispatch.clone(),
        };
        // `send` waits for room in the mailbox, then for the handler to have handled it.
        let wait = handler.send(message);
        self.waits.push(Wait {
            id,
            handler: Handler::Each(handler),
            track: id_of_handler,
            session,
            count: 1,
            then: Some((dispatch, index as u32 + 1)),
        });
        ctx.spawn(
            actix::fut::wrap_future::<_, A>(wait)
                .map(move |result, act, ctx| act.delivery().waited(id, result.is_ok(), ctx)),
        );
    }

    /// A wait for a full mailbox ended: the handler took the hand-over (`taken`) or stopped.
    fn waited<A: Deliver>(&mut self, id: u64, taken: bool, ctx: &mut Context<A>) {
        if let Some(at) = self.waits.iter().position(|w| w.id == id) {
            let mut wait = self.waits.swap_remove(at);
            let then = wait.then.take();
            if !taken {
                let seq = then.as_ref().map_or(0, |(d, _)| d.seq());
                let handler = wait.handler.index_for_log(then.as_ref());
                self.missed(wait.count, Missed::Stopped, seq, handler, ctx);
            }
            if let Some((dispatch, next)) = then {
                // Still of the session it came from: an event of an ended session must not be
                // tracked (and so move the stored sequence) as the new session's.
                self.pending.push_front(Pending {
                    dispatch,
                    from: next,
                    session: wait.session,
                });
            }
            self.drain(ctx);
        } else if let Some(at) = self.stalled.iter().position(|w| w.id == id) {
            // A handler given up on at a stall took what it was last given: it is back, and so is
            // backpressure for it.
            let wait = self.stalled.swap_remove(at);
            if taken {
                tracing::info!(
                    parent: &self.span,
                    stalled = self.stalled.len(),
                    "a stalled handler caught up: waiting for it again when it is full"
                );
            } else {
                self.missed(wait.count, Missed::Stopped, 0, 0, ctx);
            }
        }
    }

    /// Sends each batch handler the events gathered for it since the last hand-over.
    fn send_batches<A: Deliver>(&mut self, ctx: &mut Context<A>) {
        if self.batches.iter().all(Vec::is_empty) {
            return;
        }
        // The router's own recipients, not clones: a full mailbox parks that sender, which is what
        // makes later `try_send`s report it full (a fresh clone always gets one more in).
        let router = Arc::clone(&self.router);
        let each = router.each_handler_count();
        for i in 0..self.batches.len() {
            if self.batches[i].is_empty() {
                continue;
            }
            let mut batch = DispatchBatch::new(self.shard, std::mem::take(&mut self.batches[i]));
            let Some(handler) = router.batch_handler(i) else {
                continue;
            };
            let (first, count) = (batch.events()[0].seq(), batch.events().len() as u64);
            let track = each + i;
            let span = self.batch_spans[i].take();
            if let Some((from, to)) = span {
                batch = batch.marked(self.tracks[track].mark(from, to));
            }
            let refused = match handler.try_send(batch) {
                Ok(()) => continue,
                Err(SendError::Full(batch))
                    if self.policy != SlowHandlers::Drop
                        && !self.is_stalled(&Handler::Batch(i)) =>
                {
                    let id = self.next_wait;
                    self.next_wait += 1;
                    self.waits.push(Wait {
                        id,
                        handler: Handler::Batch(i),
                        track,
                        session: self.session,
                        count,
                        then: None,
                    });
                    ctx.spawn(actix::fut::wrap_future::<_, A>(handler.send(batch)).map(
                        move |result, act, ctx| act.delivery().waited(id, result.is_ok(), ctx),
                    ));
                    continue;
                }
                Err(refused) => refused,
            };
            if span.is_some() {
                self.tracks[track].unmark();
            }
            let why = match refused {
                SendError::Full(batch) => {
                    batch.disarm();
                    if self.policy == SlowHandlers::Drop {
                        Missed::Full
                    } else {
                        Missed::Stalled
                    }
                }
                SendError::Closed(batch) => {
                    batch.disarm();
                    Missed::Stopped
                }
            };
            self.missed(count, why, first, i, ctx);
        }
    }

    /// Hands over queued events until a full handler holds the rest back, sends the batches, and
    /// reads again once the queue is down to half of `max_pending`.
    pub(crate) fn drain<A: Deliver>(&mut self, ctx: &mut Context<A>) {
        while self.waits.is_empty() {
            let Some(pending) = self.pending.pop_front() else {
                // All handed over: an idle shard keeps no queue buffer.
                self.pending = VecDeque::new();
                break;
            };
            self.offer(pending, ctx);
        }
        self.send_batches(ctx);
        self.record(ctx);
        if self.behind_since.is_some() || self.reading.is_paused() {
            let resume_at = match self.policy {
                SlowHandlers::Backpressure { max_pending, .. } => max_pending / 2,
                SlowHandlers::Drop => usize::MAX,
            };
            if self.pending.len() <= resume_at {
                tracing::info!(
                    parent: &self.span,
                    pending = self.pending.len(),
                    "handlers caught up: reading again"
                );
                self.reading.set_paused(false);
                self.behind_since = None;
                if let Some(timer) = self.stall_timer.take() {
                    ctx.cancel_future(timer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_drop_is_logged_at_once_then_drops_are_summed_per_window() {
        let mut log = DropLog::default();
        assert!(log.note(1), "the first drop opens a window and is logged");
        assert!(!log.note(1));
        assert!(!log.note(5), "a dropped batch counts its events");
        assert_eq!(log.tick(), Some(6), "the window's summary");
        assert!(!log.note(2), "drops go on: still summed");
        assert_eq!(log.tick(), Some(2));
        assert_eq!(log.tick(), None, "a quiet window closes");
        assert!(
            log.note(1),
            "after a quiet window, a drop is logged at once again"
        );
    }
}
