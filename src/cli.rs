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
            let ledger = Ledger::open_without_journal(&config.storage).await?;
            ledger.totals(&filter, by).await.map_err(|e| e.to_string())
        })
        .map_err(|e| format!("reading the ledger ({}): {e}", config.storage.describe()))?;
    Ok(render(&rows, by, config.pricing.currency.code()))
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

fn render(rows: &[Totals], by: GroupBy, currency: &str) -> String {
    let label = match by {
        GroupBy::User => "user",
        GroupBy::Model => "model",
        GroupBy::Day => "day (UTC)",
        GroupBy::Format => "format",
        GroupBy::Key => "key",
    };
    let mut out = format!(
        "{label:<24} {:>9} {:>14} {:>14} {:>10} {:>14} {:>14} {:>14}\n",
        "requests",
        "prompt",
        "cache hits",
        "hit ratio",
        "completion",
        "est. (aborted)",
        format!("cost ({currency})")
    );
    for t in rows {
        let ratio = t
            .cache_hit_ratio
            .map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0));
        let mut cost = crate::usage::pricing::format_units(t.cost_micros);
        if t.cost_estimated_micros > 0 {
            cost.push('*');
        }
        out.push_str(&format!(
            "{:<24} {:>9} {:>14} {:>14} {:>10} {:>14} {:>14} {:>14}\n",
            t.key,
            t.requests,
            t.prompt_tokens,
            t.cached_tokens,
            ratio,
            t.completion_tokens,
            t.estimated_tokens,
            cost
        ));
    }
    if rows.iter().any(|t| t.cost_estimated_micros > 0) {
        out.push_str(
            "* includes estimates for requests that ended before DeepSeek reported usage\n",
        );
    }
    if rows.is_empty() {
        out.push_str("(no requests in this period)\n");
    }
    out
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
    }
}
