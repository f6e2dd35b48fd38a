//! Who is connected: open agent streams per agent, and the presence grace timer that sets an
//! agent offline once its last stream has stayed closed for `presence_grace_s`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use handoff_core::{AgentId, Command};

use crate::engine::Engine;
use crate::shutdown::Shutdown;

#[derive(Default)]
struct Entry {
    open: usize,
    /// Bumped on every open and close, so a timer knows whether its closing still stands.
    generation: u64,
}

pub struct Connections {
    entries: Arc<Mutex<HashMap<AgentId, Entry>>>,
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
        if last_closed {
            self.spawn_grace_timer(agent.clone(), generation);
        }
    }

    pub fn is_connected(&self, agent: &AgentId) -> bool {
        self.lock().get(agent).is_some_and(|entry| entry.open > 0)
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
            if !still_closed {
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

fn count_connected(entries: &HashMap<AgentId, Entry>) -> usize {
    entries.values().filter(|entry| entry.open > 0).count()
}
