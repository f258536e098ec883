//! The web tools: search and fetch.

mod common;

use common::{fake, post};
use serde_json::json;

#[tokio::test]
async fn search_answers_results() {
    let (fake, _) = fake().await;
    let url = format!("{}/tools/search", fake.base_url());
    let answer = post(&url, &[], &json!({"query": "rust async", "max_results": 3})).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let body = answer.json();
    let results = body["results"].as_array().expect("results");
    assert!(!results.is_empty());
    for result in results {
        for field in ["title", "url", "snippet"] {
            assert!(result[field].is_string(), "{field}: {result}");
        }
    }
    assert!(body.get("usage").is_none());
    let scripted = json!({"query": "q", "_fake": {"reply": "the answer"}});
    let answer = post(&url, &[], &scripted).await.json();
    assert_eq!(answer["results"][0]["snippet"], "the answer");
}

#[tokio::test]
async fn fetch_answers_the_page() {
    let (fake, _) = fake().await;
    let url = format!("{}/tools/fetch", fake.base_url());
    let answer = post(&url, &[], &json!({"url": "https://example.org/a"})).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let page = answer.json();
    assert_eq!(page["url"], "https://example.org/a");
    assert!(page["title"].is_string());
    assert!(page["content"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(page.get("usage").is_none());
}

#[tokio::test]
async fn missing_arguments_get_400() {
    let (fake, _) = fake().await;
    for (tool, body) in [
        ("search", json!({})),
        ("search", json!({"query": ""})),
        ("search", json!({"query": 3})),
        ("fetch", json!({})),
        ("fetch", json!({"url": "ftp://x"})),
        ("fetch", json!("https://example.org")),
    ] {
        let answer = post(&format!("{}/tools/{tool}", fake.base_url()), &[], &body).await;
        assert_eq!(answer.status, 400, "{tool} {body}");
        assert!(answer.json()["error"]["message"].is_string());
    }
}

#[tokio::test]
async fn scripted_behaviour_and_the_key_apply() {
    let (fake, _) = fake().await;
    let url = format!("{}/tools/search", fake.base_url());
    let failing = json!({"query": "q", "_fake": {"fail": {"status": 503}}});
    let answer = post(&url, &[], &failing).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("retry-after"), Some("7"));

    let cut = json!({"query": "q", "_fake": {"fail": {"reset_after": 1}}});
    assert!(post(&url, &[], &cut).await.broken);

    fake.require_key("sk-t");
    let answer = post(&url, &[], &json!({"query": "q"})).await;
    assert_eq!(answer.status, 401);
    let answer = post(
        &url,
        &[("authorization", "Bearer sk-t")],
        &json!({"query": "q"}),
    )
    .await;
    assert_eq!(answer.status, 200);
    let recorded = fake.requests();
    assert_eq!(
        recorded.last().map(|r| r.path.as_str()),
        Some("/v1/tools/search")
    );
}
