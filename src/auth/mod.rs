//! Logging in and checking tokens.
//!
//! * [`login`]: `POST /auth/login`, with the per-user login cache.
//! * [`middleware::require_token`]: the layer that makes every non-public
//!   route authenticated, and the [`AuthToken`] extractor handlers use.

pub mod jwt;
pub mod login;
pub mod login_cache;
pub mod middleware;
pub mod password;

pub use login::login;
pub use middleware::{require_token, AuthToken};
