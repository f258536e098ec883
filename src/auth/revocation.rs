//! Tokens revoked by `POST /auth/logout`, remembered until they would have
//! expired anyway. Only a logged-in user can add an entry, and each entry
//! goes when its token's `exp` passes, so the set stays as small as the
//! number of live tokens that were logged out.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct Revocations {
    /// Token id -> its `exp` (Unix seconds).
    revoked: Mutex<HashMap<u128, u64>>,
}

/// Expired entries are swept when the set grows past this since the last sweep.
const SWEEP_EVERY: usize = 1024;

impl Revocations {
    pub fn revoke(&self, token_id: u128, exp: u64, now: u64) {
        let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        if revoked.len() % SWEEP_EVERY == SWEEP_EVERY - 1 {
            revoked.retain(|_, exp| *exp > now);
        }
        revoked.insert(token_id, exp);
    }

    pub fn is_revoked(&self, token_id: u128) -> bool {
        let revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        revoked.contains_key(&token_id)
    }

    pub fn len(&self) -> usize {
        self.revoked.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_tokens_stay_revoked_and_expired_entries_are_swept() {
        let r = Revocations::default();
        r.revoke(1, 100, 0);
        assert!(r.is_revoked(1));
        assert!(!r.is_revoked(2));
        for id in 2..5000u128 {
            r.revoke(id, 200, 150);
        }
        assert!(!r.is_revoked(1), "token 1 expired at 100 and was swept");
        assert!(r.is_revoked(4999));
        assert!(r.len() < 5000);
    }
}
