//! API keys and agent tokens: create, list, revoke. Admin only.

use axum::extract::{Request, State};

use super::Path;
use axum::http::StatusCode;
use axum::response::Response;
use handoff_protocol::{CreateKeyRequest, CreatedAgentToken, CreatedKey, KeyView};

use super::{agent_id, engine_error, json_response, read_empty, read_json};
use crate::auth::{generate_token, hash_token, new_key, Principal, Role};
use crate::error::ApiError;
use crate::wire::format_time;
use crate::AppState;

#[utoipa::path(
    post,
    path = "/v1/keys",
    operation_id = "create_key",
    tag = "keys",
    summary = "Create an API key (admin); its token is shown once",
    request_body(content = handoff_protocol::CreateKeyRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The key, with its token", body = handoff_protocol::CreatedKey),
        (status = 400, description = "Not JSON, invalid UTF-8, not the schema, or an unknown role", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not an admin", body = handoff_protocol::ErrorBody),
        (status = 413, description = "Body or context too large", body = handoff_protocol::ErrorBody),
        (status = 415, description = "The body is not JSON", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid name", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin])?;
    let (body, _) = read_json::<CreateKeyRequest>(request, &state).await?;
    let role = match Role::parse(&body.role) {
        Some(Role::Agent) | None => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "role: must be one of admin, ivr, supervisor, presence (agent tokens come from POST /v1/agents/{id}/tokens)",
            )
            .with_field("role"))
        }
        Some(role) => role,
    };
    if body.name.trim().is_empty() || crate::wire::longer_than(&body.name, 200) {
        return Err(
            ApiError::unprocessable("invalid_name", "name: must be 1 to 200 characters")
                .with_field("name"),
        );
    }
    let token = generate_token();
    let record = new_key("key_", role, body.name, None, hash_token(&token));
    state
        .engine
        .add_key(record.clone())
        .await
        .map_err(engine_error)?;
    tracing::info!(key_id = %record.id, role = %record.role, "key created");
    Ok(json_response(
        StatusCode::CREATED,
        &CreatedKey {
            id: record.id,
            role: record.role,
            name: record.name,
            token,
        },
    ))
}

#[utoipa::path(
    get,
    path = "/v1/keys",
    operation_id = "list_keys",
    tag = "keys",
    summary = "List API keys and agent tokens (admin), never their tokens",
    responses(
        (status = 200, description = "Every key", body = crate::openapi::KeyList),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not an admin", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin])?;
    let keys: Vec<KeyView> = state
        .shared
        .keys
        .all()
        .into_iter()
        .map(|record| KeyView {
            id: record.id,
            role: record.role,
            name: record.name,
            agent_id: record.agent_id,
            created_at: format_time(handoff_core::Timestamp::from_millis(record.created_ms)),
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "keys": keys }),
    ))
}

#[utoipa::path(
    delete,
    path = "/v1/keys/{key_id}",
    operation_id = "revoke_key",
    tag = "keys",
    summary = "Revoke a key or agent token at once, open streams included (admin)",
    params(
        ("key_id" = String, Path, description = "The key's id"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not an admin", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown key", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(key_id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin])?;
    if state.shared.keys.get(&key_id).is_none() {
        return Err(ApiError::not_found(
            "unknown_key",
            format!("no key with id {key_id}"),
        ));
    }
    state
        .engine
        .revoke_keys(vec![key_id.clone()])
        .await
        .map_err(engine_error)?;
    tracing::info!(%key_id, "key revoked");
    Ok(axum::response::IntoResponse::into_response(
        StatusCode::NO_CONTENT,
    ))
}

#[utoipa::path(
    post,
    path = "/v1/agents/{agent_id}/tokens",
    operation_id = "create_agent_token",
    tag = "keys",
    summary = "Create a token for one agent (admin); empty body, token shown once",
    params(
        ("agent_id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The agent's id, `[A-Za-z0-9._-]{1,64}`"),
    ),
    responses(
        (status = 201, description = "The token", body = handoff_protocol::CreatedAgentToken),
        (status = 400, description = "A body was sent: this action takes none", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not an admin", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown agent", body = handoff_protocol::ErrorBody),
        (status = 413, description = "Body or context too large", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid agent id", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_agent_token(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_agent): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin])?;
    let agent = agent_id(&raw_agent)?;
    read_empty(request, &state).await?;
    if state.shared.state().agent(&agent).is_none() {
        return Err(ApiError::not_found(
            "unknown_agent",
            format!("no agent with id {agent}"),
        ));
    }
    let token = generate_token();
    let record = new_key(
        "tok_",
        Role::Agent,
        format!("agent {agent}"),
        Some(&agent),
        hash_token(&token),
    );
    state
        .engine
        .add_key(record.clone())
        .await
        .map_err(engine_error)?;
    Ok(json_response(
        StatusCode::CREATED,
        &CreatedAgentToken {
            id: record.id,
            token,
        },
    ))
}
