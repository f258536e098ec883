//! Password checks.
//!
//! Argon2id hashes (`password_hash` in the config) are verified on the
//! blocking pool, at most one per core at a time, so a
//! login flood queues there instead of starving the async workers that relay
//! streams. Plaintext passwords (`password`, kept for the seed's config) are
//! compared in constant time.
//!
//! An unknown username costs the same as a wrong password: it is checked
//! against a dummy of the same kind. When any user has a hash, plaintext
//! users are hashed at start too, so every check is an Argon2 verification
//! and timing cannot tell a plaintext user from an unknown one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::config::Credential;

/// OWASP's minimum for Argon2id: 19 MiB, 2 passes, 1 lane.
pub const MEMORY_KIB: u32 = 19_456;
pub const ITERATIONS: u32 = 2;
pub const LANES: u32 = 1;

fn hasher() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, ITERATIONS, LANES, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`) for `password`.
pub fn hash(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing failed: {e}"))
}

/// Checks that `phc` is an Argon2id PHC string we can verify against.
pub fn check_phc(phc: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(phc).map_err(|_| {
        "is not a PHC string; create one with `deepseek_proxy hash-password`".to_owned()
    })?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "uses {}; only argon2id is accepted (use `deepseek_proxy hash-password`)",
            parsed.algorithm
        ));
    }
    Params::try_from(&parsed).map_err(|e| format!("has bad Argon2 parameters: {e}"))?;
    Ok(())
}

/// How a stored password is checked, after start-up preparation.
#[derive(Debug)]
pub enum Stored {
    Plain(SecretString),
    Hash(SecretString),
}

pub struct Passwords {
    permits: Arc<Semaphore>,
    checks: AtomicU64,
}

/// How every user's password is checked, prepared together so that timing
/// tells nothing: when any is hashed, all are, and so is the dummy.
pub struct Prepared {
    pub stored: Vec<Arc<Stored>>,
    /// Checked against for unknown usernames: same kind as the real ones.
    pub dummy: Arc<Stored>,
}

/// Prepares the credentials: if `hashed` (some user, here or elsewhere,
/// has a hash), plaintext ones are hashed now.
pub fn prepare(credentials: &[&Credential], hashed: bool) -> Prepared {
    let any_hash = hashed
        || credentials
            .iter()
            .any(|c| matches!(c, Credential::Argon2(_)));
    let stored = credentials
        .iter()
        .map(|c| {
            Arc::new(match c {
                Credential::Argon2(phc) => Stored::Hash(SecretString::from(phc.clone())),
                Credential::Plain(p) if any_hash => Stored::Hash(SecretString::from(
                    hash(p.expose_secret()).unwrap_or_default(),
                )),
                Credential::Plain(p) => Stored::Plain(p.clone()),
            })
        })
        .collect();
    let dummy_password = uuid::Uuid::new_v4().to_string();
    let dummy = if any_hash {
        Stored::Hash(SecretString::from(
            hash(&dummy_password).unwrap_or_default(),
        ))
    } else {
        Stored::Plain(SecretString::from(dummy_password))
    };
    Prepared {
        stored,
        dummy: Arc::new(dummy),
    }
}

impl Default for Passwords {
    fn default() -> Self {
        let parallelism = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            permits: Arc::new(Semaphore::new(parallelism)),
            checks: AtomicU64::new(0),
        }
    }
}

impl Passwords {
    /// True when `stored` is `Some` and `password` matches it. `None` (an
    /// unknown user) does the same work against the dummy and returns false.
    pub async fn verify(
        &self,
        stored: Option<&Arc<Stored>>,
        dummy: &Arc<Stored>,
        password: SecretString,
    ) -> bool {
        let known = stored.is_some();
        let stored = stored.unwrap_or(dummy).clone();
        self.checks.fetch_add(1, Ordering::Relaxed);
        let matches = match &*stored {
            Stored::Plain(p) => constant_time_eq(
                p.expose_secret().as_bytes(),
                password.expose_secret().as_bytes(),
            ),
            Stored::Hash(_) => {
                let Ok(permit) = self.permits.clone().acquire_owned().await else {
                    return false;
                };
                // The permit moves into the job: a client that disconnects
                // mid-check cannot free it while the hash still runs.
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    verify_hash(&stored, &password)
                })
                .await
                .unwrap_or(false)
            }
        };
        matches & known
    }

    /// Password checks done so far (unknown users included).
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }
}

fn verify_hash(stored: &Stored, password: &SecretString) -> bool {
    let Stored::Hash(phc) = stored else {
        return false;
    };
    let Ok(parsed) = PasswordHash::new(phc.expose_secret()) else {
        return false;
    };
    // Argon2's verifier compares the outputs in constant time.
    Argon2::default()
        .verify_password(password.expose_secret().as_bytes(), &parsed)
        .is_ok()
}

/// Compares every byte (up to the longer length) without stopping early.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s)
    }

    #[tokio::test]
    async fn plaintext_users_pass_only_with_their_own_password() {
        let pw = Passwords::default();
        let Prepared { stored, dummy } = prepare(&[&Credential::Plain(secret("admin123"))], false);
        assert!(matches!(*stored[0], Stored::Plain(_)));
        assert!(
            pw.verify(Some(&stored[0]), &dummy, secret("admin123"))
                .await
        );
        for wrong in ["admin12", "admin1234", "", "ADMIN123"] {
            assert!(
                !pw.verify(Some(&stored[0]), &dummy, secret(wrong)).await,
                "{wrong}"
            );
        }
        assert!(!pw.verify(None, &dummy, secret("admin123")).await);
    }

    #[tokio::test]
    async fn hashed_users_verify_and_make_plaintext_users_hashed_too() {
        let phc = hash("s3cret").expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        check_phc(&phc).expect("valid");
        let pw = Passwords::default();
        let (a, b) = (
            Credential::Argon2(phc),
            Credential::Plain(secret("admin123")),
        );
        let Prepared { stored, dummy } = prepare(&[&a, &b], false);
        assert!(
            matches!(*stored[1], Stored::Hash(_)),
            "plaintext hashed at start"
        );
        assert!(pw.verify(Some(&stored[0]), &dummy, secret("s3cret")).await);
        assert!(!pw.verify(Some(&stored[0]), &dummy, secret("s3cret ")).await);
        assert!(
            pw.verify(Some(&stored[1]), &dummy, secret("admin123"))
                .await
        );
        assert!(!pw.verify(None, &dummy, secret("s3cret")).await);
        assert!(
            matches!(*dummy, Stored::Hash(_)),
            "unknown users cost a hash too"
        );
        assert_eq!(pw.checks(), 4);
    }

    #[test]
    fn only_argon2id_phc_strings_are_accepted() {
        assert!(check_phc("admin123").is_err());
        assert!(check_phc("$2b$12$abcdefghijklmnopqrstuv").is_err());
        let argon2i = "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$L4dGZlfqRVuh2r8aVeRLNw";
        assert!(check_phc(argon2i).is_err());
    }
}
