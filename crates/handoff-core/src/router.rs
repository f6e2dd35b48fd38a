//! The routing indexes of one queue: which agents are eligible at each requirement level, and
//! which of them can take a caller now, ordered by the queue's strategy, so that a decision
//! reads the front of an ordered set instead of scanning every agent.

use std::collections::{BTreeSet, HashMap};

use crate::agent::Agent;
use crate::ids::AgentId;
use crate::queue::{meets, QueueConfig, Strategy};

/// An agent's place in a queue's order: smaller comes first; the agent id breaks ties.
pub type RouteKey = (i64, i64, i64);

#[derive(Debug, Clone)]
pub struct QueueIndex {
    pub config: QueueConfig,
    /// Per requirement level (0 = base): the agents whose skills meet it. Levels relax, so each
    /// set contains the one before it.
    eligible: Vec<BTreeSet<AgentId>>,
    /// Per level: the eligible agents that are available with room, in strategy order.
    routable: Vec<BTreeSet<(RouteKey, AgentId)>>,
    /// The key each routable agent is filed under, to find it again.
    keys: HashMap<AgentId, RouteKey>,
}

impl QueueIndex {
    pub fn new(config: QueueConfig) -> QueueIndex {
        let levels = config.levels();
        QueueIndex {
            config,
            eligible: vec![BTreeSet::new(); levels],
            routable: vec![BTreeSet::new(); levels],
            keys: HashMap::new(),
        }
    }

    pub fn levels(&self) -> usize {
        self.eligible.len()
    }

    /// Whether the agent meets some level of this queue.
    pub fn serves(&self, agent: &AgentId) -> bool {
        self.eligible.last().is_some_and(|set| set.contains(agent))
    }

    /// Files the agent's eligibility anew from its skills; returns whether it serves the queue.
    pub fn set_skills(&mut self, agent: &Agent) -> bool {
        let id = &agent.profile.id;
        self.remove_routable(id);
        let mut serves = false;
        for level in 0..self.levels() {
            if meets(&agent.profile.skills, self.config.requirement(level)) {
                self.eligible[level].insert(id.clone());
                serves = true;
            } else {
                self.eligible[level].remove(id);
            }
        }
        serves
    }

    pub fn remove_agent(&mut self, agent: &AgentId) {
        self.remove_routable(agent);
        for set in &mut self.eligible {
            set.remove(agent);
        }
    }

    fn remove_routable(&mut self, agent: &AgentId) {
        if let Some(key) = self.keys.remove(agent) {
            for set in &mut self.routable {
                set.remove(&(key, agent.clone()));
            }
        }
    }

    /// Re-files the agent in the routable sets: under its current key when `routable`.
    pub fn set_routable(&mut self, agent: &Agent, routable: bool, today: i64) {
        let id = &agent.profile.id;
        self.remove_routable(id);
        if !routable {
            return;
        }
        let key = self.key_of(agent, today);
        let mut filed = false;
        for level in 0..self.levels() {
            if self.eligible[level].contains(id) {
                self.routable[level].insert((key, id.clone()));
                filed = true;
            }
        }
        if filed {
            self.keys.insert(id.clone(), key);
        }
    }

    /// The agent's place in this queue's strategy order.
    pub fn key_of(&self, agent: &Agent, today: i64) -> RouteKey {
        let idle_since = agent.idle_since.millis();
        match self.config.strategy {
            Strategy::LongestIdle => (idle_since, 0, 0),
            Strategy::RoundRobin => (agent.last_routed as i64, idle_since, 0),
            Strategy::LeastOccupied => (handled_on(agent, today) as i64, idle_since, 0),
            Strategy::MostSkilled => (-self.summed_level(agent), idle_since, 0),
            Strategy::RingAll => (0, 0, 0),
        }
    }

    /// The agent's levels summed over the skills the queue asks for at first.
    pub fn summed_level(&self, agent: &Agent) -> i64 {
        self.config
            .skills
            .keys()
            .filter_map(|skill| agent.profile.skills.get(skill))
            .map(|level| i64::from(level.get()))
            .sum()
    }

    /// Available agents with room that meet `level`, best first.
    pub fn routable_at(&self, level: usize) -> impl Iterator<Item = &AgentId> {
        self.routable
            .get(level)
            .into_iter()
            .flatten()
            .map(|(_, agent)| agent)
    }

    pub fn routable_count(&self, level: usize) -> usize {
        self.routable.get(level).map_or(0, BTreeSet::len)
    }
}

/// Interactions the agent accepted on calendar day `today`.
pub fn handled_on(agent: &Agent, today: i64) -> u32 {
    if agent.handled.0 == today {
        agent.handled.1
    } else {
        0
    }
}
