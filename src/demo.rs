//! `--demo`: the gateway in front of a built-in fake DeepSeek, so the README's
//! examples work with no key and no network.

use fake_deepseek::{Behavior, FakeDeepSeek};
use reqwest::Url;
use secrecy::SecretString;

use crate::config::{Config, ConfigError, Env};

/// Used when `--demo` finds no config file: the seed's two users.
pub const DEMO_CONFIG: &str = r#"
[server]
host = "127.0.0.1"
port = 8080

[auth]
jwt_secret = ""

[[auth.users]]
username = "admin"
password = "admin123"
role = "admin"

[[auth.users]]
username = "user1"
password = "pass123"

[storage]
sqlite_path = ":memory:"
"#;

const DEMO_KEY: &str = "sk-demo-not-a-real-key";

/// Loads the config as usual but without needing a key (the file at `path`
/// if there is one, else [`DEMO_CONFIG`]).
pub fn config(path: &std::path::Path, env: Env<'_>) -> Result<Config, ConfigError> {
    let with_demo_key = |name: &str| match name {
        "OPENAI_API_KEY" | "DEEPSEEK_API_KEY" => Some(DEMO_KEY.to_owned()),
        _ => env(name),
    };
    if path.exists() {
        let mut config = Config::load(path, &with_demo_key)?;
        if let Some(source) = &mut config.source {
            source.demo = true;
        }
        Ok(config)
    } else {
        Config::from_toml(DEMO_CONFIG, &with_demo_key)
    }
}

/// Starts the fake on 127.0.0.1 and points `config` at it.
pub async fn start_fake(config: &mut Config) -> std::io::Result<FakeDeepSeek> {
    let fake = FakeDeepSeek::start().await?;
    // Paced like a real model, so a stream lasts long enough to see the
    // one-request-per-token rule at work.
    fake.set_default(Behavior {
        chunks: 12,
        chunk_delay_ms: 40,
        ..Behavior::default()
    });
    fake.require_key(DEMO_KEY);
    // DeepSeek's root: the routes' paths hang off it.
    config.upstream.base_url =
        Url::parse(&format!("http://{}", fake.addr())).map_err(std::io::Error::other)?;
    config.upstream.api_key = SecretString::from(DEMO_KEY);
    // Every configured upstream is the fake, too.
    for entry in &mut config.upstreams {
        entry.config.base_url = config.upstream.base_url.clone();
        entry.config.api_key = SecretString::from(DEMO_KEY);
        entry.config.extra_roots.clear();
    }
    Ok(fake)
}
