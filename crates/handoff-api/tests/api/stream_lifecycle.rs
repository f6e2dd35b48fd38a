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
            ..handoff_core::Settings::default()
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

#[tokio::test]
async fn the_web_ui_session_cookie_authenticates_and_a_change_needs_an_allowed_origin() {
    let app = spawn_app_with(ApiSettings {
        allowed_origins: vec!["https://desk.example.com".to_owned()],
        ..ApiSettings::default()
    })
    .await;
    let alice = app.agent("alice", false).await;
    let response = app
        .http
        .post(app.url("/v1/session"))
        .json(&json!({"token": alice}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let cookie = response
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session: serde_json::Value = response.json().await.unwrap();
    assert_eq!(session["role"], "agent");
    assert_eq!(session["agent_id"], "alice");
    let pair = cookie.split(';').next().unwrap().to_owned();

    // A read with the cookie alone works.
    let read = app
        .http
        .get(app.url("/v1/agents/alice"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200);
    // A change with the cookie but no Origin, or a foreign one, is refused; an allowed one works.
    let presence = |origin: Option<&'static str>| {
        let mut request = app
            .http
            .put(app.url("/v1/agents/alice/presence"))
            .header("cookie", &pair)
            .json(&json!({"status": "available"}));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    assert_eq!(presence(None).await.unwrap().status().as_u16(), 403);
    assert_eq!(
        presence(Some("https://evil.example.com"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );
    assert_eq!(
        presence(Some("https://desk.example.com"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    // A bad session token is a 401, and logging out clears the cookie.
    let bad = app
        .http
        .get(app.url("/v1/agents/alice"))
        .header("cookie", "handoff_session=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 401);
    let closed = app
        .http
        .delete(app.url("/v1/session"))
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status().as_u16(), 204);
    assert!(closed.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    app.stop().await;
}

#[tokio::test]
async fn after_a_restart_the_grace_period_starts_when_the_server_is_ready() {
    let settings = ApiSettings {
        presence_grace: Duration::from_millis(300),
        ..ApiSettings::default()
    };
    let app = spawn_app_with(settings.clone()).await;
    app.agent("alice", true).await;
    let app = app.restarted(settings).await.expect("restart");
    // Nobody connected after the restart: alice goes offline once the grace passes.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let (status, read) = loop {
        let (status, read) = app.get("/v1/agents/alice", &app.admin).await;
        if read["presence"]["status"] == "offline" || tokio::time::Instant::now() > deadline {
            break (status, read);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 200);
    assert_eq!(read["presence"]["status"], "offline", "{read}");
    assert_eq!(read["presence"]["reason"], "connection_lost");
    app.stop().await;
}

#[tokio::test]
async fn revoking_a_key_ends_its_open_event_stream() {
    let app = spawn_app().await;
    let (status, created) = app
        .post(
            "/v1/keys",
            &app.admin,
            Some(json!({"role": "supervisor", "name": "wallboard"})),
        )
        .await;
    assert_eq!(status, 201);
    let token = created["token"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();
    let mut events = app
        .http
        .get(app.url("/v1/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status().as_u16(), 200);
    let (status, _) = app
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/keys/{key_id}"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(status, 204);
    // The stream ends: chunks (keep-alives at most) until the body is done.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .expect("the event stream ends in time");
        match chunk {
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        }
    }
    app.stop().await;
}

/// The socket is sized for small acks: a client frame above 64 KiB ends the stream, while
/// pops far larger than the read buffer still go out whole.
#[tokio::test]
async fn an_oversized_client_frame_ends_the_stream_and_large_pops_still_arrive() {
    use futures_util::SinkExt;
    let app = spawn_app().await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let mut ws = app.stream("alice", &alice, None).await;
    let big = "x".repeat(60_000);
    app.create_interaction(
        &ivr,
        json!({"caller": "+1555", "target": {"agent": "alice"}, "context": {"notes": big}}),
    )
    .await;
    let pop = next_of_type(&mut ws, "interaction.offered").await;
    assert_eq!(
        pop["data"]["interaction"]["context"]["notes"]
            .as_str()
            .map(str::len),
        Some(60_000)
    );
    ws.send(Message::Text("y".repeat(100 << 10).into()))
        .await
        .unwrap();
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream stayed open");
}
