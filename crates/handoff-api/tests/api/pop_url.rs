//! `pop_url`: a queue's template (or the server's default) rendered into every screen pop, each
//! value percent-encoded where it lands; a template that fails leaves `pop_url_error` instead
//! and the pop still arrives; one that does not parse is refused.

use handoff_api::ApiSettings;
use serde_json::{json, Value};

use crate::support::*;

const TRICKY: &str = "+1 555/12#3&x=ü";

async fn put_queue(app: &TestApp, name: &str, body: Value) -> (u16, Value) {
    app.put(&format!("/v1/queues/{name}"), &app.admin, body)
        .await
}

/// The query of `url` as decoded pairs, in order.
fn query_pairs(url: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(url)
        .unwrap_or_else(|error| panic!("{url}: {error}"))
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[tokio::test]
async fn caller_and_context_values_land_percent_encoded_and_round_trip() {
    let app = spawn_app().await;
    let template =
        "https://crm.example.com/search?phone={{ caller }}&acct={{ context.account }}&q={{ queue }}";
    let (status, body) = put_queue(&app, "billing", json!({"pop_url": template})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["pop_url"], template);
    let (status, read) = app.get("/v1/queues/billing", &app.admin).await;
    assert_eq!((status, &read["pop_url"]), (200, &json!(template)));

    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let mut ws = app.stream("alice", &alice, None).await;
    let account = "A/B&c=d#e f?ü";
    app.create_interaction(
        &ivr,
        json!({"caller": TRICKY, "context": {"account": account}, "target": {"queue": "billing"}}),
    )
    .await;
    let pop = next_of_type(&mut ws, "interaction.offered").await;
    let url = pop["data"]["pop_url"]
        .as_str()
        .unwrap_or_else(|| panic!("{pop}"));
    assert!(pop["data"].get("pop_url_error").is_none(), "{pop}");
    assert_eq!(
        url,
        "https://crm.example.com/search?phone=%2B1%20555%2F12%233%26x%3D%C3%BC\
         &acct=A%2FB%26c%3Dd%23e%20f%3F%C3%BC&q=billing"
    );
    assert_eq!(
        query_pairs(url),
        [
            ("phone".to_owned(), TRICKY.to_owned()),
            ("acct".to_owned(), account.to_owned()),
            ("q".to_owned(), "billing".to_owned()),
        ]
    );
    // Nothing from the caller reshaped the URL: no fragment, the path as written.
    let parsed = reqwest::Url::parse(url).unwrap();
    assert_eq!(parsed.fragment(), None);
    assert_eq!(parsed.path(), "/search");
    app.stop().await;
}

#[tokio::test]
async fn a_template_that_fails_to_render_says_why_and_the_pop_still_arrives() {
    let app = spawn_app().await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let mut ws = app.stream("alice", &alice, None).await;
    for (queue, template, expected) in [
        (
            "undefined",
            "https://crm.example.com/?acct={{ context.account }}",
            "context.account",
        ),
        (
            "fuel",
            "https://crm.example.com/?{% for i in range(100000) %}{{ i }}{% endfor %}",
            "fuel",
        ),
        ("scheme", "javascript:alert({{ caller }})", "http"),
    ] {
        let (status, body) =
            put_queue(&app, queue, json!({"pop_url": template, "wrap_up_s": 0})).await;
        assert_eq!(status, 201, "{body}");
        let created = app
            .create_interaction(
                &ivr,
                json!({"caller": "+15551234567", "context": {}, "target": {"queue": queue}}),
            )
            .await;
        assert_eq!(created["state"], "offered", "{created}");
        let pop = next_of_type(&mut ws, "interaction.offered").await;
        assert_eq!(pop["data"]["interaction"]["id"], created["id"]);
        assert!(pop["data"].get("pop_url").is_none(), "{queue}: {pop}");
        let reason = pop["data"]["pop_url_error"]
            .as_str()
            .unwrap_or_else(|| panic!("{queue}: {pop}"));
        assert!(reason.contains(expected), "{queue}: {reason}");
        // The pop is an ordinary offer: it can be accepted.
        let id = created["id"].as_str().unwrap();
        let (status, body) = app
            .post(&format!("/v1/interactions/{id}/accept"), &alice, None)
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = app
            .post(
                &format!("/v1/interactions/{id}/complete"),
                &alice,
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_template_that_does_not_parse_is_refused_naming_the_field() {
    let app = spawn_app().await;
    for template in [
        json!("https://crm.example.com/?p={{ caller"),
        json!("https://crm.example.com/{% include 'other' %}"),
        json!(""),
        json!(format!("https://crm.example.com/?{}", "x".repeat(5000))),
    ] {
        let (status, body) = put_queue(&app, "billing", json!({"pop_url": template})).await;
        assert_eq!(status, 422, "{template}: {body}");
        assert_eq!(body["error"]["field"], "pop_url", "{body}");
        assert_eq!(error_shape_problem(&body), None);
    }
    let (status, body) = app.get("/v1/queues/billing", &app.admin).await;
    assert_eq!(status, 404, "a refused PUT creates nothing: {body}");
    let (status, body) = put_queue(&app, "billing", json!({"pop_url": 7})).await;
    assert_eq!(status, 400, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn the_server_default_serves_agent_targets_and_queues_without_their_own() {
    let default = "https://default.example.com/?who={{ agent }}&id={{ id }}&q={{ queue }}";
    let app = spawn_app_with(ApiSettings {
        pop_url: Some(default.to_owned()),
        ..ApiSettings::default()
    })
    .await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let mut ws = app.stream("alice", &alice, None).await;
    let (status, _) = put_queue(&app, "plain", json!({"wrap_up_s": 0})).await;
    assert_eq!(status, 201);
    let (status, _) = put_queue(
        &app,
        "own",
        json!({"pop_url": "https://own.example.com/?c={{ caller }}", "wrap_up_s": 0}),
    )
    .await;
    assert_eq!(status, 201);

    let mut pops = Vec::new();
    for target in [
        json!({"agent": "alice"}),
        json!({"queue": "plain"}),
        json!({"queue": "own"}),
    ] {
        let created = app
            .create_interaction(&ivr, json!({"caller": "+1 555", "target": target}))
            .await;
        let id = created["id"].as_str().unwrap().to_owned();
        let pop = next_of_type(&mut ws, "interaction.offered").await;
        pops.push(pop["data"]["pop_url"].clone());
        // Free alice for the next one.
        let (status, body) = app
            .post(&format!("/v1/interactions/{id}/accept"), &alice, None)
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = app
            .post(
                &format!("/v1/interactions/{id}/complete"),
                &alice,
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let expected = match pops.len() {
            1 => json!(format!("https://default.example.com/?who=alice&id={id}&q=")),
            2 => json!(format!(
                "https://default.example.com/?who=alice&id={id}&q=plain"
            )),
            _ => json!("https://own.example.com/?c=%2B1%20555"),
        };
        assert_eq!(pops.last().unwrap(), &expected);
    }
    app.stop().await;
}

#[tokio::test]
async fn the_log_keeps_the_url_rendered_when_the_pop_was_made() {
    let app = spawn_app_with(ApiSettings {
        pop_url: Some("https://before.example.com/?c={{ caller }}".to_owned()),
        ..ApiSettings::default()
    })
    .await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let start = app.head().await;
    app.create_interaction(
        &ivr,
        json!({"caller": TRICKY, "target": {"agent": "alice"}}),
    )
    .await;
    let mut ws = app.stream("alice", &alice, Some(start)).await;
    let live = next_of_type(&mut ws, "interaction.offered").await;
    drop(ws);
    let app = app
        .restarted(ApiSettings {
            pop_url: Some("https://after.example.com/?c={{ caller }}".to_owned()),
            ..ApiSettings::default()
        })
        .await
        .expect("recovers");
    let mut ws = app.stream("alice", &alice, Some(start)).await;
    let replayed = next_of_type(&mut ws, "interaction.offered").await;
    assert_eq!(replayed, live, "a replayed pop is the pop as it was made");
    assert_eq!(
        replayed["data"]["pop_url"],
        "https://before.example.com/?c=%2B1%20555%2F12%233%26x%3D%C3%BC"
    );
    app.stop().await;
}
