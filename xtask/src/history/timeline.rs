//! The picture of a scenario run: an SVG timeline of acknowledged posts and errors per
//! second (above) and delivery latency (below), with each fault window shaded and named.
//! Drawn with the `svg` crate's document builder: boxes, lines and text, no font metrics.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use svg::node::element::{Line, Polyline, Rectangle, Text};
use svg::Document;

use super::stats::Window;
use super::Event;

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
/// The two panels: top and height of each.
const POSTS_PANEL: (f64, f64) = (40.0, 170.0);
const LATENCY_PANEL: (f64, f64) = (250.0, 130.0);
const HEIGHT: f64 = 420.0;

/// Per second of the run: posts acknowledged, posts that failed (5xx or no answer), and
/// the median post→delivery latency of the messages delivered in that second.
#[derive(Debug, Default, Clone, PartialEq)]
struct Second {
    acknowledged: u32,
    failed: u32,
    latencies: Vec<u64>,
}

fn per_second(history: &[Event]) -> BTreeMap<u64, Second> {
    let mut seconds: BTreeMap<u64, Second> = BTreeMap::new();
    let mut sent: BTreeMap<&str, u64> = BTreeMap::new();
    for event in history {
        if let Event::Post(post) = event {
            let second = seconds.entry(post.sent_ms / 1000).or_default();
            match post.status {
                Some(201) => {
                    second.acknowledged += 1;
                    sent.insert(&post.key, post.sent_ms);
                }
                Some(status) if status < 500 => {}
                _ => second.failed += 1,
            }
        }
    }
    for event in history {
        if let Event::Delivery(delivery) = event {
            if let Some(sent) = sent.get(delivery.key.as_str()) {
                seconds
                    .entry(delivery.received_ms / 1000)
                    .or_default()
                    .latencies
                    .push(delivery.received_ms.saturating_sub(*sent));
            }
        }
    }
    seconds
}

/// Writes the timeline of `history` (with its fault `windows`) to `path`.
pub(crate) fn write(history: &[Event], windows: &[Window], title: &str, path: &Path) -> Result<()> {
    let seconds = per_second(history);
    let span = seconds.keys().next_back().map_or(1, |last| last + 1).max(1) as f64;
    let x = |second: f64| LEFT + second / span * (WIDTH - LEFT - RIGHT);
    let most_posts = seconds
        .values()
        .map(|s| s.acknowledged.max(s.failed))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let medians: BTreeMap<u64, f64> = seconds
        .iter()
        .filter(|(_, s)| !s.latencies.is_empty())
        .map(|(at, s)| {
            let mut latencies = s.latencies.clone();
            latencies.sort_unstable();
            (*at, latencies[latencies.len() / 2] as f64)
        })
        .collect();
    let slowest = medians.values().copied().fold(1.0, f64::max);

    let mut document = Document::new()
        .set("viewBox", (0, 0, WIDTH, HEIGHT))
        .set("width", WIDTH)
        .set("height", HEIGHT)
        .set("font-family", "sans-serif")
        .set("font-size", 11)
        .add(
            Rectangle::new()
                .set("width", WIDTH)
                .set("height", HEIGHT)
                .set("fill", "white"),
        )
        .add(text(LEFT, 20.0, title).set("font-size", 14));

    // Fault windows across both panels, named at the top.
    for window in windows {
        let start = x(window.started_s);
        let end = x(window.healed_s.unwrap_or(window.started_s + 0.3).min(span));
        document = document
            .add(
                Rectangle::new()
                    .set("x", start)
                    .set("y", POSTS_PANEL.0)
                    .set("width", (end - start).max(2.0))
                    .set("height", LATENCY_PANEL.0 + LATENCY_PANEL.1 - POSTS_PANEL.0)
                    .set("fill", "#f4c7c3")
                    .set("fill-opacity", 0.6),
            )
            .add(text(
                start + 2.0,
                POSTS_PANEL.0 + 12.0,
                &format!("{} {}", window.fault, window.nodes.join(",")),
            ));
    }

    document = panel(document, POSTS_PANEL, "posts/s", most_posts);
    document = panel(document, LATENCY_PANEL, "delivery ms (median)", slowest);
    let y_posts = |count: f64| POSTS_PANEL.0 + POSTS_PANEL.1 * (1.0 - count / most_posts);
    let y_latency = |ms: f64| LATENCY_PANEL.0 + LATENCY_PANEL.1 * (1.0 - ms / slowest);
    let acknowledged: Vec<(f64, f64)> = seconds
        .iter()
        .map(|(at, s)| (x(*at as f64 + 0.5), y_posts(f64::from(s.acknowledged))))
        .collect();
    let failed: Vec<(f64, f64)> = seconds
        .iter()
        .map(|(at, s)| (x(*at as f64 + 0.5), y_posts(f64::from(s.failed))))
        .collect();
    let latency: Vec<(f64, f64)> = medians
        .iter()
        .map(|(at, ms)| (x(*at as f64 + 0.5), y_latency(*ms)))
        .collect();
    document = document
        .add(polyline(&acknowledged, "#2b6cb0"))
        .add(polyline(&failed, "#c53030"))
        .add(polyline(&latency, "#2f855a"))
        .add(text(WIDTH - 260.0, 20.0, "acknowledged").set("fill", "#2b6cb0"))
        .add(text(WIDTH - 170.0, 20.0, "5xx / no answer").set("fill", "#c53030"))
        .add(text(WIDTH - 70.0, 20.0, "latency").set("fill", "#2f855a"));
    // The time axis, every ten seconds.
    let bottom = LATENCY_PANEL.0 + LATENCY_PANEL.1;
    let mut tick = 0.0;
    while tick <= span {
        document = document.add(text(x(tick) - 6.0, bottom + 16.0, &format!("{tick:.0}s")));
        tick += 10.0;
    }
    svg::save(path, &document).with_context(|| format!("writing {}", path.display()))
}

fn panel(document: Document, (top, height): (f64, f64), label: &str, max: f64) -> Document {
    document
        .add(
            Line::new()
                .set("x1", LEFT)
                .set("y1", top + height)
                .set("x2", WIDTH - RIGHT)
                .set("y2", top + height)
                .set("stroke", "#555"),
        )
        .add(
            Line::new()
                .set("x1", LEFT)
                .set("y1", top)
                .set("x2", LEFT)
                .set("y2", top + height)
                .set("stroke", "#555"),
        )
        .add(text(4.0, top + 10.0, &format!("{max:.0}")))
        .add(text(4.0, top + height, "0"))
        .add(text(4.0, top + height / 2.0, label).set("font-size", 9))
}

fn text(x: f64, y: f64, content: &str) -> Text {
    Text::new(content).set("x", x).set("y", y)
}

fn polyline(points: &[(f64, f64)], colour: &str) -> Polyline {
    let points: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    Polyline::new()
        .set("points", points.join(" "))
        .set("fill", "none")
        .set("stroke", colour)
        .set("stroke-width", 1.5)
}

#[cfg(test)]
mod tests {
    use super::super::{Delivery, Post};
    use super::*;

    fn post(key: &str, sent_ms: u64, status: Option<u16>) -> Event {
        Event::Post(Post {
            node: "n1".into(),
            key: key.into(),
            sent_ms,
            answered_ms: sent_ms + 5,
            status,
            id: Some(1),
            error: None,
        })
    }

    #[test]
    fn seconds_count_acknowledged_and_failed_posts_and_delivery_latency() {
        let history = vec![
            post("a", 100, Some(201)),
            post("b", 900, Some(503)),
            post("c", 1_100, None),
            post("d", 1_200, Some(422)),
            Event::Delivery(Delivery {
                socket: 0,
                node: "n1".into(),
                id: 1,
                key: "a".into(),
                origin: "n1".into(),
                received_ms: 1_050,
            }),
        ];
        let seconds = per_second(&history);
        assert_eq!((seconds[&0].acknowledged, seconds[&0].failed), (1, 1));
        assert_eq!((seconds[&1].acknowledged, seconds[&1].failed), (0, 1));
        assert_eq!(seconds[&1].latencies, [950]);
    }

    #[test]
    fn the_picture_shades_each_fault_window_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timeline.svg");
        let history = vec![post("a", 100, Some(201)), post("b", 5_000, Some(201))];
        let window = Window {
            step: 0,
            fault: "cut-off".into(),
            nodes: vec!["node-1".into()],
            started_s: 1.0,
            healed_s: Some(3.0),
            posts: Default::default(),
            detected_after_s: None,
            recovered_after_s: None,
        };
        write(&history, &[window], "partition", &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("cut-off node-1"), "{svg}");
        assert_eq!(svg.matches("fill=\"#f4c7c3\"").count(), 1, "one shaded window");
        assert_eq!(svg.matches("<polyline").count(), 3);
    }
}
