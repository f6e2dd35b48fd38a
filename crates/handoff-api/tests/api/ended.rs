//! Ended interactions leave memory after `ended_interactions_kept`, and stay readable from the
//! log: the same view, the same history, the same answers to the same requests.

use std::time::Duration;

use handoff_api::ApiSettings;
use serde_json::{json, Value};

use crate::support::*;

fn forget_at_once() -> ApiSettings {
    ApiSettings {
        ended_interactions_kept: Duration::ZERO,
        ..ApiSettings::default()
    }
}

/// alice takes the call and completes it; returns the interaction's id.
async fn completed_call(app: &TestApp, ivr: &str, alice: &str, body: &Value) -> String {
    let (status, created) = app.create_with_key(ivr, "call-1", body).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["state"], "offered", "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, accepted) = app
        .post(&format!("/v1/interactions/{id}/accept"), alice, None)
        .await;
    assert_eq!(status, 200, "{accepted}");
    let (status, completed) = app
        .post(
            &format!("/v1/interactions/{id}/complete"),
            alice,
            Some(json!({"disposition": "resolved", "notes": "refund issued"})),
        )
        .await;
    assert_eq!(status, 200, "{completed}");
    assert_eq!(completed["state"], "completed", "{completed}");
    id
}

async fn listed(app: &TestApp, id: &str) -> bool {
    let (status, list) = app.get("/v1/interactions?limit=1000", &app.admin).await;
    assert_eq!(status, 200, "{list}");
    list["interactions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == id)
}

/// Everything a reader can ask about the ended interaction answers as it did before.
async fn reads_as_before(
    app: &TestApp,
    id: &str,
    before: &Value,
    ivr: &str,
    alice: &str,
    body: &Value,
) {
    let (status, after) = app.get(&format!("/v1/interactions/{id}"), &app.admin).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(&after, before, "the view from the log differs");
    let (status, own) = app.get(&format!("/v1/interactions/{id}"), alice).await;
    assert_eq!(status, 200, "alice reads her own: {own}");
    let bob = app.agent("bob", true).await;
    let (status, refused) = app.get(&format!("/v1/interactions/{id}"), &bob).await;
    assert_eq!(status, 403, "bob reads alice's: {refused}");
    // The same Idempotency-Key and body: the same interaction, nobody popped again.
    let (status, replayed) = app.create_with_key(ivr, "call-1", body).await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["id"], id);
    assert_eq!(replayed["state"], "completed");
    // Acting on it is still the contract's 409, not a 404.
    let (status, refused) = app
        .post(&format!("/v1/interactions/{id}/hangup"), ivr, None)
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "wrong_state", "{refused}");
}

#[tokio::test]
async fn an_ended_interaction_forgotten_by_the_engine_reads_the_same_from_the_log() {
    let app = spawn_app_with(forget_at_once()).await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let body = json!({"caller": "+15551234567", "context": {"intent": "refund", "nested": {"é": [1, 2]}}, "target": {"agent": "alice"}});
    let id = completed_call(&app, &ivr, &alice, &body).await;
    let (status, before) = app.get(&format!("/v1/interactions/{id}"), &app.admin).await;
    assert_eq!(status, 200, "{before}");

    // The engine looks for ended interactions when it has work: give it some until the list,
    // which shows only what is in memory, no longer has the call.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut status = "away";
    while listed(&app, &id).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still in memory after {PATIENCE:?}"
        );
        app.presence("alice", &alice, status).await;
        status = if status == "away" {
            "available"
        } else {
            "away"
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reads_as_before(&app, &id, &before, &ivr, &alice, &body).await;
    app.stop().await;
}

#[tokio::test]
async fn after_a_restart_ended_interactions_stay_out_of_memory_and_read_the_same_from_the_log() {
    let app = spawn_app().await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let body = json!({"context": {"account": "A-1001"}, "target": {"agent": "alice"}});
    let id = completed_call(&app, &ivr, &alice, &body).await;
    let (status, before) = app.get(&format!("/v1/interactions/{id}"), &app.admin).await;
    assert_eq!(status, 200, "{before}");
    assert!(listed(&app, &id).await, "kept for a day by default");

    let app = app.restarted(forget_at_once()).await.expect("restarted");
    assert!(
        !listed(&app, &id).await,
        "recovery kept an ended interaction"
    );
    reads_as_before(&app, &id, &before, &ivr, &alice, &body).await;
    app.stop().await;
}
