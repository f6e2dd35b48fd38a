//! The last hour of each queue's statistics, in 30-second buckets, so that a supervisor who
//! opens the wallboard sees the hour behind them, not only what arrives after. Fed by the
//! statistics feed once a second; kept in memory only (a restart starts a new hour).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use handoff_core::Timestamp;
use handoff_protocol::{QueueStats, QueueStatsSample};

use crate::wire::format_time;

/// The width of one bucket, in milliseconds.
pub const BUCKET_MS: i64 = 30_000;
/// How far back the history reaches, in milliseconds.
pub const SPAN_MS: i64 = 60 * 60 * 1000;

/// One bucket of one queue: what the feed saw in `[start, start + BUCKET_MS)`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    start: i64,
    waiting: u64,
    waiting_max: u64,
    service_level: f64,
    answered_and_abandoned: u64,
}

/// Per-queue buckets, oldest first.
#[derive(Default)]
pub struct StatsHistory {
    queues: Mutex<HashMap<String, VecDeque<Bucket>>>,
}

impl StatsHistory {
    /// Records what the queue's statistics are at `at`: the bucket keeps the latest numbers
    /// and the most callers waiting at once.
    pub fn record(&self, stats: &QueueStats, at: Timestamp) {
        let start = at.millis() - at.millis().rem_euclid(BUCKET_MS);
        let window = &stats.last_15m;
        let sample = Bucket {
            start,
            waiting: stats.waiting,
            waiting_max: stats.waiting,
            service_level: window.service_level,
            answered_and_abandoned: window.answered + window.abandoned,
        };
        let mut queues = self.queues.lock().expect("stats history lock");
        let buckets = queues.entry(stats.queue.clone()).or_default();
        match buckets.back_mut() {
            Some(last) if last.start == start => {
                *last = Bucket {
                    waiting_max: last.waiting_max.max(sample.waiting),
                    ..sample
                };
            }
            _ => buckets.push_back(sample),
        }
        while buckets
            .front()
            .is_some_and(|oldest| oldest.start + BUCKET_MS <= at.millis() - SPAN_MS)
        {
            buckets.pop_front();
        }
    }

    /// Forgets the queues not in `names` (deleted ones).
    pub fn retain(&self, names: &[String]) {
        let mut queues = self.queues.lock().expect("stats history lock");
        queues.retain(|name, _| names.contains(name));
    }

    /// The buckets of the hour before `now`, oldest first; empty for a queue never seen.
    pub fn samples(&self, queue: &str, now: Timestamp) -> Vec<QueueStatsSample> {
        let queues = self.queues.lock().expect("stats history lock");
        let Some(buckets) = queues.get(queue) else {
            return Vec::new();
        };
        buckets
            .iter()
            .filter(|bucket| bucket.start + BUCKET_MS > now.millis() - SPAN_MS)
            .map(|bucket| QueueStatsSample {
                at: format_time(Timestamp::from_millis(bucket.start)),
                waiting: bucket.waiting,
                waiting_max: bucket.waiting_max,
                service_level: bucket.service_level,
                answered_and_abandoned: bucket.answered_and_abandoned,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_protocol::{AgentCounts, StatsWindow};

    fn stats(queue: &str, waiting: u64, service_level: f64) -> QueueStats {
        let window = StatsWindow {
            offered: 4,
            answered: 3,
            abandoned: 1,
            timed_out: 0,
            overflowed: 0,
            asa_s: 0.0,
            service_level,
            abandon_rate: 0.25,
        };
        QueueStats {
            queue: queue.to_owned(),
            waiting,
            longest_wait_s: 0,
            agents: AgentCounts {
                available: 0,
                away: 0,
                busy: 0,
                offline: 0,
                idle: 0,
                offered: 0,
                engaged: 0,
                wrap_up: 0,
            },
            last_15m: window,
            today: window,
            service_level_s: 20,
            day_start: "2026-01-01T00:00:00.000Z".to_owned(),
        }
    }

    const START: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, a bucket boundary

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_millis(START + seconds * 1000)
    }

    #[test]
    fn a_bucket_keeps_its_latest_numbers_and_the_most_callers_waiting_at_once() {
        let history = StatsHistory::default();
        history.record(&stats("sales", 2, 0.9), at(1));
        history.record(&stats("sales", 5, 0.8), at(10));
        history.record(&stats("sales", 1, 0.7), at(29));
        history.record(&stats("sales", 0, 0.6), at(30));
        let samples = history.samples("sales", at(31));
        assert_eq!(samples.len(), 2, "{samples:?}");
        assert_eq!(samples[0].at, "2026-01-01T00:00:00.000Z");
        assert_eq!(
            (
                samples[0].waiting,
                samples[0].waiting_max,
                samples[0].service_level
            ),
            (1, 5, 0.7)
        );
        assert_eq!(samples[0].answered_and_abandoned, 4);
        assert_eq!(samples[1].at, "2026-01-01T00:00:30.000Z");
        assert_eq!((samples[1].waiting, samples[1].waiting_max), (0, 0));
        assert!(history.samples("support", at(31)).is_empty());
    }

    #[test]
    fn only_the_last_hour_is_kept_and_deleted_queues_are_forgotten() {
        let history = StatsHistory::default();
        for second in (0..=7200).step_by(30) {
            history.record(&stats("sales", (second / 30) as u64, 1.0), at(second));
        }
        let samples = history.samples("sales", at(7200));
        // The buckets that reach into the hour before now: from 01:00:00 to 02:00:00.
        assert_eq!(samples.len(), 121, "{}", samples.len());
        assert_eq!(samples[0].at, "2026-01-01T01:00:00.000Z");
        assert_eq!(samples.last().unwrap().at, "2026-01-01T02:00:00.000Z");
        // Reading later leaves out what has aged past the hour, even without new records.
        assert_eq!(history.samples("sales", at(7200 + 600)).len(), 101);
        history.retain(&["support".to_owned()]);
        assert!(history.samples("sales", at(7200)).is_empty());
    }
}
