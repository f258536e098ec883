//! What a request costs, in micro-units of the configured currency
//! (`[pricing]`; see `config::pricing` for the file's shape and DeepSeek's
//! published prices, the defaults).
//!
//! A price depends on the hour: DeepSeek's peak is Beijing time, Monday to
//! Friday, 09:00-12:00 and 14:00-18:00, except Chinese public holidays;
//! everything else is off-peak at half price. A request is priced at the
//! moment it was sent. Prices are kept as integers (micro-units per million
//! tokens), so every cost is exact integer arithmetic.

use std::collections::{HashMap, HashSet};

use super::calendar::{Date, BEIJING_OFFSET_MS, DAY_MS};
use super::Usage;

/// One million: prices are per million tokens, costs in micro-units.
const MILLION: u128 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Currency {
    #[serde(rename = "CNY")]
    Cny,
    #[serde(rename = "USD")]
    Usd,
}

impl Currency {
    pub fn code(self) -> &'static str {
        match self {
            Currency::Cny => "CNY",
            Currency::Usd => "USD",
        }
    }
}

/// Micro-units of the currency per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rates {
    pub input_cache_hit: u64,
    pub input_cache_miss: u64,
    pub output: u64,
}

/// A model's prices off-peak and at peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelPrices {
    pub off_peak: Rates,
    pub peak: Rates,
}

/// When the peak price applies, in Beijing time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeakHours {
    /// `[start, end)` in seconds after midnight.
    pub windows: Vec<(u32, u32)>,
    /// Monday first.
    pub weekdays: [bool; 7],
    /// Days (since 1970-01-01, Beijing dates) that are off-peak all day.
    pub holidays: HashSet<i64>,
    /// Days that are working days though their weekday is not (make-up
    /// working days around holidays).
    pub workdays: HashSet<i64>,
}

impl PeakHours {
    pub fn is_peak(&self, at_ms: u64) -> bool {
        let local = at_ms + BEIJING_OFFSET_MS;
        let day = (local / DAY_MS) as i64;
        let second = ((local % DAY_MS) / 1000) as u32;
        if self.holidays.contains(&day) {
            return false;
        }
        let working = self.workdays.contains(&day) || self.weekdays[Date::weekday(day) as usize];
        working
            && self
                .windows
                .iter()
                .any(|&(start, end)| start <= second && second < end)
    }
}

/// The validated `[pricing]`.
#[derive(Debug, Clone)]
pub struct Pricing {
    pub currency: Currency,
    /// By served model.
    pub models: HashMap<String, ModelPrices>,
    /// Per successful tool call (search, fetch), in micro-units.
    pub tool_call_micros: u64,
    pub peak: PeakHours,
}

/// What one request cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub micros: u64,
    /// Estimated (the stream ended before DeepSeek reported its usage).
    pub estimated: bool,
    pub currency: Currency,
}

/// The price list a request was sent under: fixed when it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceList {
    Tokens(Rates),
    ToolCall(u64),
}

/// A price list and its currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prices {
    pub list: PriceList,
    pub currency: Currency,
}

impl PriceList {
    /// The cost of `usage`: cache hits, cache misses and output (reasoning
    /// included), rounded to the nearest micro-unit.
    pub fn cost(&self, usage: &Usage) -> u64 {
        match *self {
            PriceList::ToolCall(micros) => micros,
            PriceList::Tokens(rates) => {
                let hit = usage.cached_tokens.min(usage.prompt_tokens);
                // DeepSeek reports hits and misses; a format that reports
                // only the prompt and its hits leaves the rest as misses.
                let miss = usage.cache_misses();
                let total = u128::from(hit) * u128::from(rates.input_cache_hit)
                    + u128::from(miss) * u128::from(rates.input_cache_miss)
                    + u128::from(usage.completion_tokens) * u128::from(rates.output);
                u64::try_from((total + MILLION / 2) / MILLION).unwrap_or(u64::MAX)
            }
        }
    }

    /// The most a request can cost: every input token a cache miss (at most
    /// one token per byte of the body), and all of `max_tokens` generated.
    /// Rounded up.
    pub fn worst_case(&self, body_bytes: u64, max_tokens: u64) -> u64 {
        match *self {
            PriceList::ToolCall(micros) => micros,
            PriceList::Tokens(rates) => {
                let total = u128::from(body_bytes) * u128::from(rates.input_cache_miss)
                    + u128::from(max_tokens) * u128::from(rates.output);
                u64::try_from(total.div_ceil(MILLION)).unwrap_or(u64::MAX)
            }
        }
    }
}

impl Pricing {
    pub fn is_peak(&self, at_ms: u64) -> bool {
        self.peak.is_peak(at_ms)
    }

    /// The price list for a request to `model` (a tool call when `tool`)
    /// sent at `at_ms`; `None` for a model with no price.
    pub fn price_list(&self, model: Option<&str>, tool: bool, at_ms: u64) -> Option<PriceList> {
        if tool {
            return Some(PriceList::ToolCall(self.tool_call_micros));
        }
        let prices = self.models.get(model?)?;
        Some(PriceList::Tokens(if self.is_peak(at_ms) {
            prices.peak
        } else {
            prices.off_peak
        }))
    }

    /// [`Pricing::price_list`] with the currency.
    pub fn prices(&self, model: Option<&str>, tool: bool, at_ms: u64) -> Option<Prices> {
        self.price_list(model, tool, at_ms).map(|list| Prices {
            list,
            currency: self.currency,
        })
    }
}

/// An amount in currency units as whole micro-units: `None` for a negative
/// amount, a non-number, more than 6 decimal places or over 10^9 units.
pub fn micros_of(units: f64) -> Option<u64> {
    let scaled = units * 1e6;
    let whole = units.is_finite() && (0.0..=1e9).contains(&units);
    (whole && (scaled - scaled.round()).abs() <= 1e-3).then(|| scaled.round() as u64)
}

/// Micro-units as a decimal number of the currency (for JSON).
pub fn units(micros: i64) -> f64 {
    micros as f64 / 1e6
}

/// Serializes optional micro-units as currency units.
pub fn serialize_units<S: serde::Serializer>(
    micros: &Option<i64>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match micros {
        Some(m) => s.serialize_f64(units(*m)),
        None => s.serialize_none(),
    }
}

/// Micro-units as text: `12.345678`, trailing zeros trimmed to 2 places.
pub fn format_units(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    let mut text = format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000);
    while text.ends_with('0') && text.len() - text.find('.').unwrap_or(0) > 3 {
        text.pop();
    }
    text
}

/// The cache-hit ratio: hit / (hit + miss) input tokens; `None` without input.
pub fn hit_ratio(hit: i64, miss: i64) -> Option<f64> {
    let total = hit.saturating_add(miss);
    (total > 0).then(|| hit as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flash() -> Rates {
        // CNY per million: 0.02 hit, 1 miss, 4 output (off-peak).
        Rates {
            input_cache_hit: 20_000,
            input_cache_miss: 1_000_000,
            output: 4_000_000,
        }
    }

    fn weekdays() -> PeakHours {
        PeakHours {
            windows: vec![(9 * 3600, 12 * 3600), (14 * 3600, 18 * 3600)],
            weekdays: [true, true, true, true, true, false, false],
            holidays: HashSet::new(),
            workdays: HashSet::new(),
        }
    }

    /// `2026-12-03` (a Thursday) at `hh:mm` Beijing time, in Unix ms.
    fn beijing(date: &str, hh: u64, mm: u64) -> u64 {
        let days = Date::parse(date).unwrap().to_days() as u64;
        days * DAY_MS + (hh * 3600 + mm * 60) * 1000 - BEIJING_OFFSET_MS
    }

    #[test]
    fn cache_hits_misses_and_output_are_priced_apart() {
        let usage = Usage {
            prompt_tokens: 1_000_000,
            cached_tokens: 900_000,
            cache_miss_tokens: 100_000,
            completion_tokens: 10_000,
            reasoning_tokens: 4_000,
        };
        // 0.9 M × 0.02 + 0.1 M × 1 + 0.01 M × 4 = 0.018 + 0.1 + 0.04 CNY.
        assert_eq!(PriceList::Tokens(flash()).cost(&usage), 158_000);
        let all_miss = Usage {
            cached_tokens: 0,
            cache_miss_tokens: 1_000_000,
            ..usage
        };
        assert_eq!(PriceList::Tokens(flash()).cost(&all_miss), 1_040_000);
        // One token: 4 micro-CNY of output; 1 hit token rounds to 0.
        let one = Usage {
            prompt_tokens: 1,
            cached_tokens: 1,
            completion_tokens: 1,
            ..Usage::default()
        };
        assert_eq!(PriceList::Tokens(flash()).cost(&one), 4);
        assert_eq!(PriceList::ToolCall(5_000).cost(&Usage::default()), 5_000);
    }

    #[test]
    fn the_worst_case_bounds_every_real_cost() {
        let list = PriceList::Tokens(flash());
        // 300 body bytes, max_tokens 100: 300 × 1 + 100 × 4 micro-CNY.
        assert_eq!(list.worst_case(300, 100), 700);
        let real = Usage {
            prompt_tokens: 80,
            cache_miss_tokens: 80,
            completion_tokens: 100,
            ..Usage::default()
        };
        assert!(list.cost(&real) <= list.worst_case(300, 100));
    }

    #[test]
    fn peak_is_beijing_weekday_office_hours_except_holidays() {
        let p = weekdays();
        assert!(!p.is_peak(beijing("2026-12-03", 8, 59)));
        assert!(p.is_peak(beijing("2026-12-03", 9, 0)));
        assert!(p.is_peak(beijing("2026-12-03", 11, 59)));
        assert!(!p.is_peak(beijing("2026-12-03", 12, 0)));
        assert!(!p.is_peak(beijing("2026-12-03", 13, 59)));
        assert!(p.is_peak(beijing("2026-12-03", 14, 0)));
        assert!(!p.is_peak(beijing("2026-12-03", 18, 0)));
        // Saturday.
        assert!(!p.is_peak(beijing("2026-12-05", 10, 0)));
        // 10:00 Beijing is 02:00 UTC: the UTC date does not matter.
        assert!(p.is_peak(beijing("2026-12-04", 0, 30) + 9 * 3_600_000));
        let mut holiday = weekdays();
        holiday
            .holidays
            .insert(Date::parse("2026-12-03").unwrap().to_days());
        assert!(!holiday.is_peak(beijing("2026-12-03", 10, 0)));
        assert!(holiday.is_peak(beijing("2026-12-04", 10, 0)));
        let mut makeup = weekdays();
        makeup
            .workdays
            .insert(Date::parse("2026-12-05").unwrap().to_days());
        assert!(makeup.is_peak(beijing("2026-12-05", 10, 0)));
    }

    #[test]
    fn a_request_is_priced_at_the_hour_it_was_sent() {
        let off = flash();
        let peak = Rates {
            input_cache_hit: 40_000,
            input_cache_miss: 2_000_000,
            output: 8_000_000,
        };
        let pricing = Pricing {
            currency: Currency::Cny,
            models: HashMap::from([(
                "deepseek-flash".to_owned(),
                ModelPrices {
                    off_peak: off,
                    peak,
                },
            )]),
            tool_call_micros: 5_000,
            peak: weekdays(),
        };
        let before = beijing("2026-12-03", 11, 59) + 59_999;
        let after = beijing("2026-12-03", 12, 0);
        assert_eq!(
            pricing.price_list(Some("deepseek-flash"), false, before),
            Some(PriceList::Tokens(peak))
        );
        assert_eq!(
            pricing.price_list(Some("deepseek-flash"), false, after),
            Some(PriceList::Tokens(off))
        );
        assert_eq!(pricing.price_list(Some("other"), false, after), None);
        assert_eq!(
            pricing.price_list(None, true, after),
            Some(PriceList::ToolCall(5_000))
        );
    }

    #[test]
    fn units_print_exactly() {
        assert_eq!(format_units(158_000), "0.158");
        assert_eq!(format_units(1_000_000), "1.00");
        assert_eq!(format_units(4), "0.000004");
        assert_eq!(format_units(-1_500_000), "-1.50");
        assert_eq!(hit_ratio(0, 0), None);
        assert_eq!(hit_ratio(3, 1), Some(0.75));
    }
}
