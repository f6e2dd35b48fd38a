//! The configured `timezone`: which civil day a moment falls on (the core's `Calendar`, for
//! `least_occupied`) and when that day began (the start of "today" in queue statistics).
//!
//! The IANA database is compiled into the binary (jiff's bundled tzdb), so a server behaves the
//! same on a host without tzdata, and a zone name is checked when the configuration is read.

use std::fmt;

use handoff_core::{Calendar, Timestamp};

const DAY_MS: i64 = 86_400_000;

/// A named IANA time zone, e.g. `Europe/Paris`, or `UTC`.
#[derive(Clone)]
pub struct Zone {
    name: String,
    tz: jiff::tz::TimeZone,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IANA time zone name such as \"UTC\" or \"Europe/Paris\"")]
pub struct UnknownZone(pub String);

impl Zone {
    pub fn utc() -> Zone {
        Zone {
            name: "UTC".to_owned(),
            tz: jiff::tz::TimeZone::UTC,
        }
    }

    /// Looks the name up in the bundled database (case-insensitively, as jiff does).
    pub fn named(name: &str) -> Result<Zone, UnknownZone> {
        let tz = jiff::tz::TimeZone::get(name).map_err(|_| UnknownZone(name.to_owned()))?;
        Ok(Zone {
            name: name.to_owned(),
            tz,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn instant(at: Timestamp) -> Option<jiff::Timestamp> {
        jiff::Timestamp::from_millisecond(at.millis()).ok()
    }

    /// The UTC offset in effect at `at`, in milliseconds.
    fn offset_ms(&self, at: Timestamp) -> i64 {
        Self::instant(at).map_or(0, |instant| {
            i64::from(self.tz.to_offset(instant).seconds()) * 1000
        })
    }

    /// When the civil day holding `at` began in this zone: its midnight, or the first moment
    /// of the day where a daylight-saving change skips midnight.
    pub fn day_start(&self, at: Timestamp) -> Timestamp {
        let start = Self::instant(at)
            .map(|instant| instant.to_zoned(self.tz.clone()))
            .and_then(|zoned| zoned.start_of_day().ok())
            .map(|start| start.timestamp().as_millisecond());
        match start {
            Some(ms) => Timestamp::from_millis(ms),
            // Outside jiff's range (years beyond ±9999): a plain UTC day is close enough.
            None => Timestamp::from_millis(at.millis().div_euclid(DAY_MS) * DAY_MS),
        }
    }
}

impl Calendar for Zone {
    fn day_of(&self, at: Timestamp) -> i64 {
        // The local wall clock's day number: local time is UTC plus the offset in effect.
        (at.millis().saturating_add(self.offset_ms(at))).div_euclid(DAY_MS)
    }
}

impl Default for Zone {
    fn default() -> Zone {
        Zone::utc()
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Zone").field(&self.name).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        crate::wire::parse_time(text).expect("a valid time")
    }

    #[test]
    fn utc_days_start_at_midnight_utc() {
        let zone = Zone::named("UTC").unwrap();
        let now = at("2026-03-08T23:59:59.999Z");
        assert_eq!(zone.day_start(now), at("2026-03-08T00:00:00.000Z"));
        assert_eq!(
            zone.day_of(now) + 1,
            zone.day_of(at("2026-03-09T00:00:00.000Z"))
        );
        assert_eq!(zone.day_of(now), Zone::utc().day_of(now));
    }

    #[test]
    fn a_named_zone_starts_its_day_at_local_midnight() {
        let paris = Zone::named("Europe/Paris").unwrap();
        // Winter: UTC+1. 23:30 UTC is already the next day in Paris.
        let late = at("2026-01-15T23:30:00.000Z");
        assert_eq!(paris.day_start(late), at("2026-01-15T23:00:00.000Z"));
        assert_eq!(paris.day_of(late), Zone::utc().day_of(late) + 1);
        // Summer: UTC+2.
        let noon = at("2026-07-01T10:00:00.000Z");
        assert_eq!(paris.day_start(noon), at("2026-06-30T22:00:00.000Z"));
        let new_york = Zone::named("America/New_York").unwrap();
        assert_eq!(new_york.day_start(noon), at("2026-07-01T04:00:00.000Z"));
        assert_eq!(
            new_york.day_of(at("2026-07-01T03:59:59.999Z")) + 1,
            new_york.day_of(noon)
        );
    }

    #[test]
    fn a_day_that_skips_midnight_starts_at_its_first_moment() {
        // Santiago springs forward at 00:00 local on 2026-09-06: the day starts at 01:00 -03.
        let santiago = Zone::named("America/Santiago").unwrap();
        let start = santiago.day_start(at("2026-09-06T12:00:00.000Z"));
        assert_eq!(start, at("2026-09-06T04:00:00.000Z"));
    }

    #[test]
    fn unknown_names_are_refused() {
        assert_eq!(
            Zone::named("Mars/Olympus").unwrap_err(),
            UnknownZone("Mars/Olympus".to_owned())
        );
        assert!(Zone::named("").is_err());
    }
}
