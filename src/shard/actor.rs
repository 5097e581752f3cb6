//! The `ShardActor`: the thin IO shell around [`ShardState`]. It owns the awc websocket, the
//! inflater, the timers, the command limiter and the reconnect backoff; it feeds the state machine
//! and carries out its actions.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::io::{SinkWrite, WriteHandler};
use actix::prelude::*;
use actix_codec::Framed;
use actix_http::ws::Item;
use awc::ws::{CloseCode as WsCloseCode, CloseReason, Codec, Frame, Message as WsMessage};
use awc::BoxedSocket;
use bytes::{Bytes, BytesMut};
use futures_util::stream::StreamExt;

use crate::config::{Compression, Limits, SlowHandlers, Timeouts};
use crate::error::FatalError;
use crate::event::ShardEvent;
use crate::protocol::{CommandError, Envelope};
use crate::queue::IdentifyQueue;
use crate::router::{Dispatch, DispatchBatch, Router};
use crate::session::SessionStore;
use crate::shard::backoff::ReconnectBackoff;
use crate::shard::heartbeat_grid;
use crate::shard::inflate::Inflater;
use crate::shard::limiter::CommandLimiter;
use crate::shard::messages::{GetStatus, SendCommand, ShardNotice, ShardStatus, Shutdown};
use crate::shard::pause::{Pausable, PauseGate};
use crate::shard::state::{Action, IdentifyParams, Phase, SendKind, ShardState};
use actix::dev::SendError;

type WsSink = crate::shard::framing::Writer;

/// How long a closed connection may take to finish its close handshake before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What every shard of one bot shares.
pub(crate) struct ShardShared {
    pub params: Arc<IdentifyParams>,
    pub compression: Compression,
    pub slow_handlers: SlowHandlers,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub backoff: crate::config::Backoff,
    pub command_limit: (u32, Duration),
    pub router: Arc<Router>,
    pub sessions: Arc<dyn SessionStore>,
    pub queue: Arc<dyn IdentifyQueue>,
    pub events: Vec<Recipient<ShardEvent>>,
    /// Permits for handshakes in flight (`Limits::concurrent_handshakes`).
    pub handshakes: Arc<tokio::sync::Semaphore>,
}

thread_local! {
    // awc's client is not Send: one per arbiter thread. Its connector's default limit of 100
    // connections would hold shard 101 back forever, since a websocket keeps its slot for life.
    static CLIENT: awc::Client = awc::Client::builder()
        .connector(awc::Connector::new().limit(0))
        .max_http_version(awc::http::Version::HTTP_11)
        .disable_timeout()
        .finish();
}

/// A connection's transport decompression (docs/protocol.md §6): a fresh context per connection.
enum Decompressor {
    None,
    Zlib(Inflater),
    #[cfg(feature = "zstd")]
    Zstd(Result<crate::shard::zstd_stream::ZstdStream, crate::shard::inflate::InflateError>),
}

impl Decompressor {
    fn new(compression: Compression, max_output: usize) -> Self {
        match compression {
            Compression::None => Self::None,
            Compression::ZlibStream => Self::Zlib(Inflater::new(max_output)),
            #[cfg(feature = "zstd")]
            Compression::ZstdStream => {
                Self::Zstd(crate::shard::zstd_stream::ZstdStream::new(max_output))
            }
        }
    }

    /// A whole gateway message, once the binary frames so far make one.
    fn push(&mut self, bytes: Bytes) -> Result<Option<Bytes>, crate::shard::inflate::InflateError> {
        match self {
            // Without transport compression Discord sends text; a binary frame is read as JSON all the same.
            Self::None => Ok(Some(bytes)),
            Self::Zlib(inflater) => inflater.push(&bytes),
            #[cfg(feature = "zstd")]
            Self::Zstd(Ok(stream)) => stream.push(&bytes).map(Some),
            #[cfg(feature = "zstd")]
            Self::Zstd(Err(e)) => Err(e.clone()),
        }
    }
}

/// One websocket connection's IO state.
struct Connection {
    sink: SinkWrite<WsMessage, WsSink>,
    reader: SpawnHandle,
    heartbeat: Option<SpawnHandle>,
    /// The Hello or READY/RESUMED timeout, whichever is armed.
    deadline: Option<SpawnHandle>,
    decompressor: Decompressor,
    /// A message arriving in continuation frames: whether it is text, and its bytes so far.
    partial: Option<(bool, BytesMut)>,
    limiter: CommandLimiter,
}

/// A websocket item tagged with the connection it came from, so a late item of an old connection is
/// never taken for the new one's.
struct WsEvent {
    generation: u64,
    frame: Option<Result<Frame, actix_http::ws::ProtocolError>>,
}

/// Frames handled per poll before the loop yields to the shard's other work and to the other
/// shards on its thread.
const FRAMES_PER_POLL: usize = 256;

/// Reads a connection's frames: everything already received is handled in one go, then the events
/// it produced go to the handlers together. (actix's own stream driver handles 16 items per poll and
/// leaves no point at which a batch is complete.)
struct ReadLoop<S> {
    frames: S,
}

impl<S: futures_util::Stream<Item = WsEvent> + Unpin> ActorFuture<ShardActor> for ReadLoop<S> {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        act: &mut ShardActor,
        ctx: &mut Context<ShardActor>,
        task: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        for _ in 0..FRAMES_PER_POLL {
            match std::pin::Pin::new(&mut self.frames).poll_next(task) {
                Poll::Ready(Some(event)) => act.on_ws_item(event, ctx),
                Poll::Ready(None) => {
                    act.hand_over(ctx);
                    return Poll::Ready(());
                }
                Poll::Pending => {
                    act.hand_over(ctx);
                    return Poll::Pending;
                }
            }
            if ctx.waiting() {
                act.hand_over(ctx);
                return Poll::Pending;
            }
        }
        act.hand_over(ctx);
        task.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The actor of one shard.
pub struct ShardActor {
    id: u32,
    total: u32,
    state: ShardState,
    shared: Arc<ShardShared>,
    supervisor: Option<Recipient<ShardNotice>>,
    conn: Option<Connection>,
    generation: u64,
    backoff: ReconnectBackoff,
    reconnect_timer: Option<SpawnHandle>,
    connections: u32,
    queued: VecDeque<String>,
    flush_timer: Option<SpawnHandle>,
    fatal: Option<FatalError>,
    deliberate_stop: bool,
    /// Events waiting for handlers, with the index of the next handler to offer each to.
    pending: VecDeque<(Dispatch, usize)>,
    /// Hand-overs waiting for room in a full handler's mailbox; nothing else is offered meanwhile.
    waiting: u32,
    /// The handlers of this shard's thread: the shared ones plus its thread's own.
    router: Arc<Router>,
    /// Per batch handler (by router index), the events of the current hand-over.
    batches: Vec<Vec<Dispatch>>,
    dropped: u64,
    reading: Rc<PauseGate>,
    /// The code of the gateway's close frame on the current connection, for the lifecycle event.
    close_code: Option<u16>,
    /// Set when the gateway has answered our close during a shutdown.
    peer_closed: Rc<std::cell::Cell<bool>>,
    span: tracing::Span,
}

/// Events queued before they are handed over even though the read batch is not done.
const FLUSH_AT: usize = 64;

impl ShardActor {
    pub(crate) fn new(
        id: u32,
        total: u32,
        shared: Arc<ShardShared>,
        supervisor: Option<Recipient<ShardNotice>>,
    ) -> Self {
        let session = shared.sessions.load(id);
        let state = ShardState::new(id, total, shared.params.clone(), session);
        // One list per batch handler (unallocated until used): the router is fixed at start.
        let router = shared.router.for_this_thread();
        let batches = (0..router.batch_handler_count())
            .map(|_| Vec::new())
            .collect();
        Self {
            id,
            total,
            state,
            backoff: ReconnectBackoff::new(&shared.backoff),
            shared,
            supervisor,
            conn: None,
            generation: 0,
            reconnect_timer: None,
            connections: 0,
            queued: VecDeque::new(),
            flush_timer: None,
            fatal: None,
            deliberate_stop: false,
            pending: VecDeque::new(),
            waiting: 0,
            router,
            batches,
            dropped: 0,
            reading: Rc::new(PauseGate::default()),
            close_code: None,
            peer_closed: Rc::new(std::cell::Cell::new(false)),
            span: tracing::info_span!("shard", shard.id = id, shard.total = total),
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.reconnect_timer = None;
        self.generation += 1;
        self.connections += 1;
        let generation = self.generation;
        let url = crate::url::connect_url(
            self.state.connect_base(),
            self.shared.compression.query_value(),
        );
        tracing::debug!(resume = self.state.will_resume(), url = %url, "connecting");
        let max_frame = self.shared.limits.max_message_size;
        let timeout = self.shared.timeouts.connect;
        let handshakes = self.shared.handshakes.clone();
        let connecting = async move {
            // Held until the upgrade is done (or failed): the timeout covers the handshake, not the
            // wait for a turn.
            let _turn = handshakes.acquire_owned().await;
            let request = CLIENT.with(|c| c.ws(url.as_str()).max_frame_size(max_frame));
            actix_rt::time::timeout(timeout, request.connect()).await
        };
        ctx.spawn(connecting.into_actor(self).map(move |result, act, ctx| {
            let _span = act.span.clone().entered();
            if act.generation != generation || act.state.phase() == Phase::Stopped {
                return;
            }
            match result {
                Ok(Ok((_response, framed))) => act.attach(framed, generation, ctx),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "connect failed");
                    act.schedule_reconnect(false, ctx);
                }
                Err(_) => {
                    tracing::warn!(?timeout, "connect timed out");
                    act.schedule_reconnect(false, ctx);
                }
            }
        }));
    }

    fn attach(
        &mut self,
        framed: Framed<BoxedSocket, Codec>,
        generation: u64,
        ctx: &mut Context<Self>,
    ) {
        let (stream, sink) =
            crate::shard::framing::split(framed, self.shared.limits.max_message_size);
        let reader = ctx.spawn(ReadLoop {
            frames: Pausable::new(
                stream
                    .map(move |frame| WsEvent {
                        generation,
                        frame: Some(frame),
                    })
                    .chain(futures_util::stream::once(std::future::ready(WsEvent {
                        generation,
                        frame: None,
                    }))),
                self.reading.clone(),
            ),
        });
        let (limit, window) = self.shared.command_limit;
        self.conn = Some(Connection {
            sink: SinkWrite::new(sink, ctx),
            reader,
            heartbeat: None,
            deadline: None,
            decompressor: Decompressor::new(
                self.shared.compression,
                self.shared.limits.max_decompressed_size,
            ),
            partial: None,
            limiter: CommandLimiter::new(limit, window, None),
        });
        self.state.on_open();
        self.arm_deadline(self.shared.timeouts.hello, Phase::AwaitingHello, ctx);
    }

    /// Fails the connection if it is still in `phase` after `after`.
    fn arm_deadline(&mut self, after: Duration, phase: Phase, ctx: &mut Context<Self>) {
        let generation = self.generation;
        let handle = ctx.run_later(after, move |act, ctx| {
            if act.generation == generation && act.state.phase() == phase {
                let _span = act.span.clone().entered();
                tracing::warn!(?phase, ?after, "timed out; reconnecting");
                act.state.on_connection_failed();
                act.drain(ctx);
            }
        });
        if let Some(conn) = &mut self.conn {
            if let Some(old) = conn.deadline.replace(handle) {
                ctx.cancel_future(old);
            }
        }
    }

    fn schedule_reconnect(&mut self, at_once: bool, ctx: &mut Context<Self>) {
        if self.reconnect_timer.is_some() || self.state.phase() == Phase::Stopped {
            return;
        }
        let delay = self.backoff.next_delay_for(at_once);
        tracing::info!(
            ?delay,
            resume = self.state.will_resume(),
            "reconnecting after delay"
        );
        self.reconnect_timer = Some(ctx.run_later(delay, |act, ctx| act.connect(ctx)));
    }

    /// Ends the current connection: closes with `code` if given, and frees everything it holds.
    ///
    /// With a code, the close frame goes out and the old reader stays to take the server's close
    /// (RFC 6455: the client waits for it before dropping the socket); its items no longer match the
    /// generation and are ignored. Whatever is left goes after [`CLOSE_GRACE`].
    fn teardown(&mut self, code: Option<u16>, ctx: &mut Context<Self>) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        for handle in [conn.heartbeat, conn.deadline].into_iter().flatten() {
            ctx.cancel_future(handle);
        }
        match code {
            Some(code) => {
                let reason = CloseReason {
                    code: WsCloseCode::from(code),
                    description: None,
                };
                let _ = conn.sink.write(WsMessage::Close(Some(reason)));
            }
            None => {
                ctx.cancel_future(conn.reader);
                conn.sink.close();
            }
        }
        let (reader, writer) = (conn.reader, conn.sink.handle());
        ctx.run_later(CLOSE_GRACE, move |_, ctx| {
            ctx.cancel_future(reader);
            ctx.cancel_future(writer);
        });
    }

    fn on_ws_event(
        &mut self,
        frame: Option<Result<Frame, actix_http::ws::ProtocolError>>,
        ctx: &mut Context<Self>,
    ) {
        match frame {
            None => self.state.on_close(None),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "websocket protocol error; reconnecting");
                self.state.on_connection_failed();
            }
            Some(Ok(Frame::Text(bytes))) => self.on_message(bytes),
            Some(Ok(Frame::Binary(bytes))) => self.on_binary(bytes),
            Some(Ok(Frame::Continuation(item))) => self.on_continuation(item),
            Some(Ok(Frame::Ping(payload))) => {
                if let Some(conn) = &mut self.conn {
                    let _ = conn.sink.write(WsMessage::Pong(payload));
                }
            }
            Some(Ok(Frame::Pong(_))) => {}
            Some(Ok(Frame::Close(reason))) => {
                let code = reason.map(|r| u16::from(r.code));
                tracing::info!(?code, "gateway closed the connection");
                self.close_code = code;
                self.state.on_close(code);
            }
        }
        self.drain(ctx);
    }

    /// Assembles a message sent in continuation frames; hands it on when its last frame arrives.
    fn on_continuation(&mut self, item: Item) {
        let max = self.shared.limits.max_message_size;
        let Some(conn) = &mut self.conn else { return };
        let (chunk, last) = match item {
            Item::FirstText(chunk) => {
                conn.partial = Some((true, BytesMut::from(&chunk[..])));
                return;
            }
            Item::FirstBinary(chunk) => {
                conn.partial = Some((false, BytesMut::from(&chunk[..])));
                return;
            }
            Item::Continue(chunk) => (chunk, false),
            Item::Last(chunk) => (chunk, true),
        };
        let Some((_, buf)) = &mut conn.partial else {
            tracing::warn!("continuation frame without a first frame; skipped");
            return;
        };
        if buf.len() + chunk.len() > max {
            tracing::warn!(max, "message over the size limit; reconnecting");
            conn.partial = None;
            self.state.on_connection_failed();
            return;
        }
        buf.extend_from_slice(&chunk);
        if last {
            if let Some((text, buf)) = conn.partial.take() {
                let message = buf.freeze();
                if text {
                    self.on_message(message);
                } else {
                    self.on_binary(message);
                }
            }
        }
    }

    fn on_binary(&mut self, bytes: Bytes) {
        let Some(conn) = &mut self.conn else { return };
        match conn.decompressor.push(bytes) {
            Ok(Some(message)) => self.on_message(message),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot inflate; reconnecting");
                self.state.on_connection_failed();
            }
        }
    }

    fn on_message(&mut self, frame: Bytes) {
        match Envelope::parse(&frame) {
            Ok(env) => {
                // §3.2: the first heartbeat is jittered; only Hello needs the random draw.
                let jitter = if env.op == 10 {
                    rand::random::<f64>()
                } else {
                    0.0
                };
                self.state.on_frame(&frame, &env, Instant::now, jitter);
            }
            Err(e) => {
                let start = String::from_utf8_lossy(&frame[..frame.len().min(64)]).into_owned();
                tracing::warn!(error = %e, bytes = frame.len(), start = %start, "skipped a malformed frame");
            }
        }
    }

    /// Carries out every action the state machine has queued.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(action) = self.state.poll_action() {
            match action {
                Action::Send(text, kind) => self.send(text, kind, ctx),
                Action::StartHeartbeat { first, interval } => {
                    self.start_heartbeat(first, interval, ctx)
                }
                Action::RequestIdentify => self.request_identify(ctx),
                Action::Deliver(dispatch) => self.deliver(dispatch, ctx),
                Action::StoreSession(Some(session)) => self.shared.sessions.save(self.id, session),
                Action::StoreSession(None) => self.shared.sessions.remove(self.id),
                Action::Ready { resumed } => {
                    self.backoff.reset();
                    if let Some(deadline) = self.conn.as_mut().and_then(|c| c.deadline.take()) {
                        ctx.cancel_future(deadline);
                    }
                    let event = if resumed {
                        ShardEvent::Resumed { shard: self.id }
                    } else {
                        let session_id = self
                            .state
                            .session()
                            .map(|s| s.session_id.clone())
                            .unwrap_or_default();
                        ShardEvent::Ready {
                            shard: self.id,
                            session_id,
                        }
                    };
                    tracing::info!(resumed, "ready");
                    self.emit(event);
                    if let Some(supervisor) = &self.supervisor {
                        supervisor.do_send(ShardNotice::Ready { id: self.id });
                    }
                    self.flush_commands(ctx);
                }
                Action::Reconnect {
                    close_code,
                    at_once,
                } => {
                    self.teardown(close_code, ctx);
                    let code = self.close_code.take();
                    self.emit(ShardEvent::Disconnected {
                        shard: self.id,
                        code,
                    });
                    self.schedule_reconnect(at_once, ctx);
                }
                Action::Fatal(error) => {
                    tracing::error!(%error, "stopping the shard for good");
                    // Hand over what was read: once the actor stops, the read loop never gets to.
                    self.drain_pending(ctx);
                    self.teardown(None, ctx);
                    let code = self.close_code.take();
                    self.emit(ShardEvent::Disconnected {
                        shard: self.id,
                        code,
                    });
                    self.emit(ShardEvent::Fatal {
                        shard: self.id,
                        error: error.clone(),
                    });
                    self.fatal = Some(error);
                    ctx.stop();
                }
            }
        }
    }

    /// Queues `dispatch` for its handlers. The hand-over happens once the frames already received are
    /// handled (see [`ReadLoop`]), not per event: a handler on another thread is then woken once per
    /// burst rather than once per event, which is most of the cost of delivering a small event.
    fn deliver(&mut self, dispatch: Dispatch, ctx: &mut Context<Self>) {
        self.pending.push_back((dispatch, 0));
        if self.waiting > 0 {
            if let SlowHandlers::Backpressure { max_pending } = self.shared.slow_handlers {
                if self.pending.len() >= max_pending && !self.reading.is_paused() {
                    tracing::warn!(
                        max_pending,
                        "handlers are behind: pausing reads until they catch up"
                    );
                    self.reading.set_paused(true);
                    self.state.set_reading_paused(true);
                }
            }
            // The handler that blocks hands over the rest when it takes its event.
            return;
        }
        let flush_at = match self.shared.slow_handlers {
            SlowHandlers::Backpressure { max_pending } => max_pending.min(FLUSH_AT),
            SlowHandlers::Drop => FLUSH_AT,
        };
        if self.pending.len() >= flush_at {
            self.drain_pending(ctx);
        }
        // Otherwise the read loop hands the batch over when it has read what is there.
    }

    /// Offers `dispatch` to its handlers from the `from`-th on (and, the first time, adds it to its
    /// batch handlers' batches); on a full mailbox, waits for that handler to take it before
    /// anything else is offered.
    fn offer(&mut self, dispatch: Dispatch, from: usize, ctx: &mut Context<Self>) {
        // One lookup of the event's handlers per offer.
        let route = self.router.route_of(dispatch.event());
        if from == 0 {
            // Recorded as the event is handed over, not when it is queued: a shard restarted from
            // the store resumes after the last event that left this queue, so what is still queued
            // here when the actor dies is replayed rather than lost.
            self.shared.sessions.set_seq(self.id, dispatch.seq());
            for &i in route.batched() {
                self.batches[i].push(dispatch.clone());
            }
        }
        let drop_when_full = self.shared.slow_handlers == SlowHandlers::Drop;
        let Some(full) = route.offer(&dispatch, from, drop_when_full, &mut self.dropped) else {
            return;
        };
        let Some(handler) = route.handlers().get(full).cloned() else {
            return;
        };
        self.waiting += 1;
        // `send` waits for room in the mailbox, then for the handler to have handled it.
        let wait = handler.send(dispatch.clone());
        ctx.spawn(wait.into_actor(self).map(move |result, act, ctx| {
            if result.is_err() {
                act.dropped += 1;
                tracing::warn!(parent: &act.span, seq = dispatch.seq(), "handler stopped before taking the event");
            }
            act.waiting -= 1;
            act.pending.push_front((dispatch, full + 1));
            act.drain_pending(ctx);
        }));
    }

    /// Sends each batch handler the events gathered for it since the last hand-over.
    fn send_batches(&mut self, ctx: &mut Context<Self>) {
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
            let batch = DispatchBatch::new(self.id, std::mem::take(&mut self.batches[i]));
            let Some(handler) = router.batch_handler(i) else {
                continue;
            };
            let (first, count) = (batch.events()[0].seq(), batch.events().len() as u64);
            match handler.try_send(batch) {
                Ok(()) => {}
                Err(SendError::Full(batch)) if self.shared.slow_handlers != SlowHandlers::Drop => {
                    self.waiting += 1;
                    ctx.spawn(handler.send(batch).into_actor(self).map(
                        move |result, act, ctx| {
                            if result.is_err() {
                                act.dropped += count;
                                tracing::warn!(parent: &act.span, first_seq = first, count, "batch handler stopped before taking the events");
                            }
                            act.waiting -= 1;
                            act.drain_pending(ctx);
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

    fn drain_pending(&mut self, ctx: &mut Context<Self>) {
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
            let resume_at = match self.shared.slow_handlers {
                SlowHandlers::Backpressure { max_pending } => max_pending / 2,
                SlowHandlers::Drop => usize::MAX,
            };
            if self.pending.len() <= resume_at {
                tracing::info!(
                    pending = self.pending.len(),
                    "handlers caught up: reading again"
                );
                self.reading.set_paused(false);
                self.state.set_reading_paused(false);
            }
        }
    }

    fn send(&mut self, text: String, kind: SendKind, ctx: &mut Context<Self>) {
        let Some(conn) = &mut self.conn else { return };
        let now = Instant::now();
        let allowed = match kind {
            SendKind::Heartbeat => conn.limiter.try_heartbeat(now),
            SendKind::Handshake => conn.limiter.try_command(now).is_ok(),
        };
        if !allowed {
            tracing::warn!(?kind, "send limit reached; frame not sent");
            return;
        }
        tracing::trace!(?kind, bytes = text.len(), "sending");
        let _ = conn.sink.write(WsMessage::Text(text.into()));
        if kind == SendKind::Handshake {
            let phase = self.state.phase();
            self.arm_deadline(self.shared.timeouts.ready, phase, ctx);
        }
    }

    fn start_heartbeat(&mut self, first: Duration, interval: Duration, ctx: &mut Context<Self>) {
        let generation = self.generation;
        let Some(conn) = &mut self.conn else { return };
        let (limit, window) = self.shared.command_limit;
        conn.limiter = CommandLimiter::new(limit, window, Some(interval));
        if let Some(old) = conn.heartbeat.take() {
            ctx.cancel_future(old);
        }
        self.schedule_heartbeat(Instant::now() + first, interval, generation, ctx);
    }

    /// Arms the heartbeat due at `due` (sent at the start of its slot on the shared grid) and, when
    /// it has fired, the one after it.
    fn schedule_heartbeat(
        &mut self,
        due: Instant,
        interval: Duration,
        generation: u64,
        ctx: &mut Context<Self>,
    ) {
        let now = Instant::now();
        let at = heartbeat_grid::aligned(due, interval).max(now);
        let handle = ctx.run_later(at - now, move |act, ctx| {
            act.heartbeat_tick(generation, ctx);
            if act.generation == generation && act.conn.is_some() {
                let next = heartbeat_grid::next_due(due, interval, Instant::now());
                act.schedule_heartbeat(next, interval, generation, ctx);
            }
        });
        if let Some(conn) = &mut self.conn {
            conn.heartbeat = Some(handle);
        } else {
            ctx.cancel_future(handle);
        }
    }

    fn heartbeat_tick(&mut self, generation: u64, ctx: &mut Context<Self>) {
        if self.generation != generation || self.conn.is_none() {
            return;
        }
        let _span = self.span.clone().entered();
        self.state.on_heartbeat_due(Instant::now());
        self.drain(ctx);
    }

    fn request_identify(&mut self, ctx: &mut Context<Self>) {
        let generation = self.generation;
        let permit = self.shared.queue.acquire(self.id, self.total);
        ctx.spawn(permit.into_actor(self).map(move |(), act, ctx| {
            if act.generation == generation && act.state.on_identify_permit() {
                let _span = act.span.clone().entered();
                act.drain(ctx);
            }
        }));
    }

    /// Sends queued commands while the limiter allows; schedules itself for when it next will.
    fn flush_commands(&mut self, ctx: &mut Context<Self>) {
        if self.state.phase() != Phase::Ready {
            return;
        }
        let Some(conn) = &mut self.conn else { return };
        while let Some(text) = self.queued.front() {
            match conn.limiter.try_command(Instant::now()) {
                Ok(()) => {
                    let _ = conn.sink.write(WsMessage::Text(text.as_str().into()));
                    self.queued.pop_front();
                }
                Err(wait) => {
                    if self.flush_timer.is_none() {
                        self.flush_timer = Some(ctx.run_later(wait, |act, ctx| {
                            act.flush_timer = None;
                            act.flush_commands(ctx);
                        }));
                    }
                    return;
                }
            }
        }
    }

    fn emit(&self, event: ShardEvent) {
        for recipient in &self.shared.events {
            recipient.do_send(event.clone());
        }
    }

    fn status(&self) -> ShardStatus {
        ShardStatus {
            id: self.id,
            total: self.total,
            phase: self.state.phase(),
            latency: self.state.latency(),
            seq: self.state.seq(),
            session_id: self.state.session().map(|s| s.session_id.clone()),
            reconnects: self.connections.saturating_sub(1),
            fatal: self.fatal.clone(),
            pending: self.pending.len(),
            dropped: self.dropped,
        }
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        self.connect(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(supervisor) = &self.supervisor {
            supervisor.do_send(ShardNotice::Stopped {
                id: self.id,
                fatal: self.fatal.clone(),
                deliberate: self.deliberate_stop,
            });
        }
    }
}

impl ShardActor {
    fn on_ws_item(&mut self, event: WsEvent, ctx: &mut Context<Self>) {
        if event.generation != self.generation || self.conn.is_none() {
            return;
        }
        if self.state.phase() == Phase::Stopped {
            // Shutting down: only the end of the close handshake matters now.
            if matches!(event.frame, None | Some(Ok(Frame::Close(_))) | Some(Err(_))) {
                self.peer_closed.set(true);
            }
            return;
        }
        let _span = self.span.clone().entered();
        self.on_ws_event(event.frame, ctx);
    }

    /// Gives the handlers what the frames read so far produced.
    fn hand_over(&mut self, ctx: &mut Context<Self>) {
        if !self.pending.is_empty() && self.waiting == 0 {
            self.drain_pending(ctx);
        }
        self.state.release_buffers();
    }
}

impl WriteHandler<actix_http::ws::ProtocolError> for ShardActor {
    fn error(&mut self, err: actix_http::ws::ProtocolError, _ctx: &mut Self::Context) -> Running {
        tracing::debug!(parent: &self.span, error = %err, "websocket write failed");
        Running::Stop
    }

    // A connection's writer ending is not the actor's end.
    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl Handler<GetStatus> for ShardActor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.status())
    }
}

impl Handler<SendCommand> for ShardActor {
    type Result = Result<(), CommandError>;

    fn handle(
        &mut self,
        SendCommand(command): SendCommand,
        ctx: &mut Self::Context,
    ) -> Self::Result {
        if self.state.phase() == Phase::Stopped {
            return Err(CommandError::ShardStopped);
        }
        let frame = command.to_frame()?;
        if self.queued.len() >= self.shared.limits.command_queue {
            return Err(CommandError::QueueFull);
        }
        self.queued.push_back(frame);
        self.flush_commands(ctx);
        Ok(())
    }
}

impl Handler<Shutdown> for ShardActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(
        &mut self,
        Shutdown { resumable }: Shutdown,
        ctx: &mut Self::Context,
    ) -> Self::Result {
        let _span = self.span.clone().entered();
        self.deliberate_stop = true;
        let code = self.state.shutdown(resumable);
        self.drain(ctx);
        self.drain_pending(ctx);
        if let Some(handle) = self.reconnect_timer.take() {
            ctx.cancel_future(handle);
        }
        tracing::info!(code, resumable, "shutting down");
        self.peer_closed.set(self.conn.is_none());
        if let Some(conn) = &mut self.conn {
            for handle in [conn.heartbeat.take(), conn.deadline.take()]
                .into_iter()
                .flatten()
            {
                ctx.cancel_future(handle);
            }
            let reason = CloseReason {
                code: WsCloseCode::from(code),
                description: None,
            };
            let _ = conn.sink.write(WsMessage::Close(Some(reason)));
        }
        // Stop once the gateway has answered the close (or after the grace period, if it never does).
        let peer_closed = self.peer_closed.clone();
        let answered = async move {
            let deadline = Instant::now() + CLOSE_GRACE;
            while !peer_closed.get() && Instant::now() < deadline {
                actix_rt::time::sleep(Duration::from_millis(5)).await;
            }
        };
        Box::pin(answered.into_actor(self).map(|(), act, ctx| {
            act.conn = None;
            ctx.stop();
        }))
    }
}
