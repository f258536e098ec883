//! The wire formats the gateway speaks, each described once.
//!
//! A route names its [`Format`]; the one relay pipeline (`proxy`) asks the
//! format how to check a body, where the model, `stream`, the output cap and
//! `user_id` sit, how errors are worded for that format's SDKs, what event
//! ends a stream that failed, and where DeepSeek reports usage. Nothing is
//! translated between formats: a body is read, and only the fields an issue
//! names are rewritten (see `proxy::prepare`).

pub mod anthropic;
pub mod chat;
pub mod json;
pub mod responses;

use std::borrow::Cow;

use crate::error::ApiError;
use crate::usage::Usage;
use json::Object;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Chat Completions (and chat prefix completion under `/beta`).
    Chat,
    /// FIM completion, `/beta/completions`: a `prompt`, no thinking.
    Fim,
    /// The Responses API (Codex).
    Responses,
    /// Anthropic Messages (Claude Code).
    Anthropic,
    /// Web search (`/v1/tools/search`, a `query`) and fetch
    /// (`/v1/tools/fetch`, a `url`): no tokens; DeepSeek bills each
    /// successful call, so the ledger marks a call billable only when it
    /// answered 200 with content, and quotas charge it no tokens.
    Search,
    Fetch,
}

/// How errors are worded for a format's SDKs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `{"error":{"message","type","code"}}`.
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`.
    Anthropic,
}

/// Where a format carries the end user's `user_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserIdPlace {
    TopLevel,
    /// `metadata.user_id` (Anthropic).
    Metadata,
    None,
}

/// What the gateway reads from a request body.
pub struct Checked<'a> {
    pub object: Object<'a>,
    pub model: Option<Cow<'a, str>>,
    pub stream: bool,
    /// The most output tokens the request may produce, if it says.
    pub max_tokens: Option<u64>,
}

impl Format {
    /// The name recorded in the ledger and the logs.
    pub fn name(self) -> &'static str {
        match self {
            Format::Chat => "chat",
            Format::Fim => "fim",
            Format::Responses => "responses",
            Format::Anthropic => "anthropic",
            Format::Search | Format::Fetch => "tools",
        }
    }

    pub fn dialect(self) -> Dialect {
        match self {
            Format::Anthropic => Dialect::Anthropic,
            _ => Dialect::OpenAi,
        }
    }

    /// Whether DeepSeek takes `thinking` on this format.
    pub fn has_thinking(self) -> bool {
        matches!(self, Format::Chat | Format::Responses | Format::Anthropic)
    }

    pub fn user_id_place(self) -> UserIdPlace {
        match self {
            Format::Chat | Format::Fim | Format::Responses => UserIdPlace::TopLevel,
            Format::Anthropic => UserIdPlace::Metadata,
            Format::Search | Format::Fetch => UserIdPlace::None,
        }
    }

    /// Parses and checks a request body; a body that is not what the route
    /// needs is refused with 400 and never forwarded.
    pub fn check(self, body: &[u8]) -> Result<Checked<'_>, ApiError> {
        let expected = self.expected();
        let object = Object::parse(body).map_err(|e| e.into_api_error(expected))?;
        let shape_ok = match self {
            Format::Chat => object.is_array("messages"),
            Format::Fim => object.get("prompt").is_some(),
            Format::Responses => object.is_string("input") || object.is_array("input"),
            Format::Anthropic => object.is_array("messages"),
            Format::Search => object.is_string("query"),
            Format::Fetch => object.is_string("url"),
        };
        if !shape_ok {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!("the request body must be {expected}"),
            ));
        }
        let model = object.string("model").map_err(|json::WrongType| {
            ApiError::bad_request("invalid_body", "\"model\" must be a string")
        })?;
        let max_tokens = match self {
            Format::Chat => object
                .count("max_tokens")
                .or_else(|| object.count("max_completion_tokens")),
            Format::Fim | Format::Anthropic => object.count("max_tokens"),
            Format::Responses => object.count("max_output_tokens"),
            Format::Search | Format::Fetch => Some(0),
        };
        let stream = object.flag("stream").map_err(|json::WrongType| {
            ApiError::bad_request("invalid_body", "\"stream\" must be true or false")
        })?;
        Ok(Checked {
            stream,
            model,
            max_tokens,
            object,
        })
    }

    fn expected(self) -> &'static str {
        match self {
            Format::Chat | Format::Anthropic => "a JSON object with a \"messages\" array",
            Format::Fim => "a JSON object with a \"prompt\"",
            Format::Responses => "a JSON object with an \"input\" (a string or an array)",
            Format::Search => "a JSON object with a \"query\" string",
            Format::Fetch => "a JSON object with a \"url\" string",
        }
    }

    /// The last event of a stream that failed after it started, in the
    /// format's own shape (never a fabricated ending). `sequence` is the
    /// next Responses sequence number.
    pub fn stream_error_event(self, code: &str, message: &str, sequence: u64) -> Vec<u8> {
        match self {
            Format::Anthropic => anthropic::stream_error_event(code, message),
            Format::Responses => responses::stream_error_event(code, message, sequence),
            _ => chat::stream_error_event(code, message),
        }
    }

    /// Reads usage from one `data:` payload of an event stream. Returns
    /// `Some` when this event carries DeepSeek's final count.
    pub fn read_event(self, data: &[u8], partial: &mut Usage) -> Option<Usage> {
        match self {
            Format::Anthropic => anthropic::read_event(data, partial),
            Format::Responses => responses::read_event(data),
            Format::Search | Format::Fetch => None,
            Format::Chat | Format::Fim => chat::read_event(data),
        }
    }

    /// Reads usage from a whole JSON answer.
    pub fn read_json(self, body: &[u8]) -> Option<Usage> {
        match self {
            Format::Anthropic => anthropic::read_json(body),
            Format::Responses => responses::read_json(body),
            Format::Search | Format::Fetch => None,
            Format::Chat | Format::Fim => chat::read_json(body),
        }
    }

    /// The JSON keys whose string values are generated text, counted for an
    /// estimate when a stream ends before its usage.
    pub fn text_keys(self) -> &'static [&'static [u8]] {
        match self {
            // `content":"` also matches `reasoning_content":"`.
            Format::Chat | Format::Fim => &[b"content\":\"", b"\"text\":\""],
            Format::Responses => &[b"\"delta\":\""],
            Format::Anthropic => &[b"\"text\":\"", b"\"thinking\":\""],
            Format::Search | Format::Fetch => &[],
        }
    }

    /// Whether DeepSeek bills this format by tokens (not per call).
    pub fn has_tokens(self) -> bool {
        !matches!(self, Format::Search | Format::Fetch)
    }

    /// Whether a stream of this format ends with `data: [DONE]`.
    pub fn ends_with_done(self) -> bool {
        matches!(self, Format::Chat | Format::Fim)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_needs_its_own_field() {
        assert!(Format::Chat.check(br#"{"messages":[]}"#).is_ok());
        assert!(Format::Chat.check(br#"{"messages":"hi"}"#).is_err());
        assert!(Format::Responses.check(br#"{"input":"hi"}"#).is_ok());
        assert!(Format::Responses.check(br#"{"input":[]}"#).is_ok());
        assert!(Format::Responses.check(br#"{"input":1}"#).is_err());
        assert!(Format::Responses.check(br#"{"messages":[]}"#).is_err());
        assert!(Format::Anthropic
            .check(br#"{"messages":[],"max_tokens":5}"#)
            .is_ok());
        assert!(Format::Anthropic.check(br#"{"input":"x"}"#).is_err());
        assert!(Format::Search.check(br#"{"query":"rust"}"#).is_ok());
        assert!(Format::Fetch.check(br#"{"url":"https://a"}"#).is_ok());
        assert!(Format::Search.check(br#"{"url":"https://a"}"#).is_err());
        assert!(Format::Fetch.check(br#"{"query":"rust"}"#).is_err());
        assert!(Format::Fim.check(br#"{"prompt":"def f("}"#).is_ok());
        for format in [
            Format::Chat,
            Format::Responses,
            Format::Anthropic,
            Format::Search,
            Format::Fetch,
        ] {
            for bad in [&b"[]"[..], b"null", b"", b"{", b"[[], \"x\"]"] {
                let err = format.check(bad).err().expect("refused");
                assert_eq!(err.status(), 400);
            }
        }
    }

    #[test]
    fn the_output_cap_is_read_per_format() {
        let cap = |f: Format, b: &[u8]| f.check(b).expect("valid").max_tokens;
        assert_eq!(
            cap(Format::Chat, br#"{"messages":[],"max_tokens":9}"#),
            Some(9)
        );
        assert_eq!(
            cap(
                Format::Chat,
                br#"{"messages":[],"max_completion_tokens":7}"#
            ),
            Some(7)
        );
        assert_eq!(
            cap(Format::Responses, br#"{"input":"x","max_output_tokens":5}"#),
            Some(5)
        );
        assert_eq!(
            cap(Format::Anthropic, br#"{"messages":[],"max_tokens":3}"#),
            Some(3)
        );
        assert_eq!(
            cap(Format::Chat, br#"{"messages":[],"max_tokens":-1}"#),
            None
        );
        assert_eq!(
            cap(Format::Chat, br#"{"messages":[],"max_tokens":"x"}"#),
            None
        );
    }

    #[test]
    fn a_model_that_is_not_a_string_is_refused() {
        assert!(Format::Chat.check(br#"{"messages":[],"model":5}"#).is_err());
        let checked = Format::Chat
            .check(br#"{"messages":[],"model":"deepseek-\u0066lash"}"#)
            .expect("valid");
        assert_eq!(checked.model.as_deref(), Some("deepseek-flash"));
    }
}
