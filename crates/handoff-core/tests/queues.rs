//! Scenario tests of queue routing in the domain core (issue 3): strategies, eligibility,
//! escalation, overflow, order of callers, missed offers, capacity per channel, wrap-up,
//! abandonment, presence, statistics and replay after a restart. Virtual time throughout:
//! `Timestamp::from_millis` and `Command::Tick`; the events of each step are asserted exactly.

use std::collections::BTreeMap;
use std::sync::Arc;

use handoff_core::{
    Activity, Agent, AgentId, AgentProfile, Calendar, Capacity, Command, CommandError,
    EscalationStep, Event, Interaction, InteractionId, InteractionSpec, InteractionState,
    OfferEndReason, Presence, PresenceSource, PresenceStatus, QueueConfig, QueueConfigError,
    QueueName, Routing, Settings, SkillLevel, State, Strategy, Target, Timestamp, Window,
    WindowPair,
};

// ----- helpers -------------------------------------------------------------------------------

/// 2026-01-01T00:00:00Z: "today" starts here, negative offsets are yesterday.
const T0: i64 = 1_767_225_600_000;

/// `seconds` after `T0`.
fn s(seconds: i64) -> Timestamp {
    Timestamp::from_millis(T0 + seconds * 1000)
}

/// `millis` after `T0`.
fn ms(millis: i64) -> Timestamp {
    Timestamp::from_millis(T0 + millis)
}

fn aid(id: &str) -> AgentId {
    AgentId::parse(id).unwrap()
}

fn iid(id: &str) -> InteractionId {
    InteractionId::parse(id).unwrap()
}

fn qn(name: &str) -> QueueName {
    QueueName::parse(name).unwrap()
}

fn to_queue(name: &str) -> Target {
    Target::Queue(qn(name))
}

fn skills(pairs: &[(&str, i64)]) -> BTreeMap<String, SkillLevel> {
    pairs
        .iter()
        .map(|(skill, level)| (skill.to_string(), SkillLevel::parse(*level).unwrap()))
        .collect()
}

fn per_channel(pairs: &[(&str, u32)]) -> Capacity {
    Capacity::PerChannel(pairs.iter().map(|(c, n)| (c.to_string(), *n)).collect())
}

/// A queue with the contract's defaults (offer 20 s, wrap-up 10 s, service level 20 s).
fn queue(name: &str, required: &[(&str, i64)], strategy: Strategy) -> QueueConfig {
    let mut config = QueueConfig::new(qn(name));
    config.skills = skills(required);
    config.strategy = strategy;
    config
}

fn routing(strategy: Strategy, eligible: u32, reason: &str) -> Routing {
    Routing {
        strategy: Some(strategy),
        eligible,
        reason: reason.to_owned(),
    }
}

// Expected events.

fn queued(id: &str, queue: &str, at: Timestamp, requeued: bool) -> Event {
    Event::InteractionQueued {
        id: iid(id),
        target: to_queue(queue),
        at,
        requeued,
    }
}

/// An offer from `queue` made at `at`, open for `timeout_s`.
fn offered(
    id: &str,
    agent: &str,
    queue: &str,
    at: Timestamp,
    timeout_s: u64,
    routing: Routing,
) -> Event {
    Event::InteractionOffered {
        id: iid(id),
        agent: aid(agent),
        target: to_queue(queue),
        expires_at: at.plus_seconds(timeout_s),
        at,
        routing,
    }
}

fn revoked(id: &str, agent: &str, reason: OfferEndReason, at: Timestamp) -> Event {
    Event::OfferRevoked {
        id: iid(id),
        agent: aid(agent),
        reason,
        at,
    }
}

fn rejected(id: &str, agent: &str, at: Timestamp) -> Event {
    Event::InteractionRejected {
        id: iid(id),
        agent: aid(agent),
        at,
    }
}

fn accepted(id: &str, agent: &str, at: Timestamp) -> Event {
    Event::InteractionAccepted {
        id: iid(id),
        agent: aid(agent),
        at,
    }
}

fn ended(id: &str, agent: &str, wrap_up_until: Option<Timestamp>, at: Timestamp) -> Event {
    Event::InteractionEnded {
        id: iid(id),
        agent: aid(agent),
        wrap_up_until,
        at,
    }
}

fn abandoned(id: &str, at: Timestamp) -> Event {
    Event::InteractionAbandoned { id: iid(id), at }
}

fn timed_out(id: &str, at: Timestamp) -> Event {
    Event::InteractionTimedOut { id: iid(id), at }
}

/// Completed by the agent (with the disposition the harness sends) or by the wrap-up running out.
fn completed(id: &str, agent: &str, at: Timestamp, wrap_up_expired: bool) -> Event {
    let (disposition, notes) = if wrap_up_expired {
        (None, None)
    } else {
        (Some("resolved".to_owned()), Some("done".to_owned()))
    };
    Event::InteractionCompleted {
        id: iid(id),
        agent: aid(agent),
        disposition,
        notes,
        at,
        wrap_up_expired,
    }
}

fn presence_changed(
    agent: &str,
    status: PresenceStatus,
    reason: Option<&str>,
    source: PresenceSource,
    at: Timestamp,
) -> Event {
    Event::PresenceChanged {
        agent: aid(agent),
        presence: Presence {
            status,
            reason: reason.map(str::to_owned),
            source,
            since: at,
        },
    }
}

fn available_by_desktop(agent: &str, at: Timestamp) -> Event {
    presence_changed(
        agent,
        PresenceStatus::Available,
        None,
        PresenceSource::Desktop,
        at,
    )
}

fn away_missed_offers(agent: &str, at: Timestamp) -> Event {
    presence_changed(
        agent,
        PresenceStatus::Away,
        Some("missed_offers"),
        PresenceSource::System,
        at,
    )
}

/// The state machine with the log of every event it appended, as the server keeps it.
struct Centre {
    state: State,
    log: Vec<Event>,
}

impl Centre {
    fn new() -> Centre {
        Centre::with(Settings::default())
    }

    fn with(settings: Settings) -> Centre {
        Centre {
            state: State::new(settings),
            log: Vec::new(),
        }
    }

    /// Executes a command that must succeed; returns its events.
    fn run(&mut self, command: Command, now: Timestamp) -> Vec<Event> {
        let events = self
            .state
            .execute(command.clone(), now)
            .unwrap_or_else(|e| panic!("{command:?} was refused: {e}"));
        self.log.extend(events.iter().cloned());
        events
    }

    /// Executes a command that must succeed; returns its events with their recipients.
    fn run_with_recipients(
        &mut self,
        command: Command,
        now: Timestamp,
    ) -> Vec<(Event, Vec<AgentId>)> {
        let out = self
            .state
            .execute_with_recipients(command.clone(), now)
            .unwrap_or_else(|e| panic!("{command:?} was refused: {e}"));
        self.log.extend(out.iter().map(|(e, _)| e.clone()));
        out
    }

    fn refused(&mut self, command: Command, now: Timestamp) -> CommandError {
        match self.state.execute(command.clone(), now) {
            Err(error) => error,
            Ok(events) => panic!("{command:?} should have been refused, emitted {events:?}"),
        }
    }

    fn upsert_queue(&mut self, config: QueueConfig, now: Timestamp) {
        let events = self.run(
            Command::UpsertQueue {
                config: config.clone(),
            },
            now,
        );
        assert_eq!(
            events,
            vec![Event::QueueUpserted {
                config,
                created: true,
                at: now
            }]
        );
    }

    fn add_agent(
        &mut self,
        id: &str,
        agent_skills: &[(&str, i64)],
        capacity: Capacity,
        now: Timestamp,
    ) {
        let profile = profile(id, agent_skills, capacity);
        let events = self.run(Command::UpsertAgent { profile }, now);
        assert_eq!(
            events.iter().map(Event::type_name).collect::<Vec<_>>(),
            ["agent.created"]
        );
    }

    fn presence(
        &mut self,
        id: &str,
        status: PresenceStatus,
        source: PresenceSource,
        now: Timestamp,
    ) -> Vec<Event> {
        self.run(
            Command::SetPresence {
                agent: aid(id),
                status,
                reason: None,
                source,
            },
            now,
        )
    }

    fn available(&mut self, id: &str, now: Timestamp) -> Vec<Event> {
        self.presence(id, PresenceStatus::Available, PresenceSource::Desktop, now)
    }

    fn away(&mut self, id: &str, now: Timestamp) -> Vec<Event> {
        self.presence(id, PresenceStatus::Away, PresenceSource::Desktop, now)
    }

    /// An available agent with a total capacity, created and made available at `now`.
    fn agent_ready(
        &mut self,
        id: &str,
        agent_skills: &[(&str, i64)],
        capacity: u32,
        now: Timestamp,
    ) {
        self.add_agent(id, agent_skills, Capacity::Total(capacity), now);
        assert_eq!(self.available(id, now), vec![available_by_desktop(id, now)]);
    }

    /// A voice call of priority 0 to `queue`; returns the events after `interaction.created`.
    fn call(&mut self, id: &str, queue: &str, now: Timestamp) -> Vec<Event> {
        self.call_with(id, queue, "voice", 0, now)
    }

    fn call_with(
        &mut self,
        id: &str,
        queue: &str,
        channel: &str,
        priority: i32,
        now: Timestamp,
    ) -> Vec<Event> {
        let spec = spec(id, to_queue(queue), channel, priority, now);
        let mut events = self.run(Command::CreateInteraction { spec: spec.clone() }, now);
        assert_eq!(
            events.first(),
            Some(&Event::InteractionCreated { spec: spec.into() })
        );
        events.remove(0);
        events
    }

    fn accept(&mut self, id: &str, agent: &str, now: Timestamp) -> Vec<Event> {
        self.run(
            Command::Accept {
                id: iid(id),
                agent: aid(agent),
            },
            now,
        )
    }

    fn reject(&mut self, id: &str, agent: &str, now: Timestamp) -> Vec<Event> {
        self.run(
            Command::Reject {
                id: iid(id),
                agent: aid(agent),
            },
            now,
        )
    }

    fn complete(&mut self, id: &str, agent: &str, now: Timestamp) -> Vec<Event> {
        self.run(
            Command::Complete {
                id: iid(id),
                agent: aid(agent),
                disposition: Some("resolved".to_owned()),
                notes: Some("done".to_owned()),
            },
            now,
        )
    }

    fn hangup(&mut self, id: &str, now: Timestamp) -> Vec<Event> {
        self.run(Command::Hangup { id: iid(id) }, now)
    }

    fn tick(&mut self, now: Timestamp) -> Vec<Event> {
        self.run(Command::Tick, now)
    }

    fn interaction(&self, id: &str) -> &Interaction {
        self.state
            .interaction(&iid(id))
            .expect("interaction exists")
    }

    fn agent(&self, id: &str) -> &Agent {
        self.state.agent(&aid(id)).expect("agent exists")
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.state.position(&iid(id))
    }

    /// Ids of the callers waiting in `queue`, in the order `waiting_in` gives.
    fn waiting(&self, queue: &str) -> Vec<String> {
        let name = qn(queue);
        self.state
            .waiting_in(&name)
            .map(|i| i.spec.id.to_string())
            .collect()
    }
}

fn profile(id: &str, agent_skills: &[(&str, i64)], capacity: Capacity) -> AgentProfile {
    AgentProfile {
        id: aid(id),
        name: format!("Agent {id}"),
        address: Some(format!("sip:{id}@pbx.example.com")),
        skills: skills(agent_skills),
        capacity,
    }
}

fn spec(id: &str, target: Target, channel: &str, priority: i32, now: Timestamp) -> InteractionSpec {
    InteractionSpec {
        id: iid(id),
        caller: Some("+15551234567".to_owned()),
        dialed: Some("+18005550100".to_owned()),
        channel: channel.to_owned(),
        call_id: Some(format!("call-{id}")),
        context: r#"{"account":"42"}"#.to_owned(),
        target,
        fallback: None,
        priority,
        max_wait_s: None,
        enrichment: Vec::new(),
        created_by: Some("main-ivr".to_owned()),
        created_at: now,
    }
}

// ----- queue management ----------------------------------------------------------------------

#[test]
fn upsert_queue_emits_created_then_updated_then_nothing_for_an_identical_config_and_delete_is_refused_while_callers_wait(
) {
    let mut cc = Centre::new();
    let billing = queue("billing", &[("billing", 3)], Strategy::LongestIdle);
    cc.upsert_queue(billing.clone(), s(0));
    assert!(cc
        .run(
            Command::UpsertQueue {
                config: billing.clone()
            },
            s(1)
        )
        .is_empty());
    let mut changed = billing.clone();
    changed.offer_timeout_s = 30;
    assert_eq!(
        cc.run(
            Command::UpsertQueue {
                config: changed.clone()
            },
            s(2)
        ),
        vec![Event::QueueUpserted {
            config: changed.clone(),
            created: false,
            at: s(2)
        }]
    );
    assert_eq!(cc.state.queue(&qn("billing")), Some(&changed));

    // An overflow must exist; a queue cannot overflow into itself; steps only relax.
    let mut bad = queue("sales", &[], Strategy::RoundRobin);
    bad.overflow = Some(qn("nowhere"));
    assert_eq!(
        cc.refused(
            Command::UpsertQueue {
                config: bad.clone()
            },
            s(3)
        ),
        CommandError::UnknownOverflowQueue(qn("nowhere"))
    );
    bad.overflow = Some(qn("sales"));
    assert_eq!(
        cc.refused(
            Command::UpsertQueue {
                config: bad.clone()
            },
            s(3)
        ),
        CommandError::InvalidQueue(QueueConfigError::OverflowToItself)
    );
    let mut tightening = queue("sales", &[("sales", 2)], Strategy::RoundRobin);
    tightening.steps = vec![EscalationStep {
        after_s: 10,
        skills: skills(&[("sales", 4)]),
    }];
    assert_eq!(
        cc.refused(Command::UpsertQueue { config: tightening }, s(3)),
        CommandError::InvalidQueue(QueueConfigError::StepTightens { index: 0 })
    );
    assert!(cc.state.queue(&qn("sales")).is_none());

    // Deleting is refused while a caller waits, allowed once it is gone.
    assert_eq!(
        cc.call("c1", "billing", s(4)),
        vec![queued("c1", "billing", s(4), false)]
    );
    assert_eq!(
        cc.refused(
            Command::DeleteQueue {
                name: qn("billing")
            },
            s(5)
        ),
        CommandError::QueueInUse(qn("billing"))
    );
    assert_eq!(cc.hangup("c1", s(6)), vec![abandoned("c1", s(6))]);
    assert_eq!(
        cc.run(
            Command::DeleteQueue {
                name: qn("billing")
            },
            s(7)
        ),
        vec![Event::QueueDeleted {
            name: qn("billing"),
            at: s(7)
        }]
    );
    assert_eq!(
        cc.refused(
            Command::CreateInteraction {
                spec: spec("c2", to_queue("billing"), "voice", 0, s(8))
            },
            s(8)
        ),
        CommandError::UnknownTargetQueue("billing".to_owned())
    );
    assert_eq!(
        cc.refused(
            Command::DeleteQueue {
                name: qn("billing")
            },
            s(9)
        ),
        CommandError::UnknownQueue(qn("billing"))
    );
}

/// The agent offered to by the first `interaction.offered` of `events`.
fn offered_agent(events: &[Event]) -> Option<AgentId> {
    events.iter().find_map(|event| match event {
        Event::InteractionOffered { agent, .. } => Some(agent.clone()),
        _ => None,
    })
}

#[test]
fn a_queue_created_after_another_was_deleted_routes_only_to_its_own_members_and_the_deleted_one_comes_back_whole(
) {
    let mut cc = Centre::new();
    cc.upsert_queue(
        queue("billing", &[("billing", 3)], Strategy::LongestIdle),
        s(0),
    );
    cc.upsert_queue(
        queue("support", &[("support", 3)], Strategy::RoundRobin),
        s(0),
    );
    cc.agent_ready("alice", &[("billing", 5)], 1, s(1));
    cc.agent_ready("bob", &[("support", 5)], 1, s(2));
    cc.run(
        Command::DeleteQueue {
            name: qn("billing"),
        },
        s(3),
    );
    // Takes the deleted queue's place in the state's tables.
    cc.upsert_queue(queue("sales", &[("sales", 3)], Strategy::MostSkilled), s(4));
    cc.agent_ready("carol", &[("sales", 4)], 1, s(5));

    let members = |cc: &Centre, name: &str| -> Vec<String> {
        cc.state
            .queue_members(&qn(name))
            .map(|agent| agent.profile.id.as_str().to_owned())
            .collect()
    };
    assert_eq!(members(&cc, "sales"), ["carol"]);
    assert_eq!(members(&cc, "support"), ["bob"]);
    assert_eq!(members(&cc, "billing"), Vec::<String>::new());
    assert_eq!(cc.state.member_counts(&qn("sales")).available, 1);

    // alice served only the deleted queue: she is offered nothing from the new one.
    assert_eq!(
        offered_agent(&cc.call("c1", "sales", s(6))),
        Some(aid("carol"))
    );
    assert_eq!(offered_agent(&cc.call("c2", "sales", s(7))), None);
    assert_eq!(
        offered_agent(&cc.call("c3", "support", s(8))),
        Some(aid("bob"))
    );

    // billing again: alice is its member once more, and routable.
    cc.upsert_queue(
        queue("billing", &[("billing", 3)], Strategy::LongestIdle),
        s(9),
    );
    assert_eq!(members(&cc, "billing"), ["alice"]);
    assert_eq!(
        offered_agent(&cc.call("c4", "billing", s(10))),
        Some(aid("alice"))
    );
}

// ----- strategies ----------------------------------------------------------------------------

#[test]
fn longest_idle_offers_the_agent_idle_the_longest_and_idle_since_moves_on_when_it_completes() {
    let mut cc = Centre::new();
    cc.upsert_queue(queue("support", &[], Strategy::LongestIdle), s(0));
    cc.agent_ready("alice", &[], 1, s(1));
    cc.agent_ready("bob", &[], 1, s(2));
    cc.agent_ready("carol", &[], 1, s(3));

    assert_eq!(
        cc.call("c1", "support", s(60)),
        vec![
            queued("c1", "support", s(60), false),
            offered(
                "c1",
                "alice",
                "support",
                s(60),
                20,
                routing(Strategy::LongestIdle, 3, "idle the longest: 59 s")
            ),
        ]
    );
    assert_eq!(
        cc.accept("c1", "alice", s(61)),
        vec![accepted("c1", "alice", s(61))]
    );
    assert_eq!(
        cc.agent("alice").idle_since,
        s(1),
        "an offer or an accept does not move it"
    );
    assert_eq!(
        cc.hangup("c1", s(70)),
        vec![ended("c1", "alice", Some(s(80)), s(70))]
    );
    assert_eq!(
        cc.complete("c1", "alice", s(75)),
        vec![completed("c1", "alice", s(75), false)]
    );
    assert_eq!(cc.agent("alice").idle_since, s(75));

    // Alice is now the most recently idle: bob, then carol, then alice.
    assert_eq!(
        cc.call("c2", "support", s(90)),
        vec![
            queued("c2", "support", s(90), false),
            offered(
                "c2",
                "bob",
                "support",
                s(90),
                20,
                routing(Strategy::LongestIdle, 3, "idle the longest: 88 s")
            ),
        ]
    );
    assert_eq!(
        cc.call("c3", "support", s(91)),
        vec![
            queued("c3", "support", s(91), false),
            offered(
                "c3",
                "carol",
                "support",
                s(91),
                20,
                routing(Strategy::LongestIdle, 2, "idle the longest: 88 s")
            ),
        ]
    );
    assert_eq!(
        cc.call("c4", "support", s(92)),
        vec![
            queued("c4", "support", s(92), false),
            offered(
                "c4",
                "alice",
                "support",
                s(92),
                20,
                routing(Strategy::LongestIdle, 1, "idle the longest: 17 s")
            ),
        ]
    );
    let c2 = cc.interaction("c2");
    assert_eq!(c2.state, InteractionState::Offered);
    assert_eq!(c2.agent, Some(aid("bob")));
    assert_eq!(c2.current_target, to_queue("support"));
    assert_eq!(c2.offer_expires_at, Some(s(110)));
}

#[test]
fn round_robin_rotates_over_three_agents_across_six_callers_regardless_of_who_is_idle_longest() {
    let mut cc = Centre::new();
    cc.upsert_queue(queue("sales", &[], Strategy::RoundRobin), s(0));
    cc.agent_ready("ann", &[], 1, s(1));
    cc.agent_ready("ben", &[], 1, s(2));
    cc.agent_ready("cat", &[], 1, s(3));

    // Nobody offered yet: ties broken by longest idle.
    assert_eq!(
        cc.call("c1", "sales", s(10)),
        vec![
            queued("c1", "sales", s(10), false),
            offered(
                "c1",
                "ann",
                "sales",
                s(10),
                20,
                routing(
                    Strategy::RoundRobin,
                    3,
                    "next in rotation: last offered a caller never"
                )
            ),
        ]
    );
    assert_eq!(
        cc.call("c2", "sales", s(11)),
        vec![
            queued("c2", "sales", s(11), false),
            offered(
                "c2",
                "ben",
                "sales",
                s(11),
                20,
                routing(
                    Strategy::RoundRobin,
                    2,
                    "next in rotation: last offered a caller never"
                )
            ),
        ]
    );
    assert_eq!(
        cc.call("c3", "sales", s(12)),
        vec![
            queued("c3", "sales", s(12), false),
            offered(
                "c3",
                "cat",
                "sales",
                s(12),
                20,
                routing(
                    Strategy::RoundRobin,
                    1,
                    "next in rotation: last offered a caller never"
                )
            ),
        ]
    );
    for (id, agent) in [("c1", "ann"), ("c2", "ben"), ("c3", "cat")] {
        cc.accept(id, agent, s(13));
    }
    // They finish in reverse order, so cat is idle the longest and ann the shortest...
    cc.complete("c3", "cat", s(20));
    cc.complete("c2", "ben", s(21));
    cc.complete("c1", "ann", s(22));

    // ...but the rotation goes on with ann, ben, cat.
    assert_eq!(
        cc.call("c4", "sales", s(30)),
        vec![
            queued("c4", "sales", s(30), false),
            offered(
                "c4",
                "ann",
                "sales",
                s(30),
                20,
                routing(
                    Strategy::RoundRobin,
                    3,
                    "next in rotation: last offered a caller 2 offers ago"
                )
            ),
        ]
    );
    assert_eq!(
        cc.call("c5", "sales", s(31)),
        vec![
            queued("c5", "sales", s(31), false),
            offered(
                "c5",
                "ben",
                "sales",
                s(31),
                20,
                routing(
                    Strategy::RoundRobin,
                    2,
                    "next in rotation: last offered a caller 2 offers ago"
                )
            ),
        ]
    );
    assert_eq!(
        cc.call("c6", "sales", s(32)),
        vec![
            queued("c6", "sales", s(32), false),
            offered(
                "c6",
                "cat",
                "sales",
                s(32),
                20,
                routing(
                    Strategy::RoundRobin,
                    1,
                    "next in rotation: last offered a caller 2 offers ago"
                )
            ),
        ]
    );
    assert_eq!(
        [
            cc.agent("ann").last_routed,
            cc.agent("ben").last_routed,
            cc.agent("cat").last_routed
        ],
        [4, 5, 6]
    );
}

#[test]
fn least_occupied_offers_the_agent_with_fewest_accepted_today_and_the_utc_day_boundary_resets_the_counts(
) {
    let mut cc = Centre::new();
    cc.upsert_queue(queue("care", &[], Strategy::LeastOccupied), s(-7300));
    // Yesterday 22:00: alice available a second before bob.
    cc.agent_ready("alice", &[], 1, s(-7200));
    cc.agent_ready("bob", &[], 1, s(-7199));

    // 22:10: nobody handled anything, the longest idle wins.
    assert_eq!(
        cc.call("c1", "care", s(-6600)),
        vec![
            queued("c1", "care", s(-6600), false),
            offered(
                "c1",
                "alice",
                "care",
                s(-6600),
                20,
                routing(
                    Strategy::LeastOccupied,
                    2,
                    "fewest handled today: 0, idle 600 s"
                )
            ),
        ]
    );
    cc.accept("c1", "alice", s(-6600));
    cc.complete("c1", "alice", s(-6540));
    let yesterday = s(-1).millis().div_euclid(86_400_000);
    assert_eq!(cc.agent("alice").handled, (yesterday, 1));

    // 22:20: bob has handled fewer.
    assert_eq!(
        cc.call("c2", "care", s(-6000)),
        vec![
            queued("c2", "care", s(-6000), false),
            offered(
                "c2",
                "bob",
                "care",
                s(-6000),
                20,
                routing(
                    Strategy::LeastOccupied,
                    2,
                    "fewest handled today: 0, idle 1199 s"
                )
            ),
        ]
    );
    cc.accept("c2", "bob", s(-6000));
    // 22:30: bob is engaged, so alice takes her second.
    assert_eq!(
        cc.call("c3", "care", s(-5400)),
        vec![
            queued("c3", "care", s(-5400), false),
            offered(
                "c3",
                "alice",
                "care",
                s(-5400),
                20,
                routing(
                    Strategy::LeastOccupied,
                    1,
                    "fewest handled today: 1, idle 1140 s"
                )
            ),
        ]
    );
    cc.accept("c3", "alice", s(-5400));
    cc.complete("c3", "alice", s(-5340));
    cc.complete("c2", "bob", s(-5100));
    assert_eq!(cc.agent("alice").handled, (yesterday, 2));
    assert_eq!(cc.agent("bob").handled, (yesterday, 1));

    // 23:50: alice is idle longer (since 22:31 against 22:35) but bob handled fewer today.
    assert_eq!(
        cc.call("c4", "care", s(-600)),
        vec![
            queued("c4", "care", s(-600), false),
            offered(
                "c4",
                "bob",
                "care",
                s(-600),
                20,
                routing(
                    Strategy::LeastOccupied,
                    2,
                    "fewest handled today: 1, idle 4500 s"
                )
            ),
        ]
    );
    // The caller hangs up: nothing handled, bob idle again since 23:50.
    assert_eq!(
        cc.hangup("c4", s(-590)),
        vec![
            revoked("c4", "bob", OfferEndReason::Abandoned, s(-590)),
            abandoned("c4", s(-590))
        ]
    );

    // 00:10 today: both handled 0 today, so the longest idle, alice, wins again.
    assert_eq!(
        cc.call("c5", "care", s(600)),
        vec![
            queued("c5", "care", s(600), false),
            offered(
                "c5",
                "alice",
                "care",
                s(600),
                20,
                routing(
                    Strategy::LeastOccupied,
                    2,
                    "fewest handled today: 0, idle 5940 s"
                )
            ),
        ]
    );
    cc.accept("c5", "alice", s(600));
    cc.complete("c5", "alice", s(660));
    let today = s(0).millis().div_euclid(86_400_000);
    assert_eq!(today, yesterday + 1);
    assert_eq!(cc.agent("alice").handled, (today, 1));
    assert_eq!(
        cc.call("c6", "care", s(700)),
        vec![
            queued("c6", "care", s(700), false),
            offered(
                "c6",
                "bob",
                "care",
                s(700),
                20,
                routing(
                    Strategy::LeastOccupied,
                    2,
                    "fewest handled today: 0, idle 1290 s"
                )
            ),
        ]
    );
}

/// A calendar whose day starts at 22:00 UTC (a zone two hours ahead of UTC).
#[derive(Debug)]
struct TwoHoursAhead;

impl Calendar for TwoHoursAhead {
    fn day_of(&self, at: Timestamp) -> i64 {
        (at.millis() + 2 * 3_600_000).div_euclid(86_400_000)
    }
}

#[test]
fn least_occupied_counts_today_in_the_configured_calendar_not_in_utc() {
    let mut cc = Centre::with(Settings {
        calendar: Arc::new(TwoHoursAhead),
        ..Settings::default()
    });
    cc.upsert_queue(queue("care", &[], Strategy::LeastOccupied), s(-10_000));
    cc.agent_ready("alice", &[], 1, s(-9000));
    cc.agent_ready("bob", &[], 1, s(-8999));
    // 21:50 UTC: alice handles one.
    cc.call("c1", "care", s(-7800));
    cc.accept("c1", "alice", s(-7800));
    cc.complete("c1", "alice", s(-7790));
    // 21:55 UTC, same local day: bob has handled fewer.
    assert_eq!(
        cc.call("c2", "care", s(-7500)),
        vec![
            queued("c2", "care", s(-7500), false),
            offered(
                "c2",
                "bob",
                "care",
                s(-7500),
                20,
                routing(
                    Strategy::LeastOccupied,
                    2,
                    "fewest handled today: 0, idle 1499 s"
                )
            ),
        ]
    );
    cc.hangup("c2", s(-7490));
    // 22:05 UTC is a new local day although still the same UTC day: both start from 0 and
    // alice, idle since 21:50:10 against bob's 21:55:10, wins.
    assert_eq!(
        cc.call("c3", "care", s(-6900)),
        vec![
            queued("c3", "care", s(-6900), false),
            offered(
                "c3",
                "alice",
                "care",
                s(-6900),
                20,
                routing(
                    Strategy::LeastOccupied,
                    2,
                    "fewest handled today: 0, idle 890 s"
                )
            ),
        ]
    );
}

#[test]
fn most_skilled_offers_the_highest_summed_level_of_the_queues_skills_and_ties_go_to_the_longest_idle(
) {
    let mut cc = Centre::new();
    cc.upsert_queue(
        queue(
            "billing-es",
            &[("billing", 3), ("spanish", 2)],
            Strategy::MostSkilled,
        ),
        s(0),
    );
    cc.agent_ready("ann", &[("billing", 5), ("spanish", 2)], 1, s(0)); // 7
    cc.agent_ready("cat", &[("billing", 10)], 1, s(0)); // no spanish: not eligible
    cc.agent_ready(
        "dan",
        &[("billing", 6), ("spanish", 2), ("french", 9)],
        1,
        s(1),
    ); // 8
    cc.agent_ready("ben", &[("billing", 4), ("spanish", 4)], 1, s(2)); // 8

    assert_eq!(
        cc.call("c1", "billing-es", s(10)),
        vec![
            queued("c1", "billing-es", s(10), false),
            offered(
                "c1",
                "dan",
                "billing-es",
                s(10),
                20,
                routing(
                    Strategy::MostSkilled,
                    3,
                    "highest summed skill level: 8 (billing 6, spanish 2), idle 9 s"
                )
            ),
        ]
    );
    assert_eq!(
        cc.call("c2", "billing-es", s(11)),
        vec![
            queued("c2", "billing-es", s(11), false),
            offered(
                "c2",
                "ben",
                "billing-es",
                s(11),
                20,
                routing(
                    Strategy::MostSkilled,
                    2,
                    "highest summed skill level: 8 (billing 4, spanish 4), idle 9 s"
                )
            ),
        ]
    );
    assert_eq!(
        cc.call("c3", "billing-es", s(12)),
        vec![
            queued("c3", "billing-es", s(12), false),
            offered(
                "c3",
                "ann",
                "billing-es",
                s(12),
                20,
                routing(
                    Strategy::MostSkilled,
                    1,
                    "highest summed skill level: 7 (billing 5, spanish 2), idle 12 s"
                )
            ),
        ]
    );
    // Cat is idle and has billing 10, but no spanish.
    assert_eq!(
        cc.call("c4", "billing-es", s(13)),
        vec![queued("c4", "billing-es", s(13), false)]
    );
    assert_eq!(cc.position("c4"), Some(1));
    assert_eq!(cc.state.activity(&aid("cat")), Activity::Idle);
}

#[test]
fn ring_all_offers_every_eligible_available_agent_at_once_and_the_first_accept_revokes_the_others_as_answered_elsewhere(
) {
    let mut cc = Centre::new();
    cc.upsert_queue(queue("hotline", &[("hotline", 1)], Strategy::RingAll), s(0));
    cc.agent_ready("alice", &[("hotline", 1)], 1, s(0));
    cc.agent_ready("bob", &[("hotline", 3)], 1, s(0));
    cc.agent_ready("carol", &[("hotline", 1)], 1, s(0));
    cc.agent_ready("dave", &[], 1, s(0)); // not eligible
    cc.add_agent("erin", &[("hotline", 9)], Capacity::Total(1), s(0)); // offline

    let ring = routing(Strategy::RingAll, 3, "rings all 3 eligible agents");
    assert_eq!(
        cc.call("c1", "hotline", s(10)),
        vec![
            queued("c1", "hotline", s(10), false),
            offered("c1", "alice", "hotline", s(10), 20, ring.clone()),
            offered("c1", "bob", "hotline", s(10), 20, ring.clone()),
            offered("c1", "carol", "hotline", s(10), 20, ring.clone()),
        ]
    );
    let c1 = cc.interaction("c1");
    assert_eq!(c1.state, InteractionState::Offered);
    assert_eq!(c1.agent, None, "no single agent while it rings");
    assert_eq!(
        c1.offered_to
            .iter()
            .map(AgentId::as_str)
            .collect::<Vec<_>>(),
        ["alice", "bob", "carol"]
    );
    assert_eq!(c1.offer_expires_at, Some(s(30)));
    for agent in ["alice", "bob", "carol"] {
        assert_eq!(cc.state.activity(&aid(agent)), Activity::Offered, "{agent}");
    }
    assert_eq!(cc.state.activity(&aid("dave")), Activity::Idle);

    assert_eq!(
        cc.accept("c1", "bob", s(15)),
        vec![
            revoked("c1", "alice", OfferEndReason::AnsweredElsewhere, s(15)),
            revoked("c1", "carol", OfferEndReason::AnsweredElsewhere, s(15)),
            accepted("c1", "bob", s(15)),
        ]
    );
    let c1 = cc.interaction("c1");
    assert_eq!(c1.state, InteractionState::Accepted);
    assert_eq!(c1.agent, Some(aid("bob")));
    assert!(c1.offered_to.is_empty());
    assert_eq!(cc.state.activity(&aid("alice")), Activity::Idle);
    assert_eq!(cc.state.activity(&aid("carol")), Activity::Idle);
    assert_eq!(cc.state.activity(&aid("bob")), Activity::Engaged);
    // Answered elsewhere is nobody's miss.
    assert_eq!(cc.agent("alice").missed_in_a_row, 0);
    assert_eq!(cc.agent("carol").missed_in_a_row, 0);
    assert_eq!(cc.state.next_deadline(), None);
    assert!(cc.tick(s(30)).is_empty());

    // The next caller rings only those with room; a late accept of the old one is refused.
    let ring = routing(Strategy::RingAll, 2, "rings all 2 eligible agents");
    assert_eq!(
        cc.call("c2", "hotline", s(40)),
        vec![
            queued("c2", "hotline", s(40), false),
            offered("c2", "alice", "hotline", s(40), 20, ring.clone()),
            offered("c2", "carol", "hotline", s(40), 20, ring.clone()),
        ]
    );
    assert_eq!(
        cc.refused(
            Command::Accept {
                id: iid("c1"),
                agent: aid("alice")
            },
            s(41)
        ),
        CommandError::WrongState {
            action: "accept",
            state: InteractionState::Accepted
        }
    );
    // One agent rejecting leaves the others ringing.
    assert_eq!(
        cc.reject("c2", "carol", s(42)),
        vec![rejected("c2", "carol", s(42))]
    );
    let c2 = cc.interaction("c2");
    assert_eq!(c2.state, InteractionState::Offered);
    assert_eq!(c2.agent, Some(aid("alice")));
    assert_eq!(cc.state.activity(&aid("carol")), Activity::Idle);
    // The caller hanging up revokes what still rings.
    assert_eq!(
        cc.hangup("c2", s(43)),
        vec![
            revoked("c2", "alice", OfferEndReason::Abandoned, s(43)),
            abandoned("c2", s(43))
        ]
    );
}

#[test]
fn ring_all_events_about_one_agents_offer_are_for_that_agent_only() {
    let mut cc = Centre::new();
    cc.upsert_queue(queue("hotline", &[], Strategy::RingAll), s(0));
    cc.agent_ready("alice", &[], 1, s(0));
    cc.agent_ready("bob", &[], 1, s(0));
    cc.agent_ready("carol", &[], 1, s(0));
    let spec = spec("c1", to_queue("hotline"), "voice", 0, s(10));
    let ring = routing(Strategy::RingAll, 3, "rings all 3 eligible agents");
    assert_eq!(
        cc.run_with_recipients(Command::CreateInteraction { spec: spec.clone() }, s(10)),
        vec![
            (Event::InteractionCreated { spec: spec.into() }, vec![]),
            (queued("c1", "hotline", s(10), false), vec![]),
            (
                offered("c1", "alice", "hotline", s(10), 20, ring.clone()),
                vec![aid("alice")]
            ),
            (
                offered("c1", "bob", "hotline", s(10), 20, ring.clone()),
                vec![aid("bob")]
            ),
            (
                offered("c1", "carol", "hotline", s(10), 20, ring.clone()),
                vec![aid("carol")]
            ),
        ]
    );
    assert_eq!(
        cc.run_with_recipients(
            Command::Reject {
                id: iid("c1"),
                agent: aid("carol")
            },
            s(12)
        ),
        vec![(rejected("c1", "carol", s(12)), vec![aid("carol")])]
    );
    assert_eq!(
        cc.run_with_recipients(
            Command::Accept {
                id: iid("c1"),
                agent: aid("bob")
            },
            s(15)
        ),
        vec![
            (
                revoked("c1", "alice", OfferEndReason::AnsweredElsewhere, s(15)),
                vec![aid("alice")]
            ),
            (accepted("c1", "bob", s(15)), vec![aid("bob")]),
        ]
    );
}

#[test]
fn ring_all_timeout_revokes_every_offer_and_puts_the_caller_back_at_its_place_in_line() {
    // One miss is enough to set an agent away here, so nobody can be rung again at once.
    let mut cc = Centre::with(Settings {
        max_missed_offers: 1,
        ..Settings::default()
    });
    let mut hotline = queue("hotline", &[], Strategy::RingAll);
    hotline.offer_timeout_s = 15;
    cc.upsert_queue(hotline, s(0));
    cc.agent_ready("alice", &[], 1, s(0));
    cc.agent_ready("bob", &[], 1, s(0));
    cc.agent_ready("carol", &[], 1, s(0));
    cc.add_agent("dave", &[], Capacity::Total(1), s(0));
    let ring = routing(Strategy::RingAll, 3, "rings all 3 eligible agents");
    assert_eq!(
        cc.call("c1", "hotline", s(10)),
        vec![
            queued("c1", "hotline", s(10), false),
            offered("c1", "alice", "hotline", s(10), 15, ring.clone()),
            offered("c1", "bob", "hotline", s(10), 15, ring.clone()),
            offered("c1", "carol", "hotline", s(10), 15, ring.clone()),
        ]
    );
    assert_eq!(
        cc.call("c2", "hotline", s(11)),
        vec![queued("c2", "hotline", s(11), false)]
    );
    assert_eq!(cc.state.next_deadline(), Some(s(25)));
    assert!(cc.tick(ms(24_999)).is_empty());

    assert_eq!(
        cc.tick(s(25)),
        vec![
            revoked("c1", "alice", OfferEndReason::TimedOut, s(25)),
            revoked("c1", "bob", OfferEndReason::TimedOut, s(25)),
            revoked("c1", "carol", OfferEndReason::TimedOut, s(25)),
            queued("c1", "hotline", s(25), true),
            away_missed_offers("alice", s(25)),
            away_missed_offers("bob", s(25)),
            away_missed_offers("carol", s(25)),
        ]
    );
    let c1 = cc.interaction("c1");
    assert_eq!(c1.state, InteractionState::Queued);
    assert_eq!(c1.waiting_since, s(10), "it keeps its waiting time");
    assert_eq!(c1.offer_expires_at, None);
    assert_eq!(cc.position("c1"), Some(1), "ahead of c2, who came later");
    assert_eq!(cc.position("c2"), Some(2));
    assert_eq!(cc.waiting("hotline"), ["c1", "c2"]);
    assert_eq!(cc.state.next_deadline(), None);

    // The next agent to come along is rung alone, with the caller at the head.
    assert_eq!(
        cc.available("dave", s(30)),
        vec![
            available_by_desktop("dave", s(30)),
            offered(
                "c1",
                "dave",
                "hotline",
                s(30),
                15,
                routing(Strategy::RingAll, 1, "rings all 1 eligible agents")
            ),
        ]
    );
}

#[test]
fn ring_all_timeout_with_nobody_else_free_rings_the_same_agents_again_all_of_them() {
    let mut cc = Centre::with(Settings {
        max_missed_offers: 0,
        ..Settings::default()
    });
    cc.upsert_queue(queue("hotline", &[], Strategy::RingAll), s(0));
    cc.agent_ready("alice", &[], 1, s(0));
    cc.agent_ready("bob", &[], 1, s(0));
    cc.agent_ready("carol", &[], 1, s(0));
    cc.call("c1", "hotline", s(10));
    // All three missed it together; no other eligible agent has room, so all three ring again
    // (the contract: never straight back to the one who missed it unless no other has room).
    let ring = routing(Strategy::RingAll, 3, "rings all 3 eligible agents");
    assert_eq!(
        cc.tick(s(30)),
        vec![
            revoked("c1", "alice", OfferEndReason::TimedOut, s(30)),
            revoked("c1", "bob", OfferEndReason::TimedOut, s(30)),
            revoked("c1", "carol", OfferEndReason::TimedOut, s(30)),
            queued("c1", "hotline", s(30), true),
            offered("c1", "alice", "hotline", s(30), 20, ring.clone()),
            offered("c1", "bob", "hotline", s(30), 20, ring.clone()),
            offered("c1", "carol", "hotline", s(30), 20, ring.clone()),
        ]
    );
}

// ----- eligibility and escalation ------------------------------------------------------------

#[test]
fn only_agents_with_every_required_skill_at_least_at_its_level_are_offered_and_a_skill_upgrade_serves_the_waiting_caller(
) {
    let mut cc = Centre::new();
    cc.upsert_queue(
        queue("billing", &[("billing", 5)], Strategy::LongestIdle),
        s(0),
    );
    cc.agent_ready("low", &[("billing", 4)], 1, s(0)); // idle the longest, one level short
    cc.agent_ready("other", &[("sales", 10)], 1, s(0));
    cc.agent_ready("exact", &[("billing", 5)], 1, s(1));
    cc.agent_ready("high", &[("billing", 9)], 1, s(2));
    assert_eq!(
        cc.state
            .queue_members(&qn("billing"))
            .map(|a| a.profile.id.to_string())
            .collect::<Vec<_>>(),
        ["exact", "high"]
    );

    assert_eq!(
        cc.call("c1", "billing", s(10)),
        vec![
            queued("c1", "billing", s(10), false),
            offered(
                "c1",
                "exact",
                "billing",
                s(10),
                20,
                routing(Strategy::LongestIdle, 2, "idle the longest: 9 s")
            ),
        ]
    );
    assert_eq!(
        cc.call("c2", "billing", s(11)),
        vec![
            queued("c2", "billing", s(11), false),
            offered(
                "c2",
                "high",
                "billing",
                s(11),
                20,
                routing(Strategy::LongestIdle, 1, "idle the longest: 9 s")
            ),
        ]
    );
    assert_eq!(
        cc.call("c3", "billing", s(12)),
        vec![queued("c3", "billing", s(12), false)]
    );
    assert_eq!(cc.position("c3"), Some(1));

    // Raised to level 5, "low" serves the queue and gets the waiting caller at once.
    let upgraded = profile("low", &[("billing", 5)], Capacity::Total(1));
    assert_eq!(
        cc.run(
            Command::UpsertAgent {
                profile: upgraded.clone()
            },
            s(20)
        ),
        vec![
            Event::AgentUpdated {
                profile: upgraded,
                at: s(20)
            },
            offered(
                "c3",
                "low",
                "billing",
                s(20),
                20,
                routing(Strategy::LongestIdle, 1, "idle the longest: 20 s")
            ),
        ]
    );
    assert_eq!(cc.state.queue_members(&qn("billing")).count(), 3);
}

#[test]
fn an_escalation_step_offers_a_caller_nobody_qualifies_for_to_a_lower_skilled_agent_once_after_s_passed(
) {
    let mut cc = Centre::new();
    let mut billing = queue("billing", &[("billing", 5)], Strategy::LongestIdle);
    billing.steps = vec![
        EscalationStep {
            after_s: 30,
            skills: skills(&[("billing", 3)]),
        },
        EscalationStep {
            after_s: 90,
            skills: skills(&[]),
        },
    ];
    cc.upsert_queue(billing, s(0));
    cc.agent_ready("junior", &[("billing", 3)], 1, s(0));
    cc.agent_ready("trainee", &[("sales", 1)], 1, s(0));

    // Nobody meets billing 5: the caller waits although two agents are idle.
    assert_eq!(
        cc.call("c1", "billing", s(10)),
        vec![queued("c1", "billing", s(10), false)]
    );
    assert_eq!(cc.position("c1"), Some(1));
    assert_eq!(
        cc.state.next_deadline(),
        None,
        "a step is a wake-up, not a deadline"
    );
    assert_eq!(cc.state.next_wakeup(s(10)), Some(s(40)));
    assert!(cc.tick(ms(39_999)).is_empty());
    assert_eq!(cc.state.next_wakeup(ms(39_999)), Some(s(40)));

    // At 30 s of waiting billing 3 will do.
    assert_eq!(
        cc.tick(s(40)),
        vec![offered(
            "c1",
            "junior",
            "billing",
            s(40),
            20,
            routing(
                Strategy::LongestIdle,
                1,
                "idle the longest: 40 s; requirement relaxed to step 1 after 30 s waiting"
            )
        )]
    );
    assert_eq!(
        cc.state.next_wakeup(s(40)),
        Some(s(60)),
        "the offer's deadline"
    );

    // A second caller: junior is busy, so the first step helps nobody; the second takes anyone.
    assert_eq!(
        cc.call("c2", "billing", s(50)),
        vec![queued("c2", "billing", s(50), false)]
    );
    assert_eq!(cc.state.next_wakeup(s(50)), Some(s(60)));
    cc.accept("c1", "junior", s(55));
    assert_eq!(cc.state.next_wakeup(s(55)), Some(s(80)));
    assert!(cc.tick(s(80)).is_empty());
    assert_eq!(cc.state.next_wakeup(s(80)), Some(s(140)));
    assert_eq!(
        cc.tick(s(140)),
        vec![offered(
            "c2",
            "trainee",
            "billing",
            s(140),
            20,
            routing(
                Strategy::LongestIdle,
                1,
                "idle the longest: 140 s; requirement relaxed to step 2 after 90 s waiting"
            )
        )]
    );
    assert_eq!(cc.state.next_wakeup(s(140)), Some(s(160)));
}

#[test]
fn max_wait_s_with_an_overflow_queues_the_caller_in_the_overflow_queue_which_applies_its_own_max_wait(
) {
    let mut cc = Centre::new();
    let mut general = queue("general", &[], Strategy::LongestIdle);
    general.max_wait_s = Some(30);
    cc.upsert_queue(general, s(0));
    let mut billing = queue("billing", &[("billing", 5)], Strategy::LongestIdle);
    billing.max_wait_s = Some(60);
    billing.overflow = Some(qn("general"));
    cc.upsert_queue(billing, s(0));
    cc.agent_ready("gus", &[], 1, s(0));

    assert_eq!(
        cc.call("c1", "billing", s(10)),
        vec![queued("c1", "billing", s(10), false)]
    );
    assert_eq!(cc.state.next_deadline(), Some(s(70)));
    assert!(cc.tick(ms(69_999)).is_empty());
    assert_eq!(
        cc.tick(s(70)),
        vec![
            queued("c1", "general", s(70), false),
            offered(
                "c1",
                "gus",
                "general",
                s(70),
                20,
                routing(Strategy::LongestIdle, 1, "idle the longest: 70 s")
            ),
        ]
    );
    let c1 = cc.interaction("c1");
    assert_eq!(c1.current_target, to_queue("general"));
    assert_eq!(c1.entered_queue_at, Some(s(70)));

    // Gus is busy now: the next overflowed caller waits in general, then times out there.
    assert_eq!(
        cc.call("c2", "billing", s(20)),
        vec![queued("c2", "billing", s(20), false)]
    );
    assert_eq!(cc.tick(s(80)), vec![queued("c2", "general", s(80), false)]);
    assert_eq!(cc.position("c2"), Some(1));
    assert_eq!(cc.waiting("billing"), Vec::<String>::new());
    assert_eq!(cc.waiting("general"), ["c2"]);
    assert_eq!(cc.state.next_deadline(), Some(s(90)), "gus's offer of c1");
    cc.accept("c1", "gus", s(85));
    assert_eq!(cc.state.next_deadline(), Some(s(110)));
    assert_eq!(cc.tick(s(110)), vec![timed_out("c2", s(110))]);
    assert_eq!(cc.interaction("c2").state, InteractionState::TimedOut);
}

#[test]
fn max_wait_s_without_an_overflow_ends_the_caller_timed_out_and_frees_its_place() {
    let mut cc = Centre::new();
    let mut billing = queue("billing", &[], Strategy::LongestIdle);
    billing.max_wait_s = Some(60);
    cc.upsert_queue(billing, s(0));
    cc.add_agent("alice", &[], Capacity::Total(1), s(0));
    assert_eq!(
        cc.call("c1", "billing", s(10)),
        vec![queued("c1", "billing", s(10), false)]
    );
    assert_eq!(
        cc.call("c2", "billing", s(40)),
        vec![queued("c2", "billing", s(40), false)]
    );
    assert_eq!(cc.state.next_deadline(), Some(s(70)));
    assert!(cc.tick(ms(69_999)).is_empty());
    assert_eq!(cc.tick(s(70)), vec![timed_out("c1", s(70))]);
    let c1 = cc.interaction("c1");
    assert_eq!(c1.state, InteractionState::TimedOut);
    assert!(c1.state.is_terminal());
    assert_eq!(cc.position("c1"), None);
    assert_eq!(cc.position("c2"), Some(1));
    assert_eq!(cc.state.next_deadline(), Some(s(100)));
    // A timed-out caller cannot be hung up any more; alice coming back gets c2 only.
    assert_eq!(
        cc.refused(Command::Hangup { id: iid("c1") }, s(71)),
        CommandError::WrongState {
            action: "hang up",
            state: InteractionState::TimedOut
        }
    );
    assert_eq!(
        cc.available("alice", s(85)),
        vec![
            available_by_desktop("alice", s(85)),
            offered(
                "c2",
                "alice",
                "billing",
                s(85),
                20,
                routing(Strategy::LongestIdle, 1, "idle the longest: 0 s")
            ),
        ]
    );
    // An offered caller is not timed out by max_wait_s (c2's would be at 100 s).
    assert_eq!(cc.state.next_deadline(), Some(s(105)));
    assert!(cc.tick(s(100)).is_empty());
    assert_eq!(cc.interaction("c2").state, InteractionState::Offered);
    assert_eq!(
        cc.accept("c2", "alice", s(101)),
        vec![accepted("c2", "alice", s(101))]
    );
}

#[test]
fn a_caller_requeued_after_its_max_wait_passed_is_timed_out_by_the_same_tick() {
    let mut cc = Centre::with(Settings {
        max_missed_offers: 1,
        ..Settings::default()
    });
    let mut billing = queue("billing", &[], Strategy::LongestIdle);
    billing.max_wait_s = Some(30);
    cc.upsert_queue(billing, s(0));
    cc.add_agent("alice", &[], Capacity::Total(1), s(0));
    cc.call("c1", "billing", s(0));
    cc.available("alice", s(25)); // offered until 45 s; the max wait would be at 30 s
    assert_eq!(
        cc.tick(s(45)),
        vec![
            revoked("c1", "alice", OfferEndReason::TimedOut, s(45)),
            queued("c1", "billing", s(45), true),
            away_missed_offers("alice", s(45)),
            timed_out("c1", s(45)),
        ]
    );
    assert_eq!(cc.state.next_deadline(), None);
}

// ----- order of callers ----------------------------------------------------------------------

#[test]
fn callers_are_offered_by_priority_first_then_by_longest_waiting() {
    let mut cc = Centre::new();
    cc.upsert_queue(queue("support", &[], Strategy::LongestIdle), s(0));
    cc.add_agent("alice", &[], Capacity::Total(1), s(0));
    cc.call_with("low", "support", "voice", -1, s(5));
    cc.call_with("first", "support", "voice", 0, s(10));
    cc.call_with("second", "support", "voice", 0, s(20));
    cc.call_with("vip", "support", "voice", 5, s(30));
    cc.call_with("third", "support", "voice", 0, s(30));
    let order = ["vip", "first", "second", "third", "low"];
    assert_eq!(cc.waiting("support"), order);

    assert_eq!(
        cc.available("alice", s(40)),
        vec![
            available_by_desktop("alice", s(40)),
            offered(
                "vip",
                "alice",
                "support",
                s(40),
                20,
                routing(Strategy::LongestIdle, 1, "idle the longest: 0 s")
            ),
        ]
    );
    let mut now = 40;
    for (served, id) in order.iter().enumerate() {
        assert_eq!(cc.position(id), None, "{id} is offered");
        for (place, later) in order[served + 1..].iter().enumerate() {
            assert_eq!(
                cc.position(later),
                Some(place + 1),
                "{later} while {id} is served"
            );
        }
        cc.accept(id, "alice", s(now + 1));
        now += 2;
        let mut expected = vec![completed(id, "alice", s(now), false)];
        if let Some(next) = order.get(served + 1) {
            expected.push(offered(
                next,
                "alice",
                "support",
                s(now),
                20,
                routing(Strategy::LongestIdle, 1, "idle the longest: 0 s"),
            ));
        }
        assert_eq!(cc.complete(id, "alice", s(now)), expected, "after {id}");
    }
}

#[test]
fn an_agent_serving_two_queues_gets_the_longest_waiting_caller_among_them_highest_priority_first() {
    let mut cc = Centre::new();
    cc.upsert_queue(queue("billing", &[], Strategy::LongestIdle), s(0));
    cc.upsert_queue(queue("sales", &[], Strategy::RoundRobin), s(0));
    cc.add_agent("alice", &[], Capacity::Total(1), s(0));
    cc.call("s1", "sales", s(10));
    cc.call("b1", "billing", s(20));
    cc.call("b2", "billing", s(25));
    cc.call("s2", "sales", s(30));
    cc.call_with("vip", "sales", "voice", 1, s(45));
    // Positions count within each queue.
    assert_eq!(cc.waiting("sales"), ["vip", "s1", "s2"]);
    assert_eq!(cc.waiting("billing"), ["b1", "b2"]);
    assert_eq!(cc.position("s1"), Some(2));
    assert_eq!(cc.position("b1"), Some(1));

    let sales_first = routing(
        Strategy::RoundRobin,
        1,
        "next in rotation: last offered a caller never",
    );
    assert_eq!(
        cc.available("alice", s(50)),
        vec![
            available_by_desktop("alice", s(50)),
            offered("vip", "alice", "sales", s(50), 20, sales_first),
        ]
    );
    let turns = [
        ("vip", "s1", "sales"),
        ("s1", "b1", "billing"),
        ("b1", "b2", "billing"),
        ("b2", "s2", "sales"),
    ];
    let mut now = 50;
    for (done, next, next_queue) in turns {
        cc.accept(done, "alice", s(now + 1));
        now += 2;
        let out = cc.complete(done, "alice", s(now));
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0], completed(done, "alice", s(now), false));
        match &out[1] {
            Event::InteractionOffered {
                id,
                agent,
                target,
                at,
                ..
            } => {
                assert_eq!(
                    (id, agent, target, *at),
                    (&iid(next), &aid("alice"), &to_queue(next_queue), s(now)),
                    "after {done}"
                );
            }
            other => panic!("expected an offer of {next}, got {other:?}"),
        }
    }
}

// ----- offers: reject, timeout, missed offers ------------------------------------------------

#[test]
fn a_rejected_or_timed_out_caller_keeps_its_place_and_goes_to_the_next_eligible_agent_not_straight_back(
) {
    let mut cc = Centre::new();
    cc.upsert_queue(queue("tech", &[("tech", 1)], Strategy::MostSkilled), s(0));
    cc.agent_ready("alice", &[("tech", 9)], 1, s(0));
    cc.agent_ready("bob", &[("tech", 5)], 1, s(0));
    cc.agent_ready("carol", &[("tech", 3)], 1, s(0));

    assert_eq!(
        cc.call("c1", "tech", s(10)),
        vec![
            queued("c1", "tech", s(10), false),
            offered(
                "c1",
                "alice",
                "tech",
                s(10),
                20,
                routing(
                    Strategy::MostSkilled,
                    3,
                    "highest summed skill level: 9 (tech 9), idle 10 s"
                )
            ),
        ]
    );
    // Alice is still the most skilled, but she just rejected it: bob.
    assert_eq!(
        cc.reject("c1", "alice", s(12)),
        vec![
            rejected("c1", "alice", s(12)),
            queued("c1", "tech", s(12), true),
            offered("c1", "bob", "tech", s(12), 20, routing(Strategy::MostSkilled, 3,
                "highest summed skill level: 5 (tech 5), idle 12 s; the agent who just missed it was passed over")),
        ]
    );
    let c1 = cc.interaction("c1");
    assert_eq!(c1.waiting_since, s(10), "requeued keeps the waiting time");
    // Bob's offer started a new round: alice's miss was weighed when bob was chosen.
    assert!(c1.just_missed_by.is_empty());
    assert_eq!(cc.agent("alice").missed_in_a_row, 1);

    // Bob lets it time out: bob just missed it, alice did not, so back to alice.
    assert_eq!(
        cc.tick(s(32)),
        vec![
            revoked("c1", "bob", OfferEndReason::TimedOut, s(32)),
            queued("c1", "tech", s(32), true),
            offered(
                "c1",
                "alice",
                "tech",
                s(32),
                20,
                routing(
                    Strategy::MostSkilled,
                    3,
                    "highest summed skill level: 9 (tech 9), idle 20 s"
                )
            ),
        ]
    );
    assert!(
        cc.interaction("c1").just_missed_by.is_empty(),
        "a new round"
    );
    assert_eq!(
        cc.accept("c1", "alice", s(33)),
        vec![accepted("c1", "alice", s(33))]
    );
    assert!(cc.interaction("c1").just_missed_by.is_empty());
    assert_eq!(
        cc.agent("alice").missed_in_a_row,
        0,
        "an accept resets the count"
    );
    assert_eq!(cc.agent("bob").missed_in_a_row, 1);
    assert_eq!(cc.interaction("c1").involved_agents.len(), 2);
}

#[test]
fn a_missed_caller_goes_straight_back_to_the_agent_who_missed_it_when_no_other_eligible_agent_has_room(
) {
    let mut cc = Centre::new();
    cc.upsert_queue(queue("tech", &[("tech", 1)], Strategy::MostSkilled), s(0));
    cc.agent_ready("alice", &[("tech", 9)], 1, s(0));
    cc.agent_ready("bob", &[("tech", 5)], 1, s(0));
    cc.call("c0", "tech", s(5)); // to alice
    cc.call("c1", "tech", s(6)); // to bob
    cc.accept("c0", "alice", s(7));
    cc.complete("c0", "alice", s(8));
    cc.accept("c1", "bob", s(9)); // bob is engaged
    assert_eq!(
        cc.call("c2", "tech", s(10)),
        vec![
            queued("c2", "tech", s(10), false),
            offered(
                "c2",
                "alice",
                "tech",
                s(10),
                20,
                routing(
                    Strategy::MostSkilled,
                    1,
                    "highest summed skill level: 9 (tech 9), idle 2 s"
                )
            ),
        ]
    );
    assert_eq!(
        cc.reject("c2", "alice", s(12)),
        vec![
            rejected("c2", "alice", s(12)),
            queued("c2", "tech", s(12), true),
            offered(
                "c2",
                "alice",
                "tech",
                s(12),
                20,
                routing(
                    Strategy::MostSkilled,
                    1,
                    "highest summed skill level: 9 (tech 9), idle 0 s"
                )
            ),
        ]
    );
}

#[test]
fn a_rejected_caller_with_nobody_to_take_it_waits_at_position_one_ahead_of_later_callers() {
    let mut cc = Centre::with(Settings {
        max_missed_offers: 1,
        ..Settings::default()
    });
    cc.upsert_queue(queue("tech", &[("tech", 1)], Strategy::MostSkilled), s(0));
    cc.agent_ready("alice", &[("tech", 9)], 1, s(0));
    cc.add_agent("bob", &[("tech", 5)], Capacity::Total(1), s(0));
    cc.call("c1", "tech", s(10));
    assert_eq!(
        cc.call("c2", "tech", s(11)),
        vec![queued("c2", "tech", s(11), false)]
    );
    assert_eq!(
        cc.call("c3", "tech", s(12)),
        vec![queued("c3", "tech", s(12), false)]
    );
    assert_eq!(cc.position("c2"), Some(1));

    assert_eq!(
        cc.reject("c1", "alice", s(15)),
        vec![
            rejected("c1", "alice", s(15)),
            queued("c1", "tech", s(15), true),
            away_missed_offers("alice", s(15)),
        ]
    );
    assert_eq!(cc.waiting("tech"), ["c1", "c2", "c3"]);
    assert_eq!(cc.position("c1"), Some(1));
    assert_eq!(cc.position("c2"), Some(2));
    assert_eq!(cc.position("c3"), Some(3));

    assert_eq!(
        cc.available("bob", s(20)),
        vec![
            available_by_desktop("bob", s(20)),
            offered(
                "c1",
                "bob",
                "tech",
                s(20),
                20,
                routing(
                    Strategy::MostSkilled,
                    1,
                    "highest summed skill level: 5 (tech 5), idle 0 s"
                )
            ),
        ]
    );
}

#[test]
fn after_max_missed_offers_in_a_row_an_available_agent_is_set_away_with_reason_missed_offers_by_the_system(
) {
    let mut cc = Centre::new();
    assert_eq!(cc.state.settings().max_missed_offers, 2);
    cc.upsert_queue(queue("tech", &[("tech", 1)], Strategy::MostSkilled), s(0));
    cc.agent_ready("alice", &[("tech", 9)], 1, s(0));
    cc.add_agent("bob", &[("tech", 5)], Capacity::Total(1), s(0));
    cc.call("c1", "tech", s(10));

    // The first miss: alice is the only one with room, so it comes straight back.
    assert_eq!(
        cc.reject("c1", "alice", s(12)),
        vec![
            rejected("c1", "alice", s(12)),
            queued("c1", "tech", s(12), true),
            offered(
                "c1",
                "alice",
                "tech",
                s(12),
                20,
                routing(
                    Strategy::MostSkilled,
                    1,
                    "highest summed skill level: 9 (tech 9), idle 0 s"
                )
            ),
        ]
    );
    // The second, by timeout: away.
    let out = cc.run_with_recipients(Command::Tick, s(32));
    assert_eq!(
        out,
        vec![
            (
                revoked("c1", "alice", OfferEndReason::TimedOut, s(32)),
                vec![aid("alice")]
            ),
            (queued("c1", "tech", s(32), true), vec![]),
            (away_missed_offers("alice", s(32)), vec![aid("alice")]),
        ]
    );
    assert_eq!(cc.agent("alice").presence.status, PresenceStatus::Away);
    assert_eq!(cc.agent("alice").missed_in_a_row, 2);
    assert_eq!(cc.position("c1"), Some(1));

    assert_eq!(
        cc.available("bob", s(40)),
        vec![
            available_by_desktop("bob", s(40)),
            offered(
                "c1",
                "bob",
                "tech",
                s(40),
                20,
                routing(
                    Strategy::MostSkilled,
                    1,
                    "highest summed skill level: 5 (tech 5), idle 0 s"
                )
            ),
        ]
    );
    // Back to available: the count starts again.
    assert_eq!(
        cc.available("alice", s(50)),
        vec![available_by_desktop("alice", s(50))]
    );
    assert_eq!(cc.agent("alice").missed_in_a_row, 0);
}

// ----- queue targets elsewhere: transfer and fallback ----------------------------------------

#[test]
fn a_transfer_to_a_queue_releases_the_agent_and_hands_the_caller_off_anew_to_that_queues_agents() {
    let mut cc = Centre::new();
    cc.upsert_queue(
        queue("billing", &[("billing", 1)], Strategy::LongestIdle),
        s(0),
    );
    cc.upsert_queue(queue("sales", &[("sales", 1)], Strategy::LongestIdle), s(0));
    cc.agent_ready("alice", &[("billing", 5)], 1, s(0));
    cc.agent_ready("sam", &[("sales", 5)], 1, s(1));
    cc.call("c1", "billing", s(10));
    cc.accept("c1", "alice", s(12));
    assert_eq!(
        cc.run(
            Command::Transfer {
                id: iid("c1"),
                agent: aid("alice"),
                target: to_queue("sales"),
                fallback: None,
                note: Some("wants an upgrade".to_owned()),
            },
            s(30)
        ),
        vec![
            Event::InteractionTransferred {
                id: iid("c1"),
                from: aid("alice"),
                target: to_queue("sales"),
                fallback: None,
                note: Some("wants an upgrade".to_owned()),
                at: s(30),
            },
            queued("c1", "sales", s(30), false),
            offered(
                "c1",
                "sam",
                "sales",
                s(30),
                20,
                routing(Strategy::LongestIdle, 1, "idle the longest: 29 s")
            ),
        ]
    );
    let c1 = cc.interaction("c1");
    assert_eq!(c1.current_target, to_queue("sales"));
    assert_eq!(c1.entered_queue_at, Some(s(30)));
    assert_eq!(c1.last_transfer_note.as_deref(), Some("wants an upgrade"));
    assert_eq!(cc.state.activity(&aid("alice")), Activity::Idle);
    assert_eq!(
        cc.state
            .queue_stats(&qn("sales"), s(40), s(0))
            .today
            .offered,
        1
    );
    assert_eq!(
        cc.state
            .queue_stats(&qn("billing"), s(40), s(0))
            .today
            .answered,
        1
    );
}

#[test]
fn an_agent_targets_missed_offer_goes_to_its_fallback_queue_passing_over_the_agent_who_missed_it() {
    let mut cc = Centre::new();
    cc.upsert_queue(
        queue("support", &[("support", 1)], Strategy::MostSkilled),
        s(0),
    );
    cc.agent_ready("alice", &[("support", 9)], 1, s(0)); // the most skilled member of support
    cc.agent_ready("bob", &[("support", 5)], 1, s(5));
    let mut spec = spec("c1", Target::Agent(aid("alice")), "voice", 0, s(10));
    spec.fallback = Some(to_queue("support"));
    let out = cc.run(Command::CreateInteraction { spec }, s(10));
    assert_eq!(out.len(), 2);
    assert_eq!(
        cc.reject("c1", "alice", s(12)),
        vec![
            rejected("c1", "alice", s(12)),
            queued("c1", "support", s(12), false),
            offered("c1", "bob", "support", s(12), 20, routing(Strategy::MostSkilled, 2,
                "highest summed skill level: 5 (support 5), idle 7 s; the agent who just missed it was passed over")),
        ]
    );
    // From now on it is a queue's caller: a miss keeps its place in support, and alice, who
    // did not miss it last, is the most skilled.
    assert_eq!(
        cc.reject("c1", "bob", s(14)),
        vec![
            rejected("c1", "bob", s(14)),
            queued("c1", "support", s(14), true),
            offered(
                "c1",
                "alice",
                "support",
                s(14),
                20,
                routing(
                    Strategy::MostSkilled,
                    2,
                    "highest summed skill level: 9 (support 9), idle 2 s"
                )
            ),
        ]
    );
}

#[test]
fn relaxing_a_queues_skills_offers_its_waiting_callers_at_once_keeping_their_order() {
    let mut cc = Centre::new();
    let strict = queue("billing", &[("billing", 8)], Strategy::LongestIdle);
    cc.upsert_queue(strict.clone(), s(0));
    cc.agent_ready("alice", &[("billing", 5)], 1, s(0));
    cc.call("c1", "billing", s(10));
    cc.call("c2", "billing", s(11));
    assert_eq!(cc.waiting("billing"), ["c1", "c2"]);
    let relaxed = queue("billing", &[("billing", 5)], Strategy::LongestIdle);
    assert_eq!(
        cc.run(
            Command::UpsertQueue {
                config: relaxed.clone()
            },
            s(20)
        ),
        vec![
            Event::QueueUpserted {
                config: relaxed,
                created: false,
                at: s(20)
            },
            offered(
                "c1",
                "alice",
                "billing",
                s(20),
                20,
                routing(Strategy::LongestIdle, 1, "idle the longest: 20 s")
            ),
        ]
    );
    assert_eq!(cc.position("c2"), Some(1));
}

#[test]
fn routing_eligible_counts_only_agents_that_could_take_the_callers_channel() {
    let mut cc = Centre::new();
    cc.upsert_queue(queue("support", &[], Strategy::LongestIdle), s(0));
    cc.add_agent("omni", &[], per_channel(&[("voice", 1), ("chat", 3)]), s(0));
    cc.available("omni", s(0));
    cc.agent_ready("vic", &[], 1, s(1));
    cc.call("v1", "support", s(10)); // to omni, idle the longest
    assert_eq!(
        cc.call("v2", "support", s(11)),
        vec![
            queued("v2", "support", s(11), false),
            offered(
                "v2",
                "vic",
                "support",
                s(11),
                20,
                routing(Strategy::LongestIdle, 1, "idle the longest: 10 s")
            ),
        ]
    );
}

// ----- capacity and wrap-up ------------------------------------------------------------------

#[test]
fn a_per_channel_capacity_of_one_voice_and_three_chats_takes_one_call_and_three_chats_at_once_but_not_a_second_call(
) {
    let mut cc = Centre::new();
    cc.upsert_queue(queue("support", &[], Strategy::LongestIdle), s(0));
    cc.add_agent("omni", &[], per_channel(&[("voice", 1), ("chat", 3)]), s(0));
    cc.available("omni", s(0));
    let any = |idle: i64| {
        routing(
            Strategy::LongestIdle,
            1,
            &format!("idle the longest: {idle} s"),
        )
    };

    assert_eq!(
        cc.call_with("v1", "support", "voice", 0, s(10)),
        vec![
            queued("v1", "support", s(10), false),
            offered("v1", "omni", "support", s(10), 20, any(10))
        ]
    );
    assert_eq!(
        cc.call_with("v2", "support", "voice", 0, s(11)),
        vec![queued("v2", "support", s(11), false)]
    );
    for (n, id) in ["ch1", "ch2", "ch3"].into_iter().enumerate() {
        let at = s(12 + n as i64);
        assert_eq!(
            cc.call_with(id, "support", "chat", 0, at),
            vec![
                queued(id, "support", at, false),
                offered(id, "omni", "support", at, 20, any(12 + n as i64))
            ]
        );
    }
    assert_eq!(
        cc.call_with("ch4", "support", "chat", 0, s(15)),
        vec![queued("ch4", "support", s(15), false)]
    );
    // A channel the agent has no capacity for waits whatever else is free.
    assert_eq!(
        cc.call_with("mail", "support", "email", 0, s(16)),
        vec![queued("mail", "support", s(16), false)]
    );
    assert_eq!(cc.state.held_by(&aid("omni")).count(), 4);
    // Each channel is its own line.
    assert_eq!(cc.position("v2"), Some(1));
    assert_eq!(cc.position("ch4"), Some(1));
    assert_eq!(cc.position("mail"), Some(1));
    assert_eq!(cc.waiting("support"), ["ch4", "mail", "v2"]);

    // The call ends: the second call is offered, not a chat.
    cc.accept("v1", "omni", s(20));
    assert_eq!(
        cc.complete("v1", "omni", s(30)),
        vec![
            completed("v1", "omni", s(30), false),
            offered("v2", "omni", "support", s(30), 20, any(30))
        ]
    );
    cc.accept("ch1", "omni", s(31));
    assert_eq!(
        cc.complete("ch1", "omni", s(40)),
        vec![
            completed("ch1", "omni", s(40), false),
            offered("ch4", "omni", "support", s(40), 20, any(40))
        ]
    );
    assert_eq!(cc.waiting("support"), ["mail"]);
}

#[test]
fn a_total_capacity_counts_every_channel_together() {
    let mut cc = Centre::new();
    cc.upsert_queue(queue("support", &[], Strategy::LongestIdle), s(0));
    cc.agent_ready("duo", &[], 2, s(0));
    assert_eq!(cc.call_with("v1", "support", "voice", 0, s(1)).len(), 2);
    assert_eq!(cc.call_with("ch1", "support", "chat", 0, s(2)).len(), 2);
    assert_eq!(
        cc.call_with("ch2", "support", "chat", 0, s(3)),
        vec![queued("ch2", "support", s(3), false)]
    );
    assert_eq!(
        cc.call_with("v2", "support", "voice", 0, s(4)),
        vec![queued("v2", "support", s(4), false)]
    );
    // Freed room goes to the longest waiting of any channel.
    assert_eq!(
        cc.hangup("v1", s(5)),
        vec![
            revoked("v1", "duo", OfferEndReason::Abandoned, s(5)),
            abandoned("v1", s(5)),
            offered(
                "ch2",
                "duo",
                "support",
                s(5),
                20,
                routing(Strategy::LongestIdle, 1, "idle the longest: 5 s")
            ),
        ]
    );
}

#[test]
fn after_hangup_the_agent_is_in_wrap_up_and_not_routable_until_wrap_up_s_passes_then_completed_expired_and_the_next_caller_is_offered(
) {
    let mut cc = Centre::new();
    let mut support = queue("support", &[], Strategy::LongestIdle);
    support.wrap_up_s = 10;
    cc.upsert_queue(support, s(0));
    cc.agent_ready("alice", &[], 1, s(0));
    cc.call("c1", "support", s(10));
    cc.accept("c1", "alice", s(11));
    assert_eq!(
        cc.call("c2", "support", s(12)),
        vec![queued("c2", "support", s(12), false)]
    );

    assert_eq!(
        cc.hangup("c1", s(20)),
        vec![ended("c1", "alice", Some(s(30)), s(20))]
    );
    let c1 = cc.interaction("c1");
    assert_eq!(c1.state, InteractionState::WrapUp);
    assert_eq!(c1.wrap_up_until, Some(s(30)));
    assert_eq!(cc.state.activity(&aid("alice")), Activity::WrapUp);
    assert_eq!(cc.position("c2"), Some(1), "wrap-up is not routable");
    assert_eq!(cc.state.next_deadline(), Some(s(30)));
    assert!(cc.tick(ms(29_999)).is_empty());

    assert_eq!(
        cc.tick(s(30)),
        vec![
            completed("c1", "alice", s(30), true),
            offered(
                "c2",
                "alice",
                "support",
                s(30),
                20,
                routing(Strategy::LongestIdle, 1, "idle the longest: 0 s")
            ),
        ]
    );
    assert_eq!(cc.interaction("c1").state, InteractionState::Completed);
    assert_eq!(cc.interaction("c1").wrap_up_until, None);
    assert_eq!(cc.agent("alice").idle_since, s(30));
    assert_eq!(
        cc.refused(
            Command::Complete {
                id: iid("c1"),
                agent: aid("alice"),
                disposition: None,
                notes: None
            },
            s(31)
        ),
        CommandError::WrongState {
            action: "complete",
            state: InteractionState::Completed
        }
    );

    // Completed by the agent before the wrap-up runs out: no expiry later.
    cc.accept("c2", "alice", s(31));
    assert_eq!(
        cc.hangup("c2", s(40)),
        vec![ended("c2", "alice", Some(s(50)), s(40))]
    );
    assert_eq!(cc.state.next_deadline(), Some(s(50)));
    assert_eq!(
        cc.complete("c2", "alice", s(45)),
        vec![completed("c2", "alice", s(45), false)]
    );
    assert_eq!(cc.state.next_deadline(), None);
    assert!(cc.tick(s(50)).is_empty());
    assert_eq!(cc.state.activity(&aid("alice")), Activity::Idle);
}

// ----- abandonment ---------------------------------------------------------------------------

#[test]
fn a_caller_hanging_up_while_queued_is_abandoned_and_the_callers_behind_move_up() {
    let mut cc = Centre::new();
    cc.upsert_queue(queue("support", &[], Strategy::LongestIdle), s(0));
    cc.add_agent("alice", &[], Capacity::Total(1), s(0));
    let mut limited = queue("limited", &[], Strategy::LongestIdle);
    limited.max_wait_s = Some(100);
    limited.steps = vec![EscalationStep {
        after_s: 50,
        skills: skills(&[]),
    }];
    cc.upsert_queue(limited, s(0));
    cc.call("c1", "support", s(10));
    cc.call("c2", "support", s(20));
    cc.call("c3", "limited", s(20));
    assert_eq!(cc.state.next_wakeup(s(20)), Some(s(70)));

    assert_eq!(cc.hangup("c1", s(30)), vec![abandoned("c1", s(30))]);
    assert_eq!(cc.interaction("c1").state, InteractionState::Abandoned);
    assert_eq!(cc.position("c1"), None);
    assert_eq!(cc.position("c2"), Some(1));
    assert_eq!(cc.waiting("support"), ["c2"]);

    // Its wake-ups and deadlines go with it.
    assert_eq!(cc.hangup("c3", s(31)), vec![abandoned("c3", s(31))]);
    assert_eq!(cc.state.next_deadline(), None);
    assert_eq!(cc.state.next_wakeup(s(31)), None);
    assert!(cc.tick(s(200)).is_empty());

    assert_eq!(
        cc.available("alice", s(300)),
        vec![
            available_by_desktop("alice", s(300)),
            offered(
                "c2",
                "alice",
                "support",
                s(300),
                20,
                routing(Strategy::LongestIdle, 1, "idle the longest: 0 s")
            ),
        ]
    );
}

#[test]
fn a_caller_hanging_up_while_offered_revokes_the_offer_as_abandoned_and_the_agent_gets_the_next_caller(
) {
    let mut cc = Centre::new();
    cc.upsert_queue(queue("support", &[], Strategy::LongestIdle), s(0));
    cc.agent_ready("alice", &[], 1, s(0));
    cc.call("c1", "support", s(10));
    cc.call("c2", "support", s(12));
    let out = cc.run_with_recipients(Command::Hangup { id: iid("c1") }, s(15));
    assert_eq!(
        out,
        vec![
            (
                revoked("c1", "alice", OfferEndReason::Abandoned, s(15)),
                vec![aid("alice")]
            ),
            (abandoned("c1", s(15)), vec![]),
            (
                offered(
                    "c2",
                    "alice",
                    "support",
                    s(15),
                    20,
                    routing(Strategy::LongestIdle, 1, "idle the longest: 0 s")
                ),
                vec![aid("alice")]
            ),
        ]
    );
    let c1 = cc.interaction("c1");
    assert_eq!(c1.state, InteractionState::Abandoned);
    assert_eq!(c1.agent, None);
    assert!(c1.just_missed_by.is_empty(), "not alice's miss");
    assert_eq!(cc.agent("alice").missed_in_a_row, 0);
    assert_eq!(cc.state.next_deadline(), Some(s(35)));
}

// ----- presence ------------------------------------------------------------------------------

#[test]
fn only_an_available_agent_with_free_capacity_is_routable_and_each_presence_change_is_an_event() {
    let mut cc = Centre::new();
    cc.upsert_queue(queue("support", &[], Strategy::LongestIdle), s(0));
    cc.add_agent("alice", &[], Capacity::Total(1), s(0));
    assert_eq!(
        cc.call("c1", "support", s(10)),
        vec![queued("c1", "support", s(10), false)]
    );

    // Busy from a UC system, then away with a reason: still not routable.
    assert_eq!(
        cc.presence("alice", PresenceStatus::Busy, PresenceSource::Uc, s(20)),
        vec![presence_changed(
            "alice",
            PresenceStatus::Busy,
            None,
            PresenceSource::Uc,
            s(20)
        )]
    );
    assert_eq!(
        cc.run(
            Command::SetPresence {
                agent: aid("alice"),
                status: PresenceStatus::Away,
                reason: Some("lunch".to_owned()),
                source: PresenceSource::Desktop
            },
            s(30)
        ),
        vec![presence_changed(
            "alice",
            PresenceStatus::Away,
            Some("lunch"),
            PresenceSource::Desktop,
            s(30)
        )]
    );
    assert!(cc.tick(s(40)).is_empty());
    assert_eq!(cc.position("c1"), Some(1));

    // Available: offered at once.
    assert_eq!(
        cc.presence(
            "alice",
            PresenceStatus::Available,
            PresenceSource::Admin,
            s(50)
        ),
        vec![
            presence_changed(
                "alice",
                PresenceStatus::Available,
                None,
                PresenceSource::Admin,
                s(50)
            ),
            offered(
                "c1",
                "alice",
                "support",
                s(50),
                20,
                routing(Strategy::LongestIdle, 1, "idle the longest: 0 s")
            ),
        ]
    );
    // Available but at capacity: the next caller waits.
    cc.accept("c1", "alice", s(51));
    assert_eq!(
        cc.call("c2", "support", s(52)),
        vec![queued("c2", "support", s(52), false)]
    );
    // Away while engaged: when the call completes, c2 still waits.
    assert_eq!(cc.away("alice", s(53)).len(), 1);
    assert_eq!(
        cc.complete("c1", "alice", s(54)),
        vec![completed("c1", "alice", s(54), false)]
    );
    assert_eq!(cc.position("c2"), Some(1));
    assert_eq!(cc.state.activity(&aid("alice")), Activity::Idle);
    // Offline through a lost connection, then back.
    assert_eq!(
        cc.run(
            Command::ConnectionLost {
                agent: aid("alice")
            },
            s(60)
        ),
        vec![presence_changed(
            "alice",
            PresenceStatus::Offline,
            Some("connection_lost"),
            PresenceSource::System,
            s(60)
        )]
    );
    assert_eq!(
        cc.available("alice", s(70)),
        vec![
            available_by_desktop("alice", s(70)),
            offered(
                "c2",
                "alice",
                "support",
                s(70),
                20,
                routing(Strategy::LongestIdle, 1, "idle the longest: 0 s")
            ),
        ]
    );
}

// ----- statistics ----------------------------------------------------------------------------

#[test]
fn queue_stats_match_a_hand_computed_scenario_in_both_windows() {
    let mut cc = Centre::new();
    let mut general = queue("general", &[], Strategy::LongestIdle);
    general.max_wait_s = Some(60);
    cc.upsert_queue(general, s(-3600));
    let mut billing = queue("billing", &[], Strategy::LongestIdle);
    billing.max_wait_s = Some(120);
    billing.overflow = Some(qn("general"));
    billing.service_level_s = 20;
    cc.upsert_queue(billing, s(-3600));
    cc.add_agent("alice", &[], Capacity::Total(1), s(-3600));

    // Alice answers a caller that has waited since `entered`, then goes away again.
    let answer = |cc: &mut Centre, id: &str, at: i64| {
        let out = cc.available("alice", s(at));
        assert!(
            matches!(out.last(), Some(Event::InteractionOffered { id: o, .. }) if o == &iid(id)),
            "{out:?}"
        );
        cc.accept(id, "alice", s(at));
        cc.away("alice", s(at));
        cc.complete(id, "alice", s(at + 1));
    };

    // Yesterday 23:50: c1 waits 10 s. 23:56: c2 waits 40 s. 23:59:30: c3 waits 35 s, to 00:00:05.
    cc.call("c1", "billing", s(-600));
    answer(&mut cc, "c1", -590);
    cc.call("c2", "billing", s(-240));
    answer(&mut cc, "c2", -200);
    cc.call("c3", "billing", s(-30));
    answer(&mut cc, "c3", 5);
    // c4 hangs up while queued after 15 s.
    cc.call("c4", "billing", s(60));
    assert_eq!(cc.hangup("c4", s(75)), vec![abandoned("c4", s(75))]);
    // c5 hangs up while offered.
    cc.call("c5", "billing", s(100));
    cc.available("alice", s(105));
    assert_eq!(
        cc.hangup("c5", s(110)),
        vec![
            revoked("c5", "alice", OfferEndReason::Abandoned, s(110)),
            abandoned("c5", s(110))
        ]
    );
    cc.away("alice", s(110));
    // c6 answered after exactly the service level, 20 s.
    cc.call("c6", "billing", s(200));
    answer(&mut cc, "c6", 220);
    // c7 overflows to general at 00:07 and times out there at 00:08.
    cc.call("c7", "billing", s(300));
    assert_eq!(
        cc.tick(s(420)),
        vec![queued("c7", "general", s(420), false)]
    );
    assert_eq!(cc.tick(s(480)), vec![timed_out("c7", s(480))]);
    // c8 answered after 30 s.
    cc.call("c8", "billing", s(500));
    answer(&mut cc, "c8", 530);
    // c9 rejected once, then answered after 20 s: it entered the queue once.
    cc.call("c9", "billing", s(540));
    cc.available("alice", s(545));
    assert_eq!(
        cc.reject("c9", "alice", s(550)),
        vec![
            rejected("c9", "alice", s(550)),
            queued("c9", "billing", s(550), true),
            offered(
                "c9",
                "alice",
                "billing",
                s(550),
                20,
                routing(Strategy::LongestIdle, 1, "idle the longest: 0 s")
            ),
        ]
    );
    cc.accept("c9", "alice", s(560));
    cc.complete("c9", "alice", s(561));

    // Seen at 00:10. Last 15 minutes = (23:55, 00:10]: entered c2..c9 (8); answered c2 40, c3 35,
    // c6 20, c8 30, c9 20 (145 s over 5), within 20 s: c6, c9; abandoned c4, c5; c7 overflowed.
    // Today = [00:00, 00:10]: entered c4..c9 (6); answered c3, c6, c8, c9 (105 s over 4).
    let billing_at_0010 = WindowPair {
        last_15m: Window {
            offered: 8,
            answered: 5,
            abandoned: 2,
            timed_out: 0,
            overflowed: 1,
            asa_s: 29.0,
            service_level: 2.0 / 7.0,
            abandon_rate: 2.0 / 7.0,
        },
        today: Window {
            offered: 6,
            answered: 4,
            abandoned: 2,
            timed_out: 0,
            overflowed: 1,
            asa_s: 26.25,
            service_level: 2.0 / 6.0,
            abandon_rate: 2.0 / 6.0,
        },
    };
    assert_eq!(
        cc.state.queue_stats(&qn("billing"), s(600), s(0)),
        billing_at_0010
    );
    let general_window = Window {
        offered: 1,
        timed_out: 1,
        ..Window::EMPTY
    };
    assert_eq!(
        cc.state.queue_stats(&qn("general"), s(600), s(0)),
        WindowPair {
            last_15m: general_window,
            today: general_window
        }
    );

    // At 00:20 the last 15 minutes are (00:05, 00:20]: c7 entered at exactly 00:05, outside.
    assert_eq!(
        cc.state.queue_stats(&qn("billing"), s(1200), s(0)),
        WindowPair {
            last_15m: Window {
                offered: 2,
                answered: 2,
                abandoned: 0,
                timed_out: 0,
                overflowed: 1,
                asa_s: 25.0,
                service_level: 0.5,
                abandon_rate: 0.0,
            },
            today: billing_at_0010.today,
        }
    );
    // Seen from yesterday 23:59:59: c1 10 s, c2 40 s answered; c3 entered and still waiting.
    let yesterday = Window {
        offered: 3,
        answered: 2,
        asa_s: 25.0,
        service_level: 0.5,
        ..Window::EMPTY
    };
    assert_eq!(
        cc.state.queue_stats(&qn("billing"), s(-1), s(-86_400)),
        WindowPair {
            last_15m: yesterday,
            today: yesterday
        }
    );
    assert_eq!(
        cc.state.queue_stats(&qn("nobody"), s(600), s(0)),
        WindowPair::default()
    );
}

// ----- restart -------------------------------------------------------------------------------

/// What a restarted server must see the same: every agent, interaction, place in line,
/// deadline, wake-up and statistic.
#[derive(Debug, PartialEq)]
struct Observed {
    agents: Vec<(Agent, Activity)>,
    interactions: Vec<(Interaction, Option<usize>)>,
    waiting: Vec<(String, Vec<String>)>,
    next_deadline: Option<Timestamp>,
    next_wakeup: Option<Timestamp>,
    stats: Vec<(String, WindowPair)>,
}

fn observe(state: &State, now: Timestamp) -> Observed {
    let queues: Vec<QueueName> = state.queues().map(|q| q.name.clone()).collect();
    Observed {
        agents: state
            .agents()
            .map(|a| (a.clone(), state.activity(&a.profile.id)))
            .collect(),
        interactions: state
            .interactions()
            .map(|i| (i.clone(), state.position(i.id())))
            .collect(),
        waiting: queues
            .iter()
            .map(|q| {
                (
                    q.to_string(),
                    state.waiting_in(q).map(|i| i.spec.id.to_string()).collect(),
                )
            })
            .collect(),
        next_deadline: state.next_deadline(),
        next_wakeup: state.next_wakeup(now),
        stats: queues
            .iter()
            .map(|q| (q.to_string(), state.queue_stats(q, now, s(0))))
            .collect(),
    }
}

fn restart_scenario() -> Centre {
    let mut cc = Centre::new();
    let mut general = queue("general", &[], Strategy::LongestIdle);
    general.max_wait_s = Some(600);
    cc.upsert_queue(general, s(0));
    let mut billing = queue("billing", &[("billing", 5)], Strategy::RoundRobin);
    billing.steps = vec![EscalationStep {
        after_s: 60,
        skills: skills(&[("billing", 2)]),
    }];
    billing.max_wait_s = Some(300);
    billing.overflow = Some(qn("general"));
    billing.wrap_up_s = 15;
    cc.upsert_queue(billing, s(0));
    cc.agent_ready("alice", &[("billing", 7)], 1, s(1));
    cc.agent_ready("bob", &[("billing", 3)], 1, s(2));
    cc.add_agent("gus", &[], Capacity::Total(2), s(3));

    cc.call("b1", "billing", s(10)); // to alice
    cc.accept("b1", "alice", s(12));
    cc.call("b2", "billing", s(20)); // waits: bob qualifies only after 60 s
    cc.call_with("b3", "billing", "voice", 2, s(30)); // ahead of b2
    cc.call("g1", "general", s(40)); // to bob, left open
    cc.call("g2", "general", s(45)); // waits
    cc.call_with("g3", "general", "voice", 0, s(45)); // same millisecond, after g2
    cc.hangup("b1", s(50)); // alice in wrap-up until 65 s
    cc
}

#[test]
fn replaying_every_event_on_a_fresh_state_after_a_restart_keeps_places_in_line_deadlines_and_wake_ups(
) {
    let cc = restart_scenario();
    let now = s(55);
    assert_eq!(cc.waiting("billing"), ["b3", "b2"]);
    assert_eq!(cc.waiting("general"), ["g2", "g3"]);
    assert_eq!(cc.interaction("g1").state, InteractionState::Offered);
    assert_eq!(cc.interaction("b1").state, InteractionState::WrapUp);
    assert_eq!(cc.state.next_deadline(), Some(s(60)), "g1's offer");
    assert_eq!(cc.state.next_wakeup(now), Some(s(60)));

    let mut rebuilt = State::new(Settings::default());
    for event in &cc.log {
        rebuilt.apply(event);
    }
    assert_eq!(observe(&rebuilt, now), observe(&cc.state, now));
    for id in ["b2", "b3", "g2", "g3"] {
        assert_eq!(rebuilt.position(&iid(id)), cc.position(id), "{id}");
        assert_eq!(
            rebuilt.interaction(&iid(id)).unwrap().max_wait_at,
            cc.interaction(id).max_wait_at
        );
    }
    assert_eq!(
        rebuilt.interaction(&iid("g1")).unwrap().offer_expires_at,
        Some(s(60))
    );
    assert_eq!(
        rebuilt.interaction(&iid("b1")).unwrap().wrap_up_until,
        Some(s(65))
    );
}

#[test]
fn after_a_restart_the_next_ticks_make_the_same_decisions_as_the_original_state() {
    let mut original = restart_scenario();
    let mut rebuilt = State::new(Settings::default());
    for event in &original.log {
        rebuilt.apply(event);
    }

    // The first tick: bob's offer of g1 times out; g1 keeps its place at the head of general and,
    // bob being the only one with room, goes straight back to him.
    let first = original.tick(s(60));
    assert_eq!(
        first,
        vec![
            revoked("g1", "bob", OfferEndReason::TimedOut, s(60)),
            queued("g1", "general", s(60), true),
            offered(
                "g1",
                "bob",
                "general",
                s(60),
                20,
                routing(Strategy::LongestIdle, 1, "idle the longest: 0 s")
            ),
        ]
    );
    assert_eq!(rebuilt.execute(Command::Tick, s(60)).unwrap(), first);

    // Then every wake-up in turn, with a presence change and an accept in between.
    let mut now = s(60);
    let mut steps = 0;
    while let Some(wakeup) = original.state.next_wakeup(now) {
        assert_eq!(rebuilt.next_wakeup(now), Some(wakeup));
        assert_eq!(observe(&rebuilt, now), observe(&original.state, now));
        now = wakeup.max(now);
        let expected = original.tick(now);
        assert_eq!(
            rebuilt.execute(Command::Tick, now).unwrap(),
            expected,
            "tick at {}",
            now.millis() - T0
        );
        if steps == 1 {
            let command = Command::SetPresence {
                agent: aid("gus"),
                status: PresenceStatus::Available,
                reason: None,
                source: PresenceSource::Desktop,
            };
            let expected = original.run(command.clone(), now);
            assert_eq!(rebuilt.execute(command, now).unwrap(), expected);
        }
        steps += 1;
        assert!(steps < 50, "ticks never settle");
    }
    assert_eq!(observe(&rebuilt, now), observe(&original.state, now));
    assert!(steps >= 3, "only {steps} wake-ups");
}
