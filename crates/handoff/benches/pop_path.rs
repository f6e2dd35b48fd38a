//! Instruction counts of the pieces of the pop path: what one IVR post costs the server on its
//! way to an agent's socket, counted by callgrind (through iai-callgrind) instead of timed.
//! Counts repeat exactly from run to run, whatever else the machine is doing, where timings on
//! two shared cores move by tens of percent; so two builds can be compared by them.
//! docs/benchmarks.md ("Instruction counts") says how to run them and what each one covers;
//! `tools/instruction-budgets` compares a run with the budgets in `pop_path.budgets`.
//!
//! What makes the counts repeat: each benchmark runs once, in its own process, on one thread,
//! with no socket; its world is built by a setup function that callgrind does not count, and
//! what it returns is dropped outside the count; every hash map of the core and of the live
//! feeds hashes with fixed seeds (`handoff_core::fix_hash_seeds`, called first in each setup);
//! times are fixed values, never the clock.
//!
//! The pieces:
//! - `create_request`: a typical create body (seven context fields, a queue target) read and
//!   checked as the handler does (`NewInteraction::parse`).
//! - `routing_decision`: that call's `CreateInteraction` through the core
//!   (`execute_with_recipients`, as the engine runs it) in a world of 200 agents in 20 queues,
//!   where 50 serve the call's queue and 25 of those are free: the events, the agent chosen.
//! - `offer_event`: the `interaction.offered` event encoded as the log keeps it and streams
//!   send it (`wire::cloud_event_payload`), with and without a `pop_url` template to render.
//! - `sqlite_group_commit`: one group of four engine batches, each with the events and acks of
//!   four calls, written in one SQLite transaction as the store's writer does
//!   (`InlineGroupCommit`, on this thread), into a log of 400 calls.
//! - `fan_out`: sixteen offers to sixteen of 1,000 agents with an open stream, handed to the
//!   live feeds (`Shared::publish_committed`) and taken from each receiving agent's feed.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use futures_util::FutureExt;
use handoff_api::engine::{AgentFeed, LiveEvent, Shared};
use handoff_api::requests::NewInteraction;
use handoff_api::{pop_url, wire};
use handoff_core::{
    AgentId, AgentProfile, Capacity, Command, Event, InteractionId, PresenceSource, PresenceStatus,
    QueueConfig, QueueName, Settings, SkillLevel, State, Strategy, Target, Timestamp,
};
use handoff_store::{Batch, Durability, InlineGroupCommit, StoredEvent};
use iai_callgrind::{library_benchmark, library_benchmark_group, main, LibraryBenchmarkConfig};

/// The allocator the `handoff` binary runs with, so that the counts are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const AGENTS: usize = 200;
const QUEUES: usize = 20;
/// The queue every call of these benchmarks goes to.
const CALL_QUEUE: &str = "billing";
const POP_URL: &str =
    "https://crm.example.com/calls?phone={{ caller }}&account={{ context.account_id }}";
/// The configured limit of a context (`max_context_bytes`'s default).
const MAX_CONTEXT_BYTES: usize = 65_536;

/// A create as an IVR posts it after a few menus.
const CREATE_BODY: &str = r#"{
  "caller": "+15551234567",
  "dialed": "+18005550100",
  "channel": "voice",
  "call_id": "a84b4c76e66710@pbx.example.com",
  "target": {"queue": "billing"},
  "priority": 0,
  "context": {
    "account_id": "AC-1029384",
    "intent": "billing_dispute",
    "verified": true,
    "language": "en",
    "amount_due": 42.5,
    "last_payment": "2026-11-30",
    "ivr_path": ["main", "billing", "dispute"]
  }
}"#;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_millis(1_764_892_800_000 + seconds * 1000)
}

fn agent(j: usize) -> AgentId {
    AgentId::parse(&format!("agent{j:04}")).expect("agent id")
}

fn queue_name(i: usize) -> QueueName {
    if i == 0 {
        QueueName::parse(CALL_QUEUE).expect("queue name")
    } else {
        QueueName::parse(&format!("queue{i:02}")).expect("queue name")
    }
}

fn level(n: usize) -> SkillLevel {
    SkillLevel::parse(n as i64).expect("skill level")
}

fn execute(state: &mut State, command: Command, now: Timestamp) -> Vec<(Event, Vec<AgentId>)> {
    let shown = format!("{command:?}");
    state
        .execute_with_recipients(command, now)
        .unwrap_or_else(|error| panic!("{shown} refused: {error}"))
}

/// The checked create of `CREATE_BODY`, as call `id`.
fn call(id: &str, now: Timestamp) -> Command {
    let new = NewInteraction::parse(CREATE_BODY.as_bytes(), MAX_CONTEXT_BYTES)
        .expect("the body is accepted");
    Command::CreateInteraction {
        spec: new.into_spec(
            InteractionId::parse(id).expect("interaction id"),
            Vec::new(),
            Some("key_ivr".to_owned()),
            now,
        ),
    }
}

/// 20 queues, `billing` (the calls' queue, with a `pop_url`) and 19 others; agent `j` serves
/// two of the others (`1 + j % 19` and `1 + (j + 1) % 19`, about 21 members each) and, when
/// `j` is a multiple of four, `billing` (50 members), at levels 1 to 10. Every agent is
/// available; every second member of `billing` is on an accepted call of its own, so 25 are
/// free for the next call.
fn world() -> State {
    handoff_core::fix_hash_seeds();
    let mut state = State::new(Settings::default());
    let start = at(0);
    for i in 0..QUEUES {
        let name = queue_name(i);
        let config = QueueConfig {
            skills: BTreeMap::from([(name.as_str().to_owned(), level(1))]),
            strategy: Strategy::LongestIdle,
            offer_timeout_s: 20,
            wrap_up_s: 30,
            max_wait_s: None,
            overflow: None,
            service_level_s: 20,
            steps: Vec::new(),
            pop_url: (i == 0).then(|| POP_URL.to_owned()),
            name,
        };
        execute(&mut state, Command::UpsertQueue { config }, start);
    }
    for j in 0..AGENTS {
        let mut skills = BTreeMap::new();
        for i in [1 + j % (QUEUES - 1), 1 + (j + 1) % (QUEUES - 1)] {
            skills.insert(queue_name(i).as_str().to_owned(), level(1 + j % 10));
        }
        if j % 4 == 0 {
            skills.insert(CALL_QUEUE.to_owned(), level(1 + j % 10));
        }
        let profile = AgentProfile {
            id: agent(j),
            name: format!("Agent {j}"),
            address: None,
            skills,
            capacity: Capacity::Total(1),
        };
        execute(&mut state, Command::UpsertAgent { profile }, start);
        let presence = Command::SetPresence {
            agent: agent(j),
            status: PresenceStatus::Available,
            reason: None,
            source: PresenceSource::Desktop,
        };
        execute(&mut state, presence, at(1 + j as i64 % 60));
    }
    let members: Vec<AgentId> = state
        .queue_members(&queue_name(0))
        .map(|member| member.profile.id.clone())
        .collect();
    for (n, member) in members.iter().enumerate().filter(|(n, _)| n % 2 == 0) {
        let id = format!("busy{n}");
        let mut command = call(&id, at(100));
        if let Command::CreateInteraction { spec } = &mut command {
            spec.target = Target::Agent(member.clone());
        }
        execute(&mut state, command, at(100));
        let accept = Command::Accept {
            id: InteractionId::parse(&id).expect("interaction id"),
            agent: member.clone(),
        };
        execute(&mut state, accept, at(101));
    }
    state
}

/// The world, and the command of the next call.
fn routing_setup() -> (State, Command) {
    let state = world();
    (state, call("ix_bench_call", at(200)))
}

/// The world after the next call was offered, and its offer event.
fn offer_setup(with_pop_url: bool) -> (State, u64, Event, Option<&'static str>) {
    let mut state = world();
    let events = execute(&mut state, call("ix_bench_call", at(200)), at(200));
    let offer = events
        .into_iter()
        .map(|(event, _)| event)
        .find(|event| matches!(event, Event::InteractionOffered { .. }))
        .expect("the call is offered at once");
    let template = with_pop_url.then_some(POP_URL);
    // The template environment is made on the first render: warm it outside the count.
    let interaction = state.interaction(offer.interaction_id().expect("an offer names its call"));
    black_box(wire::cloud_event_payload(
        1_000,
        &offer,
        interaction,
        template,
    ));
    (state, 1_000, offer, template)
}

/// What the engine stages for the calls `from..from + count`: their events, encoded, with the
/// `seq`s after `head`, and the acks of the agents offered them.
fn calls_batch(state: &mut State, from: usize, count: usize, head: &mut u64) -> Batch {
    let mut batch = Batch::default();
    for n in from..from + count {
        let now = at(300 + n as i64);
        for (event, agents) in execute(state, call(&format!("ix_{n:06}"), now), now) {
            *head += 1;
            let interaction = event.interaction_id().and_then(|id| state.interaction(id));
            let template = match &event {
                Event::InteractionOffered { target, .. } => {
                    pop_url::template_for(state, target, None)
                }
                _ => None,
            };
            let payload = wire::cloud_event_payload(*head, &event, interaction, template);
            if let Event::InteractionOffered { agent, .. } = &event {
                batch.acks.push((agent.to_string(), *head - 1));
            }
            batch.events.push(StoredEvent {
                seq: *head,
                event_type: event.type_name().to_owned(),
                subject: event.subject().to_owned(),
                time_ms: event.time().millis(),
                agents: agents.iter().map(|a| a.to_string()).collect(),
                payload,
            });
        }
        // The call ends at once, so that the next ones find a free agent.
        let hangup = Command::Hangup {
            id: InteractionId::parse(&format!("ix_{n:06}")).expect("interaction id"),
        };
        execute(state, hangup, now);
    }
    batch
}

/// A store in a temporary directory holding 400 calls, and the next group of four batches.
fn commit_setup() -> (tempfile::TempDir, InlineGroupCommit, Vec<Batch>) {
    let mut state = world();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store =
        InlineGroupCommit::open(dir.path(), Durability::Fsync).expect("the store opens");
    let mut head = 0;
    for group in 0..25 {
        let batches = (0..4)
            .map(|b| calls_batch(&mut state, group * 16 + b * 4, 4, &mut head))
            .collect();
        for result in store.write_group(batches) {
            result.expect("the warm-up commits");
        }
    }
    let next = (0..4)
        .map(|b| calls_batch(&mut state, 400 + b * 4, 4, &mut head))
        .collect();
    (dir, store, next)
}

/// The live feeds, the feed of each agent with a stream, the events to publish, and which
/// agents they are for.
type FanOut = (Arc<Shared>, Vec<AgentFeed>, Vec<Arc<LiveEvent>>, Vec<usize>);

/// 1,000 agents with an open stream, and sixteen offers to sixteen of them as the engine
/// publishes them, each after its call's `interaction.created`.
fn fan_out_setup() -> FanOut {
    handoff_core::fix_hash_seeds();
    let shared = Shared::detached(State::new(Settings::default()), 0);
    let feeds: Vec<AgentFeed> = (0..1_000)
        .map(|j| shared.subscribe_agent(&agent(j)))
        .collect();
    let receivers: Vec<usize> = (0..16).map(|n| n * 61 % 1_000).collect();
    let mut events = Vec::new();
    let mut seq = 0;
    for (n, &j) in receivers.iter().enumerate() {
        for (event_type, agents) in [
            ("interaction.created", Vec::new()),
            ("interaction.offered", vec![agent(j).to_string()]),
        ] {
            seq += 1;
            events.push(Arc::new(LiveEvent {
                seq,
                event_type: event_type.to_owned(),
                subject: format!("ix_{n:06}"),
                agents,
                payload: format!(
                    r#"{{"specversion":"1.0","id":"evt_{seq}","type":"{event_type}","seq":{seq},"data":{{}}}}"#
                ),
                created_at: Some(at(0)),
            }));
        }
    }
    (shared, feeds, events, receivers)
}

#[library_benchmark]
fn create_request() -> NewInteraction {
    NewInteraction::parse(black_box(CREATE_BODY.as_bytes()), MAX_CONTEXT_BYTES)
        .expect("the body is accepted")
}

#[library_benchmark]
#[bench::one_call(setup = routing_setup)]
fn routing_decision((mut state, command): (State, Command)) -> (State, Vec<(Event, Vec<AgentId>)>) {
    let events = state
        .execute_with_recipients(command, at(200))
        .expect("the call is routed");
    (state, events)
}

#[library_benchmark]
#[bench::without_pop_url(args = (false), setup = offer_setup)]
#[bench::with_pop_url(args = (true), setup = offer_setup)]
fn offer_event(
    (state, seq, offer, template): (State, u64, Event, Option<&'static str>),
) -> (State, String) {
    let interaction = state.interaction(offer.interaction_id().expect("an offer names its call"));
    let payload = wire::cloud_event_payload(seq, &offer, interaction, template);
    (state, payload)
}

#[library_benchmark]
#[bench::four_batches_of_four_calls(setup = commit_setup)]
fn sqlite_group_commit(
    (dir, mut store, batches): (tempfile::TempDir, InlineGroupCommit, Vec<Batch>),
) -> (tempfile::TempDir, InlineGroupCommit) {
    for result in store.write_group(batches) {
        result.expect("the group commits");
    }
    (dir, store)
}

#[library_benchmark]
#[bench::sixteen_offers_1000_streams(setup = fan_out_setup)]
fn fan_out(
    (shared, mut feeds, events, receivers): FanOut,
) -> (Arc<Shared>, Vec<AgentFeed>, Vec<Arc<LiveEvent>>) {
    shared.publish_committed(events);
    let mut taken = Vec::with_capacity(receivers.len());
    for j in receivers {
        match feeds[j].recv().now_or_never() {
            Some(Ok(event)) => taken.push(event),
            other => panic!("agent {j} did not get its offer: {other:?}"),
        }
    }
    (shared, feeds, taken)
}

library_benchmark_group!(
    name = pop_path;
    benchmarks = create_request, routing_decision, offer_event, sqlite_group_commit, fan_out
);

/// `tools/instruction-budgets` names, in `HANDOFF_BENCH_FIXED_RANDOM`, a library it built from
/// `tools/fixed-random.c` whose `getrandom` always gives the same bytes: preloaded into each
/// benchmark, it fixes the seeds of std's hash maps too (serde_json's objects use them), which
/// `fix_hash_seeds` cannot reach. Without it (a plain `cargo bench`), a count can move by a few
/// instructions from run to run where a table's probes collide differently.
fn config() -> LibraryBenchmarkConfig {
    let mut config = LibraryBenchmarkConfig::default();
    if let Ok(library) = std::env::var("HANDOFF_BENCH_FIXED_RANDOM") {
        config.env("LD_PRELOAD", library);
    }
    config
}

main!(config = config(); library_benchmark_groups = pop_path);
