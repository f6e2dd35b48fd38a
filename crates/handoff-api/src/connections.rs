//! Who is connected: open agent streams per agent, and the presence grace timer that sets an
//! agent offline once its last stream has stayed closed for `presence_grace_s`. In a cluster
//! the writer also counts the streams other nodes report (`report_remote`), so an agent whose
//! socket sits on another node is connected, and one whose node died starts its grace period.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handoff_core::{AgentId, Command};

use crate::engine::Engine;
use crate::shutdown::Shutdown;

#[derive(Default)]
struct Entry {
    open: usize,
    /// Bumped on every open and close, so a timer knows whether its closing still stands.
    generation: u64,
}

/// The agents with a stream on another node, as that node last reported them.
struct RemoteNode {
    agents: HashSet<AgentId>,
    seen: Instant,
}

type RemoteNodes = Arc<Mutex<HashMap<String, RemoteNode>>>;

pub struct Connections {
    entries: Arc<Mutex<HashMap<AgentId, Entry>>>,
    remote: RemoteNodes,
    /// Wakes whoever reports this node's streams to the writer.
    changed: tokio::sync::Notify,
    engine: Engine,
    grace: Duration,
    shutdown: Shutdown,
}

/// Held by an open stream; dropping it closes the connection.
pub struct ConnectionGuard {
    connections: Arc<Connections>,
    agent: AgentId,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.connections.closed(&self.agent);
    }
}

impl Connections {
    pub fn new(engine: Engine, grace: Duration, shutdown: Shutdown) -> Connections {
        Connections {
            entries: Arc::new(Mutex::new(HashMap::new())),
            remote: Arc::default(),
            changed: tokio::sync::Notify::new(),
            engine,
            grace,
            shutdown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AgentId, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn opened(self: &Arc<Self>, agent: AgentId) -> ConnectionGuard {
        {
            let mut entries = self.lock();
            let entry = entries.entry(agent.clone()).or_default();
            entry.open += 1;
            entry.generation += 1;
            metrics::gauge!("handoff_connected_agents").set(count_connected(&entries) as f64);
        }
        self.changed.notify_one();
        ConnectionGuard {
            connections: self.clone(),
            agent,
        }
    }

    fn closed(&self, agent: &AgentId) {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(agent) else {
            return;
        };
        entry.open = entry.open.saturating_sub(1);
        entry.generation += 1;
        let last_closed = entry.open == 0;
        let generation = entry.generation;
        metrics::gauge!("handoff_connected_agents").set(count_connected(&entries) as f64);
        drop(entries);
        self.changed.notify_one();
        if last_closed && !remote_has(&self.remote, agent) {
            self.spawn_grace_timer(agent.clone(), generation);
        }
    }

    pub fn is_connected(&self, agent: &AgentId) -> bool {
        self.lock().get(agent).is_some_and(|entry| entry.open > 0)
            || remote_has(&self.remote, agent)
    }

    /// The agents with a stream open on this node.
    pub fn local_agents(&self) -> Vec<AgentId> {
        self.lock()
            .iter()
            .filter(|(_, entry)| entry.open > 0)
            .map(|(agent, _)| agent.clone())
            .collect()
    }

    /// Returns when a stream opened or closed on this node since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// What another node says it holds: the agents with a stream there now. An agent that
    /// it no longer holds, and that no other node nor this one holds, starts its grace period.
    pub fn report_remote(&self, node: &str, agents: Vec<AgentId>) {
        let agents: HashSet<AgentId> = agents.into_iter().collect();
        let before = {
            let mut remote = lock_remote(&self.remote);
            let before = remote.insert(
                node.to_owned(),
                RemoteNode {
                    agents,
                    seen: Instant::now(),
                },
            );
            before.map(|node| node.agents).unwrap_or_default()
        };
        for agent in before {
            if !self.is_connected(&agent) {
                self.start_grace(agent);
            }
        }
    }

    /// Forgets the nodes not heard from for `silence` (a node that died): their agents start
    /// their grace period unless a stream of theirs is open elsewhere.
    pub fn forget_silent_nodes(&self, silence: Duration) {
        let gone: Vec<AgentId> = {
            let mut remote = lock_remote(&self.remote);
            let silent: Vec<String> = remote
                .iter()
                .filter(|(_, node)| node.seen.elapsed() > silence)
                .map(|(name, _)| name.clone())
                .collect();
            silent
                .iter()
                .filter_map(|name| remote.remove(name))
                .flat_map(|node| node.agents)
                .collect()
        };
        for agent in gone {
            if !self.is_connected(&agent) {
                tracing::info!(agent = %agent, "the node of this agent's stream went silent");
                self.start_grace(agent);
            }
        }
    }

    /// Starts the grace period for an agent that has no stream (used at start-up).
    pub fn start_grace(&self, agent: AgentId) {
        let generation = {
            let mut entries = self.lock();
            let entry = entries.entry(agent.clone()).or_default();
            if entry.open > 0 {
                return;
            }
            entry.generation += 1;
            entry.generation
        };
        self.spawn_grace_timer(agent, generation);
    }

    fn spawn_grace_timer(&self, agent: AgentId, generation: u64) {
        let engine = self.engine.clone();
        let entries = self.entries.clone();
        let remote = self.remote.clone();
        let grace = self.grace;
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = shutdown.fired() => return,
            }
            let still_closed = entries
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get(&agent)
                .is_some_and(|entry| entry.open == 0 && entry.generation == generation);
            if !still_closed || remote_has(&remote, &agent) {
                return;
            }
            match engine
                .execute(Command::ConnectionLost {
                    agent: agent.clone(),
                })
                .await
            {
                Ok(_) => tracing::info!(agent = %agent, "connection lost: grace period passed"),
                Err(error) => {
                    tracing::debug!(agent = %agent, %error, "connection-lost not applied")
                }
            }
        });
    }
}

fn lock_remote(remote: &RemoteNodes) -> std::sync::MutexGuard<'_, HashMap<String, RemoteNode>> {
    remote
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn remote_has(remote: &RemoteNodes, agent: &AgentId) -> bool {
    lock_remote(remote)
        .values()
        .any(|node| node.agents.contains(agent))
}

fn count_connected(entries: &HashMap<AgentId, Entry>) -> usize {
    entries.values().filter(|entry| entry.open > 0).count()
}
