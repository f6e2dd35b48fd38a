//! Per-key rate limits: the contract's 429, with `Retry-After`, for one key only.

use std::time::Duration;

use handoff_api::rate_limit::RateLimit;
use handoff_api::ApiSettings;
use serde_json::Value;

use crate::support::*;

/// One GET with `token`: its status, `Retry-After` and body.
async fn get_agents(app: &TestApp, token: &str) -> (u16, Option<String>, Value) {
    let response = app
        .http
        .get(app.url("/v1/agents"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

#[tokio::test]
async fn a_key_past_its_burst_gets_429_with_retry_after_and_other_keys_are_not_affected() {
    let app = spawn_app_with(ApiSettings {
        rate_limit: Some(RateLimit {
            per_second: 1,
            burst: 4,
        }),
        ..ApiSettings::default()
    })
    .await;
    // The admin key spends two of its four on these.
    let ivr = app.key("ivr").await;
    let supervisor = app.key("supervisor").await;

    for n in 1..=4 {
        let (status, _, body) = get_agents(&app, &ivr).await;
        assert_eq!(status, 200, "request {n} of the burst: {body}");
    }
    let (status, retry_after, body) = get_agents(&app, &ivr).await;
    assert_eq!(status, 429, "past the burst: {body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(error_shape_problem(&body), None);
    assert_eq!(retry_after.as_deref(), Some("1"));

    // Another key has a bucket of its own, and a bad token is still a 401, not a 429.
    let (status, _, body) = get_agents(&app, &supervisor).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = get_agents(&app, "not-a-token").await;
    assert_eq!(status, 401, "{body}");

    // The refused key gets a request through again once its bucket refills (one a second).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, _, body) = get_agents(&app, &ivr).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key was still refused after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn without_a_configured_limit_no_request_is_refused_for_its_rate() {
    let app = spawn_app().await;
    let ivr = app.key("ivr").await;
    for n in 1..=300 {
        let (status, _, body) = get_agents(&app, &ivr).await;
        assert_eq!(status, 200, "request {n}: {body}");
    }
    app.stop().await;
}
