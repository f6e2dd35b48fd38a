//! Presence: the grace period after the last stream closes, and the revoked offer.

use std::time::Duration;

use handoff_api::ApiSettings;
use serde_json::json;

use crate::support::*;

fn short_grace() -> ApiSettings {
    ApiSettings {
        presence_grace: Duration::from_millis(300),
        ..ApiSettings::default()
    }
}

#[tokio::test]
async fn after_the_last_stream_closes_and_the_grace_passes_the_agent_is_offline_and_its_offer_revoked(
) {
    let app = spawn_app_with(short_grace()).await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let supervisor = app.key("supervisor").await;
    let first = app.stream("alice", &alice, None).await;
    let mut second = app.stream("alice", &alice, None).await;
    let created = app
        .create_interaction(&ivr, json!({"target": {"agent": "alice"}}))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["state"], "offered");
    let _ = next_of_type(&mut second, "interaction.offered").await;

    // Watch every event as a supervisor would.
    let mut events = app
        .http
        .get(app.url("/v1/events"))
        .bearer_auth(&supervisor)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status().as_u16(), 200);

    // One of two streams closes: still connected, nothing happens.
    drop(first);
    let agent = app.get("/v1/agents/alice", &app.admin).await.1;
    assert_eq!(agent["presence"]["status"], "available");

    drop(second);
    // The grace passes: offline, connection_lost, system; the offer is revoked.
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !(seen.contains("interaction.unanswered") && seen.contains("agent.presence_changed")) {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .expect("events arrive in time")
            .unwrap()
            .expect("the event stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("\"reason\":\"connection_lost\""), "{seen}");
    assert!(seen.contains("interaction.offer_revoked"), "{seen}");

    let agent = app.get("/v1/agents/alice", &app.admin).await.1;
    assert_eq!(agent["presence"]["status"], "offline");
    assert_eq!(agent["presence"]["reason"], "connection_lost");
    assert_eq!(agent["presence"]["source"], "system");
    assert_eq!(agent["connected"], false);
    let interaction = app
        .get(&format!("/v1/interactions/{id}"), &app.admin)
        .await
        .1;
    assert_eq!(interaction["state"], "unanswered");
    let revoked = interaction["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "interaction.offer_revoked")
        .expect("a revoke in the history")
        .clone();
    assert_eq!(revoked["data"]["reason"], "timed_out");
    assert_eq!(revoked["data"]["cause"], "connection_lost");
    app.stop().await;
}

#[tokio::test]
async fn a_stream_that_reopens_within_the_grace_keeps_the_agent_available() {
    let app = spawn_app_with(ApiSettings {
        presence_grace: Duration::from_secs(2),
        ..ApiSettings::default()
    })
    .await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let ws = app.stream("alice", &alice, None).await;
    drop(ws);
    let mut ws = app.stream("alice", &alice, None).await;
    // Past the grace period, an offer still reaches the agent: it never went offline.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let created = app
        .create_interaction(&ivr, json!({"target": {"agent": "alice"}}))
        .await;
    assert_eq!(created["state"], "offered");
    let pop = next_of_type(&mut ws, "interaction.offered").await;
    assert_eq!(pop["subject"], created["id"]);
    let agent = app.get("/v1/agents/alice", &app.admin).await.1;
    assert_eq!(agent["presence"]["status"], "available");
    assert_eq!(agent["connected"], true);
    app.stop().await;
}
