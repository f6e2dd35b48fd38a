//! Queue statistics: what happened to each queue's callers in the last 15 minutes and today.
//!
//! The state machine records each caller's arrival and departure as it applies events, and a
//! reader asks for a [`WindowPair`] at a given `now`. Nothing here reads a clock or knows a time
//! zone: the caller passes `now` and the start of "today" in the configured zone.
//!
//! # Definitions
//!
//! Every count is by the time of its own event ("interval reporting", as contact-centre reports
//! do): a caller who entered yesterday and is answered today counts as answered today, but was
//! offered yesterday. So within one window `answered + abandoned + timed_out + overflowed` may
//! exceed `offered`.
//!
//! - `offered`: callers that entered the queue (offered *to the queue*, not to an agent; a caller
//!   offered to three agents in turn counts once).
//! - `answered`: callers an agent accepted. `asa_s` is the mean of their waits, from entering the
//!   queue to the accept, in seconds; 0 when none was answered.
//! - `abandoned`: callers who hung up while waiting or while offered.
//! - `timed_out`, `overflowed`: callers that left otherwise (`max_wait_s` passed, with or without
//!   an overflow queue). They are neither answered nor abandoned and enter no ratio.
//! - `service_level` = answered within the threshold / (answered + abandoned), where "within"
//!   means a wait of at most `service_level_s` (inclusive). Every abandon counts against it,
//!   however short. 1.0 when no caller was answered or abandoned: nobody was failed.
//! - `abandon_rate` = abandoned / (answered + abandoned); 0 when neither happened.
//!
//! Windows: `last_15m` is `(now - 15 min, now]`; `today` is `[day_start, now]`. Events after
//! `now` are in neither.
//!
//! # Cost
//!
//! Each queue keeps its records in time order in a `VecDeque`, 24 bytes each. Recording is
//! amortised O(1) when times arrive in order (a late one is inserted in place, O(distance from
//! the back)) and drops records older than [`RETENTION_MS`] before the newest. A snapshot is
//! O(log n + k), k being the records in the union of its two windows. The service-level threshold
//! is a query argument, so the windows are summed at query time rather than kept as running sums.

use std::collections::VecDeque;

use crate::fast_map::FastMap;
use crate::ids::{QueueName, Timestamp};

/// Length of the `last_15m` window.
pub const LAST_WINDOW_MS: i64 = 15 * 60 * 1000;

/// How far back records are kept, measured from the newest one. The longest civil day (a
/// daylight-saving fall-back) lasts 25 hours, so `today` never reaches further back than this.
pub const RETENTION_MS: i64 = 25 * 60 * 60 * 1000;

/// The figures of one window, as the contract's `last_15m` and `today` objects carry them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub offered: u64,
    pub answered: u64,
    pub abandoned: u64,
    pub timed_out: u64,
    pub overflowed: u64,
    pub asa_s: f64,
    /// 0..=1.
    pub service_level: f64,
    /// 0..=1.
    pub abandon_rate: f64,
}

impl Window {
    /// A window in which nothing happened.
    pub const EMPTY: Window = Window {
        offered: 0,
        answered: 0,
        abandoned: 0,
        timed_out: 0,
        overflowed: 0,
        asa_s: 0.0,
        service_level: 1.0,
        abandon_rate: 0.0,
    };
}

/// Written by hand because an empty window's service level is 1.0, not 0.0.
impl Default for Window {
    fn default() -> Window {
        Window::EMPTY
    }
}

/// Both windows of one queue at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowPair {
    pub last_15m: Window,
    pub today: Window,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Entered,
    Answered { waited_ms: u64 },
    // The wait is kept although no figure uses it yet, so that a definition excluding short
    // abandons needs no change in the state machine; it costs no space beside `Answered`.
    Abandoned { waited_ms: u64 },
    TimedOut,
    Overflowed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    at: Timestamp,
    outcome: Outcome,
}

/// Every queue's recent arrivals and departures. Equal histories give equal values, so states
/// rebuilt by replay compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStatistics {
    // A queue is present only while it has records, so a pruned state equals one that never
    // saw those records. Hashed: every interaction event records here, and nothing walks the
    // queues in order.
    queues: FastMap<QueueName, VecDeque<Record>>,
}

impl QueueStatistics {
    pub fn new() -> QueueStatistics {
        QueueStatistics::default()
    }

    /// A caller entered `queue` (was offered to the queue).
    pub fn record_entered(&mut self, queue: &QueueName, at: Timestamp) {
        self.record(queue, at, Outcome::Entered);
    }

    /// An agent accepted a caller of `queue` who had waited `waited_ms` since entering it.
    pub fn record_answered(&mut self, queue: &QueueName, at: Timestamp, waited_ms: u64) {
        self.record(queue, at, Outcome::Answered { waited_ms });
    }

    /// A caller of `queue` hung up, waiting or offered, after `waited_ms` since entering it.
    pub fn record_abandoned(&mut self, queue: &QueueName, at: Timestamp, waited_ms: u64) {
        self.record(queue, at, Outcome::Abandoned { waited_ms });
    }

    /// A caller left `queue` because its `max_wait_s` passed and there was no overflow.
    pub fn record_timed_out(&mut self, queue: &QueueName, at: Timestamp) {
        self.record(queue, at, Outcome::TimedOut);
    }

    /// A caller left `queue` for its overflow queue (where it is then recorded as entered).
    pub fn record_overflowed(&mut self, queue: &QueueName, at: Timestamp) {
        self.record(queue, at, Outcome::Overflowed);
    }

    /// `queue`'s figures at `now`. `day_start` is the start of today in the configured time
    /// zone; `service_level_s` is the queue's service-level threshold. A queue never recorded
    /// gives two empty windows.
    ///
    /// Records more than [`RETENTION_MS`] older than the newest one are gone, so the figures are
    /// exact while neither window starts before that: with time moving forward (`now` not before
    /// the newest record), whenever `day_start` is within 25 hours of `now`.
    pub fn snapshot(
        &self,
        queue: &QueueName,
        now: Timestamp,
        day_start: Timestamp,
        service_level_s: u64,
    ) -> WindowPair {
        let Some(records) = self.queues.get(queue) else {
            return WindowPair::default();
        };
        let threshold_ms = service_level_s.saturating_mul(1000);
        let now = now.millis();
        // Exclusive: the last 15 minutes are (now - 15 min, now].
        let recent_after = now.saturating_sub(LAST_WINDOW_MS);
        let day_start = day_start.millis();
        let first = recent_after.saturating_add(1).min(day_start);
        let begin = records.partition_point(|record| record.at.millis() < first);
        let end = records.partition_point(|record| record.at.millis() <= now);

        let mut recent = Tally::default();
        let mut today = Tally::default();
        for record in records.range(begin..end.max(begin)) {
            let at = record.at.millis();
            if at > recent_after {
                recent.add(record.outcome, threshold_ms);
            }
            if at >= day_start {
                today.add(record.outcome, threshold_ms);
            }
        }
        WindowPair {
            last_15m: recent.window(),
            today: today.window(),
        }
    }

    /// Drops every record older than `now - RETENTION_MS`, and the queues left with none.
    /// Recording already bounds each active queue; this also frees the queues gone quiet.
    pub fn prune(&mut self, now: Timestamp) {
        let cutoff = now.millis().saturating_sub(RETENTION_MS);
        self.queues.retain(|_, records| {
            drop_before(records, cutoff);
            !records.is_empty()
        });
    }

    /// Forgets everything about `queue`, for when it is deleted.
    pub fn remove_queue(&mut self, queue: &QueueName) {
        self.queues.remove(queue);
    }

    fn record(&mut self, queue: &QueueName, at: Timestamp, outcome: Outcome) {
        // Looked up first so that the common case does not allocate a copy of the name.
        let records = if let Some(records) = self.queues.get_mut(queue) {
            records
        } else {
            self.queues.entry(queue.clone()).or_default()
        };
        // After any equal times, so records of one instant keep the order they were made in.
        let index = records.partition_point(|record| record.at <= at);
        records.insert(index, Record { at, outcome });
        if let Some(newest) = records.back() {
            let cutoff = newest.at.millis().saturating_sub(RETENTION_MS);
            drop_before(records, cutoff);
        }
    }
}

fn drop_before(records: &mut VecDeque<Record>, cutoff: i64) {
    while records
        .front()
        .is_some_and(|record| record.at.millis() < cutoff)
    {
        records.pop_front();
    }
}

#[derive(Default)]
struct Tally {
    entered: u64,
    answered: u64,
    answered_within: u64,
    answered_wait_ms: u128,
    abandoned: u64,
    timed_out: u64,
    overflowed: u64,
}

impl Tally {
    fn add(&mut self, outcome: Outcome, threshold_ms: u64) {
        match outcome {
            Outcome::Entered => self.entered += 1,
            Outcome::Answered { waited_ms } => {
                self.answered += 1;
                self.answered_wait_ms += u128::from(waited_ms);
                if waited_ms <= threshold_ms {
                    self.answered_within += 1;
                }
            }
            Outcome::Abandoned { .. } => self.abandoned += 1,
            Outcome::TimedOut => self.timed_out += 1,
            Outcome::Overflowed => self.overflowed += 1,
        }
    }

    fn window(&self) -> Window {
        let ended = self.answered + self.abandoned;
        // One division of two exact values each, so the results are correctly rounded and
        // reproducible (the tests compare them with `==`).
        let asa_s = if self.answered == 0 {
            0.0
        } else {
            self.answered_wait_ms as f64 / (self.answered as f64 * 1000.0)
        };
        let (service_level, abandon_rate) = if ended == 0 {
            (1.0, 0.0)
        } else {
            (
                self.answered_within as f64 / ended as f64,
                self.abandoned as f64 / ended as f64,
            )
        };
        Window {
            offered: self.entered,
            answered: self.answered,
            abandoned: self.abandoned,
            timed_out: self.timed_out,
            overflowed: self.overflowed,
            asa_s,
            service_level,
            abandon_rate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1000;
    const MINUTE: i64 = 60 * SECOND;
    const HOUR: i64 = 60 * MINUTE;
    /// 2026-01-01T00:00:00Z, the start of "today" in the scenario.
    const DAY_START: i64 = 1_767_225_600_000;

    fn queue(name: &str) -> QueueName {
        QueueName::parse(name).unwrap()
    }

    /// Milliseconds relative to `DAY_START`.
    fn t(offset_ms: i64) -> Timestamp {
        Timestamp::from_millis(DAY_START + offset_ms)
    }

    enum Step {
        Entered,
        Answered(u64),
        Abandoned(u64),
        TimedOut,
        Overflowed,
    }

    fn play(stats: &mut QueueStatistics, queue: &QueueName, steps: &[(i64, Step)]) {
        for (at, step) in steps {
            let at = t(*at);
            match step {
                Step::Entered => stats.record_entered(queue, at),
                Step::Answered(waited) => stats.record_answered(queue, at, *waited),
                Step::Abandoned(waited) => stats.record_abandoned(queue, at, *waited),
                Step::TimedOut => stats.record_timed_out(queue, at),
                Step::Overflowed => stats.record_overflowed(queue, at),
            }
        }
    }

    /// Ten callers around midnight, seen at 00:10, so `last_15m` is (23:55, 00:10] and reaches
    /// into yesterday, while `today` is [00:00, 00:10]. Threshold 20 s.
    fn scenario() -> Vec<(i64, Step)> {
        use Step::*;
        let s = SECOND;
        vec![
            // c1 entirely yesterday, long before either window.
            (-3600 * s, Entered),
            (-3540 * s, Answered(60_000)),
            // c2 answered exactly at now - 15 min: the window is open on that side.
            (-400 * s, Entered),
            // c3 entered before the window, answered inside it.
            (-350 * s, Entered),
            (-300 * s, Answered(100_000)),
            (-290 * s, Answered(60_000)),
            // c4 entered and abandoned yesterday, inside the last 15 minutes.
            (-200 * s, Entered),
            (-100 * s, Abandoned(100_000)),
            // c5 entered yesterday, answered today within the threshold.
            (-10 * s, Entered),
            // c6 entered exactly at midnight, answered after exactly the threshold.
            (0, Entered),
            (5 * s, Answered(15_000)),
            (20 * s, Answered(20_000)),
            // c7 abandoned quickly: still counts against the service level.
            (100 * s, Entered),
            (110 * s, Abandoned(10_000)),
            // c8 answered one millisecond past the threshold.
            (200 * s, Entered),
            (220 * s + 1, Answered(20_001)),
            // c9 timed out exactly at now.
            (300 * s, Entered),
            // c10 overflows after now: its departure is in neither window.
            (400 * s, Entered),
            (600 * s, TimedOut),
            (650 * s, Overflowed),
        ]
    }

    fn now() -> Timestamp {
        t(10 * MINUTE)
    }

    #[test]
    fn hand_computed_scenario_across_midnight_and_the_fifteen_minute_edge() {
        let billing = queue("billing");
        let mut stats = QueueStatistics::new();
        play(&mut stats, &billing, &scenario());

        let pair = stats.snapshot(&billing, now(), t(0), 20);

        // Entered in (23:55, 00:10]: c4, c5, c6, c7, c8, c9, c10.
        // Answered: c3 60 s, c5 15 s, c6 20 s, c8 20.001 s; within 20 s: c5, c6.
        // Abandoned: c4, c7.
        assert_eq!(
            pair.last_15m,
            Window {
                offered: 7,
                answered: 4,
                abandoned: 2,
                timed_out: 1,
                overflowed: 0,
                asa_s: 115.001 / 4.0,
                service_level: 2.0 / 6.0,
                abandon_rate: 2.0 / 6.0,
            }
        );
        assert_eq!(pair.last_15m.asa_s, 28.75025);

        // Entered in [00:00, 00:10]: c6, c7, c8, c9, c10.
        // Answered: c5 15 s, c6 20 s, c8 20.001 s; within: c5, c6. Abandoned: c7.
        assert_eq!(
            pair.today,
            Window {
                offered: 5,
                answered: 3,
                abandoned: 1,
                timed_out: 1,
                overflowed: 0,
                asa_s: 55_001.0 / 3000.0,
                service_level: 0.5,
                abandon_rate: 0.25,
            }
        );
    }

    #[test]
    fn later_snapshots_let_old_records_slide_out() {
        let billing = queue("billing");
        let mut stats = QueueStatistics::new();
        play(&mut stats, &billing, &scenario());

        // At 00:15 the last 15 minutes are (00:00, 00:15]: c6's entry at 00:00 falls out, c10's
        // overflow at 00:10:50 comes in.
        let pair = stats.snapshot(&billing, t(15 * MINUTE), t(0), 20);
        assert_eq!(
            pair.last_15m,
            Window {
                offered: 4,
                answered: 3,
                abandoned: 1,
                timed_out: 1,
                overflowed: 1,
                asa_s: 55_001.0 / 3000.0,
                service_level: 0.5,
                abandon_rate: 0.25,
            }
        );
        assert_eq!(pair.today.offered, 5);
        assert_eq!(pair.today.overflowed, 1);

        // The same records seen from the next day: nothing in either window.
        let pair = stats.snapshot(&billing, t(24 * HOUR + 1), t(24 * HOUR), 20);
        assert_eq!(pair, WindowPair::default());
    }

    #[test]
    fn threshold_is_a_query_argument() {
        let billing = queue("billing");
        let mut stats = QueueStatistics::new();
        play(&mut stats, &billing, &scenario());

        let today = |threshold_s| stats.snapshot(&billing, now(), t(0), threshold_s).today;
        assert_eq!(today(0).service_level, 0.0);
        assert_eq!(today(15).service_level, 0.25);
        assert_eq!(today(21).service_level, 0.75);
        // The abandon always counts against it.
        assert_eq!(today(3600).service_level, 0.75);
        assert_eq!(today(u64::MAX).service_level, 0.75);
    }

    #[test]
    fn a_day_start_inside_the_last_fifteen_minutes_splits_them() {
        let billing = queue("billing");
        let mut stats = QueueStatistics::new();
        play(&mut stats, &billing, &scenario());

        // A zone whose day started at 00:03 UTC: today holds c8, c9, c10.
        let pair = stats.snapshot(&billing, now(), t(3 * MINUTE), 20);
        assert_eq!(pair.today.offered, 3);
        assert_eq!(pair.today.answered, 1);
        assert_eq!(pair.today.timed_out, 1);
        assert_eq!(pair.today.service_level, 0.0);
        assert_eq!(pair.last_15m.offered, 7);

        // A day that starts after now is empty.
        let pair = stats.snapshot(&billing, now(), t(11 * MINUTE), 20);
        assert_eq!(pair.today, Window::EMPTY);
    }

    #[test]
    fn empty_windows_are_zero_with_a_full_service_level() {
        let empty = Window::EMPTY;
        assert_eq!(Window::default(), empty);
        assert_eq!((empty.offered, empty.answered, empty.abandoned), (0, 0, 0));
        assert_eq!((empty.timed_out, empty.overflowed), (0, 0));
        assert_eq!(empty.asa_s, 0.0);
        assert_eq!(empty.service_level, 1.0);
        assert_eq!(empty.abandon_rate, 0.0);

        let mut stats = QueueStatistics::new();
        // Never seen at all.
        let pair = stats.snapshot(&queue("nobody"), now(), t(0), 20);
        assert_eq!(pair, WindowPair::default());
        assert_eq!(pair.today, empty);
        assert_eq!(pair.last_15m, empty);

        // Callers that entered and are still waiting: offered, but nothing ended.
        let billing = queue("billing");
        stats.record_entered(&billing, t(0));
        stats.record_entered(&billing, t(MINUTE));
        let pair = stats.snapshot(&billing, now(), t(0), 20);
        let waiting = Window {
            offered: 2,
            ..Window::EMPTY
        };
        assert_eq!(
            pair,
            WindowPair {
                last_15m: waiting,
                today: waiting
            }
        );

        // Timed-out and overflowed callers enter no ratio.
        stats.record_timed_out(&billing, t(2 * MINUTE));
        stats.record_overflowed(&billing, t(3 * MINUTE));
        let today = stats.snapshot(&billing, now(), t(0), 20).today;
        assert_eq!(today.service_level, 1.0);
        assert_eq!(today.abandon_rate, 0.0);
    }

    #[test]
    fn queues_are_counted_apart() {
        let billing = queue("billing");
        let sales = queue("sales");
        let mut stats = QueueStatistics::new();
        play(&mut stats, &billing, &scenario());
        stats.record_entered(&sales, t(MINUTE));
        stats.record_abandoned(&sales, t(2 * MINUTE), 60_000);

        let pair = stats.snapshot(&sales, now(), t(0), 20);
        assert_eq!(pair.today.offered, 1);
        assert_eq!(pair.today.abandoned, 1);
        assert_eq!(pair.today.abandon_rate, 1.0);
        assert_eq!(pair.today.service_level, 0.0);
        assert_eq!(stats.snapshot(&billing, now(), t(0), 20).today.offered, 5);

        stats.remove_queue(&sales);
        assert_eq!(
            stats.snapshot(&sales, now(), t(0), 20),
            WindowPair::default()
        );
    }

    /// Every snapshot figure computed from the whole history, with none of the module's code.
    fn brute_force(
        history: &[(i64, Step)],
        now: i64,
        day_start: i64,
        threshold_ms: u64,
    ) -> WindowPair {
        let window = |from: i64, inclusive: bool| {
            let inside = |at: i64| (if inclusive { at >= from } else { at > from }) && at <= now;
            let mut w = Window::EMPTY;
            let (mut wait, mut within) = (0u64, 0u64);
            for (_, step) in history.iter().filter(|(at, _)| inside(DAY_START + at)) {
                match step {
                    Step::Entered => w.offered += 1,
                    Step::Answered(waited) => {
                        w.answered += 1;
                        wait += waited;
                        within += u64::from(*waited <= threshold_ms);
                    }
                    Step::Abandoned(_) => w.abandoned += 1,
                    Step::TimedOut => w.timed_out += 1,
                    Step::Overflowed => w.overflowed += 1,
                }
            }
            if w.answered > 0 {
                w.asa_s = wait as f64 / (w.answered as f64 * 1000.0);
            }
            let ended = w.answered + w.abandoned;
            if ended > 0 {
                w.service_level = within as f64 / ended as f64;
                w.abandon_rate = w.abandoned as f64 / ended as f64;
            }
            w
        };
        WindowPair {
            last_15m: window(now - LAST_WINDOW_MS, false),
            today: window(day_start, true),
        }
    }

    #[test]
    fn pruning_bounds_memory_and_keeps_the_numbers_right() {
        let billing = queue("billing");
        let mut stats = QueueStatistics::new();
        // From two days before midnight to noon, a caller every 2 minutes, each waiting 0..60 s,
        // every fifth abandoning, every seventh timing out, every eleventh overflowing.
        let mut history = Vec::new();
        for i in 0..(60 * 30) {
            let entered = -2 * 24 * HOUR + i * 2 * MINUTE;
            let waited = (i * 7_919 % 60_000) as u64;
            let left = entered + waited as i64;
            history.push((entered, Step::Entered));
            history.push((
                left,
                match i {
                    i if i % 5 == 0 => Step::Abandoned(waited),
                    i if i % 7 == 0 => Step::TimedOut,
                    i if i % 11 == 0 => Step::Overflowed,
                    _ => Step::Answered(waited),
                },
            ));
        }
        history.sort_by_key(|(at, _)| *at);
        play(&mut stats, &billing, &history);

        let records = &stats.queues[&billing];
        let newest = records.back().unwrap().at.millis();
        assert!(records.front().unwrap().at.millis() >= newest - RETENTION_MS);
        // Two records per 2 minutes over 25 hours, plus the edges.
        assert!(records.len() <= 2 * 25 * 30 + 2, "{}", records.len());
        assert!(records.len() >= 2 * 25 * 30 - 2, "{}", records.len());

        // Seen just after the last record, from a day start 25 hours back (the longest day), from
        // midnight and from 11:00; then later, as the last 15 minutes empty.
        let end = history.last().unwrap().0 + 1;
        assert!(end > 12 * HOUR - 2 * MINUTE && end < 12 * HOUR);
        for (now, day_start) in [
            (end, end - RETENTION_MS),
            (end, 0),
            (end, 11 * HOUR),
            (end + 10 * MINUTE, 0),
            (end + 20 * MINUTE, 0),
        ] {
            for threshold_s in [0, 20, 45, 60] {
                assert_eq!(
                    stats.snapshot(&billing, t(now), t(day_start), threshold_s),
                    brute_force(
                        &history,
                        DAY_START + now,
                        DAY_START + day_start,
                        threshold_s * 1000
                    ),
                    "now {now}, day_start {day_start}, threshold {threshold_s}"
                );
            }
        }
    }

    #[test]
    fn prune_frees_quiet_queues_and_equals_a_fresh_history() {
        let billing = queue("billing");
        let sales = queue("sales");
        let mut stats = QueueStatistics::new();
        play(&mut stats, &billing, &scenario());
        stats.record_entered(&sales, t(26 * HOUR));

        // The scenario's records are more than 25 hours old; sales's is not.
        stats.prune(t(26 * HOUR + 11 * MINUTE));
        let mut fresh = QueueStatistics::new();
        fresh.record_entered(&sales, t(26 * HOUR));
        assert_eq!(stats, fresh);

        stats.prune(t(60 * HOUR));
        assert_eq!(stats, QueueStatistics::default());
    }

    #[test]
    fn late_records_land_in_time_order() {
        let billing = queue("billing");
        let mut in_order = QueueStatistics::new();
        play(&mut in_order, &billing, &scenario());

        let mut shuffled = QueueStatistics::new();
        let mut steps = scenario();
        steps.reverse();
        play(&mut shuffled, &billing, &steps);

        assert_eq!(shuffled, in_order);
        assert_eq!(
            shuffled.snapshot(&billing, now(), t(0), 20),
            in_order.snapshot(&billing, now(), t(0), 20)
        );

        // A record older than the retention behind the newest is dropped at once.
        let before = in_order.clone();
        in_order.record_entered(&billing, t(-26 * HOUR));
        assert_eq!(in_order, before);
    }
}
