//! Webhooks against a real local receiver: Standard Webhooks signatures checked by this file's
//! own reading of the specification, retries with the same `webhook-id`, 410, redirects,
//! `Retry-After`, replay, egress rules, and deliveries that outlive a restart.

use std::time::Duration;

use base64::Engine as _;
use handoff_api::ApiSettings;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::receiver::{Answer, Received, Receiver};
use crate::support::*;

/// Loopback allowed (the receiver is there), and a retry schedule of milliseconds.
fn settings() -> ApiSettings {
    integration_settings()
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW_SECRET: &str = "whsec_dGhpcyBpcyBhIG5ldyBzZWNyZXQgb2YgMzIgYnl0ZXM=";

/// The Standard Webhooks check, written here from the specification's text, not shared with
/// the server: the signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the key is the
/// base64-decoded part of the secret after `whsec_`; each space-separated `v1,<base64>` entry
/// of `webhook-signature` is a candidate; the timestamp must be within five minutes of now.
fn verify(secret: &str, request: &Received) -> Result<(), String> {
    let id = request.header("webhook-id").ok_or("no webhook-id")?;
    let timestamp = request
        .header("webhook-timestamp")
        .ok_or("no webhook-timestamp")?;
    let seconds: i64 = timestamp.parse().map_err(|_| "timestamp not an integer")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if (now - seconds).abs() > 300 {
        return Err(format!(
            "timestamp {seconds} is not within 5 minutes of {now}"
        ));
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").ok_or("not whsec_")?)
        .map_err(|e| e.to_string())?;
    let mut signed = Vec::new();
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(&request.body);
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(&signed);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let header = request
        .header("webhook-signature")
        .ok_or("no webhook-signature")?;
    let matched = header
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .any(|(version, signature)| version == "v1" && signature == expected);
    if matched {
        Ok(())
    } else {
        Err(format!("no v1 signature in {header:?} matches {expected}"))
    }
}

async fn put_webhook(app: &TestApp, name: &str, body: Value) -> Value {
    let (status, view) = app
        .put(&format!("/v1/webhooks/{name}"), &app.admin, body)
        .await;
    assert!(status == 201 || status == 200, "{status} {view}");
    view
}

/// A call offered to alice and accepted: created, offered, accepted; and alice's presence.
async fn a_call(app: &TestApp, ivr: &str, alice: &str) -> String {
    let created = app
        .create_interaction(
            ivr,
            json!({"caller": "+15551234567", "target": {"agent": "alice"}, "context": {"n": 1}}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, body) = app
        .post(&format!("/v1/interactions/{id}/accept"), alice, None)
        .await;
    assert_eq!(status, 200, "{body}");
    id
}

#[tokio::test]
async fn deliveries_are_cloudevents_signed_by_standard_webhooks_for_the_types_asked_for() {
    let mut receiver = Receiver::start().await;
    let app = spawn_app_with(settings()).await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let view = put_webhook(
        &app,
        "crm-sync",
        json!({"url": receiver.url("/hooks/handoff?team=a&b=c"), "types": ["interaction.*"],
               "secret": SECRET, "description": "the CRM's call sync"}),
    )
    .await;
    assert_eq!(view["active"], true);
    assert_eq!(
        view["secret"],
        Value::Null,
        "a given secret is never echoed"
    );
    assert_eq!(view["types"], json!(["interaction.*"]));
    let id = a_call(&app, &ivr, &alice).await;

    let mut seqs = Vec::new();
    for expected in [
        "interaction.created",
        "interaction.offered",
        "interaction.accepted",
    ] {
        let request = receiver.next().await;
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.uri, "/hooks/handoff?team=a&b=c");
        assert_eq!(
            request.header("content-type"),
            Some("application/cloudevents+json; charset=utf-8")
        );
        verify(SECRET, &request).unwrap_or_else(|e| panic!("{expected}: {e}"));
        let event = request.json();
        assert_eq!(event["type"], expected, "{event}");
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["subject"], id.as_str());
        assert_eq!(
            request.header("webhook-id"),
            event["id"].as_str(),
            "webhook-id is the event's id"
        );
        seqs.push(event["seq"].as_u64().unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // agent.* events are not asked for: nothing else arrives.
    receiver.expect_none(Duration::from_millis(300)).await;

    // A rotation: both secrets sign each delivery until the old one expires.
    let view = put_webhook(
        &app,
        "crm-sync",
        json!({"url": receiver.url("/hooks/handoff?team=a&b=c"), "types": ["interaction.*"],
               "secret": NEW_SECRET}),
    )
    .await;
    assert!(view["previous_secret_expires_at"].is_string(), "{view}");
    let (status, _) = app
        .post(
            &format!("/v1/interactions/{id}/complete"),
            &alice,
            Some(json!({"disposition": "resolved"})),
        )
        .await;
    assert_eq!(status, 200);
    let request = receiver.next().await;
    assert_eq!(request.json()["type"], "interaction.completed");
    verify(SECRET, &request).expect("the old secret still verifies");
    verify(NEW_SECRET, &request).expect("the new secret verifies");
    assert_eq!(
        request
            .header("webhook-signature")
            .unwrap()
            .split(' ')
            .count(),
        2
    );
    let tampered = Received {
        body: axum::body::Bytes::from(
            String::from_utf8_lossy(&request.body).replace("resolved", "refunded"),
        ),
        ..request.clone()
    };
    assert!(
        verify(NEW_SECRET, &tampered).is_err(),
        "a changed body fails"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_that_fails_three_times_then_succeeds_gets_the_event_once_more_with_the_same_id()
{
    let mut receiver = Receiver::start().await;
    receiver.then([
        Answer::status(500),
        Answer::status(503),
        Answer::status(404),
    ]);
    let app = spawn_app_with(settings()).await;
    app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    put_webhook(
        &app,
        "flaky",
        json!({"url": receiver.url("/"), "types": ["interaction.created"], "secret": SECRET,
               "max_in_flight": 1}),
    )
    .await;
    app.create_interaction(&ivr, json!({"target": {"agent": "alice"}}))
        .await;
    let mut attempts = Vec::new();
    for _ in 0..4 {
        attempts.push(receiver.next().await);
    }
    let ids: Vec<&str> = attempts
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    for request in &attempts {
        verify(SECRET, request).unwrap();
    }
    receiver.expect_none(Duration::from_millis(300)).await;

    // The deliveries endpoint shows each attempt and nothing left waiting.
    let deliveries = eventually(&app, "/v1/webhooks/flaky/deliveries", |body| {
        body["attempts"].as_array().unwrap().len() == 4
    })
    .await;
    let outcomes: Vec<(&str, Value)> = deliveries["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["outcome"].as_str().unwrap(), a["status"].clone()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("delivered", json!(200)),
            ("failed", json!(404)),
            ("failed", json!(503)),
            ("failed", json!(500))
        ],
        "newest first: {deliveries}"
    );
    let attempt_numbers: Vec<u64> = deliveries["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempt_numbers, [4, 3, 2, 1]);
    assert_eq!(deliveries["attempts"][1]["error"], "HTTP 404");
    assert!(deliveries["attempts"][1]["next_attempt_at"].is_string());
    assert_eq!(deliveries["pending"], json!([]));
    assert_eq!(deliveries["destination"], "webhook:flaky");
    app.stop().await;
}

/// GETs `path` as admin until `done` says yes, for `PATIENCE`.
async fn eventually(app: &TestApp, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = app.get(path, &app.admin).await;
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not done in time: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_410_disables_the_webhook_until_a_put_enables_it_and_nothing_is_lost_meanwhile() {
    let mut receiver = Receiver::start().await;
    receiver.then([Answer::status(410)]);
    let app = spawn_app_with(settings()).await;
    app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let body = json!({"url": receiver.url("/gone"), "types": ["interaction.created"]});
    let view = put_webhook(&app, "old-crm", body.clone()).await;
    let secret = view["secret"]
        .as_str()
        .expect("a made secret is shown once")
        .to_owned();
    assert!(secret.starts_with("whsec_"));
    let first = app
        .create_interaction(&ivr, json!({"target": {"agent": "alice"}}))
        .await;
    let gone = receiver.next().await;
    verify(&secret, &gone).unwrap();
    let view = eventually(&app, "/v1/webhooks/old-crm", |v| v["active"] == false).await;
    assert_eq!(view["enabled"], true);
    assert!(view["disabled_at"].is_string(), "{view}");
    assert!(
        view["disabled_reason"].as_str().unwrap().contains("410"),
        "{view}"
    );
    assert_eq!(view["secret"], Value::Null, "shown once only");
    // Disabled: a new event is not sent.
    let second = app
        .create_interaction(&ivr, json!({"target": {"agent": "alice"}}))
        .await;
    receiver.expect_none(Duration::from_millis(400)).await;
    let (_, deliveries) = app.get("/v1/webhooks/old-crm/deliveries", &app.admin).await;
    assert_eq!(
        deliveries["attempts"][0]["outcome"], "disabled",
        "{deliveries}"
    );
    assert_eq!(deliveries["attempts"][0]["status"], 410);

    // Enabled again by a PUT: the event that got the 410 and the one since arrive, in order.
    let view = put_webhook(&app, "old-crm", body).await;
    assert_eq!(view["active"], true, "{view}");
    assert_eq!(view["disabled_at"], Value::Null);
    let mut subjects = Vec::new();
    for _ in 0..2 {
        let request = receiver.next().await;
        verify(&secret, &request).expect("the secret stayed");
        subjects.push(request.json()["subject"].as_str().unwrap().to_owned());
    }
    subjects.sort();
    let mut expected = vec![
        first["id"].as_str().unwrap().to_owned(),
        second["id"].as_str().unwrap().to_owned(),
    ];
    expected.sort();
    assert_eq!(subjects, expected);
    app.stop().await;
}

#[tokio::test]
async fn redirects_are_not_followed_and_retry_after_is_honoured() {
    let mut receiver = Receiver::start().await;
    let mut elsewhere = Receiver::start().await;
    receiver.then([
        Answer::status(302).with_header("location", &elsewhere.url("/stolen")),
        Answer::status(503).with_header("retry-after", "1"),
    ]);
    let app = spawn_app_with(settings()).await;
    app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    put_webhook(
        &app,
        "moved",
        json!({"url": receiver.url("/"), "types": ["interaction.created"], "secret": SECRET}),
    )
    .await;
    app.create_interaction(&ivr, json!({"target": {"agent": "alice"}}))
        .await;
    let redirected = receiver.next().await;
    let throttled = receiver.next().await;
    let delivered = receiver.next().await;
    assert!(
        throttled.at - redirected.at < Duration::from_millis(900),
        "the schedule's 50 ms after the redirect"
    );
    assert!(
        delivered.at - throttled.at >= Duration::from_millis(950),
        "Retry-After: 1 was waited for ({:?})",
        delivered.at - throttled.at
    );
    elsewhere.expect_none(Duration::from_millis(100)).await;
    let deliveries = eventually(&app, "/v1/webhooks/moved/deliveries", |body| {
        body["attempts"].as_array().unwrap().len() == 3
    })
    .await;
    let redirect = &deliveries["attempts"][2];
    assert_eq!(redirect["status"], 302);
    assert!(
        redirect["error"].as_str().unwrap().contains("not followed"),
        "{redirect}"
    );
    app.stop().await;
}

#[tokio::test]
async fn replay_sends_past_events_again_with_their_own_ids() {
    let mut receiver = Receiver::start().await;
    let app = spawn_app_with(settings()).await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let head = app.head().await;
    put_webhook(
        &app,
        "warehouse",
        json!({"url": receiver.url("/"), "types": ["interaction.created", "interaction.accepted"],
               "secret": SECRET, "max_in_flight": 1}),
    )
    .await;
    a_call(&app, &ivr, &alice).await;
    let first: Vec<String> = vec![
        receiver
            .next()
            .await
            .header("webhook-id")
            .unwrap()
            .to_owned(),
        receiver
            .next()
            .await
            .header("webhook-id")
            .unwrap()
            .to_owned(),
    ];
    let (status, body) = app
        .post(
            &format!("/v1/webhooks/warehouse/replay?after={head}"),
            &app.admin,
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["after"], head);
    let again: Vec<String> = vec![
        receiver
            .next()
            .await
            .header("webhook-id")
            .unwrap()
            .to_owned(),
        receiver
            .next()
            .await
            .header("webhook-id")
            .unwrap()
            .to_owned(),
    ];
    assert_eq!(again, first, "the same events, with the same ids, in order");
    receiver.expect_none(Duration::from_millis(300)).await;

    let beyond = app.head().await + 1;
    for (query, why) in [
        (format!("after={beyond}"), "beyond the head"),
        ("after=x".to_owned(), "not a number"),
        (String::new(), "missing"),
    ] {
        let (status, body) = app
            .post(
                &format!("/v1/webhooks/warehouse/replay?{query}"),
                &app.admin,
                None,
            )
            .await;
        assert_eq!(status, 400, "{why}: {body}");
        assert_eq!(body["error"]["field"], "after", "{why}: {body}");
    }
    let (status, _) = app
        .post("/v1/webhooks/nope/replay?after=0", &app.admin, None)
        .await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn internal_urls_are_refused_unless_egress_allow_names_them() {
    let receiver = Receiver::start().await;
    let app = spawn_app().await;
    for url in [
        receiver.url("/"),
        "http://localhost:9/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.8/hook".to_owned(),
        "http://[::1]:9/".to_owned(),
    ] {
        let (status, body) = app
            .put("/v1/webhooks/inside", &app.admin, json!({"url": url}))
            .await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(body["error"]["code"], "egress_refused", "{url}: {body}");
        assert_eq!(body["error"]["field"], "url");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("egress_allow"),
            "{body}"
        );
    }
    let (status, body) = app.get("/v1/webhooks", &app.admin).await;
    assert_eq!(status, 200);
    assert_eq!(body["webhooks"], json!([]), "nothing was created");
    // Other mistakes name their field.
    for (body, field) in [
        (json!({"url": "ftp://example.com/"}), "url"),
        (
            json!({"url": "https://example.com/", "types": ["Interaction"]}),
            "types[0]",
        ),
        (json!({"url": "https://example.com/", "types": []}), "types"),
        (
            json!({"url": "https://example.com/", "secret": "hunter2"}),
            "secret",
        ),
        (
            json!({"url": "https://example.com/", "max_in_flight": 0}),
            "max_in_flight",
        ),
        (
            json!({"url": "https://example.com/", "timeout_ms": 99}),
            "timeout_ms",
        ),
    ] {
        let (status, answer) = app.put("/v1/webhooks/w", &app.admin, body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    let (status, answer) = app
        .put(
            "/v1/webhooks/w",
            &app.admin,
            json!({"url": "https://example.com/", "typse": []}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = app
        .put(
            "/v1/webhooks/a%20b",
            &app.admin,
            json!({"url": "https://example.com/"}),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    let ivr = app.key("ivr").await;
    let (status, _) = app
        .put(
            "/v1/webhooks/w",
            &ivr,
            json!({"url": "https://example.com/"}),
        )
        .await;
    assert_eq!(status, 403, "admin only");
    app.stop().await;
}

#[tokio::test]
async fn deliveries_pending_when_the_server_stops_arrive_after_it_starts_again() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Nobody answers at first: the receiver's port refuses connections.
    drop(listener);
    let app = spawn_app_with(settings()).await;
    app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    put_webhook(
        &app,
        "later",
        json!({"url": format!("http://127.0.0.1:{port}/"), "types": ["interaction.created"],
               "secret": SECRET}),
    )
    .await;
    let mut created = Vec::new();
    for _ in 0..3 {
        let view = app
            .create_interaction(&ivr, json!({"target": {"agent": "alice"}}))
            .await;
        created.push(view["id"].as_str().unwrap().to_owned());
    }
    eventually(&app, "/v1/webhooks/later/deliveries", |body| {
        body["pending"].as_array().unwrap().len() == 3
    })
    .await;
    let app = app.restarted(settings()).await.expect("restarts");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let mut receiver = Receiver::serve(listener, Answer::status(200)).await;
    let mut subjects = Vec::new();
    for _ in 0..3 {
        let request = receiver.next().await;
        verify(SECRET, &request).unwrap();
        subjects.push(request.json()["subject"].as_str().unwrap().to_owned());
    }
    subjects.sort();
    created.sort();
    assert_eq!(subjects, created, "each pending event, once");
    eventually(&app, "/v1/webhooks/later/deliveries", |body| {
        body["pending"].as_array().unwrap().is_empty()
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn webhooks_are_listed_read_and_deleted_with_their_outbox() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(settings()).await;
    put_webhook(&app, "b", json!({"url": receiver.url("/b")})).await;
    put_webhook(
        &app,
        "a",
        json!({"url": receiver.url("/a"), "types": ["agent.*"]}),
    )
    .await;
    let (status, list) = app.get("/v1/webhooks", &app.admin).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        list["webhooks"][1]["types"],
        json!(["*"]),
        "every event by default"
    );
    assert!(list["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["secret"].is_null()));
    let (status, _) = app
        .send(Method::DELETE, "/v1/webhooks/a", Some(&app.admin), None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = app.get("/v1/webhooks/a", &app.admin).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "unknown_webhook");
    let (status, _) = app
        .send(Method::DELETE, "/v1/webhooks/a", Some(&app.admin), None)
        .await;
    assert_eq!(status, 404);
    let app = app.restarted(settings()).await.expect("restarts");
    let (_, list) = app.get("/v1/webhooks", &app.admin).await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1, "{list}");
    app.stop().await;
}
