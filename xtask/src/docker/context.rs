//! The image's contents: the build context (Dockerfile and a root file system tar,
//! assembled in memory), its labels, and what the profile's server section asks of it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use anyhow::{Context, Result};

use super::{BINARY, DATA, LABEL, LABEL_VALUE, PROFILE, USER};
use crate::report::error::UsageError;
use crate::workspace::profile::Profile;
use crate::workspace::targets::Target;
use crate::workspace::Workspace;

/// What the image needs to know of the profile's `server` section.
pub struct ServerSettings {
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

/// The labels every image gets: OCI's annotations, the profile, and ours.
pub(crate) fn image_labels(workspace: &Workspace, profile: &Profile) -> BTreeMap<String, String> {
    let oci = |key: &str| format!("org.opencontainers.image.{key}");
    let mut labels = BTreeMap::from([
        (oci("title"), "plexichat".to_string()),
        (oci("version"), workspace.server_version.clone()),
        (oci("revision"), workspace.git_revision()),
        (
            oci("created"),
            humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        ),
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

/// The Dockerfile of every image. FROM scratch: nothing can be pulled here, and a static
/// binary needs no base. Everything the image holds comes in one ADD of a tar (the
/// engine unpacks it, keeping each entry's owner and mode): the builder commits a layer
/// per instruction, so fewer instructions build faster, and /data can be owned by the
/// server's user without a shell to chown with.
pub(crate) fn dockerfile(server: &ServerSettings, labels: &BTreeMap<String, String>) -> String {
    let port = server.port;
    let mut env = format!("PLEXICHAT_CONFIG={PROFILE}");
    if let Some(listen) = &server.listen_override {
        env.push_str(&format!(" PLEXICHAT_LISTEN={listen}"));
    }
    if let Some(database) = &server.database_override {
        env.push_str(&format!(" PLEXICHAT_DATABASE_URL={database}"));
    }
    let labels: Vec<String> = labels
        .iter()
        .map(|(key, value)| {
            format!(
                "{key}=\"{}\"",
                value.replace('\\', "\\\\").replace('"', "\\\"").replace('$', "\\$")
            )
        })
        .collect();
    format!(
        "FROM scratch\n\
         ADD rootfs.tar /\n\
         ENV {env}\n\
         WORKDIR {DATA}\n\
         VOLUME {DATA}\n\
         USER {USER}\n\
         EXPOSE {port}/tcp\n\
         HEALTHCHECK --interval=5s --timeout=4s --start-period=60s --retries=3 \
         CMD [\"{BINARY}\", \"healthcheck\", \"--url\", \"http://127.0.0.1:{port}/health\", \"--timeout\", \"3s\"]\n\
         ENTRYPOINT [\"{BINARY}\"]\n\
         CMD [\"serve\"]\n\
         LABEL {}\n",
        labels.join(" \\\n      ")
    )
}

/// The build context: the Dockerfile and rootfs.tar, the image's whole file system.
pub(crate) fn build_context(
    server: &ServerSettings,
    labels: &BTreeMap<String, String>,
    binary: &[u8],
    profile: &[u8],
) -> Vec<u8> {
    let root = (0, 0);
    let user = (65532, 65532);
    let mut rootfs = Vec::with_capacity(binary.len() + 8192);
    for dir in ["usr/", "usr/local/", "usr/local/bin/", "etc/", "etc/plexichat/"] {
        ustar::directory(&mut rootfs, dir, 0o755, root);
    }
    ustar::file(&mut rootfs, BINARY.trim_start_matches('/'), 0o755, root, binary);
    ustar::file(&mut rootfs, PROFILE.trim_start_matches('/'), 0o644, root, profile);
    ustar::directory(&mut rootfs, "data/", 0o755, user);
    // SQLite's temporary files; sticky and world-writable, as everywhere.
    ustar::directory(&mut rootfs, "tmp/", 0o1777, root);
    ustar::finish(&mut rootfs);
    let mut context = Vec::with_capacity(rootfs.len() + 4096);
    ustar::file(
        &mut context,
        "Dockerfile",
        0o644,
        root,
        dockerfile(server, labels).as_bytes(),
    );
    ustar::file(&mut context, "rootfs.tar", 0o644, root, &rootfs);
    ustar::finish(&mut context);
    context
}

/// The platform string the engine knows `target` by.
pub(crate) fn platform(target: &Target) -> String {
    format!("linux/{}", target.deb_arch)
}

/// Just enough of the ustar format for a build context: regular files and directories.
pub(crate) mod ustar {
    const BLOCK: usize = 512;

    pub fn file(out: &mut Vec<u8>, name: &str, mode: u32, owner: (u32, u32), data: &[u8]) {
        header(out, name, mode, owner, data.len() as u64, b'0');
        out.extend_from_slice(data);
        pad(out);
    }

    pub fn directory(out: &mut Vec<u8>, name: &str, mode: u32, owner: (u32, u32)) {
        header(out, name, mode, owner, 0, b'5');
    }

    /// Two zero blocks end an archive.
    pub fn finish(out: &mut Vec<u8>) {
        out.resize(out.len() + 2 * BLOCK, 0);
    }

    pub(crate) fn header(out: &mut Vec<u8>, name: &str, mode: u32, (uid, gid): (u32, u32), size: u64, kind: u8) {
        let mut block = [0u8; BLOCK];
        block[..name.len().min(100)].copy_from_slice(&name.as_bytes()[..name.len().min(100)]);
        octal(&mut block[100..108], u64::from(mode));
        octal(&mut block[108..116], u64::from(uid));
        octal(&mut block[116..124], u64::from(gid));
        octal(&mut block[124..136], size);
        octal(&mut block[136..148], 0);
        block[156] = kind;
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        // The checksum is computed with its own field as spaces.
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        octal(&mut block[148..155], u64::from(sum));
        block[155] = b' ';
        out.extend_from_slice(&block);
    }

    /// Zero-padded octal digits and a NUL terminator filling `field`.
    pub(crate) fn octal(field: &mut [u8], value: u64) {
        let width = field.len() - 1;
        let digits = format!("{value:0width$o}");
        field[..width].copy_from_slice(&digits.as_bytes()[digits.len() - width..]);
        field[width] = 0;
    }

    pub(crate) fn pad(out: &mut Vec<u8>) {
        let rest = out.len() % BLOCK;
        if rest != 0 {
            out.resize(out.len() + BLOCK - rest, 0);
        }
    }
}
