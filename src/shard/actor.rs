//! The `ShardActor`: the thin IO shell around [`ShardState`]. It owns the awc websocket, the
//! inflater, the timers, the command limiter and the reconnect backoff; it feeds the state machine
//! and carries out its actions.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
use crate::metrics::{ReconnectCause, ShardMetrics};
use crate::ownership::LeaseGuard;
use crate::protocol::{CommandError, Envelope};
use crate::queue::IdentifyQueue;
use crate::router::Router;
use crate::session::SessionStore;
use crate::shard::backoff::ReconnectBackoff;
use crate::shard::delivery::{Deliver, Delivery};
use crate::shard::gate::GateSlot;
use crate::shard::heartbeat_grid;
use crate::shard::inflate::Inflater;
use crate::shard::limiter::CommandLimiter;
use crate::shard::log_throttle::Throttles;
use crate::shard::messages::{
    Abandon, GetStatus, ReleaseHeld, SendCommand, ShardNotice, ShardStatus, Shutdown,
};
use crate::shard::pause::Pausable;
use crate::shard::state::{Action, IdentifyParams, Phase, SendKind, ShardState};

type WsSink = crate::shard::framing::Writer;

/// What a queued message is, for where it goes in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A bot's command (see [`ShardActor::queued`]).
    Command,
    /// A heartbeat (op 1): ahead of queued commands, and only the latest one while it waits.
    Heartbeat,
    /// The answer to a websocket Ping: ahead of queued commands, and only the latest one while it
    /// waits (RFC 6455 §5.5.3 lets an endpoint answer only the most recent Ping).
    Pong,
    /// Anything else (Identify, Resume, a close frame), in order.
    Other,
}

/// What the actor has queued for a connection's writer.
#[derive(Default)]
struct Outbox {
    /// Messages not yet handed to the sink.
    queue: VecDeque<(WsMessage, Kind)>,
    /// Messages handed to the sink and not yet written whole to the socket, in order (`true`
    /// marks a command).
    handed: VecDeque<bool>,
    /// Close the sink once everything queued is written.
    closing: bool,
    /// The sink failed: nothing more is written on this connection.
    failed: bool,
    waker: Option<std::task::Waker>,
}

impl Outbox {
    /// Commands handed to the sink and not yet written whole.
    fn unwritten_commands(&self) -> usize {
        self.handed.iter().filter(|&&command| command).count()
    }

    fn push(&mut self, message: WsMessage, kind: Kind) {
        match kind {
            Kind::Command | Kind::Other => self.queue.push_back((message, kind)),
            Kind::Heartbeat | Kind::Pong => {
                if let Some(waiting) = self.queue.iter_mut().find(|(_, k)| *k == kind) {
                    // One is waiting already (the socket is not taking frames): the newer one
                    // replaces it, so a peer that keeps asking while it does not read grows
                    // nothing here.
                    waiting.0 = message;
                } else {
                    // Heartbeats and pongs are time-critical: ahead of commands waiting their turn.
                    let at = self
                        .queue
                        .iter()
                        .position(|(_, k)| *k == Kind::Command)
                        .unwrap_or(self.queue.len());
                    self.queue.insert(at, (message, kind));
                }
            }
        }
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// Writes a connection's outbox to its socket. A command counts as sent only once the socket took
/// all of its bytes; a write error ends the connection, and the commands not yet written go out
/// again on the next one.
struct WriteLoop {
    sink: WsSink,
    outbox: Rc<std::cell::RefCell<Outbox>>,
    generation: u64,
    /// In a fleet, the shard's lease: checked as each frame is handed to the socket and before
    /// anything buffered is written out, not only when the frame was queued (the process may have
    /// been paused in between).
    guard: Option<LeaseGuard>,
}

impl WriteLoop {
    /// Whether the lease (if any) still holds now.
    fn may_write(&self) -> bool {
        self.guard
            .as_ref()
            .is_none_or(|guard| guard.holds(Instant::now()))
    }
}

impl ActorFuture<ShardActor> for WriteLoop {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        act: &mut ShardActor,
        ctx: &mut Context<ShardActor>,
        task: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use futures_util::Sink;
        use std::task::Poll;
        let this = &mut *self;
        if !this.may_write() {
            // The lease is gone: nothing more goes out; the actor drops the connection.
            act.may_write(ctx);
            return Poll::Ready(());
        }
        let outbox = Rc::clone(&this.outbox);
        let guard = this.guard.clone();
        let mut sink = std::pin::Pin::new(&mut this.sink);
        let failure = 'write: {
            let mut out = outbox.borrow_mut();
            while !out.queue.is_empty() {
                if guard.as_ref().is_some_and(|g| !g.holds(Instant::now())) {
                    drop(out);
                    act.may_write(ctx);
                    return Poll::Ready(());
                }
                match sink.as_mut().poll_ready(task) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => break 'write Some(e),
                    Poll::Pending => break,
                }
                let Some((message, kind)) = out.queue.pop_front() else {
                    break;
                };
                out.handed.push_back(kind == Kind::Command);
                if let Err(e) = sink.as_mut().start_send(message) {
                    break 'write Some(e);
                }
            }
            let flushed = match sink.as_mut().poll_flush(task) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(e)) => break 'write Some(e),
                Poll::Pending => false,
            };
            drop(out);
            report_written(sink.as_mut().get_mut(), &outbox, this.generation, act, ctx);
            out = outbox.borrow_mut();
            if flushed && out.closing && out.queue.is_empty() {
                return match sink.as_mut().poll_close(task) {
                    Poll::Pending => {
                        out.waker = Some(task.waker().clone());
                        Poll::Pending
                    }
                    Poll::Ready(_) => Poll::Ready(()),
                };
            }
            out.waker = Some(task.waker().clone());
            None
        };
        match failure {
            None => Poll::Pending,
            Some(error) => {
                // What the socket took whole before the error was sent all the same.
                report_written(&mut this.sink, &outbox, this.generation, act, ctx);
                outbox.borrow_mut().failed = true;
                act.write_failed(this.generation, error, ctx);
                Poll::Ready(())
            }
        }
    }
}

/// Tells the actor how many commands the socket has taken whole since the last report.
fn report_written(
    sink: &mut WsSink,
    outbox: &std::cell::RefCell<Outbox>,
    generation: u64,
    act: &mut ShardActor,
    ctx: &mut Context<ShardActor>,
) {
    let written = sink.take_written();
    if written == 0 {
        return;
    }
    let commands = {
        let mut out = outbox.borrow_mut();
        let n = written.min(out.handed.len());
        out.handed.drain(..n).filter(|&command| command).count()
    };
    if commands > 0 {
        act.commands_written(generation, commands, ctx);
    }
}

/// How long a closed connection may take to finish its close handshake before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a shard that is shutting down waits, once its connection is closed, for its handlers to
/// finish the events it gave them.
const HANDLERS_GRACE: Duration = Duration::from_secs(2);

/// What every shard of one bot shares.
#[derive(Clone)]
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
    /// The TLS settings of every connection (the thread's client for them).
    pub tls: crate::client::Tls,
    /// Where each shard's metrics recorder writes (nowhere unless the bot enabled metrics).
    pub metrics: crate::metrics::Sink,
    /// The set's dispatch gate: empty unless a reshard is under way (`crate::reshard`).
    pub gate: Arc<GateSlot>,
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
    outbox: Rc<std::cell::RefCell<Outbox>>,
    writer: SpawnHandle,
    reader: SpawnHandle,
    heartbeat: Option<SpawnHandle>,
    /// The Hello or READY/RESUMED timeout, whichever is armed.
    deadline: Option<SpawnHandle>,
    /// The identify permit being waited for: cancelled with the connection, which withdraws it.
    identify: Option<SpawnHandle>,
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
                    act.delivery.caught_up();
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
    /// The supervisor, and this actor's incarnation number for its notices.
    supervisor: Option<(Recipient<ShardNotice>, u64)>,
    conn: Option<Connection>,
    generation: u64,
    backoff: ReconnectBackoff,
    reconnect_timer: Option<SpawnHandle>,
    connections: u32,
    /// Connects in a row that failed (refused, timed out): past a few, a resume goes through the
    /// gateway URL rather than a resume host that may be gone.
    failed_connects: u32,
    /// Commands accepted and not yet sent, oldest first. The first `in_flight` of them are in the
    /// current connection's outbox; a command leaves this queue only once its flush succeeded.
    queued: VecDeque<String>,
    in_flight: usize,
    /// Commands at the front of `queued` that a connection closed with a code (generation, count)
    /// had handed to its socket without all of their bytes written: they go out ahead of its close
    /// frame if the socket takes them before the close grace ends, and again on the next
    /// connection if not. Until that is known, nothing more is sent (in order, and never twice).
    unsettled: Option<(u64, usize)>,
    flush_timer: Option<SpawnHandle>,
    fatal: Option<FatalError>,
    deliberate_stop: bool,
    delivery: Delivery,
    /// The code of the gateway's close frame on the current connection, for the lifecycle event.
    close_code: Option<u16>,
    /// During a shutdown: told when the gateway has answered our close (or the socket ended).
    close_answered: Option<tokio::sync::oneshot::Sender<()>>,
    /// In a fleet, whether this process still holds the shard's lease: nothing is written to the
    /// connection once it does not (docs/fleet.md "Ownership").
    guard: Option<LeaseGuard>,
    span: tracing::Span,
    /// `None` unless the bot enabled metrics.
    metrics: Option<ShardMetrics>,
    /// Rate limits of the warnings the gateway's input can cause (by [`Noise`]).
    noise: Throttles<2>,
}

/// Kinds of warning the gateway's input can cause in the actor, each rate-limited on its own.
#[derive(Debug, Clone, Copy)]
enum Noise {
    /// A message skipped: not a gateway frame, or a continuation with no first frame.
    Skipped = 0,
    /// A frame not sent for the send limit (the gateway asking for heartbeats, say).
    SendLimit = 1,
}

impl ShardActor {
    pub(crate) fn new(
        id: u32,
        total: u32,
        shared: Arc<ShardShared>,
        supervisor: Option<(Recipient<ShardNotice>, u64)>,
        guard: Option<LeaseGuard>,
    ) -> Self {
        let session = shared.sessions.load(id);
        let state = ShardState::new(id, total, shared.params.clone(), session);
        let span = tracing::info_span!("shard", shard.id = id, shard.total = total);
        let delivery = Delivery::new(
            id,
            shared.slow_handlers,
            shared.router.for_this_thread(),
            Arc::clone(&shared.sessions),
            span.clone(),
        );
        let metrics = shared.metrics.for_shard(id);
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
            failed_connects: 0,
            queued: VecDeque::new(),
            in_flight: 0,
            unsettled: None,
            flush_timer: None,
            fatal: None,
            deliberate_stop: false,
            delivery,
            close_code: None,
            close_answered: None,
            guard,
            span,
            metrics,
            noise: Throttles::default(),
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.reconnect_timer = None;
        // A process that lost the shard's lease (paused past it, say) opens no connection for it.
        if !self.may_write(ctx) {
            return;
        }
        self.generation += 1;
        self.connections += 1;
        let generation = self.generation;
        let url = crate::url::connect_url(
            self.state.connect_base_after(self.failed_connects),
            self.shared.compression.query_value(),
        );
        tracing::debug!(resume = self.state.will_resume(), url = %url, "connecting");
        let max_frame = self.shared.limits.max_message_size;
        let timeout = self.shared.timeouts.connect;
        let handshakes = self.shared.handshakes.clone();
        let tls = self.shared.tls.clone();
        let guard = self.guard.clone();
        let connecting = async move {
            // Held until the upgrade is done (or failed): the timeout covers the handshake, not the
            // wait for a turn.
            let _turn = handshakes.acquire_owned().await;
            // The wait for a turn has no bound: the lease is checked again at the moment of
            // connecting, not only before the wait.
            if guard.is_some_and(|guard| !guard.holds(Instant::now())) {
                return None;
            }
            let request = crate::client::ws_client(&tls)
                .ws(url.as_str())
                .max_frame_size(max_frame);
            Some(actix_rt::time::timeout(timeout, request.connect()).await)
        };
        ctx.spawn(connecting.into_actor(self).map(move |result, act, ctx| {
            let _span = act.span.clone().entered();
            if act.generation != generation || act.state.phase() == Phase::Stopped {
                return;
            }
            // The lease ran out while waiting for a turn, or during the upgrade: the socket (if
            // any) closes without a frame and the shard is abandoned.
            let Some(result) = result else {
                act.may_write(ctx);
                return;
            };
            if !act.may_write(ctx) {
                return;
            }
            match result {
                Ok(Ok((_response, framed))) => {
                    // Not a success yet: only the gateway's Hello makes it one.
                    act.attach(framed, generation, ctx);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "connect failed");
                    act.connect_failed(ctx);
                }
                Err(_) => {
                    tracing::warn!(?timeout, "connect timed out");
                    act.connect_failed(ctx);
                }
            }
        }));
    }

    fn connect_failed(&mut self, ctx: &mut Context<Self>) {
        self.count_failed_connect();
        self.metrics_cause(ReconnectCause::ConnectFailed);
        self.metrics_reconnected();
        self.schedule_reconnect(false, ctx);
    }

    /// One more connect in a row that came to nothing: refused, timed out, or opened and ended
    /// before the gateway said Hello (a host that accepts and then stays silent or closes at once
    /// is no more use than one that refuses).
    fn count_failed_connect(&mut self) {
        let base = self
            .state
            .connect_base_after(self.failed_connects)
            .to_owned();
        self.failed_connects = self.failed_connects.saturating_add(1);
        if self.state.connect_base_after(self.failed_connects) != base {
            tracing::warn!(
                attempts = self.failed_connects,
                "resume host keeps failing; resuming through the gateway URL"
            );
        }
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
                self.delivery.gate(),
            ),
        });
        let outbox = Rc::new(std::cell::RefCell::new(Outbox::default()));
        let writer = ctx.spawn(WriteLoop {
            sink,
            outbox: Rc::clone(&outbox),
            generation,
            guard: self.guard.clone(),
        });
        let (limit, window) = self.shared.command_limit;
        self.conn = Some(Connection {
            outbox,
            writer,
            reader,
            heartbeat: None,
            deadline: None,
            identify: None,
            decompressor: Decompressor::new(
                self.shared.compression,
                self.shared.limits.max_decompressed_size,
            ),
            partial: None,
            limiter: CommandLimiter::new(limit, window, None),
        });
        self.delivery.connection_opened();
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
                act.metrics_cause(ReconnectCause::Timeout);
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
        let Some(conn) = self.conn.take() else {
            return;
        };
        for handle in [conn.heartbeat, conn.deadline, conn.identify]
            .into_iter()
            .flatten()
        {
            ctx.cancel_future(handle);
        }
        let mut out = conn.outbox.borrow_mut();
        // Commands not yet handed to the sink stay queued for the next connection.
        out.queue.retain(|(_, kind)| *kind != Kind::Command);
        match code.filter(|_| !out.failed) {
            Some(code) => {
                // Commands already in the sink go out ahead of the close, but count as sent only
                // once the socket takes them whole (the writer goes on reporting for this
                // generation until the close grace ends).
                // (While an older connection's are unsettled, this one was given none: the
                // older ones stay unsettled.)
                let unwritten = out.unwritten_commands();
                if unwritten > 0 {
                    self.unsettled = Some((self.generation, unwritten));
                }
                let reason = CloseReason {
                    code: WsCloseCode::from(code),
                    description: None,
                };
                out.push(WsMessage::Close(Some(reason)), Kind::Other);
            }
            None => {
                // The socket is gone: what it did not take goes again on the next connection.
                out.handed.clear();
                ctx.cancel_future(conn.reader);
                out.closing = true;
                if let Some(waker) = out.waker.take() {
                    waker.wake();
                }
            }
        }
        drop(out);
        self.in_flight = 0;
        let (reader, writer) = (conn.reader, conn.writer);
        let generation = self.generation;
        ctx.run_later(CLOSE_GRACE, move |act, ctx| {
            ctx.cancel_future(reader);
            ctx.cancel_future(writer);
            act.settle(generation, ctx);
        });
    }

    /// Ends the current connection (see [`teardown`](Self::teardown)) and reports it, with the
    /// gateway's close code if it sent one.
    fn disconnect(&mut self, close_with: Option<u16>, ctx: &mut Context<Self>) {
        self.teardown(close_with, ctx);
        let code = self.close_code.take();
        self.emit(ShardEvent::Disconnected {
            shard: self.id,
            code,
        });
    }

    fn on_ws_event(
        &mut self,
        frame: Option<Result<Frame, actix_http::ws::ProtocolError>>,
        ctx: &mut Context<Self>,
    ) {
        match frame {
            None => {
                self.metrics_cause(ReconnectCause::Dropped);
                self.state.on_close(None)
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "websocket protocol error; reconnecting");
                self.metrics_cause(ReconnectCause::TransportError);
                self.state.on_connection_failed();
            }
            Some(Ok(Frame::Text(bytes))) => {
                self.metrics_wire(bytes.len());
                self.on_message(bytes)
            }
            Some(Ok(Frame::Binary(bytes))) => {
                self.metrics_wire(bytes.len());
                self.on_binary(bytes)
            }
            Some(Ok(Frame::Continuation(item))) => self.on_continuation(item),
            Some(Ok(Frame::Ping(payload))) => {
                if !self.may_write(ctx) {
                    return;
                }
                if let Some(conn) = &mut self.conn {
                    // A copy: the ping's bytes would keep the whole read buffer alive while the
                    // pong waits.
                    conn.outbox.borrow_mut().push(
                        WsMessage::Pong(Bytes::copy_from_slice(&payload)),
                        Kind::Pong,
                    );
                }
            }
            Some(Ok(Frame::Pong(_))) => {}
            Some(Ok(Frame::Close(reason))) => {
                let code = reason.map(|r| u16::from(r.code));
                tracing::info!(?code, "gateway closed the connection");
                self.metrics_cause(ReconnectCause::GatewayClose);
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
        if let Some(m) = &mut self.metrics {
            m.wire(item_len(&item));
        }
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
            if let Some(suppressed) = self.noise.allow(Noise::Skipped as usize, Instant::now()) {
                tracing::warn!(
                    suppressed,
                    "continuation frame without a first frame; skipped"
                );
            }
            return;
        };
        if buf.len() + chunk.len() > max {
            tracing::warn!(max, "message over the size limit; reconnecting");
            if let Some(m) = &mut self.metrics {
                m.cause(ReconnectCause::BadMessage);
            }
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
                self.metrics_cause(ReconnectCause::BadMessage);
                self.state.on_connection_failed();
            }
        }
    }

    fn on_message(&mut self, frame: Bytes) {
        if let Some(m) = &mut self.metrics {
            m.message(frame.len());
        }
        match Envelope::parse(&frame) {
            Ok(env) => {
                if let Some(cause) = ReconnectCause::for_op(env.op) {
                    self.metrics_cause(cause);
                }
                // §3.2: the first heartbeat is jittered; only Hello needs the random draw.
                let jitter = if env.op == 10 {
                    rand::random::<f64>()
                } else {
                    0.0
                };
                self.state.on_frame(&frame, &env, Instant::now, jitter);
            }
            Err(e) => {
                // The frame's bytes are the gateway's content (a message's text, say): only the
                // debug level shows them.
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let start = String::from_utf8_lossy(&frame[..frame.len().min(64)]).into_owned();
                    tracing::debug!(bytes = frame.len(), start = %start, "the malformed frame");
                }
                if let Some(suppressed) = self.noise.allow(Noise::Skipped as usize, Instant::now())
                {
                    tracing::warn!(error = %e, bytes = frame.len(), suppressed, "skipped a malformed frame");
                }
            }
        }
    }

    /// Carries out every action the state machine has queued.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(action) = self.state.poll_action() {
            match action {
                Action::Send(text, kind) => self.send(text, kind, ctx),
                Action::StartHeartbeat { first, interval } => {
                    // Hello: the host the shard connected to is a working gateway.
                    self.failed_connects = 0;
                    self.start_heartbeat(first, interval, ctx)
                }
                Action::RequestIdentify => self.request_identify(ctx),
                Action::Deliver(dispatch) => {
                    if let Some(m) = &mut self.metrics {
                        m.event(dispatch.event());
                    }
                    if let Some(dispatch) = self.shared.gate.admit(self.id, dispatch) {
                        self.delivery.deliver(dispatch, ctx)
                    }
                }
                Action::StoreSession(Some(session)) => {
                    // A new session (READY): what is still queued from the old one is not its.
                    self.delivery.new_session();
                    self.shared.sessions.save(self.id, session);
                }
                Action::StoreSession(None) => {
                    self.delivery.new_session();
                    self.shared.sessions.remove(self.id);
                }
                Action::Ready { resumed } => {
                    self.backoff.reset();
                    self.delivery.connection_ready(ctx);
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
                        supervisor.0.do_send(ShardNotice::Ready { id: self.id });
                    }
                    self.flush_commands(ctx);
                }
                Action::Reconnect {
                    close_code,
                    at_once,
                } => {
                    // A connection that ends before Hello (its heartbeat never started) counts
                    // as a failed connect.
                    if self.conn.as_ref().is_some_and(|c| c.heartbeat.is_none()) {
                        self.count_failed_connect();
                    }
                    self.metrics_reconnected();
                    self.disconnect(close_code, ctx);
                    self.schedule_reconnect(at_once, ctx);
                }
                Action::Fatal(error) => {
                    tracing::error!(%error, "stopping the shard for good");
                    // Hand over what was read: once the actor stops, the read loop never gets to.
                    self.delivery.drain(ctx);
                    self.disconnect(None, ctx);
                    self.emit(ShardEvent::Fatal {
                        shard: self.id,
                        error: error.clone(),
                    });
                    self.fatal = Some(error);
                    ctx.stop();
                }
            }
        }
        if let Some(m) = &mut self.metrics {
            m.observe(self.state.phase(), self.state.latency());
        }
    }

    fn send(&mut self, text: String, kind: SendKind, ctx: &mut Context<Self>) {
        if !self.may_write(ctx) {
            return;
        }
        let Some(conn) = &mut self.conn else { return };
        let now = Instant::now();
        let allowed = match kind {
            SendKind::Heartbeat => conn.limiter.try_heartbeat(now),
            SendKind::Handshake => conn.limiter.try_command(now).is_ok(),
        };
        if !allowed {
            if let Some(suppressed) = self.noise.allow(Noise::SendLimit as usize, now) {
                tracing::warn!(?kind, suppressed, "send limit reached; frame not sent");
            }
            return;
        }
        tracing::trace!(?kind, bytes = text.len(), "sending");
        let queued_as = match kind {
            SendKind::Heartbeat => Kind::Heartbeat,
            SendKind::Handshake => Kind::Other,
        };
        conn.outbox
            .borrow_mut()
            .push(WsMessage::Text(text.into()), queued_as);
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
        self.metrics_cause(ReconnectCause::Zombie);
        // Zombie detection waits while reads are paused, and after a pause until the reader has
        // caught up with the socket: an ACK may be sitting unread.
        self.state
            .set_reading_paused(self.delivery.reads_held_lately());
        self.state.on_heartbeat_due(Instant::now());
        self.drain(ctx);
    }

    fn request_identify(&mut self, ctx: &mut Context<Self>) {
        let generation = self.generation;
        let request = self.shared.queue.acquire(self.id, self.total);
        let asked = Instant::now();
        let handle = ctx.spawn(request.into_actor(self).map(move |permit, act, ctx| {
            if let Some(m) = &act.metrics {
                m.identify_waited(asked.elapsed());
            }
            if let Some(conn) = &mut act.conn {
                conn.identify = None;
            }
            if act.generation == generation && act.state.on_identify_permit() {
                let _span = act.span.clone().entered();
                act.drain(ctx);
                // The Identify is written: the gateway may have seen it even if the connection
                // dies now, so its session start stays spent.
                permit.used();
            }
            // Otherwise nothing was sent: the permit drops unused and its session start goes back.
        }));
        match &mut self.conn {
            Some(conn) => {
                if let Some(old) = conn.identify.replace(handle) {
                    ctx.cancel_future(old);
                }
            }
            None => {
                ctx.cancel_future(handle);
            }
        }
    }

    /// Sends queued commands while the limiter allows; schedules itself for when it next will.
    fn flush_commands(&mut self, ctx: &mut Context<Self>) {
        if self.state.phase() != Phase::Ready || self.unsettled.is_some() || !self.may_write(ctx) {
            return;
        }
        let Some(conn) = &mut self.conn else { return };
        while let Some(text) = self.queued.get(self.in_flight) {
            match conn.limiter.try_command(Instant::now()) {
                Ok(()) => {
                    conn.outbox
                        .borrow_mut()
                        .push(WsMessage::Text(text.as_str().into()), Kind::Command);
                    self.in_flight += 1;
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

    /// The socket of connection `generation` took the next `count` commands it was given whole.
    fn commands_written(&mut self, generation: u64, count: usize, ctx: &mut Context<Self>) {
        if generation == self.generation && self.conn.is_some() {
            let count = count.min(self.in_flight);
            self.queued.drain(..count);
            self.in_flight -= count;
            return;
        }
        // A connection closed with a code, taking what it held before its close frame.
        let Some((of, left)) = &mut self.unsettled else {
            return;
        };
        if *of != generation {
            return;
        }
        let count = count.min(*left).min(self.queued.len());
        self.queued.drain(..count);
        *left -= count;
        if *left == 0 {
            self.unsettled = None;
            self.flush_commands(ctx);
        }
    }

    /// The writer of connection `generation` is done (failed, or dropped at the end of the close
    /// grace): the commands it did not write stay queued and go out on the current connection.
    fn settle(&mut self, generation: u64, ctx: &mut Context<Self>) {
        if self.unsettled.is_some_and(|(of, _)| of == generation) {
            self.unsettled = None;
            self.flush_commands(ctx);
        }
    }

    /// The connection's writer failed: the connection is over, as if a read had failed; the
    /// commands it did not take stay queued for the next one.
    fn write_failed(
        &mut self,
        generation: u64,
        error: actix_http::ws::ProtocolError,
        ctx: &mut Context<Self>,
    ) {
        if generation != self.generation || self.conn.is_none() {
            self.settle(generation, ctx);
            return;
        }
        let _span = self.span.clone().entered();
        tracing::warn!(%error, unsent = self.in_flight, "websocket write failed; reconnecting");
        self.metrics_cause(ReconnectCause::TransportError);
        self.state.on_connection_failed();
        self.drain(ctx);
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
            pending: self.delivery.pending(),
            dropped: self.delivery.dropped(),
            reading_paused_since: self.delivery.behind_since(),
            stalled_handlers: self.delivery.stalled_handlers(),
            owner: None,
        }
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        self.watch_guard(ctx);
        if let Some(m) = &self.metrics {
            ctx.run_interval(m.flush_every(), |act, _| act.flush_metrics());
        }
        self.connect(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.flush_metrics();
        self.delivery.stopped();
        if let Some(supervisor) = &self.supervisor {
            let (supervisor, incarnation) = supervisor;
            supervisor.do_send(ShardNotice::Stopped {
                id: self.id,
                incarnation: *incarnation,
                fatal: self.fatal.clone(),
                deliberate: self.deliberate_stop,
            });
        }
    }
}

impl ShardActor {
    fn on_ws_item(&mut self, event: WsEvent, ctx: &mut Context<Self>) {
        if event.generation != self.generation {
            return;
        }
        if self.conn.is_none() || self.state.phase() == Phase::Stopped {
            // A connection being closed: only the end of its close handshake matters now.
            tracing::debug!(parent: &self.span, end = event.frame.is_none(), "read from a connection being closed");
            if matches!(event.frame, None | Some(Ok(Frame::Close(_))) | Some(Err(_))) {
                if let Some(answered) = self.close_answered.take() {
                    let _ = answered.send(());
                }
            }
            return;
        }
        let _span = self.span.clone().entered();
        self.on_ws_event(event.frame, ctx);
    }

    /// Stops the actor once its handlers have finished every event it gave them (so the stored
    /// sequence a graceful hand-over leaves is the last event, and the next owner repeats nothing),
    /// or after [`HANDLERS_GRACE`]: then the next owner replays what they had not finished.
    fn stop_once_handlers_finish(&mut self, ctx: &mut Context<Self>) {
        if self.delivery.settled() {
            ctx.stop();
            return;
        }
        let deadline = Instant::now() + HANDLERS_GRACE;
        ctx.run_interval(Duration::from_millis(5), move |act, ctx| {
            if act.delivery.settled() || Instant::now() >= deadline {
                ctx.stop();
            }
        });
    }

    /// Gives the handlers what the frames read so far produced.
    fn hand_over(&mut self, ctx: &mut Context<Self>) {
        self.delivery.hand_over(ctx);
        self.state.release_buffers();
    }
}

/// Metrics hooks: each does nothing unless the bot enabled metrics (and compiles to nothing
/// without the `metrics` feature).
impl ShardActor {
    /// Notes why the state machine is about to reconnect, if what it is told next makes it.
    fn metrics_cause(&mut self, cause: ReconnectCause) {
        if let Some(m) = &mut self.metrics {
            m.cause(cause);
        }
    }

    fn metrics_reconnected(&mut self) {
        if let Some(m) = &mut self.metrics {
            m.reconnected();
        }
    }

    fn metrics_wire(&mut self, bytes: usize) {
        if let Some(m) = &mut self.metrics {
            m.wire(bytes);
        }
    }

    fn flush_metrics(&mut self) {
        if let Some(m) = &mut self.metrics {
            m.observe(self.state.phase(), self.state.latency());
            m.flush(self.delivery.pending(), self.delivery.dropped());
        }
    }
}

/// The payload bytes of a continuation frame.
fn item_len(item: &Item) -> usize {
    match item {
        Item::FirstText(b) | Item::FirstBinary(b) | Item::Continue(b) | Item::Last(b) => b.len(),
    }
}

impl Deliver for ShardActor {
    fn delivery(&mut self) -> &mut Delivery {
        &mut self.delivery
    }

    fn emit(&self, event: ShardEvent) {
        ShardActor::emit(self, event);
    }
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

impl ShardActor {
    /// Whether this process may still write to the shard's connection; when it may not (the lease
    /// is gone), the shard is abandoned on the spot.
    fn may_write(&mut self, ctx: &mut Context<Self>) -> bool {
        match &self.guard {
            Some(guard) if !guard.holds(Instant::now()) => {
                self.abandon(ctx);
                false
            }
            _ => true,
        }
    }

    /// Stops the shard when its lease runs out unrenewed, even if nothing was about to be written.
    fn watch_guard(&mut self, ctx: &mut Context<Self>) {
        let Some(guard) = &self.guard else { return };
        let left = guard.remaining(Instant::now());
        ctx.run_later(left + Duration::from_millis(1), |act, ctx| {
            if act.may_write(ctx) {
                act.watch_guard(ctx);
            }
        });
    }

    /// Drops the connection without a frame and stops: another process owns the shard now, and
    /// anything sent (a heartbeat, a close code) could disturb its connection. The session stays
    /// in the store for the new owner to resume.
    fn abandon(&mut self, ctx: &mut Context<Self>) {
        if self.deliberate_stop {
            return;
        }
        let _span = self.span.clone().entered();
        tracing::warn!("lease lost: dropping the connection without a frame and stopping");
        self.deliberate_stop = true;
        self.state.shutdown(true);
        if let Some(handle) = self.reconnect_timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(conn) = self.conn.take() {
            // The writer goes too, with whatever its outbox still held: dropping it closes the
            // socket without a websocket frame.
            let handles = [conn.heartbeat, conn.deadline, conn.identify];
            for handle in handles
                .into_iter()
                .flatten()
                .chain([conn.reader, conn.writer])
            {
                ctx.cancel_future(handle);
            }
        }
        ctx.stop();
    }
}

impl Handler<Abandon> for ShardActor {
    type Result = ();

    fn handle(&mut self, _: Abandon, ctx: &mut Self::Context) {
        self.abandon(ctx);
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
        self.delivery.drain(ctx);
        if let Some(handle) = self.reconnect_timer.take() {
            ctx.cancel_future(handle);
        }
        tracing::info!(code, resumable, "shutting down");
        let (answered, close_answered) = tokio::sync::oneshot::channel();
        if self.conn.is_some() {
            self.close_answered = Some(answered);
        } else {
            let _ = answered.send(());
        }
        self.teardown(Some(code), ctx);
        // Stop once the gateway has answered the close (or after the grace period, if it never does)
        // and the handlers have finished what they were given.
        let answered = async move {
            let _ = actix_rt::time::timeout(CLOSE_GRACE, close_answered).await;
        };
        Box::pin(
            answered
                .into_actor(self)
                .map(|(), act, ctx| act.stop_once_handlers_finish(ctx)),
        )
    }
}

impl Handler<ReleaseHeld> for ShardActor {
    type Result = ();

    fn handle(&mut self, _: ReleaseHeld, ctx: &mut Self::Context) {
        for dispatch in self.shared.gate.release(self.id) {
            self.delivery.deliver(dispatch, ctx);
        }
        self.hand_over(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &WsMessage) -> String {
        match m {
            WsMessage::Text(t) => t.to_string(),
            WsMessage::Pong(p) => format!("pong {}", String::from_utf8_lossy(p)),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn pings_and_heartbeats_waiting_for_the_socket_keep_one_answer_each_ahead_of_commands() {
        let mut out = Outbox::default();
        out.push(WsMessage::Text("identify".into()), Kind::Other);
        for i in 0..3 {
            out.push(
                WsMessage::Text(format!("command {i}").into()),
                Kind::Command,
            );
        }
        // A peer that keeps pinging and asking for heartbeats while the socket takes nothing.
        for i in 0..1000 {
            out.push(WsMessage::Pong(Bytes::from(format!("{i}"))), Kind::Pong);
            out.push(WsMessage::Text(format!("beat {i}").into()), Kind::Heartbeat);
        }
        let queued: Vec<String> = out.queue.iter().map(|(m, _)| text(m)).collect();
        assert_eq!(
            queued,
            [
                "identify",
                "pong 999",
                "beat 999",
                "command 0",
                "command 1",
                "command 2"
            ]
        );
    }
}
