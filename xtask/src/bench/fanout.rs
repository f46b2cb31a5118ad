//! `--e2e --fanout RATE` and `--capacity P99_MS`: the baseline's server and the working
//! tree's, each under many WebSocket subscribers with posts at a fixed rate (the load
//! generator's open-loop `fanout` mode), and a search for the highest rate whose delivery
//! p99 stays within a bound.
//!
//! This module holds what the runs mean: their results, the search, the report. Running
//! the servers is `e2e`'s.

use serde::{Deserialize, Serialize};

use super::{median, Percentiles};

/// What the fan-out runs ask for.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct FanoutLoad {
    pub subscribers: u32,
    /// Posts per second of the fixed-rate runs (one per round and side); the capacity
    /// search starts there too.
    pub rate: Option<f64>,
    /// The delivery p99 (ms) the capacity search holds each rate to.
    pub capacity_p99_ms: Option<f64>,
    /// The most runs the search makes per side.
    pub capacity_steps: u32,
}

/// Where the capacity search starts without `--fanout`.
pub(crate) const DEFAULT_START_RATE: f64 = 100.0;
/// The search stops once the highest passing rate and the lowest failing one are within
/// this factor of each other.
const RESOLUTION: f64 = 1.1;
/// Below one post a second there is nothing left to find.
const LOWEST_RATE: f64 = 1.0;

/// What the load generator's `fanout` mode prints.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct FanoutRun {
    pub offered_rate: f64,
    pub achieved_rate: f64,
    pub posts_accepted: u64,
    pub post_failures: u64,
    /// Some posts found every connection busy and were not sent: the server fell behind.
    pub saturated: bool,
    pub deliveries: u64,
    pub deliveries_expected: u64,
    pub delivery_ms: Percentiles,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub unexpected_frames: u64,
    /// Subscribers the server closed, e.g. with 1013 for falling behind.
    pub sockets_closed: u64,
}

impl FanoutRun {
    /// Broken guarantees: an acknowledged post missing from an open socket, a copy too
    /// many, a message after a later one, a frame for a post never sent.
    pub(crate) fn violations(&self) -> u64 {
        self.missing + self.duplicates + self.out_of_order + self.unexpected_frames
    }

    /// Whether the server kept up with this rate: every post sent and accepted, every
    /// subscriber kept, nothing broken, and delivery p99 within the bound.
    fn kept_up(&self, p99_bound_ms: f64) -> bool {
        !self.saturated
            && self.post_failures == 0
            && self.sockets_closed == 0
            && self.violations() == 0
            && self.delivery_ms.p99.is_some_and(|p99| p99 <= p99_bound_ms)
    }
}

/// One side's search: double the rate while it keeps up, halve it while it does not,
/// then bisect (geometrically) between the highest rate that kept up and the lowest that
/// did not, until they are within [`RESOLUTION`] or the steps run out.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CapacitySearch {
    p99_bound_ms: f64,
    start: f64,
    steps_left: u32,
    /// The highest rate that kept up: the capacity found.
    highest_kept_up: Option<f64>,
    lowest_fell_behind: Option<f64>,
    steps: Vec<CapacityStep>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CapacityStep {
    rate: f64,
    kept_up: bool,
    delivery_p99_ms: Option<f64>,
    saturated: bool,
    sockets_closed: u64,
    violations: u64,
}

impl CapacitySearch {
    pub(crate) fn new(start: f64, p99_bound_ms: f64, max_steps: u32) -> Self {
        Self {
            p99_bound_ms,
            start,
            steps_left: max_steps,
            highest_kept_up: None,
            lowest_fell_behind: None,
            steps: Vec::new(),
        }
    }

    /// The rate to try next, or `None` when the search is over.
    pub(crate) fn next_rate(&self) -> Option<f64> {
        if self.steps_left == 0 {
            return None;
        }
        let rate = match (self.highest_kept_up, self.lowest_fell_behind) {
            (None, None) => self.start,
            (Some(kept_up), None) => kept_up * 2.0,
            (None, Some(fell_behind)) => fell_behind / 2.0,
            (Some(kept_up), Some(fell_behind)) if fell_behind / kept_up <= RESOLUTION => return None,
            (Some(kept_up), Some(fell_behind)) => (kept_up * fell_behind).sqrt(),
        };
        (rate >= LOWEST_RATE).then_some(rate.round())
    }

    pub(crate) fn record(&mut self, run: &FanoutRun) {
        let rate = run.offered_rate;
        let kept_up = run.kept_up(self.p99_bound_ms);
        if kept_up {
            self.highest_kept_up = Some(self.highest_kept_up.map_or(rate, |r| r.max(rate)));
        } else {
            self.lowest_fell_behind = Some(self.lowest_fell_behind.map_or(rate, |r| r.min(rate)));
        }
        self.steps_left = self.steps_left.saturating_sub(1);
        self.steps.push(CapacityStep {
            rate,
            kept_up,
            delivery_p99_ms: run.delivery_ms.p99,
            saturated: run.saturated,
            sockets_closed: run.sockets_closed,
            violations: run.violations(),
        });
    }

    /// The highest rate that kept up, if any did.
    pub(crate) fn capacity(&self) -> Option<f64> {
        self.highest_kept_up
    }
}

/// One server's fan-out: the fixed-rate rounds and the capacity search.
#[derive(Debug, Serialize)]
pub(crate) struct FanoutSide {
    pub name: String,
    /// Medians over the fixed-rate rounds.
    pub delivery_ms: Percentiles,
    pub rounds: Vec<FanoutRun>,
    /// Broken guarantees, summed over every run of this side, the search's included.
    pub violations: u64,
    pub capacity: Option<CapacitySearch>,
}

impl FanoutSide {
    pub(crate) fn new(name: String, rounds: Vec<FanoutRun>, search: Option<CapacitySearch>) -> Self {
        let median_of = |value: fn(&FanoutRun) -> Option<f64>| median(rounds.iter().filter_map(value).collect());
        let searched = search.iter().flat_map(|s| &s.steps).map(|step| step.violations);
        Self {
            delivery_ms: Percentiles {
                p50: median_of(|r| r.delivery_ms.p50),
                p99: median_of(|r| r.delivery_ms.p99),
                max: median_of(|r| r.delivery_ms.max),
            },
            violations: rounds.iter().map(FanoutRun::violations).chain(searched).sum(),
            name,
            rounds,
            capacity: search,
        }
    }
}

/// The fan-out part of `--e2e`'s report: the baseline's side, then the working tree's.
#[derive(Debug, Serialize)]
pub(crate) struct FanoutReport {
    pub load: FanoutLoad,
    pub sides: Vec<FanoutSide>,
}

impl FanoutReport {
    /// Whether any run broke a guarantee: the comparison fails whatever the speed.
    pub(crate) fn violated(&self) -> bool {
        self.sides.iter().any(|side| side.violations > 0)
    }

    /// One line per side and figure, then the working tree's p99 and capacity against
    /// the baseline's.
    pub(crate) fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let ms = |value: Option<f64>| value.map_or("-".into(), |ms| format!("{ms:.1}"));
        if let Some(rate) = self.load.rate {
            for side in &self.sides {
                let closed: u64 = side.rounds.iter().map(|r| r.sockets_closed).sum();
                let saturated = side.rounds.iter().filter(|r| r.saturated).count();
                lines.push(format!(
                    "fan-out to {} subscribers at {rate} posts/s, {}: delivery p50/p99/max {}/{}/{} ms, {} missing/duplicate/out of order, {closed} subscribers closed, {saturated} of {} rounds saturated",
                    self.load.subscribers,
                    side.name,
                    ms(side.delivery_ms.p50),
                    ms(side.delivery_ms.p99),
                    ms(side.delivery_ms.max),
                    side.violations,
                    side.rounds.len(),
                ));
            }
            if let [baseline, current] = self.sides.as_slice() {
                if let (Some(b), Some(c)) = (baseline.delivery_ms.p99, current.delivery_ms.p99) {
                    lines.push(format!(
                        "fan-out delivery p99, working tree against baseline: ×{:.2}",
                        c / b
                    ));
                }
            }
        }
        if let Some(bound) = self.load.capacity_p99_ms {
            for side in &self.sides {
                let Some(search) = &side.capacity else { continue };
                let tried: Vec<String> = search
                    .steps
                    .iter()
                    .map(|s| format!("{}{}", s.rate, if s.kept_up { "✓" } else { "✗" }))
                    .collect();
                lines.push(format!(
                    "capacity at delivery p99 ≤ {bound} ms, {} subscribers, {}: {} (tried {})",
                    self.load.subscribers,
                    side.name,
                    search.capacity().map_or_else(
                        || format!("below {LOWEST_RATE} posts/s or not found"),
                        |r| format!("{r} posts/s")
                    ),
                    tried.join(" "),
                ));
            }
            let capacities: Vec<Option<f64>> = self
                .sides
                .iter()
                .map(|side| side.capacity.as_ref().and_then(CapacitySearch::capacity))
                .collect();
            if let [Some(b), Some(c)] = capacities.as_slice() {
                lines.push(format!("capacity, working tree against baseline: ×{:.2}", c / b));
            }
        }
        lines
    }
}

#[cfg(test)]
pub(crate) fn run_at(rate: f64, p99: f64) -> FanoutRun {
    FanoutRun {
        offered_rate: rate,
        achieved_rate: rate,
        posts_accepted: rate as u64,
        post_failures: 0,
        saturated: false,
        deliveries: 10,
        deliveries_expected: 10,
        delivery_ms: Percentiles {
            p50: Some(p99 / 2.0),
            p99: Some(p99),
            max: Some(p99 * 1.5),
        },
        missing: 0,
        duplicates: 0,
        out_of_order: 0,
        unexpected_frames: 0,
        sockets_closed: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the search to its end against a server that answers each rate with `p99_of`.
    fn search(start: f64, bound: f64, steps: u32, p99_of: impl Fn(f64) -> FanoutRun) -> CapacitySearch {
        let mut search = CapacitySearch::new(start, bound, steps);
        while let Some(rate) = search.next_rate() {
            search.record(&p99_of(rate));
        }
        search
    }

    #[test]
    fn the_search_doubles_then_bisects_to_the_capacity() {
        // p99 = rate/10 ms: at a 50 ms bound the capacity is 500 posts/s.
        let found = search(100.0, 50.0, 20, |rate| run_at(rate, rate / 10.0));
        let capacity = found.capacity().expect("a capacity");
        assert!((455.0..=500.0).contains(&capacity), "{found:?}");
        let rates: Vec<f64> = found.steps.iter().map(|s| s.rate).collect();
        assert_eq!(rates[..4], [100.0, 200.0, 400.0, 800.0], "{found:?}");
        assert!(found.steps.len() < 20, "it stops at the resolution: {found:?}");
    }

    #[test]
    fn the_search_halves_from_a_start_that_is_too_fast() {
        let found = search(1000.0, 50.0, 20, |rate| run_at(rate, rate / 10.0));
        assert_eq!(found.steps[1].rate, 500.0, "{found:?}");
        assert!((455.0..=500.0).contains(&found.capacity().unwrap()), "{found:?}");
    }

    #[test]
    fn the_search_stops_after_its_steps() {
        let found = search(100.0, 50.0, 3, |rate| run_at(rate, rate / 10.0));
        assert_eq!(found.steps.len(), 3);
        assert_eq!(found.capacity(), Some(400.0));
    }

    #[test]
    fn saturation_closed_subscribers_or_a_broken_guarantee_fail_a_rate_whatever_its_p99() {
        let fails = |change: fn(&mut FanoutRun)| {
            let mut run = run_at(100.0, 1.0);
            change(&mut run);
            !run.kept_up(50.0)
        };
        assert!(!fails(|_| {}));
        assert!(fails(|r| r.saturated = true));
        assert!(fails(|r| r.sockets_closed = 1));
        assert!(fails(|r| r.missing = 1));
        assert!(fails(|r| r.duplicates = 1));
        assert!(fails(|r| r.out_of_order = 1));
        assert!(fails(|r| r.post_failures = 1));
        assert!(fails(|r| r.delivery_ms.p99 = None));
        // A server that never keeps up has no capacity.
        let none = search(100.0, 50.0, 20, |rate| {
            let mut run = run_at(rate, 1.0);
            run.saturated = true;
            run
        });
        assert_eq!(none.capacity(), None, "{none:?}");
        assert!(none.steps.len() <= 8, "halving stops at one post a second: {none:?}");
    }

    #[test]
    fn a_broken_guarantee_fails_the_report_and_the_summary_says_so() {
        let load = FanoutLoad {
            subscribers: 10,
            rate: Some(100.0),
            capacity_p99_ms: None,
            capacity_steps: 0,
        };
        let clean = || FanoutSide::new("baseline".into(), vec![run_at(100.0, 20.0)], None);
        let mut lost = run_at(100.0, 10.0);
        lost.missing = 3;
        let report = FanoutReport {
            load,
            sides: vec![clean(), FanoutSide::new("current".into(), vec![lost], None)],
        };
        assert!(report.violated());
        let summary = report.summary();
        assert!(summary[1].contains("3 missing/duplicate/out of order"), "{summary:?}");
        assert_eq!(summary[2], "fan-out delivery p99, working tree against baseline: ×0.50");
        let report = FanoutReport {
            load,
            sides: vec![clean(), clean()],
        };
        assert!(!report.violated());
        // A guarantee broken during the capacity search counts as well.
        let mut search = CapacitySearch::new(100.0, 50.0, 1);
        let mut duplicated = run_at(100.0, 10.0);
        duplicated.duplicates = 1;
        search.record(&duplicated);
        assert_eq!(
            FanoutSide::new("current".into(), Vec::new(), Some(search)).violations,
            1
        );
    }
}
