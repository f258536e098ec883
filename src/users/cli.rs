//! `deepseek_proxy user …`, `key …` and `reload`: the same rules as the
//! admin API, for a server without it (or before the first admin exists).
//! They use the config file's database; running gateways pick the change up
//! within `directory::POLL_EVERY`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::db;
use super::directory::Directory;
use super::manage::{self, Actor, NewKeyRequest, UserRequest};
use crate::config::{process_env, Config, Storage};
use crate::ledger::Ledger;
use crate::state::base;

/// What to do.
pub enum Action {
    AddUser(UserRequest),
    SetUser(String, UserRequest),
    DeleteUser(String),
    ListUsers,
    CreateKey {
        user: String,
        request: NewKeyRequest,
    },
    ListKeys(Option<String>),
    RevokeKey(String),
    Reload,
}

/// Runs one action against the config's database.
pub fn run(config_path: &Path, action: Action) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e.to_string()),
    };
    let mut sqlite = None;
    let result = runtime.block_on(execute(config_path, action, &mut sqlite));
    // Closes the database connections before the files are handed over.
    drop(runtime);
    if let Some(path) = sqlite {
        hand_over(&path);
    }
    match result {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("deepseek_proxy: {message}");
    ExitCode::from(2)
}

async fn execute(
    config_path: &Path,
    action: Action,
    sqlite: &mut Option<PathBuf>,
) -> Result<String, String> {
    // Only [auth], [quotas], [models] and [storage] matter: no key needed.
    let env = |name: &str| match name {
        "OPENAI_API_KEY" => Some(process_env(name).unwrap_or_else(|| "unused".into())),
        _ => process_env(name),
    };
    let config = Config::load(config_path, &env).map_err(|e| e.to_string())?;
    if let Storage::Sqlite(path) = &config.storage.backend {
        if path != ":memory:" {
            let path = PathBuf::from(path);
            make_parent(&path)?;
            *sqlite = Some(path);
        }
    }
    let ledger = Ledger::open_without_journal(&config.storage).await?;
    let pool = ledger.pool().clone();
    let directory = Directory::load(pool.clone(), base(config)).await?;
    let snapshot = directory.snapshot();
    let said = |e: crate::error::ApiError| e.to_string();
    let out = match action {
        Action::AddUser(request) => {
            let row = manage::add_user(&pool, &snapshot, request)
                .await
                .map_err(said)?;
            format!("added user {} ({})\n", row.username, row.role)
        }
        Action::SetUser(name, request) => {
            let row = manage::update_user(&pool, &snapshot, &name, request)
                .await
                .map_err(said)?;
            let state = if row.disabled { "disabled" } else { "enabled" };
            format!("updated user {} ({}, {state})\n", row.username, row.role)
        }
        Action::DeleteUser(name) => {
            manage::delete_user(&pool, &snapshot, &name)
                .await
                .map_err(said)?;
            format!("deleted user {name} and their keys\n")
        }
        Action::ListUsers => {
            let mut out = format!(
                "{:<24} {:<9} {:<6} {:<9}\n",
                "user", "source", "role", "state"
            );
            let mut names: Vec<_> = snapshot.accounts.values().collect();
            names.sort_by(|a, b| a.username.cmp(&b.username));
            for a in names {
                let source = match a.source {
                    super::Source::Config => "config",
                    super::Source::Database => "database",
                };
                let role = if a.admin { "admin" } else { "user" };
                let state = if a.disabled { "disabled" } else { "enabled" };
                out.push_str(&format!(
                    "{:<24} {source:<9} {role:<6} {state:<9}\n",
                    a.username
                ));
            }
            out
        }
        Action::CreateKey { user, request } => {
            let actor = Actor {
                username: "(cli)",
                admin: true,
            };
            let created = manage::create_key(&snapshot, &actor, &user, request)
                .await
                .map_err(said)?;
            manage::store_key(&pool, &created).await.map_err(said)?;
            // The key itself goes to stdout alone, so it can be piped;
            // this is the only time it is shown.
            eprintln!(
                "created key {} ({}) for {}; it is shown once, keep it now:",
                created.row.id, created.row.name, created.row.username
            );
            format!("{}\n", created.key)
        }
        Action::ListKeys(user) => {
            let keys = db::keys(&pool, user.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            let mut out = format!(
                "{:<22} {:<16} {:<20} {:<16} {:>6}\n",
                "id", "user", "name", "prefix", "slots"
            );
            for k in keys {
                out.push_str(&format!(
                    "{:<22} {:<16} {:<20} {:<16} {:>6}\n",
                    k.id, k.username, k.name, k.prefix, k.max_in_flight
                ));
            }
            out
        }
        Action::RevokeKey(id) => {
            if !db::delete_key(&pool, &id, None)
                .await
                .map_err(|e| e.to_string())?
            {
                return Err(format!("no key with id {id}"));
            }
            format!("revoked key {id}\n")
        }
        Action::Reload => {
            db::request_reload(&pool).await.map_err(|e| e.to_string())?;
            format!(
                "asked every gateway on {} to re-read its config (within {} s)\n",
                "this database",
                super::directory::POLL_EVERY.as_secs() + 1
            )
        }
    };
    ledger.flush().await;
    Ok(out)
}

/// Creates the SQLite file's folder when it is missing (mode 0700 on Unix),
/// as a gateway's first start would: the CLI may be the first to use the
/// database (the first admin, before the service ever ran).
fn make_parent(path: &Path) -> Result<(), String> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    if parent.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))
}

/// Gives the SQLite files back to the owner of their folder.
///
/// The CLI usually runs as root (`sudo deepseek_proxy user add …`), while
/// the service writes the same database as another user: with the .deb's
/// systemd unit a DynamicUser, whose StateDirectory
/// (/var/lib/deepseek_proxy → /var/lib/private/deepseek_proxy) systemd
/// owns to that user. Whatever SQLite created here as root (the database
/// itself on a first run, its -wal and -shm files while the service is
/// stopped) would be read-only to the service, and a write-ahead log it
/// cannot open makes every write fail. So each of the three files that
/// exists and is owned by someone other than the folder's owner is handed
/// to the folder's uid and gid. Only root may do that; anyone else gets a
/// warning (and then normally owns the folder too, so nothing is needed).
#[cfg(unix)]
fn hand_over(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => parent,
        None => Path::new("."),
    };
    // Follows a symlink: systemd links /var/lib/NAME to /var/lib/private/NAME.
    let Ok(folder) = std::fs::metadata(parent) else {
        return;
    };
    let (uid, gid) = (folder.uid(), folder.gid());
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = PathBuf::from(file);
        // Not following a symlink: only the files SQLite made are handed over.
        let Ok(meta) = std::fs::symlink_metadata(&file) else {
            continue; // never made, or removed when the last connection closed
        };
        if !meta.is_file() || (meta.uid() == uid && meta.gid() == gid) {
            continue;
        }
        if let Err(e) = std::os::unix::fs::chown(&file, Some(uid), Some(gid)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "deepseek_proxy: warning: cannot give {} to uid {uid} gid {gid} (the owner of \
                     {}): {e}; the gateway may be unable to write it",
                    file.display(),
                    parent.display()
                );
            }
        }
    }
}

/// Elsewhere the files keep the owner the system gives them.
#[cfg(not(unix))]
fn hand_over(_path: &Path) {}
