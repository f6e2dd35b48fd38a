//! Queues: their configuration (admin writes; admin, supervisor and IVR read) and their live
//! statistics (admin, supervisor).

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use handoff_core::{Command, Event, QueueName, Timestamp, Window};
use handoff_protocol::{
    AgentCounts, PutQueueRequest, QueueList, QueueStats, QueueView, StatsWindow,
};

use super::{engine_error, json_response, read_json, Path};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::wire::{format_time, now, queue_config_from_wire, queue_view};
use crate::AppState;

/// Parses a queue name from the path; a malformed one is a 422 naming the parameter.
fn queue_name(text: &str) -> Result<QueueName, ApiError> {
    QueueName::parse(text).map_err(|error| {
        ApiError::unprocessable("invalid_id", format!("name: {error}")).with_field("name")
    })
}

fn unknown(name: &QueueName) -> ApiError {
    ApiError::not_found("unknown_queue", format!("no queue named {name}"))
}

fn view_or_404(state: &AppState, name: &QueueName) -> Result<QueueView, ApiError> {
    let committed = state.shared.state();
    committed
        .queue(name)
        .map(queue_view)
        .ok_or_else(|| unknown(name))
}

#[utoipa::path(
    put,
    path = "/v1/queues/{name}",
    operation_id = "put_queue",
    tag = "queues",
    summary = "Create or replace a queue (admin)",
    description = "Every field is optional and takes its default when absent, so a PUT replaces the whole queue. Callers already waiting keep their place; new steps apply to them from their original arrival. A queue declared in the configuration file is put again at every start, so the file wins over an edit made here. `pop_url` is a minijinja template of the CRM page its pops open (variables `id`, `caller`, `dialed`, `channel`, `call_id`, `priority`, `queue`, `agent`, `context`; every value percent-encoded where it lands): it must parse here, and a pop whose render fails carries `pop_url_error` instead.",
    params(
        ("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The queue's name, `[A-Za-z0-9._-]{1,64}`"),
    ),
    request_body(content = handoff_protocol::PutQueueRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Updated (or unchanged)", body = handoff_protocol::QueueView),
        (status = 201, description = "Created", body = handoff_protocol::QueueView),
        (status = 400, description = "Not JSON, invalid UTF-8, or not the schema (unknown key or strategy, wrong type)", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not an admin", body = handoff_protocol::ErrorBody),
        (status = 413, description = "Body too large", body = handoff_protocol::ErrorBody),
        (status = 415, description = "The body is not JSON", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid name, skill level out of 0..=10, a duration out of range, steps that are out of order or tighten the skills, an overflow to itself or to an unknown queue, a `pop_url` that is empty, longer than 4096 bytes or does not parse (`invalid_pop_url`)", body = handoff_protocol::ErrorBody),
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
    let name = queue_name(&raw_name)?;
    let (body, _) = read_json::<PutQueueRequest>(request, &state).await?;
    let config = queue_config_from_wire(name.clone(), &body, true)?;
    let committed = state
        .engine
        .execute(Command::UpsertQueue { config })
        .await
        .map_err(engine_error)?;
    // Decided by the event itself: a check before the command could race another PUT.
    let created = committed
        .events
        .iter()
        .any(|(_, event)| matches!(event, Event::QueueUpserted { created: true, .. }));
    let status = super::put_status(created);
    Ok(json_response(status, &view_or_404(&state, &name)?))
}

#[utoipa::path(
    get,
    path = "/v1/queues",
    operation_id = "list_queues",
    tag = "queues",
    summary = "List queues (admin, supervisor, ivr)",
    responses(
        (status = 200, description = "The queues, by name", body = handoff_protocol::QueueList),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not admin, supervisor or ivr", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin, Role::Supervisor, Role::Ivr])?;
    let queues = state.shared.state().queues().map(queue_view).collect();
    Ok(json_response(StatusCode::OK, &QueueList { queues }))
}

#[utoipa::path(
    get,
    path = "/v1/queues/{name}",
    operation_id = "get_queue",
    tag = "queues",
    summary = "Read one queue's configuration (admin, supervisor, ivr)",
    params(
        ("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The queue's name, `[A-Za-z0-9._-]{1,64}`"),
    ),
    responses(
        (status = 200, description = "The queue, every default filled in", body = handoff_protocol::QueueView),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not admin, supervisor or ivr", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown queue", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid queue name", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_name): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin, Role::Supervisor, Role::Ivr])?;
    let name = queue_name(&raw_name)?;
    Ok(json_response(StatusCode::OK, &view_or_404(&state, &name)?))
}

#[utoipa::path(
    delete,
    path = "/v1/queues/{name}",
    operation_id = "delete_queue",
    tag = "queues",
    summary = "Delete a queue (admin)",
    params(
        ("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The queue's name, `[A-Za-z0-9._-]{1,64}`"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not an admin", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown queue", body = handoff_protocol::ErrorBody),
        (status = 409, description = "Callers are waiting in it or being offered from it (`queue_in_use`)", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid queue name", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_name): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin])?;
    let name = queue_name(&raw_name)?;
    state
        .engine
        .execute(Command::DeleteQueue { name })
        .await
        .map_err(engine_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    get,
    path = "/v1/queues/{name}/stats",
    operation_id = "queue_stats",
    tag = "queues",
    summary = "A queue's statistics now, over the last 15 minutes and today (admin, supervisor)",
    description = "Counts are by the time of their own event: a caller who entered yesterday and is answered today counts as answered today. `today` starts at midnight in the configured `timezone`. `agents` counts the agents who meet some level of the queue's skills, once by presence and once by activity.",
    params(
        ("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The queue's name, `[A-Za-z0-9._-]{1,64}`"),
    ),
    responses(
        (status = 200, description = "The statistics", body = handoff_protocol::QueueStats),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not admin or supervisor", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown queue", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid queue name", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn stats(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_name): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin, Role::Supervisor])?;
    let name = queue_name(&raw_name)?;
    let body = queue_stats(&state, &name, now()).ok_or_else(|| unknown(&name))?;
    Ok(json_response(StatusCode::OK, &body))
}

#[utoipa::path(
    get,
    path = "/v1/queues/{name}/stats/history",
    operation_id = "queue_stats_history",
    tag = "queues",
    summary = "A queue's waiting callers and service level over the last hour, in 30-second samples (admin, supervisor)",
    description = "What the supervisor view's chart starts from. The history is kept in the server's memory: after a restart it starts again; a queue's samples begin when the queue was first seen.",
    params(
        ("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The queue's name, `[A-Za-z0-9._-]{1,64}`"),
    ),
    responses(
        (status = 200, description = "The samples, oldest first", body = handoff_protocol::QueueStatsHistory),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not admin or supervisor", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown queue", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid queue name", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn stats_history(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_name): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin, Role::Supervisor])?;
    let name = queue_name(&raw_name)?;
    if state.shared.state().queue(&name).is_none() {
        return Err(unknown(&name));
    }
    let body = handoff_protocol::QueueStatsHistory {
        queue: name.to_string(),
        bucket_s: (crate::stats_history::BUCKET_MS / 1000) as u64,
        samples: state.stats_history.samples(name.as_str(), now()),
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// The queue's statistics now, as `GET /v1/queues/{name}/stats` and `queue.stats` show them.
pub(crate) fn queue_stats(
    state: &AppState,
    name: &QueueName,
    now: Timestamp,
) -> Option<QueueStats> {
    let day_start = state.settings.day_start(now);
    let committed = state.shared.state();
    let config = committed.queue(name)?;
    let mut waiting = 0u64;
    let mut longest_wait_ms = 0i64;
    for caller in committed.waiting_in(name) {
        waiting += 1;
        // From entering the queue: a caller put back after a missed offer keeps its wait.
        let entered = caller.entered_queue_at.unwrap_or(caller.waiting_since);
        longest_wait_ms = longest_wait_ms.max(now.millis() - entered.millis());
    }
    let counts = committed.member_counts(name);
    let agents = AgentCounts {
        available: counts.available,
        away: counts.away,
        busy: counts.busy,
        offline: counts.offline,
        idle: counts.idle,
        offered: counts.offered,
        engaged: counts.engaged,
        wrap_up: counts.wrap_up,
    };
    let pair = committed.queue_stats(name, now, day_start);
    Some(QueueStats {
        queue: name.to_string(),
        waiting,
        longest_wait_s: (longest_wait_ms.max(0) / 1000) as u64,
        agents,
        last_15m: window(&pair.last_15m),
        today: window(&pair.today),
        service_level_s: i64::try_from(config.service_level_s).unwrap_or(i64::MAX),
        day_start: format_time(day_start),
    })
}

fn window(window: &Window) -> StatsWindow {
    StatsWindow {
        offered: window.offered,
        answered: window.answered,
        abandoned: window.abandoned,
        timed_out: window.timed_out,
        overflowed: window.overflowed,
        asa_s: window.asa_s,
        service_level: window.service_level,
        abandon_rate: window.abandon_rate,
    }
}
