//! The ledger's SQL: one dialect that SQLite and PostgreSQL both accept
//! (`$n` parameters, BIGINT, TEXT, DOUBLE PRECISION), and numbered
//! migrations applied at start.

use sqlx::AnyPool;
use sqlx::Row;

use super::UsageRecord;
use crate::limits::quota::Seeds;
use crate::usage::calendar::{self, Date};
use crate::usage::pricing::{hit_ratio, units};

/// Each entry moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS usage_log (
        request_id TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        username TEXT NOT NULL,
        token_id TEXT NOT NULL,
        route TEXT NOT NULL,
        model TEXT,
        stream BIGINT NOT NULL,
        status BIGINT NOT NULL,
        upstream_status BIGINT,
        error_code TEXT,
        prompt_tokens BIGINT,
        completion_tokens BIGINT,
        cached_tokens BIGINT,
        reasoning_tokens BIGINT,
        completion_tokens_estimated BIGINT,
        latency_ms DOUBLE PRECISION NOT NULL,
        ttfb_ms DOUBLE PRECISION,
        bytes_in BIGINT NOT NULL,
        bytes_out BIGINT NOT NULL,
        client_ip TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS usage_log_user_ts ON usage_log (username, ts_ms);
    CREATE INDEX IF NOT EXISTS usage_log_ts ON usage_log (ts_ms);",
    // 2: the wire formats (responses, anthropic, tools), the name the client
    // sent beside the served model, cache misses, and what DeepSeek bills.
    "ALTER TABLE usage_log ADD COLUMN format TEXT NOT NULL DEFAULT 'chat';
    ALTER TABLE usage_log ADD COLUMN requested_model TEXT;
    ALTER TABLE usage_log ADD COLUMN cache_miss_tokens BIGINT;
    ALTER TABLE usage_log ADD COLUMN billable BIGINT NOT NULL DEFAULT 1",
    // 3: users and personal API keys managed at runtime (see `users::db`),
    // and the key each ledger row was made with.
    "CREATE TABLE IF NOT EXISTS users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        models TEXT,
        requests_per_minute BIGINT,
        tokens_per_day BIGINT,
        max_concurrent BIGINT,
        disabled BIGINT NOT NULL,
        tokens_valid_after BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        models TEXT,
        max_in_flight BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        last_used_ms BIGINT,
        expires_ms BIGINT
    );
    CREATE INDEX IF NOT EXISTS api_keys_username ON api_keys (username);
    CREATE TABLE IF NOT EXISTS directory_version (
        id BIGINT PRIMARY KEY,
        version BIGINT NOT NULL,
        reload BIGINT NOT NULL
    );
    INSERT INTO directory_version (id, version, reload) VALUES (1, 0, 0);
    ALTER TABLE usage_log ADD COLUMN key_id TEXT",
    // 4: which upstream served each request, after how many tries.
    "ALTER TABLE usage_log ADD COLUMN upstream TEXT;
    ALTER TABLE usage_log ADD COLUMN attempts BIGINT",
    // 5: spend in money. Each row's cost (micro-units of `currency`, priced
    // when it was sent; flagged when estimated) and the tokens charged to
    // quotas, so counters can be rebuilt from the ledger at start; budgets
    // per user and per key; request ids indexed for the journal's replay.
    "ALTER TABLE usage_log ADD COLUMN cost_micros BIGINT;
    ALTER TABLE usage_log ADD COLUMN cost_estimated BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE usage_log ADD COLUMN currency TEXT;
    ALTER TABLE usage_log ADD COLUMN charged_tokens BIGINT;
    ALTER TABLE users ADD COLUMN budget_per_month BIGINT;
    ALTER TABLE api_keys ADD COLUMN budget_per_month BIGINT;
    CREATE INDEX IF NOT EXISTS usage_log_request_id ON usage_log (request_id)",
    // 6: that index dropped again. Request ids are random, so every insert
    // landed on a random page of it: about 7 µs of CPU per request, a tenth
    // of the gateway's (BENCHMARKS.md, issue 15's ablation). The journal's
    // replay finds rows by time first (`usage_log_ts`), then request id.
    "DROP INDEX IF EXISTS usage_log_request_id",
];

pub async fn migrate(pool: &AnyPool, sqlite: bool) -> Result<(), sqlx::Error> {
    if sqlite {
        // WAL: readers (the usage CLI) never block the writer.
        sqlx::query("PRAGMA journal_mode=WAL").execute(pool).await?;
    }
    let mut tx = pool.begin().await?;
    if !sqlite {
        // Replicas starting together migrate one after another.
        sqlx::query("SELECT pg_advisory_xact_lock(7720119)")
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("CREATE TABLE IF NOT EXISTS ledger_schema (version BIGINT PRIMARY KEY)")
        .execute(&mut *tx)
        .await?;
    let current: i64 =
        sqlx::query("SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) AS v FROM ledger_schema")
            .fetch_one(&mut *tx)
            .await?
            .try_get("v")?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO ledger_schema (version) VALUES ($1)")
            .bind(i as i64 + 1)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

const INSERT_INTO: &str = "INSERT INTO usage_log (request_id, ts_ms, username, token_id, route, \
    model, stream, status, upstream_status, error_code, prompt_tokens, completion_tokens, \
    cached_tokens, reasoning_tokens, completion_tokens_estimated, latency_ms, ttfb_ms, bytes_in, \
    bytes_out, client_ip, outcome, format, requested_model, cache_miss_tokens, billable, key_id, \
    upstream, attempts, charged_tokens, cost_micros, cost_estimated, currency) VALUES ";
pub(super) const COLUMNS: usize = 32;
/// Rows per INSERT statement: 1,600 parameters, within both SQLite's and
/// PostgreSQL's limits. One statement per chunk, not per row, because with
/// SQLite each statement is a round trip to sqlx's database thread.
const ROWS_PER_STATEMENT: usize = 50;

/// `INSERT ... VALUES ($1, ..., $21), ($22, ...)` for `rows` rows, with
/// anonymous `?` placeholders for SQLite: it looks numbered parameters up by
/// a linear scan per parameter, which at 1,050 of them took a quarter of the
/// gateway's CPU under load (measured; see BENCHMARKS.md).
fn insert_sql(rows: usize, sqlite: bool) -> String {
    let mut sql = String::with_capacity(INSERT_INTO.len() + rows * COLUMNS * 6);
    sql.push_str(INSERT_INTO);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..COLUMNS {
            if column > 0 {
                sql.push_str(", ");
            }
            if sqlite {
                sql.push('?');
            } else {
                sql.push_str(&format!("${}", row * COLUMNS + column + 1));
            }
        }
        sql.push(')');
    }
    sql
}

/// The sizes, in rows, that a batch is cut into: the largest that fits, in
/// turn. So every statement is one of a few, each prepared once per
/// connection and then taken from sqlx's statement cache, where a batch's
/// remainder used to be a statement of its own size, parsed anew for every
/// batch (~1M instructions for 40 rows; callgrind, BENCHMARKS.md). A
/// remainder now takes up to six statements (47 = 32 + 8 + 4 + 2 + 1), each
/// a round trip to SQLite's thread; at one batch a second that still saved
/// 1,641 instructions per request.
const STATEMENT_ROWS: [usize; 7] = [ROWS_PER_STATEMENT, 32, 16, 8, 4, 2, 1];

/// A row's column values, in [`INSERT_INTO`]'s order: the one place that
/// order is written, for both writers (sqlx here, and SQLite's own
/// connection in `ledger::direct`).
pub(super) enum Value<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
    Real(Option<f64>),
}

pub(super) fn values(r: &UsageRecord) -> [Value<'_>; COLUMNS] {
    use Value::{Int, Real, Text};
    fn text(s: &str) -> Value<'_> {
        Text(Some(s))
    }
    [
        text(&r.request_id),
        Int(Some(r.ts_ms)),
        text(&r.username),
        text(&r.token_id),
        text(&r.route),
        Text(r.model.as_deref()),
        Int(Some(i64::from(r.stream))),
        Int(Some(r.status)),
        Int(r.upstream_status),
        Text(r.error_code.as_deref()),
        Int(r.prompt_tokens),
        Int(r.completion_tokens),
        Int(r.cached_tokens),
        Int(r.reasoning_tokens),
        Int(r.completion_tokens_estimated),
        Real(Some(r.latency_ms)),
        Real(r.ttfb_ms),
        Int(Some(r.bytes_in)),
        Int(Some(r.bytes_out)),
        text(&r.client_ip),
        text(&r.outcome),
        text(&r.format),
        Text(r.requested_model.as_deref()),
        Int(r.cache_miss_tokens),
        Int(Some(i64::from(r.billable))),
        Text(r.key_id.as_deref()),
        Text(r.upstream.as_deref()),
        Int(r.attempts),
        Int(r.charged_tokens),
        Int(r.cost_micros),
        Int(Some(i64::from(r.cost_estimated))),
        Text(r.currency.as_deref()),
    ]
}

/// `rows` cut into statements of the fixed sizes: (the statement's SQL,
/// its rows).
pub(super) fn statements(
    rows: &[UsageRecord],
    sqlite: bool,
) -> impl Iterator<Item = (&'static str, &[UsageRecord])> {
    static SQL: std::sync::OnceLock<[[String; STATEMENT_ROWS.len()]; 2]> =
        std::sync::OnceLock::new();
    let shapes = &SQL.get_or_init(|| {
        [false, true].map(|sqlite| STATEMENT_ROWS.map(|rows| insert_sql(rows, sqlite)))
    })[usize::from(sqlite)];
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        // The last size is 1, so one always fits.
        let shape = STATEMENT_ROWS
            .iter()
            .position(|&n| n <= rest.len())
            .unwrap_or(STATEMENT_ROWS.len() - 1);
        let (chunk, after) = rest.split_at(STATEMENT_ROWS[shape]);
        rest = after;
        Some((shapes[shape].as_str(), chunk))
    })
}

/// Writes `rows` in one transaction, through sqlx.
pub async fn insert(pool: &AnyPool, sqlite: bool, rows: &[UsageRecord]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for (sql, chunk) in statements(rows, sqlite) {
        let mut query = sqlx::query(sql);
        for row in chunk {
            for value in values(row) {
                query = match value {
                    Value::Text(v) => query.bind(v),
                    Value::Int(v) => query.bind(v),
                    Value::Real(v) => query.bind(v),
                };
            }
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// What the `usage` command groups rows by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    User,
    Model,
    /// UTC day.
    Day,
    /// Wire format (chat, responses, anthropic, tools...).
    Format,
    /// Personal API key id (`-`: a login token).
    Key,
}

impl GroupBy {
    fn sql(self) -> &'static str {
        match self {
            GroupBy::User => "username",
            GroupBy::Model => "COALESCE(model, '-')",
            GroupBy::Day => "CAST(ts_ms / 86400000 AS TEXT)",
            GroupBy::Format => "format",
            GroupBy::Key => "COALESCE(key_id, '-')",
        }
    }
}

/// Totals of one group.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Totals {
    /// The user, the model, the key id (`-`: login tokens), the wire
    /// format, or the UTC day as `YYYY-MM-DD`.
    pub key: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub estimated_tokens: i64,
    /// Input tokens served from DeepSeek's cache.
    pub cached_tokens: i64,
    /// Input tokens that missed it.
    pub cache_miss_tokens: i64,
    /// Billable tool calls and completions.
    pub billable_requests: i64,
    /// What the rows cost, in micro-units of the currency.
    pub cost_micros: i64,
    /// The part of it that is estimated (abandoned streams).
    pub cost_estimated_micros: i64,
    /// The same in currency units.
    pub cost: f64,
    /// hit / (hit + miss) input tokens; `None` without input.
    pub cache_hit_ratio: Option<f64>,
}

/// Which rows to add up: `[from_ms, to_ms)`, optionally one user's.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub from_ms: i64,
    pub to_ms: Option<i64>,
    pub user: Option<String>,
    /// One personal API key's rows (`-`: login tokens').
    pub key: Option<String>,
}

pub async fn totals(
    pool: &AnyPool,
    filter: &Filter,
    by: GroupBy,
) -> Result<Vec<Totals>, sqlx::Error> {
    let group = by.sql();
    // `group` is one of three constants above, never user input; the
    // filter's values are bound parameters.
    let sql = format!(
        "SELECT {group} AS k, CAST(COUNT(*) AS BIGINT) AS requests, \
         CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt, \
         CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion, \
         CAST(COALESCE(SUM(completion_tokens_estimated), 0) AS BIGINT) AS estimated, \
         CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT) AS cached, \
         CAST(COALESCE(SUM(CASE WHEN prompt_tokens > COALESCE(cached_tokens, 0) \
         THEN prompt_tokens - COALESCE(cached_tokens, 0) ELSE 0 END), 0) AS BIGINT) AS miss, \
         CAST(COALESCE(SUM(billable), 0) AS BIGINT) AS billable, \
         CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) AS cost, \
         CAST(COALESCE(SUM(CASE WHEN cost_estimated = 1 THEN cost_micros ELSE 0 END), 0) \
         AS BIGINT) AS cost_estimated \
         FROM usage_log WHERE ts_ms >= $1 AND ts_ms < $2 AND ($3 = '' OR username = $4) \
         AND ($5 = '' OR COALESCE(key_id, '-') = $6) \
         GROUP BY {group} ORDER BY {group}"
    );
    let user = filter.user.clone().unwrap_or_default();
    let rows = sqlx::query(&sql)
        .bind(filter.from_ms)
        .bind(filter.to_ms.unwrap_or(i64::MAX))
        .bind(user.clone())
        .bind(user)
        .bind(filter.key.clone().unwrap_or_default())
        .bind(filter.key.clone().unwrap_or_default())
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            let key: String = row.try_get("k")?;
            let cost_micros: i64 = row.try_get("cost")?;
            let cached_tokens: i64 = row.try_get("cached")?;
            let cache_miss_tokens: i64 = row.try_get("miss")?;
            Ok(Totals {
                key: match by {
                    GroupBy::Day => key
                        .parse()
                        .map_or(key, |days| Date::from_days(days).to_string()),
                    _ => key,
                },
                requests: row.try_get("requests")?,
                prompt_tokens: row.try_get("prompt")?,
                completion_tokens: row.try_get("completion")?,
                estimated_tokens: row.try_get("estimated")?,
                cached_tokens,
                cache_miss_tokens,
                billable_requests: row.try_get("billable")?,
                cost_micros,
                cost_estimated_micros: row.try_get("cost_estimated")?,
                cost: units(cost_micros),
                cache_hit_ratio: hit_ratio(cached_tokens, cache_miss_tokens),
            })
        })
        .collect()
}

/// The newest rows, optionally one user's, newest first.
pub async fn recent(
    pool: &AnyPool,
    user: Option<&str>,
    limit: i64,
) -> Result<Vec<UsageRecord>, sqlx::Error> {
    let user = user.unwrap_or_default().to_owned();
    let rows = sqlx::query(
        "SELECT request_id, ts_ms, username, token_id, route, model, stream, status, \
         upstream_status, error_code, prompt_tokens, completion_tokens, cached_tokens, \
         reasoning_tokens, completion_tokens_estimated, latency_ms, ttfb_ms, bytes_in, \
         bytes_out, client_ip, outcome, format, requested_model, cache_miss_tokens, billable, \
         key_id, upstream, attempts, charged_tokens, cost_micros, cost_estimated, currency \
         FROM usage_log \
         WHERE ($1 = '' OR username = $2) ORDER BY ts_ms DESC LIMIT $3",
    )
    .bind(user.clone())
    .bind(user)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(UsageRecord {
                request_id: r.try_get("request_id")?,
                ts_ms: r.try_get("ts_ms")?,
                username: r.try_get("username")?,
                token_id: r.try_get("token_id")?,
                route: r.try_get("route")?,
                model: r.try_get("model")?,
                stream: r.try_get::<i64, _>("stream")? != 0,
                status: r.try_get("status")?,
                upstream_status: r.try_get("upstream_status")?,
                error_code: r.try_get("error_code")?,
                prompt_tokens: r.try_get("prompt_tokens")?,
                completion_tokens: r.try_get("completion_tokens")?,
                cached_tokens: r.try_get("cached_tokens")?,
                reasoning_tokens: r.try_get("reasoning_tokens")?,
                completion_tokens_estimated: r.try_get("completion_tokens_estimated")?,
                latency_ms: r.try_get("latency_ms")?,
                ttfb_ms: r.try_get("ttfb_ms")?,
                bytes_in: r.try_get("bytes_in")?,
                bytes_out: r.try_get("bytes_out")?,
                client_ip: r.try_get("client_ip")?,
                outcome: r.try_get("outcome")?,
                format: r.try_get("format")?,
                requested_model: r.try_get("requested_model")?,
                cache_miss_tokens: r.try_get("cache_miss_tokens")?,
                billable: r.try_get::<i64, _>("billable")? != 0,
                key_id: r.try_get("key_id")?,
                upstream: r.try_get("upstream")?,
                attempts: r.try_get("attempts")?,
                charged_tokens: r.try_get("charged_tokens")?,
                cost_micros: r.try_get("cost_micros")?,
                cost_estimated: r.try_get::<i64, _>("cost_estimated")? != 0,
                currency: r.try_get("currency")?,
            })
        })
        .collect()
}

/// The rows of `rows` the ledger does not have yet (same request id and
/// time), for the journal's replay.
pub async fn missing(
    pool: &AnyPool,
    rows: Vec<UsageRecord>,
) -> Result<Vec<UsageRecord>, sqlx::Error> {
    let mut out = Vec::new();
    for row in rows {
        let found =
            sqlx::query("SELECT 1 AS one FROM usage_log WHERE request_id = $1 AND ts_ms = $2")
                .bind(&row.request_id)
                .bind(row.ts_ms)
                .fetch_optional(pool)
                .await?;
        if found.is_none() {
            out.push(row);
        }
    }
    Ok(out)
}

/// Today's charged tokens and this month's spend (in `currency`) by user,
/// and this month's spend by key: what the quota counters hold.
pub async fn seeds(pool: &AnyPool, now_ms: u64, currency: &str) -> Result<Seeds, sqlx::Error> {
    let day = calendar::day_start_ms(now_ms) as i64;
    let month = calendar::month_start_ms(now_ms) as i64;
    let sums = |sql: &'static str, from: i64, currency: Option<&str>| {
        let query = sqlx::query(sql).bind(from);
        let query = match currency {
            Some(c) => query.bind(c.to_owned()),
            None => query,
        };
        async move {
            query
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    let n: i64 = r.try_get("n")?;
                    Ok((r.try_get::<String, _>("k")?, n.max(0) as u64))
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
        }
    };
    Ok(Seeds {
        now_ms,
        tokens_today: sums(
            "SELECT username AS k, CAST(SUM(charged_tokens) AS BIGINT) AS n FROM usage_log \
             WHERE ts_ms >= $1 AND charged_tokens IS NOT NULL GROUP BY username",
            day,
            None,
        )
        .await?,
        spent_month: sums(
            "SELECT username AS k, CAST(SUM(cost_micros) AS BIGINT) AS n FROM usage_log \
             WHERE ts_ms >= $1 AND currency = $2 AND cost_micros IS NOT NULL GROUP BY username",
            month,
            Some(currency),
        )
        .await?,
        key_spent_month: sums(
            "SELECT key_id AS k, CAST(SUM(cost_micros) AS BIGINT) AS n FROM usage_log \
             WHERE ts_ms >= $1 AND currency = $2 AND cost_micros IS NOT NULL \
             AND key_id IS NOT NULL GROUP BY key_id",
            month,
            Some(currency),
        )
        .await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_statements_number_their_parameters_from_one() {
        let sql = insert_sql(2, false);
        assert!(sql.contains("VALUES ($1, $2, "), "{sql}");
        assert!(sql.ends_with(&format!("${})", 2 * COLUMNS)), "{sql}");
        assert!(insert_sql(2, true).ends_with("?, ?)"));
    }

    #[tokio::test]
    async fn batches_of_every_size_are_written_whole_in_statements_of_a_few_shapes() {
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("sqlite");
        migrate(&pool, true).await.expect("schema");
        let mut written = 0;
        for n in [1, 2, 3, 31, 49, 50, 51, 99, 113] {
            let rows: Vec<UsageRecord> = (0..n)
                .map(|i| UsageRecord {
                    request_id: format!("{n}-{i}"),
                    ts_ms: i,
                    username: format!("user{i}"),
                    ..UsageRecord::default()
                })
                .collect();
            insert(&pool, true, &rows).await.expect("insert");
            written += n;
        }
        let (count, distinct): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM usage_log")
                .fetch_one(&pool)
                .await
                .expect("count");
        assert_eq!((count, distinct), (written, written));
    }
}
