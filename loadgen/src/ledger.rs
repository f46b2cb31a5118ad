//! What one subscriber received in a fan-out run, and the verdict over all of them: every
//! acknowledged post reaches every socket exactly once and in the order the server
//! accepted it (ascending message ids, one server), or the run names what went wrong.

use std::time::Duration;

/// One socket's record: how often each post (by its sequence number) arrived, the message
/// ids in arrival order as far as ordering needs them, and each delivery's latency.
#[derive(Debug, Clone)]
pub(crate) struct Ledger {
    arrivals: Vec<u8>,
    last_id: Option<i64>,
    out_of_order: u64,
    /// Frames naming a sequence number no poster sent.
    strangers: u64,
    latencies_us: Vec<u32>,
    /// The server closed the socket (1013 for a subscriber that fell behind): what it
    /// missed after that is by contract, not a loss.
    closed: bool,
}

impl Ledger {
    /// A ledger for a run that sends at most `posts` posts.
    pub(crate) fn new(posts: usize) -> Self {
        Self {
            arrivals: vec![0; posts],
            last_id: None,
            out_of_order: 0,
            strangers: 0,
            latencies_us: Vec::new(),
            closed: false,
        }
    }

    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    /// Records the message `id` carrying post `seq`, received `latency` after it was sent.
    pub(crate) fn record(&mut self, seq: usize, id: i64, latency: Duration) {
        let Some(count) = self.arrivals.get_mut(seq) else {
            self.strangers += 1;
            return;
        };
        *count = count.saturating_add(1);
        if self.last_id.is_some_and(|last| id < last) {
            self.out_of_order += 1;
        }
        self.last_id = Some(self.last_id.map_or(id, |last| last.max(id)));
        self.latencies_us.push(micros(latency));
    }

    pub(crate) fn deliveries(&self) -> usize {
        self.latencies_us.len()
    }
}

/// The run's verdict over every socket, against the posts the server acknowledged.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) deliveries: u64,
    pub(crate) expected: u64,
    /// Acknowledged posts that did not reach a socket that stayed open, summed over them.
    pub(crate) missing: u64,
    /// Extra copies of a post on a socket.
    pub(crate) duplicates: u64,
    /// Messages that arrived after one with a higher id on the same socket.
    pub(crate) out_of_order: u64,
    /// Frames for a post that was never sent, or a socket that answered nothing sensible.
    pub(crate) strangers: u64,
}

impl Tally {
    pub(crate) fn of(ledgers: &[Ledger], acknowledged: &[bool]) -> Self {
        let mut tally = Self::default();
        for ledger in ledgers {
            for (&count, &acked) in ledger.arrivals.iter().zip(acknowledged) {
                let count = u64::from(count);
                if acked && !ledger.closed {
                    tally.expected += 1;
                    tally.missing += u64::from(count == 0);
                }
                // A post whose 201 never came (a failed or timed-out request) may still have
                // been committed and delivered: only a second copy is wrong.
                tally.duplicates += count.saturating_sub(1);
            }
            tally.deliveries += ledger.deliveries() as u64;
            tally.out_of_order += ledger.out_of_order;
            tally.strangers += ledger.strangers;
        }
        tally
    }

    /// Whether every acknowledged post reached every socket once, in order.
    pub(crate) fn is_clean(&self) -> bool {
        self.missing == 0 && self.duplicates == 0 && self.out_of_order == 0 && self.strangers == 0
    }
}

/// A latency in whole microseconds, as the ledgers keep them (over an hour saturates).
pub(crate) fn micros(latency: Duration) -> u32 {
    u32::try_from(latency.as_micros()).unwrap_or(u32::MAX)
}

/// Every delivery's latency in microseconds, from every socket, sorted.
pub(crate) fn sorted_latencies(ledgers: &[Ledger]) -> Vec<u32> {
    let mut all: Vec<u32> = ledgers.iter().flat_map(|l| l.latencies_us.iter().copied()).collect();
    all.sort_unstable();
    all
}

/// The `p`th quantile of sorted samples (nearest rank), in milliseconds.
pub(crate) fn quantile_ms(sorted_us: &[u32], p: f64) -> Option<f64> {
    let last = sorted_us.len().checked_sub(1)?;
    let rank = ((sorted_us.len() as f64 * p).ceil() as usize)
        .saturating_sub(1)
        .min(last);
    Some(f64::from(sorted_us[rank]) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ledger(arrivals: &[(usize, i64)]) -> Ledger {
        let mut ledger = Ledger::new(4);
        for &(seq, id) in arrivals {
            ledger.record(seq, id, MS);
        }
        ledger
    }

    #[test]
    fn every_post_once_in_order_is_clean() {
        let tally = Tally::of(
            &[
                ledger(&[(0, 10), (1, 11), (2, 12)]),
                ledger(&[(0, 10), (1, 11), (2, 12)]),
            ],
            &[true, true, true, false],
        );
        assert!(tally.is_clean(), "{tally:?}");
        assert_eq!((tally.deliveries, tally.expected), (6, 6));
    }

    #[test]
    fn a_post_missing_from_one_socket_is_counted() {
        let tally = Tally::of(
            &[ledger(&[(0, 10), (1, 11), (2, 12)]), ledger(&[(0, 10), (2, 12)])],
            &[true, true, true, false],
        );
        assert_eq!(tally.missing, 1);
        assert!(!tally.is_clean());
    }

    #[test]
    fn a_socket_the_server_closed_misses_nothing_after_it() {
        let mut closed = ledger(&[(0, 10)]);
        closed.close();
        let tally = Tally::of(&[closed, ledger(&[(0, 10), (1, 11)])], &[true, true, false, false]);
        assert_eq!((tally.missing, tally.expected), (0, 2), "{tally:?}");
        assert!(tally.is_clean());
    }

    #[test]
    fn a_second_copy_is_a_duplicate_even_of_an_unacknowledged_post() {
        let tally = Tally::of(
            &[ledger(&[(0, 10), (0, 10), (3, 13), (3, 13)])],
            &[true, false, false, false],
        );
        assert_eq!(tally.duplicates, 2);
        assert_eq!(tally.missing, 0);
        assert!(!tally.is_clean());
    }

    #[test]
    fn a_lower_id_after_a_higher_one_is_out_of_order() {
        let tally = Tally::of(&[ledger(&[(1, 11), (0, 10), (2, 12)])], &[true, true, true, false]);
        assert_eq!(tally.out_of_order, 1, "{tally:?}");
        assert!(!tally.is_clean());
        // Once past the highest id, later ones in order are fine again.
        let tally = Tally::of(&[ledger(&[(2, 12), (0, 10), (1, 11), (3, 13)])], &[true; 4]);
        assert_eq!(tally.out_of_order, 2, "{tally:?}");
    }

    #[test]
    fn a_frame_for_a_post_never_sent_is_counted() {
        let tally = Tally::of(&[ledger(&[(0, 10), (9, 19)])], &[true, false, false, false]);
        assert_eq!(tally.strangers, 1);
        assert!(!tally.is_clean());
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let sorted: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(quantile_ms(&sorted, 0.5), Some(50.0));
        assert_eq!(quantile_ms(&sorted, 0.99), Some(99.0));
        assert_eq!(quantile_ms(&sorted, 1.0), Some(100.0));
        assert_eq!(quantile_ms(&[], 0.5), None);
    }
}
