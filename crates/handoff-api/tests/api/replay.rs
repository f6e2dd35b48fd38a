//! Replay meets live: readers that join at random points while writers append see exactly the
//! log's events for their agent, with no gap and no duplicate.

use std::collections::HashMap;

use rand::Rng;
use serde_json::json;

use crate::support::*;

const AGENTS: usize = 4;
const WRITERS: usize = 4;
const READERS: usize = 20;
const TARGET_EVENTS: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_joining_at_random_after_values_see_the_log_filtered_for_their_agent() {
    let app = std::sync::Arc::new(spawn_app().await);
    let mut tokens = Vec::new();
    for n in 0..AGENTS {
        let id = format!("agent{n}");
        let token = app.agent(&id, true).await;
        // Room for every interaction, so each create is an offer (an event for the agent).
        let (status, _) = app
            .put(
                &format!("/v1/agents/{id}"),
                &app.admin,
                json!({"name": id, "capacity": 1000}),
            )
            .await;
        assert_eq!(status, 200);
        tokens.push((id, token));
    }
    let ivr = app.key("ivr").await;
    let start_head = app.head().await;

    // Writers: each create appends two events (created, offered), one of them for an agent.
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let app = app.clone();
        let ivr = ivr.clone();
        writers.push(tokio::spawn(async move {
            let per_writer = TARGET_EVENTS / 2 / WRITERS as u64;
            for n in 0..per_writer {
                let agent = format!("agent{}", (w + n as usize) % AGENTS);
                app.create_interaction(
                    &ivr,
                    json!({"caller": format!("{w}-{n}"), "target": {"agent": agent}}),
                )
                .await;
            }
        }));
    }
    let end_head = start_head + TARGET_EVENTS;

    // Readers join at random moments with random `after` values; each reads until it has the
    // last event for its agent, which is known once the writers are done.
    let (finish, finished) = tokio::sync::watch::channel(None::<HashMap<String, u64>>);
    let mut readers = Vec::new();
    for r in 0..READERS {
        let app = app.clone();
        let mut finished = finished.clone();
        let (agent, token) = tokens[r % AGENTS].clone();
        readers.push(tokio::spawn(async move {
            let delay = rand::thread_rng().gen_range(0..200);
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            let head_now = app.head().await;
            let after = rand::thread_rng().gen_range(0..=head_now);
            let mut ws = app.stream(&agent, &token, Some(after)).await;
            let mut seqs: Vec<u64> = Vec::new();
            loop {
                let last_expected = finished
                    .borrow()
                    .as_ref()
                    .map(|last| last.get(&agent).copied().unwrap_or(0));
                if let Some(last_expected) = last_expected {
                    if last_expected <= after || seqs.last().is_some_and(|s| *s >= last_expected) {
                        break;
                    }
                }
                tokio::select! {
                    event = next_event(&mut ws) => seqs.push(event["seq"].as_u64().unwrap()),
                    _ = finished.changed() => {}
                }
            }
            (agent, after, seqs)
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(app.head().await, end_head);

    // The log, filtered per agent, is the truth each reader must match.
    let log = app.store.events_after(0, 100_000).await.unwrap();
    let mut per_agent: HashMap<String, Vec<u64>> = HashMap::new();
    for event in &log {
        for agent in &event.agents {
            per_agent.entry(agent.clone()).or_default().push(event.seq);
        }
    }
    let last_per_agent = per_agent
        .iter()
        .map(|(agent, seqs)| (agent.clone(), seqs.last().copied().unwrap_or(0)))
        .collect();
    finish.send(Some(last_per_agent)).unwrap();
    for reader in readers {
        let (agent, after, seqs) = reader.await.unwrap();
        let expected: Vec<u64> = per_agent[&agent]
            .iter()
            .copied()
            .filter(|seq| *seq > after && *seq <= end_head)
            .collect();
        assert_eq!(seqs, expected, "reader of {agent} after {after}");
    }
}

/// An agent's live feed holds few events; a burst of commits for one agent larger than that
/// makes its stream catch up from the log, and it still sees the log's events for it exactly
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_behind_a_burst_for_its_agent_sees_every_event_once_in_order() {
    let app = std::sync::Arc::new(spawn_app().await);
    let token = app.agent("busy", true).await;
    let (status, _) = app
        .put(
            "/v1/agents/busy",
            &app.admin,
            json!({"name": "busy", "capacity": 1000}),
        )
        .await;
    assert_eq!(status, 200);
    let ivr = app.key("ivr").await;
    let start = app.head().await;
    let mut ws = app.stream("busy", &token, Some(start)).await;
    let mut writers = Vec::new();
    for w in 0..16 {
        let app = app.clone();
        let ivr = ivr.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..25 {
                app.create_interaction(
                    &ivr,
                    json!({"caller": format!("{w}-{n}"), "target": {"agent": "busy"}}),
                )
                .await;
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let log: Vec<u64> = app
        .store
        .agent_events_after("busy", start, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert!(log.len() >= 400, "{} events for the agent", log.len());
    let mut seen = Vec::new();
    while seen.len() < log.len() {
        let event = next_event(&mut ws).await;
        seen.push(event["seq"].as_u64().unwrap());
    }
    assert_eq!(seen, log);
}
