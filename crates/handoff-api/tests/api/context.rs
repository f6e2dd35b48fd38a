//! Writable context: `PATCH /v1/interactions/{id}/context` with a JSON merge patch and
//! `If-Match` on the context's version; `interaction.context_updated` on the agent's stream;
//! the updated context on every later offer.

use handoff_api::ApiSettings;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

/// `PATCH .../context` with `body` (sent as `application/merge-patch+json`) and an optional
/// `If-Match`; the status, the body and the `ETag`.
async fn patch(
    app: &TestApp,
    id: &str,
    token: &str,
    if_match: Option<&str>,
    body: Value,
) -> (u16, Value, Option<String>) {
    let mut request = app
        .http
        .patch(app.url(&format!("/v1/interactions/{id}/context")))
        .bearer_auth(token)
        .header("content-type", "application/merge-patch+json")
        .body(body.to_string());
    if let Some(tag) = if_match {
        request = request.header("if-match", tag);
    }
    let response = request.send().await.expect("sent");
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        etag,
    )
}

async fn read_context(app: &TestApp, id: &str, token: &str) -> (Value, String) {
    let response = app
        .http
        .get(app.url(&format!("/v1/interactions/{id}/context")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    (response.json().await.unwrap(), etag)
}

#[tokio::test]
async fn the_ivr_and_the_agent_update_the_context_under_if_match_and_a_transfer_carries_it() {
    let app = spawn_app().await;
    let alice = app.agent("alice", true).await;
    let bob = app.agent("bob", true).await;
    let ivr = app.key("ivr").await;
    let mut alices_stream = app.stream("alice", &alice, None).await;
    let mut bobs_stream = app.stream("bob", &bob, None).await;
    let created = app
        .create_interaction(
            &ivr,
            json!({"caller": "+15551234567", "target": {"agent": "alice"},
                   "context": {"intent": "billing", "account": {"id": "A-1", "tier": "gold"},
                               "tags": ["a", "b"], "pin_verified": false}}),
        )
        .await;
    assert_eq!(created["context_version"], 1);
    let id = created["id"].as_str().unwrap().to_owned();
    let pop = next_of_type(&mut alices_stream, "interaction.offered").await;
    assert_eq!(pop["data"]["interaction"]["context_version"], 1);
    let (status, body) = app
        .post(&format!("/v1/interactions/{id}/accept"), &alice, None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (context, etag) = read_context(&app, &id, &ivr).await;
    assert_eq!(etag, "\"1\"");
    assert_eq!(context["intent"], "billing");

    // The IVR finished verifying the caller after the hand-off.
    let (status, updated, etag) = patch(
        &app,
        &id,
        &ivr,
        Some("\"1\""),
        json!({"pin_verified": true, "account": {"tier": null, "balance": 12.5},
               "tags": ["c"], "intent": null, "verified_by": "Zoë's IVR"}),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(etag.as_deref(), Some("\"2\""));
    let expected = json!({"account": {"id": "A-1", "balance": 12.5}, "tags": ["c"],
                          "pin_verified": true, "verified_by": "Zoë's IVR"});
    assert_eq!(
        updated, expected,
        "RFC 7396: null removes, objects merge, arrays replace"
    );
    let event = next_of_type(&mut alices_stream, "interaction.context_updated").await;
    assert_eq!(event["subject"], id.as_str());
    assert_eq!(event["data"]["context"], expected);
    assert_eq!(event["data"]["context_version"], 2);
    assert_eq!(event["data"]["patch"]["intent"], Value::Null);
    assert!(
        event["data"]["by"].as_str().unwrap().starts_with("key_"),
        "{event}"
    );

    // A second writer still holding version 1 is refused, and nothing changes.
    let head = app.head().await;
    let (status, refused, _) =
        patch(&app, &id, &alice, Some("\"1\""), json!({"note": "stale"})).await;
    assert_eq!(status, 412, "{refused}");
    assert_eq!(refused["error"]["code"], "precondition_failed");
    assert_eq!(refused["error"]["field"], "If-Match");
    assert_eq!(app.head().await, head, "nothing appended");
    // A weak tag never matches If-Match (RFC 9110 13.1.1).
    let (status, _, _) = patch(&app, &id, &alice, Some("W/\"2\""), json!({"note": "weak"})).await;
    assert_eq!(status, 412);
    // Nor does a tag whose quotes hold a comma: it is one tag, not two halves to refuse.
    let (status, body, _) = patch(
        &app,
        &id,
        &alice,
        Some("W/\"\", \",2\""),
        json!({"note": "comma"}),
    )
    .await;
    assert_eq!(status, 412, "{body}");

    // The agent, assigned now, writes its notes against the current version.
    let (status, updated, etag) = patch(
        &app,
        &id,
        &alice,
        Some("\"7\", \"2\""),
        json!({"agent_notes": "wants a refund"}),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(etag.as_deref(), Some("\"3\""));
    let event = next_of_type(&mut alices_stream, "interaction.context_updated").await;
    assert_eq!(event["data"]["by"], "alice");

    // Transferred to bob: his pop carries the context as updated, not as the IVR first sent it.
    let (status, body) = app
        .post(
            &format!("/v1/interactions/{id}/transfer"),
            &alice,
            Some(json!({"target": {"agent": "bob"}, "note": "refund"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let pop = next_of_type(&mut bobs_stream, "interaction.offered").await;
    let mut with_notes = expected.clone();
    with_notes["agent_notes"] = json!("wants a refund");
    assert_eq!(pop["data"]["interaction"]["context"], with_notes);
    assert_eq!(pop["data"]["interaction"]["context_version"], 3);
    assert_eq!(pop["data"]["interaction"]["transfer_note"], "refund");
    let (_, view) = app.get(&format!("/v1/interactions/{id}"), &ivr).await;
    assert_eq!(view["context"], with_notes);
    assert_eq!(view["context_version"], 3);
    // alice no longer holds it: she may not write to it any more; `*` is no way around that.
    let (status, _, _) = patch(&app, &id, &alice, Some("*"), json!({"x": 1})).await;
    assert_eq!(status, 403);

    // The log keeps every version: a restarted server shows the same context.
    let app = app
        .restarted(ApiSettings::default())
        .await
        .expect("restarts");
    let (context, etag) = read_context(&app, &id, &app.admin).await;
    assert_eq!(context, with_notes);
    assert_eq!(etag, "\"3\"");
    app.stop().await;
}

#[tokio::test]
async fn only_the_creating_ivr_or_the_assigned_agent_may_update_and_bad_patches_change_nothing() {
    let settings = ApiSettings {
        max_context_bytes: 200,
        ..ApiSettings::default()
    };
    let app = spawn_app_with(settings).await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let other_ivr = app.key("ivr").await;
    let supervisor = app.key("supervisor").await;
    let created = app
        .create_interaction(
            &ivr,
            json!({"target": {"agent": "alice"}, "context": {"a": 1}}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let head = app.head().await;
    // Offered, not yet accepted: alice is not its assigned agent yet.
    for (who, token) in [
        ("another IVR key", &other_ivr),
        ("a supervisor", &supervisor),
        ("the offered agent", &alice),
    ] {
        let (status, body, _) = patch(&app, &id, token, None, json!({"a": 2})).await;
        assert_eq!(status, 403, "{who}: {body}");
    }
    let (status, body) = app
        .send(
            Method::PATCH,
            &format!("/v1/interactions/{id}/context"),
            Some(&ivr),
            Some(json!([1])),
        )
        .await;
    assert_eq!(status, 400, "an array is not a merge patch here: {body}");
    let (status, body, _) = patch(&app, &id, &ivr, Some("three"), json!({"a": 2})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "If-Match");
    let (status, body, _) = patch(&app, &id, &ivr, None, json!({"blob": "x".repeat(300)})).await;
    assert_eq!(
        status, 413,
        "the merged context is over max_context_bytes: {body}"
    );
    assert_eq!(body["error"]["field"], "context");
    let (status, body) = app
        .send(
            Method::PATCH,
            "/v1/interactions/ix_nope/context",
            Some(&ivr),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(app.head().await, head, "nothing appended");

    // Without If-Match the update applies to the latest version; `*` matches any.
    let (status, body, etag) = patch(&app, &id, &ivr, None, json!({"b": 2})).await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"2\"")), "{body}");
    let (status, body, etag) = patch(&app, &id, &ivr, Some("*"), json!({"c": 3})).await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"3\"")), "{body}");
    assert_eq!(body, json!({"a": 1, "b": 2, "c": 3}));

    // Ended: the context is what the call had; it can no longer change.
    let (status, _) = app
        .post(&format!("/v1/interactions/{id}/hangup"), &ivr, None)
        .await;
    assert_eq!(status, 200);
    let (status, body, _) = patch(&app, &id, &ivr, None, json!({"d": 4})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "wrong_state");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_updates_without_if_match_are_all_applied_in_some_order() {
    let app = spawn_app().await;
    app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let created = app
        .create_interaction(&ivr, json!({"target": {"agent": "alice"}}))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let updates = (0..20).map(|n| {
        let (app, id, ivr) = (&app, &id, &ivr);
        async move { patch(app, id, ivr, None, json!({ format!("k{n}"): n })).await }
    });
    let answers = futures_util::future::join_all(updates).await;
    let mut versions: Vec<String> = answers
        .into_iter()
        .map(|(status, body, etag)| {
            assert_eq!(status, 200, "{body}");
            etag.unwrap()
        })
        .collect();
    versions.sort_by_key(|tag| tag.trim_matches('"').parse::<u64>().unwrap());
    let expected: Vec<String> = (2..=21).map(|v| format!("\"{v}\"")).collect();
    assert_eq!(versions, expected, "each update made its own version");
    let (context, etag) = read_context(&app, &id, &ivr).await;
    assert_eq!(etag, "\"21\"");
    assert_eq!(
        context.as_object().unwrap().len(),
        20,
        "no update lost: {context}"
    );
    app.stop().await;
}
