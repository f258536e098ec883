//! Users and keys in the ledger's database (SQLite, or PostgreSQL when
//! `storage.url` is set), through the same sqlx code as the ledger.
//!
//! Every change bumps `directory_version`: each replica polls it (see
//! `users::directory`) and reloads users and keys when it moved, so a change
//! made on one replica, or by the CLI, reaches every replica within seconds.

use sqlx::{AnyPool, Row};

/// A user row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserRow {
    pub username: String,
    #[serde(skip)]
    pub password_hash: String,
    pub role: String,
    pub models: Option<Vec<String>>,
    pub requests_per_minute: Option<i64>,
    pub tokens_per_day: Option<i64>,
    pub max_concurrent: Option<i64>,
    /// Micro-units of the `[pricing]` currency; `None`: the default.
    #[serde(serialize_with = "crate::usage::pricing::serialize_units")]
    pub budget_per_month: Option<i64>,
    pub disabled: bool,
    /// Login tokens issued before this (Unix seconds) are refused.
    #[serde(skip)]
    pub tokens_valid_after: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A key row: never the key, only its hash and display prefix.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyRow {
    pub id: String,
    #[serde(rename = "user")]
    pub username: String,
    pub name: String,
    pub prefix: String,
    #[serde(skip)]
    pub key_hash: String,
    pub models: Option<Vec<String>>,
    pub max_in_flight: i64,
    /// Micro-units of the `[pricing]` currency; `None`: no budget of its own.
    #[serde(serialize_with = "crate::usage::pricing::serialize_units")]
    pub budget_per_month: Option<i64>,
    pub created_ms: i64,
    pub last_used_ms: Option<i64>,
    pub expires_ms: Option<i64>,
}

fn models_json(models: &Option<Vec<String>>) -> Option<String> {
    models
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_default())
}

fn models_of(text: Option<String>) -> Option<Vec<String>> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

/// The counter every replica polls.
pub async fn version(pool: &AnyPool) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query("SELECT version, reload FROM directory_version WHERE id = 1")
        .fetch_one(pool)
        .await?;
    Ok((row.try_get("version")?, row.try_get("reload")?))
}

/// Tells every replica to reload users and keys.
pub async fn bump(pool: &AnyPool) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE directory_version SET version = version + 1 WHERE id = 1")
        .execute(pool)
        .await?;
    Ok(())
}

/// Tells every replica to re-read its config file.
pub async fn request_reload(pool: &AnyPool) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE directory_version SET reload = reload + 1 WHERE id = 1")
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn users(pool: &AnyPool) -> Result<Vec<UserRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT username, password_hash, role, models, requests_per_minute, tokens_per_day, \
         max_concurrent, budget_per_month, disabled, tokens_valid_after, created_ms, updated_ms \
         FROM users \
         ORDER BY username",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(UserRow {
                username: r.try_get("username")?,
                password_hash: r.try_get("password_hash")?,
                role: r.try_get("role")?,
                models: models_of(r.try_get("models")?),
                requests_per_minute: r.try_get("requests_per_minute")?,
                tokens_per_day: r.try_get("tokens_per_day")?,
                max_concurrent: r.try_get("max_concurrent")?,
                budget_per_month: r.try_get("budget_per_month")?,
                disabled: r.try_get::<i64, _>("disabled")? != 0,
                tokens_valid_after: r.try_get("tokens_valid_after")?,
                created_ms: r.try_get("created_ms")?,
                updated_ms: r.try_get("updated_ms")?,
            })
        })
        .collect()
}

/// Inserts a user; `false` if the name is taken.
pub async fn insert_user(pool: &AnyPool, user: &UserRow) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO users (username, password_hash, role, models, requests_per_minute, \
         tokens_per_day, max_concurrent, disabled, tokens_valid_after, created_ms, updated_ms, \
         budget_per_month) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (username) DO NOTHING",
    )
    .bind(&user.username)
    .bind(&user.password_hash)
    .bind(&user.role)
    .bind(models_json(&user.models))
    .bind(user.requests_per_minute)
    .bind(user.tokens_per_day)
    .bind(user.max_concurrent)
    .bind(i64::from(user.disabled))
    .bind(user.tokens_valid_after)
    .bind(user.created_ms)
    .bind(user.updated_ms)
    .bind(user.budget_per_month)
    .execute(pool)
    .await?;
    if done.rows_affected() == 1 {
        bump(pool).await?;
    }
    Ok(done.rows_affected() == 1)
}

/// Writes every field of an existing user; `false` if there is none.
pub async fn update_user(pool: &AnyPool, user: &UserRow) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE users SET password_hash = $1, role = $2, models = $3, requests_per_minute = $4, \
         tokens_per_day = $5, max_concurrent = $6, disabled = $7, tokens_valid_after = $8, \
         updated_ms = $9, budget_per_month = $10 WHERE username = $11",
    )
    .bind(&user.password_hash)
    .bind(&user.role)
    .bind(models_json(&user.models))
    .bind(user.requests_per_minute)
    .bind(user.tokens_per_day)
    .bind(user.max_concurrent)
    .bind(i64::from(user.disabled))
    .bind(user.tokens_valid_after)
    .bind(user.updated_ms)
    .bind(user.budget_per_month)
    .bind(&user.username)
    .execute(pool)
    .await?;
    bump(pool).await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes a user and their keys; `false` if there was none.
pub async fn delete_user(pool: &AnyPool, username: &str) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM api_keys WHERE username = $1")
        .bind(username)
        .execute(&mut *tx)
        .await?;
    let done = sqlx::query("DELETE FROM users WHERE username = $1")
        .bind(username)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE directory_version SET version = version + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

pub async fn keys(pool: &AnyPool, username: Option<&str>) -> Result<Vec<KeyRow>, sqlx::Error> {
    let user = username.unwrap_or_default().to_owned();
    let rows = sqlx::query(
        "SELECT id, username, name, prefix, key_hash, models, max_in_flight, created_ms, \
         last_used_ms, expires_ms, budget_per_month FROM api_keys WHERE ($1 = '' OR username = $2) \
         ORDER BY created_ms, id",
    )
    .bind(user.clone())
    .bind(user)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(KeyRow {
                id: r.try_get("id")?,
                username: r.try_get("username")?,
                name: r.try_get("name")?,
                prefix: r.try_get("prefix")?,
                key_hash: r.try_get("key_hash")?,
                models: models_of(r.try_get("models")?),
                max_in_flight: r.try_get("max_in_flight")?,
                budget_per_month: r.try_get("budget_per_month")?,
                created_ms: r.try_get("created_ms")?,
                last_used_ms: r.try_get("last_used_ms")?,
                expires_ms: r.try_get("expires_ms")?,
            })
        })
        .collect()
}

pub async fn insert_key(pool: &AnyPool, key: &KeyRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO api_keys (id, username, name, prefix, key_hash, models, max_in_flight, \
         created_ms, last_used_ms, expires_ms, budget_per_month) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&key.id)
    .bind(&key.username)
    .bind(&key.name)
    .bind(&key.prefix)
    .bind(&key.key_hash)
    .bind(models_json(&key.models))
    .bind(key.max_in_flight)
    .bind(key.created_ms)
    .bind(key.last_used_ms)
    .bind(key.expires_ms)
    .bind(key.budget_per_month)
    .execute(pool)
    .await?;
    bump(pool).await
}

/// Deletes a key (of `owner`, when given); `false` if there was none.
pub async fn delete_key(
    pool: &AnyPool,
    id: &str,
    owner: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let owner = owner.unwrap_or_default().to_owned();
    let done = sqlx::query("DELETE FROM api_keys WHERE id = $1 AND ($2 = '' OR username = $3)")
        .bind(id)
        .bind(owner.clone())
        .bind(owner)
        .execute(pool)
        .await?;
    if done.rows_affected() == 1 {
        bump(pool).await?;
    }
    Ok(done.rows_affected() == 1)
}

/// Records that keys were used (at most once a minute per key; no bump:
/// it changes nothing a request depends on).
pub async fn touch_keys(pool: &AnyPool, ids: &[String], now_ms: i64) -> Result<(), sqlx::Error> {
    for id in ids {
        sqlx::query("UPDATE api_keys SET last_used_ms = $1 WHERE id = $2")
            .bind(now_ms)
            .bind(id)
            .execute(pool)
            .await?;
    }
    Ok(())
}
