//! The web UI's session: a token traded for an HttpOnly, SameSite=Strict cookie, and back.

use axum::extract::{Request, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use handoff_protocol::{SessionRequest, SessionView};

use super::{origin_allowed, read_json};
use crate::auth::SESSION_COOKIE;
use crate::error::ApiError;
use crate::AppState;

/// Opens a browser session: the cookie carries the token, out of reach of page scripts.
#[utoipa::path(
    post,
    path = "/v1/session",
    operation_id = "open_session",
    tag = "session",
    summary = "Trade a token for the web UI's session cookie (HttpOnly, SameSite=Strict).",
    request_body(content = handoff_protocol::SessionRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The session is open; Set-Cookie carries it.", body = handoff_protocol::SessionView),
        (status = 400, description = "Not JSON or not the schema.", body = handoff_protocol::ErrorBody),
        (status = 401, description = "The token is not valid.", body = handoff_protocol::ErrorBody),
        (status = 403, description = "The Origin is not allowed.", body = handoff_protocol::ErrorBody),
        (status = 415, description = "The body is not JSON.", body = handoff_protocol::ErrorBody),
    )
)]
pub async fn open(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    if !origin_allowed(request.headers(), &state) {
        return Err(ApiError::forbidden("this Origin is not allowed"));
    }
    let (body, _) = read_json::<SessionRequest>(request, &state).await?;
    let principal = state
        .shared
        .keys
        .resolve(body.token.trim())
        .ok_or_else(ApiError::unauthorized)?;
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
        body.token.trim()
    );
    let view = SessionView {
        role: principal.role.as_str().to_owned(),
        agent_id: principal.agent.map(|a| a.to_string()),
    };
    Ok((StatusCode::OK, [(SET_COOKIE, cookie)], axum::Json(view)).into_response())
}

/// Ends a browser session: the cookie is cleared.
#[utoipa::path(
    delete,
    path = "/v1/session",
    operation_id = "close_session",
    tag = "session",
    summary = "Clear the web UI's session cookie.",
    responses(
        (status = 204, description = "The cookie is cleared."),
        (status = 403, description = "The Origin is not allowed.", body = handoff_protocol::ErrorBody),
    )
)]
pub async fn close(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !origin_allowed(&headers, &state) {
        return Err(ApiError::forbidden("this Origin is not allowed"));
    }
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok((StatusCode::NO_CONTENT, [(SET_COOKIE, cookie)]).into_response())
}
