use crate::harness::LogCapture;
use shardline::{Config, ConfigError, Intents, Limits, ShardPlan};

#[test]
fn bad_configuration_is_a_typed_error_at_build_time() {
    let err = |b: shardline::ConfigBuilder| b.build().unwrap_err();
    assert_eq!(err(Config::builder("")), ConfigError::EmptyToken);
    assert_eq!(err(Config::builder("  ")), ConfigError::EmptyToken);
    assert_eq!(
        err(Config::builder("t").shards(ShardPlan::Count(0))),
        ConfigError::ZeroShards
    );
    assert_eq!(
        err(Config::builder("t").shards(ShardPlan::Range {
            ids: 0..2,
            total: 0
        })),
        ConfigError::ZeroShards
    );
    assert_eq!(
        err(Config::builder("t").shards(ShardPlan::Range {
            ids: 3..3,
            total: 4
        })),
        ConfigError::EmptyShardRange
    );
    assert_eq!(
        err(Config::builder("t").shards(ShardPlan::Range {
            ids: 2..5,
            total: 4
        })),
        ConfigError::ShardOutOfRange { id: 4, total: 4 }
    );
    assert_eq!(
        err(Config::builder("t").large_threshold(49)),
        ConfigError::LargeThreshold(49)
    );
    assert_eq!(
        err(Config::builder("t").large_threshold(251)),
        ConfigError::LargeThreshold(251)
    );
    assert_eq!(
        err(Config::builder("t").intent_bits(1 << 53 | 1)),
        ConfigError::IntentsOutOfRange(1 << 53)
    );
    assert_eq!(
        err(Config::builder("t").intent_bits(u64::MAX)),
        ConfigError::IntentsOutOfRange(!Intents::MAX_BITS)
    );
    assert_eq!(
        err(Config::builder("t").max_concurrency(0)),
        ConfigError::ZeroMaxConcurrency
    );
    assert_eq!(
        err(Config::builder("t").arbiters(0)),
        ConfigError::ZeroArbiters
    );
    assert!(matches!(
        err(Config::builder("t").gateway_url("http://x")),
        ConfigError::InvalidUrl("gateway_url", _)
    ));
    assert!(matches!(
        err(Config::builder("t").api_base("nope")),
        ConfigError::InvalidUrl("api_base", _)
    ));
    assert!(matches!(
        err(Config::builder("t").limits(Limits::default().max_message_size(10))),
        ConfigError::InvalidLimit("max_message_size", _)
    ));
    assert!(matches!(
        err(Config::builder("t").limits(Limits::default().concurrent_handshakes(0))),
        ConfigError::InvalidLimit("concurrent_handshakes", _)
    ));
    // Errors say what is wrong in words, and never carry the token.
    let text = Config::builder("").build().unwrap_err().to_string();
    assert_eq!(text, "the token is empty");
    assert!(Config::builder("t")
        .large_threshold(250)
        .intent_bits(Intents::ALL.bits())
        .build()
        .is_ok());
}

#[test]
fn the_token_never_shows_in_debug_output() {
    let config = Config::builder("super-secret-token").build().unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("super-secret-token"), "{debug}");
    assert!(debug.contains("<redacted>"));
}

/// Discord adds intents: a bit this version does not know is sent as given, with a warning that
/// names it, while a bit beyond any JSON integer Discord uses is refused.
#[test]
fn unknown_intent_bits_are_sent_with_a_warning() {
    let logs = LogCapture::default();
    let config = tracing::subscriber::with_default(logs.subscriber(), || {
        Config::builder("t")
            .intent_bits(1 << 40 | Intents::GUILDS.bits())
            .build()
    })
    .unwrap();
    assert_eq!(config.intents().bits(), 1 << 40 | 1);
    let text = logs.text();
    assert_eq!(text.matches("does not know").count(), 1, "{text}");
    assert!(text.contains(&format!("unknown={}", 1u64 << 40)), "{text}");

    // Documented bits alone warn of nothing.
    let quiet = LogCapture::default();
    tracing::subscriber::with_default(quiet.subscriber(), || {
        Config::builder("t")
            .intent_bits(Intents::ALL.bits())
            .build()
    })
    .unwrap();
    assert_eq!(quiet.text(), "");
}

/// A handler registered under a name Discord does not document is most likely a typo: the builder
/// says so, naming it, and still registers it (Discord adds events).
#[actix_rt::test]
async fn a_handler_for_an_unknown_event_name_is_warned_about() {
    use actix::prelude::*;
    struct Sink;
    impl Actor for Sink {
        type Context = Context<Self>;
    }
    impl Handler<shardline::Dispatch> for Sink {
        type Result = ();
        fn handle(&mut self, _: shardline::Dispatch, _: &mut Context<Self>) {}
    }
    impl Handler<shardline::DispatchBatch> for Sink {
        type Result = ();
        fn handle(&mut self, _: shardline::DispatchBatch, _: &mut Context<Self>) {}
    }
    let sink = Sink.start();
    let logs = LogCapture::default();
    let config = tracing::subscriber::with_default(logs.subscriber(), || {
        Config::builder("t")
            .handler("MESSAGE_CREATED", sink.clone().recipient())
            .handler("MESSAGE_CREATE", sink.clone().recipient())
            .batch_handler("GUILD_CRATE", sink.clone().recipient())
            .build()
    });
    assert!(config.is_ok());
    let text = logs.text();
    assert_eq!(text.matches("does not document").count(), 2, "{text}");
    assert!(
        text.contains("event=\"MESSAGE_CREATED\"") || text.contains("event=MESSAGE_CREATED"),
        "{text}"
    );
    assert!(text.contains("GUILD_CRATE"), "{text}");
    assert!(
        !text.contains("event=MESSAGE_CREATE ") && !text.contains("event=\"MESSAGE_CREATE\""),
        "{text}"
    );
}
