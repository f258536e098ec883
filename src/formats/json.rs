//! Reading a JSON object's members without re-encoding them, and editing a
//! few of them in place.
//!
//! The gateway forwards bodies byte for byte except for the fields an issue
//! names (the model of an alias, `thinking`, `user_id`). So a body is parsed
//! once into its top-level members, each kept as the exact text the client
//! sent ([`RawValue`]) with its position in the body; an [`Edits`] list then
//! splices new values in at those positions. Every other byte (big integers,
//! float spelling, unicode escapes, key order, whitespace) is left alone.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::ApiError;

/// One member of an object: its (unescaped) key and its raw value.
pub struct Member<'a> {
    pub key: Cow<'a, str>,
    pub value: &'a RawValue,
}

/// The members of a JSON object, in the order sent.
pub struct Object<'a> {
    pub members: Vec<Member<'a>>,
}

impl<'a> Object<'a> {
    /// Parses `text` as one JSON object. A duplicate key is refused: the
    /// gateway would check one copy and DeepSeek might use the other.
    pub fn parse(text: &'a [u8]) -> Result<Self, ParseError> {
        if text.trim_ascii_start().first() != Some(&b'{') {
            return Err(
                if serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok() {
                    ParseError::NotAnObject
                } else {
                    ParseError::Syntax(None)
                },
            );
        }
        let object: Object<'a> = serde_json::from_slice(text)
            .map_err(|e| ParseError::Syntax(Some((e.line(), e.column()))))?;
        for (i, member) in object.members.iter().enumerate() {
            if object.members[..i].iter().any(|m| m.key == member.key) {
                return Err(ParseError::Duplicate(member.key.to_string()));
            }
        }
        Ok(object)
    }

    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.members.iter().find(|m| m.key == key).map(|m| m.value)
    }

    /// A string member; `Err` if present but not a string.
    pub fn string(&self, key: &str) -> Result<Option<Cow<'a, str>>, WrongType> {
        match self.get(key) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => serde_json::from_str::<Cow<'a, str>>(raw.get())
                .map(Some)
                .map_err(|_| WrongType),
        }
    }

    /// A member that is a non-negative integer, else `None` (left for
    /// DeepSeek to judge).
    pub fn count(&self, key: &str) -> Option<u64> {
        self.get(key)
            .and_then(|raw| serde_json::from_str::<u64>(raw.get()).ok())
    }

    /// A boolean member (`null` and absent are false); `Err` for any
    /// other type.
    pub fn flag(&self, key: &str) -> Result<bool, WrongType> {
        match self.get(key).map(RawValue::get) {
            None | Some("null" | "false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(WrongType),
        }
    }

    pub fn is_array(&self, key: &str) -> bool {
        self.get(key).is_some_and(|raw| raw.get().starts_with('['))
    }

    pub fn is_string(&self, key: &str) -> bool {
        self.get(key).is_some_and(|raw| raw.get().starts_with('"'))
    }
}

/// A member the gateway reads has the wrong JSON type.
#[derive(Debug, PartialEq, Eq)]
pub struct WrongType;

/// Why a body is not a JSON object.
#[derive(Debug)]
pub enum ParseError {
    /// Not JSON at all; the position when known.
    Syntax(Option<(usize, usize)>),
    /// JSON, but an array, a string, a number...
    NotAnObject,
    Duplicate(String),
}

impl ParseError {
    /// The 400 for a route whose body must be `expected`.
    pub fn into_api_error(self, expected: &str) -> ApiError {
        match self {
            ParseError::Syntax(Some((line, column))) => ApiError::bad_request(
                "invalid_json",
                format!(
                    "the request body must be {expected} (problem at line {line} column {column})"
                ),
            ),
            ParseError::Syntax(None) => ApiError::bad_request(
                "invalid_json",
                format!("the request body must be {expected}"),
            ),
            ParseError::NotAnObject => ApiError::bad_request(
                "invalid_body",
                format!("the request body must be {expected}"),
            ),
            ParseError::Duplicate(key) => ApiError::bad_request(
                "duplicate_field",
                format!(
                    "the request body has the field \"{}\" more than once",
                    key.chars().take(64).collect::<String>()
                ),
            ),
        }
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Object<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Object<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    members.push(Member { key, value });
                }
                Ok(Object { members })
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// Where `part` (a slice of `whole`) starts in `whole`.
pub fn offset_in(whole: &[u8], part: &str) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (start + part.len() <= whole.len()).then_some(start)
}

/// Changes to a body: values replaced, members added to an object.
#[derive(Default, Debug)]
pub struct Edits {
    /// (start, end, replacement), by position in the body.
    splices: Vec<(usize, usize, Vec<u8>)>,
}

impl Edits {
    pub fn is_empty(&self) -> bool {
        self.splices.is_empty()
    }

    /// Replaces the raw value `old` (a slice of `body`) with `new`.
    pub fn replace(&mut self, body: &[u8], old: &RawValue, new: Vec<u8>) {
        if let Some(start) = offset_in(body, old.get()) {
            self.splices.push((start, start + old.get().len(), new));
        }
    }

    /// Adds `"key":value` at the end of the object `object` (a slice of
    /// `body`, `{...}`), which has `members` members already.
    pub fn add_member(
        &mut self,
        body: &[u8],
        object: &str,
        members: usize,
        key: &str,
        value: &[u8],
    ) {
        let Some(start) = offset_in(body, object) else {
            return;
        };
        // The closing brace is the object's last byte.
        let at = start + object.len() - 1;
        let mut text = Vec::with_capacity(key.len() + value.len() + 4);
        if members > 0 {
            text.push(b',');
        }
        text.extend_from_slice(&serde_json::to_vec(key).unwrap_or_default());
        text.push(b':');
        text.extend_from_slice(value);
        self.splices.push((at, at, text));
    }

    /// The body with every edit made.
    pub fn apply(mut self, body: &[u8]) -> Vec<u8> {
        self.splices.sort_by_key(|s| (s.0, s.1));
        let extra: usize = self.splices.iter().map(|s| s.2.len()).sum();
        let mut out = Vec::with_capacity(body.len() + extra);
        let mut at = 0;
        for (start, end, text) in self.splices {
            if start < at {
                continue; // overlapping edits never happen; never corrupt the body if they do
            }
            out.extend_from_slice(&body[at..start]);
            out.extend_from_slice(&text);
            at = end;
        }
        out.extend_from_slice(&body[at..]);
        out
    }
}

/// The whole top-level object of `body` as text (for adding members to it).
pub fn top_level(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?;
    let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
    Some(trimmed)
}

/// The top-level `usage` member of the JSON answer `body`, read as a `T`.
///
/// An answer's `usage` is among its last members, so it is looked for from
/// the end: the last few `"usage"`s in the text are tried, and one is taken
/// only where it is a member's key, its value is a `T`, and what follows the
/// value is the rest of the top-level object (more members, then the brace
/// that ends the body). That reads the usage and what comes after it,
/// whatever the answer's length, where parsing the whole answer cost ~18
/// instructions per byte (BENCHMARKS.md). Where none qualifies, the whole
/// body is parsed as before. Where they differ, on bodies DeepSeek does
/// not send: a body that is not an object yields nothing (the full parse
/// read an array as the usage's fields); the text before the member is not
/// checked (a body broken there but ending like an object still yields its
/// usage); and of two `usage` members the last is taken (the full parse
/// refuses the body).
pub fn usage<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Option<T> {
    #[derive(serde::Deserialize)]
    struct WithUsage<T> {
        usage: Option<T>,
    }
    let body = body.trim_ascii();
    // An object only: serde would read an array as the struct's fields.
    if body.first() != Some(&b'{') {
        return None;
    }
    // `Option`, as in the full parse: `"usage": null` is no usage.
    if let Some(value) = trailing_member::<Option<T>>(body, "usage") {
        return value;
    }
    serde_json::from_slice::<WithUsage<T>>(body).ok()?.usage
}

/// How many `"key"`s from the end [`usage`] tries before parsing it all.
const TRAILING_TRIES: usize = 4;

fn trailing_member<'a, T: serde::Deserialize<'a>>(body: &'a [u8], key: &str) -> Option<T> {
    let key = key.as_bytes();
    let candidates = memchr::memmem::rfind_iter(body, key)
        .filter(|&at| {
            // A key is quoted as is (an escaped quote would be `\"`).
            at > 0 && body[at - 1] == b'"' && body.get(at + key.len()) == Some(&b'"')
        })
        .take(TRAILING_TRIES);
    for at in candidates {
        let before = body[..at - 1].trim_ascii_end();
        if !matches!(before.last(), Some(b'{' | b',')) {
            continue; // a string value, or the end of an escaped quote
        }
        let Some(after) = body[at + key.len() + 1..]
            .trim_ascii_start()
            .strip_prefix(b":")
        else {
            continue;
        };
        let Some((value, rest)) = next_value::<T>(after) else {
            continue;
        };
        if ends_the_object(rest) {
            return Some(value);
        }
    }
    None
}

/// The JSON value at the start of `text` (after any whitespace), and the
/// text after it.
fn next_value<'a, T: serde::Deserialize<'a>>(text: &'a [u8]) -> Option<(T, &'a [u8])> {
    let mut values = serde_json::Deserializer::from_slice(text).into_iter::<T>();
    let value = values.next()?.ok()?;
    Some((value, &text[values.byte_offset()..]))
}

/// Whether `text`, which follows a member's value, is the rest of the
/// top-level object: members, then its closing brace, then nothing. (The
/// brace that ends the text closes the outermost object, so a member it
/// closes is a top-level one.)
fn ends_the_object(mut text: &[u8]) -> bool {
    loop {
        text = text.trim_ascii_start();
        match text.split_first() {
            Some((b'}', rest)) => return rest.trim_ascii_start().is_empty(),
            Some((b',', rest)) => {
                let Some((key, rest)) = next_value::<&RawValue>(rest) else {
                    return false;
                };
                let Some(rest) = rest.trim_ascii_start().strip_prefix(b":") else {
                    return false;
                };
                if !key.get().starts_with('"') {
                    return false;
                }
                let Some((_, rest)) = next_value::<serde::de::IgnoredAny>(rest) else {
                    return false;
                };
                text = rest;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answers_usage_is_read_from_its_end_without_parsing_the_rest() {
        // DeepSeek's layout: usage last, after the generated text.
        let answer = format!(
            r#"{{"id":"x","choices":[{{"message":{{"content":"{}"}}}}],"usage":{{"prompt_tokens":5}}}}"#,
            "a".repeat(10_000)
        );
        let usage: &RawValue =
            trailing_member(answer.as_bytes(), "usage").expect("found from the end");
        assert_eq!(usage.get(), r#"{"prompt_tokens":5}"#);
        // A member after it, and a broken start the fast path never reads.
        let after = br#"{"choices":[{"usage":1 ,"usage" : {"n":1} , "fp": "x" }"#;
        assert_eq!(
            trailing_member::<&RawValue>(after, "usage").map(RawValue::get),
            Some(r#"{"n":1}"#)
        );
        assert!(Object::parse(after).is_err());
    }

    #[test]
    fn a_nested_or_quoted_usage_is_not_the_answers() {
        // Nested after the top-level one: tried, refused, then the next.
        let nested = br#"{"usage":{"a":1},"x":{"usage":{"b":2}}}"#;
        assert_eq!(
            usage::<&RawValue>(nested).map(RawValue::get),
            Some(r#"{"a":1}"#)
        );
        // Only nested: none.
        assert!(usage::<&RawValue>(br#"{"x":{"usage":{"b":2}}}"#).is_none());
        assert!(usage::<&RawValue>(br#"[{"usage":{"b":2}}]"#).is_none());
        // In a string, as a value, or at the end of an escaped key.
        let quoted = br#"{"text":"\"usage\": {}","t":"usage","a\"usage":{"c":3}}"#;
        assert!(usage::<&RawValue>(quoted).is_none());
        // More decoys after it than the fast path tries: the whole body is parsed.
        let decoys = format!(
            r#"{{"usage":7,{}}}"#,
            (0..6)
                .map(|i| format!(r#""k{i}":{{"usage":{i}}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(
            usage::<&RawValue>(decoys.as_bytes()).map(RawValue::get),
            Some("7")
        );
        assert!(trailing_member::<&RawValue>(decoys.as_bytes(), "usage").is_none());
        // A null usage is none, found from the end or by the full parse.
        let null = br#"{"usage":null,"a":["usage"],"b":[["usage","usage"]],"c":"usage"}"#;
        assert!(usage::<serde_json::Value>(null).is_none());
        assert!(usage::<serde_json::Value>(br#"{"usage":null}"#).is_none());
    }

    #[test]
    fn members_keep_their_exact_text() {
        let body = br#" {"a": 1.50, "b":"\u0041", "n": 123456789012345678901234567890} "#;
        let object = Object::parse(body).expect("object");
        assert_eq!(object.get("a").map(RawValue::get), Some("1.50"));
        assert_eq!(
            object.string("b"),
            Ok(Some(Cow::Borrowed("A")).map(|c: Cow<str>| c))
        );
        assert_eq!(
            object.get("n").map(RawValue::get),
            Some("123456789012345678901234567890")
        );
    }

    #[test]
    fn duplicates_arrays_and_garbage_are_refused() {
        assert!(matches!(
            Object::parse(br#"{"model":"a","model":"b"}"#),
            Err(ParseError::Duplicate(_))
        ));
        assert!(matches!(
            Object::parse(br#"{"model":"a","mod\u0065l":"b"}"#),
            Err(ParseError::Duplicate(_))
        ));
        assert!(matches!(
            Object::parse(b"[1]"),
            Err(ParseError::NotAnObject)
        ));
        assert!(matches!(Object::parse(b"{"), Err(ParseError::Syntax(_))));
        assert!(matches!(Object::parse(b""), Err(ParseError::Syntax(_))));
        assert!(matches!(Object::parse(b"{} x"), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn edits_splice_values_and_add_members() {
        let body = br#"{"model":"x", "n":1.0e3 }"#;
        let object = Object::parse(body).expect("object");
        let mut edits = Edits::default();
        edits.replace(body, object.get("model").expect("model"), b"\"y\"".to_vec());
        let top = top_level(body).expect("utf8");
        edits.add_member(body, top, 2, "user_id", b"\"u1\"");
        assert_eq!(
            String::from_utf8(edits.apply(body)).expect("utf8"),
            r#"{"model":"y", "n":1.0e3 ,"user_id":"u1"}"#
        );
        let empty = b"{}";
        let mut edits = Edits::default();
        edits.add_member(empty, top_level(empty).expect("utf8"), 0, "k", b"1");
        assert_eq!(edits.apply(empty), br#"{"k":1}"#);
    }
}
