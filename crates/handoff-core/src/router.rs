//! The routing indexes of one queue: which agents are eligible at each requirement level, and
//! which of them can take a caller now, ordered by the queue's strategy, so that a decision
//! reads the front of an ordered set instead of scanning every agent.

use std::collections::{btree_set, BTreeSet};
use std::iter::Peekable;

use smallvec::SmallVec;

use crate::agent::Agent;
use crate::fast_map::{FastMap, OrderedFastMap};
use crate::ids::{AgentId, QueueName};
use crate::queue::{meets, QueueConfig, Strategy};

/// An agent's place in a queue's order: smaller comes first; the agent id breaks ties.
pub type RouteKey = (i64, i64);

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

/// Where one agent is filed in one queue's routable sets: its key, where it has room, and the
/// strictest level it meets. The agent's own membership record keeps it (see
/// `state::Membership`), so that taking an agent out of its queues costs no lookup per queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filing {
    key: RouteKey,
    room: Room,
    level: usize,
}

#[derive(Debug, Clone)]
pub struct QueueIndex {
    pub config: QueueConfig,
    levels: usize,
    /// Per level: the agents available with room whose strictest level met is this one, in
    /// strategy order. An agent is filed once, not at every level it meets, so that a change
    /// of its key touches one set; a caller at level n reads levels 0..=n merged. Levels only
    /// relax (`QueueConfig::validate`), so an agent meets every level from its first on.
    routable: Vec<Routable>,
}

impl QueueIndex {
    pub fn new(config: QueueConfig) -> QueueIndex {
        let levels = config.levels();
        QueueIndex {
            config,
            levels,
            routable: vec![Routable::default(); levels],
        }
    }

    pub fn levels(&self) -> usize {
        self.levels
    }

    /// The first (strictest) requirement level the skills meet; `None` when the agent does not
    /// serve this queue.
    pub fn first_level_met(&self, agent: &Agent) -> Option<usize> {
        (0..self.levels())
            .find(|&level| meets(&agent.profile.skills, self.config.requirement(level)))
    }

    /// Takes the agent out of the routable sets where `filing` put it.
    pub fn unfile(&mut self, agent: &AgentId, filing: Filing) {
        let Filing { key, room, level } = filing;
        let entry = (key, agent.clone());
        let Some(sets) = self.routable.get_mut(level) else {
            return;
        };
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

    /// Files the agent, whose strictest level met is `level`, in the routable sets under its
    /// current key where it has `room`; the filing says where, to take it out again.
    pub fn file(&mut self, agent: &Agent, level: usize, room: Room, today: i64) -> Filing {
        let id = &agent.profile.id;
        let key = self.key_of(agent, today);
        if let Some(sets) = self.routable.get_mut(level) {
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
        }
        Filing { key, room, level }
    }

    /// Whether `file(agent, level, room, today)` would file the agent exactly where `filing`
    /// says it is, so that refiling it would change nothing.
    pub fn files_as(
        &self,
        filing: &Filing,
        agent: &Agent,
        level: usize,
        room: &Room,
        today: i64,
    ) -> bool {
        filing.level == level && filing.room == *room && filing.key == self.key_of(agent, today)
    }

    /// The agent's place in this queue's strategy order.
    pub fn key_of(&self, agent: &Agent, today: i64) -> RouteKey {
        let idle_since = agent.idle_since.millis();
        match self.config.strategy {
            Strategy::LongestIdle => (idle_since, 0),
            Strategy::RoundRobin => (agent.last_routed as i64, idle_since),
            Strategy::LeastOccupied => (handled_on(agent, today) as i64, idle_since),
            Strategy::MostSkilled => (-self.summed_level(agent), idle_since),
            Strategy::RingAll => (0, 0),
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

/// The queues' indexes, found by name or by slot. An agent's membership names its queue by
/// slot, so that a decision reaches the queues of the agent it offers to without hashing their
/// names (each hash reads the name's text: one more cache miss per queue). A slot stays with
/// its queue while the queue exists; a deleted queue's slot is reused.
#[derive(Debug, Clone, Default)]
pub struct QueueSlots {
    by_name: OrderedFastMap<QueueName, usize>,
    slots: Vec<Option<QueueIndex>>,
    free: Vec<usize>,
}

impl QueueSlots {
    pub fn get(&self, name: &QueueName) -> Option<&QueueIndex> {
        self.by_name.get(name).and_then(|&slot| self.at(slot))
    }

    pub fn contains_key(&self, name: &QueueName) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn at(&self, slot: usize) -> Option<&QueueIndex> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    pub fn at_mut(&mut self, slot: usize) -> Option<&mut QueueIndex> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    /// The indexes in queue name order, with their slots.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &QueueIndex)> {
        self.by_name
            .values()
            .filter_map(|&slot| self.at(slot).map(|index| (slot, index)))
    }

    /// Puts the index in the slot of its queue, or in a new one; returns the slot.
    pub fn insert(&mut self, index: QueueIndex) -> usize {
        if let Some(&slot) = self.by_name.get(&index.config.name) {
            self.slots[slot] = Some(index);
            return slot;
        }
        let name = index.config.name.clone();
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(index);
                slot
            }
            None => {
                self.slots.push(Some(index));
                self.slots.len() - 1
            }
        };
        self.by_name.insert(name, slot);
        slot
    }

    pub fn remove(&mut self, name: &QueueName) {
        if let Some(slot) = self.by_name.remove(name) {
            self.slots[slot] = None;
            self.free.push(slot);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn index(name: &str) -> QueueIndex {
        QueueIndex::new(QueueConfig::new(QueueName::parse(name).unwrap()))
    }

    fn names(slots: &QueueSlots) -> Vec<(usize, String)> {
        slots
            .iter()
            .map(|(slot, index)| (slot, index.config.name.as_str().to_owned()))
            .collect()
    }

    #[test]
    fn a_queue_keeps_its_slot_when_replaced_and_a_deleted_queues_slot_is_reused() {
        let mut slots = QueueSlots::default();
        assert_eq!(slots.insert(index("sales")), 0);
        assert_eq!(slots.insert(index("billing")), 1);
        let mut changed = index("sales");
        changed.config.offer_timeout_s = 45;
        assert_eq!(slots.insert(changed), 0, "replaced in place");
        assert_eq!(slots.at(0).unwrap().config.offer_timeout_s, 45);
        assert_eq!(names(&slots), [(1, "billing".into()), (0, "sales".into())]);

        slots.remove(&QueueName::parse("sales").unwrap());
        assert!(slots.at(0).is_none());
        assert!(!slots.contains_key(&QueueName::parse("sales").unwrap()));
        assert!(slots.get(&QueueName::parse("sales").unwrap()).is_none());
        assert_eq!(slots.insert(index("support")), 0, "the freed slot");
        assert_eq!(slots.insert(index("account")), 2);
        assert_eq!(
            names(&slots),
            [
                (2, "account".into()),
                (1, "billing".into()),
                (0, "support".into())
            ]
        );
        let billing = slots.get(&QueueName::parse("billing").unwrap()).unwrap();
        assert_eq!(billing.config.name.as_str(), "billing");
    }
}
