//! A call addressed to an agent who cannot take it now: the 201 says so, and after the agent
//! target's `max_wait_s` the fallback takes the call, or it ends `timed_out`.

use handoff_api::ApiSettings;
use serde_json::{json, Value};

use crate::support::*;

/// The IVR's long poll: the interaction once its state differs from `state`, within 10 s.
async fn once_not(app: &TestApp, ivr: &str, id: &str, state: &str) -> Value {
    let (status, view) = app
        .get(
            &format!("/v1/interactions/{id}?wait_s=10&state={state}"),
            ivr,
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_ne!(
        view["state"], state,
        "the wait ended without a change: {view}"
    );
    view
}

#[tokio::test]
async fn a_call_to_an_away_agent_says_so_in_the_201_and_goes_to_its_fallback_queue_after_max_wait_s(
) {
    let app = spawn_app().await;
    let alice = app.agent("alice", false).await;
    app.presence("alice", &alice, "away").await;
    let bob = app.agent("bob", true).await;
    let mut bobs_stream = app.stream("bob", &bob, None).await;
    let (status, body) = app.put("/v1/queues/general", &app.admin, json!({})).await;
    assert_eq!(status, 201, "{body}");
    let ivr = app.key("ivr").await;
    // bob is a member of general, so he must not be offered the call before the wait ends.
    let created = app
        .create_interaction(
            &ivr,
            json!({"caller": "+15551234567", "target": {"agent": "alice"},
                   "fallback": {"queue": "general"}, "max_wait_s": 1}),
        )
        .await;
    assert_eq!(created["state"], "queued", "{created}");
    assert_eq!(created["agent"], Value::Null);
    let waiting = &created["waiting_for_agent"];
    assert_eq!(waiting["agent"], "alice", "{created}");
    assert_eq!(waiting["presence"], "away");
    assert_eq!(waiting["activity"], "idle");
    assert_eq!(waiting["connected"], false);
    assert_eq!(waiting["then"], json!({"queue": "general"}));
    assert_eq!(waiting["until"], created["max_wait_until"]);
    let message = waiting["message"].as_str().unwrap();
    assert!(
        message.contains("alice is away") && message.contains("queue general"),
        "{message}"
    );
    let created_at = handoff_api::wire::parse_time(created["created_at"].as_str().unwrap());
    let until = handoff_api::wire::parse_time(created["max_wait_until"].as_str().unwrap());
    assert_eq!(
        until.unwrap().millis() - created_at.unwrap().millis(),
        1000,
        "the request's own max_wait_s"
    );
    let id = created["id"].as_str().unwrap();

    let offered = once_not(&app, &ivr, id, "queued").await;
    assert_eq!(offered["state"], "offered", "{offered}");
    assert_eq!(offered["agent"]["id"], "bob");
    assert_eq!(offered["waiting_for_agent"], Value::Null);
    let pop = next_of_type(&mut bobs_stream, "interaction.offered").await;
    assert_eq!(pop["subject"], id);
    assert_eq!(pop["data"]["offer_target"], json!({"queue": "general"}));
    let (_, read) = app.get(&format!("/v1/interactions/{id}"), &ivr).await;
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
            "interaction.queued",
            "interaction.queued",
            "interaction.offered"
        ],
        "{read}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_call_to_an_agent_on_another_call_with_no_fallback_ends_timed_out_at_the_servers_max_wait(
) {
    let mut settings = ApiSettings::default();
    settings.core.agent_max_wait_s = 1;
    let app = spawn_app_with(settings).await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let first = app
        .create_interaction(&ivr, json!({"target": {"agent": "alice"}}))
        .await;
    let first_id = first["id"].as_str().unwrap();
    let (status, body) = app
        .post(&format!("/v1/interactions/{first_id}/accept"), &alice, None)
        .await;
    assert_eq!(status, 200, "{body}");

    let second = app
        .create_interaction(&ivr, json!({"target": {"agent": "alice"}}))
        .await;
    assert_eq!(second["state"], "queued", "{second}");
    let waiting = &second["waiting_for_agent"];
    assert_eq!(waiting["presence"], "available");
    assert_eq!(waiting["activity"], "engaged");
    assert_eq!(waiting["then"], Value::Null);
    assert!(
        waiting["message"]
            .as_str()
            .unwrap()
            .contains("ends timed_out"),
        "{waiting}"
    );
    let id = second["id"].as_str().unwrap();
    let ended = once_not(&app, &ivr, id, "queued").await;
    assert_eq!(ended["state"], "timed_out", "{ended}");
    assert_eq!(ended["max_wait_until"], Value::Null, "no longer waiting");
    // alice's own call is untouched.
    let (_, first) = app.get(&format!("/v1/interactions/{first_id}"), &ivr).await;
    assert_eq!(first["state"], "accepted");
    app.stop().await;
}

#[tokio::test]
async fn a_call_to_an_available_agent_is_offered_at_once_with_no_wait_and_bad_max_waits_are_422() {
    let app = spawn_app().await;
    app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let offered = app
        .create_interaction(&ivr, json!({"target": {"agent": "alice"}, "max_wait_s": 0}))
        .await;
    assert_eq!(offered["state"], "offered", "{offered}");
    assert_eq!(offered["waiting_for_agent"], Value::Null);
    assert_eq!(offered["max_wait_until"], Value::Null);
    let head = app.head().await;
    for bad in [json!(-1), json!(2_592_001)] {
        let (status, body) = app
            .post(
                "/v1/interactions",
                &ivr,
                Some(json!({"target": {"agent": "alice"}, "max_wait_s": bad})),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["field"], "max_wait_s", "{body}");
    }
    let (status, body) = app
        .post(
            "/v1/interactions",
            &ivr,
            Some(json!({"target": {"agent": "alice"}, "max_wait_s": "soon"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "max_wait_s", "{body}");
    assert_eq!(app.head().await, head, "nothing was created");
    app.stop().await;
}
