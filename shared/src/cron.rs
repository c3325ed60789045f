//! Cron schedules in IANA time zones, with one rule for daylight-saving
//! changes: **a schedule fires once per matching wall-clock time**.
//!
//! * Spring forward (a local time that does not exist, e.g. 02:30 when clocks
//!   jump 02:00 → 03:00): the tick fires once, at the first instant after the
//!   gap (03:00 local), not zero times.
//! * Fall back (a local time that happens twice, e.g. 02:30 when clocks go
//!   back from 03:00 to 02:00): the tick fires once, at its first
//!   occurrence, not twice.
//!
//! Matching is done on the naive local clock, so neither rule depends on
//! the cron crate's own handling of offsets.

use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CronError {
    #[error("invalid cron expression: {0}")]
    Expression(String),
    #[error("unknown time zone `{0}` (use an IANA name such as Europe/Berlin)")]
    TimeZone(String),
}

#[derive(Debug, Clone)]
pub struct CronSchedule {
    schedule: cron::Schedule,
    tz: Tz,
}

impl CronSchedule {
    /// Standard 5-field (`m h dom mon dow`) or 6-field (with seconds first).
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, CronError> {
        let fields = expression.split_whitespace().count();
        let full = match fields {
            5 => format!("0 {expression}"),
            6 => expression.to_string(),
            _ => return Err(CronError::Expression("expected 5 or 6 fields".into())),
        };
        let schedule = cron::Schedule::from_str(&full).map_err(|e| CronError::Expression(e.to_string()))?;
        let tz = Tz::from_str(timezone).map_err(|_| CronError::TimeZone(timezone.to_string()))?;
        Ok(Self { schedule, tz })
    }

    /// The first fire instant strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local_after = after.with_timezone(&self.tz).naive_local();
        // Walk matching wall-clock times (as if the zone had no offsets) until one maps to an instant after
        // `after`. No earlier wall-clock time can: a gap maps forward to its end, a repeated hour to its
        // first occurrence. Only a repeated hour needs stepping through (at most an hour of ticks).
        let mut cursor = local_after;
        for _ in 0..10_000 {
            let next = self.schedule.after(&cursor.and_utc()).next()?.naive_utc();
            cursor = next;
            let instant = self.instant(next);
            if instant > after {
                return Some(instant);
            }
        }
        None
    }

    /// The instant a matching wall-clock time stands for, by the rules above.
    fn instant(&self, local: NaiveDateTime) -> DateTime<Utc> {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => t.with_timezone(&Utc),
            LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
            LocalResult::None => {
                // In a gap: the first local minute that exists afterwards.
                let mut probe = local;
                loop {
                    probe += chrono::Duration::minutes(1);
                    if let LocalResult::Single(t) | LocalResult::Ambiguous(t, _) = self.tz.from_local_datetime(&probe) {
                        return t.with_timezone(&Utc);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn fires(expr: &str, tz: &str, from: &str, to: &str) -> Vec<DateTime<Utc>> {
        let s = CronSchedule::parse(expr, tz).unwrap();
        let (mut at, end) = (utc(from), utc(to));
        let mut out = vec![];
        while let Some(next) = s.next_after(at) {
            if next > end {
                break;
            }
            out.push(next);
            at = next;
        }
        out
    }

    #[test]
    fn five_and_six_fields_and_zones_parse() {
        assert!(CronSchedule::parse("*/5 * * * *", "UTC").is_ok());
        assert!(CronSchedule::parse("*/2 * * * * *", "Europe/Berlin").is_ok());
        assert!(matches!(
            CronSchedule::parse("* * *", "UTC"),
            Err(CronError::Expression(_))
        ));
        assert!(matches!(
            CronSchedule::parse("61 * * * *", "UTC"),
            Err(CronError::Expression(_))
        ));
        assert!(matches!(
            CronSchedule::parse("* * * * *", "Mars/Olympus"),
            Err(CronError::TimeZone(_))
        ));
    }

    #[test]
    fn an_ordinary_day_fires_at_the_local_time() {
        // Berlin is UTC+1 in January.
        assert_eq!(
            fires(
                "30 9 * * *",
                "Europe/Berlin",
                "2026-01-10T00:00:00Z",
                "2026-01-11T00:00:00Z"
            ),
            vec![utc("2026-01-10T08:30:00Z")]
        );
    }

    #[test]
    fn a_time_skipped_by_spring_forward_fires_once_right_after_the_gap() {
        // 2026-03-29 in Berlin: 02:00 → 03:00. 02:30 does not exist that day.
        let got = fires(
            "30 2 * * *",
            "Europe/Berlin",
            "2026-03-28T00:00:00Z",
            "2026-03-31T00:00:00Z",
        );
        assert_eq!(
            got,
            vec![
                utc("2026-03-28T01:30:00Z"), // 02:30 CET
                utc("2026-03-29T01:00:00Z"), // 03:00 CEST, the first instant after the gap
                utc("2026-03-30T00:30:00Z"), // 02:30 CEST
            ]
        );
    }

    #[test]
    fn a_time_repeated_by_fall_back_fires_once() {
        // 2026-10-25 in Berlin: 03:00 → 02:00, so 02:30 happens twice.
        let got = fires(
            "30 2 * * *",
            "Europe/Berlin",
            "2026-10-24T00:00:00Z",
            "2026-10-26T12:00:00Z",
        );
        assert_eq!(
            got,
            vec![
                utc("2026-10-24T00:30:00Z"), // 02:30 CEST
                utc("2026-10-25T00:30:00Z"), // the first 02:30 (CEST) only
                utc("2026-10-26T01:30:00Z"), // 02:30 CET
            ]
        );
    }

    #[test]
    fn new_york_changes_follow_the_same_rules() {
        // 2026-03-08: 02:00 → 03:00 EDT; 2026-11-01: 02:00 → 01:00 EST.
        assert_eq!(
            fires(
                "15 2 * * *",
                "America/New_York",
                "2026-03-08T00:00:00Z",
                "2026-03-08T23:00:00Z"
            ),
            vec![utc("2026-03-08T07:00:00Z")]
        );
        assert_eq!(
            fires(
                "30 1 * * *",
                "America/New_York",
                "2026-11-01T00:00:00Z",
                "2026-11-01T23:00:00Z"
            ),
            vec![utc("2026-11-01T05:30:00Z")]
        );
    }

    #[test]
    fn second_level_schedules_step_by_seconds() {
        let got = fires("*/10 * * * * *", "UTC", "2026-01-01T00:00:00Z", "2026-01-01T00:00:35Z");
        assert_eq!(got.len(), 3);
    }
}
