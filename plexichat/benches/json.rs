//! A message's JSON: encoded once per post (the response and the fan-out frame) and
//! decoded by every client; a page of history is encoded per read.
// The package's other targets' dependencies are in scope here too; unused ones are
// the library's lint to catch.
#![allow(unused_crate_dependencies)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use plexichat::model::{Message, Timestamp};

fn message(id: i64) -> Message {
    Message {
        id,
        channel_id: 1,
        author_id: 7,
        author: "ann".into(),
        body: "hello, everyone: the quick brown fox jumps over the lazy dog".into(),
        // Fixed, so both sides of a comparison encode the same bytes.
        created_at: Timestamp(1_700_000_000_000),
        node_id: "bench".into(),
    }
}

fn json(c: &mut Criterion) {
    let mut group = c.benchmark_group("json");
    let one = message(42);
    let encoded = serde_json::to_vec(&one).expect("a message encodes");
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("encode_message", |b| {
        b.iter(|| serde_json::to_vec(black_box(&one)).expect("encode"))
    });
    group.bench_function("decode_message", |b| {
        b.iter(|| serde_json::from_slice::<Message>(black_box(&encoded)).expect("decode"))
    });
    let page: Vec<Message> = (0..50).map(message).collect();
    group.throughput(Throughput::Elements(page.len() as u64));
    group.bench_function("encode_page_50", |b| {
        b.iter(|| serde_json::to_vec(black_box(&page)).expect("encode"))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = json
}
criterion_main!(benches);
