//! The `deepseek_proxy` binary: parse flags, load config, serve.

use std::path::PathBuf;
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

/// A gateway that lets a team share one DeepSeek API key safely.
#[derive(Parser)]
#[command(version, about)]
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
    /// Print totals from the usage ledger named in the config.
    Usage {
        /// How far back: 7d, 12h, 30m.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Group by user, model, day or format.
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
    },
    List {
        #[arg(long)]
        user: Option<String>,
    },
    Revoke {
        id: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum By {
    User,
    Model,
    Day,
    Format,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::HashPassword) => return cli::hash_password(),
        Some(Command::Usage { since, by }) => {
            let by = match by {
                By::User => GroupBy::User,
                By::Model => GroupBy::Model,
                By::Day => GroupBy::Day,
                By::Format => GroupBy::Format,
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
                } => Action::CreateKey {
                    user,
                    request: NewKeyRequest {
                        name,
                        expires_in_days,
                        models,
                        max_in_flight,
                    },
                },
                KeyCommand::List { user } => Action::ListKeys(user),
                KeyCommand::Revoke { id } => Action::RevokeKey(id),
            };
            return users::cli::run(&cli.config, action);
        }
        Some(Command::Reload) => return users::cli::run(&cli.config, Action::Reload),
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("deepseek_proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, cli.demo)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deepseek_proxy: {e}");
            ExitCode::FAILURE
        }
    }
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

async fn serve(mut config: Config, demo: bool) -> std::io::Result<()> {
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
    let shutdown = shutdown_signal()?;
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
