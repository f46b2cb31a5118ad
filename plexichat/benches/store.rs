//! The SQLite store's hot paths: committing a message or a group of them, and reading a
//! page of history.
// The package's other targets' dependencies are in scope here too; unused ones are
// the library's lint to catch.
#![allow(unused_crate_dependencies)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use plexichat::config::DatabaseSettings;
use plexichat::model::{NewMessage, Timestamp};
use plexichat::store::{SqliteStore, Store};
use tokio::runtime::Runtime;

struct Fixture {
    runtime: Runtime,
    store: SqliteStore,
    channel: i64,
    author: i64,
    _dir: tempfile::TempDir,
}

fn fixture(history: usize) -> Fixture {
    // One thread: the work of an iteration happens on the thread that measures it (and
    // SQLite's own), so instruction counts barely vary from run to run.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = DatabaseSettings {
        url: format!("sqlite://{}", dir.path().join("bench.db").display()),
        ..DatabaseSettings::default()
    };
    let (store, channel, author) = runtime.block_on(async {
        let store = SqliteStore::connect(&settings).await.expect("store");
        let user = store
            .create_user("bench", "not-a-hash", Timestamp::now())
            .await
            .expect("user");
        let channel = store
            .create_channel("bench", user.id, Timestamp::now())
            .await
            .expect("channel");
        for n in 0..history {
            store
                .insert_messages(&[message(channel.id, user.id, n)])
                .await
                .expect("message");
        }
        (store, channel.id, user.id)
    });
    Fixture {
        runtime,
        store,
        channel,
        author,
        _dir: dir,
    }
}

fn message(channel_id: i64, author_id: i64, n: usize) -> NewMessage {
    NewMessage {
        channel_id,
        author_id,
        author: "bench".into(),
        body: format!("message number {n}: the quick brown fox jumps over the lazy dog"),
        created_at: Timestamp::now(),
        node_id: "bench".into(),
    }
}

fn store_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    let fx = fixture(0);
    let mut n = 0;
    group.bench_function("insert_message", |b| {
        b.iter_batched(
            || {
                n += 1;
                message(fx.channel, fx.author, n)
            },
            |msg| fx.runtime.block_on(fx.store.insert_messages(&[msg])).expect("insert"),
            BatchSize::SmallInput,
        )
    });
    // What group commit buys: 64 posts that waited for a channel's turn, in one transaction.
    group.bench_function("insert_64_messages_in_one_group", |b| {
        b.iter_batched(
            || {
                n += 64;
                (n - 64..n)
                    .map(|k| message(fx.channel, fx.author, k))
                    .collect::<Vec<_>>()
            },
            |group| fx.runtime.block_on(fx.store.insert_messages(&group)).expect("insert"),
            BatchSize::SmallInput,
        )
    });
    let fx = fixture(1_000);
    group.bench_function("page_50_of_1000", |b| {
        b.iter(|| {
            fx.runtime
                .block_on(fx.store.messages(fx.channel, None, 50))
                .expect("page")
        })
    });
    group.bench_function("page_50_before_middle", |b| {
        b.iter(|| {
            fx.runtime
                .block_on(fx.store.messages(fx.channel, Some(500), 50))
                .expect("page")
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_secs(1));
    targets = store_benches
}
criterion_main!(benches);
