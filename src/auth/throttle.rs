//! Brute-force defence for `POST /auth/login`.
//!
//! Failed logins are counted per username and per client IP in fixed
//! windows. Past a limit, logins for that username (or from that IP) get 429
//! `login_throttled` with `Retry-After`, and the password is not checked at
//! all, so guessing stops costing us CPU too.
//!
//! The hourly per-username cap and the per-IP limit count every attempt
//! *before* its password is checked, in the same step as the limit check
//! ([`LoginThrottle::attempt`]), so parallel guesses cannot all slip past the
//! check while the first ones are still hashing: at most
//! `per_user_per_hour` guesses per account get through in an hour, however
//! they are timed. A success refunds its count there. The per-minute
//! username limit counts failures once they are known
//! ([`LoginThrottle::finished`]), so a user's own concurrent logins (ten
//! workers starting at once) are not throttled; a success resets it. IPv6
//! clients are counted per /64, the block one subscriber usually holds.
//!
//! Memory is bounded: each map holds at most `max_entries` keys. When a map
//! is full, expired entries are dropped first, then the entry whose window is
//! oldest, so a flood of random usernames cannot grow it without limit.
//! Unknown usernames are counted like known ones, so the throttle does not
//! reveal which accounts exist.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;

/// Limits, in failures per window.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub per_user_per_minute: u32,
    pub per_user_per_hour: u32,
    pub per_ip_per_minute: u32,
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_user_per_minute: 5,
            per_user_per_hour: 100,
            per_ip_per_minute: 20,
            max_entries: 10_000,
        }
    }
}

const MINUTE_SECS: u64 = 60;
const HOUR_SECS: u64 = 3600;

/// Failures counted in one fixed window.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    start: u64,
    failures: u32,
}

impl Window {
    fn current(&mut self, now: u64, len: u64) -> &mut Self {
        if now >= self.start + len {
            *self = Window {
                start: now,
                failures: 0,
            };
        }
        self
    }

    /// Seconds until this window ends, if it is over `limit`.
    fn blocked_for(&self, now: u64, len: u64, limit: u32) -> Option<u64> {
        let end = self.start + len;
        (now < end && self.failures >= limit).then(|| end - now)
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct UserWindows {
    minute: Window,
    hour: Window,
}

/// A map with a hard size cap, for counters keyed by attacker-chosen values.
struct Bounded<K, V> {
    map: HashMap<K, V>,
    max: usize,
}

impl<K: Eq + Hash + Clone, V: Default> Bounded<K, V> {
    fn new(max: usize) -> Self {
        Self {
            map: HashMap::new(),
            max: max.max(1),
        }
    }

    /// The entry for `key`, making room first if the map is full.
    fn entry(&mut self, key: &K, expired: impl Fn(&V) -> bool, age: impl Fn(&V) -> u64) -> &mut V {
        if !self.map.contains_key(key) && self.map.len() >= self.max {
            self.map.retain(|_, v| !expired(v));
            if self.map.len() >= self.max {
                let oldest = self
                    .map
                    .iter()
                    .min_by_key(|(_, v)| age(v))
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    self.map.remove(&oldest);
                }
            }
        }
        self.map.entry(key.clone()).or_default()
    }
}

pub struct LoginThrottle {
    limits: Limits,
    users: Mutex<Bounded<String, UserWindows>>,
    ips: Mutex<Bounded<IpAddr, Window>>,
}

/// The address a client is counted under: IPv4 as is, IPv6 by its /64.
pub fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let masked = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(masked.into())
        }
        v4 => v4,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LoginThrottle {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            users: Mutex::new(Bounded::new(limits.max_entries)),
            ips: Mutex::new(Bounded::new(limits.max_entries)),
        }
    }

    /// Checks the limits and, if the attempt may go ahead, counts it against
    /// the hourly cap and the IP, in one step. `Some(seconds)`: refuse
    /// without checking the password.
    pub fn attempt(&self, username: &str, ip: IpAddr, now: u64) -> Option<u64> {
        let l = self.limits;
        let ip = bucket(ip);
        let mut users = lock(&self.users);
        let mut ips = lock(&self.ips);
        let by_user = users.map.get(username).and_then(|w| {
            let minute = w
                .minute
                .blocked_for(now, MINUTE_SECS, l.per_user_per_minute);
            let hour = w.hour.blocked_for(now, HOUR_SECS, l.per_user_per_hour);
            minute.max(hour)
        });
        let by_ip = ips
            .map
            .get(&ip)
            .and_then(|w| w.blocked_for(now, MINUTE_SECS, l.per_ip_per_minute));
        if let Some(wait) = by_user.max(by_ip) {
            return Some(wait);
        }
        let w = users.entry(
            &username.to_owned(),
            |w| now >= w.hour.start + HOUR_SECS,
            |w| w.hour.start,
        );
        w.hour.current(now, HOUR_SECS).failures += 1;
        let w = ips.entry(&ip, |w| now >= w.start + MINUTE_SECS, |w| w.start);
        w.current(now, MINUTE_SECS).failures += 1;
        None
    }

    /// The password check is done. A failure counts against the minute; a
    /// success refunds its attempt and resets the minute (not the hour cap).
    pub fn finished(&self, username: &str, ip: IpAddr, success: bool, now: u64) {
        let mut users = lock(&self.users);
        let Some(w) = users.map.get_mut(username) else {
            return;
        };
        if !success {
            w.minute.current(now, MINUTE_SECS).failures += 1;
            return;
        }
        w.minute = Window::default();
        w.hour.failures = w.hour.failures.saturating_sub(1);
        drop(users);
        if let Some(w) = lock(&self.ips).map.get_mut(&bucket(ip)) {
            w.failures = w.failures.saturating_sub(1);
        }
    }

    /// Keys held now, for tests of the memory bound.
    pub fn tracked(&self) -> (usize, usize) {
        (lock(&self.users).map.len(), lock(&self.ips).map.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(n))
    }

    #[test]
    fn five_failures_in_a_minute_throttle_the_username_until_the_window_ends() {
        let t = LoginThrottle::new(Limits::default());
        for i in 0..5 {
            assert_eq!(t.attempt("admin", ip(i), 1000 + u64::from(i)), None);
            t.finished("admin", ip(i), false, 1000 + u64::from(i));
        }
        assert_eq!(t.attempt("admin", ip(99), 1010), Some(50));
        assert_eq!(
            t.attempt("user1", ip(99), 1010),
            None,
            "other users are not affected"
        );
        assert_eq!(
            t.attempt("admin", ip(99), 1060),
            None,
            "a new window starts"
        );
    }

    #[test]
    fn parallel_guesses_cannot_pass_the_hourly_cap() {
        let t = LoginThrottle::new(Limits::default());
        // 500 guesses arrive together from many addresses; none has
        // finished hashing yet, so none has been recorded as a failure.
        let admitted = (0..500)
            .filter(|i| t.attempt("admin", ip(*i), 1000).is_none())
            .count();
        assert_eq!(admitted, 100);
    }

    #[test]
    fn a_users_own_concurrent_logins_are_not_throttled() {
        let t = LoginThrottle::new(Limits::default());
        let admitted = (0..10)
            .filter(|_| t.attempt("admin", IP, 1000).is_none())
            .count();
        assert_eq!(admitted, 10);
        for _ in 0..10 {
            t.finished("admin", IP, true, 1000);
        }
        assert_eq!(
            t.attempt("admin", IP, 1001),
            None,
            "successes refund their count"
        );
    }

    #[test]
    fn a_success_resets_the_minute_but_not_the_hourly_cap() {
        let limits = Limits {
            per_user_per_hour: 13,
            ..Limits::default()
        };
        let t = LoginThrottle::new(limits);
        let mut now = 0;
        for round in 0..3 {
            for _ in 0..4 {
                assert_eq!(
                    t.attempt("admin", ip(now as u32), now),
                    None,
                    "round {round}"
                );
                t.finished("admin", ip(now as u32), false, now);
                now += 1;
            }
            assert_eq!(
                t.attempt("admin", IP, now),
                None,
                "the right password, round {round}"
            );
            t.finished("admin", IP, true, now);
        }
        // 12 failures this hour: one more guess, then the cap holds
        // despite the successes.
        assert_eq!(t.attempt("admin", IP, now), None);
        assert_eq!(t.attempt("admin", IP, now), Some(HOUR_SECS - now));
    }

    #[test]
    fn at_most_the_hourly_cap_of_guesses_get_through_in_an_hour() {
        let t = LoginThrottle::new(Limits::default());
        // An attacker tries every second from fresh IPs for an hour.
        let checked = (0..HOUR_SECS)
            .filter(|now| {
                let admitted = t.attempt("admin", ip(*now as u32), *now).is_none();
                if admitted {
                    t.finished("admin", ip(*now as u32), false, *now);
                }
                admitted
            })
            .count();
        assert!(checked <= 100, "{checked} guesses got through");
    }

    #[test]
    fn one_ip_is_throttled_across_usernames() {
        let t = LoginThrottle::new(Limits::default());
        for i in 0..20 {
            assert_eq!(t.attempt(&format!("user{i}"), IP, 1000), None);
        }
        assert!(t.attempt("someone-else", IP, 1001).is_some());
        assert!(t.attempt("someone-else", ip(7), 1001).is_none());
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_block() {
        let t = LoginThrottle::new(Limits::default());
        for i in 0..20u16 {
            let addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, i, i, i, i);
            assert_eq!(t.attempt(&format!("user{i}"), IpAddr::V6(addr), 1000), None);
        }
        let same_block = std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 99, 0, 0, 1);
        assert!(t.attempt("other", IpAddr::V6(same_block), 1001).is_some());
        let other_block = std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1);
        assert!(t.attempt("other", IpAddr::V6(other_block), 1001).is_none());
    }

    #[test]
    fn a_flood_of_random_usernames_stays_within_the_bound() {
        let limits = Limits {
            max_entries: 100,
            per_ip_per_minute: u32::MAX,
            ..Limits::default()
        };
        let t = LoginThrottle::new(limits);
        for i in 0..10_000u32 {
            t.attempt(&format!("random-{i}"), ip(i), u64::from(i / 50));
        }
        let (users, ips) = t.tracked();
        assert!(users <= 100 && ips <= 100, "{users} users, {ips} ips");
    }
}
