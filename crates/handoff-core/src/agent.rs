//! Agents: who they are (profile), whether they want work (presence) and what they hold (activity).

use std::collections::BTreeMap;

use crate::ids::{AgentId, Seq, SkillLevel, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceStatus {
    Available,
    Away,
    Busy,
    Offline,
}

impl PresenceStatus {
    pub const ALL: [PresenceStatus; 4] = [
        PresenceStatus::Available,
        PresenceStatus::Away,
        PresenceStatus::Busy,
        PresenceStatus::Offline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PresenceStatus::Available => "available",
            PresenceStatus::Away => "away",
            PresenceStatus::Busy => "busy",
            PresenceStatus::Offline => "offline",
        }
    }

    pub fn parse(text: &str) -> Option<PresenceStatus> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

/// Who set the presence: the agent's desktop, a UC system (presence key), an admin, or handoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceSource {
    Desktop,
    Uc,
    Admin,
    System,
}

impl PresenceSource {
    pub const ALL: [PresenceSource; 4] = [
        PresenceSource::Desktop,
        PresenceSource::Uc,
        PresenceSource::Admin,
        PresenceSource::System,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PresenceSource::Desktop => "desktop",
            PresenceSource::Uc => "uc",
            PresenceSource::Admin => "admin",
            PresenceSource::System => "system",
        }
    }

    pub fn parse(text: &str) -> Option<PresenceSource> {
        Self::ALL.into_iter().find(|source| source.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub status: PresenceStatus,
    pub reason: Option<String>,
    pub source: PresenceSource,
    pub since: Timestamp,
}

/// What the agent is doing, derived from the interactions it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Activity {
    // Declared from least to most busy: `max()` over an agent's interactions is its activity.
    Idle,
    WrapUp,
    Offered,
    Engaged,
}

impl Activity {
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Idle => "idle",
            Activity::WrapUp => "wrap_up",
            Activity::Offered => "offered",
            Activity::Engaged => "engaged",
        }
    }
}

/// How many interactions an agent may hold at once (offered, engaged or in wrap-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capacity {
    /// All channels together.
    Total(u32),
    /// Per channel, e.g. one voice call and three chats; a channel not named has none.
    PerChannel(BTreeMap<String, u32>),
}

impl Capacity {
    /// Whether one more interaction on `channel` fits beside `held` (channel of each held one).
    pub fn fits<'a>(&self, channel: &str, held: impl Iterator<Item = &'a str>) -> bool {
        match self {
            Capacity::Total(total) => held.count() < *total as usize,
            Capacity::PerChannel(per_channel) => {
                let limit = per_channel.get(channel).copied().unwrap_or(0) as usize;
                held.filter(|held_channel| *held_channel == channel).count() < limit
            }
        }
    }

    /// Whether some channel still has room beside `held`.
    pub fn has_room<'a>(&self, held: impl Iterator<Item = &'a str> + Clone) -> bool {
        match self {
            Capacity::Total(total) => held.count() < *total as usize,
            Capacity::PerChannel(per_channel) => per_channel.iter().any(|(channel, limit)| {
                held.clone().filter(|h| h == channel).count() < *limit as usize
            }),
        }
    }
}

/// What an administrator says about an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentProfile {
    pub id: AgentId,
    pub name: String,
    pub address: Option<String>,
    pub skills: BTreeMap<String, SkillLevel>,
    pub capacity: Capacity,
}

/// An agent as the state holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub profile: AgentProfile,
    pub presence: Presence,
    /// The ack cursor; not an event, kept beside the log and loaded into the state.
    pub acked_seq: Seq,
    /// Since when the agent has had nothing to do (for `longest_idle`).
    pub idle_since: Timestamp,
    /// When the agent was last offered a caller by a queue, in offer order (for `round_robin`).
    pub last_routed: u64,
    /// Interactions accepted, by day number of the calendar (for `least_occupied`).
    pub handled: (i64, u32),
    /// Offers missed (rejected or timed out) since the last accept.
    pub missed_in_a_row: u32,
}
