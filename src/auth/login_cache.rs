//! The login cache: repeat logins by one user within the window get the token
//! issued first. The password is checked before the cache is consulted (see
//! [`super::login`]); this module only decides whether a cached token may be
//! handed out again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A token as issued, with the times that decide whether it can be reused.
#[derive(Clone, Debug)]
pub struct Issued {
    pub token: Arc<str>,
    pub token_id: u128,
    pub issued_at: u64,
    pub exp: u64,
}

impl Issued {
    /// Reusable while inside the cache window and still valid for at least a second.
    fn reusable(&self, now: u64, window_secs: u64) -> bool {
        now < self.issued_at.saturating_add(window_secs) && now < self.exp
    }
}

/// One entry per configured user at most (only users who passed the password
/// check get an entry), so memory is bounded by the config.
pub struct LoginCache {
    window_secs: u64,
    entries: Mutex<HashMap<String, Issued>>,
}

impl LoginCache {
    pub fn new(window_secs: u64) -> Self {
        Self {
            window_secs,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Returns the cached token for `user` if it may be reused at `now`, or
    /// issues, caches and returns a new one. Atomic: two concurrent logins of
    /// one user get the same token.
    pub fn get_or_issue(&self, user: &str, now: u64, issue: impl FnOnce() -> Issued) -> Issued {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = entries.get(user) {
            if cached.reusable(now, self.window_secs) {
                return cached.clone();
            }
        }
        let fresh = issue();
        if self.window_secs > 0 {
            entries.insert(user.to_owned(), fresh.clone());
        }
        fresh
    }

    /// Drops `user`'s cached token if it is `token_id` (after a logout), so
    /// the next login issues a new one.
    pub fn forget(&self, user: &str, token_id: u128) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.get(user).is_some_and(|e| e.token_id == token_id) {
            entries.remove(user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(name: &str, at: u64, ttl: u64) -> Issued {
        Issued {
            token: Arc::from(name),
            token_id: 0,
            issued_at: at,
            exp: at + ttl,
        }
    }

    #[test]
    fn a_repeat_login_inside_the_window_gets_the_same_token() {
        let cache = LoginCache::new(60);
        let first = cache.get_or_issue("admin", 1000, || issued("t1", 1000, 3600));
        let again = cache.get_or_issue("admin", 1059, || issued("t2", 1059, 3600));
        assert_eq!(first.token, again.token);
    }

    #[test]
    fn the_window_closes_after_its_length() {
        let cache = LoginCache::new(60);
        cache.get_or_issue("admin", 1000, || issued("t1", 1000, 3600));
        let later = cache.get_or_issue("admin", 1060, || issued("t2", 1060, 3600));
        assert_eq!(&*later.token, "t2");
    }

    #[test]
    fn an_expired_token_is_never_handed_out_even_inside_the_window() {
        let cache = LoginCache::new(60);
        cache.get_or_issue("admin", 1000, || issued("t1", 1000, 10));
        assert_eq!(
            &*cache
                .get_or_issue("admin", 1009, || issued("x", 1009, 10))
                .token,
            "t1"
        );
        let after = cache.get_or_issue("admin", 1010, || issued("t2", 1010, 10));
        assert_eq!(&*after.token, "t2");
    }

    #[test]
    fn users_do_not_share_tokens() {
        let cache = LoginCache::new(60);
        let a = cache.get_or_issue("a", 1000, || issued("ta", 1000, 3600));
        let b = cache.get_or_issue("b", 1000, || issued("tb", 1000, 3600));
        assert_ne!(a.token, b.token);
    }

    #[test]
    fn a_zero_window_disables_the_cache() {
        let cache = LoginCache::new(0);
        cache.get_or_issue("admin", 1000, || issued("t1", 1000, 3600));
        assert_eq!(
            &*cache
                .get_or_issue("admin", 1000, || issued("t2", 1000, 3600))
                .token,
            "t2"
        );
    }
}
