//! The Prometheus recorder, installed once per process, and the metric names in one place.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The process-wide recorder's handle; the first call installs it.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency_buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &latency_buckets)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("handoff_store_group_size".to_owned()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                    )
                });
            let recorder = match builder {
                Ok(builder) => builder.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // Another recorder may already be installed (tests in one process): keep going
            // with ours for rendering; that is all /metrics needs.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        "handoff_interactions_created_total",
        "Interactions created by POST /v1/interactions."
    );
    metrics::describe_counter!(
        "handoff_pops_delivered_total",
        "interaction.offered events written to an agent stream."
    );
    metrics::describe_histogram!(
        "handoff_create_to_pop_seconds",
        "From the interaction's creation to its screen pop on the agent's stream (live only)."
    );
    metrics::describe_gauge!(
        "handoff_connected_agents",
        "Agents with at least one open stream."
    );
    metrics::describe_histogram!(
        "handoff_commit_seconds",
        "Time the engine waited for the store to commit one group of commands."
    );
    metrics::describe_histogram!(
        "handoff_store_commit_seconds",
        "Time of one store transaction, fsync included."
    );
}
