//! Property tests for the parsers that see attacker-controlled input: the
//! request-body check, token verification and the proxy-address parser.
//! `PROPTEST_CASES` raises the case count (CI uses the default, 256 each).

use deepseek_proxy::auth::jwt::{unix_now, JwtKeys};
use deepseek_proxy::client_ip::IpNet;
use deepseek_proxy::proxy::{check_body, Route};
use deepseek_proxy::usage::{Tap, Usage};
use proptest::prelude::*;
use secrecy::SecretString;
use serde_json::{json, Value};

/// What check_body should decide, written the slow, obvious way.
fn model_accepts(route: Route, body: &[u8]) -> bool {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    // `model` and `stream` are read by the gateway, so their types count.
    let model_ok = matches!(
        map.get("model"),
        None | Some(Value::String(_) | Value::Null)
    );
    let stream_ok = matches!(map.get("stream"), None | Some(Value::Bool(_) | Value::Null));
    let typed_ok = model_ok && stream_ok;
    match route {
        Route::BetaCompletions => map.contains_key("prompt") && typed_ok,
        _ => matches!(map.get("messages"), Some(Value::Array(_))) && typed_ok,
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z\\\\\"\\u{4f60}]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("(messages|model|prompt|stream|[a-z]{1,5})", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn check_body_agrees_with_a_plain_json_model(value in json_value()) {
        let body = serde_json::to_vec(&value).expect("serialise");
        for route in [Route::Chat, Route::BetaCompletions] {
            let accepted = check_body(route, &body).is_ok();
            prop_assert_eq!(accepted, model_accepts(route, &body), "{:?} {}", route, value);
        }
    }

    #[test]
    fn check_body_never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let accepted = check_body(Route::Chat, &body).is_ok();
        prop_assert_eq!(accepted, model_accepts(Route::Chat, &body));
    }

    #[test]
    fn a_valid_chat_body_is_accepted_with_its_model(model in "[a-z-]{1,20}", n in 0usize..4) {
        let messages: Vec<Value> = (0..n).map(|i| json!({"role": "user", "content": i.to_string()})).collect();
        let body = serde_json::to_vec(&json!({"model": model, "messages": messages})).expect("json");
        let checked = check_body(Route::Chat, &body).expect("accepted");
        prop_assert_eq!(checked.model.as_deref(), Some(model.as_str()));
    }

    #[test]
    fn token_verification_never_accepts_or_panics_on_junk(token in "[A-Za-z0-9_.\\-=+/ \\r\\n]{0,400}") {
        let keys = JwtKeys::new(&SecretString::from("k".repeat(40)));
        prop_assert!(keys.verify(&token, unix_now()).is_err());
    }

    #[test]
    fn a_tampered_token_is_refused(flip in 0usize..1000, bit in 0u8..6) {
        let keys = JwtKeys::new(&SecretString::from("k".repeat(40)));
        let now = unix_now();
        let (token, _) = keys.issue("admin", now, 60);
        let mut bytes = token.into_bytes();
        let i = flip % bytes.len();
        if bytes[i] == b'.' {
            return Ok(());
        }
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let pos = ALPHABET.iter().position(|c| *c == bytes[i]).unwrap_or(0);
        bytes[i] = ALPHABET[(pos + 1 + usize::from(bit)) % ALPHABET.len()];
        let tampered = String::from_utf8(bytes).expect("ascii");
        // Changing the last character of a segment may only flip unused
        // padding bits; anything else must be refused.
        if let Ok(claims) = keys.verify(&tampered, now) {
            prop_assert_eq!(claims.sub, "admin");
        }
    }

    #[test]
    fn the_usage_tap_reads_the_same_usage_however_the_stream_is_cut(
        words in prop::collection::vec("[a-z你好é\\\"]{0,6}", 0..12),
        prompt in 0u64..100_000,
        completion in 0u64..100_000,
        cached in 0u64..1000,
        crlf in any::<bool>(),
        keepalives in 0usize..3,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut stream = String::new();
        for _ in 0..keepalives {
            stream.push_str(&format!(": keep-alive{nl}{nl}"));
        }
        for w in &words {
            let event = json!({"choices": [{"delta": {"content": w}}]});
            stream.push_str(&format!("data: {event}{nl}{nl}"));
        }
        let last = json!({"choices": [], "usage": {"prompt_tokens": prompt,
            "completion_tokens": completion, "prompt_cache_hit_tokens": cached}});
        stream.push_str(&format!("data: {last}{nl}{nl}data: [DONE]{nl}{nl}"));
        let bytes = stream.as_bytes();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut tap = Tap::new(true);
        let mut from = 0;
        for p in points.into_iter().chain([bytes.len()]) {
            tap.feed(&bytes[from..p]);
            from = p;
        }
        tap.finish();
        let expected = Usage { prompt_tokens: prompt, completion_tokens: completion,
            cached_tokens: cached, reasoning_tokens: 0 };
        prop_assert_eq!(tap.usage(), Some(expected));
        let chars: u64 = words.iter().map(|w| w.chars().count() as u64).sum();
        prop_assert_eq!(tap.streamed_chars(), chars);
    }

    #[test]
    fn proxy_addresses_parse_or_fail_cleanly(text in "[0-9a-f.:/]{0,45}") {
        let _ = text.parse::<IpNet>();
    }
}
