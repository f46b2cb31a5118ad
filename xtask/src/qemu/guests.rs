//! `bench-compare --e2e --vms`: the working tree's server as the PID 1 of a QEMU VM per
//! guest architecture (x86_64 and aarch64, each as qemu-cluster boots it: the same images,
//! kernels and machine), on the host's PostgreSQL through user-mode networking's gateway.
//! The load generator stays on the host, so each VM's figures are what a client sees of an
//! emulated (TCG) node: the ratios to the native PostgreSQL server are the question, not
//! the absolute rates.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use services::Postgres;
use tokio::runtime::Runtime;

use super::nodes::Boot;
use super::vm::{self, Launch, Vm, BOOT_TIMEOUT, HOST_FROM_GUEST};
use super::{plan, qmp};
use crate::bench::e2e::{GuestServer, RunningGuest};
use crate::cargo::artefact::target_binary;
use crate::guest::{self, Accelerator, ImageDefinition};
use crate::report::progress::{Progress, Task};
use crate::workspace::profile::Profile;
use crate::workspace::Workspace;

/// The guests, one VM each: the cloud's machine and the edge box's.
const ARCHES: [&str; 2] = ["x86_64", "aarch64"];

/// One architecture's VM, ready to boot as many times as the rounds need.
pub(crate) struct Guest {
    definition: ImageDefinition,
    accelerator: Accelerator,
    image: Boot,
    /// The static server in the image.
    binary: PathBuf,
    places: Arc<Places>,
}

/// What the guests share: sockets in a private directory (removed with it), logs kept
/// under target/ for a failed boot's post-mortem, and the runtime QMP runs on.
struct Places {
    run_dir: services::teardown::TempDir,
    log_dir: PathBuf,
    runtime: Arc<Runtime>,
}

impl GuestServer for Guest {
    fn name(&self) -> String {
        format!(
            "{} VM ({})",
            self.definition.arch,
            self.accelerator.as_str().to_uppercase()
        )
    }

    fn binary(&self) -> &Path {
        &self.binary
    }

    /// Boots the VM on `database` and waits until it answers /health.
    fn start(&self, postgres: &Postgres, database: &str) -> Result<Box<dyn RunningGuest>> {
        let node_id = format!("bench-e2e-{}", self.definition.arch);
        let launch = Launch {
            settings: vm::node_settings(&node_id, Some(&postgres.url_via(HOST_FROM_GUEST, database)), None),
            node_id,
            definition: &self.definition,
            accelerator: self.accelerator,
            kernel: &self.image.kernel,
            initrd: &self.image.initrd,
            http_port: services::free_port()?,
            // Every row is in PostgreSQL: /data stays a tmpfs.
            data_disk: None,
            generation: 0,
            run_dir: self.places.run_dir.path(),
            log_dir: &self.places.log_dir,
        };
        let vm = Vm::launch(launch, &self.places.runtime)?;
        vm.wait_healthy(BOOT_TIMEOUT)?;
        Ok(Box::new(vm))
    }
}

/// How long a VM may take to shut down once its round is over.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

impl RunningGuest for Vm {
    fn url(&self) -> String {
        Vm::url(self)
    }

    fn stop(self: Box<Self>) -> Result<()> {
        self.power_off(STOP_TIMEOUT).map(drop)
    }
}

/// The guest of each of [`ARCHES`]: definitions read, kernels and emulators provisioned as
/// `doctor --fix` would, static servers built and images made with the working tree's
/// `profile` in them.
pub(crate) fn prepare(
    workspace: &Workspace,
    profile: &Profile,
    progress: &Progress,
    task: &Task,
) -> Result<Vec<Box<dyn GuestServer>>> {
    let definitions = ARCHES
        .iter()
        .map(|arch| guest::load_definition(workspace, arch))
        .collect::<Result<Vec<_>, _>>()?;
    plan::provision(&definitions, progress)?;
    let places = Arc::new(Places {
        run_dir: services::teardown::TempDir::new("bench-e2e-vms").context("creating the VMs' directory")?,
        log_dir: workspace.target_dir.join("xtask/bench-compare/vms"),
        runtime: qmp::runtime()?,
    });
    std::fs::create_dir_all(&places.log_dir)?;
    let mut guests = Vec::new();
    for definition in definitions {
        let (accelerator, _) = definition.accelerator()?;
        task.step(format!("the {} guest's server and image", definition.arch));
        let binary = target_binary(workspace, &profile.build, definition.target(), task)?;
        // An image of its own: the bench profile's build need not be qemu-cluster's.
        let image = Boot::make(
            workspace,
            &definition,
            binary.clone(),
            Some("bench"),
            &profile.path,
            places.run_dir.path(),
            task,
        )?;
        guests.push(Box::new(Guest {
            definition,
            accelerator,
            image,
            binary,
            places: places.clone(),
        }) as Box<dyn GuestServer>);
    }
    Ok(guests)
}
