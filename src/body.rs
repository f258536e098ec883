//! Reading a request body into memory, with the configured size and time limits.

use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::ApiError;

/// Reads the whole body, refusing with 413 as soon as it grows past
/// `limit_bytes` (chunked bodies included, and before reading at all when a
/// `Content-Length` already says it is too large), and with 408 when it takes
/// longer than `timeout` (a client trickling its body).
pub async fn read_limited(
    body: Body,
    limit_bytes: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let collect = Limited::new(body, limit_bytes).collect();
    match tokio::time::timeout(timeout, collect).await {
        Err(_) => Err(ApiError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge { limit_bytes })
        }
        Ok(Err(_)) => Err(ApiError::bad_request(
            "unreadable_body",
            "the request body could not be read to its end",
        )),
    }
}
