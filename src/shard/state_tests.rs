//! Every rule of the state machine, without sockets or clocks.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;
use crate::protocol::Envelope;

const TOKEN: &str = "secret-token";
const GATEWAY: &str = "wss://gateway.discord.gg";

fn params() -> Arc<IdentifyParams> {
    Arc::new(IdentifyParams {
        token: Token::new(TOKEN),
        intents: 513,
        properties: IdentifyProperties {
            os: "linux".into(),
            browser: "shardline".into(),
            device: "shardline".into(),
        },
        large_threshold: 50,
        presence: None,
        gateway_url: GATEWAY.into(),
        allowed_resume_domains: vec!["discord.gg".into()],
    })
}

struct Shard {
    state: ShardState,
    t0: Instant,
}

impl Shard {
    fn new(session: Option<SessionInfo>) -> Self {
        let mut state = ShardState::new(1, 4, params(), session);
        state.on_open();
        Self {
            state,
            t0: Instant::now(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn frame(&mut self, json: &str, ms: u64) -> Vec<Action> {
        let frame = Bytes::from(json.to_owned());
        let env = Envelope::parse(&frame).expect("an envelope");
        let now = self.at(ms);
        self.state.on_frame(&frame, &env, || now, 0.25);
        self.drain()
    }

    fn drain(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.state.poll_action()).collect()
    }

    /// Hello, permit, READY (s = 1) with a session id: a shard in `Ready`.
    fn ready(&mut self) -> Vec<Action> {
        self.frame(
            r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#,
            0,
        );
        assert!(self.state.on_identify_permit());
        self.drain();
        self.frame(
            r#"{"t":"READY","s":1,"op":0,"d":{"session_id":"abc","resume_gateway_url":"wss://gateway-us-east1-b.discord.gg","v":10}}"#,
            10,
        )
    }

    fn dispatch(&mut self, seq: u64, event: &str) -> Vec<Action> {
        self.frame(
            &format!(r#"{{"t":"{event}","s":{seq},"op":0,"d":{{"n":{seq}}}}}"#),
            20,
        )
    }
}

fn sent(actions: &[Action]) -> Vec<Value> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(text, _) => Some(serde_json::from_str(text).unwrap()),
            _ => None,
        })
        .collect()
}

fn delivered(actions: &[Action]) -> Vec<(u64, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver(d) => Some((d.seq(), d.event().to_owned())),
            _ => None,
        })
        .collect()
}

fn reconnects(actions: &[Action]) -> Vec<Option<u16>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reconnect { close_code, .. } => Some(*close_code),
            _ => None,
        })
        .collect()
}

#[test]
fn hello_starts_a_jittered_heartbeat_then_asks_for_an_identify_permit() {
    let mut s = Shard::new(None);
    let actions = s.frame(
        r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#,
        0,
    );
    assert!(matches!(
        actions.as_slice(),
        [Action::StartHeartbeat { first, interval }, Action::RequestIdentify]
            if *first == Duration::from_micros(10_312_500) && *interval == Duration::from_millis(41_250)
    ));
    assert_eq!(s.state.phase(), Phase::AwaitingIdentify);
    assert!(s.state.on_identify_permit());
    let identify = sent(&s.drain());
    assert_eq!(
        identify,
        [
            json!({"op": 2, "d": {"token": TOKEN, "properties": {"os": "linux", "browser": "shardline", "device": "shardline"},
            "compress": false, "large_threshold": 50, "shard": [1, 4], "intents": 513}})
        ]
    );
    assert_eq!(s.state.phase(), Phase::Identifying);
    assert!(
        !s.state.on_identify_permit(),
        "a permit outside AwaitingIdentify is not used"
    );
    assert!(s.drain().is_empty());
}

#[test]
fn ready_stores_the_session_and_the_resume_url() {
    let mut s = Shard::new(None);
    let actions = s.ready();
    let session = SessionInfo {
        session_id: "abc".into(),
        seq: 1,
        resume_url: Some("wss://gateway-us-east1-b.discord.gg".into()),
    };
    assert!(matches!(&actions[0], Action::StoreSession(Some(stored)) if *stored == session));
    assert!(matches!(actions[1], Action::Ready { resumed: false }));
    assert_eq!(delivered(&actions), [(1, "READY".to_owned())]);
    assert_eq!(s.state.phase(), Phase::Ready);
    assert_eq!(
        s.state.connect_base(),
        "wss://gateway-us-east1-b.discord.gg"
    );
}

#[test]
fn a_resume_url_off_the_allowed_hosts_is_not_kept() {
    for hostile in [
        "wss://evil.example",
        "ws://gateway-us-east1-b.discord.gg",
        "wss://discord.gg.evil.example",
    ] {
        let mut s = Shard::new(None);
        s.frame(
            r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#,
            0,
        );
        s.state.on_identify_permit();
        s.drain();
        s.frame(&format!(r#"{{"t":"READY","s":1,"op":0,"d":{{"session_id":"abc","resume_gateway_url":"{hostile}"}}}}"#), 1);
        assert_eq!(s.state.connect_base(), GATEWAY, "{hostile}");
        assert_eq!(s.state.session().unwrap().resume_url, None);
    }
}

#[test]
fn heartbeats_carry_the_last_sequence_and_acks_give_latency() {
    let mut s = Shard::new(None);
    s.frame(
        r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#,
        0,
    );
    s.state.on_heartbeat_due(s.at(100));
    assert_eq!(sent(&s.drain()), [json!({"op": 1, "d": null})]);
    s.frame(r#"{"op":11}"#, 130);
    assert_eq!(s.state.latency(), Some(Duration::from_millis(30)));
    s.state.on_identify_permit();
    s.drain();
    s.frame(
        r#"{"t":"READY","s":1,"op":0,"d":{"session_id":"abc"}}"#,
        140,
    );
    s.dispatch(2, "MESSAGE_CREATE");
    s.state.on_heartbeat_due(s.at(41_350));
    assert_eq!(sent(&s.drain()), [json!({"op": 1, "d": 2})]);
}

#[test]
fn a_server_heartbeat_request_is_answered_at_once() {
    let mut s = Shard::new(None);
    s.ready();
    s.dispatch(2, "TYPING_START");
    let actions = s.frame(r#"{"t":null,"s":null,"op":1,"d":null}"#, 30);
    assert_eq!(sent(&actions), [json!({"op": 1, "d": 2})]);
    assert!(matches!(actions[0], Action::Send(_, SendKind::Heartbeat)));
}

#[test]
fn no_ack_between_two_heartbeats_is_a_zombie_and_resumes() {
    let mut s = Shard::new(None);
    s.ready();
    s.dispatch(2, "MESSAGE_CREATE");
    s.state.on_heartbeat_due(s.at(1_000));
    s.drain();
    s.state.on_heartbeat_due(s.at(42_250));
    let actions = s.drain();
    assert_eq!(reconnects(&actions), [Some(RESUME_CLOSE_CODE)]);
    assert!(sent(&actions).is_empty(), "no heartbeat on a zombie");
    assert_eq!(s.state.phase(), Phase::Disconnected);
    // The next connection resumes with the last seq.
    s.state.on_open();
    let actions = s.frame(
        r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#,
        43_000,
    );
    assert_eq!(
        sent(&actions),
        [json!({"op": 6, "d": {"token": TOKEN, "session_id": "abc", "seq": 2}})]
    );
    assert_eq!(s.state.phase(), Phase::Resuming);
}

#[test]
fn reading_paused_defers_the_zombie_check() {
    let mut s = Shard::new(None);
    s.ready();
    s.state.set_reading_paused(true);
    s.state.on_heartbeat_due(s.at(1_000));
    s.state.on_heartbeat_due(s.at(42_250));
    let actions = s.drain();
    assert!(reconnects(&actions).is_empty());
    assert_eq!(
        sent(&actions).len(),
        2,
        "heartbeats go on while reading is paused"
    );
}

#[test]
fn events_are_delivered_once_in_order_and_repeats_are_skipped() {
    let mut s = Shard::new(None);
    s.ready();
    let mut got = Vec::new();
    for seq in [2, 3, 3, 2, 4, 1, 5] {
        got.extend(delivered(&s.dispatch(seq, "MESSAGE_CREATE")));
    }
    assert_eq!(got.iter().map(|d| d.0).collect::<Vec<_>>(), [2, 3, 4, 5]);
    assert_eq!(
        delivered(&s.dispatch(6, "NEVER_HEARD_OF_IT")),
        [(6, "NEVER_HEARD_OF_IT".to_owned())]
    );
    let ignored = s.frame(r#"{"t":"X","s":null,"op":0,"d":{}}"#, 1);
    assert!(ignored.is_empty(), "a dispatch without s is ignored");
    assert!(
        s.frame(r#"{"t":null,"s":null,"op":99,"d":{}}"#, 1)
            .is_empty(),
        "unknown opcode"
    );
    assert!(
        s.frame(r#"{"t":null,"s":null,"op":2,"d":{}}"#, 1)
            .is_empty(),
        "send-only opcode"
    );
    assert_eq!(s.state.seq(), Some(6));
}

#[test]
fn exactly_once_across_a_resume() {
    let mut s = Shard::new(None);
    s.ready();
    for seq in 2..=5 {
        s.dispatch(seq, "MESSAGE_CREATE");
    }
    s.frame(r#"{"t":null,"s":null,"op":7,"d":null}"#, 30);
    s.state.on_open();
    s.frame(
        r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#,
        40,
    );
    let mut got = Vec::new();
    for seq in [4, 5, 6, 7] {
        got.extend(delivered(&s.dispatch(seq, "MESSAGE_CREATE")));
    }
    let actions = s.frame(r#"{"t":"RESUMED","s":8,"op":0,"d":{}}"#, 50);
    assert_eq!(got.iter().map(|d| d.0).collect::<Vec<_>>(), [6, 7]);
    // RESUMED changes nothing the store holds: its sequence moves only as events are handed over,
    // so the replayed 6 and 7 (possibly still queued for handlers) are not skipped by a restart.
    assert!(!actions.iter().any(|a| matches!(a, Action::StoreSession(_))));
    assert!(matches!(actions[0], Action::Ready { resumed: true }));
    assert_eq!(delivered(&actions), [(8, "RESUMED".to_owned())]);
}

#[test]
fn op_7_and_op_9_true_resume_op_9_false_starts_over() {
    let mut s = Shard::new(None);
    s.ready();
    s.dispatch(2, "MESSAGE_CREATE");
    assert_eq!(
        reconnects(&s.frame(r#"{"t":null,"s":null,"op":7,"d":null}"#, 1)),
        [Some(4000)]
    );
    assert!(s.state.will_resume());
    s.state.on_open();
    assert_eq!(
        reconnects(&s.frame(r#"{"t":null,"s":null,"op":9,"d":true}"#, 2)),
        [Some(4000)]
    );
    assert!(s.state.will_resume());
    assert_eq!(
        s.state.connect_base(),
        "wss://gateway-us-east1-b.discord.gg"
    );

    s.state.on_open();
    let actions = s.frame(r#"{"t":null,"s":null,"op":9,"d":false}"#, 3);
    assert!(matches!(actions[0], Action::StoreSession(None)));
    assert_eq!(reconnects(&actions), [Some(4000)]);
    assert!(!s.state.will_resume());
    assert_eq!(s.state.connect_base(), GATEWAY);
    s.state.on_open();
    let actions = s.frame(
        r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#,
        4,
    );
    assert!(matches!(actions.last(), Some(Action::RequestIdentify)));
    s.state.on_heartbeat_due(s.at(5));
    assert_eq!(
        sent(&s.drain()),
        [json!({"op": 1, "d": null})],
        "the old seq is gone"
    );
}

#[test]
fn every_close_code_gets_its_reaction() {
    for code in [4000, 4001, 4002, 4005, 4008, 1006, 4999] {
        let mut s = Shard::new(None);
        s.ready();
        s.state.on_close(Some(code));
        let actions = s.drain();
        assert_eq!(reconnects(&actions), [None], "{code}");
        assert!(s.state.will_resume(), "{code} resumes");
    }
    for code in [4003, 4007, 4009] {
        let mut s = Shard::new(None);
        s.ready();
        s.state.on_close(Some(code));
        let actions = s.drain();
        assert!(matches!(actions[0], Action::StoreSession(None)), "{code}");
        assert_eq!(reconnects(&actions), [None]);
        assert!(!s.state.will_resume(), "{code} starts a new session");
    }
    for code in [4004, 4010, 4011, 4012, 4013, 4014] {
        let mut s = Shard::new(None);
        s.ready();
        s.state.on_close(Some(code));
        let actions = s.drain();
        let expected = FatalError::Closed(CloseCode::from_u16(code).unwrap());
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Fatal(e) if *e == expected)),
            "{code}"
        );
        assert!(reconnects(&actions).is_empty(), "{code} never reconnects");
        assert_eq!(s.state.phase(), Phase::Stopped);
        assert!(
            s.frame(r#"{"t":"X","s":9,"op":0,"d":{}}"#, 1).is_empty(),
            "nothing after a fatal close"
        );
    }
    let mut s = Shard::new(None);
    s.ready();
    s.state.on_close(None);
    assert_eq!(reconnects(&s.drain()), [None], "a drop resumes");
    s.state.on_close(Some(4000));
    assert!(
        s.drain().is_empty(),
        "a close after the connection is gone does nothing"
    );
}

#[test]
fn a_stored_session_resumes_instead_of_identifying() {
    let mut s = Shard::new(Some(SessionInfo {
        session_id: "stored".into(),
        seq: 77,
        resume_url: None,
    }));
    let actions = s.frame(
        r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#,
        0,
    );
    assert_eq!(
        sent(&actions),
        [json!({"op": 6, "d": {"token": TOKEN, "session_id": "stored", "seq": 77}})]
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::RequestIdentify)));
}

#[test]
fn shutdown_keeps_or_ends_the_session() {
    let mut s = Shard::new(None);
    s.ready();
    assert_eq!(s.state.shutdown(true), 4000);
    assert!(s.drain().is_empty());
    assert!(s.state.session().is_some());
    let mut s = Shard::new(None);
    s.ready();
    assert_eq!(s.state.shutdown(false), 1000);
    assert!(matches!(s.drain().as_slice(), [Action::StoreSession(None)]));
}

#[test]
fn a_bad_hello_reconnects_and_a_second_hello_is_ignored() {
    let mut s = Shard::new(None);
    assert_eq!(
        reconnects(&s.frame(
            r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":0}}"#,
            0
        )),
        [Some(4000)]
    );
    let mut s = Shard::new(None);
    assert_eq!(
        reconnects(&s.frame(r#"{"t":null,"s":null,"op":10,"d":{}}"#, 0)),
        [Some(4000)]
    );
    let mut s = Shard::new(None);
    s.frame(
        r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#,
        0,
    );
    assert!(s
        .frame(
            r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":5}}"#,
            1
        )
        .is_empty());
    assert_eq!(
        s.state.heartbeat_interval(),
        Some(Duration::from_millis(41_250))
    );
}

#[test]
fn the_token_shows_only_inside_identify_and_resume_frames() {
    let mut s = Shard::new(None);
    let actions = s.ready();
    assert!(!format!("{:?}", s.state).contains(TOKEN));
    assert!(!format!("{:?}", params()).contains(TOKEN));
    assert!(!format!("{actions:?}").contains(TOKEN));
}

#[test]
fn a_failing_resume_host_is_given_up_for_the_gateway_url_after_a_few_connects() {
    let mut s = Shard::new(None);
    s.ready();
    let resume_host = "wss://gateway-us-east1-b.discord.gg";
    for failed in 0..RESUME_HOST_ATTEMPTS {
        assert_eq!(s.state.connect_base_after(failed), resume_host);
    }
    assert_eq!(s.state.connect_base_after(RESUME_HOST_ATTEMPTS), GATEWAY);
    assert!(
        s.state.will_resume(),
        "the session is resumed there all the same"
    );
}
/// A frame the prescan takes (its last two bytes look whole) whose object never closes: the brace
/// at its end is `d`'s. The shard reads `d` of these itself, so it must not be fooled.
#[test]
fn hello_op_9_and_ready_whose_object_never_closes_are_skipped() {
    let mut s = Shard::new(None);
    let hello = r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250,"x":{}}"#;
    assert!(s.frame(hello, 0).is_empty(), "a malformed Hello is skipped");
    assert_eq!(s.state.phase(), Phase::AwaitingHello);
    assert_eq!(s.state.heartbeat_interval(), None);
    s.frame(
        r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#,
        1,
    );
    assert!(s.state.on_identify_permit());
    s.drain();
    let ready = r#"{"t":"READY","s":1,"op":0,"d":{"session_id":"abc","user":{"id":"1"}}"#;
    assert!(s.frame(ready, 2).is_empty(), "a malformed READY is skipped");
    assert_eq!(
        (s.state.phase(), s.state.seq(), s.state.session()),
        (Phase::Identifying, None, None)
    );
    let actions = s.frame(r#"{"t":"READY","s":1,"op":0,"d":{"session_id":"abc"}}"#, 3);
    assert_eq!(delivered(&actions), [(1, "READY".to_owned())]);
    let op9 = r#"{"t":null,"s":null,"op":9,"d":{"x":{"y":true}}"#;
    assert!(s.frame(op9, 4).is_empty(), "a malformed op 9 is skipped");
    assert_eq!(s.state.phase(), Phase::Ready);
    assert!(s.state.will_resume());
}

#[test]
fn identify_restarts_the_sequence_after_a_ready_without_a_session_id() {
    let mut s = Shard::new(None);
    s.frame(
        r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#,
        0,
    );
    s.state.on_identify_permit();
    s.drain();
    let actions = s.frame(r#"{"t":"READY","s":1,"op":0,"d":{"v":10}}"#, 1);
    assert_eq!(delivered(&actions), [(1, "READY".to_owned())]);
    assert!(matches!(
        actions.as_slice(),
        [Action::Ready { resumed: false }, Action::Deliver(_)]
    ));
    for seq in 2..=4 {
        s.dispatch(seq, "MESSAGE_CREATE");
    }
    assert!(!s.state.will_resume(), "nothing to resume");
    s.state.on_close(Some(4000));
    assert_eq!(reconnects(&s.drain()), [None]);

    // The next connection identifies: a new session, numbered from 1 again.
    s.state.on_open();
    let actions = s.frame(
        r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#,
        10,
    );
    assert!(matches!(actions.last(), Some(Action::RequestIdentify)));
    assert_eq!(s.state.seq(), Some(4), "kept until Identify goes out");
    assert!(s.state.on_identify_permit());
    assert_eq!(sent(&s.drain())[0]["op"], 2);
    assert_eq!(s.state.seq(), None, "Identify starts a new session");
    s.state.on_heartbeat_due(s.at(11));
    assert_eq!(sent(&s.drain()), [json!({"op": 1, "d": null})]);
    let actions = s.frame(r#"{"t":"READY","s":1,"op":0,"d":{"session_id":"new"}}"#, 12);
    assert_eq!(delivered(&actions), [(1, "READY".to_owned())]);
    assert_eq!(s.state.phase(), Phase::Ready);
    assert_eq!(s.state.session().unwrap().session_id, "new");
    let mut got = Vec::new();
    for seq in [2, 3] {
        got.extend(delivered(&s.dispatch(seq, "GUILD_CREATE")));
    }
    assert_eq!(
        got,
        [
            (2, "GUILD_CREATE".to_owned()),
            (3, "GUILD_CREATE".to_owned())
        ]
    );
}

#[test]
fn ready_is_never_taken_for_an_event_already_delivered() {
    // A READY whose s is not above the last (whatever the reason) still starts the session.
    let mut s = Shard::new(None);
    s.ready();
    for seq in 2..=5 {
        s.dispatch(seq, "MESSAGE_CREATE");
    }
    let actions = s.frame(r#"{"t":"READY","s":1,"op":0,"d":{"session_id":"xyz"}}"#, 30);
    assert_eq!(delivered(&actions), [(1, "READY".to_owned())]);
    assert_eq!(s.state.session().unwrap().session_id, "xyz");
    assert_eq!(s.state.seq(), Some(1));
    assert_eq!(
        delivered(&s.dispatch(2, "MESSAGE_CREATE")),
        [(2, "MESSAGE_CREATE".to_owned())]
    );
}

#[test]
fn a_resumed_with_a_null_or_old_sequence_still_completes_the_resume() {
    for resumed in [
        r#"{"t":"RESUMED","s":null,"op":0,"d":{}}"#,
        r#"{"t":"RESUMED","op":0,"d":{}}"#,
        r#"{"t":"RESUMED","s":3,"op":0,"d":{}}"#,
        r#"{"t":"RESUMED","s":5,"op":0,"d":null}"#,
    ] {
        let mut s = Shard::new(None);
        s.ready();
        for seq in 2..=5 {
            s.dispatch(seq, "MESSAGE_CREATE");
        }
        s.frame(r#"{"t":null,"s":null,"op":7,"d":null}"#, 30);
        s.state.on_open();
        s.frame(
            r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#,
            40,
        );
        assert_eq!(s.state.phase(), Phase::Resuming);
        let actions = s.frame(resumed, 50);
        assert!(
            matches!(actions.as_slice(), [Action::Ready { resumed: true }]),
            "{resumed}: {actions:?}"
        );
        assert_eq!(s.state.phase(), Phase::Ready, "{resumed}");
        assert_eq!(s.state.seq(), Some(5), "{resumed}");
        assert_eq!(
            delivered(&s.dispatch(6, "MESSAGE_CREATE")),
            [(6, "MESSAGE_CREATE".to_owned())],
            "{resumed}"
        );
    }
}

#[test]
fn a_reply_to_the_gateways_op_1_in_flight_at_the_scheduled_beat_is_no_zombie() {
    let mut s = Shard::new(None);
    s.ready();
    s.state.on_heartbeat_due(s.at(1_000));
    s.drain();
    s.frame(r#"{"op":11}"#, 1_010);
    assert_eq!(s.state.latency(), Some(Duration::from_millis(10)));
    // The gateway asks just before the next scheduled beat; its ACK is still on the way when the
    // beat is due.
    let reply = s.frame(r#"{"t":null,"s":null,"op":1,"d":null}"#, 42_200);
    assert_eq!(sent(&reply), [json!({"op": 1, "d": 1})]);
    s.state.on_heartbeat_due(s.at(42_250));
    let actions = s.drain();
    assert!(reconnects(&actions).is_empty(), "{actions:?}");
    assert_eq!(sent(&actions), [json!({"op": 1, "d": 1})]);
    // Each ACK answers the oldest beat in flight: first the reply, then the scheduled beat.
    s.frame(r#"{"op":11}"#, 42_260);
    assert_eq!(s.state.latency(), Some(Duration::from_millis(60)));
    s.frame(r#"{"op":11}"#, 42_270);
    assert_eq!(s.state.latency(), Some(Duration::from_millis(20)));
    // A stray ACK with nothing in flight measures nothing.
    s.frame(r#"{"op":11}"#, 42_280);
    assert_eq!(s.state.latency(), Some(Duration::from_millis(20)));
    s.state.on_heartbeat_due(s.at(83_500));
    let actions = s.drain();
    assert!(reconnects(&actions).is_empty(), "{actions:?}");
    s.frame(r#"{"op":11}"#, 83_510);
    assert_eq!(s.state.latency(), Some(Duration::from_millis(10)));
    // The gateway never answers a reply (the fake can be told to skip one): ACKs then answer the
    // beat before theirs until the next scheduled beat, which drops the stale one.
    s.frame(r#"{"t":null,"s":null,"op":1,"d":null}"#, 124_700);
    s.state.on_heartbeat_due(s.at(124_750));
    assert!(reconnects(&s.drain()).is_empty());
    s.frame(r#"{"op":11}"#, 124_760);
    s.state.on_heartbeat_due(s.at(166_000));
    assert!(
        reconnects(&s.drain()).is_empty(),
        "the reply's lost ACK is no zombie"
    );
    s.frame(r#"{"op":11}"#, 166_005);
    assert_eq!(s.state.latency(), Some(Duration::from_millis(5)));

    // That scheduled beat goes unanswered for a whole interval: a zombie, with a reply in flight
    // behind it or not.
    s.state.on_heartbeat_due(s.at(207_250));
    assert!(reconnects(&s.drain()).is_empty());
    s.frame(r#"{"t":null,"s":null,"op":1,"d":null}"#, 207_300);
    s.state.on_heartbeat_due(s.at(248_500));
    assert_eq!(reconnects(&s.drain()), [Some(RESUME_CLOSE_CODE)]);
}

#[test]
fn an_unanswered_scheduled_beat_is_a_zombie_even_behind_an_answered_reply() {
    let mut s = Shard::new(None);
    s.ready();
    // The reply goes first and is answered; the scheduled beat after it never is.
    s.frame(r#"{"t":null,"s":null,"op":1,"d":null}"#, 500);
    s.frame(r#"{"op":11}"#, 510);
    s.state.on_heartbeat_due(s.at(1_000));
    s.drain();
    s.state.on_heartbeat_due(s.at(42_250));
    assert_eq!(reconnects(&s.drain()), [Some(RESUME_CLOSE_CODE)]);
}

#[test]
fn only_op_7_on_a_healthy_connection_reconnects_at_once() {
    let at_once = |actions: &[Action]| -> Vec<bool> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Reconnect { at_once, .. } => Some(*at_once),
                _ => None,
            })
            .collect()
    };
    let op7 = r#"{"t":null,"s":null,"op":7,"d":null}"#;
    let hello = r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#;
    let mut s = Shard::new(None);
    s.ready();
    assert_eq!(at_once(&s.frame(op7, 1)), [true], "op 7 after READY");
    // op 7 again while resuming (RESUMED not reached): the connection was not healthy.
    s.state.on_open();
    s.frame(hello, 2);
    assert_eq!(s.state.phase(), Phase::Resuming);
    assert_eq!(at_once(&s.frame(op7, 3)), [false], "op 7 before RESUMED");
    s.state.on_open();
    s.frame(hello, 4);
    s.frame(r#"{"t":"RESUMED","s":null,"op":0,"d":{}}"#, 5);
    assert_eq!(at_once(&s.frame(op7, 6)), [true], "op 7 after RESUMED");
    // Everything else waits its backoff delay, healthy connection or not.
    let mut s = Shard::new(None);
    s.ready();
    assert_eq!(
        at_once(&s.frame(r#"{"t":null,"s":null,"op":9,"d":true}"#, 1)),
        [false]
    );
    let mut s = Shard::new(None);
    s.ready();
    s.state.on_close(None);
    assert_eq!(at_once(&s.drain()), [false], "a drop");
    let mut s = Shard::new(None);
    s.ready();
    s.state.on_connection_failed();
    assert_eq!(at_once(&s.drain()), [false], "a failed connection");
    let mut s = Shard::new(None);
    s.ready();
    s.state.on_heartbeat_due(s.at(1_000));
    s.state.on_heartbeat_due(s.at(42_250));
    assert_eq!(at_once(&s.drain()), [false], "a zombie");
}

#[test]
fn a_sequence_of_u64_max_neither_overflows_nor_counts_as_a_gap() {
    let max = u64::MAX;
    let mut s = Shard::new(None);
    s.frame(
        r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#,
        0,
    );
    assert!(s.state.on_identify_permit());
    s.drain();
    let actions = s.frame(
        &format!(r#"{{"t":"READY","s":{max},"op":0,"d":{{"session_id":"abc"}}}}"#),
        10,
    );
    assert_eq!(delivered(&actions), [(max, "READY".to_owned())]);
    assert_eq!(s.state.seq(), Some(max));
    // Nothing can come after it: a smaller or equal number is a repeat, skipped.
    assert!(delivered(&s.dispatch(max, "MESSAGE_CREATE")).is_empty());
    assert!(delivered(&s.dispatch(2, "MESSAGE_CREATE")).is_empty());
    // Heartbeats and a resume carry it as it is.
    s.state.on_heartbeat_due(s.at(1_000));
    assert_eq!(sent(&s.drain()), [json!({"op": 1, "d": max})]);

    // Up to it from just below: delivered once, in order.
    let mut s = Shard::new(None);
    s.ready();
    assert_eq!(
        delivered(&s.dispatch(max - 1, "MESSAGE_CREATE")),
        [(max - 1, "MESSAGE_CREATE".to_owned())]
    );
    assert_eq!(
        delivered(&s.dispatch(max, "MESSAGE_CREATE")),
        [(max, "MESSAGE_CREATE".to_owned())]
    );
    assert!(delivered(&s.dispatch(max, "MESSAGE_CREATE")).is_empty());
}
