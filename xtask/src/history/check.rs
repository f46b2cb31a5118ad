//! The verdict on a scenario: what its history and the nodes' final state must satisfy.
//! Each violation names the check it broke and the history lines (1-based, as an editor
//! shows `history.jsonl`) that show it.
//!
//! A post that got no answer, or a 5xx, is indeterminate: the server may or may not have
//! stored it, so the checker neither requires it nor forbids it anywhere. A 201 is a
//! promise (API.md): the message is stored on every node, exactly once, and delivered
//! in order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use super::{Delivery, Event, FinalState, Phase, Post};

/// How long a cluster may take to recover once a fault heals.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// Every node lists every node `up` within this of a heal (the membership lease plus
    /// two seconds).
    pub convergence: Duration,
}

/// One broken promise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub check: Check,
    pub message: String,
    /// The history lines that show it, 1-based.
    pub lines: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Every acknowledged message is stored on every node, exactly once.
    AcknowledgedStored,
    /// Nothing is delivered or stored that no post attempt sent.
    NoPhantom,
    /// Per socket: no duplicate, and each node's messages in the order it accepted them.
    DeliveryOrder,
    /// After each heal, membership converges and delivery resumes.
    Recovery,
    /// Nodes a fault does not touch keep answering; shared-dependency 503s stop on heal.
    Availability,
    /// No 500, ever.
    NoInternalError,
    /// After an upgrade, nodes of the old and the new build deliver each other's messages
    /// (checked by the engine while both serve, not read from the history).
    Interoperation,
}

impl Check {
    pub const ALL: [Check; 7] = [
        Check::AcknowledgedStored,
        Check::NoPhantom,
        Check::DeliveryOrder,
        Check::Recovery,
        Check::Availability,
        Check::NoInternalError,
        Check::Interoperation,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::AcknowledgedStored => "acknowledged stored",
            Check::NoPhantom => "no phantom",
            Check::DeliveryOrder => "delivery order",
            Check::Recovery => "recovery",
            Check::Availability => "availability",
            Check::NoInternalError => "no 500",
            Check::Interoperation => "old and new interoperate",
        }
    }
}

/// Every violation the history and the final state show, in the order of [`Check::ALL`].
pub(crate) fn check(history: &[Event], final_state: &FinalState, bounds: Bounds) -> Vec<Violation> {
    let history = Indexed::new(history);
    let mut violations = Vec::new();
    violations.extend(acknowledged_stored(&history, final_state));
    violations.extend(no_phantom(&history, final_state));
    violations.extend(delivery_order(&history));
    violations.extend(recovery(&history, final_state, bounds));
    violations.extend(availability(&history, bounds));
    violations.extend(no_internal_error(&history));
    violations
}

/// The history's events by kind, each with its line number.
struct Indexed<'a> {
    posts: Vec<(usize, &'a Post)>,
    deliveries: Vec<(usize, &'a Delivery)>,
    events: &'a [Event],
    /// The post attempt each key names.
    by_key: BTreeMap<&'a str, (usize, &'a Post)>,
    end_ms: u64,
}

impl<'a> Indexed<'a> {
    fn new(events: &'a [Event]) -> Self {
        let mut posts = Vec::new();
        let mut deliveries = Vec::new();
        for (index, event) in events.iter().enumerate() {
            match event {
                Event::Post(post) => posts.push((index + 1, post)),
                Event::Delivery(delivery) => deliveries.push((index + 1, delivery)),
                Event::Fault(_) | Event::Membership(_) => {}
            }
        }
        let by_key = posts
            .iter()
            .map(|&(line, post)| (post.key.as_str(), (line, post)))
            .collect();
        let end_ms = events.iter().map(Event::time_ms).max().unwrap_or(0);
        Self {
            posts,
            deliveries,
            events,
            by_key,
            end_ms,
        }
    }

    /// Fault windows: from each start to its heal (or the end of the history).
    fn windows(&self) -> Vec<Window<'a>> {
        // By step and nodes: a step on `each` node is one fault per node, all open at once
        // when they do not heal.
        let mut open: BTreeMap<(usize, &'a [String]), (usize, &'a super::Fault)> = BTreeMap::new();
        let mut windows = Vec::new();
        for (index, event) in self.events.iter().enumerate() {
            let Event::Fault(fault) = event else { continue };
            let key = (fault.step, fault.nodes.as_slice());
            match fault.phase {
                Phase::Start => {
                    open.insert(key, (index + 1, fault));
                }
                Phase::Heal => {
                    if let Some((line, start)) = open.remove(&key) {
                        windows.push(Window {
                            start,
                            line,
                            healed: Some((index + 1, fault.at_ms)),
                        });
                    }
                }
            }
        }
        windows.extend(open.into_values().map(|(line, start)| Window {
            start,
            line,
            healed: None,
        }));
        windows
    }
}

struct Window<'a> {
    start: &'a super::Fault,
    line: usize,
    /// The heal's line and time; `None` when the fault lasted to the end.
    healed: Option<(usize, u64)>,
}

impl Window<'_> {
    /// Whether a post to `node` at `at_ms` may fail because of this fault: the node is
    /// touched (or the fault is shared) and the post falls between the start and the heal
    /// plus the time the cluster has to recover.
    fn excuses(&self, node: &str, at_ms: u64, bounds: Bounds) -> bool {
        let touched = self.start.shared || self.start.nodes.iter().any(|n| n == node);
        let until = self.healed.map_or(u64::MAX, |(_, healed)| {
            healed.saturating_add(u64::try_from(bounds.convergence.as_millis()).unwrap_or(u64::MAX))
        });
        touched && (self.start.at_ms..=until).contains(&at_ms)
    }
}

fn acknowledged_stored(history: &Indexed, final_state: &FinalState) -> Vec<Violation> {
    let mut violations = Vec::new();
    // Per node, the keys stored under each id. An id alone is not enough: a node that lost
    // acknowledged rows (a power cut before they reached the disk) hands their ids out
    // again, and the id is then stored, holding another message.
    let stored: BTreeMap<&str, BTreeMap<i64, Vec<&str>>> = final_state
        .iter()
        .map(|(node, messages)| {
            let mut keys: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
            for message in messages {
                keys.entry(message.id).or_default().push(message.key.as_str());
            }
            (node.as_str(), keys)
        })
        .collect();
    for &(line, post) in &history.posts {
        let Some(id) = post.acknowledged() else { continue };
        let mut missing = Vec::new();
        let mut repeated = Vec::new();
        for (node, keys) in &stored {
            let under_id = keys.get(&id).map(Vec::as_slice).unwrap_or_default();
            match under_id.iter().filter(|key| **key == post.key).count() {
                0 => match under_id.first() {
                    Some(other) => missing.push(format!("{node} (where id {id} holds {other:?})")),
                    None => missing.push(node.to_string()),
                },
                1 => {}
                n => repeated.push(format!("{node} ×{n}")),
            }
        }
        if !missing.is_empty() {
            // With the line of the attempt whose message took the id, if one did.
            let taken_by = stored
                .values()
                .filter_map(|keys| keys.get(&id))
                .flatten()
                .find(|key| **key != post.key);
            let mut lines = vec![line];
            lines.extend(taken_by.and_then(|key| history.by_key.get(key)).map(|(line, _)| *line));
            violations.push(Violation {
                check: Check::AcknowledgedStored,
                message: format!(
                    "message {id} ({}) was acknowledged by {} and is missing on {}",
                    post.key,
                    post.node,
                    missing.join(", ")
                ),
                lines,
            });
        }
        if !repeated.is_empty() {
            violations.push(Violation {
                check: Check::AcknowledgedStored,
                message: format!(
                    "message {id} ({}) is stored more than once: {}",
                    post.key,
                    repeated.join(", ")
                ),
                lines: vec![line],
            });
        }
    }
    violations
}

fn no_phantom(history: &Indexed, final_state: &FinalState) -> Vec<Violation> {
    let mut violations = Vec::new();
    // A message matches its attempt when the attempt's key is in its body and, if the
    // attempt was acknowledged, it has the acknowledged id. A refusal (4xx) stored nothing.
    let explained = |id: i64, key: &str| match history.by_key.get(key) {
        None => Err("no post attempt carries its key".to_string()),
        Some((_, post)) => match (post.status, post.acknowledged()) {
            (Some(201), Some(acknowledged)) if acknowledged != id => {
                Err(format!("its attempt was acknowledged as message {acknowledged}"))
            }
            (Some(status), _) if (400..500).contains(&status) => Err(format!("its attempt was refused with {status}")),
            _ => Ok(()),
        },
    };
    for &(line, delivery) in &history.deliveries {
        if let Err(why) = explained(delivery.id, &delivery.key) {
            let mut lines = vec![line];
            lines.extend(history.by_key.get(delivery.key.as_str()).map(|(line, _)| *line));
            violations.push(Violation {
                check: Check::NoPhantom,
                message: format!(
                    "socket {} on {} received message {} ({:?}), but {why}",
                    delivery.socket, delivery.node, delivery.id, delivery.key
                ),
                lines,
            });
        }
    }
    for (node, stored) in final_state {
        for message in stored {
            if let Err(why) = explained(message.id, &message.key) {
                violations.push(Violation {
                    check: Check::NoPhantom,
                    message: format!("{node} stores message {} ({:?}), but {why}", message.id, message.key),
                    lines: history
                        .by_key
                        .get(message.key.as_str())
                        .map(|(line, _)| vec![*line])
                        .unwrap_or_default(),
                });
            }
        }
    }
    violations
}

fn delivery_order(history: &Indexed) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut by_socket: BTreeMap<u32, Vec<(usize, &Delivery)>> = BTreeMap::new();
    for &(line, delivery) in &history.deliveries {
        by_socket.entry(delivery.socket).or_default().push((line, delivery));
    }
    for (socket, deliveries) in by_socket {
        let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
        // Per origin node, the delivered post sent latest so far: a message whose post was
        // answered before that one was even sent was accepted first and must come first.
        let mut latest_sent: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
        for (line, delivery) in deliveries {
            if let Some(first) = seen.insert(delivery.id, line) {
                violations.push(Violation {
                    check: Check::DeliveryOrder,
                    message: format!("socket {socket} received message {} twice", delivery.id),
                    lines: vec![first, line],
                });
                continue;
            }
            let Some((post_line, post)) = history.by_key.get(delivery.key.as_str()) else {
                continue;
            };
            if post.status.is_none() {
                // No answer: when it was accepted is unknown.
                continue;
            }
            let origin = delivery.origin.as_str();
            if let Some(&(sent, earlier_line)) = latest_sent.get(origin) {
                if post.answered_ms < sent {
                    violations.push(Violation {
                        check: Check::DeliveryOrder,
                        message: format!(
                            "socket {socket} received message {} from {origin} after one whose post was sent once it had been accepted",
                            delivery.id
                        ),
                        lines: vec![earlier_line, line, *post_line],
                    });
                }
            }
            let entry = latest_sent.entry(origin).or_insert((post.sent_ms, line));
            if post.sent_ms >= entry.0 {
                *entry = (post.sent_ms, line);
            }
        }
    }
    violations
}

fn recovery(history: &Indexed, final_state: &FinalState, bounds: Bounds) -> Vec<Violation> {
    let mut violations = Vec::new();
    let convergence_ms = u64::try_from(bounds.convergence.as_millis()).unwrap_or(u64::MAX);
    // Every node the run knows of: those read at the end, posted to, or sampled.
    let mut nodes: BTreeSet<&str> = final_state.keys().map(String::as_str).collect();
    for event in history.events {
        match event {
            Event::Post(post) => nodes.insert(post.node.as_str()),
            Event::Membership(sample) => nodes.insert(sample.observer.as_str()),
            Event::Delivery(_) | Event::Fault(_) => false,
        };
    }
    for window in history.windows() {
        let Some((heal_line, healed_ms)) = window.healed else {
            continue;
        };
        let deadline = healed_ms.saturating_add(convergence_ms);
        // Every node, seen by every node as up, at some sample between the heal and the deadline.
        let mut converged: BTreeSet<&str> = BTreeSet::new();
        for event in history.events {
            let Event::Membership(sample) = event else { continue };
            let everyone_up = nodes.iter().all(|node| sample.up.iter().any(|up| up == node));
            if (healed_ms..=deadline).contains(&sample.at_ms) && everyone_up {
                converged.insert(sample.observer.as_str());
            }
        }
        let lagging: Vec<&str> = nodes.difference(&converged).copied().collect();
        if !lagging.is_empty() && deadline <= history.end_ms {
            violations.push(Violation {
                check: Check::Recovery,
                message: format!(
                    "{} healed at {:.1} s; by {:.1} s {} still did not list every node up",
                    window.start.fault,
                    healed_ms as f64 / 1000.0,
                    deadline as f64 / 1000.0,
                    lagging.join(", ")
                ),
                lines: vec![window.line, heal_line],
            });
        }
        // Delivery resumes: when a message posted after the heal was acknowledged, some
        // message posted after the heal reaches a subscriber.
        let resumed = history.deliveries.iter().any(|(_, delivery)| {
            history
                .by_key
                .get(delivery.key.as_str())
                .is_some_and(|(_, post)| post.sent_ms >= healed_ms)
        });
        let acknowledged_after = history
            .posts
            .iter()
            .any(|(_, post)| post.sent_ms >= healed_ms && post.acknowledged().is_some());
        if acknowledged_after && !resumed {
            violations.push(Violation {
                check: Check::Recovery,
                message: format!(
                    "{} healed at {:.1} s and no message acknowledged after it was delivered",
                    window.start.fault,
                    healed_ms as f64 / 1000.0
                ),
                lines: vec![window.line, heal_line],
            });
        }
    }
    violations
}

fn availability(history: &Indexed, bounds: Bounds) -> Vec<Violation> {
    let windows = history.windows();
    let mut violations = Vec::new();
    for &(line, post) in &history.posts {
        let failed = match post.status {
            None => true,
            // A 500 is `no_internal_error`'s to report, wherever it happens.
            Some(status) => status > 500,
        };
        if !failed {
            continue;
        }
        let excused = windows.iter().any(|window| {
            window.excuses(&post.node, post.sent_ms, bounds) || window.excuses(&post.node, post.answered_ms, bounds)
        });
        if !excused {
            let answer = post
                .status
                .map_or_else(|| "no answer".to_string(), |status| status.to_string());
            violations.push(Violation {
                check: Check::Availability,
                message: format!(
                    "{} answered {} ({answer}) at {:.1} s, outside every fault that touches it{}",
                    post.node,
                    post.key,
                    post.answered_ms as f64 / 1000.0,
                    post.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
                ),
                lines: vec![line],
            });
        }
    }
    violations
}

fn no_internal_error(history: &Indexed) -> Vec<Violation> {
    history
        .posts
        .iter()
        .filter(|(_, post)| post.status == Some(500))
        .map(|&(line, post)| Violation {
            check: Check::NoInternalError,
            message: format!(
                "{} answered 500 to {}{}",
                post.node,
                post.key,
                post.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            ),
            lines: vec![line],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{Fault, Membership, Stored};
    use super::*;

    const NODES: [&str; 2] = ["n1", "n2"];
    const BOUNDS: Bounds = Bounds {
        convergence: Duration::from_secs(7),
    };

    fn post(node: &str, key: &str, sent_ms: u64, answered_ms: u64, status: Option<u16>, id: Option<i64>) -> Event {
        Event::Post(Post {
            node: node.into(),
            key: key.into(),
            sent_ms,
            answered_ms,
            status,
            id,
            error: None,
        })
    }

    fn delivered(socket: u32, id: i64, key: &str, origin: &str, received_ms: u64) -> Event {
        Event::Delivery(Delivery {
            socket,
            node: "n2".into(),
            id,
            key: key.into(),
            origin: origin.into(),
            received_ms,
        })
    }

    fn fault(phase: Phase, at_ms: u64, nodes: &[&str], shared: bool) -> Event {
        Event::Fault(Fault {
            step: 0,
            fault: "cut-off".into(),
            phase,
            at_ms,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            shared,
        })
    }

    fn everyone_up(at_ms: u64) -> Vec<Event> {
        NODES
            .iter()
            .map(|observer| {
                Event::Membership(Membership {
                    observer: observer.to_string(),
                    at_ms,
                    up: NODES.iter().map(|n| n.to_string()).collect(),
                })
            })
            .collect()
    }

    fn stored(ids: &[(i64, &str, &str)]) -> FinalState {
        NODES
            .iter()
            .map(|node| {
                let messages = ids
                    .iter()
                    .map(|&(id, key, origin)| Stored {
                        id,
                        key: key.into(),
                        origin: origin.into(),
                    })
                    .collect();
                (node.to_string(), messages)
            })
            .collect()
    }

    /// Two posts on n1 one after the other, both delivered in order on two sockets, one on n2.
    fn healthy() -> (Vec<Event>, FinalState) {
        let history = vec![
            post("n1", "a", 0, 10, Some(201), Some(1)),
            post("n1", "b", 20, 30, Some(201), Some(2)),
            post("n2", "c", 25, 35, Some(201), Some(3)),
            delivered(1, 1, "a", "n1", 12),
            delivered(1, 2, "b", "n1", 32),
            delivered(1, 3, "c", "n2", 36),
            delivered(2, 1, "a", "n1", 13),
            delivered(2, 3, "c", "n2", 36),
            delivered(2, 2, "b", "n1", 37),
        ];
        (history, stored(&[(1, "a", "n1"), (2, "b", "n1"), (3, "c", "n2")]))
    }

    fn checks_of(violations: &[Violation]) -> Vec<Check> {
        violations.iter().map(|v| v.check).collect()
    }

    #[test]
    fn a_healthy_history_passes() {
        let (history, state) = healthy();
        assert_eq!(check(&history, &state, BOUNDS), Vec::new());
    }

    #[test]
    fn a_lost_acknowledged_message_is_caught_on_the_node_that_lacks_it() {
        let (history, mut state) = healthy();
        state.get_mut("n2").unwrap().retain(|m| m.id != 2);
        let violations = check(&history, &state, BOUNDS);
        assert_eq!(checks_of(&violations), [Check::AcknowledgedStored]);
        assert!(violations[0].message.contains("message 2 (b)"), "{violations:?}");
        assert!(violations[0].message.ends_with("missing on n2"), "{violations:?}");
        assert_eq!(violations[0].lines, [2]);
    }

    #[test]
    fn an_acknowledged_message_whose_id_was_handed_out_again_is_caught() {
        // n1 lost message 2 (b) and, restarted, gave id 2 to the next post (d): id 2 is
        // stored, but not the message that was acknowledged as 2.
        let (mut history, _) = healthy();
        history.push(post("n1", "d", 50, 60, Some(201), Some(2)));
        let state = stored(&[(1, "a", "n1"), (2, "d", "n1"), (3, "c", "n2")]);
        let violations = check(&history, &state, BOUNDS);
        assert_eq!(checks_of(&violations), [Check::AcknowledgedStored]);
        assert!(
            violations[0].message.contains("message 2 (b)") && violations[0].message.contains("id 2 holds \"d\""),
            "{violations:?}"
        );
        // The lost post's line, then the line of the post that took its id.
        assert_eq!(violations[0].lines, [2, 10]);
    }

    #[test]
    fn a_message_stored_twice_is_caught() {
        let (history, mut state) = healthy();
        let again = state["n1"][0].clone();
        state.get_mut("n1").unwrap().push(again);
        let violations = check(&history, &state, BOUNDS);
        assert_eq!(checks_of(&violations), [Check::AcknowledgedStored]);
        assert!(violations[0].message.contains("n1 ×2"), "{violations:?}");
    }

    #[test]
    fn a_duplicate_delivery_is_caught_with_both_lines() {
        let (mut history, state) = healthy();
        history.push(delivered(1, 3, "c", "n2", 40));
        let violations = check(&history, &state, BOUNDS);
        assert_eq!(checks_of(&violations), [Check::DeliveryOrder]);
        assert_eq!(violations[0].lines, [6, 10]);
    }

    #[test]
    fn a_reordered_delivery_is_caught() {
        let (mut history, state) = healthy();
        // Socket 2 gets b before a, though b was sent after a was acknowledged.
        history[6] = delivered(2, 2, "b", "n1", 31);
        history[8] = delivered(2, 1, "a", "n1", 37);
        let violations = check(&history, &state, BOUNDS);
        assert_eq!(checks_of(&violations), [Check::DeliveryOrder]);
        assert!(violations[0].message.contains("message 1 from n1"), "{violations:?}");
    }

    #[test]
    fn concurrent_posts_may_arrive_in_either_order() {
        let history = vec![
            post("n1", "a", 0, 10, Some(201), Some(1)),
            post("n1", "b", 5, 12, Some(201), Some(2)),
            delivered(1, 2, "b", "n1", 13),
            delivered(1, 1, "a", "n1", 14),
        ];
        let state = stored(&[(1, "a", "n1"), (2, "b", "n1")]);
        assert_eq!(check(&history, &state, BOUNDS), Vec::new());
    }

    #[test]
    fn a_phantom_delivery_and_a_phantom_row_are_caught() {
        let (mut history, mut state) = healthy();
        history.push(delivered(1, 9, "z", "n1", 40));
        state.get_mut("n1").unwrap().push(Stored {
            id: 9,
            key: "z".into(),
            origin: "n1".into(),
        });
        let violations = check(&history, &state, BOUNDS);
        assert_eq!(checks_of(&violations), [Check::NoPhantom, Check::NoPhantom]);
        assert!(violations[0].message.contains("no post attempt carries its key"));
        assert!(violations[1].message.starts_with("n1 stores message 9"));
    }

    #[test]
    fn a_refused_post_that_was_stored_is_a_phantom() {
        let mut history = vec![post("n1", "a", 0, 10, Some(422), None)];
        history.push(delivered(1, 1, "a", "n1", 11));
        let violations = check(&history, &FinalState::new(), BOUNDS);
        assert_eq!(checks_of(&violations), [Check::NoPhantom]);
        assert!(violations[0].message.contains("refused with 422"));
    }

    #[test]
    fn an_unanswered_post_may_or_may_not_be_stored() {
        let history = vec![
            fault(Phase::Start, 0, &["n1"], false),
            post("n1", "a", 1, 5_000, None, None),
            post("n1", "b", 2, 5_000, None, None),
            delivered(1, 1, "a", "n1", 11),
        ];
        let state = stored(&[(1, "a", "n1")]);
        assert_eq!(check(&history, &state, BOUNDS), Vec::new());
    }

    #[test]
    fn membership_that_never_converges_after_a_heal_is_caught() {
        let mut history = vec![
            fault(Phase::Start, 0, &["n2"], false),
            post("n1", "a", 100, 110, Some(201), Some(1)),
            fault(Phase::Heal, 1_000, &["n2"], false),
            post("n1", "b", 1_100, 1_110, Some(201), Some(2)),
            delivered(1, 2, "b", "n1", 1_120),
        ];
        // n1 sees everyone, n2 never does; the history goes on past the deadline.
        history.push(Event::Membership(Membership {
            observer: "n1".into(),
            at_ms: 2_000,
            up: vec!["n1".into(), "n2".into()],
        }));
        history.push(Event::Membership(Membership {
            observer: "n2".into(),
            at_ms: 9_000,
            up: vec!["n2".into()],
        }));
        let state = stored(&[(1, "a", "n1"), (2, "b", "n1")]);
        let violations = check(&history, &state, BOUNDS);
        assert_eq!(checks_of(&violations), [Check::Recovery]);
        assert!(
            violations[0].message.ends_with("n2 still did not list every node up"),
            "{violations:?}"
        );
        assert_eq!(violations[0].lines, [1, 3]);

        // The same history with n2 converging in time passes.
        let mut converged = history.clone();
        converged.extend(everyone_up(3_000));
        assert_eq!(check(&converged, &state, BOUNDS), Vec::new());
    }

    #[test]
    fn delivery_that_never_resumes_after_a_heal_is_caught() {
        let mut history = vec![
            fault(Phase::Start, 0, &["n2"], false),
            fault(Phase::Heal, 1_000, &["n2"], false),
            post("n1", "a", 1_100, 1_110, Some(201), Some(1)),
        ];
        history.extend(everyone_up(2_000));
        let state = stored(&[(1, "a", "n1")]);
        let violations = check(&history, &state, BOUNDS);
        assert_eq!(checks_of(&violations), [Check::Recovery]);
        assert!(violations[0]
            .message
            .contains("no message acknowledged after it was delivered"));
    }

    #[test]
    fn errors_on_an_untouched_node_are_unavailability_and_on_a_touched_one_are_not() {
        let mut history = vec![
            fault(Phase::Start, 0, &["n2"], false),
            post("n2", "a", 10, 20, None, None),
            post("n1", "b", 10, 20, Some(503), None),
            fault(Phase::Heal, 1_000, &["n2"], false),
        ];
        history.extend(everyone_up(1_500));
        let violations = check(&history, &FinalState::new(), BOUNDS);
        assert_eq!(checks_of(&violations), [Check::Availability]);
        assert!(
            violations[0].message.starts_with("n1 answered b (503)"),
            "{violations:?}"
        );
        assert_eq!(violations[0].lines, [3]);
    }

    #[test]
    fn one_step_on_each_node_keeps_a_fault_window_per_node() {
        // Step 0 on `each` node, never healed: n1's window stays open after n2's starts.
        let history = vec![
            fault(Phase::Start, 0, &["n1"], false),
            fault(Phase::Start, 2_000, &["n2"], false),
            post("n1", "a", 2_500, 2_600, None, None),
            post("n2", "b", 2_500, 2_600, None, None),
        ];
        assert_eq!(check(&history, &FinalState::new(), BOUNDS), Vec::new());
    }

    #[test]
    fn shared_dependency_503s_are_excused_until_the_heal_and_its_grace_only() {
        let mut history = vec![
            fault(Phase::Start, 0, &[], true),
            post("n1", "a", 10, 20, Some(503), None),
            fault(Phase::Heal, 1_000, &[], true),
            post("n1", "b", 2_000, 2_010, Some(503), None),
            post("n1", "c", 9_000, 9_010, Some(503), None),
        ];
        history.extend(everyone_up(1_500));
        let violations = check(&history, &FinalState::new(), BOUNDS);
        assert_eq!(checks_of(&violations), [Check::Availability]);
        assert_eq!(violations[0].lines, [5]);
    }

    #[test]
    fn a_500_is_caught_even_inside_a_fault() {
        let history = vec![
            fault(Phase::Start, 0, &["n1"], false),
            post("n1", "a", 10, 20, Some(500), None),
        ];
        let violations = check(&history, &FinalState::new(), BOUNDS);
        assert_eq!(checks_of(&violations), [Check::NoInternalError]);
    }
}
