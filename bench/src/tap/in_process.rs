//! The tap's own cost: `deepseek_proxy::usage::Tap` fed a realistic DeepSeek
//! stream, one event per chunk, many times.

use std::hint::black_box;
use std::time::Instant;

use deepseek_proxy::formats::Format;
use deepseek_proxy::usage::{Tap, Usage};
use serde_json::{json, Value};

use crate::load::Percentiles;

/// DeepSeek's stream for 64 words, one event per chunk: the role chunk, the
/// content chunks, the final chunk with `usage`, then `[DONE]`.
fn deepseek_stream(words: usize) -> Vec<Vec<u8>> {
    let id = "\"id\":\"5f0b6d1c-8a7e-4f53-9c2e-0d4b1a7e6c3f\"";
    let head = format!(
        "{id},\"object\":\"chat.completion.chunk\",\"created\":1764300000,\
         \"model\":\"deepseek-flash\",\"system_fingerprint\":\"fp_8802369eaa_prod0623_fp8_kvcache\""
    );
    let event = |delta: &str, finish: &str, usage: &str| {
        format!(
            "data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\
             \"finish_reason\":{finish}}}]{usage}}}\n\n"
        )
        .into_bytes()
    };
    let mut chunks = vec![event(
        "{\"role\":\"assistant\",\"content\":\"\"}",
        "null",
        "",
    )];
    for i in 0..words {
        let delta = format!("{{\"content\":\"word{i} \"}}");
        chunks.push(event(&delta, "null", ""));
    }
    let usage = ",\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":64,\
        \"total_tokens\":1264,\"prompt_tokens_details\":{\"cached_tokens\":1024},\
        \"prompt_cache_hit_tokens\":1024,\"prompt_cache_miss_tokens\":176,\
        \"completion_tokens_details\":{\"reasoning_tokens\":12}}";
    chunks.push(event("{\"content\":\"\"}", "\"stop\"", usage));
    chunks.push(b"data: [DONE]\n\n".to_vec());
    chunks
}

const EXPECTED_USAGE: Usage = Usage {
    prompt_tokens: 1200,
    completion_tokens: 64,
    cached_tokens: 1024,
    cache_miss_tokens: 176,
    reasoning_tokens: 12,
};

/// The tap's cost, from feeding it whole streams.
pub struct TapCost {
    streams: usize,
    chunks_per_stream: usize,
    mean_ns: f64,
    per_stream: Percentiles,
    /// The final chunk alone: the only one the tap parses as JSON.
    usage_chunk_ns: f64,
    clock_ns: f64,
}

/// Feeds `streams` whole streams, timing each stream; then the usage chunk
/// alone, 1,000 fresh taps per timing.
pub fn tap_cost(streams: usize) -> Result<TapCost, String> {
    let chunks = deepseek_stream(64);
    let feed_all = || {
        let mut tap = Tap::new(Format::Chat, true);
        for chunk in &chunks {
            tap.feed(black_box(chunk));
        }
        tap.finish();
        black_box(tap.usage())
    };
    if feed_all() != Some(EXPECTED_USAGE) {
        return Err("the tap did not read the benchmark stream's usage".into());
    }
    for _ in 0..streams / 10 + 1 {
        feed_all(); // warm-up
    }
    let mut per_chunk = Vec::with_capacity(streams);
    for _ in 0..streams {
        let started = Instant::now();
        feed_all();
        per_chunk.push(started.elapsed().as_nanos() as f64 / chunks.len() as f64);
    }
    let mean_ns = per_chunk.iter().sum::<f64>() / per_chunk.len().max(1) as f64;

    let usage_chunk = &chunks[chunks.len() - 2];
    let reps = 1000;
    let rounds = (streams / 20).max(5);
    let started = Instant::now();
    for _ in 0..rounds * reps {
        let mut tap = Tap::new(Format::Chat, true);
        tap.feed(black_box(usage_chunk));
        black_box(tap.usage());
    }
    let usage_chunk_ns = started.elapsed().as_nanos() as f64 / (rounds * reps) as f64;

    let started = Instant::now();
    for _ in 0..100_000 {
        black_box(Instant::now());
    }
    let clock_ns = started.elapsed().as_nanos() as f64 / 100_000.0;
    Ok(TapCost {
        streams,
        chunks_per_stream: chunks.len(),
        mean_ns,
        per_stream: Percentiles::of(per_chunk),
        usage_chunk_ns,
        clock_ns,
    })
}

impl TapCost {
    pub fn table(&self, gap_ms: u64, added_p50_us: Option<f64>) -> Vec<String> {
        let gap_ns = gap_ms as f64 * 1e6;
        let mut lines = vec![
            "| usage tap in process (`Tap::feed`, one event per chunk) | value |".to_owned(),
            "|---|---|".to_owned(),
            format!(
                "| per chunk, mean over {} streams of {} chunks | {:.0} ns |",
                self.streams, self.chunks_per_stream, self.mean_ns
            ),
            format!(
                "| per chunk, p99 (max) over those streams | {:.0} ns ({:.0} ns) |",
                self.per_stream.get(1),
                self.per_stream.get(2)
            ),
            format!(
                "| the final chunk with `usage` alone (JSON parse) | {:.0} ns |",
                self.usage_chunk_ns
            ),
            format!(
                "| mean per chunk, as a share of the {gap_ms} ms frame gap | {:.5}% |",
                100.0 * self.mean_ns / gap_ns
            ),
        ];
        if let Some(added) = added_p50_us.filter(|a| *a > 0.0) {
            lines.push(format!(
                "| mean per chunk, as a share of the memory gateway's added per-frame latency p50 ({added:.1} µs) | {:.2}% |",
                100.0 * self.mean_ns / (added * 1e3)
            ));
        }
        lines.push(format!(
            "| (one `Instant::now()`, for scale) | {:.0} ns |",
            self.clock_ns
        ));
        lines
    }

    pub fn to_json(&self) -> Value {
        json!({"streams": self.streams, "chunks_per_stream": self.chunks_per_stream,
               "mean_per_chunk": self.mean_ns,
               "p99_per_chunk_over_streams": self.per_stream.get(1),
               "max_per_chunk_over_streams": self.per_stream.get(2),
               "usage_chunk": self.usage_chunk_ns, "instant_now": self.clock_ns})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmark_stream_carries_the_expected_usage() {
        let mut tap = Tap::new(Format::Chat, true);
        for chunk in deepseek_stream(64) {
            tap.feed(&chunk);
        }
        tap.finish();
        assert_eq!(tap.usage(), Some(EXPECTED_USAGE));
    }
}
