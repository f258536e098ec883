//! Logging in and out, and checking tokens.
//!
//! * [`login`]: `POST /auth/login`: throttle, password, login cache.
//! * [`logout`]: `POST /auth/logout`: revokes the presented token.
//! * [`middleware::require_token`]: the layer that makes every non-public
//!   route authenticated, and the [`AuthToken`] extractor handlers use.

pub mod jwt;
pub mod login;
pub mod login_cache;
pub mod middleware;
pub mod password;
pub mod revocation;
pub mod throttle;

pub use login::{login, logout};
pub use middleware::{require_token, require_token_and_claim, AuthToken, SlotClaim};
