//! The ledger's writer for a SQLite file: a connection of its own, on a
//! thread of its own, beside sqlx's pool (which keeps the migrations, the
//! journal's replay, every read, and the users and keys).
//!
//! Through sqlx, each row cost ~9,000 instructions more than SQLite's own
//! work: every value converted to sqlx's `Any` arguments, copied again to
//! cross to sqlx's SQLite thread, and freed there (callgrind, BENCHMARKS.md,
//! issue 15). Here the values are bound straight from the row. The
//! statements, their sizes and the column order are the sqlx writer's
//! (`schema::statements`, `schema::values`).
//!
//! One batch is written at a time. A batch whose write outlives the
//! writer's timeout may still land later (the journal's replay skips rows
//! the table has, so none is written twice); until it has, the next
//! batches fail at once, counted as dropped and kept by the journal, rather
//! than queue behind it. The thread is not the runtime's, so a write stuck
//! on a dead disk does not hold the process at exit.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, Value as Sql, ValueRef};
use tokio::sync::oneshot;

use super::schema::{self, Value};
use super::UsageRecord;

/// How long a write waits for another writer of the file (the users and
/// keys, through sqlx) before it fails; sqlx's own default.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

type Written = (Vec<UsageRecord>, Result<(), String>);

pub struct Direct {
    batches: mpsc::Sender<(Vec<UsageRecord>, oneshot::Sender<Written>)>,
    /// A batch is being written (set here, cleared by the thread before it
    /// answers).
    busy: Arc<AtomicBool>,
}

impl Direct {
    /// Opens `path`, the file sqlx's pool has opened and migrated, and
    /// starts the writer's thread.
    pub fn open(path: &Path) -> Result<Direct, String> {
        let failed = |e: rusqlite::Error| {
            format!(
                "cannot open the usage ledger (SQLite at {}): {e}",
                path.display()
            )
        };
        let conn = rusqlite::Connection::open(path).map_err(failed)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(failed)?;
        let (batches, todo) = mpsc::channel::<(Vec<UsageRecord>, oneshot::Sender<Written>)>();
        let busy = Arc::new(AtomicBool::new(false));
        let done = busy.clone();
        std::thread::Builder::new()
            .name("ledger-sqlite".into())
            .spawn(move || {
                let mut conn = conn;
                // Ends when the ledger is gone.
                while let Ok((mut rows, answer)) = todo.recv() {
                    let result = insert(&mut conn, &rows).map_err(|e| e.to_string());
                    rows.clear();
                    done.store(false, Ordering::Release);
                    let _ = answer.send((rows, result));
                }
            })
            .map_err(|e| format!("cannot start the usage ledger's writer: {e}"))?;
        Ok(Direct { batches, busy })
    }

    /// Writes `rows` in one transaction; gives the (emptied) vector back.
    /// Fails at once while an earlier batch is still being written.
    pub async fn insert(&self, rows: Vec<UsageRecord>) -> Written {
        if self.busy.swap(true, Ordering::Acquire) {
            let error = "an earlier batch is still being written".to_owned();
            return (rows, Err(error));
        }
        let stopped = || {
            self.busy.store(false, Ordering::Release);
            Err("the writer's thread has stopped".to_owned())
        };
        let (answer, written) = oneshot::channel();
        if let Err(mpsc::SendError((rows, _))) = self.batches.send((rows, answer)) {
            return (rows, stopped());
        }
        written.await.unwrap_or_else(|_| (Vec::new(), stopped()))
    }
}

fn insert(conn: &mut rusqlite::Connection, rows: &[UsageRecord]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for (sql, chunk) in schema::statements(rows, true) {
        let mut statement = tx.prepare_cached(sql)?;
        let mut i = 0;
        for row in chunk {
            for value in schema::values(row) {
                i += 1;
                statement.raw_bind_parameter(i, Bound(value))?;
            }
        }
        statement.raw_execute()?;
    }
    tx.commit()
}

/// A column value as SQLite takes it.
struct Bound<'a>(Value<'a>);

impl rusqlite::ToSql for Bound<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Text(Some(text)) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            Value::Int(Some(n)) => ToSqlOutput::Owned(Sql::Integer(n)),
            Value::Real(Some(x)) => ToSqlOutput::Owned(Sql::Real(x)),
            Value::Text(None) | Value::Int(None) | Value::Real(None) => {
                ToSqlOutput::Owned(Sql::Null)
            }
        })
    }
}
