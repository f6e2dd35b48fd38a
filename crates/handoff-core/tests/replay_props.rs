//! Property tests: random command sequences with monotonic virtual time. After every command the
//! state must satisfy the routing invariants, and replaying every emitted event through `apply`
//! on a fresh state must rebuild exactly the same observable state.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use handoff_core::{
    Activity, Agent, AgentId, AgentProfile, Capacity, Command, Event, Interaction, InteractionId,
    InteractionSpec, InteractionState, PresenceSource, PresenceStatus, Settings, State, Target,
    Timestamp,
};
use proptest::prelude::*;

/// Agents the sequences talk about; the last one is never created (unknown-agent paths).
const AGENTS: [&str; 4] = ["ann", "ben", "cat", "ghost"];
const STATUSES: [PresenceStatus; 5] = [
    PresenceStatus::Available,
    PresenceStatus::Available,
    PresenceStatus::Away,
    PresenceStatus::Busy,
    PresenceStatus::Offline,
];

fn aid(index: usize) -> AgentId {
    AgentId::parse(AGENTS[index % AGENTS.len()]).unwrap()
}

fn profile(index: usize, capacity: u32, renamed: bool) -> AgentProfile {
    let id = aid(index);
    AgentProfile {
        name: if renamed {
            format!("{id} (renamed)")
        } else {
            format!("Agent {id}")
        },
        address: Some(format!("sip:{id}@pbx.example.com")),
        skills: BTreeMap::new(),
        capacity: Capacity::Total(capacity),
        id,
    }
}

#[derive(Debug, Clone)]
enum Op {
    Presence {
        agent: usize,
        status: usize,
        reason: bool,
        source: usize,
    },
    Create {
        target: usize,
        fallback: Option<usize>,
        priority: i32,
        /// The request's own `max_wait_s`; `None`: the server's.
        max_wait_s: Option<u64>,
    },
    Accept {
        pick: usize,
        by: Option<usize>,
    },
    Reject {
        pick: usize,
        by: Option<usize>,
    },
    Complete {
        pick: usize,
        by: Option<usize>,
        disposition: bool,
    },
    Hangup {
        pick: usize,
    },
    Transfer {
        pick: usize,
        by: Option<usize>,
        target: usize,
        fallback: Option<usize>,
        note: bool,
    },
    Tick,
    ConnectionLost {
        agent: usize,
    },
    Delete {
        agent: usize,
    },
    Upsert {
        agent: usize,
        capacity: u32,
        renamed: bool,
    },
    /// An update of the context, against the current version or a stale one.
    UpdateContext {
        pick: usize,
        stale: bool,
    },
    /// A CRM lookup's late answer: fields found, or a failure.
    Enrich {
        pick: usize,
        connector: usize,
        failed: bool,
    },
}

fn agent_index() -> impl Strategy<Value = usize> {
    // Mostly real agents, sometimes the unknown one.
    prop_oneof![9 => 0..3usize, 1 => Just(3usize)]
}

/// Who acts on an interaction: `None` is "the agent it is offered or assigned to".
fn actor() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![4 => Just(None), 1 => agent_index().prop_map(Some)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (agent_index(), 0..STATUSES.len(), any::<bool>(), 0..4usize)
            .prop_map(|(agent, status, reason, source)| Op::Presence { agent, status, reason, source }),
        5 => (
            agent_index(),
            proptest::option::of(agent_index()),
            -1..3i32,
            prop_oneof![3 => Just(None), 1 => Just(Some(0u64)), 1 => Just(Some(5))],
        )
            .prop_map(|(target, fallback, priority, max_wait_s)| Op::Create {
                target,
                fallback,
                priority,
                max_wait_s
            }),
        4 => (any::<usize>(), actor()).prop_map(|(pick, by)| Op::Accept { pick, by }),
        2 => (any::<usize>(), actor()).prop_map(|(pick, by)| Op::Reject { pick, by }),
        2 => (any::<usize>(), actor(), any::<bool>())
            .prop_map(|(pick, by, disposition)| Op::Complete { pick, by, disposition }),
        2 => any::<usize>().prop_map(|pick| Op::Hangup { pick }),
        3 => (any::<usize>(), actor(), agent_index(), proptest::option::of(agent_index()), any::<bool>())
            .prop_map(|(pick, by, target, fallback, note)| Op::Transfer { pick, by, target, fallback, note }),
        3 => Just(Op::Tick),
        2 => (any::<usize>(), prop_oneof![4 => Just(false), 1 => Just(true)])
            .prop_map(|(pick, stale)| Op::UpdateContext { pick, stale }),
        1 => (any::<usize>(), 0..2usize, any::<bool>())
            .prop_map(|(pick, connector, failed)| Op::Enrich { pick, connector, failed }),
        1 => agent_index().prop_map(|agent| Op::ConnectionLost { agent }),
        1 => agent_index().prop_map(|agent| Op::Delete { agent }),
        2 => (0..3usize, 1..=2u32, any::<bool>())
            .prop_map(|(agent, capacity, renamed)| Op::Upsert { agent, capacity, renamed }),
    ]
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        prop_oneof![Just(0u64), Just(1), Just(20)],
        any::<bool>(),
        // 0 turns "away after missed offers" off; 2 is the default.
        prop_oneof![Just(0u32), Just(1), Just(2), Just(2)],
        // 0: a caller whose agent cannot take it goes on at the next tick.
        prop_oneof![Just(0u64), Just(1), Just(30)],
    )
        .prop_map(
            |(offer_timeout_s, offline_on_disconnect, max_missed_offers, agent_max_wait_s)| {
                Settings {
                    offer_timeout_s,
                    offline_on_disconnect,
                    max_missed_offers,
                    agent_max_wait_s,
                    ..Settings::default()
                }
            },
        )
}

/// The total capacity of an agent; the sequences only ever give agents a total.
fn total_capacity(agent: &Agent) -> usize {
    match &agent.profile.capacity {
        Capacity::Total(total) => *total as usize,
        Capacity::PerChannel(map) => panic!("the sequences give no per-channel capacity: {map:?}"),
    }
}

/// Turns a generated op into a command against the current state.
fn command(op: &Op, state: &State, created: &[InteractionId], now: Timestamp) -> Command {
    // Mostly pick among interactions in a state where the op can apply (so that sequences get
    // far), otherwise among all of them (so that refusals are exercised too).
    let fitting = |states: &[InteractionState]| -> Vec<InteractionId> {
        created
            .iter()
            .filter(|id| {
                state
                    .interaction(id)
                    .is_some_and(|i| states.contains(&i.state))
            })
            .cloned()
            .collect()
    };
    let wanted: &[InteractionState] = match op {
        Op::Accept { .. } | Op::Reject { .. } => &[InteractionState::Offered],
        Op::Complete { .. } => &[InteractionState::Accepted, InteractionState::WrapUp],
        Op::Transfer { .. } => &[InteractionState::Accepted],
        Op::Hangup { .. } | Op::UpdateContext { .. } => &[
            InteractionState::Queued,
            InteractionState::Offered,
            InteractionState::Accepted,
        ],
        _ => &[],
    };
    let candidates = fitting(wanted);
    let pick = |pick: usize| -> InteractionId {
        if !candidates.is_empty() && pick % 5 >= 1 {
            candidates[(pick / 5) % candidates.len()].clone()
        } else if created.is_empty() {
            InteractionId::parse("none").unwrap()
        } else {
            created[pick % created.len()].clone()
        }
    };
    let who = |id: &InteractionId, by: Option<usize>| -> AgentId {
        match by {
            Some(index) => aid(index),
            None => state
                .interaction(id)
                .and_then(|i| i.agent.clone())
                .unwrap_or_else(|| aid(0)),
        }
    };
    match op {
        Op::Presence {
            agent,
            status,
            reason,
            source,
        } => Command::SetPresence {
            agent: aid(*agent),
            status: STATUSES[*status],
            reason: reason.then(|| "lunch".to_owned()),
            source: PresenceSource::ALL[*source],
        },
        Op::Create {
            target,
            fallback,
            priority,
            max_wait_s,
        } => {
            let id = InteractionId::parse(&format!("i{}", created.len() + 1)).unwrap();
            Command::CreateInteraction {
                spec: InteractionSpec {
                    id,
                    caller: Some("+15551234567".to_owned()),
                    dialed: None,
                    channel: "voice".to_owned(),
                    call_id: None,
                    context: "{}".to_owned(),
                    target: Target::Agent(aid(*target)),
                    fallback: fallback.map(|f| Target::Agent(aid(f))),
                    priority: *priority,
                    max_wait_s: *max_wait_s,
                    enrichment: Vec::new(),
                    created_by: None,
                    created_at: now,
                },
            }
        }
        Op::Accept { pick: p, by } => {
            let id = pick(*p);
            Command::Accept {
                agent: who(&id, *by),
                id,
            }
        }
        Op::Reject { pick: p, by } => {
            let id = pick(*p);
            Command::Reject {
                agent: who(&id, *by),
                id,
            }
        }
        Op::Complete {
            pick: p,
            by,
            disposition,
        } => {
            let id = pick(*p);
            Command::Complete {
                agent: who(&id, *by),
                id,
                disposition: disposition.then(|| "resolved".to_owned()),
                notes: None,
            }
        }
        Op::Hangup { pick: p } => Command::Hangup { id: pick(*p) },
        Op::Transfer {
            pick: p,
            by,
            target,
            fallback,
            note,
        } => {
            let id = pick(*p);
            Command::Transfer {
                agent: who(&id, *by),
                id,
                target: Target::Agent(aid(*target)),
                fallback: fallback.map(|f| Target::Agent(aid(f))),
                note: note.then(|| "see context".to_owned()),
            }
        }
        Op::Tick => Command::Tick,
        Op::UpdateContext { pick: p, stale } => {
            let id = pick(*p);
            let current = state.interaction(&id).map_or(1, |i| i.context_version);
            Command::UpdateContext {
                id,
                expected_version: if *stale { current + 1 } else { current },
                context: format!(r#"{{"step":{current}}}"#),
                patch: format!(r#"{{"step":{current}}}"#),
                by: Some("key_ivr".to_owned()),
            }
        }
        Op::Enrich {
            pick: p,
            connector,
            failed,
        } => Command::RecordEnrichment {
            id: pick(*p),
            connector: format!("crm{connector}"),
            outcome: if *failed {
                Err("timed out".to_owned())
            } else {
                Ok(format!(r#"{{"name":"caller {p}"}}"#))
            },
        },
        Op::ConnectionLost { agent } => Command::ConnectionLost { agent: aid(*agent) },
        Op::Delete { agent } => Command::DeleteAgent { agent: aid(*agent) },
        Op::Upsert {
            agent,
            capacity,
            renamed,
        } => {
            // Never below what the agent holds now, so "held <= capacity" stays a fair invariant.
            let held = state.held_by(&aid(*agent)).count() as u32;
            Command::UpsertAgent {
                profile: profile(*agent, (*capacity).max(held), *renamed),
            }
        }
    }
}

/// Everything a caller of the core can observe.
#[derive(Debug, PartialEq)]
struct Observed {
    agents: Vec<(Agent, Activity, BTreeSet<InteractionId>)>,
    interactions: Vec<(Interaction, Option<usize>)>,
    next_deadline: Option<Timestamp>,
}

fn observe(state: &State) -> Observed {
    Observed {
        agents: state
            .agents()
            .map(|a| {
                let id = &a.profile.id;
                let held = state.held_by(id).map(|i| i.spec.id.clone()).collect();
                (a.clone(), state.activity(id), held)
            })
            .collect(),
        interactions: state
            .interactions()
            .map(|i| (i.clone(), state.position(&i.spec.id)))
            .collect(),
        next_deadline: state.next_deadline(),
    }
}

/// The invariants that must hold between any two commands.
fn check_invariants(state: &State) -> Result<(), TestCaseError> {
    let agents: Vec<&Agent> = state.agents().collect();
    let holders = |id: &InteractionId| -> Vec<AgentId> {
        agents
            .iter()
            .filter(|a| state.held_by(&a.profile.id).any(|i| &i.spec.id == id))
            .map(|a| a.profile.id.clone())
            .collect()
    };

    for agent in &agents {
        let id = &agent.profile.id;
        let held = state.held_by(id).count();
        prop_assert!(
            held <= total_capacity(agent),
            "{id} holds {held} interactions with capacity {:?}",
            agent.profile.capacity
        );
        let limit = state.settings().max_missed_offers;
        prop_assert!(
            limit == 0
                || agent.presence.status != PresenceStatus::Available
                || agent.missed_in_a_row < limit,
            "{} is available after {} missed offers in a row (limit {})",
            id,
            agent.missed_in_a_row,
            limit
        );
        for interaction in state.held_by(id) {
            prop_assert_eq!(
                interaction.agent.as_ref(),
                Some(id),
                "held_by({}) lists {:?}",
                id,
                interaction
            );
        }
        let expected_activity = state
            .held_by(id)
            .map(|i| match i.state {
                InteractionState::Accepted => 3,
                InteractionState::Offered => 2,
                InteractionState::WrapUp => 1,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        let activity = match state.activity(id) {
            Activity::Idle => 0,
            Activity::WrapUp => 1,
            Activity::Offered => 2,
            Activity::Engaged => 3,
        };
        prop_assert_eq!(activity, expected_activity, "activity of {}", id);
    }

    let mut earliest: Option<Timestamp> = None;
    let mut positions: HashMap<Target, Vec<usize>> = HashMap::new();
    for interaction in state.interactions() {
        let id = interaction.id();
        match interaction.state {
            InteractionState::Offered => {
                let deadline = interaction.offer_expires_at;
                prop_assert!(
                    deadline.is_some(),
                    "offered without a deadline: {:?}",
                    interaction
                );
                let deadline = deadline.unwrap();
                earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
                let agent = interaction.agent.clone();
                prop_assert!(agent.is_some(), "offered to nobody: {:?}", interaction);
                let agent = agent.unwrap();
                prop_assert_eq!(
                    holders(id),
                    vec![agent.clone()],
                    "offered {} is held by exactly its agent",
                    id
                );
                prop_assert_eq!(
                    interaction.current_target.clone(),
                    Target::Agent(agent.clone()),
                    "an offer serves its current target"
                );
                prop_assert!(interaction.involved_agents.contains(&agent));
                prop_assert_eq!(state.position(id), None);
            }
            InteractionState::Accepted | InteractionState::WrapUp => {
                prop_assert_eq!(interaction.offer_expires_at, None);
                let agent = interaction.agent.clone();
                prop_assert!(agent.is_some(), "assigned to nobody: {:?}", interaction);
                prop_assert_eq!(holders(id), vec![agent.unwrap()]);
                prop_assert_eq!(state.position(id), None);
            }
            InteractionState::Queued => {
                prop_assert_eq!(interaction.offer_expires_at, None);
                // Waiting for an agent ends at its max wait: the fallback, or timed out.
                let max_wait_s = interaction
                    .spec
                    .max_wait_s
                    .unwrap_or(state.settings().agent_max_wait_s);
                let until = interaction.waiting_since.plus_seconds(max_wait_s);
                prop_assert_eq!(
                    interaction.max_wait_at,
                    Some(until),
                    "{} waits for an agent with its max wait set",
                    id
                );
                earliest = Some(earliest.map_or(until, |e| e.min(until)));
                prop_assert_eq!(interaction.agent.clone(), None);
                prop_assert!(holders(id).is_empty());
                let position = state.position(id);
                prop_assert!(
                    position.is_some(),
                    "queued without a place in line: {:?}",
                    interaction
                );
                positions
                    .entry(interaction.current_target.clone())
                    .or_default()
                    .push(position.unwrap());
                let Target::Agent(target) = &interaction.current_target else {
                    return Err(TestCaseError::fail(format!(
                        "queued for a queue: {interaction:?}"
                    )));
                };
                let target_agent = state.agent(target);
                prop_assert!(
                    target_agent.is_some(),
                    "{} waits for {}, who does not exist",
                    id,
                    target
                );
                let target_agent = target_agent.unwrap();
                let free = state.held_by(target).count() < total_capacity(target_agent);
                prop_assert!(
                    !(target_agent.presence.status == PresenceStatus::Available && free),
                    "dispatch invariant: {} waits for {}, who is available with free capacity",
                    id,
                    target
                );
            }
            _ => {
                // Terminal.
                prop_assert!(interaction.state.is_terminal());
                prop_assert_eq!(interaction.offer_expires_at, None);
                prop_assert!(holders(id).is_empty(), "terminal {} is still held", id);
                prop_assert_eq!(state.position(id), None);
            }
        }
    }
    prop_assert_eq!(
        state.next_deadline(),
        earliest,
        "next_deadline is the earliest open offer or end of a wait"
    );
    // Positions among callers for the same target are exactly 1..=n.
    for (target, mut places) in positions {
        places.sort_unstable();
        let expected: Vec<usize> = (1..=places.len()).collect();
        prop_assert_eq!(places, expected, "positions for {:?}", target);
    }
    Ok(())
}

/// The recipients the contract implies for one event, given the interaction just before it.
fn expected_recipients(state: &State, event: &Event) -> Vec<AgentId> {
    match event {
        // About the caller's data: for whoever holds the interaction.
        Event::ContextUpdated { id, .. }
        | Event::InteractionEnriched { id, .. }
        | Event::EnrichmentFailed { id, .. } => {
            let Some(interaction) = state.interaction(id) else {
                return vec![];
            };
            match interaction.state {
                InteractionState::Offered => interaction.offered_to.iter().cloned().collect(),
                InteractionState::Accepted | InteractionState::WrapUp => {
                    interaction.agent.iter().cloned().collect()
                }
                _ => vec![],
            }
        }
        Event::AgentCreated { .. } | Event::AgentUpdated { .. } | Event::AgentDeleted { .. } => {
            vec![]
        }
        Event::PresenceChanged { agent, .. } => vec![agent.clone()],
        Event::InteractionCreated { .. }
        | Event::InteractionQueued { .. }
        | Event::InteractionAbandoned { .. }
        | Event::InteractionUnanswered { .. }
        | Event::InteractionTimedOut { .. }
        | Event::QueueUpserted { .. }
        | Event::QueueDeleted { .. } => vec![],
        Event::InteractionOffered { agent, .. }
        | Event::OfferRevoked { agent, .. }
        | Event::InteractionAccepted { agent, .. }
        | Event::InteractionRejected { agent, .. }
        | Event::InteractionEnded { agent, .. }
        | Event::InteractionCompleted { agent, .. } => vec![agent.clone()],
        Event::InteractionTransferred { from, .. } => vec![from.clone()],
    }
}

/// What the test remembers from the event log itself, to check the core against.
#[derive(Default)]
struct Model {
    /// Log index and time of each interaction's latest `interaction.queued`.
    queued: HashMap<InteractionId, (usize, Timestamp)>,
    /// Per interaction: the targets it was headed for since its last handoff (creation or
    /// transfer), and the fallback that handoff named.
    route: HashMap<InteractionId, (Vec<Target>, Option<Target>)>,
}

impl Model {
    /// Checks one event against the state just before it (`shadow`) and records it.
    fn see(
        &mut self,
        shadow: &State,
        event: &Event,
        log_index: usize,
    ) -> Result<(), TestCaseError> {
        match event {
            Event::InteractionCreated { spec } => {
                self.route.insert(
                    spec.id.clone(),
                    (vec![spec.target.clone()], spec.fallback.clone()),
                );
            }
            Event::InteractionTransferred {
                id,
                target,
                fallback,
                ..
            } => {
                self.route
                    .insert(id.clone(), (vec![target.clone()], fallback.clone()));
            }
            Event::InteractionQueued {
                id,
                target,
                at,
                requeued,
            } => {
                prop_assert!(
                    !requeued,
                    "{} requeued although agent targets have no place to keep",
                    id
                );
                self.queued.insert(id.clone(), (log_index, *at));
                self.headed_for(id, target)?;
            }
            Event::InteractionOffered {
                id, agent, target, ..
            } => {
                prop_assert_eq!(
                    target,
                    &Target::Agent(agent.clone()),
                    "an offer to {} serves another target",
                    agent
                );
                self.headed_for(id, target)?;
                // Nobody jumps the line: an offer to A goes to the head of A's line, or to a
                // caller routed afresh while nobody waits for A.
                let line: Vec<(usize, &InteractionId)> = shadow
                    .interactions()
                    .filter(|i| i.state == InteractionState::Queued && &i.current_target == target)
                    .filter_map(|i| shadow.position(i.id()).map(|p| (p, i.id())))
                    .collect();
                match line.iter().find(|(_, other)| *other == id) {
                    Some((place, _)) => prop_assert_eq!(
                        *place,
                        1,
                        "{} offered to {} from place {} in line",
                        id,
                        agent,
                        place
                    ),
                    None => prop_assert!(
                        line.is_empty(),
                        "{} offered to {} ahead of callers already waiting for it: {:?}",
                        id,
                        agent,
                        line
                    ),
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The fallback is used at most once per handoff, and only the one that handoff named.
    fn headed_for(&mut self, id: &InteractionId, target: &Target) -> Result<(), TestCaseError> {
        let Some((targets, fallback)) = self.route.get_mut(id) else {
            return Err(TestCaseError::fail(format!(
                "{id} routed before it was created"
            )));
        };
        if targets.last() != Some(target) {
            targets.push(target.clone());
        }
        prop_assert!(
            targets.len() <= 2,
            "{} went to more than its target and one fallback: {:?}",
            id,
            targets
        );
        if targets.len() == 2 {
            prop_assert_eq!(
                Some(&targets[1]),
                fallback.as_ref(),
                "{} went somewhere other than its fallback",
                id
            );
        }
        Ok(())
    }

    /// Each line is ordered by priority (highest first), then by when the caller joined it, then
    /// by the order of the `interaction.queued` events.
    fn check_lines(&self, state: &State) -> Result<(), TestCaseError> {
        let mut lines: HashMap<Target, Vec<&Interaction>> = HashMap::new();
        for interaction in state
            .interactions()
            .filter(|i| i.state == InteractionState::Queued)
        {
            let (_, at) = self.queued[interaction.id()];
            prop_assert_eq!(
                interaction.waiting_since,
                at,
                "{} waits since its last queued event",
                interaction.id()
            );
            lines
                .entry(interaction.current_target.clone())
                .or_default()
                .push(interaction);
        }
        for (target, mut line) in lines {
            line.sort_by_key(|i| {
                let (index, at) = self.queued[i.id()];
                (std::cmp::Reverse(i.spec.priority), at, index)
            });
            for (place, interaction) in line.iter().enumerate() {
                prop_assert_eq!(
                    state.position(interaction.id()),
                    Some(place + 1),
                    "place of {} in the line for {:?}",
                    interaction.id(),
                    target
                );
            }
        }
        Ok(())
    }
}

fn run_sequence(
    settings: Settings,
    capacities: Vec<u32>,
    start_available: bool,
    steps: Vec<(Op, u32)>,
) -> Result<(), TestCaseError> {
    let mut state = State::new(settings.clone());
    // A shadow state fed only with the emitted events, step by step.
    let mut shadow = State::new(settings.clone());
    let mut log: Vec<Event> = Vec::new();
    let mut created: Vec<InteractionId> = Vec::new();
    let mut model = Model::default();
    let mut now = Timestamp::from_millis(1_700_000_000_000);

    let mut commands: Vec<Command> = capacities
        .iter()
        .enumerate()
        .flat_map(|(i, capacity)| {
            let mut setup = vec![Command::UpsertAgent {
                profile: profile(i, *capacity, false),
            }];
            if start_available {
                setup.push(Command::SetPresence {
                    agent: aid(i),
                    status: PresenceStatus::Available,
                    reason: None,
                    source: PresenceSource::Desktop,
                });
            }
            setup
        })
        .collect();
    commands.reverse(); // popped from the back: ann first
    let mut ops = steps.into_iter();
    loop {
        let command = match commands.pop() {
            Some(command) => command,
            None => match ops.next() {
                Some((op, dt)) => {
                    now = Timestamp::from_millis(now.millis() + i64::from(dt));
                    command(&op, &state, &created, now)
                }
                None => break,
            },
        };
        let before = observe(&state);
        match state.execute(command.clone(), now) {
            Err(error) => {
                prop_assert_eq!(
                    observe(&state),
                    before,
                    "refused command {:?} ({}) changed the state",
                    command,
                    error
                );
            }
            Ok(events) => {
                if let Command::CreateInteraction { spec } = &command {
                    created.push(spec.id.clone());
                }
                for (index, event) in events.iter().enumerate() {
                    model.see(&shadow, event, log.len() + index)?;
                    prop_assert_eq!(event.time(), now, "event {:?} is not stamped now", event);
                    if let Event::InteractionOffered {
                        agent, expires_at, ..
                    } = event
                    {
                        prop_assert_eq!(*expires_at, now.plus_seconds(settings.offer_timeout_s));
                        // Offers go only to agents that can take them, judged just before the offer.
                        let who = shadow.agent(agent);
                        prop_assert!(who.is_some(), "offer to a missing agent: {:?}", event);
                        let who = who.unwrap();
                        prop_assert_eq!(
                            who.presence.status,
                            PresenceStatus::Available,
                            "offer to a non-available agent: {:?}",
                            event
                        );
                        prop_assert!(
                            shadow.held_by(agent).count() < total_capacity(who),
                            "offer beyond capacity: {:?}",
                            event
                        );
                    }
                    if let Event::PresenceChanged { agent, presence } = event {
                        if presence.reason.as_deref() == Some("missed_offers") {
                            // Only handoff sets it, only on a miss, and only at the limit.
                            prop_assert!(
                                matches!(command, Command::Reject { .. } | Command::Tick),
                                "missed_offers after {:?}",
                                command
                            );
                            prop_assert_eq!(presence.status, PresenceStatus::Away);
                            prop_assert_eq!(presence.source, PresenceSource::System);
                            let limit = settings.max_missed_offers;
                            let missed = shadow.agent(agent).map_or(0, |a| a.missed_in_a_row);
                            prop_assert!(
                                limit > 0 && missed >= limit,
                                "{} set away after {} misses (limit {})",
                                agent,
                                missed,
                                limit
                            );
                        }
                    }
                    let recipients = shadow.apply(event);
                    prop_assert_eq!(
                        recipients,
                        expected_recipients(&shadow, event),
                        "recipients of {:?}",
                        event
                    );
                }
                prop_assert_eq!(observe(&shadow), observe(&state), "after {:?}", command);
                match &command {
                    Command::Tick => {
                        // Every offer due now was revoked, unless it was made by this very tick.
                        for interaction in state.interactions() {
                            if interaction.offer_expires_at.is_some_and(|at| at <= now) {
                                let offered_now = events.iter().any(|e| {
                                    matches!(e, Event::InteractionOffered { id, .. } if id == interaction.id())
                                });
                                prop_assert!(
                                    offered_now,
                                    "tick at {} left a due offer open: {:?}",
                                    now.millis(),
                                    interaction
                                );
                            }
                        }
                    }
                    Command::ConnectionLost { agent } if settings.offline_on_disconnect => {
                        let presence = &state.agent(agent).unwrap().presence;
                        prop_assert_eq!(presence.status, PresenceStatus::Offline);
                        let still_offered: Vec<_> = state
                            .held_by(agent)
                            .filter(|i| i.state == InteractionState::Offered)
                            .collect();
                        prop_assert!(
                            still_offered.is_empty(),
                            "offers kept after connection lost: {:?}",
                            still_offered
                        );
                    }
                    Command::ConnectionLost { .. } => {
                        prop_assert!(
                            events.is_empty(),
                            "connection lost with offline_on_disconnect off emitted {:?}",
                            events
                        );
                    }
                    Command::Accept { .. } => {
                        prop_assert_eq!(
                            events.len(),
                            1,
                            "accept emits exactly accepted: {:?}",
                            events
                        );
                    }
                    _ => {}
                }
                log.extend(events);
            }
        }
        model.check_lines(&state).map_err(|e| {
            TestCaseError::fail(format!("after {command:?} at {}: {e}", now.millis()))
        })?;
        check_invariants(&state).map_err(|e| {
            TestCaseError::fail(format!("after {command:?} at {}: {e}", now.millis()))
        })?;
    }

    // Every ended interaction, made again from its own events alone (as the API reads one the
    // engine forgot), is what the state holds; only its place among all callers ever queued
    // (`waiting_order`) is counted afresh.
    for ended in state.interactions().filter(|i| i.state.is_terminal()) {
        let own = log
            .iter()
            .filter(|e| e.interaction_id() == Some(ended.id()));
        let again = State::interaction_from_events(settings.clone(), own);
        prop_assert!(again.is_some(), "{} not made again", ended.id());
        let mut again = again.unwrap();
        again.waiting_order = ended.waiting_order;
        prop_assert_eq!(&again, ended);
    }
    // Forgetting every ended interaction leaves the open ones and every invariant.
    let mut forgetful = state.clone();
    let ended = state
        .interactions()
        .filter(|i| i.state.is_terminal())
        .count();
    prop_assert_eq!(
        forgetful.forget_ended_before(Timestamp::from_millis(i64::MAX)),
        ended
    );
    prop_assert!(forgetful.interactions().map(|i| i.id()).eq(state
        .interactions()
        .filter(|i| !i.state.is_terminal())
        .map(|i| i.id())));
    check_invariants(&forgetful)?;

    // Replay the whole log on a fresh state.
    let mut rebuilt = State::new(settings);
    for event in &log {
        rebuilt.apply(event);
    }
    let original = observe(&state);
    let replayed = observe(&rebuilt);
    prop_assert_eq!(&replayed.agents, &original.agents);
    prop_assert_eq!(&replayed.interactions, &original.interactions);
    prop_assert_eq!(replayed.next_deadline, original.next_deadline);
    for interaction in state.interactions() {
        prop_assert_eq!(rebuilt.interaction(interaction.id()), Some(interaction));
        prop_assert_eq!(
            rebuilt.position(interaction.id()),
            state.position(interaction.id())
        );
    }
    for index in 0..AGENTS.len() {
        let id = aid(index);
        prop_assert_eq!(rebuilt.agent(&id), state.agent(&id));
        prop_assert_eq!(rebuilt.activity(&id), state.activity(&id));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_invariants_and_replaying_their_events_rebuilds_the_same_state(
        settings in settings(),
        capacities in proptest::collection::vec(1..=2u32, 3),
        start_available in any::<bool>(),
        steps in proptest::collection::vec((op(), 0..30_000u32), 1..80),
    ) {
        run_sequence(settings, capacities, start_available, steps)?;
    }

    #[test]
    fn dense_sequences_with_short_time_steps_keep_invariants_and_replay_identically(
        settings in settings(),
        capacities in proptest::collection::vec(1..=2u32, 3),
        start_available in any::<bool>(),
        steps in proptest::collection::vec((op(), 0..3u32), 1..120),
    ) {
        run_sequence(settings, capacities, start_available, steps)?;
    }
}
