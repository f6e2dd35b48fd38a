//! The agent stream's life: keep-alive pings, revocation of its token, several connections,
//! and the metrics a hand-off leaves behind.

use std::time::Duration;

use futures_util::StreamExt;
use handoff_api::ApiSettings;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn the_server_pings_an_open_stream_to_keep_it_alive() {
    let app = spawn_app_with(ApiSettings {
        ping_interval: Duration::from_millis(100),
        ..ApiSettings::default()
    })
    .await;
    let alice = app.agent("alice", false).await;
    let mut ws = app.stream("alice", &alice, None).await;
    let frame = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("a frame in time")
        .expect("open")
        .expect("frame");
    assert!(
        matches!(frame, Message::Ping(_)),
        "expected a ping, got {frame:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn revoking_an_agent_token_closes_its_open_stream_and_refuses_it_at_once() {
    let app = spawn_app().await;
    let alice = app.agent("alice", true).await;
    let mut ws = app.stream("alice", &alice, None).await;
    let keys = app.get("/v1/keys", &app.admin).await.1;
    let token_id = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["agent_id"] == "alice")
        .expect("alice's token is listed")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !keys.to_string().contains(&alice),
        "tokens are never listed"
    );
    let (status, _) = app
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/keys/{token_id}"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let closed = loop {
        let frame = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the stream closes in time");
        match frame {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(closed.expect("a close frame").code), 1008);
    let (status, body) = app.get("/v1/agents/alice", &alice).await;
    assert_eq!(status, 401, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn every_open_connection_of_an_agent_gets_every_event() {
    let app = spawn_app().await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let mut desk = app.stream("alice", &alice, None).await;
    let mut phone = app.stream("alice", &alice, None).await;
    let created = app
        .create_interaction(&ivr, json!({"target": {"agent": "alice"}}))
        .await;
    for ws in [&mut desk, &mut phone] {
        let pop = next_of_type(ws, "interaction.offered").await;
        assert_eq!(pop["subject"], created["id"]);
    }
    let agent = app.get("/v1/agents/alice", &app.admin).await.1;
    assert_eq!(agent["connected"], true);
    assert_eq!(agent["activity"], "offered");
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_created_interactions_delivered_pops_and_their_latency() {
    let app = spawn_app().await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let mut ws = app.stream("alice", &alice, None).await;
    app.create_interaction(&ivr, json!({"target": {"agent": "alice"}}))
        .await;
    next_of_type(&mut ws, "interaction.offered").await;
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap();
    for name in [
        "handoff_interactions_created_total",
        "handoff_pops_delivered_total",
        "handoff_create_to_pop_seconds_bucket",
        "handoff_connected_agents",
        "handoff_store_commit_seconds_bucket",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_offer_not_answered_in_time_goes_to_the_fallback_agent_and_the_ivr_learns_it_by_long_poll(
) {
    let app = spawn_app_with(ApiSettings {
        core: handoff_core::Settings {
            offer_timeout_s: 1,
            offline_on_disconnect: true,
        },
        ..ApiSettings::default()
    })
    .await;
    let alice = app.agent("alice", true).await;
    let bob = app.agent("bob", true).await;
    let ivr = app.key("ivr").await;
    let mut alice_ws = app.stream("alice", &alice, None).await;
    let mut bob_ws = app.stream("bob", &bob, None).await;
    let created = app
        .create_interaction(
            &ivr,
            json!({"target": {"agent": "alice"}, "fallback": {"agent": "bob"}}),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["agent"]["id"], "alice");
    // The state stays `offered`, but to another agent: the long poll answers at that change.
    let (status, moved) = app
        .get(
            &format!("/v1/interactions/{id}?state=offered&wait_s=30"),
            &ivr,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(moved["agent"]["id"], "bob", "{moved}");
    let revoked = next_of_type(&mut alice_ws, "interaction.offer_revoked").await;
    assert_eq!(revoked["data"]["reason"], "timed_out");
    let pop = next_of_type(&mut bob_ws, "interaction.offered").await;
    assert_eq!(pop["subject"], id);
    app.stop().await;
}
