use serde_json::json;
use shardline::protocol::command::{
    RequestGuildMembers, RequestSoundboardSounds, VoiceStateUpdate,
};
use shardline::{Command, CommandError, PresenceUpdate, Status};

use crate::harness::*;

#[actix_rt::test]
async fn commands_reach_the_gateway_exactly_as_documented() {
    let bot = Bot::start(fast_fake(2, 2), 2, |c| c).await;
    let g = &bot.gateway;
    g.send(
        1,
        Command::VoiceStateUpdate(VoiceStateUpdate {
            guild_id: "5".into(),
            channel_id: None,
            self_mute: true,
            self_deaf: false,
        }),
    )
    .await
    .unwrap();
    g.send(
        1,
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
    g.send(
        0,
        Command::RequestSoundboardSounds(RequestSoundboardSounds {
            guild_ids: vec!["5".into(), "6".into()],
        }),
    )
    .await
    .unwrap();
    let all = g
        .send_all(Command::PresenceUpdate(PresenceUpdate::new(Status::Idle)))
        .await;
    assert_eq!(all, [(0, Ok(())), (1, Ok(()))]);

    assert!(
        bot.fake
            .wait_for(WAIT, "commands", |f| sent(f, 0, 3).len() == 1
                && sent(f, 1, 3).len() == 1
                && sent(f, 1, 8).len() == 1)
            .await
    );
    assert_eq!(
        sent(&bot.fake, 1, 4)[0].json,
        json!({"op": 4, "d": {"guild_id": "5", "channel_id": null, "self_mute": true, "self_deaf": false}})
    );
    assert_eq!(
        sent(&bot.fake, 1, 8)[0].json,
        json!({"op": 8, "d": {"guild_id": "5", "query": "", "limit": 0, "nonce": "n1"}})
    );
    assert_eq!(
        sent(&bot.fake, 0, 31)[0].json,
        json!({"op": 31, "d": {"guild_ids": ["5", "6"]}})
    );
    for shard in 0..2 {
        assert_eq!(
            sent(&bot.fake, shard, 3)[0].json,
            json!({"op": 3, "d": {"since": null, "activities": [], "status": "idle", "afk": false}})
        );
    }
    // The gateway answers op 8 with a chunk carrying the nonce.
    bot.until("chunk", |r| r.count("GUILD_MEMBERS_CHUNK") == 1)
        .await;
    let chunk = bot
        .recorder
        .events()
        .into_iter()
        .find(|e| e.event == "GUILD_MEMBERS_CHUNK")
        .unwrap();
    assert_eq!(chunk.shard, 1);
    assert!(chunk.data.contains(r#""nonce":"n1""#));

    let huge = Command::RequestGuildMembers(RequestGuildMembers {
        guild_id: "5".into(),
        user_ids: Some(vec!["123456789012345678".into(); 300]),
        ..Default::default()
    });
    assert!(matches!(g.send(0, huge).await, Err(CommandError::TooLarge(n)) if n > 4096));
    assert_eq!(
        g.send(
            7,
            Command::PresenceUpdate(PresenceUpdate::new(Status::Online))
        )
        .await,
        Err(CommandError::UnknownShard(7))
    );
    assert_eq!(
        sent_any(&bot.fake, 8).len(),
        1,
        "the oversized command was never sent"
    );
    bot.stop().await;
}

/// A command of about 3.8 KB (just under the 4096-byte frame limit) whose first guild id is `i`.
fn big_command(i: u64) -> Command {
    Command::RequestSoundboardSounds(RequestSoundboardSounds {
        guild_ids: vec![i.to_string(), "9".repeat(3750)],
    })
}

/// A TCP proxy to `target` on loopback whose client-to-target direction can be held: while the
/// gate is shut nothing is read from the client, so what it writes waits in its socket's buffers
/// and, once they are full, its writes block; opened again, everything the client's socket took is
/// passed on, whole frames only. When the client's side ends, a frame it cut short is dropped and
/// the proxy adds a close frame of its own (code 4999), leaving the closing to the gateway: a
/// server that sees the end of its input at once may not read all that came before it.
async fn gated_proxy(target: u16) -> (u16, tokio::sync::watch::Sender<bool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = actix_rt::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (gate, open) = tokio::sync::watch::channel(true);
    actix_rt::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = actix_rt::net::TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            actix_rt::spawn(async move {
                let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
            });
            let mut open = open.clone();
            actix_rt::spawn(async move {
                let mut buf = vec![0; 64 << 10];
                let mut pending = Vec::new();
                let mut upgraded = false;
                loop {
                    if open.wait_for(|&open| open).await.is_err() {
                        return;
                    }
                    match from_client.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                    // The upgrade request first, as it is; websocket frames after it.
                    let mut whole = 0;
                    if !upgraded {
                        let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        whole = end + 4;
                        upgraded = true;
                    }
                    while let Some(len) = client_frame_len(&pending[whole..]) {
                        whole += len;
                    }
                    if to_server.write_all(&pending[..whole]).await.is_err() {
                        return;
                    }
                    pending.drain(..whole);
                }
                // A masked close frame (mask key 0), code 4999.
                let _ = to_server
                    .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x13, 0x87])
                    .await;
                // Held open until the gateway closes its side.
                let _ = to_server.flush().await;
                std::future::pending::<()>().await;
            });
        }
    });
    (port, gate)
}

/// The length of the masked (client) websocket frame at the start of `b`, if all of it is there.
fn client_frame_len(b: &[u8]) -> Option<usize> {
    let (ext, len) = match *b.get(1)? & 0x7F {
        126 => (2, usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]))),
        127 => (
            8,
            usize::try_from(u64::from_be_bytes(b.get(2..10)?.try_into().ok()?)).ok()?,
        ),
        n => (0, usize::from(n)),
    };
    let total = 2 + ext + 4 + len;
    (b.len() >= total).then_some(total)
}

#[actix_rt::test]
async fn commands_stuck_in_a_zombie_socket_go_out_on_the_next_connection_once() {
    use std::time::{Duration, Instant};
    let fake_config = shardline::testkit::FakeConfig {
        heartbeat_interval: Duration::from_secs(2),
        // The shard, not the fake, must end the connection (as a zombie, with 4000).
        heartbeat_timeout: Duration::from_secs(60),
        // No command limit worth the name on either side: the commands must fill the socket.
        command_limit: (1_000_000, Duration::from_secs(1)),
        ..fast_fake(1, 1)
    };
    let fake = shardline::testkit::FakeGateway::start(fake_config.clone())
        .await
        .unwrap();
    let (proxy, gate) = gated_proxy(fake.port()).await;
    let bot = Bot::start_with(fake, fake_config, 1, |c| {
        // The first connection goes through the proxy; the resume goes straight to the fake's
        // resume URL.
        c.gateway_url(format!("ws://127.0.0.1:{proxy}"))
            .command_limit(1_000_000, Duration::from_secs(1))
            .limits(shardline::Limits::default().command_queue(4000))
            // A reconnect long after the old socket is gone (its close grace is 1 s), so the
            // gateway has read out what that socket held before the session moves on.
            .backoff(
                shardline::Backoff::default()
                    .initial(Duration::from_secs(3))
                    .randomization(0.0),
            )
    })
    .await;
    let old = bot.fake.connections()[0].id;
    // The gateway's side stops reading: the commands fill the socket, the shard's writer blocks
    // with commands in hand, no heartbeat gets through, and the shard takes the connection for a
    // zombie and closes it with 4000.
    gate.send_replace(false);
    let count = 2500u64;
    for i in 0..count {
        bot.gateway.send(0, big_command(i)).await.unwrap();
    }
    status_until(&bot.gateway, "the zombie connection left", |s| {
        s[0].phase != shardline::Phase::Ready
    })
    .await;
    // Past the close grace the shard has dropped the socket; everything it took reaches the
    // gateway now.
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    // (The fake must not answer the heartbeats it finds there: writing to a connection whose
    // client is gone would end its reading early.)
    bot.fake.set_ack_heartbeats(0, false);
    gate.send_replace(true);
    assert!(
        bot.fake
            .wait_for(WAIT, "the old connection read to its end", |f| f
                .connections()[0]
                .closed_at
                .is_some())
            .await
    );
    assert_eq!(
        bot.fake.connections().len(),
        1,
        "the old socket was read out before the shard reconnected"
    );
    bot.fake.set_ack_heartbeats(0, true);
    assert!(
        bot.fake
            .wait_for(WAIT, "resumed", |f| f.connections().len() == 2
                && f.ready_shards() == [0])
            .await
    );
    let new = bot.fake.connections()[1].id;
    let on = |conn: u64| -> Vec<u64> {
        sent_any(&bot.fake, 31)
            .into_iter()
            .filter(|f| f.connection == conn)
            .map(|f| {
                f.json["d"]["guild_ids"][0]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    };
    // Megabytes of recorded frames, copied out at each look (under the lock the fake records
    // with): looked at once a second rather than every 5 ms.
    let deadline = Instant::now() + 4 * WAIT;
    while on(new).last() != Some(&(count - 1)) {
        assert!(
            Instant::now() < deadline,
            "timed out: the last command never reached the new connection ({} there, last {:?}): {:?}",
            on(new).len(),
            on(new).last(),
            bot.fake.connections(),
        );
        actix_rt::time::sleep(Duration::from_secs(1)).await;
    }
    let (first, second) = (on(old), on(new));
    assert!(
        !second.is_empty() && second.len() < count as usize,
        "the old socket blocked: {} + {}",
        first.len(),
        second.len()
    );
    let all: Vec<u64> = first.iter().chain(&second).copied().collect();
    assert_eq!(
        all,
        (0..count).collect::<Vec<_>>(),
        "each command once, in order: {} on the old connection, then {} from {:?} on the new",
        first.len(),
        second.len(),
        second.first(),
    );
    bot.stop().await;
}
