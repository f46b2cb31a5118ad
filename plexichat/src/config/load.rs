//! Loading: a profile's `server` section, then `PLEXICHAT_*` environment overrides,
//! remembering where each value came from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::{ConfigError, Origin, Settings};

/// Environment variables with a fixed meaning; anything else under `PLEXICHAT_` that
/// contains `__` is a path into the `server` section (`PLEXICHAT_RATE_LIMITS__ENABLED=false`).
const ENV_ALIASES: &[(&str, &[&str])] = &[
    ("PLEXICHAT_LISTEN", &["listen"]),
    ("PLEXICHAT_DATABASE_URL", &["database", "url"]),
    ("PLEXICHAT_NATS_URL", &["cluster", "nats_url"]),
    ("PLEXICHAT_NODE_ID", &["node_id"]),
];
/// Variables read elsewhere (the profile path, the log filter), not settings.
const ENV_NOT_SETTINGS: &[&str] = &["PLEXICHAT_CONFIG", "PLEXICHAT_LOG"];

/// Where each setting came from: a `PLEXICHAT_*` variable, the profile or the defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sources {
    profile: Option<PathBuf>,
    /// Dotted paths (below `server`) of the values the profile sets.
    profile_fields: BTreeSet<String>,
    /// Dotted path set by each variable, and the variable.
    env: BTreeMap<String, String>,
}

impl Sources {
    /// Where the value behind the first of `fields` that was set came from. A field
    /// counts as set by a variable or profile that sets it, a value inside it (a rule on
    /// `rate_limits` is broken by `PLEXICHAT_RATE_LIMITS__API_BURST`) or a mapping
    /// around it (`PLEXICHAT_LISTEN__PORT` turns `listen` into a mapping).
    pub fn origin_of(&self, fields: &[&str]) -> Origin {
        let related = |set: &str, field: &str| {
            set == field
                || set.strip_prefix(field).is_some_and(|rest| rest.starts_with('.'))
                || field.strip_prefix(set).is_some_and(|rest| rest.starts_with('.'))
        };
        let fields = fields.iter().map(|field| field.trim_start_matches("server."));
        for field in fields.clone() {
            if let Some((_, var)) = self.env.iter().find(|(set, _)| related(set, field)) {
                return Origin::Env(var.clone());
            }
        }
        match &self.profile {
            Some(path)
                if fields
                    .clone()
                    .any(|field| self.profile_fields.iter().any(|set| related(set, field))) =>
            {
                Origin::File(path.clone())
            }
            _ => Origin::Defaults,
        }
    }
}

impl Settings {
    /// Reads a profile (or the defaults when `profile` is `None`) and applies the
    /// `PLEXICHAT_*` variables in `env`.
    pub fn load<I>(profile: Option<&Path>, env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        Self::load_with_sources(profile, env).map(|(settings, _)| settings)
    }

    /// `load`, also telling where each setting came from, so that a setting the
    /// environment later refuses (a port in use) can be reported like a bad value.
    pub fn load_with_sources<I>(profile: Option<&Path>, env: I) -> Result<(Self, Sources), ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut sources = Sources {
            profile: profile.map(Path::to_path_buf),
            ..Sources::default()
        };
        let mut server = match profile {
            Some(path) => read_profile(path)?,
            None => Value::Mapping(Default::default()),
        };
        leaf_paths(&server, "", &mut sources.profile_fields);
        for (var, value) in env {
            if let Some(path) = env_override_path(&var)? {
                let scalar = if ENV_ALIASES.iter().any(|(alias, _)| *alias == var) {
                    Value::String(value)
                } else {
                    serde_yaml::from_str(&value).unwrap_or(Value::String(value))
                };
                set_path(&mut server, &path, scalar);
                sources.env.insert(path.join("."), var);
            }
        }
        let settings: Settings = serde_path_to_error::deserialize(server).map_err(|err| {
            let field = err.path().to_string();
            let problem = err.into_inner().to_string();
            let fix = fix_for(&problem);
            ConfigError {
                origin: sources.origin_of(&[&field]),
                field: format!("server.{field}"),
                problem,
                fix,
            }
        })?;
        settings.check().map_err(|invalid| {
            let origin = sources.origin_of(invalid.fields);
            invalid.into_error(origin)
        })?;
        Ok((settings, sources))
    }
}

/// The `server` section of a profile file. Other sections (`build`, …) belong to the
/// toolchain and are not the server's business, but an unknown top-level key is a typo.
fn read_profile(path: &Path) -> Result<Value, ConfigError> {
    let origin = Origin::File(path.to_path_buf());
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
        origin: origin.clone(),
        field: "(file)".into(),
        problem: format!("cannot read the profile: {err}"),
        fix: "pass an existing profile, e.g. --config profiles/dev.yaml".into(),
    })?;
    let document: Value = serde_yaml::from_str(&text).map_err(|err| ConfigError {
        origin: origin.clone(),
        field: "(document)".into(),
        problem: format!("not valid YAML: {err}"),
        fix: "correct the YAML syntax at the position given".into(),
    })?;
    let mut top = match document {
        Value::Mapping(map) => map,
        Value::Null => Default::default(),
        _ => {
            return Err(ConfigError {
                origin,
                field: "(document)".into(),
                problem: "a profile must be a mapping".into(),
                fix: "start the file with `server:`".into(),
            })
        }
    };
    for key in top.keys() {
        let name = key.as_str().unwrap_or_default();
        if !PROFILE_SECTIONS.contains(&name) {
            return Err(ConfigError {
                origin,
                field: format!("{key:?}"),
                problem: format!("unknown section `{name}`"),
                fix: format!("use one of: {}", PROFILE_SECTIONS.join(", ")),
            });
        }
    }
    Ok(top
        .remove("server")
        .filter(|server| !server.is_null())
        .unwrap_or_else(|| Value::Mapping(Default::default())))
}

/// Top-level keys a profile may have; the server reads only `server`.
const PROFILE_SECTIONS: &[&str] = &["description", "server", "build"];

fn env_override_path(var: &str) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(rest) = var.strip_prefix("PLEXICHAT_") else {
        return Ok(None);
    };
    if let Some((_, path)) = ENV_ALIASES.iter().find(|(alias, _)| *alias == var) {
        return Ok(Some(path.iter().map(|s| s.to_string()).collect()));
    }
    if ENV_NOT_SETTINGS.contains(&var) {
        return Ok(None);
    }
    if rest.contains("__") {
        return Ok(Some(
            rest.to_ascii_lowercase().split("__").map(str::to_string).collect(),
        ));
    }
    let known: Vec<&str> = ENV_ALIASES
        .iter()
        .map(|(alias, _)| *alias)
        .chain(ENV_NOT_SETTINGS.iter().copied())
        .collect();
    Err(ConfigError {
        origin: Origin::Env(var.to_string()),
        field: "(variable)".into(),
        problem: format!("unknown variable {var}"),
        fix: format!(
            "use one of {} or a path such as PLEXICHAT_RATE_LIMITS__ENABLED, or unset it",
            known.join(", ")
        ),
    })
}

/// Collects the dotted paths of the scalar (and sequence) values under `node`.
fn leaf_paths(node: &Value, prefix: &str, into: &mut BTreeSet<String>) {
    match node {
        Value::Mapping(map) => {
            for (key, value) in map {
                let key = key.as_str().map_or_else(|| format!("{key:?}"), str::to_string);
                let path = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_paths(value, &path, into);
            }
        }
        _ if !prefix.is_empty() => {
            into.insert(prefix.to_string());
        }
        _ => {}
    }
}

fn set_path(root: &mut Value, path: &[String], leaf: Value) {
    let mut node = root;
    for key in path {
        if !node.is_mapping() {
            *node = Value::Mapping(Default::default());
        }
        let Value::Mapping(map) = node else {
            unreachable!("made a mapping above")
        };
        node = map.entry(Value::String(key.clone())).or_insert(Value::Null);
    }
    *node = leaf;
}

/// serde's messages already say what is expected; this turns them into an instruction.
fn fix_for(problem: &str) -> String {
    let expected = problem
        .split_once("expected ")
        .map(|(_, rest)| rest.trim_start_matches("one of "));
    match expected {
        Some(expected) if problem.starts_with("unknown field") => format!("remove it, or use one of {expected}"),
        Some(expected) if problem.starts_with("unknown variant") => format!("use one of {expected}"),
        Some(expected) => format!("give {expected}"),
        None => "see profiles/dev.yaml for a valid example".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::test_support::{no_env, profile};
    use crate::config::CacheSettings;

    #[test]
    fn profile_values_and_durations_are_read() {
        let file = profile("server:\n  http:\n    request_timeout: 1500ms\n  cache:\n    ttl: 2m\n");
        let settings = Settings::load(Some(file.path()), no_env()).unwrap();
        assert_eq!(settings.http.request_timeout, Duration::from_millis(1500));
        assert_eq!(settings.cache.ttl, Duration::from_secs(120));
        assert_eq!(settings.cache.max_entries, CacheSettings::default().max_entries);
    }

    #[test]
    fn unknown_field_names_file_field_and_choices() {
        let file = profile("server:\n  cache:\n    ttl_seconds: 5\n");
        let err = Settings::load(Some(file.path()), no_env()).unwrap_err();
        assert_eq!(err.origin, Origin::File(file.path().to_path_buf()));
        assert_eq!(err.field, "server.cache.ttl_seconds");
        assert!(err.problem.contains("unknown field `ttl_seconds`"), "{err}");
        assert!(err.fix.contains("`ttl`"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let file = profile("server:\n  rate_limits:\n    api_per_second: lots\n");
        let err = Settings::load(Some(file.path()), no_env()).unwrap_err();
        assert_eq!(err.field, "server.rate_limits.api_per_second");
        assert!(err.to_string().contains("fix:"), "{err}");
    }

    #[test]
    fn unknown_section_is_rejected_but_build_is_not_ours_to_check() {
        let file = profile("build:\n  targets: [anything]\nserver:\n  listen: 127.0.0.1:9000\n");
        assert_eq!(Settings::load(Some(file.path()), no_env()).unwrap().listen.port(), 9000);
        let file = profile("sever:\n  listen: 127.0.0.1:9000\n");
        let err = Settings::load(Some(file.path()), no_env()).unwrap_err();
        assert!(err.problem.contains("unknown section `sever`"), "{err}");
        assert!(err.fix.contains("server"), "{err}");
    }

    #[test]
    fn environment_overrides_the_profile() {
        let file = profile("server:\n  listen: 127.0.0.1:9000\n  rate_limits:\n    enabled: true\n");
        let env = [
            ("PLEXICHAT_LISTEN", "127.0.0.1:9100"),
            ("PLEXICHAT_NODE_ID", "7"),
            ("PLEXICHAT_RATE_LIMITS__ENABLED", "false"),
            ("PLEXICHAT_CACHE__TTL", "3s"),
            ("HOME", "/ignored"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let settings = Settings::load(Some(file.path()), env).unwrap();
        assert_eq!(settings.listen.port(), 9100);
        assert_eq!(settings.node_id.as_deref(), Some("7"));
        assert!(!settings.rate_limits.enabled);
        assert_eq!(settings.cache.ttl, Duration::from_secs(3));
    }

    #[test]
    fn bad_environment_value_names_the_variable() {
        let env = [("PLEXICHAT_COMPRESSION__LEVEL".to_string(), "0".to_string())];
        let err = Settings::load(None, env).unwrap_err();
        assert_eq!(err.origin, Origin::Env("PLEXICHAT_COMPRESSION__LEVEL".into()));
        let env = [("PLEXICHAT_LISTEN".to_string(), "nowhere".to_string())];
        let err = Settings::load(None, env).unwrap_err();
        assert_eq!(err.origin, Origin::Env("PLEXICHAT_LISTEN".into()));
        assert_eq!(err.field, "server.listen");
        let env = [("PLEXICHAT_LISTN".to_string(), "x".to_string())];
        let err = Settings::load(None, env).unwrap_err();
        assert!(err.problem.contains("unknown variable PLEXICHAT_LISTN"), "{err}");
    }

    #[test]
    fn a_rule_broken_by_a_variable_names_the_variable_not_the_defaults() {
        let cases = [
            // The rule is reported on a parent, a sibling or the mapping around the value.
            ("PLEXICHAT_RATE_LIMITS__API_BURST", "0"),
            ("PLEXICHAT_LIMITS__USERNAME_MAX", "2"),
            ("PLEXICHAT_CLUSTER__HEARTBEAT_INTERVAL", "10s"),
            ("PLEXICHAT_DATABASE__MIN_CONNECTIONS", "50"),
            ("PLEXICHAT_AUTH__ARGON2_PARALLELISM", "0"),
            ("PLEXICHAT_LISTEN__PORT", "80"),
        ];
        for (var, value) in cases {
            let err = Settings::load(None, [(var.to_string(), value.to_string())]).unwrap_err();
            assert_eq!(err.origin, Origin::Env(var.into()), "{err}");
        }
    }

    #[test]
    fn sources_tell_variables_profile_and_defaults_apart() {
        let file = profile("server:\n  listen: 127.0.0.1:9000\n  limits:\n    username_max: 2\n");
        let err = Settings::load(Some(file.path()), no_env()).unwrap_err();
        assert_eq!(err.origin, Origin::File(file.path().to_path_buf()), "{err}");
        let file = profile("server:\n  listen: 127.0.0.1:9000\n");
        let env = [("PLEXICHAT_DATABASE_URL".to_string(), "sqlite://x.db".to_string())];
        let (_, sources) = Settings::load_with_sources(Some(file.path()), env).unwrap();
        assert_eq!(
            sources.origin_of(&["server.listen"]),
            Origin::File(file.path().to_path_buf())
        );
        assert_eq!(
            sources.origin_of(&["server.database.url"]),
            Origin::Env("PLEXICHAT_DATABASE_URL".into())
        );
        assert_eq!(sources.origin_of(&["server.node_id"]), Origin::Defaults);
    }

    #[test]
    fn shipped_profiles_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "yaml") {
                Settings::load(Some(&path), no_env()).unwrap_or_else(|err| panic!("{err}"));
                seen += 1;
            }
        }
        assert!(
            seen >= 3,
            "expected dev, production and bench profiles in {}",
            dir.display()
        );
    }
}
