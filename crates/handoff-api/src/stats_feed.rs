//! Queue statistics pushed out: once a second, every queue whose numbers changed gets a
//! `queue.stats` event on the event stream (not in the log: no `seq`, never replayed) and its
//! Prometheus gauges set, and the last hour's history (`stats_history`) fed.

use std::collections::HashMap;
use std::time::Duration;

use handoff_core::QueueName;
use serde_json::json;

use crate::engine::StatsEvent;
use crate::routes::queues::queue_stats;
use crate::wire::{format_time, now};
use crate::AppState;

/// How often statistics are looked at; at most one `queue.stats` per queue per period.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Runs until shutdown.
pub async fn run(state: AppState) {
    let mut shutdown = state.shutdown.clone();
    let mut ticker = tokio::time::interval(PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_published: HashMap<QueueName, serde_json::Value> = HashMap::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.fired() => return,
        }
        publish_changes(&state, &mut last_published);
    }
}

fn publish_changes(state: &AppState, last_published: &mut HashMap<QueueName, serde_json::Value>) {
    let at = now();
    let names: Vec<QueueName> = state
        .shared
        .state()
        .queues()
        .map(|q| q.name.clone())
        .collect();
    last_published.retain(|name, _| names.contains(name));
    let name_texts: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    state.stats_history.retain(&name_texts);
    for name in names {
        let Some(stats) = queue_stats(state, &name, at) else {
            continue;
        };
        set_gauges(&stats);
        state.stats_history.record(&stats, at);
        let data = serde_json::to_value(&stats).unwrap_or_default();
        if last_published.get(&name) == Some(&data) {
            continue;
        }
        let event = json!({
            "specversion": "1.0",
            "id": format!("stats-{name}-{}", at.millis()),
            "source": "handoff",
            "type": "queue.stats",
            "time": format_time(at),
            "subject": name.as_str(),
            "data": data,
        });
        state.shared.publish_stats(StatsEvent {
            queue: name.to_string(),
            payload: event.to_string(),
        });
        last_published.insert(name, data);
    }
}

fn set_gauges(stats: &handoff_protocol::QueueStats) {
    let queue = stats.queue.clone();
    metrics::gauge!("handoff_queue_waiting", "queue" => queue.clone()).set(stats.waiting as f64);
    metrics::gauge!("handoff_queue_longest_wait_seconds", "queue" => queue.clone())
        .set(stats.longest_wait_s as f64);
    metrics::gauge!("handoff_queue_agents_available", "queue" => queue.clone())
        .set(stats.agents.available as f64);
    for (window, numbers) in [("last_15m", &stats.last_15m), ("today", &stats.today)] {
        let labels = [("queue", queue.clone()), ("window", window.to_owned())];
        metrics::gauge!("handoff_queue_offered", &labels).set(numbers.offered as f64);
        metrics::gauge!("handoff_queue_answered", &labels).set(numbers.answered as f64);
        metrics::gauge!("handoff_queue_abandoned", &labels).set(numbers.abandoned as f64);
        metrics::gauge!("handoff_queue_asa_seconds", &labels).set(numbers.asa_s);
        metrics::gauge!("handoff_queue_service_level", &labels).set(numbers.service_level);
        metrics::gauge!("handoff_queue_abandon_rate", &labels).set(numbers.abandon_rate);
    }
}
