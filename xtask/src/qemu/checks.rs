//! Failures made through QMP, as a hypervisor makes them, and what the rest of the
//! cluster must do about each: a frozen node (`stop`/`cont`), a rebooted one
//! (`system_reset`), one that vanishes under load (`quit`), and a clean power-off.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::qmp::VmEvent;
use super::vm::Vm;
use crate::cluster::{Member, Verifier};

/// QMP answers in about a millisecond; its events follow at once.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A resumed node heartbeats again within a second or two (its clock is re-set from
/// the RTC first).
const RESUME_TIMEOUT: Duration = Duration::from_secs(30);
/// The guest's graceful shutdown: drain, close WebSockets, power off.
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Failover<'a> {
    pub verifier: &'a Verifier,
    pub vms: &'a [Vm],
    pub members: &'a [Member],
    pub lease: Duration,
    pub boot_timeout: Duration,
}

impl Failover<'_> {
    /// The node that is made to fail, and the one that watches.
    fn roles(&self) -> Result<(&Vm, &Member, &Member)> {
        let victim = self.vms.last().context("a VM")?;
        let victim_member = self.members.last().context("a member")?;
        let observer = self.members.first().context("a member")?;
        Ok((victim, victim_member, observer))
    }

    /// `stop`: the frozen node is listed down within the lease while the others keep
    /// serving; `cont`: it is listed up again and answers.
    pub fn pause_and_resume(&self) -> Result<String> {
        let (victim, victim_member, observer) = self.roles()?;
        let stopped_at = Instant::now();
        victim.qmp.stop()?;
        victim
            .qmp
            .wait_for(stopped_at, EVENT_TIMEOUT, |e| *e == VmEvent::Stop)
            .context("no STOP event")?;
        expect_status(victim, "paused")?;
        let down = self
            .verifier
            .await_listed(observer, &victim.node_id, "down", None, stopped_at, self.lease * 3)?;
        self.verifier
            .post(observer, "posted while a node is frozen")
            .context("a surviving node refused a post while another was frozen")?;

        let resumed_at = Instant::now();
        victim.qmp.cont()?;
        victim
            .qmp
            .wait_for(resumed_at, EVENT_TIMEOUT, |e| *e == VmEvent::Resume)
            .context("no RESUME event")?;
        expect_status(victim, "running")?;
        let up = self
            .verifier
            .await_listed(observer, &victim.node_id, "up", None, resumed_at, RESUME_TIMEOUT)?;
        victim.wait_healthy(RESUME_TIMEOUT)?;
        self.verifier
            .post(victim_member, "posted after resuming")
            .context("the resumed node refused a post")?;
        Ok(format!(
            "{} stopped: listed down after {:.2} s (lease {:?}), others served; cont: up again after {:.2} s",
            victim.node_id,
            down.as_secs_f64(),
            self.lease,
            up.as_secs_f64()
        ))
    }

    /// `system_reset`: the node boots again and rejoins as a new generation.
    pub fn reset(&self) -> Result<String> {
        let (victim, _, observer) = self.roles()?;
        let before = self
            .verifier
            .listing(observer)?
            .get(&victim.node_id)
            .map(|listed| listed.generation)
            .context("the victim is not listed")?;
        let reset_at = Instant::now();
        victim.qmp.system_reset()?;
        victim
            .qmp
            .wait_for(reset_at, EVENT_TIMEOUT, |e| matches!(e, VmEvent::Reset { .. }))
            .context("no RESET event")?;
        let healthy = victim.wait_healthy(self.boot_timeout)?;
        self.verifier
            .await_listed(observer, &victim.node_id, "up", Some(before), reset_at, RESUME_TIMEOUT)?;
        let after = self
            .verifier
            .listing(observer)?
            .get(&victim.node_id)
            .map(|listed| listed.generation)
            .unwrap_or_default();
        Ok(format!(
            "{} reset: healthy again after {:.2} s, rejoined as generation {after} (was {before})",
            victim.node_id,
            healthy.as_secs_f64()
        ))
    }

    /// `quit` under load: QEMU ends at once; the node is listed down within the lease,
    /// the others keep serving, and no acknowledged message is lost.
    pub fn quit_under_load(&self) -> Result<String> {
        let (victim, _, _) = self.roles()?;
        let quit_at = Instant::now();
        let (detail, _) = self
            .verifier
            .failover(self.members, self.lease, "quit over QMP", || victim.qmp.quit())?;
        victim
            .qmp
            .wait_for(
                quit_at,
                EVENT_TIMEOUT,
                |e| matches!(e, VmEvent::Shutdown { guest: false, reason } if reason == "host-qmp-quit"),
            )
            .context("no SHUTDOWN (host-qmp-quit) event")?;
        if !victim.wait_exit(EVENT_TIMEOUT) {
            bail!("QEMU for {} still runs after quit", victim.node_id);
        }
        Ok(detail)
    }
}

/// The power button on every VM still running: each guest must shut itself down
/// (SHUTDOWN with guest=true) and its QEMU exit.
pub fn power_off_all(vms: &[Vm]) -> Result<String> {
    let running: Vec<&Vm> = vms.iter().filter(|vm| !vm.exited()).collect();
    let times = std::thread::scope(|scope| {
        let offs: Vec<_> = running
            .iter()
            .map(|vm| scope.spawn(move || vm.power_off(POWER_OFF_TIMEOUT)))
            .collect();
        offs.into_iter()
            .map(|off| off.join().unwrap_or_else(|_| bail!("a power-off watcher panicked")))
            .collect::<Result<Vec<Duration>>>()
    })?;
    let slowest = times.iter().max().copied().unwrap_or_default();
    Ok(format!(
        "{} VMs shut down cleanly on their power button (slowest {:.2} s)",
        running.len(),
        slowest.as_secs_f64()
    ))
}

fn expect_status(vm: &Vm, wanted: &str) -> Result<()> {
    let status = vm.qmp.status()?;
    if status != wanted {
        bail!("query-status on {} says {status}, not {wanted}", vm.node_id);
    }
    Ok(())
}
