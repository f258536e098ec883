//! The web console: the static files under `console/`, embedded in the
//! binary so a release build and `--demo` need nothing else on disk.
//!
//! * `GET /` and `GET /console`: a redirect to `/console/`.
//! * `GET /console/`: `index.html`.
//! * `GET /console/{*path}`: a file, or the gateway's usual 404.
//!
//! The routes are public: the page itself holds no data, and every API call
//! it makes carries the user's own token. The console adds no API of its
//! own. Every answer here carries a strict CSP (no inline script or style),
//! so model output that slipped into the page as HTML still could not run.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// One embedded file.
pub struct Asset {
    /// Its path under `console/`, with `/` separators.
    pub path: &'static str,
    pub bytes: &'static [u8],
    pub content_type: &'static str,
    /// A hash of `bytes`, computed at compile time, for `ETag`.
    etag: u64,
}

/// FNV-1a: enough to tell two versions of a file apart for caching.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

macro_rules! asset {
    ($path:literal, $type:expr) => {{
        const BYTES: &[u8] =
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $path));
        Asset {
            path: $path,
            bytes: BYTES,
            content_type: $type,
            etag: fnv1a(BYTES),
        }
    }};
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file of `console/`. A test fails if one is missing here.
pub static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", CSS),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("i18n.js", JS),
    asset!("format.js", JS),
    asset!("chat.js", JS),
    asset!("sse.js", JS),
    asset!("keys.js", JS),
    asset!("usage.js", JS),
    asset!("admin.js", JS),
    asset!("vendor/uPlot.iife.min.js", JS),
    asset!("vendor/uPlot.min.css", CSS),
    asset!("vendor/LICENSE", "text/plain; charset=utf-8"),
    asset!("vendor/README.md", "text/markdown; charset=utf-8"),
];

/// `self` only; nothing inline, nothing framed, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; \
    object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console's routes, with its security headers on every answer
/// (files, redirects and 404s alike).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(to_console))
        .route("/console", get(to_console))
        .route("/console/", get(index))
        .route("/console/{*path}", get(file))
        .layer(map_response(security_headers))
}

async fn to_console() -> Redirect {
    Redirect::temporary("/console/")
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers).unwrap_or_else(|e| e.into_response())
}

async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers).unwrap_or_else(|e| e.into_response())
}

/// Finds a file by its exact path (so `..` or a stray `/` can only miss).
pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

fn serve(path: &str, request: &HeaderMap) -> Result<Response, ApiError> {
    let asset = find(path).ok_or(ApiError::NotFound)?;
    let etag = format!("\"{:016x}\"", asset.etag);
    // Not fingerprinted, so the browser revalidates every time: a new
    // binary must never mix new HTML with old modules. The ETag makes the
    // revalidation a bodiless 304.
    let cache = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::ETAG,
            HeaderValue::from_str(&etag).map_err(|_| ApiError::Internal)?,
        ),
    ];
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    if fresh {
        return Ok((StatusCode::NOT_MODIFIED, cache).into_response());
    }
    let content_type = (
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    Ok((cache, [content_type], asset.bytes).into_response())
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn files_under(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("console/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                files_under(&path, out);
            } else {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_file_under_console_is_embedded_with_its_current_bytes() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("console");
        let mut files = Vec::new();
        files_under(&root, &mut files);
        assert!(files.len() > 3, "console/ looks empty");
        for file in files {
            let rel = file
                .strip_prefix(&root)
                .expect("under console/")
                .to_string_lossy()
                .replace('\\', "/");
            let asset = find(&rel)
                .unwrap_or_else(|| panic!("console/{rel} is not embedded: add it to ASSETS"));
            let on_disk = std::fs::read(&file).expect("readable");
            assert!(asset.bytes == on_disk.as_slice(), "console/{rel} is stale");
        }
    }

    #[test]
    fn every_embedded_file_has_a_type_that_matches_its_extension() {
        for asset in ASSETS {
            let expected = match asset.path.rsplit('.').next() {
                Some("js") => JS,
                Some("css") => CSS,
                Some("html") => "text/html; charset=utf-8",
                Some("svg") => "image/svg+xml",
                Some("md") => "text/markdown; charset=utf-8",
                _ => "text/plain; charset=utf-8",
            };
            assert_eq!(asset.content_type, expected, "{}", asset.path);
        }
    }

    #[test]
    fn no_file_is_served_by_a_path_outside_the_table() {
        assert!(find("../Cargo.toml").is_none());
        assert!(find("/index.html").is_none());
        assert!(find("vendor").is_none());
        assert!(find("index.html").is_some());
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_and_no_html_sinks() {
        let html = std::str::from_utf8(find("index.html").expect("index").bytes).expect("utf-8");
        assert!(!html.contains("<style"), "inline <style> in index.html");
        assert!(!html.contains(" style="), "a style attribute in index.html");
        for (at, _) in html.match_indices(" on") {
            let name: String = html[at + 3..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            let after = &html[at + 3 + name.len()..];
            assert!(
                !(name.len() > 2 && after.starts_with('=')),
                "an inline on{name}= handler"
            );
        }
        for script in html.split("<script").skip(1) {
            let tag_end = script.find('>').expect("a closed tag");
            assert!(script[..tag_end].contains("src="), "an inline <script>");
            assert!(
                script[tag_end + 1..].starts_with("</script>"),
                "an inline <script>"
            );
        }
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            if asset.path.starts_with("vendor/") {
                continue;
            }
            let js = std::str::from_utf8(asset.bytes).expect("utf-8");
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(!js.contains(sink), "{} uses {sink}", asset.path);
            }
        }
    }

    #[test]
    fn the_policy_allows_nothing_inline() {
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'self';"));
    }
}
