//! Users and their personal API keys: one home for who may call the gateway.
//!
//! Users come from two places: `[[auth.users]]` in the config file (the
//! seed's format; read-only at runtime, the file is their source of truth)
//! and the database (added and changed at runtime through the admin API or
//! the CLI). [`directory::Directory`] merges both, with every key, into one
//! immutable snapshot that requests read without touching the database.
//!
//! * [`keys`]: the key format, and the hash that is all the gateway keeps.
//! * [`db`]: the tables and their queries.
//! * [`directory`]: the snapshot, its refresh, and the checks a request
//!   needs (who is this key's owner, may it use this model).
//! * [`api`]: `/v1/keys`, `/admin/keys`, `/admin/users`, `/auth/password`.

pub mod api;
pub mod cli;
pub mod db;
pub mod directory;
pub mod keys;
pub mod manage;

use std::collections::HashSet;
use std::sync::Arc;

use crate::auth::password::Stored;
use crate::limits::quota::Limits;

pub use directory::Directory;

/// Where a user is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `[[auth.users]]`: read-only at runtime.
    Config,
    /// Added at runtime; in the database.
    Database,
}

/// A user, as the request path needs it.
#[derive(Debug)]
pub struct Account {
    pub username: String,
    pub password: Arc<Stored>,
    /// Served models this user may request; `None` allows all.
    pub models: Option<HashSet<String>>,
    pub disabled: bool,
    pub admin: bool,
    pub limits: Limits,
    /// What DeepSeek gets as `user_id` for this user (`deepseek.user_id`).
    pub upstream_user_id: Option<String>,
    pub source: Source,
    /// Login tokens issued before this (Unix seconds) no longer work: set
    /// when the password changes.
    pub tokens_valid_after: u64,
}

impl Account {
    pub fn may_use(&self, model: Option<&str>) -> bool {
        allowed(&self.models, model)
    }
}

/// A personal API key, as the request path needs it (never the key itself).
#[derive(Debug)]
pub struct ApiKey {
    pub id: Arc<str>,
    pub owner: String,
    /// Served models this key may request, within its owner's.
    pub models: Option<HashSet<String>>,
    /// Requests in flight at once (the seed's rule is 1).
    pub max_in_flight: u64,
    /// Micro-units per UTC month; 0: only the owner's budget applies.
    pub budget_per_month: u64,
    pub expires_ms: Option<i64>,
    /// The key's slots are `slot_seed + 0 .. max_in_flight`.
    pub slot_seed: u128,
}

impl ApiKey {
    pub fn may_use(&self, model: Option<&str>) -> bool {
        allowed(&self.models, model)
    }

    /// The ids of this key's slots, tried in order.
    pub fn slots(&self) -> impl Iterator<Item = u128> + '_ {
        (0..self.max_in_flight.max(1)).map(|i| self.slot_seed.wrapping_add(u128::from(i)))
    }
}

fn allowed(list: &Option<HashSet<String>>, model: Option<&str>) -> bool {
    match (list, model) {
        (None, _) => true,
        (Some(allowed), Some(model)) => allowed.contains(model),
        (Some(_), None) => false,
    }
}
