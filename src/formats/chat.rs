//! Chat Completions (and FIM): DeepSeek's OpenAI-compatible format.
//!
//! Usage sits in `usage` of a JSON answer, and of a stream's last chunk
//! before `data: [DONE]`. A failed stream ends with `data: {"error":...}`.

use serde::Deserialize;

use crate::error::error_json;
use crate::usage::Usage;

#[derive(Deserialize)]
struct WithUsage {
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
    #[serde(default)]
    prompt_cache_miss_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: u64,
}

#[derive(Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: u64,
}

impl From<RawUsage> for Usage {
    fn from(u: RawUsage) -> Self {
        // DeepSeek's own fields first; OpenAI's `cached_tokens` otherwise.
        let hit = u
            .prompt_cache_hit_tokens
            .or(u.prompt_tokens_details.map(|d| d.cached_tokens))
            .unwrap_or(0);
        let miss = u
            .prompt_cache_miss_tokens
            .unwrap_or(u.prompt_tokens.saturating_sub(hit));
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: hit,
            cache_miss_tokens: miss,
            reasoning_tokens: u
                .completion_tokens_details
                .map_or(0, |d| d.reasoning_tokens),
        }
    }
}

pub fn read_event(data: &[u8]) -> Option<Usage> {
    if !super::contains(data, b"\"usage\"") {
        return None;
    }
    serde_json::from_slice::<WithUsage>(data)
        .ok()?
        .usage
        .map(Usage::from)
}

pub fn read_json(body: &[u8]) -> Option<Usage> {
    super::json::usage::<RawUsage>(body).map(Usage::from)
}

pub fn stream_error_event(code: &str, message: &str) -> Vec<u8> {
    let mut event = b"data: ".to_vec();
    event.extend_from_slice(&error_json(message, "api_error", code));
    event.extend_from_slice(b"\n\n");
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_hits_and_misses_are_read() {
        let usage = read_json(
            br#"{"usage":{"prompt_tokens":10,"completion_tokens":3,
                "prompt_cache_hit_tokens":6,"prompt_cache_miss_tokens":4,
                "completion_tokens_details":{"reasoning_tokens":2}}}"#,
        )
        .expect("usage");
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 10,
                completion_tokens: 3,
                cached_tokens: 6,
                cache_miss_tokens: 4,
                reasoning_tokens: 2
            }
        );
        let openai = read_event(
            br#"{"usage":{"prompt_tokens":10,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":8}}}"#,
        )
        .expect("usage");
        assert_eq!((openai.cached_tokens, openai.cache_miss_tokens), (8, 2));
    }
}
