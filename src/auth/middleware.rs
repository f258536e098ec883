//! Authentication is on by default: the router puts [`require_token`] in front
//! of every route that is not on its public list. Handlers then take an
//! [`AuthToken`], which is only ever present after a successful check.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use std::future::Future;
use std::sync::{Arc, Mutex};

use futures_util::future::Either;

/// Anthropic's SDKs send the key here.
pub const X_API_KEY: &str = "x-api-key";

use super::jwt::{unix_now, Claims};
use crate::ablation::{self, Part};
use crate::access_log::RequestLog;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{Claim, Claimed};
use crate::users::{keys, Account, ApiKey};

/// Who is calling: the verified claims of a login token, or a personal
/// API key, and the user either belongs to.
#[derive(Debug, Clone)]
pub struct AuthToken {
    /// A login token's claims; `None` for an API key.
    pub claims: Option<Claims>,
    /// A login token's id (its `jti` as a number), or an API key's first
    /// slot: the slot and revocation key.
    pub token_id: u128,
    pub account: Arc<Account>,
    /// The personal API key used, if any.
    pub key: Option<Arc<ApiKey>>,
}

impl AuthToken {
    /// Whether this caller may use `model`: its user may, and so may its key.
    pub fn may_use(&self, model: Option<&str>) -> bool {
        self.account.may_use(model) && self.key.as_ref().is_none_or(|k| k.may_use(model))
    }

    /// The slots a request with this caller may take: a login token's one,
    /// or a key's `max_in_flight`.
    pub fn slots(&self) -> Vec<u128> {
        match &self.key {
            Some(key) => key.slots().collect(),
            None => vec![self.token_id],
        }
    }
}

/// For routes that take no slot: a valid token that was not logged out.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // Checked before awaiting anything: the request body is not `Sync`, so
    // no borrow of the request may live across an await.
    let token = authenticate(&state, req.headers());
    let checked = async {
        let token = token?;
        // Login tokens can be logged out; keys are revoked by deletion.
        if token.key.is_none() && state.store.is_revoked(token.token_id).await? {
            return Err(ApiError::InvalidToken);
        }
        Ok((token, None))
    };
    admit(checked.await, req, next).await
}

/// For completion routes: a valid token, and its claim on one of its slots
/// in this process ([`crate::store::Store::claim`], no I/O), so a request
/// whose token is busy here is refused before its body is read. The slot
/// itself, the revocation check and the quotas are then one call to the
/// store once the body is read ([`crate::store::Store::enter`]: one round
/// trip with Redis).
///
/// Not an `async fn`: the future it returns is the next layer's, with no
/// copy of the request beside it (it lives in a box for as long as the
/// request waits for DeepSeek's answer).
pub fn require_token_and_claim(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> impl Future<Output = Response> {
    let checked = authenticate(&state, req.headers()).and_then(|token| {
        if ablation::off(Part::Slot) {
            return Ok((token, None));
        }
        match state.store.claim(token.token_id, token.slots()) {
            Claimed::Yes(claim) => Ok((token, Some(claim))),
            Claimed::Busy => Err(ApiError::TokenBusy),
            Claimed::Revoked => Err(ApiError::InvalidToken),
        }
    });
    admit(checked, req, next)
}

/// Lets an authenticated request through (with its claim, if it took one),
/// or answers the error.
fn admit(
    checked: Result<(AuthToken, Option<Claim>), ApiError>,
    mut req: Request,
    next: Next,
) -> impl Future<Output = Response> {
    let (token, claim) = match checked {
        Ok(admitted) => admitted,
        Err(e) => return Either::Left(std::future::ready(e.into_response())),
    };
    if let Some(log) = req.extensions().get::<RequestLog>() {
        log.set_user(&token.account.username, token.key.as_ref().map(|k| &k.id));
    }
    req.extensions_mut().insert(token);
    if let Some(claim) = claim {
        req.extensions_mut()
            .insert(SlotClaim(Arc::new(Mutex::new(Some(claim)))));
    }
    Either::Right(next.run(req))
}

/// The claim [`require_token_and_claim`] took. Extensions must be `Clone`,
/// hence the shared cell; the handler takes the claim out of it.
#[derive(Clone)]
pub struct SlotClaim(Arc<Mutex<Option<Claim>>>);

impl<S: Send + Sync> FromRequestParts<S> for SlotClaim {
    type Rejection = std::convert::Infallible;

    /// A request with no claim (the slot ablation) gets an empty one.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .remove::<SlotClaim>()
            .unwrap_or_else(|| SlotClaim(Arc::new(Mutex::new(None)))))
    }
}

impl SlotClaim {
    pub fn take(self) -> Option<Claim> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Checks the token itself (a key's hash, or a JWT's signature and claims)
/// and its user, against the directory's snapshot. No I/O.
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<AuthToken, ApiError> {
    let token = bearer_token(headers)?;
    let snapshot = state.directory.snapshot();
    if keys::looks_like_key(token) {
        let now_ms = crate::users::manage::now_ms();
        let (key, account) = snapshot.key(token, now_ms)?;
        state.directory.touch(&key, now_ms);
        return Ok(AuthToken {
            claims: None,
            token_id: key.slot_seed,
            account,
            key: Some(key),
        });
    }
    let claims = state.jwt.verify(token, unix_now())?;
    let token_id = claims.token_id().ok_or(ApiError::InvalidToken)?;
    // A user removed or disabled loses access at once; a password change
    // ends the tokens issued before it.
    let account = snapshot
        .active(&claims.sub)
        .filter(|a| claims.iat >= a.tokens_valid_after)
        .ok_or(ApiError::InvalidToken)?
        .clone();
    Ok(AuthToken {
        claims: Some(claims),
        token_id,
        account,
        key: None,
    })
}

/// The token of an `Authorization: Bearer <token>` header, or else of an
/// `x-api-key` header (what Anthropic's SDKs send). The scheme is
/// case-insensitive (RFC 7235); anything else is refused.
fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        let key = headers.get(X_API_KEY).ok_or(ApiError::MissingToken)?;
        let key = key.to_str().map_err(|_| ApiError::InvalidToken)?.trim();
        if key.is_empty() {
            return Err(ApiError::MissingToken);
        }
        return Ok(key);
    };
    let value = value.to_str().map_err(|_| ApiError::InvalidToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::InvalidToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::InvalidToken);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::MissingToken);
    }
    Ok(token)
}

impl<S: Send + Sync> FromRequestParts<S> for AuthToken {
    type Rejection = ApiError;

    /// Fails closed: a route that forgot the auth layer answers 401, not 200.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .remove::<AuthToken>()
            .ok_or(ApiError::MissingToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header"),
        );
        h
    }

    /// The middleware's future is the next layer's, not a copy of the
    /// request beside it: 304 bytes in the debug build, 1,952 as the
    /// `async fn`s it was before issue 15's tenth round (784 with only
    /// `admit`'s call wrapped in an `async` block again).
    #[test]
    #[cfg_attr(not(debug_assertions), ignore = "the bound is the debug build's")]
    fn the_slot_routes_middleware_adds_little_to_the_future() {
        fn future_size<F, A, B, C, R>(_: &F) -> usize
        where
            F: Fn(A, B, C) -> R,
        {
            std::mem::size_of::<R>()
        }
        let size = future_size(&require_token_and_claim);
        assert!(size <= 512, "{size} bytes");
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        assert_eq!(bearer_token(&headers("Bearer abc")).ok(), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer abc")).ok(), Some("abc"));
        assert!(matches!(
            bearer_token(&HeaderMap::new()),
            Err(ApiError::MissingToken)
        ));
        assert!(matches!(
            bearer_token(&headers("Bearer ")),
            Err(ApiError::MissingToken)
        ));
        assert!(matches!(
            bearer_token(&headers("Basic abc")),
            Err(ApiError::InvalidToken)
        ));
        assert!(matches!(
            bearer_token(&headers("abc")),
            Err(ApiError::InvalidToken)
        ));
    }

    #[test]
    fn an_x_api_key_header_works_when_there_is_no_authorization() {
        let mut h = HeaderMap::new();
        h.insert(X_API_KEY, HeaderValue::from_static("tok"));
        assert_eq!(bearer_token(&h).ok(), Some("tok"));
        h.insert(X_API_KEY, HeaderValue::from_static(" "));
        assert!(matches!(bearer_token(&h), Err(ApiError::MissingToken)));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        assert_eq!(bearer_token(&h).ok(), Some("a"));
    }
}
