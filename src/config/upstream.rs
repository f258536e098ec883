//! `[deepseek]`: the one upstream, its key, URL, timeouts, TLS roots, and
//! how end users are told apart to DeepSeek (`user_id`).

use std::time::Duration;

use reqwest::Url;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use secrecy::SecretString;
use serde::Deserialize;

use super::{invalid, ConfigError, Env};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDeepSeek {
    api_key: String,
    base_url: String,
    timeout_seconds: u64,
    max_request_seconds: u64,
    ca_file: String,
    user_id: String,
}

impl Default for RawDeepSeek {
    fn default() -> Self {
        Self {
            api_key: String::new(),
            base_url: "https://api.deepseek.com".into(),
            timeout_seconds: 60,
            max_request_seconds: 1800,
            ca_file: String::new(),
            user_id: "pseudonym".into(),
        }
    }
}

#[derive(Debug)]
pub struct UpstreamConfig {
    pub api_key: SecretString,
    /// Validated: http(s), a host, no credentials, no query; no trailing
    /// `/` and no trailing `/v1` (DeepSeek's paths hang off its root).
    pub base_url: Url,
    pub timeout: Duration,
    pub max_request: Duration,
    /// Root certificates trusted for DeepSeek's TLS besides the built-in
    /// (Mozilla) roots, from `deepseek.ca_file`; usually none.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// What DeepSeek is told as each request's `user_id`.
    pub user_id: UserIdMode,
}

/// `deepseek.user_id`: how each gateway user gets an isolation domain of
/// their own at DeepSeek (content safety, KV cache, scheduling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserIdMode {
    /// A stable keyed hash of the username (the default): isolated, and the
    /// username never leaves the gateway.
    Pseudonym,
    /// The username itself, where it is a valid `user_id`.
    Username,
    /// Leave `user_id` as the client sent it.
    Off,
}

impl RawDeepSeek {
    /// `key_required`: false when `[[upstreams]]` tables carry the keys.
    pub(super) fn validate(
        self,
        env: Env<'_>,
        key_required: bool,
    ) -> Result<UpstreamConfig, ConfigError> {
        let api_key = Some(self.api_key)
            .filter(|k| !k.trim().is_empty())
            .or_else(|| env("OPENAI_API_KEY"))
            .or_else(|| env("DEEPSEEK_API_KEY"))
            .or_else(|| (!key_required).then(String::new))
            .ok_or_else(|| {
                invalid(
                    "deepseek.api_key",
                    "is empty and neither OPENAI_API_KEY nor DEEPSEEK_API_KEY is set: \
                     set one of them to your DeepSeek key, or run with --demo",
                )
            })?;
        let api_key = api_key.trim().to_owned();
        if api_key.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(invalid(
                "deepseek.api_key",
                "contains spaces or control characters",
            ));
        }
        let base_url = parse_base_url(&self.base_url)?;
        if self.timeout_seconds == 0 {
            return Err(invalid(
                "deepseek.timeout_seconds",
                "must be at least 1 (e.g. 60)",
            ));
        }
        if self.max_request_seconds < self.timeout_seconds {
            return Err(invalid(
                "deepseek.max_request_seconds",
                "must be at least deepseek.timeout_seconds (e.g. 1800)",
            ));
        }
        Ok(UpstreamConfig {
            api_key: SecretString::from(api_key),
            base_url,
            timeout: Duration::from_secs(self.timeout_seconds),
            max_request: Duration::from_secs(self.max_request_seconds),
            extra_roots: read_roots(self.ca_file.trim())?,
            user_id: match self.user_id.as_str() {
                "pseudonym" => UserIdMode::Pseudonym,
                "username" => UserIdMode::Username,
                "off" => UserIdMode::Off,
                other => {
                    return Err(invalid(
                        "deepseek.user_id",
                        format!(
                            "\"{other}\" is not a mode; use \"pseudonym\", \"username\" or \"off\""
                        ),
                    ))
                }
            },
        })
    }
}

/// The certificates in a PEM file; none for an empty path.
fn read_roots(path: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    read_roots_for("deepseek.ca_file", path)
}

/// The certificates in a PEM file, errors naming `key`.
pub(super) fn read_roots_for(
    key: &str,
    path: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let roots = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(key, format!("cannot read certificates from {path:?}: {e}")))?;
    if roots.is_empty() {
        return Err(invalid(
            key,
            format!("{path:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        ));
    }
    Ok(roots)
}

fn parse_base_url(text: &str) -> Result<Url, ConfigError> {
    parse_base_url_for("deepseek.base_url", text)
}

/// A validated base URL (DeepSeek's root), errors naming `key`.
pub(super) fn parse_base_url_for(key: &str, text: &str) -> Result<Url, ConfigError> {
    let mut url = parse_prefix_for(key, text)?;
    // The seed's `https://api.deepseek.com/v1` still works: DeepSeek's
    // paths hang off its root, so a trailing `/v1` is dropped; any other
    // prefix (a proxy's `/deepseek`, say) is kept.
    let path = url.path();
    let path = path.strip_suffix("/v1").unwrap_or(path).to_owned();
    url.set_path(&path);
    Ok(url)
}

/// A validated URL prefix, kept as written but for a trailing `/`: an
/// `[[upstreams]]` host's paths hang off exactly it (vLLM's `/v1`, say).
pub(super) fn parse_prefix_for(key: &str, text: &str) -> Result<Url, ConfigError> {
    let mut url = Url::parse(text.trim()).map_err(|e| {
        invalid(
            key,
            format!("\"{text}\" is not a URL ({e}); e.g. https://api.deepseek.com"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            key,
            "must be an http:// or https:// URL with a host",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            key,
            "must not carry credentials; put the key in deepseek.api_key",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(key, "must not have a query or fragment"));
    }
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}
