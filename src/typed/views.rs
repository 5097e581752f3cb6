//! The views themselves. Field names follow Discord's (docs/protocol.md §8 for the events), except
//! `type`, which is `kind`.

use std::borrow::Cow;

use serde::Deserialize;

use super::{de, View};

/// A user as messages, members and interactions carry it: the fields a handler reads.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct User<'a> {
    /// The user's id.
    #[serde(deserialize_with = "de::snowflake")]
    pub id: u64,
    /// The user's unique name.
    #[serde(borrow)]
    pub username: Cow<'a, str>,
    /// The display name the user set, if any.
    #[serde(default, borrow, deserialize_with = "de::opt_str")]
    pub global_name: Option<Cow<'a, str>>,
    /// Whether the user is a bot (absent means not).
    #[serde(default, deserialize_with = "de::flag")]
    pub bot: bool,
}

impl User<'_> {
    /// The name to show: the display name if set, else the username.
    pub fn display_name(&self) -> &str {
        self.global_name.as_deref().unwrap_or(&self.username)
    }
}

/// The guild member of a message's author (absent outside guilds and for webhooks).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageMember<'a> {
    /// The member's nickname in the guild, if set.
    #[serde(default, borrow, deserialize_with = "de::opt_str")]
    pub nick: Option<Cow<'a, str>>,
    /// The ids of the member's roles.
    #[serde(default, deserialize_with = "de::snowflakes")]
    pub roles: Vec<u64>,
}

/// MESSAGE_CREATE: a message was sent.
///
/// ```
/// # let frame = br#"{"op":0,"s":1,"t":"MESSAGE_CREATE","d":{"id":"9","channel_id":"8","content":"!ping","timestamp":"2024-03-22T15:35:10.271000+00:00","author":{"id":"7","username":"mia"}}}"#;
/// # let dispatch = shardline::Dispatch::from_frame(0, frame.to_vec().into()).unwrap();
/// use shardline::typed::MessageCreate;
/// let message = dispatch.view::<MessageCreate<'_>>().unwrap();
/// if message.content == "!ping" && !message.author.bot {
///     assert_eq!((message.channel_id, message.guild_id), (8, None));
/// }
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageCreate<'a> {
    /// The message's id.
    #[serde(deserialize_with = "de::snowflake")]
    pub id: u64,
    /// The channel it was sent in.
    #[serde(deserialize_with = "de::snowflake")]
    pub channel_id: u64,
    /// The guild it was sent in; absent for direct messages.
    #[serde(default, deserialize_with = "de::opt_snowflake")]
    pub guild_id: Option<u64>,
    /// Who sent it (for a webhook message, the webhook's name and id).
    #[serde(borrow)]
    pub author: User<'a>,
    /// The author as a guild member; absent outside guilds and for webhooks.
    #[serde(default, borrow)]
    pub member: Option<MessageMember<'a>>,
    /// Its text (empty without the message content intent, except in DMs and mentions).
    #[serde(borrow)]
    pub content: Cow<'a, str>,
    /// When it was sent, ISO 8601 as Discord wrote it.
    #[serde(borrow)]
    pub timestamp: Cow<'a, str>,
    /// When it was last edited, if it was.
    #[serde(default, borrow, deserialize_with = "de::opt_str")]
    pub edited_timestamp: Option<Cow<'a, str>>,
    /// The message type (0 default, 19 reply, …).
    #[serde(rename = "type", default)]
    pub kind: u8,
    /// Whether it is text-to-speech.
    #[serde(default, deserialize_with = "de::flag")]
    pub tts: bool,
    /// Whether it mentions @everyone or @here.
    #[serde(default, deserialize_with = "de::flag")]
    pub mention_everyone: bool,
    /// The ids of the users it mentions.
    #[serde(rename = "mentions", default, deserialize_with = "de::ids_of")]
    pub mention_ids: Vec<u64>,
    /// The ids of the roles it mentions.
    #[serde(default, deserialize_with = "de::snowflakes")]
    pub mention_roles: Vec<u64>,
    /// The webhook that sent it, if one did.
    #[serde(default, deserialize_with = "de::opt_snowflake")]
    pub webhook_id: Option<u64>,
}

impl<'a> View<'a> for MessageCreate<'a> {
    const EVENT: &'static str = "MESSAGE_CREATE";
}

/// MESSAGE_UPDATE: a message was edited. Discord sends the whole message now, but has sent only
/// the changed fields in the past, so what a handler may find missing is an `Option` here.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageUpdate<'a> {
    /// The message's id.
    #[serde(deserialize_with = "de::snowflake")]
    pub id: u64,
    /// The channel it is in.
    #[serde(deserialize_with = "de::snowflake")]
    pub channel_id: u64,
    /// The guild it is in; absent for direct messages.
    #[serde(default, deserialize_with = "de::opt_snowflake")]
    pub guild_id: Option<u64>,
    /// Who sent it.
    #[serde(default, borrow)]
    pub author: Option<User<'a>>,
    /// The author as a guild member.
    #[serde(default, borrow)]
    pub member: Option<MessageMember<'a>>,
    /// Its text now.
    #[serde(default, borrow, deserialize_with = "de::opt_str")]
    pub content: Option<Cow<'a, str>>,
    /// When it was edited, ISO 8601.
    #[serde(default, borrow, deserialize_with = "de::opt_str")]
    pub edited_timestamp: Option<Cow<'a, str>>,
    /// The ids of the users it mentions now.
    #[serde(rename = "mentions", default, deserialize_with = "de::ids_of")]
    pub mention_ids: Vec<u64>,
    /// The ids of the roles it mentions now.
    #[serde(default, deserialize_with = "de::snowflakes")]
    pub mention_roles: Vec<u64>,
    /// The webhook that sent it, if one did.
    #[serde(default, deserialize_with = "de::opt_snowflake")]
    pub webhook_id: Option<u64>,
}

impl<'a> View<'a> for MessageUpdate<'a> {
    const EVENT: &'static str = "MESSAGE_UPDATE";
}

/// MESSAGE_DELETE: a message was deleted.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageDelete {
    /// The deleted message's id.
    #[serde(deserialize_with = "de::snowflake")]
    pub id: u64,
    /// The channel it was in.
    #[serde(deserialize_with = "de::snowflake")]
    pub channel_id: u64,
    /// The guild it was in; absent for direct messages.
    #[serde(default, deserialize_with = "de::opt_snowflake")]
    pub guild_id: Option<u64>,
}

impl View<'_> for MessageDelete {
    const EVENT: &'static str = "MESSAGE_DELETE";
}

/// The member who started an interaction in a guild.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct InteractionMember<'a> {
    /// The member's user.
    #[serde(default, borrow)]
    pub user: Option<User<'a>>,
    /// The member's nickname in the guild, if set.
    #[serde(default, borrow, deserialize_with = "de::opt_str")]
    pub nick: Option<Cow<'a, str>>,
    /// The ids of the member's roles.
    #[serde(default, deserialize_with = "de::snowflakes")]
    pub roles: Vec<u64>,
}

/// What an interaction is about: the command, or the component or modal, it came from.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct InteractionData<'a> {
    /// The command's id (application commands).
    #[serde(default, deserialize_with = "de::opt_snowflake")]
    pub id: Option<u64>,
    /// The command's name (application commands).
    #[serde(default, borrow, deserialize_with = "de::opt_str")]
    pub name: Option<Cow<'a, str>>,
    /// The developer-set id of the component or modal (message components, modal submits).
    #[serde(default, borrow, deserialize_with = "de::opt_str")]
    pub custom_id: Option<Cow<'a, str>>,
    /// The component's type (message components).
    #[serde(default)]
    pub component_type: Option<u8>,
}

/// INTERACTION_CREATE: a user ran a command, clicked a component or submitted a modal.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct InteractionCreate<'a> {
    /// The interaction's id (for the callback URL).
    #[serde(deserialize_with = "de::snowflake")]
    pub id: u64,
    /// The application it is for.
    #[serde(deserialize_with = "de::snowflake")]
    pub application_id: u64,
    /// The interaction type (1 ping, 2 command, 3 component, 4 autocomplete, 5 modal).
    #[serde(rename = "type")]
    pub kind: u8,
    /// The token to answer it with. A secret for 15 minutes: do not log it.
    #[serde(borrow)]
    pub token: Cow<'a, str>,
    /// The guild it came from; absent in DMs.
    #[serde(default, deserialize_with = "de::opt_snowflake")]
    pub guild_id: Option<u64>,
    /// `channel.id`: Discord sends the channel as an object, and `channel_id` beside it only as a
    /// deprecated field; [`channel_id`](Self::channel_id) reads either.
    #[serde(default, rename = "channel", deserialize_with = "de::opt_id_of")]
    channel: Option<u64>,
    #[serde(default, rename = "channel_id", deserialize_with = "de::opt_snowflake")]
    deprecated_channel_id: Option<u64>,
    /// Who started it, in a guild.
    #[serde(default, borrow)]
    pub member: Option<InteractionMember<'a>>,
    /// Who started it, in a DM.
    #[serde(default, borrow)]
    pub user: Option<User<'a>>,
    /// The user's language.
    #[serde(default, borrow, deserialize_with = "de::opt_str")]
    pub locale: Option<Cow<'a, str>>,
    /// The command, component or modal (absent for pings).
    #[serde(default, borrow)]
    pub data: Option<InteractionData<'a>>,
}

impl InteractionCreate<'_> {
    /// The channel it came from (from `channel`, or the older `channel_id`).
    pub fn channel_id(&self) -> Option<u64> {
        self.channel.or(self.deprecated_channel_id)
    }

    /// Who started it: the member's user in a guild, else the user.
    pub fn author(&self) -> Option<&User<'_>> {
        self.member
            .as_ref()
            .and_then(|m| m.user.as_ref())
            .or(self.user.as_ref())
    }
}

impl<'a> View<'a> for InteractionCreate<'a> {
    const EVENT: &'static str = "INTERACTION_CREATE";
}

/// GUILD_MEMBER_ADD: a user joined a guild.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct GuildMemberAdd<'a> {
    /// The guild joined.
    #[serde(deserialize_with = "de::snowflake")]
    pub guild_id: u64,
    /// Who joined.
    #[serde(borrow)]
    pub user: User<'a>,
    /// Their nickname in the guild, if set.
    #[serde(default, borrow, deserialize_with = "de::opt_str")]
    pub nick: Option<Cow<'a, str>>,
    /// The ids of their roles.
    #[serde(default, deserialize_with = "de::snowflakes")]
    pub roles: Vec<u64>,
    /// When they joined, ISO 8601.
    #[serde(default, borrow, deserialize_with = "de::opt_str")]
    pub joined_at: Option<Cow<'a, str>>,
    /// Whether they have yet to pass the guild's membership screening.
    #[serde(default, deserialize_with = "de::flag")]
    pub pending: bool,
}

impl<'a> View<'a> for GuildMemberAdd<'a> {
    const EVENT: &'static str = "GUILD_MEMBER_ADD";
}

/// GUILD_MEMBER_REMOVE: a user left or was removed from a guild.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct GuildMemberRemove<'a> {
    /// The guild left.
    #[serde(deserialize_with = "de::snowflake")]
    pub guild_id: u64,
    /// Who left.
    #[serde(borrow)]
    pub user: User<'a>,
}

impl<'a> View<'a> for GuildMemberRemove<'a> {
    const EVENT: &'static str = "GUILD_MEMBER_REMOVE";
}

/// PRESENCE_UPDATE: a member's status changed (needs the presence intent).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresenceUpdate<'a> {
    /// Whose presence (Discord may send only the user's id, so only the id is read).
    #[serde(rename = "user", deserialize_with = "de::id_of")]
    pub user_id: u64,
    /// The guild it is reported for.
    #[serde(deserialize_with = "de::snowflake")]
    pub guild_id: u64,
    /// `online`, `idle`, `dnd` or `offline`.
    #[serde(borrow)]
    pub status: Cow<'a, str>,
}

impl<'a> View<'a> for PresenceUpdate<'a> {
    const EVENT: &'static str = "PRESENCE_UPDATE";
}

/// TYPING_START: a user started typing in a channel.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct TypingStart {
    /// The channel.
    #[serde(deserialize_with = "de::snowflake")]
    pub channel_id: u64,
    /// The guild; absent in DMs.
    #[serde(default, deserialize_with = "de::opt_snowflake")]
    pub guild_id: Option<u64>,
    /// Who is typing.
    #[serde(deserialize_with = "de::snowflake")]
    pub user_id: u64,
    /// When they started, in Unix seconds.
    pub timestamp: u64,
}

impl View<'_> for TypingStart {
    const EVENT: &'static str = "TYPING_START";
}
