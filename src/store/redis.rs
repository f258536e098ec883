//! Shared state in Redis, so several replicas behave as one gateway.
//!
//! * **Slot = lease.** `SET slot:<jti> <owner> PX <ttl>` in the `enter`
//!   script, which first checks the token is not revoked and picks the
//!   first free slot, and then admits the request under its user's quotas:
//!   one round trip, all or nothing. Renewed every ttl/3 while the request
//!   runs, released with a compare-and-delete so a replica never frees
//!   another's lease. If a replica dies mid-stream, its lease expires
//!   within `lease_ttl_seconds`. Each process also notes the slots its own
//!   requests hold or have claimed (before their body), so those are
//!   refused there with no round trip.
//! * **Login cache.** The first replica to log a user in stores its token
//!   with `SET NX`-like atomicity (a script: return the cached value, or set
//!   ours); every concurrent login on any replica then gets that token. The
//!   entry's TTL ends at the window's end or the token's expiry, whichever
//!   is first, so Redis itself never hands out an expired token. A
//!   deterministic token per window was rejected: it would make tokens
//!   predictable from the secret and the clock.
//! * **Revocations and failure counters** are keys with TTLs (until the
//!   token's `exp`, one minute, one hour), so no key lives forever.
//!
//! Every call is bounded by `redis_timeout_ms`; a slow or absent Redis is a
//! [`StoreError`] (503 `state_unavailable`). The connection manager
//! reconnects by itself, so service resumes when Redis returns.
//!
//! A lease that cannot be renewed (Redis down mid-stream) does not cut the
//! stream: the request runs to its end, and the lease may expire meanwhile,
//! which lets a second request with the token start. Cutting paid streams
//! because of a state-store outage was judged worse than that brief overlap.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::ConnectionManager;
use redis::{Client, Script};
use secrecy::ExposeSecret;

use super::{
    Admission, Ask, Claim, Claimed, Entry, InFlight, Issued, Lease, Release, Standing, Store,
    StoreError, StoreResult, StoreSettings,
};
use crate::auth::revocation::Revocations;
use crate::config::RedisConfig;
use crate::limits::quota::{self, Charged, Permit, Refusal, Seeds, Settle};
use crate::limits::{SlotGuard, Slots};
use crate::usage::calendar::month_index;

mod renewals;
use renewals::{Kind, Renewals, Renewing};

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;

/// The quota admission, as a Lua function of its keys `K` and arguments `A`
/// (for the `admit` and `enter` scripts).
///
/// K: rpm (zset of admission times), running (zset of expiry times), tokens
/// (today's counter), spend (the user's micro-units this month), key spend
/// (the key's). A: now_ms, owner, rpm limit, concurrency limit, token
/// limit, reserve, running ttl_ms, tokens ttl_ms, ms to the next UTC day,
/// budget, key budget, micro-units to reserve, spend ttl_ms, ms to the next
/// UTC month. Limits of 0 are off. Every check runs before anything is
/// counted. Returns {0} granted, or {kind, used, retry_ms} with kind 1 rpm,
/// 2 tokens, 3 concurrency, 4 budget, 5 key budget. See `limits::quota`.
const ADMIT: &str = "local function admit(K, A) \
    local now = tonumber(A[1]) local rpm = tonumber(A[3]) \
    local conc = tonumber(A[4]) local tok = tonumber(A[5]) \
    local reserve = tonumber(A[6]) local budget = tonumber(A[10]) \
    local kbudget = tonumber(A[11]) local micros = tonumber(A[12]) \
    if conc > 0 then redis.call('ZREMRANGEBYSCORE', K[2], '-inf', now) \
    local n = redis.call('ZCARD', K[2]) if n >= conc then return {3, n, 1000} end end \
    if rpm > 0 then redis.call('ZREMRANGEBYSCORE', K[1], '-inf', now - 60000) \
    local n = redis.call('ZCARD', K[1]) if n >= rpm then \
    local oldest = redis.call('ZRANGE', K[1], 0, 0, 'WITHSCORES') \
    return {1, n, tonumber(oldest[2]) + 60000 - now} end end \
    if tok > 0 then local used = tonumber(redis.call('GET', K[3]) or '0') \
    if used + reserve > tok then return {2, used, tonumber(A[9])} end end \
    if budget > 0 then local used = tonumber(redis.call('GET', K[4]) or '0') \
    if used + micros > budget then return {4, used, tonumber(A[14])} end end \
    if kbudget > 0 then local used = tonumber(redis.call('GET', K[5]) or '0') \
    if used + micros > kbudget then return {5, used, tonumber(A[14])} end end \
    if tok > 0 then redis.call('INCRBY', K[3], reserve) \
    redis.call('PEXPIRE', K[3], A[8]) end \
    if budget > 0 then redis.call('INCRBY', K[4], micros) \
    redis.call('PEXPIRE', K[4], A[13]) end \
    if kbudget > 0 then redis.call('INCRBY', K[5], micros) \
    redis.call('PEXPIRE', K[5], A[13]) end \
    if rpm > 0 then redis.call('ZADD', K[1], now, A[2]) \
    redis.call('PEXPIRE', K[1], 60000) end \
    if conc > 0 then redis.call('ZADD', K[2], now + tonumber(A[7]), A[2]) \
    redis.call('PEXPIRE', K[2], A[7]) end \
    return {0} end";

struct Scripts {
    enter: Script,
    undo: Script,
    renew: Script,
    release: Script,
    login: Script,
    revoke: Script,
    attempt: Script,
    finished: Script,
    admit: Script,
    renew_running: Script,
    settle: Script,
    seed: Script,
    standing: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            renew: Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                 return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0",
            ),
            release: Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                 return redis.call('DEL', KEYS[1]) end return 0",
            ),
            // KEYS: login. ARGV: candidate, ttl_ms.
            login: Script::new(
                "local v = redis.call('GET', KEYS[1]) if v then return v end \
                 if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end \
                 return ARGV[1]",
            ),
            // KEYS: revoked, login. ARGV: ttl_ms, jti.
            revoke: Script::new(
                "redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) \
                 local v = redis.call('GET', KEYS[2]) \
                 if v and string.sub(v, 1, string.len(ARGV[2])) == ARGV[2] then redis.call('DEL', KEYS[2]) end \
                 return 1",
            ),
            // KEYS: user-minute, user-hour, ip-minute. ARGV: their limits, then
            // their window lengths in ms. Checks all three; if none is over its
            // limit, counts the attempt against the hour and the IP
            // (atomically). ms to wait, or 0.
            attempt: Script::new(
                "local wait = 0 for i = 1, 3 do \
                 local n = tonumber(redis.call('GET', KEYS[i]) or '0') \
                 if n >= tonumber(ARGV[i]) then local t = redis.call('PTTL', KEYS[i]) \
                 if t > wait then wait = t end end end \
                 if wait > 0 then return wait end \
                 for i = 2, 3 do local n = redis.call('INCR', KEYS[i]) \
                 if n == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[i + 3]) end end return 0",
            ),
            // KEYS: user-minute, user-hour, ip-minute. ARGV: 1 success / 0
            // failure, the minute in ms. A failure counts against the minute;
            // a success resets it and refunds the hour and the IP.
            finished: Script::new(
                "if ARGV[1] == '0' then local n = redis.call('INCR', KEYS[1]) \
                 if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 1 end \
                 redis.call('DEL', KEYS[1]) for i = 2, 3 do \
                 if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end end \
                 return 1",
            ),
            admit: Script::new(&format!("{ADMIT} return admit(KEYS, ARGV)")),
            // KEYS: revoked, the n slots, then (to admit) admit's five keys.
            // ARGV: owner, lease ttl_ms, n, then admit's ARGV (its owner
            // the same). Nothing is taken unless all is granted. Returns {-1}
            // revoked, {-2} busy, admit's refusal, or {0, i}: granted, with
            // KEYS[i] the slot taken (0: none asked).
            enter: Script::new(&format!(
                "{ADMIT} if redis.call('EXISTS', KEYS[1]) == 1 then return {{-1}} end \
                 local n = tonumber(ARGV[3]) local slot = 0 \
                 for i = 2, n + 1 do if redis.call('EXISTS', KEYS[i]) == 0 then slot = i break end end \
                 if n > 0 and slot == 0 then return {{-2}} end \
                 if #KEYS > n + 1 then local r = admit({{unpack(KEYS, n + 2)}}, {{unpack(ARGV, 4)}}) \
                 if r[1] ~= 0 then return r end end \
                 if slot > 0 then redis.call('SET', KEYS[slot], ARGV[1], 'PX', ARGV[2]) end \
                 return {{0, slot}}"
            )),
            // KEYS: the slots an `enter` may have taken, then its running
            // entry's zset if ARGV[2] is 1. ARGV: owner, 1/0. Deletes each
            // slot that is still the owner's and the owner's running entry.
            undo: Script::new(
                "local last = #KEYS \
                 if ARGV[2] == '1' then redis.call('ZREM', KEYS[last], ARGV[1]) last = last - 1 end \
                 for i = 1, last do \
                 if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end end \
                 return 1",
            ),
            // KEYS: running. ARGV: owner, new expiry ms, ttl_ms.
            renew_running: Script::new(
                "if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end \
                 redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1]) \
                 redis.call('PEXPIRE', KEYS[1], ARGV[3]) return 1",
            ),
            // KEYS: running, tokens, spend, key spend. ARGV: owner, then a
            // delta (charged - reserved) for each counter, "" where nothing
            // was reserved; 1/0 held a running entry. A counter that expired
            // (a new day or month) is left alone.
            settle: Script::new(
                "if ARGV[5] == '1' then redis.call('ZREM', KEYS[1], ARGV[1]) end \
                 for i = 2, 4 do if ARGV[i] ~= '' and redis.call('EXISTS', KEYS[i]) == 1 then \
                 local v = redis.call('INCRBY', KEYS[i], ARGV[i]) \
                 if v < 0 then redis.call('INCRBY', KEYS[i], -v) end end end return 1",
            ),
            // KEYS: counters to set. ARGV: ttl_ms, then one value per key.
            // Only a counter no replica holds yet is set (SET NX).
            seed: Script::new(
                "for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'NX', 'PX', ARGV[1]) end \
                 return #KEYS",
            ),
            // KEYS: rpm, running, tokens, spend. ARGV: now_ms.
            standing: Script::new(
                "local now = tonumber(ARGV[1]) \
                 return {redis.call('ZCOUNT', KEYS[1], '(' .. (now - 60000), '+inf'), \
                 tonumber(redis.call('GET', KEYS[3]) or '0'), \
                 redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf'), \
                 tonumber(redis.call('GET', KEYS[4]) or '0')}",
            ),
        }
    }
}

pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    lease_ttl: Duration,
    timeout: Duration,
    settings: StoreSettings,
    scripts: std::sync::Arc<Scripts>,
    renewals: std::sync::Arc<Renewals>,
    in_flight: InFlight,
    /// The slots this process's requests hold or have claimed
    /// ([`Store::claim`]).
    local: Slots,
    /// The tokens logged out through this process, so their next request
    /// here is refused before its body (others' show at `enter`).
    revoked_here: Revocations,
}

/// A lease's or a permit's owner: unique across replicas (a random 64-bit
/// number per process) and within one (a counter), with no `getrandom` call
/// per request.
fn new_owner() -> String {
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let process = *PROCESS.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{process:016x}{n:016x}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Login-cache keys name the user exactly (two users must never share a
/// cached token); only configured users reach the cache, so length is bounded.
fn login_key(user: &str) -> String {
    if user
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    {
        return user.to_owned();
    }
    user.bytes().fold(String::from("hex:"), |mut s, b| {
        s.push_str(&format!("{b:02x}"));
        s
    })
}

/// Failure counters are keyed by attacker-chosen names: long ones are
/// hashed so keys stay small (a collision only merges two counters).
fn user_key(user: &str) -> String {
    if user.len() <= 64 && user.bytes().all(|b| b.is_ascii_graphic()) {
        return user.to_owned();
    }
    // FNV-1a, 64 bits: stable across processes and versions.
    let hash = user.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("#{hash:016x}")
}

impl RedisStore {
    pub fn new(config: &RedisConfig, settings: StoreSettings) -> Result<Self, String> {
        let client = Client::open(config.url.expose_secret())
            .map_err(|e| format!("state.redis_url is not usable: {e}"))?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        // Lazy: the gateway starts (not ready) while Redis is down, and
        // connects when it comes up.
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| format!("cannot set up the Redis connection: {e}"))?;
        let scripts = std::sync::Arc::new(Scripts::new());
        let renewals = Renewals::new(
            conn.clone(),
            scripts.clone(),
            config.timeout,
            config.lease_ttl,
        );
        Ok(Self {
            conn,
            prefix: config.key_prefix.clone(),
            lease_ttl: config.lease_ttl,
            timeout: config.timeout,
            settings,
            scripts,
            renewals,
            in_flight: InFlight::default(),
            local: Slots::default(),
            revoked_here: Revocations::default(),
        })
    }

    fn key(&self, kind: &str, id: impl std::fmt::Display) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    /// Runs `script` with a bounded wait; any failure is a [`StoreError`].
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> StoreResult<T> {
        bounded(self.timeout, self.conn.clone(), script, keys, args).await
    }

    /// Runs one command with a bounded wait.
    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> StoreResult<T> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError(format!("redis: {e}"))),
            Err(_) => Err(StoreError(format!(
                "redis did not answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Runs a pipeline with the same bounded wait as [`Self::query`].
    async fn query_pipe<T: redis::FromRedisValue>(&self, pipe: redis::Pipeline) -> StoreResult<T> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, pipe.query_async(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError(format!("redis: {e}"))),
            Err(_) => Err(StoreError(format!(
                "redis did not answer within {:?}",
                self.timeout
            ))),
        }
    }

    fn throttle_keys(&self, user: &str, ip: IpAddr) -> [String; 3] {
        let user = user_key(user);
        [
            self.key("fail:user:minute", &user),
            self.key("fail:user:hour", &user),
            self.key("fail:ip", crate::auth::throttle::bucket(ip)),
        ]
    }
}

async fn bounded<T: redis::FromRedisValue>(
    timeout: Duration,
    mut conn: ConnectionManager,
    script: &Script,
    keys: &[&str],
    args: &[&str],
) -> StoreResult<T> {
    let mut invocation = script.prepare_invoke();
    for key in keys {
        invocation.key(*key);
    }
    for arg in args {
        invocation.arg(*arg);
    }
    match tokio::time::timeout(timeout, invocation.invoke_async(&mut conn)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(StoreError(format!("redis: {e}"))),
        Err(_) => Err(StoreError(format!(
            "redis did not answer within {timeout:?}"
        ))),
    }
}

/// A Redis lease: renewed in the background until released.
struct RedisLease {
    renewing: Renewing,
    /// This process's note that it holds the slot, dropped once the key is
    /// deleted.
    local: Option<SlotGuard>,
    conn: ConnectionManager,
    scripts: std::sync::Arc<Scripts>,
    timeout: Duration,
    slot: String,
    owner: String,
}

impl Release for RedisLease {
    /// Stops the renewal and deletes the key if it is still ours.
    fn release(self: Box<Self>) -> Option<BoxFuture<'static, ()>> {
        let Self {
            renewing,
            local,
            conn,
            scripts,
            timeout,
            slot,
            owner,
        } = *self;
        drop(renewing);
        Some(
            async move {
                let (keys, args) = ([slot.as_str()], [owner.as_str()]);
                let released = bounded::<i64>(timeout, conn, &scripts.release, &keys, &args);
                if let Err(e) = released.await {
                    tracing::warn!(error = %e, "lease release failed; it expires by its TTL");
                }
                drop(local);
            }
            .boxed(),
        )
    }
}

impl RedisStore {
    fn lease(&self, slot: String, owner: String, local: Option<SlotGuard>) -> RedisLease {
        RedisLease {
            renewing: self.renewals.register(Kind::Lease, &slot, &owner),
            local,
            conn: self.conn.clone(),
            scripts: self.scripts.clone(),
            timeout: self.timeout,
            slot,
            owner,
        }
    }

    /// The quota keys of `user`: its admissions in the last minute, its
    /// requests running now, its token counter for the UTC day of `now_ms`
    /// and its spend in that UTC month.
    fn quota_keys(&self, user: &str, now_ms: u64) -> [String; 4] {
        let user = login_key(user);
        [
            self.key("quota:rpm", &user),
            self.key("quota:running", &user),
            self.key(
                "quota:tokens",
                format_args!("{user}:{}", now_ms / quota::DAY_MS),
            ),
            self.spend_key(&user, now_ms),
        ]
    }

    fn spend_key(&self, user_key: &str, now_ms: u64) -> String {
        self.key(
            "quota:spend",
            format_args!("{user_key}:{}", month_index(now_ms)),
        )
    }

    /// A personal API key's spend in the UTC month of `now_ms`.
    fn key_spend_key(&self, key_id: &str, now_ms: u64) -> String {
        self.key(
            "quota:keyspend",
            format_args!("{}:{}", login_key(key_id), month_index(now_ms)),
        )
    }
}

impl RedisStore {
    /// The admission's keys and arguments, as [`ADMIT`] takes them.
    fn admission(&self, ask: &Ask<'_>, owner: &str) -> ([String; 5], [String; 14]) {
        let Ask {
            user,
            limits,
            reserve,
            key,
            reserve_micros,
            now_ms,
            ..
        } = *ask;
        let [rpm, running, tokens, spend] = self.quota_keys(user, now_ms);
        let key_spend = match key {
            Some((id, _)) => self.key_spend_key(id, now_ms),
            None => self.key("quota:keyspend", "-"),
        };
        let to_day_end = quota::until_next_day_ms(now_ms);
        let to_month_end = quota::until_next_month_ms(now_ms);
        let args = [
            now_ms.to_string(),
            owner.to_owned(),
            limits.requests_per_minute.to_string(),
            limits.max_concurrent.to_string(),
            limits.tokens_per_day.to_string(),
            reserve.to_string(),
            self.lease_ttl.as_millis().to_string(),
            (to_day_end + quota::DAY_MS).to_string(),
            to_day_end.to_string(),
            limits.budget_per_month.to_string(),
            ask.key_budget().to_string(),
            reserve_micros.to_string(),
            (to_month_end + quota::DAY_MS).to_string(),
            to_month_end.to_string(),
        ];
        ([rpm, running, tokens, spend, key_spend], args)
    }

    /// The permit of an admitted `ask`; `keys` are its five quota keys.
    fn permit(&self, ask: &Ask<'_>, keys: [String; 5], owner: String) -> Permit {
        let limits = ask.limits;
        let [_, running, tokens, spend, key_spend] = keys;
        let running_renewal = (limits.max_concurrent > 0)
            .then(|| self.renewals.register(Kind::Running, &running, &owner));
        Permit::new(RedisPermit {
            running: running_renewal,
            conn: self.conn.clone(),
            scripts: self.scripts.clone(),
            timeout: self.timeout,
            keys: [running, tokens, spend, key_spend],
            owner,
            reserved: [
                (limits.tokens_per_day > 0).then_some(ask.reserve),
                (limits.budget_per_month > 0).then_some(ask.reserve_micros),
                (ask.key_budget() > 0).then_some(ask.reserve_micros),
            ],
        })
    }
}

/// The refusal [`ADMIT`] answered for `ask`.
fn refusal(ask: &Ask<'_>, answer: &[i64]) -> StoreResult<Refusal> {
    let (limits, key_budget) = (ask.limits, ask.key_budget());
    let (kind, limit, reserve) = match answer.first() {
        Some(1) => (
            quota::Kind::RequestsPerMinute,
            limits.requests_per_minute,
            0,
        ),
        Some(2) => (
            quota::Kind::TokensPerDay,
            limits.tokens_per_day,
            ask.reserve,
        ),
        Some(3) => (quota::Kind::Concurrent, limits.max_concurrent, 0),
        Some(4) => (
            quota::Kind::Budget,
            limits.budget_per_month,
            ask.reserve_micros,
        ),
        Some(5) => (quota::Kind::KeyBudget, key_budget, ask.reserve_micros),
        _ => return Err(unexpected()),
    };
    let number = |i: usize, default: u64| answer.get(i).map_or(default, |&n| n.max(0) as u64);
    Ok(Refusal {
        kind,
        limit,
        used: number(1, 0),
        reserve,
        retry_after_secs: number(2, 1000).div_ceil(1000).max(1),
        currency: ask.currency,
    })
}

fn unexpected() -> StoreError {
    StoreError("unexpected answer from a quota script".into())
}

/// What an `enter` script in flight may take: deleted in the background
/// by one script (each slot if still this request's, and its running
/// entry) when its answer is lost or the request is dropped before the
/// answer came, so neither leaves the token locked for the lease TTL nor
/// the user's place among their running requests taken. The claim's local
/// note is kept until then, as a lease keeps it until its release: the
/// client's retry is not refused here for a slot its last try still holds
/// in Redis. (Reservations it may have counted stay: the error is on the
/// side of not overspending.)
struct Undo {
    /// The slot keys, then the running entry's zset if `running`.
    keys: Vec<String>,
    running: bool,
    owner: String,
    guard: Option<SlotGuard>,
    conn: ConnectionManager,
    scripts: std::sync::Arc<Scripts>,
    timeout: Duration,
    armed: bool,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (keys, guard) = (std::mem::take(&mut self.keys), self.guard.take());
        let owner = std::mem::take(&mut self.owner);
        let running = if self.running { "1" } else { "0" };
        let (conn, scripts, timeout) = (self.conn.clone(), self.scripts.clone(), self.timeout);
        let undo = async move {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let args = [owner.as_str(), running];
            let _ = bounded::<i64>(timeout, conn, &scripts.undo, &keys, &args).await;
            drop(guard);
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(undo);
        }
    }
}

/// A Redis quota permit: its running entry is renewed like a lease, so a
/// replica that dies mid-request frees the user's place within the lease
/// TTL. (Its token reservation then stays counted until the day ends: the
/// error is on the side of not overspending.)
struct RedisPermit {
    /// Its running entry's renewal, if it holds one (`max_concurrent`).
    running: Option<Renewing>,
    conn: ConnectionManager,
    scripts: std::sync::Arc<Scripts>,
    timeout: Duration,
    /// running, tokens, spend, key spend.
    keys: [String; 4],
    owner: String,
    /// Tokens, the user's micro-units, the key's micro-units held.
    reserved: [Option<u64>; 3],
}

impl Settle for RedisPermit {
    fn settle(self: Box<Self>, charged: Charged) -> Option<BoxFuture<'static, ()>> {
        let held_running = self.running.is_some();
        if !held_running && self.reserved.iter().all(Option::is_none) {
            return None; // a requests-per-minute entry only: it expires by itself
        }
        let this = Self {
            running: None, // renewals stop here
            ..*self
        };
        Some(
            async move {
                let charges = [charged.tokens, charged.micros, charged.micros];
                let deltas: Vec<String> = this
                    .reserved
                    .iter()
                    .zip(charges)
                    .map(|(held, charged)| {
                        held.map_or(String::new(), |held| {
                            (i128::from(charged) - i128::from(held)).to_string()
                        })
                    })
                    .collect();
                let running = if held_running { "1" } else { "0" };
                let keys: Vec<&str> = this.keys.iter().map(String::as_str).collect();
                let args = [
                    this.owner.as_str(),
                    &deltas[0],
                    &deltas[1],
                    &deltas[2],
                    running,
                ];
                let settle = &this.scripts.settle;
                if let Err(e) =
                    bounded::<i64>(this.timeout, this.conn.clone(), settle, &keys, &args).await
                {
                    tracing::warn!(error = %e, "settling a quota failed; its running entry \
                        expires by the lease TTL");
                }
            }
            .boxed(),
        )
    }
}

impl Store for RedisStore {
    fn bench_upstream<'a>(&'a self, name: &'a str, for_ms: u64) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let key = self.key("upstream:benched", name);
            if for_ms == 0 {
                let mut del = redis::cmd("DEL");
                del.arg(key);
                return self.query::<()>(del).await;
            }
            let mut set = redis::cmd("SET");
            set.arg(key).arg(1).arg("PX").arg(for_ms);
            self.query::<()>(set).await
        }
        .boxed()
    }

    fn benched_upstreams<'a>(
        &'a self,
        names: &'a [String],
    ) -> BoxFuture<'a, StoreResult<Vec<u64>>> {
        async move {
            let mut pipe = redis::pipe();
            for name in names {
                pipe.cmd("PTTL").arg(self.key("upstream:benched", name));
            }
            let ttls: Vec<i64> = self.query_pipe(pipe).await?;
            // PTTL is -2 for a missing key: not benched.
            Ok(ttls.into_iter().map(|t| t.max(0) as u64).collect())
        }
        .boxed()
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn claim(&self, token_id: u128, slots: Vec<u128>) -> Claimed {
        super::claim_in(&self.revoked_here, &self.local, token_id, slots)
    }

    fn enter<'a>(
        &'a self,
        token_id: u128,
        claim: Option<Claim>,
        ask: Option<Ask<'a>>,
    ) -> BoxFuture<'a, StoreResult<Entry>> {
        async move {
            let owner = new_owner();
            let (slots, guard) = match claim {
                Some(Claim { slots, guard }) => (slots, Some(guard)),
                None => (Vec::new(), None),
            };
            let mut keys = Vec::with_capacity(1 + slots.len() + 5);
            keys.push(self.key("revoked", format_args!("{token_id:032x}")));
            keys.extend(
                slots
                    .iter()
                    .map(|slot| self.key("slot", format_args!("{slot:032x}"))),
            );
            let mut args = vec![
                owner.clone(),
                self.lease_ttl.as_millis().to_string(),
                slots.len().to_string(),
            ];
            let n = slots.len();
            if let Some(ask) = &ask {
                let (quota_keys, quota_args) = self.admission(ask, &owner);
                keys.extend(quota_keys);
                args.extend(quota_args);
            }
            // Until the answer is read, what the script may take is undone
            // if the answer is lost or the request goes away meanwhile.
            let running = ask
                .as_ref()
                .is_some_and(|ask| ask.limits.max_concurrent > 0);
            let mut undo_keys = keys[1..=n].to_vec();
            if running {
                undo_keys.push(keys[n + 2].clone());
            }
            let mut undo = Undo {
                keys: undo_keys,
                running,
                owner: owner.clone(),
                guard,
                conn: self.conn.clone(),
                scripts: self.scripts.clone(),
                timeout: self.timeout,
                armed: true,
            };
            let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let answer: Vec<i64> = self.run(&self.scripts.enter, &key_refs, &arg_refs).await?;
            undo.armed = false;
            let guard = undo.guard.take();
            match answer.as_slice() {
                [-1] => return Ok(Entry::Revoked),
                [-2] => return Ok(Entry::Busy),
                [0, _] => {}
                _ => {
                    let ask = ask.ok_or_else(unexpected)?;
                    return Ok(Entry::Refused(refusal(&ask, &answer)?));
                }
            }
            // KEYS[i] (from 1) is the slot taken, i > 1; 0 if none was asked.
            let taken = usize::try_from(answer[1]).unwrap_or(0);
            let lease = match (guard, taken) {
                (None, 0) => None,
                (Some(guard), 2..) if taken - 2 < n => {
                    let key = std::mem::take(&mut keys[taken - 1]);
                    let lease = self.lease(key, owner.clone(), Some(guard));
                    Some(Lease::new(lease, &self.in_flight))
                }
                _ => return Err(unexpected()),
            };
            let permit = match ask {
                Some(ask) => {
                    let quota_keys =
                        <[String; 5]>::try_from(keys.split_off(1 + n)).map_err(|_| unexpected())?;
                    Some(self.permit(&ask, quota_keys, owner))
                }
                None => None,
            };
            Ok(Entry::Granted { lease, permit })
        }
        .boxed()
    }

    fn is_revoked(&self, token_id: u128) -> BoxFuture<'_, StoreResult<bool>> {
        async move {
            let key = self.key("revoked", format_args!("{token_id:032x}"));
            let mut exists = redis::cmd("EXISTS");
            exists.arg(&key);
            Ok(self.query::<i64>(exists).await? > 0)
        }
        .boxed()
    }

    fn revoke<'a>(
        &'a self,
        user: &'a str,
        token_id: u128,
        exp: u64,
    ) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let jti = format!("{token_id:032x}");
            let revoked = self.key("revoked", &jti);
            let login = self.key("login", login_key(user));
            let ttl_ms = (exp * 1000).saturating_sub(now_ms()).max(1).to_string();
            self.run::<i64>(&self.scripts.revoke, &[&revoked, &login], &[&ttl_ms, &jti])
                .await?;
            let now = crate::auth::jwt::unix_now();
            self.revoked_here.revoke(token_id, exp, now);
            Ok(())
        }
        .boxed()
    }

    fn login_token<'a>(
        &'a self,
        user: &'a str,
        candidate: Issued,
    ) -> BoxFuture<'a, StoreResult<Issued>> {
        async move {
            let key = self.key("login", login_key(user));
            let window_end_ms = (candidate.issued_at + self.settings.login_cache_secs) * 1000;
            let ttl_ms = window_end_ms
                .min(candidate.exp * 1000)
                .saturating_sub(now_ms());
            let value = encode(&candidate);
            let ttl = ttl_ms.to_string();
            let stored: String = self
                .run(&self.scripts.login, &[&key], &[&value, &ttl])
                .await?;
            // A value that does not parse, or a token already dead, is never
            // handed out: the candidate is returned instead.
            Ok(decode(&stored)
                .filter(|cached| cached.exp > crate::auth::jwt::unix_now())
                .unwrap_or(candidate))
        }
        .boxed()
    }

    fn begin_login<'a>(
        &'a self,
        user: &'a str,
        ip: IpAddr,
    ) -> BoxFuture<'a, StoreResult<Option<u64>>> {
        async move {
            let keys = self.throttle_keys(user, ip);
            let l = self.settings.throttle;
            let args = [
                l.per_user_per_minute.to_string(),
                l.per_user_per_hour.to_string(),
                l.per_ip_per_minute.to_string(),
                MINUTE_MS.to_string(),
                HOUR_MS.to_string(),
                MINUTE_MS.to_string(),
            ];
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let wait_ms: i64 = self.run(&self.scripts.attempt, &keys, &args).await?;
            Ok((wait_ms > 0).then(|| (wait_ms as u64).div_ceil(1000)))
        }
        .boxed()
    }

    fn finish_login<'a>(
        &'a self,
        user: &'a str,
        ip: IpAddr,
        success: bool,
    ) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let keys = self.throttle_keys(user, ip);
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let outcome = if success { "1" } else { "0" };
            let minute = MINUTE_MS.to_string();
            self.run::<i64>(&self.scripts.finished, &keys, &[outcome, &minute])
                .await
                .map(drop)
        }
        .boxed()
    }

    fn admit<'a>(&'a self, ask: Ask<'a>) -> BoxFuture<'a, StoreResult<Admission>> {
        async move {
            let owner = new_owner();
            let (keys, args) = self.admission(&ask, &owner);
            let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
            // A lost answer is a 503 like any other; what the script may
            // have counted expires (running entries by the lease TTL).
            let answer: Vec<i64> = self.run(&self.scripts.admit, &key_refs, &arg_refs).await?;
            if answer != [0] {
                return Ok(Admission::Refused(refusal(&ask, &answer)?));
            }
            Ok(Admission::Granted(self.permit(&ask, keys, owner)))
        }
        .boxed()
    }

    fn standing<'a>(&'a self, user: &'a str, now_ms: u64) -> BoxFuture<'a, StoreResult<Standing>> {
        async move {
            let keys = self.quota_keys(user, now_ms);
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let now = now_ms.to_string();
            let counts: Vec<u64> = self.run(&self.scripts.standing, &keys, &[&now]).await?;
            let [requests_last_minute, tokens_today, in_flight, spent_month] = counts[..] else {
                return Err(StoreError("unexpected answer from the quota script".into()));
            };
            Ok(Standing {
                requests_last_minute,
                tokens_today,
                in_flight,
                spent_month,
            })
        }
        .boxed()
    }

    fn seed<'a>(&'a self, seeds: &'a Seeds) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let now = seeds.now_ms;
            let mut keys = Vec::new();
            let mut values = Vec::new();
            for (user, tokens) in &seeds.tokens_today {
                keys.push(self.quota_keys(user, now)[2].clone());
                values.push(tokens.to_string());
            }
            for (user, micros) in &seeds.spent_month {
                keys.push(self.spend_key(&login_key(user), now));
                values.push(micros.to_string());
            }
            for (key, micros) in &seeds.key_spent_month {
                keys.push(self.key_spend_key(key, now));
                values.push(micros.to_string());
            }
            // Long enough for a month; a day's counter simply outlives its
            // day under a name no later request uses.
            let ttl = (quota::until_next_month_ms(now) + quota::DAY_MS).to_string();
            for (keys, values) in keys.chunks(500).zip(values.chunks(500)) {
                let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                let mut args: Vec<&str> = vec![&ttl];
                args.extend(values.iter().map(String::as_str));
                self.run::<i64>(&self.scripts.seed, &key_refs, &args)
                    .await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn ready(&self) -> BoxFuture<'_, StoreResult<()>> {
        async move { self.query::<String>(redis::cmd("PING")).await.map(drop) }.boxed()
    }

    fn in_flight(&self) -> usize {
        self.in_flight.get()
    }
}

/// `jti|iat|exp|token`: the jti first, so a revoke can match it cheaply.
fn encode(issued: &Issued) -> String {
    format!(
        "{:032x}|{}|{}|{}",
        issued.token_id, issued.issued_at, issued.exp, issued.token
    )
}

fn decode(value: &str) -> Option<Issued> {
    let mut parts = value.splitn(4, '|');
    let token_id = u128::from_str_radix(parts.next()?, 16).ok()?;
    let issued_at = parts.next()?.parse().ok()?;
    let exp = parts.next()?.parse().ok()?;
    let token = parts.next()?;
    Some(Issued {
        token: token.into(),
        token_id,
        issued_at,
        exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_logins_round_trip_through_their_encoding() {
        let issued = Issued {
            token: "a.b.c".into(),
            token_id: 0xabc,
            issued_at: 10,
            exp: 20,
        };
        let back = decode(&encode(&issued)).expect("decodes");
        assert_eq!((back.token_id, back.issued_at, back.exp), (0xabc, 10, 20));
        assert_eq!(&*back.token, "a.b.c");
        assert!(decode("garbage").is_none());
    }

    #[test]
    fn long_or_odd_usernames_get_short_stable_keys() {
        assert_eq!(user_key("admin"), "admin");
        let long = "x".repeat(10_000);
        assert_eq!(user_key(&long), user_key(&long));
        assert!(user_key(&long).len() <= 17);
        assert_ne!(user_key("a b"), "a b");
    }

    #[test]
    fn login_cache_keys_never_collide() {
        assert_eq!(login_key("admin"), "admin");
        assert_eq!(login_key("张三"), "hex:e5bca0e4b889");
        assert_ne!(login_key("#0123456789abcdef"), login_key("x"));
        assert_ne!(login_key("hex:41"), login_key("A"));
    }
}
