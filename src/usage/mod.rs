//! Who used what, and what it cost: token counts read from DeepSeek's
//! answers as they pass ([`tap::Tap`]), priced by [`pricing`] in the
//! configured currency, on the calendar of [`calendar`].
//!
//! The counts go into each request's log line and ledger row; quotas,
//! budgets and metrics build on the same numbers.

pub mod calendar;
pub mod pricing;
pub mod tap;

pub use pricing::{Cost, Currency, PriceList, Prices, Pricing};
pub use tap::{estimate_tokens, Tap, Usage};
