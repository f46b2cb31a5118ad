//! The `random` scenario's timeline: faults drawn from everything a backend supports by a
//! seeded generator. ChaCha8 seeded from a `u64` gives the same stream on every platform
//! and release of `rand_chacha`, so a seed replays the same schedule on the same backend
//! and cluster size.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Capabilities, FaultKind, Planned, Service, TargetKind};

/// The first fault comes after the workload has run this long.
const LEAD_IN: Duration = Duration::from_secs(5);
/// The cluster gets this long after the last heal: recovery is checked there.
const TAIL: Duration = Duration::from_secs(15);
const LASTING_SECONDS: std::ops::RangeInclusive<u64> = 3..=10;
const GAP_SECONDS: std::ops::RangeInclusive<u64> = 3..=8;
const LATENCY_MILLIS: std::ops::RangeInclusive<u64> = 100..=500;

/// Faults one after another, each on one node or service, until the workload's end less
/// the tail. The checker's own test is never drawn.
pub(crate) fn draw(seed: u64, capabilities: &Capabilities, duration: Duration) -> Vec<Planned> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let kinds: Vec<FaultKind> = capabilities
        .faults
        .iter()
        .copied()
        // Neither the checker's own test nor an upgrade is a fault a cluster meets by chance.
        .filter(|kind| {
            !matches!(
                kind,
                FaultKind::DropAcknowledged | FaultKind::Upgrade | FaultKind::Snapshot | FaultKind::Restore
            )
        })
        .collect();
    let mut faults = Vec::new();
    if kinds.is_empty() || capabilities.nodes == 0 {
        return faults;
    }
    let end = duration.saturating_sub(TAIL);
    let mut at = LEAD_IN;
    loop {
        let fault = kinds[rng.random_range(0..kinds.len())];
        let lasting = fault
            .lasts()
            .then(|| Duration::from_secs(rng.random_range(LASTING_SECONDS)));
        let heals = lasting.map(|lasting| at + lasting);
        if heals.unwrap_or(at) >= end {
            break;
        }
        let node = rng.random_range(1..=capabilities.nodes);
        let service = [Service::Nats, Service::Postgres][rng.random_range(0..2)];
        let latency = Duration::from_millis(rng.random_range(LATENCY_MILLIS));
        faults.push(Planned {
            step: faults.len(),
            fault,
            nodes: match fault.target() {
                TargetKind::Nodes => vec![node],
                TargetKind::Service | TargetKind::Store | TargetKind::Cluster => Vec::new(),
            },
            service: (fault.target() == TargetKind::Service).then_some(service),
            dependency: (fault == FaultKind::CutFrom).then_some(service),
            latency: (fault == FaultKind::SlowLink).then_some(latency),
            at,
            restores: None,
            heals,
        });
        at = heals.unwrap_or(at) + Duration::from_secs(rng.random_range(GAP_SECONDS));
    }
    faults
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capabilities(faults: &[FaultKind]) -> Capabilities {
        Capabilities {
            backend: "processes",
            faults: faults.to_vec(),
            nodes: 3,
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_schedule_and_another_seed_another() {
        let all = capabilities(&FaultKind::ALL);
        let duration = Duration::from_secs(120);
        let first = draw(1, &all, duration);
        assert!(first.len() >= 4, "{first:?}");
        assert_eq!(first, draw(1, &all, duration));
        assert_ne!(first, draw(2, &all, duration));
    }

    #[test]
    fn draws_stay_within_the_backend_and_the_workload() {
        let few = capabilities(&[FaultKind::Crash, FaultKind::KillService, FaultKind::DropAcknowledged]);
        let duration = Duration::from_secs(90);
        for seed in 0..50 {
            let faults = draw(seed, &few, duration);
            for fault in &faults {
                assert!(
                    matches!(fault.fault, FaultKind::Crash | FaultKind::KillService),
                    "{fault:?}"
                );
                assert!(fault.heals.unwrap_or(fault.at) < duration - TAIL, "{fault:?}");
                assert!(fault.nodes.iter().all(|n| (1..=3).contains(n)), "{fault:?}");
                assert_eq!(fault.service.is_some(), fault.fault == FaultKind::KillService);
            }
            // One at a time: each starts after the previous one healed.
            for pair in faults.windows(2) {
                assert!(pair[1].at > pair[0].heals.unwrap_or(pair[0].at), "{pair:?}");
            }
        }
    }
}
