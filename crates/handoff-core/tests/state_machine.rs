//! Scenario tests of the domain core: `State::execute(command, now)` and `State::apply(&event)`,
//! driven with virtual time (`Timestamp::from_millis`) and `Command::Tick`.

use std::collections::BTreeMap;

use handoff_core::{
    Activity, Agent, AgentId, AgentProfile, Capacity, Command, CommandError, Event, Interaction,
    InteractionId, InteractionSpec, InteractionState, OfferEndReason, PresenceSource,
    PresenceStatus, QueueName, Settings, State, Target, Timestamp,
};

// ----- helpers -------------------------------------------------------------------------------

const OFFER_TIMEOUT_S: u64 = 20;

fn settings() -> Settings {
    Settings {
        offer_timeout_s: OFFER_TIMEOUT_S,
        offline_on_disconnect: true,
        ..Settings::default()
    }
}

fn t(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn aid(id: &str) -> AgentId {
    AgentId::parse(id).unwrap()
}

fn iid(id: &str) -> InteractionId {
    InteractionId::parse(id).unwrap()
}

fn to_agent(id: &str) -> Target {
    Target::Agent(aid(id))
}

fn to_queue(name: &str) -> Target {
    Target::Queue(QueueName::parse(name).unwrap())
}

fn profile(id: &str, capacity: u32) -> AgentProfile {
    AgentProfile {
        id: aid(id),
        name: format!("Agent {id}"),
        address: Some(format!("sip:{id}@pbx.example.com")),
        skills: BTreeMap::new(),
        capacity: Capacity::Total(capacity),
    }
}

fn spec(
    id: &str,
    target: Target,
    fallback: Option<Target>,
    priority: i32,
    created_at: Timestamp,
) -> InteractionSpec {
    InteractionSpec {
        id: iid(id),
        caller: Some("+15551234567".to_owned()),
        dialed: Some("+18005550100".to_owned()),
        channel: "voice".to_owned(),
        call_id: Some(format!("call-{id}")),
        context: r#"{"account":"42"}"#.to_owned(),
        target,
        fallback,
        priority,
        max_wait_s: None,
        enrichment: Vec::new(),
        created_by: Some("main-ivr".to_owned()),
        created_at,
    }
}

/// Executes a command that must succeed, and returns its events each with the recipients that
/// `apply` reports for it (computed on a copy of the state taken before the command).
fn run(state: &mut State, command: Command, now: Timestamp) -> Vec<(Event, Vec<AgentId>)> {
    let mut shadow = state.clone();
    let events = state
        .execute(command.clone(), now)
        .unwrap_or_else(|e| panic!("{command:?} was refused: {e}"));
    events
        .into_iter()
        .map(|event| {
            let recipients = shadow.apply(&event);
            (event, recipients)
        })
        .collect()
}

/// Executes a command that must succeed and returns only its events.
fn ok(state: &mut State, command: Command, now: Timestamp) -> Vec<Event> {
    run(state, command, now)
        .into_iter()
        .map(|(e, _)| e)
        .collect()
}

/// Executes a command that must be refused; asserts that nothing observable changed.
fn refused(state: &mut State, command: Command, now: Timestamp) -> CommandError {
    let before = observe(state);
    let result = state.execute(command.clone(), now);
    let after = observe(state);
    assert_eq!(
        before, after,
        "a refused command ({command:?}) changed the state"
    );
    match result {
        Err(error) => error,
        Ok(events) => panic!("{command:?} should have been refused but emitted {events:?}"),
    }
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::type_name).collect()
}

fn add_agent(state: &mut State, id: &str, capacity: u32, now: Timestamp) {
    ok(
        state,
        Command::UpsertAgent {
            profile: profile(id, capacity),
        },
        now,
    );
}

fn presence_cmd(id: &str, status: PresenceStatus) -> Command {
    Command::SetPresence {
        agent: aid(id),
        status,
        reason: None,
        source: PresenceSource::Desktop,
    }
}

fn set_presence(state: &mut State, id: &str, status: PresenceStatus, now: Timestamp) -> Vec<Event> {
    ok(state, presence_cmd(id, status), now)
}

fn available_agent(state: &mut State, id: &str, capacity: u32, now: Timestamp) {
    add_agent(state, id, capacity, now);
    set_presence(state, id, PresenceStatus::Available, now);
}

fn create(
    state: &mut State,
    id: &str,
    target: Target,
    fallback: Option<Target>,
    priority: i32,
    now: Timestamp,
) -> Vec<Event> {
    ok(
        state,
        Command::CreateInteraction {
            spec: spec(id, target, fallback, priority, now),
        },
        now,
    )
}

fn accept(id: &str, agent: &str) -> Command {
    Command::Accept {
        id: iid(id),
        agent: aid(agent),
    }
}

fn reject(id: &str, agent: &str) -> Command {
    Command::Reject {
        id: iid(id),
        agent: aid(agent),
    }
}

fn complete(id: &str, agent: &str) -> Command {
    Command::Complete {
        id: iid(id),
        agent: aid(agent),
        disposition: Some("resolved".to_owned()),
        notes: Some("refund issued".to_owned()),
    }
}

fn hangup(id: &str) -> Command {
    Command::Hangup { id: iid(id) }
}

fn transfer(
    id: &str,
    agent: &str,
    target: Target,
    fallback: Option<Target>,
    note: Option<&str>,
) -> Command {
    Command::Transfer {
        id: iid(id),
        agent: aid(agent),
        target,
        fallback,
        note: note.map(str::to_owned),
    }
}

fn interaction<'a>(state: &'a State, id: &str) -> &'a Interaction {
    state.interaction(&iid(id)).expect("interaction exists")
}

fn held_ids(state: &State, agent: &str) -> Vec<InteractionId> {
    let mut ids: Vec<InteractionId> = state
        .held_by(&aid(agent))
        .map(|i| i.spec.id.clone())
        .collect();
    ids.sort();
    ids
}

/// Everything a caller of the core can observe.
#[derive(Debug, PartialEq)]
struct Observed {
    agents: Vec<(Agent, Activity, Vec<InteractionId>)>,
    interactions: Vec<(Interaction, Option<usize>)>,
    next_deadline: Option<Timestamp>,
}

fn observe(state: &State) -> Observed {
    Observed {
        agents: state
            .agents()
            .map(|a| {
                let id = a.profile.id.clone();
                (a.clone(), state.activity(&id), held_ids(state, id.as_str()))
            })
            .collect(),
        interactions: state
            .interactions()
            .map(|i| (i.clone(), state.position(&i.spec.id)))
            .collect(),
        next_deadline: state.next_deadline(),
    }
}

fn expect_offered(event: &Event, id: &str, agent: &str, now: Timestamp) {
    match event {
        Event::InteractionOffered {
            id: got_id,
            agent: got_agent,
            expires_at,
            at,
            ..
        } => {
            assert_eq!(got_id, &iid(id), "offered the wrong interaction: {event:?}");
            assert_eq!(
                got_agent,
                &aid(agent),
                "offered to the wrong agent: {event:?}"
            );
            assert_eq!(*expires_at, now.plus_seconds(OFFER_TIMEOUT_S));
            assert_eq!(*at, now);
        }
        other => panic!("expected interaction.offered of {id} to {agent}, got {other:?}"),
    }
}

fn expect_revoked(event: &Event, id: &str, agent: &str, reason: OfferEndReason) {
    match event {
        Event::OfferRevoked {
            id: got_id,
            agent: got_agent,
            reason: got_reason,
            ..
        } => {
            assert_eq!(got_id, &iid(id));
            assert_eq!(got_agent, &aid(agent));
            assert_eq!(*got_reason, reason);
        }
        other => panic!("expected offer_revoked of {id} from {agent}, got {other:?}"),
    }
}

fn expect_queued(event: &Event, id: &str, target: Target) {
    match event {
        Event::InteractionQueued {
            id: got_id,
            target: got_target,
            ..
        } => {
            assert_eq!(got_id, &iid(id));
            assert_eq!(got_target, &target);
        }
        other => panic!("expected interaction.queued of {id}, got {other:?}"),
    }
}

// ----- agents and presence -------------------------------------------------------------------

#[test]
fn a_new_agent_starts_offline_with_no_reason_and_system_source_since_its_creation() {
    let mut state = State::new(settings());
    let out = run(
        &mut state,
        Command::UpsertAgent {
            profile: profile("alice", 1),
        },
        t(1_000),
    );
    assert_eq!(out.len(), 1);
    let (event, recipients) = &out[0];
    assert_eq!(event.type_name(), "agent.created");
    assert!(
        recipients.is_empty(),
        "agent.created is nobody's presence change: {recipients:?}"
    );

    let alice = state.agent(&aid("alice")).unwrap();
    assert_eq!(alice.profile, profile("alice", 1));
    assert_eq!(alice.presence.status, PresenceStatus::Offline);
    assert_eq!(alice.presence.reason, None);
    assert_eq!(alice.presence.source, PresenceSource::System);
    assert_eq!(alice.presence.since, t(1_000));
    assert_eq!(state.activity(&aid("alice")), Activity::Idle);
}

#[test]
fn upserting_an_identical_profile_emits_nothing_and_a_changed_one_emits_agent_updated_keeping_presence(
) {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    assert!(ok(
        &mut state,
        Command::UpsertAgent {
            profile: profile("alice", 1)
        },
        t(10)
    )
    .is_empty());

    let mut changed = profile("alice", 2);
    changed.name = "Alice Smith".to_owned();
    let out = ok(
        &mut state,
        Command::UpsertAgent {
            profile: changed.clone(),
        },
        t(20),
    );
    assert_eq!(kinds(&out), ["agent.updated"]);
    let alice = state.agent(&aid("alice")).unwrap();
    assert_eq!(alice.profile, changed);
    assert_eq!(
        alice.presence.status,
        PresenceStatus::Available,
        "an update keeps presence"
    );
}

#[test]
fn set_presence_with_the_same_status_and_reason_emits_nothing_even_from_another_source() {
    let mut state = State::new(settings());
    add_agent(&mut state, "alice", 1, t(0));
    // Offline, no reason: the state a new agent starts in.
    let out = ok(
        &mut state,
        Command::SetPresence {
            agent: aid("alice"),
            status: PresenceStatus::Offline,
            reason: None,
            source: PresenceSource::Admin,
        },
        t(5),
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(state.agent(&aid("alice")).unwrap().presence.since, t(0));
    assert_eq!(
        state.agent(&aid("alice")).unwrap().presence.source,
        PresenceSource::System
    );

    set_presence(&mut state, "alice", PresenceStatus::Available, t(10));
    assert!(set_presence(&mut state, "alice", PresenceStatus::Available, t(20)).is_empty());
    assert_eq!(state.agent(&aid("alice")).unwrap().presence.since, t(10));
}

#[test]
fn set_presence_with_a_new_status_emits_presence_changed_for_that_agent_only() {
    let mut state = State::new(settings());
    add_agent(&mut state, "alice", 1, t(0));
    add_agent(&mut state, "bob", 1, t(0));
    let out = run(
        &mut state,
        Command::SetPresence {
            agent: aid("alice"),
            status: PresenceStatus::Away,
            reason: Some("lunch".to_owned()),
            source: PresenceSource::Uc,
        },
        t(7_000),
    );
    assert_eq!(out.len(), 1);
    let (event, recipients) = &out[0];
    match event {
        Event::PresenceChanged { agent, presence } => {
            assert_eq!(agent, &aid("alice"));
            assert_eq!(presence.status, PresenceStatus::Away);
            assert_eq!(presence.reason.as_deref(), Some("lunch"));
            assert_eq!(presence.source, PresenceSource::Uc);
            assert_eq!(presence.since, t(7_000));
        }
        other => panic!("expected presence_changed, got {other:?}"),
    }
    assert_eq!(recipients, &vec![aid("alice")]);
    let alice = state.agent(&aid("alice")).unwrap();
    assert_eq!(alice.presence.status, PresenceStatus::Away);
    assert_eq!(alice.presence.reason.as_deref(), Some("lunch"));
    assert_eq!(
        state.agent(&aid("bob")).unwrap().presence.status,
        PresenceStatus::Offline
    );
}

#[test]
fn set_presence_with_the_same_status_but_another_reason_emits_presence_changed() {
    let mut state = State::new(settings());
    add_agent(&mut state, "alice", 1, t(0));
    let away = |reason: &str, at: i64, state: &mut State| {
        ok(
            state,
            Command::SetPresence {
                agent: aid("alice"),
                status: PresenceStatus::Away,
                reason: Some(reason.to_owned()),
                source: PresenceSource::Desktop,
            },
            t(at),
        )
    };
    assert_eq!(
        kinds(&away("lunch", 10, &mut state)),
        ["agent.presence_changed"]
    );
    assert_eq!(
        kinds(&away("meeting", 20, &mut state)),
        ["agent.presence_changed"]
    );
    assert!(away("meeting", 30, &mut state).is_empty());
    assert_eq!(
        state
            .agent(&aid("alice"))
            .unwrap()
            .presence
            .reason
            .as_deref(),
        Some("meeting")
    );
}

#[test]
fn set_presence_of_an_unknown_agent_is_refused_as_unknown_agent() {
    let mut state = State::new(settings());
    let error = refused(
        &mut state,
        presence_cmd("ghost", PresenceStatus::Available),
        t(0),
    );
    assert_eq!(error, CommandError::UnknownAgent(aid("ghost")));
}

// ----- creating interactions -----------------------------------------------------------------

#[test]
fn an_interaction_to_an_available_agent_with_capacity_is_created_then_offered_with_deadline_now_plus_offer_timeout(
) {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    let now = t(1_000);
    let out = run(
        &mut state,
        Command::CreateInteraction {
            spec: spec("call-1", to_agent("alice"), None, 0, now),
        },
        now,
    );
    let events: Vec<Event> = out.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(
        kinds(&events),
        ["interaction.created", "interaction.offered"]
    );
    assert!(
        out[0].1.is_empty(),
        "nobody holds a just-created interaction"
    );
    expect_offered(&events[1], "call-1", "alice", now);
    assert_eq!(out[1].1, vec![aid("alice")]);

    let call = interaction(&state, "call-1");
    assert_eq!(call.state, InteractionState::Offered);
    assert_eq!(call.agent, Some(aid("alice")));
    assert_eq!(call.offer_expires_at, Some(t(21_000)));
    assert!(call.involved_agents.contains(&aid("alice")));
    assert_eq!(
        state.position(&iid("call-1")),
        None,
        "an offered interaction has no position"
    );
    assert_eq!(state.activity(&aid("alice")), Activity::Offered);
    assert_eq!(held_ids(&state, "alice"), vec![iid("call-1")]);
    assert_eq!(state.next_deadline(), Some(t(21_000)));
}

#[test]
fn an_interaction_to_an_offline_away_or_busy_agent_is_created_then_queued_at_position_one() {
    for status in [
        PresenceStatus::Offline,
        PresenceStatus::Away,
        PresenceStatus::Busy,
    ] {
        let mut state = State::new(settings());
        add_agent(&mut state, "alice", 1, t(0));
        if status != PresenceStatus::Offline {
            set_presence(&mut state, "alice", status, t(0));
        }
        let out = create(&mut state, "call-1", to_agent("alice"), None, 0, t(500));
        assert_eq!(
            kinds(&out),
            ["interaction.created", "interaction.queued"],
            "status {status:?}"
        );
        expect_queued(&out[1], "call-1", to_agent("alice"));
        let call = interaction(&state, "call-1");
        assert_eq!(call.state, InteractionState::Queued);
        assert_eq!(call.agent, None);
        assert_eq!(call.offer_expires_at, None);
        assert_eq!(state.position(&iid("call-1")), Some(1));
        assert_eq!(state.activity(&aid("alice")), Activity::Idle);
        // The caller waits for alice at most the server's `agent_max_wait_s`.
        assert_eq!(call.max_wait_at, Some(t(500 + 60_000)));
        assert_eq!(state.next_deadline(), Some(t(500 + 60_000)));
    }
}

#[test]
fn a_queued_interaction_is_offered_right_after_presence_changed_when_its_agent_becomes_available() {
    let mut state = State::new(settings());
    add_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(100));
    let now = t(5_000);
    let out = set_presence(&mut state, "alice", PresenceStatus::Available, now);
    assert_eq!(
        kinds(&out),
        ["agent.presence_changed", "interaction.offered"]
    );
    expect_offered(&out[1], "call-1", "alice", now);
    assert_eq!(
        interaction(&state, "call-1").state,
        InteractionState::Offered
    );
    assert_eq!(state.position(&iid("call-1")), None);
}

#[test]
fn a_capacity_one_agent_becoming_available_gets_only_the_first_caller_by_priority_then_waiting_since(
) {
    let mut state = State::new(settings());
    add_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "low-early", to_agent("alice"), None, 0, t(100));
    create(&mut state, "high-late", to_agent("alice"), None, 5, t(200));
    create(&mut state, "low-late", to_agent("alice"), None, 0, t(300));
    assert_eq!(state.position(&iid("high-late")), Some(1));
    assert_eq!(state.position(&iid("low-early")), Some(2));
    assert_eq!(state.position(&iid("low-late")), Some(3));

    let out = set_presence(&mut state, "alice", PresenceStatus::Available, t(1_000));
    assert_eq!(
        kinds(&out),
        ["agent.presence_changed", "interaction.offered"]
    );
    expect_offered(&out[1], "high-late", "alice", t(1_000));
    assert_eq!(state.position(&iid("low-early")), Some(1));
    assert_eq!(state.position(&iid("low-late")), Some(2));

    // When alice frees up (reject, no fallback), the next in line is offered.
    let out = ok(&mut state, reject("high-late", "alice"), t(2_000));
    assert_eq!(
        kinds(&out),
        [
            "interaction.rejected",
            "interaction.unanswered",
            "interaction.offered"
        ]
    );
    expect_offered(&out[2], "low-early", "alice", t(2_000));
    assert_eq!(state.position(&iid("low-late")), Some(1));
}

#[test]
fn a_capacity_two_agent_becoming_available_gets_two_offers_in_line_order_and_the_third_waits() {
    let mut state = State::new(settings());
    add_agent(&mut state, "alice", 2, t(0));
    create(&mut state, "a", to_agent("alice"), None, 0, t(100));
    create(&mut state, "b", to_agent("alice"), None, 0, t(200));
    create(&mut state, "c", to_agent("alice"), None, 1, t(300));
    let out = set_presence(&mut state, "alice", PresenceStatus::Available, t(1_000));
    assert_eq!(
        kinds(&out),
        [
            "agent.presence_changed",
            "interaction.offered",
            "interaction.offered"
        ]
    );
    expect_offered(&out[1], "c", "alice", t(1_000));
    expect_offered(&out[2], "a", "alice", t(1_000));
    assert_eq!(interaction(&state, "b").state, InteractionState::Queued);
    assert_eq!(state.position(&iid("b")), Some(1));
    assert_eq!(held_ids(&state, "alice"), vec![iid("a"), iid("c")]);
}

#[test]
fn an_available_agent_at_capacity_gets_new_callers_queued_until_an_offer_ends() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "first", to_agent("alice"), None, 0, t(10));
    let out = create(&mut state, "second", to_agent("alice"), None, 9, t(20));
    assert_eq!(kinds(&out), ["interaction.created", "interaction.queued"]);
    ok(&mut state, accept("first", "alice"), t(30));
    assert_eq!(
        interaction(&state, "second").state,
        InteractionState::Queued,
        "engaged is still held"
    );
    ok(&mut state, hangup("first"), t(40));
    assert_eq!(
        interaction(&state, "second").state,
        InteractionState::Queued,
        "wrap-up is still held"
    );
    let out = ok(&mut state, complete("first", "alice"), t(50));
    assert_eq!(
        kinds(&out),
        ["interaction.completed", "interaction.offered"]
    );
    expect_offered(&out[1], "second", "alice", t(50));
}

#[test]
fn an_agent_whose_capacity_is_raised_is_offered_waiting_callers_at_once() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "a", to_agent("alice"), None, 0, t(10));
    create(&mut state, "b", to_agent("alice"), None, 0, t(20));
    let out = ok(
        &mut state,
        Command::UpsertAgent {
            profile: profile("alice", 2),
        },
        t(30),
    );
    assert_eq!(kinds(&out), ["agent.updated", "interaction.offered"]);
    expect_offered(&out[1], "b", "alice", t(30));
}

// ----- refusals ------------------------------------------------------------------------------

#[test]
fn creating_an_interaction_for_an_unknown_target_agent_is_refused() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    let error = refused(
        &mut state,
        Command::CreateInteraction {
            spec: spec("call-1", to_agent("ghost"), None, 0, t(1)),
        },
        t(1),
    );
    assert_eq!(error, CommandError::UnknownTargetAgent(aid("ghost")));
    // An unknown fallback agent too.
    let error = refused(
        &mut state,
        Command::CreateInteraction {
            spec: spec(
                "call-1",
                to_agent("alice"),
                Some(to_agent("ghost")),
                0,
                t(1),
            ),
        },
        t(1),
    );
    assert_eq!(error, CommandError::UnknownTargetAgent(aid("ghost")));
    assert!(state.interaction(&iid("call-1")).is_none());
}

#[test]
fn creating_an_interaction_for_any_queue_target_or_queue_fallback_is_refused_as_unknown_target_queue(
) {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    let error = refused(
        &mut state,
        Command::CreateInteraction {
            spec: spec("call-1", to_queue("billing"), None, 0, t(1)),
        },
        t(1),
    );
    assert_eq!(
        error,
        CommandError::UnknownTargetQueue("billing".to_owned())
    );
    let error = refused(
        &mut state,
        Command::CreateInteraction {
            spec: spec(
                "call-1",
                to_agent("alice"),
                Some(to_queue("general")),
                0,
                t(1),
            ),
        },
        t(1),
    );
    assert_eq!(
        error,
        CommandError::UnknownTargetQueue("general".to_owned())
    );
}

#[test]
fn creating_an_interaction_whose_fallback_equals_its_target_is_refused() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    let error = refused(
        &mut state,
        Command::CreateInteraction {
            spec: spec(
                "call-1",
                to_agent("alice"),
                Some(to_agent("alice")),
                0,
                t(1),
            ),
        },
        t(1),
    );
    assert_eq!(error, CommandError::FallbackSameAsTarget);
}

#[test]
fn creating_an_interaction_with_an_existing_id_is_refused_as_duplicate_and_keeps_the_first() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    add_agent(&mut state, "bob", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(1));
    let error = refused(
        &mut state,
        Command::CreateInteraction {
            spec: spec("call-1", to_agent("bob"), None, 3, t(2)),
        },
        t(2),
    );
    assert_eq!(error, CommandError::DuplicateInteraction(iid("call-1")));
    assert_eq!(interaction(&state, "call-1").spec.target, to_agent("alice"));
    assert_eq!(state.interactions().count(), 1);
}

#[test]
fn every_refused_command_leaves_agents_interactions_positions_and_deadlines_untouched() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    add_agent(&mut state, "carol", 1, t(0));
    create(
        &mut state,
        "offered",
        to_agent("alice"),
        Some(to_agent("carol")),
        0,
        t(10),
    );
    create(&mut state, "accepted", to_agent("bob"), None, 0, t(20));
    ok(&mut state, accept("accepted", "bob"), t(30));
    create(&mut state, "queued", to_agent("carol"), None, 0, t(40));
    create(&mut state, "done", to_agent("alice"), None, 0, t(50)); // queued behind "offered"
    ok(&mut state, hangup("done"), t(55));

    let now = t(60);
    let cases: Vec<(Command, CommandError)> = vec![
        (
            presence_cmd("ghost", PresenceStatus::Available),
            CommandError::UnknownAgent(aid("ghost")),
        ),
        (
            Command::DeleteAgent {
                agent: aid("ghost"),
            },
            CommandError::UnknownAgent(aid("ghost")),
        ),
        (
            Command::DeleteAgent { agent: aid("bob") },
            CommandError::AgentHoldsInteractions(aid("bob")),
        ),
        (
            Command::ConnectionLost {
                agent: aid("ghost"),
            },
            CommandError::UnknownAgent(aid("ghost")),
        ),
        (
            Command::CreateInteraction {
                spec: spec("offered", to_agent("bob"), None, 0, now),
            },
            CommandError::DuplicateInteraction(iid("offered")),
        ),
        (
            Command::CreateInteraction {
                spec: spec("new", to_agent("ghost"), None, 0, now),
            },
            CommandError::UnknownTargetAgent(aid("ghost")),
        ),
        (
            Command::CreateInteraction {
                spec: spec("new", to_queue("q"), None, 0, now),
            },
            CommandError::UnknownTargetQueue("q".to_owned()),
        ),
        (
            Command::CreateInteraction {
                spec: spec("new", to_agent("carol"), Some(to_agent("carol")), 0, now),
            },
            CommandError::FallbackSameAsTarget,
        ),
        (
            accept("nope", "alice"),
            CommandError::UnknownInteraction(iid("nope")),
        ),
        (
            accept("offered", "bob"),
            CommandError::NotHeldByAgent {
                id: iid("offered"),
                agent: aid("bob"),
            },
        ),
        (
            accept("queued", "carol"),
            CommandError::WrongState {
                action: "accept",
                state: InteractionState::Queued,
            },
        ),
        (
            accept("accepted", "bob"),
            CommandError::WrongState {
                action: "accept",
                state: InteractionState::Accepted,
            },
        ),
        (
            reject("accepted", "bob"),
            CommandError::WrongState {
                action: "reject",
                state: InteractionState::Accepted,
            },
        ),
        (
            reject("offered", "carol"),
            CommandError::NotHeldByAgent {
                id: iid("offered"),
                agent: aid("carol"),
            },
        ),
        (
            complete("offered", "alice"),
            CommandError::WrongState {
                action: "complete",
                state: InteractionState::Offered,
            },
        ),
        (
            complete("accepted", "alice"),
            CommandError::NotHeldByAgent {
                id: iid("accepted"),
                agent: aid("alice"),
            },
        ),
        (
            transfer("accepted", "bob", to_agent("bob"), None, None),
            CommandError::TransferToSelf,
        ),
        (
            transfer("accepted", "bob", to_agent("ghost"), None, None),
            CommandError::UnknownTargetAgent(aid("ghost")),
        ),
        (
            transfer("accepted", "bob", to_queue("q"), None, None),
            CommandError::UnknownTargetQueue("q".to_owned()),
        ),
        (
            transfer(
                "accepted",
                "bob",
                to_agent("carol"),
                Some(to_agent("carol")),
                None,
            ),
            CommandError::FallbackSameAsTarget,
        ),
        (
            transfer("offered", "alice", to_agent("carol"), None, None),
            CommandError::WrongState {
                action: "transfer",
                state: InteractionState::Offered,
            },
        ),
        (
            transfer("accepted", "alice", to_agent("carol"), None, None),
            CommandError::NotHeldByAgent {
                id: iid("accepted"),
                agent: aid("alice"),
            },
        ),
        (
            hangup("nope"),
            CommandError::UnknownInteraction(iid("nope")),
        ),
        (
            hangup("done"),
            CommandError::WrongState {
                action: "hang up",
                state: InteractionState::Abandoned,
            },
        ),
    ];
    for (command, expected) in cases {
        let error = refused(&mut state, command.clone(), now);
        assert_eq!(error, expected, "for {command:?}");
    }
}

// ----- accept, reject, fallback --------------------------------------------------------------

#[test]
fn accept_by_the_offered_agent_emits_accepted_makes_it_engaged_and_clears_the_deadline() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(10));
    let out = run(&mut state, accept("call-1", "alice"), t(5_000));
    assert_eq!(out.len(), 1);
    match &out[0].0 {
        Event::InteractionAccepted { id, agent, at } => {
            assert_eq!(id, &iid("call-1"));
            assert_eq!(agent, &aid("alice"));
            assert_eq!(*at, t(5_000));
        }
        other => panic!("expected accepted, got {other:?}"),
    }
    assert_eq!(out[0].1, vec![aid("alice")]);
    let call = interaction(&state, "call-1");
    assert_eq!(call.state, InteractionState::Accepted);
    assert_eq!(call.agent, Some(aid("alice")));
    assert_eq!(call.offer_expires_at, None);
    assert_eq!(state.next_deadline(), None);
    assert_eq!(state.activity(&aid("alice")), Activity::Engaged);
    // An accepted interaction never times out.
    assert!(ok(&mut state, Command::Tick, t(1_000_000)).is_empty());
    assert_eq!(
        interaction(&state, "call-1").state,
        InteractionState::Accepted
    );
}

#[test]
fn accept_by_an_agent_other_than_the_offered_one_is_refused_as_not_held_by_agent() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(10));
    let error = refused(&mut state, accept("call-1", "bob"), t(20));
    assert_eq!(
        error,
        CommandError::NotHeldByAgent {
            id: iid("call-1"),
            agent: aid("bob")
        }
    );
    let error = refused(&mut state, reject("call-1", "bob"), t(20));
    assert_eq!(
        error,
        CommandError::NotHeldByAgent {
            id: iid("call-1"),
            agent: aid("bob")
        }
    );
}

#[test]
fn accept_of_a_queued_accepted_or_terminal_interaction_is_refused_as_wrong_state() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(10));
    create(&mut state, "call-2", to_agent("alice"), None, 0, t(11));
    assert_eq!(
        refused(&mut state, accept("call-2", "alice"), t(12)),
        CommandError::WrongState {
            action: "accept",
            state: InteractionState::Queued
        }
    );
    ok(&mut state, accept("call-1", "alice"), t(13));
    assert_eq!(
        refused(&mut state, accept("call-1", "alice"), t(14)),
        CommandError::WrongState {
            action: "accept",
            state: InteractionState::Accepted
        }
    );
    ok(&mut state, hangup("call-2"), t(15));
    assert_eq!(
        refused(&mut state, accept("call-2", "alice"), t(16)),
        CommandError::WrongState {
            action: "accept",
            state: InteractionState::Abandoned
        }
    );
}

#[test]
fn reject_without_fallback_emits_rejected_then_unanswered_and_frees_the_agent() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(10));
    let out = run(&mut state, reject("call-1", "alice"), t(20));
    let events: Vec<Event> = out.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(
        kinds(&events),
        ["interaction.rejected", "interaction.unanswered"]
    );
    assert_eq!(
        out[0].1,
        vec![aid("alice")],
        "rejected is for the agent who had the offer"
    );
    assert!(out[1].1.is_empty(), "unanswered is held by nobody");
    let call = interaction(&state, "call-1");
    assert_eq!(call.state, InteractionState::Unanswered);
    assert_eq!(call.agent, None);
    assert_eq!(call.offer_expires_at, None);
    assert!(
        call.involved_agents.contains(&aid("alice")),
        "alice may still read it"
    );
    assert_eq!(state.activity(&aid("alice")), Activity::Idle);
    assert_eq!(state.next_deadline(), None);
    assert_eq!(
        refused(&mut state, reject("call-1", "alice"), t(30)),
        CommandError::WrongState {
            action: "reject",
            state: InteractionState::Unanswered
        }
    );
}

#[test]
fn reject_with_an_available_fallback_agent_offers_it_to_the_fallback_at_once() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    create(
        &mut state,
        "call-1",
        to_agent("alice"),
        Some(to_agent("bob")),
        0,
        t(10),
    );
    let out = run(&mut state, reject("call-1", "alice"), t(2_000));
    let events: Vec<Event> = out.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(
        kinds(&events),
        ["interaction.rejected", "interaction.offered"]
    );
    expect_offered(&events[1], "call-1", "bob", t(2_000));
    assert_eq!(out[1].1, vec![aid("bob")]);
    match &events[1] {
        Event::InteractionOffered { target, .. } => assert_eq!(target, &to_agent("bob")),
        _ => unreachable!(),
    }
    let call = interaction(&state, "call-1");
    assert_eq!(call.current_target, to_agent("bob"));
    assert_eq!(call.pending_fallback, None, "the fallback is used up");
    assert_eq!(call.agent, Some(aid("bob")));
    assert_eq!(
        call.involved_agents.iter().cloned().collect::<Vec<_>>(),
        vec![aid("alice"), aid("bob")]
    );
    assert_eq!(state.activity(&aid("alice")), Activity::Idle);
    assert_eq!(state.activity(&aid("bob")), Activity::Offered);
}

#[test]
fn reject_with_an_unavailable_fallback_agent_queues_for_it_and_offers_when_it_becomes_available() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    add_agent(&mut state, "bob", 1, t(0));
    create(
        &mut state,
        "call-1",
        to_agent("alice"),
        Some(to_agent("bob")),
        0,
        t(10),
    );
    let out = ok(&mut state, reject("call-1", "alice"), t(20));
    assert_eq!(kinds(&out), ["interaction.rejected", "interaction.queued"]);
    expect_queued(&out[1], "call-1", to_agent("bob"));
    let call = interaction(&state, "call-1");
    assert_eq!(call.state, InteractionState::Queued);
    assert_eq!(call.current_target, to_agent("bob"));
    assert_eq!(call.pending_fallback, None);
    assert_eq!(state.position(&iid("call-1")), Some(1));

    let out = set_presence(&mut state, "bob", PresenceStatus::Available, t(30));
    assert_eq!(
        kinds(&out),
        ["agent.presence_changed", "interaction.offered"]
    );
    expect_offered(&out[1], "call-1", "bob", t(30));
}

#[test]
fn a_fallback_agent_already_busy_with_others_waiting_queues_the_missed_caller_behind_them() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    add_agent(&mut state, "bob", 1, t(0));
    create(&mut state, "early", to_agent("bob"), None, 0, t(5));
    create(
        &mut state,
        "call-1",
        to_agent("alice"),
        Some(to_agent("bob")),
        0,
        t(10),
    );
    let out = ok(&mut state, reject("call-1", "alice"), t(20));
    assert_eq!(kinds(&out), ["interaction.rejected", "interaction.queued"]);
    assert_eq!(state.position(&iid("early")), Some(1));
    assert_eq!(state.position(&iid("call-1")), Some(2));
    let out = set_presence(&mut state, "bob", PresenceStatus::Available, t(30));
    assert_eq!(
        kinds(&out),
        ["agent.presence_changed", "interaction.offered"]
    );
    expect_offered(&out[1], "early", "bob", t(30));
}

#[test]
fn the_fallback_is_used_only_once_so_a_second_missed_offer_is_unanswered() {
    // About fallbacks, not about agents who keep missing offers: those are set away after two
    // misses by default, which this test turns off.
    let mut state = State::new(Settings {
        max_missed_offers: 0,
        ..settings()
    });
    available_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    create(
        &mut state,
        "call-1",
        to_agent("alice"),
        Some(to_agent("bob")),
        0,
        t(10),
    );
    ok(&mut state, reject("call-1", "alice"), t(20));
    let out = ok(&mut state, reject("call-1", "bob"), t(30));
    assert_eq!(
        kinds(&out),
        ["interaction.rejected", "interaction.unanswered"]
    );
    assert_eq!(
        interaction(&state, "call-1").state,
        InteractionState::Unanswered
    );
    assert_eq!(state.activity(&aid("alice")), Activity::Idle);
    assert_eq!(state.activity(&aid("bob")), Activity::Idle);

    // Same with a timeout as the second miss.
    create(
        &mut state,
        "call-2",
        to_agent("alice"),
        Some(to_agent("bob")),
        0,
        t(40),
    );
    ok(&mut state, reject("call-2", "alice"), t(50));
    let out = ok(
        &mut state,
        Command::Tick,
        t(50).plus_seconds(OFFER_TIMEOUT_S),
    );
    assert_eq!(
        kinds(&out),
        ["interaction.offer_revoked", "interaction.unanswered"]
    );
    expect_revoked(&out[0], "call-2", "bob", OfferEndReason::TimedOut);
}

// ----- missed offers --------------------------------------------------------------------------

fn expect_away_missed_offers(event: &Event, agent: &str, now: Timestamp) {
    match event {
        Event::PresenceChanged {
            agent: got,
            presence,
        } => {
            assert_eq!(got, &aid(agent));
            assert_eq!(presence.status, PresenceStatus::Away);
            assert_eq!(presence.reason.as_deref(), Some("missed_offers"));
            assert_eq!(presence.source, PresenceSource::System);
            assert_eq!(presence.since, now);
        }
        other => panic!("expected {agent} set away for missed offers, got {other:?}"),
    }
}

#[test]
fn an_available_agent_who_misses_two_offers_in_a_row_a_reject_then_a_timeout_is_set_away_missed_offers_by_system(
) {
    let mut state = State::new(settings());
    assert_eq!(state.settings().max_missed_offers, 2, "the default");
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "first", to_agent("alice"), None, 0, t(10));
    create(&mut state, "second", to_agent("alice"), None, 0, t(20));
    create(&mut state, "third", to_agent("alice"), None, 0, t(30));

    // One miss: no presence change, the next caller is offered.
    let out = ok(&mut state, reject("first", "alice"), t(1_000));
    assert_eq!(
        kinds(&out),
        [
            "interaction.rejected",
            "interaction.unanswered",
            "interaction.offered"
        ]
    );
    expect_offered(&out[2], "second", "alice", t(1_000));
    assert_eq!(state.agent(&aid("alice")).unwrap().missed_in_a_row, 1);

    // The second miss in a row, by timeout: away, and the third caller is not offered.
    let now = t(21_000);
    let out = run(&mut state, Command::Tick, now);
    let events: Vec<Event> = out.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(
        kinds(&events),
        [
            "interaction.offer_revoked",
            "interaction.unanswered",
            "agent.presence_changed"
        ]
    );
    expect_revoked(&events[0], "second", "alice", OfferEndReason::TimedOut);
    expect_away_missed_offers(&events[2], "alice", now);
    assert_eq!(out[2].1, vec![aid("alice")]);
    let alice = state.agent(&aid("alice")).unwrap();
    assert_eq!(alice.presence.status, PresenceStatus::Away);
    assert_eq!(alice.missed_in_a_row, 2);
    assert_eq!(interaction(&state, "third").state, InteractionState::Queued);
    assert_eq!(state.position(&iid("third")), Some(1));

    // Coming back resets the count: one more miss does not send her away again.
    let out = set_presence(&mut state, "alice", PresenceStatus::Available, t(30_000));
    assert_eq!(
        kinds(&out),
        ["agent.presence_changed", "interaction.offered"]
    );
    assert_eq!(state.agent(&aid("alice")).unwrap().missed_in_a_row, 0);
    let out = ok(&mut state, reject("third", "alice"), t(31_000));
    assert_eq!(
        kinds(&out),
        ["interaction.rejected", "interaction.unanswered"]
    );
    assert_eq!(
        state.agent(&aid("alice")).unwrap().presence.status,
        PresenceStatus::Available
    );
}

#[test]
fn an_accept_between_two_misses_resets_the_count_and_abandons_or_lost_connections_are_no_misses() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "a", to_agent("alice"), None, 0, t(10));
    ok(&mut state, reject("a", "alice"), t(20));
    create(&mut state, "b", to_agent("alice"), None, 0, t(30));
    ok(&mut state, accept("b", "alice"), t(40));
    assert_eq!(state.agent(&aid("alice")).unwrap().missed_in_a_row, 0);
    ok(&mut state, complete("b", "alice"), t(50));
    create(&mut state, "c", to_agent("alice"), None, 0, t(60));
    let out = ok(&mut state, reject("c", "alice"), t(70));
    assert_eq!(
        kinds(&out),
        ["interaction.rejected", "interaction.unanswered"]
    );
    assert_eq!(state.agent(&aid("alice")).unwrap().missed_in_a_row, 1);

    // The caller hanging up during the offer is not alice's miss.
    create(&mut state, "d", to_agent("alice"), None, 0, t(80));
    let out = ok(&mut state, hangup("d"), t(90));
    assert_eq!(
        kinds(&out),
        ["interaction.offer_revoked", "interaction.abandoned"]
    );
    assert_eq!(state.agent(&aid("alice")).unwrap().missed_in_a_row, 1);
    assert_eq!(
        state.agent(&aid("alice")).unwrap().presence.status,
        PresenceStatus::Available
    );
}

#[test]
fn an_agent_no_longer_available_when_its_second_miss_times_out_keeps_its_presence() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 2, t(0));
    create(&mut state, "a", to_agent("alice"), None, 0, t(10));
    create(&mut state, "b", to_agent("alice"), None, 0, t(10));
    set_presence(&mut state, "alice", PresenceStatus::Busy, t(20));
    let out = ok(&mut state, Command::Tick, t(20_010));
    assert_eq!(
        kinds(&out),
        [
            "interaction.offer_revoked",
            "interaction.unanswered",
            "interaction.offer_revoked",
            "interaction.unanswered"
        ]
    );
    let alice = state.agent(&aid("alice")).unwrap();
    assert_eq!(alice.presence.status, PresenceStatus::Busy);
    assert_eq!(alice.presence.reason, None);
    assert_eq!(alice.missed_in_a_row, 2);
}

#[test]
fn max_missed_offers_zero_never_sets_an_agent_away_and_one_does_so_after_a_single_miss() {
    let mut state = State::new(Settings {
        max_missed_offers: 0,
        ..settings()
    });
    available_agent(&mut state, "alice", 1, t(0));
    for (n, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let at = 100 * n as i64;
        create(&mut state, id, to_agent("alice"), None, 0, t(at));
        let out = ok(&mut state, reject(id, "alice"), t(at + 50));
        assert_eq!(
            kinds(&out),
            ["interaction.rejected", "interaction.unanswered"]
        );
    }
    assert_eq!(state.agent(&aid("alice")).unwrap().missed_in_a_row, 4);
    assert_eq!(
        state.agent(&aid("alice")).unwrap().presence.status,
        PresenceStatus::Available
    );

    let mut state = State::new(Settings {
        max_missed_offers: 1,
        ..settings()
    });
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "a", to_agent("alice"), None, 0, t(10));
    let out = ok(&mut state, reject("a", "alice"), t(20));
    assert_eq!(
        kinds(&out),
        [
            "interaction.rejected",
            "interaction.unanswered",
            "agent.presence_changed"
        ]
    );
    expect_away_missed_offers(&out[2], "alice", t(20));
}

// ----- timers --------------------------------------------------------------------------------

#[test]
fn tick_before_the_offer_deadline_does_nothing() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(1_000));
    let before = observe(&state);
    assert!(ok(&mut state, Command::Tick, t(1_000)).is_empty());
    assert!(ok(&mut state, Command::Tick, t(20_999)).is_empty());
    assert_eq!(observe(&state), before);
    assert_eq!(state.next_deadline(), Some(t(21_000)));
}

#[test]
fn tick_exactly_at_the_deadline_revokes_the_offer_as_timed_out_then_marks_it_unanswered() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(1_000));
    let out = run(&mut state, Command::Tick, t(21_000));
    let events: Vec<Event> = out.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(
        kinds(&events),
        ["interaction.offer_revoked", "interaction.unanswered"]
    );
    expect_revoked(&events[0], "call-1", "alice", OfferEndReason::TimedOut);
    assert_eq!(
        out[0].1,
        vec![aid("alice")],
        "offer_revoked is for the agent who had the offer"
    );
    assert_eq!(
        interaction(&state, "call-1").state,
        InteractionState::Unanswered
    );
    assert_eq!(state.next_deadline(), None);
    assert_eq!(state.activity(&aid("alice")), Activity::Idle);
    assert!(
        ok(&mut state, Command::Tick, t(99_000)).is_empty(),
        "a revoked offer does not fire twice"
    );
}

#[test]
fn tick_after_the_deadline_revokes_the_offer_and_offers_it_to_the_fallback_with_a_fresh_deadline() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    create(
        &mut state,
        "call-1",
        to_agent("alice"),
        Some(to_agent("bob")),
        0,
        t(1_000),
    );
    let now = t(25_000);
    let out = ok(&mut state, Command::Tick, now);
    assert_eq!(
        kinds(&out),
        ["interaction.offer_revoked", "interaction.offered"]
    );
    expect_revoked(&out[0], "call-1", "alice", OfferEndReason::TimedOut);
    expect_offered(&out[1], "call-1", "bob", now);
    assert_eq!(state.next_deadline(), Some(t(45_000)));
}

#[test]
fn a_timed_out_offer_frees_the_agent_for_the_next_caller_waiting_for_it() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "first", to_agent("alice"), None, 0, t(0));
    create(&mut state, "second", to_agent("alice"), None, 0, t(1));
    let out = ok(&mut state, Command::Tick, t(20_000));
    assert_eq!(
        kinds(&out),
        [
            "interaction.offer_revoked",
            "interaction.unanswered",
            "interaction.offered"
        ]
    );
    expect_offered(&out[2], "second", "alice", t(20_000));
    assert_eq!(state.next_deadline(), Some(t(40_000)));
}

#[test]
fn a_missed_offer_routed_to_a_fallback_agent_freed_in_the_same_tick_queues_behind_its_waiting_callers(
) {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    create(&mut state, "a1", to_agent("alice"), None, 0, t(0));
    create(&mut state, "waiting", to_agent("alice"), None, 0, t(1));
    create(
        &mut state,
        "z",
        to_agent("bob"),
        Some(to_agent("alice")),
        0,
        t(2),
    );
    // Both offers are due at once: alice frees up first, then z falls back to alice, but the
    // caller already waiting for alice keeps its place.
    let now = t(30_000);
    let out = ok(&mut state, Command::Tick, now);
    assert_eq!(
        kinds(&out),
        [
            "interaction.offer_revoked",
            "interaction.unanswered",
            "interaction.offer_revoked",
            "interaction.offered",
            "interaction.queued"
        ]
    );
    expect_revoked(&out[0], "a1", "alice", OfferEndReason::TimedOut);
    expect_revoked(&out[2], "z", "bob", OfferEndReason::TimedOut);
    // The caller already waiting for alice is served before z is routed to her.
    expect_offered(&out[3], "waiting", "alice", now);
    expect_queued(&out[4], "z", to_agent("alice"));
    assert_eq!(state.position(&iid("z")), Some(1));
}

#[test]
fn next_deadline_is_the_earliest_open_offer_and_none_once_no_offer_is_open() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    assert_eq!(state.next_deadline(), None);
    create(&mut state, "a", to_agent("alice"), None, 0, t(1_000));
    create(&mut state, "b", to_agent("bob"), None, 0, t(3_000));
    assert_eq!(state.next_deadline(), Some(t(21_000)));
    ok(&mut state, accept("a", "alice"), t(4_000));
    assert_eq!(state.next_deadline(), Some(t(23_000)));
    ok(&mut state, reject("b", "bob"), t(5_000));
    assert_eq!(state.next_deadline(), None);
}

#[test]
fn one_tick_expires_every_due_offer_in_deadline_order_and_leaves_later_ones() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    available_agent(&mut state, "carol", 1, t(0));
    create(&mut state, "b", to_agent("bob"), None, 0, t(2_000));
    create(&mut state, "a", to_agent("alice"), None, 0, t(1_000));
    create(&mut state, "c", to_agent("carol"), None, 0, t(9_000));
    let out = ok(&mut state, Command::Tick, t(22_000));
    assert_eq!(
        kinds(&out),
        [
            "interaction.offer_revoked",
            "interaction.unanswered",
            "interaction.offer_revoked",
            "interaction.unanswered"
        ]
    );
    expect_revoked(&out[0], "a", "alice", OfferEndReason::TimedOut);
    expect_revoked(&out[2], "b", "bob", OfferEndReason::TimedOut);
    assert_eq!(interaction(&state, "c").state, InteractionState::Offered);
    assert_eq!(state.next_deadline(), Some(t(29_000)));
}

// ----- hangup and completion -----------------------------------------------------------------

#[test]
fn hangup_of_a_queued_interaction_abandons_it_and_moves_the_callers_behind_it_up() {
    let mut state = State::new(settings());
    add_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "a", to_agent("alice"), None, 0, t(10));
    create(&mut state, "b", to_agent("alice"), None, 0, t(20));
    let out = run(&mut state, hangup("a"), t(30));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.type_name(), "interaction.abandoned");
    assert!(out[0].1.is_empty());
    assert_eq!(interaction(&state, "a").state, InteractionState::Abandoned);
    assert_eq!(state.position(&iid("a")), None);
    assert_eq!(state.position(&iid("b")), Some(1));
    // The abandoned caller is not offered when alice comes back.
    let out = set_presence(&mut state, "alice", PresenceStatus::Available, t(40));
    assert_eq!(
        kinds(&out),
        ["agent.presence_changed", "interaction.offered"]
    );
    expect_offered(&out[1], "b", "alice", t(40));
}

#[test]
fn hangup_of_an_offered_interaction_revokes_the_offer_as_abandoned_then_abandons_it() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(10));
    let out = run(&mut state, hangup("call-1"), t(30));
    let events: Vec<Event> = out.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(
        kinds(&events),
        ["interaction.offer_revoked", "interaction.abandoned"]
    );
    expect_revoked(&events[0], "call-1", "alice", OfferEndReason::Abandoned);
    assert_eq!(out[0].1, vec![aid("alice")]);
    assert!(out[1].1.is_empty());
    let call = interaction(&state, "call-1");
    assert_eq!(call.state, InteractionState::Abandoned);
    assert_eq!(call.agent, None);
    assert_eq!(call.offer_expires_at, None);
    assert_eq!(state.activity(&aid("alice")), Activity::Idle);
    assert_eq!(state.next_deadline(), None);
    assert!(ok(&mut state, Command::Tick, t(100_000)).is_empty());
}

#[test]
fn hangup_of_an_offered_interaction_with_a_fallback_abandons_it_instead_of_using_the_fallback() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    create(
        &mut state,
        "call-1",
        to_agent("alice"),
        Some(to_agent("bob")),
        0,
        t(10),
    );
    let out = ok(&mut state, hangup("call-1"), t(30));
    assert_eq!(
        kinds(&out),
        ["interaction.offer_revoked", "interaction.abandoned"]
    );
    assert_eq!(state.activity(&aid("bob")), Activity::Idle);
}

#[test]
fn hangup_of_an_accepted_interaction_ends_it_into_wrap_up_then_complete_completes_it() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(10));
    ok(&mut state, accept("call-1", "alice"), t(20));

    let out = run(&mut state, hangup("call-1"), t(30));
    assert_eq!(out.len(), 1);
    match &out[0].0 {
        Event::InteractionEnded {
            id,
            agent,
            wrap_up_until,
            at,
        } => {
            assert_eq!((id, agent, *at), (&iid("call-1"), &aid("alice"), t(30)));
            assert_eq!(*wrap_up_until, None, "an agent target has no wrap-up timer");
        }
        other => panic!("expected ended, got {other:?}"),
    }
    assert_eq!(out[0].1, vec![aid("alice")]);
    assert_eq!(
        interaction(&state, "call-1").state,
        InteractionState::WrapUp
    );
    assert_eq!(state.activity(&aid("alice")), Activity::WrapUp);
    assert_eq!(
        refused(&mut state, hangup("call-1"), t(35)),
        CommandError::WrongState {
            action: "hang up",
            state: InteractionState::WrapUp
        }
    );

    let out = run(&mut state, complete("call-1", "alice"), t(40));
    assert_eq!(out.len(), 1);
    match &out[0].0 {
        Event::InteractionCompleted {
            id,
            agent,
            disposition,
            notes,
            at,
            wrap_up_expired,
        } => {
            assert!(!wrap_up_expired, "completed by the agent");
            assert_eq!(id, &iid("call-1"));
            assert_eq!(agent, &aid("alice"));
            assert_eq!(disposition.as_deref(), Some("resolved"));
            assert_eq!(notes.as_deref(), Some("refund issued"));
            assert_eq!(*at, t(40));
        }
        other => panic!("expected completed, got {other:?}"),
    }
    assert_eq!(out[0].1, vec![aid("alice")]);
    let call = interaction(&state, "call-1");
    assert_eq!(call.state, InteractionState::Completed);
    assert_eq!(call.disposition.as_deref(), Some("resolved"));
    assert_eq!(call.notes.as_deref(), Some("refund issued"));
    assert_eq!(state.activity(&aid("alice")), Activity::Idle);
    assert_eq!(held_ids(&state, "alice"), Vec::<InteractionId>::new());

    assert_eq!(
        refused(&mut state, hangup("call-1"), t(50)),
        CommandError::WrongState {
            action: "hang up",
            state: InteractionState::Completed
        }
    );
    assert!(matches!(
        refused(&mut state, complete("call-1", "alice"), t(50)),
        CommandError::WrongState {
            state: InteractionState::Completed,
            ..
        }
    ));
}

#[test]
fn complete_straight_from_accepted_without_a_hangup_completes_and_frees_the_agent() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(10));
    ok(&mut state, accept("call-1", "alice"), t(20));
    let out = ok(&mut state, complete("call-1", "alice"), t(30));
    assert_eq!(kinds(&out), ["interaction.completed"]);
    assert_eq!(state.activity(&aid("alice")), Activity::Idle);
}

#[test]
fn complete_by_another_agent_or_of_an_unheld_interaction_is_refused() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(10));
    ok(&mut state, accept("call-1", "alice"), t(20));
    assert_eq!(
        refused(&mut state, complete("call-1", "bob"), t(30)),
        CommandError::NotHeldByAgent {
            id: iid("call-1"),
            agent: aid("bob")
        }
    );
    assert_eq!(
        refused(&mut state, complete("nope", "alice"), t(30)),
        CommandError::UnknownInteraction(iid("nope"))
    );
    create(&mut state, "call-2", to_agent("alice"), None, 0, t(40));
    assert_eq!(
        refused(&mut state, complete("call-2", "alice"), t(50)),
        CommandError::NotHeldByAgent {
            id: iid("call-2"),
            agent: aid("alice")
        },
        "a queued interaction is held by nobody"
    );
}

// ----- transfer ------------------------------------------------------------------------------

#[test]
fn transfer_from_accepted_to_an_available_agent_emits_transferred_then_offered_keeps_the_note_and_idles_the_transferrer(
) {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(10));
    ok(&mut state, accept("call-1", "alice"), t(20));
    let now = t(30);
    let out = run(
        &mut state,
        transfer(
            "call-1",
            "alice",
            to_agent("bob"),
            None,
            Some("wants a refund"),
        ),
        now,
    );
    let events: Vec<Event> = out.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(
        kinds(&events),
        ["interaction.transferred", "interaction.offered"]
    );
    match &events[0] {
        Event::InteractionTransferred {
            id,
            from,
            target,
            fallback,
            note,
            at,
        } => {
            assert_eq!(id, &iid("call-1"));
            assert_eq!(from, &aid("alice"));
            assert_eq!(target, &to_agent("bob"));
            assert_eq!(fallback, &None);
            assert_eq!(note.as_deref(), Some("wants a refund"));
            assert_eq!(*at, now);
        }
        other => panic!("expected transferred, got {other:?}"),
    }
    assert_eq!(
        out[0].1,
        vec![aid("alice")],
        "transferred is for the agent who held it"
    );
    expect_offered(&events[1], "call-1", "bob", now);
    assert_eq!(out[1].1, vec![aid("bob")]);

    let call = interaction(&state, "call-1");
    assert_eq!(call.state, InteractionState::Offered);
    assert_eq!(call.agent, Some(aid("bob")));
    assert_eq!(call.current_target, to_agent("bob"));
    assert_eq!(call.last_transfer_note.as_deref(), Some("wants a refund"));
    assert_eq!(
        call.spec.context, r#"{"account":"42"}"#,
        "the context travels with it"
    );
    assert_eq!(
        call.spec.target,
        to_agent("alice"),
        "the spec never changes"
    );
    assert!(
        call.involved_agents.contains(&aid("alice")) && call.involved_agents.contains(&aid("bob"))
    );
    assert_eq!(
        state.activity(&aid("alice")),
        Activity::Idle,
        "released at once"
    );
    assert_eq!(held_ids(&state, "alice"), Vec::<InteractionId>::new());
    assert_eq!(state.activity(&aid("bob")), Activity::Offered);

    // Bob accepts; the note is still there.
    ok(&mut state, accept("call-1", "bob"), t(40));
    assert_eq!(
        interaction(&state, "call-1").last_transfer_note.as_deref(),
        Some("wants a refund")
    );
}

#[test]
fn transfer_to_an_unavailable_agent_queues_for_it_and_releases_the_transferrer_for_its_own_waiting_callers(
) {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    add_agent(&mut state, "bob", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(10));
    create(&mut state, "call-2", to_agent("alice"), None, 0, t(15));
    ok(&mut state, accept("call-1", "alice"), t(20));
    let out = ok(
        &mut state,
        transfer("call-1", "alice", to_agent("bob"), None, None),
        t(30),
    );
    assert_eq!(
        kinds(&out),
        [
            "interaction.transferred",
            "interaction.offered",
            "interaction.queued"
        ]
    );
    // Alice, released, is offered her waiting caller before call-1 is routed on.
    expect_offered(&out[1], "call-2", "alice", t(30));
    expect_queued(&out[2], "call-1", to_agent("bob"));
    assert_eq!(
        interaction(&state, "call-1").state,
        InteractionState::Queued
    );
    assert_eq!(state.position(&iid("call-1")), Some(1));
    assert_eq!(interaction(&state, "call-1").agent, None);
}

#[test]
fn a_transfers_own_fallback_is_used_when_the_new_agent_misses_the_offer() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    available_agent(&mut state, "carol", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(10));
    ok(&mut state, accept("call-1", "alice"), t(20));
    ok(
        &mut state,
        transfer(
            "call-1",
            "alice",
            to_agent("bob"),
            Some(to_agent("carol")),
            None,
        ),
        t(30),
    );
    assert_eq!(
        interaction(&state, "call-1").pending_fallback,
        Some(to_agent("carol"))
    );
    let out = ok(&mut state, reject("call-1", "bob"), t(40));
    assert_eq!(kinds(&out), ["interaction.rejected", "interaction.offered"]);
    expect_offered(&out[1], "call-1", "carol", t(40));
    let out = ok(&mut state, reject("call-1", "carol"), t(50));
    assert_eq!(
        kinds(&out),
        ["interaction.rejected", "interaction.unanswered"]
    );
}

#[test]
fn transfer_to_the_agent_who_holds_it_is_refused_as_transfer_to_self() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(10));
    ok(&mut state, accept("call-1", "alice"), t(20));
    assert_eq!(
        refused(
            &mut state,
            transfer("call-1", "alice", to_agent("alice"), None, None),
            t(30)
        ),
        CommandError::TransferToSelf
    );
    assert_eq!(state.activity(&aid("alice")), Activity::Engaged);
}

#[test]
fn transfer_of_an_offered_or_wrap_up_interaction_is_refused_as_wrong_state() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 2, t(0));
    add_agent(&mut state, "bob", 1, t(0));
    create(&mut state, "offered", to_agent("alice"), None, 0, t(10));
    create(&mut state, "wrapping", to_agent("alice"), None, 0, t(10));
    ok(&mut state, accept("wrapping", "alice"), t(20));
    ok(&mut state, hangup("wrapping"), t(25));
    assert_eq!(
        refused(
            &mut state,
            transfer("offered", "alice", to_agent("bob"), None, None),
            t(30)
        ),
        CommandError::WrongState {
            action: "transfer",
            state: InteractionState::Offered
        }
    );
    assert_eq!(
        refused(
            &mut state,
            transfer("wrapping", "alice", to_agent("bob"), None, None),
            t(30)
        ),
        CommandError::WrongState {
            action: "transfer",
            state: InteractionState::WrapUp
        }
    );
}

// ----- connection lost -----------------------------------------------------------------------

#[test]
fn connection_lost_sets_presence_offline_connection_lost_by_system_and_revokes_open_offers_then_unanswered(
) {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 2, t(0));
    create(&mut state, "a", to_agent("alice"), None, 0, t(10));
    create(&mut state, "b", to_agent("alice"), None, 0, t(20));
    let now = t(30);
    let out = run(
        &mut state,
        Command::ConnectionLost {
            agent: aid("alice"),
        },
        now,
    );
    let events: Vec<Event> = out.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(
        kinds(&events),
        [
            "agent.presence_changed",
            "interaction.offer_revoked",
            "interaction.unanswered",
            "interaction.offer_revoked",
            "interaction.unanswered"
        ]
    );
    match &events[0] {
        Event::PresenceChanged { agent, presence } => {
            assert_eq!(agent, &aid("alice"));
            assert_eq!(presence.status, PresenceStatus::Offline);
            assert_eq!(presence.reason.as_deref(), Some("connection_lost"));
            assert_eq!(presence.source, PresenceSource::System);
            assert_eq!(presence.since, now);
        }
        other => panic!("expected presence_changed, got {other:?}"),
    }
    assert_eq!(out[0].1, vec![aid("alice")]);
    expect_revoked(&events[1], "a", "alice", OfferEndReason::ConnectionLost);
    expect_revoked(&events[3], "b", "alice", OfferEndReason::ConnectionLost);
    assert_eq!(out[1].1, vec![aid("alice")]);
    assert_eq!(interaction(&state, "a").state, InteractionState::Unanswered);
    assert_eq!(interaction(&state, "b").state, InteractionState::Unanswered);
    assert_eq!(state.activity(&aid("alice")), Activity::Idle);
    assert_eq!(state.next_deadline(), None);
    let alice = state.agent(&aid("alice")).unwrap();
    assert_eq!(alice.presence.status, PresenceStatus::Offline);
    assert_eq!(alice.presence.reason.as_deref(), Some("connection_lost"));
}

#[test]
fn connection_lost_sends_a_revoked_offer_to_its_fallback_and_keeps_accepted_interactions() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 2, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    create(&mut state, "engaged", to_agent("alice"), None, 0, t(5));
    ok(&mut state, accept("engaged", "alice"), t(6));
    create(
        &mut state,
        "offered",
        to_agent("alice"),
        Some(to_agent("bob")),
        0,
        t(10),
    );
    let out = ok(
        &mut state,
        Command::ConnectionLost {
            agent: aid("alice"),
        },
        t(30),
    );
    assert_eq!(
        kinds(&out),
        [
            "agent.presence_changed",
            "interaction.offer_revoked",
            "interaction.offered"
        ]
    );
    expect_offered(&out[2], "offered", "bob", t(30));
    assert_eq!(
        interaction(&state, "engaged").state,
        InteractionState::Accepted
    );
    assert_eq!(state.activity(&aid("alice")), Activity::Engaged);
}

#[test]
fn connection_lost_of_an_agent_already_offline_emits_no_presence_change() {
    let mut state = State::new(settings());
    add_agent(&mut state, "alice", 1, t(0));
    assert!(ok(
        &mut state,
        Command::ConnectionLost {
            agent: aid("alice")
        },
        t(10)
    )
    .is_empty());
    assert_eq!(state.agent(&aid("alice")).unwrap().presence.reason, None);
}

#[test]
fn connection_lost_with_offline_on_disconnect_disabled_changes_nothing() {
    let mut state = State::new(Settings {
        offer_timeout_s: OFFER_TIMEOUT_S,
        offline_on_disconnect: false,
        ..Settings::default()
    });
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "a", to_agent("alice"), None, 0, t(10));
    let before = observe(&state);
    let out = ok(
        &mut state,
        Command::ConnectionLost {
            agent: aid("alice"),
        },
        t(30),
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(observe(&state), before);
    assert_eq!(
        state.agent(&aid("alice")).unwrap().presence.status,
        PresenceStatus::Available
    );
    // Still refused for an unknown agent.
    assert_eq!(
        refused(
            &mut state,
            Command::ConnectionLost {
                agent: aid("ghost")
            },
            t(40)
        ),
        CommandError::UnknownAgent(aid("ghost"))
    );
}

// ----- deleting agents -----------------------------------------------------------------------

#[test]
fn deleting_an_agent_with_an_accepted_or_wrap_up_interaction_is_refused_as_agent_holds_interactions(
) {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(10));
    ok(&mut state, accept("call-1", "alice"), t(20));
    assert_eq!(
        refused(
            &mut state,
            Command::DeleteAgent {
                agent: aid("alice")
            },
            t(30)
        ),
        CommandError::AgentHoldsInteractions(aid("alice"))
    );
    ok(&mut state, hangup("call-1"), t(40));
    assert_eq!(
        refused(
            &mut state,
            Command::DeleteAgent {
                agent: aid("alice")
            },
            t(50)
        ),
        CommandError::AgentHoldsInteractions(aid("alice"))
    );
    ok(&mut state, complete("call-1", "alice"), t(60));
    let out = ok(
        &mut state,
        Command::DeleteAgent {
            agent: aid("alice"),
        },
        t(70),
    );
    assert_eq!(kinds(&out), ["agent.deleted"]);
    assert!(state.agent(&aid("alice")).is_none());
}

#[test]
fn deleting_an_agent_with_an_open_offer_revokes_it_as_agent_deleted_then_uses_the_fallback() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    create(
        &mut state,
        "call-1",
        to_agent("alice"),
        Some(to_agent("bob")),
        0,
        t(10),
    );
    let now = t(30);
    let out = run(
        &mut state,
        Command::DeleteAgent {
            agent: aid("alice"),
        },
        now,
    );
    let events: Vec<Event> = out.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(
        kinds(&events),
        [
            "agent.deleted",
            "interaction.offer_revoked",
            "interaction.offered"
        ]
    );
    expect_revoked(&events[1], "call-1", "alice", OfferEndReason::AgentDeleted);
    assert_eq!(out[1].1, vec![aid("alice")]);
    expect_offered(&events[2], "call-1", "bob", now);
    assert!(state.agent(&aid("alice")).is_none());
    assert_eq!(held_ids(&state, "alice"), Vec::<InteractionId>::new());
    assert_eq!(
        state.next_deadline(),
        Some(now.plus_seconds(OFFER_TIMEOUT_S))
    );
}

#[test]
fn deleting_an_agent_with_an_open_offer_and_no_fallback_makes_it_unanswered() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(10));
    let out = ok(
        &mut state,
        Command::DeleteAgent {
            agent: aid("alice"),
        },
        t(30),
    );
    assert_eq!(
        kinds(&out),
        [
            "agent.deleted",
            "interaction.offer_revoked",
            "interaction.unanswered"
        ]
    );
    assert_eq!(
        interaction(&state, "call-1").state,
        InteractionState::Unanswered
    );
    assert_eq!(state.next_deadline(), None);
}

#[test]
fn deleting_an_agent_with_callers_queued_for_it_sends_them_to_their_fallback_or_unanswered() {
    let mut state = State::new(settings());
    add_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    create(&mut state, "no-fallback", to_agent("alice"), None, 0, t(10));
    create(
        &mut state,
        "to-bob",
        to_agent("alice"),
        Some(to_agent("bob")),
        0,
        t(20),
    );
    let out = ok(
        &mut state,
        Command::DeleteAgent {
            agent: aid("alice"),
        },
        t(30),
    );
    assert_eq!(
        kinds(&out),
        [
            "agent.deleted",
            "interaction.unanswered",
            "interaction.offered"
        ]
    );
    assert_eq!(
        interaction(&state, "no-fallback").state,
        InteractionState::Unanswered
    );
    expect_offered(&out[2], "to-bob", "bob", t(30));
    assert_eq!(state.position(&iid("no-fallback")), None);
}

#[test]
fn a_fallback_to_an_agent_deleted_meanwhile_ends_unanswered() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    add_agent(&mut state, "bob", 1, t(0));
    create(
        &mut state,
        "call-1",
        to_agent("alice"),
        Some(to_agent("bob")),
        0,
        t(10),
    );
    ok(
        &mut state,
        Command::DeleteAgent { agent: aid("bob") },
        t(20),
    );
    let out = ok(&mut state, reject("call-1", "alice"), t(30));
    assert_eq!(
        kinds(&out),
        ["interaction.rejected", "interaction.unanswered"]
    );
}

#[test]
fn deleting_an_unknown_agent_is_refused_as_unknown_agent() {
    let mut state = State::new(settings());
    assert_eq!(
        refused(
            &mut state,
            Command::DeleteAgent {
                agent: aid("ghost")
            },
            t(0)
        ),
        CommandError::UnknownAgent(aid("ghost"))
    );
}

// ----- activity and position -----------------------------------------------------------------

#[test]
fn activity_is_the_busiest_held_interaction_engaged_over_offered_over_wrap_up_over_idle() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 3, t(0));
    assert_eq!(state.activity(&aid("alice")), Activity::Idle);

    create(&mut state, "w", to_agent("alice"), None, 0, t(1));
    ok(&mut state, accept("w", "alice"), t(2));
    ok(&mut state, hangup("w"), t(3));
    assert_eq!(state.activity(&aid("alice")), Activity::WrapUp);

    create(&mut state, "o", to_agent("alice"), None, 0, t(4));
    assert_eq!(
        state.activity(&aid("alice")),
        Activity::Offered,
        "offered beats wrap_up"
    );

    create(&mut state, "e", to_agent("alice"), None, 0, t(5));
    assert_eq!(state.activity(&aid("alice")), Activity::Offered);
    ok(&mut state, accept("e", "alice"), t(6));
    assert_eq!(
        state.activity(&aid("alice")),
        Activity::Engaged,
        "engaged beats offered and wrap_up"
    );

    ok(&mut state, complete("e", "alice"), t(7));
    assert_eq!(state.activity(&aid("alice")), Activity::Offered);
    ok(&mut state, reject("o", "alice"), t(8));
    assert_eq!(state.activity(&aid("alice")), Activity::WrapUp);
    ok(&mut state, complete("w", "alice"), t(9));
    assert_eq!(state.activity(&aid("alice")), Activity::Idle);
    assert_eq!(
        state.activity(&aid("nobody")),
        Activity::Idle,
        "an unknown agent is idle"
    );
}

#[test]
fn position_counts_from_one_among_callers_waiting_for_the_same_target_only() {
    let mut state = State::new(settings());
    add_agent(&mut state, "alice", 1, t(0));
    add_agent(&mut state, "bob", 1, t(0));
    create(&mut state, "a1", to_agent("alice"), None, 0, t(10));
    create(&mut state, "b1", to_agent("bob"), None, 9, t(11));
    create(&mut state, "a2", to_agent("alice"), None, 0, t(12));
    create(&mut state, "b2", to_agent("bob"), None, 0, t(13));
    create(&mut state, "a3", to_agent("alice"), None, 1, t(14));
    create(&mut state, "a4", to_agent("alice"), None, 0, t(14));
    assert_eq!(state.position(&iid("a3")), Some(1), "higher priority first");
    assert_eq!(state.position(&iid("a1")), Some(2));
    assert_eq!(state.position(&iid("a2")), Some(3));
    assert_eq!(state.position(&iid("a4")), Some(4));
    assert_eq!(state.position(&iid("b1")), Some(1));
    assert_eq!(state.position(&iid("b2")), Some(2));
    assert_eq!(state.position(&iid("unknown")), None);
}

#[test]
fn callers_created_at_the_same_millisecond_with_equal_priority_keep_their_arrival_order() {
    let mut state = State::new(settings());
    add_agent(&mut state, "alice", 1, t(0));
    // Ids in reverse alphabetical order, so id order would give the wrong answer.
    create(&mut state, "z", to_agent("alice"), None, 0, t(10));
    create(&mut state, "y", to_agent("alice"), None, 0, t(10));
    create(&mut state, "x", to_agent("alice"), None, 0, t(10));
    assert_eq!(state.position(&iid("z")), Some(1));
    assert_eq!(state.position(&iid("y")), Some(2));
    assert_eq!(state.position(&iid("x")), Some(3));
    let out = set_presence(&mut state, "alice", PresenceStatus::Available, t(20));
    expect_offered(&out[1], "z", "alice", t(20));
}

// ----- recipients ----------------------------------------------------------------------------

#[test]
fn recipients_of_each_event_are_the_agents_offered_or_assigned_the_interaction_before_or_after_it()
{
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    add_agent(&mut state, "carol", 1, t(0));

    let mut log: Vec<(Event, Vec<AgentId>)> = Vec::new();
    let mut step =
        |state: &mut State, command: Command, at: i64| log.extend(run(state, command, t(at)));
    step(
        &mut state,
        Command::CreateInteraction {
            spec: spec("c", to_agent("alice"), None, 0, t(1)),
        },
        1,
    );
    step(
        &mut state,
        Command::CreateInteraction {
            spec: spec("q", to_agent("carol"), None, 0, t(2)),
        },
        2,
    );
    step(&mut state, accept("c", "alice"), 3);
    step(
        &mut state,
        transfer("c", "alice", to_agent("bob"), None, Some("n")),
        4,
    );
    step(&mut state, accept("c", "bob"), 5);
    step(&mut state, hangup("c"), 6);
    step(&mut state, complete("c", "bob"), 7);
    step(&mut state, hangup("q"), 8);
    step(
        &mut state,
        Command::CreateInteraction {
            spec: spec("r", to_agent("alice"), None, 0, t(9)),
        },
        9,
    );
    step(&mut state, Command::Tick, 100_000);

    let got: Vec<(&str, Vec<&str>)> = log
        .iter()
        .map(|(e, r)| (e.type_name(), r.iter().map(AgentId::as_str).collect()))
        .collect();
    let expected: Vec<(&str, Vec<&str>)> = vec![
        ("interaction.created", vec![]),
        ("interaction.offered", vec!["alice"]),
        ("interaction.created", vec![]),
        ("interaction.queued", vec![]),
        ("interaction.accepted", vec!["alice"]),
        ("interaction.transferred", vec!["alice"]),
        ("interaction.offered", vec!["bob"]),
        ("interaction.accepted", vec!["bob"]),
        ("interaction.ended", vec!["bob"]),
        ("interaction.completed", vec!["bob"]),
        ("interaction.abandoned", vec![]),
        ("interaction.created", vec![]),
        ("interaction.offered", vec!["alice"]),
        ("interaction.offer_revoked", vec!["alice"]),
        ("interaction.unanswered", vec![]),
    ];
    assert_eq!(got, expected);
}

#[test]
fn recipients_of_agent_lifecycle_events_are_empty_and_of_presence_changes_are_that_agent() {
    let mut state = State::new(settings());
    let out = run(
        &mut state,
        Command::UpsertAgent {
            profile: profile("alice", 1),
        },
        t(0),
    );
    assert!(out[0].1.is_empty());
    let out = run(
        &mut state,
        Command::UpsertAgent {
            profile: profile("alice", 2),
        },
        t(1),
    );
    assert_eq!(out[0].0.type_name(), "agent.updated");
    assert!(out[0].1.is_empty());
    let out = run(
        &mut state,
        presence_cmd("alice", PresenceStatus::Busy),
        t(2),
    );
    assert_eq!(out[0].1, vec![aid("alice")]);
    let out = run(
        &mut state,
        Command::DeleteAgent {
            agent: aid("alice"),
        },
        t(3),
    );
    assert_eq!(out[0].0.type_name(), "agent.deleted");
    assert!(out[0].1.is_empty());
}

// ----- replay --------------------------------------------------------------------------------

#[test]
fn replaying_the_events_of_a_scripted_day_through_apply_rebuilds_the_same_state() {
    let mut state = State::new(settings());
    let mut log: Vec<Event> = Vec::new();
    let mut step =
        |state: &mut State, command: Command, at: i64| log.extend(ok(state, command, t(at)));
    step(
        &mut state,
        Command::UpsertAgent {
            profile: profile("alice", 2),
        },
        0,
    );
    step(
        &mut state,
        Command::UpsertAgent {
            profile: profile("bob", 1),
        },
        0,
    );
    step(
        &mut state,
        Command::UpsertAgent {
            profile: profile("carol", 1),
        },
        0,
    );
    step(
        &mut state,
        presence_cmd("alice", PresenceStatus::Available),
        1,
    );
    step(
        &mut state,
        Command::CreateInteraction {
            spec: spec("1", to_agent("alice"), Some(to_agent("bob")), 0, t(2)),
        },
        2,
    );
    step(
        &mut state,
        Command::CreateInteraction {
            spec: spec("2", to_agent("bob"), None, 3, t(3)),
        },
        3,
    );
    step(
        &mut state,
        Command::CreateInteraction {
            spec: spec("3", to_agent("bob"), Some(to_agent("carol")), 1, t(4)),
        },
        4,
    );
    step(&mut state, reject("1", "alice"), 5);
    step(
        &mut state,
        presence_cmd("bob", PresenceStatus::Available),
        6,
    );
    step(&mut state, accept("2", "bob"), 7);
    step(
        &mut state,
        transfer(
            "2",
            "bob",
            to_agent("alice"),
            Some(to_agent("carol")),
            Some("vip"),
        ),
        8,
    );
    step(&mut state, Command::Tick, 30_000);
    step(
        &mut state,
        Command::ConnectionLost {
            agent: aid("alice"),
        },
        31_000,
    );
    step(
        &mut state,
        presence_cmd("carol", PresenceStatus::Available),
        32_000,
    );
    step(
        &mut state,
        Command::DeleteAgent { agent: aid("bob") },
        33_000,
    );

    let mut rebuilt = State::new(settings());
    for event in &log {
        rebuilt.apply(event);
    }
    assert_eq!(observe(&rebuilt), observe(&state));
}

#[test]
fn ended_interactions_are_forgotten_past_the_cutoff_and_made_again_from_their_own_events() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    let mut log = create(&mut state, "c1", to_agent("alice"), None, 0, t(1_000));
    log.extend(ok(&mut state, accept("c1", "alice"), t(2_000)));
    log.extend(ok(
        &mut state,
        transfer("c1", "alice", to_agent("bob"), None, Some("wants a refund")),
        t(3_000),
    ));
    log.extend(ok(&mut state, accept("c1", "bob"), t(4_000)));
    log.extend(ok(&mut state, complete("c1", "bob"), t(5_000)));
    // A caller who gave up while offered, and one still offered.
    log.extend(create(
        &mut state,
        "c2",
        to_agent("alice"),
        None,
        0,
        t(6_000),
    ));
    log.extend(ok(&mut state, hangup("c2"), t(7_000)));
    log.extend(create(
        &mut state,
        "c3",
        to_agent("alice"),
        None,
        0,
        t(8_000),
    ));

    // From its own events alone (what the log's subject index gives), each ended interaction
    // comes back as it was.
    for (id, ended_as) in [
        ("c1", InteractionState::Completed),
        ("c2", InteractionState::Abandoned),
    ] {
        let before = state.interaction(&iid(id)).unwrap().clone();
        assert_eq!(before.state, ended_as);
        let own = log.iter().filter(|e| e.interaction_id() == Some(&iid(id)));
        let again = State::interaction_from_events(settings(), own).unwrap();
        assert_eq!(again, before, "{id} made again from its events");
    }

    // Nothing ended at or after the cutoff is forgotten.
    assert_eq!(state.forget_ended_before(t(5_000)), 0);
    assert_eq!(state.forget_ended_before(t(5_001)), 1);
    assert!(state.interaction(&iid("c1")).is_none());
    assert_eq!(state.forget_ended_before(t(7_001)), 1);
    let listed: Vec<&str> = state.interactions().map(|i| i.id().as_str()).collect();
    assert_eq!(listed, ["c3"]);
    // An open interaction stays, however old the cutoff makes it, and routing goes on.
    assert_eq!(state.forget_ended_before(t(1_000_000)), 0);
    assert_eq!(
        state.interaction(&iid("c3")).unwrap().state,
        InteractionState::Offered
    );
    ok(&mut state, accept("c3", "alice"), t(9_000));
    // A command on a forgotten interaction: the core no longer knows it.
    assert!(matches!(
        refused(&mut state, hangup("c1"), t(10_000)),
        CommandError::UnknownInteraction(_)
    ));
}

// ----- an agent target's max wait ------------------------------------------------------------

fn create_waiting_at_most(
    state: &mut State,
    id: &str,
    fallback: Option<Target>,
    max_wait_s: Option<u64>,
    now: Timestamp,
) -> Vec<Event> {
    let mut spec = spec(id, to_agent("alice"), fallback, 0, now);
    spec.max_wait_s = max_wait_s;
    ok(state, Command::CreateInteraction { spec }, now)
}

#[test]
fn a_caller_waiting_for_an_away_agent_goes_to_its_fallback_queue_when_the_max_wait_passes() {
    let mut state = State::new(settings());
    add_agent(&mut state, "alice", 1, t(0));
    set_presence(&mut state, "alice", PresenceStatus::Away, t(0));
    let general = handoff_core::QueueConfig::new(QueueName::parse("general").unwrap());
    ok(&mut state, Command::UpsertQueue { config: general }, t(0));
    let out = create_waiting_at_most(
        &mut state,
        "call-1",
        Some(to_queue("general")),
        None,
        t(1_000),
    );
    assert_eq!(kinds(&out), ["interaction.created", "interaction.queued"]);
    assert_eq!(state.next_deadline(), Some(t(61_000)), "the server's 60 s");
    assert!(
        ok(&mut state, Command::Tick, t(60_999)).is_empty(),
        "not yet"
    );
    let out = ok(&mut state, Command::Tick, t(61_000));
    assert_eq!(kinds(&out), ["interaction.queued"]);
    expect_queued(&out[0], "call-1", to_queue("general"));
    let call = interaction(&state, "call-1");
    assert_eq!(call.current_target, to_queue("general"));
    assert_eq!(call.pending_fallback, None, "the fallback is used up");
    assert_eq!(state.position(&iid("call-1")), Some(1));
    // alice coming back now gets the caller as a member of general, not as its named agent.
    let out = set_presence(&mut state, "alice", PresenceStatus::Available, t(62_000));
    assert_eq!(
        kinds(&out),
        ["agent.presence_changed", "interaction.offered"]
    );
    match &out[1] {
        Event::InteractionOffered { target, .. } => assert_eq!(target, &to_queue("general")),
        other => panic!("not an offer: {other:?}"),
    }
}

#[test]
fn a_caller_waiting_for_a_busy_agent_with_no_fallback_ends_timed_out_at_its_own_max_wait() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "call-0", to_agent("alice"), None, 0, t(0));
    ok(&mut state, accept("call-0", "alice"), t(100));
    let out = create_waiting_at_most(&mut state, "call-1", None, Some(5), t(1_000));
    assert_eq!(kinds(&out), ["interaction.created", "interaction.queued"]);
    assert_eq!(interaction(&state, "call-1").max_wait_at, Some(t(6_000)));
    let out = ok(&mut state, Command::Tick, t(6_000));
    assert_eq!(kinds(&out), ["interaction.timed_out"]);
    let call = interaction(&state, "call-1");
    assert_eq!(call.state, InteractionState::TimedOut);
    assert_eq!(state.position(&iid("call-1")), None);
    assert_eq!(state.next_deadline(), None);
    // alice's own call is untouched.
    assert_eq!(
        interaction(&state, "call-0").state,
        InteractionState::Accepted
    );
}

#[test]
fn a_max_wait_of_zero_sends_the_caller_to_the_fallback_agent_at_the_next_tick() {
    let mut state = State::new(settings());
    add_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    let out = create_waiting_at_most(
        &mut state,
        "call-1",
        Some(to_agent("bob")),
        Some(0),
        t(1_000),
    );
    assert_eq!(kinds(&out), ["interaction.created", "interaction.queued"]);
    assert_eq!(state.next_deadline(), Some(t(1_000)));
    let out = ok(&mut state, Command::Tick, t(1_000));
    assert_eq!(kinds(&out), ["interaction.offered"]);
    expect_offered(&out[0], "call-1", "bob", t(1_000));
}

#[test]
fn an_agent_who_gets_room_in_the_same_tick_as_the_max_wait_takes_the_caller_instead_of_the_fallback(
) {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    available_agent(&mut state, "bob", 1, t(0));
    // alice is offered call-0, whose offer times out at 20 s; call-1 waits for her up to 20 s.
    create(&mut state, "call-0", to_agent("alice"), None, 0, t(0));
    let out = create_waiting_at_most(&mut state, "call-1", Some(to_agent("bob")), Some(20), t(0));
    assert_eq!(kinds(&out), ["interaction.created", "interaction.queued"]);
    let out = ok(&mut state, Command::Tick, t(20_000));
    let offered_to: Vec<(String, String)> = out
        .iter()
        .filter_map(|event| match event {
            Event::InteractionOffered { id, agent, .. } => {
                Some((id.to_string(), agent.to_string()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        offered_to,
        [("call-1".to_owned(), "alice".to_owned())],
        "{:?}",
        kinds(&out)
    );
    assert_eq!(
        interaction(&state, "call-1").pending_fallback,
        Some(to_agent("bob"))
    );
}

// ----- the caller's data: context updates and CRM enrichment ----------------------------------

fn update_context(id: &str, expected_version: u64, context: &str) -> Command {
    Command::UpdateContext {
        id: iid(id),
        expected_version,
        context: context.to_owned(),
        patch: context.to_owned(),
        by: Some("key_ivr".to_owned()),
    }
}

#[test]
fn a_context_update_at_the_current_version_replaces_the_context_for_its_holder_only() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(0));
    ok(&mut state, accept("call-1", "alice"), t(100));
    let events = run(
        &mut state,
        update_context("call-1", 1, r#"{"account":"43"}"#),
        t(200),
    );
    assert_eq!(events.len(), 1);
    match &events[0] {
        (
            Event::ContextUpdated {
                version, context, ..
            },
            recipients,
        ) => {
            assert_eq!(*version, 2);
            assert_eq!(&**context, r#"{"account":"43"}"#);
            assert_eq!(recipients, &vec![aid("alice")]);
        }
        other => panic!("not a context update: {other:?}"),
    }
    let call = interaction(&state, "call-1");
    assert_eq!(call.context(), r#"{"account":"43"}"#);
    assert_eq!(
        call.spec.context, r#"{"account":"42"}"#,
        "the spec keeps what the IVR sent"
    );
    assert_eq!(call.context_version, 2);
    assert_eq!(call.state, InteractionState::Accepted);
    // A stale version is refused and changes nothing.
    let refusal = refused(
        &mut state,
        update_context("call-1", 1, r#"{"x":1}"#),
        t(300),
    );
    assert_eq!(
        refusal,
        CommandError::ContextVersionMismatch {
            id: iid("call-1"),
            expected: 1,
            current: 2
        }
    );
}

#[test]
fn a_queued_callers_context_update_keeps_its_place_in_line_and_its_wait() {
    let mut state = State::new(settings());
    add_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(0));
    create(&mut state, "call-2", to_agent("alice"), None, 0, t(10));
    let before = interaction(&state, "call-2").max_wait_at;
    ok(&mut state, update_context("call-1", 1, r#"{"n":1}"#), t(20));
    assert_eq!(state.position(&iid("call-1")), Some(1));
    assert_eq!(state.position(&iid("call-2")), Some(2));
    assert_eq!(interaction(&state, "call-2").max_wait_at, before);
    // When alice comes, the first caller is offered with its updated context.
    let out = set_presence(&mut state, "alice", PresenceStatus::Available, t(30));
    expect_offered(&out[1], "call-1", "alice", t(30));
    assert_eq!(interaction(&state, "call-1").context(), r#"{"n":1}"#);
}

#[test]
fn an_ended_interactions_context_cannot_be_updated_but_what_a_crm_found_is_still_recorded() {
    let mut state = State::new(settings());
    available_agent(&mut state, "alice", 1, t(0));
    create(&mut state, "call-1", to_agent("alice"), None, 0, t(0));
    ok(&mut state, hangup("call-1"), t(100));
    let refusal = refused(&mut state, update_context("call-1", 1, "{}"), t(200));
    assert!(
        matches!(refusal, CommandError::WrongState { .. }),
        "{refusal:?}"
    );
    let found = Command::RecordEnrichment {
        id: iid("call-1"),
        connector: "crm".to_owned(),
        outcome: Ok(r#"{"name":"Zoë"}"#.to_owned()),
    };
    let out = ok(&mut state, found, t(300));
    assert_eq!(kinds(&out), ["interaction.enriched"]);
    let missing = Command::RecordEnrichment {
        id: iid("call-9"),
        connector: "crm".to_owned(),
        outcome: Err("timed out".to_owned()),
    };
    assert_eq!(
        refused(&mut state, missing, t(400)),
        CommandError::UnknownInteraction(iid("call-9"))
    );
}

#[test]
fn a_later_answer_of_a_connector_replaces_its_earlier_fields_and_failures_leave_them() {
    let mut state = State::new(settings());
    add_agent(&mut state, "alice", 1, t(0));
    let mut with_fields = spec("call-1", to_agent("alice"), None, 0, t(0));
    with_fields.enrichment = vec![handoff_core::Enrichment {
        connector: "crm".to_owned(),
        fields: r#"{"name":"first"}"#.into(),
    }];
    ok(
        &mut state,
        Command::CreateInteraction { spec: with_fields },
        t(0),
    );
    let enrich = |connector: &str, outcome: Result<&str, &str>| Command::RecordEnrichment {
        id: iid("call-1"),
        connector: connector.to_owned(),
        outcome: outcome.map(str::to_owned).map_err(str::to_owned),
    };
    ok(&mut state, enrich("billing", Ok(r#"{"due":12}"#)), t(10));
    ok(&mut state, enrich("crm", Ok(r#"{"name":"second"}"#)), t(20));
    let out = ok(&mut state, enrich("billing", Err("HTTP 503")), t(30));
    assert_eq!(kinds(&out), ["interaction.enrichment_failed"]);
    let found: Vec<(String, String)> = interaction(&state, "call-1")
        .enrichment
        .iter()
        .map(|e| (e.connector.clone(), e.fields.to_string()))
        .collect();
    assert_eq!(
        found,
        [
            ("billing".to_owned(), r#"{"due":12}"#.to_owned()),
            ("crm".to_owned(), r#"{"name":"second"}"#.to_owned())
        ]
    );
    assert_eq!(state.position(&iid("call-1")), Some(1), "still waiting");
}
