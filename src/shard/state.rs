//! One shard's protocol as a sans-IO state machine: inputs in (a frame, a heartbeat tick, a close, an
//! identify permit), actions out (send this, deliver that, reconnect, stop). Every rule of
//! docs/protocol.md §3–§4 lives here; there is no socket and no clock (callers pass `now`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;

use crate::error::FatalError;
use crate::protocol::command::{self, Identify, IdentifyProperties, Resume};
use crate::protocol::{close_code, CloseAction, CloseCode, Envelope, OpCode, PresenceUpdate};
use crate::router::{event_name, Dispatch};
use crate::session::SessionInfo;
use crate::shard::log_throttle::Throttles;
use crate::token::Token;

/// The close code used to leave a connection while keeping the session resumable (docs/protocol.md §4:
/// 1000/1001 would invalidate it; 4000 is customary).
pub const RESUME_CLOSE_CODE: u16 = 4000;
/// The close code of a final shutdown: the session ends.
pub const FINAL_CLOSE_CODE: u16 = 1000;

/// Connects in a row to a resume URL that may fail before the shard resumes through the gateway
/// URL instead. A resume host can go away for good (a gateway node retired); one or two failures
/// are more often a blip the same host gets over, and its session is freshest there. Three, with
/// the backoff between them, is a few seconds of trying before the gateway URL is used.
pub const RESUME_HOST_ATTEMPTS: u32 = 3;

pub use crate::phase::Phase;

/// What kind of frame is being sent, for the rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendKind {
    /// A heartbeat: uses the room reserved for heartbeats.
    Heartbeat,
    /// Identify or Resume: first on a connection.
    Handshake,
}

/// What the shell must do.
#[derive(Debug)]
pub enum Action {
    /// Send this JSON text frame.
    Send(String, SendKind),
    /// (Re)start the heartbeat timer: first tick after `first`, then every `interval`.
    StartHeartbeat {
        /// Delay to the first heartbeat (interval × jitter).
        first: Duration,
        /// Interval between heartbeats.
        interval: Duration,
    },
    /// Ask the identify queue for a permit, then call [`ShardState::on_identify_permit`].
    RequestIdentify,
    /// Hand this event to the router.
    Deliver(Dispatch),
    /// The session changed: store it (`Some`) or forget it (`None`).
    StoreSession(Option<SessionInfo>),
    /// READY (`resumed: false`) or RESUMED (`resumed: true`) arrived: the connection is healthy.
    Ready {
        /// Whether the session was resumed.
        resumed: bool,
    },
    /// Close the socket (with `close_code`, if it is still open) and connect again; the next
    /// connection resumes if a session is kept, else identifies.
    Reconnect {
        /// The code to close with; `None` when the socket is already closed.
        close_code: Option<u16>,
        /// The gateway asked for this reconnect (op 7) on a healthy connection: it owes no
        /// backoff delay. Every other reconnect (a drop, a close, a zombie, a failed attempt)
        /// waits its backoff delay, so that shards failing together spread out.
        at_once: bool,
    },
    /// Stop for good.
    Fatal(FatalError),
}

/// What a shard identifies with.
#[derive(Debug, Clone)]
pub struct IdentifyParams {
    /// The bot token.
    pub token: Token,
    /// Intent bits.
    pub intents: u64,
    /// Identify properties.
    pub properties: IdentifyProperties,
    /// 50..=250.
    pub large_threshold: u8,
    /// Initial presence.
    pub presence: Option<PresenceUpdate>,
    /// The gateway URL to identify on (no query).
    pub gateway_url: String,
    /// Domains whose subdomains a `resume_gateway_url` may use.
    pub allowed_resume_domains: Vec<String>,
}

/// Heartbeats in flight beyond this many are not tracked for latency: a gateway that keeps asking
/// (op 1) without acknowledging cannot grow the list without bound.
const MAX_TRACKED_BEATS: usize = 16;

#[derive(Debug, Default)]
struct Heartbeat {
    interval: Option<Duration>,
    /// When the heartbeats not yet acknowledged were sent, oldest first. An ACK carries nothing to
    /// match it with, so it answers the oldest (the gateway answers in order): its round trip is
    /// the latency.
    unacked: VecDeque<Instant>,
    /// When the last scheduled beat went out.
    last_scheduled: Option<Instant>,
    /// The last scheduled beat has had no ACK since it went out: if that is still so when the
    /// next one is due, the connection is a zombie. Replies to the gateway's op 1 never set it.
    scheduled_unanswered: bool,
    latency: Option<Duration>,
}

/// Kinds of warning the gateway's input can cause, each rate-limited on its own
/// ([`crate::shard::log_throttle`]).
#[derive(Debug, Clone, Copy)]
enum Noise {
    /// A frame skipped: not one object, a dispatch without `t` or `s`, a second Hello.
    Skipped = 0,
    /// An opcode the gateway does not send, or one nobody knows.
    Opcode = 1,
    /// A sequence number past the next one.
    Gap = 2,
}

/// One shard's protocol state.
#[derive(Debug)]
pub struct ShardState {
    shard: u32,
    total: u32,
    params: Arc<IdentifyParams>,
    phase: Phase,
    session: Option<SessionInfo>,
    /// Last non-null `s` received (docs/protocol.md §3.5).
    seq: Option<u64>,
    heartbeat: Heartbeat,
    /// The shell has stopped reading the socket (handlers are behind): an ACK may be sitting unread,
    /// so a missing one proves nothing.
    reading_paused: bool,
    actions: VecDeque<Action>,
    /// Rate limits of the warnings the gateway's input can cause.
    noise: Throttles<3>,
}

#[derive(Deserialize)]
struct Hello {
    heartbeat_interval: u64,
}

#[derive(Deserialize)]
struct Ready<'a> {
    #[serde(borrow)]
    session_id: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    resume_gateway_url: Option<std::borrow::Cow<'a, str>>,
}

impl ShardState {
    /// A shard that will resume `session` if given, else identify.
    pub fn new(
        shard: u32,
        total: u32,
        params: Arc<IdentifyParams>,
        session: Option<SessionInfo>,
    ) -> Self {
        Self {
            shard,
            total,
            params,
            phase: Phase::Disconnected,
            seq: session.as_ref().map(|s| s.seq),
            session,
            heartbeat: Heartbeat::default(),
            reading_paused: false,
            actions: VecDeque::new(),
            noise: Throttles::default(),
        }
    }

    /// The next action to carry out, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Frees the action queue's buffer once it is empty, so an idle shard keeps none (the driver
    /// calls this after a batch of frames rather than per frame).
    pub fn release_buffers(&mut self) {
        if self.actions.is_empty() {
            self.actions = VecDeque::new();
        }
    }

    /// Where the shard is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The kept session, if any.
    pub fn session(&self) -> Option<&SessionInfo> {
        self.session.as_ref()
    }

    /// Last sequence received.
    pub fn seq(&self) -> Option<u64> {
        self.seq
    }

    /// Time between the last heartbeat and its ACK.
    pub fn latency(&self) -> Option<Duration> {
        self.heartbeat.latency
    }

    /// The heartbeat interval from Hello.
    #[cfg(test)]
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        self.heartbeat.interval
    }

    /// The base URL (no query) of the next connection: the resume URL when resuming (docs/protocol.md §3.7).
    pub fn connect_base(&self) -> &str {
        self.session
            .as_ref()
            .and_then(|s| s.resume_url.as_deref())
            .unwrap_or(&self.params.gateway_url)
    }

    /// The base URL of the next connection after `failed_connects` connects in a row that failed
    /// (refused, timed out): the resume URL until it has failed [`RESUME_HOST_ATTEMPTS`] times, then
    /// the gateway URL, where the session is resumed all the same (docs/design.md, "Resume URLs").
    pub fn connect_base_after(&self, failed_connects: u32) -> &str {
        if failed_connects >= RESUME_HOST_ATTEMPTS {
            &self.params.gateway_url
        } else {
            self.connect_base()
        }
    }

    /// Whether the next connection will resume.
    pub fn will_resume(&self) -> bool {
        self.session.is_some()
    }

    /// A new socket is open: the server speaks first (docs/protocol.md §3.1).
    pub fn on_open(&mut self) {
        self.phase = Phase::AwaitingHello;
        self.heartbeat = Heartbeat {
            latency: self.heartbeat.latency,
            ..Heartbeat::default()
        };
    }

    /// A frame arrived. `frame` holds the bytes `env` was parsed from; `jitter` in [0, 1) places the
    /// first heartbeat after Hello. `now` is called only by the frames that need the time (a
    /// heartbeat request, an ACK, a warning): a dispatch does not pay for reading the clock.
    pub fn on_frame(
        &mut self,
        frame: &Bytes,
        env: &Envelope,
        now: impl Fn() -> Instant,
        jitter: f64,
    ) {
        if self.phase == Phase::Stopped {
            return;
        }
        // `d` is found only for the opcodes that read it: finding where a dispatch's `d` ends means
        // scanning all of it, which is the handler's cost to pay, and only if it asks.
        match OpCode::from_u8(env.op) {
            Some(OpCode::Dispatch) => self.on_dispatch(frame, env, &now),
            Some(OpCode::Heartbeat) => {
                // §3.3: a server op 1 is answered at once; the answer is not a scheduled beat.
                self.send_heartbeat(now());
            }
            Some(OpCode::HeartbeatAck) => {
                // §3.6: an ACK answers the oldest heartbeat in flight; the latency is that beat's
                // round trip. An ACK with nothing in flight measures nothing.
                let heartbeat = &mut self.heartbeat;
                heartbeat.scheduled_unanswered = false;
                if let Some(sent) = heartbeat.unacked.pop_front() {
                    heartbeat.latency = Some(now().saturating_duration_since(sent));
                }
            }
            Some(OpCode::Hello) => {
                let Some(data) = self.read_data(frame, env, &now) else {
                    return;
                };
                self.on_hello(data, jitter, &now);
            }
            Some(OpCode::Reconnect) => {
                // §3.9: op 7 → reconnect and resume.
                tracing::info!(shard.id = self.shard, "gateway asked to reconnect (op 7)");
                let healthy = self.phase == Phase::Ready;
                self.reconnect_now(Some(RESUME_CLOSE_CODE), healthy);
            }
            Some(OpCode::InvalidSession) => {
                // §3.8: d = true → resume; false → the session is gone.
                let Some(data) = self.read_data(frame, env, &now) else {
                    return;
                };
                let resumable = data == b"true";
                tracing::warn!(shard.id = self.shard, resumable, "invalid session (op 9)");
                if !resumable {
                    self.forget_session();
                }
                self.reconnect(Some(RESUME_CLOSE_CODE));
            }
            Some(op) => {
                if let Some(suppressed) = self.noise.allow(Noise::Opcode as usize, now()) {
                    tracing::warn!(
                        shard.id = self.shard,
                        op = op.code(),
                        suppressed,
                        "ignored a send-only opcode from the gateway"
                    );
                }
            }
            None => {
                if let Some(suppressed) = self.noise.allow(Noise::Opcode as usize, now()) {
                    tracing::warn!(
                        shard.id = self.shard,
                        op = env.op,
                        suppressed,
                        "ignored an unknown opcode"
                    );
                }
            }
        }
    }

    /// `d` of a frame the shard itself reads, or `None` (with a warning) when the frame is not one
    /// JSON object: a `d` that runs to the frame's end with the object never closed must not pass
    /// for a whole one (docs/protocol.md §2).
    fn read_data<'f>(
        &mut self,
        frame: &'f [u8],
        env: &Envelope,
        now: impl Fn() -> Instant,
    ) -> Option<&'f [u8]> {
        match env.data.checked(frame) {
            Ok(range) => Some(range.and_then(|r| frame.get(r)).unwrap_or(b"null")),
            Err(e) => {
                if let Some(suppressed) = self.noise.allow(Noise::Skipped as usize, now()) {
                    tracing::warn!(
                        shard.id = self.shard,
                        op = env.op,
                        bytes = frame.len(),
                        error = %e,
                        suppressed,
                        "skipped a malformed frame: its object does not close after d"
                    );
                }
                None
            }
        }
    }

    fn on_hello(&mut self, data: &[u8], jitter: f64, now: impl Fn() -> Instant) {
        let hello = match serde_json::from_slice::<Hello>(data) {
            Ok(hello) if hello.heartbeat_interval > 0 => hello,
            _ => {
                tracing::warn!(
                    shard.id = self.shard,
                    "Hello without a valid heartbeat_interval; reconnecting"
                );
                self.reconnect(Some(RESUME_CLOSE_CODE));
                return;
            }
        };
        if self.phase != Phase::AwaitingHello {
            if let Some(suppressed) = self.noise.allow(Noise::Skipped as usize, now()) {
                tracing::warn!(shard.id = self.shard, phase = ?self.phase, suppressed, "ignored a second Hello");
            }
            return;
        }
        let interval = Duration::from_millis(hello.heartbeat_interval);
        self.heartbeat.interval = Some(interval);
        self.heartbeat.unacked.clear();
        self.heartbeat.last_scheduled = None;
        self.heartbeat.scheduled_unanswered = false;
        // §3.2: first heartbeat after interval × jitter, jitter in [0, 1).
        let jitter = if (0.0..1.0).contains(&jitter) {
            jitter
        } else {
            0.0
        };
        self.actions.push_back(Action::StartHeartbeat {
            first: interval.mul_f64(jitter),
            interval,
        });
        match &self.session {
            // §3.7: a kept session resumes with op 6, no Identify.
            Some(session) => {
                let frame = Resume {
                    token: self.params.token.expose(),
                    session_id: &session.session_id,
                    seq: self.seq.unwrap_or(session.seq),
                }
                .to_frame();
                self.phase = Phase::Resuming;
                self.actions
                    .push_back(Action::Send(frame, SendKind::Handshake));
            }
            None => {
                self.phase = Phase::AwaitingIdentify;
                self.actions.push_back(Action::RequestIdentify);
            }
        }
    }

    /// The identify queue granted a permit. Returns whether it was used (it is not if the connection
    /// went away while waiting).
    pub fn on_identify_permit(&mut self) -> bool {
        if self.phase != Phase::AwaitingIdentify {
            return false;
        }
        let p = &self.params;
        let frame = Identify {
            token: p.token.expose(),
            properties: &p.properties,
            compress: false,
            large_threshold: p.large_threshold,
            shard: [self.shard, self.total],
            presence: p.presence.as_ref(),
            intents: p.intents,
        }
        .to_frame();
        // §3.4: Identify starts a new session, numbered from its READY on: the old sequence (of
        // a session that could not be resumed) would make the new one's events look delivered.
        if self.seq.take().is_some() {
            tracing::debug!(shard.id = self.shard, "identifying: sequence reset");
        }
        self.phase = Phase::Identifying;
        self.actions
            .push_back(Action::Send(frame, SendKind::Handshake));
        true
    }

    fn on_dispatch(&mut self, frame: &Bytes, env: &Envelope, now: impl Fn() -> Instant) {
        let Some(name) = env.event.clone() else {
            if let Some(suppressed) = self.noise.allow(Noise::Skipped as usize, now()) {
                tracing::warn!(
                    shard.id = self.shard,
                    suppressed,
                    "ignored a dispatch without t"
                );
            }
            return;
        };
        let Some(event) = event_name(frame, name) else {
            if let Some(suppressed) = self.noise.allow(Noise::Skipped as usize, now()) {
                tracing::warn!(
                    shard.id = self.shard,
                    seq = env.seq,
                    suppressed,
                    "ignored a dispatch whose name is not UTF-8"
                );
            }
            return;
        };
        match &*event {
            // READY starts a session and RESUMED ends a resume: neither is ever taken for an
            // event already delivered (§3.4, §3.7).
            "READY" => {
                let Some(data) = self.read_data(frame, env, &now) else {
                    return;
                };
                // READY numbers the new session from its own `s` (1 in practice).
                self.seq = env.seq.or(self.seq);
                self.on_ready(data, env.seq.unwrap_or(0), &now);
            }
            "RESUMED" if self.phase == Phase::Resuming => {
                // Nothing to store: the session's id and URL are unchanged, and its stored
                // sequence moves as events are handed over (replayed events may still be queued
                // ahead of RESUMED; a restart must resume before them). A RESUMED whose `s` is
                // null or not above the last completes the resume all the same.
                self.phase = Phase::Ready;
                self.actions.push_back(Action::Ready { resumed: true });
            }
            _ => {}
        }
        let Some(seq) = env.seq else {
            if !matches!(&*event, "READY" | "RESUMED") {
                if let Some(suppressed) = self.noise.allow(Noise::Skipped as usize, now()) {
                    tracing::warn!(shard.id = self.shard, event = %event, suppressed, "ignored a dispatch without s");
                }
            }
            return;
        };
        let fresh = &*event == "READY" || self.seq.is_none_or(|last| seq > last);
        if !fresh {
            // A replayed or repeated event already delivered: exactly once means skip it. (A
            // RESUMED here has done its work above; handlers only see rising sequence numbers.)
            tracing::debug!(
                shard.id = self.shard,
                seq,
                last = self.seq,
                event = %event,
                "skipped an event already delivered"
            );
            return;
        }
        if let Some(last) = self.seq {
            // `s` is the gateway's number: any u64, so no arithmetic on it may overflow.
            if seq > last.saturating_add(1) && self.phase == Phase::Ready {
                if let Some(suppressed) = self.noise.allow(Noise::Gap as usize, now()) {
                    tracing::warn!(shard.id = self.shard, seq, last, suppressed, "sequence gap");
                }
            }
        }
        self.seq = Some(seq);
        self.actions.push_back(Action::Deliver(Dispatch::new(
            self.shard,
            seq,
            event,
            frame.clone(),
            env.data,
        )));
    }

    fn on_ready(&mut self, data: &[u8], seq: u64, now: impl Fn() -> Instant) {
        let ready = match serde_json::from_slice::<Ready<'_>>(data) {
            Ok(ready) => ready,
            Err(e) => {
                // The kind of error and where, not serde's message: it may quote the frame.
                if let Some(suppressed) = self.noise.allow(Noise::Skipped as usize, now()) {
                    tracing::warn!(shard.id = self.shard, error = ?e.classify(), column = e.column(), suppressed, "READY without a session id: this session cannot be resumed");
                }
                self.phase = Phase::Ready;
                self.actions.push_back(Action::Ready { resumed: false });
                return;
            }
        };
        let resume_url = match ready.resume_gateway_url {
            None => None,
            Some(url) => {
                let p = &self.params;
                if crate::url::resume_url_allowed(&url, &p.gateway_url, &p.allowed_resume_domains) {
                    Some(url.into_owned())
                } else if p.allowed_resume_domains.is_empty() {
                    // Behind a proxy of the bot's own, resuming through it is the rule, not news.
                    tracing::debug!(
                        shard.id = self.shard,
                        url = %url,
                        "resume_gateway_url ignored: resumes go through the configured gateway URL"
                    );
                    None
                } else {
                    if let Some(suppressed) = self.noise.allow(Noise::Skipped as usize, now()) {
                        tracing::warn!(
                            shard.id = self.shard,
                            url = %url,
                            suppressed,
                            "resume_gateway_url is not on an allowed host; resuming on the gateway URL instead"
                        );
                    }
                    None
                }
            }
        };
        let session = SessionInfo {
            session_id: ready.session_id.into_owned(),
            seq,
            resume_url,
        };
        self.session = Some(session.clone());
        self.phase = Phase::Ready;
        self.actions.push_back(Action::StoreSession(Some(session)));
        self.actions.push_back(Action::Ready { resumed: false });
    }

    /// The heartbeat timer fired.
    pub fn on_heartbeat_due(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Disconnected | Phase::Stopped) {
            return;
        }
        // §3.6: no ACK since the last scheduled beat, and the next is due → zombie; close
        // non-1000 and resume. A reply to the gateway's op 1 sent moments ago proves nothing
        // either way: its ACK may still be on the way, and it has not had an interval to come back.
        let heartbeat = &mut self.heartbeat;
        if heartbeat.scheduled_unanswered && !self.reading_paused {
            tracing::warn!(
                shard.id = self.shard,
                unanswered_for = ?heartbeat.last_scheduled.map(|at| now.saturating_duration_since(at)),
                "no heartbeat ACK since the last heartbeat: zombie connection"
            );
            self.reconnect(Some(RESUME_CLOSE_CODE));
            return;
        }
        // The last scheduled beat was answered: anything sent before it whose ACK never came
        // (the gateway skipped one) is dropped, so the latency is not measured against it for long.
        // (While reading is paused, ACKs may be sitting unread: nothing is dropped then.)
        if let Some(last) = heartbeat
            .last_scheduled
            .filter(|_| !heartbeat.scheduled_unanswered)
        {
            while heartbeat.unacked.front().is_some_and(|&sent| sent <= last) {
                heartbeat.unacked.pop_front();
            }
        }
        heartbeat.last_scheduled = Some(now);
        heartbeat.scheduled_unanswered = true;
        self.send_heartbeat(now);
    }

    fn send_heartbeat(&mut self, now: Instant) {
        // §3.2: each op 1 carries the last non-null s.
        if self.heartbeat.unacked.len() < MAX_TRACKED_BEATS {
            self.heartbeat.unacked.push_back(now);
        }
        self.actions.push_back(Action::Send(
            command::heartbeat(self.seq),
            SendKind::Heartbeat,
        ));
    }

    /// The shell stopped (`true`) or resumed (`false`) reading the socket. While paused, heartbeats
    /// go on but zombie detection waits: unread ACKs are not missing ones.
    pub fn set_reading_paused(&mut self, paused: bool) {
        self.reading_paused = paused;
    }

    /// The socket closed: `code` is the close frame's code, `None` for a drop without one.
    pub fn on_close(&mut self, code: Option<u16>) {
        if matches!(self.phase, Phase::Disconnected | Phase::Stopped) {
            return;
        }
        let action = code.map_or(CloseAction::Resume, close_code::action_for);
        match action {
            CloseAction::Resume => {}
            // §4: 4003/4007/4009 start a new session.
            CloseAction::Identify => self.forget_session(),
            CloseAction::Fatal => {
                if let Some(code) = code.and_then(CloseCode::from_u16) {
                    self.phase = Phase::Stopped;
                    self.forget_session();
                    self.actions
                        .push_back(Action::Fatal(FatalError::Closed(code)));
                    return;
                }
            }
        }
        self.reconnect(None);
    }

    /// The shell gave up on the connection (timeout, transport error, oversized or undecodable
    /// message): reconnect, resuming if possible.
    pub fn on_connection_failed(&mut self) {
        if self.phase != Phase::Stopped {
            self.reconnect(Some(RESUME_CLOSE_CODE));
        }
    }

    /// A deliberate shutdown: `resumable` keeps the session (close non-1000), else it ends (1000).
    /// Returns the close code to send.
    pub fn shutdown(&mut self, resumable: bool) -> u16 {
        self.phase = Phase::Stopped;
        if resumable {
            RESUME_CLOSE_CODE
        } else {
            self.forget_session();
            FINAL_CLOSE_CODE
        }
    }

    fn forget_session(&mut self) {
        if self.session.take().is_some() || self.seq.is_some() {
            self.actions.push_back(Action::StoreSession(None));
        }
        self.seq = None;
    }

    fn reconnect(&mut self, close_code: Option<u16>) {
        self.reconnect_now(close_code, false);
    }

    fn reconnect_now(&mut self, close_code: Option<u16>, at_once: bool) {
        self.phase = Phase::Disconnected;
        self.heartbeat.unacked.clear();
        self.heartbeat.last_scheduled = None;
        self.heartbeat.scheduled_unanswered = false;
        self.actions.push_back(Action::Reconnect {
            close_code,
            at_once,
        });
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
