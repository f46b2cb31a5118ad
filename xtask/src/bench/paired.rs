//! The statistics of paired runs: each pair is one slice of the baseline and one of the
//! current side, run back to back, and only the ratio within a pair is trusted. Whatever
//! else the machine was doing at that moment slowed both halves alike and divides out.
//!
//! The change is the median of the pairs' ratios (a pair that a burst of load hit in one
//! half only is an outlier, which a mean would follow), and its confidence interval comes
//! from resampling the pairs (a percentile bootstrap of the median), so no distribution
//! is assumed. The resampling is seeded: the same pairs always give the same interval.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{median, Measurement};

/// Resamples of the pairs behind each interval.
const RESAMPLES: usize = 10_000;
/// The interval's coverage. Pairing and fastest samples keep the pairs' ratios tight even
/// beside a build, so a verdict also needs the whole interval past the threshold.
const CONFIDENCE: f64 = 0.95;

/// The measurement of paired slices: `baseline[i]` and `current[i]` ran as one pair
/// (times per iteration, any unit). `change` and `interval` are relative (0.05 = +5 %);
/// `baseline` and `current` are each side's median slice.
pub(crate) fn measurement(baseline: &[f64], current: &[f64]) -> Measurement {
    assert_eq!(baseline.len(), current.len(), "slices come in pairs");
    assert!(!baseline.is_empty(), "at least one pair");
    let log_ratios: Vec<f64> = baseline.iter().zip(current).map(|(b, c)| (c / b).ln()).collect();
    let relative = |log_ratio: f64| log_ratio.exp() - 1.0;
    let median = |values: Vec<f64>| median(values).expect("at least one value");
    let (lower, upper) = bootstrap_median_interval(&log_ratios);
    Measurement {
        baseline: median(baseline.to_vec()),
        current: median(current.to_vec()),
        change: relative(median(log_ratios.clone())),
        interval: Some((relative(lower), relative(upper))),
    }
}

/// Whether the interval spans a threshold (`0.02` = 2 %), so that a few more pairs could
/// put the verdict on either side of it.
pub(crate) fn undecided(measurement: &Measurement, threshold: f64) -> bool {
    let (lower, upper) = measurement.interval.unwrap_or((measurement.change, measurement.change));
    let spans = |edge: f64| lower < edge && edge < upper;
    spans(threshold) || spans(-threshold)
}

fn bootstrap_median_interval(values: &[f64]) -> (f64, f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut resample = vec![0.0; values.len()];
    let mut medians: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            for slot in &mut resample {
                *slot = values[rng.random_range(0..values.len())];
            }
            median(resample.clone()).expect("a resample of at least one value")
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    let tail = (1.0 - CONFIDENCE) / 2.0;
    let at = |quantile: f64| medians[((quantile * (RESAMPLES - 1) as f64).round()) as usize];
    (at(tail), at(1.0 - tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pairs whose current half is `factor` times the baseline, each pair on a machine
    /// `load[i]` times slower than an idle one.
    fn pairs(factor: f64, load: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let baseline: Vec<f64> = load.iter().map(|l| 100.0 * l).collect();
        let current = baseline.iter().map(|b| b * factor).collect();
        (baseline, current)
    }

    const LOAD: [f64; 10] = [1.0, 1.9, 1.1, 1.0, 2.4, 1.3, 1.0, 1.7, 1.2, 1.0];

    #[test]
    fn a_load_that_slows_both_halves_of_each_pair_divides_out() {
        let (baseline, current) = pairs(1.05, &LOAD);
        let m = measurement(&baseline, &current);
        assert!((m.change - 0.05).abs() < 1e-9, "{m:?}");
        let (lower, upper) = m.interval.unwrap();
        assert!((lower - 0.05).abs() < 1e-9 && (upper - 0.05).abs() < 1e-9, "{m:?}");
    }

    #[test]
    fn noise_within_pairs_widens_the_interval_around_the_change() {
        let wobble = [1.01, 0.99, 1.02, 0.98, 1.0, 1.015, 0.985, 1.0, 1.01, 0.99];
        let baseline: Vec<f64> = LOAD.iter().map(|l| 100.0 * l).collect();
        let current: Vec<f64> = baseline.iter().zip(wobble).map(|(b, w)| b * 1.05 * w).collect();
        let (lower, upper) = measurement(&baseline, &current).interval.unwrap();
        assert!(lower < 0.05 && 0.05 < upper, "({lower}, {upper})");
        assert!(lower > 0.02 && upper < 0.08, "({lower}, {upper})");
    }

    #[test]
    fn one_pair_hit_in_one_half_only_does_not_move_the_change() {
        let (baseline, mut current) = pairs(1.0, &LOAD);
        current[4] *= 3.0;
        let m = measurement(&baseline, &current);
        assert_eq!(m.change, 0.0, "{m:?}");
        assert!(m.interval.unwrap().0 <= 0.0, "{m:?}");
    }

    #[test]
    fn only_an_interval_across_a_threshold_is_undecided() {
        let with = |lower, upper| Measurement {
            baseline: 1.0,
            current: 1.0,
            change: (lower + upper) / 2.0,
            interval: Some((lower, upper)),
        };
        assert!(undecided(&with(0.015, 0.07), 0.02));
        assert!(undecided(&with(-0.03, 0.0), 0.02));
        assert!(!undecided(&with(0.025, 0.07), 0.02), "regressed");
        assert!(!undecided(&with(-0.01, 0.01), 0.02), "no change");
        assert!(!undecided(&with(-0.07, -0.03), 0.02), "improved");
    }

    #[test]
    fn the_interval_is_the_same_for_the_same_pairs() {
        let baseline = [10.0, 11.0, 9.5, 10.2, 10.8];
        let current = [10.4, 11.9, 9.6, 10.1, 11.5];
        assert_eq!(measurement(&baseline, &current), measurement(&baseline, &current));
    }
}
