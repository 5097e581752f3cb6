//! The frames a client sends (docs/protocol.md §2), serialized to their exact JSON.

use serde::Serialize;
use serde_json::Value;

use super::OpCode;

/// The most bytes one sent frame may have (docs/protocol.md §5: over → close 4002).
pub const MAX_SENT_FRAME: usize = 4096;

/// A status for Presence Update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Online.
    Online,
    /// Do not disturb.
    Dnd,
    /// Idle.
    Idle,
    /// Invisible (shown offline).
    Invisible,
    /// Offline.
    Offline,
}

/// Presence Update (op 3), also the `presence` of Identify.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresenceUpdate {
    /// Unix time in ms since when the client is idle, or `None`.
    pub since: Option<u64>,
    /// Activities, as Discord's activity objects.
    pub activities: Vec<Value>,
    /// The status.
    pub status: Status,
    /// Whether the client is AFK.
    pub afk: bool,
}

impl PresenceUpdate {
    /// A presence with `status` and no activities.
    pub fn new(status: Status) -> Self {
        Self {
            since: None,
            activities: Vec::new(),
            status,
            afk: false,
        }
    }
}

/// Voice State Update (op 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VoiceStateUpdate {
    /// The guild (a snowflake).
    pub guild_id: String,
    /// The channel to join, or `None` to leave.
    pub channel_id: Option<String>,
    /// Whether the bot mutes itself.
    pub self_mute: bool,
    /// Whether the bot deafens itself.
    pub self_deaf: bool,
}

/// Request Guild Members (op 8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct RequestGuildMembers {
    /// The guild (a snowflake).
    pub guild_id: String,
    /// Username prefix to match; `""` with `limit` 0 asks for all members.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The most members to return.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Whether to include presences.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presences: Option<bool>,
    /// Specific users to fetch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_ids: Option<Vec<String>>,
    /// Echoed back in the chunks; at most 32 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// Request Soundboard Sounds (op 31).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestSoundboardSounds {
    /// The guilds (snowflakes).
    pub guild_ids: Vec<String>,
}

/// A command the bot sends to a shard.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Command {
    /// op 3.
    PresenceUpdate(PresenceUpdate),
    /// op 4.
    VoiceStateUpdate(VoiceStateUpdate),
    /// op 8.
    RequestGuildMembers(RequestGuildMembers),
    /// op 31.
    RequestSoundboardSounds(RequestSoundboardSounds),
}

/// Why a command cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandError {
    /// The serialized frame has this many bytes, over [`MAX_SENT_FRAME`].
    TooLarge(usize),
    /// A field breaks a documented rule (e.g. a nonce over 32 bytes).
    Invalid(&'static str),
    /// No shard with this id runs in this process.
    UnknownShard(u32),
    /// The shard's queue of commands waiting for a connection is full.
    QueueFull,
    /// The shard has stopped for good.
    ShardStopped,
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge(n) => write!(
                f,
                "command is {n} bytes, over the {MAX_SENT_FRAME}-byte limit"
            ),
            Self::Invalid(why) => write!(f, "invalid command: {why}"),
            Self::UnknownShard(id) => write!(f, "no shard {id} runs in this process"),
            Self::QueueFull => f.write_str("the shard's command queue is full"),
            Self::ShardStopped => f.write_str("the shard has stopped"),
        }
    }
}

impl std::error::Error for CommandError {}

#[derive(Serialize)]
struct Frame<D> {
    op: u8,
    d: D,
}

fn frame<D: Serialize>(op: OpCode, d: D) -> String {
    // Serializing plain structs of strings, numbers and `Value`s cannot fail.
    serde_json::to_string(&Frame { op: op.code(), d }).unwrap_or_default()
}

impl Command {
    /// The frame's JSON, checked against the documented limits.
    pub fn to_frame(&self) -> Result<String, CommandError> {
        let json = match self {
            Self::PresenceUpdate(p) => frame(OpCode::PresenceUpdate, p),
            Self::VoiceStateUpdate(v) => frame(OpCode::VoiceStateUpdate, v),
            Self::RequestGuildMembers(r) => {
                if r.nonce.as_ref().is_some_and(|n| n.len() > 32) {
                    return Err(CommandError::Invalid("nonce is over 32 bytes"));
                }
                frame(OpCode::RequestGuildMembers, r)
            }
            Self::RequestSoundboardSounds(r) => frame(OpCode::RequestSoundboardSounds, r),
        };
        if json.len() > MAX_SENT_FRAME {
            return Err(CommandError::TooLarge(json.len()));
        }
        Ok(json)
    }
}

/// Heartbeat (op 1) carrying the last sequence received.
pub fn heartbeat(seq: Option<u64>) -> String {
    frame(OpCode::Heartbeat, seq)
}

/// The `properties` of Identify (keys without `$`, docs/protocol.md §2).
#[derive(Debug, Clone, Serialize)]
pub struct IdentifyProperties {
    /// Operating system.
    pub os: String,
    /// Library name.
    pub browser: String,
    /// Library name.
    pub device: String,
}

impl Default for IdentifyProperties {
    fn default() -> Self {
        Self {
            os: std::env::consts::OS.to_owned(),
            browser: "shardline".to_owned(),
            device: "shardline".to_owned(),
        }
    }
}

/// Identify (op 2). `token` is the bare token; the caller redacts it everywhere else.
#[derive(Serialize)]
pub struct Identify<'a> {
    /// The bare bot token.
    pub token: &'a str,
    /// Client properties.
    pub properties: &'a IdentifyProperties,
    /// Always false: transport compression replaces per-payload compression.
    pub compress: bool,
    /// 50..=250.
    pub large_threshold: u8,
    /// `[shard_id, num_shards]`.
    pub shard: [u32; 2],
    /// Initial presence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<&'a PresenceUpdate>,
    /// Intent bits.
    pub intents: u64,
}

impl Identify<'_> {
    /// The frame's JSON.
    pub fn to_frame(&self) -> String {
        frame(OpCode::Identify, self)
    }
}

/// Resume (op 6).
#[derive(Serialize)]
pub struct Resume<'a> {
    /// The bare bot token.
    pub token: &'a str,
    /// The session to resume.
    pub session_id: &'a str,
    /// The last sequence received.
    pub seq: u64,
}

impl Resume<'_> {
    /// The frame's JSON.
    pub fn to_frame(&self) -> String {
        frame(OpCode::Resume, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_documented_shape() {
        assert_eq!(heartbeat(None), r#"{"op":1,"d":null}"#);
        assert_eq!(heartbeat(Some(7)), r#"{"op":1,"d":7}"#);
        let resume = Resume {
            token: "t",
            session_id: "abc",
            seq: 9,
        }
        .to_frame();
        assert_eq!(
            resume,
            r#"{"op":6,"d":{"token":"t","session_id":"abc","seq":9}}"#
        );
        let props = IdentifyProperties {
            os: "linux".into(),
            browser: "b".into(),
            device: "d".into(),
        };
        let identify = Identify {
            token: "t",
            properties: &props,
            compress: false,
            large_threshold: 50,
            shard: [1, 4],
            presence: None,
            intents: 513,
        };
        assert_eq!(
            identify.to_frame(),
            r#"{"op":2,"d":{"token":"t","properties":{"os":"linux","browser":"b","device":"d"},"compress":false,"large_threshold":50,"shard":[1,4],"intents":513}}"#
        );
        let presence = Command::PresenceUpdate(PresenceUpdate::new(Status::Dnd));
        assert_eq!(
            presence.to_frame().unwrap(),
            r#"{"op":3,"d":{"since":null,"activities":[],"status":"dnd","afk":false}}"#
        );
        let sounds = Command::RequestSoundboardSounds(RequestSoundboardSounds {
            guild_ids: vec!["1".into()],
        });
        assert_eq!(
            sounds.to_frame().unwrap(),
            r#"{"op":31,"d":{"guild_ids":["1"]}}"#
        );
    }

    #[test]
    fn oversized_and_invalid_commands_are_refused() {
        let big = Command::RequestGuildMembers(RequestGuildMembers {
            guild_id: "1".into(),
            user_ids: Some(vec!["12345678901234567890".into(); 200]),
            ..Default::default()
        });
        assert!(matches!(big.to_frame(), Err(CommandError::TooLarge(n)) if n > MAX_SENT_FRAME));
        let nonce = Command::RequestGuildMembers(RequestGuildMembers {
            guild_id: "1".into(),
            nonce: Some("x".repeat(33)),
            ..Default::default()
        });
        assert_eq!(
            nonce.to_frame(),
            Err(CommandError::Invalid("nonce is over 32 bytes"))
        );
    }
}
