//! `deepseek_proxy service install|uninstall|start|stop` on Windows.
//!
//! The Windows service API itself is in [`windows`] (compiled only there).
//! Everything it decides that does not need Windows is here, so the Linux
//! tests cover it: the service's name, the command line the service manager
//! starts, where the service logs, and the stop signal that turns the
//! service manager's Stop into the same graceful drain as Ctrl-C or SIGTERM.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

#[cfg(windows)]
pub mod windows;

/// The service's key name (`sc.exe query deepseek_proxy`).
pub const SERVICE_NAME: &str = "deepseek_proxy";
pub const DISPLAY_NAME: &str = "deepseek_proxy (DeepSeek API gateway)";
pub const DESCRIPTION: &str =
    "Lets a team share one DeepSeek API key: logins, one request per token, quotas, usage ledger.";
/// Least privilege: a built-in account with no password and network access
/// as the computer. It must be able to read the config and write the ledger.
pub const SERVICE_ACCOUNT: &str = "NT AUTHORITY\\LocalService";

/// `config` made absolute against `cwd`: a service starts in System32, so a
/// relative path given at install time would point somewhere else.
pub fn absolute_config(config: &Path, cwd: &Path) -> PathBuf {
    if config.is_absolute() {
        config.to_path_buf()
    } else {
        cwd.join(config)
    }
}

/// What the service manager runs after the executable's path.
pub fn launch_arguments(absolute_config: &Path) -> Vec<OsString> {
    vec![
        "--config".into(),
        absolute_config.as_os_str().to_owned(),
        "service".into(),
        "run".into(),
    ]
}

/// A service has no console: it logs to this file, beside the config.
pub fn log_path(absolute_config: &Path) -> PathBuf {
    absolute_config.with_file_name("deepseek_proxy.log")
}

/// The folder the service runs in, so that a relative `storage.sqlite_path`
/// (the default `usage.db`) lands beside the config, not in System32.
pub fn working_dir(absolute_config: &Path) -> PathBuf {
    absolute_config
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// How long the service manager is told to wait for a stop: the drain
/// (`server.shutdown_grace_seconds`) plus time to flush the ledger.
pub fn stop_wait_hint(shutdown_grace: Duration) -> Duration {
    shutdown_grace + Duration::from_secs(15)
}

/// A one-shot stop request from another thread (the service control
/// handler) to the server's shutdown future. A stop sent before anyone
/// waits is kept, not lost.
#[derive(Clone, Default)]
pub struct StopSignal {
    inner: Arc<StopInner>,
}

#[derive(Default)]
struct StopInner {
    notify: Notify,
    grace_seconds: AtomicU64,
}

impl StopSignal {
    /// Asks the server to stop.
    pub fn stop(&self) {
        self.inner.notify.notify_one();
    }

    /// Resolves once [`StopSignal::stop`] has been called.
    pub async fn stopped(self) {
        self.inner.notify.notified().await;
        tracing::info!("service stop requested; draining open requests");
    }

    /// Records the configured grace period, for [`StopSignal::wait_hint`].
    pub fn set_grace(&self, grace: Duration) {
        self.inner
            .grace_seconds
            .store(grace.as_secs(), Ordering::Relaxed);
    }

    /// [`stop_wait_hint`] for the recorded grace period (30 s if none yet).
    pub fn wait_hint(&self) -> Duration {
        let seconds = match self.inner.grace_seconds.load(Ordering::Relaxed) {
            0 => 30,
            s => s,
        };
        stop_wait_hint(Duration::from_secs(seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_command_line_names_an_absolute_config() {
        let cwd = Path::new("/srv/gateway");
        let config = absolute_config(Path::new("config.toml"), cwd);
        assert_eq!(config, Path::new("/srv/gateway/config.toml"));
        assert_eq!(
            absolute_config(Path::new("/etc/x.toml"), cwd),
            Path::new("/etc/x.toml")
        );
        let args = launch_arguments(&config);
        assert_eq!(
            args,
            ["--config", "/srv/gateway/config.toml", "service", "run"]
                .map(OsString::from)
                .to_vec()
        );
        assert_eq!(
            log_path(&config),
            Path::new("/srv/gateway/deepseek_proxy.log")
        );
        assert_eq!(working_dir(&config), Path::new("/srv/gateway"));
    }

    #[tokio::test]
    async fn a_stop_sent_before_anyone_waits_is_not_lost() {
        let stop = StopSignal::default();
        stop.clone().stop();
        tokio::time::timeout(Duration::from_secs(5), stop.stopped())
            .await
            .expect("the early stop is kept");
    }

    #[tokio::test]
    async fn a_stop_from_another_thread_ends_the_wait() {
        let stop = StopSignal::default();
        let sender = stop.clone();
        let waiting = tokio::spawn(stop.stopped());
        std::thread::spawn(move || sender.stop())
            .join()
            .expect("thread");
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the stop arrives")
            .expect("task");
    }

    #[test]
    fn the_wait_hint_covers_the_grace_period() {
        let stop = StopSignal::default();
        assert_eq!(stop.wait_hint(), Duration::from_secs(45));
        stop.set_grace(Duration::from_secs(120));
        assert_eq!(stop.wait_hint(), Duration::from_secs(135));
    }
}
