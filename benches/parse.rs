//! `parse`: what reading one received frame costs, per corpus frame.
//!
//! - `prescan` — shardline's envelope read (op, s, t, where d starts); what an unwanted event costs;
//! - `prescan+d` — the same plus finding where `d` ends; what a wanted event costs before a handler
//!   parses it;
//! - `serde_value` — `serde_json::from_slice::<Value>`, a full parse;
//! - `ignored_any` — `serde_json` into `IgnoredAny`, validation only;
//! - `envelope_rawvalue` — an envelope struct with a borrowed `&RawValue` for `d`.
//!
//! `typed/<event>`: reading a dispatch's `d` into a type, from a received `Dispatch`:
//! - `view` — the lean borrowed view (`Dispatch::view`, e.g. `shardline::typed::MessageCreate`);
//! - `twilight` — twilight-model's event (`Dispatch::to_twilight`, feature `twilight-model`: run
//!   with `--all-features`), the baseline the view is compared with.
//!
//! Throughput is in bytes (criterion prints MB/s); events/s is 1 / time per iteration.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde::de::IgnoredAny;
use serde_json::Value;
use shardline::protocol::Envelope;
use shardline::typed::{MessageCreate, PresenceUpdate, TypingStart};
use shardline::Dispatch;

const CORPUS: [(&str, &[u8]); 5] = [
    (
        "message_create",
        include_bytes!("corpus/message_create.json"),
    ),
    ("typing_start", include_bytes!("corpus/typing_start.json")),
    (
        "presence_update",
        include_bytes!("corpus/presence_update.json"),
    ),
    ("guild_create", include_bytes!("corpus/guild_create.json")),
    ("heartbeat_ack", include_bytes!("corpus/heartbeat_ack.json")),
];

fn parse(c: &mut Criterion) {
    for (name, frame) in CORPUS {
        let mut group = c.benchmark_group(format!("parse/{name}"));
        group.throughput(Throughput::Bytes(frame.len() as u64));
        // Sanity: every reader agrees on the frame before it is timed.
        let env = Envelope::parse(frame).expect("corpus frames are envelopes");
        let full = Envelope::parse_full(frame).unwrap();
        assert_eq!(
            (env.op, env.seq, env.data(frame)),
            (full.op, full.seq, full.data(frame))
        );

        group.bench_function(BenchmarkId::from_parameter("prescan"), |b| {
            b.iter(|| Envelope::parse(std::hint::black_box(frame)).map(|e| (e.op, e.seq, e.event)))
        });
        group.bench_function(BenchmarkId::from_parameter("prescan+d"), |b| {
            b.iter(|| {
                let frame = std::hint::black_box(frame);
                Envelope::parse(frame).map(|e| e.data.resolve(frame))
            })
        });
        group.bench_function(BenchmarkId::from_parameter("serde_value"), |b| {
            b.iter(|| serde_json::from_slice::<Value>(std::hint::black_box(frame)))
        });
        group.bench_function(BenchmarkId::from_parameter("ignored_any"), |b| {
            b.iter(|| serde_json::from_slice::<IgnoredAny>(std::hint::black_box(frame)))
        });
        group.bench_function(BenchmarkId::from_parameter("envelope_rawvalue"), |b| {
            b.iter(|| Envelope::parse_full(std::hint::black_box(frame)).map(|e| e.data))
        });
        group.finish();
    }
}

fn typed(c: &mut Criterion) {
    // A macro, not a generic function: a borrowed view's type names the lifetime of the dispatch
    // it borrows from, which a generic over `V` cannot leave open.
    macro_rules! case {
        ($view:ty, $name:literal, $frame:expr) => {{
            let dispatch = Dispatch::from_frame(0, $frame.to_vec().into()).expect("a dispatch");
            let mut group = c.benchmark_group(concat!("typed/", $name));
            group.throughput(Throughput::Bytes(dispatch.data().len() as u64));
            assert!(dispatch.view::<$view>().is_ok());
            group.bench_function(BenchmarkId::from_parameter("view"), |b| {
                b.iter(|| std::hint::black_box(&dispatch).view::<$view>().map(|_| ()))
            });
            #[cfg(feature = "twilight-model")]
            {
                assert!(dispatch.to_twilight().is_ok());
                group.bench_function(BenchmarkId::from_parameter("twilight"), |b| {
                    b.iter(|| std::hint::black_box(&dispatch).to_twilight().map(|_| ()))
                });
            }
            group.finish();
        }};
    }
    case!(MessageCreate<'_>, "message_create", CORPUS[0].1);
    case!(TypingStart, "typing_start", CORPUS[1].1);
    case!(PresenceUpdate<'_>, "presence_update", CORPUS[2].1);
}

criterion_group!(benches, parse, typed);
criterion_main!(benches);
