//! The route table, and the helpers every handler shares.

pub(crate) mod agents;
pub(crate) mod connectors;
pub(crate) mod events;
pub(crate) mod interactions;
pub(crate) mod keys;
pub(crate) mod queues;
pub(crate) mod session;
pub(crate) mod stream;
pub(crate) mod system;
pub(crate) mod webhooks;

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use handoff_core::{AgentId, InteractionId};
use serde::de::DeserializeOwned;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::authenticate;
use crate::error::ApiError;
use crate::json::JsonBody;
use crate::AppState;

/// The one route table of the API: every operation of the OpenAPI document, each from its
/// handler's `#[utoipa::path]`, as `(public, protected)`; [`router`] serves it and
/// [`crate::openapi::document`] describes it, so no route can be in one and not the other.
/// `protected` gets the bearer authentication layer.
pub(crate) fn api() -> (OpenApiRouter<AppState>, OpenApiRouter<AppState>) {
    let protected = OpenApiRouter::new()
        .routes(routes!(keys::create, keys::list))
        .routes(routes!(keys::revoke))
        .routes(routes!(agents::list))
        .routes(routes!(agents::put, agents::get, agents::delete))
        .routes(routes!(agents::set_presence))
        .routes(routes!(keys::create_agent_token))
        .routes(routes!(stream::open))
        .routes(routes!(interactions::create, interactions::list))
        .routes(routes!(interactions::get))
        .routes(routes!(interactions::accept))
        .routes(routes!(interactions::reject))
        .routes(routes!(interactions::complete))
        .routes(routes!(interactions::transfer))
        .routes(routes!(interactions::hangup))
        .routes(routes!(
            interactions::get_context,
            interactions::patch_context
        ))
        .routes(routes!(queues::list))
        .routes(routes!(queues::put, queues::get, queues::delete))
        .routes(routes!(queues::stats))
        .routes(routes!(queues::stats_history))
        .routes(routes!(events::stream))
        .routes(routes!(webhooks::list))
        .routes(routes!(webhooks::put, webhooks::get, webhooks::delete))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::replay))
        .routes(routes!(connectors::list))
        .routes(routes!(
            connectors::put,
            connectors::get,
            connectors::delete
        ))
        .routes(routes!(connectors::deliveries))
        .routes(routes!(connectors::try_lookup))
        .routes(routes!(session::create_signin_link));
    let public = OpenApiRouter::new()
        .routes(routes!(system::healthz))
        .routes(routes!(system::metrics))
        .routes(routes!(system::openapi))
        .routes(routes!(session::open, session::current, session::close));
    (public, protected)
}

pub fn router(state: AppState) -> Router {
    let (public, protected) = api();
    let (api, _document) = public
        .merge(protected.route_layer(middleware::from_fn_with_state(state.clone(), authenticate)))
        .split_for_parts();
    // The web UI's pages and assets: served, but no part of the API's document.
    Router::new()
        .route("/", get(crate::web::desktop))
        .route("/signin", get(crate::web::signin))
        .route("/supervisor", get(crate::web::supervisor))
        .route("/assets/{file}", get(crate::web::asset))
        // The API's document for people: rendered in the browser from /openapi.json.
        .route("/docs", get(crate::web::api_docs::page))
        .route("/docs/docs.js", get(crate::web::api_docs::script))
        .route("/docs/docs.css", get(crate::web::api_docs::style))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// `axum::extract::Path` whose rejection is the contract's error body.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct Path<T>(pub T);

/// `axum::extract::Query` whose rejection is the contract's error body.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct Query<T>(pub T);

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::PathRejection) -> ApiError {
        ApiError::bad_request(
            "invalid_path",
            format!("the path cannot be read: {}", rejection.body_text()),
        )
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> ApiError {
        ApiError::bad_request(
            "invalid_query",
            format!("the query string cannot be read: {}", rejection.body_text()),
        )
    }
}

/// Parses an agent id from the path; a malformed one is a 422 naming the parameter.
fn agent_id(text: &str) -> Result<AgentId, ApiError> {
    AgentId::parse(text).map_err(|error| {
        ApiError::unprocessable("invalid_id", format!("agent_id: {error}")).with_field("agent_id")
    })
}

fn interaction_id(text: &str) -> Result<InteractionId, ApiError> {
    InteractionId::parse(text).map_err(|error| {
        ApiError::unprocessable("invalid_id", format!("interaction_id: {error}"))
            .with_field("interaction_id")
    })
}

/// A list's `?limit=`: 1..=1000, 100 when absent.
fn list_limit(text: Option<&str>) -> Result<usize, ApiError> {
    match text {
        None | Some("") => Ok(100),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_field", "limit: an integer from 1 to 1000")
                    .with_field("limit")
            }),
    }
}

/// Reads a JSON body after the handler has checked who may call it.
async fn read_json<T: DeserializeOwned>(
    request: Request,
    state: &AppState,
) -> Result<(T, bytes::Bytes), ApiError> {
    let JsonBody(value, bytes) = JsonBody::<T>::from_request(request, state).await?;
    Ok((value, bytes))
}

/// A JSON body's bytes, for a handler that parses them into its request type itself.
async fn read_json_bytes(request: Request, state: &AppState) -> Result<bytes::Bytes, ApiError> {
    crate::json::read_json_body(request, state).await
}

/// Refuses a body on an action endpoint.
async fn read_empty(request: Request, state: &AppState) -> Result<(), ApiError> {
    crate::json::EmptyBody::from_request(request, state).await?;
    Ok(())
}

/// Maps an engine failure to the API's error.
fn engine_error(error: crate::engine::EngineError) -> ApiError {
    use crate::engine::EngineError;
    match error {
        EngineError::Refused(refused) => ApiError::from(refused),
        EngineError::IdempotencyMismatch => ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different body",
        )
        .with_field("Idempotency-Key"),
        EngineError::Store(detail) => ApiError::unavailable(detail),
        EngineError::Stopped => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ),
        EngineError::Rejected(error) => error,
    }
}

/// Whether a browser `Origin` may talk to this server: its own origin or a configured one.
pub(crate) fn origin_allowed(headers: &HeaderMap, state: &AppState) -> bool {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let own = headers
        .get(axum::http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .is_some_and(|host| {
            origin == format!("http://{host}") || origin == format!("https://{host}")
        });
    own || state
        .settings
        .allowed_origins
        .iter()
        .any(|allowed| allowed == origin)
}

/// A PUT's answer: 201 when it created the resource, 200 when it replaced it.
fn put_status(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> axum::response::Response {
    (status, axum::Json(body)).into_response()
}
