//! Password checks that take the same time whether the user exists or not,
//! and whether the guess shares a prefix with the password or not.

use std::collections::HashMap;

use secrecy::{ExposeSecret, SecretString};

/// Compared against when the username is unknown, so both paths do the same work.
const DUMMY_PASSWORD: &str = "dummy-password-for-unknown-users!";

/// True when `username` exists and `password` is theirs.
pub fn verify(users: &HashMap<String, SecretString>, username: &str, password: &str) -> bool {
    let (stored, known) = match users.get(username) {
        Some(stored) => (stored.expose_secret(), true),
        None => (DUMMY_PASSWORD, false),
    };
    constant_time_eq(stored.as_bytes(), password.as_bytes()) & known
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

    #[test]
    fn only_the_right_password_of_a_known_user_passes() {
        let users = HashMap::from([("admin".to_owned(), SecretString::from("admin123"))]);
        assert!(verify(&users, "admin", "admin123"));
        assert!(!verify(&users, "admin", "admin12"));
        assert!(!verify(&users, "admin", "admin1234"));
        assert!(!verify(&users, "admin", ""));
        assert!(!verify(&users, "nobody", "admin123"));
        assert!(!verify(&users, "nobody", DUMMY_PASSWORD));
    }
}
