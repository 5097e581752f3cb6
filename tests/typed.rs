//! Typed events: `Dispatch::to_twilight` on every corpus frame and on every event the fake gateway
//! sends, through a real shard; the lean views against twilight-model on the corpus and on generated
//! payloads (every field of a view equals twilight's reading of the same field).

#[path = "gateway/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::sync::{Arc, Mutex};

use actix::prelude::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use shardline::protocol::command::{RequestGuildMembers, RequestSoundboardSounds};
use shardline::testkit::Flood;
use shardline::typed::{
    GuildMemberAdd, GuildMemberRemove, InteractionCreate, MessageCreate, MessageDelete,
    MessageUpdate, PresenceUpdate, TwilightError, TypingStart, User, ViewError,
};
use shardline::{Command, Dispatch};
use twilight_model::gateway::event::Event;

use harness::*;

fn dispatch(event: &str, d: &str) -> Dispatch {
    let frame = format!(r#"{{"op":0,"s":1,"t":"{event}","d":{d}}}"#);
    Dispatch::from_frame(0, frame.into_bytes().into()).expect("a dispatch frame")
}

fn corpus(name: &str) -> Dispatch {
    let path = format!("{}/benches/corpus/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let frame = std::fs::read(&path).expect("corpus frame");
    Dispatch::from_frame(0, frame.into()).expect("a dispatch frame")
}

fn same_user(view: &User<'_>, twilight: &twilight_model::user::User) {
    assert_eq!(view.id, twilight.id.get());
    assert_eq!(view.username, twilight.name);
    assert_eq!(view.global_name.as_deref(), twilight.global_name.as_deref());
    assert_eq!(view.bot, twilight.bot);
}

fn same_message_create(view: &MessageCreate<'_>, m: &twilight_model::channel::Message) {
    assert_eq!(view.id, m.id.get());
    assert_eq!(view.channel_id, m.channel_id.get());
    assert_eq!(view.guild_id, m.guild_id.map(|id| id.get()));
    same_user(&view.author, &m.author);
    assert_eq!(
        view.member
            .as_ref()
            .map(|m| (m.nick.as_deref(), m.roles.clone())),
        m.member.as_ref().map(|m| (
            m.nick.as_deref(),
            m.roles.iter().map(|r| r.get()).collect::<Vec<_>>()
        ))
    );
    assert_eq!(view.content, m.content);
    assert_eq!(
        twilight_model::util::Timestamp::parse(&view.timestamp).ok(),
        Some(m.timestamp)
    );
    assert_eq!(
        view.edited_timestamp
            .as_deref()
            .map(|t| twilight_model::util::Timestamp::parse(t).ok()),
        m.edited_timestamp.map(Some)
    );
    assert_eq!(view.kind, u8::from(m.kind));
    assert_eq!(view.tts, m.tts);
    assert_eq!(view.mention_everyone, m.mention_everyone);
    assert_eq!(
        view.mention_ids,
        m.mentions.iter().map(|u| u.id.get()).collect::<Vec<_>>()
    );
    assert_eq!(
        view.mention_roles,
        m.mention_roles.iter().map(|r| r.get()).collect::<Vec<_>>()
    );
    assert_eq!(view.webhook_id, m.webhook_id.map(|id| id.get()));
}

fn same_message_update(view: &MessageUpdate<'_>, m: &twilight_model::channel::Message) {
    assert_eq!(view.id, m.id.get());
    assert_eq!(view.channel_id, m.channel_id.get());
    assert_eq!(view.guild_id, m.guild_id.map(|id| id.get()));
    same_user(view.author.as_ref().expect("author"), &m.author);
    assert_eq!(view.content.as_deref(), Some(m.content.as_str()));
    assert_eq!(
        view.edited_timestamp
            .as_deref()
            .map(|t| twilight_model::util::Timestamp::parse(t).ok()),
        m.edited_timestamp.map(Some)
    );
    assert_eq!(
        view.mention_ids,
        m.mentions.iter().map(|u| u.id.get()).collect::<Vec<_>>()
    );
    assert_eq!(
        view.mention_roles,
        m.mention_roles.iter().map(|r| r.get()).collect::<Vec<_>>()
    );
    assert_eq!(view.webhook_id, m.webhook_id.map(|id| id.get()));
}

fn same_typing(view: &TypingStart, t: &twilight_model::gateway::payload::incoming::TypingStart) {
    assert_eq!(view.channel_id, t.channel_id.get());
    assert_eq!(view.guild_id, t.guild_id.map(|id| id.get()));
    assert_eq!(view.user_id, t.user_id.get());
    assert_eq!(view.timestamp, t.timestamp);
}

fn same_presence(view: &PresenceUpdate<'_>, p: &twilight_model::gateway::presence::Presence) {
    assert_eq!(view.user_id, p.user.id().get());
    assert_eq!(view.guild_id, p.guild_id.get());
    assert_eq!(json!(view.status), serde_json::to_value(p.status).unwrap());
}

#[test]
fn every_corpus_frame_converts_to_twilight_and_the_views_agree() {
    let message = corpus("message_create");
    let Ok(Event::MessageCreate(m)) = message.to_twilight() else {
        panic!("{:?}", message.to_twilight())
    };
    let view: MessageCreate<'_> = message.view().unwrap();
    same_message_create(&view, &m);
    // The corpus message is a real one: the view read what is there, not defaults.
    assert_eq!(view.guild_id, Some(1126847926404610461));
    assert_eq!(view.mention_ids, [6825007747957220359]);
    assert_eq!(view.member.as_ref().unwrap().roles.len(), 3);

    let typing = corpus("typing_start");
    let Ok(Event::TypingStart(t)) = typing.to_twilight() else {
        panic!("{:?}", typing.to_twilight())
    };
    same_typing(&typing.view().unwrap(), &t);

    let presence = corpus("presence_update");
    let Ok(Event::PresenceUpdate(p)) = presence.to_twilight() else {
        panic!("{:?}", presence.to_twilight())
    };
    let view: PresenceUpdate<'_> = presence.view().unwrap();
    same_presence(&view, &p.0);
    assert_eq!(view.status, "online");

    let guild = corpus("guild_create");
    let Ok(Event::GuildCreate(g)) = guild.to_twilight() else {
        panic!("{:?}", guild.to_twilight())
    };
    assert_eq!(g.id().get(), 1126847926404610461);

    // The other corpus files are not dispatches (a heartbeat ACK; READY's user object).
    let ack = std::fs::read(format!(
        "{}/benches/corpus/heartbeat_ack.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    assert!(Dispatch::from_frame(0, ack.into()).is_none());
    let corpus_files = std::fs::read_dir(format!("{}/benches/corpus", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .count();
    assert_eq!(
        corpus_files, 6,
        "a corpus frame was added: convert it above too"
    );
}

#[test]
fn unknown_events_wrong_views_and_bad_payloads_are_errors_not_panics() {
    let probe = dispatch("LATENCY_PROBE", r#"{"sent_ns":1}"#);
    assert!(
        matches!(probe.to_twilight(), Err(TwilightError::UnknownEvent(n)) if n == "LATENCY_PROBE")
    );

    // twilight-model 0.18 has a GUILD_STICKERS_UPDATE type but no UNAVAILABLE_GUILD one (though
    // its `EventType` names the latter and not the former): what decides is its deserializer.
    let stickers = dispatch("GUILD_STICKERS_UPDATE", r#"{"guild_id":"5","stickers":[]}"#);
    assert!(
        matches!(stickers.to_twilight(), Ok(Event::GuildStickersUpdate(s)) if s.guild_id.get() == 5)
    );
    let bad_stickers = dispatch("GUILD_STICKERS_UPDATE", r#"{"guild_id":"5"}"#);
    assert!(matches!(
        bad_stickers.to_twilight(),
        Err(TwilightError::Json(_))
    ));
    let unavailable = dispatch("UNAVAILABLE_GUILD", r#"{"id":"5","unavailable":true}"#);
    assert!(
        matches!(unavailable.to_twilight(), Err(TwilightError::UnknownEvent(n)) if n == "UNAVAILABLE_GUILD")
    );

    let delete = dispatch("MESSAGE_DELETE", r#"{"id":"1","channel_id":"2"}"#);
    match delete.view::<MessageCreate<'_>>() {
        Err(ViewError::OtherEvent { expected, found }) => {
            assert_eq!(
                (expected, found.as_str()),
                ("MESSAGE_CREATE", "MESSAGE_DELETE")
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        delete.view::<MessageDelete>().unwrap(),
        delete.view::<MessageDelete>().unwrap()
    );

    // A snowflake that is no number, a negative one, a fraction, a missing required field.
    for d in [
        r#"{"id":"x1","channel_id":"2"}"#,
        r#"{"id":-1,"channel_id":"2"}"#,
        r#"{"id":"1"}"#,
        r#"{"id":"1","channel_id":2.5}"#,
    ] {
        let bad = dispatch("MESSAGE_DELETE", d);
        assert!(
            matches!(bad.view::<MessageDelete>(), Err(ViewError::Json(_))),
            "{d}"
        );
        assert!(
            matches!(bad.to_twilight(), Err(TwilightError::Json(_))),
            "{d}"
        );
    }
}

#[test]
fn strings_borrow_from_the_frame_unless_they_hold_escapes() {
    let d = dispatch(
        "GUILD_MEMBER_REMOVE",
        r#"{"guild_id":5,"user":{"id":"7","username":"plain","global_name":"caf\u00e9"}}"#,
    );
    let view: GuildMemberRemove<'_> = d.view().unwrap();
    assert!(matches!(
        view.user.username,
        std::borrow::Cow::Borrowed("plain")
    ));
    assert!(matches!(&view.user.global_name, Some(std::borrow::Cow::Owned(s)) if s == "café"));
    assert_eq!((view.guild_id, view.user.id), (5, 7));
}

/// A handler that keeps every dispatch it gets, as it got it.
#[derive(Default, Clone)]
struct Keeper(Arc<Mutex<Vec<Dispatch>>>);

impl Actor for Keeper {
    type Context = Context<Self>;
}

impl Handler<Dispatch> for Keeper {
    type Result = ();
    fn handle(&mut self, d: Dispatch, _: &mut Context<Self>) {
        self.0.lock().unwrap().push(d);
    }
}

impl Keeper {
    fn count(&self, event: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.event() == event)
            .count()
    }
}

/// Every event the fake gateway sends of its own accord (READY, GUILD_CREATE after it, RESUMED,
/// GUILD_MEMBERS_CHUNK for op 8, SOUNDBOARD_SOUNDS for op 31, LATENCY_PROBE in a flood) and flood
/// and scripted dispatches, received by a real shard and converted by the handler.
#[actix_rt::test]
async fn every_event_the_fake_sends_converts_through_a_real_shard() {
    let message = corpus("message_create");
    let mut fake_config = fast_fake(1, 1);
    fake_config.guilds_per_shard = 2;
    fake_config.flood_on_ready = Some(Flood {
        event: "MESSAGE_CREATE".into(),
        d: String::from_utf8(message.data().to_vec()).unwrap(),
        count: 4,
        probe_every: 2,
    });
    let keeper = Keeper::default();
    let handler = keeper.clone().start().recipient();
    let bot = Bot::start(fake_config, 1, |c| c.handler_all(handler)).await;

    bot.gateway
        .send(
            0,
            Command::RequestGuildMembers(RequestGuildMembers {
                guild_id: "5".into(),
                query: Some(String::new()),
                limit: Some(0),
                nonce: Some("n1".into()),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    bot.gateway
        .send(
            0,
            Command::RequestSoundboardSounds(RequestSoundboardSounds {
                guild_ids: vec!["5".into()],
            }),
        )
        .await
        .unwrap();
    let typing = corpus("typing_start");
    bot.fake
        .dispatch_raw(
            0,
            "TYPING_START",
            std::str::from_utf8(typing.data()).unwrap(),
        )
        .unwrap();
    assert!(bot.fake.reconnect(0));
    wait_until("RESUMED after op 7", || keeper.count("RESUMED") == 1).await;
    wait_until("the command replies", || {
        keeper.count("GUILD_MEMBERS_CHUNK") == 1 && keeper.count("SOUNDBOARD_SOUNDS") == 1
    })
    .await;

    let got = keeper.0.lock().unwrap().clone();
    let mut names: Vec<&str> = got.iter().map(Dispatch::event).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(
        names,
        [
            "GUILD_CREATE",
            "GUILD_MEMBERS_CHUNK",
            "LATENCY_PROBE",
            "MESSAGE_CREATE",
            "READY",
            "RESUMED",
            "SOUNDBOARD_SOUNDS",
            "TYPING_START"
        ]
    );
    for d in &got {
        let event = d.to_twilight();
        match (d.event(), &event) {
            ("READY", Ok(Event::Ready(ready))) => {
                assert_eq!(ready.guilds.len(), 2);
                assert_eq!(ready.shard.map(|s| (s.number(), s.total())), Some((0, 1)));
            }
            ("GUILD_CREATE", Ok(Event::GuildCreate(_)))
            | ("RESUMED", Ok(Event::Resumed))
            | ("TYPING_START", Ok(Event::TypingStart(_))) => {}
            ("GUILD_MEMBERS_CHUNK", Ok(Event::MemberChunk(chunk))) => {
                assert_eq!(
                    (chunk.guild_id.get(), chunk.nonce.as_deref()),
                    (5, Some("n1"))
                );
            }
            ("MESSAGE_CREATE", Ok(Event::MessageCreate(m))) => {
                same_message_create(&d.view().unwrap(), m);
            }
            // Neither is an event twilight-model 0.18 has a type for: SOUNDBOARD_SOUNDS came after
            // it, LATENCY_PROBE is the fake's own.
            ("SOUNDBOARD_SOUNDS" | "LATENCY_PROBE", Err(TwilightError::UnknownEvent(name)))
                if name == d.event() => {}
            (name, other) => panic!("{name}: {other:?}"),
        }
    }
    assert_eq!(
        got.iter().filter(|d| d.event() == "MESSAGE_CREATE").count(),
        4
    );
    bot.stop().await;
}

// ---- generated payloads ----

/// A JSON string whose characters are escaped at random (`\uXXXX`, surrogate pairs, `\/`), so the
/// views meet both borrowed and unescaped strings.
fn json_string(s: &str, escapes: &[bool]) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        let escape = escapes
            .get(i % escapes.len().max(1))
            .copied()
            .unwrap_or(false);
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' if escape => out.push_str("\\/"),
            c if (c as u32) < 0x20 || escape => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Serializes `v` with every string escaped at random and every snowflake-looking string (a key
/// ending in `id`, or inside `roles`/`mention_roles`) written as a number when `numbers` says so.
fn to_json(v: &Value, key: &str, escapes: &[bool], numbers: bool) -> String {
    match v {
        Value::String(s) => {
            let snowflake = (key.ends_with("id") && key != "custom_id")
                || key == "roles"
                || key == "mention_roles";
            if numbers && snowflake && s.parse::<u64>().is_ok() {
                s.clone()
            } else {
                json_string(s, escapes)
            }
        }
        Value::Array(items) => {
            let inner: Vec<String> = items
                .iter()
                .map(|i| to_json(i, key, escapes, numbers))
                .collect();
            format!("[{}]", inner.join(","))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}:{}",
                        json_string(k, escapes),
                        to_json(v, k, escapes, numbers)
                    )
                })
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        other => other.to_string(),
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 _.!?<>@:/-]{0,40}",
        any::<String>().prop_map(|s| s.chars().take(40).collect()),
    ]
}

fn snowflake() -> impl Strategy<Value = u64> {
    // Ids beyond 2^53, where a JSON number would lose precision in a float-based parser.
    prop_oneof![1u64..1000, (1u64 << 53)..u64::MAX]
}

fn timestamp() -> impl Strategy<Value = String> {
    (
        2015u32..2030,
        1u32..13,
        1u32..29,
        0u32..24,
        0u32..60,
        0u32..60,
        0u32..1_000_000,
    )
        .prop_map(|(y, mo, d, h, mi, s, us)| {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}+00:00")
        })
}

fn user() -> impl Strategy<Value = Value> {
    (
        snowflake(),
        text(),
        proptest::option::of(text()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(id, name, global, bot, bot_present)| {
            let mut u = json!({
                "id": id.to_string(), "username": name, "global_name": global,
                "discriminator": "0", "avatar": null, "public_flags": 0,
                "shiny_new_field": {"nested": [1, "two", null]},
            });
            if bot_present {
                u["bot"] = json!(bot);
            }
            u
        })
}

fn member() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(text()),
        proptest::collection::vec(snowflake(), 0..4),
        proptest::option::of(timestamp()),
        any::<bool>(),
    )
        .prop_map(|(nick, roles, joined, pending)| {
            json!({
                "nick": nick, "roles": roles.iter().map(u64::to_string).collect::<Vec<_>>(),
                "joined_at": joined, "pending": pending, "deaf": false, "mute": false,
                "flags": 0, "premium_since": null, "avatar": null,
                "communication_disabled_until": null,
            })
        })
}

/// A MESSAGE_CREATE/UPDATE `d` that twilight-model accepts, with generated values in every field
/// the views read (and optional ones present or not), an unknown key, and the corpus message's
/// embeds and attachments.
fn message() -> impl Strategy<Value = Value> {
    (
        (snowflake(), snowflake(), proptest::option::of(snowflake())),
        user(),
        proptest::option::of(member()),
        text(),
        timestamp(),
        proptest::option::of(timestamp()),
        (
            prop::sample::select(vec![0u8, 19, 20]),
            any::<bool>(),
            any::<bool>(),
        ),
        proptest::collection::vec(user(), 0..3),
        proptest::collection::vec(snowflake(), 0..3),
        proptest::option::of(snowflake()),
    )
        .prop_map(
            |(
                (id, channel, guild),
                author,
                member,
                content,
                ts,
                edited,
                (kind, tts, everyone),
                mentions,
                roles,
                webhook,
            )| {
                let corpus = corpus("message_create");
                let mut d: Value = serde_json::from_slice(corpus.data()).unwrap();
                let m = d.as_object_mut().unwrap();
                m.insert("id".into(), json!(id.to_string()));
                m.insert("channel_id".into(), json!(channel.to_string()));
                match guild {
                    Some(g) => m.insert("guild_id".into(), json!(g.to_string())),
                    None => m.remove("guild_id"),
                };
                m.insert("author".into(), author);
                match member {
                    Some(mem) => m.insert("member".into(), mem),
                    None => m.remove("member"),
                };
                m.insert("content".into(), json!(content));
                m.insert("timestamp".into(), json!(ts));
                m.insert("edited_timestamp".into(), json!(edited));
                m.insert("type".into(), json!(kind));
                m.insert("tts".into(), json!(tts));
                m.insert("mention_everyone".into(), json!(everyone));
                m.insert("mentions".into(), json!(mentions));
                m.insert(
                    "mention_roles".into(),
                    json!(roles.iter().map(u64::to_string).collect::<Vec<_>>()),
                );
                if let Some(w) = webhook {
                    m.insert("webhook_id".into(), json!(w.to_string()));
                }
                m.insert("a_field_discord_adds_later".into(), json!({"x": [1, 2]}));
                d
            },
        )
}

fn encoding() -> impl Strategy<Value = (Vec<bool>, bool)> {
    (
        proptest::collection::vec(any::<bool>(), 1..8),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn message_create_and_update_views_equal_twilight(d in message(), (escapes, numbers) in encoding()) {
        let json = to_json(&d, "", &escapes, numbers);
        let create = dispatch("MESSAGE_CREATE", &json);
        let Event::MessageCreate(m) = create.to_twilight().unwrap() else { panic!() };
        same_message_create(&create.view().unwrap(), &m);
        let update = dispatch("MESSAGE_UPDATE", &json);
        let Event::MessageUpdate(m) = update.to_twilight().unwrap() else { panic!() };
        same_message_update(&update.view().unwrap(), &m);
    }

    #[test]
    fn message_delete_and_typing_views_equal_twilight(
        (id, channel, guild, user) in (snowflake(), snowflake(), proptest::option::of(snowflake()), snowflake()),
        ts in any::<u64>(),
        (escapes, numbers) in encoding(),
    ) {
        let mut d = json!({"id": id.to_string(), "channel_id": channel.to_string(), "extra": [null]});
        if let Some(g) = guild {
            d["guild_id"] = json!(g.to_string());
        }
        let delete = dispatch("MESSAGE_DELETE", &to_json(&d, "", &escapes, numbers));
        let Event::MessageDelete(t) = delete.to_twilight().unwrap() else { panic!() };
        let view: MessageDelete = delete.view().unwrap();
        prop_assert_eq!(
            (view.id, view.channel_id, view.guild_id),
            (t.id.get(), t.channel_id.get(), t.guild_id.map(|g| g.get()))
        );

        let mut d = json!({"channel_id": channel.to_string(), "user_id": user.to_string(), "timestamp": ts});
        if let Some(g) = guild {
            d["guild_id"] = json!(g.to_string());
        }
        let typing = dispatch("TYPING_START", &to_json(&d, "", &escapes, numbers));
        let Event::TypingStart(t) = typing.to_twilight().unwrap() else { panic!() };
        same_typing(&typing.view().unwrap(), &t);
    }

    #[test]
    fn member_views_equal_twilight(
        guild in snowflake(),
        user in user(),
        member in member(),
        (escapes, numbers) in encoding(),
    ) {
        let mut d = member;
        d["guild_id"] = json!(guild.to_string());
        d["user"] = user.clone();
        let add = dispatch("GUILD_MEMBER_ADD", &to_json(&d, "", &escapes, numbers));
        let Event::MemberAdd(t) = add.to_twilight().unwrap() else { panic!() };
        let view: GuildMemberAdd<'_> = add.view().unwrap();
        prop_assert_eq!(view.guild_id, t.guild_id.get());
        same_user(&view.user, &t.member.user);
        prop_assert_eq!(view.nick.as_deref(), t.member.nick.as_deref());
        prop_assert_eq!(&view.roles, &t.member.roles.iter().map(|r| r.get()).collect::<Vec<_>>());
        prop_assert_eq!(
            view.joined_at.as_deref().map(|j| twilight_model::util::Timestamp::parse(j).ok()),
            t.member.joined_at.map(Some)
        );
        prop_assert_eq!(view.pending, t.member.pending);

        let d = json!({"guild_id": guild.to_string(), "user": user});
        let remove = dispatch("GUILD_MEMBER_REMOVE", &to_json(&d, "", &escapes, numbers));
        let Event::MemberRemove(t) = remove.to_twilight().unwrap() else { panic!() };
        let view: GuildMemberRemove<'_> = remove.view().unwrap();
        prop_assert_eq!(view.guild_id, t.guild_id.get());
        same_user(&view.user, &t.user);
    }

    #[test]
    fn presence_view_equals_twilight(
        (user, guild) in (snowflake(), snowflake()),
        status in prop::sample::select(vec!["online", "idle", "dnd", "offline"]),
        whole_user in any::<bool>(),
        (escapes, numbers) in encoding(),
    ) {
        let user = if whole_user {
            json!({"id": user.to_string(), "username": "u", "discriminator": "0", "avatar": null})
        } else {
            json!({"id": user.to_string()})
        };
        let d = json!({
            "user": user, "guild_id": guild.to_string(), "status": status,
            "client_status": {"desktop": status}, "activities": [],
        });
        let presence = dispatch("PRESENCE_UPDATE", &to_json(&d, "", &escapes, numbers));
        let Event::PresenceUpdate(p) = presence.to_twilight().unwrap() else { panic!() };
        same_presence(&presence.view().unwrap(), &p.0);
    }

    #[test]
    fn interaction_view_equals_twilight(
        (id, app, guild, channel) in (snowflake(), snowflake(), proptest::option::of(snowflake()), snowflake()),
        token in "[A-Za-z0-9_.-]{1,60}",
        user in user(),
        member in member(),
        locale in proptest::option::of(prop::sample::select(vec!["en-US", "de", "pt-BR"])),
        (kind, name, custom_id) in (prop::sample::select(vec![2u8, 3, 5]), text(), text()),
        (channel_object, channel_id_field) in (any::<bool>(), any::<bool>()),
        (escapes, numbers) in encoding(),
    ) {
        let data = match kind {
            2 => json!({"id": id.to_string(), "name": name, "type": 1, "options": []}),
            3 => json!({"custom_id": custom_id, "component_type": 2}),
            _ => json!({"custom_id": custom_id, "components": []}),
        };
        let mut d = json!({
            "id": id.to_string(), "application_id": app.to_string(), "type": kind,
            "token": token, "version": 1, "data": data,
            "entitlements": [], "authorizing_integration_owners": {}, "attachment_size_limit": 1,
        });
        if channel_object {
            d["channel"] = json!({"id": channel.to_string(), "type": 0, "name": "general"});
        }
        if channel_id_field {
            d["channel_id"] = json!(channel.to_string());
        }
        if let Some(l) = locale {
            d["locale"] = json!(l);
        }
        match guild {
            Some(g) => {
                d["guild_id"] = json!(g.to_string());
                let mut m = member;
                m["user"] = user;
                m["permissions"] = json!("0");
                d["member"] = m;
            }
            None => d["user"] = user,
        }
        let interaction = dispatch("INTERACTION_CREATE", &to_json(&d, "", &escapes, numbers));
        let Event::InteractionCreate(t) = interaction.to_twilight().unwrap() else { panic!() };
        let view: InteractionCreate<'_> = interaction.view().unwrap();
        prop_assert_eq!(view.id, t.id.get());
        prop_assert_eq!(view.application_id, t.application_id.get());
        prop_assert_eq!(view.kind, t.kind as u8);
        prop_assert_eq!(&*view.token, t.token.as_str());
        prop_assert_eq!(view.guild_id, t.guild_id.map(|g| g.get()));
        #[allow(deprecated)]
        let channel = t.channel.as_ref().map(|c| c.id).or(t.channel_id);
        prop_assert_eq!(view.channel_id(), channel.map(|c| c.get()));
        prop_assert_eq!(view.channel_id().is_some(), channel_object || channel_id_field);
        prop_assert_eq!(view.locale.as_deref(), t.locale.as_deref());
        let twilight_author = t.author().expect("an author");
        same_user(view.author().expect("an author"), twilight_author);
        prop_assert_eq!(
            view.member.as_ref().map(|m| (m.nick.as_deref(), m.roles.clone())),
            t.member.as_ref().map(|m| (m.nick.as_deref(), m.roles.iter().map(|r| r.get()).collect()))
        );
        use twilight_model::application::interaction::InteractionData as T;
        let data = view.data.as_ref().expect("data");
        match t.data.as_ref().expect("data") {
            T::ApplicationCommand(c) => {
                prop_assert_eq!(data.id, Some(c.id.get()));
                prop_assert_eq!(data.name.as_deref(), Some(c.name.as_str()));
                prop_assert_eq!(data.custom_id.as_deref(), None);
            }
            T::MessageComponent(c) => {
                prop_assert_eq!(data.custom_id.as_deref(), Some(c.custom_id.as_str()));
                prop_assert_eq!(data.component_type, Some(u8::from(c.component_type)));
                prop_assert_eq!(data.name.as_deref(), None);
            }
            T::ModalSubmit(c) => {
                prop_assert_eq!(data.custom_id.as_deref(), Some(c.custom_id.as_str()));
            }
            other => panic!("{other:?}"),
        }
    }
}
