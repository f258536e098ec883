//! What `check` found, as a ✅/❌ table for people or one JSON document for
//! machines. Nothing here ever sees a key: rows carry statuses and short
//! details that `check` wrote itself, never an upstream's body.

use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    /// Not tried (e.g. TLS on plain http, or everything after a failed
    /// connection), or not offered by the upstream: not a failure.
    Skip,
}

/// One check of one target.
#[derive(Clone, Debug)]
pub struct Row {
    pub check: String,
    pub outcome: Outcome,
    pub detail: String,
    /// How long the check took; `None` when it was not run.
    pub ms: Option<u64>,
}

impl Row {
    pub fn pass(check: &str, detail: impl Into<String>, ms: u64) -> Self {
        Self::new(check, Outcome::Pass, detail, Some(ms))
    }

    pub fn fail(check: &str, detail: impl Into<String>, ms: Option<u64>) -> Self {
        Self::new(check, Outcome::Fail, detail, ms)
    }

    pub fn skip(check: &str, detail: impl Into<String>, ms: Option<u64>) -> Self {
        Self::new(check, Outcome::Skip, detail, ms)
    }

    fn new(check: &str, outcome: Outcome, detail: impl Into<String>, ms: Option<u64>) -> Self {
        Self {
            check: check.to_owned(),
            outcome,
            detail: detail.into(),
            ms,
        }
    }
}

/// Every check of one upstream.
#[derive(Clone, Debug)]
pub struct TargetReport {
    pub name: String,
    pub base_url: String,
    pub rows: Vec<Row>,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub targets: Vec<TargetReport>,
    /// Checked the built-in fake (`--demo`), not a real upstream.
    pub demo: bool,
}

impl Report {
    fn rows(&self) -> impl Iterator<Item = &Row> {
        self.targets.iter().flat_map(|t| &t.rows)
    }

    fn count(&self, outcome: Outcome) -> usize {
        self.rows().filter(|r| r.outcome == outcome).count()
    }

    /// True when nothing failed (skipped rows are fine).
    pub fn ok(&self) -> bool {
        self.count(Outcome::Fail) == 0
    }

    /// `passed, failed, skipped`, and the verdict.
    pub fn summary(&self) -> String {
        let (passed, failed, skipped) = (
            self.count(Outcome::Pass),
            self.count(Outcome::Fail),
            self.count(Outcome::Skip),
        );
        let targets = self.targets.len();
        let upstreams = if targets == 1 {
            "upstream"
        } else {
            "upstreams"
        };
        if failed == 0 {
            format!("✅ all good: {passed} passed, {skipped} skipped, on {targets} {upstreams}")
        } else {
            format!(
                "❌ {failed} failed, {passed} passed, {skipped} skipped, on {targets} {upstreams}"
            )
        }
    }

    /// The table and the summary line.
    pub fn table(&self) -> String {
        const HEAD: [&str; 5] = ["TARGET", "CHECK", "RESULT", "DETAIL", "MS"];
        let cells: Vec<[String; 5]> = self
            .targets
            .iter()
            .flat_map(|t| {
                t.rows.iter().map(|r| {
                    [
                        t.name.clone(),
                        r.check.clone(),
                        mark(r.outcome).to_owned(),
                        r.detail.clone(),
                        r.ms.map_or_else(|| "-".to_owned(), |ms| ms.to_string()),
                    ]
                })
            })
            .collect();
        let mut widths = HEAD.map(width);
        for row in &cells {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let line = |row: [&str; 5]| {
            let mut out = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                let pad = w.saturating_sub(width(cell));
                if i == 4 {
                    out.push_str(&" ".repeat(pad)); // numbers: right-aligned
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad + 2));
                }
            }
            out.trim_end().to_owned() + "\n"
        };
        let mut out = line(HEAD);
        for row in &cells {
            out.push_str(&line(row.each_ref().map(String::as_str)));
        }
        out.push('\n');
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    /// `{ok, demo, passed, failed, skipped, targets: [{name, base_url,
    /// checks: [{name, ok, skipped, detail, ms}]}]}`.
    pub fn json(&self) -> Value {
        let targets: Vec<Value> = self
            .targets
            .iter()
            .map(|t| {
                let checks: Vec<Value> = t
                    .rows
                    .iter()
                    .map(|r| {
                        json!({
                            "name": r.check,
                            "ok": r.outcome != Outcome::Fail,
                            "skipped": r.outcome == Outcome::Skip,
                            "detail": r.detail,
                            "ms": r.ms,
                        })
                    })
                    .collect();
                json!({
                    "name": t.name,
                    "base_url": t.base_url,
                    "ok": t.rows.iter().all(|r| r.outcome != Outcome::Fail),
                    "checks": checks,
                })
            })
            .collect();
        json!({
            "ok": self.ok(),
            "demo": self.demo,
            "passed": self.count(Outcome::Pass),
            "failed": self.count(Outcome::Fail),
            "skipped": self.count(Outcome::Skip),
            "targets": targets,
        })
    }
}

fn mark(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Pass => "✅",
        Outcome::Fail => "❌",
        Outcome::Skip => "➖",
    }
}

/// Terminal columns a cell takes: the marks are wide (two columns), the
/// rest of what `check` writes is narrow.
fn width(cell: &str) -> usize {
    cell.chars()
        .map(|c| {
            if matches!(c, '✅' | '❌' | '➖') {
                2
            } else {
                1
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rows: Vec<Row>) -> Report {
        Report {
            targets: vec![TargetReport {
                name: "deepseek".into(),
                base_url: "https://api.deepseek.com/".into(),
                rows,
            }],
            demo: false,
        }
    }

    #[test]
    fn a_skip_is_not_a_failure_and_a_failure_is() {
        let good = report(vec![
            Row::pass("dns", "1 address", 3),
            Row::skip("tls", "plain http: no TLS", None),
        ]);
        assert!(good.ok());
        assert!(good
            .summary()
            .starts_with("✅ all good: 1 passed, 1 skipped"));
        let bad = report(vec![
            Row::pass("dns", "1 address", 3),
            Row::fail("key", "the key was refused (HTTP 401)", Some(12)),
        ]);
        assert!(!bad.ok());
        assert!(bad.summary().starts_with("❌ 1 failed"));
        let json = bad.json();
        assert_eq!(json["ok"], false);
        assert_eq!(json["targets"][0]["checks"][1]["name"], "key");
        assert_eq!(json["targets"][0]["checks"][1]["ok"], false);
        assert_eq!(json["targets"][0]["checks"][1]["ms"], 12);
    }

    #[test]
    fn the_table_lines_up() {
        let table = report(vec![
            Row::pass("dns", "1 address", 3),
            Row::fail("anthropic", "HTTP 500", Some(1234)),
            Row::skip("tls", "plain http", None),
        ])
        .table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("TARGET    CHECK      RESULT  DETAIL "));
        // MS is right-aligned, so every line is as wide as the header.
        assert!(
            lines[..4].iter().all(|l| width(l) == width(lines[0])),
            "{table}"
        );
        let column = |line: &str, needle: &str| width(&line[..line.find(needle).unwrap_or(0)]);
        assert_eq!(column(lines[1], "1 address"), column(lines[2], "HTTP 500"));
        assert_eq!(
            column(lines[1], "1 address"),
            column(lines[3], "plain http")
        );
        assert!(lines[2].ends_with("1234"));
        assert!(lines[3].ends_with('-'));
    }
}
