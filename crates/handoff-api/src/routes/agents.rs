//! Agents: profiles (admin), reads (admin, supervisor, IVR, the agent itself) and presence.

use axum::extract::{Request, State};

use super::{Path, Query};
use axum::http::StatusCode;
use axum::response::Response;
use handoff_core::{AgentId, AgentProfile, Command, PresenceSource, PresenceStatus};
use handoff_protocol::{AgentList, AgentView, PutAgentRequest, PutPresenceRequest};
use serde::Deserialize;

use super::{agent_id, engine_error, json_response, read_json};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::wire::{agent_view, capacity_from_wire, skills_from_wire};
use crate::AppState;

/// The agent as the API shows it, from the committed state.
pub(crate) fn view(state: &AppState, agent: &AgentId) -> Option<AgentView> {
    let committed = state.shared.state();
    let found = committed.agent(agent)?;
    Some(agent_view(
        found,
        committed.activity(agent),
        state.connections.is_connected(agent),
    ))
}

fn view_or_404(state: &AppState, agent: &AgentId) -> Result<AgentView, ApiError> {
    view(state, agent)
        .ok_or_else(|| ApiError::not_found("unknown_agent", format!("no agent with id {agent}")))
}

#[utoipa::path(
    put,
    path = "/v1/agents/{agent_id}",
    operation_id = "put_agent",
    tag = "agents",
    summary = "Create or update an agent's profile (admin)",
    params(
        ("agent_id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The agent's id, `[A-Za-z0-9._-]{1,64}`"),
    ),
    request_body(content = handoff_protocol::PutAgentRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Updated", body = handoff_protocol::AgentView),
        (status = 201, description = "Created", body = handoff_protocol::AgentView),
        (status = 400, description = "Not JSON, invalid UTF-8, or not the schema", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not an admin", body = handoff_protocol::ErrorBody),
        (status = 413, description = "Body or context too large", body = handoff_protocol::ErrorBody),
        (status = 415, description = "The body is not JSON", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid id, name, skill level (0..=10) or capacity (1..=1000, in total or per channel)", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn put(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_agent): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin])?;
    let agent = agent_id(&raw_agent)?;
    let (body, _) = read_json::<PutAgentRequest>(request, &state).await?;
    let profile = profile_from(agent.clone(), body)?;
    let existed = state.shared.state().agent(&agent).is_some();
    state
        .engine
        .execute(Command::UpsertAgent { profile })
        .await
        .map_err(engine_error)?;
    let status = super::put_status(!existed);
    Ok(json_response(status, &view_or_404(&state, &agent)?))
}

fn profile_from(id: AgentId, body: PutAgentRequest) -> Result<AgentProfile, ApiError> {
    let name = body.name.trim().to_owned();
    if name.is_empty() || crate::wire::longer_than(&name, 200) {
        return Err(
            ApiError::unprocessable("invalid_name", "name: must be 1 to 200 characters")
                .with_field("name"),
        );
    }
    let skills = skills_from_wire(&body.skills, "skills")?;
    let capacity = capacity_from_wire(
        body.capacity
            .as_ref()
            .unwrap_or(&handoff_protocol::Capacity::Total(1)),
        true,
    )?;
    Ok(AgentProfile {
        id,
        name,
        address: body.address,
        skills,
        capacity,
    })
}

#[derive(Deserialize)]
pub struct AgentFilters {
    status: Option<String>,
    skill: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/agents",
    operation_id = "list_agents",
    tag = "agents",
    summary = "List agents, optionally by presence status and skill",
    params(
        ("status" = Option<handoff_protocol::PresenceStatus>, Query, description = "Only agents with this presence status"),
        ("skill" = Option<String>, Query, description = "Only agents that have this skill"),
    ),
    responses(
        (status = 200, description = "The agents", body = handoff_protocol::AgentList),
        (status = 400, description = "Unknown status", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not admin, supervisor or ivr", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(filters): Query<AgentFilters>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin, Role::Supervisor, Role::Ivr])?;
    let status = match filters.status.as_deref() {
        None | Some("") => None,
        Some(text) => Some(PresenceStatus::parse(text).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_field",
                "status: must be available, away, busy or offline",
            )
            .with_field("status")
        })?),
    };
    let committed = state.shared.state();
    let agents = committed
        .agents()
        .filter(|a| status.is_none_or(|s| a.presence.status == s))
        .filter(|a| {
            filters
                .skill
                .as_deref()
                .is_none_or(|skill| skill.is_empty() || a.profile.skills.contains_key(skill))
        })
        .map(|a| {
            let id = &a.profile.id;
            agent_view(
                a,
                committed.activity(id),
                state.connections.is_connected(id),
            )
        })
        .collect();
    Ok(json_response(StatusCode::OK, &AgentList { agents }))
}

#[utoipa::path(
    get,
    path = "/v1/agents/{agent_id}",
    operation_id = "get_agent",
    tag = "agents",
    summary = "Read one agent: profile, presence, activity and address",
    params(
        ("agent_id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The agent's id, `[A-Za-z0-9._-]{1,64}`"),
    ),
    responses(
        (status = 200, description = "The agent", body = handoff_protocol::AgentView),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not allowed to read this agent", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown agent", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid agent id", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_agent): Path<String>,
) -> Result<Response, ApiError> {
    let agent = agent_id(&raw_agent)?;
    if !principal.is_agent(&agent) {
        principal.require(&[Role::Admin, Role::Supervisor, Role::Ivr])?;
    }
    Ok(json_response(StatusCode::OK, &view_or_404(&state, &agent)?))
}

#[utoipa::path(
    delete,
    path = "/v1/agents/{agent_id}",
    operation_id = "delete_agent",
    tag = "agents",
    summary = "Delete an agent (admin)",
    params(
        ("agent_id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The agent's id, `[A-Za-z0-9._-]{1,64}`"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not an admin", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown agent", body = handoff_protocol::ErrorBody),
        (status = 409, description = "The agent still holds interactions", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid agent id", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_agent): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin])?;
    let agent = agent_id(&raw_agent)?;
    state
        .engine
        .execute(Command::DeleteAgent { agent })
        .await
        .map_err(engine_error)?;
    Ok(axum::response::IntoResponse::into_response(
        StatusCode::NO_CONTENT,
    ))
}

#[utoipa::path(
    put,
    path = "/v1/agents/{agent_id}/presence",
    operation_id = "set_presence",
    tag = "agents",
    summary = "Set an agent's presence (the agent itself, a presence key, or admin)",
    params(
        ("agent_id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The agent's id, `[A-Za-z0-9._-]{1,64}`"),
    ),
    request_body(content = handoff_protocol::PutPresenceRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The agent", body = handoff_protocol::AgentView),
        (status = 400, description = "Not JSON, invalid UTF-8, or not the schema", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not the agent, a presence key or an admin", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown agent", body = handoff_protocol::ErrorBody),
        (status = 413, description = "Body or context too large", body = handoff_protocol::ErrorBody),
        (status = 415, description = "The body is not JSON", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid agent id or reason", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn set_presence(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_agent): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let agent = agent_id(&raw_agent)?;
    let source = match principal.role {
        Role::Agent if principal.is_agent(&agent) => PresenceSource::Desktop,
        Role::Presence => PresenceSource::Uc,
        Role::Admin => PresenceSource::Admin,
        _ => {
            return Err(ApiError::forbidden(
                "only the agent itself, a presence key or an admin may set presence",
            ))
        }
    };
    let (body, _) = read_json::<PutPresenceRequest>(request, &state).await?;
    let status = match body.status {
        handoff_protocol::PresenceStatus::Available => PresenceStatus::Available,
        handoff_protocol::PresenceStatus::Away => PresenceStatus::Away,
        handoff_protocol::PresenceStatus::Busy => PresenceStatus::Busy,
        handoff_protocol::PresenceStatus::Offline => PresenceStatus::Offline,
    };
    if body.reason.as_ref().is_some_and(|r| r.len() > 200) {
        return Err(
            ApiError::unprocessable("invalid_reason", "reason: at most 200 characters")
                .with_field("reason"),
        );
    }
    state
        .engine
        .execute(Command::SetPresence {
            agent: agent.clone(),
            status,
            reason: body.reason,
            source,
        })
        .await
        .map_err(engine_error)?;
    Ok(json_response(StatusCode::OK, &view_or_404(&state, &agent)?))
}
