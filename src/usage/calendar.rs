//! Dates without a date crate: UTC days and months for quotas and budgets,
//! and Beijing time (UTC+8, no daylight saving) for DeepSeek's peak hours.

pub const DAY_MS: u64 = 86_400_000;
/// Beijing is UTC+8 all year.
pub const BEIJING_OFFSET_MS: u64 = 8 * 3_600_000;

/// A civil date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub year: i64,
    pub month: u32,
    pub day: u32,
}

impl Date {
    /// Days since 1970-01-01 to a date (Howard Hinnant's algorithm).
    pub fn from_days(days: i64) -> Date {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Date { year, month, day }
    }

    /// The date to days since 1970-01-01.
    pub fn to_days(self) -> i64 {
        let year = self.year - i64::from(self.month <= 2);
        let era = year.div_euclid(400);
        let yoe = year.rem_euclid(400);
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// `YYYY-MM-DD`, checked (the day must exist).
    pub fn parse(text: &str) -> Option<Date> {
        let b = text.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let num = |s: &str| {
            s.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| s.parse().ok())?
        };
        let date = Date {
            year: num(&text[0..4])?,
            month: num(&text[5..7])? as u32,
            day: num(&text[8..10])? as u32,
        };
        (Date::from_days(date.to_days()) == date).then_some(date)
    }

    /// Monday is 0.
    pub fn weekday(days: i64) -> u32 {
        // 1970-01-01 was a Thursday.
        (days + 3).rem_euclid(7) as u32
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// The UTC month of `now_ms` as months since January 1970.
pub fn month_index(now_ms: u64) -> u64 {
    let d = Date::from_days((now_ms / DAY_MS) as i64);
    ((d.year - 1970) * 12 + i64::from(d.month) - 1).max(0) as u64
}

/// The first millisecond of the UTC month of `now_ms`.
pub fn month_start_ms(now_ms: u64) -> u64 {
    let d = Date::from_days((now_ms / DAY_MS) as i64);
    let first = Date { day: 1, ..d };
    first.to_days().max(0) as u64 * DAY_MS
}

/// The first millisecond of the next UTC month.
pub fn next_month_start_ms(now_ms: u64) -> u64 {
    let d = Date::from_days((now_ms / DAY_MS) as i64);
    let next = if d.month == 12 {
        Date {
            year: d.year + 1,
            month: 1,
            day: 1,
        }
    } else {
        Date {
            month: d.month + 1,
            day: 1,
            ..d
        }
    };
    next.to_days().max(0) as u64 * DAY_MS
}

/// The wall clock, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The first millisecond of the UTC day of `now_ms`.
pub fn day_start_ms(now_ms: u64) -> u64 {
    now_ms - now_ms % DAY_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_weekdays_are_right() {
        for days in [-1000, 0, 59, 60, 365, 11_016, 20_000, 20_790, 40_000] {
            assert_eq!(Date::from_days(days).to_days(), days);
        }
        assert_eq!(Date::parse("2026-12-03").unwrap().to_days(), 20_790);
        // 2026-12-03 is a Thursday; 2026-12-05 a Saturday.
        assert_eq!(Date::weekday(20_790), 3);
        assert_eq!(Date::weekday(20_792), 5);
        assert_eq!(Date::parse("2026-02-29"), None);
        assert_eq!(Date::parse("2028-02-29").unwrap().to_string(), "2028-02-29");
        assert_eq!(Date::parse("2026-1-03"), None);
        assert_eq!(Date::parse("+026-01-03"), None);
    }

    #[test]
    fn months_start_and_end_in_utc() {
        let dec3 = 20_790 * DAY_MS + 5_000;
        assert_eq!(month_start_ms(dec3), 20_788 * DAY_MS);
        assert_eq!(
            Date::from_days((next_month_start_ms(dec3) / DAY_MS) as i64).to_string(),
            "2027-01-01"
        );
        assert_eq!(month_index(dec3) % 12, 11);
        assert_eq!(
            month_index(next_month_start_ms(dec3)),
            month_index(dec3) + 1
        );
        assert_eq!(
            month_index(next_month_start_ms(dec3) - 1),
            month_index(dec3)
        );
    }
}
