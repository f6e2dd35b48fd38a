//! The results: one `SystemResult` per system measured, the server's costs, the table for
//! people and the JSON object for machines.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::open_loop::{Summary, Tracker};

/// What one system (handoff or a baseline) did in one run.
#[derive(Clone, Debug, Default)]
pub struct SystemResult {
    /// `handoff`, `nats`, `jetstream` or `redis`.
    pub system: String,
    /// How it was set up, in a few words.
    pub setup: String,
    /// Why it was not measured, when it was not.
    pub skipped: Option<String>,
    pub scheduled: usize,
    pub sent: usize,
    pub created: usize,
    pub errors: usize,
    /// By kind: how many, and the first one's detail.
    pub errors_by_kind: BTreeMap<String, (usize, String)>,
    pub pops: usize,
    pub lost: usize,
    pub lost_examples: Vec<u64>,
    pub duplicates: usize,
    pub unknown_pops: usize,
    pub pops_of_failed: usize,
    /// Interactions completed (handoff) or messages delivered (baselines).
    pub completed: usize,
    /// `completed` over the time from the first due request to the last completion.
    pub completed_per_s: Option<f64>,
    pub pop: Summary,
    pub request: Summary,
}

impl SystemResult {
    pub fn skipped(system: &str, reason: String) -> SystemResult {
        SystemResult {
            system: system.to_owned(),
            skipped: Some(reason),
            ..SystemResult::default()
        }
    }

    pub fn from_tracker(system: &str, setup: String, tracker: &Tracker) -> SystemResult {
        let completed = tracker.completed.load(Ordering::Relaxed);
        let span = tracker.completion_span_s();
        SystemResult {
            system: system.to_owned(),
            setup,
            skipped: None,
            scheduled: tracker.requests(),
            sent: tracker.sent.load(Ordering::Relaxed),
            created: tracker.created.load(Ordering::Relaxed),
            errors: tracker.failed.load(Ordering::Relaxed),
            errors_by_kind: tracker.failures(),
            pops: tracker.popped.load(Ordering::Relaxed),
            lost: tracker.lost(),
            lost_examples: tracker.lost_examples(10),
            duplicates: tracker.duplicates.load(Ordering::Relaxed),
            unknown_pops: tracker.unknown_pops.load(Ordering::Relaxed),
            pops_of_failed: tracker.pops_of_failed(),
            completed,
            completed_per_s: (span > 0.0 && completed > 0).then(|| completed as f64 / span),
            pop: tracker.pop_latency.summary(),
            request: tracker.request_latency.summary(),
        }
    }

    /// What makes the run fail: errors, lost pops, duplicates, pops of nothing sent.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.skipped.is_some() {
            return problems;
        }
        let name = &self.system;
        if self.errors > 0 {
            let kinds: Vec<String> = self
                .errors_by_kind
                .iter()
                .map(|(kind, (n, first))| format!("{kind} x{n} (first: {first})"))
                .collect();
            problems.push(format!(
                "{name}: {} errors: {}",
                self.errors,
                kinds.join("; ")
            ));
        }
        if self.lost > 0 {
            problems.push(format!(
                "{name}: {} lost pops (accepted requests whose pop never came), e.g. bench_seq {:?}",
                self.lost, self.lost_examples
            ));
        }
        if self.duplicates > 0 {
            problems.push(format!("{name}: {} duplicate pops", self.duplicates));
        }
        if self.unknown_pops > 0 {
            problems.push(format!(
                "{name}: {} pops of no request this run sent",
                self.unknown_pops
            ));
        }
        problems
    }

    pub fn json(&self) -> Value {
        let errors_by_kind: BTreeMap<&String, Value> = self
            .errors_by_kind
            .iter()
            .map(|(kind, (n, first))| (kind, json!({"count": n, "first": first})))
            .collect();
        json!({
            "system": self.system,
            "setup": self.setup,
            "skipped": self.skipped,
            "requests_scheduled": self.scheduled,
            "requests_sent": self.sent,
            "created": self.created,
            "errors": self.errors,
            "errors_by_kind": errors_by_kind,
            "pops_received": self.pops,
            "lost_pops": self.lost,
            "lost_pop_examples": self.lost_examples,
            "duplicate_pops": self.duplicates,
            "unknown_pops": self.unknown_pops,
            "pops_of_failed_requests": self.pops_of_failed,
            "completed": self.completed,
            "completed_per_s": self.completed_per_s.map(round1),
            "pop_latency_ms": self.pop.json(),
            "request_latency_ms": self.request.json(),
        })
    }
}

/// What the server process cost; `None` where it could not be read.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerCost {
    pub pid: Option<u32>,
    pub rss_without_agents_kib: Option<u64>,
    pub rss_with_agents_kib: Option<u64>,
    pub agents: usize,
    pub cpu_s: Option<f64>,
    pub interactions: usize,
    /// CPU seconds per second while the N agents were connected and idle (before the load).
    pub idle_cpu_s_per_s: Option<f64>,
}

impl ServerCost {
    /// (RSS with N idle agents − RSS with none) / N.
    pub fn kib_per_idle_agent(&self) -> Option<f64> {
        let with = self.rss_with_agents_kib? as f64;
        let without = self.rss_without_agents_kib? as f64;
        (self.agents > 0).then(|| (with - without) / self.agents as f64)
    }

    /// CPU seconds of the load phase per 1,000 interactions created.
    pub fn cpu_s_per_1000(&self) -> Option<f64> {
        let cpu = self.cpu_s?;
        (self.interactions > 0).then(|| cpu / self.interactions as f64 * 1000.0)
    }

    pub fn json(&self) -> Value {
        json!({
            "pid": self.pid,
            "rss_without_agents_kib": self.rss_without_agents_kib,
            "rss_with_agents_kib": self.rss_with_agents_kib,
            "memory_per_idle_agent_kib": self.kib_per_idle_agent().map(round3),
            "cpu_s": self.cpu_s.map(round3),
            "cpu_s_per_1000_interactions": self.cpu_s_per_1000().map(round3),
            "idle_cpu_s_per_s": self.idle_cpu_s_per_s.map(round3),
        })
    }
}

/// p99 of handoff over p99 of a baseline: how many times slower handoff's pops were.
pub fn p99_ratio(handoff: &SystemResult, baseline: &SystemResult) -> Option<f64> {
    match (handoff.pop.p99, baseline.pop.p99) {
        (Some(h), Some(b)) if b > 0.0 => Some(h / b),
        _ => None,
    }
}

/// One measurement: handoff, its server's costs, and each baseline, one after the other.
pub struct Run {
    pub handoff: SystemResult,
    pub cost: ServerCost,
    pub baselines: Vec<SystemResult>,
}

impl Run {
    fn json(&self) -> Value {
        let baselines: Vec<Value> = self
            .baselines
            .iter()
            .map(|b| {
                let mut value = b.json();
                value["handoff_p99_ratio"] = json!(p99_ratio(&self.handoff, b).map(round3));
                value
            })
            .collect();
        json!({
            "handoff": self.handoff.json(),
            "server": self.cost.json(),
            "baselines": baselines,
        })
    }

    fn table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "{:<10} {:>8} {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} | {:>9} | {:>9}",
            "pop (ms)",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "req p50",
            "req p99",
            "per s",
            "p99 ratio"
        );
        let mut rows = vec![(&self.handoff, None)];
        rows.extend(
            self.baselines
                .iter()
                .map(|b| (b, Some(p99_ratio(&self.handoff, b)))),
        );
        for (result, ratio) in rows {
            if let Some(reason) = &result.skipped {
                let _ = writeln!(out, "{:<10} skipped: {reason}", result.system);
                continue;
            }
            let ratio = match ratio {
                None => "1".to_owned(),
                Some(Some(r)) => format!("{r:.2}"),
                Some(None) => "n/a".to_owned(),
            };
            let _ = writeln!(
                out,
                "{:<10} {:>8} {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} | {:>9} | {:>9}",
                result.system,
                ms(result.pop.p50),
                ms(result.pop.p90),
                ms(result.pop.p99),
                ms(result.pop.p999),
                ms(result.pop.max),
                ms(result.request.p50),
                ms(result.request.p99),
                result
                    .completed_per_s
                    .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}")),
                ratio,
            );
        }
        for result in std::iter::once(&self.handoff).chain(&self.baselines) {
            if result.skipped.is_some() {
                continue;
            }
            let _ = writeln!(
                out,
                "{:<10} {}: sent {}, accepted {}, pops {}, lost {}, duplicates {}, errors {}",
                result.system,
                result.setup,
                result.sent,
                result.created,
                result.pops,
                result.lost,
                result.duplicates,
                result.errors
            );
        }
        let kib = self
            .cost
            .kib_per_idle_agent()
            .map_or_else(|| "unavailable".to_owned(), |v| format!("{v:.1} KiB"));
        let cpu = self
            .cost
            .cpu_s_per_1000()
            .map_or_else(|| "unavailable".to_owned(), |v| format!("{v:.3} s"));
        let idle = self
            .cost
            .idle_cpu_s_per_s
            .map_or_else(|| "unavailable".to_owned(), |v| format!("{v:.3} s/s"));
        let _ = writeln!(
            out,
            "server: memory per connected idle agent {kib}; CPU per 1,000 interactions {cpu}; \
             CPU with the agents idle {idle}"
        );
    }
}

/// The spread of one baseline's p99 ratio over the runs.
#[derive(Clone, Debug, PartialEq)]
pub struct RatioSpread {
    pub system: String,
    pub values: Vec<f64>,
}

impl RatioSpread {
    /// The median (the mean of the middle two for an even count).
    pub fn median(&self) -> Option<f64> {
        let mut values = self.values.clone();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(values[n / 2]),
            _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
        }
    }

    fn min(&self) -> Option<f64> {
        self.values.iter().copied().min_by(f64::total_cmp)
    }

    fn max(&self) -> Option<f64> {
        self.values.iter().copied().max_by(f64::total_cmp)
    }
}

/// Every run of the bench.
pub struct Report {
    /// The run's parameters, as given.
    pub config: Value,
    pub runs: Vec<Run>,
}

impl Report {
    /// Handoff's problems in every run: any one fails the bench.
    pub fn problems(&self) -> Vec<String> {
        let many = self.runs.len() > 1;
        self.runs
            .iter()
            .enumerate()
            .flat_map(|(i, run)| {
                run.handoff.problems().into_iter().map(move |problem| {
                    if many {
                        format!("run {}: {problem}", i + 1)
                    } else {
                        problem
                    }
                })
            })
            .collect()
    }

    /// Each measured baseline's p99 ratio in every run where both sides have a p99.
    pub fn ratio_spreads(&self) -> Vec<RatioSpread> {
        let mut spreads: Vec<RatioSpread> = Vec::new();
        for run in &self.runs {
            for baseline in &run.baselines {
                let Some(ratio) = p99_ratio(&run.handoff, baseline) else {
                    continue;
                };
                match spreads.iter_mut().find(|s| s.system == baseline.system) {
                    Some(spread) => spread.values.push(ratio),
                    None => spreads.push(RatioSpread {
                        system: baseline.system.clone(),
                        values: vec![ratio],
                    }),
                }
            }
        }
        spreads
    }

    /// One JSON object: the last run's results at the top level (the only run's, usually),
    /// every run under `runs`, and the median and spread of each p99 ratio.
    pub fn json(&self) -> Value {
        let problems = self.problems();
        let mut value = self.runs.last().map_or_else(|| json!({}), Run::json);
        let ratios: serde_json::Map<String, Value> = self
            .ratio_spreads()
            .into_iter()
            .map(|spread| {
                let summary = json!({
                    "median": spread.median().map(round3),
                    "min": spread.min().map(round3),
                    "max": spread.max().map(round3),
                    "values": spread.values.iter().copied().map(round3).collect::<Vec<_>>(),
                });
                (spread.system, summary)
            })
            .collect();
        value["ok"] = json!(problems.is_empty());
        value["problems"] = json!(problems);
        value["config"] = self.config.clone();
        value["handoff_p99_ratio"] = Value::Object(ratios);
        value["runs"] = Value::Array(self.runs.iter().map(Run::json).collect());
        value
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "handoff bench: {}", self.config);
        let many = self.runs.len() > 1;
        for (i, run) in self.runs.iter().enumerate() {
            if many {
                let _ = writeln!(out, "run {} of {}", i + 1, self.runs.len());
            }
            run.table(&mut out);
        }
        let _ = writeln!(
            out,
            "(p99 ratio: handoff's pop p99 over the system's; per s: handoff interactions \
             completed, baselines messages delivered)"
        );
        if many {
            for spread in self.ratio_spreads() {
                let _ = writeln!(
                    out,
                    "p99 ratio to {} over {} runs: median {}, min {}, max {}",
                    spread.system,
                    spread.values.len(),
                    num(spread.median()),
                    num(spread.min()),
                    num(spread.max()),
                );
            }
        }
        out
    }
}

fn num(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"))
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"))
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_cpu_are_unavailable_without_readings() {
        let cost = ServerCost {
            agents: 10,
            interactions: 100,
            ..ServerCost::default()
        };
        assert_eq!(cost.kib_per_idle_agent(), None);
        assert_eq!(cost.cpu_s_per_1000(), None);
        assert!(cost.json()["memory_per_idle_agent_kib"].is_null());
        let cost = ServerCost {
            rss_without_agents_kib: Some(1000),
            rss_with_agents_kib: Some(1500),
            cpu_s: Some(0.5),
            ..cost
        };
        assert_eq!(cost.kib_per_idle_agent(), Some(50.0));
        assert_eq!(cost.cpu_s_per_1000(), Some(5.0));
    }

    #[test]
    fn lost_pops_duplicates_and_errors_are_problems() {
        let clean = SystemResult {
            system: "handoff".to_owned(),
            ..SystemResult::default()
        };
        assert!(clean.problems().is_empty());
        let lost = SystemResult {
            lost: 1,
            duplicates: 2,
            errors: 3,
            ..clean.clone()
        };
        assert_eq!(lost.problems().len(), 3);
        let skipped = SystemResult {
            lost: 1,
            ..SystemResult::skipped("nats", "no server".to_owned())
        };
        assert!(skipped.problems().is_empty());
    }

    #[test]
    fn ratios_have_a_median_over_the_runs() {
        let spread = |values: &[f64]| RatioSpread {
            system: "nats".to_owned(),
            values: values.to_vec(),
        };
        assert_eq!(spread(&[]).median(), None);
        assert_eq!(spread(&[3.0, 1.0, 2.0, 10.0, 4.0]).median(), Some(3.0));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]).median(), Some(2.5));
        assert_eq!(spread(&[4.0, 1.0]).min(), Some(1.0));
    }
}
