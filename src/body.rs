//! Reading a request body into memory, with the configured size limit.

use axum::body::{Body, Bytes};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::ApiError;

/// Reads the whole body, refusing with 413 as soon as it grows past
/// `limit_bytes` (chunked bodies included, and before reading at all when a
/// `Content-Length` already says it is too large).
pub async fn read_limited(body: Body, limit_bytes: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit_bytes).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge { limit_bytes })
        }
        Err(_) => Err(ApiError::bad_request(
            "unreadable_body",
            "the request body could not be read to its end",
        )),
    }
}
