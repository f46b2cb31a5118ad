//! The kernel command line is the guest's only per-VM input: the toolchain boots every
//! node from the same image and tells them apart with `plexichat.<key>=<value>` tokens.
//!
//! The kernel hands dotted parameters to no one (it takes them for options of modules
//! that are not loaded), so they are read back from /proc/cmdline.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::net::Ipv4Net;

/// Tokens this guest reads start with this; everything else belongs to the kernel.
pub(super) const PREFIX: &str = "plexichat.";

/// Keys with a variable of their own in the config module (`config::load`), so that `plexichat.listen` reads like
/// the `--listen` flag instead of `plexichat.database.url`-style paths.
const ALIASES: &[(&str, &str)] = &[
    ("listen", "PLEXICHAT_LISTEN"),
    ("database_url", "PLEXICHAT_DATABASE_URL"),
    ("nats_url", "PLEXICHAT_NATS_URL"),
    ("node_id", "PLEXICHAT_NODE_ID"),
];

/// Keys under `plexichat.guest.` configure the VM, not the server.
const GUEST_KEYS: &[&str] = &["guest.address", "guest.gateway"];

/// Everything the command line says, before it is merged with profile and defaults.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct BootConfig {
    /// `plexichat.config`: the profile file, `Settings::load`'s first argument.
    pub profile: Option<PathBuf>,
    /// `plexichat.log`: a tracing filter, like `PLEXICHAT_LOG`.
    pub log: Option<String>,
    /// `PLEXICHAT_*` variables for `Settings::load`, in command-line order, one per variable.
    pub env: Vec<EnvSetting>,
    pub net: GuestNet,
}

/// A server setting given on the command line, with the key it was written as so that
/// a configuration error can name what the user typed.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct EnvSetting {
    pub var: String,
    pub value: String,
    pub key: String,
}

/// eth0's address; the defaults are what QEMU's user-mode networking expects.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct GuestNet {
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
}

impl Default for GuestNet {
    fn default() -> Self {
        Self {
            address: Ipv4Net {
                addr: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
            },
            gateway: Ipv4Addr::new(10, 0, 2, 2),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("kernel command line: `{token}`: {problem}")]
pub(super) struct CmdlineError {
    pub token: String,
    pub problem: String,
}

/// Reads the `plexichat.*` tokens of a kernel command line; a later token wins over an
/// earlier one with the same key, as with kernel parameters.
pub(super) fn parse(cmdline: &str) -> Result<BootConfig, CmdlineError> {
    let mut boot = BootConfig::default();
    for token in tokens(cmdline) {
        let Some(rest) = token.strip_prefix(PREFIX) else {
            continue;
        };
        let fail = |problem: String| CmdlineError {
            token: token.clone(),
            problem,
        };
        let Some((key, value)) = rest.split_once('=') else {
            return Err(fail(format!("needs a value, e.g. {PREFIX}{rest}=VALUE")));
        };
        if key.split('.').any(str::is_empty) {
            return Err(fail("the key has an empty part".into()));
        }
        match key {
            "config" => boot.profile = Some(PathBuf::from(value)),
            "log" => boot.log = Some(value.to_string()),
            "guest.address" => {
                boot.net.address = value
                    .parse()
                    .map_err(|err| fail(format!("{err}; write e.g. {PREFIX}guest.address=10.0.2.15/24")))?;
            }
            "guest.gateway" => {
                boot.net.gateway = value
                    .parse()
                    .map_err(|_| fail(format!("`{value}` is not an IPv4 address, e.g. 10.0.2.2")))?;
            }
            _ if key.starts_with("guest.") => {
                return Err(fail(format!(
                    "unknown guest key; use one of {}",
                    GUEST_KEYS
                        .iter()
                        .map(|key| format!("{PREFIX}{key}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            _ => {
                let var = env_var(key);
                boot.env.retain(|setting| setting.var != var);
                boot.env.push(EnvSetting {
                    var,
                    value: value.to_string(),
                    key: format!("{PREFIX}{key}"),
                });
            }
        }
    }
    Ok(boot)
}

/// The variable the config module reads for a key: an alias, or the `__`-separated path form
/// (`rate_limits.enabled` → `PLEXICHAT_RATE_LIMITS__ENABLED`).
fn env_var(key: &str) -> String {
    if let Some((_, var)) = ALIASES.iter().find(|(alias, _)| *alias == key) {
        return var.to_string();
    }
    let path: Vec<String> = key.split('.').map(str::to_ascii_uppercase).collect();
    format!("PLEXICHAT_{}", path.join("__"))
}

/// Splits like the kernel does: on whitespace, except inside double quotes, which are
/// dropped (`a="b c"` is the token `a=b c`).
fn tokens(cmdline: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut in_token = false;
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_token = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_token {
                    tokens.push(std::mem::take(&mut current));
                    in_token = false;
                }
            }
            c => {
                current.push(c);
                in_token = true;
            }
        }
    }
    if in_token {
        tokens.push(current);
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(boot: &BootConfig) -> Vec<(&str, &str)> {
        boot.env
            .iter()
            .map(|setting| (setting.var.as_str(), setting.value.as_str()))
            .collect()
    }

    #[test]
    fn aliases_map_to_their_variables() {
        let boot = parse(
            "console=ttyS0 plexichat.listen=0.0.0.0:9000 plexichat.database_url=postgres://chat@10.0.2.2:5432/chat \
             plexichat.nats_url=nats://10.0.2.2:4222 plexichat.node_id=g1",
        )
        .unwrap();
        assert_eq!(
            env(&boot),
            [
                ("PLEXICHAT_LISTEN", "0.0.0.0:9000"),
                ("PLEXICHAT_DATABASE_URL", "postgres://chat@10.0.2.2:5432/chat"),
                ("PLEXICHAT_NATS_URL", "nats://10.0.2.2:4222"),
                ("PLEXICHAT_NODE_ID", "g1"),
            ]
        );
        assert_eq!(boot.env[3].key, "plexichat.node_id");
    }

    #[test]
    fn dotted_keys_become_env_paths() {
        let boot = parse("plexichat.rate_limits.enabled=false plexichat.cache.ttl=3s").unwrap();
        assert_eq!(
            env(&boot),
            [
                ("PLEXICHAT_RATE_LIMITS__ENABLED", "false"),
                ("PLEXICHAT_CACHE__TTL", "3s")
            ]
        );
    }

    #[test]
    fn values_keep_their_equals_signs() {
        let boot =
            parse("plexichat.database_url=postgres://u:p=w@h/db?sslmode=disable plexichat.log=info,sqlx=warn").unwrap();
        assert_eq!(
            env(&boot),
            [("PLEXICHAT_DATABASE_URL", "postgres://u:p=w@h/db?sslmode=disable")]
        );
        assert_eq!(boot.log.as_deref(), Some("info,sqlx=warn"));
    }

    #[test]
    fn config_and_log_are_not_settings_variables() {
        let boot = parse("plexichat.config=/etc/plexichat/profile.yaml plexichat.log=debug").unwrap();
        assert_eq!(boot.profile, Some(PathBuf::from("/etc/plexichat/profile.yaml")));
        assert_eq!(boot.log.as_deref(), Some("debug"));
        assert!(boot.env.is_empty(), "{:?}", boot.env);
    }

    #[test]
    fn guest_keys_configure_the_network_and_reach_no_setting() {
        let boot = parse("plexichat.guest.address=192.168.7.20/16 plexichat.guest.gateway=192.168.0.1").unwrap();
        assert_eq!(boot.net.address.to_string(), "192.168.7.20/16");
        assert_eq!(boot.net.gateway, Ipv4Addr::new(192, 168, 0, 1));
        assert!(boot.env.is_empty(), "{:?}", boot.env);
    }

    #[test]
    fn defaults_when_nothing_is_given() {
        let boot = parse("console=ttyS0 quiet panic=-1").unwrap();
        assert_eq!(boot, BootConfig::default());
        assert_eq!(boot.net.address.to_string(), "10.0.2.15/24");
        assert_eq!(boot.net.gateway, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(parse("").unwrap(), BootConfig::default());
    }

    #[test]
    fn other_tokens_are_ignored() {
        let boot =
            parse("plexichat plexichat_listen=x xplexichat.listen=y virtio_net.napi_tx=1 -- plexichat.node_id=n")
                .unwrap();
        assert_eq!(env(&boot), [("PLEXICHAT_NODE_ID", "n")]);
    }

    #[test]
    fn the_last_token_for_a_key_wins() {
        let boot = parse("plexichat.node_id=a plexichat.listen=0.0.0.0:1 plexichat.node_id=b").unwrap();
        assert_eq!(
            env(&boot),
            [("PLEXICHAT_LISTEN", "0.0.0.0:1"), ("PLEXICHAT_NODE_ID", "b")]
        );
    }

    #[test]
    fn quotes_group_and_are_dropped() {
        let boot = parse("a=\"x y\" plexichat.node_id=\"my node\"\n").unwrap();
        assert_eq!(env(&boot), [("PLEXICHAT_NODE_ID", "my node")]);
    }

    #[test]
    fn mistakes_name_the_token() {
        let err = parse("plexichat.guest.address=10.0.2.15").unwrap_err();
        assert_eq!(err.token, "plexichat.guest.address=10.0.2.15");
        assert!(err.problem.contains("10.0.2.15/24"), "{err}");
        let err = parse("plexichat.guest.gateway=gw").unwrap_err();
        assert!(err.problem.contains("not an IPv4 address"), "{err}");
        let err = parse("plexichat.guest.dns=1.1.1.1").unwrap_err();
        assert!(err.problem.contains("plexichat.guest.address"), "{err}");
        let err = parse("plexichat.listen").unwrap_err();
        assert!(err.problem.contains("needs a value"), "{err}");
        let err = parse("plexichat.cache..ttl=3s").unwrap_err();
        assert!(err.problem.contains("empty part"), "{err}");
    }
}
