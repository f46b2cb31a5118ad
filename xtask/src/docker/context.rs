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
    use tar::EntryType::{Directory, Regular};
    let root = (0, 0);
    let user = (65532, 65532);
    let mut rootfs = tar::Builder::new(Vec::with_capacity(binary.len() + 8192));
    for dir in ["usr/", "usr/local/", "usr/local/bin/", "etc/", "etc/plexichat/"] {
        append(&mut rootfs, dir, Directory, 0o755, root, &[]);
    }
    append(
        &mut rootfs,
        BINARY.trim_start_matches('/'),
        Regular,
        0o755,
        root,
        binary,
    );
    append(
        &mut rootfs,
        PROFILE.trim_start_matches('/'),
        Regular,
        0o644,
        root,
        profile,
    );
    append(&mut rootfs, "data/", Directory, 0o755, user, &[]);
    // SQLite's temporary files; sticky and world-writable, as everywhere.
    append(&mut rootfs, "tmp/", Directory, 0o1777, root, &[]);
    let rootfs = finish(rootfs);
    let mut context = tar::Builder::new(Vec::with_capacity(rootfs.len() + 4096));
    let dockerfile = dockerfile(server, labels);
    append(&mut context, "Dockerfile", Regular, 0o644, root, dockerfile.as_bytes());
    append(&mut context, "rootfs.tar", Regular, 0o644, root, &rootfs);
    finish(context)
}

/// The header of every entry. GNU rather than plain ustar: a size past ustar's 11 octal
/// digits (8 GiB) is then written in base-256 instead of losing its top digits, and
/// `append_data` puts a GNU long-name entry before a name over 100 bytes instead of
/// cutting it. Owner, mode and mtime are fixed by us, not taken from any file, so the
/// same binary and profile make the same context.
fn header(kind: tar::EntryType, mode: u32, (uid, gid): (u32, u32), size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(u64::from(uid));
    header.set_gid(u64::from(gid));
    header.set_mtime(0);
    header.set_size(size);
    header
}

/// Appends one entry. The archive is in memory, so writing cannot fail; the tar crate
/// refuses only an absolute name or one with `..`, and every name here is ours: a
/// failure is a bug, reported with the name.
fn append(
    archive: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    mode: u32,
    owner: (u32, u32),
    data: &[u8],
) {
    let mut header = header(kind, mode, owner, data.len() as u64);
    archive
        .append_data(&mut header, name, data)
        .unwrap_or_else(|err| panic!("adding {name} to the build context: {err}"));
}

/// The archive's bytes, after the two zero blocks that end it.
fn finish(archive: tar::Builder<Vec<u8>>) -> Vec<u8> {
    archive
        .into_inner()
        .unwrap_or_else(|err| panic!("ending a build context tar: {err}"))
}

/// The platform string the engine knows `target` by.
pub(crate) fn platform(target: &Target) -> String {
    format!("linux/{}", target.deb_arch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use tar::EntryType::{Directory, Regular};

    /// One entry as the tar crate reads it back.
    struct Entry {
        name: String,
        kind: tar::EntryType,
        mode: u32,
        owner: (u64, u64),
        mtime: u64,
        data: Vec<u8>,
    }

    /// Every entry of `archive`, read by an implementation other than the writer's own
    /// header code (it checks each header's checksum).
    fn entries(archive: &[u8]) -> Vec<Entry> {
        assert_eq!(archive.len() % 512, 0);
        assert!(archive.ends_with(&[0; 1024]), "two zero blocks end an archive");
        let mut reader = tar::Archive::new(archive);
        let entries = reader.entries().expect("a tar archive");
        entries
            .map(|entry| {
                let mut entry = entry.expect("an entry");
                let header = entry.header();
                let mut read = Entry {
                    name: String::from_utf8(entry.path_bytes().into_owned()).expect("a UTF-8 name"),
                    kind: header.entry_type(),
                    mode: header.mode().expect("a mode"),
                    owner: (header.uid().expect("a uid"), header.gid().expect("a gid")),
                    mtime: header.mtime().expect("an mtime"),
                    data: Vec::new(),
                };
                entry.read_to_end(&mut read.data).expect("the entry's data");
                read
            })
            .collect()
    }

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

    #[test]
    fn a_name_over_100_bytes_round_trips_whole() {
        // Its last component alone is over 100 bytes: no ustar prefix/name split fits it.
        let name = format!("usr/share/{}/{}.yaml", "d".repeat(150), "f".repeat(120));
        let mut archive = tar::Builder::new(Vec::new());
        append(&mut archive, &name, Regular, 0o644, (0, 0), b"long");
        append(&mut archive, "after", Regular, 0o600, (1, 2), b"next");
        let read = entries(&finish(archive));
        let names: Vec<&str> = read.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, [name.as_str(), "after"]);
        assert_eq!(
            (read[0].mode, read[0].owner, &read[0].data[..]),
            (0o644, (0, 0), &b"long"[..])
        );
        assert_eq!(
            (read[1].mode, read[1].owner, &read[1].data[..]),
            (0o600, (1, 2), &b"next"[..])
        );
    }

    #[test]
    fn a_size_past_eleven_octal_digits_is_kept_in_base_256() {
        // One byte over ustar's largest size, 0o77777777777 (8 GiB - 1): eleven octal
        // digits cannot hold it, and cutting its leading digit would leave 0.
        let size = 0o77777777777 + 1;
        let header = header(Regular, 0o644, (0, 0), size);
        let read = tar::Header::from_byte_slice(header.as_bytes());
        assert_eq!(read.entry_size().expect("a size"), size);
        assert_eq!(header.as_bytes()[124] & 0x80, 0x80, "GNU's base-256 marker");
        assert!(header.as_gnu().is_some());
    }
}
