//! `/metrics`: Prometheus text on its own listener, with the counters the
//! gateway promises, and nothing secret in it.

mod common;

use std::collections::HashMap;

use common::{chat_body, chat_body_with, spawn_app_with, ADMIN};
use serde_json::json;

/// A strict reader of the Prometheus text format: every sample line is
/// `name{labels} value`, every name has HELP and TYPE. Returns samples by
/// their full `name{labels}` text.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().expect("a name").to_owned();
            let kind = parts.next().expect("a type");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name);
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("a number in {line}"));
        let name = series.split('{').next().expect("name");
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            typed.contains(name) || typed.contains(base),
            "no TYPE for {line}"
        );
        if let Some(labels) = series.split_once('{').map(|(_, l)| l) {
            assert!(labels.ends_with('}'), "{line}");
            for pair in labels
                .trim_end_matches('}')
                .split("\",")
                .filter(|p| !p.is_empty())
            {
                let (k, v) = pair.split_once('=').expect("label=value");
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(v.starts_with('"'), "{line}");
            }
        }
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// Scrapes until `done` holds (up to 5 s), then returns the text and its
/// samples. A request's counters are updated just after its last byte is
/// sent, so a scrape that follows at once may not see them yet.
async fn scrape_when(
    http: &reqwest::Client,
    url: &str,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> (String, HashMap<String, f64>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let response = http.get(url).send().await.expect("scrape");
        assert_eq!(response.status(), 200);
        let text = response.text().await.expect("text");
        let samples = parse(&text);
        if done(&samples) || std::time::Instant::now() > deadline {
            return (text, samples);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_count_requests_rejections_errors_and_tokens_without_secrets() {
    let app = spawn_app_with(|s| s.server_extra = "metrics_addr = \"127.0.0.1:0\"".into()).await;
    let metrics_url = format!(
        "http://{}/metrics",
        app.metrics_addr.expect("metrics listener")
    );
    let token = app.token(ADMIN).await;

    // One streamed answer, one refused as busy, one upstream failure.
    let slow = chat_body_with(true, json!({"chunks": 3, "chunk_delay_ms": 100}));
    let running = app.chat(&token, &slow).await;
    assert_eq!(app.chat(&token, &chat_body(false)).await.status(), 429);
    let _ = running.bytes().await;
    let failing = chat_body_with(false, json!({"fail": {"status": 500}}));
    assert_eq!(app.chat(&token, &failing).await.status(), 502);
    assert_eq!(app.login("admin", "wrong").await.status(), 401);

    let p = "deepseek_proxy_";
    let login =
        format!("{p}requests_total{{code=\"invalid_credentials\",route=\"login\",status=\"401\"}}");
    let (text, samples) = scrape_when(&app.http, &metrics_url, |s| s.contains_key(&login)).await;
    let get = |series: &str| {
        samples
            .get(series)
            .copied()
            .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
    };

    assert_eq!(
        get(&format!(
            "{p}requests_total{{code=\"\",route=\"chat\",status=\"200\"}}"
        )),
        1.0
    );
    assert_eq!(
        get(&format!("{p}rejected_total{{reason=\"token_busy\"}}")),
        1.0
    );
    assert_eq!(
        get(&format!(
            "{p}upstream_errors_total{{kind=\"upstream_error\"}}"
        )),
        1.0
    );
    assert_eq!(
        get(&format!(
            "{p}requests_total{{code=\"invalid_credentials\",route=\"login\",status=\"401\"}}"
        )),
        1.0
    );
    assert_eq!(
        get(&format!(
            "{p}tokens_total{{kind=\"prompt\",model=\"deepseek-flash\",user=\"admin\"}}"
        )),
        11.0
    );
    assert!(
        get(&format!(
            "{p}request_duration_seconds_count{{route=\"chat\"}}"
        )) >= 3.0
    );
    assert!(get(&format!("{p}upstream_ttfb_seconds_count{{route=\"chat\"}}")) >= 1.0);
    // The gateway's own time: observed for the request DeepSeek answered
    // (the 500 never became a relayed response), and small.
    assert_eq!(
        get(&format!(
            "{p}gateway_overhead_seconds_count{{route=\"chat\"}}"
        )),
        1.0
    );
    let overhead = get(&format!(
        "{p}gateway_overhead_seconds_sum{{route=\"chat\"}}"
    ));
    assert!(
        overhead > 0.0 && overhead < 0.5,
        "overhead {overhead} s excludes DeepSeek's time"
    );
    assert_eq!(get(&format!("{p}in_flight_requests")), 0.0);
    assert_eq!(get(&format!("{p}ledger_dropped_rows")), 0.0);
    let _ = get(&format!("{p}ledger_queue_depth"));

    assert!(!text.contains(&token), "no token in metrics");
    assert!(!text.contains(&app.api_key), "no key in metrics");
    let jti = token.split('.').nth(1).unwrap_or_default();
    assert!(!text.contains(jti));

    // Not on the public listener.
    let public = app.http.get(app.url("/metrics")).send().await.expect("req");
    assert_eq!(public.status(), 404);
}

#[tokio::test]
async fn metrics_count_every_format_by_route_and_tokens_by_the_served_model() {
    let app = spawn_app_with(|s| s.server_extra = "metrics_addr = \"127.0.0.1:0\"".into()).await;
    let metrics_url = format!(
        "http://{}/metrics",
        app.metrics_addr.expect("metrics listener")
    );
    let token = app.token(ADMIN).await;
    let post = |path: &'static str, body: serde_json::Value| {
        let request = app.http.post(app.url(path)).bearer_auth(&token).json(&body);
        async move {
            let response = request.send().await.expect("request");
            let status = response.status();
            let _ = response.bytes().await;
            status
        }
    };
    let no_thinking = json!({"type": "disabled"});
    let answers = [
        post(
            "/v1/responses",
            json!({"model": "deepseek-flash", "input": "hi", "thinking": no_thinking}),
        )
        .await,
        post(
            "/v1/responses",
            json!({"model": "deepseek-flash", "input": "hi", "stream": true, "thinking": no_thinking}),
        )
        .await,
        post(
            "/anthropic/v1/messages",
            json!({"model": "claude-opus-4-5", "max_tokens": 50, "thinking": no_thinking,
                   "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await,
        post("/v1/tools/search", json!({"query": "deepseek"})).await,
        post("/v1/tools/fetch", json!({"url": "https://api.deepseek.com"})).await,
    ];
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");

    let fetch = "deepseek_proxy_requests_total{code=\"\",route=\"tool_fetch\",status=\"200\"}";
    let (text, samples) = scrape_when(&app.http, &metrics_url, |s| s.contains_key(fetch)).await;
    let get = |series: &str| {
        samples
            .get(series)
            .copied()
            .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
    };
    let p = "deepseek_proxy_";
    for (route, n) in [
        ("responses", 2.0),
        ("messages", 1.0),
        ("tool_search", 1.0),
        ("tool_fetch", 1.0),
    ] {
        let series = format!("{p}requests_total{{code=\"\",route=\"{route}\",status=\"200\"}}");
        assert_eq!(get(&series), n, "{series}");
    }
    // Two Responses answers (11 prompt tokens each) on Flash; the
    // claude-opus request counted as V4 Pro, the model that served it.
    assert_eq!(
        get(&format!(
            "{p}tokens_total{{kind=\"prompt\",model=\"deepseek-flash\",user=\"admin\"}}"
        )),
        22.0
    );
    assert_eq!(
        get(&format!(
            "{p}tokens_total{{kind=\"prompt\",model=\"deepseek-v4-pro\",user=\"admin\"}}"
        )),
        11.0
    );
    assert!(
        !text.contains("claude-opus"),
        "policy and metrics use the served model"
    );
    assert_eq!(
        get(&format!(
            "{p}upstream_requests_total{{status=\"200\",upstream=\"deepseek\"}}"
        )),
        5.0
    );
    assert_eq!(
        get(&format!("{p}upstream_healthy{{upstream=\"deepseek\"}}")),
        1.0
    );
}
