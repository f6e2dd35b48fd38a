//! Request bodies: any bytes, read as each JSON body the API takes, through the functions the
//! handlers call (`handoff_api::json::parse_json`, then `handoff_api::wire`'s conversions to
//! domain values), so a panic here is a panic in the server.
//!
//! Beside "never panics", it checks what the contract promises of those paths:
//! - a refused body is a 4xx, never a 5xx ("no input ever yields a 5xx");
//! - what a create, an agent PUT, a queue PUT or a transfer accepts is encoded into the log
//!   (`wire::cloud_event_payload`) and decoded back (`wire::decode_event`, what recovery reads)
//!   to the same event: a 2xx's effect must survive a restart;
//! - an `Idempotency-Key`'s body hash (`wire::canonical_json`) is valid JSON equal to the body;
//! - a context merge patch (RFC 7396, `PATCH /v1/interactions/{id}/context`) keeps an object.
//!
//! A create is read through `handoff_api::requests::NewInteraction`, as its handler reads it.
//! Where a handler still does its checks inline (`routes/agents.rs` `profile_from`), they are
//! restated below and say so.

#![no_main]

use std::sync::Arc;

use handoff_api::json::parse_json;
use handoff_api::requests::{object_depth, NewInteraction, NewTransfer, MAX_CONTEXT_DEPTH};
use handoff_api::wire;
use handoff_core::{AgentId, AgentProfile, Event, InteractionId, QueueName, Timestamp};
use handoff_protocol as proto;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The default `max_context_bytes`.
const MAX_CONTEXT_BYTES: usize = 65536;
const SEQ: u64 = 42;

fn at() -> Timestamp {
    Timestamp::from_millis(1_764_892_800_000)
}

/// `parse_json` as a handler sees it: a refusal must be a 4xx with a code.
fn parse<T: DeserializeOwned>(data: &[u8]) -> Option<T> {
    match parse_json::<T>(data) {
        Ok(value) => Some(value),
        Err(error) => {
            assert!(
                error.status.is_client_error(),
                "a body was refused with {}: {error:?}",
                error.status
            );
            assert!(!error.code.is_empty());
            None
        }
    }
}

fn refused(error: handoff_api::ApiError) {
    assert!(
        error.status.is_client_error(),
        "a body was refused with {}: {error:?}",
        error.status
    );
}

/// The log round trip: what the engine would append, encoded as the log keeps it, and read
/// back as recovery reads it.
fn round_trip(event: Event) {
    let payload = wire::cloud_event_payload(SEQ, &event, None, None);
    assert!(!payload.is_empty(), "the event did not encode: {event:?}");
    let envelope: Value = serde_json::from_str(&payload).expect("the log payload is JSON");
    assert_eq!(envelope["seq"], SEQ);
    match wire::decode_event(SEQ, &payload) {
        Ok(decoded) => assert_eq!(decoded, event, "the log reads back another event"),
        Err(error) => panic!(
            "an accepted request is unreadable in the log: {}: {payload}",
            error.reason
        ),
    }
}

fn create_interaction(data: &[u8]) {
    // `create`: the body read and checked as the handler reads it.
    let new = match NewInteraction::parse(data, MAX_CONTEXT_BYTES) {
        Ok(new) => new,
        Err(error) => return refused(error),
    };
    // `create`: the hash behind an `Idempotency-Key` (equal bodies, equal hashes).
    let as_value = serde_json::to_value(&new.request).expect("a parsed body serializes");
    let canonical = wire::canonical_json(&as_value);
    let reparsed: Value = serde_json::from_str(&canonical).expect("canonical JSON parses");
    assert_eq!(reparsed, as_value, "canonical JSON changed the body");
    let spec = new.into_spec(
        InteractionId::parse("ix_fuzz").expect("a valid id"),
        Vec::new(),
        Some("key_fuzz".to_owned()),
        at(),
    );
    round_trip(Event::InteractionCreated {
        spec: Arc::new(spec),
    });
}

fn put_agent(data: &[u8]) {
    let Some(body) = parse::<proto::PutAgentRequest>(data) else {
        return;
    };
    // `routes/agents.rs` `profile_from`, restated (it is private).
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.len() > 200 {
        return;
    }
    let skills = match wire::skills_from_wire(&body.skills, "skills") {
        Ok(skills) => skills,
        Err(error) => return refused(error),
    };
    let capacity = match wire::capacity_from_wire(
        body.capacity.as_ref().unwrap_or(&proto::Capacity::Total(1)),
        true,
    ) {
        Ok(capacity) => capacity,
        Err(error) => return refused(error),
    };
    let profile = AgentProfile {
        id: AgentId::parse("agent.fuzz").expect("a valid id"),
        name,
        address: body.address,
        skills,
        capacity,
    };
    round_trip(Event::AgentUpdated { profile, at: at() });
}

fn put_queue(data: &[u8]) {
    let Some(body) = parse::<proto::PutQueueRequest>(data) else {
        return;
    };
    // The path's name, and the body's when it is a valid one (a GET's body PUT back).
    let name = body
        .name
        .as_deref()
        .and_then(|n| QueueName::parse(n).ok())
        .unwrap_or_else(|| QueueName::parse("billing").expect("a valid name"));
    let config = match wire::queue_config_from_wire(name, &body, true) {
        Ok(config) => config,
        Err(error) => return refused(error),
    };
    // What `GET /v1/queues/{name}` shows must be accepted back by a PUT.
    let view = wire::queue_view(&config);
    let again = wire::queue_config_from_wire(config.name.clone(), &view.into(), true)
        .expect("a queue's own view is refused by PUT");
    assert_eq!(again, config, "a queue's view PUT back changes it");
    round_trip(Event::QueueUpserted {
        config,
        created: true,
        at: at(),
    });
}

fn transfer(data: &[u8]) {
    let Some(body) = parse::<proto::TransferRequest>(data) else {
        return;
    };
    let transfer = match NewTransfer::check(body) {
        Ok(transfer) => transfer,
        Err(error) => return refused(error),
    };
    round_trip(Event::InteractionTransferred {
        id: InteractionId::parse("ix_fuzz").expect("a valid id"),
        from: AgentId::parse("alice").expect("a valid id"),
        target: transfer.target,
        fallback: transfer.fallback,
        note: transfer.note,
        at: at(),
    });
}

fn patch_context(data: &[u8]) {
    let Some(patch) = parse::<Map<String, Value>>(data) else {
        return;
    };
    if object_depth(&patch) > MAX_CONTEXT_DEPTH {
        return;
    }
    serde_json::to_string(&patch).expect("a patch serializes (else a 500)");
    let mut context =
        serde_json::json!({"intent": "billing", "account": {"id": "A-1001", "tier": 2}});
    json_patch::merge(&mut context, &Value::Object(patch));
    // `patch_context` relies on this (`unreachable!` otherwise).
    assert!(
        context.is_object(),
        "an object patched with an object stays an object"
    );
    serde_json::to_string(&context).expect("a merged context serializes");
}

fuzz_target!(|data: &[u8]| {
    create_interaction(data);
    put_agent(data);
    put_queue(data);
    transfer(data);
    patch_context(data);
    // The bodies whose handlers only read fields: parsing must not panic and refuse with a 4xx.
    let _ = parse::<proto::PutPresenceRequest>(data);
    let _ = parse::<proto::CompleteRequest>(data);
    let _ = parse::<proto::CreateKeyRequest>(data);
    let _ = parse::<proto::PutWebhookRequest>(data);
    let _ = parse::<proto::PutConnectorRequest>(data);
    let _ = parse::<proto::LookupTrial>(data);
    let _ = parse::<proto::SessionRequest>(data);
    let _ = parse::<proto::SigninLinkRequest>(data);
});
