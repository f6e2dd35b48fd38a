//! The routing indexes of one queue: which agents are eligible at each requirement level, and
//! which of them can take a caller now, ordered by the queue's strategy, so that a decision
//! reads the front of an ordered set instead of scanning every agent.

use std::collections::BTreeSet;

use crate::agent::Agent;
use crate::fast_map::FastMap;
use crate::ids::AgentId;
use crate::queue::{meets, QueueConfig, Strategy};

/// An agent's place in a queue's order: smaller comes first; the agent id breaks ties.
pub type RouteKey = (i64, i64, i64);

/// Where an agent has room: on any channel (a total capacity), or on the channels named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Room {
    Any,
    Channels(Vec<String>),
}

/// The routable agents of one requirement level, split by where they have room, so that a
/// caller of one channel reads only agents who can take it.
#[derive(Debug, Clone, Default)]
struct Routable {
    any: BTreeSet<(RouteKey, AgentId)>,
    by_channel: FastMap<String, BTreeSet<(RouteKey, AgentId)>>,
}

#[derive(Debug, Clone)]
pub struct QueueIndex {
    pub config: QueueConfig,
    /// Per requirement level (0 = base): the agents whose skills meet it. Levels relax, so each
    /// set contains the one before it.
    eligible: Vec<BTreeSet<AgentId>>,
    /// Per level: the eligible agents that are available with room, in strategy order.
    routable: Vec<Routable>,
    /// The key and the room each routable agent is filed under, to find it again.
    filed: FastMap<AgentId, (RouteKey, Room)>,
}

impl QueueIndex {
    pub fn new(config: QueueConfig) -> QueueIndex {
        let levels = config.levels();
        QueueIndex {
            config,
            eligible: vec![BTreeSet::new(); levels],
            routable: vec![Routable::default(); levels],
            filed: FastMap::default(),
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
        let Some((key, room)) = self.filed.remove(agent) else {
            return;
        };
        let entry = (key, agent.clone());
        for level in &mut self.routable {
            match &room {
                Room::Any => {
                    level.any.remove(&entry);
                }
                Room::Channels(channels) => {
                    for channel in channels {
                        if let Some(set) = level.by_channel.get_mut(channel) {
                            set.remove(&entry);
                            if set.is_empty() {
                                level.by_channel.remove(channel);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Re-files the agent in the routable sets: under its current key where it has `room`,
    /// nowhere when `None` (not available, or full).
    pub fn set_routable(&mut self, agent: &Agent, room: Option<Room>, today: i64) {
        let id = &agent.profile.id;
        self.remove_routable(id);
        let Some(room) = room else {
            return;
        };
        let key = self.key_of(agent, today);
        let mut filed = false;
        for level in 0..self.levels() {
            if !self.eligible[level].contains(id) {
                continue;
            }
            let sets = &mut self.routable[level];
            match &room {
                Room::Any => {
                    sets.any.insert((key, id.clone()));
                }
                Room::Channels(channels) => {
                    for channel in channels {
                        sets.by_channel
                            .entry(channel.clone())
                            .or_default()
                            .insert((key, id.clone()));
                    }
                }
            }
            filed = true;
        }
        if filed {
            self.filed.insert(id.clone(), (key, room));
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

    /// Available agents with room on `channel` that meet `level`, best first: the agents with
    /// a total capacity and those with room on that channel, merged in strategy order.
    pub fn routable_at<'a>(
        &'a self,
        level: usize,
        channel: &str,
    ) -> impl Iterator<Item = &'a AgentId> + 'a {
        let sets = self.routable.get(level);
        let mut any = sets.into_iter().flat_map(|s| s.any.iter()).peekable();
        let mut own = sets
            .and_then(|s| s.by_channel.get(channel))
            .into_iter()
            .flatten()
            .peekable();
        std::iter::from_fn(move || match (any.peek(), own.peek()) {
            (Some(a), Some(b)) if b < a => own.next(),
            (Some(_), _) => any.next(),
            (None, _) => own.next(),
        })
        .map(|(_, agent)| agent)
    }

    /// How many agents `routable_at(level, channel)` yields, without walking them.
    pub fn routable_count(&self, level: usize, channel: &str) -> usize {
        self.routable.get(level).map_or(0, |sets| {
            sets.any.len() + sets.by_channel.get(channel).map_or(0, BTreeSet::len)
        })
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
