//! The `plexichat` binary: `plexichat [serve] [flags]`.
// The package's other targets' dependencies are in scope here too; unused ones are
// the library's lint to catch.
#![allow(unused_crate_dependencies)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use plexichat::config::{ConfigError, Origin, Settings, Sources};
use plexichat::startup::{chain_once, StartupError};
use plexichat::Server;
use tracing_subscriber::EnvFilter;

/// PlexiChat chat server. With no subcommand it serves, like `plexichat serve`.
#[derive(Parser)]
#[command(
    name = "plexichat",
    version = plexichat::version(),
    about,
    after_help = "Example: plexichat serve --config profiles/dev.yaml --listen 127.0.0.1:8080"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP and WebSocket API (the default).
    Serve(ServeArgs),
    /// Exit 0 if the server at --url answers /health, else 1 (for container HEALTHCHECKs).
    Healthcheck {
        /// The health endpoint to probe.
        #[arg(long, default_value = "http://127.0.0.1:8000/health")]
        url: String,
        /// How long to wait for connecting and for the answer, e.g. 3s.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// Profile file (YAML); its `server` section configures the server.
    #[arg(long, value_name = "FILE", env = "PLEXICHAT_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8000 (port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// nats://HOST:PORT, for fan-out across a cluster.
    #[arg(long, value_name = "URL")]
    nats_url: Option<String>,
    /// This node's name in a cluster.
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
}

impl ServeArgs {
    /// Profile, then environment, then these flags; flags win.
    fn settings(&self) -> Result<(Settings, Sources), ConfigError> {
        let mut env: Vec<(String, String)> = std::env::vars().collect();
        for (var, _, value) in self.flags() {
            if let Some(value) = value {
                env.retain(|(name, _)| name != var);
                env.push((var.to_string(), value.clone()));
            }
        }
        Settings::load_with_sources(self.config.as_deref(), env).map_err(|mut err| {
            err.origin = self.name_flag(err.origin);
            err
        })
    }

    /// Each flag, the variable it travels as, and its value.
    fn flags(&self) -> [(&'static str, &'static str, &Option<String>); 4] {
        [
            ("PLEXICHAT_LISTEN", "--listen", &self.listen),
            ("PLEXICHAT_DATABASE_URL", "--database-url", &self.database_url),
            ("PLEXICHAT_NATS_URL", "--nats-url", &self.nats_url),
            ("PLEXICHAT_NODE_ID", "--node-id", &self.node_id),
        ]
    }

    /// A flag travels as its variable; name the flag the user actually typed.
    fn name_flag(&self, origin: Origin) -> Origin {
        if let Origin::Env(var) = &origin {
            if let Some((_, flag, _)) = self
                .flags()
                .into_iter()
                .find(|(name, _, value)| name == var && value.is_some())
            {
                return Origin::Flag(flag.to_string());
            }
        }
        origin
    }
}

/// Used when PLEXICHAT_LOG is not set.
const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn";

/// The log filter PLEXICHAT_LOG asks for. A filter that does not parse is refused rather
/// than replaced by the default: the logs someone asked for would silently be missing.
fn log_filter() -> Result<EnvFilter, ConfigError> {
    let refuse = |problem: String| ConfigError {
        origin: Origin::Env("PLEXICHAT_LOG".into()),
        field: "(log filter)".into(),
        problem,
        fix: format!(
            "use a level (error, warn, info, debug, trace) or directives such as \
             info,plexichat=debug; unset it for the default {DEFAULT_LOG_FILTER}"
        ),
    };
    match std::env::var("PLEXICHAT_LOG") {
        Err(std::env::VarError::NotPresent) => Ok(EnvFilter::new(DEFAULT_LOG_FILTER)),
        Err(std::env::VarError::NotUnicode(_)) => Err(refuse("not valid UTF-8".into())),
        Ok(text) => EnvFilter::try_new(&text).map_err(|err| refuse(format!("`{text}` is not a log filter: {err}"))),
    }
}

fn main() -> ExitCode {
    plexichat::allocator::return_large_blocks_when_freed();
    // As a VM's /init there are no arguments to parse: the kernel command line configures
    // the server, and the process must power the machine off instead of exiting.
    #[cfg(target_os = "linux")]
    if plexichat::guest::is_vm_init() {
        plexichat::guest::run();
    }
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        Some(Command::Healthcheck { url, timeout }) => return healthcheck(&url, timeout),
        None => cli.serve,
    };
    let (settings, sources) = match args.settings() {
        Ok(loaded) => loaded,
        Err(err) => return usage_error(&err),
    };
    let filter = match log_filter() {
        Ok(filter) => filter,
        Err(err) => return usage_error(&err),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // When stderr is gone (a closed pipe), reporting that on stderr would panic:
        // losing logs must never take the server down.
        .log_internal_errors(false)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        // The surroundings refused a setting: reported like a bad setting, with a fix.
        Err(err) => match err.downcast_ref::<StartupError>() {
            Some(startup) => usage_error(&ConfigError {
                origin: args.name_flag(sources.origin_of(&[startup.field()])),
                field: startup.field().to_string(),
                problem: startup.to_string(),
                fix: startup.fix(),
            }),
            None => {
                eprintln!("error: {}", chain_once(err.as_ref()));
                ExitCode::FAILURE
            }
        },
    }
}

/// Bad usage or configuration: exit 2 with what to change (DESIGN.md's exit codes).
fn usage_error(err: &ConfigError) -> ExitCode {
    eprintln!("error: {err}");
    ExitCode::from(2)
}

fn healthcheck(url: &str, timeout: std::time::Duration) -> ExitCode {
    match plexichat::healthcheck::probe(url, timeout) {
        Ok(body) => {
            println!("healthy: {body}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    // The handlers are installed before the server answers anything: a SIGTERM that comes
    // right after the first answer must drain, not kill, the process.
    let shutdown = shutdown_signal();
    let server = Server::bind(settings).await?;
    server.run_until(shutdown).await
}

/// Watches SIGINT and SIGTERM from now on; the future completes on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let watched = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()));
        async move {
            match watched {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                (interrupt, terminate) => {
                    let err = interrupt.err().or(terminate.err()).map(|err| err.to_string());
                    tracing::warn!(error = ?err, "cannot watch SIGINT/SIGTERM; only Ctrl-C stops the server");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async move {
        let _ = tokio::signal::ctrl_c().await;
    }
}
