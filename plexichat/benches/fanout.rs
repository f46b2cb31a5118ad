//! Fan-out of one posted message to 1, 100 and 1,000 local WebSocket subscribers:
//! encoding the frame once and queueing it for each, as the in-process bus does.
// The package's other targets' dependencies are in scope here too; unused ones are
// the library's lint to catch.
#![allow(unused_crate_dependencies)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use plexichat::bus::{ClusterEvent, LocalEffects};
use plexichat::cache::Caches;
use plexichat::config::CacheSettings;
use plexichat::hub::{Hub, Subscriber};
use plexichat::model::{Message, Timestamp};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const CHANNEL: i64 = 1;

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for subscribers in [1usize, 100, 1_000] {
        let hub = Arc::new(Hub::new());
        let mut inboxes = Vec::with_capacity(subscribers);
        for user in 0..subscribers {
            let (outbox, inbox) = mpsc::channel(16);
            let subscriber = Subscriber {
                user_id: user as i64,
                outbox,
                too_slow: CancellationToken::new(),
            };
            hub.subscribe(CHANNEL, hub.next_connection_id(), subscriber);
            inboxes.push(inbox);
        }
        let effects = LocalEffects {
            hub,
            caches: Arc::new(Caches::new(&CacheSettings::default())),
        };
        let event = ClusterEvent::MessagePosted {
            message: Message {
                id: 42,
                channel_id: CHANNEL,
                author_id: 7,
                author: "ann".into(),
                body: "hello, everyone: the quick brown fox jumps over the lazy dog".into(),
                created_at: Timestamp::now(),
                node_id: "bench".into(),
            },
        };
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(BenchmarkId::new("message", subscribers), &subscribers, |b, _| {
            b.iter(|| {
                effects.apply(&event);
                // Each connection task takes its frame off the queue.
                for inbox in &mut inboxes {
                    inbox.try_recv().expect("every subscriber got the frame");
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_secs(1));
    targets = fanout
}
criterion_main!(benches);
