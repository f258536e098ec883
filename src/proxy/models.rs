//! `GET /models`: DeepSeek's list, plus the gateway's aliases, so a client
//! that picks a model from the list can pick `deepseek-chat` too.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;

use crate::config::Models;

/// The largest model list read back (DeepSeek's is a few hundred bytes).
const MAX_LIST_BYTES: usize = 1024 * 1024;

/// Appends an entry per alias to a successful list; anything else passes
/// through untouched.
pub async fn with_aliases(response: Response, models: &Models) -> Response {
    if response.status() != StatusCode::OK || models.aliases.is_empty() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match http_body_util::Limited::new(body, MAX_LIST_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            parts.status = StatusCode::BAD_GATEWAY;
            parts.headers.remove(header::CONTENT_LENGTH);
            return Response::from_parts(
                parts,
                Body::from(crate::error::error_json(
                    "DeepSeek's model list could not be read",
                    "api_error",
                    "upstream_error",
                )),
            );
        }
    };
    let Ok(mut list) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    if let Some(data) = list.get_mut("data").and_then(|d| d.as_array_mut()) {
        let mut names: Vec<_> = models.aliases.iter().collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        for (name, alias) in names {
            if data
                .iter()
                .any(|m| m.get("id").and_then(|i| i.as_str()) == Some(name))
            {
                continue;
            }
            data.push(serde_json::json!({
                "id": name,
                "object": "model",
                "owned_by": "deepseek_proxy",
                "alias_for": alias.model,
            }));
        }
    }
    let body = serde_json::to_vec(&list).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}
