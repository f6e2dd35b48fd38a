//! The hand-off end to end: create, pop, accept, complete; idempotency; resume with `after`.

use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn an_ivr_handoff_pops_the_identical_context_and_the_history_shows_every_step() {
    let app = spawn_app().await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let mut ws = app.stream("alice", &alice, None).await;

    let context = json!({
        "customer": {"name": "Zoë Ångström", "tier": "gold", "tags": ["vip", "日本語"]},
        "intent": "billing", "amount_due": 12.5, "verified": true, "notes": null,
        "emoji": "📞", "nested": {"deeper": {"deepest": [1, {"x": "ü"}]}}
    });
    let created = app
        .create_interaction(
            &ivr,
            json!({"caller": "+15551234567", "dialed": "+18005550100", "call_id": "abc@pbx",
                   "context": context, "target": {"agent": "alice"}}),
        )
        .await;
    assert_eq!(created["state"], "offered");
    assert_eq!(created["agent"]["id"], "alice");
    assert_eq!(created["agent"]["address"], "sip:alice@pbx.example.com");
    assert_eq!(created["context"], context);
    let id = created["id"].as_str().unwrap().to_owned();

    let pop = next_of_type(&mut ws, "interaction.offered").await;
    assert_eq!(pop["specversion"], "1.0");
    assert_eq!(pop["source"], "handoff");
    assert_eq!(pop["subject"], id.as_str());
    assert_eq!(pop["data"]["interaction"]["context"], context);
    assert_eq!(pop["data"]["interaction"]["caller"], "+15551234567");
    assert_eq!(pop["data"]["interaction"]["call_id"], "abc@pbx");
    assert_eq!(pop["data"]["agent"], "alice");
    assert!(pop["data"]["offer_expires_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    ack(&mut ws, pop["seq"].as_u64().unwrap()).await;

    let (status, accepted) = app
        .post(&format!("/v1/interactions/{id}/accept"), &alice, None)
        .await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["state"], "accepted");
    let (status, completed) = app
        .post(
            &format!("/v1/interactions/{id}/complete"),
            &alice,
            Some(json!({"disposition": "resolved", "notes": "paid by card"})),
        )
        .await;
    assert_eq!(status, 200, "{completed}");
    assert_eq!(completed["state"], "completed");
    assert_eq!(next_event(&mut ws).await["type"], "interaction.accepted");
    assert_eq!(next_event(&mut ws).await["type"], "interaction.completed");

    let (status, read) = app.get(&format!("/v1/interactions/{id}"), &ivr).await;
    assert_eq!(status, 200, "{read}");
    let types: Vec<&str> = read["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "interaction.created",
            "interaction.offered",
            "interaction.accepted",
            "interaction.completed"
        ]
    );
    let seqs: Vec<u64> = read["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "history in seq order: {seqs:?}"
    );
    assert_eq!(read["disposition"], "resolved");
    assert_eq!(read["context"], context);
    app.stop().await;
}

/// Creates with `Idempotency-Key: key` as `token`: the status and the interaction's id.
async fn create_with_key(app: &TestApp, token: &str, key: &str, body: &Value) -> (u16, String) {
    let (status, answer) = app.create_with_key(token, key, body).await;
    (status, answer["id"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn the_same_idempotency_key_twice_makes_one_interaction_and_one_pop() {
    let app = spawn_app().await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let mut ws = app.stream("alice", &alice, None).await;
    let body =
        json!({"caller": "+1555", "context": {"a": 1, "b": [1, 2]}, "target": {"agent": "alice"}});
    let (status, first) = create_with_key(&app, &ivr, "call-42", &body).await;
    assert_eq!(status, 201);
    // Equal as parsed JSON: the same object with its keys in another order.
    let reordered =
        json!({"target": {"agent": "alice"}, "context": {"b": [1, 2], "a": 1}, "caller": "+1555"});
    let (status, second) = create_with_key(&app, &ivr, "call-42", &reordered).await;
    assert_eq!((status, &second), (200, &first));
    let different = json!({"caller": "+1999", "target": {"agent": "alice"}});
    let (status, _) = create_with_key(&app, &ivr, "call-42", &different).await;
    assert_eq!(status, 422);

    let pop = next_of_type(&mut ws, "interaction.offered").await;
    assert_eq!(pop["subject"], first.as_str());
    // A marker after the retries: the next event the agent sees must be it, not a second pop.
    app.presence("alice", &alice, "busy").await;
    let following = next_event(&mut ws).await;
    assert_eq!(
        following["type"], "agent.presence_changed",
        "no second pop: {following}"
    );

    // Keys are per calling key: another IVR's equal key and body is a call of its own.
    let other_ivr = app.key("ivr").await;
    let (status, other) = create_with_key(&app, &other_ivr, "call-42", &body).await;
    assert_eq!(status, 201, "another key's call-42 is new");
    assert_ne!(other, first);

    let admin_list = app.get("/v1/interactions", &app.admin).await.1;
    assert_eq!(admin_list["interactions"].as_array().unwrap().len(), 2);
    app.stop().await;
}

/// Within `idempotency_window` the same key answers with the same interaction; after it, the
/// key makes a new one (and never before the window has passed).
#[tokio::test]
async fn an_idempotency_key_answers_retries_within_its_window_and_makes_a_new_interaction_after_it()
{
    let window = std::time::Duration::from_secs(3);
    let app = spawn_app_with(handoff_api::ApiSettings {
        idempotency_window: window,
        ..handoff_api::ApiSettings::default()
    })
    .await;
    let _alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let body = json!({"caller": "+1555", "target": {"agent": "alice"}});
    let send = || create_with_key(&app, &ivr, "call-7", &body);
    let started = std::time::Instant::now();
    let (status, first) = send().await;
    assert_eq!(status, 201);
    let (status, retried) = send().await;
    assert_eq!(
        (status, &retried),
        (200, &first),
        "a retry {:?} after the first create, within the {window:?} window",
        started.elapsed()
    );
    // Past the window the key is free again: asked until it makes a new interaction.
    let deadline = started + window + std::time::Duration::from_secs(10);
    loop {
        let (status, id) = send().await;
        if status == 201 {
            assert!(
                started.elapsed() >= window,
                "a new interaction after only {:?}",
                started.elapsed()
            );
            assert_ne!(id, first, "a new interaction, not the old one");
            break;
        }
        assert_eq!((status, &id), (200, &first), "inside the window");
        assert!(
            std::time::Instant::now() < deadline,
            "the key still answered with the first interaction {:?} after it was made",
            started.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_reconnecting_agent_gets_exactly_what_it_missed_in_order_then_live_events() {
    let app = spawn_app().await;
    let alice = app.agent("alice", false).await;
    let ivr = app.key("ivr").await;
    // Capacity 3 so all three are offered while the agent is away from its desktop.
    let (status, _) = app
        .put(
            "/v1/agents/alice",
            &app.admin,
            json!({"name": "Alice", "capacity": 4}),
        )
        .await;
    assert_eq!(status, 200);
    app.presence("alice", &alice, "available").await;
    let mut ws = app.stream("alice", &alice, None).await;
    let presence = next_event(&mut ws).await;
    let last_seen = presence["seq"].as_u64().unwrap();
    drop(ws);

    let mut ids = Vec::new();
    for n in 0..3 {
        let created = app
            .create_interaction(
                &ivr,
                json!({"caller": format!("+1555000{n}"), "target": {"agent": "alice"}}),
            )
            .await;
        assert_eq!(created["state"], "offered");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let mut ws = app.stream("alice", &alice, Some(last_seen)).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = next_event(&mut ws).await;
        assert_eq!(event["type"], "interaction.offered");
        seen.push(event["subject"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, ids);
    let live = app
        .create_interaction(
            &ivr,
            json!({"caller": "+15550009", "target": {"agent": "alice"}}),
        )
        .await;
    let event = next_event(&mut ws).await;
    assert_eq!(event["type"], "interaction.offered");
    assert_eq!(event["subject"], live["id"]);
    app.stop().await;
}

/// Acks are durable with the engine's next commit and not answered: waits until the agent's
/// record shows `seq`, failing if it ever shows more.
async fn wait_until_acked(app: &TestApp, agent: &str, seq: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let record = app.get(&format!("/v1/agents/{agent}"), &app.admin).await.1;
        if record["acked_seq"] == seq {
            return;
        }
        assert!(
            record["acked_seq"].as_u64() < Some(seq),
            "acked past what was acked ({seq}): {record}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "ack {seq} not recorded: {record}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn without_after_the_stream_resumes_after_the_durable_ack() {
    let app = spawn_app().await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let mut ws = app.stream("alice", &alice, Some(0)).await;
    let presence = next_event(&mut ws).await;
    assert_eq!(presence["type"], "agent.presence_changed");
    let first = app
        .create_interaction(&ivr, json!({"target": {"agent": "alice"}}))
        .await;
    let pop = next_event(&mut ws).await;
    assert_eq!(pop["subject"], first["id"]);
    ack(&mut ws, pop["seq"].as_u64().unwrap()).await;
    wait_until_acked(&app, "alice", pop["seq"].as_u64().unwrap()).await;
    drop(ws);
    let (status, _) = app
        .post(
            &format!("/v1/interactions/{}/reject", first["id"].as_str().unwrap()),
            &alice,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let mut ws = app.stream("alice", &alice, None).await;
    let next = next_event(&mut ws).await;
    assert_eq!(
        next["type"], "interaction.rejected",
        "resumes right after the ack: {next}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_burst_of_acks_in_any_order_keeps_the_highest() {
    let app = spawn_app().await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let mut ws = app.stream("alice", &alice, Some(0)).await;
    next_event(&mut ws).await;
    let mut seqs = Vec::new();
    for status in ["away", "available", "away", "available"] {
        app.presence("alice", &alice, status).await;
    }
    // Four presence changes, acked in a burst, the highest first.
    for _ in 0..4 {
        seqs.push(next_event(&mut ws).await["seq"].as_u64().unwrap());
    }
    let highest = *seqs.iter().max().unwrap();
    seqs.sort_unstable_by(|a, b| b.cmp(a));
    for seq in &seqs {
        ack(&mut ws, *seq).await;
    }
    wait_until_acked(&app, "alice", highest).await;
    // Nothing later lowers it: a stream opened now starts after the highest ack.
    drop(ws);
    let later = app
        .create_interaction(&ivr, json!({"target": {"agent": "alice"}}))
        .await;
    let mut ws = app.stream("alice", &alice, None).await;
    let next = next_event(&mut ws).await;
    assert_eq!(
        next["subject"], later["id"],
        "resumes after the highest ack: {next}"
    );
    assert!(next["seq"].as_u64() > Some(highest));
    app.stop().await;
}

#[tokio::test]
async fn an_agent_lists_its_own_interactions_changed_since_a_time_newest_first() {
    let app = spawn_app().await;
    let alice = app.agent("alice", true).await;
    let bob = app.agent("bob", true).await;
    let ivr = app.key("ivr").await;
    let earlier = app
        .create_interaction(
            &ivr,
            json!({"caller": "+1555 earlier", "target": {"agent": "alice"}}),
        )
        .await;
    let earlier_id = earlier["id"].as_str().unwrap();
    let (status, _) = app
        .post(
            &format!("/v1/interactions/{earlier_id}/reject"),
            &alice,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (_, earlier) = app
        .get(&format!("/v1/interactions/{earlier_id}"), &alice)
        .await;
    // One millisecond after the last change of the earlier one: only later changes count.
    let after_earlier = handoff_api::wire::parse_time(earlier["updated_at"].as_str().unwrap())
        .unwrap()
        .plus_millis(1);
    let since = handoff_api::wire::format_time(after_earlier);
    let mut later_ids = Vec::new();
    for caller in ["+1555 first", "+1555 second"] {
        // Distinct millisecond stamps, so "changed since" cannot tie with the earlier one.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let created = app
            .create_interaction(
                &ivr,
                json!({"caller": caller, "target": {"agent": "alice"}}),
            )
            .await;
        let id = created["id"].as_str().unwrap().to_owned();
        // alice holds one call at a time: taking and completing it frees her for the next.
        for step in ["accept", "complete"] {
            let (status, _) = app
                .post(&format!("/v1/interactions/{id}/{step}"), &alice, None)
                .await;
            assert_eq!(status, 200, "{step}");
        }
        later_ids.push(id);
    }
    app.create_interaction(
        &ivr,
        json!({"caller": "+1555 bob's", "target": {"agent": "bob"}}),
    )
    .await;

    let (status, listed) = app
        .get(&format!("/v1/interactions?since={since}"), &alice)
        .await;
    assert_eq!(status, 200, "{listed}");
    let ids: Vec<&str> = listed["interactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [later_ids[1].as_str(), later_ids[0].as_str()],
        "{listed}"
    );
    let (_, everything) = app.get("/v1/interactions", &alice).await;
    assert_eq!(everything["interactions"].as_array().unwrap().len(), 3);
    let (_, bobs) = app.get("/v1/interactions", &bob).await;
    assert_eq!(bobs["interactions"][0]["caller"], "+1555 bob's", "{bobs}");
    assert_eq!(bobs["interactions"].as_array().unwrap().len(), 1, "{bobs}");
    app.stop().await;
}
