//! `[pricing]`: what DeepSeek charges, so usage can be shown (and budgets
//! kept) in money.
//!
//! ```toml
//! [pricing]
//! currency = "CNY"                 # or "USD": picks the default prices
//! tool_call = 0.005                # per successful search/fetch call
//! holidays = ["2027-01-01"]        # Beijing dates priced off-peak all day
//! extra_workdays = []              # weekend dates that are working days
//! peak_hours = ["09:00-12:00", "14:00-18:00"]   # Beijing time
//! peak_weekdays = ["mon", "tue", "wed", "thu", "fri"]
//!
//! [pricing.models.deepseek-flash]  # per million tokens
//! off_peak = { input_cache_hit = 0.02, input_cache_miss = 1, output = 4 }
//! peak = { input_cache_hit = 0.04, input_cache_miss = 2, output = 8 }
//! ```
//!
//! The defaults are DeepSeek's published prices of 2026-11 (see
//! [`default_models`]); a model listed in the file replaces its default.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;

use super::{invalid, ConfigError};
use crate::usage::calendar::Date;
use crate::usage::pricing::{Currency, ModelPrices, PeakHours, Pricing, Rates};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPricing {
    currency: Option<String>,
    tool_call: Option<f64>,
    holidays: Vec<String>,
    extra_workdays: Vec<String>,
    peak_hours: Option<Vec<String>>,
    peak_weekdays: Option<Vec<String>>,
    models: BTreeMap<String, RawModelPrices>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelPrices {
    off_peak: RawRates,
    peak: RawRates,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRates {
    input_cache_hit: f64,
    input_cache_miss: f64,
    output: f64,
}

/// DeepSeek's published prices (checked 2026-11-30), per million tokens:
/// (model, currency, off-peak [hit, miss, output], peak [hit, miss, output]).
/// Peak is Beijing time, Mon-Fri 09:00-12:00 and 14:00-18:00, except public
/// holidays; off-peak is half price.
const DEFAULT_PRICES: &[(&str, Currency, [f64; 3], [f64; 3])] = &[
    (
        "deepseek-flash",
        Currency::Cny,
        [0.02, 1.0, 4.0],
        [0.04, 2.0, 8.0],
    ),
    (
        "deepseek-v4-pro",
        Currency::Cny,
        [0.15, 4.5, 13.5],
        [0.30, 9.0, 27.0],
    ),
    (
        "deepseek-flash",
        Currency::Usd,
        [0.003, 0.15, 0.6],
        [0.006, 0.3, 1.2],
    ),
    (
        "deepseek-v4-pro",
        Currency::Usd,
        [0.022, 0.66, 1.98],
        [0.044, 1.32, 3.96],
    ),
];
/// Per successful tool call: CNY 5 or USD 0.75 per 1,000 calls.
const DEFAULT_TOOL_CALL: [(Currency, f64); 2] = [(Currency::Cny, 0.005), (Currency::Usd, 0.00075)];
const DEFAULT_PEAK_HOURS: [&str; 2] = ["09:00-12:00", "14:00-18:00"];
const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn default_models(currency: Currency) -> HashMap<String, ModelPrices> {
    let rates = |[hit, miss, output]: [f64; 3]| Rates {
        input_cache_hit: (hit * 1e6).round() as u64,
        input_cache_miss: (miss * 1e6).round() as u64,
        output: (output * 1e6).round() as u64,
    };
    DEFAULT_PRICES
        .iter()
        .filter(|(_, c, _, _)| *c == currency)
        .map(|(model, _, off, peak)| {
            (
                (*model).to_owned(),
                ModelPrices {
                    off_peak: rates(*off),
                    peak: rates(*peak),
                },
            )
        })
        .collect()
}

/// A price in currency units as whole micro-units; finer prices, negative
/// ones and non-numbers are refused.
pub(super) fn micros(key: &str, value: f64) -> Result<u64, ConfigError> {
    crate::usage::pricing::micros_of(value).ok_or_else(|| {
        invalid(
            key,
            "must be an amount of 0 or more with at most 6 decimal places (e.g. 0.5)",
        )
    })
}

/// `HH:MM` or `HH:MM:SS` to seconds after midnight (`24:00` allowed).
fn clock(text: &str) -> Option<u32> {
    let parts: Vec<&str> = text.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    let n: Vec<u32> = parts
        .iter()
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let seconds = n[0] * 3600 + n[1] * 60 + n.get(2).copied().unwrap_or(0);
    (n[1] < 60 && n.get(2).is_none_or(|&s| s < 60) && seconds <= 86_400).then_some(seconds)
}

fn dates(key: &str, list: &[String]) -> Result<HashSet<i64>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, d)| {
            Date::parse(d.trim()).map(Date::to_days).ok_or_else(|| {
                invalid(
                    &format!("{key}[{i}]"),
                    format!("\"{d}\" is not a YYYY-MM-DD date"),
                )
            })
        })
        .collect()
}

impl RawPricing {
    pub(super) fn validate(
        self,
        now_ms: u64,
        warnings: &mut Vec<String>,
    ) -> Result<Pricing, ConfigError> {
        let currency = match self
            .currency
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("CNY") => Currency::Cny,
            Some("USD") => Currency::Usd,
            Some(other) => {
                return Err(invalid(
                    "pricing.currency",
                    format!("\"{other}\" is not supported; use \"CNY\" or \"USD\""),
                ))
            }
        };
        let mut models = default_models(currency);
        for (name, raw) in self.models {
            let key = format!("pricing.models.{name}");
            let rates = |part: &str, r: &RawRates| -> Result<Rates, ConfigError> {
                Ok(Rates {
                    input_cache_hit: micros(
                        &format!("{key}.{part}.input_cache_hit"),
                        r.input_cache_hit,
                    )?,
                    input_cache_miss: micros(
                        &format!("{key}.{part}.input_cache_miss"),
                        r.input_cache_miss,
                    )?,
                    output: micros(&format!("{key}.{part}.output"), r.output)?,
                })
            };
            let prices = ModelPrices {
                off_peak: rates("off_peak", &raw.off_peak)?,
                peak: rates("peak", &raw.peak)?,
            };
            models.insert(name, prices);
        }
        let tool_call_micros = match self.tool_call {
            Some(price) => micros("pricing.tool_call", price)?,
            None => DEFAULT_TOOL_CALL
                .iter()
                .find(|(c, _)| *c == currency)
                .map_or(0, |(_, p)| (p * 1e6).round() as u64),
        };
        let hours = self
            .peak_hours
            .unwrap_or_else(|| DEFAULT_PEAK_HOURS.map(str::to_owned).to_vec());
        let mut windows = Vec::with_capacity(hours.len());
        for (i, window) in hours.iter().enumerate() {
            let parsed = window
                .split_once('-')
                .and_then(|(a, b)| Some((clock(a.trim())?, clock(b.trim())?)))
                .filter(|(a, b)| a < b);
            windows.push(parsed.ok_or_else(|| {
                invalid(
                    &format!("pricing.peak_hours[{i}]"),
                    format!("\"{window}\" is not a window like \"09:00-12:00\" (Beijing time)"),
                )
            })?);
        }
        let mut weekdays = [false; 7];
        match self.peak_weekdays {
            None => weekdays[..5].fill(true),
            Some(days) => {
                for (i, day) in days.iter().enumerate() {
                    let found = WEEKDAYS
                        .iter()
                        .position(|d| d.eq_ignore_ascii_case(day.trim()));
                    let Some(found) = found else {
                        return Err(invalid(
                            &format!("pricing.peak_weekdays[{i}]"),
                            format!("\"{day}\" is not one of mon, tue, wed, thu, fri, sat, sun"),
                        ));
                    };
                    weekdays[found] = true;
                }
            }
        }
        let holidays = dates("pricing.holidays", &self.holidays)?;
        let workdays = dates("pricing.extra_workdays", &self.extra_workdays)?;
        let this_year = Date::from_days((now_ms / crate::usage::calendar::DAY_MS) as i64).year;
        if !holidays
            .iter()
            .any(|&d| Date::from_days(d).year == this_year)
        {
            warnings.push(format!(
                "pricing.holidays lists no date in {this_year}: requests on Chinese public \
                 holidays will be priced at peak (DeepSeek charges off-peak); add this year's \
                 dates from the State Council's notice"
            ));
        }
        Ok(Pricing {
            currency,
            models,
            tool_call_micros,
            peak: PeakHours {
                windows,
                weekdays,
                holidays,
                workdays,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Pricing, ConfigError> {
        let raw: RawPricing = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        raw.validate(0, &mut Vec::new())
    }

    #[test]
    fn defaults_are_deepseeks_published_prices() {
        let p = parse("").unwrap();
        assert_eq!(p.currency, Currency::Cny);
        let flash = p.models["deepseek-flash"];
        assert_eq!(flash.off_peak.input_cache_hit, 20_000);
        assert_eq!(flash.peak.output, 8_000_000);
        assert_eq!(p.models["deepseek-v4-pro"].peak.input_cache_miss, 9_000_000);
        assert_eq!(p.tool_call_micros, 5_000);
        let usd = parse("currency = \"USD\"").unwrap();
        assert_eq!(usd.models["deepseek-flash"].off_peak.input_cache_hit, 3_000);
        assert_eq!(usd.models["deepseek-v4-pro"].peak.output, 3_960_000);
        assert_eq!(usd.tool_call_micros, 750);
    }

    #[test]
    fn bad_prices_and_calendars_name_their_key() {
        let e = |t: &str| parse(t).unwrap_err().to_string();
        assert!(e("currency = \"EUR\"").contains("pricing.currency"));
        assert!(e("tool_call = -1").contains("pricing.tool_call"));
        assert!(e("tool_call = 0.0000001").contains("6 decimal places"));
        assert!(e("tool_call = nan").contains("pricing.tool_call"));
        assert!(e("holidays = [\"2027-02-30\"]").contains("pricing.holidays[0]"));
        assert!(e("peak_hours = [\"12:00-09:00\"]").contains("pricing.peak_hours[0]"));
        assert!(e("peak_hours = [\"9:00-12:00\"]").contains("pricing.peak_hours[0]"));
        assert!(e("peak_weekdays = [\"monday\"]").contains("pricing.peak_weekdays[0]"));
        assert!(e(
            "[models.x]\noff_peak = { input_cache_hit = 1, input_cache_miss = 1, output = 1 }"
        )
        .contains("peak"));
    }

    #[test]
    fn a_holiday_list_without_this_year_is_warned_about() {
        let dec_2026 = 20_790 * crate::usage::calendar::DAY_MS;
        let mut warnings = Vec::new();
        let raw: RawPricing = toml::from_str("holidays = [\"2025-10-01\"]").unwrap();
        raw.validate(dec_2026, &mut warnings).unwrap();
        assert!(warnings[0].contains("no date in 2026"), "{warnings:?}");
        let mut warnings = Vec::new();
        let raw: RawPricing = toml::from_str("holidays = [\"2026-10-01\"]").unwrap();
        raw.validate(dec_2026, &mut warnings).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn a_model_in_the_file_replaces_its_default_and_windows_take_seconds() {
        let p = parse(
            "peak_hours = [\"00:00-24:00\", \"10:00:30-10:00:45\"]\n\
             [models.deepseek-flash]\n\
             off_peak = { input_cache_hit = 0.1, input_cache_miss = 0.2, output = 0.3 }\n\
             peak = { input_cache_hit = 1, input_cache_miss = 2, output = 3 }",
        )
        .unwrap();
        assert_eq!(p.models["deepseek-flash"].off_peak.output, 300_000);
        assert_eq!(p.peak.windows, vec![(0, 86_400), (36_030, 36_045)]);
        assert!(p.models.contains_key("deepseek-v4-pro"));
    }
}
