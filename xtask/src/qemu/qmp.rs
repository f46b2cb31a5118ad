//! A QMP (QEMU Machine Protocol) client for one VM, on the qapi crate's async tokio
//! stream. The toolchain is synchronous, so each call blocks on a shared runtime with a
//! deadline; a background task reads the socket, which carries both command responses
//! and the events (STOP, RESUME, RESET, SHUTDOWN, …) that it records for `wait_for`.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use qapi::futures::{QapiService, QmpStreamTokio};
use qapi::qmp;
use tokio::io::WriteHalf;
use tokio::net::UnixStream;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// How long any single command may take: QMP answers in about a millisecond, so this
/// only bounds a QEMU that has hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long QEMU may take to create its socket after launch.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a snapshot may take to save or load (a guest of a few hundred MiB under TCG).
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

type Service = QapiService<QmpStreamTokio<WriteHalf<UnixStream>>>;

/// What the toolchain watches for on the event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    Stop,
    Resume,
    Powerdown,
    Reset { guest: bool, reason: String },
    Shutdown { guest: bool, reason: String },
    Other(String),
}

impl VmEvent {
    fn from_qmp(event: qmp::Event) -> Self {
        match event {
            qmp::Event::STOP { .. } => Self::Stop,
            qmp::Event::RESUME { .. } => Self::Resume,
            qmp::Event::POWERDOWN { .. } => Self::Powerdown,
            qmp::Event::RESET { data, .. } => Self::Reset {
                guest: data.guest,
                reason: name_of(&data.reason),
            },
            qmp::Event::SHUTDOWN { data, .. } => Self::Shutdown {
                guest: data.guest,
                reason: name_of(&data.reason),
            },
            other => Self::Other(
                serde_json::to_value(&other)
                    .ok()
                    .and_then(|value| value["event"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "unknown".into()),
            ),
        }
    }

    /// The event's QMP name.
    pub fn name(&self) -> &str {
        match self {
            Self::Stop => "STOP",
            Self::Resume => "RESUME",
            Self::Powerdown => "POWERDOWN",
            Self::Reset { .. } => "RESET",
            Self::Shutdown { .. } => "SHUTDOWN",
            Self::Other(name) => name,
        }
    }
}

/// A QAPI enum's wire name (e.g. `host-qmp-quit`).
fn name_of(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[derive(Default)]
struct EventLog {
    events: Vec<(VmEvent, Instant)>,
    /// The socket closed: QEMU has gone.
    closed: bool,
}

/// One negotiated QMP connection.
pub struct Qmp {
    runtime: Arc<Runtime>,
    service: Service,
    log: Arc<(Mutex<EventLog>, Condvar)>,
    reader: JoinHandle<()>,
}

impl Qmp {
    /// Connects to QEMU's QMP socket (retrying while QEMU creates it) and negotiates
    /// capabilities.
    pub fn connect(runtime: Arc<Runtime>, socket: &Path) -> Result<Self> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let stream = loop {
            match runtime.block_on(async {
                let negotiation = QmpStreamTokio::open_uds(socket).await?;
                tokio::time::timeout(COMMAND_TIMEOUT, negotiation.negotiate())
                    .await
                    .map_err(std::io::Error::from)?
            }) {
                Ok(stream) => break stream,
                // QEMU creates the socket a moment after launch.
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(err) => {
                    return Err(err).with_context(|| format!("connecting to QMP at {}", socket.display()));
                }
            }
        };
        let (service, mut events) = stream.into_parts();
        let log = Arc::new((Mutex::new(EventLog::default()), Condvar::new()));
        let recorder = log.clone();
        let reader = runtime.spawn(async move {
            while let Some(Ok(event)) = events.next().await {
                let (log, changed) = &*recorder;
                lock(log).events.push((VmEvent::from_qmp(event), Instant::now()));
                changed.notify_all();
            }
            let (log, changed) = &*recorder;
            lock(log).closed = true;
            changed.notify_all();
        });
        Ok(Self {
            runtime,
            service,
            log,
            reader,
        })
    }

    fn execute<C>(&self, command: C) -> Result<C::Ok>
    where
        C: qapi::Command + qmp::QmpCommand + 'static,
    {
        let name = C::NAME;
        let answer = self
            .runtime
            .block_on(async { tokio::time::timeout(COMMAND_TIMEOUT, self.service.execute(command)).await });
        match answer {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => bail!("QMP {name}: {err}"),
            Err(_) => bail!("QMP {name}: no answer within {COMMAND_TIMEOUT:?}"),
        }
    }

    /// The run state as QMP names it: `running`, `paused`, `shutdown`, …
    pub fn status(&self) -> Result<String> {
        Ok(name_of(&self.execute(qmp::query_status {})?.status))
    }

    /// Pauses the VM's CPUs (its network forwards still accept connections).
    pub fn stop(&self) -> Result<()> {
        self.execute(qmp::stop {}).map(drop)
    }

    pub fn cont(&self) -> Result<()> {
        self.execute(qmp::cont {}).map(drop)
    }

    /// Presses the ACPI power button (gpio-keys on arm): the guest shuts itself down.
    pub fn system_powerdown(&self) -> Result<()> {
        self.execute(qmp::system_powerdown {}).map(drop)
    }

    /// Presses and releases the power key on the VM's keyboard: the power button of
    /// machines that have none (riscv64 virt, with a virtio keyboard).
    pub fn press_power_key(&self) -> Result<()> {
        let power = qmp::KeyValue::qcode(qmp::QKeyCodeWrapper {
            data: qmp::QKeyCode::power,
        });
        self.execute(qmp::send_key {
            keys: vec![power],
            hold_time: None,
        })
        .map(drop)
    }

    /// A hard reset, as the reset button: the guest boots again from the same kernel.
    pub fn system_reset(&self) -> Result<()> {
        self.execute(qmp::system_reset {}).map(drop)
    }

    /// Ends QEMU at once (the guest gets no say).
    pub fn quit(&self) -> Result<()> {
        self.execute(qmp::quit {}).map(drop)
    }

    /// Takes the link of the NIC `device` down (a pulled cable: nothing in or out) or up.
    pub fn set_link(&self, device: &str, up: bool) -> Result<()> {
        self.execute(qmp::set_link {
            name: device.into(),
            up,
        })
        .map(drop)
    }

    /// Adds a filter, `id`, to `netdev` that holds its packets and releases them every
    /// `interval`: a slow link, both ways. `remove_object(id)` takes it away.
    pub fn add_delay(&self, id: &str, netdev: &str, interval: Duration) -> Result<()> {
        let filter = qmp::ObjectOptions::filter_buffer {
            id: id.into(),
            filter_buffer: qmp::FilterBufferProperties {
                base: qmp::NetfilterProperties {
                    insert: None,
                    position: None,
                    queue: Some(qmp::NetFilterDirection::all),
                    status: None,
                    netdev: netdev.into(),
                },
                interval: u32::try_from(interval.as_micros()).context("a delay over an hour")?,
            },
        };
        self.execute(qmp::object_add(filter)).map(drop)
    }

    pub fn remove_object(&self, id: &str) -> Result<()> {
        self.execute(qmp::object_del { id: id.into() }).map(drop)
    }

    /// Saves the running (or paused) VM as snapshot `tag`: its memory and device state
    /// into the qcow2 disk `node`, whose contents it snapshots too. Returns how long it
    /// took; the guest's CPUs stand still meanwhile.
    pub fn snapshot_save(&self, tag: &str, node: &str) -> Result<Duration> {
        let job = format!("save-{tag}");
        let save = qmp::snapshot_save {
            job_id: job.clone(),
            tag: tag.into(),
            vmstate: node.into(),
            devices: vec![node.into()],
        };
        self.run_job(&job, save)
    }

    /// Puts the VM back to snapshot `tag` of disk `node`: memory, devices and disk as
    /// they were saved. Returns how long it took.
    pub fn snapshot_load(&self, tag: &str, node: &str) -> Result<Duration> {
        let job = format!("load-{tag}");
        let load = qmp::snapshot_load {
            job_id: job.clone(),
            tag: tag.into(),
            vmstate: node.into(),
            devices: vec![node.into()],
        };
        self.run_job(&job, load)
    }

    /// Starts job `id` with `command` and waits until it concludes; how long it took.
    fn run_job<C>(&self, id: &str, command: C) -> Result<Duration>
    where
        C: qapi::Command + qmp::QmpCommand + 'static,
    {
        let started = Instant::now();
        self.execute(command)?;
        self.await_job(id)?;
        Ok(started.elapsed())
    }

    /// Waits until job `id` concludes and dismisses it; its error, if it had one.
    fn await_job(&self, id: &str) -> Result<()> {
        let deadline = Instant::now() + JOB_TIMEOUT;
        loop {
            let jobs = self.execute(qmp::query_jobs {})?;
            let job = jobs
                .iter()
                .find(|job| job.id == id)
                .with_context(|| format!("QMP lists no job {id}"))?;
            if job.status == qmp::JobStatus::concluded {
                let error = job.error.clone();
                self.execute(qmp::job_dismiss { id: id.into() })?;
                return match error {
                    Some(error) => bail!("job {id} failed: {error}"),
                    None => Ok(()),
                };
            }
            if Instant::now() > deadline {
                bail!("job {id} still {} after {JOB_TIMEOUT:?}", name_of(&job.status));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for an event matching `wanted` that arrived at or after `since`; returns
    /// when it arrived.
    pub fn wait_for(&self, since: Instant, timeout: Duration, wanted: impl Fn(&VmEvent) -> bool) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        let (log, changed) = &*self.log;
        let mut guard = lock(log);
        loop {
            if let Some((_, at)) = guard.events.iter().find(|(event, at)| *at >= since && wanted(event)) {
                return Ok(*at);
            }
            if guard.closed {
                bail!("QMP closed before the event arrived; seen: {}", summary(&guard.events));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "the event did not arrive within {timeout:?}; seen: {}",
                    summary(&guard.events)
                );
            }
            guard = changed
                .wait_timeout(guard, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Every event seen so far, oldest first.
    pub fn events(&self) -> Vec<VmEvent> {
        lock(&self.log.0)
            .events
            .iter()
            .map(|(event, _)| event.clone())
            .collect()
    }

    /// Whether the socket has closed (QEMU exited).
    pub fn closed(&self) -> bool {
        lock(&self.log.0).closed
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        // Dropping the service does not close the socket; ending the reader does.
        self.reader.abort();
    }
}

fn lock(log: &Mutex<EventLog>) -> std::sync::MutexGuard<'_, EventLog> {
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn summary(events: &[(VmEvent, Instant)]) -> String {
    if events.is_empty() {
        return "none".into();
    }
    events
        .iter()
        .map(|(event, _)| event.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The runtime QMP connections share: one worker keeps every event reader going while
/// the toolchain's own threads block.
pub fn runtime() -> Result<Arc<Runtime>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("qmp")
        .enable_all()
        .build()
        .context("starting the QMP runtime")?;
    Ok(Arc::new(runtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_their_qmp_names_and_reasons() {
        let shutdown: qmp::Event = serde_json::from_value(serde_json::json!({
            "event": "SHUTDOWN",
            "data": {"guest": true, "reason": "guest-shutdown"},
            "timestamp": {"seconds": 1, "microseconds": 2}
        }))
        .unwrap();
        assert_eq!(
            VmEvent::from_qmp(shutdown),
            VmEvent::Shutdown {
                guest: true,
                reason: "guest-shutdown".into()
            }
        );
        let stop: qmp::Event = serde_json::from_value(serde_json::json!({
            "event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}
        }))
        .unwrap();
        assert_eq!(VmEvent::from_qmp(stop).name(), "STOP");
    }
}
