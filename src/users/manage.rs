//! The rules for changing users and keys, shared by the HTTP API and the
//! CLI: what is valid, who may do what, and the last-admin rule.

use serde::Deserialize;

use super::db::{self, KeyRow, UserRow};
use super::directory::{encode_hash, Snapshot};
use super::{keys, Source};
use crate::error::ApiError;

/// The most keys one user may hold.
const MAX_KEYS_PER_USER: usize = 100;
/// Highest `max_in_flight` anyone may set on a key.
const MAX_IN_FLIGHT: i64 = 1000;
const MIN_PASSWORD_CHARS: usize = 8;

/// `POST /v1/keys` and `deepseek_proxy key create`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKeyRequest {
    pub name: String,
    #[serde(default)]
    pub expires_in_days: Option<u64>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub max_in_flight: Option<i64>,
    /// In the `[pricing]` currency, at most the owner's budget.
    #[serde(default)]
    pub budget_per_month: Option<f64>,
}

/// A key just made: the only time the key itself is shown.
#[derive(Debug, serde::Serialize)]
pub struct CreatedKey {
    pub key: String,
    #[serde(flatten)]
    pub row: KeyRow,
}

/// Who asks for a change: admins may do more.
pub struct Actor<'a> {
    pub username: &'a str,
    pub admin: bool,
}

fn refused(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn db_failed(e: sqlx::Error) -> ApiError {
    tracing::error!(error = %e, "the user database failed");
    ApiError::Internal
}

/// Makes a key for `owner`. A user may raise `max_in_flight` up to their
/// `max_concurrent`; an admin, up to any value.
pub async fn create_key(
    snapshot: &Snapshot,
    actor: &Actor<'_>,
    owner: &str,
    request: NewKeyRequest,
) -> Result<CreatedKey, ApiError> {
    if !snapshot.base.api_keys {
        return Err(refused(
            "api_keys_disabled",
            "personal API keys are turned off on this gateway (auth.api_keys = false)",
        ));
    }
    let account = snapshot.active(owner).ok_or_else(|| {
        ApiError::NoSuchItem(format!("no active user named \"{}\"", short(owner)))
    })?;
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(refused(
            "invalid_key_name",
            "a key needs a name of 1 to 64 printable characters, e.g. \"laptop\"",
        ));
    }
    let max_in_flight = request.max_in_flight.unwrap_or(1);
    let cap = match (actor.admin, account.limits.max_concurrent) {
        (true, _) | (false, 0) => MAX_IN_FLIGHT,
        (false, n) => i64::try_from(n).unwrap_or(MAX_IN_FLIGHT),
    };
    if !(1..=cap).contains(&max_in_flight) {
        return Err(refused(
            "invalid_max_in_flight",
            format!("max_in_flight must be between 1 and {cap} (your max_concurrent)"),
        ));
    }
    if let Some(models) = &request.models {
        if models.is_empty() || models.iter().any(|m| m.trim().is_empty()) {
            return Err(refused(
                "invalid_models",
                "models must be a non-empty list of names",
            ));
        }
        let served = snapshot.base.served_models(models);
        if let Some(allowed) = &account.models {
            if let Some(extra) = served.iter().find(|m| !allowed.contains(*m)) {
                return Err(refused(
                    "model_not_allowed",
                    format!(
                        "a key's models must be among its owner's; \"{}\" is not",
                        short(extra)
                    ),
                ));
            }
        }
    }
    let budget_per_month = check_budget(request.budget_per_month)?.filter(|&b| b > 0);
    let owner_budget = account.limits.budget_per_month;
    if let Some(budget) = budget_per_month {
        if owner_budget > 0 && budget as u64 > owner_budget {
            return Err(refused(
                "invalid_budget",
                format!(
                    "a key's budget_per_month must be at most its owner's ({})",
                    crate::usage::pricing::format_units(owner_budget as i64)
                ),
            ));
        }
    }
    let expires_ms = match request.expires_in_days {
        None => None,
        Some(days @ 1..=3650) => Some(now_ms() + i64::try_from(days).unwrap_or(0) * 86_400_000),
        Some(_) => {
            return Err(refused(
                "invalid_expiry",
                "expires_in_days must be between 1 and 3650",
            ))
        }
    };
    let owned = snapshot.keys.values().filter(|k| k.owner == owner).count();
    if owned >= MAX_KEYS_PER_USER {
        return Err(refused(
            "too_many_keys",
            format!("a user may hold {MAX_KEYS_PER_USER} keys; revoke one first"),
        ));
    }
    let new = keys::generate().map_err(|e| {
        tracing::error!(error = %e, "cannot make a key");
        ApiError::Internal
    })?;
    let row = KeyRow {
        id: new.id,
        username: owner.to_owned(),
        name: name.to_owned(),
        prefix: new.prefix,
        key_hash: encode_hash(&new.hash),
        models: request.models,
        max_in_flight,
        budget_per_month,
        created_ms: now_ms(),
        last_used_ms: None,
        expires_ms,
    };
    Ok(CreatedKey { key: new.key, row })
}

pub async fn store_key(pool: &sqlx::AnyPool, key: &CreatedKey) -> Result<(), ApiError> {
    db::insert_key(pool, &key.row).await.map_err(db_failed)
}

/// `POST /admin/users` and `deepseek_proxy user add`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    /// `null` clears the list (all models); absent leaves it.
    #[serde(default, deserialize_with = "present")]
    pub models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    pub requests_per_minute: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    pub tokens_per_day: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    pub max_concurrent: Option<Option<i64>>,
    /// In the `[pricing]` currency; `null` returns to the default.
    #[serde(default, deserialize_with = "present")]
    pub budget_per_month: Option<Option<f64>>,
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// Tells `"field": null` (Some(None)) from an absent field (None).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn short(text: &str) -> String {
    text.chars().take(64).collect()
}

fn check_username(name: &str) -> Result<(), ApiError> {
    if name.is_empty()
        || name.len() > 64
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(refused(
            "invalid_username",
            "a username is 1 to 64 bytes with no spaces or control characters",
        ));
    }
    Ok(())
}

fn check_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(refused(
            "weak_password",
            format!("a password needs at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    Ok(())
}

fn role_is_admin(role: &str) -> Result<bool, ApiError> {
    match role {
        "admin" => Ok(true),
        "user" => Ok(false),
        _ => Err(refused("invalid_role", "role is \"admin\" or \"user\"")),
    }
}

fn check_limit(value: Option<i64>) -> Result<Option<i64>, ApiError> {
    match value {
        Some(n) if n < 0 => Err(refused("invalid_quota", "quotas are 0 (no limit) or more")),
        other => Ok(other),
    }
}

/// A budget in currency units to micro-units (0 or more, 6 decimals).
fn check_budget(value: Option<f64>) -> Result<Option<i64>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) => match crate::usage::pricing::micros_of(v) {
            Some(micros) => Ok(Some(micros as i64)),
            None => Err(refused(
                "invalid_budget",
                "budget_per_month is an amount of 0 (no budget) or more in the gateway's \
                 currency, with at most 6 decimal places",
            )),
        },
    }
}

/// Hashing is slow by design: off the async workers.
async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || crate::auth::password::hash(&password))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|_| ApiError::Internal)
}

/// Adds a database user. A name the config file already uses is refused.
pub async fn add_user(
    pool: &sqlx::AnyPool,
    snapshot: &Snapshot,
    request: UserRequest,
) -> Result<UserRow, ApiError> {
    let username = request.username.clone().unwrap_or_default();
    check_username(&username)?;
    if snapshot.accounts.contains_key(&username) {
        return Err(ApiError::Conflict {
            code: "user_exists",
            message: format!("a user named \"{}\" already exists", short(&username)),
        });
    }
    let password = request.password.clone().unwrap_or_default();
    check_password(&password)?;
    let role = request.role.clone().unwrap_or_else(|| "user".into());
    role_is_admin(&role)?;
    let now = now_ms();
    let row = UserRow {
        username,
        password_hash: hash_password(password).await?,
        role,
        models: check_models(request.models.flatten())?,
        requests_per_minute: check_limit(request.requests_per_minute.flatten())?,
        tokens_per_day: check_limit(request.tokens_per_day.flatten())?,
        max_concurrent: check_limit(request.max_concurrent.flatten())?,
        budget_per_month: check_budget(request.budget_per_month.flatten())?,
        disabled: request.disabled.unwrap_or(false),
        tokens_valid_after: 0,
        created_ms: now,
        updated_ms: now,
    };
    if !db::insert_user(pool, &row).await.map_err(db_failed)? {
        return Err(ApiError::Conflict {
            code: "user_exists",
            message: format!("a user named \"{}\" already exists", short(&row.username)),
        });
    }
    Ok(row)
}

fn check_models(models: Option<Vec<String>>) -> Result<Option<Vec<String>>, ApiError> {
    if let Some(list) = &models {
        if list.iter().any(|m| m.trim().is_empty() || m.len() > 64) {
            return Err(refused("invalid_models", "model names are 1 to 64 bytes"));
        }
    }
    Ok(models)
}

/// The database row of a user that may be changed at runtime.
async fn editable(
    pool: &sqlx::AnyPool,
    snapshot: &Snapshot,
    name: &str,
) -> Result<UserRow, ApiError> {
    match snapshot.accounts.get(name).map(|a| a.source) {
        Some(Source::Config) => {
            return Err(ApiError::Conflict {
                code: "config_user",
                message: format!(
                    "user \"{}\" is defined in config.toml; change it there and reload",
                    short(name)
                ),
            })
        }
        None => {
            return Err(ApiError::NoSuchItem(format!(
                "no user named \"{}\"",
                short(name)
            )))
        }
        Some(Source::Database) => {}
    }
    db::users(pool)
        .await
        .map_err(db_failed)?
        .into_iter()
        .find(|u| u.username == name)
        .ok_or_else(|| ApiError::NoSuchItem(format!("no user named \"{}\"", short(name))))
}

/// Enabled admins other than `name`.
fn other_admins(snapshot: &Snapshot, name: &str) -> usize {
    snapshot
        .accounts
        .values()
        .filter(|a| a.admin && !a.disabled && a.username != name)
        .count()
}

fn last_admin(name: &str) -> ApiError {
    ApiError::Conflict {
        code: "last_admin",
        message: format!(
            "\"{}\" is the last enabled admin: make another admin first",
            short(name)
        ),
    }
}

/// Changes a database user; the last enabled admin can be neither demoted
/// nor disabled. A new password also ends the user's login tokens.
pub async fn update_user(
    pool: &sqlx::AnyPool,
    snapshot: &Snapshot,
    name: &str,
    request: UserRequest,
) -> Result<UserRow, ApiError> {
    if request.username.as_deref().is_some_and(|u| u != name) {
        return Err(refused("invalid_body", "a user cannot be renamed"));
    }
    let mut row = editable(pool, snapshot, name).await?;
    let was_admin = row.role == "admin" && !row.disabled;
    if let Some(role) = request.role {
        role_is_admin(&role)?;
        row.role = role;
    }
    if let Some(models) = request.models {
        row.models = check_models(models)?;
    }
    if let Some(v) = request.requests_per_minute {
        row.requests_per_minute = check_limit(v)?;
    }
    if let Some(v) = request.tokens_per_day {
        row.tokens_per_day = check_limit(v)?;
    }
    if let Some(v) = request.max_concurrent {
        row.max_concurrent = check_limit(v)?;
    }
    if let Some(v) = request.budget_per_month {
        row.budget_per_month = check_budget(v)?;
    }
    if let Some(disabled) = request.disabled {
        row.disabled = disabled;
    }
    let still_admin = row.role == "admin" && !row.disabled;
    if was_admin && !still_admin && other_admins(snapshot, name) == 0 {
        return Err(last_admin(name));
    }
    if let Some(password) = request.password {
        check_password(&password)?;
        row.password_hash = hash_password(password).await?;
        row.tokens_valid_after = valid_after_now().max(row.tokens_valid_after);
    }
    row.updated_ms = now_ms();
    db::update_user(pool, &row).await.map_err(db_failed)?;
    Ok(row)
}

/// Deletes a database user and their keys (not the last enabled admin).
pub async fn delete_user(
    pool: &sqlx::AnyPool,
    snapshot: &Snapshot,
    name: &str,
) -> Result<(), ApiError> {
    let row = editable(pool, snapshot, name).await?;
    if row.role == "admin" && !row.disabled && other_admins(snapshot, name) == 0 {
        return Err(last_admin(name));
    }
    db::delete_user(pool, name).await.map_err(db_failed)?;
    Ok(())
}

/// `POST /auth/password`: checks nothing itself; the caller verified the
/// old password. Sets the new one and ends the user's older login tokens.
pub async fn set_password(
    pool: &sqlx::AnyPool,
    snapshot: &Snapshot,
    name: &str,
    new_password: String,
) -> Result<u64, ApiError> {
    let mut row = editable(pool, snapshot, name).await?;
    check_password(&new_password)?;
    row.password_hash = hash_password(new_password).await?;
    row.tokens_valid_after = valid_after_now();
    row.updated_ms = now_ms();
    db::update_user(pool, &row).await.map_err(db_failed)?;
    Ok(row.tokens_valid_after.max(0) as u64)
}

/// Tokens carry their issue time in whole seconds: every token issued up
/// to the end of this second ends, and new ones are dated from the next
/// (see `auth::login`, which issues at `tokens_valid_after` at the earliest).
fn valid_after_now() -> i64 {
    now_ms() / 1000 + 1
}
