//! The server's settings inside a VM: the same `Settings::load` as on a host, fed from the
//! kernel command line, with defaults that suit a VM (reachable through QEMU's port
//! forwarding, database on the tmpfs at /data).

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::cmdline::{BootConfig, EnvSetting, PREFIX};
use crate::config::{ConfigError, Origin, Settings};

/// Guest defaults, as (variable, path in the profile's `server` section, value). The host
/// defaults would be unreachable through port forwarding (127.0.0.1) and would put the
/// database in the initramfs root (./plexichat.db).
const GUEST_DEFAULTS: &[(&str, &[&str], &str)] = &[
    ("PLEXICHAT_LISTEN", &["listen"], "0.0.0.0:8000"),
    (
        "PLEXICHAT_DATABASE_URL",
        &["database", "url"],
        "sqlite:///data/plexichat.db",
    ),
];

/// Profile, then environment (`PLEXICHAT_*` variables the kernel passed to init), then the
/// command line; a command-line error names the `plexichat.*` token rather than a variable.
pub(super) fn load(boot: &BootConfig, process_env: Vec<(String, String)>) -> Result<Settings, ConfigError> {
    let profile = profile_path(boot, &process_env);
    let env = settings_env(boot, process_env, |path| {
        profile.as_deref().is_some_and(|profile| profile_sets(profile, path))
    });
    Settings::load(profile.as_deref(), env).map_err(|mut err| {
        if let Some(setting) = blamed_setting(boot, &err) {
            err.origin = Origin::Flag(setting.key.clone());
        }
        err
    })
}

/// The command-line token behind a configuration error. config.rs names the variable when
/// the field is exactly the variable's, but an unknown field part-way along a path
/// (`rate_limit` in `plexichat.rate_limit.enabled`) is blamed on the defaults or profile.
fn blamed_setting<'a>(boot: &'a BootConfig, err: &ConfigError) -> Option<&'a EnvSetting> {
    match &err.origin {
        Origin::Env(var) => boot.env.iter().find(|setting| &setting.var == var),
        Origin::Defaults | Origin::File(_) => {
            let field = err.field.strip_prefix("server.")?;
            boot.env.iter().rev().find(|setting| {
                let path = setting.key.strip_prefix(PREFIX).unwrap_or(&setting.key);
                path.strip_prefix(field)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            })
        }
        Origin::Flag(_) => None,
    }
}

/// `plexichat.config`, else `PLEXICHAT_CONFIG` as on a host.
pub(super) fn profile_path(boot: &BootConfig, process_env: &[(String, String)]) -> Option<PathBuf> {
    boot.profile.clone().or_else(|| {
        process_env
            .iter()
            .find(|(var, _)| var == "PLEXICHAT_CONFIG")
            .map(|(_, value)| PathBuf::from(value))
    })
}

/// The log filter: `plexichat.log`, else `PLEXICHAT_LOG`.
pub(super) fn log_filter(boot: &BootConfig, process_env: &[(String, String)]) -> Option<String> {
    boot.log.clone().or_else(|| {
        process_env
            .iter()
            .find(|(var, _)| var == "PLEXICHAT_LOG")
            .map(|(_, value)| value.clone())
    })
}

/// The variables for `Settings::load`. Guest defaults come first so that any variable for
/// the same field overrides them, and are left out when the profile sets that field,
/// because `Settings::load` ranks every variable above the profile.
fn settings_env(
    boot: &BootConfig,
    process_env: Vec<(String, String)>,
    profile_sets: impl Fn(&[&str]) -> bool,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = GUEST_DEFAULTS
        .iter()
        .filter(|(_, path, _)| !profile_sets(path))
        .map(|(var, _, value)| (var.to_string(), value.to_string()))
        .collect();
    // Only the server's variables: HOME, TERM and the like are none of its business.
    env.extend(process_env.into_iter().filter(|(var, _)| var.starts_with("PLEXICHAT_")));
    for setting in &boot.env {
        env.push((setting.var.clone(), setting.value.clone()));
    }
    env
}

/// Whether the profile's `server` section has a value at `path`. A profile that cannot be
/// read counts as silent here; `Settings::load` reports it properly.
fn profile_sets(profile: &Path, path: &[&str]) -> bool {
    let Ok(text) = std::fs::read_to_string(profile) else {
        return false;
    };
    let Ok(document) = serde_yaml::from_str::<Value>(&text) else {
        return false;
    };
    let mut node = &document["server"];
    for key in path {
        node = &node[*key];
    }
    !node.is_null()
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::guest::cmdline;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn profile(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn guest_defaults_listen_everywhere_and_store_in_data() {
        let settings = load(&cmdline::parse("console=ttyS0").unwrap(), Vec::new()).unwrap();
        assert_eq!(settings.listen.to_string(), "0.0.0.0:8000");
        assert_eq!(settings.database.url, "sqlite:///data/plexichat.db");
    }

    #[test]
    fn the_command_line_overrides_environment_and_defaults() {
        let boot = cmdline::parse("plexichat.listen=0.0.0.0:9000 plexichat.node_id=g1 plexichat.cache.ttl=3s").unwrap();
        let env = vars(&[("PLEXICHAT_NODE_ID", "from-env"), ("HOME", "/"), ("TERM", "linux")]);
        let settings = load(&boot, env).unwrap();
        assert_eq!(settings.listen.port(), 9000);
        assert_eq!(settings.node_id.as_deref(), Some("g1"));
        assert_eq!(settings.cache.ttl, std::time::Duration::from_secs(3));
    }

    #[test]
    fn a_path_variable_overrides_the_default_of_its_alias() {
        let boot = cmdline::parse("plexichat.database.url=sqlite:///tmp/x.db").unwrap();
        assert_eq!(load(&boot, Vec::new()).unwrap().database.url, "sqlite:///tmp/x.db");
    }

    #[test]
    fn a_profile_value_beats_the_guest_default() {
        let file = profile("server:\n  listen: 0.0.0.0:7000\n");
        let boot = cmdline::parse(&format!("plexichat.config={}", file.path().display())).unwrap();
        let settings = load(&boot, Vec::new()).unwrap();
        assert_eq!(settings.listen.port(), 7000);
        // The profile says nothing about the database: the guest default still applies.
        assert_eq!(settings.database.url, "sqlite:///data/plexichat.db");
    }

    #[test]
    fn errors_name_the_kernel_token() {
        let boot = cmdline::parse("plexichat.listen=nowhere").unwrap();
        let err = load(&boot, Vec::new()).unwrap_err();
        assert_eq!(err.origin, Origin::Flag("plexichat.listen".into()));
        assert_eq!(err.field, "server.listen");
        let boot = cmdline::parse("plexichat.compression.level=12").unwrap();
        let err = load(&boot, Vec::new()).unwrap_err();
        assert_eq!(err.origin, Origin::Flag("plexichat.compression.level".into()));
    }

    #[test]
    fn an_unknown_section_is_blamed_on_its_token() {
        let boot = cmdline::parse("plexichat.node_id=g1 plexichat.rate_limit.enabled=false").unwrap();
        let err = load(&boot, Vec::new()).unwrap_err();
        assert_eq!(err.field, "server.rate_limit");
        assert_eq!(err.origin, Origin::Flag("plexichat.rate_limit.enabled".into()));
        // Part of a name is not part of the path.
        let err = ConfigError {
            origin: Origin::Defaults,
            field: "server.rate".into(),
            problem: String::new(),
            fix: String::new(),
        };
        assert_eq!(blamed_setting(&boot, &err), None);
    }

    #[test]
    fn profile_and_log_fall_back_to_the_environment() {
        let boot = cmdline::parse("").unwrap();
        let env = vars(&[("PLEXICHAT_CONFIG", "/p.yaml"), ("PLEXICHAT_LOG", "debug")]);
        assert_eq!(profile_path(&boot, &env), Some(PathBuf::from("/p.yaml")));
        assert_eq!(log_filter(&boot, &env).as_deref(), Some("debug"));
        let boot = cmdline::parse("plexichat.config=/q.yaml plexichat.log=warn").unwrap();
        assert_eq!(profile_path(&boot, &env), Some(PathBuf::from("/q.yaml")));
        assert_eq!(log_filter(&boot, &env).as_deref(), Some("warn"));
    }
}
