//! The access line as text (the default log format), written by hand in
//! one pass into one buffer: `tracing`'s formatter and `core::fmt` cost
//! ~11,000 instructions a line, four fifths of it in formatting numbers,
//! floats and the time (BENCHMARKS.md, issue 15). The time and level are
//! printed as `tracing_subscriber`'s text format prints them (for clocks
//! between 1970 and 9999), and the two durations to the microsecond
//! (truncated: `latency_ms=12.345`, `ttfb_ms=0.000`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A line being written: ` name=value` fields after a head.
pub(super) struct TextLine(String);

impl TextLine {
    /// A line that starts with `tracing_subscriber`'s time and level
    /// (`2026-12-07T19:05:12.345678Z  INFO `), for the direct writer.
    pub fn stamped(now: SystemTime) -> Self {
        let mut line = String::with_capacity(512);
        timestamp(&mut line, now);
        line.push_str("  INFO ");
        Self(line)
    }

    /// A line without a head (`tracing` adds its own).
    pub fn bare() -> Self {
        Self(String::with_capacity(512))
    }

    pub fn push(&mut self, text: &str) {
        self.0.push_str(text);
    }

    pub fn text(&mut self, name: &str, value: &str) {
        self.0.push(' ');
        self.0.push_str(name);
        self.0.push('=');
        self.0.push_str(value);
    }

    pub fn number(&mut self, name: &str, value: u64) {
        self.text(name, itoa::Buffer::new().format(value));
    }

    /// Milliseconds with three decimals: `latency_ms=12.345`.
    pub fn millis(&mut self, name: &str, d: Duration) {
        let micros = d.as_micros();
        self.text(name, itoa::Buffer::new().format(micros / 1000));
        self.0.push('.');
        push_digits(&mut self.0, (micros % 1000) as u64, 3);
    }

    /// The line's text so far.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The finished line, with its newline.
    pub fn finish(mut self) -> String {
        self.0.push('\n');
        self.0
    }
}

/// `now` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC), as `tracing_subscriber`
/// prints it.
fn timestamp(out: &mut String, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_date(days);
    // Years from 1970 to 9999: four digits.
    push_digits(out, year, 4);
    out.push('-');
    push_digits(out, month, 2);
    out.push('-');
    push_digits(out, day, 2);
    out.push('T');
    push_digits(out, rest / 3600, 2);
    out.push(':');
    push_digits(out, rest / 60 % 60, 2);
    out.push(':');
    push_digits(out, rest % 60, 2);
    out.push('.');
    push_digits(out, u64::from(since.subsec_micros()), 6);
    out.push('Z');
}

/// The (year, month, day) `days` after 1970-01-01: Howard Hinnant's
/// `civil_from_days`, for dates from 1970 on.
pub fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(month <= 2), month, day)
}

/// `n`'s last `width` decimal digits, zero-padded.
fn push_digits(out: &mut String, n: u64, width: u32) {
    for place in (0..width).rev() {
        out.push(char::from(b'0' + (n / 10u64.pow(place) % 10) as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, micros: u64) -> String {
        let mut out = String::new();
        timestamp(
            &mut out,
            UNIX_EPOCH + Duration::from_micros(secs * 1_000_000 + micros),
        );
        out
    }

    #[test]
    fn times_print_as_tracing_subscriber_prints_them() {
        // Expected values from Python's datetime.
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(1_709_164_800, 500_000), "2024-02-29T00:00:00.500000Z");
        assert_eq!(at(1_796_654_712, 345_678), "2026-12-07T14:45:12.345678Z");
        assert_eq!(at(4_102_444_799, 999_999), "2099-12-31T23:59:59.999999Z");
        assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000000Z");
    }

    #[test]
    fn a_line_has_its_head_fields_and_newline() {
        let mut line = TextLine::stamped(UNIX_EPOCH + Duration::from_secs(1_796_654_712));
        line.push("request");
        line.text("user", "alice");
        line.number("status", 200);
        line.number("bytes_out", u64::MAX);
        line.millis("latency_ms", Duration::from_nanos(12_345_678));
        line.millis("ttfb_ms", Duration::from_micros(7));
        line.millis("long_ms", Duration::from_secs(100_000));
        line.millis("cut_ms", Duration::from_nanos(999_999_500));
        assert_eq!(
            line.finish(),
            "2026-12-07T14:45:12.000000Z  INFO request user=alice status=200 \
             bytes_out=18446744073709551615 latency_ms=12.345 ttfb_ms=0.007 \
             long_ms=100000000.000 cut_ms=999.999\n"
        );
        let mut bare = TextLine::bare();
        bare.push("request");
        bare.number("attempts", 0);
        assert_eq!(bare.as_str(), "request attempts=0");
    }
}
