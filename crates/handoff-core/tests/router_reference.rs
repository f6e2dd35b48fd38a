//! The ACD router (`State::dispatch`, `servable_head`, `pick_agents` over the per-queue ordered
//! indexes of `router.rs`) checked against a naive reference router written from the
//! specification in the doc comments of `state.rs`, `queue.rs` and `agent.rs`.
//!
//! The reference scans every waiting caller and every agent through the public queries only
//! (`agents()`, `queues()`, `interactions()`, `held_by()`, `position()`), so it is obviously
//! right and obviously slow. Random command sequences run the real state machine; every
//! `InteractionOffered` it emits is compared with the reference decision computed on a shadow
//! state that has applied exactly the events before that offer, and after every command the
//! reference must find nothing left to do. Routing invariants are checked after every command,
//! and a liveness phase drains every interaction to a terminal state.
//!
//! The cost tests measure `State::agents_examined()` per routing decision at 100 and at 10,000
//! agents (issue 3: it must grow less than 3x).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use handoff_core::Strategy as Route;
use handoff_core::{
    Agent, AgentId, AgentProfile, Capacity, Command, EscalationStep, Event, Interaction,
    InteractionId, InteractionSpec, InteractionState, PresenceSource, PresenceStatus, QueueConfig,
    QueueName, Settings, SkillLevel, State, Target, Timestamp,
};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

// =============================================================================================
// The reference router
// =============================================================================================

/// One routing decision: the caller and the agents it is offered to (several for `ring_all`,
/// in agent id order).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decision {
    id: InteractionId,
    agents: Vec<AgentId>,
}

/// Every skill of `requirement` at least at its level.
fn ref_meets(agent: &Agent, requirement: &BTreeMap<String, SkillLevel>) -> bool {
    requirement
        .iter()
        .all(|(skill, level)| match agent.profile.skills.get(skill) {
            Some(have) => have.get() >= level.get(),
            None => false,
        })
}

/// The channels of everything the agent holds now.
fn ref_held_channels(state: &State, agent: &AgentId) -> Vec<String> {
    state
        .held_by(agent)
        .map(|i| i.spec.channel.clone())
        .collect()
}

/// Room for one more interaction on `channel`: a total over every channel, or a limit per
/// channel (a channel not named has none).
fn ref_fits(capacity: &Capacity, channel: &str, held: &[String]) -> bool {
    match capacity {
        Capacity::Total(total) => held.len() < *total as usize,
        Capacity::PerChannel(limits) => {
            let limit = limits.get(channel).copied().unwrap_or(0) as usize;
            held.iter().filter(|h| h.as_str() == channel).count() < limit
        }
    }
}

/// Available with room on `channel`.
fn ref_can_take(state: &State, agent: &Agent, channel: &str) -> bool {
    agent.presence.status == PresenceStatus::Available
        && ref_fits(
            &agent.profile.capacity,
            channel,
            &ref_held_channels(state, &agent.profile.id),
        )
}

/// The requirement level of a caller who waited `waited_ms`: one per step whose `after_s` passed.
fn ref_level(config: &QueueConfig, waited_ms: i64) -> usize {
    let mut level = 0;
    for (index, step) in config.steps.iter().enumerate() {
        if waited_ms >= step.after_s as i64 * 1000 {
            level = index + 1;
        }
    }
    level
}

fn ref_requirement(config: &QueueConfig, level: usize) -> &BTreeMap<String, SkillLevel> {
    if level == 0 {
        &config.skills
    } else {
        &config.steps[level - 1].skills
    }
}

fn ref_day(now: Timestamp) -> i64 {
    now.millis().div_euclid(86_400_000)
}

/// Callers waiting in a line, best first: higher priority, then earlier `waiting_since`, then
/// `waiting_order`.
fn ref_waiting(state: &State) -> Vec<&Interaction> {
    let mut waiting: Vec<&Interaction> = state
        .interactions()
        .filter(|i| i.state == InteractionState::Queued && state.position(i.id()).is_some())
        .collect();
    waiting.sort_by_key(|i| (Reverse(i.spec.priority), i.waiting_since, i.waiting_order));
    waiting
}

/// Agents of the queue that could take `interaction` now (available, meeting the requirement at
/// the caller's level, with room on its channel), in the queue's strategy order. Includes the
/// agents who missed its latest offer.
fn ref_queue_candidates<'s>(
    state: &'s State,
    config: &QueueConfig,
    interaction: &Interaction,
    now: Timestamp,
) -> Vec<&'s Agent> {
    let level = ref_level(config, now.millis() - interaction.waiting_since.millis());
    let requirement = ref_requirement(config, level);
    let mut candidates: Vec<&Agent> = state
        .agents()
        .filter(|a| ref_meets(a, requirement))
        .filter(|a| ref_can_take(state, a, &interaction.spec.channel))
        .collect();
    let day = ref_day(now);
    let handled_today = |a: &Agent| if a.handled.0 == day { a.handled.1 } else { 0 };
    let summed = |a: &Agent| -> i64 {
        config
            .skills
            .keys()
            .map(|skill| {
                a.profile
                    .skills
                    .get(skill)
                    .map_or(0, |l| i64::from(l.get()))
            })
            .sum()
    };
    match config.strategy {
        Route::LongestIdle => candidates.sort_by_key(|a| (a.idle_since, a.profile.id.clone())),
        Route::RoundRobin => {
            candidates.sort_by_key(|a| (a.last_routed, a.idle_since, a.profile.id.clone()))
        }
        Route::LeastOccupied => {
            candidates.sort_by_key(|a| (handled_today(a), a.idle_since, a.profile.id.clone()))
        }
        Route::MostSkilled => {
            candidates.sort_by_key(|a| (Reverse(summed(a)), a.idle_since, a.profile.id.clone()))
        }
        Route::RingAll => candidates.sort_by_key(|a| a.profile.id.clone()),
    }
    candidates
}

/// The agents the caller would be offered to now, or `None` when nobody can take it.
fn ref_pick(state: &State, interaction: &Interaction, now: Timestamp) -> Option<Vec<AgentId>> {
    match &interaction.current_target {
        Target::Agent(agent) => {
            let found = state.agents().find(|a| &a.profile.id == agent)?;
            ref_can_take(state, found, &interaction.spec.channel).then(|| vec![agent.clone()])
        }
        Target::Queue(queue) => {
            let config = state.queues().find(|q| &q.name == queue)?;
            let mut candidates: Vec<AgentId> =
                ref_queue_candidates(state, config, interaction, now)
                    .into_iter()
                    .map(|a| a.profile.id.clone())
                    .collect();
            // Never straight back to the agents who missed its latest offer while another
            // agent can take it; when only they can, better them than nobody.
            let fresh: Vec<AgentId> = candidates
                .iter()
                .filter(|a| !interaction.just_missed_by.contains(*a))
                .cloned()
                .collect();
            if !fresh.is_empty() {
                candidates = fresh;
            }
            if candidates.is_empty() {
                return None;
            }
            if config.strategy != Route::RingAll {
                candidates.truncate(1);
            }
            Some(candidates)
        }
    }
}

/// The next offer the router must make: the best waiting caller that some agent can take.
fn reference_next(state: &State, now: Timestamp) -> Option<Decision> {
    ref_waiting(state).into_iter().find_map(|interaction| {
        ref_pick(state, interaction, now).map(|agents| Decision {
            id: interaction.id().clone(),
            agents,
        })
    })
}

/// What the checks saw, to show that the random runs reach the interesting cases (printed with
/// `ROUTER_STATS=1`).
mod seen {
    use std::sync::atomic::{AtomicU64, Ordering};

    pub static DISPATCHED: AtomicU64 = AtomicU64::new(0);
    pub static DIRECT: AtomicU64 = AtomicU64::new(0);
    pub static RING_ALL_SEVERAL: AtomicU64 = AtomicU64::new(0);
    pub static RELAXED: AtomicU64 = AtomicU64::new(0);
    pub static MISSED_PASSED_OVER: AtomicU64 = AtomicU64::new(0);
    pub static MISSED_CHOSEN: AtomicU64 = AtomicU64::new(0);
    pub static PASSED_BETTER_PRIORITY: AtomicU64 = AtomicU64::new(0);
    pub static PER_STRATEGY: [AtomicU64; 5] = [
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ];
    pub static COMMANDS: AtomicU64 = AtomicU64::new(0);

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn report() {
        if std::env::var_os("ROUTER_STATS").is_none() {
            return;
        }
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        eprintln!(
            "commands {} | dispatched {} (strategies li/rr/lo/ms/ra {:?}) direct {} | ring_all to several {} | at a relaxed level {} | missed agent passed over {} / chosen as the only one {} | a waiting caller of higher priority skipped (nobody could take it) {}",
            get(&COMMANDS),
            get(&DISPATCHED),
            PER_STRATEGY.iter().map(get).collect::<Vec<_>>(),
            get(&DIRECT),
            get(&RING_ALL_SEVERAL),
            get(&RELAXED),
            get(&MISSED_PASSED_OVER),
            get(&MISSED_CHOSEN),
            get(&PASSED_BETTER_PRIORITY),
        );
    }
}

// =============================================================================================
// Checking the real router against the reference, command by command
// =============================================================================================

fn is_ring_all(state: &State, target: &Target) -> bool {
    match target {
        Target::Queue(q) => state.queue(q).is_some_and(|c| c.strategy == Route::RingAll),
        Target::Agent(_) => false,
    }
}

/// Checks one decision (the consecutive `InteractionOffered` events of one interaction) against
/// the shadow state that applied every event before it.
fn check_decision(
    shadow: &State,
    offers: &[&Event],
    now: Timestamp,
    check_explanations: bool,
    context: &str,
) {
    let Event::InteractionOffered { id, target, .. } = offers[0] else {
        unreachable!()
    };
    let agents: Vec<AgentId> = offers
        .iter()
        .map(|e| match e {
            Event::InteractionOffered { agent, .. } => agent.clone(),
            _ => unreachable!(),
        })
        .collect();
    let interaction = shadow
        .interaction(id)
        .unwrap_or_else(|| panic!("{context}: offer of unknown interaction {id}"));
    assert_eq!(
        interaction.state,
        InteractionState::Queued,
        "{context}: {id} offered to {agents:?} while {:?} (offered_to {:?})",
        interaction.state,
        interaction.offered_to
    );
    for e in offers {
        let Event::InteractionOffered {
            target: t,
            expires_at,
            at,
            routing,
            ..
        } = e
        else {
            unreachable!()
        };
        assert_eq!(t, target, "{context}: one decision, two targets");
        assert_eq!(*at, now, "{context}: offer not stamped now");
        let timeout = match t {
            Target::Queue(q) => shadow.queue(q).map(|c| c.offer_timeout_s).unwrap(),
            Target::Agent(_) => shadow.settings().offer_timeout_s,
        };
        assert_eq!(
            *expires_at,
            now.plus_seconds(timeout),
            "{context}: offer deadline"
        );
        let expected_strategy = match t {
            Target::Queue(q) => Some(shadow.queue(q).unwrap().strategy),
            Target::Agent(_) => None,
        };
        assert_eq!(
            routing.strategy, expected_strategy,
            "{context}: routing.strategy"
        );
    }
    if agents.len() > 1 {
        assert!(
            is_ring_all(shadow, target),
            "{context}: {id} offered to {agents:?} at once outside ring_all"
        );
    }
    let distinct: BTreeSet<&AgentId> = agents.iter().collect();
    assert_eq!(
        distinct.len(),
        agents.len(),
        "{context}: an agent offered twice: {agents:?}"
    );

    // Only eligible agents: available, room on the channel, skills at the caller's level.
    for agent in &agents {
        let found = shadow
            .agent(agent)
            .unwrap_or_else(|| panic!("{context}: {id} offered to unknown agent {agent}"));
        assert!(
            ref_can_take(shadow, found, &interaction.spec.channel),
            "{context}: {id} offered to {agent} who cannot take it (presence {:?}, holds {:?}, capacity {:?})",
            found.presence.status,
            ref_held_channels(shadow, agent),
            found.profile.capacity
        );
        match target {
            Target::Agent(a) => assert_eq!(a, agent, "{context}: agent target offered elsewhere"),
            Target::Queue(q) => {
                let config = shadow.queue(q).unwrap();
                let level = ref_level(config, now.millis() - interaction.waiting_since.millis());
                assert!(
                    ref_meets(found, ref_requirement(config, level)),
                    "{context}: {id} offered to {agent} who does not meet {q} at level {level}"
                );
            }
        }
    }

    if shadow.position(id).is_none() || target != &interaction.current_target {
        // `route` (a new caller, a transfer, a fallback): "An agent that can take it, with
        // nobody waiting ahead for it, is offered it at once".
        let Target::Agent(agent) = target else {
            panic!(
                "{context}: {id} offered to {agents:?} for {target:?} without waiting in a line"
            );
        };
        assert_eq!(agents, vec![agent.clone()], "{context}: direct offer");
        let ahead: Vec<&InteractionId> = ref_waiting(shadow)
            .into_iter()
            .filter(|w| &w.current_target == target && w.spec.channel == interaction.spec.channel)
            .map(|w| w.id())
            .collect();
        assert!(
            ahead.is_empty(),
            "{context}: {id} offered straight to {agent} while {ahead:?} wait for it"
        );
        seen::bump(&seen::DIRECT);
        return;
    }

    // `dispatch`: the best waiting caller that some agent can take, to the agents the strategy
    // names.
    let expected = reference_next(shadow, now);
    let actual = Decision {
        id: id.clone(),
        agents: agents.clone(),
    };
    if expected.as_ref() != Some(&actual) {
        let mut dump = String::new();
        for w in ref_waiting(shadow) {
            dump.push_str(&format!(
                "\n  waiting {} -> {:?} ch={} prio={} since={} order={} missed={:?}: ref pick {:?}",
                w.id(),
                w.current_target,
                w.spec.channel,
                w.spec.priority,
                w.waiting_since.millis(),
                w.waiting_order,
                w.just_missed_by,
                ref_pick(shadow, w, now)
            ));
        }
        for a in shadow.agents() {
            dump.push_str(&format!(
                "\n  agent {} {:?} skills={:?} cap={:?} holds={:?} idle_since={} last_routed={} handled={:?}",
                a.profile.id,
                a.presence.status,
                a.profile.skills.iter().map(|(s, l)| (s.as_str(), l.get())).collect::<Vec<_>>(),
                a.profile.capacity,
                ref_held_channels(shadow, &a.profile.id),
                a.idle_since.millis(),
                a.last_routed,
                a.handled
            ));
        }
        panic!("{context}: router decided {actual:?}, reference {expected:?}{dump}");
    }

    seen::bump(&seen::DISPATCHED);
    if agents.len() > 1 {
        seen::bump(&seen::RING_ALL_SEVERAL);
    }
    if ref_waiting(shadow).first().map(|w| w.id()) != Some(id) {
        seen::bump(&seen::PASSED_BETTER_PRIORITY);
    }
    if let Target::Queue(q) = target {
        let config = shadow.queue(q).unwrap();
        let strategy = Route::ALL
            .iter()
            .position(|s| *s == config.strategy)
            .unwrap();
        seen::bump(&seen::PER_STRATEGY[strategy]);
        if ref_level(config, now.millis() - interaction.waiting_since.millis()) > 0 {
            seen::bump(&seen::RELAXED);
        }
        let candidates = ref_queue_candidates(shadow, config, interaction, now);
        if candidates
            .iter()
            .any(|a| interaction.just_missed_by.contains(&a.profile.id))
        {
            if agents
                .iter()
                .any(|a| interaction.just_missed_by.contains(a))
            {
                seen::bump(&seen::MISSED_CHOSEN);
            } else {
                seen::bump(&seen::MISSED_PASSED_OVER);
            }
        }
    }

    // Within one line (queue or agent, and channel) and priority: arrival order.
    let earlier: Vec<&InteractionId> = ref_waiting(shadow)
        .into_iter()
        .filter(|w| {
            w.id() != id
                && w.current_target == interaction.current_target
                && w.spec.channel == interaction.spec.channel
                && w.spec.priority == interaction.spec.priority
                && (w.waiting_since, w.waiting_order)
                    < (interaction.waiting_since, interaction.waiting_order)
        })
        .map(|w| w.id())
        .collect();
    assert!(
        earlier.is_empty(),
        "{context}: {id} offered before {earlier:?} who arrived earlier in the same line"
    );

    if check_explanations {
        if let Target::Queue(q) = target {
            let config = shadow.queue(q).unwrap();
            let could = ref_queue_candidates(shadow, config, interaction, now).len() as u32;
            for e in offers {
                let Event::InteractionOffered { routing, .. } = e else {
                    unreachable!()
                };
                assert_eq!(
                    routing.eligible, could,
                    "{context}: routing.eligible says {} agents could have taken {id}, {could} could ({})",
                    routing.eligible, routing.reason
                );
            }
        }
    }
}

/// The routing invariants of the state after a command.
fn check_invariants(state: &State, now: Timestamp, context: &str) {
    // The member counts kept by `apply` are what walking the members gives.
    for queue in state.queues() {
        let mut walked = handoff_core::MemberCounts::default();
        for agent in state.queue_members(&queue.name) {
            match agent.presence.status {
                PresenceStatus::Available => walked.available += 1,
                PresenceStatus::Away => walked.away += 1,
                PresenceStatus::Busy => walked.busy += 1,
                PresenceStatus::Offline => walked.offline += 1,
            }
            match state.activity(&agent.profile.id) {
                handoff_core::Activity::Idle => walked.idle += 1,
                handoff_core::Activity::Offered => walked.offered += 1,
                handoff_core::Activity::Engaged => walked.engaged += 1,
                handoff_core::Activity::WrapUp => walked.wrap_up += 1,
            }
        }
        assert_eq!(
            state.member_counts(&queue.name),
            walked,
            "member counts of {}: {context}",
            queue.name
        );
    }
    // Holding is consistent with the interactions, and capacity is never exceeded.
    for agent in state.agents() {
        let id = &agent.profile.id;
        let held: BTreeSet<InteractionId> = state.held_by(id).map(|i| i.id().clone()).collect();
        let expected: BTreeSet<InteractionId> = state
            .interactions()
            .filter(|i| match i.state {
                InteractionState::Offered => i.offered_to.contains(id),
                InteractionState::Accepted | InteractionState::WrapUp => {
                    i.agent.as_ref() == Some(id)
                }
                _ => false,
            })
            .map(|i| i.id().clone())
            .collect();
        assert_eq!(
            held, expected,
            "{context}: held_by({id}) disagrees with the interactions"
        );
        let channels = ref_held_channels(state, id);
        match &agent.profile.capacity {
            Capacity::Total(total) => assert!(
                channels.len() <= *total as usize,
                "{context}: {id} holds {channels:?} beyond capacity {total}"
            ),
            Capacity::PerChannel(limits) => {
                for channel in channels.iter().collect::<BTreeSet<_>>() {
                    let n = channels.iter().filter(|c| *c == channel).count();
                    let limit = limits.get(channel.as_str()).copied().unwrap_or(0) as usize;
                    assert!(
                        n <= limit,
                        "{context}: {id} holds {n} {channel} beyond its limit {limit}"
                    );
                }
            }
        }
    }
    for interaction in state.interactions() {
        let id = interaction.id();
        match interaction.state {
            InteractionState::Offered => {
                assert!(
                    !interaction.offered_to.is_empty(),
                    "{context}: {id} offered to nobody"
                );
                assert!(
                    interaction.offered_to.len() == 1
                        || is_ring_all(state, &interaction.current_target),
                    "{context}: {id} offered to {:?} at once outside ring_all",
                    interaction.offered_to
                );
            }
            _ => assert!(
                interaction.offered_to.is_empty(),
                "{context}: {id} is {:?} yet offered to {:?}",
                interaction.state,
                interaction.offered_to
            ),
        }
        // A caller between offers is in a line: nothing is Queued and forgotten.
        assert_eq!(
            interaction.state == InteractionState::Queued,
            state.position(id).is_some(),
            "{context}: {id} is {:?}, position {:?}",
            interaction.state,
            state.position(id)
        );
    }
    // No caller waits while an agent who could take it is free.
    assert_eq!(
        reference_next(state, now),
        None,
        "{context}: a caller waits while an agent could take it"
    );
}

/// Executes a command on `state` and checks every offer it made against the reference.
/// Returns the events, or `None` when the command was refused.
fn step(
    state: &mut State,
    command: Command,
    now: Timestamp,
    check_explanations: bool,
    context: &str,
) -> Option<Vec<Event>> {
    let mut shadow = state.clone();
    let events = match state.execute(command.clone(), now) {
        Ok(events) => events,
        Err(_) => return None,
    };
    let context = format!("{context}: {command:?} at {}", now.millis());
    let mut index = 0;
    while index < events.len() {
        if let Event::InteractionOffered { id, .. } = &events[index] {
            let mut end = index + 1;
            while end < events.len()
                && matches!(&events[end], Event::InteractionOffered { id: other, .. } if other == id)
            {
                end += 1;
            }
            let group: Vec<&Event> = events[index..end].iter().collect();
            check_decision(&shadow, &group, now, check_explanations, &context);
            for e in &events[index..end] {
                shadow.apply(e);
            }
            index = end;
        } else {
            shadow.apply(&events[index]);
            index += 1;
        }
    }
    // The events rebuild the same state, and nothing is left to route.
    let real: Vec<&Interaction> = state.interactions().collect();
    let replayed: Vec<&Interaction> = shadow.interactions().collect();
    assert_eq!(
        real, replayed,
        "{context}: apply(events) differs from execute"
    );
    let real: Vec<&Agent> = state.agents().collect();
    let replayed: Vec<&Agent> = shadow.agents().collect();
    assert_eq!(
        real, replayed,
        "{context}: apply(events) differs from execute (agents)"
    );
    check_invariants(state, now, &context);
    Some(events)
}

// =============================================================================================
// Random scenarios
// =============================================================================================

const SKILLS: [&str; 3] = ["s0", "s1", "s2"];
const CHANNELS: [&str; 2] = ["voice", "chat"];
const STATUSES: [PresenceStatus; 5] = [
    PresenceStatus::Available,
    PresenceStatus::Available,
    PresenceStatus::Away,
    PresenceStatus::Busy,
    PresenceStatus::Offline,
];
/// Near the end of a UTC day, so that long runs cross midnight (`least_occupied` counts today).
const T0: i64 = 19_700 * 86_400_000 - 90_000;

fn t(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn aid(name: &str) -> AgentId {
    AgentId::parse(name).unwrap()
}

fn iid(name: &str) -> InteractionId {
    InteractionId::parse(name).unwrap()
}

fn qn(name: &str) -> QueueName {
    QueueName::parse(name).unwrap()
}

fn level(n: u8) -> SkillLevel {
    SkillLevel::parse(i64::from(n)).unwrap()
}

fn skills_of(levels: &[Option<u8>]) -> BTreeMap<String, SkillLevel> {
    levels
        .iter()
        .zip(SKILLS)
        .filter_map(|(l, s)| l.map(|l| (s.to_owned(), level(l))))
        .collect()
}

#[derive(Debug, Clone)]
struct QueueGen {
    strategy: usize,
    base: Vec<Option<u8>>,
    /// (seconds after the previous step, per required skill: 0 keep, 1 and 2 lower, 3 drop).
    steps: Vec<(u64, Vec<u8>)>,
    max_wait_s: Option<u64>,
    overflow: Option<usize>,
    offer_timeout_s: u64,
    wrap_up_s: u64,
}

impl QueueGen {
    fn config(&self, index: usize) -> QueueConfig {
        let mut config = QueueConfig::new(qn(&format!("q{index}")));
        config.strategy = Route::ALL[self.strategy % Route::ALL.len()];
        config.skills = skills_of(&self.base);
        let mut previous = config.skills.clone();
        let mut after = 0;
        for (gap, codes) in &self.steps {
            after += gap;
            let mut relaxed = BTreeMap::new();
            for ((skill, lvl), code) in previous
                .iter()
                .zip(codes.iter().chain(std::iter::repeat(&0)))
            {
                match code % 4 {
                    0 => {
                        relaxed.insert(skill.clone(), *lvl);
                    }
                    3 => {}
                    n => {
                        relaxed.insert(skill.clone(), level(lvl.get().saturating_sub(n)));
                    }
                }
            }
            config.steps.push(EscalationStep {
                after_s: after,
                skills: relaxed.clone(),
            });
            previous = relaxed;
        }
        config.max_wait_s = self.max_wait_s;
        // Only to a queue created before this one, so it exists.
        config.overflow = self
            .overflow
            .filter(|_| index > 0)
            .map(|o| qn(&format!("q{}", o % index)));
        config.offer_timeout_s = self.offer_timeout_s;
        config.wrap_up_s = self.wrap_up_s;
        config.validate().expect("generated queues are valid");
        config
    }
}

#[derive(Debug, Clone)]
struct AgentGen {
    skills: Vec<Option<u8>>,
    capacity: Capacity,
    status: usize,
}

fn agent_profile(index: usize, skills: &[Option<u8>], capacity: &Capacity) -> AgentProfile {
    let id = aid(&format!("a{index}"));
    AgentProfile {
        name: format!("Agent {id}"),
        address: Some(format!("sip:{id}@pbx.example.com")),
        skills: skills_of(skills),
        capacity: capacity.clone(),
        id,
    }
}

#[derive(Debug, Clone)]
enum Op {
    Arrive {
        to_queue: bool,
        index: usize,
        priority: i32,
        channel: usize,
        fallback: Option<(bool, usize)>,
    },
    Presence {
        agent: usize,
        status: usize,
    },
    Accept {
        pick: usize,
        who: usize,
    },
    Reject {
        pick: usize,
        who: usize,
    },
    Complete {
        pick: usize,
    },
    Hangup {
        pick: usize,
    },
    Transfer {
        pick: usize,
        to_queue: bool,
        index: usize,
    },
    ConnectionLost {
        agent: usize,
    },
    Skills {
        agent: usize,
        skills: Vec<Option<u8>>,
    },
    Delete {
        agent: usize,
    },
    /// An existing queue gets a new configuration (strategy, skills, steps, ...) while agents
    /// are filed in it and callers wait.
    Reconfigure {
        queue: usize,
        config: QueueGen,
    },
    /// Virtual time passes; with `tick` the timer driver runs, without it the next command
    /// simply comes later.
    Advance {
        ms: i64,
        tick: bool,
    },
}

#[derive(Debug, Clone)]
struct Scenario {
    max_missed_offers: u32,
    offline_on_disconnect: bool,
    queues: Vec<QueueGen>,
    agents: Vec<AgentGen>,
    ops: Vec<Op>,
}

fn skill_levels() -> impl Strategy<Value = Vec<Option<u8>>> {
    prop::collection::vec(prop::option::weighted(0.6, 0u8..=4), SKILLS.len())
}

fn queue_gen() -> impl Strategy<Value = QueueGen> {
    (
        0usize..5,
        skill_levels(),
        prop::collection::vec(
            (1u64..=40, prop::collection::vec(0u8..4, SKILLS.len())),
            0..=2,
        ),
        prop::option::weighted(0.4, 5u64..=90),
        prop::option::weighted(0.5, 0usize..3),
        1u64..=30,
        0u64..=20,
    )
        .prop_map(
            |(strategy, base, steps, max_wait_s, overflow, offer_timeout_s, wrap_up_s)| QueueGen {
                strategy,
                base,
                steps,
                max_wait_s,
                overflow,
                offer_timeout_s,
                wrap_up_s,
            },
        )
}

fn capacity() -> impl Strategy<Value = Capacity> {
    prop_oneof![
        (1u32..=3).prop_map(Capacity::Total),
        (0u32..=2, 0u32..=3).prop_map(|(voice, chat)| Capacity::PerChannel(
            [("voice".to_owned(), voice), ("chat".to_owned(), chat)]
                .into_iter()
                .collect()
        )),
    ]
}

fn agent_gen() -> impl Strategy<Value = AgentGen> {
    (skill_levels(), capacity(), 0usize..STATUSES.len()).prop_map(|(skills, capacity, status)| {
        AgentGen {
            skills,
            capacity,
            status,
        }
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<bool>(), 0usize..8, 0i32..3, 0usize..2,
              prop::option::weighted(0.2, (any::<bool>(), 0usize..8)))
            .prop_map(|(to_queue, index, priority, channel, fallback)| Op::Arrive {
                to_queue: to_queue || index % 4 != 0,
                index, priority, channel, fallback,
            }),
        3 => (0usize..8, 0usize..STATUSES.len())
            .prop_map(|(agent, status)| Op::Presence { agent, status }),
        4 => (0usize..64, 0usize..8).prop_map(|(pick, who)| Op::Accept { pick, who }),
        2 => (0usize..64, 0usize..8).prop_map(|(pick, who)| Op::Reject { pick, who }),
        3 => (0usize..64).prop_map(|pick| Op::Complete { pick }),
        3 => (0usize..64).prop_map(|pick| Op::Hangup { pick }),
        1 => (0usize..64, any::<bool>(), 0usize..8)
            .prop_map(|(pick, to_queue, index)| Op::Transfer { pick, to_queue, index }),
        1 => (0usize..8).prop_map(|agent| Op::ConnectionLost { agent }),
        1 => (0usize..8, skill_levels()).prop_map(|(agent, skills)| Op::Skills { agent, skills }),
        1 => (0usize..8).prop_map(|agent| Op::Delete { agent }),
        1 => (0usize..3, queue_gen()).prop_map(|(queue, config)| Op::Reconfigure { queue, config }),
        4 => (0i64..=25_000, prop::bool::weighted(0.7)).prop_map(|(ms, tick)| Op::Advance { ms, tick }),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        0u32..=3,
        any::<bool>(),
        prop::collection::vec(queue_gen(), 1..=3),
        prop::collection::vec(agent_gen(), 1..=5),
        prop::collection::vec(op(), 1..80),
    )
        .prop_map(
            |(max_missed_offers, offline_on_disconnect, queues, agents, ops)| Scenario {
                max_missed_offers,
                offline_on_disconnect,
                queues,
                agents,
                ops,
            },
        )
}

struct Sim {
    state: State,
    now: Timestamp,
    scenario: Scenario,
    created: usize,
    explain: bool,
    commands: usize,
}

impl Sim {
    fn new(scenario: Scenario, explain: bool) -> Sim {
        let settings = Settings {
            offer_timeout_s: 15,
            offline_on_disconnect: scenario.offline_on_disconnect,
            max_missed_offers: scenario.max_missed_offers,
            ..Settings::default()
        };
        let mut sim = Sim {
            state: State::new(settings),
            now: t(T0),
            scenario,
            created: 0,
            explain,
            commands: 0,
        };
        for index in 0..sim.scenario.queues.len() {
            let config = sim.scenario.queues[index].config(index);
            sim.must(Command::UpsertQueue { config });
        }
        for index in 0..sim.scenario.agents.len() {
            let gen = sim.scenario.agents[index].clone();
            let profile = agent_profile(index, &gen.skills, &gen.capacity);
            sim.must(Command::UpsertAgent { profile });
            sim.run(Command::SetPresence {
                agent: aid(&format!("a{index}")),
                status: STATUSES[gen.status],
                reason: None,
                source: PresenceSource::Desktop,
            });
        }
        sim
    }

    fn run(&mut self, command: Command) -> Option<Vec<Event>> {
        self.commands += 1;
        seen::bump(&seen::COMMANDS);
        let context = format!("command #{}", self.commands);
        step(&mut self.state, command, self.now, self.explain, &context)
    }

    fn must(&mut self, command: Command) -> Vec<Event> {
        let shown = format!("{command:?}");
        self.run(command)
            .unwrap_or_else(|| panic!("{shown} was refused"))
    }

    fn agent_id(&self, index: usize) -> AgentId {
        aid(&format!("a{}", index % self.scenario.agents.len()))
    }

    fn target(&self, to_queue: bool, index: usize) -> Target {
        if to_queue {
            Target::Queue(qn(&format!("q{}", index % self.scenario.queues.len())))
        } else {
            Target::Agent(self.agent_id(index))
        }
    }

    fn pick(&self, pick: usize, states: &[InteractionState]) -> Option<Interaction> {
        let found: Vec<&Interaction> = self
            .state
            .interactions()
            .filter(|i| states.contains(&i.state))
            .collect();
        (!found.is_empty()).then(|| found[pick % found.len()].clone())
    }

    fn arrive(&mut self, target: Target, fallback: Option<Target>, priority: i32, channel: usize) {
        self.created += 1;
        let spec = InteractionSpec {
            id: iid(&format!("i{}", self.created)),
            caller: Some("+15551234567".to_owned()),
            dialed: None,
            channel: CHANNELS[channel % CHANNELS.len()].to_owned(),
            call_id: None,
            context: "{}".to_owned(),
            target,
            fallback,
            priority,
            max_wait_s: None,
            enrichment: Vec::new(),
            created_by: None,
            created_at: self.now,
        };
        self.run(Command::CreateInteraction { spec });
    }

    fn apply_op(&mut self, op: &Op) {
        match op {
            Op::Arrive {
                to_queue,
                index,
                priority,
                channel,
                fallback,
            } => {
                let target = self.target(*to_queue, *index);
                let fallback = fallback.map(|(q, i)| self.target(q, i));
                self.arrive(target, fallback, *priority, *channel);
            }
            Op::Presence { agent, status } => {
                let agent = self.agent_id(*agent);
                self.run(Command::SetPresence {
                    agent,
                    status: STATUSES[*status],
                    reason: None,
                    source: PresenceSource::Uc,
                });
            }
            Op::Accept { pick, who } | Op::Reject { pick, who } => {
                let Some(found) = self.pick(*pick, &[InteractionState::Offered]) else {
                    return;
                };
                let agents: Vec<&AgentId> = found.offered_to.iter().collect();
                let agent = agents[who % agents.len()].clone();
                let id = found.id().clone();
                if matches!(op, Op::Accept { .. }) {
                    self.run(Command::Accept { id, agent });
                } else {
                    self.run(Command::Reject { id, agent });
                }
            }
            Op::Complete { pick } => {
                let states = [InteractionState::Accepted, InteractionState::WrapUp];
                let Some(found) = self.pick(*pick, &states) else {
                    return;
                };
                self.run(Command::Complete {
                    id: found.id().clone(),
                    agent: found.agent.clone().unwrap(),
                    disposition: None,
                    notes: None,
                });
            }
            Op::Hangup { pick } => {
                let states = [
                    InteractionState::Queued,
                    InteractionState::Offered,
                    InteractionState::Accepted,
                ];
                let Some(found) = self.pick(*pick, &states) else {
                    return;
                };
                self.run(Command::Hangup {
                    id: found.id().clone(),
                });
            }
            Op::Transfer {
                pick,
                to_queue,
                index,
            } => {
                let Some(found) = self.pick(*pick, &[InteractionState::Accepted]) else {
                    return;
                };
                let target = self.target(*to_queue, *index);
                self.run(Command::Transfer {
                    id: found.id().clone(),
                    agent: found.agent.clone().unwrap(),
                    target,
                    fallback: None,
                    note: None,
                });
            }
            Op::ConnectionLost { agent } => {
                let agent = self.agent_id(*agent);
                self.run(Command::ConnectionLost { agent });
            }
            Op::Skills { agent, skills } => {
                let index = agent % self.scenario.agents.len();
                let capacity = self.scenario.agents[index].capacity.clone();
                let profile = agent_profile(index, skills, &capacity);
                self.run(Command::UpsertAgent { profile });
            }
            Op::Delete { agent } => {
                let agent = self.agent_id(*agent);
                self.run(Command::DeleteAgent { agent });
            }
            Op::Reconfigure { queue, config } => {
                let index = queue % self.scenario.queues.len();
                // Offers made under ring_all stay out when a queue leaves it (and the reverse):
                // the invariants read "several offers at once" against the current strategy,
                // so a reconfiguration keeps whether the queue rings all.
                let rings_all =
                    |strategy: usize| Route::ALL[strategy % Route::ALL.len()] == Route::RingAll;
                let mut config = config.clone();
                if rings_all(self.scenario.queues[index].strategy) != rings_all(config.strategy) {
                    config.strategy = self.scenario.queues[index].strategy;
                }
                self.scenario.queues[index] = config;
                let config = self.scenario.queues[index].config(index);
                self.run(Command::UpsertQueue { config });
            }
            Op::Advance { ms, tick } => {
                self.now = self.now.plus_millis(*ms);
                if *tick {
                    self.run(Command::Tick);
                }
            }
        }
    }

    /// Every agent available with every skill and room for everything; accept, hang up and
    /// complete whatever comes, let time pass, until every interaction is terminal.
    fn drain(&mut self) {
        for index in 0..self.scenario.agents.len() {
            let profile = agent_profile(index, &[Some(10); 3], &Capacity::Total(1000));
            self.must(Command::UpsertAgent { profile });
            self.run(Command::SetPresence {
                agent: self.agent_id(index),
                status: PresenceStatus::Available,
                reason: None,
                source: PresenceSource::Admin,
            });
        }
        for _round in 0..100 {
            let open: Vec<Interaction> = self
                .state
                .interactions()
                .filter(|i| !i.state.is_terminal())
                .cloned()
                .collect();
            if open.is_empty() {
                return;
            }
            for interaction in open {
                let id = interaction.id().clone();
                let current = self.state.interaction(&id).unwrap().clone();
                match current.state {
                    InteractionState::Offered => {
                        let agent = current.offered_to.first().unwrap().clone();
                        self.must(Command::Accept { id, agent });
                    }
                    InteractionState::Accepted => {
                        self.must(Command::Hangup { id });
                    }
                    InteractionState::WrapUp => {
                        let agent = current.agent.clone().unwrap();
                        self.must(Command::Complete {
                            id,
                            agent,
                            disposition: None,
                            notes: None,
                        });
                    }
                    _ => {}
                }
            }
            self.now = self.now.plus_millis(1_000);
            self.must(Command::Tick);
        }
        let stuck: Vec<(InteractionId, InteractionState, Target)> = self
            .state
            .interactions()
            .filter(|i| !i.state.is_terminal())
            .map(|i| (i.id().clone(), i.state, i.current_target.clone()))
            .collect();
        panic!("interactions never ended although every agent stayed available: {stuck:?}");
    }
}

fn cases(default: u32) -> u32 {
    std::env::var("ROUTER_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Every offer equals the reference decision, the routing invariants hold after every
    /// command, and with agents kept available every interaction ends.
    #[test]
    fn the_router_decides_as_the_reference_and_every_caller_ends(scenario in scenario()) {
        let ops = scenario.ops.clone();
        let mut sim = Sim::new(scenario, false);
        for op in &ops {
            sim.apply_op(op);
        }
        sim.drain();
        seen::report();
    }

    /// As above, plus `routing.eligible` (how many agents could have taken the caller) must
    /// count exactly the agents that could have: available, eligible, with room on its channel.
    #[test]
    fn the_routing_explanation_counts_the_agents_that_could_take_the_caller(scenario in scenario()) {
        let ops = scenario.ops.clone();
        let mut sim = Sim::new(scenario, true);
        for op in &ops {
            sim.apply_op(op);
        }
    }
}

// =============================================================================================
// Deterministic cases
// =============================================================================================

fn voice_spec(
    id: &str,
    target: Target,
    priority: i32,
    channel: &str,
    at: Timestamp,
) -> InteractionSpec {
    InteractionSpec {
        id: iid(id),
        caller: None,
        dialed: None,
        channel: channel.to_owned(),
        call_id: None,
        context: "{}".to_owned(),
        target,
        fallback: None,
        priority,
        max_wait_s: None,
        enrichment: Vec::new(),
        created_by: None,
        created_at: at,
    }
}

fn present(state: &mut State, agent: &str, status: PresenceStatus, now: Timestamp) {
    let command = Command::SetPresence {
        agent: aid(agent),
        status,
        reason: None,
        source: PresenceSource::Desktop,
    };
    step(state, command, now, false, "setup").expect("presence");
}

fn offered_in(events: &[Event]) -> Vec<(InteractionId, AgentId)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::InteractionOffered { id, agent, .. } => Some((id.clone(), agent.clone())),
            _ => None,
        })
        .collect()
}

/// `routing.eligible` counts only the agents who could have taken the caller: an agent with
/// room for a chat but not for a call is not among those who could have taken a call.
#[test]
fn explained_eligible_count_counts_only_agents_with_room_on_the_channel() {
    let now = t(T0);
    let mut state = State::new(Settings::default());
    let mut config = QueueConfig::new(qn("sales"));
    config.strategy = Route::LongestIdle;
    state.execute(Command::UpsertQueue { config }, now).unwrap();
    let per_channel = Capacity::PerChannel(
        [("voice".to_owned(), 1), ("chat".to_owned(), 1)]
            .into_iter()
            .collect(),
    );
    for agent in ["ann", "ben"] {
        let profile = agent_profile(0, &[], &per_channel);
        let profile = AgentProfile {
            id: aid(agent),
            ..profile
        };
        state
            .execute(Command::UpsertAgent { profile }, now)
            .unwrap();
        present(&mut state, agent, PresenceStatus::Available, now);
    }
    // ann is on a call addressed to her: room for a chat, none for another call.
    let spec = voice_spec("c1", Target::Agent(aid("ann")), 0, "voice", now);
    state
        .execute(Command::CreateInteraction { spec }, now)
        .unwrap();
    state
        .execute(
            Command::Accept {
                id: iid("c1"),
                agent: aid("ann"),
            },
            now,
        )
        .unwrap();
    let spec = voice_spec("c2", Target::Queue(qn("sales")), 0, "voice", now);
    let events = state
        .execute(Command::CreateInteraction { spec }, now)
        .unwrap();
    let eligible = events.iter().find_map(|e| match e {
        Event::InteractionOffered { agent, routing, .. } => Some((agent.clone(), routing.eligible)),
        _ => None,
    });
    // Only ben could take the call.
    assert_eq!(eligible, Some((aid("ben"), 1)));
}

/// A direct (agent-addressed) caller is offered straight away by `route`, which looks only at
/// the agent's own line; when time passed without a Tick, a queue caller of higher priority
/// whose requirement relaxed meanwhile could already have been served by that agent.
#[test]
fn an_addressed_caller_does_not_overtake_a_better_queue_caller_whose_requirement_relaxed() {
    let t0 = t(T0);
    let mut state = State::new(Settings::default());
    let mut config = QueueConfig::new(qn("billing"));
    config.skills = skills_of(&[Some(5), None, None]);
    config.steps = vec![EscalationStep {
        after_s: 30,
        skills: BTreeMap::new(),
    }];
    state.execute(Command::UpsertQueue { config }, t0).unwrap();
    let profile = agent_profile(0, &[Some(1), None, None], &Capacity::Total(1));
    state.execute(Command::UpsertAgent { profile }, t0).unwrap();
    present(&mut state, "a0", PresenceStatus::Available, t0);
    let spec = voice_spec("vip", Target::Queue(qn("billing")), 5, "voice", t0);
    let events = step(
        &mut state,
        Command::CreateInteraction { spec },
        t0,
        false,
        "vip",
    )
    .unwrap();
    assert!(
        offered_in(&events).is_empty(),
        "a0 does not meet billing 5 yet"
    );
    // 40 s later, no Tick ran; a caller addressed to a0 arrives.
    let later = t0.plus_seconds(40);
    assert_eq!(
        reference_next(&state, later).map(|d| d.id),
        Some(iid("vip")),
        "the relaxed vip caller is servable by a0 now"
    );
    let spec = voice_spec("direct", Target::Agent(aid("a0")), 0, "voice", later);
    let events = state
        .execute(Command::CreateInteraction { spec }, later)
        .unwrap();
    let offers = offered_in(&events);
    eprintln!("offers when a direct caller arrives 40 s later without a Tick: {offers:?}");
    assert_eq!(
        offers.first().map(|(id, _)| id.clone()),
        Some(iid("vip")),
        "the priority-5 queue caller waiting 40 s should get a0 before a priority-0 newcomer"
    );
}

/// The same overtaking without any late Tick: in one Tick, a priority-5 queue caller's offer
/// times out (it goes back to its place in line) and then a priority-0 caller addressed to
/// another agent times out and falls back to agent `f`, who is free and serves the queue:
/// `route` hands `f` to the fallback at once, and the queue caller keeps waiting.
#[test]
fn a_fallback_does_not_overtake_a_better_caller_requeued_in_the_same_tick() {
    let t0 = t(T0);
    let mut state = State::new(Settings {
        max_missed_offers: 1,
        ..Settings::default()
    });
    let config = QueueConfig::new(qn("help"));
    step(
        &mut state,
        Command::UpsertQueue { config },
        t0,
        false,
        "setup",
    )
    .unwrap();
    for (index, name) in ["b", "f", "x"].into_iter().enumerate() {
        let profile = AgentProfile {
            id: aid(name),
            ..agent_profile(index, &[], &Capacity::Total(1))
        };
        step(
            &mut state,
            Command::UpsertAgent { profile },
            t0,
            false,
            "setup",
        )
        .unwrap();
        present(
            &mut state,
            name,
            PresenceStatus::Available,
            t0.plus_millis(index as i64),
        );
    }
    let now = t0.plus_millis(10);
    let spec = voice_spec("a-queue", Target::Queue(qn("help")), 5, "voice", now);
    let events = step(
        &mut state,
        Command::CreateInteraction { spec },
        now,
        false,
        "q",
    )
    .unwrap();
    assert_eq!(offered_in(&events), vec![(iid("a-queue"), aid("b"))]);
    let mut spec = voice_spec("b-direct", Target::Agent(aid("x")), 0, "voice", now);
    spec.fallback = Some(Target::Agent(aid("f")));
    let events = step(
        &mut state,
        Command::CreateInteraction { spec },
        now,
        false,
        "d",
    )
    .unwrap();
    assert_eq!(offered_in(&events), vec![(iid("b-direct"), aid("x"))]);
    // Both offers time out in the same Tick; b and x are set away for missing them.
    let expiry = now.plus_seconds(20);
    let events = step(&mut state, Command::Tick, expiry, false, "tick").unwrap();
    let offers = offered_in(&events);
    eprintln!("offers in the Tick: {offers:?}");
    assert_eq!(
        offers.first().cloned(),
        Some((iid("a-queue"), aid("f"))),
        "the priority-5 caller waiting 20 s should get the free agent f before a priority-0 fallback"
    );
}

/// `least_occupied` counts what was handled *today*: after midnight yesterday's counts are
/// gone and the longest idle wins (the random runs rarely cross midnight with a tie to break).
#[test]
fn least_occupied_forgets_yesterday_at_midnight() {
    let midnight = 19_700 * 86_400_000;
    let t0 = t(midnight - 60_000);
    let s = |seconds: i64| t0.plus_millis(seconds * 1000);
    let mut state = State::new(Settings::default());
    let mut config = QueueConfig::new(qn("lo"));
    config.strategy = Route::LeastOccupied;
    step(
        &mut state,
        Command::UpsertQueue { config },
        t0,
        false,
        "setup",
    )
    .unwrap();
    for index in 0..2 {
        let profile = agent_profile(index, &[], &Capacity::Total(1));
        step(
            &mut state,
            Command::UpsertAgent { profile },
            t0,
            false,
            "setup",
        )
        .unwrap();
        present(
            &mut state,
            &format!("a{index}"),
            PresenceStatus::Available,
            s(index as i64),
        );
    }
    let serve = |state: &mut State, name: &str, at: i64, expected: &str| {
        let spec = voice_spec(name, Target::Queue(qn("lo")), 0, "voice", s(at));
        let command = Command::CreateInteraction { spec };
        let events = step(state, command, s(at), false, name).unwrap();
        assert_eq!(
            offered_in(&events),
            vec![(iid(name), aid(expected))],
            "{name}"
        );
        let agent = aid(expected);
        let id = iid(name);
        step(
            state,
            Command::Accept {
                id: id.clone(),
                agent: agent.clone(),
            },
            s(at),
            false,
            name,
        );
        step(
            state,
            Command::Hangup { id: id.clone() },
            s(at),
            false,
            name,
        );
        let complete = Command::Complete {
            id,
            agent,
            disposition: None,
            notes: None,
        };
        step(state, complete, s(at + 1), false, name).unwrap();
    };
    serve(&mut state, "c1", 10, "a0");
    serve(&mut state, "c2", 12, "a1");
    serve(&mut state, "c3", 14, "a0"); // 1 each: a0 idle longer
                                       // a0 handled 2 today, a1 1; a1 steps away and back, so a0 is idle longer.
    present(&mut state, "a1", PresenceStatus::Away, s(20));
    present(&mut state, "a1", PresenceStatus::Available, s(21));
    // Before midnight: a1, who handled fewer today.
    serve(&mut state.clone(), "c4", 30, "a1");
    // After midnight both handled 0 today: the longest idle, a0, although it handled more.
    serve(&mut state, "c5", 70, "a0");
}

/// Ring-all, a miss and the rule "never straight back to the agent who just missed it".
#[test]
fn a_missed_caller_goes_to_another_agent_and_back_only_when_alone() {
    let t0 = t(T0);
    let mut state = State::new(Settings {
        max_missed_offers: 0,
        ..Settings::default()
    });
    let config = QueueConfig::new(qn("help"));
    state.execute(Command::UpsertQueue { config }, t0).unwrap();
    for index in 0..2 {
        let profile = agent_profile(index, &[], &Capacity::Total(1));
        state.execute(Command::UpsertAgent { profile }, t0).unwrap();
    }
    present(&mut state, "a0", PresenceStatus::Available, t0);
    present(
        &mut state,
        "a1",
        PresenceStatus::Available,
        t0.plus_millis(1),
    );
    let spec = voice_spec(
        "c",
        Target::Queue(qn("help")),
        0,
        "voice",
        t0.plus_millis(2),
    );
    let events = step(
        &mut state,
        Command::CreateInteraction { spec },
        t0.plus_millis(2),
        false,
        "c",
    )
    .unwrap();
    assert_eq!(
        offered_in(&events),
        vec![(iid("c"), aid("a0"))],
        "a0 idle the longest"
    );
    let now = t0.plus_millis(3);
    let reject = Command::Reject {
        id: iid("c"),
        agent: aid("a0"),
    };
    let events = step(&mut state, reject, now, false, "reject").unwrap();
    assert_eq!(
        offered_in(&events),
        vec![(iid("c"), aid("a1"))],
        "not straight back to a0"
    );
    let reject = Command::Reject {
        id: iid("c"),
        agent: aid("a1"),
    };
    let events = step(&mut state, reject, now, false, "reject").unwrap();
    assert_eq!(
        offered_in(&events),
        vec![(iid("c"), aid("a0"))],
        "a1 missed it: a0 again"
    );
    present(&mut state, "a1", PresenceStatus::Away, now);
    let reject = Command::Reject {
        id: iid("c"),
        agent: aid("a0"),
    };
    let events = step(&mut state, reject, now, false, "reject").unwrap();
    assert_eq!(
        offered_in(&events),
        vec![(iid("c"), aid("a0"))],
        "a0 is the only one left"
    );
}

// =============================================================================================
// Cost: agents examined per routing decision, 100 against 10,000 agents
// =============================================================================================

const QUEUES: usize = 200;

fn cost_queue(i: usize) -> QueueName {
    qn(&format!("q{i:03}"))
}

/// 200 queues, each asking for its own skill at level 3 (relaxed to 1 after 30 s), strategies
/// in turn (no `ring_all`: it offers to every eligible agent, so it looks at all of them by
/// definition). Agent `j` has the skills of queues `5j .. 5j+4` (mod 200) at levels 3..=10, so
/// each queue has n/40 members: 2-3 with 100 agents, 250 with 10,000. All available, idle.
fn cost_world(n: usize, capacity: &Capacity, now: Timestamp) -> State {
    let mut state = State::new(Settings {
        max_missed_offers: 0,
        ..Settings::default()
    });
    let strategies = [
        Route::LongestIdle,
        Route::RoundRobin,
        Route::LeastOccupied,
        Route::MostSkilled,
    ];
    for i in 0..QUEUES {
        let mut config = QueueConfig::new(cost_queue(i));
        config.strategy = strategies[i % strategies.len()];
        config.skills = [(format!("k{i:03}"), level(3))].into_iter().collect();
        config.steps = vec![EscalationStep {
            after_s: 30,
            skills: [(format!("k{i:03}"), level(1))].into_iter().collect(),
        }];
        state.execute(Command::UpsertQueue { config }, now).unwrap();
    }
    for j in 0..n {
        let skills = (0..5)
            .map(|m| {
                let q = (5 * j + m) % QUEUES;
                (
                    format!("k{q:03}"),
                    level(3 + ((j / 40 * 3 + j + m) % 8) as u8),
                )
            })
            .collect();
        let profile = AgentProfile {
            id: cost_agent(j),
            name: format!("agent {j}"),
            address: None,
            skills,
            capacity: capacity.clone(),
        };
        state
            .execute(Command::UpsertAgent { profile }, now)
            .unwrap();
        let presence = Command::SetPresence {
            agent: cost_agent(j),
            status: PresenceStatus::Available,
            reason: None,
            source: PresenceSource::Desktop,
        };
        state.execute(presence, now).unwrap();
    }
    state
}

fn cost_agent(j: usize) -> AgentId {
    aid(&format!("agent{j:05}"))
}

fn exec(state: &mut State, command: Command, now: Timestamp) -> Vec<Event> {
    let shown = format!("{command:?}");
    state
        .execute(command, now)
        .unwrap_or_else(|e| panic!("{shown} refused: {e}"))
}

fn single_offer(events: &[Event]) -> (InteractionId, AgentId) {
    let offers = offered_in(events);
    assert_eq!(offers.len(), 1, "expected one offer, got {offers:?}");
    offers[0].clone()
}

/// Every agent takes a call addressed to it and accepts it: all busy.
fn make_all_busy(state: &mut State, n: usize, now: Timestamp, channel: &str) {
    for j in 0..n {
        let id = format!("busy{j}");
        let spec = voice_spec(&id, Target::Agent(cost_agent(j)), 0, channel, now);
        let events = exec(state, Command::CreateInteraction { spec }, now);
        assert_eq!(single_offer(&events).1, cost_agent(j));
        exec(
            state,
            Command::Accept {
                id: iid(&id),
                agent: cost_agent(j),
            },
            now,
        );
    }
}

/// Frees agent `j` of the call it holds (hang up, complete): returns the events of the
/// completion, which routes.
fn free_agent(state: &mut State, j: usize, now: Timestamp) -> Vec<Event> {
    let id = state
        .held_by(&cost_agent(j))
        .map(|i| i.id().clone())
        .next()
        .expect("the agent holds a call");
    exec(state, Command::Hangup { id: id.clone() }, now);
    exec(
        state,
        Command::Complete {
            id,
            agent: cost_agent(j),
            disposition: None,
            notes: None,
        },
        now,
    )
}

/// The agent freed by the r-th decision: spread over all agents, each one at most twice.
fn freed(r: usize, n: usize) -> usize {
    (r * 37) % n
}

/// 200 arrivals to queues in turn, each offered at once, accepted, hung up and completed.
fn cost_arrivals(n: usize) -> f64 {
    let now = t(T0);
    let mut state = cost_world(n, &Capacity::Total(1), now);
    let before = state.agents_examined();
    for r in 0..200 {
        let id = format!("c{r}");
        let spec = voice_spec(
            &id,
            Target::Queue(cost_queue((r * 37) % QUEUES)),
            (r % 3) as i32,
            "voice",
            now,
        );
        let events = exec(&mut state, Command::CreateInteraction { spec }, now);
        let (_, agent) = single_offer(&events);
        exec(
            &mut state,
            Command::Accept {
                id: iid(&id),
                agent: agent.clone(),
            },
            now,
        );
        exec(&mut state, Command::Hangup { id: iid(&id) }, now);
        exec(
            &mut state,
            Command::Complete {
                id: iid(&id),
                agent,
                disposition: None,
                notes: None,
            },
            now,
        );
    }
    (state.agents_examined() - before) as f64 / 200.0
}

/// Every agent busy, 1,000 callers waiting across the queues; 200 times an agent comes free
/// and is offered the best caller of its queues.
fn cost_many_waiting(n: usize) -> f64 {
    let now = t(T0);
    let mut state = cost_world(n, &Capacity::Total(1), now);
    make_all_busy(&mut state, n, now, "voice");
    for r in 0..1000 {
        let spec = voice_spec(
            &format!("w{r}"),
            Target::Queue(cost_queue((r * 37) % QUEUES)),
            (r % 3) as i32,
            "voice",
            now.plus_millis(r as i64),
        );
        let events = exec(
            &mut state,
            Command::CreateInteraction { spec },
            now.plus_millis(r as i64),
        );
        assert!(offered_in(&events).is_empty());
    }
    let now = now.plus_seconds(5);
    let before = state.agents_examined();
    for r in 0..200 {
        let j = freed(r, n);
        let events = free_agent(&mut state, j, now);
        let (id, agent) = single_offer(&events);
        assert_eq!(agent, cost_agent(j));
        exec(&mut state, Command::Accept { id, agent }, now);
    }
    (state.agents_examined() - before) as f64 / 200.0
}

/// Every agent busy on a call addressed to it, with two more callers addressed to it waiting;
/// 200 times an agent comes free and is offered its own next caller.
fn cost_addressed_waiting(n: usize) -> f64 {
    let now = t(T0);
    let mut state = cost_world(n, &Capacity::Total(1), now);
    make_all_busy(&mut state, n, now, "voice");
    for round in 0..2 {
        for j in 0..n {
            let spec = voice_spec(
                &format!("next{j}-{round}"),
                Target::Agent(cost_agent(j)),
                0,
                "voice",
                now,
            );
            let events = exec(&mut state, Command::CreateInteraction { spec }, now);
            assert!(offered_in(&events).is_empty());
        }
    }
    let before = state.agents_examined();
    for r in 0..200 {
        let j = freed(r, n);
        let events = free_agent(&mut state, j, now);
        let (id, agent) = single_offer(&events);
        assert_eq!(agent, cost_agent(j));
        exec(&mut state, Command::Accept { id, agent }, now);
    }
    (state.agents_examined() - before) as f64 / 200.0
}

/// Agents with room for one call and two chats, every one on a call; one call waits in each
/// queue (nobody can take it), and 200 chats arrive, each offered at once.
fn cost_per_channel(n: usize) -> f64 {
    let now = t(T0);
    let capacity = Capacity::PerChannel(
        [("voice".to_owned(), 1), ("chat".to_owned(), 2)]
            .into_iter()
            .collect(),
    );
    let mut state = cost_world(n, &capacity, now);
    make_all_busy(&mut state, n, now, "voice");
    for i in 0..QUEUES {
        let spec = voice_spec(
            &format!("v{i}"),
            Target::Queue(cost_queue(i)),
            0,
            "voice",
            now,
        );
        let events = exec(&mut state, Command::CreateInteraction { spec }, now);
        assert!(offered_in(&events).is_empty());
    }
    let before = state.agents_examined();
    for r in 0..200 {
        let id = format!("chat{r}");
        let spec = voice_spec(
            &id,
            Target::Queue(cost_queue((r * 37) % QUEUES)),
            0,
            "chat",
            now,
        );
        let events = exec(&mut state, Command::CreateInteraction { spec }, now);
        let (_, agent) = single_offer(&events);
        exec(
            &mut state,
            Command::Accept {
                id: iid(&id),
                agent: agent.clone(),
            },
            now,
        );
        exec(&mut state, Command::Hangup { id: iid(&id) }, now);
        exec(
            &mut state,
            Command::Complete {
                id: iid(&id),
                agent,
                disposition: None,
                notes: None,
            },
            now,
        );
    }
    (state.agents_examined() - before) as f64 / 200.0
}

fn assert_grows_less_than_3x(what: &str, measure: fn(usize) -> f64) {
    let small = measure(100);
    let large = measure(10_000);
    eprintln!(
        "{what}: agents examined per decision: {small:.2} at 100 agents, {large:.2} at 10,000"
    );
    assert!(
        large < 3.0 * small.max(1.0),
        "{what}: {large:.2} agents examined per decision at 10,000 agents, {small:.2} at 100"
    );
}

#[test]
fn cost_of_a_decision_grows_less_than_3x_from_100_to_10000_agents() {
    assert_grows_less_than_3x("arrivals offered at once", cost_arrivals);
}

#[test]
fn cost_with_many_waiting_callers_and_few_free_agents_grows_less_than_3x() {
    assert_grows_less_than_3x(
        "1,000 callers waiting, agents freed one by one",
        cost_many_waiting,
    );
}

#[test]
fn cost_with_callers_waiting_for_named_agents_grows_less_than_3x() {
    assert_grows_less_than_3x(
        "a caller waiting for each busy agent",
        cost_addressed_waiting,
    );
}

#[test]
fn cost_with_per_channel_capacity_grows_less_than_3x() {
    assert_grows_less_than_3x(
        "calls waiting, chats routed (per-channel capacity)",
        cost_per_channel,
    );
}
