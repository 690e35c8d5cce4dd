//! Cron schedules as CronJobs write them — parsed by the API's validation and evaluated
//! by the CronJob controller: five fields (minute, hour, day of month, month, day of
//! week) or a descriptor (`@hourly`, `@daily`/`@midnight`, `@weekly`,
//! `@monthly`, `@yearly`/`@annually`), evaluated in UTC.
//!
//! Each field takes `*` (or `?` in the day fields), numbers, `a-b` ranges, `/step` on
//! either, and comma lists; months and weekdays also by their three-letter English
//! names, and 7 is Sunday as well as 0. As in cron (and the library Kubernetes uses),
//! when both day fields are restricted a day matches if either does.

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// The day-of-month field was `*` or `?`.
    any_day: bool,
    /// The day-of-week field was `*` or `?`.
    any_weekday: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// The furthest a search for the next run looks (a schedule such as `0 0 30 2 *`
/// never fires).
const HORIZON_DAYS: i64 = 366 * 5;

impl Schedule {
    /// Parses `text`; the error says what is wrong, for the API's message.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            t if t.starts_with('@') => return Err(format!("unrecognized descriptor: {t}")),
            t => t,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {text}",
                fields.len()
            ));
        }
        let weekdays = field(fields[4], 0, 7, &WEEKDAYS, true)?;
        // 7 is Sunday too.
        let weekdays = (weekdays & 0x7f) | ((weekdays >> 7) & 1);
        Ok(Schedule {
            minutes: field(fields[0], 0, 59, &[], false)?,
            hours: field(fields[1], 0, 23, &[], false)?,
            days: field(fields[2], 1, 31, &[], true)?,
            months: field(fields[3], 1, 12, &MONTHS, false)?,
            weekdays,
            any_day: matches!(fields[2], "*" | "?"),
            any_weekday: matches!(fields[4], "*" | "?"),
        })
    }

    fn day_matches(&self, t: &DateTime<Utc>) -> bool {
        let dom = bit(self.days, t.day());
        let dow = bit(self.weekdays, t.weekday().num_days_from_sunday());
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// The first time strictly after `after` (to the minute) the schedule fires.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = after.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let horizon = start + Duration::days(HORIZON_DAYS);
        let mut t = start;
        while t < horizon {
            if !bit(self.months, t.month()) {
                // The first minute of next month.
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single()?;
                continue;
            }
            if !self.day_matches(&t) {
                t = Utc
                    .with_ymd_and_hms(t.year(), t.month(), t.day(), 0, 0, 0)
                    .single()?
                    + Duration::days(1);
                continue;
            }
            if !bit(self.hours, t.hour()) {
                t = t.with_minute(0)? + Duration::hours(1);
                continue;
            }
            if !bit(self.minutes, t.minute()) {
                t += Duration::minutes(1);
                continue;
            }
            return Some(t);
        }
        None
    }
}

fn bit(set: u64, n: u32) -> bool {
    set & (1 << n) != 0
}

/// One field as a bit set over `min..=max`.
fn field(text: &str, min: u32, max: u32, names: &[&str], question: bool) -> Result<u64, String> {
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("invalid step in {part:?}"))?;
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" || (question && range == "?") {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, min, max, names)?, value(b, min, max, names)?)
        } else {
            let v = value(range, min, max, names)?;
            // `a/n` runs from a to the end, as in the library Kubernetes uses.
            (v, if part.contains('/') { max } else { v })
        };
        if lo > hi {
            return Err(format!(
                "beginning of range ({lo}) beyond end of range ({hi}): {part:?}"
            ));
        }
        let mut v = lo;
        while v <= hi {
            set |= 1 << v;
            v += step;
        }
    }
    Ok(set)
}

fn value(text: &str, min: u32, max: u32, names: &[&str]) -> Result<u32, String> {
    let upper = text.to_ascii_uppercase();
    if let Some(i) = names.iter().position(|n| *n == upper) {
        // Month names start at 1, weekday names at 0: offset by the field's minimum.
        return Ok(i as u32 + min);
    }
    let v: u32 = text
        .parse()
        .map_err(|_| format!("failed to parse int from {text:?}"))?;
    if v < min || v > max {
        return Err(format!("value {v} out of range [{min}, {max}]"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(schedule: &str, after: &str) -> String {
        Schedule::parse(schedule)
            .unwrap()
            .next_after(at(after))
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
    }

    #[test]
    fn next_runs() {
        assert_eq!(
            next("* * * * *", "2024-01-01T10:00:30Z"),
            "2024-01-01T10:01:00+00:00"
        );
        assert_eq!(
            next("*/5 * * * *", "2024-01-01T10:01:00Z"),
            "2024-01-01T10:05:00+00:00"
        );
        assert_eq!(
            next("30 2 * * *", "2024-01-01T10:00:00Z"),
            "2024-01-02T02:30:00+00:00"
        );
        assert_eq!(
            next("0 0 1 * *", "2024-01-31T23:59:00Z"),
            "2024-02-01T00:00:00+00:00"
        );
        assert_eq!(
            next("@hourly", "2024-12-31T23:10:00Z"),
            "2025-01-01T00:00:00+00:00"
        );
        // 2024-01-01 is a Monday: the next Friday is the 5th.
        assert_eq!(
            next("0 9 * * FRI", "2024-01-01T10:00:00Z"),
            "2024-01-05T09:00:00+00:00"
        );
        assert_eq!(
            next("0 9 * * 7", "2024-01-01T10:00:00Z"),
            "2024-01-07T09:00:00+00:00"
        );
        assert_eq!(
            next("0 0 29 FEB *", "2024-03-01T00:00:00Z"),
            "2028-02-29T00:00:00+00:00"
        );
        assert_eq!(
            next("15-45/15 1,3 * * *", "2024-01-01T01:15:00Z"),
            "2024-01-01T01:30:00+00:00"
        );
        assert_eq!(next("0 0 30 2 *", "2024-01-01T00:00:00Z"), "", "never");
    }

    #[test]
    fn restricted_day_fields_match_either() {
        // The 15th, or any Monday.
        assert_eq!(
            next("0 0 15 * 1", "2024-01-02T00:00:00Z"),
            "2024-01-08T00:00:00+00:00"
        );
        assert_eq!(
            next("0 0 15 * 1", "2024-01-13T00:00:00Z"),
            "2024-01-15T00:00:00+00:00"
        );
    }

    #[test]
    fn bad_schedules_say_why() {
        for (text, why) in [
            ("* * * *", "expected exactly 5 fields"),
            ("60 * * * *", "out of range"),
            ("* * * * MOO", "failed to parse int"),
            ("5-1 * * * *", "beyond end of range"),
            ("*/0 * * * *", "invalid step"),
            ("@often", "unrecognized descriptor"),
        ] {
            let err = Schedule::parse(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
