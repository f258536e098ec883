//! The `deepseek_proxy` binary: parse flags, load config, serve.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use deepseek_proxy::config::{process_env, Config};
use deepseek_proxy::ledger::GroupBy;
use deepseek_proxy::users::cli::Action;
use deepseek_proxy::users::manage::{NewKeyRequest, UserRequest};
use deepseek_proxy::{cli, demo, telemetry, users, App};

// mimalloc spends less CPU per request than glibc's malloc on the proxy's
// many small, short-lived allocations (measured in BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `--version`: the crate version, the git commit and the build date (set
/// by build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("DEEPSEEK_PROXY_GIT_COMMIT"),
    ", built ",
    env!("DEEPSEEK_PROXY_BUILD_DATE"),
    ")"
);

/// A gateway that lets a team share one DeepSeek API key safely.
#[derive(Parser)]
#[command(version = VERSION, about)]
struct Cli {
    /// Config file.
    /// Accepted before or after a subcommand.
    #[arg(
        long,
        global = true,
        env = "DEEPSEEK_PROXY_CONFIG",
        default_value = "config.toml"
    )]
    config: PathBuf,
    /// Run against a built-in fake DeepSeek: no key and no network needed.
    #[arg(long)]
    demo: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Read a password (hidden, or from stdin when piped) and print its
    /// Argon2id hash for `password_hash` in config.toml.
    HashPassword,
    /// Windows only: install, uninstall, start or stop the Windows service
    /// (it runs with this --config; see INSTALL.md).
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Print totals from the usage ledger named in the config.
    Usage {
        /// How far back: 7d, 12h, 30m.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Group by user, model, day, format or key.
        #[arg(long, value_enum, default_value = "user")]
        by: By,
    },
    /// Manage users kept in the database.
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
    /// Manage personal API keys.
    Key {
        #[command(subcommand)]
        action: KeyCommand,
    },
    /// Ask every gateway using this config's database to re-read its config.
    Reload,
    /// Check each upstream (DNS, TCP, TLS, key, balance, one tiny request
    /// per format); exits 1 if any check fails. Never prints a key.
    Check {
        /// Print one JSON document instead of the table.
        #[arg(long)]
        json: bool,
        /// Check the built-in fake DeepSeek (same as `--demo check`).
        #[arg(long)]
        demo: bool,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; the password is read like `hash-password` does.
    Add(UserArgs),
    /// Change a user: any of the flags (and `--password` to set a new one).
    Set(UserArgs),
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    /// Delete a user and their keys.
    Delete {
        name: String,
    },
    List,
}

#[derive(clap::Args)]
struct UserArgs {
    name: String,
    /// admin or user.
    #[arg(long)]
    role: Option<String>,
    /// Models the user may use, comma-separated.
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    #[arg(long)]
    requests_per_minute: Option<i64>,
    #[arg(long)]
    tokens_per_day: Option<i64>,
    #[arg(long)]
    max_concurrent: Option<i64>,
    /// In the `[pricing]` currency (0: none).
    #[arg(long)]
    budget_per_month: Option<f64>,
    /// With `set`: read a new password.
    #[arg(long)]
    password: bool,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Make a personal API key and print it (once).
    Create {
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        expires_in_days: Option<u64>,
        #[arg(long)]
        max_in_flight: Option<i64>,
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// In the `[pricing]` currency, at most the owner's budget.
        #[arg(long)]
        budget_per_month: Option<f64>,
    },
    List {
        #[arg(long)]
        user: Option<String>,
    },
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
enum ServiceAction {
    /// Register the service (automatic start, LocalService account).
    Install,
    /// Stop and remove the service.
    Uninstall,
    /// Start the service.
    Start,
    /// Stop the service; open streams are drained first.
    Stop,
    /// What the service manager runs (not for a console).
    #[command(hide = true)]
    Run,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum By {
    User,
    Model,
    Day,
    Format,
    Key,
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::HashPassword) => return cli::hash_password(),
        Some(Command::Service { action }) => return service_command(&cli.config, action),
        Some(Command::Usage { since, by }) => {
            let by = match by {
                By::User => GroupBy::User,
                By::Model => GroupBy::Model,
                By::Day => GroupBy::Day,
                By::Format => GroupBy::Format,
                By::Key => GroupBy::Key,
            };
            return cli::usage(&cli.config, &since, by);
        }
        Some(Command::User { action }) => match user_action(action) {
            Ok(action) => return users::cli::run(&cli.config, action),
            Err(e) => {
                eprintln!("deepseek_proxy: {e}");
                return ExitCode::from(2);
            }
        },
        Some(Command::Key { action }) => {
            let action = match action {
                KeyCommand::Create {
                    user,
                    name,
                    expires_in_days,
                    max_in_flight,
                    models,
                    budget_per_month,
                } => Action::CreateKey {
                    user,
                    request: NewKeyRequest {
                        name,
                        expires_in_days,
                        models,
                        max_in_flight,
                        budget_per_month,
                    },
                },
                KeyCommand::List { user } => Action::ListKeys(user),
                KeyCommand::Revoke { id } => Action::RevokeKey(id),
            };
            return users::cli::run(&cli.config, action);
        }
        Some(Command::Reload) => return users::cli::run(&cli.config, Action::Reload),
        Some(Command::Check { json, demo }) => {
            return deepseek_proxy::check::command(&cli.config, cli.demo || demo, json)
        }
        None => {}
    }
    // Config errors are reported before anything binds a port (on stderr,
    // before logging is set up: the format comes from the config).
    let loaded = if cli.demo {
        demo::config(&cli.config, &process_env)
    } else {
        Config::load(&cli.config, &process_env)
    };
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("deepseek_proxy: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.server.log_format);
    match run_gateway(config, cli.demo, shutdown_signal) {
        Ok(()) => ExitCode::SUCCESS,
        Err((e, config_problem)) => {
            eprintln!("deepseek_proxy: {e}");
            // 2: a restart cannot fix it (no users, a name defined twice).
            ExitCode::from(if config_problem { 2 } else { 1 })
        }
    }
}

/// Turns transparent huge pages off for this process. mimalloc asks for
/// them (`MADV_HUGEPAGE`) on its arenas, and a kernel set to `always` gives
/// them anyway; either way one touched byte makes 2 MiB resident, and 1,000
/// open streams cost 16–25 KiB more each with them (about 70 against 46 KiB
/// in `bench -- --streams`), for no measurable CPU per request
/// (BENCHMARKS.md, issue 15). Only the runtime's few allocations before
/// `main` may keep huge pages. A kernel without the call (before 3.15)
/// keeps them: only memory is at stake, so the error is ignored.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// The request a `user` subcommand makes.
fn user_action(command: UserCommand) -> Result<Action, String> {
    let request = |args: UserArgs, password: Option<String>| UserRequest {
        username: Some(args.name),
        password,
        role: args.role,
        models: args.models.map(Some),
        requests_per_minute: args.requests_per_minute.map(Some),
        tokens_per_day: args.tokens_per_day.map(Some),
        max_concurrent: args.max_concurrent.map(Some),
        budget_per_month: args.budget_per_month.map(Some),
        disabled: None,
    };
    let toggle = |name: String, disabled: bool| {
        Action::SetUser(
            name,
            UserRequest {
                disabled: Some(disabled),
                ..UserRequest::default()
            },
        )
    };
    Ok(match command {
        UserCommand::Add(args) => Action::AddUser(request(args, Some(cli::read_password()?))),
        UserCommand::Set(args) => {
            let password = match args.password {
                true => Some(cli::read_password()?),
                false => None,
            };
            let name = args.name.clone();
            Action::SetUser(name, request(args, password))
        }
        UserCommand::Disable { name } => toggle(name, true),
        UserCommand::Enable { name } => toggle(name, false),
        UserCommand::Delete { name } => Action::DeleteUser(name),
        UserCommand::List => Action::ListUsers,
    })
}

/// Serves until the future from `shutdown` (made inside the runtime, so
/// signal handlers exist before the port is bound) resolves, then drains.
/// Errors say whether they are config problems (`InvalidInput`).
fn run_gateway<F, S>(config: Config, demo: bool, shutdown: F) -> Result<(), (String, bool)>
where
    F: FnOnce() -> std::io::Result<S>,
    S: std::future::Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| (format!("cannot start the runtime: {e}"), false))?;
    runtime
        .block_on(async move {
            let shutdown = shutdown()?;
            serve(config, demo, shutdown).await
        })
        .map_err(|e| {
            let config_problem = e.kind() == std::io::ErrorKind::InvalidInput;
            (e.to_string(), config_problem)
        })
}

#[cfg(windows)]
fn service_command(config: &Path, action: ServiceAction) -> ExitCode {
    use deepseek_proxy::service::windows;
    let done = match action {
        ServiceAction::Install => windows::install(config),
        ServiceAction::Uninstall => windows::uninstall(),
        ServiceAction::Start => windows::start(),
        ServiceAction::Stop => windows::stop(),
        ServiceAction::Run => {
            let config = config.to_path_buf();
            windows::run(Box::new(move |stop| run_service(&config, stop)))
        }
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deepseek_proxy service: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(windows))]
fn service_command(_config: &Path, _action: ServiceAction) -> ExitCode {
    eprintln!(
        "deepseek_proxy service: Windows services exist on Windows only; on Linux, \
         install the .deb (a systemd unit) or use compose.yaml (see INSTALL.md)"
    );
    ExitCode::from(2)
}

/// `service run`, on the service manager's thread: logs go to a file
/// beside the config, relative paths are taken from the config's folder,
/// and the service manager's Stop drains like SIGTERM does.
#[cfg(windows)]
fn run_service(config_path: &Path, stop: deepseek_proxy::service::StopSignal) -> u8 {
    use deepseek_proxy::service;
    let _ = std::env::set_current_dir(service::working_dir(config_path));
    let log = service::log_path(config_path);
    let config = match Config::load(config_path, &process_env) {
        Ok(config) => config,
        Err(e) => {
            let _ = telemetry::init_to_file(telemetry::LogFormat::Text, &log);
            tracing::error!("{e}");
            return 2;
        }
    };
    let _ = telemetry::init_to_file(config.server.log_format, &log);
    stop.set_grace(config.server.shutdown_grace);
    match run_gateway(config, false, move || Ok(stop.stopped())) {
        Ok(()) => 0,
        Err((e, config_problem)) => {
            tracing::error!("{e}");
            if config_problem {
                2
            } else {
                1
            }
        }
    }
}

async fn serve(
    mut config: Config,
    demo: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let _fake = if demo {
        Some(demo::start_fake(&mut config).await?)
    } else {
        None
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    if config.auth.jwt_secret_generated {
        tracing::warn!(
            "auth.jwt_secret is empty or the sample value: using a random secret for this \
             process, so tokens will not survive a restart (set auth.jwt_secret or \
             DEEPSEEK_PROXY_JWT_SECRET to at least 32 random bytes)"
        );
    }
    let app = App::build(config).await?;
    reload_on_sighup(&app)?;
    let addr = app.local_addr()?;
    if demo {
        println!("DEMO MODE: answers come from a built-in fake DeepSeek, not the real API.");
    }
    println!("deepseek_proxy listening on http://{addr}");
    tracing::info!(%addr, demo, "listening");
    app.run(shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP re-reads the config file (Unix; elsewhere use `POST /admin/reload`
/// or `deepseek_proxy reload`).
fn reload_on_sighup(app: &App) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = signal(SignalKind::hangup())?;
        let state = app.state().downgrade();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                let Some(state) = state.upgrade() else {
                    return;
                };
                tracing::info!("SIGHUP: re-reading the config file");
                deepseek_proxy::reload::in_background(&state);
            }
        });
    }
    #[cfg(not(unix))]
    let _ = app;
    Ok(())
}

/// Ctrl-C everywhere; SIGTERM too on Unix (Windows has no SIGTERM).
///
/// The handlers are installed by this call, not when the future is first
/// polled, so a signal that arrives right after "listening on" is printed
/// still means a graceful stop rather than the default (immediate) exit.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let (mut interrupt, mut terminate) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received; draining open requests");
    })
}
