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
