//! `[models]`: aliases, so old scripts keep working after DeepSeek retired
//! `deepseek-chat` and `deepseek-reasoner` (2026-07-24).
//!
//! ```toml
//! [models.aliases]
//! fast = { model = "deepseek-flash", thinking = "disabled" }
//! ```

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::{invalid, ConfigError};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawModels {
    aliases: BTreeMap<String, RawAlias>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlias {
    model: String,
    #[serde(default)]
    thinking: Option<String>,
}

/// The validated aliases.
#[derive(Debug, Clone, Default)]
pub struct Models {
    pub aliases: HashMap<String, Alias>,
}

/// What an alias stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub model: String,
    /// Set unless the client set `thinking` itself.
    pub thinking: Option<Thinking>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thinking {
    Enabled,
    Disabled,
}

impl Thinking {
    /// The `thinking` field DeepSeek takes.
    pub fn json(self) -> &'static [u8] {
        match self {
            Thinking::Enabled => br#"{"type":"enabled"}"#,
            Thinking::Disabled => br#"{"type":"disabled"}"#,
        }
    }
}

/// The two aliases shipped by default; the file's own override them.
fn defaults() -> [(&'static str, Alias); 2] {
    [
        (
            "deepseek-chat",
            Alias {
                model: "deepseek-flash".into(),
                thinking: Some(Thinking::Disabled),
            },
        ),
        (
            "deepseek-reasoner",
            Alias {
                model: "deepseek-flash".into(),
                thinking: Some(Thinking::Enabled),
            },
        ),
    ]
}

impl RawModels {
    pub(super) fn validate(self) -> Result<Models, ConfigError> {
        let mut aliases: HashMap<String, Alias> = defaults()
            .into_iter()
            .map(|(name, alias)| (name.to_owned(), alias))
            .collect();
        for (name, raw) in &self.aliases {
            let key = format!("models.aliases.{name}");
            if name.trim().is_empty() || name.len() > 64 {
                return Err(invalid(
                    "models.aliases",
                    "an alias name is empty or longer than 64 bytes",
                ));
            }
            if raw.model.trim().is_empty() {
                return Err(invalid(
                    &format!("{key}.model"),
                    "is empty; e.g. \"deepseek-flash\"",
                ));
            }
            if self.aliases.contains_key(&raw.model) {
                return Err(invalid(
                    &format!("{key}.model"),
                    format!(
                        "\"{}\" is itself an alias; name a DeepSeek model",
                        raw.model
                    ),
                ));
            }
            let thinking = match raw.thinking.as_deref() {
                None => None,
                Some("enabled") => Some(Thinking::Enabled),
                Some("disabled") => Some(Thinking::Disabled),
                Some(other) => {
                    return Err(invalid(
                        &format!("{key}.thinking"),
                        format!("\"{other}\" is not a mode; use \"enabled\" or \"disabled\""),
                    ))
                }
            };
            aliases.insert(
                name.clone(),
                Alias {
                    model: raw.model.clone(),
                    thinking,
                },
            );
        }
        Ok(Models { aliases })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Models, ConfigError> {
        toml::from_str::<RawModels>(text)
            .map_err(|e| ConfigError(e.to_string()))?
            .validate()
    }

    #[test]
    fn the_retired_names_are_aliases_by_default() {
        let models = parse("").expect("valid");
        assert_eq!(
            models.aliases["deepseek-chat"].thinking,
            Some(Thinking::Disabled)
        );
        assert_eq!(models.aliases["deepseek-reasoner"].model, "deepseek-flash");
    }

    #[test]
    fn operators_add_and_override_aliases_and_mistakes_name_the_key() {
        let models = parse(
            "[aliases]\nfast = { model = \"deepseek-flash\", thinking = \"disabled\" }\n\
             deepseek-chat = { model = \"deepseek-v4-pro\" }",
        )
        .expect("valid");
        assert_eq!(models.aliases["fast"].thinking, Some(Thinking::Disabled));
        assert_eq!(models.aliases["deepseek-chat"].model, "deepseek-v4-pro");
        let err = parse("[aliases]\nx = { model = \"deepseek-flash\", thinking = \"maybe\" }")
            .expect_err("invalid");
        assert!(
            err.to_string().contains("models.aliases.x.thinking"),
            "{err}"
        );
        let err = parse("[aliases]\nx = { model = \"y\" }\ny = { model = \"deepseek-flash\" }")
            .expect_err("chain");
        assert!(err.to_string().contains("models.aliases.x.model"), "{err}");
    }
}
