//! The fake gateway as a standalone server, so that any client — shardline or another library — can
//! be pointed at it.
//!
//! ```text
//! cargo run --example fake_gateway --features testkit -- [--port 7878] [--shards 1]
//!     [--max-concurrency 1] [--heartbeat-interval-ms 41250] [--identify-window-ms 5000]
//!     [--rest-rate-limit 5/5000] [--token fake-token] [--compress-only]
//!     [--bot-name fake-bot] [--bot-id 1000] [--guilds 0] [--max-guilds-per-shard N]
//!     [--flood-event MESSAGE_CREATE --flood-count N [--flood-file d.json]]
//! ```
//! REST at `http://127.0.0.1:PORT/api/v10`, gateway at `ws://127.0.0.1:PORT`, and the control API
//! at `http://127.0.0.1:PORT/_fake` (see below). `--port 0` takes any free port; the first line on
//! stdout is a JSON object with the `api_base`, `gateway` and `control` URLs.
//! `--compress-only` refuses connections that do not ask for transport compression (close 4002),
//! so a client that silently falls back to plain text is caught. `--rest-rate-limit N/MS` sets
//! the requests per REST bucket (route and channel) per window. In flood mode, every shard gets
//! `--flood-count` dispatches of `--flood-event` (with `d` from `--flood-file`, which may hold a
//! whole frame or just its `d`; by default a whole Message object) as soon as it is READY.
//! `--bot-name NAME` and `--bot-id ID` set the bot user (READY, `GET /users/@me`,
//! `GET /oauth2/applications/@me`). `--guilds N` gives the bot N guilds, each sent to the shard
//! `(id >> 22) % total` of whatever total a connection identifies with; `--max-guilds-per-shard N`
//! closes a shard past N guilds with 4011 (docs/fake-gateway.md). Logs go to stderr (`RUST_LOG=debug` for
//! more): every connection, handshake, op 9 and close, with the reason. Runs until Ctrl-C.
//!
//! The control API scripts faults per shard and reads back what clients sent, from any language:
//!
//! ```text
//! curl -X POST 'http://127.0.0.1:7878/_fake/shards/0/reconnect'              # op 7
//! curl -X POST 'http://127.0.0.1:7878/_fake/shards/0/reconnect' -H 'content-type: application/json' \
//!      -d '{"t":"TYPING_START","d":{"channel_id":"2","user_id":"3","timestamp":1700000000},"count":5}'
//!      # op 7, then these 5 only in the resume's replay (docs/fake-gateway.md)
//! curl -X POST 'http://127.0.0.1:7878/_fake/shards/0/invalid-session?resumable=true'  # op 9
//! curl -X POST 'http://127.0.0.1:7878/_fake/shards/0/request-heartbeat'      # op 1
//! curl -X POST 'http://127.0.0.1:7878/_fake/shards/0/close?code=4000'        # close code
//! curl -X POST 'http://127.0.0.1:7878/_fake/shards/0/drop'                   # no close frame
//! curl -X POST 'http://127.0.0.1:7878/_fake/shards/0/acks?enabled=false'     # stop ACKs
//! curl -X POST 'http://127.0.0.1:7878/_fake/drop-all'
//! curl -X POST 'http://127.0.0.1:7878/_fake/recommended-shards' -H 'content-type: application/json' -d '{"shards":6}'
//! curl -X POST 'http://127.0.0.1:7878/_fake/guilds' -H 'content-type: application/json' -d '{"count":1}'
//! curl 'http://127.0.0.1:7878/_fake/guilds'           # the bot's guilds
//! curl -X POST 'http://127.0.0.1:7878/_fake/shards/0/dispatch?strict=true' \
//!      -H 'content-type: application/json' -d '{"t":"MESSAGE_CREATE","count":1000,"d":{
//!   "id":"1200000000000000001","channel_id":"1100000000000000002","content":"hi","type":0,
//!   "author":{"id":"1100000000000000003","username":"someone","discriminator":"0","global_name":null,"avatar":null},
//!   "timestamp":"2024-01-01T00:00:00.000+00:00","edited_timestamp":null,"tts":false,"mention_everyone":false,
//!   "mentions":[],"mention_roles":[],"attachments":[],"embeds":[],"pinned":false}}'
//! curl 'http://127.0.0.1:7878/_fake/frames?shard=0'   # every frame the client sent
//! curl 'http://127.0.0.1:7878/_fake/connections'      # paths, queries, close codes, outcomes
//! curl 'http://127.0.0.1:7878/_fake/shards'           # ready shards and sessions
//! curl 'http://127.0.0.1:7878/_fake/rest'             # REST calls (unknown routes too), statuses answered
//! ```

use std::collections::HashSet;
use std::time::Duration;

use shardline::testkit::{FakeConfig, FakeGateway};

struct Args {
    port: u16,
    config: FakeConfig,
    flood: Option<(String, usize, String)>,
}

fn parse_args() -> Result<Args, String> {
    let mut port = 7878;
    let mut config = FakeConfig::default();
    let (mut event, mut count, mut file) = (None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--port" => port = number(value()?)? as u16,
            "--shards" => config.shards = number(value()?)? as u32,
            "--max-concurrency" => config.max_concurrency = number(value()?)? as u32,
            "--heartbeat-interval-ms" => {
                config.heartbeat_interval = Duration::from_millis(number(value()?)?)
            }
            "--identify-window-ms" => {
                config.identify_window = Duration::from_millis(number(value()?)?)
            }
            "--rest-rate-limit" => {
                let v = value()?;
                let (n, ms) = v
                    .split_once('/')
                    .ok_or(format!("{flag}: expected N/MS, e.g. 5/5000"))?;
                config.rest_rate_limit = (
                    number(n.to_owned())? as u32,
                    Duration::from_millis(number(ms.to_owned())?),
                );
            }
            "--compress-only" => config.require_compression = true,
            "--token" => config.token = value()?,
            "--bot-name" => config.bot_user.username = value()?,
            "--bot-id" => config.bot_user.id = number(value()?)?,
            "--guilds" => config.guilds = number(value()?)? as u32,
            "--max-guilds-per-shard" => {
                config.max_guilds_per_shard = Some(number(value()?)? as u32)
            }
            "--flood-event" => event = Some(value()?),
            "--flood-count" => count = Some(number(value()?)? as usize),
            "--flood-file" => file = Some(value()?),
            "-h" | "--help" => {
                return Err("see the header of examples/fake_gateway.rs for the options".into())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let flood = match (event, count) {
        (Some(event), Some(count)) => {
            let d = match file {
                Some(path) => {
                    let text =
                        std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
                    let value: serde_json::Value =
                        serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
                    // A whole frame's `d`, or the file itself.
                    value.get("d").cloned().unwrap_or(value).to_string()
                }
                // A whole Message, as typed clients (discord.py, twilight-model) require.
                None => shardline::testkit::message(
                    1_200_000_000_000_000_001,
                    1_100_000_000_000_000_002,
                    "flood",
                )
                .to_string(),
            };
            Some((event, count, d))
        }
        (None, None) => None,
        _ => return Err("--flood-event and --flood-count go together".into()),
    };
    Ok(Args {
        port,
        config,
        flood,
    })
}

#[actix_rt::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Plain text when the log goes to a file or a pipe, so it can be searched.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("fake_gateway: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    let fake = match FakeGateway::start_on(args.config.clone(), args.port).await {
        Ok(fake) => fake,
        Err(e) => {
            eprintln!(
                "fake_gateway: cannot listen on 127.0.0.1:{}: {e}",
                args.port
            );
            return std::process::ExitCode::from(1);
        }
    };
    tracing::info!(api_base = %fake.api_base(), gateway = %fake.gateway_url(), shards = args.config.shards, "fake gateway listening");
    // On stdout, for a script or test that started this with `--port 0`.
    println!(
        "{}",
        serde_json::json!({
            "api_base": fake.api_base(),
            "gateway": fake.gateway_url(),
            "control": format!("http://127.0.0.1:{}/_fake", fake.port()),
        })
    );
    if let Some((event, count, d)) = args.flood {
        let fake = fake.clone();
        actix_rt::spawn(async move {
            let mut flooded = HashSet::new();
            loop {
                for shard in fake.ready_shards() {
                    if flooded.insert(shard) {
                        let seqs = fake.flood(shard, &event, &d, count);
                        tracing::info!(shard, count, ?seqs, event = %event, "flood sent");
                    }
                }
                actix_rt::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
    let _ = actix_rt::signal::ctrl_c().await;
    fake.stop().await;
    std::process::ExitCode::SUCCESS
}
