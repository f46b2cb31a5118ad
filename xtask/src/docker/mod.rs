//! Docker images of the server through the Docker Engine API (bollard; never the `docker`
//! CLI): the build context assembled in memory, the engine calls, and the smoke run that
//! talks to a container as a client would.
//!
//! Everything a run creates in the engine besides the images it means to keep — the
//! smoke containers — carries the labels `org.plexichat.xtask=docker-build` and
//! `org.plexichat.xtask.run=<pid>`, so that a cleanup pass can find what a run left.

pub mod context;
pub mod engine;
pub mod smoke;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bollard::query_parameters::TagImageOptionsBuilder;
use serde::Serialize;

use self::context::{build_context, platform, ServerSettings};
use self::engine::{build_image, Engine};
use crate::cargo::artefact::target_binary;
use crate::cargo::smoke::Step;
use crate::report::progress::Task;
use crate::workspace::profile::Profile;
use crate::workspace::targets::Target;
use crate::workspace::Workspace;

/// The label on everything docker-build creates, and its value.
pub const LABEL: &str = "org.plexichat.xtask";
pub const LABEL_VALUE: &str = "docker-build";
/// The label naming the run (its process id) that created a container.
pub const RUN_LABEL: &str = "org.plexichat.xtask.run";

/// The numeric user and group the server runs as: no name needs resolving in an image
/// with no /etc/passwd, and it is nobody's on the host (distroless's "nonroot").
pub const USER: &str = "65532:65532";
/// Where the binary, the baked-in profile and the database live in the image.
pub(crate) const BINARY: &str = "/usr/local/bin/plexichat";
pub(crate) const PROFILE: &str = "/etc/plexichat/profile.yaml";
pub(crate) const DATA: &str = "/data";

/// How long an image may take to report healthy: an emulated server starts in seconds,
/// a broken one never does.
pub(crate) const HEALTHY_TIMEOUT: Duration = Duration::from_secs(180);
/// Register and login hash a password with the profile's argon2 cost: seconds under
/// qemu-user emulation.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// One image, as the report gives it.
#[derive(Debug, Serialize)]
pub struct Image {
    pub arch: String,
    pub tags: Vec<String>,
    pub id: String,
    pub size_bytes: i64,
    /// `os/architecture[/variant]` as the engine records it.
    pub platform: String,
    pub user: String,
    pub labels: BTreeMap<String, String>,
    /// Seconds the engine spent building the image (not compiling the binary).
    pub build_seconds: f64,
    pub binary: PathBuf,
    pub smoke: Option<SmokeResult>,
}

#[derive(Debug, Serialize)]
pub struct SmokeResult {
    pub ok: bool,
    pub seconds: f64,
    pub steps: Vec<Step>,
}

#[allow(clippy::too_many_arguments)]
pub fn build_one(
    engine: &Engine,
    workspace: &Workspace,
    profile: &Profile,
    server: &ServerSettings,
    labels: &BTreeMap<String, String>,
    target: &Target,
    repository: &str,
    tag: &str,
    task: &Task,
) -> Result<Image> {
    let binary = target_binary(workspace, &profile.build, target, task)?;
    let bytes = std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    let profile_text = std::fs::read(&profile.path).with_context(|| format!("reading {}", profile.path.display()))?;
    let context = build_context(server, labels, &bytes, &profile_text);
    let arch_tag = format!("{repository}:{tag}-{}", target.arch);
    task.step(format!(
        "building {arch_tag} ({:.1} MB context)",
        context.len() as f64 / 1e6
    ));
    let started = Instant::now();
    let id = engine.block(build_image(&engine.docker, context, &arch_tag, &platform(target), task))?;
    let build_seconds = started.elapsed().as_secs_f64();
    let mut tags = vec![arch_tag];
    if !target.is_foreign() {
        engine
            .block(engine.docker.tag_image(
                &id,
                Some(TagImageOptionsBuilder::new().repo(repository).tag(tag).build()),
            ))
            .with_context(|| format!("tagging {id} as {repository}:{tag}"))?;
        tags.push(format!("{repository}:{tag}"));
    }
    let inspected = engine
        .block(engine.docker.inspect_image(&id))
        .with_context(|| format!("inspecting {id}"))?;
    let config = inspected.config.unwrap_or_default();
    let mut platform = format!(
        "{}/{}",
        inspected.os.unwrap_or_default(),
        inspected.architecture.unwrap_or_default()
    );
    if let Some(variant) = inspected.variant.filter(|v| !v.is_empty()) {
        platform.push_str(&format!("/{variant}"));
    }
    let expected = self::platform(target);
    if platform != expected && !platform.starts_with(&format!("{expected}/")) {
        bail!("the engine built a {platform} image, not {expected}: is binfmt/qemu-user registered?");
    }
    Ok(Image {
        arch: target.arch.to_string(),
        tags,
        id: inspected.id.unwrap_or(id),
        size_bytes: inspected.size.unwrap_or_default(),
        platform,
        user: config.user.unwrap_or_default(),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        build_seconds,
        binary,
        smoke: None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::context::{build_context, dockerfile, sqlite_outside_data, ServerSettings};

    fn settings() -> ServerSettings {
        ServerSettings {
            port: 8000,
            listen_override: None,
            database_override: None,
            sqlite: true,
        }
    }

    #[test]
    fn sqlite_files_outside_the_volume_move_into_it() {
        assert_eq!(sqlite_outside_data("sqlite:///data/plexichat.db"), None);
        assert_eq!(
            sqlite_outside_data("sqlite://target/bench/chat.db?mode=rwc").as_deref(),
            Some("sqlite:///data/chat.db")
        );
        assert_eq!(
            sqlite_outside_data("sqlite:plexichat.db").as_deref(),
            Some("sqlite:///data/plexichat.db")
        );
        assert_eq!(sqlite_outside_data("postgres://db/plexichat"), None);
    }

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("org.opencontainers.image.version".to_string(), "0.1.0".to_string()),
            ("org.example.quoted".to_string(), "say \"hi\" for $5".to_string()),
        ])
    }

    #[test]
    fn the_dockerfile_needs_no_shell_and_runs_as_a_numeric_user() {
        let text = dockerfile(&settings(), &labels());
        assert!(text.starts_with("FROM scratch\nADD rootfs.tar /\n"));
        assert!(text.contains("USER 65532:65532\n"));
        assert!(text.contains("HEALTHCHECK") && text.contains("CMD [\"/usr/local/bin/plexichat\", \"healthcheck\""));
        assert!(!text.contains("RUN "), "a scratch image has no shell to RUN with");
        assert!(!text.contains("PLEXICHAT_LISTEN"));
        assert!(text.contains("org.opencontainers.image.version=\"0.1.0\""), "{text}");
        assert!(text.contains(r#"org.example.quoted="say \"hi\" for \$5""#), "{text}");
        let wildcard = ServerSettings {
            listen_override: Some("0.0.0.0:9000".into()),
            port: 9000,
            ..settings()
        };
        let text = dockerfile(&wildcard, &labels());
        assert!(text.contains(" PLEXICHAT_LISTEN=0.0.0.0:9000\n") && text.contains("EXPOSE 9000/tcp"));
    }

    /// (name, mode, uid, data) of each entry; checks each header's checksum.
    fn entries(tar: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        assert_eq!(tar.len() % 512, 0);
        let field =
            |bytes: &[u8]| u64::from_str_radix(std::str::from_utf8(bytes).unwrap().trim_end_matches('\0'), 8).unwrap();
        let mut offset = 0;
        let mut entries = Vec::new();
        while tar[offset] != 0 {
            let header = &tar[offset..offset + 512];
            let name = String::from_utf8_lossy(&header[..100])
                .trim_end_matches('\0')
                .to_string();
            let size = field(&header[124..136]) as usize;
            let sum: u64 = header
                .iter()
                .enumerate()
                .map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u64::from(b) })
                .sum();
            assert_eq!(field(&header[148..155]), sum, "{name}");
            assert_eq!(&header[257..263], b"ustar\0");
            let data = tar[offset + 512..offset + 512 + size].to_vec();
            entries.push((
                name,
                field(&header[100..108]) as u32,
                field(&header[108..116]) as u32,
                data,
            ));
            offset += 512 + size.div_ceil(512) * 512;
        }
        assert_eq!(&tar[offset..], &[0u8; 1024][..]);
        entries
    }

    #[test]
    fn the_context_holds_the_dockerfile_and_the_root_file_system() {
        let tar = build_context(&settings(), &labels(), b"\x7fELF binary", b"server: {}\n");
        let context = entries(&tar);
        let names: Vec<&str> = context.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["Dockerfile", "rootfs.tar"]);
        let rootfs = entries(&context[1].3);
        let find = |name: &str| rootfs.iter().find(|e| e.0 == name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(find("usr/local/bin/plexichat").1, 0o755);
        assert_eq!(find("usr/local/bin/plexichat").3, b"\x7fELF binary");
        assert_eq!(find("etc/plexichat/profile.yaml").3, b"server: {}\n");
        assert_eq!((find("data/").1, find("data/").2), (0o755, 65532));
        assert_eq!(find("tmp/").1, 0o1777);
    }
}
