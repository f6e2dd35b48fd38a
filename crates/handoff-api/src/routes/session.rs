//! The web UI's session, and one-time sign-in links.
//!
//! Signing in (`POST /v1/session` with a token or a one-time code) creates a NEW key for the
//! same principal: role and agent as the token's, name `session`, id `ses_...`, a fresh 256-bit
//! token stored only as its SHA-256. The cookie carries that session token, never the token the
//! user typed, so signing out (`DELETE /v1/session`) revokes the session key alone, which
//! closes its open streams at once (1008), and a leaked cookie is worth one session, not an
//! agent's long-lived token. Sessions are accepted for [`SESSION_TTL`] after they open; expired
//! ones are revoked at the next sign-in.
//!
//! Sign-in codes (`POST /v1/signin-links`, admin) are 256-bit random, single use, valid for ten
//! minutes and kept in memory only, by hash: a restart invalidates every outstanding link.

use axum::extract::{Request, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use handoff_core::AgentId;
use handoff_protocol::{
    HeldInteraction, SessionRequest, SessionView, SigninLink, SigninLinkRequest,
};
use handoff_store::KeyRecord;

use super::{engine_error, json_response, origin_allowed, read_json};
use crate::auth::{
    generate_secret, hash_token, new_key, request_is_https, session_principal, Principal, Role,
    SESSION_COOKIE, SESSION_KEY_NAME, SESSION_KEY_PREFIX, SESSION_TTL, SIGNIN_CODE_TTL,
};
use crate::error::ApiError;
use crate::wire::{format_time, interaction_view, now, target_to_wire};
use crate::AppState;

/// The roles that may open a browser session: the pages serve agents, supervisors and admins.
const SESSION_ROLES: [Role; 3] = [Role::Agent, Role::Supervisor, Role::Admin];

fn cookie(value: &str, secure: bool, max_age_s: u64) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    )
}

fn view(principal: &Principal, created_ms: i64) -> SessionView {
    SessionView {
        role: principal.role.as_str().to_owned(),
        agent_id: principal.agent.as_ref().map(|a| a.to_string()),
        session_id: Some(principal.key_id.clone()),
        expires_at: Some(format_time(handoff_core::Timestamp::from_millis(
            created_ms + SESSION_TTL.as_millis() as i64,
        ))),
        held: None,
    }
}

/// Opens a browser session: a new session key for the principal; the cookie carries its token.
#[utoipa::path(
    post,
    path = "/v1/session",
    operation_id = "open_session",
    tag = "session",
    summary = "Sign in to the web UI with a token or a one-time code: a new session key, carried by an HttpOnly, SameSite=Strict cookie.",
    description = "Exactly one of `token` (an agent token, or a supervisor or admin key; `agent`, when given, must be the token's agent) and `code` (from `POST /v1/signin-links`, single use). Creates a key named `session` (id `ses_...`) for the same role and agent, valid for 24 hours; `Set-Cookie: handoff_session=...` carries its token (`Secure` when the request came over https). A present `Origin` must be allowed.",
    request_body(content = handoff_protocol::SessionRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The session is open; Set-Cookie carries it.", body = handoff_protocol::SessionView),
        (status = 400, description = "Not JSON, not the schema, or not exactly one of token and code.", body = handoff_protocol::ErrorBody),
        (status = 401, description = "The token or code is not valid (or was used, or expired).", body = handoff_protocol::ErrorBody),
        (status = 403, description = "The Origin is not allowed, or the role has no web UI.", body = handoff_protocol::ErrorBody),
        (status = 415, description = "The body is not JSON.", body = handoff_protocol::ErrorBody),
    )
)]
pub async fn open(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    if !origin_allowed(request.headers(), &state) {
        return Err(ApiError::forbidden("this Origin is not allowed"));
    }
    let secure = request_is_https(request.headers(), request.uri());
    let (body, _) = read_json::<SessionRequest>(request, &state).await?;
    let (role, agent) = match (body.token.as_deref(), body.code.as_deref()) {
        (Some(token), None) => {
            let principal = state
                .shared
                .keys
                .resolve(token.trim())
                .ok_or_else(ApiError::unauthorized)?;
            if let Some(claimed) = body
                .agent
                .as_deref()
                .map(str::trim)
                .filter(|a| !a.is_empty())
            {
                if principal.agent.as_ref().map(AgentId::as_str) != Some(claimed) {
                    return Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "this token does not belong to that agent",
                    ));
                }
            }
            (principal.role, principal.agent)
        }
        (None, Some(code)) => {
            let (role, agent) = state.shared.keys.redeem_code(code.trim()).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this sign-in code is not valid: it was used, it expired, or the server restarted",
                )
            })?;
            if let Some(agent) = &agent {
                if state.shared.state().agent(agent).is_none() {
                    return Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "the agent of this sign-in code no longer exists",
                    ));
                }
            }
            (role, agent)
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "give exactly one of token and code",
            )
            .with_field("token"))
        }
    };
    if !SESSION_ROLES.contains(&role) {
        return Err(ApiError::forbidden(format!(
            "a key of role {} has no web UI; sign in with an agent token or a supervisor or admin key",
            role.as_str()
        )));
    }
    let created_ms = now().millis();
    let expired = state.shared.keys.expired_sessions(created_ms);
    if !expired.is_empty() {
        if let Err(error) = state.engine.revoke_keys(expired).await {
            tracing::warn!(%error, "could not revoke expired sessions");
        }
    }
    let token = generate_secret("hs_");
    let record = KeyRecord {
        created_ms,
        ..new_key(
            SESSION_KEY_PREFIX,
            role,
            SESSION_KEY_NAME,
            agent.as_ref(),
            hash_token(&token),
        )
    };
    state
        .engine
        .add_key(record.clone())
        .await
        .map_err(engine_error)?;
    tracing::info!(key_id = %record.id, role = %record.role, agent = record.agent_id.as_deref().unwrap_or("-"), "session opened");
    let principal = Principal {
        key_id: record.id,
        role,
        agent,
    };
    let cookie = cookie(&token, secure, SESSION_TTL.as_secs());
    Ok((
        StatusCode::OK,
        [(SET_COOKIE, cookie)],
        axum::Json(view(&principal, created_ms)),
    )
        .into_response())
}

/// Who the session cookie belongs to; for an agent, what it holds now.
#[utoipa::path(
    get,
    path = "/v1/session",
    operation_id = "get_session",
    tag = "session",
    summary = "The web UI's session: who the session cookie belongs to (401 without a live session).",
    description = "Authenticated by the `handoff_session` cookie alone. For an agent, `held` lists the interactions it holds now (offered to it, accepted, in wrap-up), so a desktop that reloads picks them up again.",
    responses(
        (status = 200, description = "The session.", body = handoff_protocol::SessionView),
        (status = 401, description = "No cookie, or not a live session.", body = handoff_protocol::ErrorBody),
    )
)]
pub async fn current(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = session_principal(&headers, &state).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "nobody is signed in",
        )
    })?;
    let created_ms = state
        .shared
        .keys
        .get(&principal.key_id)
        .map_or(0, |record| record.created_ms);
    let mut session = view(&principal, created_ms);
    if let Some(agent) = &principal.agent {
        session.held = Some(held(&state, agent));
    }
    let mut response = json_response(StatusCode::OK, &session);
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// The interactions an agent holds now, oldest first.
fn held(state: &AppState, agent: &AgentId) -> Vec<HeldInteraction> {
    let committed = state.shared.state();
    let address = committed
        .agent(agent)
        .and_then(|a| a.profile.address.clone());
    let mut held: Vec<_> = committed
        .held_by(agent)
        .map(|interaction| {
            // Only the assigned agent's address is the interaction's; a ring_all offer to
            // several agents has no assigned agent yet.
            let address = (interaction.agent.as_ref() == Some(agent))
                .then(|| address.clone())
                .flatten();
            let view = interaction_view(
                interaction,
                committed.position(interaction.id()),
                None,
                address,
                // Held: offered or assigned to this agent, never waiting for one.
                None,
            );
            (
                interaction.spec.created_at,
                HeldInteraction {
                    interaction: view,
                    offer_target: target_to_wire(&interaction.current_target),
                    wrap_up_until: interaction.wrap_up_until.map(format_time),
                },
            )
        })
        .collect();
    held.sort_by(|a, b| (a.0, &a.1.interaction.id).cmp(&(b.0, &b.1.interaction.id)));
    held.into_iter().map(|(_, h)| h).collect()
}

/// Ends a browser session: its key is revoked (its streams close with 1008) and the cookie
/// cleared.
#[utoipa::path(
    delete,
    path = "/v1/session",
    operation_id = "close_session",
    tag = "session",
    summary = "Sign out: revoke the session key of the cookie (its open streams close at once) and clear the cookie.",
    description = "With a live session cookie the request must carry an allowed `Origin`. Without one, only the cookie is cleared.",
    responses(
        (status = 204, description = "Signed out; the cookie is cleared."),
        (status = 403, description = "The Origin is missing or not allowed.", body = handoff_protocol::ErrorBody),
    )
)]
pub async fn close(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    if !origin_allowed(&headers, &state) {
        return Err(ApiError::forbidden("this Origin is not allowed"));
    }
    if let Some(principal) = session_principal(&headers, &state) {
        if !headers.contains_key(axum::http::header::ORIGIN) {
            return Err(ApiError::forbidden(
                "a change made with the session cookie must come from an allowed Origin",
            ));
        }
        state
            .engine
            .revoke_keys(vec![principal.key_id.clone()])
            .await
            .map_err(engine_error)?;
        tracing::info!(key_id = %principal.key_id, "session closed");
    }
    let cookie = cookie("", request_is_https(&headers, &uri), 0);
    Ok((StatusCode::NO_CONTENT, [(SET_COOKIE, cookie)]).into_response())
}

/// A one-time sign-in link for an agent, or for a supervisor or admin.
#[utoipa::path(
    post,
    path = "/v1/signin-links",
    operation_id = "create_signin_link",
    tag = "session",
    summary = "Create a one-time sign-in link (admin): single use, valid ten minutes, kept in memory only.",
    description = "Body `{\"agent\": ID}` or `{\"role\": \"supervisor\"}` (or `admin`). The code is 256-bit random; only its hash is kept, in memory: a restart invalidates every outstanding link. `url` is relative to the server and puts the code in the fragment (`/signin#code=...`), which browsers send neither to the server nor in `Referer`.",
    request_body(content = handoff_protocol::SigninLinkRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The link.", body = handoff_protocol::SigninLink),
        (status = 400, description = "Not JSON, not the schema, not exactly one of agent and role, or a role other than supervisor or admin.", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not an admin", body = handoff_protocol::ErrorBody),
        (status = 413, description = "Body too large", body = handoff_protocol::ErrorBody),
        (status = 415, description = "The body is not JSON", body = handoff_protocol::ErrorBody),
        (status = 422, description = "An invalid or unknown agent id", body = handoff_protocol::ErrorBody),
        (status = 429, description = "Too many links wait to be used", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_signin_link(
    State(state): State<AppState>,
    principal: Principal,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin])?;
    let (body, _) = read_json::<SigninLinkRequest>(request, &state).await?;
    let (role, agent) = match (body.agent.as_deref(), body.role.as_deref()) {
        (Some(raw), None | Some("agent")) => {
            let agent = AgentId::parse(raw.trim()).map_err(|error| {
                ApiError::unprocessable("invalid_id", format!("agent: {error}")).with_field("agent")
            })?;
            if state.shared.state().agent(&agent).is_none() {
                return Err(ApiError::unprocessable(
                    "unknown_agent",
                    format!("no agent with id {agent}"),
                )
                .with_field("agent"));
            }
            (Role::Agent, Some(agent))
        }
        (None, Some(text)) => match Role::parse(text) {
            Some(role @ (Role::Supervisor | Role::Admin)) => (role, None),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    "role: must be supervisor or admin (an agent's link takes {\"agent\": ID})",
                )
                .with_field("role"))
            }
        },
        _ => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "give exactly one of agent and role",
            )
            .with_field("agent"))
        }
    };
    let expires_at = now().plus_millis(SIGNIN_CODE_TTL.as_millis() as i64);
    let code = state.shared.keys.issue_code(role, agent).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_signin_links",
            "too many sign-in links wait to be used; try again when some have expired",
        )
    })?;
    tracing::info!(role = role.as_str(), "sign-in link created");
    Ok(json_response(
        StatusCode::CREATED,
        &SigninLink {
            url: format!("/signin#code={code}"),
            code,
            expires_at: format_time(expires_at),
        },
    ))
}
