//! Webhooks: configure where events go (`PUT /v1/webhooks/{name}`), see their deliveries, and
//! send past events again. Admin only: a webhook's URL and its deliveries are configuration.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use handoff_protocol::{PutWebhookRequest, WebhookList};
use serde::Deserialize;

use super::{json_response, read_json, Path, Query};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::AppState;

/// A webhook's or connector's name: `[A-Za-z0-9._-]{1,64}`, as agent ids and queue names.
pub(crate) fn integration_name(text: &str) -> Result<String, ApiError> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(ApiError::unprocessable(
            "invalid_id",
            format!("name: {text:?} is not 1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-'"),
        )
        .with_field("name"))
    }
}

#[utoipa::path(
    get,
    path = "/v1/webhooks",
    operation_id = "list_webhooks",
    tag = "webhooks",
    summary = "List webhooks (admin)",
    responses(
        (status = 200, description = "Every webhook, by name", body = handoff_protocol::WebhookList),
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
    let webhooks = state.integrations.webhooks().await?;
    Ok(json_response(StatusCode::OK, &WebhookList { webhooks }))
}

#[utoipa::path(
    put,
    path = "/v1/webhooks/{name}",
    operation_id = "put_webhook",
    tag = "webhooks",
    summary = "Create or replace a webhook (admin)",
    description = "Every event whose type matches `types` is POSTed to `url` as its CloudEvents JSON (`Content-Type: application/cloudevents+json`), signed by the Standard Webhooks specification: `webhook-id` (the event's id, the same on every retry and after a restart), `webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256 of id.timestamp.body>`, one per secret during a rotation). Delivered from a durable outbox at least once: 2xx is delivered; 410 Gone disables the webhook; anything else, redirects included (never followed), is retried on the schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h, with jitter), or after the receiver's `Retry-After`. A new webhook is sent the events committed after it was created.",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The webhook's name, `[A-Za-z0-9._-]{1,64}`")),
    request_body(content = handoff_protocol::PutWebhookRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; `secret` is shown this once when the server made it", body = handoff_protocol::WebhookView),
        (status = 200, description = "Replaced", body = handoff_protocol::WebhookView),
        (status = 400, description = "Not JSON or not the schema", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not admin", body = handoff_protocol::ErrorBody),
        (status = 415, description = "The body is not JSON", body = handoff_protocol::ErrorBody),
        (status = 422, description = "A bad name, URL, type pattern, secret or limit; `egress_refused` for a URL that is loopback, private, link-local or a metadata address and not in egress_allow", body = handoff_protocol::ErrorBody),
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
    let name = integration_name(&raw_name)?;
    let (body, _) = read_json::<PutWebhookRequest>(request, &state).await?;
    let (view, created) = state.integrations.put_webhook(&name, body).await?;
    Ok(json_response(super::put_status(created), &view))
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/{name}",
    operation_id = "get_webhook",
    tag = "webhooks",
    summary = "Read a webhook (admin)",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The webhook's name")),
    responses(
        (status = 200, description = "The webhook", body = handoff_protocol::WebhookView),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not admin", body = handoff_protocol::ErrorBody),
        (status = 404, description = "No such webhook", body = handoff_protocol::ErrorBody),
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
    let name = integration_name(&raw_name)?;
    let view = state.integrations.webhook(&name).await?;
    Ok(json_response(StatusCode::OK, &view))
}

#[utoipa::path(
    delete,
    path = "/v1/webhooks/{name}",
    operation_id = "delete_webhook",
    tag = "webhooks",
    summary = "Delete a webhook and its outbox (admin)",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The webhook's name")),
    responses(
        (status = 204, description = "Deleted, with its pending retries and recorded attempts"),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not admin", body = handoff_protocol::ErrorBody),
        (status = 404, description = "No such webhook", body = handoff_protocol::ErrorBody),
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
    let name = integration_name(&raw_name)?;
    state.integrations.delete_webhook(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `?before=`: a positive attempt id.
pub(crate) fn attempt_before(text: Option<&str>) -> Result<Option<i64>, ApiError> {
    match text {
        None | Some("") => Ok(None),
        Some(text) => Ok(Some(
            text.parse::<i64>().ok().filter(|b| *b > 0).ok_or_else(|| {
                ApiError::bad_request("invalid_field", "before: a positive attempt id")
                    .with_field("before")
            })?,
        )),
    }
}

#[derive(Deserialize)]
pub struct DeliveriesQuery {
    limit: Option<String>,
    before: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/{name}/deliveries",
    operation_id = "list_webhook_deliveries",
    tag = "webhooks",
    summary = "A webhook's recent delivery attempts, newest first, and the deliveries waiting to be retried (admin)",
    params(
        ("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The webhook's name"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many attempts, 1..=1000 (default 100)"),
        ("before" = Option<i64>, Query, minimum = 1, description = "Only attempts older than this attempt id (`next_before` of the previous page)"),
    ),
    responses(
        (status = 200, description = "Attempts and pending retries", body = handoff_protocol::Deliveries),
        (status = 400, description = "A bad limit or before", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not admin", body = handoff_protocol::ErrorBody),
        (status = 404, description = "No such webhook", body = handoff_protocol::ErrorBody),
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
    let name = integration_name(&raw_name)?;
    let limit = super::list_limit(query.limit.as_deref())?;
    let before = attempt_before(query.before.as_deref())?;
    let deliveries = state.integrations.deliveries(&name, before, limit).await?;
    Ok(json_response(StatusCode::OK, &deliveries))
}

#[derive(Deserialize)]
pub struct ReplayQuery {
    after: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/webhooks/{name}/replay",
    operation_id = "replay_webhook",
    tag = "webhooks",
    summary = "Send every matching event after `after` to the webhook again (admin); empty body",
    description = "Moves the webhook's cursor back to `after`: each matching event with a higher `seq` is delivered again, with its own `webhook-id` as the first time, then the webhook goes on with new events.",
    params(
        ("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The webhook's name"),
        ("after" = u64, Query, description = "Resend the events with `seq` above this; at most the log's head"),
    ),
    responses(
        (status = 202, description = "The events will be sent again", body = handoff_protocol::WebhookReplay),
        (status = 400, description = "after missing, not a number, or beyond the log's head; or a body was sent", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not admin", body = handoff_protocol::ErrorBody),
        (status = 404, description = "No such webhook", body = handoff_protocol::ErrorBody),
        (status = 422, description = "A bad name", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn replay(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_name): Path<String>,
    Query(query): Query<ReplayQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin])?;
    let name = integration_name(&raw_name)?;
    let after = query
        .after
        .as_deref()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_field",
                "after: the seq after which events are sent again, a non-negative integer",
            )
            .with_field("after")
        })?;
    super::read_empty(request, &state).await?;
    let replay = state.integrations.replay(&name, after).await?;
    Ok(json_response(StatusCode::ACCEPTED, &replay))
}
