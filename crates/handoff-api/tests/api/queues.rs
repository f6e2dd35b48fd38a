//! Queues over HTTP: their configuration and its validation, routing a caller to the right
//! agent with the reason on the pop and in the history, the line of waiting callers, the
//! statistics, recovery of all of it, and who may call each route.

use std::time::Duration;

use handoff_api::ApiSettings;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

/// Creates agent `id` with `skills` (and `available` or not); returns its token.
async fn skilled_agent(app: &TestApp, id: &str, skills: Value, available: bool) -> String {
    let token = app.agent(id, false).await;
    let (status, body) = app
        .put(
            &format!("/v1/agents/{id}"),
            &app.admin,
            json!({"name": format!("Agent {id}"), "address": format!("sip:{id}@pbx.example.com"),
                   "skills": skills}),
        )
        .await;
    assert_eq!(status, 200, "skills for {id}: {body}");
    if available {
        app.presence(id, &token, "available").await;
    }
    token
}

async fn put_queue(app: &TestApp, name: &str, body: Value) -> (u16, Value) {
    app.put(&format!("/v1/queues/{name}"), &app.admin, body)
        .await
}

/// The events of the log about `subject`, as their CloudEvent JSON.
async fn log_of(app: &TestApp, subject: &str) -> Vec<Value> {
    app.store
        .subject_events(subject)
        .await
        .unwrap()
        .iter()
        .map(|stored| serde_json::from_str(&stored.payload).unwrap())
        .collect()
}

fn of_type<'a>(history: &'a Value, event_type: &str) -> Vec<&'a Value> {
    history
        .as_array()
        .expect("history is an array")
        .iter()
        .filter(|event| event["type"] == event_type)
        .collect()
}

fn millis(time: &Value) -> i64 {
    let text = time.as_str().expect("a time");
    handoff_api::wire::parse_time(text)
        .expect("RFC 3339")
        .millis()
}

/// Distinct idle-since times: presence changes in the same millisecond would tie.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[tokio::test]
async fn a_queue_is_put_with_defaults_read_listed_and_deleted() {
    let app = spawn_app().await;

    let (status, created) = put_queue(&app, "general", json!({})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created,
        json!({
            "name": "general", "skills": {}, "strategy": "longest_idle", "offer_timeout_s": 20,
            "wrap_up_s": 10, "max_wait_s": null, "overflow": null, "service_level_s": 20,
            "steps": [],
        })
    );
    let (status, again) = put_queue(&app, "general", json!({})).await;
    assert_eq!(
        (status, &again),
        (200, &created),
        "an unchanged PUT is a 200"
    );

    let billing = json!({
        "name": "billing", "skills": {"billing": 5, "spanish": 3}, "strategy": "most_skilled",
        "offer_timeout_s": 15, "wrap_up_s": 30, "max_wait_s": 600,
        "overflow": {"queue": "general"}, "service_level_s": 30,
        "steps": [{"after_s": 30, "skills": {"billing": 3}}, {"after_s": 90, "skills": {}}],
    });
    let (status, body) = put_queue(&app, "billing", billing.clone()).await;
    assert_eq!((status, &body), (201, &billing));
    // A GET's body can be PUT back as it is.
    let (status, read) = app.get("/v1/queues/billing", &app.admin).await;
    assert_eq!((status, &read), (200, &billing));
    let (status, body) = put_queue(&app, "billing", read).await;
    assert_eq!((status, &body), (200, &billing));
    let (status, updated) = put_queue(&app, "billing", json!({"strategy": "round_robin"})).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["strategy"], "round_robin");
    assert_eq!(
        updated["skills"],
        json!({}),
        "a PUT replaces the whole queue"
    );
    assert_eq!(updated["overflow"], Value::Null);

    let (status, list) = app.get("/v1/queues", &app.admin).await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["billing", "general"]);

    let types: Vec<String> = log_of(&app, "billing")
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        ["queue.created", "queue.updated"],
        "unchanged PUTs log nothing"
    );
    assert_eq!(log_of(&app, "billing").await[0]["data"]["queue"], billing);

    let delete = |name: &'static str| {
        let app = &app;
        async move {
            app.send(
                Method::DELETE,
                &format!("/v1/queues/{name}"),
                Some(&app.admin),
                None,
            )
            .await
        }
    };
    assert_eq!(delete("billing").await.0, 204);
    let (status, body) = app.get("/v1/queues/billing", &app.admin).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_queue"))
    );
    let (status, body) = delete("billing").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_queue"))
    );
    assert_eq!(
        log_of(&app, "billing").await.last().unwrap()["data"],
        json!({"queue": "billing"})
    );

    // A queue with a caller in it cannot go.
    let ivr = app.key("ivr").await;
    let caller = app
        .create_interaction(&ivr, json!({"target": {"queue": "general"}}))
        .await;
    let (status, body) = delete("general").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "queue_in_use");
    let id = caller["id"].as_str().unwrap();
    let (status, _) = app
        .post(&format!("/v1/interactions/{id}/hangup"), &ivr, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(delete("general").await.0, 204);
    app.stop().await;
}

#[tokio::test]
async fn invalid_queues_are_refused_naming_the_field_and_change_nothing() {
    let app = spawn_app().await;
    assert_eq!(put_queue(&app, "general", json!({})).await.0, 201);
    assert_eq!(
        put_queue(&app, "billing", json!({"skills": {"billing": 5}}))
            .await
            .0,
        201
    );
    let before = app.get("/v1/queues", &app.admin).await;
    let head = app.head().await;

    let unprocessable = [
        (
            json!({"skills": {"billing": 11}}),
            "invalid_skill_level",
            "skills.billing",
        ),
        (
            json!({"skills": {"billing": -1}}),
            "invalid_skill_level",
            "skills.billing",
        ),
        (
            json!({"skills": {"billing": 5}, "steps": [{"after_s": 10, "skills": {"billing": 12}}]}),
            "invalid_skill_level",
            "steps[0].skills.billing",
        ),
        (
            json!({"skills": {"billing": 5},
                   "steps": [{"after_s": 10, "skills": {"billing": 3}},
                             {"after_s": 20, "skills": {"billing": 4}}]}),
            "invalid_queue",
            "steps[1].skills",
        ),
        (
            json!({"steps": [{"after_s": 20, "skills": {}}, {"after_s": 20, "skills": {}}]}),
            "invalid_queue",
            "steps",
        ),
        (
            json!({"offer_timeout_s": 0}),
            "invalid_field",
            "offer_timeout_s",
        ),
        (json!({"wrap_up_s": -1}), "invalid_field", "wrap_up_s"),
        (json!({"max_wait_s": 0}), "invalid_field", "max_wait_s"),
        (
            json!({"service_level_s": 2_592_001}),
            "invalid_field",
            "service_level_s",
        ),
        (
            json!({"overflow": {"queue": "nowhere"}}),
            "unknown_queue",
            "overflow.queue",
        ),
        (
            json!({"overflow": {"queue": "billing"}}),
            "invalid_queue",
            "overflow.queue",
        ),
        (
            json!({"overflow": {"queue": "no way"}}),
            "invalid_id",
            "overflow.queue",
        ),
        (json!({"name": "sales"}), "name_mismatch", "name"),
    ];
    for (body, code, field) in unprocessable {
        let (status, answer) = put_queue(&app, "billing", body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
        assert_eq!(error_shape_problem(&answer), None);
    }
    let (status, answer) = put_queue(&app, "no%20way", json!({})).await;
    assert_eq!(
        (status, &answer["error"]["field"]),
        (422, &json!("name")),
        "{answer}"
    );

    let schema = [
        (json!({"strategy": "fastest"}), "strategy"),
        (json!({"offer_timeout_s": "20"}), "offer_timeout_s"),
        (json!({"max_wait": 60}), "max_wait"),
        (json!({"overflow": "general"}), "overflow"),
        (json!({"steps": [{"skills": {}}]}), "steps[0].after_s"),
        (json!({"skills": {"billing": 2.5}}), "skills.billing"),
    ];
    for (body, field) in schema {
        let (status, answer) = put_queue(&app, "billing", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let named = answer["error"]["field"].as_str().unwrap_or_default();
        assert!(named.starts_with(field), "{body}: {answer}");
    }

    assert_eq!(app.get("/v1/queues", &app.admin).await, before);
    assert_eq!(app.head().await, head, "a refused PUT writes nothing");
    app.stop().await;
}

#[tokio::test]
async fn a_caller_goes_to_the_longest_idle_eligible_agent_with_the_reason_on_the_pop() {
    let app = spawn_app().await;
    assert_eq!(
        put_queue(&app, "billing", json!({"skills": {"billing": 3}}))
            .await
            .0,
        201
    );
    // bob then alice become available, both eligible; carol, idle longest, lacks the skill.
    let carol = skilled_agent(&app, "carol", json!({"sales": 9}), false).await;
    let bob = skilled_agent(&app, "bob", json!({"billing": 3}), false).await;
    let alice = skilled_agent(&app, "alice", json!({"billing": 9}), false).await;
    app.presence("carol", &carol, "available").await;
    tick().await;
    app.presence("bob", &bob, "available").await;
    tick().await;
    app.presence("alice", &alice, "available").await;
    let mut bob_stream = app.stream("bob", &bob, None).await;
    let ivr = app.key("ivr").await;

    let created = app
        .create_interaction(
            &ivr,
            json!({"caller": "+15551234567", "context": {"intent": "refund"},
                   "target": {"queue": "billing"}}),
        )
        .await;
    assert_eq!(created["state"], "offered", "{created}");
    assert_eq!(
        created["agent"],
        json!({"id": "bob", "address": "sip:bob@pbx.example.com"})
    );
    assert_eq!(created["position"], Value::Null);
    assert_eq!(created["estimated_wait_s"], Value::Null);
    let id = created["id"].as_str().unwrap();

    let pop = next_of_type(&mut bob_stream, "interaction.offered").await;
    assert_eq!(pop["subject"], id);
    assert_eq!(pop["data"]["agent"], "bob");
    assert_eq!(
        pop["data"]["interaction"]["context"],
        json!({"intent": "refund"})
    );
    let routing = &pop["data"]["routing"];
    assert_eq!(routing["strategy"], "longest_idle", "{pop}");
    assert_eq!(routing["eligible"], 2, "{pop}");
    let reason = routing["reason"].as_str().unwrap();
    assert!(reason.starts_with("idle the longest"), "{reason}");

    let (status, read) = app.get(&format!("/v1/interactions/{id}"), &ivr).await;
    assert_eq!(status, 200, "{read}");
    let offers = of_type(&read["history"], "interaction.offered");
    assert_eq!(offers.len(), 1, "{read}");
    assert_eq!(offers[0]["data"]["routing"], *routing);
    assert_eq!(offers[0]["seq"], pop["seq"]);
    // A queue's caller always enters the line first, so the statistics count it as offered
    // to the queue; the offer follows in the same commit.
    let queued = of_type(&read["history"], "interaction.queued");
    assert_eq!(queued.len(), 1, "{read}");
    assert_eq!(
        queued[0]["seq"].as_u64().unwrap() + 1,
        pop["seq"].as_u64().unwrap()
    );
    app.stop().await;
}

#[tokio::test]
async fn callers_wait_in_line_and_the_first_goes_to_the_agent_who_becomes_available() {
    let app = spawn_app().await;
    assert_eq!(put_queue(&app, "support", json!({})).await.0, 201);
    assert_eq!(put_queue(&app, "other", json!({})).await.0, 201);
    let alice = app.agent("alice", false).await;
    let ivr = app.key("ivr").await;

    let first = app
        .create_interaction(
            &ivr,
            json!({"caller": "first", "target": {"queue": "support"}}),
        )
        .await;
    assert_eq!(first["state"], "queued", "{first}");
    assert_eq!(first["position"], 1);
    assert_eq!(first["agent"], Value::Null);
    assert_eq!(
        first["estimated_wait_s"],
        Value::Null,
        "nobody answered yet today: no estimate"
    );
    let second = app
        .create_interaction(
            &ivr,
            json!({"caller": "second", "target": {"queue": "support"}}),
        )
        .await;
    assert_eq!(second["state"], "queued", "{second}");
    assert_eq!(second["position"], 2);
    let first_id = first["id"].as_str().unwrap().to_owned();
    let second_id = second["id"].as_str().unwrap().to_owned();

    let (status, listed) = app.get("/v1/interactions?queue=support", &app.admin).await;
    assert_eq!(status, 200, "{listed}");
    let positions: Vec<(&str, u64)> = listed["interactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["caller"].as_str().unwrap(),
                i["position"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(positions, [("second", 2), ("first", 1)], "newest first");
    let (_, other) = app.get("/v1/interactions?queue=other", &app.admin).await;
    assert_eq!(other["interactions"], json!([]));

    let mut stream = app.stream("alice", &alice, None).await;
    app.presence("alice", &alice, "available").await;
    let pop = next_of_type(&mut stream, "interaction.offered").await;
    assert_eq!(
        pop["subject"],
        first_id.as_str(),
        "the first in line goes first"
    );
    assert_eq!(pop["data"]["routing"]["strategy"], "longest_idle");
    assert_eq!(pop["data"]["routing"]["eligible"], 1);

    let (_, read) = app.get(&format!("/v1/interactions/{first_id}"), &ivr).await;
    assert_eq!(read["state"], "offered");
    assert_eq!(read["agent"]["id"], "alice");
    assert_eq!(read["agent"]["address"], "sip:alice@pbx.example.com");
    assert_eq!(read["position"], Value::Null);
    let queued = of_type(&read["history"], "interaction.queued");
    assert_eq!(queued.len(), 1, "{read}");
    assert_eq!(queued[0]["data"]["requeued"], false);
    assert!(queued[0]["data"].get("position").is_none());
    let (_, read) = app
        .get(&format!("/v1/interactions/{second_id}"), &ivr)
        .await;
    assert_eq!(
        (read["state"].as_str(), read["position"].as_u64()),
        (Some("queued"), Some(1))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_relaxed_requirement_wakes_the_server_to_offer_the_waiting_caller() {
    let app = spawn_app().await;
    let body =
        json!({"skills": {"billing": 8}, "steps": [{"after_s": 1, "skills": {"billing": 2}}]});
    assert_eq!(put_queue(&app, "billing", body).await.0, 201);
    skilled_agent(&app, "alice", json!({"billing": 2}), true).await;
    let ivr = app.key("ivr").await;
    let created = app
        .create_interaction(&ivr, json!({"target": {"queue": "billing"}}))
        .await;
    assert_eq!(
        created["state"], "queued",
        "alice is not skilled enough yet: {created}"
    );
    let id = created["id"].as_str().unwrap();
    // Nothing else happens: only the escalation's wake-up can offer it.
    let (status, read) = app
        .get(
            &format!("/v1/interactions/{id}?wait_s=10&state=queued"),
            &ivr,
        )
        .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["state"], "offered", "{read}");
    assert_eq!(read["agent"]["id"], "alice");
    let offer = of_type(&read["history"], "interaction.offered")[0];
    let waited = millis(&offer["time"]) - millis(&read["created_at"]);
    assert!(waited >= 1000, "offered after {waited} ms");
    let reason = offer["data"]["routing"]["reason"].as_str().unwrap();
    assert!(reason.contains("relaxed to step 1"), "{reason}");
    app.stop().await;
}

#[tokio::test]
async fn ring_all_offers_everyone_and_the_first_accept_revokes_the_rest() {
    let mut settings = ApiSettings::default();
    settings.core.offer_timeout_s = 600;
    let app = spawn_app_with(settings).await;
    assert_eq!(
        put_queue(
            &app,
            "hunt",
            json!({"strategy": "ring_all", "offer_timeout_s": 600})
        )
        .await
        .0,
        201
    );
    let alice = app.agent("alice", true).await;
    let bob = app.agent("bob", true).await;
    let mut alice_stream = app.stream("alice", &alice, None).await;
    let mut bob_stream = app.stream("bob", &bob, None).await;
    let ivr = app.key("ivr").await;
    let created = app
        .create_interaction(&ivr, json!({"target": {"queue": "hunt"}}))
        .await;
    assert_eq!(created["state"], "offered", "{created}");
    let id = created["id"].as_str().unwrap();
    for stream in [&mut alice_stream, &mut bob_stream] {
        let pop = next_of_type(stream, "interaction.offered").await;
        assert_eq!(pop["subject"], id);
        assert_eq!(pop["data"]["routing"]["strategy"], "ring_all");
        assert_eq!(pop["data"]["routing"]["eligible"], 2);
    }
    let (status, accepted) = app
        .post(&format!("/v1/interactions/{id}/accept"), &bob, None)
        .await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["agent"]["id"], "bob");
    let revoked = next_of_type(&mut alice_stream, "interaction.offer_revoked").await;
    assert_eq!(revoked["data"]["reason"], "answered_elsewhere");
    assert_eq!(revoked["data"]["agent"], "alice");
    let (status, _) = app
        .post(&format!("/v1/interactions/{id}/accept"), &alice, None)
        .await;
    assert_eq!(status, 409, "too late for alice");
    app.stop().await;
}

#[tokio::test]
async fn stats_count_one_answered_and_one_abandoned_caller_exactly() {
    let app = spawn_app().await;
    let body = json!({"skills": {"sales": 1}, "service_level_s": 20});
    assert_eq!(put_queue(&app, "sales", body).await.0, 201);
    let alice = skilled_agent(&app, "alice", json!({"sales": 5}), true).await;
    skilled_agent(&app, "bob", json!({"sales": 1}), false).await;
    skilled_agent(&app, "carol", json!({"support": 9}), true).await;
    let ivr = app.key("ivr").await;
    let supervisor = app.key("supervisor").await;

    // One caller answered by alice, one who hangs up waiting while she is busy with the first.
    let answered = app
        .create_interaction(&ivr, json!({"target": {"queue": "sales"}}))
        .await;
    assert_eq!(answered["agent"]["id"], "alice", "{answered}");
    let answered_id = answered["id"].as_str().unwrap();
    let (status, _) = app
        .post(
            &format!("/v1/interactions/{answered_id}/accept"),
            &alice,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let abandoned = app
        .create_interaction(&ivr, json!({"target": {"queue": "sales"}}))
        .await;
    assert_eq!(abandoned["state"], "queued", "{abandoned}");
    let abandoned_id = abandoned["id"].as_str().unwrap();
    let (status, _) = app
        .post(
            &format!("/v1/interactions/{abandoned_id}/hangup"),
            &ivr,
            None,
        )
        .await;
    assert_eq!(status, 200);

    let (status, stats) = app.get("/v1/queues/sales/stats", &supervisor).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["queue"], "sales");
    assert_eq!(stats["waiting"], 0);
    assert_eq!(stats["longest_wait_s"], 0);
    assert_eq!(stats["service_level_s"], 20);
    // Members: alice (available, engaged) and bob (offline, idle); carol lacks the skill.
    assert_eq!(
        stats["agents"],
        json!({"available": 1, "away": 0, "busy": 0, "offline": 1,
               "idle": 1, "offered": 0, "engaged": 1, "wrap_up": 0})
    );
    // The wait of the answered caller, from entering the queue to the accept, as logged.
    let (_, read) = app
        .get(&format!("/v1/interactions/{answered_id}"), &ivr)
        .await;
    let entered = millis(&of_type(&read["history"], "interaction.queued")[0]["time"]);
    let accepted = millis(&of_type(&read["history"], "interaction.accepted")[0]["time"]);
    let asa_s = (accepted - entered) as f64 / 1000.0;
    assert!(asa_s < 20.0, "answered within the service level");
    let window = json!({
        "offered": 2, "answered": 1, "abandoned": 1, "timed_out": 0, "overflowed": 0,
        "asa_s": asa_s, "service_level": 0.5, "abandon_rate": 0.5,
    });
    assert_eq!(stats["last_15m"], window, "{stats}");
    let day_start = millis(&stats["day_start"]);
    if day_start <= millis(&answered["created_at"]) {
        assert_eq!(stats["today"], window, "{stats}");
    }

    // With one caller answered today, a new caller in line gets an estimate: ASA x position.
    let waiting = app
        .create_interaction(&ivr, json!({"target": {"queue": "sales"}}))
        .await;
    assert_eq!(waiting["position"], 1, "{waiting}");
    assert_eq!(
        waiting["estimated_wait_s"],
        json!(asa_s.round() as u64),
        "{waiting}"
    );
    let (_, stats) = app.get("/v1/queues/sales/stats", &app.admin).await;
    assert_eq!(stats["waiting"], 1);
    assert_eq!(stats["last_15m"]["offered"], 3);

    let (status, missing) = app.get("/v1/queues/nowhere/stats", &app.admin).await;
    assert_eq!(
        (status, missing["error"]["code"].as_str()),
        (404, Some("unknown_queue"))
    );
    app.stop().await;
}

#[tokio::test]
async fn queues_waiting_callers_and_stats_survive_a_restart() {
    let app = spawn_app().await;
    let body = json!({"skills": {"billing": 4}, "strategy": "least_occupied", "max_wait_s": 3600,
                      "steps": [{"after_s": 3000, "skills": {}}]});
    assert_eq!(put_queue(&app, "billing", body).await.0, 201);
    let ivr = app.key("ivr").await;
    let mut ids = Vec::new();
    for caller in ["a", "b", "c"] {
        let created = app
            .create_interaction(
                &ivr,
                json!({"caller": caller, "target": {"queue": "billing"}}),
            )
            .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let (_, queue_before) = app.get("/v1/queues/billing", &app.admin).await;
    let (_, stats_before) = app.get("/v1/queues/billing/stats", &app.admin).await;

    let app = app
        .restarted(ApiSettings::default())
        .await
        .expect("recovers");
    let (_, queue_after) = app.get("/v1/queues/billing", &app.admin).await;
    assert_eq!(queue_after, queue_before);
    for (index, id) in ids.iter().enumerate() {
        let (status, read) = app.get(&format!("/v1/interactions/{id}"), &app.admin).await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(read["state"], "queued");
        assert_eq!(read["position"], index as u64 + 1, "{read}");
    }
    let (_, stats_after) = app.get("/v1/queues/billing/stats", &app.admin).await;
    assert_eq!(stats_after["waiting"], 3);
    assert_eq!(stats_after["last_15m"], stats_before["last_15m"]);
    // The line still routes: an agent who qualifies takes the first caller.
    let alice = skilled_agent(&app, "alice", json!({"billing": 4}), false).await;
    app.presence("alice", &alice, "available").await;
    let (_, read) = app
        .get(&format!("/v1/interactions/{}", ids[0]), &app.admin)
        .await;
    assert_eq!(
        (read["state"].as_str(), read["agent"]["id"].as_str()),
        (Some("offered"), Some("alice"))
    );
    app.stop().await;
}

#[tokio::test]
async fn capacity_is_a_number_or_a_map_per_channel() {
    let app = spawn_app().await;
    let put = |body: Value| app.put("/v1/agents/alice", &app.admin, body);
    let (status, body) = put(json!({"name": "Alice", "capacity": {"voice": 1, "chat": 3}})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["capacity"], json!({"chat": 3, "voice": 1}));
    let (status, body) = put(json!({"name": "Alice", "capacity": 2})).await;
    assert_eq!((status, &body["capacity"]), (200, &json!(2)));
    let (status, body) = put(json!({"name": "Alice"})).await;
    assert_eq!(
        (status, &body["capacity"]),
        (200, &json!(1)),
        "the default is 1"
    );
    for (capacity, field) in [
        (json!({"voice": 0}), "capacity.voice"),
        (json!({"voice": 1001}), "capacity.voice"),
        (json!({}), "capacity"),
        (json!(0), "capacity"),
    ] {
        let (status, body) = put(json!({"name": "Alice", "capacity": capacity})).await;
        assert_eq!(status, 422, "{capacity}: {body}");
        assert_eq!(body["error"]["field"], field, "{capacity}: {body}");
    }
    let (status, body) = put(json!({"name": "Alice", "capacity": "lots"})).await;
    assert_eq!(status, 400, "{body}");

    // One call and three chats at once: a second call waits, a chat does not.
    assert_eq!(put_queue(&app, "desk", json!({})).await.0, 201);
    let token = app.agent("alice", false).await;
    let (status, _) = put(json!({"name": "Alice", "capacity": {"voice": 1, "chat": 3}})).await;
    assert_eq!(status, 200);
    app.presence("alice", &token, "available").await;
    let ivr = app.key("ivr").await;
    let call = |channel: &'static str| {
        let (app, ivr) = (&app, &ivr);
        async move {
            let created = app
                .create_interaction(
                    ivr,
                    json!({"channel": channel, "target": {"queue": "desk"}}),
                )
                .await;
            created["state"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(call("voice").await, "offered");
    assert_eq!(call("voice").await, "queued");
    for _ in 0..3 {
        assert_eq!(call("chat").await, "offered");
    }
    assert_eq!(call("chat").await, "queued");
    app.stop().await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    NoToken,
    BadToken,
    Admin,
    Ivr,
    Supervisor,
    Presence,
    Agent,
}

const EVERYONE: [Caller; 7] = [
    Caller::NoToken,
    Caller::BadToken,
    Caller::Admin,
    Caller::Ivr,
    Caller::Supervisor,
    Caller::Presence,
    Caller::Agent,
];

/// 401 without a valid token, `ok` for a caller in `allowed`, 403 for anyone else.
fn expected(caller: Caller, allowed: &[Caller], ok: u16) -> u16 {
    match caller {
        Caller::NoToken | Caller::BadToken => 401,
        caller if allowed.contains(&caller) => ok,
        _ => 403,
    }
}

#[tokio::test]
async fn queue_routes_answer_each_role_as_the_contract_says_and_refusals_change_nothing() {
    use Caller::*;
    let app = spawn_app().await;
    assert_eq!(put_queue(&app, "billing", json!({})).await.0, 201);
    let agent = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let supervisor = app.key("supervisor").await;
    let presence = app.key("presence").await;
    let bad = "hk_0000000000000000000000000000000000000000000000000000000000000000".to_owned();
    let token = |caller: Caller| -> Option<&str> {
        match caller {
            NoToken => None,
            BadToken => Some(&bad),
            Admin => Some(&app.admin),
            Ivr => Some(&ivr),
            Supervisor => Some(&supervisor),
            Presence => Some(&presence),
            Agent => Some(&agent),
        }
    };
    let mut wrong = Vec::new();
    fn check(
        wrong: &mut Vec<String>,
        route: &str,
        caller: Caller,
        want: u16,
        answer: &(u16, Value),
    ) {
        if answer.0 != want {
            wrong.push(format!(
                "{route} as {caller:?}: {} not {want}: {}",
                answer.0, answer.1
            ));
        } else if answer.0 >= 400 {
            if let Some(problem) = error_shape_problem(&answer.1) {
                wrong.push(format!("{route} as {caller:?}: {problem}"));
            }
        }
    }

    for caller in EVERYONE {
        let name = format!("q-{caller:?}").to_lowercase();
        let path = format!("/v1/queues/{name}");
        let answer = app
            .send(
                Method::PUT,
                &path,
                token(caller),
                Some(json!({"strategy": "round_robin"})),
            )
            .await;
        check(
            &mut wrong,
            "PUT /v1/queues/N",
            caller,
            expected(caller, &[Admin], 201),
            &answer,
        );
        let exists = app.get(&path, &app.admin).await.0 == 200;
        if exists != (caller == Admin) {
            wrong.push(format!(
                "PUT as {caller:?} left the queue existing: {exists}"
            ));
        }
        // Refused before the body is read: garbage is a 403, not a 400.
        let answer = app
            .send_raw(
                Method::PUT,
                "/v1/queues/billing",
                token(caller),
                Some("application/json"),
                b"{not json".to_vec(),
            )
            .await;
        let want = expected(caller, &[Admin], 400);
        check(
            &mut wrong,
            "PUT /v1/queues/billing (invalid JSON)",
            caller,
            want,
            &answer,
        );

        let answer = app
            .send(Method::GET, "/v1/queues", token(caller), None)
            .await;
        check(
            &mut wrong,
            "GET /v1/queues",
            caller,
            expected(caller, &[Admin, Supervisor, Ivr], 200),
            &answer,
        );
        let answer = app
            .send(Method::GET, "/v1/queues/billing", token(caller), None)
            .await;
        let want = expected(caller, &[Admin, Supervisor, Ivr], 200);
        check(&mut wrong, "GET /v1/queues/billing", caller, want, &answer);
        let answer = app
            .send(Method::GET, "/v1/queues/nowhere", token(caller), None)
            .await;
        let want = expected(caller, &[Admin, Supervisor, Ivr], 404);
        check(&mut wrong, "GET /v1/queues/nowhere", caller, want, &answer);
        let answer = app
            .send(Method::GET, "/v1/queues/billing/stats", token(caller), None)
            .await;
        let want = expected(caller, &[Admin, Supervisor], 200);
        check(
            &mut wrong,
            "GET /v1/queues/billing/stats",
            caller,
            want,
            &answer,
        );

        let victim = format!("/v1/queues/victim-{caller:?}").to_lowercase();
        assert_eq!(app.put(&victim, &app.admin, json!({})).await.0, 201);
        let answer = app.send(Method::DELETE, &victim, token(caller), None).await;
        check(
            &mut wrong,
            "DELETE /v1/queues/N",
            caller,
            expected(caller, &[Admin], 204),
            &answer,
        );
        let exists = app.get(&victim, &app.admin).await.0 == 200;
        if exists == (caller == Admin) {
            wrong.push(format!(
                "DELETE as {caller:?}: the queue exists afterwards: {exists}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong cells:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    app.stop().await;
}

#[tokio::test]
async fn queue_stats_events_reach_the_event_stream_without_a_seq_and_stay_out_of_the_log() {
    let app = spawn_app().await;
    let (status, _) = put_queue(&app, "stats-feed", json!({})).await;
    assert_eq!(status, 201);
    let ivr = app.key("ivr").await;
    let mut events = app
        .http
        .get(app.url("/v1/events?types=queue.stats"))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status().as_u16(), 200);
    // A queue name no other test uses: the metrics recorder is one per process.
    // Nobody is available: the caller waits, and the queue's numbers change.
    app.create_interaction(&ivr, json!({"target": {"queue": "stats-feed"}}))
        .await;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !seen.contains("\"waiting\":1") {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .expect("a queue.stats event in time")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let line = seen
        .lines()
        .filter(|l| l.starts_with("data:"))
        .find(|l| l.contains("\"waiting\":1"))
        .unwrap();
    let event: Value = serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(event["type"], "queue.stats");
    assert_eq!(event["subject"], "stats-feed");
    assert!(
        event.get("seq").is_none(),
        "statistics carry no seq: {event}"
    );
    assert!(
        !seen.contains("\nid:") && !seen.starts_with("id:"),
        "no id line: {seen}"
    );
    let logged = app.store.events_after(0, 10_000).await.unwrap();
    assert!(logged.iter().all(|e| e.event_type != "queue.stats"));
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("handoff_queue_waiting{queue=\"stats-feed\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn interaction_ended_tells_the_agent_when_wrap_up_runs_out_and_the_interaction_agrees() {
    let app = spawn_app().await;
    let body = json!({"skills": {"care": 1}, "wrap_up_s": 30});
    assert_eq!(put_queue(&app, "care", body).await.0, 201);
    let alice = skilled_agent(&app, "alice", json!({"care": 2}), true).await;
    let mut stream = app.stream("alice", &alice, None).await;
    let ivr = app.key("ivr").await;
    let created = app
        .create_interaction(&ivr, json!({"target": {"queue": "care"}}))
        .await;
    let id = created["id"].as_str().unwrap();
    let (status, _) = app
        .post(&format!("/v1/interactions/{id}/accept"), &alice, None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .post(&format!("/v1/interactions/{id}/hangup"), &ivr, None)
        .await;
    assert_eq!(status, 200);

    let ended = next_of_type(&mut stream, "interaction.ended").await;
    assert_eq!(ended["data"]["agent"], "alice", "{ended}");
    let until = millis(&ended["data"]["wrap_up_until"]);
    assert_eq!(until - millis(&ended["time"]), 30_000, "{ended}");
    let (_, read) = app.get(&format!("/v1/interactions/{id}"), &alice).await;
    assert_eq!(read["state"], "wrap_up", "{read}");
    assert_eq!(millis(&read["wrap_up_until"]), until, "{read}");
    // The same field as stored in the log, so a replay gives the same deadline.
    let logged = log_of(&app, id).await;
    let logged_ended = logged
        .iter()
        .find(|event| event["type"] == "interaction.ended")
        .expect("the log holds interaction.ended");
    assert_eq!(logged_ended["data"], ended["data"]);
    app.stop().await;
}

#[tokio::test]
async fn the_last_hour_of_a_queue_is_served_to_supervisors_from_the_stats_feed() {
    let app = spawn_app().await;
    assert_eq!(put_queue(&app, "sales", json!({})).await.0, 201);
    let ivr = app.key("ivr").await;
    let supervisor = app.key("supervisor").await;
    let alice = app.agent("alice", true).await;
    // A queue without skills takes any agent: alice goes away so that the caller waits.
    app.presence("alice", &alice, "away").await;
    let waiting = app
        .create_interaction(&ivr, json!({"target": {"queue": "sales"}}))
        .await;
    assert_eq!(waiting["state"], "queued", "{waiting}");

    // The feed looks once a second: wait for a sample that saw the caller.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let history = loop {
        let (status, history) = app.get("/v1/queues/sales/stats/history", &supervisor).await;
        assert_eq!(status, 200, "{history}");
        let saw_caller = history["samples"]
            .as_array()
            .unwrap()
            .iter()
            .any(|sample| sample["waiting_max"] == 1);
        if saw_caller {
            break history;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no sample saw the caller: {history}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(history["queue"], "sales");
    assert_eq!(history["bucket_s"], 30);
    let last = history["samples"].as_array().unwrap().last().unwrap();
    assert_eq!(last["waiting"], 1, "{history}");
    assert_eq!(last["service_level"], 1.0, "{history}");
    assert!(millis(&last["at"]) % 30_000 == 0, "{history}");

    let (status, refused) = app.get("/v1/queues/sales/stats/history", &alice).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, missing) = app
        .get("/v1/queues/nowhere/stats/history", &app.admin)
        .await;
    assert_eq!(
        (status, missing["error"]["code"].as_str()),
        (404, Some("unknown_queue"))
    );
    app.stop().await;
}
