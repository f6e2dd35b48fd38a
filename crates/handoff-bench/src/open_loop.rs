//! The open-loop scheduler and the HDR recording that handoff and every baseline share.
//!
//! Request `i` is due at `start + i / rate`. The scheduler starts it at that moment whether or
//! not earlier requests have answered, so a slow server cannot slow the arrivals; only a
//! bound on requests in flight (at most `MAX_IN_FLIGHT`, less when open files are short) stops
//! it, and a request refused by that bound counts as an `overload` error instead of waiting. Every latency is measured from the due
//! time, never from the moment the request was actually written, so a stall of the server or
//! of this process shows in the figures instead of hiding in them.
//!
//! Every pop carries its sequence number (`context.bench_seq`), from which its due time is
//! computed again on receipt: no map from ids to times is needed, and a pop that arrives
//! before its request's answer is timed all the same.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::time::Instant;

/// Requests in flight at once, beyond which a due request is counted as an `overload` error.
/// Each HTTP/1.1 request in flight holds a socket, so the bench lowers it to fit its open
/// files limit (`in_flight_bound`).
pub const MAX_IN_FLIGHT: usize = 20_000;
/// The least bound the bench runs with.
const MIN_IN_FLIGHT: usize = 64;

/// The bound on requests in flight for `agents` agents under an open files limit of `limit`:
/// each agent holds a stream and, while it accepts or completes, a request; 1,024 more are
/// kept for everything else.
pub fn in_flight_bound(limit: Option<u64>, agents: usize) -> usize {
    let Some(limit) = limit else {
        return MAX_IN_FLIGHT;
    };
    let spare = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(2 * agents + 1024);
    spare.clamp(MIN_IN_FLIGHT, MAX_IN_FLIGHT)
}
/// The most requests one run may schedule (rate × duration).
pub const MAX_REQUESTS: u64 = 10_000_000;
/// Latencies are recorded in microseconds, from 1 µs to one hour, 3 significant digits.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

/// What one request did, as its sender reports it.
pub enum Outcome {
    /// Accepted (2xx, a publish acknowledged): the pop must arrive.
    Created,
    /// Refused or failed: no pop is expected. The text says why, for the report.
    Failed { kind: String, detail: String },
}

/// A request's sender: given its sequence number and body, sends it and says how it went.
pub type Send = Arc<
    dyn Fn(u64, Arc<Vec<u8>>) -> Pin<Box<dyn Future<Output = Outcome> + std::marker::Send>>
        + std::marker::Send
        + Sync,
>;

/// A latency histogram in microseconds that saturates instead of failing.
pub struct Latency(Mutex<Histogram<u64>>);

impl Default for Latency {
    fn default() -> Self {
        Latency(Mutex::new(new_histogram()))
    }
}

fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; a failure here is a bug.
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("valid histogram bounds")
}

impl Latency {
    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut histogram = self.0.lock().unwrap_or_else(|p| p.into_inner());
        histogram.saturating_record(us.min(HISTOGRAM_MAX_US));
    }

    pub fn summary(&self) -> Summary {
        let histogram = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Summary::of(&histogram)
    }
}

/// Percentiles of a histogram, in milliseconds; `None` when nothing was recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

impl Summary {
    fn of(histogram: &Histogram<u64>) -> Summary {
        if histogram.is_empty() {
            return Summary::default();
        }
        let ms = |us: u64| Some(us as f64 / 1000.0);
        Summary {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }

    pub fn json(&self) -> Value {
        let r = |v: Option<f64>| v.map(|v| (v * 1000.0).round() / 1000.0);
        json!({
            "count": self.count,
            "p50": r(self.p50),
            "p90": r(self.p90),
            "p99": r(self.p99),
            "p99_9": r(self.p999),
            "max": r(self.max),
        })
    }
}

/// What became of request `i`.
const SENT: u8 = 1;
const CREATED: u8 = 2;
const FAILED: u8 = 3;

/// Everything one measured run records: per-request state and pop counts by sequence number,
/// the two histograms, the counters the progress bar shows.
pub struct Tracker {
    pub start: Instant,
    /// Nanoseconds between two due times.
    interval_ns: f64,
    state: Vec<AtomicU8>,
    pops: Vec<AtomicU8>,
    pub pop_latency: Latency,
    pub request_latency: Latency,
    pub sent: AtomicUsize,
    pub created: AtomicUsize,
    pub failed: AtomicUsize,
    pub popped: AtomicUsize,
    pub duplicates: AtomicUsize,
    /// Pops whose sequence number is missing, out of range, or of a request never sent.
    pub unknown_pops: AtomicUsize,
    pub completed: AtomicUsize,
    pub in_flight: AtomicUsize,
    max_in_flight: usize,
    /// Failures by kind and the first detail of each kind.
    failures: Mutex<std::collections::BTreeMap<String, (usize, String)>>,
    /// Nanoseconds from `start` to the last completion, for the completion rate.
    last_completion_ns: AtomicU64,
}

impl Tracker {
    /// `start` is when request 0 is due; at most `max_in_flight` requests are in flight.
    pub fn new(requests: u64, rate: f64, start: Instant, max_in_flight: usize) -> Tracker {
        let n = usize::try_from(requests).unwrap_or(usize::MAX);
        Tracker {
            start,
            interval_ns: 1e9 / rate,
            state: (0..n).map(|_| AtomicU8::new(0)).collect(),
            pops: (0..n).map(|_| AtomicU8::new(0)).collect(),
            pop_latency: Latency::default(),
            request_latency: Latency::default(),
            sent: AtomicUsize::new(0),
            created: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            popped: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
            unknown_pops: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight,
            failures: Mutex::new(Default::default()),
            last_completion_ns: AtomicU64::new(0),
        }
    }

    pub fn requests(&self) -> usize {
        self.state.len()
    }

    /// When request `seq` is due.
    pub fn due(&self, seq: u64) -> Instant {
        self.start + Duration::from_nanos((seq as f64 * self.interval_ns) as u64)
    }

    /// A pop of request `seq` received at `at`: timed from its due time, counted once, and
    /// every further pop of it counted as a duplicate.
    pub fn pop(&self, seq: Option<u64>, at: Instant) {
        let Some(slot) = seq.and_then(|s| self.pops.get(usize::try_from(s).ok()?)) else {
            self.unknown_pops.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let seq = seq.unwrap_or_default();
        if slot.fetch_add(1, Ordering::Relaxed) == 0 {
            self.popped.fetch_add(1, Ordering::Relaxed);
            self.pop_latency
                .record(at.saturating_duration_since(self.due(seq)));
        } else {
            // Saturate rather than wrap on a pathological flood.
            slot.store(2, Ordering::Relaxed);
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn complete(&self, at: Instant) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        let ns =
            u64::try_from(at.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX);
        self.last_completion_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Seconds from the first due time to the last completion.
    pub fn completion_span_s(&self) -> f64 {
        self.last_completion_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    fn fail(&self, seq: u64, kind: String, detail: String) {
        if let Some(state) = self.state.get(seq as usize) {
            state.store(FAILED, Ordering::Relaxed);
        }
        self.error(kind, detail);
    }

    /// An error that is not a request's (an agent's accept or complete, a stream closed):
    /// counted with the others and shown by kind.
    pub fn error(&self, kind: String, detail: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.entry(kind).or_insert((0, detail)).0 += 1;
    }

    /// Failures by kind: how many, and the first one's detail.
    pub fn failures(&self) -> std::collections::BTreeMap<String, (usize, String)> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Requests accepted whose pop never came.
    pub fn lost(&self) -> usize {
        self.state
            .iter()
            .zip(&self.pops)
            .filter(|(state, pops)| {
                state.load(Ordering::Relaxed) == CREATED && pops.load(Ordering::Relaxed) == 0
            })
            .count()
    }

    /// Sequence numbers of the lost pops, the first few, for the report.
    pub fn lost_examples(&self, max: usize) -> Vec<u64> {
        self.state
            .iter()
            .zip(&self.pops)
            .enumerate()
            .filter(|(_, (state, pops))| {
                state.load(Ordering::Relaxed) == CREATED && pops.load(Ordering::Relaxed) == 0
            })
            .map(|(i, _)| i as u64)
            .take(max)
            .collect()
    }

    /// Pops of requests that failed (e.g. a timeout after the server had committed).
    pub fn pops_of_failed(&self) -> usize {
        self.state
            .iter()
            .zip(&self.pops)
            .filter(|(state, pops)| {
                state.load(Ordering::Relaxed) == FAILED && pops.load(Ordering::Relaxed) > 0
            })
            .count()
    }

    /// Every accepted request has its pop.
    pub fn all_popped(&self) -> bool {
        self.popped.load(Ordering::Relaxed) >= self.created.load(Ordering::Relaxed)
    }
}

/// The request body of request `seq`, the same bytes for handoff and every baseline: a caller,
/// a queue target and a context of about 500 bytes that carries `bench_seq`.
pub fn pop_body(seq: u64, queue: &str) -> Vec<u8> {
    let body = json!({
        "caller": format!("+1555{:07}", seq % 10_000_000),
        "dialed": "+18005550100",
        "channel": "voice",
        "call_id": format!("bench-call-{seq}"),
        "context": {
            "bench_seq": seq,
            "intent": "billing",
            "language": "en-US",
            "account": {"id": format!("A-{:08}", seq % 100_000_000), "tier": "gold", "verified": true, "balance_due": "184.20"},
            "ivr_path": ["main", "billing", "payment-issue", "agent"],
            "collected": {"last_four": "4242", "zip": "94107", "reason": "card declined twice this morning"},
            "crm": {"case": format!("CS-{:06}", seq % 1_000_000), "priority": "normal", "notes": "Caller says the autopay failed after the card was replaced."},
        },
        "target": {"queue": queue},
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// `context.bench_seq` of a request body, or of the interaction in a pop event's `data`.
pub fn seq_of(value: &Value) -> Option<u64> {
    value
        .pointer("/context/bench_seq")
        .or_else(|| value.pointer("/data/interaction/context/bench_seq"))
        .and_then(Value::as_u64)
}

/// Runs the open loop: request `i` of `tracker.requests()` starts at its due time, with the
/// body `body(i)`, through `send`. Returns when every request has been started; the requests
/// themselves may still be in flight (`tracker.in_flight`).
pub async fn drive(tracker: Arc<Tracker>, body: impl Fn(u64) -> Vec<u8>, send: Send) {
    for seq in 0..tracker.requests() as u64 {
        tokio::time::sleep_until(tracker.due(seq)).await;
        if let Some(state) = tracker.state.get(seq as usize) {
            state.store(SENT, Ordering::Relaxed);
        }
        tracker.sent.fetch_add(1, Ordering::Relaxed);
        if tracker.in_flight.fetch_add(1, Ordering::Relaxed) >= tracker.max_in_flight {
            tracker.in_flight.fetch_sub(1, Ordering::Relaxed);
            tracker.fail(
                seq,
                "overload".to_owned(),
                format!("{} requests already in flight", tracker.max_in_flight),
            );
            continue;
        }
        let body = Arc::new(body(seq));
        let send = send.clone();
        let tracker = tracker.clone();
        tokio::spawn(async move {
            let outcome = send(seq, body).await;
            tracker
                .request_latency
                .record(Instant::now().saturating_duration_since(tracker.due(seq)));
            match outcome {
                Outcome::Created => {
                    if let Some(state) = tracker.state.get(seq as usize) {
                        state.store(CREATED, Ordering::Relaxed);
                    }
                    tracker.created.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Failed { kind, detail } => tracker.fail(seq, kind, detail),
            }
            tracker.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Waits until nothing is in flight, or `limit` passes.
pub async fn wait_in_flight(tracker: &Tracker, limit: Duration) {
    let deadline = Instant::now() + limit;
    while tracker.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_are_counted_once_and_duplicates_apart() {
        let start = Instant::now();
        let tracker = Tracker::new(3, 1000.0, start, MAX_IN_FLIGHT);
        tracker.state[0].store(CREATED, Ordering::Relaxed);
        tracker.state[1].store(CREATED, Ordering::Relaxed);
        tracker.state[2].store(FAILED, Ordering::Relaxed);
        tracker.pop(Some(0), start + Duration::from_millis(5));
        tracker.pop(Some(0), start + Duration::from_millis(6));
        tracker.pop(Some(2), start + Duration::from_millis(7));
        tracker.pop(Some(99), start);
        tracker.pop(None, start);
        assert_eq!(tracker.popped.load(Ordering::Relaxed), 2);
        assert_eq!(tracker.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(tracker.unknown_pops.load(Ordering::Relaxed), 2);
        assert_eq!(tracker.lost(), 1);
        assert_eq!(tracker.lost_examples(10), vec![1]);
        assert_eq!(tracker.pops_of_failed(), 1);
    }

    #[test]
    fn latency_is_measured_from_the_due_time() {
        let start = Instant::now();
        let tracker = Tracker::new(10, 100.0, start, MAX_IN_FLIGHT);
        // Request 5 is due 50 ms after the start; its pop 60 ms after the start took 10 ms.
        assert_eq!(tracker.due(5), start + Duration::from_millis(50));
        tracker.pop(Some(5), start + Duration::from_millis(60));
        let summary = tracker.pop_latency.summary();
        assert_eq!(summary.count, 1);
        let p50 = summary.p50.unwrap();
        assert!((9.9..10.1).contains(&p50), "{p50}");
    }

    #[test]
    fn the_body_carries_its_sequence_number_and_is_about_half_a_kilobyte() {
        let body = pop_body(1234, "q0");
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(seq_of(&value), Some(1234));
        assert_eq!(value["target"]["queue"], "q0");
        let context = serde_json::to_vec(&value["context"]).unwrap();
        assert!((400..700).contains(&context.len()), "{}", context.len());
        let event = json!({"type": "interaction.offered", "data": {"interaction": value}});
        assert_eq!(seq_of(&event), Some(1234));
    }

    #[test]
    fn the_in_flight_bound_fits_the_open_files_limit() {
        assert_eq!(in_flight_bound(None, 10), MAX_IN_FLIGHT);
        assert_eq!(in_flight_bound(Some(1_000_000), 10), MAX_IN_FLIGHT);
        assert_eq!(in_flight_bound(Some(20_000), 5000), 20_000 - 10_000 - 1024);
        assert_eq!(in_flight_bound(Some(1024), 5000), MIN_IN_FLIGHT);
    }

    #[test]
    fn an_empty_summary_has_no_percentiles() {
        let summary = Latency::default().summary();
        assert_eq!(summary, Summary::default());
        assert!(summary.json()["p99"].is_null());
    }
}
