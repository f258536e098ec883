//! Personal API keys: `sk-dsp-` and 43 base62 characters (256 random bits).
//!
//! A key is shown once, when it is made. The gateway keeps only its SHA-256
//! (to find it) and its first 8 random characters (to show which key is
//! which), so neither the database nor a log line can give a key away.

use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};

/// What every key starts with (many clients check for `sk-`).
pub const PREFIX: &str = "sk-dsp-";
/// Base62 characters of a key's random part: 62^43 > 2^256.
const BODY_CHARS: usize = 43;
/// Characters of the random part kept for display.
const SHOWN_CHARS: usize = 8;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The SHA-256 of a key: how it is stored and looked up.
pub type KeyHash = [u8; 32];

/// A new key, its hash, its display prefix and its id.
pub struct NewKey {
    pub key: String,
    pub hash: KeyHash,
    pub prefix: String,
    pub id: String,
}

/// Makes a key from 32 bytes of the OS generator.
pub fn generate() -> Result<NewKey, String> {
    let rng = SystemRandom::new();
    let mut random = [0u8; 32];
    rng.fill(&mut random)
        .map_err(|_| "the OS random generator failed".to_owned())?;
    let mut id = [0u8; 8];
    rng.fill(&mut id)
        .map_err(|_| "the OS random generator failed".to_owned())?;
    let key = format!("{PREFIX}{}", base62(random));
    Ok(NewKey {
        hash: hash(&key),
        prefix: shown(&key),
        id: format!("key_{}", hex(&id)),
        key,
    })
}

/// The hash of a presented key, if it has a key's exact shape; `None` for
/// anything else (a JWT, a typo), which is then never looked up.
pub fn parse(presented: &str) -> Option<KeyHash> {
    let body = presented.strip_prefix(PREFIX)?;
    (body.len() == BODY_CHARS && body.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| hash(presented))
}

/// Whether a presented token is meant as a key (to tell a mistyped key
/// from a login token).
pub fn looks_like_key(presented: &str) -> bool {
    presented.starts_with(PREFIX)
}

/// `sk-dsp-` and the first 8 random characters.
pub fn shown(key: &str) -> String {
    key.chars().take(PREFIX.len() + SHOWN_CHARS).collect()
}

fn hash(key: &str) -> KeyHash {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, key.as_bytes()).as_ref());
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 bytes as exactly 43 base62 digits (big-endian, zero-padded).
fn base62(mut number: [u8; 32]) -> String {
    let mut digits = Vec::with_capacity(BODY_CHARS);
    for _ in 0..BODY_CHARS {
        // Divide the 256-bit number by 62, keeping the remainder.
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = (value / 62) as u8;
            remainder = value % 62;
        }
        digits.push(ALPHABET[remainder as usize]);
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape_and_are_distinct() {
        let a = generate().expect("key");
        let b = generate().expect("key");
        assert_ne!(a.key, b.key);
        assert_ne!(a.id, b.id);
        assert!(a.key.starts_with("sk-dsp-"));
        assert_eq!(a.key.len(), 7 + 43);
        assert_eq!(parse(&a.key), Some(a.hash));
        assert_eq!(a.prefix.len(), 15);
        assert!(a.key.starts_with(&a.prefix));
    }

    #[test]
    fn base62_is_exact_at_the_edges() {
        assert_eq!(base62([0; 32]), "0".repeat(43));
        let max = base62([0xff; 32]);
        assert_eq!(max.len(), 43);
        // 2^256 - 1, worked out independently (Python's big integers).
        assert_eq!(max, "yhjskwdA6OZ1AL1YmHWZWm8LLG7HjnuCA2j5rOw8Xp1");
        let mut one = [0u8; 32];
        one[31] = 61;
        assert!(base62(one).ends_with('z'));
    }

    #[test]
    fn only_the_exact_shape_parses() {
        let key = generate().expect("key").key;
        assert!(parse(&key[..key.len() - 1]).is_none());
        assert!(parse(&format!("{key}a")).is_none());
        assert!(parse(&key.replace("sk-dsp-", "sk-dsq-")).is_none());
        assert!(parse(&format!("{}!", &key[..key.len() - 1])).is_none());
        assert!(parse("eyJhbGciOiJIUzI1NiJ9.x.y").is_none());
    }
}
