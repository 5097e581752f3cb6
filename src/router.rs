//! Which handler actors get which events, and the [`Dispatch`] message they receive.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use actix::{Message, Recipient};
use bytes::Bytes;
use bytestring::ByteString;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::fast_hash::FastHash;
use crate::protocol::DataSpan;

/// One dispatch event (op 0), as handler actors receive it.
///
/// The event's `d` is kept as the raw bytes of the received frame, shared by reference count: cloning
/// a `Dispatch` for several handlers copies nothing, and nothing is deserialized until a handler asks.
///
/// ```
/// use shardline::Dispatch;
/// #[derive(serde::Deserialize)]
/// struct Message { content: String }
/// let frame = br#"{"op":0,"s":7,"t":"MESSAGE_CREATE","d":{"content":"hi","id":"1"}}"#;
/// let dispatch = Dispatch::from_frame(2, frame.to_vec().into()).unwrap();
/// assert_eq!((dispatch.shard(), dispatch.seq(), dispatch.event()), (2, 7, "MESSAGE_CREATE"));
/// assert_eq!(dispatch.parse::<Message>().unwrap().content, "hi");
/// assert_eq!(dispatch.data(), br#"{"content":"hi","id":"1"}"#);
/// ```
///
/// The `Dispatch` a shard hands a handler carries a mark that tells the shard when the handler is
/// done with the event: when that `Dispatch` is dropped (normally as `handle` returns). The shard's
/// stored sequence trails those marks, so a crash replays what a handler had not finished and loses
/// nothing. A clone carries no mark: keeping a clone does not hold the sequence back. A handler
/// that keeps the `Dispatch` itself for later work holds the sequence back until it drops it, and
/// should drop the events it keeps in the order it got them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatch {
    shard: u32,
    seq: u64,
    event: ByteString,
    frame: Bytes,
    span: DataSpan,
    /// Where `d` lies in `frame`, worked out the first time `d` is read.
    data: OnceLock<Range<usize>>,
    /// The gateway session the event belongs to, when it came through the event stream (the
    /// gateway path leaves it `None`: a shard's handlers know their session from READY).
    session: Option<Arc<str>>,
    /// Set only on the copy a shard hands to one handler (see [`Done`]).
    done: Option<Done>,
}

impl Clone for Dispatch {
    /// A copy of the event without the hand-over mark: a user's clone never counts as the
    /// handler's progress.
    fn clone(&self) -> Self {
        Self {
            shard: self.shard,
            seq: self.seq,
            event: self.event.clone(),
            frame: self.frame.clone(),
            span: self.span,
            data: self.data.clone(),
            session: self.session.clone(),
            done: None,
        }
    }
}

/// How far one handler got with the events one shard handed it: the sequence of the last message
/// (event or batch) it finished, written by the handler's thread as it drops the message and read by
/// the shard (see `shard::delivery`).
pub(crate) type Progress = Arc<AtomicU64>;

/// The mark a handed-over message carries: dropping it (once the handler is done with the message)
/// records the message's last sequence in the handler's [`Progress`].
pub(crate) struct Done {
    progress: Option<Progress>,
    seq: u64,
}

impl Done {
    pub(crate) fn new(progress: &Progress, seq: u64) -> Self {
        Self {
            progress: Some(Arc::clone(progress)),
            seq,
        }
    }

    /// The message never reached the handler (a full or closed mailbox gave it back): it records
    /// nothing.
    pub(crate) fn disarm(mut self) {
        self.progress = None;
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(progress) = &self.progress {
            // A plain store: a handler finishes its messages in order, so the last one dropped is the
            // furthest one.
            progress.store(self.seq, Ordering::Release);
        }
    }
}

impl Dispatch {
    /// A dispatch sharing `frame` (no copy); `d` is found in it only when read.
    pub(crate) fn new(
        shard: u32,
        seq: u64,
        event: ByteString,
        frame: Bytes,
        span: DataSpan,
    ) -> Self {
        Self {
            shard,
            seq,
            event,
            frame,
            span,
            data: OnceLock::new(),
            session: None,
            done: None,
        }
    }

    /// A copy of this event for one handler, marked: `done` records when the handler dropped it.
    pub(crate) fn marked(&self, done: Done) -> Self {
        let mut copy = self.clone();
        copy.done = Some(done);
        copy
    }

    /// Takes the mark back from a message that never reached its handler.
    pub(crate) fn disarm(mut self) {
        if let Some(done) = self.done.take() {
            done.disarm();
        }
    }

    /// A dispatch made of its parts: `data` is the raw JSON of `d`, and the whole of
    /// [`frame`](Self::frame) (there was no envelope around it). This is how events read back from
    /// the fleet's event stream ([`crate::fleet::stream`], feature `redis`) are rebuilt for handlers;
    /// it also suits tests.
    ///
    /// ```
    /// use shardline::Dispatch;
    /// let d = Dispatch::from_data(3, 41, "MESSAGE_CREATE", br#"{"id":"1"}"#.to_vec().into())
    ///     .with_session("abc");
    /// assert_eq!((d.shard(), d.seq(), d.event(), d.session()), (3, 41, "MESSAGE_CREATE", Some("abc")));
    /// assert_eq!(d.data(), br#"{"id":"1"}"#);
    /// ```
    pub fn from_data(shard: u32, seq: u64, event: impl Into<ByteString>, data: Bytes) -> Self {
        let len = data.len();
        let span = if len == 0 {
            DataSpan::Null
        } else {
            DataSpan::Exact(0, len)
        };
        let dispatch = Self::new(shard, seq, event.into(), data, span);
        let _ = dispatch.data.set(if len == 0 { 0..0 } else { 0..len });
        dispatch
    }

    /// The same dispatch, labelled with the gateway session it belongs to.
    pub fn with_session(mut self, session: impl Into<Arc<str>>) -> Self {
        self.session = Some(session.into());
        self
    }

    /// The id of the gateway session the event belongs to, for events read from the fleet's event
    /// stream: with [`shard`](Self::shard) and [`seq`](Self::seq) it names the event uniquely, so a
    /// handler that must not act twice on one event can remember `(shard, session, seq)`.
    /// `None` for events handed over by a shard of this process (which delivers each once).
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// Reads a whole received dispatch frame; `None` if it is not a dispatch with `s` and `t`.
    pub fn from_frame(shard: u32, frame: Bytes) -> Option<Self> {
        let env = crate::protocol::Envelope::parse(&frame).ok()?;
        if env.op != 0 {
            return None;
        }
        let seq = env.seq?;
        let event = event_name(&frame, env.event?)?;
        Some(Self::new(shard, seq, event, frame, env.data))
    }

    /// The id of the shard that received it.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Its sequence number within the shard's session.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The event name (`t`), e.g. `MESSAGE_CREATE`.
    pub fn event(&self) -> &str {
        &self.event
    }

    fn data_range(&self) -> Range<usize> {
        self.data
            .get_or_init(|| self.span.resolve(&self.frame).unwrap_or(0..0))
            .clone()
    }

    /// The raw JSON of `d`, exactly as received (`null` when it is absent).
    pub fn data(&self) -> &[u8] {
        let range = self.data_range();
        if range.is_empty() {
            b"null"
        } else {
            &self.frame[range]
        }
    }

    /// The raw JSON of `d` as shared bytes (a reference-count clone of the frame, no copy).
    pub fn data_bytes(&self) -> Bytes {
        let range = self.data_range();
        if range.is_empty() {
            Bytes::from_static(b"null")
        } else {
            self.frame.slice(range)
        }
    }

    /// The whole frame this event arrived in, as received (after decompression).
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// `d` as a borrowed, validated `RawValue`.
    pub fn raw(&self) -> Result<&RawValue, serde_json::Error> {
        self.parse_borrowed()
    }

    /// `d` deserialized into an owned type.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.parse_borrowed()
    }

    /// `d` deserialized into a type that borrows from the frame (e.g. `&str` fields).
    pub fn parse_borrowed<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        if let (None, DataSpan::Tail(start, end)) = (self.data.get(), self.span) {
            // Deserializing everything up to the closing brace only succeeds if `d` is one value
            // followed by nothing (serde refuses trailing characters): then `d` was the last key, and
            // its end needs no separate scan.
            let tail = self.frame.get(start..end).unwrap_or_default();
            if let Ok(value) = serde_json::from_slice(tail) {
                return Ok(value);
            }
        }
        serde_json::from_slice(self.data())
    }

    /// `d` as a lean view borrowed from the frame (see [`typed`](crate::typed)); an error if this
    /// dispatch is another event than the view's or `d` lacks what the view needs.
    ///
    /// ```
    /// use shardline::typed::TypingStart;
    /// let frame = br#"{"op":0,"s":4,"t":"TYPING_START","d":{"channel_id":"8","user_id":"7","timestamp":1715690096}}"#;
    /// let dispatch = shardline::Dispatch::from_frame(0, frame.to_vec().into()).unwrap();
    /// let typing = dispatch.view::<TypingStart>().unwrap();
    /// assert_eq!((typing.channel_id, typing.user_id, typing.guild_id), (8, 7, None));
    /// ```
    pub fn view<'a, V: crate::typed::View<'a>>(&'a self) -> Result<V, crate::typed::ViewError> {
        if self.event() != V::EVENT {
            return Err(crate::typed::ViewError::OtherEvent {
                expected: V::EVENT,
                found: self.event().to_owned(),
            });
        }
        // The tail-first read: `d` is not scanned for its end before serde reads it.
        self.parse_borrowed().map_err(crate::typed::ViewError::Json)
    }

    /// `d` as twilight-model's typed event (feature `twilight-model`): every field of every payload
    /// twilight-model knows, owned. Slower than a [view](Self::view); an error for an event name
    /// twilight-model does not know or a `d` it cannot read.
    ///
    /// ```
    /// use twilight_model::gateway::event::Event;
    /// let frame = br#"{"op":0,"s":5,"t":"MESSAGE_DELETE","d":{"id":"9","channel_id":"8"}}"#;
    /// let dispatch = shardline::Dispatch::from_frame(0, frame.to_vec().into()).unwrap();
    /// let Ok(Event::MessageDelete(deleted)) = dispatch.to_twilight() else { panic!() };
    /// assert_eq!((deleted.id.get(), deleted.channel_id.get()), (9, 8));
    /// ```
    #[cfg(feature = "twilight-model")]
    pub fn to_twilight(
        &self,
    ) -> Result<twilight_model::gateway::event::Event, crate::typed::TwilightError> {
        crate::typed::to_twilight(self.event(), self.data())
    }
}

/// The event name of a dispatch as shared bytes of the frame (or, if it held escapes, its own copy).
pub(crate) fn event_name(frame: &Bytes, name: crate::protocol::EventName) -> Option<ByteString> {
    match name {
        crate::protocol::EventName::Span(range) => ByteString::try_from(frame.slice(range)).ok(),
        crate::protocol::EventName::Owned(name) => Some(ByteString::from(name)),
    }
}

impl fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatch")
            .field("shard", &self.shard)
            .field("seq", &self.seq)
            .field("event", &&*self.event)
            .field("session", &self.session)
            .field("frame_bytes", &self.frame.len())
            .finish()
    }
}

/// Every event one shard read in one go that a batch handler wants, in sequence order.
///
/// A handler registered with [`ConfigBuilder::batch_handler`](crate::ConfigBuilder::batch_handler)
/// gets one of these per burst instead of one [`Dispatch`] per event. The events are the same
/// (shared, lazily parsed) dispatches; the difference is one mailbox message and one wakeup of the
/// handler's thread per burst, which is most of what delivering a small event costs when events come
/// by the thousand.
///
/// Like a [`Dispatch`], the batch a shard hands a handler carries a mark: the handler is done with
/// the whole batch when the batch is dropped, or, after [`into_events`](Self::into_events), when
/// its last event is. A clone carries no mark.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DispatchBatch {
    shard: u32,
    events: Vec<Dispatch>,
    done: Option<Done>,
}

impl Clone for DispatchBatch {
    /// A copy without the hand-over mark (see [`Dispatch`]'s `clone`).
    fn clone(&self) -> Self {
        Self {
            shard: self.shard,
            events: self.events.clone(),
            done: None,
        }
    }
}

impl fmt::Debug for Done {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Done").field("seq", &self.seq).finish()
    }
}

impl DispatchBatch {
    /// A batch of `events` read by `shard`.
    pub fn new(shard: u32, events: Vec<Dispatch>) -> Self {
        Self {
            shard,
            events,
            done: None,
        }
    }

    /// This batch, marked: `done` records when the handler dropped it.
    pub(crate) fn marked(mut self, done: Done) -> Self {
        self.done = Some(done);
        self
    }

    /// Takes the mark back from a batch that never reached its handler.
    pub(crate) fn disarm(mut self) {
        if let Some(done) = self.done.take() {
            done.disarm();
        }
    }

    /// The id of the shard that received the events.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// The events, in sequence order.
    pub fn events(&self) -> &[Dispatch] {
        &self.events
    }

    /// The events, owned. The batch's hand-over mark moves to the last event: the handler is done
    /// with the batch once it has dropped that one.
    pub fn into_events(mut self) -> Vec<Dispatch> {
        let mut events = std::mem::take(&mut self.events);
        if let (Some(done), Some(last)) = (self.done.take(), events.last_mut()) {
            last.done = Some(done);
        }
        events
    }
}

/// Lets a per-event handler actor take a burst of events as one mailbox message: implements
/// `Handler<DispatchBatch>` for the actor by running its own `Handler<Dispatch>` for each event of
/// the batch, in order. Register the actor with
/// [`batch_handler`](crate::ConfigBuilder::batch_handler) (or `batch_handler_all`) and its
/// per-event code runs exactly as it would as a [`handler`](crate::ConfigBuilder::handler): each
/// event once, in order. What changes is the delivery: one mailbox message, and one wakeup of
/// the handler's thread, per burst a shard read instead of per event, which is most of what
/// delivering a small event to another thread costs (BENCHMARKS.md, "flood").
///
/// The actor's `Handler<Dispatch>` must answer `()` (a handler whose answer is a future would
/// have it dropped).
///
/// ```
/// use actix::prelude::*;
/// use shardline::{Config, Dispatch};
///
/// struct Messages;
/// impl Actor for Messages { type Context = Context<Self>; }
/// impl Handler<Dispatch> for Messages {
///     type Result = ();
///     fn handle(&mut self, event: Dispatch, _: &mut Context<Self>) {
///         println!("{}", event.seq());
///     }
/// }
/// shardline::handles_bursts!(Messages);
///
/// # actix_rt::System::new().block_on(async {
/// let config = Config::builder("token")
///     .batch_handler("MESSAGE_CREATE", Messages.start().recipient())
///     .build()
///     .unwrap();
/// # });
/// ```
#[macro_export]
macro_rules! handles_bursts {
    ($actor:ty) => {
        impl ::actix::Handler<$crate::DispatchBatch> for $actor {
            type Result = ();
            fn handle(
                &mut self,
                batch: $crate::DispatchBatch,
                ctx: &mut <Self as ::actix::Actor>::Context,
            ) {
                // Taken apart, so the batch's hand-over mark rides on its last event, dropped last.
                for event in batch.into_events() {
                    let () = <Self as ::actix::Handler<$crate::Dispatch>>::handle(self, event, ctx);
                }
            }
        }
    };
}

/// The handlers of one event name (or of every event).
#[derive(Clone, Default)]
pub(crate) struct Route {
    each: Box<[Recipient<Dispatch>]>,
    /// For each of `each`, its index in [`Router::each_handler_count`]'s numbering (set by
    /// [`Router::finish`]).
    ids: Box<[u32]>,
    /// Indices into [`Router::batch`].
    batched: Box<[usize]>,
}

impl Route {
    /// The per-event handlers.
    pub(crate) fn handlers(&self) -> &[Recipient<Dispatch>] {
        &self.each
    }

    /// The router-wide number of each of [`handlers`](Self::handlers), in the same order.
    pub(crate) fn handler_ids(&self) -> &[u32] {
        &self.ids
    }

    /// The batch handlers, as indices for [`Router::batch_handler`].
    pub(crate) fn batched(&self) -> &[usize] {
        &self.batched
    }
}

fn push_unique<T: PartialEq + Clone>(list: &mut Box<[T]>, item: T) {
    if !list.contains(&item) {
        let mut v = Vec::from(std::mem::take(list));
        v.push(item);
        *list = v.into();
    }
}

/// Registers the handlers of one arbiter thread (see
/// [`ConfigBuilder::handlers_per_thread`](crate::ConfigBuilder::handlers_per_thread)).
pub(crate) type ThreadSetup = Arc<dyn Fn(&mut ThreadHandlers) + Send + Sync>;

/// The handlers of the shards of one arbiter thread, as a
/// [`handlers_per_thread`](crate::ConfigBuilder::handlers_per_thread) setup registers them.
///
/// The setup runs on that thread, so an actor it starts (`Actor::start`) runs there too, beside the
/// shards it hears from. The rules are [`Router`]'s: these handlers get the events of this thread's
/// shards on top of the handlers registered for every shard.
pub struct ThreadHandlers {
    router: Router,
}

impl ThreadHandlers {
    /// Registers a handler for one event name on this thread's shards.
    pub fn handler(&mut self, event: &str, handler: Recipient<Dispatch>) -> &mut Self {
        self.router.add(event, handler);
        self
    }

    /// Registers a handler for every event on this thread's shards.
    pub fn handler_all(&mut self, handler: Recipient<Dispatch>) -> &mut Self {
        self.router.add_all(handler);
        self
    }

    /// Registers a batch handler for one event name on this thread's shards.
    pub fn batch_handler(&mut self, event: &str, handler: Recipient<DispatchBatch>) -> &mut Self {
        self.router.add_batch(event, handler);
        self
    }

    /// Registers a batch handler for every event on this thread's shards.
    pub fn batch_handler_all(&mut self, handler: Recipient<DispatchBatch>) -> &mut Self {
        self.router.add_batch_all(handler);
        self
    }
}

thread_local! {
    // Per router (by id), the router with this thread's own handlers: kept for the thread's life,
    // so a shard restarted here finds the handlers (and their state) its predecessor used.
    static THREAD_ROUTERS: RefCell<Vec<(u64, Arc<Router>)>> = const { RefCell::new(Vec::new()) };
}

/// The handlers registered for events, fixed when the runtime starts.
///
/// An event reaches every handler registered for its name and every catch-all handler, each once (a
/// handler registered both ways gets it once). Events no one registered for go to the catch-all
/// handlers; with none, they are dropped right after the envelope is read. Batch handlers follow the
/// same rules and get the events of a burst in one [`DispatchBatch`]. Handlers registered per shard
/// thread are not in these lists (each shard thread routes with a copy that adds its own), so
/// [`route`](Self::route) and the lookups here see only the handlers shared by every shard.
#[derive(Clone, Default)]
pub struct Router {
    by_event: HashMap<Box<str>, Route, FastHash>,
    all: Route,
    batch: Vec<Recipient<DispatchBatch>>,
    /// How many distinct per-event handlers the routes hold (numbered by [`Route::handler_ids`]).
    each_count: usize,
    /// Setups of per-thread handlers, run on each shard thread by [`Router::for_this_thread`].
    per_thread: Vec<ThreadSetup>,
    /// Tells this router's per-thread copies apart from another's on the same thread.
    id: u64,
}

impl Router {
    /// A router with `handlers` per event name and `all` for every event (as the config builds it).
    ///
    /// ```
    /// # actix_rt::System::new().block_on(async {
    /// use actix::prelude::*;
    /// use shardline::{Dispatch, Router};
    /// struct Count(usize);
    /// impl Actor for Count { type Context = Context<Self>; }
    /// impl Handler<Dispatch> for Count { type Result = (); fn handle(&mut self, _: Dispatch, _: &mut Context<Self>) { self.0 += 1; } }
    /// let counter = Count(0).start();
    /// let router = Router::new([("MESSAGE_CREATE", counter.clone().recipient())], []);
    /// let frame = br#"{"op":0,"s":1,"t":"MESSAGE_CREATE","d":{}}"#;
    /// assert_eq!(router.route(Dispatch::from_frame(0, frame.to_vec().into()).unwrap()), 1);
    /// # });
    /// ```
    pub fn new<'a>(
        handlers: impl IntoIterator<Item = (&'a str, Recipient<Dispatch>)>,
        all: impl IntoIterator<Item = Recipient<Dispatch>>,
    ) -> Self {
        let mut router = Self::default();
        for (event, handler) in handlers {
            router.add(event, handler);
        }
        for handler in all {
            router.add_all(handler);
        }
        router.finish()
    }

    /// Sends `dispatch` to every handler of its event without waiting (a full mailbox still takes
    /// it: this is `do_send`, for tests and tools; shards deliver with backpressure). Batch handlers
    /// get it as a batch of one. Returns how many handlers it went to.
    pub fn route(&self, dispatch: Dispatch) -> usize {
        let route = self.route_of(dispatch.event());
        let batched = route.batched();
        for &i in batched {
            self.batch[i].do_send(DispatchBatch::new(dispatch.shard, vec![dispatch.clone()]));
        }
        let handlers = route.handlers();
        if let Some((last, rest)) = handlers.split_last() {
            for handler in rest {
                handler.do_send(dispatch.clone());
            }
            last.do_send(dispatch);
        }
        handlers.len() + batched.len()
    }

    /// Hands `events` to their handlers as a shard would (same routing rules; batch handlers get
    /// each shard's run of consecutive events as one [`DispatchBatch`]) and waits until every
    /// handler has handled what it was sent. Each handler gets its events in the order given, one
    /// at a time; different handlers run at once. Handlers registered per shard thread are not
    /// included (they belong to the shard threads).
    ///
    /// Returns the indices (ascending) of the events that some handler did not handle because it
    /// had stopped: for a caller that acknowledges events, the ones not to acknowledge.
    ///
    /// ```
    /// # actix_rt::System::new().block_on(async {
    /// use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
    /// use actix::prelude::*;
    /// use shardline::{Dispatch, Router};
    /// struct Count(Arc<AtomicUsize>);
    /// impl Actor for Count { type Context = Context<Self>; }
    /// impl Handler<Dispatch> for Count {
    ///     type Result = ();
    ///     fn handle(&mut self, _: Dispatch, _: &mut Context<Self>) { self.0.fetch_add(1, Ordering::SeqCst); }
    /// }
    /// let handled = Arc::new(AtomicUsize::new(0));
    /// let router = Router::new([("MESSAGE_CREATE", Count(handled.clone()).start().recipient())], []);
    /// let event = Dispatch::from_data(0, 1, "MESSAGE_CREATE", b"{}".to_vec().into());
    /// let not_handled = router.deliver(&[event.clone(), event]).await;
    /// // Both were handled by the time `deliver` returned.
    /// assert!(not_handled.is_empty());
    /// assert_eq!(handled.load(Ordering::SeqCst), 2);
    /// # });
    /// ```
    pub async fn deliver(&self, events: &[Dispatch]) -> Vec<usize> {
        // Per handler, the indices of its events, in order.
        let mut each: Vec<(&Recipient<Dispatch>, Vec<usize>)> = Vec::new();
        let mut batched: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let route = self.route_of(event.event());
            for handler in route.handlers() {
                match each.iter_mut().find(|(h, _)| *h == handler) {
                    Some((_, list)) => list.push(i),
                    None => each.push((handler, vec![i])),
                }
            }
            for &b in route.batched() {
                match batched.iter_mut().find(|(h, _)| *h == b) {
                    Some((_, list)) => list.push(i),
                    None => batched.push((b, vec![i])),
                }
            }
        }
        let mut work: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Vec<usize>> + '_>>> =
            Vec::with_capacity(each.len() + batched.len());
        for (handler, list) in each {
            work.push(Box::pin(async move {
                let mut failed = Vec::new();
                for i in list {
                    if handler.send(events[i].clone()).await.is_err() {
                        failed.push(i);
                    }
                }
                failed
            }));
        }
        for (b, list) in batched {
            let Some(handler) = self.batch.get(b) else {
                continue;
            };
            work.push(Box::pin(async move {
                let mut failed = Vec::new();
                for run in list.chunk_by(|&x, &y| events[x].shard == events[y].shard) {
                    let batch: Vec<Dispatch> = run.iter().map(|&i| events[i].clone()).collect();
                    let shard = events[run[0]].shard;
                    if handler
                        .send(DispatchBatch::new(shard, batch))
                        .await
                        .is_err()
                    {
                        failed.extend_from_slice(run);
                    }
                }
                failed
            }));
        }
        let mut failed: Vec<usize> = futures_util::future::join_all(work)
            .await
            .into_iter()
            .flatten()
            .collect();
        failed.sort_unstable();
        failed.dedup();
        failed
    }

    /// Adds a handler for one event name.
    pub(crate) fn add(&mut self, event: &str, handler: Recipient<Dispatch>) {
        crate::protocol::events::warn_if_unknown(event);
        let route = self.by_event.entry(event.into()).or_default();
        push_unique(&mut route.each, handler);
    }

    /// Adds a handler for every event.
    pub(crate) fn add_all(&mut self, handler: Recipient<Dispatch>) {
        push_unique(&mut self.all.each, handler);
    }

    fn batch_index(&mut self, handler: Recipient<DispatchBatch>) -> usize {
        match self.batch.iter().position(|h| *h == handler) {
            Some(i) => i,
            None => {
                self.batch.push(handler);
                self.batch.len() - 1
            }
        }
    }

    /// Adds a batch handler for one event name.
    pub(crate) fn add_batch(&mut self, event: &str, handler: Recipient<DispatchBatch>) {
        crate::protocol::events::warn_if_unknown(event);
        let i = self.batch_index(handler);
        let route = self.by_event.entry(event.into()).or_default();
        push_unique(&mut route.batched, i);
    }

    /// Adds a batch handler for every event.
    pub(crate) fn add_batch_all(&mut self, handler: Recipient<DispatchBatch>) {
        let i = self.batch_index(handler);
        push_unique(&mut self.all.batched, i);
    }

    /// Adds a setup of per-thread handlers.
    pub(crate) fn add_per_thread(&mut self, setup: ThreadSetup) {
        self.per_thread.push(setup);
    }

    /// The router for the shards of the current thread: this one, or, if per-thread handlers are
    /// registered, a copy with the handlers the setups register here (made the first time a shard of
    /// this router starts on the thread, and kept for the thread's life).
    pub(crate) fn for_this_thread(self: &Arc<Self>) -> Arc<Router> {
        if self.per_thread.is_empty() {
            return Arc::clone(self);
        }
        let known = THREAD_ROUTERS.with_borrow(|routers| {
            routers
                .iter()
                .find(|(id, _)| *id == self.id)
                .map(|(_, router)| Arc::clone(router))
        });
        if let Some(router) = known {
            return router;
        }
        let mut handlers = ThreadHandlers {
            router: Router {
                per_thread: Vec::new(),
                ..(**self).clone()
            },
        };
        // No borrow of the thread's list is held here: a setup may start actors, which may do anything.
        for setup in &self.per_thread {
            setup(&mut handlers);
        }
        // Folding again is safe (each handler is added once) and brings the catch-all handlers,
        // shared or this thread's, into the names only this thread's handlers added.
        let router = Arc::new(handlers.router.finish());
        THREAD_ROUTERS.with_borrow_mut(|routers| routers.push((self.id, Arc::clone(&router))));
        router
    }

    /// Folds the catch-all handlers into every named list, so routing is one lookup.
    pub(crate) fn finish(mut self) -> Self {
        if !self.per_thread.is_empty() && self.id == 0 {
            static NEXT_ID: AtomicU64 = AtomicU64::new(1);
            self.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        }
        for route in self.by_event.values_mut() {
            for handler in self.all.each.iter() {
                push_unique(&mut route.each, handler.clone());
            }
            for &i in self.all.batched.iter() {
                push_unique(&mut route.batched, i);
            }
        }
        // Number the distinct per-event handlers, so a shard can keep per handler how far it got.
        let mut distinct: Vec<Recipient<Dispatch>> = Vec::new();
        for route in self
            .by_event
            .values_mut()
            .chain(std::iter::once(&mut self.all))
        {
            route.ids = route
                .each
                .iter()
                .map(|handler| match distinct.iter().position(|h| h == handler) {
                    Some(i) => i as u32,
                    None => {
                        distinct.push(handler.clone());
                        distinct.len() as u32 - 1
                    }
                })
                .collect();
        }
        self.each_count = distinct.len();
        self
    }

    /// How many distinct per-event handlers there are.
    pub(crate) fn each_handler_count(&self) -> usize {
        self.each_count
    }

    /// Every handler of `event`, per-event and batch, from one lookup.
    pub(crate) fn route_of(&self, event: &str) -> &Route {
        self.by_event.get(event).unwrap_or(&self.all)
    }

    /// The handlers for `event`.
    pub fn handlers(&self, event: &str) -> &[Recipient<Dispatch>] {
        &self.route_of(event).each
    }

    /// The batch handlers for `event`, as indices for [`Router::batch_handler`].
    pub fn batch_handlers(&self, event: &str) -> &[usize] {
        &self.route_of(event).batched
    }

    /// The `i`-th batch handler.
    pub fn batch_handler(&self, i: usize) -> Option<&Recipient<DispatchBatch>> {
        self.batch.get(i)
    }

    /// How many batch handlers there are.
    pub fn batch_handler_count(&self) -> usize {
        self.batch.len()
    }

    /// Whether any handler wants `event`.
    pub fn wants(&self, event: &str) -> bool {
        let route = self.route_of(event);
        !route.each.is_empty() || !route.batched.is_empty()
    }

    /// Whether no handler is registered at all.
    pub fn is_empty(&self) -> bool {
        self.by_event.is_empty()
            && self.all.each.is_empty()
            && self.all.batched.is_empty()
            && self.per_thread.is_empty()
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut events: Vec<_> = self
            .by_event
            .iter()
            .map(|(k, v)| (&**k, v.each.len(), v.batched.len()))
            .collect();
        events.sort();
        f.debug_struct("Router")
            .field("by_event", &events)
            .field("all", &self.all.each.len())
            .field("batch_all", &self.all.batched.len())
            .field("per_thread_setups", &self.per_thread.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use actix::{Actor, ActorContext, Context, Handler};

    use super::*;

    struct Sink;
    impl Actor for Sink {
        type Context = Context<Self>;
    }
    impl Handler<Dispatch> for Sink {
        type Result = ();
        fn handle(&mut self, _: Dispatch, _: &mut Context<Self>) {}
    }

    /// Each batch a handler got, as (shard, seqs).
    type Seen = Arc<std::sync::Mutex<Vec<(u32, Vec<u64>)>>>;

    /// Records each batch it gets.
    struct Batches(Seen);
    impl Actor for Batches {
        type Context = Context<Self>;
    }
    impl Handler<DispatchBatch> for Batches {
        type Result = ();
        fn handle(&mut self, batch: DispatchBatch, _: &mut Context<Self>) {
            let seqs = batch.events().iter().map(Dispatch::seq).collect();
            if let Ok(mut seen) = self.0.lock() {
                seen.push((batch.shard(), seqs));
            }
        }
    }

    /// Stops as soon as it starts.
    struct Gone;
    impl Actor for Gone {
        type Context = Context<Self>;
        fn started(&mut self, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }
    impl Handler<Dispatch> for Gone {
        type Result = ();
        fn handle(&mut self, _: Dispatch, _: &mut Context<Self>) {}
    }

    #[test]
    fn deliver_gives_batch_handlers_each_shards_run_and_reports_what_a_stopped_handler_missed() {
        actix_rt::System::new().block_on(async {
            let seen = Seen::default();
            let gone = Gone.start();
            while gone.connected() {
                actix_rt::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let mut router = Router::default();
            router.add_batch_all(Batches(seen.clone()).start().recipient());
            router.add("MESSAGE_CREATE", gone.recipient());
            let router = router.finish();
            let event = |shard, seq, name: &'static str| {
                Dispatch::from_data(shard, seq, name, Bytes::from_static(b"{}"))
            };
            let events = [
                event(0, 1, "TYPING_START"),
                event(0, 2, "MESSAGE_CREATE"),
                event(1, 7, "TYPING_START"),
                event(0, 3, "TYPING_START"),
            ];
            assert_eq!(router.deliver(&events).await, vec![1]);
            // Handled by the time deliver returned, one batch per run of one shard's events.
            assert_eq!(
                *seen.lock().unwrap(),
                vec![(0, vec![1, 2]), (1, vec![7]), (0, vec![3])]
            );
        });
    }

    #[test]
    fn per_thread_handlers_are_made_once_per_thread_and_folded_with_the_shared_ones() {
        let setups = Arc::new(AtomicUsize::new(0));
        let router = actix_rt::System::new().block_on(async {
            let mut router = Router::default();
            router.add_all(Sink.start().recipient());
            router.add("GUILD_CREATE", Sink.start().recipient());
            let s = setups.clone();
            router.add_per_thread(Arc::new(move |thread: &mut ThreadHandlers| {
                s.fetch_add(1, Ordering::Relaxed);
                thread.handler("MESSAGE_CREATE", Sink.start().recipient());
            }));
            Arc::new(router.finish())
        });
        // The shared router knows nothing of the per-thread handlers.
        assert_eq!(router.handlers("MESSAGE_CREATE").len(), 1);
        let on_this = |router: &Arc<Router>| {
            actix_rt::System::new().block_on(async {
                let here = router.for_this_thread();
                assert!(Arc::ptr_eq(&here, &router.for_this_thread()), "made once");
                // Its own handler plus the shared catch-all; other names keep the shared ones.
                assert_eq!(here.handlers("MESSAGE_CREATE").len(), 2);
                assert_eq!(here.handlers("GUILD_CREATE").len(), 2);
                assert_eq!(here.handlers("TYPING_START").len(), 1);
                here
            })
        };
        let here = on_this(&router);
        let r = router.clone();
        let there = std::thread::spawn(move || on_this(&r)).join().unwrap();
        assert!(!Arc::ptr_eq(&here, &there), "each thread has its own");
        assert_eq!(setups.load(Ordering::Relaxed), 2);
    }
}
