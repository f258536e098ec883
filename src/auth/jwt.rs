//! Signing and checking the gateway's tokens: HS256 JWTs with `sub`, `iat`,
//! `exp` and `jti`. Validation pins HS256 and requires every claim.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 4096;
/// `iss` and `aud` of every token; a JWT minted for anything else is refused.
pub const ISSUER: &str = "deepseek_proxy";
/// How far in the future `iat`/`nbf` may be (clock skew between replicas).
/// Expiry itself gets no leeway.
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
    /// A random 128-bit id, 32 hex digits; the per-token slot is keyed by it.
    pub jti: String,
}

impl Claims {
    /// The `jti` as a number, for cheap keys. Tokens we issue always have one.
    pub fn token_id(&self) -> Option<u128> {
        u128::from_str_radix(&self.jti, 16).ok()
    }
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// For the benchmark's ablation only (`crate::ablation`).
    #[cfg(feature = "ablation")]
    unchecked: Validation,
    /// Tokens whose signature was checked, by their whole text: a client
    /// sends the same token with every request, and the HMAC, base64 and
    /// JSON of a full check cost more than the rest of authentication.
    verified: Mutex<HashMap<Box<str>, Claims>>,
}

/// Verified tokens kept at most (a few hundred bytes each). Past it, the
/// expired ones go, and if none has, all of them: a flood of fresh tokens
/// costs full checks, never memory.
const VERIFIED_MAX: usize = 4096;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JwtKeys {
    pub fn new(secret: &SecretString) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[ISSUER]);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        #[cfg(feature = "ablation")]
        let unchecked = {
            let mut unchecked = validation.clone();
            unchecked.insecure_disable_signature_validation();
            unchecked
        };
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            #[cfg(feature = "ablation")]
            unchecked,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Signs a new token for `sub`, valid for `ttl_secs` from `now`.
    pub fn issue(&self, sub: &str, now: u64, ttl_secs: u64) -> (String, Claims) {
        let claims = Claims {
            iss: ISSUER.to_owned(),
            aud: ISSUER.to_owned(),
            sub: sub.to_owned(),
            iat: now,
            exp: now + ttl_secs,
            jti: uuid::Uuid::new_v4().simple().to_string(),
        };
        // HS256 signing of a serialisable struct cannot fail.
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default();
        (token, claims)
    }

    /// Checks signature, algorithm and expiry, and that the token names a `jti`.
    /// The signature of a token seen before is not checked again: the
    /// cache holds the claims of tokens that passed, keyed by the whole
    /// token (so a changed header or payload is a miss), and the time
    /// checks run on every call.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, ApiError> {
        if token.len() > MAX_TOKEN_BYTES || token.bytes().any(|b| b.is_ascii_control()) {
            return Err(ApiError::InvalidToken);
        }
        let known = self.lock_verified().get(token).cloned();
        let claims = match known {
            Some(claims) => claims,
            None => {
                let claims = self.check_signature(token)?;
                let mut verified = self.lock_verified();
                if verified.len() >= VERIFIED_MAX {
                    verified.retain(|_, c| c.exp > now);
                    if verified.len() >= VERIFIED_MAX {
                        verified.clear();
                    }
                }
                verified.insert(token.into(), claims.clone());
                claims
            }
        };
        // jsonwebtoken accepts exp == now; a token is dead at its exp second.
        if claims.exp <= now {
            return Err(ApiError::ExpiredToken);
        }
        if claims.iat > now + LEEWAY_SECS || claims.token_id().is_none() {
            return Err(ApiError::InvalidToken);
        }
        Ok(claims)
    }

    fn lock_verified(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Claims>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The full check: signature, algorithm, issuer, audience, expiry.
    fn check_signature(&self, token: &str) -> Result<Claims, ApiError> {
        #[cfg(feature = "ablation")]
        let validation = match crate::ablation::off(crate::ablation::Part::Jwt) {
            true => &self.unchecked,
            false => &self.validation,
        };
        #[cfg(not(feature = "ablation"))]
        let validation = &self.validation;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => ApiError::ExpiredToken,
                _ => ApiError::InvalidToken,
            },
        )?;
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::new(&SecretString::from("k".repeat(40)))
    }

    #[test]
    fn an_issued_token_verifies_with_its_claims() {
        let now = unix_now();
        let (token, claims) = keys().issue("admin", now, 60);
        let back = keys().verify(&token, now).expect("valid");
        assert_eq!(back.sub, "admin");
        assert_eq!(back.jti, claims.jti);
        assert_eq!(back.exp, now + 60);
    }

    #[test]
    fn a_known_token_is_still_checked_for_expiry_and_a_changed_one_is_not_known() {
        let keys = keys();
        let now = unix_now();
        let (token, _) = keys.issue("admin", now, 60);
        assert!(keys.verify(&token, now).is_ok());
        // From the cache now: the time checks still run.
        assert!(keys.verify(&token, now + 30).is_ok());
        assert!(matches!(
            keys.verify(&token, now + 60),
            Err(ApiError::ExpiredToken)
        ));
        // The same signature on another payload is a miss, and fails.
        let parts: Vec<&str> = token.split('.').collect();
        let other = token_payload(&claims_for("root", now));
        let forged = format!("{}.{other}.{}", parts[0], parts[2]);
        assert!(matches!(
            keys.verify(&forged, now),
            Err(ApiError::InvalidToken)
        ));
    }

    #[test]
    fn the_verified_cache_stays_bounded() {
        let keys = keys();
        let now = unix_now();
        for _ in 0..VERIFIED_MAX + 10 {
            let (token, _) = keys.issue("admin", now, 60);
            assert!(keys.verify(&token, now).is_ok());
        }
        assert!(keys.lock_verified().len() <= VERIFIED_MAX);
    }

    #[test]
    fn expired_and_foreign_tokens_are_refused() {
        let now = unix_now();
        let (token, _) = keys().issue("admin", now - 100, 50);
        assert!(matches!(
            keys().verify(&token, now),
            Err(ApiError::ExpiredToken)
        ));
        let other = JwtKeys::new(&SecretString::from("o".repeat(40)));
        let (token, _) = other.issue("admin", now, 60);
        assert!(matches!(
            keys().verify(&token, now),
            Err(ApiError::InvalidToken)
        ));
    }

    #[test]
    fn other_algorithms_are_refused() {
        let now = unix_now();
        let secret = "k".repeat(40);
        let claims = claims_for("admin", now);
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = jsonwebtoken::encode(
                &Header::new(alg),
                &claims,
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .expect("encode");
            assert!(keys().verify(&token, now).is_err(), "{alg:?} accepted");
        }
        // alg "none": header {"alg":"none","typ":"JWT"} and an empty signature.
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let payload = token_payload(&claims);
        assert!(keys().verify(&format!("{header}.{payload}."), now).is_err());
    }

    fn token_payload(claims: &Claims) -> String {
        let (token, _) = (
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                claims,
                &EncodingKey::from_secret(b"x"),
            )
            .expect("encode"),
            (),
        );
        token.split('.').nth(1).unwrap_or_default().to_owned()
    }

    fn claims_for(sub: &str, now: u64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            aud: ISSUER.into(),
            sub: sub.into(),
            iat: now,
            exp: now + 60,
            jti: "ab".repeat(16),
        }
    }

    fn sign(payload: &serde_json::Value) -> String {
        let key = EncodingKey::from_secret("k".repeat(40).as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), payload, &key).expect("encode")
    }

    #[test]
    fn claims_must_have_the_right_issuer_audience_and_types() {
        let now = unix_now();
        let good = serde_json::to_value(claims_for("admin", now)).expect("json");
        assert!(keys().verify(&sign(&good), now).is_ok());
        let mut cases = Vec::new();
        for (field, value) in [
            ("iss", serde_json::json!("someone-else")),
            ("aud", serde_json::json!("someone-else")),
            ("exp", serde_json::json!((now + 60).to_string())),
            ("iat", serde_json::json!("yesterday")),
            ("sub", serde_json::json!(42)),
            ("jti", serde_json::json!("not-hex")),
            ("iat", serde_json::json!(now + 60)),
            ("nbf", serde_json::json!(now + 60)),
        ] {
            let mut bad = good.clone();
            bad[field] = value;
            cases.push((field, bad));
        }
        for field in ["iss", "aud", "exp", "sub", "jti", "iat"] {
            let mut bad = good.clone();
            bad.as_object_mut().expect("object").remove(field);
            cases.push((field, bad));
        }
        for (field, bad) in cases {
            assert!(keys().verify(&sign(&bad), now).is_err(), "{field}: {bad}");
        }
    }

    #[test]
    fn tokens_with_control_characters_are_refused() {
        let now = unix_now();
        let (token, _) = keys().issue("admin", now, 60);
        assert!(keys().verify(&format!("{token}\r\n"), now).is_err());
        assert!(keys().verify(&format!("{token}\n"), now).is_err());
    }

    #[test]
    fn oversized_tokens_are_refused_before_parsing() {
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(
            keys().verify(&huge, unix_now()),
            Err(ApiError::InvalidToken)
        ));
    }
}
