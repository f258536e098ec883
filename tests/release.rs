//! Release metadata of the built binary.

use std::process::Command;

#[test]
fn version_prints_the_version_the_commit_and_the_build_date() {
    let out = Command::new(env!("CARGO_BIN_EXE_deepseek_proxy"))
        .arg("--version")
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{}", out.status);
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let line = text.trim();
    let prefix = format!("deepseek_proxy {} (commit ", env!("CARGO_PKG_VERSION"));
    let rest = line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{line:?} does not start with {prefix:?}"));
    let (commit, date) = rest
        .strip_suffix(')')
        .and_then(|r| r.split_once(", built "))
        .unwrap_or_else(|| panic!("no commit and date in {line:?}"));
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "commit {commit:?}"
    );
    let parts: Vec<&str> = date.split('-').collect();
    assert_eq!(parts.len(), 3, "date {date:?}");
    assert!(
        parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit())),
        "date {date:?}"
    );
    assert!(&date[..4] >= "2024", "date {date:?}");
}
