//! Streams a bot's dispatch events as JSON lines on stdout — one object per event with keys `shard`,
//! `seq`, `t` and `d` (`d` exactly as received) — and logs on stderr.
//!
//! ```text
//! DISCORD_TOKEN=... cargo run --example tail -- [--api-base URL] [--gateway-url URL] [--shards N]
//!                                               [--intents BITS] [--compress none|zlib-stream]
//!                                               [--redis URL]
//! ```
//! With `--redis` (built with feature `redis`) it joins a fleet of processes running the bot
//! through that Redis (balanced placement) and prints the dispatches of the shards it is given.
//! Without `--gateway-url` and `--shards`, both come from `GET /gateway/bot`. On a fatal close code it
//! exits with status 2 and a message naming the code and its meaning. The token never appears in its
//! output.

use std::io::Write;
use std::process::ExitCode;

use actix::prelude::*;
use shardline::{Compression, Config, Dispatch, Gateway, ShardEvent, ShardPlan};

struct Printer {
    out: std::io::LineWriter<std::io::Stdout>,
}

impl Actor for Printer {
    type Context = Context<Self>;
}

impl Handler<Dispatch> for Printer {
    type Result = ();

    fn handle(&mut self, d: Dispatch, _: &mut Context<Self>) {
        // `t` is a JSON string; `d` goes out byte for byte as the gateway sent it.
        let line = format!(
            "{{\"shard\":{},\"seq\":{},\"t\":{},\"d\":",
            d.shard(),
            d.seq(),
            serde_json::Value::from(d.event())
        );
        let written = self
            .out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.write_all(d.data()))
            .and_then(|()| self.out.write_all(b"}\n"));
        if written.is_err() {
            // stdout closed (e.g. piped into `head`): stop quietly.
            System::current().stop_with_code(0);
        }
    }
}

struct Watcher;

impl Actor for Watcher {
    type Context = Context<Self>;
}

impl Handler<ShardEvent> for Watcher {
    type Result = ();

    fn handle(&mut self, event: ShardEvent, _: &mut Context<Self>) {
        match event {
            ShardEvent::Fatal { shard, error } => {
                eprintln!("tail: shard {shard} stopped: {error}");
                System::current().stop_with_code(2);
            }
            other => tracing::info!(?other, "shard event"),
        }
    }
}

struct Args {
    api_base: Option<String>,
    gateway_url: Option<String>,
    shards: Option<u32>,
    intents: u64,
    compress: Compression,
    redis: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        api_base: None,
        gateway_url: None,
        shards: None,
        // GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES
        intents: 1 | 1 << 9 | 1 << 12,
        compress: Compression::ZlibStream,
        redis: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--api-base" => args.api_base = Some(value()?),
            "--gateway-url" => args.gateway_url = Some(value()?),
            "--shards" => args.shards = Some(value()?.parse().map_err(|e| format!("--shards: {e}"))?),
            "--intents" => args.intents = value()?.parse().map_err(|e| format!("--intents: {e}"))?,
            "--compress" => {
                args.compress = match value()?.as_str() {
                    "none" => Compression::None,
                    "zlib-stream" => Compression::ZlibStream,
                    other => return Err(format!("--compress: unknown value {other:?}")),
                }
            }
            "--redis" => args.redis = Some(value()?),
            "-h" | "--help" => {
                return Err("usage: tail [--api-base URL] [--gateway-url URL] [--shards N] [--intents BITS] [--compress none|zlib-stream] [--redis URL]".into())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("tail: {e}");
            return ExitCode::from(64);
        }
    };
    let Ok(token) = std::env::var("DISCORD_TOKEN") else {
        eprintln!("tail: set DISCORD_TOKEN");
        return ExitCode::from(64);
    };

    let system = System::new();
    let started = system.block_on(async move {
        let mut builder = Config::builder(token)
            .intent_bits(args.intents)
            .compression(args.compress)
            .handler_all(
                Printer {
                    out: std::io::LineWriter::new(std::io::stdout()),
                }
                .start()
                .recipient(),
            )
            .events(Watcher.start().recipient())
            .shards(args.shards.map_or(ShardPlan::Recommended, ShardPlan::Count));
        if let Some(url) = args.api_base {
            builder = builder.api_base(url);
        }
        if let Some(url) = args.gateway_url {
            builder = builder.gateway_url(url);
        }
        let config = builder.build()?;
        let gateway = match args.redis {
            #[cfg(feature = "redis")]
            Some(url) => {
                Gateway::start_fleet(config, shardline::fleet::FleetOptions::new(url), Vec::new())
                    .await?
            }
            #[cfg(not(feature = "redis"))]
            Some(_) => return Err("--redis needs the example built with --features redis".into()),
            None => Gateway::start(config).await?,
        };
        actix_rt::spawn(async move {
            let _ = actix_rt::signal::ctrl_c().await;
            // In a fleet, leave resumably: the other processes take the shards over.
            gateway.shutdown(gateway.fleet_member()).await;
            System::current().stop();
        });
        Ok::<_, Box<dyn std::error::Error>>(())
    });
    if let Err(e) = started {
        eprintln!("tail: {e}");
        return ExitCode::from(1);
    }
    match system.run_with_code() {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("tail: {e}");
            ExitCode::from(1)
        }
    }
}
