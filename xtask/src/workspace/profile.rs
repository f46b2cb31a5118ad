//! Profiles (`profiles/NAME.yaml`): the `build` section is the toolchain's (targets,
//! cargo profile, features, rustflags, LTO, codegen units, sccache); `server` is the
//! server's own and is checked by the server when it starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::report::error::UsageError;
use crate::workspace::targets::{self, Target};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[allow(dead_code)] // documentation for people; read so that it is allowed
    description: Option<String>,
    /// The server's section: validated by `plexichat serve --config`.
    server: Option<serde_yaml::Value>,
    build: Option<BuildSection>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildSection {
    /// Architectures (`x86_64`, `aarch64`, `riscv64`), triples, or `all`.
    pub targets: Vec<String>,
    /// A cargo profile: `release`, `dev`, or one defined in Cargo.toml.
    pub cargo_profile: String,
    pub features: Vec<String>,
    /// Extra rustc flags for the target code (not build scripts).
    pub rustflags: Vec<String>,
    pub lto: Option<Lto>,
    pub codegen_units: Option<u32>,
    /// Compile through sccache (RUSTC_WRAPPER), e.g. to share a team cache.
    pub sccache: bool,
}

impl Default for BuildSection {
    fn default() -> Self {
        Self {
            targets: vec!["all".into()],
            cargo_profile: "release".into(),
            features: Vec::new(),
            rustflags: Vec::new(),
            lto: None,
            codegen_units: None,
            sccache: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lto {
    Off,
    Thin,
    Fat,
}

impl Lto {
    /// The value of CARGO_PROFILE_<P>_LTO.
    pub fn cargo_value(self) -> &'static str {
        match self {
            Lto::Off => "off",
            Lto::Thin => "thin",
            Lto::Fat => "fat",
        }
    }
}

#[derive(Debug)]
pub struct Profile {
    pub name: String,
    pub path: PathBuf,
    pub build: BuildSection,
    /// Whether the file has a build section (else `build` is the defaults): a release
    /// insists on one.
    pub declares_build: bool,
    pub targets: Vec<&'static Target>,
    server: Option<serde_yaml::Value>,
}

impl Profile {
    /// Loads `profiles/NAME.yaml`, or the file NAME when it is a path (it contains a `/`
    /// or ends in `.yaml`); every mistake names the file, the field and the fix.
    pub fn load(profiles_dir: &Path, name: &str) -> Result<Self, UsageError> {
        let path = if name.contains('/') || name.ends_with(".yaml") {
            PathBuf::from(name)
        } else {
            profiles_dir.join(format!("{name}.yaml"))
        };
        let name = path.file_stem().and_then(|stem| stem.to_str()).unwrap_or(name);
        let text = std::fs::read_to_string(&path).map_err(|err| {
            UsageError(format!(
                "profile `{name}`: cannot read {}: {err}\n  fix: use one of {}",
                path.display(),
                crate::workspace::yaml_names(profiles_dir).join(", ")
            ))
        })?;
        Self::parse(name, &path, &text)
    }

    fn parse(name: &str, path: &Path, text: &str) -> Result<Self, UsageError> {
        let place = path.display();
        let document = serde_yaml::Deserializer::from_str(text);
        let file: ProfileFile = serde_path_to_error::deserialize(document)
            .map_err(|err| UsageError::yaml(&place, err, "profiles/release.yaml"))?;
        let declares_build = file.build.is_some();
        let build = file.build.unwrap_or_default();
        let mut chosen = Vec::new();
        for (index, name) in build.targets.iter().enumerate() {
            let targets = targets::parse(name).map_err(|problem| {
                UsageError::at(
                    &place,
                    &format!("build.targets[{index}]"),
                    problem,
                    format!("use one of {}", targets::allowed()),
                )
            })?;
            chosen.extend(targets);
        }
        if chosen.is_empty() {
            return Err(UsageError::at(
                &place,
                "build.targets",
                "no targets",
                "list at least one, e.g. [x86_64]",
            ));
        }
        if build.cargo_profile.is_empty() {
            return Err(UsageError::at(
                &place,
                "build.cargo_profile",
                "empty",
                "use release, dev or a profile of Cargo.toml",
            ));
        }
        if build.codegen_units == Some(0) {
            return Err(UsageError::at(
                &place,
                "build.codegen_units",
                "must be at least 1",
                "use e.g. 1 or 16",
            ));
        }
        Ok(Self {
            name: name.to_string(),
            path: path.to_path_buf(),
            targets: targets::TARGETS.iter().filter(|t| chosen.contains(t)).collect(),
            build,
            declares_build,
            server: file.server,
        })
    }

    /// The membership lease the nodes run with (`server.cluster.lease`, default 5 s):
    /// how long a dead node may still be listed as up.
    pub fn cluster_lease(&self) -> Duration {
        self.server_duration(&["cluster", "lease"], Duration::from_secs(5))
    }

    /// The server section as the file has it (the server checks it when it starts).
    pub fn server_section(&self) -> Option<&serde_yaml::Value> {
        self.server.as_ref()
    }

    /// A duration of the server section (`path` below `server`, e.g. `["http",
    /// "shutdown_timeout"]`), or `default` where the profile leaves it to the server.
    pub fn server_duration(&self, path: &[&str], default: Duration) -> Duration {
        let mut value = self.server.as_ref();
        for key in path {
            value = value.and_then(|v| v.get(*key));
        }
        value
            .and_then(|v| v.as_str())
            .and_then(|text| humantime::parse_duration(text).ok())
            .unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Profile, UsageError> {
        Profile::parse("test", Path::new("profiles/test.yaml"), text)
    }

    #[test]
    fn defaults_build_every_target_in_release() {
        let profile = parse("server:\n  listen: 127.0.0.1:1\n").unwrap();
        assert_eq!(profile.build.cargo_profile, "release");
        assert_eq!(profile.targets.len(), 3);
    }

    #[test]
    fn a_build_section_is_read() {
        let profile =
            parse("build:\n  targets: [riscv64, x86_64]\n  lto: thin\n  codegen_units: 1\n  features: [a]\n").unwrap();
        let arches: Vec<&str> = profile.targets.iter().map(|t| t.arch).collect();
        assert_eq!(arches, ["x86_64", "riscv64"]);
        assert_eq!(profile.build.lto, Some(Lto::Thin));
    }

    #[test]
    fn unknown_field_names_file_and_field() {
        let err = parse("build:\n  target: [x86_64]\n").unwrap_err().to_string();
        assert!(err.contains("profiles/test.yaml"), "{err}");
        assert!(err.contains("build.target"), "{err}");
        assert!(err.contains("`targets`"), "{err}");
    }

    #[test]
    fn unknown_target_lists_the_allowed_values() {
        let err = parse("build:\n  targets: [x86_64, mips]\n").unwrap_err().to_string();
        assert!(err.contains("build.targets[1]"), "{err}");
        assert!(err.contains("unknown target `mips`"), "{err}");
        assert!(err.contains("riscv64gc-unknown-linux-gnu"), "{err}");
    }

    #[test]
    fn bad_lto_lists_the_variants() {
        let err = parse("build:\n  lto: maximum\n").unwrap_err().to_string();
        assert!(err.contains("build.lto"), "{err}");
        assert!(err.contains("`thin`"), "{err}");
    }

    #[test]
    fn the_cluster_lease_comes_from_the_server_section() {
        assert_eq!(
            parse("server:\n  cluster:\n    lease: 2s\n").unwrap().cluster_lease(),
            Duration::from_secs(2)
        );
        assert_eq!(
            parse("build:\n  targets: [x86_64]\n").unwrap().cluster_lease(),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn unknown_top_level_section_is_refused() {
        let err = parse("biuld:\n  targets: [x86_64]\n").unwrap_err().to_string();
        assert!(err.contains("biuld"), "{err}");
    }
}
