//! Log setup: `tracing` to stderr, level from `RUST_LOG` (default `info`),
//! as text or, with `[server] log_format = "json"`, one JSON object a line.
//! As plain text, the access log writes its own lines
//! ([`access_writer`]), in the same format.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

static JSON: AtomicBool = AtomicBool::new(false);

/// Whether the log is JSON (so the access log passes its fields as the
/// event's own, not as one formatted message).
pub fn is_json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// The access log's target: one line per request, formatted by
/// `access_log` itself.
pub const ACCESS_TARGET: &str = "deepseek_proxy::access";

/// Where the access log's text lines go when they skip `tracing`.
type Direct = Box<dyn Fn(&[u8]) + Send + Sync>;

static DIRECT: OnceLock<Direct> = OnceLock::new();

/// The access log's own writer: set when the log is text without colours
/// and `RUST_LOG` lets the access log's lines through (decided once, at
/// start). The access log then writes its whole line, time and level
/// included, with one `write`, and skips `tracing`'s dispatch and
/// formatting (BENCHMARKS.md, issue 15). Its lines have `tracing`'s
/// time and level in the same format (the gateway opens no spans, so
/// there is no span prefix to miss).
pub fn access_writer() -> Option<&'static Direct> {
    DIRECT.get()
}

pub fn init(format: LogFormat) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let direct = |line: &[u8]| {
        let _ = std::io::stderr().write_all(line);
    };
    init_with(
        format,
        std::io::stderr,
        std::io::stderr,
        ansi,
        Box::new(direct),
    );
}

/// Appends to the file at `path` instead of stderr (a Windows service has
/// no console).
pub fn init_to_file(format: LogFormat, path: &Path) -> std::io::Result<()> {
    let open = || OpenOptions::new().create(true).append(true).open(path);
    // Handles on one file in append mode: each line is one write.
    let file = Mutex::new(open()?);
    let direct = move |line: &[u8]| {
        let _ = file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(line);
    };
    init_with(
        format,
        Mutex::new(open()?),
        Mutex::new(open()?),
        false,
        Box::new(direct),
    );
    Ok(())
}

/// `access` takes the access log's lines, `rest` everything else;
/// `direct` takes the access log's own text lines (see [`access_writer`]).
fn init_with<A, W>(format: LogFormat, access: A, rest: W, ansi: bool, direct: Direct)
where
    A: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    use tracing_subscriber::filter::{filter_fn, FilterExt};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(rest)
            .with_target(false)
            .json()
            .flatten_event(true)
            .try_init()
            .is_ok(),
        // The access line comes formatted, its texts that others choose
        // (path, model, user, DeepSeek's trace id) already stripped of
        // control and space characters: it skips the formatter's escaping,
        // which walks the text one character at a time and cost more than
        // formatting the line (BENCHMARKS.md). It reaches this layer only
        // in colour (a terminal) or when `RUST_LOG` keeps it off
        // [`access_writer`]. Every other event is escaped as usual.
        LogFormat::Text => {
            let is_access = |m: &tracing::Metadata<'_>| m.target() == ACCESS_TARGET;
            let access = tracing_subscriber::fmt::layer()
                .with_writer(access)
                .with_target(false)
                .with_ansi(ansi)
                .with_ansi_sanitization(false)
                .with_filter(filter().and(filter_fn(is_access)));
            let rest = tracing_subscriber::fmt::layer()
                .with_writer(rest)
                .with_target(false)
                .with_ansi(ansi)
                .with_filter(filter().and(filter_fn(move |m| !is_access(m))));
            tracing_subscriber::registry()
                .with(access)
                .with(rest)
                .try_init()
                .is_ok()
        }
    };
    // A span or field directive (`[span]=debug`) makes the filter answer
    // per event, and `enabled!` then says yes to every target: those
    // settings keep the access log on `tracing`.
    let per_event = std::env::var("RUST_LOG").is_ok_and(|v| v.contains('['));
    let plain_text = format == LogFormat::Text && !ansi;
    if installed
        && plain_text
        && !per_event
        && tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO)
    {
        let _ = DIRECT.set(direct);
    }
}
