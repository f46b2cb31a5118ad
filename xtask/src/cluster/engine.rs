//! Runs a planned scenario on a backend: the workload for the scenario's duration, each
//! fault started and healed at its time, then the nodes' final state read and the checker's
//! verdict. One engine, two backends: what differs between processes and VMs is only how
//! a fault is made ([`Backend`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::workload::{self, Client};
use super::{Member, Verifier};
use crate::history::check::{self, Bounds, Check, Violation};
use crate::history::{stats, timeline, Event, Fault, Phase, Recorder};
use crate::report::progress::{Progress, Task};
use crate::scenario::{Capabilities, FaultKind, Planned, Scenario, Schedule, TargetKind, Workload};
use crate::system::http;

/// How long a cluster may take to deliver across nodes (once its members agree): a cluster
/// put back to a snapshot finds its dead NATS connections first. The server's client pings
/// every 3 s (about 9 s to find one); builds from before that used async-nats' default
/// minute (up to three), and a canary rolls back to such builds.
const SERVING_TIMEOUT: Duration = Duration::from_secs(200);
/// How long subscribers keep listening after the posters stop, for the last deliveries.
const SETTLE: Duration = Duration::from_secs(2);

/// A cluster the engine can fault: processes (cluster-local) or VMs (qemu-cluster).
pub(crate) trait Backend {
    fn capabilities(&self) -> Capabilities;
    /// The nodes as clients reach them; the addresses stay the same across restarts.
    fn members(&self) -> Vec<Member>;
    /// Makes `fault` happen; the detail says what was done, for the report.
    fn start(&mut self, fault: &Planned) -> Result<String>;
    /// Undoes a lasting fault (restarts, resumes, restores, frees).
    fn heal(&mut self, fault: &Planned) -> Result<String>;
    /// Deletes message `id` behind the cluster's back: the checker's own test.
    fn drop_message(&mut self, id: i64) -> Result<String>;
}

/// One fault as it ran: planned and actual times, in seconds from the start.
#[derive(Debug, Clone, Serialize)]
pub struct Executed {
    pub step: usize,
    pub fault: FaultKind,
    pub nodes: Vec<String>,
    pub started_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healed_s: Option<f64>,
    pub detail: String,
}

/// What a scenario run found.
pub struct Run {
    pub schedule: Schedule,
    pub executed: Vec<Executed>,
    pub history: Vec<Event>,
    pub violations: Vec<Violation>,
    pub history_path: PathBuf,
    /// The SVG timeline beside the history.
    pub timeline_path: PathBuf,
    /// The build each node said it ran (`/health`), before the faults and after.
    pub versions: Vec<NodeVersion>,
    /// After each upgrade that left two builds serving side by side: whether they
    /// interoperate.
    pub interop: Vec<Interop>,
}

/// Messages posted on a node of the old build reaching a subscriber on a node of the new
/// one, and back, exactly once: checked after an upgrade, while both builds serve.
#[derive(Debug, Clone, Serialize)]
pub struct Interop {
    pub after_step: usize,
    /// The old build's node, then the new build's.
    pub nodes: [String; 2],
    pub versions: [String; 2],
    pub ok: bool,
    pub detail: String,
}

/// One node's build before and after a run: different after an upgrade, which kept it
/// out for `out_s` (stopped until serving again).
#[derive(Debug, Clone, Serialize)]
pub struct NodeVersion {
    pub node_id: String,
    pub before: String,
    pub after: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_s: Option<f64>,
}

/// Runs `scenario` on a booted cluster: checks that its nodes are one cluster, makes the
/// workload's channel, plans the schedule for `seed` on the backend, and runs it, recording
/// into a run directory of its own under `runs_dir`.
pub(crate) fn run_scenario(
    scenario: &Scenario,
    seed: u64,
    backend: &mut dyn Backend,
    lease: Duration,
    runs_dir: &Path,
    progress: &Progress,
) -> Result<Run> {
    let members = backend.members();
    let schedule = scenario.plan(&backend.capabilities(), seed)?;
    let task = progress.task(&format!("scenario {}", scenario.name));
    let first = members.first().context("a cluster of no node")?;
    let verifier = Verifier::new(first)?;
    task.step("membership and delivery");
    until_serving(&verifier, &members)?;
    let channel = format!("scenario-{}-{}", scenario.name, std::process::id());
    let client = verifier.new_channel(first, &channel)?;
    let bounds = Bounds {
        convergence: lease + Duration::from_secs(2),
    };
    let history = run_dir(runs_dir, &scenario.name)?.join("history.jsonl");
    let before = versions(&members);
    let observers = Observers {
        verifier: &verifier,
        bounds,
        channel: &channel,
    };
    let mut run = run(scenario, schedule, backend, client, &observers, &history, &task)?;
    run.versions = members
        .iter()
        .zip(before)
        .zip(versions(&members))
        .map(|((member, before), after)| NodeVersion {
            out_s: upgrade_outage(&run.executed, &member.id),
            node_id: member.id.clone(),
            before,
            after,
        })
        .collect();
    task.finish(if run.violations.is_empty() {
        "every check held".to_string()
    } else {
        format!("{} violation(s)", run.violations.len())
    });
    Ok(run)
}

/// Waits until every node lists every node up and a message posted on each reaches
/// every node: where every run, and every stretch after a restore, starts from.
fn until_serving(verifier: &Verifier, members: &[Member]) -> Result<String> {
    let started = Instant::now();
    verifier.membership(members).context("membership")?;
    let listed = started.elapsed();
    verifier
        .await_delivery(members, SERVING_TIMEOUT)
        .context("delivery across nodes")?;
    Ok(format!(
        "every node listed every node up {:.1} s later, and delivered across nodes {:.1} s later",
        listed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ))
}

/// Who watches a run: the verifier's own probes and channels, and the checker's bounds.
struct Observers<'a> {
    verifier: &'a Verifier,
    bounds: Bounds,
    /// The workload's channel name; a later segment's channel adds its number.
    channel: &'a str,
}

/// One stretch of a run, with a history of its own: the workload on a channel of its own,
/// recorded from its start until the run ends or a `restore` puts the cluster back in
/// time. Whatever the cluster acknowledged since the snapshot goes with the restore, so
/// each stretch is checked on its own, as it stood.
struct Segment {
    number: usize,
    client: Client,
    recorder: Arc<Recorder>,
    running: workload::Running,
}

impl Segment {
    fn start(
        number: usize,
        members: &[Member],
        client: Client,
        workload: &Workload,
        first_history: &Path,
        started: Instant,
    ) -> Result<Self> {
        let path = match number {
            1 => first_history.to_path_buf(),
            _ => first_history.with_file_name(format!("history-{number}.jsonl")),
        };
        let recorder = Arc::new(Recorder::create(&path, started)?);
        let running = workload::start(members, &client, workload, &recorder)?;
        Ok(Self {
            number,
            client,
            recorder,
            running,
        })
    }

    /// Stops the workload (posters first; subscribers get the last deliveries), reads the
    /// nodes' final state, and checks the segment's history against it.
    fn finish(self, members: &[Member], bounds: Bounds) -> Result<(Vec<Event>, Vec<Violation>)> {
        std::thread::sleep(SETTLE);
        self.running.stop();
        let listing = workload::final_state(members, &self.client);
        let history = self.recorder.finish()?;
        let mut violations = check::check(&history, &listing.state, bounds);
        violations.extend(listing.unreadable.into_iter().map(|(node, why)| Violation {
            check: Check::AcknowledgedStored,
            message: format!("{node} could not list the workload's messages at the end: {why}"),
            lines: Vec::new(),
        }));
        if self.number > 1 {
            let file = self.recorder.path().file_name().unwrap_or_default().to_string_lossy();
            for violation in &mut violations {
                violation.message = format!("{} ({file})", violation.message);
            }
        }
        Ok((history, violations))
    }
}

/// Runs `schedule` with `scenario`'s workload on `backend`, recording into `history_path`
/// (and, after each restore, beside it).
fn run(
    scenario: &Scenario,
    schedule: Schedule,
    backend: &mut dyn Backend,
    client: Client,
    observers: &Observers,
    history_path: &Path,
    task: &Task,
) -> Result<Run> {
    let Observers {
        verifier,
        bounds,
        channel,
    } = *observers;
    let members = backend.members();
    let started = Instant::now();
    let mut segment = Segment::start(1, &members, client, &scenario.workload, history_path, started)?;
    let mut history: Vec<Event> = Vec::new();
    let mut violations: Vec<Violation> = Vec::new();
    let mut executed: Vec<Executed> = Vec::new();
    let mut interop: Vec<Interop> = Vec::new();
    let mut actions = actions_of(&schedule);
    actions.sort_by_key(|action| (action.at, action.heal));
    // How long restores took beyond their planned instant: the rest of the timeline, and
    // the workload's end, move by as much, so that each fork runs its steps as written.
    let mut restores_took = Duration::ZERO;
    for action in actions {
        sleep_until(started + action.at + restores_took);
        let fault = &schedule.faults[action.index];
        let names = fault
            .nodes
            .iter()
            .filter_map(|n| members.get(n - 1).map(|m| m.id.clone()))
            .collect::<Vec<_>>();
        if fault.fault == FaultKind::Restore {
            task.step("restore: the stretch since the start (or the last restore) is checked as it stood");
            let number = segment.number + 1;
            let (events, found) = segment.finish(&members, bounds)?;
            history.extend(events);
            violations.extend(found);
            let started_s = started.elapsed().as_secs_f64();
            let put_back = backend
                .start(fault)
                .with_context(|| format!("step {} ({})", fault.step, fault.fault))?;
            // The next stretch starts, as the first did, from a cluster that serves: put
            // back, every node has to reach PostgreSQL and NATS again first.
            let detail = format!(
                "{put_back}; {}",
                until_serving(verifier, &members).context("after the restore")?
            );
            restores_took = started.elapsed().saturating_sub(action.at);
            let client = verifier.new_channel(&members[0], &format!("{channel}-{number}"))?;
            segment = Segment::start(number, &members, client, &scenario.workload, history_path, started)?;
            record_instant(&segment.recorder, fault, &names)?;
            executed.push(Executed {
                step: fault.step,
                fault: fault.fault,
                nodes: names,
                started_s,
                healed_s: Some(started.elapsed().as_secs_f64()),
                detail,
            });
            continue;
        }
        let recorder = &segment.recorder;
        let started_ms = recorder.now_ms();
        let detail = if action.heal {
            task.step(format!("healing {} on {}", fault.fault, target_of(fault, &names)));
            backend.heal(fault)
        } else {
            task.step(format!("{} on {}", fault.fault, target_of(fault, &names)));
            if fault.fault == FaultKind::DropAcknowledged {
                let id = recorder
                    .first_acknowledged()
                    .context("no message was acknowledged yet to drop")?;
                backend.drop_message(id)
            } else {
                backend.start(fault)
            }
        }
        .with_context(|| format!("step {} ({})", fault.step, fault.fault))?;
        // A fault is on from the moment it is made; a heal is done when the node or service
        // is back (a VM restarted as itself takes its boot to be), and convergence and
        // recovery are counted from then.
        let at_ms = if action.heal { recorder.now_ms() } else { started_ms };
        recorder.record(&Event::Fault(Fault {
            step: fault.step,
            fault: fault.fault.name().into(),
            phase: if action.heal { Phase::Heal } else { Phase::Start },
            at_ms,
            nodes: names.clone(),
            shared: fault.shared(),
        }))?;
        let seconds = at_ms as f64 / 1000.0;
        if action.heal {
            if let Some(entry) = executed
                .iter_mut()
                .rev()
                .find(|e| e.step == fault.step && e.nodes == names)
            {
                entry.healed_s = Some(seconds);
                entry.detail = format!("{}; {detail}", entry.detail);
            }
        } else {
            // An upgrade is over when its node serves again from the new build (a snapshot
            // when every VM runs again): recorded as a heal, so that the nodes are excused
            // only while it was made, and must then be listed up again like any healed node.
            let healed_s = if fault.fault.over_when_made() {
                let back_ms = recorder.now_ms();
                recorder.record(&Event::Fault(Fault {
                    step: fault.step,
                    fault: fault.fault.name().into(),
                    phase: Phase::Heal,
                    at_ms: back_ms,
                    nodes: names.clone(),
                    shared: fault.shared(),
                }))?;
                Some(back_ms as f64 / 1000.0)
            } else {
                None
            };
            if fault.fault == FaultKind::Upgrade {
                task.step("old and new builds side by side: cross-node delivery");
                interop.extend(check_interop(verifier, &members, &names, fault.step));
            }
            executed.push(Executed {
                step: fault.step,
                fault: fault.fault,
                nodes: names,
                started_s: seconds,
                healed_s,
                detail,
            });
        }
    }
    sleep_until(started + scenario.workload.duration + restores_took);
    task.step("the workload ends; reading every node's history");
    let (events, found) = segment.finish(&members, bounds)?;
    history.extend(events);
    violations.extend(found);
    violations.extend(interop.iter().filter(|probe| !probe.ok).map(|probe| Violation {
        check: Check::Interoperation,
        message: format!(
            "after step {}, {} ({}) and {} ({}): {}",
            probe.after_step, probe.nodes[0], probe.versions[0], probe.nodes[1], probe.versions[1], probe.detail
        ),
        lines: Vec::new(),
    }));
    let timeline_path = history_path.with_file_name("timeline.svg");
    let title = format!("{} on {}", scenario.name, backend.capabilities().backend);
    timeline::write(&history, &stats::windows(&history), &title, &timeline_path)?;
    Ok(Run {
        schedule,
        executed,
        history,
        violations,
        history_path: history_path.to_path_buf(),
        timeline_path,
        versions: Vec::new(),
        interop,
    })
}

/// A fault that is made and over at once, recorded as its start and its heal together.
fn record_instant(recorder: &Recorder, fault: &Planned, names: &[String]) -> Result<()> {
    let at_ms = recorder.now_ms();
    for phase in [Phase::Start, Phase::Heal] {
        recorder.record(&Event::Fault(Fault {
            step: fault.step,
            fault: fault.fault.name().into(),
            phase,
            at_ms,
            nodes: names.to_vec(),
            shared: fault.shared(),
        }))?;
    }
    Ok(())
}

/// When the nodes just upgraded (`upgraded`) serve beside nodes still on another build:
/// the verifier's own messages posted on one of each reach subscribers on both, exactly
/// once. `None` while the cluster runs a single build.
fn check_interop(verifier: &Verifier, members: &[Member], upgraded: &[String], step: usize) -> Option<Interop> {
    let running = members.iter().zip(versions(members));
    let new = running.clone().find(|(member, _)| upgraded.contains(&member.id))?;
    let old = running.clone().find(|(_, version)| *version != new.1)?;
    let pair = [old.0.clone(), new.0.clone()];
    let (ok, detail) = match verifier.delivery(&pair) {
        Ok((detail, _)) => (true, detail),
        Err(err) => (false, format!("{err:#}")),
    };
    Some(Interop {
        after_step: step,
        nodes: [old.0.id.clone(), new.0.id.clone()],
        versions: [old.1, new.1],
        ok,
        detail,
    })
}

/// How long `node` was out for its upgrades, if it had any.
fn upgrade_outage(executed: &[Executed], node: &str) -> Option<f64> {
    executed
        .iter()
        .filter(|entry| entry.fault == FaultKind::Upgrade && entry.nodes.iter().any(|n| n == node))
        .map(|entry| entry.healed_s.unwrap_or(entry.started_s) - entry.started_s)
        .reduce(|a, b| a + b)
}

/// The build each member says it runs (`/health`'s version), or why it said nothing.
fn versions(members: &[Member]) -> Vec<String> {
    members
        .iter()
        .map(
            |member| match http::request(member.addr, "GET", "/health", None, None) {
                Ok((200, body)) => body["version"].as_str().unwrap_or("?").to_string(),
                Ok((status, _)) => format!("? (/health answered {status})"),
                Err(err) => format!("? ({err:#})"),
            },
        )
        .collect()
}

/// Does `act` to each node a fault names (numbered from 1), in turn; the details joined.
pub(crate) fn on_each<B>(
    backend: &mut B,
    fault: &Planned,
    mut act: impl FnMut(&mut B, usize) -> Result<String>,
) -> Result<String> {
    let details = fault
        .nodes
        .iter()
        .map(|&number| act(backend, number))
        .collect::<Result<Vec<_>>>()?;
    Ok(details.join("; "))
}

/// A directory of its own for one run of `scenario`, as Jepsen keeps its stores:
/// `<base>/<scenario>/<UTC time>-<pid>/`, with `<base>/<scenario>/latest` pointing at it.
/// Runs never overwrite each other's history, even at the same time.
pub(crate) fn run_dir(base: &Path, scenario: &str) -> Result<PathBuf> {
    let parent = base.join(scenario);
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let dir = parent.join(format!("{stamp}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let latest = parent.join("latest");
    let _ = std::fs::remove_file(&latest);
    // Best effort: a concurrent run may have just pointed it at itself.
    let _ = std::os::unix::fs::symlink(dir.file_name().context("a run directory's name")?, &latest);
    Ok(dir)
}

/// A fault's start or heal at its planned time.
struct Action {
    at: Duration,
    /// Heals sort after starts at the same time.
    heal: bool,
    index: usize,
}

fn actions_of(schedule: &Schedule) -> Vec<Action> {
    schedule
        .faults
        .iter()
        .enumerate()
        .flat_map(|(index, fault)| {
            let start = Action {
                at: fault.at,
                heal: false,
                index,
            };
            let heal = fault.heals.map(|at| Action { at, heal: true, index });
            std::iter::once(start).chain(heal)
        })
        .collect()
}

fn target_of(fault: &Planned, names: &[String]) -> String {
    match (fault.service, names.is_empty()) {
        (Some(service), _) => service.to_string(),
        (None, false) => names.join(", "),
        (None, true) if fault.fault.target() == TargetKind::Cluster => "the cluster".into(),
        (None, true) => "the store".into(),
    }
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}
