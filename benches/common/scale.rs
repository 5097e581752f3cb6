//! The scale bench's fake gateway and shardline client roles (shared with the peer comparison).

use std::time::{Duration, Instant};

use shardline::testkit::{FakeConfig, FakeGateway, SessionStartLimit};
use shardline::{Compression, Config, Gateway, ShardPlan};

/// The fake gateway process: `--serve <port> <shards>`.
pub fn serve(args: &[String]) {
    let port: u16 = args[0].parse().expect("port");
    let shards: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    actix_rt::System::new().block_on(async move {
        let config = FakeConfig {
            shards,
            // Identify pacing relaxed: every shard its own bucket, a short window.
            max_concurrency: shards,
            identify_window: Duration::from_millis(5),
            command_limit: (120, Duration::from_secs(60)),
            guilds_per_shard: 2,
            replay_capacity: 1_000,
            // A session-start budget that covers every shard (Discord raises it for large bots).
            session_start_limit: SessionStartLimit {
                total: shards.max(1000) * 2,
                remaining: shards.max(1000) * 2,
                reset_after: 86_400_000,
            },
            ..FakeConfig::default()
        };
        let _fake = FakeGateway::start_on(config, port).await.expect("listens");
        std::future::pending::<()>().await;
    });
}

/// One measured configuration: `--client <shards> <compression> <idle secs> <gateway url>`.
pub fn client(args: &[String]) {
    let n: u32 = args[0].parse().expect("shard count");
    let compression = match args[1].as_str() {
        "none" => Compression::None,
        "zlib-stream" => Compression::ZlibStream,
        #[cfg(feature = "zstd")]
        "zstd-stream" => Compression::ZstdStream,
        other => panic!("unknown compression {other}"),
    };
    let idle = Duration::from_secs(args[2].parse().expect("idle seconds"));
    let url = args[3].clone();
    actix_rt::System::new().block_on(async move {
        let rss0 = super::rss_bytes();
        let config = Config::builder("fake-token")
            .shards(ShardPlan::Count(n))
            .gateway_url(url)
            .max_concurrency(n)
            .identify_window(Duration::from_millis(5))
            .compression(compression)
            .build()
            .expect("config");
        let started = Instant::now();
        let gateway = Gateway::start(config).await.expect("starts");
        loop {
            let p = gateway.progress().await.expect("progress");
            if p.ready == p.total {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "not all ready: {p:?}"
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        let ready = started.elapsed();
        // Let the GUILD_CREATEs arrive and the buffers settle.
        actix_rt::time::sleep(Duration::from_secs(3)).await;
        let rss1 = super::rss_bytes();
        let cpu0 = super::cpu_time();
        let t0 = Instant::now();
        actix_rt::time::sleep(idle).await;
        let cpu = super::cpu_time() - cpu0;
        let idle_cpu = cpu.as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
        let status = gateway.status().await;
        let reconnects: u32 = status.iter().map(|s| s.reconnects).sum();
        let result = serde_json::json!({
            "bench": "scale",
            "library": "shardline",
            "shards": n,
            "compression": args[1],
            "kib_per_shard": (rss1.saturating_sub(rss0)) as f64 / 1024.0 / n as f64,
            "ready_secs": ready.as_secs_f64(),
            "idle_cpu_percent": idle_cpu,
            "idle_secs": idle.as_secs(),
            "reconnects": reconnects,
        });
        println!("{result}");
        std::process::exit(0);
    });
}
