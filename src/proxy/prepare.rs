//! What DeepSeek will serve, and the body it gets.
//!
//! Before any policy runs, the requested model is resolved to the model
//! DeepSeek will actually serve: an alias to its target, `claude-opus*` (on
//! the Anthropic route) to `deepseek-v4-pro`, any other `claude*` to
//! `deepseek-flash`, and the legacy `deepseek-v4-flash` to `deepseek-flash`.
//! The allow-list, quotas, ledger and metrics all see the served model.
//!
//! The body is forwarded byte for byte except for three fields: the model
//! of an alias, `thinking` (set by an alias unless the client set it), and
//! `user_id`, which the gateway always sets so that nobody can borrow
//! another member's isolation domain at DeepSeek.

use std::borrow::Cow;

use axum::body::Bytes;

use crate::config::{Models, UserIdMode};
use crate::error::ApiError;
use crate::formats::json::{top_level, Edits, Object};
use crate::formats::{Checked, Format, UserIdPlace};

/// The longest `user_id` DeepSeek accepts.
const MAX_USER_ID_BYTES: usize = 512;

/// A request ready to forward.
#[derive(Debug)]
pub struct Prepared {
    /// The name the client sent.
    pub requested: Option<String>,
    /// The model DeepSeek will serve.
    pub served: Option<String>,
    pub body: Bytes,
}

/// Resolves the model and rewrites the few fields the gateway owns.
pub fn prepare(
    models: &Models,
    format: Format,
    checked: &Checked<'_>,
    body: &Bytes,
    user_id: Option<&str>,
) -> Result<Prepared, ApiError> {
    let object = &checked.object;
    let mut edits = Edits::default();
    let requested = checked.model.as_deref();
    let served: Option<Cow<'_, str>> = match requested {
        None => None,
        Some(name) => match models.aliases.get(name) {
            Some(alias) => {
                if let Some(raw) = object.get("model") {
                    edits.replace(body, raw, json_string(&alias.model));
                }
                if let Some(thinking) = alias.thinking {
                    if format.has_thinking() && object.get("thinking").is_none() {
                        add_top_level(&mut edits, body, object, "thinking", thinking.json());
                    }
                }
                Some(Cow::Borrowed(alias.model.as_str()))
            }
            None => Some(served_name(format, name)),
        },
    };
    if let Some(id) = user_id {
        set_user_id(&mut edits, body, object, format.user_id_place(), id)?;
    }
    let body = if edits.is_empty() {
        body.clone()
    } else {
        Bytes::from(edits.apply(body))
    };
    Ok(Prepared {
        requested: requested.map(str::to_owned),
        served: served.map(Cow::into_owned),
        body,
    })
}

/// The model DeepSeek serves for a name that is not an alias.
pub fn served_name(format: Format, name: &str) -> Cow<'_, str> {
    if format == Format::Anthropic && name.starts_with("claude") {
        return Cow::Borrowed(if name.starts_with("claude-opus") {
            "deepseek-v4-pro"
        } else {
            "deepseek-flash"
        });
    }
    match name {
        "deepseek-v4-flash" => Cow::Borrowed("deepseek-flash"),
        other => Cow::Borrowed(other),
    }
}

fn json_string(text: &str) -> Vec<u8> {
    serde_json::to_vec(text).unwrap_or_default()
}

fn add_top_level(edits: &mut Edits, body: &[u8], object: &Object<'_>, key: &str, value: &[u8]) {
    if let Some(top) = top_level(body) {
        edits.add_member(body, top, object.members.len(), key, value);
    }
}

/// Sets `user_id` where the format carries it, overwriting the client's.
fn set_user_id(
    edits: &mut Edits,
    body: &[u8],
    object: &Object<'_>,
    place: UserIdPlace,
    id: &str,
) -> Result<(), ApiError> {
    let value = json_string(id);
    match place {
        UserIdPlace::None => {}
        UserIdPlace::TopLevel => match object.get("user_id") {
            Some(raw) => edits.replace(body, raw, value),
            None => add_top_level(edits, body, object, "user_id", &value),
        },
        UserIdPlace::Metadata => match object.get("metadata") {
            None => {
                let mut metadata = b"{\"user_id\":".to_vec();
                metadata.extend_from_slice(&value);
                metadata.push(b'}');
                add_top_level(edits, body, object, "metadata", &metadata);
            }
            Some(raw) if raw.get() == "null" => {
                let mut metadata = b"{\"user_id\":".to_vec();
                metadata.extend_from_slice(&value);
                metadata.push(b'}');
                edits.replace(body, raw, metadata);
            }
            Some(raw) => {
                let inner = Object::parse(raw.get().as_bytes()).map_err(|_| {
                    ApiError::bad_request(
                        "invalid_body",
                        "\"metadata\" must be an object, each field once",
                    )
                })?;
                match inner.get("user_id") {
                    Some(old) => edits.replace(body, old, value),
                    None => {
                        edits.add_member(body, raw.get(), inner.members.len(), "user_id", &value)
                    }
                }
            }
        },
    }
    Ok(())
}

/// The `user_id` DeepSeek gets for a user: see `deepseek.user_id`.
pub fn user_id_for(mode: UserIdMode, secret: &[u8], username: &str) -> Option<String> {
    match mode {
        UserIdMode::Off => None,
        UserIdMode::Username if is_valid_user_id(username) => Some(username.to_owned()),
        UserIdMode::Username | UserIdMode::Pseudonym => Some(pseudonym(secret, username)),
    }
}

/// `[A-Za-z0-9_-]`, 1 to 512 bytes: what DeepSeek accepts.
pub fn is_valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_USER_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A stable, non-reversible id for a username: HMAC-SHA256 keyed with the
/// gateway's JWT secret, so it survives restarts whenever the secret is
/// fixed, and nobody without the secret can tell whose it is.
fn pseudonym(secret: &[u8], username: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut message = b"deepseek_proxy user_id v1\0".to_vec();
    message.extend_from_slice(username.as_bytes());
    let tag = ring::hmac::sign(&key, &message);
    let hex: String = tag.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("dsp-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Alias, Thinking};

    fn models() -> Models {
        let mut models = Models::default();
        models.aliases.insert(
            "deepseek-chat".into(),
            Alias {
                model: "deepseek-flash".into(),
                thinking: Some(Thinking::Disabled),
            },
        );
        models
    }

    fn run(format: Format, body: &str, user_id: Option<&str>) -> Result<Prepared, ApiError> {
        let body = Bytes::copy_from_slice(body.as_bytes());
        let checked = format.check(&body)?;
        prepare(&models(), format, &checked, &body, user_id)
    }

    fn text(p: &Prepared) -> &str {
        std::str::from_utf8(&p.body).expect("utf8")
    }

    #[test]
    fn an_alias_rewrites_the_model_and_sets_thinking_unless_the_client_did() {
        let p = run(
            Format::Chat,
            r#"{"model":"deepseek-chat","messages":[],"n":1e2}"#,
            None,
        )
        .expect("ok");
        assert_eq!(p.served.as_deref(), Some("deepseek-flash"));
        assert_eq!(p.requested.as_deref(), Some("deepseek-chat"));
        assert_eq!(
            text(&p),
            r#"{"model":"deepseek-flash","messages":[],"n":1e2,"thinking":{"type":"disabled"}}"#
        );
        let p = run(
            Format::Chat,
            r#"{"model":"deepseek-chat","thinking":{"type":"enabled"},"messages":[]}"#,
            None,
        )
        .expect("ok");
        assert_eq!(
            text(&p),
            r#"{"model":"deepseek-flash","thinking":{"type":"enabled"},"messages":[]}"#
        );
    }

    #[test]
    fn claude_names_are_served_by_deepseek_models_on_the_anthropic_route_only() {
        let served = |f, m| served_name(f, m).into_owned();
        assert_eq!(
            served(Format::Anthropic, "claude-opus-4-5"),
            "deepseek-v4-pro"
        );
        assert_eq!(
            served(Format::Anthropic, "claude-sonnet-4-5"),
            "deepseek-flash"
        );
        assert_eq!(
            served(Format::Anthropic, "claude-3-5-haiku"),
            "deepseek-flash"
        );
        assert_eq!(served(Format::Chat, "claude-opus-4-5"), "claude-opus-4-5");
        assert_eq!(served(Format::Chat, "deepseek-v4-flash"), "deepseek-flash");
        assert_eq!(served(Format::Chat, "deepseek-v4-pro"), "deepseek-v4-pro");
    }

    #[test]
    fn user_id_is_set_and_overwritten_where_each_format_carries_it() {
        let p = run(
            Format::Chat,
            r#"{"messages":[],"user_id":"someone-else"}"#,
            Some("u1"),
        )
        .expect("ok");
        assert_eq!(text(&p), r#"{"messages":[],"user_id":"u1"}"#);
        let p = run(Format::Responses, r#"{"input":"x"}"#, Some("u1")).expect("ok");
        assert_eq!(text(&p), r#"{"input":"x","user_id":"u1"}"#);
        let p = run(
            Format::Anthropic,
            r#"{"messages":[],"max_tokens":1}"#,
            Some("u1"),
        )
        .expect("ok");
        assert_eq!(
            text(&p),
            r#"{"messages":[],"max_tokens":1,"metadata":{"user_id":"u1"}}"#
        );
        let p = run(
            Format::Anthropic,
            r#"{"messages":[],"metadata":{"user_id":"x","k":1}}"#,
            Some("u1"),
        )
        .expect("ok");
        assert_eq!(
            text(&p),
            r#"{"messages":[],"metadata":{"user_id":"u1","k":1}}"#
        );
        let p = run(
            Format::Anthropic,
            r#"{"messages":[],"metadata":{}}"#,
            Some("u1"),
        )
        .expect("ok");
        assert_eq!(text(&p), r#"{"messages":[],"metadata":{"user_id":"u1"}}"#);
        let p = run(
            Format::Anthropic,
            r#"{"messages":[],"metadata":null}"#,
            Some("u1"),
        )
        .expect("ok");
        assert_eq!(text(&p), r#"{"messages":[],"metadata":{"user_id":"u1"}}"#);
        assert!(run(
            Format::Anthropic,
            r#"{"messages":[],"metadata":"x"}"#,
            Some("u1")
        )
        .is_err());
        assert!(run(
            Format::Anthropic,
            r#"{"messages":[],"metadata":{"user_id":"a","user_id":"b"}}"#,
            Some("u1")
        )
        .is_err());
        let p = run(Format::Search, r#"{"query":"x"}"#, Some("u1")).expect("ok");
        assert_eq!(text(&p), r#"{"query":"x"}"#);
    }

    #[test]
    fn pseudonyms_are_stable_distinct_valid_and_keyed() {
        let a = user_id_for(UserIdMode::Pseudonym, b"secret-one", "alice").expect("id");
        assert_eq!(
            Some(a.clone()),
            user_id_for(UserIdMode::Pseudonym, b"secret-one", "alice")
        );
        assert_ne!(
            Some(a.clone()),
            user_id_for(UserIdMode::Pseudonym, b"secret-one", "bob")
        );
        assert_ne!(
            Some(a.clone()),
            user_id_for(UserIdMode::Pseudonym, b"secret-two", "alice")
        );
        assert!(is_valid_user_id(&a) && !a.contains("alice"));
        assert_eq!(
            user_id_for(UserIdMode::Username, b"k", "alice").as_deref(),
            Some("alice")
        );
        // A username DeepSeek would refuse gets its pseudonym instead.
        let odd = user_id_for(UserIdMode::Username, b"k", "张三@team").expect("id");
        assert!(odd.starts_with("dsp-"));
        assert_eq!(user_id_for(UserIdMode::Off, b"k", "alice"), None);
    }
}
