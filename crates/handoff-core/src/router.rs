//! The routing indexes of one queue: which agents are eligible at each requirement level, and
//! which of them can take a caller now, ordered by the queue's strategy, so that a decision
//! reads the front of an ordered set instead of scanning every agent.

use std::collections::{btree_set, BTreeSet};
use std::iter::Peekable;

use smallvec::SmallVec;

use crate::agent::Agent;
use crate::fast_map::FastMap;
use crate::ids::AgentId;
use crate::queue::{meets, QueueConfig, Strategy};

/// An agent's place in a queue's order: smaller comes first; the agent id breaks ties.
pub type RouteKey = (i64, i64, i64);

/// A place in one routable set, as a decision merges several.
type RoutableCursor<'a> = Peekable<btree_set::Iter<'a, (RouteKey, AgentId)>>;

/// Where an agent has room: on any channel (a total capacity), or on the channels named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Room {
    Any,
    Channels(Vec<String>),
}

/// The routable agents whose strictest level met is one level, split by where they have room,
/// so that a caller of one channel reads only agents who can take it.
#[derive(Debug, Clone, Default)]
struct Routable {
    any: BTreeSet<(RouteKey, AgentId)>,
    by_channel: FastMap<String, BTreeSet<(RouteKey, AgentId)>>,
}

#[derive(Debug, Clone)]
pub struct QueueIndex {
    pub config: QueueConfig,
    /// The agents whose skills meet some requirement level, with the first (strictest) level
    /// they meet. Levels only relax (`QueueConfig::validate`), so an agent meets every level
    /// from that one on: one lookup answers "eligible at level n", where a set per level cost
    /// a B-tree search of text ids.
    eligible_from: FastMap<AgentId, usize>,
    levels: usize,
    /// Per level: the agents available with room whose strictest level met is this one, in
    /// strategy order. An agent is filed once, not at every level it meets, so that a change
    /// of its key touches one set; a caller at level n reads levels 0..=n merged.
    routable: Vec<Routable>,
    /// The key, the room and the level each routable agent is filed under, to find it again.
    filed: FastMap<AgentId, (RouteKey, Room, usize)>,
}

impl QueueIndex {
    pub fn new(config: QueueConfig) -> QueueIndex {
        let levels = config.levels();
        QueueIndex {
            config,
            eligible_from: FastMap::default(),
            levels,
            routable: vec![Routable::default(); levels],
            filed: FastMap::default(),
        }
    }

    pub fn levels(&self) -> usize {
        self.levels
    }

    /// Whether the agent meets some level of this queue.
    pub fn serves(&self, agent: &AgentId) -> bool {
        self.eligible_from.contains_key(agent)
    }

    /// Files the agent's eligibility anew from its skills; returns whether it serves the queue.
    pub fn set_skills(&mut self, agent: &Agent) -> bool {
        let id = &agent.profile.id;
        self.remove_routable(id);
        let first_met = (0..self.levels())
            .find(|&level| meets(&agent.profile.skills, self.config.requirement(level)));
        match first_met {
            Some(level) => {
                self.eligible_from.insert(id.clone(), level);
                true
            }
            None => {
                self.eligible_from.remove(id);
                false
            }
        }
    }

    pub fn remove_agent(&mut self, agent: &AgentId) {
        self.remove_routable(agent);
        self.eligible_from.remove(agent);
    }

    fn remove_routable(&mut self, agent: &AgentId) {
        let Some((key, room, level)) = self.filed.remove(agent) else {
            return;
        };
        let entry = (key, agent.clone());
        let sets = &mut self.routable[level];
        match &room {
            Room::Any => {
                sets.any.remove(&entry);
            }
            Room::Channels(channels) => {
                for channel in channels {
                    if let Some(set) = sets.by_channel.get_mut(channel) {
                        set.remove(&entry);
                        if set.is_empty() {
                            sets.by_channel.remove(channel);
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
        let Some(&level) = self.eligible_from.get(id) else {
            return;
        };
        let key = self.key_of(agent, today);
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
        self.filed.insert(id.clone(), (key, room, level));
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

    /// The routable sets of the levels a caller at `level` may be offered from: 0..=level.
    fn sets_up_to(&self, level: usize) -> &[Routable] {
        self.routable.get(..=level).unwrap_or(&[])
    }

    /// Available agents with room on `channel` that meet `level`, best first: of every level
    /// up to it, the agents with a total capacity and those with room on that channel, merged
    /// in strategy order (the sets are disjoint: each agent is filed once).
    pub fn routable_at<'a>(
        &'a self,
        level: usize,
        channel: &str,
    ) -> impl Iterator<Item = &'a AgentId> + 'a {
        // Inline room for two levels of both kinds, the usual queue, so that a decision does
        // not allocate for them.
        let mut sources: SmallVec<[RoutableCursor<'a>; 4]> = self
            .sets_up_to(level)
            .iter()
            .flat_map(|sets| [Some(&sets.any), sets.by_channel.get(channel)])
            .flatten()
            .filter(|set| !set.is_empty())
            .map(|set| set.iter().peekable())
            .collect();
        std::iter::from_fn(move || {
            let mut best: Option<(usize, &'a (RouteKey, AgentId))> = None;
            for (index, source) in sources.iter_mut().enumerate() {
                let Some(&candidate) = source.peek() else {
                    continue;
                };
                if best.is_none_or(|(_, ahead)| candidate < ahead) {
                    best = Some((index, candidate));
                }
            }
            let (index, _) = best?;
            sources[index].next()
        })
        .map(|(_, agent)| agent)
    }

    /// How many agents `routable_at(level, channel)` yields, without walking them.
    pub fn routable_count(&self, level: usize, channel: &str) -> usize {
        self.sets_up_to(level)
            .iter()
            .map(|sets| sets.any.len() + sets.by_channel.get(channel).map_or(0, BTreeSet::len))
            .sum()
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
