//! Whole Discord objects the fake sends of its own accord (the bot user, its application, a
//! message), and the fields Discord always sends in the events a test may post over the control
//! API. Typed clients (discord.py, twilight-model) refuse an object that lacks one of those fields,
//! so what the fake makes up has them all (docs/protocol.md §8).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// The bot user the fake plays: who READY, `GET /users/@me` and the messages it creates over
/// REST say the bot is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeBotUser {
    /// Its snowflake; also the application's id, as for bots made since 2016 (default 1000).
    pub id: u64,
    /// Its username (default `fake-bot`).
    pub username: String,
}

impl Default for FakeBotUser {
    fn default() -> Self {
        Self {
            id: 1000,
            username: "fake-bot".to_owned(),
        }
    }
}

impl FakeBotUser {
    /// The user object, as `GET /users/@me` and READY's `user` carry it.
    pub fn user(&self) -> Value {
        json!({
            "id": self.id.to_string(), "username": self.username, "discriminator": "0",
            "global_name": null, "avatar": null, "bot": true, "verified": true,
            "mfa_enabled": false, "flags": 0, "public_flags": 0, "banner": null,
            "accent_color": null, "locale": "en-US", "email": null,
        })
    }

    /// The user as a message's `author` (the partial user Discord puts there).
    pub fn author(&self) -> Value {
        json!({
            "id": self.id.to_string(), "username": self.username, "discriminator": "0",
            "global_name": null, "avatar": null, "bot": true, "public_flags": 0,
        })
    }

    /// The bot's application, as `GET /oauth2/applications/@me` answers: every field Discord
    /// always sends, the bot user as owner, no team.
    pub fn application(&self) -> Value {
        json!({
            "id": self.id.to_string(), "name": self.username, "icon": null,
            "description": "", "summary": "", "type": null, "bot": self.user(),
            "bot_public": true, "bot_require_code_grant": false, "owner": self.author(),
            "team": null, "verify_key": "0".repeat(64), "flags": 0, "tags": [],
            "redirect_uris": [], "interactions_endpoint_url": null,
            "role_connections_verification_url": null, "approximate_guild_count": 0,
        })
    }
}

/// The author of the messages [`message`] makes: a user, not a bot, so that a bot that ignores
/// bots' messages still sees them.
fn sample_author() -> Value {
    json!({
        "id": "1100000000000000003", "username": "fake-user", "discriminator": "0",
        "global_name": "Fake User", "avatar": null, "public_flags": 0,
    })
}

/// A complete Message object (the `d` of a `MESSAGE_CREATE`) with every field Discord always
/// sends, a human author, and the timestamp its snowflake `id` encodes. Not in a guild: add
/// `guild_id` (and `member`) for a guild message.
///
/// ```
/// let d = shardline::testkit::message(1_200_000_000_000_000_001, 1_100_000_000_000_000_002, "hi");
/// assert_eq!(d["content"], "hi");
/// assert!(shardline::testkit::missing_fields("MESSAGE_CREATE", &d).is_empty());
/// ```
pub fn message(id: u64, channel_id: u64, content: &str) -> Value {
    message_by(id, channel_id, content, sample_author())
}

/// [`message`] by `author`.
pub(crate) fn message_by(id: u64, channel_id: u64, content: &str, author: Value) -> Value {
    json!({
        "id": id.to_string(),
        "channel_id": channel_id.to_string(),
        "author": author,
        "content": content,
        "timestamp": iso8601(snowflake_time(id)),
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": false,
        "type": 0,
        "flags": 0,
        "components": [],
    })
}

/// The fields of a Message object Discord always sends (its documentation lists no `?` for them);
/// `MESSAGE_CREATE` and `MESSAGE_UPDATE` carry a whole Message.
const MESSAGE_FIELDS: &[&str] = &[
    "id",
    "channel_id",
    "author",
    "content",
    "timestamp",
    "edited_timestamp",
    "tts",
    "mention_everyone",
    "mentions",
    "mention_roles",
    "attachments",
    "embeds",
    "pinned",
    "type",
];

/// The fields of a message's `author` Discord always sends.
const USER_FIELDS: &[&str] = &["id", "username", "discriminator", "global_name", "avatar"];

/// The events whose required fields the fake knows, with those fields.
const REQUIRED: &[(&str, &[&str])] = &[
    ("MESSAGE_CREATE", MESSAGE_FIELDS),
    ("MESSAGE_UPDATE", MESSAGE_FIELDS),
    ("MESSAGE_DELETE", &["id", "channel_id"]),
    ("MESSAGE_DELETE_BULK", &["ids", "channel_id"]),
    ("TYPING_START", &["channel_id", "user_id", "timestamp"]),
];

/// The fields Discord always sends in an `event` that `d` lacks (as paths such as `author.id`),
/// for the events listed in docs/fake-gateway.md; empty for an event the fake knows no rule for.
pub fn missing_fields(event: &str, d: &Value) -> Vec<String> {
    let Some((_, fields)) = REQUIRED.iter().find(|(name, _)| *name == event) else {
        return Vec::new();
    };
    let Some(object) = d.as_object() else {
        return vec!["d (not an object)".to_owned()];
    };
    let mut missing: Vec<String> = fields
        .iter()
        .filter(|f| !object.contains_key(**f))
        .map(|f| (*f).to_owned())
        .collect();
    if fields.contains(&"author") {
        if let Some(author) = object.get("author") {
            missing.extend(
                USER_FIELDS
                    .iter()
                    .filter(|f| author.get(**f).is_none())
                    .map(|f| format!("author.{f}")),
            );
        }
    }
    missing
}

/// When a snowflake was made: `(id >> 22)` milliseconds after 2015-01-01 (docs/protocol.md §8).
fn snowflake_time(id: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis((id >> 22) + 1_420_070_400_000)
}

/// `at` as ISO 8601 in UTC with milliseconds and an offset, as Discord writes timestamps.
pub(crate) fn iso8601(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm), for dates after 1970.
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// A `GUILD_CREATE` body for guild `id`, with every field Discord's always carries
/// (docs/protocol.md §8), so that a typed client (twilight-model) reads it as it reads Discord's.
pub(crate) fn guild_create(id: u64) -> String {
    serde_json::json!({
        "id": id.to_string(), "name": format!("guild {id}"), "icon": null, "splash": null,
        "discovery_splash": null, "owner_id": "1001", "afk_channel_id": null,
        "afk_timeout": 300, "verification_level": 0, "default_message_notifications": 0,
        "explicit_content_filter": 0, "roles": [], "emojis": [], "features": [],
        "mfa_level": 0, "application_id": null, "system_channel_id": null,
        "system_channel_flags": 0, "rules_channel_id": null, "vanity_url_code": null,
        "description": null, "banner": null, "premium_tier": 0,
        "preferred_locale": "en-US", "public_updates_channel_id": null, "nsfw_level": 0,
        "premium_progress_bar_enabled": false, "stickers": [],
        "safety_alerts_channel_id": null, "joined_at": "2024-01-01T00:00:00.000000+00:00",
        "large": false, "unavailable": false, "member_count": 2, "voice_states": [],
        "members": [], "channels": [], "threads": [], "presences": [],
        "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_matches_known_dates() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(iso8601(at), "2023-11-14T22:13:20.123+00:00");
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000+00:00");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(iso8601(leap), "2000-02-29T00:00:00.000+00:00");
    }

    #[test]
    fn a_message_has_every_required_field_and_its_snowflakes_time() {
        // Discord's documentation example: 175928847299117063 was made at 2016-04-30 11:18:25.796.
        let d = message(175_928_847_299_117_063, 2, "hi");
        assert_eq!(d["timestamp"], "2016-04-30T11:18:25.796+00:00");
        assert_eq!(missing_fields("MESSAGE_CREATE", &d), Vec::<String>::new());
        let bare = json!({"id": "1", "channel_id": "2", "content": "hi", "author": {"id": "3"}});
        assert_eq!(
            missing_fields("MESSAGE_CREATE", &bare),
            [
                "timestamp",
                "edited_timestamp",
                "tts",
                "mention_everyone",
                "mentions",
                "mention_roles",
                "attachments",
                "embeds",
                "pinned",
                "type",
                "author.username",
                "author.discriminator",
                "author.global_name",
                "author.avatar"
            ]
        );
        assert!(missing_fields("SOMETHING_NEW", &bare).is_empty());
        assert_eq!(
            missing_fields("MESSAGE_DELETE", &json!(1)),
            ["d (not an object)"]
        );
    }
}
