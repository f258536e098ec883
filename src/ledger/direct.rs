//! The ledger's writer for a SQLite file: a connection of its own, used on
//! a blocking thread, beside sqlx's pool (which keeps the migrations, the
//! journal's replay, every read, and the users and keys).
//!
//! Through sqlx, each row cost ~13,000 instructions more than SQLite's own
//! work: every value converted to sqlx's `Any` arguments, copied again to
//! cross to sqlx's SQLite thread, and freed there (callgrind, BENCHMARKS.md,
//! issue 15). Here the values are bound straight from the row. The
//! statements, their sizes and the column order are the sqlx writer's
//! (`schema::statements`, `schema::values`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, Value as Sql, ValueRef};

use super::schema::{self, Value};
use super::UsageRecord;

/// How long a write waits for another writer of the file (the users and
/// keys, through sqlx) before it fails; sqlx's own default.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Direct {
    conn: Arc<Mutex<rusqlite::Connection>>,
}

impl Direct {
    /// Opens the file the pool has migrated.
    pub fn open(path: &str) -> Result<Direct, String> {
        let conn = rusqlite::Connection::open(path)
            .map_err(|e| format!("cannot open the usage ledger (SQLite at {path}): {e}"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| format!("cannot open the usage ledger (SQLite at {path}): {e}"))?;
        Ok(Direct {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Writes `rows` in one transaction, on a blocking thread; gives the
    /// (emptied) vector back.
    pub async fn insert(
        &self,
        mut rows: Vec<UsageRecord>,
    ) -> (Vec<UsageRecord>, Result<(), String>) {
        let conn = self.conn.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            let result = insert(&mut conn, &rows).map_err(|e| e.to_string());
            rows.clear();
            (rows, result)
        })
        .await;
        written.unwrap_or_else(|e| (Vec::new(), Err(format!("the writer thread failed: {e}"))))
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
