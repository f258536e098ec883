//! The users and keys a request is checked against: one immutable snapshot,
//! swapped whole when anything changes, so a request never touches the
//! database and always sees one consistent view (a request in flight keeps
//! the snapshot it started with).
//!
//! Freshness: a change made through this replica (API, or a config reload)
//! rebuilds the snapshot before the answer goes out; every replica also
//! polls `directory_version` every [`POLL_EVERY`] and rebuilds when it moved
//! (a change on another replica, or from the CLI), so a revoked key or a
//! disabled user stops working within that bound everywhere.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use sqlx::AnyPool;

use super::db::{self, KeyRow, UserRow};
use super::keys::{self, KeyHash};
use super::{Account, ApiKey, Source};
use crate::auth::password::{self, Prepared, Stored};
use crate::config::{Credential, Models, User, UserIdMode};
use crate::error::ApiError;
use crate::formats::Format;
use crate::limits::quota::Limits;
use crate::proxy::prepare::{served_name, user_id_for};

/// How often each replica checks for changes made elsewhere.
pub const POLL_EVERY: Duration = Duration::from_secs(2);
/// `last_used` of a key is written at most this often.
const TOUCH_EVERY_MS: i64 = 60_000;

/// What the config file says about users, and what resolving them needs.
pub struct Base {
    pub users: Vec<User>,
    pub quota_defaults: Limits,
    /// Reserved against `tokens_per_day` for a request without an output cap.
    pub default_max_tokens: u64,
    pub models: Models,
    pub user_id: UserIdMode,
    /// The key of the `user_id` pseudonyms (the JWT secret).
    pub user_id_key: Vec<u8>,
    /// `auth.api_keys`: whether personal keys are accepted at all.
    pub api_keys: bool,
    /// `[pricing]`: reloadable, like the rest (holidays change yearly).
    pub pricing: Arc<crate::usage::Pricing>,
    /// The config users' passwords, as given and (once needed) all hashed.
    plain: OnceLock<Prepared>,
    hashed: OnceLock<Prepared>,
}

impl Base {
    // One argument per config section it is built from.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        users: Vec<User>,
        quota_defaults: Limits,
        default_max_tokens: u64,
        models: Models,
        user_id: UserIdMode,
        user_id_key: Vec<u8>,
        api_keys: bool,
        pricing: Arc<crate::usage::Pricing>,
    ) -> Self {
        Self {
            users,
            quota_defaults,
            default_max_tokens,
            models,
            user_id,
            user_id_key,
            api_keys,
            pricing,
            plain: OnceLock::new(),
            hashed: OnceLock::new(),
        }
    }

    /// The config users' passwords. Once the database has users (whose
    /// passwords are always hashed), plaintext ones are hashed too, so
    /// timing cannot tell one kind of user from the other or from nobody.
    fn passwords(&self, hashed: bool) -> &Prepared {
        let credentials: Vec<&Credential> = self.users.iter().map(|u| &u.credential).collect();
        if hashed {
            self.hashed
                .get_or_init(|| password::prepare(&credentials, true))
        } else {
            self.plain
                .get_or_init(|| password::prepare(&credentials, false))
        }
    }

    /// A served-model allow-list: an alias or a legacy name in it stands
    /// for the model it is served by.
    pub fn served_models(&self, names: &[String]) -> HashSet<String> {
        names
            .iter()
            .map(|name| match self.models.aliases.get(name) {
                Some(alias) => alias.model.clone(),
                None => served_name(Format::Chat, name).into_owned(),
            })
            .collect()
    }
}

/// Every user and key, as of one moment.
pub struct Snapshot {
    pub accounts: HashMap<String, Arc<Account>>,
    pub keys: HashMap<KeyHash, Arc<ApiKey>>,
    /// Checked against for unknown usernames (see `auth::password`).
    pub dummy: Arc<Stored>,
    pub base: Arc<Base>,
}

impl Snapshot {
    /// Builds the snapshot; a name defined in both places is refused.
    fn build(base: Arc<Base>, rows: Vec<UserRow>, key_rows: Vec<KeyRow>) -> Result<Self, String> {
        let hashed = !rows.is_empty();
        let prepared = base.passwords(hashed);
        let mut accounts = HashMap::with_capacity(base.users.len() + rows.len());
        for (user, stored) in base.users.iter().zip(&prepared.stored) {
            let account = Account {
                username: user.username.clone(),
                password: stored.clone(),
                models: user.models.as_deref().map(|m| base.served_models(m)),
                disabled: user.disabled,
                admin: user.admin,
                limits: user.limits,
                upstream_user_id: user_id_for(base.user_id, &base.user_id_key, &user.username),
                source: Source::Config,
                tokens_valid_after: 0,
            };
            accounts.insert(user.username.clone(), Arc::new(account));
        }
        for row in rows {
            if accounts.contains_key(&row.username) {
                return Err(format!(
                    "user \"{}\" is defined both in config.toml ([[auth.users]]) and in the \
                     database; remove one (`deepseek_proxy user delete {}` removes the \
                     database one)",
                    row.username, row.username
                ));
            }
            let limit = |own: Option<i64>, default: u64| own.map_or(default, |n| n.max(0) as u64);
            let defaults = base.quota_defaults;
            let account = Account {
                upstream_user_id: user_id_for(base.user_id, &base.user_id_key, &row.username),
                password: Arc::new(Stored::Hash(secrecy::SecretString::from(
                    row.password_hash.clone(),
                ))),
                models: row.models.as_deref().map(|m| base.served_models(m)),
                disabled: row.disabled,
                admin: row.role == "admin",
                limits: Limits {
                    requests_per_minute: limit(
                        row.requests_per_minute,
                        defaults.requests_per_minute,
                    ),
                    tokens_per_day: limit(row.tokens_per_day, defaults.tokens_per_day),
                    max_concurrent: limit(row.max_concurrent, defaults.max_concurrent),
                    budget_per_month: limit(row.budget_per_month, defaults.budget_per_month),
                },
                source: Source::Database,
                tokens_valid_after: row.tokens_valid_after.max(0) as u64,
                username: row.username.clone(),
            };
            accounts.insert(row.username, Arc::new(account));
        }
        let mut keys = HashMap::with_capacity(key_rows.len());
        for row in key_rows {
            let Some(hash) = decode_hash(&row.key_hash) else {
                continue;
            };
            let key = ApiKey {
                slot_seed: slot_seed(&hash),
                id: row.id.into(),
                owner: row.username,
                models: row.models.as_deref().map(|m| base.served_models(m)),
                max_in_flight: row.max_in_flight.max(1) as u64,
                budget_per_month: row.budget_per_month.unwrap_or(0).max(0) as u64,
                expires_ms: row.expires_ms,
            };
            keys.insert(hash, Arc::new(key));
        }
        Ok(Self {
            accounts,
            keys,
            dummy: prepared.dummy.clone(),
            base,
        })
    }

    /// A user who may use the gateway now (known and not disabled).
    pub fn active(&self, username: &str) -> Option<&Arc<Account>> {
        self.accounts.get(username).filter(|a| !a.disabled)
    }

    /// The key a client presented, and its owner, if both may be used now.
    pub fn key(
        &self,
        presented: &str,
        now_ms: i64,
    ) -> Result<(Arc<ApiKey>, Arc<Account>), ApiError> {
        if !self.base.api_keys {
            return Err(ApiError::InvalidToken);
        }
        let hash = keys::parse(presented).ok_or(ApiError::InvalidToken)?;
        let key = self.keys.get(&hash).ok_or(ApiError::InvalidToken)?;
        if key.expires_ms.is_some_and(|at| at <= now_ms) {
            return Err(ApiError::KeyExpired);
        }
        let owner = self.active(&key.owner).ok_or(ApiError::InvalidToken)?;
        Ok((key.clone(), owner.clone()))
    }
}

/// A key's slots live in the same space as login tokens' (random 128-bit
/// ids): its first slot is its hash's first 16 bytes.
fn slot_seed(hash: &KeyHash) -> u128 {
    let mut seed = [0u8; 16];
    seed.copy_from_slice(&hash[..16]);
    u128::from_be_bytes(seed)
}

pub fn encode_hash(hash: &KeyHash) -> String {
    keys::hex(hash)
}

fn decode_hash(text: &str) -> Option<KeyHash> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The live snapshot, and how it is kept fresh.
pub struct Directory {
    pool: AnyPool,
    snapshot: RwLock<Arc<Snapshot>>,
    /// The last `directory_version` (changes) and `reload` counter seen.
    seen: Mutex<(i64, i64)>,
    /// Serialises rebuilds, so an older one never overwrites a newer one.
    rebuilding: tokio::sync::Mutex<()>,
    /// When each key's `last_used` was last written.
    touched: Mutex<HashMap<Arc<str>, i64>>,
}

impl Directory {
    /// Loads users and keys; fails on a name defined twice, or when there
    /// is nobody at all (the CLI creates the first admin).
    pub async fn open(pool: AnyPool, base: Base) -> Result<Arc<Self>, String> {
        let directory = Self::load(pool, base).await?;
        if directory.snapshot().accounts.is_empty() {
            return Err(
                "no users: add [[auth.users]] to the config, or create the first admin \
                 with `deepseek_proxy user add NAME --role admin`"
                    .into(),
            );
        }
        Ok(directory)
    }

    /// Loads users and keys, even none (the CLI, which creates the first).
    pub async fn load(pool: AnyPool, base: Base) -> Result<Arc<Self>, String> {
        let seen = db::version(&pool).await.map_err(db_error)?;
        let snapshot = load(&pool, Arc::new(base)).await?;
        Ok(Arc::new(Self {
            pool,
            snapshot: RwLock::new(Arc::new(snapshot)),
            seen: Mutex::new(seen),
            rebuilding: tokio::sync::Mutex::new(()),
            touched: Mutex::new(HashMap::new()),
        }))
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Rebuilds from the database (after a change here, or one seen by the
    /// poll), with `base` if given (a config reload), else the current one.
    pub async fn rebuild(&self, base: Option<Base>) -> Result<(), String> {
        let _one_at_a_time = self.rebuilding.lock().await;
        let version = db::version(&self.pool).await.map_err(db_error)?;
        let base = match base {
            Some(base) => Arc::new(base),
            None => self.snapshot().base.clone(),
        };
        let snapshot = load(&self.pool, base).await?;
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.0 = version.0;
        Ok(())
    }

    /// Polls for changes made elsewhere until the directory is dropped.
    /// `on_reload` runs when another process asked every replica to re-read
    /// its config (`deepseek_proxy reload`).
    pub fn watch(self: &Arc<Self>, on_reload: impl Fn() + Send + Sync + 'static) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POLL_EVERY).await;
                let Some(directory) = weak.upgrade() else {
                    return;
                };
                let Ok((version, reload)) = db::version(&directory.pool).await else {
                    tracing::warn!(
                        "cannot read the user directory's version; keeping the last one"
                    );
                    continue;
                };
                let (changed, reload_asked) = {
                    let mut seen = directory.seen.lock().unwrap_or_else(|e| e.into_inner());
                    let asked = seen.1 != reload;
                    seen.1 = reload;
                    (seen.0 != version, asked)
                };
                if reload_asked {
                    on_reload();
                } else if changed {
                    if let Err(error) = directory.rebuild(None).await {
                        tracing::error!(%error, "user directory not reloaded; keeping the last one");
                    }
                }
            }
        });
    }

    /// Notes that a key was used; writes `last_used` at most once a minute
    /// per key, off the request path.
    pub fn touch(&self, key: &ApiKey, now_ms: i64) {
        {
            let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
            match touched.get(&key.id) {
                Some(at) if now_ms - at < TOUCH_EVERY_MS => return,
                _ => {
                    touched.insert(key.id.clone(), now_ms);
                }
            }
        }
        let pool = self.pool.clone();
        let id = key.id.to_string();
        tokio::spawn(async move {
            if let Err(e) = db::touch_keys(&pool, &[id], now_ms).await {
                tracing::warn!(error = %e, "cannot record a key's last use");
            }
        });
    }
}

async fn load(pool: &AnyPool, base: Arc<Base>) -> Result<Snapshot, String> {
    let rows = db::users(pool).await.map_err(db_error)?;
    let keys = db::keys(pool, None).await.map_err(db_error)?;
    Snapshot::build(base, rows, keys)
}

fn db_error(e: sqlx::Error) -> String {
    format!("cannot read users and keys from the database: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_round_trip_through_hex() {
        let hash: KeyHash = core::array::from_fn(|i| i as u8 * 7);
        assert_eq!(decode_hash(&encode_hash(&hash)), Some(hash));
        assert_eq!(decode_hash("zz"), None);
        assert_eq!(decode_hash(&"g".repeat(64)), None);
    }
}
