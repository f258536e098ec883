//! Log setup: `tracing` to stderr, level from `RUST_LOG` (default `info`),
//! as text or, with `[server] log_format = "json"`, one JSON object a line.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

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

pub fn init(format: LogFormat) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    init_with(format, std::io::stderr, ansi);
}

/// Appends to the file at `path` instead of stderr (a Windows service has
/// no console).
pub fn init_to_file(format: LogFormat, path: &Path) -> std::io::Result<()> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    init_with(format, Mutex::new(file), false);
    Ok(())
}

fn init_with<W>(format: LogFormat, writer: W, ansi: bool)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
    };
}
