//! The state machine: `State::execute(command, now)` validates, then appends events by applying
//! them one at a time; `State::apply` is the only place that changes what the state says, and
//! replaying the log through it rebuilds the same state. After every command, `dispatch` offers
//! waiting callers to agents who can take them, reading ordered indexes, never scanning agents.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;

use smallvec::{smallvec, SmallVec};

use crate::agent::{Activity, Agent, Capacity, Presence, PresenceSource, PresenceStatus};
use crate::command::{Command, CommandError};
use crate::event::{Event, OfferEndReason, Routing};
use crate::fast_map::{FastMap, OrderedFastMap};
use crate::ids::{AgentId, InteractionId, QueueName, Seq, Timestamp};
use crate::interaction::{Interaction, InteractionState, Target};
use crate::queue::{QueueConfig, Strategy};
use crate::router::{handled_on, Filing, QueueIndex, QueueSlots, Room};
use crate::stats::{QueueStatistics, WindowPair};

/// Tells which calendar day a moment falls on, in the configured time zone ("today" for
/// `least_occupied`). A pure function: the core still reads no clock.
pub trait Calendar: Send + Sync + Debug {
    /// Days since some fixed day; only equality and order matter.
    fn day_of(&self, at: Timestamp) -> i64;
}

/// Days in UTC.
#[derive(Debug, Clone, Copy, Default)]
pub struct UtcCalendar;

impl Calendar for UtcCalendar {
    fn day_of(&self, at: Timestamp) -> i64 {
        at.millis().div_euclid(86_400_000)
    }
}

/// Settings the state machine needs; everything else about configuration stays outside.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long an offer to an agent target stays open.
    pub offer_timeout_s: u64,
    /// Whether a lost connection (after its grace period) sets the agent offline.
    pub offline_on_disconnect: bool,
    /// Misses in a row (rejects or timed-out offers) after which an agent is set away.
    pub max_missed_offers: u32,
    /// How long a caller waits for an agent target who cannot take it now (away, offline, on
    /// another call) before its fallback takes it, or it ends `timed_out`, when the request
    /// names no `max_wait_s` of its own.
    pub agent_max_wait_s: u64,
    pub calendar: Arc<dyn Calendar>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            offer_timeout_s: 20,
            offline_on_disconnect: true,
            max_missed_offers: 2,
            agent_max_wait_s: 60,
            calendar: Arc::new(UtcCalendar),
        }
    }
}

/// Events appended by one command, each with the agents it is for.
type Events = Vec<(Event, Vec<AgentId>)>;

/// How many channel names `State::channels` shares at most.
const MAX_INTERNED_CHANNELS: usize = 1024;

/// The agents one decision offers a caller to: one, or every eligible agent for `ring_all`.
type Chosen = SmallVec<[AgentId; 2]>;

/// The few agents an event concerns (its interaction's holders, the agent it names), kept
/// inline: applying an event must not allocate for them.
type Agents = SmallVec<[AgentId; 4]>;

/// A caller's place in its line: higher priority first, then longest waiting, then arrival.
type WaitingKey = (Reverse<i32>, Timestamp, u64);

/// Callers wait per target and channel: within one line every caller needs the same kind of
/// room, so the first caller of a priority that cannot be served means none after it can.
/// The channel is shared, not owned: a key is copied into three indexes per caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum LineKey {
    Agent(AgentId, Arc<str>),
    Queue(QueueName, Arc<str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum TimerKind {
    Offer,
    MaxWait,
    WrapUp,
}

#[derive(Debug, Clone)]
pub struct State {
    settings: Settings,
    agents: OrderedFastMap<AgentId, Agent>,
    queues: QueueSlots,
    /// The queues each agent serves at some level, by queue name, with where it is filed in
    /// each: a decision takes the agent it offers to out of every queue it serves, and this
    /// one lookup finds them all.
    memberships: FastMap<AgentId, Vec<Membership>>,
    /// Boxed, so that growing the table moves pointers: moving the records themselves froze
    /// the engine for 25-40 ms each time the table doubled (at 3,584 and 7,168 interactions
    /// in the benchmark), twice over (the working and the committed state).
    interactions: FastMap<InteractionId, Box<Interaction>>,
    /// Interactions in creation order, for listing.
    creation_order: Vec<InteractionId>,
    /// Interactions each agent holds: offered to it, accepted or in wrap-up.
    held: FastMap<AgentId, BTreeSet<InteractionId>>,
    /// Deadlines set by events: offers, waits, wrap-ups.
    timers: BTreeSet<(Timestamp, TimerKind, InteractionId)>,
    /// When waiting callers' requirements relax: a wake-up, not state (see `next_wakeup`).
    escalations: BTreeSet<(Timestamp, InteractionId)>,
    lines: BTreeMap<LineKey, BTreeMap<WaitingKey, InteractionId>>,
    line_of: FastMap<InteractionId, (LineKey, WaitingKey)>,
    /// Lines that may have become servable since `dispatch` last found them not: a caller
    /// joined, an agent who could serve them changed, a requirement relaxed. A hint: a line
    /// too many costs a look, never a wrong decision.
    dirty: BTreeSet<LineKey>,
    /// One shared copy of each channel name the lines use, so that a caller joining a line
    /// does not allocate its key's channel. At most `MAX_INTERNED_CHANNELS`: names come from
    /// clients; past that a line key makes its own copy.
    channels: FastMap<String, Arc<str>>,
    waiting_counter: u64,
    route_counter: u64,
    /// The calendar day the strategy keys were computed for.
    today: i64,
    /// Agents looked at by routing decisions, in total (a cost measure for tests and benches).
    examined: u64,
    stats: QueueStatistics,
    /// Per queue, its members by presence and by activity, kept up to date by `apply`, so
    /// statistics never walk the agents.
    member_counts: FastMap<QueueName, MemberCounts>,
}

/// One queue an agent serves.
#[derive(Debug, Clone)]
struct Membership {
    queue: QueueName,
    /// The queue's slot in `State::queues`.
    slot: usize,
    /// The strictest requirement level of the queue the agent meets.
    eligible_from: usize,
    /// Where the agent is in the queue's routable sets; `None` while it cannot take a caller.
    filed: Option<Filing>,
}

/// A queue's members (agents that meet some level of it) by presence and by activity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberCounts {
    pub available: u64,
    pub away: u64,
    pub busy: u64,
    pub offline: u64,
    pub idle: u64,
    pub offered: u64,
    pub engaged: u64,
    pub wrap_up: u64,
}

impl MemberCounts {
    fn add(&mut self, presence: PresenceStatus, activity: Activity, up: bool) {
        let by_presence = match presence {
            PresenceStatus::Available => &mut self.available,
            PresenceStatus::Away => &mut self.away,
            PresenceStatus::Busy => &mut self.busy,
            PresenceStatus::Offline => &mut self.offline,
        };
        let by_activity = match activity {
            Activity::Idle => &mut self.idle,
            Activity::Offered => &mut self.offered,
            Activity::Engaged => &mut self.engaged,
            Activity::WrapUp => &mut self.wrap_up,
        };
        for count in [by_presence, by_activity] {
            *count = if up {
                *count + 1
            } else {
                count.saturating_sub(1)
            };
        }
    }
}

impl State {
    pub fn new(settings: Settings) -> State {
        State {
            settings,
            agents: OrderedFastMap::default(),
            queues: QueueSlots::default(),
            memberships: FastMap::default(),
            interactions: FastMap::default(),
            creation_order: Vec::new(),
            held: FastMap::default(),
            timers: BTreeSet::new(),
            escalations: BTreeSet::new(),
            lines: BTreeMap::new(),
            line_of: FastMap::default(),
            dirty: BTreeSet::new(),
            channels: FastMap::default(),
            waiting_counter: 0,
            route_counter: 0,
            today: 0,
            examined: 0,
            stats: QueueStatistics::new(),
            member_counts: FastMap::default(),
        }
    }

    /// The queue's members by presence and by activity, as walking `queue_members` would
    /// count them, in O(1).
    pub fn member_counts(&self, name: &QueueName) -> MemberCounts {
        self.member_counts.get(name).copied().unwrap_or_default()
    }

    /// The presence and activity `member_counts` count the agent under.
    fn counted_as(&self, agent_id: &AgentId) -> (PresenceStatus, Activity) {
        let presence = self
            .agents
            .get(agent_id)
            .map_or(PresenceStatus::Offline, |agent| agent.presence.status);
        (presence, self.activity(agent_id))
    }

    /// In every queue the agent is a member of, takes it out of the counts of `was` and adds
    /// it to those of `now` (either may be none: leaving or joining the counts).
    fn move_member(
        &mut self,
        agent_id: &AgentId,
        was: Option<(PresenceStatus, Activity)>,
        now: Option<(PresenceStatus, Activity)>,
    ) {
        if !self.agents.contains_key(agent_id) {
            return;
        }
        let Some(queues) = self.memberships.get(agent_id) else {
            return;
        };
        for Membership { queue: name, .. } in queues {
            let counts = match self.member_counts.get_mut(name) {
                Some(counts) => counts,
                None => self.member_counts.entry(name.clone()).or_default(),
            };
            if let Some((presence, activity)) = was {
                counts.add(presence, activity, false);
            }
            if let Some((presence, activity)) = now {
                counts.add(presence, activity, true);
            }
        }
    }

    /// Counts a queue's members from scratch (its configuration changed).
    fn recount_queue(&mut self, name: &QueueName) {
        let mut counts = MemberCounts::default();
        for agent in self.queue_members(name) {
            counts.add(
                agent.presence.status,
                self.activity(&agent.profile.id),
                true,
            );
        }
        self.member_counts.insert(name.clone(), counts);
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    // ----- queries -------------------------------------------------------------------------

    pub fn agent(&self, id: &AgentId) -> Option<&Agent> {
        self.agents.get(id)
    }

    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values()
    }

    pub fn queue(&self, name: &QueueName) -> Option<&QueueConfig> {
        self.queues.get(name).map(|index| &index.config)
    }

    pub fn queues(&self) -> impl Iterator<Item = &QueueConfig> {
        self.queues.iter().map(|(_, index)| &index.config)
    }

    /// Agents that meet some level of the queue.
    pub fn queue_members<'a>(&'a self, name: &QueueName) -> impl Iterator<Item = &'a Agent> {
        let name = name.clone();
        self.agents.values().filter(move |agent| {
            self.memberships
                .get(&agent.profile.id)
                .is_some_and(|queues| queues.iter().any(|m| m.queue == name))
        })
    }

    /// Callers waiting in the queue (every channel), in line order within each channel.
    pub fn waiting_in<'a>(&'a self, name: &'a QueueName) -> impl Iterator<Item = &'a Interaction> {
        self.lines
            .iter()
            .filter(move |(key, _)| matches!(key, LineKey::Queue(q, _) if q == name))
            .flat_map(|(_, line)| line.values())
            .filter_map(|id| self.interaction(id))
    }

    pub fn interaction(&self, id: &InteractionId) -> Option<&Interaction> {
        self.interactions.get(id).map(|boxed| &**boxed)
    }

    /// Interactions, oldest first.
    pub fn interactions(&self) -> impl DoubleEndedIterator<Item = &Interaction> {
        self.creation_order
            .iter()
            .filter_map(|id| self.interaction(id))
    }

    /// Interactions the agent holds now (offered to it, accepted, wrap-up).
    pub fn held_by(&self, agent: &AgentId) -> impl Iterator<Item = &Interaction> {
        self.held
            .get(agent)
            .into_iter()
            .flatten()
            .filter_map(|id| self.interaction(id))
    }

    /// The busiest of the agent's interactions.
    pub fn activity(&self, agent: &AgentId) -> Activity {
        self.held_by(agent)
            .map(|interaction| match interaction.state {
                InteractionState::Offered => Activity::Offered,
                InteractionState::Accepted => Activity::Engaged,
                InteractionState::WrapUp => Activity::WrapUp,
                _ => Activity::Idle,
            })
            .max()
            .unwrap_or(Activity::Idle)
    }

    /// 1-based place in the line of callers waiting for the same target and channel.
    pub fn position(&self, id: &InteractionId) -> Option<usize> {
        let (line, key) = self.line_of.get(id)?;
        Some(self.lines.get(line)?.range(..*key).count() + 1)
    }

    /// The earliest deadline set by an event (offer, wait, wrap-up).
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.timers.first().map(|(at, _, _)| *at)
    }

    /// When `Command::Tick` next has work after `now`: a deadline, or a waiting caller's
    /// requirement relaxing.
    pub fn next_wakeup(&self, now: Timestamp) -> Option<Timestamp> {
        let escalation = self
            .escalations
            .range((now.plus_millis(1), InteractionId::lowest())..)
            .next()
            .map(|(at, _)| *at);
        match (self.next_deadline(), escalation) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The queue's counters over the last 15 minutes and since `day_start`.
    pub fn queue_stats(
        &self,
        name: &QueueName,
        now: Timestamp,
        day_start: Timestamp,
    ) -> WindowPair {
        let service_level_s = self
            .queues
            .get(name)
            .map_or(20, |q| q.config.service_level_s);
        self.stats.snapshot(name, now, day_start, service_level_s)
    }

    /// Agents looked at by routing decisions so far.
    pub fn agents_examined(&self) -> u64 {
        self.examined
    }

    /// Drops from memory the interactions that ended (a terminal state) before `cutoff`, and
    /// says how many. Nothing refers to an ended interaction but the table and the creation
    /// order: it holds no agent, waits in no line and has no timer. Its events stay in the log,
    /// from which `interaction_from_events` makes it again.
    pub fn forget_ended_before(&mut self, cutoff: Timestamp) -> usize {
        let before = self.interactions.len();
        self.interactions.retain(|_, interaction| {
            !(interaction.state.is_terminal() && interaction.updated_at < cutoff)
        });
        let forgotten = before - self.interactions.len();
        if forgotten > 0 {
            let kept = &self.interactions;
            self.creation_order.retain(|id| kept.contains_key(id));
        }
        forgotten
    }

    /// The interaction that `events` (one interaction's, oldest first, as `apply` took them)
    /// make, on their own: how an interaction `forget_ended_before` dropped is read again.
    /// Fields that depend on other callers (`waiting_order`) are not what they were.
    pub fn interaction_from_events<'a>(
        settings: Settings,
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Option<Interaction> {
        let mut scratch = State::new(settings);
        let mut created = None;
        for event in events {
            if let Event::InteractionCreated { spec } = event {
                created.get_or_insert_with(|| spec.id.clone());
            }
            scratch.apply(event);
        }
        scratch.interactions.remove(&created?).map(|boxed| *boxed)
    }

    /// Moves an agent's ack cursor forward; acks are not events, the store keeps them beside the log.
    pub fn set_acked(&mut self, agent: &AgentId, seq: Seq) {
        if let Some(agent) = self.agents.get_mut(agent) {
            agent.acked_seq = agent.acked_seq.max(seq);
        }
    }

    fn held_channels<'a>(&'a self, agent: &AgentId) -> impl Iterator<Item = &'a str> + Clone {
        self.held
            .get(agent)
            .into_iter()
            .flatten()
            .filter_map(|id| self.interaction(id))
            .map(|i| i.spec.channel.as_str())
    }

    /// Available, with room for one more interaction on `channel`.
    fn can_take(&self, agent: &AgentId, channel: &str) -> bool {
        self.agents.get(agent).is_some_and(|a| {
            a.presence.status == PresenceStatus::Available
                && a.profile.capacity.fits(channel, self.held_channels(agent))
        })
    }

    /// Where an available agent has room: what the queues' routable sets file it under.
    fn room_of(&self, agent: &Agent) -> Option<Room> {
        if agent.presence.status != PresenceStatus::Available {
            return None;
        }
        let held = self.held_channels(&agent.profile.id);
        match &agent.profile.capacity {
            Capacity::Total(_) => agent.profile.capacity.has_room(held).then_some(Room::Any),
            Capacity::PerChannel(limits) => {
                let channels: Vec<String> = limits
                    .keys()
                    .filter(|channel| agent.profile.capacity.fits(channel, held.clone()))
                    .cloned()
                    .collect();
                (!channels.is_empty()).then_some(Room::Channels(channels))
            }
        }
    }

    fn line_key(channels: &mut FastMap<String, Arc<str>>, interaction: &Interaction) -> LineKey {
        let name = interaction.spec.channel.as_str();
        let channel = match channels.get(name) {
            Some(shared) => shared.clone(),
            None => {
                let made: Arc<str> = Arc::from(name);
                if channels.len() < MAX_INTERNED_CHANNELS {
                    channels.insert(name.to_owned(), made.clone());
                }
                made
            }
        };
        match &interaction.current_target {
            Target::Agent(agent) => LineKey::Agent(agent.clone(), channel),
            Target::Queue(queue) => LineKey::Queue(queue.clone(), channel),
        }
    }

    fn offer_timeout_s(&self, interaction: &Interaction) -> u64 {
        match &interaction.current_target {
            Target::Queue(queue) => self
                .queues
                .get(queue)
                .map_or(self.settings.offer_timeout_s, |q| q.config.offer_timeout_s),
            Target::Agent(_) => self.settings.offer_timeout_s,
        }
    }

    // ----- commands ------------------------------------------------------------------------

    /// Validates `command` against the state and, when it fits, applies and returns its events.
    /// A refused command changes nothing.
    pub fn execute(
        &mut self,
        command: Command,
        now: Timestamp,
    ) -> Result<Vec<Event>, CommandError> {
        let appended = self.execute_with_recipients(command, now)?;
        Ok(appended.into_iter().map(|(event, _)| event).collect())
    }

    /// As `execute`, with the agents each event is for (what `apply` returned for it).
    pub fn execute_with_recipients(
        &mut self,
        command: Command,
        now: Timestamp,
    ) -> Result<Vec<(Event, Vec<AgentId>)>, CommandError> {
        self.check(&command)?;
        self.refresh_day(now);
        self.relax_requirements(now);
        // Room for the usual arrival (created, queued, offered) without growing.
        let mut out = Vec::with_capacity(4);
        self.run(&mut out, command, now);
        self.dispatch(&mut out, now);
        Ok(out)
    }

    /// Everything that can refuse a command, before anything changes.
    fn check(&self, command: &Command) -> Result<(), CommandError> {
        match command {
            Command::UpsertAgent { .. } | Command::Tick => Ok(()),
            Command::DeleteAgent { agent } => {
                if !self.agents.contains_key(agent) {
                    return Err(CommandError::UnknownAgent(agent.clone()));
                }
                let engaged = self
                    .held_by(agent)
                    .any(|i| i.state != InteractionState::Offered);
                if engaged {
                    return Err(CommandError::AgentHoldsInteractions(agent.clone()));
                }
                Ok(())
            }
            Command::SetPresence { agent, .. } | Command::ConnectionLost { agent } => {
                if self.agents.contains_key(agent) {
                    Ok(())
                } else {
                    Err(CommandError::UnknownAgent(agent.clone()))
                }
            }
            Command::CreateInteraction { spec } => {
                if self.interactions.contains_key(&spec.id) {
                    return Err(CommandError::DuplicateInteraction(spec.id.clone()));
                }
                self.check_target(&spec.target)?;
                if let Some(fallback) = &spec.fallback {
                    self.check_target(fallback)?;
                    if fallback == &spec.target {
                        return Err(CommandError::FallbackSameAsTarget);
                    }
                }
                Ok(())
            }
            Command::Accept { id, agent } => self.check_offered_to(id, agent, "accept"),
            Command::Reject { id, agent } => self.check_offered_to(id, agent, "reject"),
            Command::Complete { id, agent, .. } => {
                let interaction = self.held_interaction(id, agent)?;
                if !matches!(
                    interaction.state,
                    InteractionState::Accepted | InteractionState::WrapUp
                ) {
                    return Err(CommandError::WrongState {
                        action: "complete",
                        state: interaction.state,
                    });
                }
                Ok(())
            }
            Command::Transfer {
                id,
                agent,
                target,
                fallback,
                ..
            } => {
                let interaction = self.held_interaction(id, agent)?;
                if interaction.state != InteractionState::Accepted {
                    return Err(CommandError::WrongState {
                        action: "transfer",
                        state: interaction.state,
                    });
                }
                self.check_target(target)?;
                if target == &Target::Agent(agent.clone()) {
                    return Err(CommandError::TransferToSelf);
                }
                if let Some(fallback) = fallback {
                    self.check_target(fallback)?;
                    if fallback == target {
                        return Err(CommandError::FallbackSameAsTarget);
                    }
                }
                Ok(())
            }
            Command::UpdateContext {
                id,
                expected_version,
                ..
            } => {
                let interaction = self
                    .interactions
                    .get(id)
                    .ok_or_else(|| CommandError::UnknownInteraction(id.clone()))?;
                if interaction.state.is_terminal() {
                    return Err(CommandError::WrongState {
                        action: "update the context of",
                        state: interaction.state,
                    });
                }
                if interaction.context_version != *expected_version {
                    return Err(CommandError::ContextVersionMismatch {
                        id: id.clone(),
                        expected: *expected_version,
                        current: interaction.context_version,
                    });
                }
                Ok(())
            }
            Command::RecordEnrichment { id, .. } => {
                // An ended interaction still takes what its lookup found: its log is complete.
                if self.interactions.contains_key(id) {
                    Ok(())
                } else {
                    Err(CommandError::UnknownInteraction(id.clone()))
                }
            }
            Command::Hangup { id } => {
                let interaction = self
                    .interactions
                    .get(id)
                    .ok_or_else(|| CommandError::UnknownInteraction(id.clone()))?;
                match interaction.state {
                    InteractionState::Queued
                    | InteractionState::Offered
                    | InteractionState::Accepted => Ok(()),
                    state => Err(CommandError::WrongState {
                        action: "hang up",
                        state,
                    }),
                }
            }
            Command::UpsertQueue { config } => {
                config.validate()?;
                match &config.overflow {
                    Some(overflow) if !self.queues.contains_key(overflow) => {
                        Err(CommandError::UnknownOverflowQueue(overflow.clone()))
                    }
                    _ => Ok(()),
                }
            }
            Command::DeleteQueue { name } => {
                if !self.queues.contains_key(name) {
                    return Err(CommandError::UnknownQueue(name.clone()));
                }
                let in_use = self.interactions.values().any(|i| {
                    matches!(&i.current_target, Target::Queue(q) if q == name)
                        && matches!(
                            i.state,
                            InteractionState::Queued | InteractionState::Offered
                        )
                });
                let overflows_here = self.queues.iter().any(|(_, q)| {
                    q.config.overflow.as_ref() == Some(name) && &q.config.name != name
                });
                if in_use || overflows_here {
                    return Err(CommandError::QueueInUse(name.clone()));
                }
                Ok(())
            }
        }
    }

    /// Appends the events of a command that passed `check`.
    fn run(&mut self, out: &mut Events, command: Command, now: Timestamp) {
        match command {
            Command::UpsertAgent { profile } => match self.agents.get(&profile.id) {
                Some(existing) if existing.profile == profile => {}
                Some(_) => self.emit(out, Event::AgentUpdated { profile, at: now }),
                None => {
                    let presence = Presence {
                        status: PresenceStatus::Offline,
                        reason: None,
                        source: PresenceSource::System,
                        since: now,
                    };
                    self.emit(out, Event::AgentCreated { profile, presence });
                }
            },
            Command::DeleteAgent { agent } => {
                let offered: Vec<InteractionId> =
                    self.held_by(&agent).map(|i| i.spec.id.clone()).collect();
                let target = Target::Agent(agent.clone());
                let waiting_for_agent: Vec<InteractionId> = self
                    .lines
                    .iter()
                    .filter(|(key, _)| matches!(key, LineKey::Agent(a, _) if *a == agent))
                    .flat_map(|(_, line)| line.values().cloned())
                    .collect();
                self.emit(
                    out,
                    Event::AgentDeleted {
                        agent: agent.clone(),
                        at: now,
                    },
                );
                for id in offered {
                    self.revoke(out, &id, &agent, OfferEndReason::AgentDeleted, now);
                    self.after_offer_ended(out, &id, now);
                }
                for id in waiting_for_agent {
                    self.fall_back_or_end_unanswered(out, &id, &target, now);
                }
            }
            Command::SetPresence {
                agent,
                status,
                reason,
                source,
            } => {
                let current = &self.agents[&agent].presence;
                if current.status != status || current.reason != reason {
                    let presence = Presence {
                        status,
                        reason,
                        source,
                        since: now,
                    };
                    self.emit(out, Event::PresenceChanged { agent, presence });
                }
            }
            Command::CreateInteraction { spec } => {
                let id = spec.id.clone();
                let target = spec.target.clone();
                let spec = Arc::new(spec);
                self.emit(out, Event::InteractionCreated { spec });
                self.route(out, &id, target, now);
            }
            Command::Accept { id, agent } => {
                let others: Vec<AgentId> = self.interactions[&id]
                    .offered_to
                    .iter()
                    .filter(|other| **other != agent)
                    .cloned()
                    .collect();
                for other in others {
                    self.revoke(out, &id, &other, OfferEndReason::AnsweredElsewhere, now);
                }
                self.emit(out, Event::InteractionAccepted { id, agent, at: now });
            }
            Command::Reject { id, agent } => {
                let rejected = Event::InteractionRejected {
                    id: id.clone(),
                    agent: agent.clone(),
                    at: now,
                };
                self.emit(out, rejected);
                self.after_offer_ended(out, &id, now);
                self.away_after_misses(out, &agent, now);
            }
            Command::Complete {
                id,
                agent,
                disposition,
                notes,
            } => {
                let event = Event::InteractionCompleted {
                    id,
                    agent,
                    disposition,
                    notes,
                    at: now,
                    wrap_up_expired: false,
                };
                self.emit(out, event);
            }
            Command::Transfer {
                id,
                agent,
                target,
                fallback,
                note,
            } => {
                let event = Event::InteractionTransferred {
                    id: id.clone(),
                    from: agent,
                    target: target.clone(),
                    fallback,
                    note,
                    at: now,
                };
                self.emit(out, event);
                self.route(out, &id, target, now);
            }
            Command::UpdateContext {
                id,
                context,
                patch,
                by,
                ..
            } => {
                let version = self.interactions[&id].context_version + 1;
                let event = Event::ContextUpdated {
                    id,
                    context: Arc::from(context),
                    patch: Arc::from(patch),
                    version,
                    by,
                    at: now,
                };
                self.emit(out, event);
            }
            Command::RecordEnrichment {
                id,
                connector,
                outcome,
            } => {
                let event = match outcome {
                    Ok(fields) => Event::InteractionEnriched {
                        id,
                        enrichment: crate::interaction::Enrichment {
                            connector,
                            fields: Arc::from(fields),
                        },
                        at: now,
                    },
                    Err(reason) => Event::EnrichmentFailed {
                        id,
                        connector,
                        reason,
                        at: now,
                    },
                };
                self.emit(out, event);
            }
            Command::Hangup { id } => {
                let interaction = &self.interactions[&id];
                match interaction.state {
                    InteractionState::Accepted => {
                        let agent = interaction.agent.clone().expect("accepted has an agent");
                        let wrap_up_until = self.wrap_up_deadline(interaction, now);
                        let event = Event::InteractionEnded {
                            id,
                            agent,
                            wrap_up_until,
                            at: now,
                        };
                        self.emit(out, event);
                    }
                    _ => {
                        let offered: Vec<AgentId> =
                            interaction.offered_to.iter().cloned().collect();
                        for agent in offered {
                            self.revoke(out, &id, &agent, OfferEndReason::Abandoned, now);
                        }
                        self.emit(out, Event::InteractionAbandoned { id, at: now });
                    }
                }
            }
            Command::ConnectionLost { agent } => {
                if !self.settings.offline_on_disconnect {
                    return;
                }
                if self.agents[&agent].presence.status != PresenceStatus::Offline {
                    let presence = Presence {
                        status: PresenceStatus::Offline,
                        reason: Some("connection_lost".to_owned()),
                        source: PresenceSource::System,
                        since: now,
                    };
                    let event = Event::PresenceChanged {
                        agent: agent.clone(),
                        presence,
                    };
                    self.emit(out, event);
                }
                let offered: Vec<InteractionId> = self
                    .held_by(&agent)
                    .filter(|i| i.state == InteractionState::Offered)
                    .map(|i| i.spec.id.clone())
                    .collect();
                for id in offered {
                    self.revoke(out, &id, &agent, OfferEndReason::ConnectionLost, now);
                    self.after_offer_ended(out, &id, now);
                }
            }
            Command::Tick => self.tick(out, now),
            Command::UpsertQueue { config } => {
                let existing = self.queues.get(&config.name).map(|q| &q.config);
                if existing != Some(&config) {
                    let created = existing.is_none();
                    self.emit(
                        out,
                        Event::QueueUpserted {
                            config,
                            created,
                            at: now,
                        },
                    );
                }
            }
            Command::DeleteQueue { name } => self.emit(out, Event::QueueDeleted { name, at: now }),
        }
    }

    /// Escalations that passed need no event (`dispatch` reads the time), only a look at the
    /// lines of the callers whose requirement relaxed.
    fn relax_requirements(&mut self, now: Timestamp) {
        let passed: Vec<(Timestamp, InteractionId)> = self
            .escalations
            .range(..(now.plus_millis(1), InteractionId::lowest()))
            .cloned()
            .collect();
        for entry in passed {
            self.escalations.remove(&entry);
            if let Some((line, _)) = self.line_of.get(&entry.1) {
                self.dirty.insert(line.clone());
            }
        }
    }

    fn tick(&mut self, out: &mut Events, now: Timestamp) {
        // Handling one timer can make another due (a caller requeued after its wait passed):
        // go on until none is left, each timer once.
        let mut handled = BTreeSet::new();
        loop {
            let due: Vec<(Timestamp, TimerKind, InteractionId)> = self
                .timers
                .iter()
                .take_while(|(at, _, _)| *at <= now)
                .filter(|timer| !handled.contains(*timer))
                .cloned()
                .collect();
            if due.is_empty() {
                break;
            }
            handled.extend(due.iter().cloned());
            self.handle_due_timers(out, due, now);
        }
    }

    fn handle_due_timers(
        &mut self,
        out: &mut Events,
        due: Vec<(Timestamp, TimerKind, InteractionId)>,
        now: Timestamp,
    ) {
        for (_, kind, id) in due {
            let Some(interaction) = self.interactions.get(&id) else {
                continue;
            };
            match kind {
                TimerKind::Offer if interaction.state == InteractionState::Offered => {
                    let offered: Vec<AgentId> = interaction.offered_to.iter().cloned().collect();
                    for agent in &offered {
                        self.revoke(out, &id, agent, OfferEndReason::TimedOut, now);
                    }
                    self.after_offer_ended(out, &id, now);
                    for agent in &offered {
                        self.away_after_misses(out, agent, now);
                    }
                }
                TimerKind::MaxWait if interaction.state == InteractionState::Queued => {
                    let overflow = match &interaction.current_target {
                        Target::Queue(queue) => self
                            .queues
                            .get(queue)
                            .and_then(|q| q.config.overflow.clone())
                            .filter(|overflow| self.queues.contains_key(overflow)),
                        Target::Agent(agent) => {
                            let waited_for = Target::Agent(agent.clone());
                            // The named agent may have got room earlier in this tick: whoever
                            // can be served now is served first, this caller included.
                            self.dispatch(out, now);
                            let interaction = &self.interactions[&id];
                            if interaction.state != InteractionState::Queued {
                                continue;
                            }
                            // The named agent never got room: the fallback takes the caller.
                            let fallback = interaction
                                .pending_fallback
                                .clone()
                                .filter(|fallback| *fallback != waited_for);
                            match fallback {
                                Some(fallback) => self.route(out, &id, fallback, now),
                                None => self.emit(out, Event::InteractionTimedOut { id, at: now }),
                            }
                            continue;
                        }
                    };
                    match overflow {
                        Some(overflow) => self.emit(
                            out,
                            Event::InteractionQueued {
                                id,
                                target: Target::Queue(overflow),
                                at: now,
                                requeued: false,
                            },
                        ),
                        None => self.emit(out, Event::InteractionTimedOut { id, at: now }),
                    }
                }
                TimerKind::WrapUp if interaction.state == InteractionState::WrapUp => {
                    let agent = interaction.agent.clone().expect("wrap-up has an agent");
                    let event = Event::InteractionCompleted {
                        id,
                        agent,
                        disposition: None,
                        notes: None,
                        at: now,
                        wrap_up_expired: true,
                    };
                    self.emit(out, event);
                }
                _ => {}
            }
        }
    }

    fn check_target(&self, target: &Target) -> Result<(), CommandError> {
        match target {
            Target::Agent(agent) if self.agents.contains_key(agent) => Ok(()),
            Target::Agent(agent) => Err(CommandError::UnknownTargetAgent(agent.clone())),
            Target::Queue(queue) if self.queues.contains_key(queue) => Ok(()),
            Target::Queue(queue) => Err(CommandError::UnknownTargetQueue(queue.to_string())),
        }
    }

    fn check_offered_to(
        &self,
        id: &InteractionId,
        agent: &AgentId,
        action: &'static str,
    ) -> Result<(), CommandError> {
        let interaction = self
            .interactions
            .get(id)
            .ok_or_else(|| CommandError::UnknownInteraction(id.clone()))?;
        if interaction.state != InteractionState::Offered {
            return Err(CommandError::WrongState {
                action,
                state: interaction.state,
            });
        }
        if !interaction.offered_to.contains(agent) {
            return Err(CommandError::NotHeldByAgent {
                id: id.clone(),
                agent: agent.clone(),
            });
        }
        Ok(())
    }

    fn held_interaction(
        &self,
        id: &InteractionId,
        agent: &AgentId,
    ) -> Result<&Interaction, CommandError> {
        let interaction = self
            .interactions
            .get(id)
            .ok_or_else(|| CommandError::UnknownInteraction(id.clone()))?;
        if interaction.agent.as_ref() != Some(agent) {
            if interaction.state.is_terminal() {
                return Err(CommandError::WrongState {
                    action: "act on",
                    state: interaction.state,
                });
            }
            return Err(CommandError::NotHeldByAgent {
                id: id.clone(),
                agent: agent.clone(),
            });
        }
        Ok(interaction)
    }

    /// When an interaction that ends `now` leaves wrap-up by itself: its queue's `wrap_up_s`
    /// after `now`; an agent target has no wrap-up timer.
    fn wrap_up_deadline(&self, interaction: &Interaction, now: Timestamp) -> Option<Timestamp> {
        match &interaction.current_target {
            Target::Queue(queue) => self
                .queues
                .get(queue)
                .map(|q| now.plus_seconds(q.config.wrap_up_s)),
            Target::Agent(_) => None,
        }
    }

    fn revoke(
        &mut self,
        out: &mut Events,
        id: &InteractionId,
        agent: &AgentId,
        reason: OfferEndReason,
        now: Timestamp,
    ) {
        let event = Event::OfferRevoked {
            id: id.clone(),
            agent: agent.clone(),
            reason,
            at: now,
        };
        self.emit(out, event);
    }

    /// An offer ended without an accept. Once no offer of it is open: a queue's caller goes
    /// back to its place in line; an agent target's goes to its fallback once, or unanswered.
    fn after_offer_ended(&mut self, out: &mut Events, id: &InteractionId, now: Timestamp) {
        let interaction = &self.interactions[id];
        if interaction.state != InteractionState::Queued || self.line_of.contains_key(id) {
            return;
        }
        match interaction.current_target.clone() {
            Target::Queue(queue) if self.queues.contains_key(&queue) => self.emit(
                out,
                Event::InteractionQueued {
                    id: id.clone(),
                    target: Target::Queue(queue),
                    at: now,
                    requeued: true,
                },
            ),
            current => self.fall_back_or_end_unanswered(out, id, &current, now),
        }
    }

    /// Routes to the pending fallback unless it is `failed` (the target that just failed),
    /// else ends the interaction unanswered.
    fn fall_back_or_end_unanswered(
        &mut self,
        out: &mut Events,
        id: &InteractionId,
        failed: &Target,
        now: Timestamp,
    ) {
        let fallback = self.interactions[id]
            .pending_fallback
            .clone()
            .filter(|fallback| fallback != failed);
        match fallback {
            Some(fallback) => self.route(out, id, fallback, now),
            None => self.emit(
                out,
                Event::InteractionUnanswered {
                    id: id.clone(),
                    at: now,
                },
            ),
        }
    }

    /// Sends an interaction towards `target`. An agent that can take it, with nobody waiting
    /// ahead for it, is offered it at once; otherwise it joins the target's line, from where
    /// `dispatch` offers it.
    fn route(&mut self, out: &mut Events, id: &InteractionId, target: Target, now: Timestamp) {
        let exists = match &target {
            Target::Agent(agent) => self.agents.contains_key(agent),
            Target::Queue(queue) => self.queues.contains_key(queue),
        };
        if !exists {
            // Deleted since the target was accepted: the fallback was for that.
            return self.fall_back_or_end_unanswered(out, id, &target, now);
        }
        if let Target::Agent(agent) = &target {
            // Serve first whoever became servable earlier in this command (a caller put back
            // in line, a requirement relaxed): they rank ahead of a caller arriving now.
            self.dispatch(out, now);
            let channel = self.interactions[id].spec.channel.clone();
            let nobody_ahead = self
                .lines
                .get(&LineKey::Agent(agent.clone(), Arc::from(channel.as_str())))
                .is_none_or(BTreeMap::is_empty);
            if nobody_ahead && self.can_take(agent, &channel) {
                let routing = Routing {
                    strategy: None,
                    eligible: 1,
                    reason: "addressed to this agent".to_owned(),
                };
                let expires_at = now.plus_seconds(self.settings.offer_timeout_s);
                let event = Event::InteractionOffered {
                    id: id.clone(),
                    agent: agent.clone(),
                    target,
                    expires_at,
                    at: now,
                    routing,
                };
                return self.emit(out, event);
            }
        }
        let event = Event::InteractionQueued {
            id: id.clone(),
            target,
            at: now,
            requeued: false,
        };
        self.emit(out, event);
    }

    /// After `max_missed_offers` misses in a row, an available agent is set away.
    fn away_after_misses(&mut self, out: &mut Events, agent: &AgentId, now: Timestamp) {
        let Some(found) = self.agents.get(agent) else {
            return;
        };
        let limit = self.settings.max_missed_offers;
        if limit > 0
            && found.missed_in_a_row >= limit
            && found.presence.status == PresenceStatus::Available
        {
            let presence = Presence {
                status: PresenceStatus::Away,
                reason: Some("missed_offers".to_owned()),
                source: PresenceSource::System,
                since: now,
            };
            let event = Event::PresenceChanged {
                agent: agent.clone(),
                presence,
            };
            self.emit(out, event);
        }
    }

    /// Recomputes the strategy keys when the calendar day changed (`least_occupied` counts
    /// what was handled today).
    fn refresh_day(&mut self, now: Timestamp) {
        let today = self.settings.calendar.day_of(now);
        if today == self.today {
            return;
        }
        self.today = today;
        let agents: Vec<AgentId> = self.agents.keys().cloned().collect();
        for agent in agents {
            self.refile(&agent);
        }
    }

    // ----- dispatch ------------------------------------------------------------------------

    /// Offers waiting callers to agents who can take them, best caller first (priority, then
    /// longest waiting, across all lines), until no waiting caller can be served. It runs
    /// after every command, so no caller ever waits while an agent who could take it is free.
    fn dispatch(&mut self, out: &mut Events, now: Timestamp) {
        loop {
            let mut best: Option<(WaitingKey, InteractionId, Chosen, Routing)> = None;
            let mut unservable: SmallVec<[LineKey; 4]> = SmallVec::new();
            let mut examined = 0;
            for line in &self.dirty {
                match self.servable_head(line, now, &mut examined) {
                    Some((key, id, agents, routing)) => {
                        if best.as_ref().is_none_or(|(best_key, ..)| key < *best_key) {
                            best = Some((key, id, agents, routing));
                        }
                    }
                    None => unservable.push(line.clone()),
                }
            }
            self.examined += examined;
            // Offers only take room away: such a line stays unservable until marked again.
            for line in &unservable {
                self.dirty.remove(line);
            }
            let Some((_, id, mut agents, routing)) = best else {
                break;
            };
            let interaction = &self.interactions[&id];
            let target = interaction.current_target.clone();
            let expires_at = now.plus_seconds(self.offer_timeout_s(interaction));
            let offer = |agent: AgentId, routing: Routing| Event::InteractionOffered {
                id: id.clone(),
                agent,
                target: target.clone(),
                expires_at,
                at: now,
                routing,
            };
            // Each offer carries the routing: a copy for all but the last, which takes it.
            let last = agents.pop();
            for agent in agents {
                self.emit(out, offer(agent, routing.clone()));
            }
            if let Some(agent) = last {
                self.emit(out, offer(agent, routing));
            }
        }
    }

    /// The first caller of `line` that can be served now, with the agents to offer it to.
    /// Within one priority, a caller who waited less never has a laxer requirement than one
    /// ahead of it, so only the first caller of each priority needs a look.
    fn servable_head(
        &self,
        line: &LineKey,
        now: Timestamp,
        examined: &mut u64,
    ) -> Option<(WaitingKey, InteractionId, Chosen, Routing)> {
        let mut next = self
            .lines
            .get(line)?
            .iter()
            .next()
            .map(|(k, id)| (*k, id.clone()));
        while let Some((key, id)) = next {
            if let Some((agents, routing)) = self.pick_agents(line, &id, now, examined) {
                return Some((key, id, agents, routing));
            }
            let lower = key.0 .0.checked_sub(1)?;
            next = self
                .lines
                .get(line)?
                .range((Reverse(lower), Timestamp::from_millis(i64::MIN), 0)..)
                .next()
                .map(|(k, id)| (*k, id.clone()));
        }
        None
    }

    /// The agents to offer this waiting caller to now, and why; `None` when nobody can take it.
    /// Adds the agents it looked at to `examined`.
    fn pick_agents(
        &self,
        line: &LineKey,
        id: &InteractionId,
        now: Timestamp,
        examined: &mut u64,
    ) -> Option<(Chosen, Routing)> {
        let interaction = &self.interactions[id];
        match line {
            LineKey::Agent(agent, channel) => {
                *examined += 1;
                self.can_take(agent, channel).then(|| {
                    let routing = Routing {
                        strategy: None,
                        eligible: 1,
                        reason: "addressed to this agent".to_owned(),
                    };
                    (smallvec![agent.clone()], routing)
                })
            }
            LineKey::Queue(queue, channel) => {
                let index = self.queues.get(queue)?;
                let waited_ms = now.millis() - interaction.waiting_since.millis();
                let level = index.config.level_after(waited_ms);
                let strategy = index.config.strategy;
                let missed = &interaction.just_missed_by;
                let mut chosen = Chosen::new();
                let mut skipped_missed = Chosen::new();
                for agent in index.routable_at(level, channel) {
                    *examined += 1;
                    if !self.can_take(agent, channel) {
                        continue;
                    }
                    if missed.contains(agent) {
                        skipped_missed.push(agent.clone());
                        continue;
                    }
                    chosen.push(agent.clone());
                    if strategy != Strategy::RingAll {
                        break;
                    }
                }
                let mut reason_suffix = "";
                if chosen.is_empty() {
                    // Only agents who just missed it have room: better them than nobody.
                    if strategy == Strategy::RingAll {
                        chosen = skipped_missed;
                    } else {
                        chosen.extend(skipped_missed.into_iter().next());
                    }
                } else if skipped_missed.len() == 1 {
                    reason_suffix = "; the agent who just missed it was passed over";
                } else if !skipped_missed.is_empty() {
                    reason_suffix = "; the agents who just missed it were passed over";
                }
                if chosen.is_empty() {
                    return None;
                }
                let eligible = index.routable_count(level, channel) as u32;
                let first = &self.agents[&chosen[0]];
                let reason = routing_reason(
                    strategy,
                    index,
                    first,
                    RoutingFigures {
                        route_counter: self.route_counter,
                        today: self.today,
                        now,
                        chosen: chosen.len(),
                        level,
                        waited_ms,
                    },
                    reason_suffix,
                );
                Some((
                    chosen,
                    Routing {
                        strategy: Some(strategy),
                        eligible,
                        reason,
                    },
                ))
            }
        }
    }

    fn emit(&mut self, out: &mut Events, event: Event) {
        let recipients = self.apply(&event);
        out.push((event, recipients));
    }

    // ----- apply ---------------------------------------------------------------------------

    /// Applies one event and returns the agents it is for: those the interaction was offered or
    /// assigned to just before or just after it, or the agent whose presence changed.
    pub fn apply(&mut self, event: &Event) -> Vec<AgentId> {
        // Only the agents an event names, or the holders of its interaction, can change
        // presence, activity or membership: they leave the member counts before it and come
        // back after it.
        let mut touched: Agents = event
            .interaction_id()
            .and_then(|id| self.interaction(id))
            .map(holders)
            .unwrap_or_default();
        if let Some(agent) = named_agent(event) {
            if !touched.contains(agent) {
                touched.push(agent.clone());
            }
        }
        let changes_membership = matches!(
            event,
            Event::AgentCreated { .. }
                | Event::AgentUpdated { .. }
                | Event::AgentDeleted { .. }
                | Event::QueueUpserted { .. }
                | Event::QueueDeleted { .. }
        );
        let recipients = if changes_membership {
            for agent in &touched {
                self.move_member(agent, Some(self.counted_as(agent)), None);
            }
            let recipients = self.apply_event(event);
            for agent in &touched {
                self.move_member(agent, None, Some(self.counted_as(agent)));
            }
            recipients
        } else {
            // The common case, every interaction event: memberships stay, so each agent whose
            // presence or activity changed moves between counts in one pass over its queues.
            let before: SmallVec<[(PresenceStatus, Activity); 4]> =
                touched.iter().map(|agent| self.counted_as(agent)).collect();
            let recipients = self.apply_event(event);
            for (agent, was) in touched.iter().zip(before) {
                let now = self.counted_as(agent);
                if now != was {
                    self.move_member(agent, Some(was), Some(now));
                }
            }
            recipients
        };
        match event {
            Event::QueueUpserted { config, .. } => self.recount_queue(&config.name),
            Event::QueueDeleted { name, .. } => {
                self.member_counts.remove(name);
            }
            _ => {}
        }
        recipients
    }

    fn apply_event(&mut self, event: &Event) -> Vec<AgentId> {
        match event {
            Event::AgentCreated { profile, presence } => {
                let agent = Agent {
                    profile: profile.clone(),
                    presence: presence.clone(),
                    acked_seq: Seq::ZERO,
                    idle_since: presence.since,
                    last_routed: 0,
                    handled: (0, 0),
                    missed_in_a_row: 0,
                };
                self.agents.insert(profile.id.clone(), agent);
                self.refile_skills(&profile.id);
                Vec::new()
            }
            Event::AgentUpdated { profile, .. } => {
                if let Some(agent) = self.agents.get_mut(&profile.id) {
                    agent.profile = profile.clone();
                }
                self.refile_skills(&profile.id);
                Vec::new()
            }
            Event::AgentDeleted { agent, .. } => {
                self.agents.remove(agent);
                self.unfile_everywhere(agent);
                self.memberships.remove(agent);
                Vec::new()
            }
            Event::PresenceChanged { agent, presence } => {
                let holds_nothing = self.held.get(agent).is_none_or(BTreeSet::is_empty);
                if let Some(entry) = self.agents.get_mut(agent) {
                    let comes_back = presence.status == PresenceStatus::Available
                        && entry.presence.status != PresenceStatus::Available;
                    if comes_back {
                        entry.missed_in_a_row = 0;
                        if holds_nothing {
                            entry.idle_since = presence.since;
                        }
                    }
                    entry.presence = presence.clone();
                }
                self.refile(agent);
                vec![agent.clone()]
            }
            Event::QueueUpserted { config, .. } => {
                let slot = self.queues.insert(QueueIndex::new(config.clone()));
                let index = self.queues.at(slot).expect("inserted above");
                for agent in self.agents.values() {
                    let queues = self
                        .memberships
                        .entry(agent.profile.id.clone())
                        .or_default();
                    let place = queues.binary_search_by(|m| m.queue.cmp(&config.name));
                    // A filing in the queue's old index goes with it: the new one starts empty.
                    match (index.first_level_met(agent), place) {
                        (Some(level), Ok(at)) => {
                            queues[at].eligible_from = level;
                            queues[at].slot = slot;
                            queues[at].filed = None;
                        }
                        (Some(level), Err(at)) => queues.insert(
                            at,
                            Membership {
                                queue: config.name.clone(),
                                slot,
                                eligible_from: level,
                                filed: None,
                            },
                        ),
                        (None, Ok(at)) => {
                            queues.remove(at);
                        }
                        (None, Err(_)) => {}
                    }
                }
                let agents: Vec<AgentId> = self.agents.keys().cloned().collect();
                for agent in agents {
                    self.refile(&agent);
                }
                // Waiting callers keep their place; their wake-ups follow the new steps.
                let waiting: Vec<InteractionId> = self
                    .line_of
                    .iter()
                    .filter(
                        |(_, (line, _))| matches!(line, LineKey::Queue(q, _) if *q == config.name),
                    )
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in waiting {
                    self.clear_wait_timers(&id);
                    self.set_wait_timers(&id);
                }
                Vec::new()
            }
            Event::QueueDeleted { name, .. } => {
                self.queues.remove(name);
                self.stats.remove_queue(name);
                for queues in self.memberships.values_mut() {
                    queues.retain(|m| m.queue != *name);
                }
                Vec::new()
            }
            Event::InteractionCreated { spec } => {
                let interaction = Interaction {
                    spec: spec.clone(),
                    state: InteractionState::Queued,
                    current_target: spec.target.clone(),
                    pending_fallback: spec.fallback.clone(),
                    agent: None,
                    offered_to: BTreeSet::new(),
                    just_missed_by: BTreeSet::new(),
                    entered_queue_at: None,
                    max_wait_at: None,
                    escalations: SmallVec::new(),
                    wrap_up_until: None,
                    offer_expires_at: None,
                    involved_agents: BTreeSet::new(),
                    waiting_since: spec.created_at,
                    waiting_order: 0,
                    last_transfer_note: None,
                    disposition: None,
                    notes: None,
                    updated_at: spec.created_at,
                    updated_context: None,
                    context_version: 1,
                    enrichment: spec.enrichment.clone(),
                };
                self.creation_order.push(spec.id.clone());
                self.interactions
                    .insert(spec.id.clone(), Box::new(interaction));
                Vec::new()
            }
            // Data about the caller, not a step of the call: no line, timer or holder moves.
            Event::ContextUpdated {
                id,
                context,
                version,
                at,
                ..
            } => self.update_interaction_data(id, *at, |interaction| {
                interaction.updated_context = Some(context.clone());
                interaction.context_version = *version;
            }),
            Event::InteractionEnriched { id, enrichment, at } => {
                self.update_interaction_data(id, *at, |interaction| {
                    let found = &mut interaction.enrichment;
                    found.retain(|earlier| earlier.connector != enrichment.connector);
                    found.push(enrichment.clone());
                })
            }
            Event::EnrichmentFailed { id, at, .. } => self.update_interaction_data(id, *at, |_| {}),
            _ => self.apply_to_interaction(event),
        }
    }

    /// Applies a change of what an interaction carries (its context, what the CRM found),
    /// which moves no line, timer or holder; the event is for the interaction's holders.
    fn update_interaction_data(
        &mut self,
        id: &InteractionId,
        at: Timestamp,
        change: impl FnOnce(&mut Interaction),
    ) -> Vec<AgentId> {
        let Some(interaction) = self.interactions.get_mut(id) else {
            return Vec::new();
        };
        change(interaction);
        interaction.updated_at = at;
        holders(interaction).into_vec()
    }

    fn apply_to_interaction(&mut self, event: &Event) -> Vec<AgentId> {
        let Some(id) = event.interaction_id().cloned() else {
            return Vec::new();
        };
        let Some(interaction) = self.interactions.get(&id) else {
            return Vec::new();
        };
        let holders_before = holders(interaction);
        let timers_before = (interaction.offer_expires_at, interaction.wrap_up_until);
        let at = event.time();
        self.leave_line(&id);
        let interaction = self.interactions.get_mut(&id).expect("looked up above");
        interaction.updated_at = at;
        let mut joins_line = false;
        let mut overflowed_from = None;
        let mut missed_by = None;
        let mut accepted_by = None;
        match event {
            Event::InteractionQueued {
                target, requeued, ..
            } => {
                if !requeued {
                    if let Target::Queue(previous) = &interaction.current_target {
                        if interaction.state == InteractionState::Queued
                            && interaction.entered_queue_at.is_some()
                            && &interaction.current_target != target
                        {
                            overflowed_from = Some(previous.clone());
                        }
                    }
                    retarget(interaction, target);
                    interaction.waiting_since = at;
                    self.waiting_counter += 1;
                    interaction.waiting_order = self.waiting_counter;
                    interaction.entered_queue_at = matches!(target, Target::Queue(_)).then_some(at);
                }
                interaction.state = InteractionState::Queued;
                joins_line = true;
            }
            Event::InteractionOffered {
                agent,
                target,
                expires_at,
                ..
            } => {
                retarget(interaction, target);
                if interaction.state != InteractionState::Offered {
                    // A new round of offers: who missed the last one was considered already.
                    interaction.just_missed_by.clear();
                }
                interaction.state = InteractionState::Offered;
                interaction.offered_to.insert(agent.clone());
                interaction.agent = single(&interaction.offered_to);
                interaction.offer_expires_at = Some(*expires_at);
                interaction.involved_agents.insert(agent.clone());
                if matches!(target, Target::Queue(_)) {
                    self.route_counter += 1;
                    if let Some(found) = self.agents.get_mut(agent) {
                        found.last_routed = self.route_counter;
                    }
                }
            }
            Event::OfferRevoked { agent, reason, .. } => {
                interaction.offered_to.remove(agent);
                interaction.agent = single(&interaction.offered_to);
                if matches!(
                    reason,
                    OfferEndReason::TimedOut | OfferEndReason::ConnectionLost
                ) {
                    interaction.just_missed_by.insert(agent.clone());
                }
                if interaction.offered_to.is_empty() {
                    interaction.state = InteractionState::Queued;
                    interaction.offer_expires_at = None;
                }
                if *reason == OfferEndReason::TimedOut {
                    missed_by = Some(agent.clone());
                }
            }
            Event::InteractionRejected { agent, .. } => {
                interaction.offered_to.remove(agent);
                interaction.agent = single(&interaction.offered_to);
                interaction.just_missed_by.insert(agent.clone());
                if interaction.offered_to.is_empty() {
                    interaction.state = InteractionState::Queued;
                    interaction.offer_expires_at = None;
                }
                missed_by = Some(agent.clone());
            }
            Event::InteractionAccepted { agent, .. } => {
                interaction.state = InteractionState::Accepted;
                interaction.offered_to.clear();
                interaction.agent = Some(agent.clone());
                interaction.offer_expires_at = None;
                interaction.just_missed_by.clear();
                accepted_by = Some(agent.clone());
            }
            Event::InteractionTransferred {
                target,
                fallback,
                note,
                ..
            } => {
                interaction.state = InteractionState::Queued;
                interaction.agent = None;
                interaction.current_target = target.clone();
                interaction.pending_fallback = fallback.clone();
                interaction.last_transfer_note = note.clone();
                interaction.just_missed_by.clear();
            }
            Event::InteractionEnded { wrap_up_until, .. } => {
                interaction.state = InteractionState::WrapUp;
                interaction.wrap_up_until = *wrap_up_until;
            }
            Event::InteractionAbandoned { .. } => {
                interaction.state = InteractionState::Abandoned;
                interaction.agent = None;
                interaction.offered_to.clear();
            }
            Event::InteractionUnanswered { .. } => {
                interaction.state = InteractionState::Unanswered;
                interaction.agent = None;
            }
            Event::InteractionTimedOut { .. } => {
                interaction.state = InteractionState::TimedOut;
                interaction.agent = None;
            }
            Event::InteractionCompleted {
                disposition, notes, ..
            } => {
                interaction.state = InteractionState::Completed;
                interaction.disposition = disposition.clone();
                interaction.notes = notes.clone();
                interaction.wrap_up_until = None;
            }
            Event::AgentCreated { .. }
            | Event::AgentUpdated { .. }
            | Event::AgentDeleted { .. }
            | Event::PresenceChanged { .. }
            | Event::InteractionCreated { .. }
            | Event::ContextUpdated { .. }
            | Event::InteractionEnriched { .. }
            | Event::EnrichmentFailed { .. }
            | Event::QueueUpserted { .. }
            | Event::QueueDeleted { .. } => {}
        }
        self.record_stats(event, &id, at, overflowed_from.as_ref());
        let interaction = &self.interactions[&id];
        let holders_after = holders(interaction);
        let deadline = (interaction.state == InteractionState::Offered)
            .then_some(interaction.offer_expires_at)
            .flatten();
        let wrap_up_until = (interaction.state == InteractionState::WrapUp)
            .then_some(interaction.wrap_up_until)
            .flatten();

        // Keep the indexes in step with the interaction.
        if let Some(at) = timers_before.0 {
            self.timers.remove(&(at, TimerKind::Offer, id.clone()));
        }
        if let Some(at) = timers_before.1 {
            self.timers.remove(&(at, TimerKind::WrapUp, id.clone()));
        }
        if let Some(at) = deadline {
            self.timers.insert((at, TimerKind::Offer, id.clone()));
        }
        if let Some(at) = wrap_up_until {
            self.timers.insert((at, TimerKind::WrapUp, id.clone()));
        }
        if joins_line {
            self.join_line(&id);
        }
        for agent in holders_not_in(&holders_before, &holders_after) {
            if let Some(set) = self.held.get_mut(agent) {
                set.remove(&id);
                if set.is_empty() {
                    self.held.remove(agent);
                    if let Some(found) = self.agents.get_mut(agent) {
                        found.idle_since = at;
                    }
                }
            }
        }
        for agent in holders_not_in(&holders_after, &holders_before) {
            self.held
                .entry(agent.clone())
                .or_default()
                .insert(id.clone());
        }
        if let Some(agent) = missed_by.and_then(|a| self.agents.get_mut(&a)) {
            agent.missed_in_a_row += 1;
        }
        if let Some(agent) = accepted_by.and_then(|a| self.agents.get_mut(&a)) {
            agent.missed_in_a_row = 0;
            let day = self.settings.calendar.day_of(at);
            agent.handled = match agent.handled {
                (d, n) if d == day => (d, n + 1),
                _ => (day, 1),
            };
        }
        let mut touched = holders_before;
        let before_count = touched.len();
        for agent in holders_after {
            if touched[..before_count].binary_search(&agent).is_err() {
                touched.push(agent);
            }
        }
        touched.sort_unstable();
        for agent in &touched {
            self.refile(agent);
        }
        match event {
            // About one agent's offer: for that agent only, also while a ring_all queue rings
            // several at once.
            Event::InteractionOffered { agent, .. }
            | Event::OfferRevoked { agent, .. }
            | Event::InteractionRejected { agent, .. }
            | Event::InteractionAccepted { agent, .. } => vec![agent.clone()],
            _ => touched.into_vec(),
        }
    }

    /// Feeds the queue statistics from an event just applied to interaction `id`.
    fn record_stats(
        &mut self,
        event: &Event,
        id: &InteractionId,
        at: Timestamp,
        overflowed_from: Option<&QueueName>,
    ) {
        let interaction = &self.interactions[id];
        let Target::Queue(queue) = &interaction.current_target else {
            return;
        };
        let waited_ms = interaction
            .entered_queue_at
            .map_or(0, |entered| (at.millis() - entered.millis()).max(0) as u64);
        match event {
            Event::InteractionQueued {
                requeued: false, ..
            } => {
                if let Some(previous) = overflowed_from {
                    self.stats.record_overflowed(previous, at);
                }
                self.stats.record_entered(queue, at);
            }
            Event::InteractionAccepted { .. } => self.stats.record_answered(queue, at, waited_ms),
            Event::InteractionAbandoned { .. } => self.stats.record_abandoned(queue, at, waited_ms),
            Event::InteractionTimedOut { .. } => self.stats.record_timed_out(queue, at),
            _ => {}
        }
    }

    fn join_line(&mut self, id: &InteractionId) {
        let interaction = &self.interactions[id];
        let line = Self::line_key(&mut self.channels, interaction);
        let key = (
            Reverse(interaction.spec.priority),
            interaction.waiting_since,
            interaction.waiting_order,
        );
        self.lines
            .entry(line.clone())
            .or_default()
            .insert(key, id.clone());
        self.dirty.insert(line.clone());
        self.line_of.insert(id.clone(), (line, key));
        self.set_wait_timers(id);
    }

    fn leave_line(&mut self, id: &InteractionId) {
        if let Some((line, key)) = self.line_of.remove(id) {
            if let Some(entries) = self.lines.get_mut(&line) {
                entries.remove(&key);
                if entries.is_empty() {
                    self.lines.remove(&line);
                }
            }
            self.clear_wait_timers(id);
        }
    }

    /// The wake-ups of a waiting caller: in a queue, each step's relaxation and `max_wait_s`;
    /// for an agent, the agent target's `max_wait_s`.
    fn set_wait_timers(&mut self, id: &InteractionId) {
        let interaction = &self.interactions[id];
        let queue = match &interaction.current_target {
            Target::Queue(queue) => queue,
            Target::Agent(_) => {
                let wait_s = interaction
                    .spec
                    .max_wait_s
                    .unwrap_or(self.settings.agent_max_wait_s);
                let at = interaction.waiting_since.plus_seconds(wait_s);
                self.timers.insert((at, TimerKind::MaxWait, id.clone()));
                let interaction = self.interactions.get_mut(id).expect("exists");
                interaction.max_wait_at = Some(at);
                return;
            }
        };
        let Some(index) = self.queues.get(queue) else {
            return;
        };
        let since = interaction.waiting_since;
        let escalations: SmallVec<[Timestamp; 2]> = index
            .config
            .steps
            .iter()
            .map(|step| since.plus_seconds(step.after_s))
            .collect();
        let entered = interaction.entered_queue_at.unwrap_or(since);
        let max_wait_at = index.config.max_wait_s.map(|s| entered.plus_seconds(s));
        for at in &escalations {
            self.escalations.insert((*at, id.clone()));
        }
        if let Some(at) = max_wait_at {
            self.timers.insert((at, TimerKind::MaxWait, id.clone()));
        }
        let interaction = self.interactions.get_mut(id).expect("exists");
        interaction.escalations = escalations;
        interaction.max_wait_at = max_wait_at;
    }

    fn clear_wait_timers(&mut self, id: &InteractionId) {
        let Some(interaction) = self.interactions.get_mut(id) else {
            return;
        };
        for at in interaction.escalations.drain(..) {
            self.escalations.remove(&(at, id.clone()));
        }
        if let Some(at) = interaction.max_wait_at.take() {
            self.timers.remove(&(at, TimerKind::MaxWait, id.clone()));
        }
    }

    /// Re-files the agent's eligibility in every queue after its skills changed.
    fn refile_skills(&mut self, agent_id: &AgentId) {
        self.unfile_everywhere(agent_id);
        let Some(agent) = self.agents.get(agent_id) else {
            return;
        };
        // In queue-name order, as `memberships` keeps them.
        let serves: Vec<Membership> = self
            .queues
            .iter()
            .filter_map(|(slot, index)| {
                index.first_level_met(agent).map(|level| Membership {
                    queue: index.config.name.clone(),
                    slot,
                    eligible_from: level,
                    filed: None,
                })
            })
            .collect();
        self.memberships.insert(agent_id.clone(), serves);
        self.refile(agent_id);
    }

    /// Marks the lines an agent with room could serve: those addressed to it and those of its
    /// queues.
    fn mark_lines_of(&mut self, agent: &AgentId) {
        let addressed = LineKey::Agent(agent.clone(), lowest_channel());
        let mut marked: Vec<LineKey> = self
            .lines
            .range(addressed..)
            .map(|(key, _)| key)
            .take_while(|key| matches!(key, LineKey::Agent(a, _) if a == agent))
            .cloned()
            .collect();
        for Membership { queue, .. } in self.memberships.get(agent).into_iter().flatten() {
            let first = LineKey::Queue(queue.clone(), lowest_channel());
            marked.extend(
                self.lines
                    .range(first..)
                    .map(|(key, _)| key)
                    .take_while(|key| matches!(key, LineKey::Queue(q, _) if q == queue))
                    .cloned(),
            );
        }
        self.dirty.extend(marked);
    }

    /// Re-files the agent in the routable sets of the queues it serves, under its current key.
    fn refile(&mut self, agent_id: &AgentId) {
        let Some(agent) = self.agents.get(agent_id) else {
            return;
        };
        let room = self.room_of(agent);
        if room.is_some() {
            self.mark_lines_of(agent_id);
        }
        let Some(agent) = self.agents.get(agent_id) else {
            return;
        };
        let Some(queues) = self.memberships.get_mut(agent_id) else {
            return;
        };
        for membership in queues {
            let Some(index) = self.queues.at_mut(membership.slot) else {
                continue;
            };
            let level = membership.eligible_from;
            if let (Some(filing), Some(room)) = (&membership.filed, &room) {
                if index.files_as(filing, agent, level, room, self.today) {
                    continue;
                }
            }
            if let Some(filing) = membership.filed.take() {
                index.unfile(agent_id, filing);
            }
            if let Some(room) = &room {
                membership.filed = Some(index.file(agent, level, room.clone(), self.today));
            }
        }
    }

    /// Takes the agent out of the routable sets of every queue it serves.
    fn unfile_everywhere(&mut self, agent_id: &AgentId) {
        for membership in self.memberships.get_mut(agent_id).into_iter().flatten() {
            if let (Some(filing), Some(index)) =
                (membership.filed.take(), self.queues.at_mut(membership.slot))
            {
                index.unfile(agent_id, filing);
            }
        }
    }
}

/// The figures a routing reason quotes besides the queue and the agent chosen first.
struct RoutingFigures {
    route_counter: u64,
    today: i64,
    now: Timestamp,
    chosen: usize,
    level: usize,
    waited_ms: i64,
}

/// The sentence saying why `first` was chosen. Built by appending, not `format!`: it is made
/// on every decision, and the formatting machinery was a twentieth of one.
fn routing_reason(
    strategy: Strategy,
    index: &QueueIndex,
    first: &Agent,
    figures: RoutingFigures,
    suffix: &str,
) -> String {
    let mut numbers = itoa::Buffer::new();
    let mut reason = String::with_capacity(96);
    let idle = idle_seconds(first, figures.now);
    match strategy {
        Strategy::LongestIdle => {
            reason.push_str("idle the longest: ");
            reason.push_str(numbers.format(idle));
            reason.push_str(" s");
        }
        Strategy::RoundRobin => {
            reason.push_str("next in rotation: last offered a caller ");
            if first.last_routed == 0 {
                reason.push_str("never");
            } else {
                reason.push_str(numbers.format(figures.route_counter - first.last_routed));
                reason.push_str(" offers ago");
            }
        }
        Strategy::LeastOccupied => {
            reason.push_str("fewest handled today: ");
            reason.push_str(numbers.format(handled_on(first, figures.today)));
            reason.push_str(", idle ");
            reason.push_str(numbers.format(idle));
            reason.push_str(" s");
        }
        Strategy::MostSkilled => {
            reason.push_str("highest summed skill level: ");
            reason.push_str(numbers.format(index.summed_level(first)));
            reason.push_str(" (");
            for (n, skill) in index.config.skills.keys().enumerate() {
                if n > 0 {
                    reason.push_str(", ");
                }
                reason.push_str(skill);
                reason.push(' ');
                let level = first.profile.skills.get(skill).map_or(0, |l| l.get());
                reason.push_str(numbers.format(level));
            }
            reason.push_str("), idle ");
            reason.push_str(numbers.format(idle));
            reason.push_str(" s");
        }
        Strategy::RingAll => {
            reason.push_str("rings all ");
            reason.push_str(numbers.format(figures.chosen));
            reason.push_str(" eligible agents");
        }
    }
    if figures.level > 0 {
        reason.push_str("; requirement relaxed to step ");
        reason.push_str(numbers.format(figures.level));
        reason.push_str(" after ");
        reason.push_str(numbers.format(figures.waited_ms / 1000));
        reason.push_str(" s waiting");
    }
    reason.push_str(suffix);
    reason
}

/// The smallest channel, for the lower bound of a range of lines; made once, as range bounds
/// are built whenever an agent gets room.
fn lowest_channel() -> Arc<str> {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    EMPTY.clone()
}

/// The agent an event names, if any.
fn named_agent(event: &Event) -> Option<&AgentId> {
    match event {
        Event::AgentCreated { profile, .. } | Event::AgentUpdated { profile, .. } => {
            Some(&profile.id)
        }
        Event::AgentDeleted { agent, .. }
        | Event::PresenceChanged { agent, .. }
        | Event::InteractionOffered { agent, .. }
        | Event::OfferRevoked { agent, .. }
        | Event::InteractionAccepted { agent, .. }
        | Event::InteractionRejected { agent, .. }
        | Event::InteractionEnded { agent, .. }
        | Event::InteractionCompleted { agent, .. } => Some(agent),
        Event::InteractionTransferred { from, .. } => Some(from),
        _ => None,
    }
}

/// The agents holding an interaction, in order: those it is offered to, or its agent once
/// accepted. A vector, not a set: it is made for every event and holds one agent or none,
/// except while a `ring_all` queue rings.
fn holders(interaction: &Interaction) -> Agents {
    match interaction.state {
        InteractionState::Offered => interaction.offered_to.iter().cloned().collect(),
        InteractionState::Accepted | InteractionState::WrapUp => {
            interaction.agent.iter().cloned().collect()
        }
        _ => Agents::new(),
    }
}

/// The agents of `of` that are not in `other`; both sorted, as `holders` makes them.
fn holders_not_in<'a>(
    of: &'a [AgentId],
    other: &'a [AgentId],
) -> impl Iterator<Item = &'a AgentId> + 'a {
    of.iter()
        .filter(move |agent| other.binary_search(agent).is_err())
}

fn single(agents: &BTreeSet<AgentId>) -> Option<AgentId> {
    (agents.len() == 1)
        .then(|| agents.first().cloned())
        .flatten()
}

fn idle_seconds(agent: &Agent, now: Timestamp) -> i64 {
    (now.millis() - agent.idle_since.millis()).max(0) / 1000
}

/// A new target other than the current one uses up the pending fallback.
fn retarget(interaction: &mut Interaction, target: &Target) {
    if &interaction.current_target != target {
        if interaction.pending_fallback.as_ref() == Some(target) {
            interaction.pending_fallback = None;
        }
        interaction.current_target = target.clone();
    }
}
