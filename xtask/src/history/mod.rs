//! What happened during a fault scenario, as the clients saw it: every post attempt, every
//! delivery, every fault step and every membership sample, one JSON object per line of
//! `history.jsonl`; and the checker that reads a verdict from it and from the nodes' final
//! state (`check`).
//!
//! Times are milliseconds since the scenario started, from one monotonic clock on this
//! host: the checker compares them with each other, never with the nodes' clocks.

pub(crate) mod check;
pub(crate) mod stats;
pub(crate) mod timeline;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Post(Post),
    Delivery(Delivery),
    Fault(Fault),
    Membership(Membership),
}

impl Event {
    /// When it happened, in milliseconds since the scenario started: a post when its
    /// answer came back.
    pub(crate) fn time_ms(&self) -> u64 {
        match self {
            Event::Post(post) => post.answered_ms,
            Event::Delivery(delivery) => delivery.received_ms,
            Event::Fault(fault) => fault.at_ms,
            Event::Membership(sample) => sample.at_ms,
        }
    }
}

/// A post attempt, recorded when its answer (or its failure) came back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Post {
    /// The node the post was sent to.
    pub node: String,
    /// Unique per attempt and carried in the message's body, so that a message the server
    /// stored or delivered can be traced to its attempt even when no answer came back.
    pub key: String,
    pub sent_ms: u64,
    pub answered_ms: u64,
    /// The HTTP status; `None` when no answer came (refused, reset, timed out).
    pub status: Option<u16>,
    /// The message id of a 201.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// Why no answer came, or the error body of a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Post {
    pub fn acknowledged(&self) -> Option<i64> {
        self.id.filter(|_| self.status == Some(201))
    }
}

/// A message as a WebSocket subscriber received it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The subscriber, numbered across the run.
    pub socket: u32,
    /// The node the socket is connected to.
    pub node: String,
    pub id: i64,
    /// The key read back from the message's body (empty when the body carries none).
    pub key: String,
    /// The node that accepted the message (its `node_id`).
    pub origin: String,
    pub received_ms: u64,
}

/// A fault step starting or healing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// The step's index in the scenario's timeline.
    pub step: usize,
    pub fault: String,
    pub phase: Phase,
    pub at_ms: u64,
    /// The nodes the fault acts on; empty for a fault on a shared dependency only.
    pub nodes: Vec<String>,
    /// The fault acts on something every node depends on (NATS, PostgreSQL).
    pub shared: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Start,
    Heal,
}

/// Which nodes one node listed as `up` at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    pub observer: String,
    pub at_ms: u64,
    pub up: Vec<String>,
}

/// A message as a node lists it at the end of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub id: i64,
    pub key: String,
    pub origin: String,
}

/// What every node lists at the end of the run, by node.
pub(crate) type FinalState = BTreeMap<String, Vec<Stored>>;

/// The key a post attempt carries in its body: `[key] text`.
pub(crate) fn body_with_key(key: &str, text: &str) -> String {
    format!("[{key}] {text}")
}

/// The key in a message body written by [`body_with_key`]; empty when there is none.
pub(crate) fn key_of_body(body: &str) -> String {
    body.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .map(|(key, _)| key.to_string())
        .unwrap_or_default()
}

/// Appends events to `history.jsonl` as they happen, from any thread, so that a run cut
/// short still leaves what it saw.
pub(crate) struct Recorder {
    started: Instant,
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
    /// The first message acknowledged, once one is: the one the checker's own test deletes.
    first_acknowledged: std::sync::OnceLock<i64>,
}

impl Recorder {
    pub(crate) fn create(path: &Path, started: Instant) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            started,
            path: path.to_path_buf(),
            out: Mutex::new(BufWriter::new(file)),
            first_acknowledged: std::sync::OnceLock::new(),
        })
    }

    /// Milliseconds since the scenario started.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn record(&self, event: &Event) -> Result<()> {
        if let Event::Post(post) = event {
            if let Some(id) = post.acknowledged() {
                let _ = self.first_acknowledged.set(id);
            }
        }
        let mut out = self.out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        serde_json::to_writer(&mut *out, event)?;
        out.write_all(b"\n")?;
        Ok(())
    }

    /// Flushes what was recorded and reads it back.
    pub(crate) fn finish(&self) -> Result<Vec<Event>> {
        self.out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .flush()
            .with_context(|| format!("writing {}", self.path.display()))?;
        read(&self.path)
    }

    /// The first message recorded as acknowledged (201), if any yet.
    pub(crate) fn first_acknowledged(&self) -> Option<i64> {
        self.first_acknowledged.get().copied()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a `history.jsonl`; line N of the file is event N - 1.
pub(crate) fn read(path: &Path) -> Result<Vec<Event>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    BufReader::new(file)
        .lines()
        .enumerate()
        .map(|(index, line)| {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not a history event", path.display(), index + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_the_body() {
        let body = body_with_key("n1-w2-17", "hello");
        assert_eq!(key_of_body(&body), "n1-w2-17");
        assert_eq!(key_of_body("no key here"), "");
        assert_eq!(key_of_body("[unterminated"), "");
    }

    #[test]
    fn a_recorded_history_reads_back_line_for_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let recorder = Recorder::create(&path, Instant::now()).unwrap();
        let events = vec![
            Event::Post(Post {
                node: "node-1".into(),
                key: "k1".into(),
                sent_ms: 1,
                answered_ms: 3,
                status: Some(201),
                id: Some(7),
                error: None,
            }),
            Event::Fault(Fault {
                step: 0,
                fault: "cut-off".into(),
                phase: Phase::Start,
                at_ms: 5,
                nodes: vec!["node-2".into()],
                shared: false,
            }),
        ];
        for event in &events {
            recorder.record(event).unwrap();
        }
        assert_eq!(recorder.finish().unwrap(), events);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines()
                .next()
                .unwrap()
                .starts_with(r#"{"type":"post","node":"node-1""#),
            "{text}"
        );
    }
}
