//! What the Windows service shares with every platform: the CLI and the log
//! file a service writes instead of stderr. (The service API itself is
//! compiled and linted for Windows in .ci/package.)

use std::process::Command;

#[test]
fn the_service_command_exists_and_says_it_is_windows_only_elsewhere() {
    let bin = env!("CARGO_BIN_EXE_deepseek_proxy");
    let help = Command::new(bin)
        .args(["service", "--help"])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&help.stdout);
    for action in ["install", "uninstall", "start", "stop"] {
        assert!(text.contains(action), "{action} in:\n{text}");
    }
    if cfg!(not(windows)) {
        let out = Command::new(bin)
            .args(["service", "install"])
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Windows"), "{err}");
        assert!(err.contains("INSTALL.md"), "{err}");
    }
}

#[test]
fn logs_can_go_to_a_file_instead_of_stderr() {
    let dir = std::env::temp_dir().join(format!("dp-service-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("config.toml");
    let log = deepseek_proxy::service::log_path(&config);
    deepseek_proxy::telemetry::init_to_file(deepseek_proxy::telemetry::LogFormat::Json, &log)
        .expect("log file opens");
    tracing::info!(marker = "a7c1", "written to the service log");
    let text = std::fs::read_to_string(&log).expect("log file");
    let _ = std::fs::remove_dir_all(&dir);
    let line = text
        .lines()
        .find(|l| l.contains("a7c1"))
        .expect("the event");
    let event: serde_json::Value = serde_json::from_str(line).expect("one JSON object a line");
    assert_eq!(event["message"], "written to the service log");
}
