//! What the fake gateway knows: sessions with their replay logs, live connections, and the record of
//! everything clients did.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Instant;

use bytestring::ByteString;
use tokio::sync::mpsc::UnboundedSender;

use super::{ConnectionOutcome, ConnectionRecord, FakeConfig, FakeSession, RecordedFrame};

/// What a test (or the gateway itself) tells a live connection's task to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send these frames, in order.
    Send(Vec<ByteString>),
    RawText(String),
    /// Bytes put through the connection's compressor, sent as one message (not kept for replay).
    RawCompressed(bytes::Bytes),
    RawBinary(bytes::Bytes),
    /// Bytes written to the socket as they are, outside any websocket frame of the fake's making
    /// (a frame the client's codec must refuse).
    RawWire(bytes::Bytes),
    /// op 9: the connection is no longer authenticated, and may Resume (if `true`) or Identify on
    /// the same socket (docs/protocol.md §3.8).
    InvalidSession(bool),
    Close(u16),
    /// 4011: the shard holds more guilds than `FakeConfig::max_guilds_per_shard`.
    PastGuildCap,
    Drop,
}

/// A channel the fake knows, from the `MESSAGE_CREATE`s it dispatched: where its messages go and
/// which of them still exist.
pub(crate) struct Channel {
    /// The shard its `MESSAGE_CREATE`s were dispatched on.
    pub shard: u32,
    pub guild_id: Option<String>,
    pub messages: BTreeSet<u64>,
}

pub(crate) struct Session {
    pub id: String,
    pub shard: u32,
    /// The shard total it identified with.
    pub total: u32,
    pub seq: u64,
    /// Dispatches kept for replay, oldest first.
    pub log: VecDeque<(u64, ByteString)>,
    pub resumable: bool,
    /// The connection the session is attached to (READY or RESUMED sent on it).
    pub conn: Option<u64>,
}

pub(crate) struct Live {
    pub tx: UnboundedSender<Command>,
}

pub(crate) struct State {
    pub config: FakeConfig,
    pub port: u16,
    /// Whether it serves TLS (`FakeGateway::start_tls`): its URLs are then `wss://`/`https://`
    /// on `localhost`, the name its certificate is for.
    pub tls: bool,
    next_conn: u64,
    pub conns: Vec<ConnectionRecord>,
    pub live: HashMap<u64, Live>,
    pub frames: Vec<RecordedFrame>,
    pub sessions: HashMap<String, Session>,
    /// The newest session of each shard.
    pub current: HashMap<u32, String>,
    /// The newest session of each (shard, total): a bot resharding runs two totals at once.
    pub current_by_set: HashMap<(u32, u32), String>,
    /// The bot's guilds by id, in the order they were added.
    pub guilds: Vec<u64>,
    pub identifies: Vec<(u32, Instant)>,
    /// When each bucket last accepted an Identify.
    pub bucket_last: HashMap<u32, Instant>,
    pub bucket_violations: usize,
    pub no_ack: HashSet<u32>,
    pub starts_remaining: u32,
    /// When the session-start budget refills to its total.
    pub starts_reset_at: Instant,
    /// When the fake started: the zero of the control API's times.
    pub started: Instant,
    /// Channels by id, with the messages that exist in them.
    pub channels: HashMap<u64, Channel>,
    /// The last message id the fake handed out (for messages created over REST).
    pub last_message_id: u64,
    /// Every REST call received, in order.
    pub rest_calls: Vec<RestCall>,
    /// REST rate-limit buckets by route and channel.
    pub rest_buckets: HashMap<String, RestBucket>,
}

impl State {
    /// The gateway URL clients are given.
    pub fn ws_base(&self) -> String {
        if self.tls {
            format!("wss://localhost:{}", self.port)
        } else {
            format!("ws://127.0.0.1:{}", self.port)
        }
    }

    /// The HTTP origin of the REST routes.
    pub fn http_base(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.port)
        } else {
            format!("http://127.0.0.1:{}", self.port)
        }
    }

    pub fn new(config: FakeConfig) -> Self {
        Self {
            guilds: (0..config.guilds).map(super::guild_id).collect(),
            starts_remaining: config.session_start_limit.remaining,
            starts_reset_at: Instant::now()
                + std::time::Duration::from_millis(config.session_start_limit.reset_after),
            config,
            port: 0,
            tls: false,
            next_conn: 1,
            conns: Vec::new(),
            live: HashMap::new(),
            frames: Vec::new(),
            sessions: HashMap::new(),
            current: HashMap::new(),
            current_by_set: HashMap::new(),
            identifies: Vec::new(),
            bucket_last: HashMap::new(),
            bucket_violations: 0,
            no_ack: HashSet::new(),
            started: Instant::now(),
            channels: HashMap::new(),
            // A snowflake of 2024, so that created messages sort after any a test makes up.
            last_message_id: 1_200_000_000_000_000_000,
            rest_calls: Vec::new(),
            rest_buckets: HashMap::new(),
        }
    }

    pub fn open(
        &mut self,
        path: &str,
        query: &str,
        compress: Option<String>,
        peer: Option<std::net::SocketAddr>,
        tx: UnboundedSender<Command>,
    ) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.push(ConnectionRecord {
            id,
            shard: None,
            total: None,
            path: path.to_owned(),
            query: query.to_owned(),
            compress,
            opened_at: Instant::now(),
            closed_at: None,
            client_close_code: None,
            client_closed_at: None,
            server_close_code: None,
            outcome: ConnectionOutcome::None,
            peer,
            attached_at: None,
            attached_seq: None,
            replaced: None,
        });
        self.live.insert(id, Live { tx });
        id
    }

    /// Session starts left now, refilling the budget if its reset has passed.
    pub fn starts_left(&mut self) -> u32 {
        let now = Instant::now();
        if now >= self.starts_reset_at {
            self.starts_remaining = self.config.session_start_limit.total;
            self.starts_reset_at = now + std::time::Duration::from_secs(24 * 60 * 60);
        }
        self.starts_remaining
    }

    pub fn conn_mut(&mut self, id: u64) -> Option<&mut ConnectionRecord> {
        self.conns.iter_mut().find(|c| c.id == id)
    }

    /// The connection ended: detach it from its session and stop routing to it.
    pub fn close(&mut self, id: u64) {
        self.live.remove(&id);
        if let Some(conn) = self.conn_mut(id) {
            conn.closed_at.get_or_insert_with(Instant::now);
        }
        for session in self.sessions.values_mut() {
            if session.conn == Some(id) {
                session.conn = None;
            }
        }
    }

    pub fn session_of(&self, shard: u32) -> Option<&Session> {
        self.current
            .get(&shard)
            .and_then(|id| self.sessions.get(id))
    }

    /// The live connection of `shard`'s current session.
    pub fn live_conn_of(&self, shard: u32) -> Option<u64> {
        self.session_of(shard)
            .and_then(|s| s.conn)
            .filter(|c| self.live.contains_key(c))
    }

    pub fn send_to_shard(&self, shard: u32, command: Command) -> bool {
        match self.live_conn_of(shard).and_then(|c| self.live.get(&c)) {
            Some(live) => live.tx.send(command).is_ok(),
            None => false,
        }
    }

    /// Appends dispatches to `shard`'s live session (sending them if it is attached); returns their
    /// seqs.
    pub fn dispatch(
        &mut self,
        shard: u32,
        event: &str,
        bodies: &mut dyn Iterator<Item = &str>,
    ) -> Option<(u64, u64)> {
        let session_id = self.session_of(shard).filter(|s| s.resumable)?.id.clone();
        let first = self.sessions.get(&session_id)?.seq + 1;
        let mut frames: Vec<ByteString> = Vec::new();
        let mut last_body: Option<&str> = None;
        for d in bodies {
            // A flood repeats one body: it is one message, looked at once.
            if event == "MESSAGE_CREATE" && last_body != Some(d) {
                self.remember_message(shard, d);
                last_body = Some(d);
            }
            frames.extend(self.append(&session_id, event, d));
        }
        let session = self.sessions.get(&session_id)?;
        if let Some(live) = session.conn.and_then(|conn| self.live.get(&conn)) {
            let _ = live.tx.send(Command::Send(frames));
        }
        Some((first, session.seq))
    }

    /// The guilds shard `shard` of `total` holds, by the formula (docs/protocol.md §5).
    pub fn guilds_of(&self, shard: u32, total: u32) -> Vec<u64> {
        self.guilds
            .iter()
            .copied()
            .filter(|&g| owner(g, total) == shard)
            .collect()
    }

    /// Appends `count` copies of a dispatch about `guild_id` to every live session whose shard
    /// owns the guild under its total, sending them to attached connections. `(shard, total, first
    /// seq)` per session, ordered by (total, shard).
    pub fn dispatch_guild(
        &mut self,
        guild_id: u64,
        event: &str,
        d: &str,
        count: usize,
    ) -> Vec<(u32, u32, u64)> {
        let mut targets: Vec<((u32, u32), String)> = self
            .current_by_set
            .iter()
            .filter(|((shard, total), _)| owner(guild_id, *total) == *shard)
            .map(|(k, id)| (*k, id.clone()))
            .collect();
        targets.sort_unstable_by_key(|((shard, total), _)| (*total, *shard));
        let mut sent = Vec::new();
        for ((shard, total), session_id) in targets {
            if !self.sessions.get(&session_id).is_some_and(|s| s.resumable) {
                continue;
            }
            if event == "MESSAGE_CREATE" {
                self.remember_message(shard, d);
            }
            let mut frames = Vec::with_capacity(count);
            for _ in 0..count {
                frames.extend(self.append(&session_id, event, d));
            }
            let Some(session) = self.sessions.get(&session_id) else {
                continue;
            };
            if let Some(live) = session.conn.and_then(|conn| self.live.get(&conn)) {
                let _ = live.tx.send(Command::Send(frames));
            }
            sent.push((shard, total, session.seq + 1 - count as u64));
        }
        sent
    }

    /// Adds `count` guilds: `GUILD_CREATE` to the sessions owning each, then 4011 for every live
    /// session past the per-shard cap. The new ids.
    pub fn add_guilds(&mut self, count: u32) -> Vec<u64> {
        let next = self.guilds.len() as u32;
        let added: Vec<u64> = (next..next + count).map(super::guild_id).collect();
        self.guilds.extend(&added);
        for &id in &added {
            let guild = super::payloads::guild_create(id);
            self.dispatch_guild(id, "GUILD_CREATE", &guild, 1);
        }
        if let Some(cap) = self.config.max_guilds_per_shard {
            let over: Vec<(u32, u32)> = self
                .current_by_set
                .keys()
                .copied()
                .filter(|&(shard, total)| self.guilds_of(shard, total).len() > cap as usize)
                .collect();
            for (shard, total) in over {
                let conn = self
                    .current_by_set
                    .get(&(shard, total))
                    .and_then(|id| self.sessions.get(id).and_then(|s| s.conn));
                if let Some(live) = conn.and_then(|c| self.live.get(&c)) {
                    tracing::info!(
                        shard,
                        total,
                        cap,
                        "fake gateway: shard past its guild cap: 4011"
                    );
                    let _ = live.tx.send(Command::PastGuildCap);
                }
            }
        }
        added
    }

    /// Appends one dispatch to a session's log (without sending it); the frame to send.
    pub fn append(&mut self, session_id: &str, event: &str, d: &str) -> Option<ByteString> {
        let capacity = self.config.replay_capacity;
        let session = self.sessions.get_mut(session_id).filter(|s| s.resumable)?;
        session.seq += 1;
        // Built by hand rather than with `format!`: a flood builds a million of these.
        let seq = session.seq.to_string();
        let mut text = String::with_capacity(event.len() + seq.len() + d.len() + 24);
        for part in [
            r#"{"t":""#,
            event,
            r#"","s":"#,
            &seq,
            r#","op":0,"d":"#,
            d,
            "}",
        ] {
            text.push_str(part);
        }
        let frame = ByteString::from(text);
        session.log.push_back((session.seq, frame.clone()));
        if session.log.len() > capacity {
            session.log.pop_front();
        }
        Some(frame)
    }

    /// Remembers the message a `MESSAGE_CREATE` body describes, so that REST calls on it succeed.
    /// Bodies without a numeric `id` and `channel_id` describe no message the REST routes can find.
    pub fn remember_message(&mut self, shard: u32, d: &str) {
        #[derive(serde::Deserialize)]
        struct Message {
            id: String,
            channel_id: String,
            guild_id: Option<String>,
        }
        let Ok(m) = serde_json::from_str::<Message>(d) else {
            return;
        };
        let (Ok(id), Ok(channel)) = (m.id.parse::<u64>(), m.channel_id.parse::<u64>()) else {
            return;
        };
        let entry = self.channels.entry(channel).or_insert_with(|| Channel {
            shard,
            guild_id: m.guild_id.clone(),
            messages: BTreeSet::new(),
        });
        entry.shard = shard;
        if m.guild_id.is_some() {
            entry.guild_id = m.guild_id;
        }
        entry.messages.insert(id);
    }

    /// op 9 on `shard`'s live connection; `false` also ends the session, as on Discord.
    pub fn invalid_session(&mut self, shard: u32, resumable: bool) -> bool {
        let sent = self.send_to_shard(shard, Command::InvalidSession(resumable));
        if !resumable {
            if let Some(id) = self.current.get(&shard).cloned() {
                self.invalidate(&id);
            }
        }
        sent
    }

    /// op 7 on `shard`'s live connection, then nothing more on it: the session is detached, so
    /// what is dispatched next waits in its log for the client's Resume.
    pub fn reconnect_holding(&mut self, shard: u32) -> bool {
        let Some(conn) = self.live_conn_of(shard) else {
            return false;
        };
        let op7 = ByteString::from_static(r#"{"t":null,"s":null,"op":7,"d":null}"#);
        let sent = self.send_to_shard(shard, Command::Send(vec![op7]));
        self.detach(conn);
        sent
    }

    /// Stops (`false`) or resumes answering the shard's heartbeats with ACKs.
    pub fn set_ack_heartbeats(&mut self, shard: u32, ack: bool) {
        if ack {
            self.no_ack.remove(&shard);
        } else {
            self.no_ack.insert(shard);
        }
    }

    /// Every live connection ended without a close frame; how many.
    pub fn drop_all(&self) -> usize {
        self.live
            .values()
            .filter(|l| l.tx.send(Command::Drop).is_ok())
            .count()
    }

    /// Detaches the session from connection `conn` (after an op 9 on it): nothing more is sent to
    /// it until a Resume attaches it again.
    pub fn detach(&mut self, conn: u64) {
        for session in self.sessions.values_mut() {
            if session.conn == Some(conn) {
                session.conn = None;
            }
        }
    }

    /// Milliseconds since the fake started, for the control API.
    pub fn millis_since_start(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    pub fn invalidate(&mut self, session_id: &str) {
        if let Some(session) = self.sessions.get_mut(session_id) {
            session.resumable = false;
        }
    }

    pub fn snapshot(&self, shard: u32) -> Option<FakeSession> {
        self.session_of(shard).map(|s| FakeSession {
            id: s.id.clone(),
            seq: s.seq,
            resumable: s.resumable,
        })
    }
}

/// The shard that owns `guild_id` among `total` (docs/protocol.md §5).
pub(crate) fn owner(guild_id: u64, total: u32) -> u32 {
    ((guild_id >> 22) % u64::from(total.max(1))) as u32
}

/// The fake's state as the HTTP handlers share it.
pub(crate) type Shared = actix_web::web::Data<std::sync::Mutex<State>>;

/// One REST call the fake received.
#[derive(Debug, Clone)]
pub struct RestCall {
    /// `GET`, `POST`, `DELETE`, ...
    pub method: String,
    /// The path, e.g. `/api/v10/channels/1/messages/2`.
    pub path: String,
    /// The status the fake answered.
    pub status: u16,
    /// The JSON body sent (`Null` if none or not JSON).
    pub body: serde_json::Value,
    /// When it arrived.
    pub at: Instant,
}

/// A rate-limit bucket: a fixed window opened by its first request.
#[derive(Debug, Clone)]
pub(crate) struct RestBucket {
    /// The bucket's id, as sent in `X-RateLimit-Bucket`.
    pub(crate) hash: String,
    pub(crate) window_start: Instant,
    pub(crate) used: u32,
}
