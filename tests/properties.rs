//! Property tests for the parsers that see attacker-controlled input: the
//! request-body check, token verification and the proxy-address parser.
//! `PROPTEST_CASES` raises the case count (CI uses the default, 256 each).

use bytes::Bytes;
use deepseek_proxy::auth::jwt::{unix_now, JwtKeys};
use deepseek_proxy::client_ip::IpNet;
use deepseek_proxy::config::{Alias, Models, Thinking};
use deepseek_proxy::formats::json::{usage, Object};
use deepseek_proxy::formats::Format;
use deepseek_proxy::proxy::prepare::prepare;
use deepseek_proxy::usage::{Tap, Usage};
use deepseek_proxy::users::keys;
use proptest::prelude::*;
use secrecy::SecretString;
use serde_json::{json, Value};

/// What the body check should decide, written the slow, obvious way.
fn model_accepts(format: Format, body: &[u8]) -> bool {
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
    let shape_ok = match format {
        Format::Fim => map.contains_key("prompt"),
        Format::Chat | Format::Anthropic => matches!(map.get("messages"), Some(Value::Array(_))),
        Format::Responses => matches!(map.get("input"), Some(Value::Array(_) | Value::String(_))),
        Format::Search => matches!(map.get("query"), Some(Value::String(_))),
        Format::Fetch => matches!(map.get("url"), Some(Value::String(_))),
    };
    shape_ok && typed_ok
}

const FORMATS: [Format; 6] = [
    Format::Chat,
    Format::Fim,
    Format::Responses,
    Format::Anthropic,
    Format::Search,
    Format::Fetch,
];

/// JSON values written the ways that re-encoding would change.
fn raw_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("123456789012345678901234567890".to_owned()),
        Just("1.0e+10".to_owned()),
        Just("-0.0".to_owned()),
        Just("1.50".to_owned()),
        Just(r#""\u00e9\u4f60\/""#.to_owned()),
        Just(r#""你好""#.to_owned()),
        Just("[ 1 , 2.50 ]".to_owned()),
        Just(r#"{ "a" : null , "b":[{}] }"#.to_owned()),
        "-?[1-9][0-9]{0,24}(\\.[0-9]{1,5})?",
        "[a-z ]{0,10}".prop_map(|s| format!("\"{s}\"")),
    ]
}

/// A body as text: members in the given order, with odd spacing.
fn raw_body(members: &[(String, String)], space: &str) -> String {
    let inner: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{space}\"{k}\"{space}:{space}{v}"))
        .collect();
    format!("{{{}{space}}}", inner.join(","))
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
            prop::collection::btree_map(
                "(messages|model|prompt|stream|input|query|url|[a-z]{1,5})",
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON with `usage` among its keys and strings, at any depth: what an
/// answer's top-level `usage` must be told apart from.
fn usage_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        "(usage|[a-z{},:\\\\\"]{0,8})".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("(usage|prompt_tokens|[a-z\"]{1,4})", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn an_answers_usage_is_its_top_level_member_however_it_is_laid_out(
        members in prop::collection::vec(("(usage|id|a\"usage|[a-z\"\\\\]{1,4})", usage_json()), 0..6),
        pretty in any::<bool>(),
        space in "( |\n|)",
    ) {
        let mut seen = std::collections::HashSet::new();
        let members: Vec<(String, String)> = members
            .into_iter()
            .filter(|(k, _)| seen.insert(k.clone()))
            .map(|(k, v)| {
                let key = serde_json::to_string(&k).expect("key");
                let value = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) };
                (key[1..key.len() - 1].to_owned(), value.expect("value"))
            })
            .collect();
        let body = raw_body(&members, &space);
        let whole: Value = serde_json::from_str(&body).expect("valid JSON");
        let found = usage::<Value>(body.as_bytes());
        // `"usage": null` is no usage.
        prop_assert_eq!(found.as_ref(), whole.get("usage").filter(|v| !v.is_null()), "{}", body);
        // As the formats read it: a struct that many values are not (the
        // fast path then gives way to the full parse), against that parse.
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Counts {
            #[serde(default)]
            prompt_tokens: Option<i64>,
        }
        #[derive(serde::Deserialize)]
        struct Whole {
            usage: Option<Counts>,
        }
        let counts = usage::<Counts>(body.as_bytes());
        let parsed = serde_json::from_str::<Whole>(&body).ok().and_then(|w| w.usage);
        prop_assert_eq!(counts, parsed, "{}", body);
    }
}

proptest! {
    #[test]
    fn check_body_agrees_with_a_plain_json_model(value in json_value()) {
        let body = serde_json::to_vec(&value).expect("serialise");
        for format in FORMATS {
            let accepted = format.check(&body).is_ok();
            prop_assert_eq!(accepted, model_accepts(format, &body), "{:?} {}", format, value);
        }
    }

    #[test]
    fn check_body_never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
        for format in FORMATS {
            let accepted = format.check(&body).is_ok();
            prop_assert_eq!(accepted, model_accepts(format, &body));
        }
    }

    #[test]
    fn a_valid_chat_body_is_accepted_with_its_model(model in "[a-z-]{1,20}", n in 0usize..4) {
        let messages: Vec<Value> = (0..n).map(|i| json!({"role": "user", "content": i.to_string()})).collect();
        let body = serde_json::to_vec(&json!({"model": model, "messages": messages})).expect("json");
        let checked = Format::Chat.check(&body).expect("accepted");
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
        let mut tap = Tap::new(Format::Chat, true);
        let mut from = 0;
        for p in points.into_iter().chain([bytes.len()]) {
            tap.feed(&bytes[from..p]);
            from = p;
        }
        tap.finish();
        let expected = Usage { prompt_tokens: prompt, completion_tokens: completion,
            cached_tokens: cached, cache_miss_tokens: prompt.saturating_sub(cached),
            reasoning_tokens: 0 };
        prop_assert_eq!(tap.usage(), Some(expected));
        let chars: u64 = words.iter().map(|w| w.chars().count() as u64).sum();
        prop_assert_eq!(tap.streamed_chars(), chars);
    }

    #[test]
    fn an_alias_rewrite_and_user_id_keep_every_other_field_byte_for_byte(
        others in prop::collection::vec(("[a-z]{1,6}", raw_value()), 0..8),
        at in any::<prop::sample::Index>(),
        space in "[ \n]{0,2}",
        alias in prop_oneof![Just("deepseek-chat"), Just("fast"), Just("deepseek-flash")],
        format in prop_oneof![Just(Format::Chat), Just(Format::Responses), Just(Format::Anthropic)],
        user_id in proptest::option::of("[a-z0-9_-]{1,20}"),
    ) {
        // Distinct keys that the gateway does not own.
        let mut members: Vec<(String, String)> = Vec::new();
        for (k, v) in others {
            let owned = ["model", "thinking", "user_id", "metadata", "messages", "input", "stream"];
            if !owned.contains(&k.as_str()) && !members.iter().any(|(m, _)| *m == k) {
                members.push((k, v));
            }
        }
        let needed = match format {
            Format::Responses => ("input".to_owned(), "\"hi\"".to_owned()),
            _ => ("messages".to_owned(), "[]".to_owned()),
        };
        members.push(needed);
        let i = at.index(members.len() + 1);
        members.insert(i, ("model".to_owned(), format!("\"{alias}\"")));
        let text = raw_body(&members, &space);
        let body = Bytes::from(text.clone());
        let mut models = Models::default();
        for (name, thinking) in [("deepseek-chat", Some(Thinking::Disabled)), ("fast", None)] {
            models.aliases.insert(name.to_owned(), Alias { model: "deepseek-v4-pro".to_owned(), thinking });
        }
        let checked = format.check(&body).expect("valid");
        let prepared = prepare(&models, format, &checked, &body, user_id.as_deref()).expect("ok");
        let out = Object::parse(&prepared.body).expect("still one JSON object");
        // Every member the client sent is there, in order, with its exact text.
        for (n, (key, value)) in members.iter().enumerate() {
            let member = &out.members[n];
            prop_assert_eq!(member.key.as_ref(), key.as_str());
            if key == "model" {
                let expected = if alias == "deepseek-flash" { "\"deepseek-flash\"" } else { "\"deepseek-v4-pro\"" };
                prop_assert_eq!(member.value.get(), expected);
            } else {
                prop_assert_eq!(member.value.get(), value.as_str());
            }
        }
        // What was added comes after them.
        let added: Vec<&str> = out.members[members.len()..].iter().map(|m| m.key.as_ref()).collect();
        let mut expected = Vec::new();
        if alias == "deepseek-chat" {
            expected.push("thinking");
        }
        if user_id.is_some() {
            expected.push(if format == Format::Anthropic { "metadata" } else { "user_id" });
        }
        prop_assert_eq!(added, expected);
        // Nothing else changed: the text before the closing brace is the client's.
        let body_text = std::str::from_utf8(&prepared.body).expect("utf8");
        if alias == "deepseek-flash" && user_id.is_none() {
            prop_assert_eq!(body_text, text.as_str());
        }
    }

    #[test]
    fn the_tap_reads_responses_and_anthropic_usage_however_the_stream_is_cut(
        words in prop::collection::vec("[a-z你好é\\\"]{0,6}", 0..10),
        prompt in 0u64..100_000,
        cached in 0u64..1000,
        completion in 0u64..100_000,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let cached = cached.min(prompt);
        // Responses: semantic events, usage in response.completed.
        let mut responses = String::new();
        let mut seq = 0;
        let mut event = |name: &str, mut data: Value, out: &mut String| {
            data["type"] = json!(name);
            data["sequence_number"] = json!(seq);
            seq += 1;
            out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
        };
        event("response.created", json!({"response": {"usage": null}}), &mut responses);
        for w in &words {
            event("response.output_text.delta", json!({"delta": w}), &mut responses);
        }
        event("response.completed", json!({"response": {"usage": {
            "input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0}}}}), &mut responses);
        // Anthropic: input in message_start, output in the last message_delta.
        let mut anthropic = String::new();
        let start = json!({"type": "message_start", "message": {"usage": {
            "input_tokens": prompt - cached, "cache_read_input_tokens": cached, "output_tokens": 1}}});
        anthropic.push_str(&format!("event: message_start\ndata: {start}\n\n"));
        for w in &words {
            let delta = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}});
            anthropic.push_str(&format!("event: content_block_delta\ndata: {delta}\n\n"));
        }
        let end = json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": completion}});
        anthropic.push_str(&format!("event: message_delta\ndata: {end}\n\nevent: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"));
        let expected = Usage { prompt_tokens: prompt, completion_tokens: completion,
            cached_tokens: cached, cache_miss_tokens: prompt - cached, reasoning_tokens: 0 };
        let chars: u64 = words.iter().map(|w| w.chars().count() as u64).sum();
        for (format, stream) in [(Format::Responses, &responses), (Format::Anthropic, &anthropic)] {
            let bytes = stream.as_bytes();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut tap = Tap::new(format, true);
            let mut from = 0;
            for p in points.into_iter().chain([bytes.len()]) {
                tap.feed(&bytes[from..p]);
                from = p;
            }
            tap.finish();
            prop_assert_eq!(tap.usage(), Some(expected), "{:?}", format);
            prop_assert_eq!(tap.streamed_chars(), chars, "{:?}", format);
        }
        let _ = seq;
    }

    #[test]
    fn the_key_parser_and_lookup_accept_only_keys_that_were_issued(
        at in any::<prop::sample::Index>(),
        to in "[0-9A-Za-z!_.-]",
        cut in any::<prop::sample::Index>(),
        junk in "[ -~]{0,60}",
    ) {
        let issued: Vec<keys::NewKey> = (0..3).map(|_| keys::generate().expect("key")).collect();
        let index: std::collections::HashSet<keys::KeyHash> = issued.iter().map(|k| k.hash).collect();
        let accepted = |presented: &str| keys::parse(presented).is_some_and(|h| index.contains(&h));
        for key in &issued {
            prop_assert!(accepted(&key.key));
            // One character changed, anywhere.
            let mut chars: Vec<char> = key.key.chars().collect();
            let i = at.index(chars.len());
            if chars[i] != to.chars().next().expect("one char") {
                chars[i] = to.chars().next().expect("one char");
                let changed: String = chars.iter().collect();
                prop_assert!(!accepted(&changed), "{changed}");
            }
            // Every proper prefix, and the key with more after it.
            let n = cut.index(key.key.len());
            let longer = format!("{}{}", key.key, to);
            let spaced = format!(" {}", key.key);
            prop_assert!(!accepted(&key.key[..n]));
            prop_assert!(!accepted(&longer));
            prop_assert!(!accepted(&spaced));
        }
        let prefixed = format!("sk-dsp-{junk}");
        prop_assert!(!accepted(&junk));
        prop_assert!(!accepted(&prefixed));
    }

    #[test]
    fn proxy_addresses_parse_or_fail_cleanly(text in "[0-9a-f.:/]{0,45}") {
        let _ = text.parse::<IpNet>();
    }
}
