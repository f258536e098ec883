//! Limits on how much one client may do.
//!
//! * [`slot`]: one request in flight per token.
//! * [`quota`]: per-user requests per minute, tokens per day and concurrent
//!   requests, counted in the state backend.

pub mod quota;
pub mod slot;

pub use slot::{SlotGuard, Slots};
