//! Limits on how much one client may do at once.
//!
//! Today: the per-token slot ([`slot`]), in process memory.

pub mod slot;

pub use slot::{SlotGuard, Slots};
