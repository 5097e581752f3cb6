//! One websocket connection of the fake gateway: everything docs/protocol.md says Discord checks and does.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_http::ws::{CloseCode, CloseReason, Item, Message};

use super::wire::{Incoming, Outgoing};
use bytestring::ByteString;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::compress::Compressor;
use super::state::{Command, State};
use super::{ConnectionOutcome, FakeConfig, RecordedFrame};
use crate::protocol::command::MAX_SENT_FRAME;
use crate::protocol::{CloseCode as Code, Intents, OpCode};

/// What a handshake or command decided, carried out after the state lock is released.
enum Reply {
    /// Close with this code; the reason goes into the log and the close frame.
    Close(u16, &'static str),
    /// op 9 `false`, for this reason (logged).
    InvalidSession(&'static str),
    Send(Vec<ByteString>),
    Nothing,
}

/// What to do with the connection after handling a frame.
enum Flow {
    Continue,
    /// Close with this code; the reason goes into the log and the close frame.
    Close(u16, &'static str),
    Drop,
}

pub(crate) struct Connection {
    pub id: u64,
    pub shared: Arc<Mutex<State>>,
    pub out: Outgoing,
    pub stream: Incoming,
    pub commands: UnboundedReceiver<Command>,
    pub compressor: Option<Compressor>,
    /// Set when the query was refused: close with it right after the upgrade.
    pub refuse: Option<(u16, &'static str)>,
}

struct Conn {
    /// Events of the flood still to send after READY.
    flood_left: usize,
    flood: Option<super::Flood>,
    id: u64,
    shared: Arc<Mutex<State>>,
    out: Outgoing,
    compressor: Option<Compressor>,
    fragment: Option<usize>,
    shard: Option<u32>,
    session_id: Option<String>,
    authenticated: bool,
    received: VecDeque<Instant>,
    limit: (u32, Duration),
    heartbeat_timeout: Duration,
    deadline: Instant,
}

fn lock(shared: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic elsewhere must not take the whole fake gateway down with it.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether an Identify/Resume token is the bot's: bare, or with the `Bot ` prefix that some clients
/// send and Discord accepts.
/// The guilds of shard `shard` of `total`: the bot's guilds it owns by the formula, or (with no
/// bot-wide guilds configured) `guilds_per_shard` made-up ids that the formula puts on it.
fn guilds_for(state: &State, config: &FakeConfig, shard: u32, total: u32) -> Vec<u64> {
    if !state.guilds.is_empty() {
        return state.guilds_of(shard, total);
    }
    let total64 = u64::from(total);
    // The first multiple of `total` from GUILD_BASE up, so that guild n of shard s is owned by s.
    let base = super::GUILD_BASE - super::GUILD_BASE % total64 + total64;
    (0..u64::from(config.guilds_per_shard))
        .map(|n| (base + n * total64 + u64::from(shard)) << 22)
        .collect()
}

fn token_matches(sent: &Value, token: &str) -> bool {
    sent.as_str()
        .is_some_and(|t| t == token || t.strip_prefix("Bot ") == Some(token))
}

fn frame(op: OpCode, d: Value) -> ByteString {
    ByteString::from(json!({"t": null, "s": null, "op": op.code(), "d": d}).to_string())
}

impl Connection {
    pub async fn run(self) {
        let Connection {
            id,
            shared,
            out,
            mut stream,
            mut commands,
            compressor,
            refuse,
        } = self;
        let (interval, heartbeat_timeout, limit, fragment, send_hello) = {
            let state = lock(&shared);
            let c = &state.config;
            let timeout = if c.heartbeat_timeout.is_zero() {
                c.heartbeat_interval.mul_f64(1.5) + Duration::from_millis(100)
            } else {
                c.heartbeat_timeout
            };
            (
                c.heartbeat_interval,
                timeout,
                c.command_limit,
                c.fragment_size,
                c.send_hello,
            )
        };
        let flood = lock(&shared).config.flood_on_ready.clone();
        let mut conn = Conn {
            flood_left: 0,
            flood,
            id,
            shared: shared.clone(),
            out,
            compressor,
            fragment,
            shard: None,
            session_id: None,
            authenticated: false,
            received: VecDeque::new(),
            limit,
            heartbeat_timeout,
            deadline: Instant::now() + heartbeat_timeout,
        };
        let flow = match refuse {
            Some((code, reason)) => Flow::Close(code, reason),
            None => {
                // §3.1: the server speaks first.
                let hello = frame(
                    OpCode::Hello,
                    json!({"heartbeat_interval": interval.as_millis() as u64}),
                );
                let hello = if send_hello { vec![hello] } else { Vec::new() };
                if conn.send(hello).await {
                    conn.serve(&mut stream, &mut commands).await
                } else {
                    Flow::Drop
                }
            }
        };
        match flow {
            Flow::Close(code, reason) => conn.close(code, reason).await,
            Flow::Drop => {
                tracing::debug!(
                    conn = id,
                    shard = conn.shard,
                    "fake gateway: connection ended without a close frame from the fake"
                );
            }
            Flow::Continue => {}
        }
        lock(&shared).close(id);
    }
}

impl Conn {
    async fn serve(
        &mut self,
        stream: &mut Incoming,
        commands: &mut UnboundedReceiver<Command>,
    ) -> Flow {
        loop {
            let deadline = tokio::time::Instant::from_std(self.deadline);
            tokio::select! {
                // Client frames first: a heartbeat that arrived in time counts even if the deadline
                // passed while this task was busy sending.
                biased;
                message = stream.next() => match message {
                    None => return Flow::Drop,
                    Some(Err(e)) => {
                        tracing::info!(conn = self.id, shard = self.shard, error = %e, "fake gateway: client sent an undecodable frame");
                        return Flow::Close(Code::DecodeError.code(), "the client sent a frame the websocket codec could not decode");
                    }
                    Some(Ok(Message::Text(text))) => match self.on_text(text.as_bytes()).await {
                        Flow::Continue => {}
                        other => return other,
                    },
                    Some(Ok(Message::Binary(bytes))) => {
                        self.record(&bytes);
                        // §2: the client speaks JSON text.
                        return Flow::Close(Code::DecodeError.code(), "binary frame: the client must send JSON text");
                    }
                    Some(Ok(Message::Close(reason))) => {
                        let code = reason.map(|r| u16::from(r.code));
                        self.client_closed(code);
                        self.out.close(None).await;
                        return Flow::Drop;
                    }
                    Some(Ok(Message::Ping(payload))) => {
                        let _ = self.out.send(Message::Pong(payload)).await;
                    }
                    Some(Ok(_)) => {}
                },
                command = commands.recv() => match command {
                    None | Some(Command::Drop) => return Flow::Drop,
                    Some(Command::Send(frames)) => {
                        if !self.send(frames).await {
                            return Flow::Drop;
                        }
                    }
                    Some(Command::RawText(text)) => {
                        let _ = self.out.send(Message::Text(text.into())).await;
                    }
                    Some(Command::RawCompressed(bytes)) => {
                        let message = match &mut self.compressor {
                            Some(c) => Message::Binary(c.compress(&bytes).into()),
                            None => Message::Binary(bytes),
                        };
                        if !self.out.send(message).await {
                            return Flow::Drop;
                        }
                    }
                    Some(Command::RawBinary(bytes)) => {
                        let _ = self.out.send(Message::Binary(bytes)).await;
                    }
                    Some(Command::RawWire(bytes)) => {
                        self.out.raw(&bytes);
                        if !self.out.flush().await {
                            return Flow::Drop;
                        }
                    }
                    Some(Command::InvalidSession(resumable)) => {
                        if !self.invalid_session(resumable, "requested by the test script").await {
                            return Flow::Drop;
                        }
                    }
                    Some(Command::Close(code)) => return Flow::Close(code, "closed by the test script"),
                    Some(Command::PastGuildCap) => {
                        return Flow::Close(
                            Code::ShardingRequired.code(),
                            "the shard holds more guilds than the cap",
                        )
                    }
                },
                _ = std::future::ready(()), if self.flood_left > 0 => {
                    if !self.flood_chunk().await {
                        return Flow::Drop;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Flow::Close(Code::SessionTimedOut.code(), "no heartbeat in time");
                }
            }
        }
    }

    fn client_closed(&mut self, code: Option<u16>) {
        tracing::info!(
            conn = self.id,
            shard = self.shard,
            code,
            "fake gateway: client closed the connection"
        );
        let mut state = lock(&self.shared);
        if let Some(record) = state.conn_mut(self.id) {
            record.client_close_code = code;
            record.client_closed_at = Some(Instant::now());
        }
        // §4: closing with 1000 or 1001 ends the session.
        if matches!(code, Some(1000 | 1001)) {
            if let Some(id) = &self.session_id {
                state.invalidate(id);
            }
        }
    }

    /// Sends the next chunk of the flood: a few hundred events between looks at the client's frames.
    async fn flood_chunk(&mut self) -> bool {
        let (Some(flood), Some(session_id)) = (self.flood.clone(), self.session_id.clone()) else {
            self.flood_left = 0;
            return true;
        };
        let sent = flood.count - self.flood_left;
        let chunk = self.flood_left.min(256);
        let mut frames = Vec::with_capacity(chunk + 1);
        {
            let mut state = lock(&self.shared);
            for i in sent..sent + chunk {
                if flood.probe_every > 0 && i % flood.probe_every == 0 {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    let probe = format!(r#"{{"sent_ns":{}}}"#, now.as_nanos());
                    frames.extend(state.append(&session_id, "LATENCY_PROBE", &probe));
                }
                frames.extend(state.append(&session_id, &flood.event, &flood.d));
            }
        }
        self.flood_left -= chunk;
        self.send(frames).await
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        tracing::info!(
            conn = self.id,
            shard = self.shard,
            code,
            reason,
            "fake gateway: closing the connection"
        );
        {
            let mut state = lock(&self.shared);
            if let Some(record) = state.conn_mut(self.id) {
                record.server_close_code = Some(code);
            }
            // Discord ends the session with these (docs/protocol.md §4).
            if matches!(code, 4004 | 4007 | 4009 | 4010 | 4011 | 4012 | 4013 | 4014) {
                if let Some(id) = &self.session_id {
                    state.invalidate(id);
                }
            }
        }
        // Discord's close frames carry a short description too; this one says which rule broke.
        let reason = CloseReason {
            code: CloseCode::Other(code),
            description: Some(reason.to_owned()),
        };
        self.out.close(Some(reason)).await;
    }

    /// Sends frames in order, compressed and fragmented as configured. False once the client is gone.
    async fn send(&mut self, frames: Vec<ByteString>) -> bool {
        if self.compressor.is_none() {
            let bytes = frames.iter().map(|f| f.len()).sum();
            self.out.reserve(bytes, frames.len());
        }
        for text in frames {
            let (payload, is_text) = match &mut self.compressor {
                Some(c) => (bytes::Bytes::from(c.compress(text.as_bytes())), false),
                None => (text.into_bytes(), true),
            };
            match self.fragment.filter(|&f| f > 0 && payload.len() > f) {
                None if is_text => self.out.text(&payload),
                None => self.out.message(Message::Binary(payload)),
                Some(size) => {
                    for message in continuation_frames(payload, is_text, size) {
                        self.out.message(message);
                    }
                }
            }
        }
        self.out.flush().await
    }

    fn record(&mut self, raw: &[u8]) -> Option<Value> {
        let json: Option<Value> = serde_json::from_slice(raw).ok();
        let op = json
            .as_ref()
            .and_then(|j| j.get("op"))
            .and_then(Value::as_u64)
            .and_then(|op| u8::try_from(op).ok());
        let mut state = lock(&self.shared);
        state.frames.push(RecordedFrame {
            connection: self.id,
            shard: self.shard,
            at: Instant::now(),
            op,
            json: json.clone().unwrap_or(Value::Null),
            raw: String::from_utf8_lossy(raw).into_owned(),
        });
        json
    }

    /// Gives the frame just recorded (an Identify or Resume) the shard it turned out to be for.
    fn tag_last_frame(&mut self, shard: u32) {
        let mut state = lock(&self.shared);
        let id = self.id;
        if let Some(frame) = state.frames.iter_mut().rev().find(|f| f.connection == id) {
            frame.shard = Some(shard);
        }
    }

    async fn on_text(&mut self, raw: &[u8]) -> Flow {
        let json = self.record(raw);
        // §5: sent payloads are at most 4096 bytes.
        if raw.len() > MAX_SENT_FRAME {
            return Flow::Close(Code::DecodeError.code(), "frame over 4096 bytes");
        }
        // §5: 120 commands per 60 s, heartbeats included.
        let now = Instant::now();
        while self
            .received
            .front()
            .is_some_and(|&t| now - t >= self.limit.1)
        {
            self.received.pop_front();
        }
        self.received.push_back(now);
        if self.received.len() > self.limit.0 as usize {
            return Flow::Close(
                Code::RateLimited.code(),
                "more than the allowed commands per window",
            );
        }
        let Some(json) = json.filter(Value::is_object) else {
            return Flow::Close(Code::DecodeError.code(), "frame is not a JSON object");
        };
        let Some(op) = json["op"].as_u64() else {
            return Flow::Close(Code::DecodeError.code(), "frame has no numeric op");
        };
        let d = &json["d"];
        match u8::try_from(op).ok().and_then(OpCode::from_u8) {
            Some(OpCode::Heartbeat) => {
                self.deadline = Instant::now() + self.heartbeat_timeout;
                let ack = self
                    .shard
                    .is_none_or(|s| !lock(&self.shared).no_ack.contains(&s));
                if ack {
                    let ack = ByteString::from_static(r#"{"t":null,"s":null,"op":11,"d":null}"#);
                    if !self.send(vec![ack]).await {
                        return Flow::Drop;
                    }
                }
                Flow::Continue
            }
            Some(OpCode::Identify | OpCode::Resume)
                if !lock(&self.shared).config.answer_handshake =>
            {
                Flow::Continue
            }
            Some(OpCode::Identify) => {
                let reply = self.identify(d);
                self.reply(reply).await
            }
            Some(OpCode::Resume) => {
                let reply = self.resume(d);
                self.reply(reply).await
            }
            Some(
                op @ (OpCode::PresenceUpdate
                | OpCode::VoiceStateUpdate
                | OpCode::RequestGuildMembers
                | OpCode::RequestSoundboardSounds),
            ) => {
                if !self.authenticated {
                    // §4: a payload before Identify.
                    return Flow::Close(Code::NotAuthenticated.code(), "command before Identify");
                }
                let reply = self.command(op, d);
                self.reply(reply).await
            }
            // Receive-only opcodes and unknown ones (§2).
            _ => Flow::Close(Code::UnknownOpcode.code(), "opcode the client may not send"),
        }
    }

    /// Sends op 9. Discord keeps the connection open after it: the connection is no longer
    /// authenticated, and the client may send Resume (when `resumable`) or Identify on it, or
    /// reconnect (docs/protocol.md §3.8). The session stops being sent to it until a Resume.
    async fn invalid_session(&mut self, resumable: bool, reason: &'static str) -> bool {
        tracing::info!(
            conn = self.id,
            shard = self.shard,
            resumable,
            reason,
            "fake gateway: invalid session (op 9)"
        );
        self.authenticated = false;
        self.session_id = None;
        self.flood_left = 0;
        lock(&self.shared).detach(self.id);
        self.send(vec![frame(OpCode::InvalidSession, json!(resumable))])
            .await
    }

    /// Carries out what a handshake or command decided.
    async fn reply(&mut self, reply: Reply) -> Flow {
        let frames = match reply {
            Reply::Close(code, reason) => return Flow::Close(code, reason),
            Reply::Nothing => return Flow::Continue,
            Reply::InvalidSession(reason) => {
                return if self.invalid_session(false, reason).await {
                    Flow::Continue
                } else {
                    Flow::Drop
                };
            }
            Reply::Send(frames) => frames,
        };
        if self.send(frames).await {
            Flow::Continue
        } else {
            Flow::Drop
        }
    }

    fn identify(&mut self, d: &Value) -> Reply {
        if self.authenticated {
            return Reply::Close(
                Code::AlreadyAuthenticated.code(),
                "Identify on an authenticated connection",
            );
        }
        let mut state = lock(&self.shared);
        let config = state.config.clone();
        if !token_matches(&d["token"], &config.token) {
            return Reply::Close(
                Code::AuthenticationFailed.code(),
                "Identify with a wrong token",
            );
        }
        // §2 / §7: intents are required and must be documented bits.
        let Some(intents) = d["intents"]
            .as_u64()
            .filter(|&b| Intents::from_bits(b).is_some())
        else {
            return Reply::Close(
                Code::InvalidIntents.code(),
                "Identify without valid intents",
            );
        };
        if intents & Intents::PRIVILEGED.bits() & !config.privileged_intents_enabled != 0 {
            return Reply::Close(
                Code::DisallowedIntents.code(),
                "Identify with privileged intents not enabled",
            );
        }
        let (shard, total) = match &d["shard"] {
            Value::Null if config.required_shards <= 1 => (0, 1),
            Value::Array(a) if a.len() == 2 => match (a[0].as_u64(), a[1].as_u64()) {
                (Some(id), Some(total))
                    if total > 0 && id < total && total <= u64::from(u32::MAX) =>
                {
                    (id as u32, total as u32)
                }
                _ => {
                    return Reply::Close(
                        Code::InvalidShard.code(),
                        "Identify with an invalid shard",
                    )
                }
            },
            Value::Null => {
                return Reply::Close(
                    Code::ShardingRequired.code(),
                    "Identify without shard while sharding is required",
                )
            }
            _ => return Reply::Close(Code::InvalidShard.code(), "Identify with an invalid shard"),
        };
        if total < config.required_shards {
            return Reply::Close(
                Code::ShardingRequired.code(),
                "Identify with fewer shards than required",
            );
        }
        let properties = &d["properties"];
        if !["os", "browser", "device"]
            .iter()
            .all(|k| properties[k].is_string())
        {
            return Reply::Close(
                Code::DecodeError.code(),
                "Identify without properties os, browser and device",
            );
        }
        let now = Instant::now();
        state.identifies.push((shard, now));
        if let Some(cap) = config.max_guilds_per_shard {
            if guilds_for(&state, &config, shard, total).len() > cap as usize {
                return Reply::Close(
                    Code::ShardingRequired.code(),
                    "Identify for a shard that would hold more guilds than the cap",
                );
            }
        }
        drop(state);
        self.shard = Some(shard);
        self.tag_last_frame(shard);
        let mut state = lock(&self.shared);
        // §5: one Identify per bucket per window; over → op 9.
        let bucket = shard % config.max_concurrency.max(1);
        let too_soon = state.bucket_last.get(&bucket).is_some_and(|&last| {
            now.duration_since(last) + config.identify_jitter_tolerance < config.identify_window
        });
        if too_soon {
            state.bucket_violations += 1;
            tracing::warn!(shard, bucket, "identify broke the bucket rule: op 9");
            return Reply::InvalidSession("identify broke the bucket rule");
        }
        if state.starts_left() == 0 {
            tracing::warn!(shard, "session-start budget exhausted: op 9");
            return Reply::InvalidSession("session-start budget exhausted");
        }
        state.starts_remaining -= 1;
        state.bucket_last.insert(bucket, now);

        let session_id = format!("{:032x}", rand::random::<u128>());
        let resume_url = config
            .resume_url
            .clone()
            .unwrap_or_else(|| format!("{}/resume", state.ws_base()));
        let guild_ids = guilds_for(&state, &config, shard, total);
        let identified = state.identifies.iter().filter(|i| i.0 == shard).count();
        let mut ready = json!({
            "v": 10,
            // The fields Discord's READY user has (what a typed client such as twilight-model
            // requires, e.g. `mfa_enabled`).
            "user": config.bot_user.user(),
            "guilds": guild_ids.iter().map(|id| json!({"id": id.to_string(), "unavailable": true})).collect::<Vec<_>>(),
            "session_id": session_id,
            "resume_gateway_url": resume_url,
            "shard": [shard, total],
            "application": {"id": config.bot_user.id.to_string(), "flags": 0},
        });
        if identified <= config.readies_without_session_id as usize {
            if let Some(ready) = ready.as_object_mut() {
                ready.remove("session_id");
            }
        }
        let mut log = VecDeque::new();
        let mut frames = Vec::new();
        let mut seq = 0;
        let mut push = |event: &str, d: String| {
            seq += 1;
            let f = ByteString::from(format!(r#"{{"t":"{event}","s":{seq},"op":0,"d":{d}}}"#));
            log.push_back((seq, f.clone()));
            frames.push(f);
        };
        push("READY", ready.to_string());
        for id in &guild_ids {
            push("GUILD_CREATE", super::payloads::guild_create(*id));
        }
        let replaced = state.snapshot(shard);
        state.sessions.insert(
            session_id.clone(),
            super::state::Session {
                id: session_id.clone(),
                shard,
                total,
                seq,
                log,
                resumable: true,
                conn: Some(self.id),
            },
        );
        state.current.insert(shard, session_id.clone());
        state
            .current_by_set
            .insert((shard, total), session_id.clone());
        if let Some(record) = state.conn_mut(self.id) {
            record.shard = Some(shard);
            record.total = Some(total);
            record.outcome = ConnectionOutcome::Identified {
                session_id: session_id.clone(),
            };
            record.attached_at = Some(Instant::now());
            record.attached_seq = Some(seq);
            record.replaced = replaced;
        }
        if let Some(flood) = self.flood.as_ref().filter(|f| f.event == "MESSAGE_CREATE") {
            state.remember_message(shard, &flood.d);
        }
        drop(state);
        tracing::info!(conn = self.id, shard, total, session = %session_id, "fake gateway: identified, READY sent");
        self.authenticated = true;
        self.session_id = Some(session_id);
        self.flood_left = self.flood.as_ref().map_or(0, |f| f.count);
        Reply::Send(frames)
    }

    fn resume(&mut self, d: &Value) -> Reply {
        if self.authenticated {
            return Reply::Close(
                Code::AlreadyAuthenticated.code(),
                "Resume on an authenticated connection",
            );
        }
        let mut state = lock(&self.shared);
        if !token_matches(&d["token"], &state.config.token) {
            return Reply::Close(
                Code::AuthenticationFailed.code(),
                "Resume with a wrong token",
            );
        }
        let (Some(session_id), Some(seq)) = (d["session_id"].as_str(), d["seq"].as_u64()) else {
            return Reply::Close(
                Code::DecodeError.code(),
                "Resume without session_id and seq",
            );
        };
        let Some(session) = state.sessions.get(session_id).filter(|s| s.resumable) else {
            return Reply::InvalidSession("resume of an unknown or ended session");
        };
        let shard = session.shard;
        if seq > session.seq {
            state.invalidate(session_id);
            drop(state);
            self.shard = Some(shard);
            self.tag_last_frame(shard);
            return Reply::Close(
                Code::InvalidSeq.code(),
                "Resume from a seq the session never reached",
            );
        }
        // Events between `seq` and the oldest kept are gone: the session cannot be resumed.
        if session
            .log
            .front()
            .is_some_and(|&(oldest, _)| seq + 1 < oldest)
        {
            return Reply::InvalidSession("resume from further back than the replay log");
        }
        let previous = session.conn.filter(|&c| c != self.id);
        let session_id = session_id.to_owned();
        if let Some(live) = previous.and_then(|c| state.live.get(&c)) {
            let _ = live.tx.send(Command::Drop);
        }
        let capacity = state.config.replay_capacity;
        let id = self.id;
        let Some(session) = state.sessions.get_mut(&session_id) else {
            return Reply::Nothing;
        };
        let mut frames: Vec<ByteString> = session
            .log
            .iter()
            .filter(|(s, _)| *s > seq)
            .map(|(_, f)| f.clone())
            .collect();
        let replayed_through = session.seq;
        session.seq += 1;
        let resumed = ByteString::from(format!(
            r#"{{"t":"RESUMED","s":{},"op":0,"d":{{}}}}"#,
            session.seq
        ));
        session.log.push_back((session.seq, resumed.clone()));
        if session.log.len() > capacity {
            session.log.pop_front();
        }
        frames.push(resumed);
        session.conn = Some(id);
        let total = session.total;
        state.current.insert(shard, session_id.clone());
        state
            .current_by_set
            .insert((shard, total), session_id.clone());
        if let Some(record) = state.conn_mut(id) {
            record.shard = Some(shard);
            record.total = Some(total);
            record.outcome = ConnectionOutcome::Resumed {
                session_id: session_id.clone(),
                seq,
            };
            record.attached_at = Some(Instant::now());
            record.attached_seq = Some(replayed_through);
        }
        // Tagged under the same lock that attaches the session: whoever sees the shard ready on
        // this connection also sees its Resume recorded for the shard.
        if let Some(frame) = state.frames.iter_mut().rev().find(|f| f.connection == id) {
            frame.shard = Some(shard);
        }
        drop(state);
        tracing::info!(conn = self.id, shard, session = %session_id, seq, replayed = frames.len() - 1, "fake gateway: resumed, RESUMED sent");
        self.shard = Some(shard);
        self.authenticated = true;
        self.session_id = Some(session_id);
        Reply::Send(frames)
    }

    /// op 3, 4, 8 and 31 after Identify: check the shape, answer what Discord answers.
    fn command(&mut self, op: OpCode, d: &Value) -> Reply {
        let Some(shard) = self.shard else {
            return Reply::Close(Code::NotAuthenticated.code(), "command before Identify");
        };
        let valid = match op {
            OpCode::PresenceUpdate => {
                matches!(
                    d["status"].as_str(),
                    Some("online" | "dnd" | "idle" | "invisible" | "offline")
                ) && d["afk"].is_boolean()
                    && d["activities"].is_array()
                    && (d["since"].is_null() || d["since"].is_u64())
            }
            OpCode::VoiceStateUpdate => {
                d["guild_id"].is_string()
                    && d["self_mute"].is_boolean()
                    && d["self_deaf"].is_boolean()
            }
            OpCode::RequestGuildMembers => {
                d["guild_id"].is_string() && d["nonce"].as_str().is_none_or(|n| n.len() <= 32)
            }
            OpCode::RequestSoundboardSounds => d["guild_ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().all(Value::is_string)),
            _ => false,
        };
        if !valid {
            return Reply::Close(Code::DecodeError.code(), "command whose payload is invalid");
        }
        let replies: Vec<(&str, String)> = match op {
            OpCode::RequestGuildMembers => {
                let mut chunk = json!({"guild_id": d["guild_id"], "members": [], "chunk_index": 0, "chunk_count": 1});
                if let Some(nonce) = d["nonce"].as_str() {
                    chunk["nonce"] = json!(nonce);
                }
                vec![("GUILD_MEMBERS_CHUNK", chunk.to_string())]
            }
            OpCode::RequestSoundboardSounds => d["guild_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|id| {
                    (
                        "SOUNDBOARD_SOUNDS",
                        json!({"guild_id": id, "soundboard_sounds": []}).to_string(),
                    )
                })
                .collect(),
            _ => Vec::new(),
        };
        let mut state = lock(&self.shared);
        for (event, body) in replies {
            state.dispatch(shard, event, &mut std::iter::once(body.as_str()));
        }
        Reply::Nothing
    }
}

/// One message as continuation frames of at most `size` bytes each.
fn continuation_frames(
    payload: bytes::Bytes,
    text: bool,
    size: usize,
) -> impl Iterator<Item = Message> {
    let count = payload.len().div_ceil(size);
    (0..count).map(move |i| {
        let chunk = payload.slice(i * size..((i + 1) * size).min(payload.len()));
        Message::Continuation(match i {
            0 if text => Item::FirstText(chunk),
            0 => Item::FirstBinary(chunk),
            _ if i + 1 == count => Item::Last(chunk),
            _ => Item::Continue(chunk),
        })
    })
}
