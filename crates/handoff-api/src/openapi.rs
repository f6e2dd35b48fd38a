//! The OpenAPI 3.1 document of every API endpoint, built by utoipa from the `#[utoipa::path]`
//! attributes on the handlers in `routes/` and the `ToSchema` wire types of `handoff-protocol`.
//!
//! Its paths come from the one route table, `routes::api` (utoipa-axum): the router serves
//! exactly the operations this document describes. [`ApiDoc`] adds what is not a route: the
//! title, the tags, the security scheme, the shared schemas. The web UI's pages (`/`,
//! `/signin`, `/supervisor`, `/assets/{file}`) are routed beside the table and not documented.

use std::sync::OnceLock;

use handoff_protocol::{
    AgentCounts, AgentList, AgentRef, AgentView, Capacity, CloudEvent, CompleteRequest,
    CreateInteractionRequest, CreateKeyRequest, CreatedAgentToken, CreatedKey, ErrorBody,
    ErrorDetail, EscalationStep, InteractionList, InteractionView, KeyView, PresenceStatus,
    PresenceView, PutAgentRequest, PutPresenceRequest, PutQueueRequest, QueueList, QueueRef,
    QueueStats, QueueStatsHistory, QueueStatsSample, QueueView, StatsWindow, Strategy, Target,
    TransferRequest,
};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::Required;
use utoipa::{Modify, OpenApi, ToSchema};

/// The name of the bearer security scheme every `/v1` operation requires.
pub const BEARER: &str = "bearer";

/// `GET /healthz`'s body (the schema of `handoff_protocol::Health`).
#[derive(ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// The `seq` of the newest committed event.
    pub head_seq: u64,
}

/// `GET /v1/keys`'s body.
#[derive(ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

/// What an agent desktop sends on its stream, as a text frame, to acknowledge every event up to
/// `ack` (cumulative). The schema of `handoff_protocol::AckFrame`.
#[derive(ToSchema)]
pub struct AckFrame {
    pub ack: u64,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "handoff",
        version = "1",
        description = "Hands a call from an IVR to an agent desktop: agents, presence, queues, interactions, and their events. Every /v1 operation takes `Authorization: Bearer <token>`. With `rate_limit_per_key` configured, any of them may answer 429 `rate_limited` with `Retry-After` (seconds) to a key past its rate."
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        Target,
        CreateKeyRequest,
        handoff_protocol::KeyRole,
        handoff_protocol::SigninRole,
        handoff_protocol::InteractionState,
        CreatedKey,
        CreatedAgentToken,
        handoff_protocol::SessionRequest,
        handoff_protocol::SessionView,
        handoff_protocol::HeldInteraction,
        handoff_protocol::AgentWaitView,
        handoff_protocol::PutWebhookRequest,
        handoff_protocol::WebhookView,
        handoff_protocol::WebhookList,
        handoff_protocol::DeliveryAttemptView,
        handoff_protocol::PendingDeliveryView,
        handoff_protocol::Deliveries,
        handoff_protocol::WebhookReplay,
        handoff_protocol::PutConnectorRequest,
        handoff_protocol::ConnectorLookup,
        handoff_protocol::ConnectorAction,
        handoff_protocol::ConnectorView,
        handoff_protocol::ConnectorList,
        handoff_protocol::LookupTrial,
        handoff_protocol::LookupResult,
        handoff_protocol::SigninLinkRequest,
        handoff_protocol::SigninLink,
        KeyView,
        KeyList,
        PutAgentRequest,
        PresenceStatus,
        PresenceView,
        PutPresenceRequest,
        Capacity,
        AgentView,
        AgentList,
        Strategy,
        QueueRef,
        EscalationStep,
        PutQueueRequest,
        QueueView,
        QueueList,
        AgentCounts,
        StatsWindow,
        QueueStats,
        QueueStatsSample,
        QueueStatsHistory,
        CreateInteractionRequest,
        AgentRef,
        InteractionView,
        InteractionList,
        CompleteRequest,
        TransferRequest,
        CloudEvent,
        AckFrame,
        Health,
    )),
    modifiers(&BearerScheme),
    tags(
        (name = "keys", description = "API keys and agent tokens (admin)"),
        (name = "agents", description = "Agent profiles and presence"),
        (name = "stream", description = "The agent's WebSocket event stream"),
        (name = "queues", description = "Routing by presence and skills: queues and their statistics"),
        (name = "interactions", description = "The hand-off and the agent's actions on it"),
        (name = "events", description = "Server-Sent Events for integrations"),
        (name = "connectors", description = "CRM connectors: pops enriched by a lookup, call logs written back, presets for Zendesk, Salesforce and HubSpot"),
        (name = "webhooks", description = "Events POSTed to other systems, signed by the Standard Webhooks specification, from a durable outbox"),
        (name = "system", description = "Public: health, metrics, this document"),
        (name = "session", description = "The web UI's session cookie and one-time sign-in links"),
        (name = "web", description = "Public: the web UI's pages and assets"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` scheme (`Authorization: Bearer <token>`) the `/v1` operations name.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// `POST .../complete` takes its JSON body or none at all; utoipa marks every non-`Option` body
/// required (and an `Option` one nullable, which a JSON `null` body is not), so say it here.
struct OptionalBodies;

impl Modify for OptionalBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let complete = openapi
            .paths
            .paths
            .get_mut("/v1/interactions/{interaction_id}/complete")
            .and_then(|item| item.post.as_mut())
            .and_then(|operation| operation.request_body.as_mut());
        if let Some(body) = complete {
            body.required = Some(Required::False);
        }
    }
}

/// The document as `GET /openapi.json` serves it.
pub fn document() -> serde_json::Value {
    static DOCUMENT: OnceLock<serde_json::Value> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            let (public, protected) = crate::routes::api();
            let mut openapi = ApiDoc::openapi();
            openapi.merge(public.merge(protected).into_openapi());
            OptionalBodies.modify(&mut openapi);
            serde_json::to_value(openapi).expect("the OpenAPI document serializes")
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// Every (method, path) of the API; the document (and so the router) must hold exactly these.
    const ROUTES: &[(&str, &str)] = &[
        ("post", "/v1/keys"),
        ("get", "/v1/keys"),
        ("delete", "/v1/keys/{key_id}"),
        ("get", "/v1/agents"),
        ("put", "/v1/agents/{agent_id}"),
        ("get", "/v1/agents/{agent_id}"),
        ("delete", "/v1/agents/{agent_id}"),
        ("put", "/v1/agents/{agent_id}/presence"),
        ("post", "/v1/agents/{agent_id}/tokens"),
        ("get", "/v1/agents/{agent_id}/stream"),
        ("post", "/v1/interactions"),
        ("get", "/v1/interactions"),
        ("get", "/v1/interactions/{interaction_id}"),
        ("post", "/v1/interactions/{interaction_id}/accept"),
        ("post", "/v1/interactions/{interaction_id}/reject"),
        ("post", "/v1/interactions/{interaction_id}/complete"),
        ("post", "/v1/interactions/{interaction_id}/transfer"),
        ("post", "/v1/interactions/{interaction_id}/hangup"),
        ("get", "/v1/interactions/{interaction_id}/context"),
        ("patch", "/v1/interactions/{interaction_id}/context"),
        ("get", "/v1/queues"),
        ("put", "/v1/queues/{name}"),
        ("get", "/v1/queues/{name}"),
        ("delete", "/v1/queues/{name}"),
        ("get", "/v1/queues/{name}/stats"),
        ("get", "/v1/queues/{name}/stats/history"),
        ("get", "/v1/events"),
        ("get", "/v1/webhooks"),
        ("put", "/v1/webhooks/{name}"),
        ("get", "/v1/webhooks/{name}"),
        ("delete", "/v1/webhooks/{name}"),
        ("get", "/v1/webhooks/{name}/deliveries"),
        ("post", "/v1/webhooks/{name}/replay"),
        ("get", "/v1/connectors"),
        ("put", "/v1/connectors/{name}"),
        ("get", "/v1/connectors/{name}"),
        ("delete", "/v1/connectors/{name}"),
        ("get", "/v1/connectors/{name}/deliveries"),
        ("post", "/v1/connectors/{name}/lookup"),
        ("get", "/healthz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("post", "/v1/session"),
        ("get", "/v1/session"),
        ("delete", "/v1/session"),
        ("post", "/v1/signin-links"),
    ];

    const PUBLIC: [&str; 4] = ["/healthz", "/metrics", "/openapi.json", "/v1/session"];

    /// Every (method, path, operation) in the document.
    fn operations(doc: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
        let paths = doc["paths"].as_object().expect("paths is an object");
        let mut found = Vec::new();
        for (path, item) in paths {
            let item = item.as_object().expect("a path item is an object");
            for method in METHODS {
                if let Some(operation) = item.get(method) {
                    found.push((method.to_owned(), path.clone(), operation.clone()));
                }
            }
        }
        found
    }

    /// The (method, path) pairs of the plain `.route(...)` calls in `routes/mod.rs`.
    fn routes_in_router_source() -> Vec<(String, String)> {
        let source = include_str!("routes/mod.rs");
        let mut found = Vec::new();
        for call in source.split(".route(").skip(1) {
            let path = call
                .split('"')
                .nth(1)
                .expect("a .route( call starts with its path");
            let mut depth = 1;
            let end = call
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(call.len(), |(at, _)| at);
            let arguments = &call[..end];
            for method in METHODS {
                let pattern = format!("{method}(");
                for (at, _) in arguments.match_indices(&pattern) {
                    let before = arguments[..at].chars().next_back();
                    if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) {
                        found.push((method.to_owned(), path.to_owned()));
                    }
                }
            }
        }
        found
    }

    #[test]
    fn document_is_openapi_3_1_titled_handoff_version_1() {
        let doc = document();
        let version = doc["openapi"].as_str().expect("openapi is a string");
        assert!(version.starts_with("3.1"), "openapi is {version}");
        assert_eq!(doc["info"]["title"], "handoff");
        assert_eq!(doc["info"]["version"], "1");
    }

    #[test]
    fn every_route_of_the_router_is_documented_and_nothing_else() {
        let doc = document();
        for (method, path) in ROUTES {
            assert!(
                doc["paths"][path][method].is_object(),
                "{} {path} is not in the OpenAPI document",
                method.to_uppercase()
            );
        }
        let documented = operations(&doc);
        let stale: Vec<_> = documented
            .iter()
            .filter(|(method, path, _)| !ROUTES.contains(&(method.as_str(), path.as_str())))
            .map(|(method, path, _)| format!("{} {path}", method.to_uppercase()))
            .collect();
        assert!(stale.is_empty(), "documented but not routed: {stale:?}");
        assert_eq!(ROUTES.len(), documented.len());
    }

    /// Every API route goes through the one table (`routes::api`, utoipa-axum's `routes!`):
    /// the only plain `.route(...)` calls of `routes/mod.rs` are the web UI's pages, which are
    /// not part of the API's document.
    #[test]
    fn only_the_web_pages_are_routed_outside_the_table() {
        let mut in_source = routes_in_router_source();
        in_source.sort();
        let mut web: Vec<(String, String)> = [
            "/",
            "/signin",
            "/supervisor",
            "/assets/{file}",
            "/docs",
            "/docs/docs.js",
            "/docs/docs.css",
        ]
        .iter()
        .map(|path| ("get".to_owned(), (*path).to_owned()))
        .collect();
        web.sort();
        assert_eq!(
            in_source, web,
            "routes/mod.rs routes something outside the documented table"
        );
        let doc = document();
        for (_, path) in &web {
            assert!(doc["paths"][path].is_null(), "{path} is documented");
        }
    }

    #[test]
    fn every_v1_operation_requires_the_bearer_scheme_and_public_ones_none() {
        let doc = document();
        assert_eq!(
            doc["components"]["securitySchemes"][BEARER],
            serde_json::json!({"type": "http", "scheme": "bearer"})
        );
        assert!(doc.get("security").is_none(), "no document-wide security");
        for (method, path, operation) in operations(&doc) {
            let security = operation.get("security");
            if path.starts_with("/v1/") && !PUBLIC.contains(&path.as_str()) {
                let names: Vec<&String> = security
                    .and_then(|s| s.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|requirement| requirement.as_object())
                    .flat_map(|requirement| requirement.keys())
                    .collect();
                assert_eq!(names, [BEARER], "{method} {path}: security {security:?}");
            } else {
                assert!(
                    PUBLIC.contains(&path.as_str()),
                    "{path} is neither protected /v1 nor public"
                );
                assert!(
                    security.is_none(),
                    "{method} {path} is public: {security:?}"
                );
            }
        }
    }

    #[test]
    fn components_hold_the_wire_types() {
        let doc = document();
        let schemas = doc["components"]["schemas"]
            .as_object()
            .expect("components.schemas is an object");
        for name in [
            "ErrorBody",
            "CreateInteractionRequest",
            "InteractionView",
            "AgentView",
            "CloudEvent",
            "PutQueueRequest",
            "QueueView",
            "QueueStats",
            "QueueStatsHistory",
        ] {
            assert!(
                schemas.contains_key(name),
                "components.schemas lacks {name}"
            );
        }
    }

    #[test]
    fn every_error_response_is_an_error_body_and_every_operation_has_a_summary() {
        let doc = document();
        for (method, path, operation) in operations(&doc) {
            assert!(
                operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{method} {path} has no summary"
            );
            let responses = operation["responses"]
                .as_object()
                .expect("responses is an object");
            assert!(!responses.is_empty(), "{method} {path} has no responses");
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_streams_are_documented_as_websocket_and_server_sent_events() {
        let doc = document();
        let stream = &doc["paths"]["/v1/agents/{agent_id}/stream"]["get"];
        assert!(stream["responses"]["101"].is_object());
        let description = stream["description"].as_str().unwrap_or_default();
        assert!(description.contains("{\"ack\": SEQ}"), "{description}");
        let events = &doc["paths"]["/v1/events"]["get"]["responses"]["200"]["content"];
        assert!(events["text/event-stream"].is_object(), "{events}");
        let create = &doc["paths"]["/v1/interactions"]["post"];
        let parameters = create["parameters"].as_array().expect("parameters");
        assert!(parameters
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"));
        assert_eq!(
            create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/CreateInteractionRequest"
        );
        assert_eq!(create["requestBody"]["required"], true);
    }

    #[test]
    fn complete_takes_an_optional_body_and_the_actions_none() {
        let doc = document();
        let complete = &doc["paths"]["/v1/interactions/{interaction_id}/complete"]["post"];
        assert_eq!(complete["requestBody"]["required"], false);
        assert_eq!(
            complete["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/CompleteRequest"
        );
        for action in ["accept", "reject", "hangup"] {
            let path = format!("/v1/interactions/{{interaction_id}}/{action}");
            assert!(
                doc["paths"][&path]["post"]["requestBody"].is_null(),
                "{path}"
            );
        }
        assert!(doc["paths"]["/v1/agents/{agent_id}/tokens"]["post"]["requestBody"].is_null());
    }
}
