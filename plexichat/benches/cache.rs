//! The L1 cache on every authenticated request: session, channel and membership
//! lookups that hit, and a miss that falls through to its loader.
// The package's other targets' dependencies are in scope here too; unused ones are
// the library's lint to catch.
#![allow(unused_crate_dependencies)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use plexichat::cache::Caches;
use plexichat::config::CacheSettings;
use plexichat::model::{Channel, Session, Timestamp, User};

const ENTRIES: i64 = 1_000;

fn channel(id: i64) -> Channel {
    Channel {
        id,
        name: format!("channel-{id}"),
        created_by: 1,
        created_at: Timestamp(1_700_000_000_000),
        member_count: 3,
    }
}

fn token(n: i64) -> [u8; 32] {
    let mut token = [0u8; 32];
    token[..8].copy_from_slice(&n.to_le_bytes());
    token
}

fn session(n: i64) -> Session {
    Session {
        user: User {
            id: n,
            username: format!("user-{n}"),
            created_at: Timestamp(1_700_000_000_000),
        },
        expires_at: Timestamp(i64::MAX),
    }
}

fn cache(c: &mut Criterion) {
    let caches = Caches::new(&CacheSettings::default());
    // Every loader below is ready at once, so each lookup completes on its first poll.
    for n in 0..ENTRIES {
        let _ = caches.channel(n, async move { Ok(Some(channel(n))) }).now_or_never();
        let _ = caches
            .session(token(n), async move { Ok(Some(session(n))) })
            .now_or_never();
        let _ = caches.membership(n, 1, async { Ok(true) }).now_or_never();
    }
    let mut group = c.benchmark_group("cache");
    let mut n = 0;
    let mut next = move || {
        n = (n + 1) % ENTRIES;
        n
    };
    group.bench_function("session_hit", |b| {
        b.iter(|| {
            let n = next();
            caches
                .session(black_box(token(n)), async { unreachable!("a hit never loads") })
                .now_or_never()
        })
    });
    group.bench_function("channel_hit", |b| {
        b.iter(|| {
            let n = next();
            caches
                .channel(black_box(n), async { unreachable!("a hit never loads") })
                .now_or_never()
        })
    });
    group.bench_function("membership_hit", |b| {
        b.iter(|| {
            let n = next();
            caches
                .membership(black_box(n), 1, async { unreachable!("a hit never loads") })
                .now_or_never()
        })
    });
    group.bench_function("channel_miss", |b| {
        b.iter(|| {
            caches
                .channel(black_box(ENTRIES + 1), async { Ok(None) })
                .now_or_never()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = cache
}
criterion_main!(benches);
