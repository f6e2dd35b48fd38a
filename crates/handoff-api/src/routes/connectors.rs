//! CRM connectors: configure how pops are enriched and call logs written
//! (`PUT /v1/connectors/{name}`), see their deliveries, and try a lookup. Admin only.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use handoff_protocol::{ConnectorList, LookupTrial, PutConnectorRequest};
use serde::Deserialize;

use super::{json_response, read_json, Path, Query};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::AppState;

#[utoipa::path(
    get,
    path = "/v1/connectors",
    operation_id = "list_connectors",
    tag = "connectors",
    summary = "List CRM connectors (admin)",
    responses(
        (status = 200, description = "Every connector, by name", body = handoff_protocol::ConnectorList),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not admin", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin])?;
    let connectors = state.integrations.connectors().await;
    Ok(json_response(StatusCode::OK, &ConnectorList { connectors }))
}

#[utoipa::path(
    put,
    path = "/v1/connectors/{name}",
    operation_id = "put_connector",
    tag = "connectors",
    summary = "Create or replace a CRM connector (admin)",
    description = "A `lookup` runs when an interaction is created: an HTTP request from templates over the call (every value percent-encoded in the URL, JSON-encoded in the body; secrets as `{{ secrets.NAME }}` from the variable `HANDOFF_SECRET_NAME`, never stored), with its answer mapped to pop fields by JSONPath. An answer within `enrich_wait_ms` rides in the offer (`interaction.enrichment.<connector>`); a later one follows as `interaction.enriched`, a failure as `interaction.enrichment_failed`; routing never waits longer. The `log` (on `interaction.completed`) and other `actions` are requests made from a durable outbox, retried like webhooks. `preset` fills all of these in for `zendesk`, `salesforce` or `hubspot` from `settings`.",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The connector's name, `[A-Za-z0-9._-]{1,64}`")),
    request_body(content = handoff_protocol::PutConnectorRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = handoff_protocol::ConnectorView),
        (status = 200, description = "Replaced", body = handoff_protocol::ConnectorView),
        (status = 400, description = "Not JSON or not the schema", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not admin", body = handoff_protocol::ErrorBody),
        (status = 415, description = "The body is not JSON", body = handoff_protocol::ErrorBody),
        (status = 422, description = "A bad name, preset, setting, template, JSONPath or limit, or a URL the egress rules refuse; `field` names it", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn put(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin])?;
    let name = super::webhooks::integration_name(&raw_name)?;
    let (body, _) = read_json::<PutConnectorRequest>(request, &state).await?;
    let (view, created) = state.integrations.put_connector(&name, body).await?;
    Ok(json_response(super::put_status(created), &view))
}

#[utoipa::path(
    get,
    path = "/v1/connectors/{name}",
    operation_id = "get_connector",
    tag = "connectors",
    summary = "Read a CRM connector, with what its preset filled in (admin)",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The connector's name")),
    responses(
        (status = 200, description = "The connector", body = handoff_protocol::ConnectorView),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not admin", body = handoff_protocol::ErrorBody),
        (status = 404, description = "No such connector", body = handoff_protocol::ErrorBody),
        (status = 422, description = "A bad name", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_name): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin])?;
    let name = super::webhooks::integration_name(&raw_name)?;
    let view = state.integrations.connector(&name).await?;
    Ok(json_response(StatusCode::OK, &view))
}

#[utoipa::path(
    delete,
    path = "/v1/connectors/{name}",
    operation_id = "delete_connector",
    tag = "connectors",
    summary = "Delete a CRM connector and its outbox (admin)",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The connector's name")),
    responses(
        (status = 204, description = "Deleted, with its pending call logs and recorded attempts"),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not admin", body = handoff_protocol::ErrorBody),
        (status = 404, description = "No such connector", body = handoff_protocol::ErrorBody),
        (status = 422, description = "A bad name", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_name): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin])?;
    let name = super::webhooks::integration_name(&raw_name)?;
    state.integrations.delete_connector(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub struct DeliveriesQuery {
    action: Option<String>,
    limit: Option<String>,
    before: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/connectors/{name}/deliveries",
    operation_id = "list_connector_deliveries",
    tag = "connectors",
    summary = "An action's recent attempts (the call log's by default), newest first, and its pending retries (admin)",
    params(
        ("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The connector's name"),
        ("action" = Option<String>, Query, description = "The action: `log` (default) or an action's name"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many attempts, 1..=1000 (default 100)"),
        ("before" = Option<i64>, Query, minimum = 1, description = "Only attempts older than this attempt id"),
    ),
    responses(
        (status = 200, description = "Attempts and pending retries", body = handoff_protocol::Deliveries),
        (status = 400, description = "A bad limit or before", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not admin", body = handoff_protocol::ErrorBody),
        (status = 404, description = "No such connector or action", body = handoff_protocol::ErrorBody),
        (status = 422, description = "A bad name", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn deliveries(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_name): Path<String>,
    Query(query): Query<DeliveriesQuery>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin])?;
    let name = super::webhooks::integration_name(&raw_name)?;
    let limit = super::list_limit(query.limit.as_deref())?;
    let before = super::webhooks::attempt_before(query.before.as_deref())?;
    let action = query
        .action
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or("log");
    let deliveries = state
        .integrations
        .connector_deliveries(&name, action, before, limit)
        .await?;
    Ok(json_response(StatusCode::OK, &deliveries))
}

#[utoipa::path(
    post,
    path = "/v1/connectors/{name}/lookup",
    operation_id = "try_connector_lookup",
    tag = "connectors",
    summary = "Run a connector's lookup for a caller, without a call (admin)",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The connector's name")),
    request_body(content = handoff_protocol::LookupTrial, content_type = "application/json"),
    responses(
        (status = 200, description = "What the lookup found, or why it failed", body = handoff_protocol::LookupResult),
        (status = 400, description = "Not JSON or not the schema", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not admin", body = handoff_protocol::ErrorBody),
        (status = 404, description = "No such connector", body = handoff_protocol::ErrorBody),
        (status = 409, description = "The connector has no lookup", body = handoff_protocol::ErrorBody),
        (status = 415, description = "The body is not JSON", body = handoff_protocol::ErrorBody),
        (status = 422, description = "A bad name", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn try_lookup(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin])?;
    let name = super::webhooks::integration_name(&raw_name)?;
    let (trial, _) = read_json::<LookupTrial>(request, &state).await?;
    let result = state.integrations.try_lookup(&name, trial).await?;
    Ok(json_response(StatusCode::OK, &result))
}
