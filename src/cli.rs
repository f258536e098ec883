//! Subcommands other than serving.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use crate::auth::password;
use crate::config::{process_env, Config};
use crate::ledger::{Filter, GroupBy, Ledger, Totals};

/// `deepseek_proxy hash-password`: prompts twice without echo on a terminal,
/// or reads one line from stdin when piped, and prints the PHC string.
pub fn hash_password() -> ExitCode {
    match read_password().and_then(|p| password::hash(&p)) {
        Ok(phc) => {
            println!("{phc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("deepseek_proxy hash-password: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A password: prompted twice without echo on a terminal, else one line of
/// stdin.
pub fn read_password() -> Result<String, String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("the passwords differ".into());
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    let _ = std::io::stderr().flush();
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    Ok(password)
}

/// `deepseek_proxy usage --since 7d --by user`: totals from the ledger.
pub fn usage(config_path: &std::path::Path, since: &str, by: GroupBy) -> ExitCode {
    match usage_table(config_path, since, by) {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("deepseek_proxy usage: {e}");
            ExitCode::from(2)
        }
    }
}

fn usage_table(config_path: &std::path::Path, since: &str, by: GroupBy) -> Result<String, String> {
    let span_ms = parse_span_ms(since)?;
    // Only [storage] matters here: the DeepSeek key need not be set.
    let env = |name: &str| match name {
        "OPENAI_API_KEY" => Some(process_env(name).unwrap_or_else(|| "unused".into())),
        _ => process_env(name),
    };
    let config = Config::load(config_path, &env).map_err(|e| e.to_string())?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let filter = Filter {
        from_ms: now_ms - span_ms,
        ..Filter::default()
    };
    let rows = runtime
        .block_on(async {
            let ledger = Ledger::open(&config.storage).await?;
            ledger.totals(&filter, by).await.map_err(|e| e.to_string())
        })
        .map_err(|e| format!("reading the ledger ({}): {e}", config.storage.describe()))?;
    Ok(render(&rows, by))
}

/// `7d`, `12h`, `30m`.
pub fn parse_span_ms(text: &str) -> Result<i64, String> {
    let bad = || format!("--since {text:?}: use a number and d, h or m, e.g. 7d");
    let split = text.char_indices().last().map_or(0, |(i, _)| i);
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms).filter(|ms| *ms >= 0).ok_or_else(bad)
}

fn render(rows: &[Totals], by: GroupBy) -> String {
    let label = match by {
        GroupBy::User => "user",
        GroupBy::Model => "model",
        GroupBy::Day => "day (UTC)",
        GroupBy::Format => "format",
        GroupBy::Key => "key",
    };
    let key = |t: &Totals| match by {
        GroupBy::Day => t
            .key
            .parse()
            .map(civil_date)
            .unwrap_or_else(|_| t.key.clone()),
        _ => t.key.clone(),
    };
    let mut out = format!(
        "{label:<24} {:>9} {:>14} {:>14} {:>14} {:>14}\n",
        "requests", "prompt", "cache hits", "completion", "est. (aborted)"
    );
    for t in rows {
        out.push_str(&format!(
            "{:<24} {:>9} {:>14} {:>14} {:>14} {:>14}\n",
            key(t),
            t.requests,
            t.prompt_tokens,
            t.cached_tokens,
            t.completion_tokens,
            t.estimated_tokens
        ));
    }
    if rows.is_empty() {
        out.push_str("(no requests in this period)\n");
    }
    out
}

/// Days since 1970-01-01 as `YYYY-MM-DD` (Howard Hinnant's algorithm).
pub fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_dates_parse() {
        assert_eq!(parse_span_ms("7d"), Ok(7 * 86_400_000));
        assert_eq!(parse_span_ms("12h"), Ok(12 * 3_600_000));
        assert!(parse_span_ms("7").is_err());
        assert!(parse_span_ms("d").is_err());
        assert!(parse_span_ms("-1d").is_err());
        assert!(parse_span_ms("7é").is_err());
        assert!(parse_span_ms("").is_err());
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(20_785), "2026-11-28");
    }
}
