//! Typed events: lean views of the hot dispatch events, borrowed from the frame.
//!
//! A view holds the fields most handlers read, nothing more: strings borrow from the received
//! frame (a [`Cow`](std::borrow::Cow) owns a copy only when the JSON string held escapes), snowflakes are `u64`
//! (read from a JSON string or number, as Discord sends either), keys a view does not know are
//! skipped (a field Discord adds never breaks it), and a field Discord may omit is an `Option`.
//! Nothing is parsed until a handler asks: [`Dispatch::view`](crate::Dispatch::view) (or
//! [`View::read`]) reads `d` on demand, and a handler that never asks pays nothing.
//!
//! For every field of every payload, the feature `twilight-model` converts any dispatch into
//! twilight-model's owned `Event` ([`Dispatch::to_twilight`](crate::Dispatch::to_twilight)); a view
//! is several times faster to read (BENCHMARKS.md, "Typed path").
//!
//! ```
//! use shardline::typed::MessageCreate;
//! use shardline::Dispatch;
//!
//! let frame = br#"{"op":0,"s":3,"t":"MESSAGE_CREATE","d":{"id":"1201","channel_id":"77",
//!   "guild_id":"5","content":"caf\u00e9 at 9?","timestamp":"2024-03-22T15:35:10.271000+00:00",
//!   "type":0,"tts":false,"mention_everyone":false,"mentions":[],"mention_roles":[],
//!   "author":{"id":"42","username":"mia","global_name":null},"new_field":[1,2]}}"#;
//! let dispatch = Dispatch::from_frame(0, frame.to_vec().into()).unwrap();
//!
//! let message: MessageCreate<'_> = dispatch.view().unwrap();
//! assert_eq!((message.id, message.channel_id, message.guild_id), (1201, 77, Some(5)));
//! assert_eq!((message.author.id, &*message.author.username), (42, "mia"));
//! assert_eq!(message.content, "café at 9?"); // held an escape: the one owned string
//! assert!(message.author.global_name.is_none());
//!
//! // Asking a dispatch for the view of another event is an error, not a misread.
//! assert!(dispatch.view::<shardline::typed::TypingStart>().is_err());
//! ```

mod de;
mod views;

use std::fmt;

use serde::Deserialize;

pub use views::{
    GuildMemberAdd, GuildMemberRemove, InteractionCreate, InteractionData, InteractionMember,
    MessageCreate, MessageDelete, MessageMember, MessageUpdate, PresenceUpdate, TypingStart, User,
};

/// A lean, borrowed view of one dispatch event's `d`.
pub trait View<'a>: Deserialize<'a> {
    /// The event name (`t`) whose `d` this view reads, e.g. `MESSAGE_CREATE`.
    const EVENT: &'static str;

    /// Reads the `d` of an `event` dispatch (`data`, the raw JSON), borrowing from it; an error if
    /// the dispatch is another event or its `d` does not have this event's shape.
    /// [`Dispatch::view`](crate::Dispatch::view) is the way in from a handler.
    fn read(event: &str, data: &'a [u8]) -> Result<Self, ViewError> {
        if event != Self::EVENT {
            return Err(ViewError::OtherEvent {
                expected: Self::EVENT,
                found: event.to_owned(),
            });
        }
        serde_json::from_slice(data).map_err(ViewError::Json)
    }
}

/// Why a view could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum ViewError {
    /// The dispatch is another event than the view's.
    OtherEvent {
        /// The view's event name.
        expected: &'static str,
        /// The dispatch's event name.
        found: String,
    },
    /// `d` is not valid JSON, or lacks a field the view needs, or has one of the wrong type.
    Json(serde_json::Error),
}

impl fmt::Display for ViewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OtherEvent { expected, found } => {
                write!(f, "a view of {expected} asked of a {found} dispatch")
            }
            Self::Json(e) => write!(f, "the dispatch's d does not fit the view: {e}"),
        }
    }
}

impl std::error::Error for ViewError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::OtherEvent { .. } => None,
            Self::Json(e) => Some(e),
        }
    }
}

/// Why [`Dispatch::to_twilight`](crate::Dispatch::to_twilight) failed.
#[cfg(feature = "twilight-model")]
#[derive(Debug)]
#[non_exhaustive]
pub enum TwilightError {
    /// twilight-model has no type for this event name (a name Discord added after twilight-model
    /// 0.18, or one that is not Discord's).
    UnknownEvent(String),
    /// `d` does not deserialize into twilight-model's type for the event.
    Json(serde_json::Error),
}

#[cfg(feature = "twilight-model")]
impl fmt::Display for TwilightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownEvent(name) => write!(f, "twilight-model has no event named {name}"),
            Self::Json(e) => write!(f, "the dispatch's d does not fit twilight-model: {e}"),
        }
    }
}

#[cfg(feature = "twilight-model")]
impl std::error::Error for TwilightError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::UnknownEvent(_) => None,
            Self::Json(e) => Some(e),
        }
    }
}

/// `d` as twilight-model's typed event, through the deserializer twilight itself runs on a
/// dispatch (`DispatchEventWithTypeDeserializer`, seeded with the event name).
#[cfg(feature = "twilight-model")]
pub(crate) fn to_twilight(
    name: &str,
    data: &[u8],
) -> Result<twilight_model::gateway::event::Event, TwilightError> {
    use serde::de::DeserializeSeed;
    use twilight_model::gateway::event::DispatchEventWithTypeDeserializer;

    let mut de = serde_json::Deserializer::from_slice(data);
    let parsed = DispatchEventWithTypeDeserializer::new(name)
        .deserialize(&mut de)
        .and_then(|event| de.end().map(|()| event));
    match parsed {
        Ok(event) => Ok(event.into()),
        // twilight reports a name it lacks as a bare serde error; telling it apart lets a handler
        // skip events twilight cannot type without mistaking a malformed payload for one. Asked
        // only once the parse failed, so a success pays nothing for it.
        Err(_) if !twilight_knows(name) => Err(TwilightError::UnknownEvent(name.to_owned())),
        Err(e) => Err(TwilightError::Json(e)),
    }
}

/// Whether twilight-model's dispatch deserializer has a type for `name`: it reads its input only
/// for a name it knows, so a deserializer that notes being read tells. (`EventType::try_from` is
/// not the same list: in 0.18 it lacks GUILD_STICKERS_UPDATE, which the deserializer reads.)
#[cfg(feature = "twilight-model")]
fn twilight_knows(name: &str) -> bool {
    use serde::de::{DeserializeSeed, Deserializer, Visitor};
    use std::cell::Cell;
    use twilight_model::gateway::event::DispatchEventWithTypeDeserializer;

    struct Probe<'a>(&'a Cell<bool>);

    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            self.0.set(true);
            Err(serde::de::Error::custom("probe"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
            identifier ignored_any
        }
    }

    let read = Cell::new(false);
    let _ = DispatchEventWithTypeDeserializer::new(name).deserialize(Probe(&read));
    read.get()
}
