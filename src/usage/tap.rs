//! A side tap on the response bytes that finds DeepSeek's `usage`.
//!
//! The relay hands the tap each chunk on the poll after it gave the chunk to
//! hyper (see `proxy::relay`), so the tap never changes, copies or holds
//! back what the client gets; its cost is one scan of each chunk. For event streams it splits lines itself (a line may be cut
//! across chunks, and end in CRLF), skips comments (`: keep-alive`), stops at
//! `data: [DONE]`, and parses only the `data:` events that carry `"usage"`
//! (DeepSeek sends it on the final chunk). It also counts the characters of
//! `content` and `reasoning_content` streamed so far, for an estimate when a
//! client aborts. For a JSON answer it keeps the body (up to a cap) and reads
//! `usage` at the end, after DeepSeek's leading keep-alive blank lines.

use crate::formats::{responses, Format};

/// The most a non-stream body is kept for its `usage` (larger ones are not
/// parsed: their usage is then unknown, never guessed as zero).
const MAX_JSON_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Longest SSE line kept while waiting for its end.
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Token counts as DeepSeek reports them, in any format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// All input tokens, cache hits included.
    pub prompt_tokens: u64,
    /// All output tokens, reasoning included.
    pub completion_tokens: u64,
    /// Input tokens served from DeepSeek's cache (about 1/50 of the price).
    pub cached_tokens: u64,
    /// Input tokens that missed the cache.
    pub cache_miss_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Input tokens that missed the cache: the prompt less its hits (the
    /// one rule for pricing, metrics and the ledger's totals).
    pub fn cache_misses(&self) -> u64 {
        self.prompt_tokens - self.cached_tokens.min(self.prompt_tokens)
    }
}

#[derive(Debug)]
pub struct Tap {
    format: Format,
    event_stream: bool,
    /// The current, unfinished line (event streams), or the body (JSON).
    pending: Vec<u8>,
    overflowed: bool,
    done: bool,
    usage: Option<Usage>,
    /// Counts seen so far in a format that reports them in parts.
    partial: Usage,
    /// The last Responses `sequence_number` relayed.
    sequence: Option<u64>,
    /// Characters streamed in `content`/`reasoning_content`: (ASCII, other).
    streamed: (u64, u64),
}

impl Tap {
    pub fn new(format: Format, event_stream: bool) -> Self {
        Self {
            format,
            event_stream,
            pending: Vec::new(),
            overflowed: false,
            done: false,
            usage: None,
            partial: Usage::default(),
            sequence: None,
            streamed: (0, 0),
        }
    }

    /// Looks at the next chunk of the response.
    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.event_stream {
            if self.pending.len() + chunk.len() > MAX_JSON_BODY_BYTES {
                self.overflowed = true;
                self.pending = Vec::new();
            } else if !self.overflowed {
                self.pending.extend_from_slice(chunk);
            }
            return;
        }
        let mut rest = chunk;
        while !self.done {
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    if self.pending.is_empty() {
                        self.line(&rest[..i]);
                    } else {
                        self.pending.extend_from_slice(&rest[..i]);
                        let line = std::mem::take(&mut self.pending);
                        self.line(&line);
                    }
                    rest = &rest[i + 1..];
                }
                None => {
                    if self.pending.len() + rest.len() <= MAX_LINE_BYTES {
                        self.pending.extend_from_slice(rest);
                    }
                    return;
                }
            }
        }
    }

    /// The body ended: for a JSON answer, read its `usage` now.
    pub fn finish(&mut self) {
        if self.event_stream {
            let line = std::mem::take(&mut self.pending);
            if !line.is_empty() {
                self.line(&line);
            }
        } else if !self.overflowed {
            // `finish` may run twice (the relay's end, then its drop): only
            // a body that reads as usage changes what was read.
            let body = std::mem::take(&mut self.pending);
            if let Some(usage) = self.format.read_json(&body) {
                self.usage = Some(usage);
            }
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return; // comments, blank lines, other fields
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" && self.format.ends_with_done() {
            self.done = true;
            return;
        }
        for key in self.format.text_keys() {
            let (ascii, other) = text_chars(data, key);
            self.streamed.0 += ascii;
            self.streamed.1 += other;
        }
        if self.format == Format::Responses {
            self.sequence = responses::sequence_number(data).or(self.sequence);
        }
        if let Some(usage) = self.format.read_event(data, &mut self.partial) {
            self.usage = Some(usage);
        }
    }

    /// The usage DeepSeek reported, if it did.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The sequence number for an event after the last one relayed.
    pub fn next_sequence(&self) -> u64 {
        self.sequence.map_or(0, |n| n.saturating_add(1))
    }

    /// Characters of generated text streamed so far.
    pub fn streamed_chars(&self) -> u64 {
        self.streamed.0 + self.streamed.1
    }

    /// An estimate of the completion tokens streamed so far, for a request
    /// that ended before DeepSeek reported its usage: DeepSeek's published
    /// rule of thumb, 0.3 token per English character and 0.6 per Chinese
    /// one. Always reported as an estimate, never as a measurement.
    pub fn estimated_completion_tokens(&self) -> u64 {
        let (ascii, other) = self.streamed;
        estimate(ascii, other)
    }
}

/// DeepSeek's rule of thumb: 0.3 token per ASCII character, 0.6 per other.
fn estimate(ascii: u64, other: u64) -> u64 {
    (ascii * 3 + other * 6).div_ceil(10)
}

/// The same estimate for a whole text (a request body, to charge the
/// prompt of a request that ended before DeepSeek reported its usage).
pub fn estimate_tokens(text: &[u8]) -> u64 {
    let ascii = text.iter().filter(|b| b.is_ascii()).count() as u64;
    // Each non-ASCII character has exactly one leading byte (0b11xxxxxx).
    let other = text.iter().filter(|&&b| b >= 0xC0).count() as u64;
    estimate(ascii, other)
}

/// Characters in the string values of `key` (`"content":"` and the like)
/// in one event, counted without a full parse (an escape counts as one
/// character). Used only for estimates.
fn text_chars(data: &[u8], key: &[u8]) -> (u64, u64) {
    let (mut ascii, mut other) = (0, 0);
    let mut rest = data;
    while let Some(i) = find(rest, key) {
        rest = &rest[i + key.len()..];
        let mut escaped = false;
        let mut end = rest.len();
        for (j, &b) in rest.iter().enumerate() {
            if escaped {
                escaped = false;
                continue;
            }
            match b {
                b'\\' => {
                    escaped = true;
                    ascii += 1;
                }
                b'"' => {
                    end = j;
                    break;
                }
                // Count UTF-8 characters, not bytes.
                b if b.is_ascii() => ascii += 1,
                b if b & 0xC0 != 0x80 => other += 1,
                _ => {}
            }
        }
        rest = &rest[end.min(rest.len())..];
    }
    (ascii, other)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = ": keep-alive\n\n\
        data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
        data: {\"choices\":[{\"delta\":{\"content\":\"你好\"}}]}\n\n\
        data: {\"choices\":[{\"delta\":{\"content\":\" a\\\"b\"}}]}\n\n\
        data: {\"choices\":[{\"delta\":{\"content\":\"\"},\"finish_reason\":\"stop\"}],\
        \"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7,\"total_tokens\":18,\
        \"prompt_cache_hit_tokens\":3,\"completion_tokens_details\":{\"reasoning_tokens\":2}}}\n\n\
        data: [DONE]\n\n";

    fn expected() -> Usage {
        Usage {
            prompt_tokens: 11,
            completion_tokens: 7,
            cached_tokens: 3,
            cache_miss_tokens: 8,
            reasoning_tokens: 2,
        }
    }

    #[test]
    fn usage_is_read_from_the_final_chunk() {
        let mut tap = Tap::new(Format::Chat, true);
        tap.feed(STREAM.as_bytes());
        tap.finish();
        assert_eq!(tap.usage(), Some(expected()));
        assert_eq!(tap.streamed_chars(), 2 + 4);
        // 2 Chinese characters (0.6 each) and 4 ASCII ones (0.3 each).
        assert_eq!(tap.estimated_completion_tokens(), 3);
        assert_eq!(estimate_tokens("中文ab".as_bytes()), 2);
        assert_eq!(estimate_tokens(b"abcdefghij"), 3);
    }

    #[test]
    fn crlf_lines_and_byte_by_byte_chunks_work() {
        let crlf = STREAM.replace('\n', "\r\n");
        let mut tap = Tap::new(Format::Chat, true);
        for b in crlf.as_bytes() {
            tap.feed(std::slice::from_ref(b));
        }
        tap.finish();
        assert_eq!(tap.usage(), Some(expected()));
    }

    #[test]
    fn nothing_after_done_is_read() {
        let mut tap = Tap::new(Format::Chat, true);
        tap.feed(b"data: [DONE]\n\ndata: {\"usage\":{\"prompt_tokens\":99}}\n\n");
        tap.finish();
        assert_eq!(tap.usage(), None);
    }

    #[test]
    fn a_json_answer_after_keep_alive_blank_lines_is_read() {
        let body = "\n\n\n{\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}";
        let mut tap = Tap::new(Format::Chat, false);
        let (a, b) = body.split_at(9);
        tap.feed(a.as_bytes());
        tap.feed(b.as_bytes());
        tap.finish();
        let usage = tap.usage().expect("usage");
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (5, 6));
    }

    #[test]
    fn finishing_twice_keeps_the_usage_read_the_first_time() {
        let mut tap = Tap::new(Format::Chat, false);
        tap.feed(b"{\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}");
        tap.finish();
        tap.finish();
        assert_eq!(tap.usage().map(|u| u.prompt_tokens), Some(5));
    }

    #[test]
    fn a_cut_off_json_answer_has_no_usage_rather_than_zero() {
        let mut tap = Tap::new(Format::Chat, false);
        tap.feed(b"{\"usage\":{\"prompt_tokens\":5,");
        tap.finish();
        assert_eq!(tap.usage(), None);
    }
}
