//! What a follower tells the writer, over plain NATS subjects: the acks its agents' desktops
//! sent, and which agents have a stream open on it, so that the writer's presence grace
//! timers see every node's sockets.
//!
//! Both are state rather than messages, so a lost one costs nothing lasting: acks are
//! cumulative and sent again with the next, and each node's streams are reported whole every
//! `REPORT_EVERY` and whenever they change. A node not heard from for `SILENT_AFTER` is taken
//! for dead, and its agents' grace periods start.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use handoff_core::{AgentId, Seq};
use serde::{Deserialize, Serialize};

use super::bus::Bus;
use crate::connections::Connections;
use crate::engine::{Engine, Shared};
use crate::shutdown::Shutdown;

/// How often a follower reports its open streams even when none changed.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long the writer waits for a node's report before it takes the node for dead.
pub const SILENT_AFTER: Duration = Duration::from_secs(5);
/// Changes to the streams within this are reported together.
const REPORT_DEBOUNCE: Duration = Duration::from_millis(20);

#[derive(Debug, Serialize, Deserialize)]
struct AckReport {
    agent: String,
    seq: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct StreamsReport {
    node: String,
    agents: Vec<String>,
}

/// A follower: sends its acks and its open streams to the writer until shutdown.
pub async fn run_follower_links(
    bus: Arc<Bus>,
    node: String,
    shared: Arc<Shared>,
    connections: Arc<Connections>,
    mut shutdown: Shutdown,
) {
    let acks = {
        let bus = bus.clone();
        let shared = shared.clone();
        async move {
            loop {
                shared.acks_pending().await;
                let report: Vec<AckReport> = shared
                    .take_pending_acks()
                    .into_iter()
                    .map(|(agent, seq)| AckReport {
                        agent: agent.to_string(),
                        seq: seq.get(),
                    })
                    .collect();
                let Ok(body) = serde_json::to_vec(&report) else {
                    continue;
                };
                if let Err(error) = bus
                    .client
                    .publish(bus.names.acks.clone(), body.into())
                    .await
                {
                    tracing::debug!(%error, "acks not sent to the writer; the next ones carry them");
                }
            }
        }
    };
    let streams = async move {
        loop {
            let report = StreamsReport {
                node: node.clone(),
                agents: connections
                    .local_agents()
                    .iter()
                    .map(|agent| agent.to_string())
                    .collect(),
            };
            if let Ok(body) = serde_json::to_vec(&report) {
                if let Err(error) = bus
                    .client
                    .publish(bus.names.connections.clone(), body.into())
                    .await
                {
                    tracing::debug!(%error, "open streams not reported to the writer");
                }
            }
            let _ = tokio::time::timeout(REPORT_EVERY, connections.changed()).await;
            tokio::time::sleep(REPORT_DEBOUNCE).await;
        }
    };
    tokio::select! {
        _ = acks => {}
        _ = streams => {}
        _ = shutdown.fired() => {}
    }
}

/// The writer: takes the followers' acks and open streams until shutdown.
pub async fn run_writer_links(
    bus: Arc<Bus>,
    engine: Engine,
    connections: Arc<Connections>,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut acks = bus
        .client
        .subscribe(bus.names.acks.clone())
        .await
        .map_err(|error| anyhow::anyhow!("cannot subscribe to {}: {error}", bus.names.acks))?;
    let mut streams = bus
        .client
        .subscribe(bus.names.connections.clone())
        .await
        .map_err(|error| {
            anyhow::anyhow!("cannot subscribe to {}: {error}", bus.names.connections)
        })?;
    let mut sweep = tokio::time::interval(REPORT_EVERY);
    loop {
        tokio::select! {
            Some(message) = acks.next() => {
                let Ok(report) = serde_json::from_slice::<Vec<AckReport>>(&message.payload) else {
                    tracing::warn!("a follower's acks cannot be read; skipped");
                    continue;
                };
                for ack in report {
                    if let Ok(agent) = AgentId::parse(&ack.agent) {
                        engine.ack(agent, Seq::new(ack.seq));
                    }
                }
            }
            Some(message) = streams.next() => {
                let Ok(report) = serde_json::from_slice::<StreamsReport>(&message.payload) else {
                    tracing::warn!("a follower's open streams cannot be read; skipped");
                    continue;
                };
                let agents = report
                    .agents
                    .iter()
                    .filter_map(|agent| AgentId::parse(agent).ok())
                    .collect();
                connections.report_remote(&report.node, agents);
            }
            _ = sweep.tick() => connections.forget_silent_nodes(SILENT_AFTER),
            _ = shutdown.fired() => return Ok(()),
        }
    }
}
