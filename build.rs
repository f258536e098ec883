//! Build metadata for `deepseek_proxy --version`: the git commit and the
//! build date, as compile-time environment variables.
//!
//! - `DEEPSEEK_PROXY_GIT_COMMIT`: taken from the environment if set (a
//!   container build has no `.git`), else `git rev-parse`, else "unknown".
//! - `DEEPSEEK_PROXY_BUILD_DATE`: the UTC date (YYYY-MM-DD) of
//!   `SOURCE_DATE_EPOCH` if set (reproducible builds), else of now.
//!
//! The script reruns only when the checked-out commit changes (or those
//! variables do), so an ordinary edit-and-build does not recompile the
//! crate for a new date.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEEPSEEK_PROXY_GIT_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");

    let commit = std::env::var("DEEPSEEK_PROXY_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    watch_git_head();

    let epoch_seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });

    println!("cargo:rustc-env=DEEPSEEK_PROXY_GIT_COMMIT={commit}");
    println!(
        "cargo:rustc-env=DEEPSEEK_PROXY_BUILD_DATE={}",
        civil_date(epoch_seconds / 86_400)
    );
}

/// `git ARGS` in the package directory, trimmed; `None` if git is missing,
/// fails, or this is not a checkout.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

/// Reruns this script when HEAD moves: HEAD itself (a branch switch), the
/// branch's ref file (a commit) and packed-refs. Only existing files are
/// named, since cargo treats a missing one as always changed.
fn watch_git_head() {
    let mut paths = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        paths.push(git(&["rev-parse", "--git-path", &branch]));
    }
    paths.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for path in paths.into_iter().flatten() {
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

/// Days since 1970-01-01 as `YYYY-MM-DD` (Howard Hinnant's algorithm, as
/// in src/cli.rs; a build script cannot use the crate it builds).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
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
