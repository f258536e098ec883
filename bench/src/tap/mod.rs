//! Does the usage tap delay chunks? Measured two ways, in the same run:
//!
//! * **End to end.** The fake stamps each content chunk with its send time
//!   (`"_fake": {"stamp": true}`); the client notes when it reads the chunk.
//!   Per-frame one-way latency, direct to the fake against through each
//!   gateway, over paced streams. Its difference is the whole relay hop, the
//!   tap included.
//! * **In process.** `deepseek_proxy::usage::Tap` fed a realistic DeepSeek
//!   stream one event per chunk, many times: the tap's own cost per chunk.

use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::json;

use crate::load::{self, Percentiles, Target};
use crate::procs::Gateway;
use crate::{row, Plan, Report};

mod in_process;

/// Runs both parts and adds them to the report.
pub async fn measure(
    plan: &Plan,
    direct: &Target,
    gateways: &[Gateway],
    report: &mut Report,
) -> Result<(), String> {
    let (direct_us, gateway_us) = frame_latencies(plan, direct, gateways).await?;
    let expected = plan.tap_rounds * plan.tap_streams * plan.frames;
    let direct_n = direct_us.len();
    let direct_lat = Percentiles::of(direct_us);
    let gateway_lat: Vec<(&str, usize, Percentiles)> = gateways
        .iter()
        .zip(gateway_us)
        .map(|(gw, samples)| (gw.name.as_str(), samples.len(), Percentiles::of(samples)))
        .collect();

    let rounds = match plan.tap_rounds {
        1 => "1 round".to_owned(),
        r => format!("{r} rounds"),
    };
    let label = format!(
        "{} streams × {} frames {} ms apart, {rounds}",
        plan.tap_streams, plan.frames, plan.frame_gap_ms
    );
    let names: Vec<&str> = gateway_lat.iter().map(|(name, ..)| *name).collect();
    let mut table = vec![
        format!("| usage tap | direct to fake | {} |", names.join(" | ")),
        format!("|---|---|{}", "---|".repeat(names.len())),
    ];
    for (stat, pick) in [("p50", 0usize), ("p99", 1), ("max", 2)] {
        let d = direct_lat.get(pick);
        let cells: Vec<String> = gateway_lat
            .iter()
            .map(|(_, _, l)| format!("{:.1} µs ({:+.1})", l.get(pick), l.get(pick) - d))
            .collect();
        table.push(row(
            &format!("per-frame one-way latency {stat}, {label}"),
            &format!("{d:.1} µs"),
            &cells,
        ));
    }
    let counts: Vec<String> = gateway_lat
        .iter()
        .map(|(_, n, _)| format!("{n}/{expected}"))
        .collect();
    table.push(row(
        "stamped frames received",
        &format!("{direct_n}/{expected}"),
        &counts,
    ));
    report.others.push(table);
    let with_count = |l: &Percentiles, n: usize| {
        let mut v = l.to_json();
        v["frames"] = json!(n);
        v["expected"] = json!(expected);
        v
    };
    let results = &mut report.results;
    results.insert(
        "frame_latency_direct_us".into(),
        with_count(&direct_lat, direct_n),
    );
    for (name, n, l) in &gateway_lat {
        results.insert(format!("frame_latency_{name}_us"), with_count(l, *n));
    }

    let cost = in_process::tap_cost(plan.tap_feeds)?;
    let memory_added_p50_us = gateway_lat
        .iter()
        .find(|(name, _, _)| *name == "memory")
        .map(|(_, _, l)| l.get(0) - direct_lat.get(0));
    report
        .others
        .push(cost.table(plan.frame_gap_ms, memory_added_p50_us));
    report.results.insert("tap_feed_ns".into(), cost.to_json());
    Ok(())
}

/// Per-frame latencies (µs) direct, then through each gateway, over
/// `tap_rounds` rounds. Rounds alternate the targets' order, so that none
/// always goes first on a machine whose load drifts.
async fn frame_latencies(
    plan: &Plan,
    direct: &Target,
    gateways: &[Gateway],
) -> Result<(Vec<f64>, Vec<Vec<f64>>), String> {
    let (s, frames, gap) = (plan.tap_streams, plan.frames, plan.frame_gap_ms);
    let mut direct_us = Vec::new();
    let mut gateway_us = vec![Vec::new(); gateways.len()];
    for round in 0..plan.tap_rounds {
        // None is direct to the fake, Some(g) the gateway at index g.
        let mut order: Vec<Option<usize>> = std::iter::once(None)
            .chain((0..gateways.len()).map(Some))
            .collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for pick in order {
            match pick {
                None => direct_us.extend(stamped_streams(direct, &[], s, frames, gap).await?),
                Some(g) => {
                    let gw = &gateways[g];
                    let got = stamped_streams(&gw.target, &gw.tokens, s, frames, gap).await?;
                    gateway_us[g].extend(got);
                }
            }
        }
    }
    Ok((direct_us, gateway_us))
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The send time in a stamped event line (`..."content":"t=<µs> w "...`).
fn stamp_of(line: &[u8]) -> Option<u64> {
    let data = line.strip_prefix(b"data: ")?;
    let at = data.windows(3).position(|w| w == b"\"t=")? + 3;
    let digits = &data[at..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// `s` concurrent stamped streams, each with its own token: the one-way
/// latency of every content frame received, in microseconds.
async fn stamped_streams(
    target: &Target,
    tokens: &[String],
    s: usize,
    frames: usize,
    gap_ms: u64,
) -> Result<Vec<f64>, String> {
    let http = load::client(s)?;
    let url = target.chat_url();
    let mut body = load::small_body(true);
    body["_fake"] = json!({"chunks": frames, "chunk_delay_ms": gap_ms,
                           "reply": vec!["w"; frames].join(" "), "stamp": true});
    let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    let tasks = (0..s).map(|i| {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        let token = tokens.get(i % tokens.len().max(1)).cloned();
        let bearer = target.bearer(token.as_deref()).to_owned();
        async move {
            let response = http
                .post(&url)
                .bearer_auth(bearer)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("stamped stream got {}", response.status()));
            }
            let mut chunks = response.bytes_stream();
            let (mut pending, mut latencies) = (Vec::new(), Vec::with_capacity(frames));
            while let Some(Ok(chunk)) = chunks.next().await {
                // First the clock, then the parsing.
                let received = now_micros();
                // A chunk may hold several events, or end inside one: only
                // whole lines are read, each timed by the chunk completing it.
                pending.extend_from_slice(&chunk);
                let mut start = 0;
                while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
                    if let Some(sent) = stamp_of(&pending[start..start + end]) {
                        latencies.push(received as f64 - sent as f64);
                    }
                    start += end + 1;
                }
                pending.drain(..start);
            }
            Ok(latencies)
        }
    });
    let mut all = Vec::with_capacity(s * frames);
    for result in futures_util::future::join_all(tasks).await {
        all.extend(result?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_read_from_event_lines_only() {
        let line = br#"data: {"choices":[{"delta":{"content":"t=1764300000123456 w "}}]}"#;
        assert_eq!(stamp_of(line), Some(1_764_300_000_123_456));
        assert_eq!(stamp_of(br#"data: {"content":"w"}"#), None);
        assert_eq!(stamp_of(b": keep-alive"), None);
    }
}
