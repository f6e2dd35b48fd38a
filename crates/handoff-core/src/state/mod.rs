//! The state machine: `State::execute(command, now)` validates, then appends events by applying
//! them one at a time; `State::apply` is the only place that changes what the state says, and
//! replaying the log through it rebuilds the same state. After every command, `dispatch` offers
//! waiting callers to agents who can take them, reading ordered indexes, never scanning agents.
//!
//! This file holds the state itself, its settings and what readers ask of it; `commands.rs`
//! what each command checks and emits, `dispatch.rs` the routing decisions, `apply.rs` how
//! each event changes the state and its indexes. The three extend `State` with methods that only
//! the state's own modules can call.

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

mod apply;
mod commands;
mod dispatch;

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
