//! Who used what: token counts read from DeepSeek's answers as they pass.
//!
//! Today the counts go into each request's log line; the usage ledger,
//! quotas and metrics build on the same [`tap::Tap`].

pub mod tap;

pub use tap::{estimate_tokens, Tap, Usage};
