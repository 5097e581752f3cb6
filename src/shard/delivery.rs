//! Handing a shard's events to its handler actors: the queue of events waiting for a handler with
//! a full mailbox, the batches for batch handlers, the slow-handler policy and the decision to stop
//! reading the socket while handlers are behind.
//!
//! The shard actor owns one [`Delivery`] and calls it; the waits it starts run on the actor's
//! context and come back to it through [`Deliver`].

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use actix::dev::SendError;
use actix::prelude::*;

use crate::config::SlowHandlers;
use crate::router::{Dispatch, DispatchBatch, Router};
use crate::session::SessionStore;
use crate::shard::pause::PauseGate;

/// Events queued before they are handed over even though the read batch is not done.
const FLUSH_AT: usize = 64;

/// An actor that delivers its events through a [`Delivery`] it owns.
pub(crate) trait Deliver: Actor<Context = Context<Self>> {
    /// The actor's delivery state.
    fn delivery(&mut self) -> &mut Delivery;
}

/// One shard's delivery state.
pub(crate) struct Delivery {
    shard: u32,
    policy: SlowHandlers,
    sessions: Arc<dyn SessionStore>,
    /// The handlers of this shard's thread: the shared ones plus its thread's own.
    router: Arc<Router>,
    /// Events waiting for handlers, with the index of the next handler to offer each to.
    pending: VecDeque<(Dispatch, usize)>,
    /// Hand-overs waiting for room in a full handler's mailbox; nothing else is offered meanwhile.
    waiting: u32,
    /// Per batch handler (by router index), the events of the current hand-over.
    batches: Vec<Vec<Dispatch>>,
    dropped: u64,
    reading: Rc<PauseGate>,
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
        Self {
            shard,
            policy,
            sessions,
            router,
            pending: VecDeque::new(),
            waiting: 0,
            batches,
            dropped: 0,
            reading: Rc::new(PauseGate::default()),
            span,
        }
    }

    /// The gate the shard's socket reader waits behind while handlers are behind.
    pub(crate) fn gate(&self) -> Rc<PauseGate> {
        Rc::clone(&self.reading)
    }

    /// Whether reading is paused because handlers are behind.
    pub(crate) fn reading_paused(&self) -> bool {
        self.reading.is_paused()
    }

    /// Events received but not yet handed to every handler.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Deliveries dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Queues `dispatch` for its handlers. The hand-over happens once the frames already received are
    /// handled (the actor's read loop calls [`hand_over`](Self::hand_over)), not per event: a handler
    /// on another thread is then woken once per burst rather than once per event, which is most of
    /// the cost of delivering a small event.
    pub(crate) fn deliver<A: Deliver>(&mut self, dispatch: Dispatch, ctx: &mut Context<A>) {
        self.pending.push_back((dispatch, 0));
        if self.waiting > 0 {
            if let SlowHandlers::Backpressure { max_pending } = self.policy {
                if self.pending.len() >= max_pending && !self.reading.is_paused() {
                    tracing::warn!(
                        parent: &self.span,
                        max_pending,
                        "handlers are behind: pausing reads until they catch up"
                    );
                    self.reading.set_paused(true);
                }
            }
            // The handler that blocks hands over the rest when it takes its event.
            return;
        }
        let flush_at = match self.policy {
            SlowHandlers::Backpressure { max_pending } => max_pending.min(FLUSH_AT),
            SlowHandlers::Drop => FLUSH_AT,
        };
        if self.pending.len() >= flush_at {
            self.drain(ctx);
        }
        // Otherwise the read loop hands the batch over when it has read what is there.
    }

    /// Gives the handlers what the frames read so far produced, unless a full handler holds
    /// everything back.
    pub(crate) fn hand_over<A: Deliver>(&mut self, ctx: &mut Context<A>) {
        if !self.pending.is_empty() && self.waiting == 0 {
            self.drain(ctx);
        }
    }

    /// Offers `dispatch` to its handlers from the `from`-th on (and, the first time, adds it to its
    /// batch handlers' batches); on a full mailbox, waits for that handler to take it before
    /// anything else is offered.
    fn offer<A: Deliver>(&mut self, dispatch: Dispatch, from: usize, ctx: &mut Context<A>) {
        // One lookup of the event's handlers per offer.
        let route = self.router.route_of(dispatch.event());
        if from == 0 {
            // Recorded as the event is handed over, not when it is queued: a shard restarted from
            // the store resumes after the last event that left this queue, so what is still queued
            // here when the actor dies is replayed rather than lost.
            self.sessions.set_seq(self.shard, dispatch.seq());
            for &i in route.batched() {
                self.batches[i].push(dispatch.clone());
            }
        }
        let drop_when_full = self.policy == SlowHandlers::Drop;
        let Some(full) = route.offer(&dispatch, from, drop_when_full, &mut self.dropped) else {
            return;
        };
        let Some(handler) = route.handlers().get(full).cloned() else {
            return;
        };
        self.waiting += 1;
        // `send` waits for room in the mailbox, then for the handler to have handled it.
        let wait = handler.send(dispatch.clone());
        ctx.spawn(
            actix::fut::wrap_future::<_, A>(wait).map(move |result, act, ctx| {
                let this = act.delivery();
                if result.is_err() {
                    this.dropped += 1;
                    tracing::warn!(parent: &this.span, seq = dispatch.seq(), "handler stopped before taking the event");
                }
                this.waiting -= 1;
                this.pending.push_front((dispatch, full + 1));
                this.drain(ctx);
            }),
        );
    }

    /// Sends each batch handler the events gathered for it since the last hand-over.
    fn send_batches<A: Deliver>(&mut self, ctx: &mut Context<A>) {
        if self.batches.iter().all(Vec::is_empty) {
            return;
        }
        // The router's own recipients, not clones: a full mailbox parks that sender, which is what
        // makes later `try_send`s report it full (a fresh clone always gets one more in).
        let router = Arc::clone(&self.router);
        for i in 0..self.batches.len() {
            if self.batches[i].is_empty() {
                continue;
            }
            let batch = DispatchBatch::new(self.shard, std::mem::take(&mut self.batches[i]));
            let Some(handler) = router.batch_handler(i) else {
                continue;
            };
            let (first, count) = (batch.events()[0].seq(), batch.events().len() as u64);
            match handler.try_send(batch) {
                Ok(()) => {}
                Err(SendError::Full(batch)) if self.policy != SlowHandlers::Drop => {
                    self.waiting += 1;
                    ctx.spawn(actix::fut::wrap_future::<_, A>(handler.send(batch)).map(
                        move |result, act, ctx| {
                            let this = act.delivery();
                            if result.is_err() {
                                this.dropped += count;
                                tracing::warn!(parent: &this.span, first_seq = first, count, "batch handler stopped before taking the events");
                            }
                            this.waiting -= 1;
                            this.drain(ctx);
                        },
                    ));
                }
                Err(SendError::Full(_)) => {
                    self.dropped += count;
                    tracing::warn!(parent: &self.span, first_seq = first, count, handler = i, dropped = self.dropped, "batch handler mailbox full: events dropped for this handler");
                }
                Err(SendError::Closed(_)) => {
                    self.dropped += count;
                    tracing::warn!(parent: &self.span, first_seq = first, count, handler = i, dropped = self.dropped, "batch handler has stopped: events not delivered to it");
                }
            }
        }
    }

    /// Hands over queued events until a full handler holds the rest back, sends the batches, and
    /// reads again once the queue is down to half of `max_pending`.
    pub(crate) fn drain<A: Deliver>(&mut self, ctx: &mut Context<A>) {
        while self.waiting == 0 {
            let Some((dispatch, from)) = self.pending.pop_front() else {
                // All handed over: an idle shard keeps no queue buffer.
                self.pending = VecDeque::new();
                break;
            };
            self.offer(dispatch, from, ctx);
        }
        self.send_batches(ctx);
        if self.reading.is_paused() {
            let resume_at = match self.policy {
                SlowHandlers::Backpressure { max_pending } => max_pending / 2,
                SlowHandlers::Drop => usize::MAX,
            };
            if self.pending.len() <= resume_at {
                tracing::info!(
                    parent: &self.span,
                    pending = self.pending.len(),
                    "handlers caught up: reading again"
                );
                self.reading.set_paused(false);
            }
        }
    }
}
