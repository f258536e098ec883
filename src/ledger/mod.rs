//! The usage ledger: one row per upstream-bound request, in SQLite (the
//! default, one file) or PostgreSQL (shared by several replicas), through
//! the same sqlx code.
//!
//! Rows are written off the request path: [`Ledger::record`] puts a row on a
//! bounded queue and returns at once. If the queue is full the row is
//! dropped, counted ([`Ledger::dropped`]) and warned about: the request path
//! never waits for the database. A writer task inserts batches at least once
//! a second, and [`Ledger::flush`] writes everything on shutdown, so a
//! clean stop loses nothing. A batch that cannot be written is counted as
//! dropped, like a row the full queue turned away.
//!
//! For a SQLite file, the writer has a connection of its own
//! ([`direct`]), not sqlx's: a row costs SQLite's work and little more.
//!
//! With a [`journal`] (the default for a SQLite file), each row is also
//! appended to a local file before its response ends, and replayed at the
//! next start if the process died before the batch was written: spend is
//! not lost in a crash.

mod direct;
pub mod journal;
mod schema;

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::config::{Storage, StorageConfig};

/// Rows written per transaction at most. Large, because with many users
/// each row dirties its own page of the per-user index, and SQLite's WAL
/// writes every page a transaction dirtied once per transaction: 5,000 rows
/// a transaction cost a quarter less CPU per row than 500
/// (`bench/sqlite_floor`, BENCHMARKS.md).
const BATCH_ROWS: usize = 5000;
/// The longest a row waits in the queue before it is written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long shutdown waits for the last rows to be written.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// One upstream-bound request.
///
/// The crash journal writes a row as the array of its fields in this order
/// ([`journal::line`]), and replays arrays by position: add a field at the
/// end, with `#[serde(default)]`, and never reorder them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UsageRecord {
    pub request_id: String,
    pub ts_ms: i64,
    pub username: String,
    /// The token's `jti`, never the token.
    pub token_id: String,
    /// The personal API key's id (never the key), when one was used.
    pub key_id: Option<String>,
    /// The upstream that answered (or the last one tried).
    pub upstream: Option<String>,
    /// How many upstreams were tried.
    pub attempts: Option<i64>,
    pub route: String,
    /// The wire format: chat, fim, responses, anthropic or tools.
    pub format: String,
    /// The model DeepSeek served (aliases and claude names resolved).
    pub model: Option<String>,
    /// The name the client sent, when it differs from `model`.
    pub requested_model: Option<String>,
    pub stream: bool,
    pub status: i64,
    pub upstream_status: Option<i64>,
    pub error_code: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub cached_tokens: Option<i64>,
    pub cache_miss_tokens: Option<i64>,
    pub reasoning_tokens: Option<i64>,
    /// Set instead of `completion_tokens` when the request ended before
    /// DeepSeek reported its usage.
    pub completion_tokens_estimated: Option<i64>,
    pub latency_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub client_ip: String,
    pub outcome: String,
    /// DeepSeek bills it: a 2xx answer with content (a tool call is billed
    /// per call, a completion by its tokens).
    pub billable: bool,
    /// Tokens charged against `tokens_per_day` (DeepSeek's usage, else the
    /// estimate): what the quota counters are rebuilt from at start.
    #[serde(default)]
    pub charged_tokens: Option<i64>,
    /// What it cost, in micro-units of `currency`, priced when it was sent
    /// (`None`: the model has no price).
    #[serde(default)]
    pub cost_micros: Option<i64>,
    /// The cost is an estimate (the request ended before DeepSeek reported
    /// its usage).
    #[serde(default)]
    pub cost_estimated: bool,
    #[serde(default)]
    pub currency: Option<String>,
}

/// A handle to the ledger; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Box<UsageRecord>>,
    /// Wakes the writer when a batch is ready (not for every row: a wake-up
    /// per request costs more CPU than the insert).
    batch_ready: Arc<Notify>,
    flushes: mpsc::Sender<oneshot::Sender<()>>,
    /// Rows queued that wake the writer before its next tick: a batch, or
    /// half the queue if that is smaller, so a small queue is drained when
    /// half full rather than once a second.
    wake_at: usize,
    dropped: Arc<AtomicU64>,
    /// For reads (admin API, usage command); the writer has its own handle.
    pool: AnyPool,
    /// An in-memory database's spare connection, never used: the
    /// database lives as long as one connection to it is open, so this
    /// keeps it when the pool closes and replaces its own one (after a
    /// failed check on release, say).
    _keeper: Option<Arc<tokio::sync::Mutex<sqlx::AnyConnection>>>,
    journal: Option<Arc<journal::Journal>>,
}

impl Ledger {
    /// Connects, creates or migrates the schema, replays the journal, and
    /// starts the writer: the gateway's ledger.
    pub async fn open(config: &StorageConfig) -> Result<Ledger, String> {
        Self::connect(config, config.journal_path.as_deref()).await
    }

    /// The same database without the journal, for the CLI: the journal
    /// belongs to the gateway process (which may be running) alone.
    pub async fn open_without_journal(config: &StorageConfig) -> Result<Ledger, String> {
        Self::connect(config, None).await
    }

    async fn connect(
        config: &StorageConfig,
        journal_path: Option<&std::path::Path>,
    ) -> Result<Ledger, String> {
        sqlx::any::install_default_drivers();
        let is_memory = config.url().contains(":memory:");
        // An in-memory database by a name of its own (sqlx's `:memory:`
        // gets a new name at each connect), so that the keeper below and
        // any connection the pool opens later reach the same one.
        let url = match is_memory {
            true => format!(
                "sqlite:file:deepseek_proxy-ledger-{}?mode=memory",
                uuid::Uuid::new_v4().simple()
            ),
            false => config.url(),
        };
        let mut options = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10));
        if is_memory {
            // One connection: its tables are shared with the keeper's
            // (SQLite's shared cache), which locks table by table.
            options = options
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = options
            .connect(&url)
            .await
            .map_err(|e| format!("cannot open the usage ledger ({}): {e}", config.describe()))?;
        let keeper = match is_memory {
            true => {
                use sqlx::ConnectOptions;
                let keeper = pool.connect_options().connect().await;
                let keeper = keeper.map_err(|e| format!("cannot open the usage ledger: {e}"))?;
                Some(Arc::new(tokio::sync::Mutex::new(keeper)))
            }
            false => None,
        };
        schema::migrate(&pool, url.starts_with("sqlite"))
            .await
            .map_err(|e| format!("cannot prepare the usage ledger schema: {e}"))?;
        let journal = match journal_path {
            Some(path) => Some(Arc::new(
                replay(&pool, url.starts_with("sqlite"), path).await?,
            )),
            None => None,
        };
        // The file sqlx resolved from the URL (a `%` or `?` in the path
        // means to sqlx what it does in a URL), so both open the same one.
        let direct = match &config.backend {
            Storage::Sqlite(path) if path != ":memory:" => {
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
                    .map_err(|e| format!("cannot open the usage ledger ({path}): {e}"))?;
                Some(direct::Direct::open(options.get_filename())?)
            }
            _ => None,
        };
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let (flushes, flush_rx) = mpsc::channel(16);
        let batch_ready = Arc::new(Notify::new());
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            pool: pool.clone(),
            sqlite: url.starts_with("sqlite"),
            direct,
            rows: rx,
            flushes: flush_rx,
            batch_ready: batch_ready.clone(),
            dropped: dropped.clone(),
            journal: journal.clone(),
        };
        tokio::spawn(writer.run());
        Ok(Ledger {
            tx,
            batch_ready,
            flushes,
            wake_at: BATCH_ROWS.min(config.queue_capacity / 2).max(1),
            dropped,
            pool,
            _keeper: keeper,
            journal,
        })
    }

    /// The database, for the users and keys kept beside the ledger.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Queues a row (after appending it to the journal, if there is one);
    /// never waits for the database. A full queue drops the row (counted;
    /// the journal keeps it for the next start).
    pub fn record(&self, row: UsageRecord) {
        let queued = match &self.journal {
            Some(journal) => {
                let line = journal::line(&row);
                journal.append(line, || self.tx.try_send(Box::new(row)).is_ok())
            }
            None => self.tx.try_send(Box::new(row)).is_ok(),
        };
        if queued {
            if self.queued() >= self.wake_at {
                self.batch_ready.notify_one();
            }
        } else {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // One warning per thousand drops keeps a flood out of the log.
            if dropped % 1000 == 1 {
                tracing::warn!(dropped, "usage ledger queue full; rows dropped");
            }
        }
    }

    /// Rows dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Rows waiting to be written.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// What today's and this month's counters should hold, from the rows.
    pub async fn seeds(&self, now_ms: u64, currency: &str) -> Result<Seeds, sqlx::Error> {
        schema::seeds(&self.pool, now_ms, currency).await
    }

    /// Totals grouped by user, model or day.
    pub async fn totals(&self, filter: &Filter, by: GroupBy) -> Result<Vec<Totals>, sqlx::Error> {
        schema::totals(&self.pool, filter, by).await
    }

    /// The newest rows, newest first.
    pub async fn recent(
        &self,
        user: Option<&str>,
        limit: i64,
    ) -> Result<Vec<UsageRecord>, sqlx::Error> {
        schema::recent(&self.pool, user, limit).await
    }

    /// Writes every queued row, then returns; bounded as a whole, so a
    /// stuck database cannot hang shutdown.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        let flushed = async {
            if self.flushes.send(done).await.is_ok() {
                let _ = wait.await;
            }
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, flushed).await.is_err() {
            tracing::warn!("usage ledger flush timed out; unwritten rows are lost");
        }
    }
}

/// Writes queued rows: once a second, when a batch is ready, and on flush.
struct Writer {
    pool: AnyPool,
    sqlite: bool,
    /// A SQLite file's own connection; `None`: through the pool.
    direct: Option<direct::Direct>,
    rows: mpsc::Receiver<Box<UsageRecord>>,
    flushes: mpsc::Receiver<oneshot::Sender<()>>,
    batch_ready: Arc<Notify>,
    dropped: Arc<AtomicU64>,
    journal: Option<Arc<journal::Journal>>,
}

impl Writer {
    async fn run(mut self) {
        let mut batch: Vec<UsageRecord> = Vec::new();
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        loop {
            let flush_done = tokio::select! {
                _ = tick.tick() => None,
                _ = self.batch_ready.notified() => None,
                done = self.flushes.recv() => match done {
                    Some(done) => Some(done),
                    // Every handle is gone: write what is left and stop.
                    None => {
                        self.write_queued(&mut batch).await;
                        return;
                    }
                },
            };
            self.write_queued(&mut batch).await;
            if let Some(done) = flush_done {
                let _ = done.send(());
            }
        }
    }

    /// Writes everything queued now, in batches. The journal's segment is
    /// sealed first: every row in it is then in the queue, and the segment
    /// goes once they are all written.
    async fn write_queued(&mut self, batch: &mut Vec<UsageRecord>) {
        let sealed = self.journal.as_ref().and_then(|j| j.seal());
        let mut ok = true;
        while let Ok(row) = self.rows.try_recv() {
            batch.push(*row);
            if batch.len() == BATCH_ROWS {
                ok &= self.insert(batch).await;
            }
        }
        ok &= self.insert(batch).await;
        if let (Some(journal), Some(sealed)) = (&self.journal, sealed) {
            journal.written(sealed, ok);
        }
    }

    /// Writes and clears `batch`; false if it could not be written.
    async fn insert(&self, batch: &mut Vec<UsageRecord>) -> bool {
        if batch.is_empty() {
            return true;
        }
        let rows = batch.len();
        let timed_out = || format!("no answer within {INSERT_TIMEOUT:?}");
        let failure = match &self.direct {
            Some(direct) => {
                let written = direct.insert(std::mem::take(batch));
                match tokio::time::timeout(INSERT_TIMEOUT, written).await {
                    Ok((emptied, result)) => {
                        *batch = emptied;
                        result.err()
                    }
                    Err(_) => Some(timed_out()),
                }
            }
            None => {
                let written = schema::insert(&self.pool, self.sqlite, batch);
                match tokio::time::timeout(INSERT_TIMEOUT, written).await {
                    Ok(result) => result.err().map(|e| e.to_string()),
                    Err(_) => Some(timed_out()),
                }
            }
        };
        batch.clear();
        if let Some(error) = failure {
            self.dropped.fetch_add(rows as u64, Ordering::Relaxed);
            tracing::error!(%error, rows, "usage ledger write failed; rows dropped");
            return false;
        }
        true
    }
}

/// The longest one batch may take to write.
const INSERT_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens the journal and writes what an earlier run left in it (rows the
/// database already has are skipped), then deletes those segments.
async fn replay(
    pool: &AnyPool,
    sqlite: bool,
    path: &std::path::Path,
) -> Result<journal::Journal, String> {
    let (journal, rows, files) = journal::Journal::open(path).map_err(|e| {
        format!(
            "cannot open the ledger journal {} (storage.journal_path): {e}",
            path.display()
        )
    })?;
    if !rows.is_empty() {
        let found = rows.len();
        let missing = schema::missing(pool, rows)
            .await
            .map_err(|e| format!("cannot replay the ledger journal: {e}"))?;
        let replayed = missing.len();
        for chunk in missing.chunks(BATCH_ROWS) {
            schema::insert(pool, sqlite, chunk)
                .await
                .map_err(|e| format!("cannot replay the ledger journal: {e}"))?;
        }
        tracing::warn!(
            found,
            replayed,
            "replayed the ledger journal: the gateway stopped before writing these rows"
        );
    }
    journal::Journal::discard(&files);
    Ok(journal)
}

pub use crate::limits::quota::Seeds;
pub use schema::{Filter, GroupBy, Totals};
