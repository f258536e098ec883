//! The ledger's journal: every row is appended to a local file, in one
//! `write`, before the response it describes ends, so a row whose response
//! ended survives the process being killed (`kill -9`, a panic that aborts,
//! the OOM killer) even though rows reach the database in batches. (It is in
//! the kernel's page cache: a power cut can still lose the last seconds;
//! that would need an fsync per request.)
//!
//! Segments: rows go to `<path>`. Before each batch is written, the writer
//! seals the segment (renames it `<path>.<n>`) and starts a new one; once
//! every row of the sealed segment is in the database, the file is deleted.
//! A segment with a row the database did not take (a full queue, a failed
//! insert) is kept. At start, every segment left over is replayed into the
//! database, skipping rows it already has (by request id and time), and
//! then deleted.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::UsageRecord;

pub struct Journal {
    path: PathBuf,
    current: Mutex<Segment>,
}

struct Segment {
    file: File,
    bytes: u64,
    /// A row of this segment did not reach the queue.
    lossy: bool,
    next_seq: u64,
}

/// A segment taken out of use, to delete once its rows are written.
pub struct Sealed {
    path: PathBuf,
    lossy: bool,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Journal {
    /// Opens the journal at `path`, and returns the rows that earlier runs
    /// left in it, with the files they came from (delete them with
    /// [`Journal::discard`] once the rows are in the database).
    pub fn open(path: &Path) -> std::io::Result<(Journal, Vec<UsageRecord>, Vec<PathBuf>)> {
        let mut leftovers = segments(path)?;
        if path.exists() {
            leftovers.push((u64::MAX, path.to_owned()));
        }
        leftovers.sort();
        let mut rows = Vec::new();
        for (_, file) in &leftovers {
            for line in BufReader::new(File::open(file)?).split(b'\n') {
                let line = line?;
                // The last line of a killed process may be cut short.
                match serde_json::from_slice::<UsageRecord>(&line) {
                    Ok(row) => rows.push(row),
                    Err(_) if line.is_empty() => {}
                    Err(e) => tracing::warn!(error = %e, file = %file.display(),
                        "skipping an unreadable ledger journal line"),
                }
            }
        }
        let next_seq = leftovers
            .iter()
            .map(|(n, _)| *n)
            .filter(|&n| n != u64::MAX)
            .max()
            .map_or(0, |n| n + 1);
        // Rows left in `<path>` move aside, so new ones start a fresh file.
        let mut files: Vec<PathBuf> = Vec::new();
        for (n, file) in leftovers {
            if n == u64::MAX {
                let aside = sealed_path(path, next_seq);
                fs::rename(&file, &aside)?;
                files.push(aside);
            } else {
                files.push(file);
            }
        }
        let segment = Segment {
            file: open_append(path)?,
            bytes: 0,
            lossy: false,
            next_seq: next_seq + 1,
        };
        let journal = Journal {
            path: path.to_owned(),
            current: Mutex::new(segment),
        };
        Ok((journal, rows, files))
    }

    // Held for one write, never across an await.
    fn lock(&self) -> MutexGuard<'_, Segment> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a row's [`line`] in one write, then runs `queue` (which hands
    /// the row to the writer) under the same lock, so a sealed segment's rows
    /// are all queued before it is sealed. `queue` says whether the row was
    /// taken; so does the answer.
    pub fn append(&self, line: Vec<u8>, queue: impl FnOnce() -> bool) -> bool {
        let mut segment = self.lock();
        if let Err(e) = segment.file.write_all(&line) {
            tracing::error!(error = %e, "cannot append to the ledger journal");
        }
        segment.bytes += line.len() as u64;
        let queued = queue();
        if !queued {
            segment.lossy = true;
        }
        queued
    }

    /// Starts a new segment if the current one has rows; the old one is
    /// returned, to [`Journal::written`] once its rows are in the database.
    pub fn seal(&self) -> Option<Sealed> {
        let mut segment = self.lock();
        if segment.bytes == 0 {
            return None;
        }
        let sealed = sealed_path(&self.path, segment.next_seq);
        if let Err(e) = fs::rename(&self.path, &sealed) {
            tracing::error!(error = %e, "cannot seal the ledger journal segment");
            return None;
        }
        match open_append(&self.path) {
            Ok(file) => segment.file = file,
            Err(e) => tracing::error!(error = %e, "cannot start a ledger journal segment"),
        }
        let lossy = std::mem::take(&mut segment.lossy);
        segment.bytes = 0;
        segment.next_seq += 1;
        Some(Sealed {
            path: sealed,
            lossy,
        })
    }

    /// The sealed segment's rows were written (`ok`), or some were not.
    /// A failed batch may also hold rows of the current segment (queued
    /// after the seal), so that one is kept too.
    pub fn written(&self, sealed: Sealed, ok: bool) {
        if !ok {
            self.lock().lossy = true;
        }
        if ok && !sealed.lossy {
            Self::discard(&[sealed.path]);
        } else {
            tracing::warn!(file = %sealed.path.display(),
                "ledger journal segment kept: some of its rows are not in the database yet; \
                 they are replayed at the next start");
        }
    }

    pub fn discard(files: &[PathBuf]) {
        for file in files {
            if let Err(e) = fs::remove_file(file) {
                tracing::warn!(error = %e, file = %file.display(), "cannot delete a ledger journal segment");
            }
        }
    }
}

/// A row as one journal line: a JSON array of its fields in the order they
/// are declared, which serde reads back into a [`UsageRecord`] as readily
/// as an object (so lines of either kind replay). Without the keys the line
/// is half as long, and half as much is escaped on the request's thread
/// (BENCHMARKS.md, issue 15).
pub fn line(row: &UsageRecord) -> Vec<u8> {
    // A row's line is about 350 bytes: sized once, not grown from
    // `serde_json::to_vec`'s 128 bytes.
    let mut line = Vec::with_capacity(LINE_CAPACITY_BYTES);
    if serde_json::to_writer(&mut line, &Fields(row)).is_err() {
        line.clear();
    }
    line.push(b'\n');
    line
}

const LINE_CAPACITY_BYTES: usize = 512;

/// A row serialised as the array of its fields.
struct Fields<'a>(&'a UsageRecord);

impl serde::Serialize for Fields<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        // Every field, in declaration order: one added to the row and not
        // here does not compile; one out of order fails the round trip test.
        macro_rules! in_order {
            ($($field:ident),* $(,)?) => {{
                let UsageRecord { $($field),* } = self.0;
                let mut fields = serializer.serialize_tuple([$(stringify!($field)),*].len())?;
                $(fields.serialize_element($field)?;)*
                fields.end()
            }};
        }
        in_order!(
            request_id,
            ts_ms,
            username,
            token_id,
            key_id,
            upstream,
            attempts,
            route,
            format,
            model,
            requested_model,
            stream,
            status,
            upstream_status,
            error_code,
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            cache_miss_tokens,
            reasoning_tokens,
            completion_tokens_estimated,
            latency_ms,
            ttfb_ms,
            bytes_in,
            bytes_out,
            client_ip,
            outcome,
            billable,
            charged_tokens,
            cost_micros,
            cost_estimated,
            currency,
        )
    }
}

fn sealed_path(path: &Path, seq: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{seq}"));
    PathBuf::from(name)
}

/// The sealed segments beside `path`, with their numbers.
fn segments(path: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{base}.");
    let mut found = Vec::new();
    if !dir.exists() {
        return Ok(found);
    }
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((seq, dir.join(name)));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> UsageRecord {
        UsageRecord {
            request_id: id.into(),
            ts_ms: 1,
            cost_micros: Some(7),
            ..UsageRecord::default()
        }
    }

    #[test]
    fn a_line_reads_back_as_the_row_it_was_made_from_and_old_lines_still_read() {
        // Every field set, and set apart from its neighbours of the same type.
        let row = UsageRecord {
            request_id: "r".into(),
            ts_ms: 1,
            username: "u".into(),
            token_id: "t".into(),
            key_id: Some("k".into()),
            upstream: Some("up".into()),
            attempts: Some(2),
            route: "chat".into(),
            format: "chat".into(),
            model: Some("m".into()),
            requested_model: Some("rm".into()),
            stream: true,
            status: 200,
            upstream_status: Some(201),
            error_code: Some("e".into()),
            prompt_tokens: Some(3),
            completion_tokens: Some(4),
            cached_tokens: Some(5),
            cache_miss_tokens: Some(6),
            reasoning_tokens: Some(7),
            completion_tokens_estimated: Some(8),
            latency_ms: 9.5,
            ttfb_ms: Some(10.5),
            bytes_in: 11,
            bytes_out: 12,
            client_ip: "127.0.0.1".into(),
            outcome: "completed".into(),
            billable: true,
            charged_tokens: Some(13),
            cost_micros: Some(14),
            cost_estimated: true,
            currency: Some("CNY".into()),
        };
        let text = line(&row);
        assert_eq!(serde_json::from_slice::<UsageRecord>(&text).unwrap(), row);
        // The exact line, as this version writes it: journals left by it
        // must replay in later ones (fields are added at the end only).
        let golden = concat!(
            r#"["r",1,"u","t","k","up",2,"chat","chat","m","rm",true,200,201,"e","#,
            r#"3,4,5,6,7,8,9.5,10.5,11,12,"127.0.0.1","completed",true,13,14,true,"CNY"]"#,
            "\n"
        );
        assert_eq!(String::from_utf8_lossy(&text), golden);
        assert_eq!(serde_json::from_str::<UsageRecord>(golden).unwrap(), row);
        // What an earlier version wrote: the row as an object.
        let object = serde_json::to_vec(&row).unwrap();
        assert_eq!(serde_json::from_slice::<UsageRecord>(&object).unwrap(), row);
    }

    #[test]
    fn rows_left_behind_are_returned_once_and_sealed_segments_go_when_written() {
        let dir = std::env::temp_dir().join(format!("dsp-journal-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("usage.db.journal");
        let (journal, rows, files) = Journal::open(&path).unwrap();
        assert!(rows.is_empty() && files.is_empty());
        journal.append(line(&row("a")), || true);
        let sealed = journal.seal().expect("a segment with a row");
        assert!(journal.seal().is_none(), "an empty segment is not sealed");
        journal.append(line(&row("b")), || true);
        journal.append(line(&row("c")), || false);
        journal.written(sealed, true);
        // A failed batch keeps the segment being written too.
        journal.append(line(&row("e")), || true);
        let failed = journal.seal().unwrap();
        journal.append(line(&row("b")), || true);
        journal.written(failed, false);
        assert!(
            journal.seal().unwrap().lossy,
            "the next segment is kept too"
        );
        // "b", "c" and "e" stay (a dropped row, a failed batch), then "b".
        drop(journal);
        let mut torn = serde_json::to_vec(&row("torn")).unwrap();
        torn.truncate(10);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&torn)
            .unwrap();
        let (journal, rows, files) = Journal::open(&path).unwrap();
        let ids: Vec<_> = rows.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "e", "b"]);
        assert_eq!(rows[0].cost_micros, Some(7));
        Journal::discard(&files);
        journal.append(line(&row("d")), || false);
        let lossy = journal.seal().unwrap();
        journal.written(lossy, true);
        drop(journal);
        let (_, rows, _) = Journal::open(&path).unwrap();
        assert_eq!(rows.len(), 1, "a segment with a dropped row is kept");
        fs::remove_dir_all(&dir).unwrap();
    }
}
