//! The image's contents: the build context (Dockerfile and a root file system tar,
//! assembled in memory), its labels, and what the profile's server section asks of it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use super::{BINARY, DATA, LABEL, LABEL_VALUE, PROFILE, USER};
use crate::report::error::UsageError;
use crate::system::tarball::{Tarball, ROOT};
use crate::workspace::profile::Profile;
use crate::workspace::targets::Target;
use crate::workspace::Workspace;

/// What the image needs to know of the profile's `server` section.
pub(crate) struct ServerSettings {
    pub(crate) port: u16,
    /// Set when the profile does not listen on every interface: the image must.
    pub(crate) listen_override: Option<String>,
    /// Set when the profile keeps SQLite outside /data: in a container the volume is the
    /// one place that is writable and outlives it.
    pub(crate) database_override: Option<String>,
    /// Whether the profile's store is SQLite (the image's /data volume); the smoke run
    /// needs no other service.
    pub(crate) sqlite: bool,
}

impl ServerSettings {
    pub(crate) fn of(profile: &Profile) -> Result<Self> {
        let text =
            std::fs::read_to_string(&profile.path).with_context(|| format!("reading {}", profile.path.display()))?;
        let document: serde_yaml::Value =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", profile.path.display()))?;
        let server = &document["server"];
        let listen = server["listen"].as_str().unwrap_or("127.0.0.1:8000");
        let parsed: SocketAddr = listen.parse().map_err(|_| {
            UsageError::at(
                profile.path.display(),
                "server.listen",
                format!("`{listen}` is not an address"),
                "use e.g. 0.0.0.0:8000",
            )
        })?;
        let port = if parsed.port() == 0 { 8000 } else { parsed.port() };
        let listen_override = (!parsed.ip().is_unspecified() || parsed.port() == 0).then(|| format!("0.0.0.0:{port}"));
        let database = server["database"]["url"].as_str().unwrap_or("sqlite://plexichat.db");
        Ok(Self {
            port,
            listen_override,
            database_override: sqlite_outside_data(database),
            sqlite: database.starts_with("sqlite:"),
        })
    }
}

/// `sqlite:///data/<file>` for a SQLite URL whose file is not under /data.
pub(crate) fn sqlite_outside_data(url: &str) -> Option<String> {
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next().unwrap_or_default();
    if path.starts_with(&format!("{DATA}/")) {
        return None;
    }
    let file = path
        .rsplit('/')
        .next()
        .filter(|f| !f.is_empty())
        .unwrap_or("plexichat.db");
    Some(format!("sqlite://{DATA}/{file}"))
}

/// The labels every image gets: OCI's annotations, the profile, and ours. `created` is
/// the image's date (now for docker-build; the commit's for a release, which must not
/// change between two makes of it).
pub(crate) fn image_labels(workspace: &Workspace, profile: &Profile, created: SystemTime) -> BTreeMap<String, String> {
    let oci = |key: &str| format!("org.opencontainers.image.{key}");
    let mut labels = BTreeMap::from([
        (oci("title"), "plexichat".to_string()),
        (oci("version"), workspace.server_version.clone()),
        (oci("revision"), workspace.git_revision()),
        (oci("created"), humantime::format_rfc3339_seconds(created).to_string()),
        ("org.plexichat.profile".to_string(), profile.name.clone()),
        (LABEL.to_string(), LABEL_VALUE.to_string()),
    ]);
    let optional = [
        ("source", &workspace.server_repository),
        ("description", &workspace.server_description),
        ("licenses", &workspace.server_license),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            labels.insert(oci(key), value.clone());
        }
    }
    labels
}

/// How a container of the image runs: what the Dockerfile says in instructions and a
/// release's OCI image says in its config, from one description.
pub(crate) struct Runtime {
    pub env: Vec<String>,
    pub port: u16,
    /// The health probe's command (exec form: there is no shell).
    pub healthcheck: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// The health probe's timing: every 5 s, 4 s to answer, 60 s to start, 3 failures.
pub(crate) const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub(crate) const HEALTH_TIMEOUT: Duration = Duration::from_secs(4);
pub(crate) const HEALTH_START_PERIOD: Duration = Duration::from_secs(60);
pub(crate) const HEALTH_RETRIES: u32 = 3;

impl Runtime {
    pub(crate) fn of(server: &ServerSettings) -> Self {
        let port = server.port;
        let mut env = vec![format!("PLEXICHAT_CONFIG={PROFILE}")];
        if let Some(listen) = &server.listen_override {
            env.push(format!("PLEXICHAT_LISTEN={listen}"));
        }
        if let Some(database) = &server.database_override {
            env.push(format!("PLEXICHAT_DATABASE_URL={database}"));
        }
        let strings = |items: &[&str]| items.iter().map(|item| item.to_string()).collect();
        Self {
            env,
            port,
            healthcheck: strings(&[
                BINARY,
                "healthcheck",
                "--url",
                &format!("http://127.0.0.1:{port}/health"),
                "--timeout",
                "3s",
            ]),
            entrypoint: strings(&[BINARY]),
            cmd: strings(&["serve"]),
        }
    }
}

/// The Dockerfile of every image. FROM scratch: nothing can be pulled here, and a static
/// binary needs no base. Everything the image holds comes in one ADD of a tar (the
/// engine unpacks it, keeping each entry's owner and mode): the builder commits a layer
/// per instruction, so fewer instructions build faster, and /data can be owned by the
/// server's user without a shell to chown with.
pub(crate) fn dockerfile(server: &ServerSettings, labels: &BTreeMap<String, String>) -> String {
    let runtime = Runtime::of(server);
    let exec_form = |items: &[String]| {
        let quoted: Vec<String> = items.iter().map(|item| format!("\"{item}\"")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let labels: Vec<String> = labels
        .iter()
        .map(|(key, value)| {
            format!(
                "{key}=\"{}\"",
                value.replace('\\', "\\\\").replace('"', "\\\"").replace('$', "\\$")
            )
        })
        .collect();
    let seconds = |duration: Duration| format!("{}s", duration.as_secs());
    format!(
        "FROM scratch\n\
         ADD rootfs.tar /\n\
         ENV {env}\n\
         WORKDIR {DATA}\n\
         VOLUME {DATA}\n\
         USER {USER}\n\
         EXPOSE {port}/tcp\n\
         HEALTHCHECK --interval={interval} --timeout={timeout} --start-period={start} --retries={HEALTH_RETRIES} \
         CMD {health}\n\
         ENTRYPOINT {entrypoint}\n\
         CMD {cmd}\n\
         LABEL {labels}\n",
        env = runtime.env.join(" "),
        port = runtime.port,
        interval = seconds(HEALTH_INTERVAL),
        timeout = seconds(HEALTH_TIMEOUT),
        start = seconds(HEALTH_START_PERIOD),
        health = exec_form(&runtime.healthcheck),
        entrypoint = exec_form(&runtime.entrypoint),
        cmd = exec_form(&runtime.cmd),
        labels = labels.join(" \\\n      ")
    )
}

/// The build context: the Dockerfile and rootfs.tar, the image's whole file system.
pub(crate) fn build_context(
    server: &ServerSettings,
    labels: &BTreeMap<String, String>,
    binary: &[u8],
    profile: &[u8],
) -> Vec<u8> {
    let rootfs = rootfs(binary, profile);
    let mut context = Tarball::new(0);
    context
        .file("Dockerfile", 0o644, ROOT, dockerfile(server, labels).as_bytes())
        .file("rootfs.tar", 0o644, ROOT, &rootfs);
    context.finish()
}

/// The image's whole file system: the binary, the profile, the data volume's directory
/// owned by the server's user, and /tmp.
pub(crate) fn rootfs(binary: &[u8], profile: &[u8]) -> Vec<u8> {
    let user = (65532, 65532);
    let mut rootfs = Tarball::new(0);
    for dir in ["usr/", "usr/local/", "usr/local/bin/", "etc/", "etc/plexichat/"] {
        rootfs.dir(dir, 0o755, ROOT);
    }
    rootfs
        .file(BINARY.trim_start_matches('/'), 0o755, ROOT, binary)
        .file(PROFILE.trim_start_matches('/'), 0o644, ROOT, profile)
        .dir("data/", 0o755, user)
        // SQLite's temporary files; sticky and world-writable, as everywhere.
        .dir("tmp/", 0o1777, ROOT);
    rootfs.finish()
}

/// The platform string the engine knows `target` by.
pub(crate) fn platform(target: &Target) -> String {
    format!("linux/{}", target.deb_arch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::tarball::tests::entries;
    use tar::EntryType::{Directory, Regular};

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

    #[test]
    fn the_context_holds_the_dockerfile_and_the_root_file_system() {
        let labels = BTreeMap::from([("org.opencontainers.image.version".to_string(), "0.1.0".to_string())]);
        let tar = build_context(&settings(), &labels, b"\x7fELF binary", b"server: {}\n");
        let context = entries(&tar);
        let names: Vec<&str> = context.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["Dockerfile", "rootfs.tar"]);
        assert_eq!(context[0].data, dockerfile(&settings(), &labels).as_bytes());
        let rootfs = entries(&context[1].data);
        let names: Vec<&str> = rootfs.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "etc/",
                "etc/plexichat/",
                "usr/local/bin/plexichat",
                "etc/plexichat/profile.yaml",
                "data/",
                "tmp/"
            ]
        );
        let find = |name: &str| {
            rootfs
                .iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        let binary = find("usr/local/bin/plexichat");
        assert_eq!((binary.kind, binary.mode, binary.owner), (Regular, 0o755, (0, 0)));
        assert_eq!(binary.data, b"\x7fELF binary");
        assert_eq!(find("etc/plexichat/profile.yaml").data, b"server: {}\n");
        assert_eq!(find("etc/plexichat/profile.yaml").mode, 0o644);
        let data = find("data/");
        assert_eq!((data.kind, data.mode, data.owner), (Directory, 0o755, (65532, 65532)));
        assert_eq!(find("tmp/").mode, 0o1777);
        // Nothing of the machine that built it: the same inputs make the same bytes.
        assert!(context.iter().chain(&rootfs).all(|e| e.mtime == 0));
        assert_eq!(
            tar,
            build_context(&settings(), &labels, b"\x7fELF binary", b"server: {}\n")
        );
    }
}
