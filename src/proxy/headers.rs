//! Which headers cross the gateway. Both directions are allow-lists: anything
//! not named here is dropped, so a new header can never leak by default.

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Client headers passed upstream. Never Authorization, x-api-key, Cookie,
/// Host or X-Forwarded-*: the upstream sees the gateway's key and nothing of
/// the client's. Anthropic's version and beta headers choose the API's
/// behaviour, so they pass.
pub const TO_UPSTREAM: [HeaderName; 5] = [
    header::ACCEPT,
    header::ACCEPT_LANGUAGE,
    header::USER_AGENT,
    HeaderName::from_static("anthropic-version"),
    HeaderName::from_static("anthropic-beta"),
];

/// Upstream headers passed to the client. Never Set-Cookie.
pub const TO_CLIENT: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::RETRY_AFTER,
    HeaderName::from_static("x-ds-trace-id"),
];

pub fn to_upstream(client: &HeaderMap) -> HeaderMap {
    if crate::ablation::off(crate::ablation::Part::Headers) {
        return HeaderMap::new();
    }
    let mut out = HeaderMap::with_capacity(TO_UPSTREAM.len() + 3);
    copy(client, &mut out, &TO_UPSTREAM);
    out
}

/// The response headers for the client. `Content-Length` is kept only for
/// bodies that are not event streams, so a failing stream can still end with
/// an error event; proxies are told not to buffer.
pub fn to_client(upstream: &HeaderMap, is_event_stream: bool) -> HeaderMap {
    if crate::ablation::off(crate::ablation::Part::Headers) {
        return HeaderMap::new();
    }
    let mut out = HeaderMap::with_capacity(TO_CLIENT.len() + 2);
    copy(upstream, &mut out, &TO_CLIENT);
    if !is_event_stream {
        copy(upstream, &mut out, &[header::CONTENT_LENGTH]);
    }
    out.insert("x-accel-buffering", HeaderValue::from_static("no"));
    out
}

fn copy(from: &HeaderMap, to: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        for value in from.get_all(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_hop_headers_never_go_upstream() {
        let mut client = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer client-token"),
            ("cookie", "a=b"),
            ("host", "evil.example"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "evil.example"),
            ("api-key", "sk-other"),
            ("x-api-key", "client-token"),
            ("user-agent", "OpenAI/Python 1.0"),
            ("accept", "text/event-stream"),
        ] {
            client.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = to_upstream(&client);
        assert_eq!(out.len(), 2);
        assert_eq!(out["user-agent"], "OpenAI/Python 1.0");
        assert_eq!(out["accept"], "text/event-stream");
    }

    #[test]
    fn set_cookie_never_reaches_the_client() {
        let mut up = HeaderMap::new();
        up.insert("set-cookie", HeaderValue::from_static("session=1"));
        up.insert("content-type", HeaderValue::from_static("application/json"));
        up.insert("content-length", HeaderValue::from_static("10"));
        up.insert("server", HeaderValue::from_static("nginx"));
        let out = to_client(&up, false);
        assert!(out.get("set-cookie").is_none());
        assert!(out.get("server").is_none());
        assert_eq!(out["content-length"], "10");
        assert_eq!(out["x-accel-buffering"], "no");
        assert!(to_client(&up, true).get("content-length").is_none());
    }
}
