//! The small deserializers the views share: snowflakes in either JSON form, optional borrowed
//! strings, and lists of ids.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// A snowflake. Discord sends ids as strings (a JSON number loses precision above 2^53 in most
/// clients) but some payloads and older clients use numbers, and twilight-model takes both: so do
/// the views.
#[derive(Clone, Copy)]
pub(crate) struct Snowflake(pub(crate) u64);

struct SnowflakeVisitor;

impl Visitor<'_> for SnowflakeVisitor {
    type Value = Snowflake;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a snowflake, as a string or a non-negative integer")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Snowflake, E> {
        Ok(Snowflake(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Snowflake, E> {
        u64::try_from(v)
            .map(Snowflake)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Snowflake, E> {
        v.parse()
            .map(Snowflake)
            .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

impl<'de> Deserialize<'de> for Snowflake {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SnowflakeVisitor)
    }
}

pub(crate) fn snowflake<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Snowflake::deserialize(d).map(|s| s.0)
}

pub(crate) fn opt_snowflake<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<Snowflake>::deserialize(d).map(|s| s.map(|s| s.0))
}

/// A list of snowflakes; `null` reads as empty.
pub(crate) fn snowflakes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    struct Ids;
    impl<'de> Visitor<'de> for Ids {
        type Value = Vec<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of snowflakes")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Vec<u64>, E> {
            Ok(Vec::new())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u64>, A::Error> {
            let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
            while let Some(Snowflake(id)) = seq.next_element()? {
                ids.push(id);
            }
            Ok(ids)
        }
    }
    d.deserialize_any(Ids)
}

/// The `id` of an object, every other key skipped.
#[derive(Clone, Copy)]
pub(crate) struct IdOf(pub(crate) u64);

impl<'de> Deserialize<'de> for IdOf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IdOf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object with an id")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IdOf, A::Error> {
                let mut id = None;
                while let Some(IsId(is_id)) = map.next_key()? {
                    if is_id {
                        id = Some(map.next_value::<Snowflake>()?.0);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                id.map(IdOf).ok_or_else(|| de::Error::missing_field("id"))
            }
        }
        d.deserialize_map(V)
    }
}

/// Whether a key is `id`, read without copying it.
struct IsId(bool);

impl<'de> Deserialize<'de> for IsId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IsId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IsId, E> {
                Ok(IsId(v == "id"))
            }
        }
        d.deserialize_identifier(V)
    }
}

/// The `id` of an object (e.g. PRESENCE_UPDATE's `user`, which may hold only its id).
pub(crate) fn id_of<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    IdOf::deserialize(d).map(|i| i.0)
}

/// The `id` of an object that may be `null` or absent.
pub(crate) fn opt_id_of<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<IdOf>::deserialize(d).map(|i| i.map(|i| i.0))
}

/// The ids of a list of objects (e.g. a message's `mentions`, which are whole users).
pub(crate) fn ids_of<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    Option::<Vec<IdOf>>::deserialize(d)
        .map(|list| list.unwrap_or_default().into_iter().map(|i| i.0).collect())
}

/// A string borrowed from the frame when it holds no escapes. serde borrows a bare `Cow<str>`
/// field marked `borrow`, but not one inside an `Option`: this newtype carries the borrow there.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

pub(crate) fn opt_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Option::<CowStr<'de>>::deserialize(d).map(|s| s.map(|s| s.0))
}

/// `null` reads as `false` (Discord sends `null` for some flags it has no value for).
pub(crate) fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Option::<bool>::deserialize(d).map(Option::unwrap_or_default)
}
