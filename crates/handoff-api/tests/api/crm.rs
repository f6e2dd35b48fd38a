//! CRM connectors against a local server standing in for the CRM: lookups that ride in the
//! offer, arrive later as `interaction.enriched` or fail as `interaction.enrichment_failed`
//! while the call is routed as usual; values percent-encoded in URLs; call logs from the
//! outbox; and each preset's requests as the CRM's documentation prescribes them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use handoff_api::ApiSettings;
use serde_json::{json, Value};

use crate::receiver::{Answer, Received, Receiver};
use crate::support::*;

fn settings() -> ApiSettings {
    integration_settings()
}

async fn put_connector(app: &TestApp, name: &str, body: Value) -> Value {
    let (status, view) = app
        .put(&format!("/v1/connectors/{name}"), &app.admin, body)
        .await;
    assert!(status == 201 || status == 200, "{status} {view}");
    view
}

/// The query parameters of a request, decoded.
fn query(request: &Received) -> HashMap<String, String> {
    let url = url::Url::parse(&format!("http://x{}", request.uri)).unwrap();
    url.query_pairs().into_owned().collect()
}

fn path(request: &Received) -> &str {
    request.uri.split('?').next().unwrap()
}

fn contact_answer() -> Answer {
    Answer::json(json!({"contacts": [{"id": 42, "name": "Zoë Ångström", "tier": "gold"}]}))
}

#[tokio::test]
async fn a_lookup_answered_in_time_rides_in_the_offer_with_the_caller_percent_encoded_in_its_url() {
    std::env::set_var("HANDOFF_SECRET_CRM_TEST_FAST", "t0k3n");
    let mut crm = Receiver::start().await;
    crm.otherwise(contact_answer());
    let app = spawn_app_with(settings()).await;
    let alice = app.agent("alice", true).await;
    let mut stream = app.stream("alice", &alice, None).await;
    let ivr = app.key("ivr").await;
    let view = put_connector(
        &app,
        "crm",
        json!({"lookup": {
            "url": crm.url("/api/contacts?phone={{ caller }}&intent={{ context.intent }}"),
            "headers": {"Authorization": "Bearer {{ secrets.CRM_TEST_FAST }}"},
            "fields": {"name": "$.contacts[0].name", "id": "$.contacts[0].id", "none": "$.nope"}}}),
    )
    .await;
    assert_eq!(view["missing_secrets"], json!([]), "{view}");
    let caller = "+1 555/12#3&x=ü Zoë";
    let created = app
        .create_interaction(
            &ivr,
            json!({"caller": caller, "target": {"agent": "alice"},
                   "context": {"intent": "billing & refunds / #2"}}),
        )
        .await;
    assert_eq!(created["state"], "offered");
    assert_eq!(
        created["enrichment"],
        json!({"crm": {"name": "Zoë Ångström", "id": 42}}),
        "{created}"
    );
    let request = crm.next().await;
    assert_eq!(
        request.uri,
        "/api/contacts?phone=%2B1%20555%2F12%233%26x%3D%C3%BC%20Zo%C3%AB&intent=billing%20%26%20refunds%20%2F%20%232"
    );
    let decoded = query(&request);
    assert_eq!(
        decoded["phone"], caller,
        "the CRM reads back the caller exactly"
    );
    assert_eq!(decoded.len(), 2, "no value added a parameter: {decoded:?}");
    assert_eq!(request.header("authorization"), Some("Bearer t0k3n"));
    let pop = next_of_type(&mut stream, "interaction.offered").await;
    assert_eq!(
        pop["data"]["interaction"]["enrichment"]["crm"]["name"],
        "Zoë Ångström"
    );

    // The same caller again: answered from the cache, the CRM is not asked twice.
    let again = app
        .create_interaction(
            &ivr,
            json!({"caller": caller, "target": {"agent": "alice"},
                   "context": {"intent": "billing & refunds / #2"}}),
        )
        .await;
    assert_eq!(again["enrichment"]["crm"]["id"], 42);
    crm.expect_none(Duration::from_millis(200)).await;
    let id = created["id"].as_str().unwrap();
    let (_, read) = app.get(&format!("/v1/interactions/{id}"), &ivr).await;
    let types: Vec<&str> = read["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["interaction.created", "interaction.offered"]);
    assert_eq!(
        read["history"][0]["data"]["interaction"]["enrichment"]["crm"]["id"],
        42
    );
    app.stop().await;
}

#[tokio::test]
async fn a_slow_lookup_follows_as_enriched_while_the_offer_went_out_without_waiting_for_it() {
    let mut crm = Receiver::start().await;
    let gate = Arc::new(tokio::sync::Notify::new());
    crm.then([contact_answer().held_by(&gate)]);
    let app = spawn_app_with(settings()).await;
    let alice = app.agent("alice", true).await;
    let mut stream = app.stream("alice", &alice, None).await;
    let ivr = app.key("ivr").await;
    put_connector(
        &app,
        "crm",
        json!({"lookup": {"url": crm.url("/contacts?q={{ caller }}"),
                          "fields": {"name": "$.contacts[0].name"}}}),
    )
    .await;
    let created = app
        .create_interaction(
            &ivr,
            json!({"caller": "+15551234567", "target": {"agent": "alice"}}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["state"], "offered");
    assert_eq!(created.get("enrichment"), None, "{created}");
    // The CRM holds its answer until the test lets it go: the pop arrives without it.
    let asked = crm.next().await;
    assert_eq!(asked.uri, "/contacts?q=%2B15551234567");
    let pop = next_of_type(&mut stream, "interaction.offered").await;
    assert_eq!(pop["subject"], id.as_str());
    assert_eq!(pop["data"]["interaction"].get("enrichment"), None);
    gate.notify_one();
    let enriched = next_of_type(&mut stream, "interaction.enriched").await;
    assert_eq!(enriched["subject"], id.as_str());
    assert_eq!(enriched["data"]["connector"], "crm");
    assert_eq!(enriched["data"]["fields"], json!({"name": "Zoë Ångström"}));
    assert!(enriched["seq"].as_u64() > pop["seq"].as_u64());
    let (_, read) = app.get(&format!("/v1/interactions/{id}"), &ivr).await;
    assert_eq!(read["enrichment"]["crm"]["name"], "Zoë Ångström");
    // A later offer of the same call carries what was found.
    let (status, _) = app
        .post(&format!("/v1/interactions/{id}/reject"), &alice, None)
        .await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test]
async fn failing_lookups_give_enrichment_failed_with_the_reason_and_the_call_is_routed_as_usual() {
    let mut broken = Receiver::start().await;
    broken.otherwise(Answer::status(500));
    let mut silent = Receiver::start().await;
    let never = Arc::new(tokio::sync::Notify::new());
    silent.otherwise(Answer::status(200).held_by(&never));
    let app = spawn_app_with(settings()).await;
    let alice = app.agent("alice", true).await;
    let mut stream = app.stream("alice", &alice, None).await;
    let ivr = app.key("ivr").await;
    put_connector(
        &app,
        "broken",
        json!({"lookup": {"url": broken.url("/x?c={{ caller }}"), "fields": {"a": "$.a"}}}),
    )
    .await;
    put_connector(
        &app,
        "silent",
        json!({"lookup": {"url": silent.url("/y?c={{ caller }}"), "fields": {"a": "$.a"},
                          "timeout_ms": 300}}),
    )
    .await;
    let created = app
        .create_interaction(
            &ivr,
            json!({"caller": "+15551234567", "target": {"agent": "alice"}}),
        )
        .await;
    assert_eq!(created["state"], "offered", "routed as usual: {created}");
    assert_eq!(created["agent"]["id"], "alice");
    broken.next().await;
    silent.next().await;
    let pop = next_of_type(&mut stream, "interaction.offered").await;
    assert_eq!(pop["data"]["agent"], "alice");
    let mut reasons = HashMap::new();
    for _ in 0..2 {
        let failed = next_of_type(&mut stream, "interaction.enrichment_failed").await;
        reasons.insert(
            failed["data"]["connector"].as_str().unwrap().to_owned(),
            failed["data"]["reason"].as_str().unwrap().to_owned(),
        );
    }
    assert!(reasons["broken"].contains("HTTP 500"), "{reasons:?}");
    assert!(
        reasons["silent"].contains("did not answer within 300 ms"),
        "{reasons:?}"
    );
    // The agent still takes the call.
    let id = created["id"].as_str().unwrap();
    let (status, _) = app
        .post(&format!("/v1/interactions/{id}/accept"), &alice, None)
        .await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test]
async fn the_call_log_is_written_from_the_outbox_with_the_calls_facts_and_retried_alike() {
    let mut crm = Receiver::start().await;
    crm.then([Answer::status(503), Answer::status(502)]);
    crm.otherwise(Answer::status(201));
    let app = spawn_app_with(settings()).await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    put_connector(
        &app,
        "crm",
        json!({
            "agent_ids": {"alice": "7"},
            "log": {
                "url": crm.url("/calls"),
                "body": r#"{"caller": {{ caller }}, "dialed": {{ dialed }}, "agent": {{ agent.id }},
                    "agent_name": {{ agent.name }}, "crm_user": {{ agent.crm_id }},
                    "disposition": {{ interaction.disposition }}, "notes": {{ interaction.notes }},
                    "created_at": {{ interaction.created_at }}, "accepted_at": {{ interaction.accepted_at }},
                    "completed_at": {{ interaction.completed_at }}, "duration_s": {{ interaction.duration_s }},
                    "context": {{ context }}, "event": {{ event.type }}}"#}}),
    )
    .await;
    let created = app
        .create_interaction(
            &ivr,
            json!({"caller": "+15551234567", "dialed": "+18005550100",
                   "target": {"agent": "alice"}, "context": {"order": "A-1"}}),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    app.post(&format!("/v1/interactions/{id}/accept"), &alice, None)
        .await;
    let (status, _) = app
        .post(
            &format!("/v1/interactions/{id}/complete"),
            &alice,
            Some(json!({"disposition": "resolved", "notes": "refund \"issued\""})),
        )
        .await;
    assert_eq!(status, 200);
    let attempts = [crm.next().await, crm.next().await, crm.next().await];
    for attempt in &attempts {
        assert_eq!(attempt.method, reqwest::Method::POST);
        assert_eq!(attempt.uri, "/calls");
        assert_eq!(attempt.header("content-type"), Some("application/json"));
        assert_eq!(attempt.body, attempts[0].body, "the same log each time");
    }
    let log = attempts[0].json();
    assert_eq!(log["caller"], "+15551234567");
    assert_eq!(log["dialed"], "+18005550100");
    assert_eq!(log["agent"], "alice");
    assert_eq!(log["agent_name"], "Agent alice");
    assert_eq!(log["crm_user"], 7);
    assert_eq!(log["disposition"], "resolved");
    assert_eq!(log["notes"], "refund \"issued\"");
    assert_eq!(log["context"], json!({"order": "A-1"}));
    assert_eq!(log["event"], "interaction.completed");
    assert_eq!(log["created_at"], created["created_at"]);
    assert!(
        log["accepted_at"].is_string() && log["completed_at"].is_string(),
        "{log}"
    );
    assert!(log["duration_s"].is_u64(), "{log}");
    crm.expect_none(Duration::from_millis(300)).await;
    let (status, deliveries) = app
        .get("/v1/connectors/crm/deliveries?action=log", &app.admin)
        .await;
    assert_eq!(status, 200, "{deliveries}");
    assert_eq!(deliveries["destination"], "connector:crm:log");
    let outcomes: Vec<&str> = deliveries["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["delivered", "failed", "failed"], "{deliveries}");
    app.stop().await;
}

#[tokio::test]
async fn connectors_are_checked_field_by_field_and_tried_without_a_call() {
    let mut crm = Receiver::start().await;
    crm.otherwise(contact_answer());
    let app = spawn_app_with(settings()).await;
    for (body, field) in [
        (json!({}), "lookup"),
        (
            json!({"lookup": {"url": "ftp://x/", "fields": {"a": "$.a"}}}),
            "lookup.url",
        ),
        (
            json!({"lookup": {"url": "http://10.0.0.1/", "fields": {"a": "$.a"}}}),
            "lookup.url",
        ),
        (
            json!({"lookup": {"url": crm.url("/{{ caller"), "fields": {"a": "$.a"}}}),
            "lookup.url",
        ),
        (
            json!({"lookup": {"url": crm.url("/"), "fields": {"a": "$..[?"}}}),
            "lookup.fields.a",
        ),
        (
            json!({"lookup": {"url": crm.url("/"), "fields": {}}}),
            "lookup.fields",
        ),
        (
            json!({"lookup": {"url": crm.url("/"), "fields": {"a": "$.a"}, "timeout_ms": 0}}),
            "lookup.timeout_ms",
        ),
        (
            json!({"lookup": {"url": crm.url("/"), "fields": {"a": "$.a"}, "method": "TRACE"}}),
            "lookup.method",
        ),
        (
            json!({"log": {"url": crm.url("/"), "body": "{{ x"}}),
            "log.body",
        ),
        (
            json!({"actions": [{"url": crm.url("/"), "on": ["interaction.accepted"]}]}),
            "actions[0].name",
        ),
        (
            json!({"actions": [{"name": "x", "url": crm.url("/")}]}),
            "actions[0].on",
        ),
        (json!({"preset": "pipedrive"}), "preset"),
        (
            json!({"preset": "zendesk", "settings": {"subdomain": "acme"}}),
            "settings.email",
        ),
    ] {
        let (status, answer) = app.put("/v1/connectors/c", &app.admin, body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    let (status, answer) = app
        .put("/v1/connectors/c", &app.admin, json!({"lookp": {}}))
        .await;
    assert_eq!(status, 400, "{answer}");

    put_connector(
        &app,
        "crm",
        json!({"lookup": {"url": crm.url("/c?p={{ caller }}"), "fields": {"name": "$.contacts[0].name"},
                          "when": "caller", "headers": {"Authorization": "Bearer {{ secrets.NEVER_SET_X }}"}}}),
    )
    .await;
    let (status, tried) = app
        .post(
            "/v1/connectors/crm/lookup",
            &app.admin,
            Some(json!({"caller": "+1555"})),
        )
        .await;
    assert_eq!(status, 200, "{tried}");
    assert_eq!(tried["outcome"], "found");
    assert_eq!(tried["fields"], json!({"name": "Zoë Ångström"}));
    assert_eq!(crm.next().await.uri, "/c?p=%2B1555");
    let (_, tried) = app
        .post("/v1/connectors/crm/lookup", &app.admin, Some(json!({})))
        .await;
    assert_eq!(
        tried["outcome"], "skipped",
        "no caller: its when does not hold"
    );
    let (_, view) = app.get("/v1/connectors/crm", &app.admin).await;
    assert_eq!(view["missing_secrets"], json!(["NEVER_SET_X"]), "{view}");
    let (status, list) = app.get("/v1/connectors", &app.admin).await;
    assert_eq!(status, 200);
    assert_eq!(list["connectors"].as_array().unwrap().len(), 1);
    let (status, _) = app
        .send(
            reqwest::Method::DELETE,
            "/v1/connectors/crm",
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = app.get("/v1/connectors/crm", &app.admin).await;
    assert_eq!(status, 404);
    app.stop().await;
}

/// The call every preset test makes: a caller from (415) 555-1212 to alice, accepted and
/// completed with a disposition and notes. The call's id.
async fn preset_call(app: &TestApp, alice: &str) -> (String, Value) {
    let ivr = app.key("ivr").await;
    let created = app
        .create_interaction(
            &ivr,
            json!({"caller": "+1 (415) 555-1212", "dialed": "+18005550100",
                   "call_id": "abc@pbx", "target": {"agent": "alice"}}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .post(&format!("/v1/interactions/{id}/accept"), alice, None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .post(
            &format!("/v1/interactions/{id}/complete"),
            alice,
            Some(json!({"disposition": "resolved", "notes": "Refund issued"})),
        )
        .await;
    assert_eq!(status, 200);
    (id, created)
}

#[tokio::test]
async fn the_hubspot_preset_searches_contacts_by_phone_and_logs_a_call_engagement() {
    std::env::set_var("HANDOFF_SECRET_HUBSPOT_PRESET_TEST", "pat-na1-test");
    let mut hubspot = Receiver::start().await;
    hubspot.then([Answer::json(json!({
        "total": 1,
        "results": [{"id": "512", "properties": {"firstname": "Zoë", "lastname": "Ångström",
                     "email": "zoe@example.com", "company": "Acme", "phone": "4155551212"},
                     "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z",
                     "archived": false}]}))]);
    hubspot.otherwise(Answer::json(json!({"id": "9001"})).with_status(201));
    let app = spawn_app_with(settings()).await;
    let alice = app.agent("alice", true).await;
    put_connector(
        &app,
        "hubspot",
        json!({"preset": "hubspot", "agent_ids": {"alice": "361"},
               "settings": {"base_url": hubspot.base, "token_secret": "HUBSPOT_PRESET_TEST"}}),
    )
    .await;
    let (_, created) = preset_call(&app, &alice).await;
    assert_eq!(
        created["enrichment"]["hubspot"],
        json!({"contact_id": "512", "first_name": "Zoë", "last_name": "Ångström",
               "email": "zoe@example.com", "company": "Acme", "matches": 1})
    );

    let search = hubspot.next().await;
    assert_eq!(search.method, reqwest::Method::POST);
    assert_eq!(search.uri, "/crm/v3/objects/contacts/search");
    assert_eq!(search.header("authorization"), Some("Bearer pat-na1-test"));
    assert_eq!(search.header("content-type"), Some("application/json"));
    let body = search.json();
    assert_eq!(
        body["filterGroups"][0]["filters"][0],
        json!({"propertyName": "phone", "operator": "EQ", "value": "4155551212"}),
        "area code and local number, as HubSpot matches phones"
    );
    assert!(body["properties"]
        .as_array()
        .unwrap()
        .contains(&json!("firstname")));

    let call = hubspot.next().await;
    assert_eq!(call.method, reqwest::Method::POST);
    assert_eq!(call.uri, "/crm/v3/objects/calls");
    assert_eq!(call.header("authorization"), Some("Bearer pat-na1-test"));
    let body = call.json();
    let properties = &body["properties"];
    assert_eq!(properties["hs_call_status"], "COMPLETED");
    assert_eq!(properties["hs_call_direction"], "INBOUND");
    assert_eq!(properties["hs_call_from_number"], "+1 (415) 555-1212");
    assert_eq!(properties["hs_call_to_number"], "+18005550100");
    assert_eq!(properties["hs_call_body"], "Refund issued");
    assert_eq!(properties["hubspot_owner_id"], 361);
    assert!(
        properties["hs_call_duration"].is_number(),
        "milliseconds: {body}"
    );
    let timestamp = properties["hs_timestamp"].as_str().unwrap();
    assert!(
        handoff_api::wire::parse_time(timestamp).is_some(),
        "{timestamp}"
    );
    assert_eq!(
        body["associations"],
        json!([{"to": {"id": "512"},
                "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 194}]}])
    );
    hubspot.expect_none(Duration::from_millis(200)).await;
    app.stop().await;
}

#[tokio::test]
async fn the_salesforce_preset_finds_the_contact_by_sosl_and_logs_a_completed_call_task() {
    std::env::set_var("HANDOFF_SECRET_SALESFORCE_PRESET_TEST", "00Dxx!session");
    let mut salesforce = Receiver::start().await;
    salesforce.then([Answer::json(json!({"searchRecords": [{
        "attributes": {"type": "Contact", "url": "/services/data/v66.0/sobjects/Contact/003xx"},
        "Id": "003xx", "Name": "Zoë Ångström", "Phone": "(415) 555-1212", "AccountId": "001xx"}]}))]);
    salesforce.otherwise(
        Answer::json(json!({"id": "00Txx", "success": true, "errors": []})).with_status(201),
    );
    let app = spawn_app_with(settings()).await;
    let alice = app.agent("alice", true).await;
    put_connector(
        &app,
        "salesforce",
        json!({"preset": "salesforce", "agent_ids": {"alice": "005xx"},
               "settings": {"instance_url": salesforce.base, "token_secret": "SALESFORCE_PRESET_TEST"}}),
    )
    .await;
    let (id, created) = preset_call(&app, &alice).await;
    assert_eq!(
        created["enrichment"]["salesforce"],
        json!({"contact_id": "003xx", "name": "Zoë Ångström", "phone": "(415) 555-1212",
               "account_id": "001xx"})
    );
    let search = salesforce.next().await;
    assert_eq!(search.method, reqwest::Method::GET);
    assert_eq!(path(&search), "/services/data/v66.0/search/");
    assert_eq!(
        query(&search)["q"],
        "FIND {14155551212} IN PHONE FIELDS RETURNING Contact(Id,Name,Phone,AccountId)"
    );
    assert_eq!(search.header("authorization"), Some("Bearer 00Dxx!session"));

    let task = salesforce.next().await;
    assert_eq!(task.method, reqwest::Method::POST);
    assert_eq!(task.uri, "/services/data/v66.0/sobjects/Task/");
    assert_eq!(task.header("content-type"), Some("application/json"));
    let body = task.json();
    assert_eq!(body["TaskSubtype"], "Call");
    assert_eq!(body["CallType"], "Inbound");
    assert_eq!(body["Status"], "Completed");
    assert_eq!(body["WhoId"], "003xx");
    assert_eq!(body["OwnerId"], "005xx");
    assert_eq!(body["CallDisposition"], "resolved");
    assert_eq!(body["Description"], "Refund issued");
    assert_eq!(body["CallObject"], "abc@pbx");
    assert_eq!(body["Subject"], "Call from +1 (415) 555-1212");
    assert!(body["CallDurationInSeconds"].is_u64(), "{body}");
    let date = body["ActivityDate"].as_str().unwrap();
    assert_eq!(date.len(), 10, "YYYY-MM-DD: {date}");
    assert!(!id.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn the_zendesk_preset_finds_the_end_user_pops_their_profile_on_accept_and_logs_a_voice_ticket(
) {
    std::env::set_var("HANDOFF_SECRET_ZENDESK_PRESET_TEST", "zd-api-token");
    let mut zendesk = Receiver::start().await;
    zendesk.then([
        Answer::json(
            json!({"count": 1, "facets": null, "next_page": null, "previous_page": null,
            "results": [{"id": 35436, "name": "Zoë Ångström", "email": "zoe@example.com",
                         "phone": "+14155551212", "organization_id": 57, "role": "end-user",
                         "result_type": "user"}]}),
        ),
        Answer::status(200),
    ]);
    zendesk.otherwise(Answer::json(json!({"ticket": {"id": 99}})).with_status(201));
    let app = spawn_app_with(settings()).await;
    let alice = app.agent("alice", true).await;
    put_connector(
        &app,
        "zendesk",
        json!({"preset": "zendesk", "agent_ids": {"alice": "361"},
               "settings": {"base_url": zendesk.base, "email": "ops@acme.com",
                            "token_secret": "ZENDESK_PRESET_TEST"}}),
    )
    .await;
    let (_, created) = preset_call(&app, &alice).await;
    assert_eq!(created["enrichment"]["zendesk"]["user_id"], 35436);
    assert_eq!(created["enrichment"]["zendesk"]["matches"], 1);
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("ops@acme.com/token:zd-api-token")
    );

    let search = zendesk.next().await;
    assert_eq!(search.method, reqwest::Method::GET);
    assert_eq!(path(&search), "/api/v2/search.json");
    assert_eq!(query(&search)["query"], "role:end-user phone:14155551212");
    assert_eq!(search.header("authorization"), Some(basic.as_str()));

    let display = zendesk.next().await;
    assert_eq!(display.method, reqwest::Method::POST);
    assert_eq!(
        display.uri,
        "/api/v2/channels/voice/agents/361/users/35436/display.json"
    );
    assert_eq!(display.header("authorization"), Some(basic.as_str()));
    assert!(display.body.is_empty(), "no body");

    let ticket = zendesk.next().await;
    assert_eq!(ticket.method, reqwest::Method::POST);
    assert_eq!(ticket.uri, "/api/v2/channels/voice/tickets.json");
    let body = ticket.json();
    assert_eq!(body["ticket"]["via_id"], 45, "an inbound phone call");
    assert_eq!(body["ticket"]["requester_id"], 35436);
    assert_eq!(body["ticket"]["comment"]["body"], "Refund issued");
    let voice = &body["ticket"]["voice_comment"];
    assert_eq!(voice["from"], "+1 (415) 555-1212");
    assert_eq!(voice["to"], "+18005550100");
    assert_eq!(voice["answered_by_id"], 361);
    assert!(voice["call_duration"].is_u64(), "{body}");
    assert!(voice["started_at"].is_string(), "{body}");
    zendesk.expect_none(Duration::from_millis(200)).await;
    app.stop().await;
}
