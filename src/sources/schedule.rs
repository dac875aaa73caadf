//! When a polling source (SQLite tables, outbox, HTTP) runs its passes: every `poll_interval`, or on a
//! cron `schedule`; and, with `full_schedule`, a full re-sync on a cron of its own. Both cron
//! expressions are read in `timezone` (an IANA name, default UTC).
//!
//! Missed runs after downtime: a source runs one pass when it starts, whatever the schedule (the
//! passes missed while it was down are one pass of catching up, not one per missed tick). A full
//! re-sync whose time passed while the source was down runs once at start-up: the time of the last
//! full re-sync is kept in the state database for this.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

pub use crate::config::sources::ScheduleConfig;

/// A source's schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    interval: Duration,
    cron: Option<Cron>,
    full: Option<Cron>,
    timezone: Tz,
}

/// The state key under which a source keeps the time of its last full re-sync (µs).
pub const LAST_FULL_KEY: &str = "schedule:last_full_micros";

impl Schedule {
    /// Reads the config; `interval` applies when there is no `schedule`. Errors name the field.
    pub fn new(config: &ScheduleConfig, interval: Duration) -> Result<Schedule, String> {
        let cron = |field: &str, text: &Option<String>| -> Result<Option<Cron>, String> {
            text.as_deref()
                .map(|t| {
                    Cron::from_str(t).map_err(|e| {
                        format!("`{field}` = {t:?} is not a cron expression (MIN HOUR DOM MON DOW, optionally with seconds first): {e}")
                    })
                })
                .transpose()
        };
        let timezone = match config.timezone.as_deref() {
            None => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| {
                format!("`timezone` = {name:?} is not an IANA time zone name (e.g. \"Europe/Berlin\", \"UTC\")")
            })?,
        };
        if config.timezone.is_some() && config.schedule.is_none() && config.full_schedule.is_none() {
            return Err("`timezone` applies to `schedule` and `full_schedule`; set one of them".into());
        }
        Ok(Schedule {
            interval,
            cron: cron("schedule", &config.schedule)?,
            full: cron("full_schedule", &config.full_schedule)?,
            timezone,
        })
    }

    /// When the next regular pass is due after a pass that ended at `now`.
    pub fn next_pass(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match &self.cron {
            None => now + self.interval,
            Some(cron) => self.next_tick(cron, now).unwrap_or(now + self.interval),
        }
    }

    /// When the next full re-sync is due after `after` (None without `full_schedule`).
    pub fn next_full(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.full.as_ref().and_then(|cron| self.next_tick(cron, after))
    }

    /// Whether a full re-sync is owed at start-up: one was due between the last one and now.
    /// Without a record of a last one, none is owed (a source's first pass reads everything anyway).
    pub fn full_owed(&self, last_full: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        match (last_full, self.full.is_some()) {
            (Some(last), true) => self.next_full(last).is_some_and(|due| due <= now),
            _ => false,
        }
    }

    fn next_tick(&self, cron: &Cron, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.timezone);
        cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
    }

    /// Human form for logs and status: the cron and zone, or the interval.
    pub fn describe(&self) -> String {
        match &self.cron {
            Some(cron) => format!("cron {:?} in {}", cron.pattern.to_string(), self.timezone),
            None => format!("every {} s", self.interval.as_secs()),
        }
    }
}

/// A source's clock between passes: when the next one is due and whether it is a full re-sync.
#[derive(Debug)]
pub struct PassClock {
    schedule: Schedule,
    next_due: DateTime<Utc>,
    next_full: Option<DateTime<Utc>>,
    full_owed: bool,
}

impl PassClock {
    /// A clock whose first pass is due now; a full one when a full re-sync was missed (`last_full`:
    /// when the last one ran, from the state database).
    pub fn new(schedule: Schedule, last_full: Option<DateTime<Utc>>) -> PassClock {
        let now = Utc::now();
        let full_owed = schedule.full_owed(last_full, now);
        let next_full = schedule.next_full(now);
        PassClock { schedule, next_due: now, next_full, full_owed }
    }

    /// Whether a pass is due now (a regular or a full one).
    pub fn due(&self) -> bool {
        let now = Utc::now();
        self.full_owed || self.next_due <= now || self.next_full.is_some_and(|f| f <= now)
    }

    /// Whether the pass starting now is a full re-sync.
    pub fn full_now(&self) -> bool {
        self.full_owed || self.next_full.is_some_and(|f| f <= Utc::now())
    }

    /// Records a pass that finished now (`full`: it was a full re-sync).
    pub fn finished(&mut self, full: bool) {
        let now = Utc::now();
        self.next_due = self.schedule.next_pass(now);
        if full {
            self.full_owed = false;
            self.next_full = self.schedule.next_full(now);
        }
    }

    /// When the next regular pass is due, µs since the epoch.
    pub fn next_due_micros(&self) -> i64 {
        self.next_due.timestamp_micros()
    }

    /// Time until the next pass of either kind is due.
    pub fn until_due(&self) -> Duration {
        let next = self.next_full.map_or(self.next_due, |f| f.min(self.next_due));
        until(next)
    }

    /// Makes a regular pass due now (`POST /sync`).
    pub fn trigger(&mut self) {
        self.next_due = Utc::now();
    }

    /// Makes a full re-sync due now (`POST /sync?full=true`).
    pub fn trigger_full(&mut self) {
        self.full_owed = true;
    }

    /// For status: the next pass, and the next full re-sync.
    pub fn observable(&self) -> serde_json::Value {
        serde_json::json!({
            "schedule": self.schedule.describe(),
            "next_pass": self.next_due.to_rfc3339(),
            "next_full_resync": self.next_full.map(|f| f.to_rfc3339()),
        })
    }
}

/// When `source` last finished a full re-sync, from the state database.
pub fn last_full_resync(
    checkpoints: &crate::sources::checkpoint::CheckpointStore,
    source: &str,
) -> Result<Option<DateTime<Utc>>, crate::sources::SourceError> {
    let saved = checkpoints
        .state(source, LAST_FULL_KEY)
        .map_err(|error| crate::sources::SourceError::Checkpoint { source_name: source.into(), error })?;
    Ok(saved.and_then(|micros| micros.parse().ok()).and_then(DateTime::from_timestamp_micros))
}

/// Records that `source` finished a full re-sync now.
pub fn record_full_resync(
    checkpoints: &crate::sources::checkpoint::CheckpointStore,
    source: &str,
) -> Result<(), crate::sources::SourceError> {
    let now = Utc::now().timestamp_micros().to_string();
    checkpoints
        .save_progress(source, &[(LAST_FULL_KEY.to_string(), Some(now))], "", &[])
        .map_err(|error| crate::sources::SourceError::Checkpoint { source_name: source.into(), error })
}

/// The time until `at` from now (zero when it has passed).
pub fn until(at: DateTime<Utc>) -> Duration {
    (at - Utc::now()).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn config(schedule: Option<&str>, full: Option<&str>, tz: Option<&str>) -> ScheduleConfig {
        ScheduleConfig {
            schedule: schedule.map(str::to_string),
            full_schedule: full.map(str::to_string),
            timezone: tz.map(str::to_string),
        }
    }

    #[test]
    fn a_cron_in_a_time_zone_replaces_the_interval() {
        let schedule =
            Schedule::new(&config(Some("30 7 * * *"), None, Some("Asia/Kolkata")), Duration::from_secs(60)).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 12, 6, 1, 0, 0).unwrap();
        // 07:30 in Kolkata (UTC+05:30) is 02:00 UTC.
        assert_eq!(schedule.next_pass(now), Utc.with_ymd_and_hms(2026, 12, 6, 2, 0, 0).unwrap());
        assert_eq!(
            schedule.next_pass(Utc.with_ymd_and_hms(2026, 12, 6, 2, 0, 0).unwrap()),
            Utc.with_ymd_and_hms(2026, 12, 7, 2, 0, 0).unwrap()
        );
        let plain = Schedule::new(&ScheduleConfig::default(), Duration::from_secs(60)).unwrap();
        assert_eq!(plain.next_pass(now), now + chrono::Duration::seconds(60));
    }

    #[test]
    fn a_missed_full_resync_is_owed_once() {
        let schedule = Schedule::new(&config(None, Some("0 2 * * *"), None), Duration::from_secs(60)).unwrap();
        let last = Utc.with_ymd_and_hms(2026, 12, 1, 2, 0, 0).unwrap();
        // Down from Dec 1 to Dec 6: one full re-sync owed, not five.
        assert!(schedule.full_owed(Some(last), Utc.with_ymd_and_hms(2026, 12, 6, 9, 0, 0).unwrap()));
        assert!(!schedule.full_owed(Some(last), Utc.with_ymd_and_hms(2026, 12, 2, 1, 59, 0).unwrap()));
        assert!(!schedule.full_owed(None, Utc.with_ymd_and_hms(2026, 12, 6, 9, 0, 0).unwrap()));
        assert_eq!(schedule.next_full(last), Some(Utc.with_ymd_and_hms(2026, 12, 2, 2, 0, 0).unwrap()));
    }

    #[test]
    fn bad_fields_are_named() {
        let err = Schedule::new(&config(Some("every day"), None, None), Duration::ZERO).unwrap_err();
        assert!(err.contains("`schedule`"), "{err}");
        let err = Schedule::new(&config(Some("0 2 * * *"), None, Some("Mars/Olympus")), Duration::ZERO).unwrap_err();
        assert!(err.contains("`timezone`"), "{err}");
        let err = Schedule::new(&config(None, None, Some("UTC")), Duration::ZERO).unwrap_err();
        assert!(err.contains("set one of them"), "{err}");
    }
}
