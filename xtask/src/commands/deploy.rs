//! `cargo xtask deploy render`: the files that deploy PlexiChat beyond one machine, from a
//! profile's server section: a Compose project (PostgreSQL, NATS and N nodes, a network
//! per dependency) and Kubernetes manifests (a StatefulSet of nodes and what it needs),
//! either with bundled PostgreSQL and NATS or pointed at managed ones.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;
use services::process::{self, cmd};

use crate::deploy::{self, compose, kubernetes, Deployment};
use crate::provision::{self, Requirement};
use crate::report::error::UsageError;
use crate::report::progress::Progress;
use crate::report::{Outcome, Table};
use crate::workspace::profile::Profile;
use crate::workspace::Workspace;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Writes compose.yaml (+ profile.yaml, .env) and/or kubernetes.yaml.
    #[command(after_help = "Example: cargo xtask deploy render --nodes 3 --out deploy/")]
    Render(RenderArgs),
}

#[derive(clap::Args)]
struct RenderArgs {
    /// How many PlexiChat nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Profile: NAME for profiles/NAME.yaml, or a path. Its server section configures
    /// every node.
    #[arg(long, default_value = "production")]
    profile: String,
    #[arg(long, value_enum, default_value_t = Format::All)]
    format: Format,
    /// Where the files go. Default: target/deploy/.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The server image. Default: plexichat:<server version>, as docker-build tags it.
    #[arg(long, value_name = "NAME:TAG")]
    image: Option<String>,
    /// A managed PostgreSQL instead of the bundled one: postgres://USER:PASSWORD@HOST:PORT/DB.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// A managed NATS instead of the bundled one: nats://HOST:PORT.
    #[arg(long, value_name = "URL")]
    nats_url: Option<String>,
    /// Check the Compose project with `docker-compose config` (installed if missing);
    /// exit 1 if it refuses it.
    #[arg(long)]
    check: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Compose,
    Kubernetes,
    All,
}

#[derive(Serialize)]
pub struct DeployReport {
    profile: String,
    nodes: usize,
    out: PathBuf,
    server_image: String,
    /// Each file written, relative to `out`.
    files: Vec<RenderedFile>,
    /// What `docker-compose config` said of the Compose project, with `--check`.
    compose_check: Option<ComposeCheck>,
}

#[derive(Serialize)]
struct ComposeCheck {
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
struct RenderedFile {
    name: String,
    bytes: u64,
    holds: &'static str,
}

pub fn run(args: Args) -> Result<DeployReport> {
    match args.action {
        Action::Render(args) => render(args),
    }
}

fn render(args: RenderArgs) -> Result<DeployReport> {
    let workspace = Workspace::discover()?;
    if args.nodes == 0 {
        return Err(UsageError("--nodes 0: a deployment needs a node\n  fix: use --nodes 1 or more".into()).into());
    }
    check_url(
        "--database-url",
        args.database_url.as_deref(),
        &["postgres", "postgresql"],
    )?;
    check_url("--nats-url", args.nats_url.as_deref(), &["nats", "tls"])?;
    let profile = Profile::load(&workspace.profiles_dir(), &args.profile)?;
    let server_image = args
        .image
        .unwrap_or_else(|| format!("plexichat:{}", workspace.server_version));
    let mut deployment = Deployment::of(&profile, args.nodes, server_image.clone())?;
    deployment.external_database_url = args.database_url;
    deployment.external_nats_url = args.nats_url;
    let out = args.out.unwrap_or_else(|| workspace.target_dir.join("deploy"));

    let mut names = Vec::new();
    if args.format != Format::Kubernetes {
        names.extend(compose::write(&deployment, &out)?);
    }
    if args.format != Format::Compose {
        std::fs::create_dir_all(&out)?;
        std::fs::write(
            out.join(kubernetes::FILE),
            kubernetes::render(&deployment, &deploy::password()?)?,
        )?;
        names.push(kubernetes::FILE.into());
    }
    let files = names
        .into_iter()
        .map(|name| {
            let bytes = std::fs::metadata(out.join(&name)).map_or(0, |m| m.len());
            let holds = match name.as_str() {
                compose::FILE => "the Compose project: services, networks, volumes",
                compose::PROFILE_FILE => "the profile's server section, mounted by every node",
                compose::ENV_FILE => "the database password (or URL), read by Compose; mode 0600",
                _ => "the Kubernetes objects, for kubectl apply -f",
            };
            RenderedFile { name, bytes, holds }
        })
        .collect();
    let compose_check = match args.check && args.format != Format::Kubernetes {
        true => Some(check_compose(&out)?),
        false => None,
    };
    Ok(DeployReport {
        profile: profile.name,
        nodes: args.nodes,
        out,
        server_image,
        files,
        compose_check,
    })
}

/// `docker-compose config --quiet` in `dir`: the file parses, fits its format's schema,
/// and every variable it needs is set (the `.env` sets them).
fn check_compose(dir: &Path) -> Result<ComposeCheck> {
    let progress = Progress::new();
    let task = progress.task("check");
    provision::ensure(&[Requirement::DockerCompose], &task)?;
    let sh = process::shell_in(dir)?;
    let output = process::output(cmd!(sh, "docker-compose config --quiet"))?;
    let ok = output.status.success();
    let detail = match ok {
        true => "docker-compose config: valid".to_string(),
        false => String::from_utf8_lossy(&output.stderr).trim().to_string(),
    };
    task.finish(if ok { "ok" } else { "FAILED" });
    Ok(ComposeCheck { ok, detail })
}

/// A URL flag must have one of `schemes` and a host: the nodes would otherwise fail at
/// start, far from the flag.
fn check_url(flag: &str, url: Option<&str>, schemes: &[&str]) -> Result<(), UsageError> {
    let Some(url) = url else { return Ok(()) };
    let host = url
        .split_once("://")
        .filter(|(scheme, _)| schemes.contains(scheme))
        .map(|(_, rest)| {
            rest.rsplit('@')
                .next()
                .unwrap_or_default()
                .split(['/', ':', '?'])
                .next()
                .unwrap_or_default()
        });
    match host {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err(UsageError(format!(
            "{flag} `{url}`: not a {}:// URL with a host\n  fix: e.g. {}",
            schemes[0],
            if schemes[0] == "nats" {
                "nats://bus.example.com:4222"
            } else {
                "postgres://plexichat:PASSWORD@db.example.com:5432/plexichat"
            }
        ))),
    }
}

impl Outcome for DeployReport {
    fn ok(&self) -> bool {
        self.compose_check.as_ref().is_none_or(|check| check.ok)
    }

    fn table(&self) -> Table {
        let mut table = Table::new(&["file", "size", "holds"]);
        for file in &self.files {
            table.row(vec![file.name.clone(), format!("{} B", file.bytes), file.holds.into()]);
        }
        table
    }

    fn summary(&self) -> Option<String> {
        let dir = self.out.display();
        let mut lines = vec![format!(
            "{} node(s) of {} ({} profile) in {dir}",
            self.nodes, self.server_image, self.profile
        )];
        if let Some(check) = &self.compose_check {
            lines.push(check.detail.clone());
        }
        if self.files.iter().any(|f| f.name == compose::FILE) {
            lines.push(format!("Compose: cd {dir} && docker-compose up -d"));
        }
        if self.files.iter().any(|f| f.name == kubernetes::FILE) {
            lines.push(format!("Kubernetes: kubectl apply -f {dir}/{}", kubernetes::FILE));
        }
        Some(lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_service_urls_need_their_scheme_and_a_host() {
        assert!(check_url("--database-url", Some("postgres://u:p@db:5432/x"), &["postgres"]).is_ok());
        assert!(check_url("--nats-url", None, &["nats"]).is_ok());
        let err = check_url("--database-url", Some("mysql://db/x"), &["postgres"]).unwrap_err();
        assert!(
            err.0.contains("--database-url") && err.0.contains("fix: e.g. postgres://"),
            "{}",
            err.0
        );
        assert!(check_url("--nats-url", Some("nats://"), &["nats"]).is_err());
    }
}
