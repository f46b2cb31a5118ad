//! Figures read from a history for the report: posts per fault window by outcome,
//! delivery latency, and how long the cluster took to notice a fault and to recover.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Event, Phase, Post};

/// Posts answered while one fault lasted (start to heal), by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Counts {
    pub ok: usize,
    /// 503: refused while a dependency or the disk failed.
    pub unavailable: usize,
    /// Any other answer that is not a 201.
    pub refused: usize,
    /// No answer at all.
    pub failed: usize,
}

impl Counts {
    fn add(&mut self, post: &Post) {
        match post.status {
            Some(201) => self.ok += 1,
            Some(503) => self.unavailable += 1,
            Some(_) => self.refused += 1,
            None => self.failed += 1,
        }
    }
}

/// One fault's window and what happened in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Window {
    pub step: usize,
    pub fault: String,
    pub nodes: Vec<String>,
    pub started_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healed_s: Option<f64>,
    /// Posts sent between the start and the heal.
    pub posts: Counts,
    /// From the start until some other node listed a faulted node as not up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detected_after_s: Option<f64>,
    /// From the heal until every node listed every node as up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered_after_s: Option<f64>,
}

/// Every fault window, in start order.
pub(crate) fn windows(history: &[Event]) -> Vec<Window> {
    let mut open: BTreeMap<(usize, Vec<String>), usize> = BTreeMap::new();
    let mut windows: Vec<Window> = Vec::new();
    for event in history {
        let Event::Fault(fault) = event else { continue };
        let key = (fault.step, fault.nodes.clone());
        match fault.phase {
            Phase::Start => {
                open.insert(key, windows.len());
                windows.push(Window {
                    step: fault.step,
                    fault: fault.fault.clone(),
                    nodes: fault.nodes.clone(),
                    started_s: seconds(fault.at_ms),
                    healed_s: None,
                    posts: Counts::default(),
                    detected_after_s: None,
                    recovered_after_s: None,
                });
            }
            Phase::Heal => {
                if let Some(index) = open.remove(&key) {
                    windows[index].healed_s = Some(seconds(fault.at_ms));
                }
            }
        }
    }
    let end_s = history.iter().map(Event::time_ms).max().map_or(0.0, seconds);
    let every_node = nodes_of(history);
    for window in &mut windows {
        let until = window.healed_s.unwrap_or(end_s);
        for event in history {
            if let Event::Post(post) = event {
                if (window.started_s..=until).contains(&seconds(post.sent_ms)) {
                    window.posts.add(post);
                }
            }
        }
        // Only while the fault lasts: a node listed down after the heal was another
        // fault's doing (or this one's recovery), not this fault detected.
        window.detected_after_s = history.iter().find_map(|event| match event {
            Event::Membership(sample)
                if (window.started_s..=until).contains(&seconds(sample.at_ms))
                    && !window.nodes.contains(&sample.observer)
                    && window.nodes.iter().any(|node| !sample.up.contains(node)) =>
            {
                Some(seconds(sample.at_ms) - window.started_s)
            }
            _ => None,
        });
        if let Some(healed) = window.healed_s {
            window.recovered_after_s = recovered(history, healed, &every_node).map(|at| at - healed);
        }
    }
    windows
}

/// When, after `from_s`, every node had been seen listing every node as up.
fn recovered(history: &[Event], from_s: f64, nodes: &[String]) -> Option<f64> {
    let mut converged: Vec<&str> = Vec::new();
    for event in history {
        let Event::Membership(sample) = event else { continue };
        let at = seconds(sample.at_ms);
        if at < from_s || converged.contains(&sample.observer.as_str()) {
            continue;
        }
        if nodes.iter().all(|node| sample.up.contains(node)) {
            converged.push(&sample.observer);
            if nodes.iter().all(|node| converged.contains(&node.as_str())) {
                return Some(at);
            }
        }
    }
    None
}

/// Post to delivery, over every delivery of an acknowledged post: p50 and p99 in ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub samples: usize,
}

pub(crate) fn delivery_latency(history: &[Event]) -> Option<Latency> {
    let sent: BTreeMap<&str, u64> = history
        .iter()
        .filter_map(|event| match event {
            Event::Post(post) if post.status == Some(201) => Some((post.key.as_str(), post.sent_ms)),
            _ => None,
        })
        .collect();
    let mut samples: Vec<u64> = history
        .iter()
        .filter_map(|event| match event {
            Event::Delivery(delivery) => sent
                .get(delivery.key.as_str())
                .map(|sent| delivery.received_ms.saturating_sub(*sent)),
            _ => None,
        })
        .collect();
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1] as f64;
    Some(Latency {
        p50_ms: rank(0.50),
        p99_ms: rank(0.99),
        samples: samples.len(),
    })
}

/// Posts by outcome over the whole run.
pub(crate) fn totals(history: &[Event]) -> Counts {
    let mut counts = Counts::default();
    for event in history {
        if let Event::Post(post) = event {
            counts.add(post);
        }
    }
    counts
}

fn nodes_of(history: &[Event]) -> Vec<String> {
    let mut nodes: Vec<String> = history
        .iter()
        .filter_map(|event| match event {
            Event::Post(post) => Some(post.node.clone()),
            Event::Membership(sample) => Some(sample.observer.clone()),
            _ => None,
        })
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::super::{Delivery, Fault, Membership};
    use super::*;

    fn post(node: &str, key: &str, sent_ms: u64, status: Option<u16>) -> Event {
        Event::Post(Post {
            node: node.into(),
            key: key.into(),
            sent_ms,
            answered_ms: sent_ms + 5,
            status,
            id: (status == Some(201)).then_some(1),
            error: None,
        })
    }

    fn membership(observer: &str, at_ms: u64, up: &[&str]) -> Event {
        Event::Membership(Membership {
            observer: observer.into(),
            at_ms,
            up: up.iter().map(|n| n.to_string()).collect(),
        })
    }

    fn fault(phase: Phase, at_ms: u64) -> Event {
        Event::Fault(Fault {
            step: 0,
            fault: "crash".into(),
            phase,
            at_ms,
            nodes: vec!["n2".into()],
            shared: false,
        })
    }

    #[test]
    fn a_window_counts_its_posts_and_times_detection_and_recovery() {
        let history = vec![
            membership("n1", 0, &["n1", "n2"]),
            membership("n2", 0, &["n1", "n2"]),
            fault(Phase::Start, 1_000),
            post("n1", "a", 1_100, Some(201)),
            post("n2", "b", 1_200, None),
            post("n2", "c", 1_300, Some(503)),
            membership("n1", 1_500, &["n1", "n2"]),
            membership("n1", 3_000, &["n1"]),
            fault(Phase::Heal, 4_000),
            post("n2", "d", 4_500, Some(201)),
            membership("n1", 5_000, &["n1", "n2"]),
            membership("n2", 6_000, &["n1", "n2"]),
        ];
        let windows = windows(&history);
        assert_eq!(windows.len(), 1);
        let window = &windows[0];
        assert_eq!(
            window.posts,
            Counts {
                ok: 1,
                unavailable: 1,
                refused: 0,
                failed: 1
            }
        );
        assert_eq!(window.detected_after_s, Some(2.0));
        assert_eq!(window.recovered_after_s, Some(2.0));
        assert_eq!(totals(&history).ok, 2);
    }

    #[test]
    fn a_node_listed_down_only_after_the_heal_was_not_detected() {
        let history = vec![
            fault(Phase::Start, 1_000),
            membership("n1", 1_500, &["n1", "n2"]),
            fault(Phase::Heal, 4_000),
            // Down again later: another fault's doing.
            membership("n1", 9_000, &["n1"]),
        ];
        assert_eq!(windows(&history)[0].detected_after_s, None);
    }

    #[test]
    fn delivery_latency_is_read_from_acknowledged_posts() {
        let mut history = vec![post("n1", "a", 0, Some(201)), post("n1", "b", 100, Some(201))];
        for (key, received_ms) in [("a", 10), ("b", 130), ("a", 20)] {
            history.push(Event::Delivery(Delivery {
                socket: 0,
                node: "n1".into(),
                id: 1,
                key: key.into(),
                origin: "n1".into(),
                received_ms,
            }));
        }
        let latency = delivery_latency(&history).unwrap();
        assert_eq!((latency.p50_ms, latency.p99_ms, latency.samples), (20.0, 30.0, 3));
        assert_eq!(delivery_latency(&[]), None);
    }
}
