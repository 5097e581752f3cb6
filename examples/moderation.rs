//! From an event to an action: a moderation bot that deletes every message containing a banned
//! word, through Discord's REST API with twilight-http (its rate-limit buckets and its retries on
//! 429: no hand-rolled rate limiting here), and posts a short notice in the channel.
//!
//! ```text
//! cargo run --example moderation --features testkit
//! DISCORD_TOKEN=fake-token cargo run --example moderation --features testkit -- \
//!     --api-base http://127.0.0.1:7878/api/v10 [--banned spam,scam] [--shards 1]
//! ```
//! Without `--api-base` it starts the fake gateway in-process, sends a short conversation and
//! prints the REST calls the fake received (a 429 and twilight's retry among them), then exits.
//! With `--api-base` it runs against that fake (e.g. `cargo run --example fake_gateway`) until
//! Ctrl-C: the gateway and the REST calls both go there. twilight-http is built here without TLS,
//! so it speaks plain http to the fake; against Discord, enable one of its TLS features and leave
//! out the `proxy` setting.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Deserialize;
use shardline::testkit::{FakeConfig, FakeGateway};
use shardline::{Config, Dispatch, Gateway, Intents, ShardPlan};
use twilight_http::Client;
use twilight_model::id::marker::{ChannelMarker, MessageMarker};
use twilight_model::id::Id;

/// The fields of `MESSAGE_CREATE` the bot reads, borrowed from the frame.
#[derive(Deserialize)]
struct MessageCreate<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    channel_id: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Cow<'a, str>,
    author: Author,
}

#[derive(Deserialize)]
struct Author {
    #[serde(default)]
    bot: bool,
}

/// Deletes messages with a banned word and says so in the channel.
struct Moderator {
    http: Arc<Client>,
    /// Lower-case words; a message is banned if one of its words is one of these.
    banned: Arc<Vec<String>>,
}

impl Actor for Moderator {
    type Context = Context<Self>;
}

impl Moderator {
    fn is_banned(&self, content: &str) -> bool {
        content
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .any(|w| self.banned.iter().any(|b| w.eq_ignore_ascii_case(b)))
    }
}

impl Handler<Dispatch> for Moderator {
    type Result = ();

    fn handle(&mut self, event: Dispatch, _: &mut Context<Self>) {
        let message: MessageCreate<'_> = match event.parse_borrowed() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(shard = event.shard(), error = %e, "MESSAGE_CREATE without the fields the bot reads");
                return;
            }
        };
        // Bots, this one included (its notices come back as MESSAGE_CREATE), are not moderated.
        if message.author.bot || !self.is_banned(&message.content) {
            return;
        }
        let ids = (
            message
                .channel_id
                .parse()
                .ok()
                .and_then(Id::<ChannelMarker>::new_checked),
            message
                .id
                .parse()
                .ok()
                .and_then(Id::<MessageMarker>::new_checked),
        );
        let (Some(channel), Some(id)) = ids else {
            tracing::warn!(channel = %message.channel_id, message_id = %message.id, "not a snowflake");
            return;
        };
        let http = self.http.clone();
        // The REST calls run beside the handler: it goes on with the next event meanwhile, and
        // twilight queues each call behind its bucket.
        actix::spawn(async move {
            if let Err(e) = http.delete_message(channel, id).await {
                tracing::warn!(%channel, message_id = %id, error = %e, "delete failed");
                return;
            }
            tracing::info!(%channel, message_id = %id, "deleted a message with a banned word");
            println!("deleted {channel}/{id}");
            let notice = http
                .create_message(channel)
                .content("A message with a banned word was removed.")
                .await;
            if let Err(e) = notice {
                tracing::warn!(%channel, error = %e, "notice failed");
            }
        });
    }
}

struct Args {
    api_base: Option<String>,
    banned: Vec<String>,
    shards: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        api_base: None,
        banned: vec!["spam".into(), "scam".into()],
        shards: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--api-base" => args.api_base = Some(value),
            "--banned" => {
                args.banned = value
                    .split(',')
                    .map(|w| w.trim().to_lowercase())
                    .filter(|w| !w.is_empty())
                    .collect()
            }
            "--shards" => args.shards = value.parse().map_err(|e| format!("{flag}: {e}"))?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// A twilight client whose calls go to `api_base` (`http://HOST:PORT/api/v10`): twilight's `proxy`
/// setting replaces `discord.com` with that host and, with `use_http`, `https` with `http`.
fn rest_client(api_base: &str, token: String) -> Result<Client, String> {
    let host = api_base
        .strip_prefix("http://")
        .ok_or("this example's twilight-http has no TLS: the API base must be http://")?
        .trim_end_matches('/')
        .strip_suffix("/api/v10")
        .ok_or("the API base must end in /api/v10")?;
    Ok(Client::builder()
        .token(token)
        .proxy(host.to_owned(), true)
        .timeout(Duration::from_secs(10))
        .build())
}

async fn start_bot(
    api_base: &str,
    token: &str,
    shards: u32,
    banned: Vec<String>,
) -> Result<Gateway, Box<dyn std::error::Error>> {
    let http = Arc::new(rest_client(api_base, token.to_owned())?);
    let moderator = Moderator {
        http,
        banned: Arc::new(banned),
    }
    .start();
    let config = Config::builder(token)
        .intents(Intents::GUILDS | Intents::GUILD_MESSAGES | Intents::MESSAGE_CONTENT)
        .shards(ShardPlan::Count(shards))
        .api_base(api_base)
        .handler("MESSAGE_CREATE", moderator.recipient())
        .build()?;
    Ok(Gateway::start(config).await?)
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,moderation=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = parse_args().map_err(|e| format!("moderation: {e}"))?;
    if let Some(api_base) = &args.api_base {
        let token = std::env::var("DISCORD_TOKEN").map_err(|_| "DISCORD_TOKEN is not set")?;
        let gateway = start_bot(api_base, &token, args.shards, args.banned).await?;
        tracing::info!(%api_base, "moderating until Ctrl-C");
        let _ = actix_rt::signal::ctrl_c().await;
        gateway.shutdown(false).await;
        return Ok(());
    }

    // A self-contained run against the in-process fake: two REST calls per channel per 500 ms, so
    // the third deletion in a channel meets a 429 and twilight retries it.
    let fake = FakeGateway::start(FakeConfig {
        heartbeat_interval: Duration::from_millis(500),
        rest_rate_limit: (2, Duration::from_millis(500)),
        ..FakeConfig::default()
    })
    .await?;
    let gateway = start_bot(&fake.api_base(), "fake-token", 1, args.banned).await?;
    if !fake
        .wait_for(Duration::from_secs(10), "shard ready", |f| {
            f.ready_shards() == [0]
        })
        .await
    {
        return Err("the shard did not become ready".into());
    }
    let conversation = [
        (1, "good morning"),
        (2, "cheap SPAM here"),
        (3, "spamalot is a musical"),
        (4, "not a scam, promise"),
        (5, "more spam"),
    ];
    for (n, content) in conversation {
        let d = serde_json::json!({
            "id": (1_100_000_000_000_000_000u64 + n).to_string(),
            "channel_id": "1000000000000000001",
            "guild_id": "1000000000000000000",
            "author": {"id": "42", "username": "someone"},
            "content": content,
        });
        fake.dispatch(0, "MESSAGE_CREATE", d);
        println!("sent message {n}: {content:?}");
    }
    let done = |f: &FakeGateway| {
        f.rest_calls()
            .iter()
            .filter(|c| c.status == 200 && c.method == "POST")
            .count()
            == 3
    };
    if !fake
        .wait_for(Duration::from_secs(20), "three notices", done)
        .await
    {
        return Err("the bot did not act in time".into());
    }
    println!("\nREST calls the fake received:");
    for call in fake.rest_calls() {
        println!("  {} {} -> {}", call.method, call.path, call.status);
    }
    gateway.shutdown(false).await;
    fake.stop().await;
    Ok(())
}
