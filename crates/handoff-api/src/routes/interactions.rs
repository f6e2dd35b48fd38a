//! Interactions: the IVR's hand-off, the agent's actions on it, and reads of it.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Request, State};

use super::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use handoff_core::{
    Command, CommandError, Interaction, InteractionId, InteractionState, QueueName, Target,
};
use handoff_protocol::{
    AgentWaitView, CloudEvent, CompleteRequest, InteractionList, InteractionView, TransferRequest,
};
use serde::Deserialize;

use super::{engine_error, interaction_id, json_response, read_empty, read_json, read_json_bytes};
use crate::auth::{generate_id, Principal, Role};
use crate::engine::{EngineError, Idempotency};
use crate::error::ApiError;
use crate::requests::{object_depth, NewInteraction, NewTransfer, MAX_CONTEXT_DEPTH};
use crate::wire::{interaction_view, now};
use crate::AppState;

/// The interaction as the API shows it: from the committed state, or, once it ended long
/// enough ago to be forgotten there, from its events in the log.
async fn view(state: &AppState, id: &InteractionId) -> Result<InteractionView, ApiError> {
    {
        // Every answer to a create or an action comes this way: no copy of the interaction.
        let committed = state.shared.state();
        if let Some(interaction) = committed.interaction(id) {
            return Ok(Viewer::new(state, &committed).view(interaction));
        }
    }
    let forgotten = interaction_from_log(state, id, &logged_events(state, id).await?)?;
    Ok(view_of(state, &forgotten))
}

fn view_of(state: &AppState, interaction: &Interaction) -> InteractionView {
    let committed = state.shared.state();
    Viewer::new(state, &committed).view(interaction)
}

/// The interaction from the committed state or, when the engine has forgotten it (it ended
/// more than `ended_interactions_kept` ago), made again from its own events in the log.
async fn interaction_anywhere(
    state: &AppState,
    id: &InteractionId,
) -> Result<Interaction, ApiError> {
    if let Some(interaction) = state.shared.state().interaction(id) {
        return Ok(interaction.clone());
    }
    interaction_from_log(state, id, &logged_events(state, id).await?)
}

/// The interaction's events as the log keeps them, oldest first.
async fn logged_events(
    state: &AppState,
    id: &InteractionId,
) -> Result<Vec<handoff_store::StoredEvent>, ApiError> {
    state
        .store
        .subject_events(id.as_str())
        .await
        .map_err(ApiError::internal)
}

fn interaction_from_log(
    state: &AppState,
    id: &InteractionId,
    logged: &[handoff_store::StoredEvent],
) -> Result<Interaction, ApiError> {
    let mut events = Vec::with_capacity(logged.len());
    for stored in logged {
        let event = crate::wire::decode_event(stored.seq, &stored.payload)
            .map_err(|error| unreadable(stored.seq, error))?;
        events.push(event);
    }
    handoff_core::State::interaction_from_events(state.settings.core.clone(), &events)
        .ok_or_else(|| unknown(id))
}

/// The server wrote every payload; one it cannot read back is a defect, not a skip.
fn unreadable(seq: u64, error: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("event {seq} cannot be read: {error}"))
}

/// Builds views against one reading of the committed state, computing each queue's speed of
/// answer at most once however many of its callers are listed.
struct Viewer<'a> {
    committed: &'a handoff_core::State,
    connections: &'a crate::connections::Connections,
    now: handoff_core::Timestamp,
    day_start: handoff_core::Timestamp,
    asa_today: HashMap<QueueName, Option<f64>>,
}

impl<'a> Viewer<'a> {
    fn new(state: &'a AppState, committed: &'a handoff_core::State) -> Viewer<'a> {
        let now = now();
        Viewer {
            committed,
            connections: &state.connections,
            now,
            day_start: state.settings.day_start(now),
            asa_today: HashMap::new(),
        }
    }

    fn view(&mut self, interaction: &Interaction) -> InteractionView {
        let committed = self.committed;
        let address = interaction
            .agent
            .as_ref()
            .and_then(|agent| committed.agent(agent))
            .and_then(|agent| agent.profile.address.clone());
        let position = committed.position(interaction.id());
        let estimate = match (&interaction.current_target, position) {
            (Target::Queue(queue), Some(position)) => self.estimated_wait_s(queue, position),
            _ => None,
        };
        let waiting_for_agent = self.waiting_for_agent(interaction);
        interaction_view(interaction, position, estimate, address, waiting_for_agent)
    }

    /// For a caller queued for an agent named as its target: that agent's state now, and what
    /// happens when the wait ends. The IVR reads it in the 201 to tell the caller.
    fn waiting_for_agent(&self, interaction: &Interaction) -> Option<AgentWaitView> {
        let Target::Agent(agent_id) = &interaction.current_target else {
            return None;
        };
        if interaction.state != InteractionState::Queued {
            return None;
        }
        let until = interaction.max_wait_at?;
        let agent = self.committed.agent(agent_id)?;
        let activity = self.committed.activity(agent_id);
        let connected = self.connections.is_connected(agent_id);
        let then = interaction
            .pending_fallback
            .as_ref()
            .filter(|fallback| *fallback != &interaction.current_target);
        let presence = agent.presence.status.as_str();
        let why = match (agent.presence.status, &agent.presence.reason) {
            (handoff_core::PresenceStatus::Available, _) => {
                "available but has no room (on other calls)".to_owned()
            }
            (_, Some(reason)) => format!("{presence} ({reason})"),
            (_, None) => presence.to_owned(),
        };
        let wait_s = ((until.millis() - self.now.millis()).max(0) + 999) / 1000;
        let next = match then {
            Some(Target::Queue(queue)) => format!("then it goes to queue {queue}"),
            Some(Target::Agent(agent)) => format!("then it goes to agent {agent}"),
            None => "then it ends timed_out".to_owned(),
        };
        Some(AgentWaitView {
            agent: agent_id.to_string(),
            presence: presence.to_owned(),
            activity: activity.as_str().to_owned(),
            connected,
            until: crate::wire::format_time(until),
            then: then.map(crate::wire::target_to_wire),
            message: format!(
                "agent {agent_id} is {why}; the caller waits for {agent_id} up to {wait_s} s more, {next}"
            ),
        })
    }

    /// A deliberately simple estimate: the average speed of answer of the queue's callers
    /// answered today, times the caller's position; none before anyone was answered today.
    /// It ignores how many agents serve the queue and how long calls last, so it is a hint for
    /// an IVR prompt ("about two minutes"), not a promise.
    fn estimated_wait_s(&mut self, queue: &QueueName, position: usize) -> Option<u64> {
        let (committed, now, day_start) = (self.committed, self.now, self.day_start);
        let asa = *self.asa_today.entry(queue.clone()).or_insert_with(|| {
            let today = committed.queue_stats(queue, now, day_start).today;
            (today.answered > 0).then_some(today.asa_s)
        });
        asa.map(|asa_s| (asa_s * position as f64).round() as u64)
    }
}

fn unknown(id: &InteractionId) -> ApiError {
    ApiError::not_found(
        "unknown_interaction",
        format!("no interaction with id {id}"),
    )
}

/// Looks the interaction up and checks that the caller may see it.
async fn readable(
    state: &AppState,
    principal: &Principal,
    id: &InteractionId,
) -> Result<Interaction, ApiError> {
    let interaction = interaction_anywhere(state, id).await?;
    may_read(principal, &interaction)?;
    Ok(interaction)
}

fn may_read(principal: &Principal, interaction: &Interaction) -> Result<(), ApiError> {
    if principal.may_read_interaction(interaction) {
        Ok(())
    } else {
        Err(ApiError::forbidden("this interaction is not yours to see"))
    }
}

#[utoipa::path(
    post,
    path = "/v1/interactions",
    operation_id = "create_interaction",
    tag = "interactions",
    summary = "Hand off a call: create an interaction for an agent or a queue (ivr, admin)",
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = "^[\\x21-\\x7E]{1,255}$", description = "Makes a retry safe: the same key with an equal body within the server's `idempotency_window_s` (24 h by default) answers 200 with the same interaction"),
    ),
    request_body(content = handoff_protocol::CreateInteractionRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created: `offered` with the agent to transfer to, or `queued` with `position` and `estimated_wait_s` (the queue's average speed of answer today times the position; null before anyone was answered there today)", body = handoff_protocol::InteractionView),
        (status = 200, description = "An earlier request with the same Idempotency-Key and an equal body: the same interaction", body = handoff_protocol::InteractionView),
        (status = 400, description = "Not JSON, invalid UTF-8, not the schema, or a bad Idempotency-Key", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not ivr or admin", body = handoff_protocol::ErrorBody),
        (status = 413, description = "Body or context too large", body = handoff_protocol::ErrorBody),
        (status = 415, description = "The body is not JSON", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Unknown target agent or queue, or an Idempotency-Key reused with a different body", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin, Role::Ivr])?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255);
            Some(
                key.ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1 to 255 visible ASCII characters",
                    )
                    .with_field("Idempotency-Key")
                })?
                .to_owned(),
            )
        }
    };
    let body = read_json_bytes(request, &state).await?;
    let new = NewInteraction::parse(&body, state.settings.max_context_bytes)?;
    let idempotency = idempotency_key.map(|key| Idempotency {
        key_id: principal.key_id.clone(),
        key,
        body_sha256: new.body_sha256(),
    });
    let id = InteractionId::parse(&generate_id("ix_")).map_err(ApiError::internal)?;
    // CRM lookups run beside the rest and are waited for at most `enrich_wait`: routing
    // never waits longer for a CRM.
    let lookups = state.integrations.start_lookups(|| {
        let context = serde_json::Value::Object(new.request.context.clone().unwrap_or_default());
        crate::integrations::connectors::lookup_variables(
            crate::integrations::connectors::CallFacts {
                id: &id,
                caller: new.request.caller.as_deref(),
                dialed: new.request.dialed.as_deref(),
                channel: &new.channel,
                call_id: new.request.call_id.as_deref(),
                priority: new.priority(),
                context: &context,
                target: &new.target,
            },
        )
    });
    let enrichment = collect_lookups(lookups, state.integrations.enrich_wait()).await;
    let (target, fallback) = (new.target.clone(), new.fallback.clone());
    let spec = new.into_spec(
        id.clone(),
        enrichment.found,
        Some(principal.key_id.clone()),
        now(),
    );
    let committed = state
        .engine
        .execute_with(Command::CreateInteraction { spec }, idempotency)
        .await
        .map_err(|error| {
            // The core names the target it does not know; say whether the body held it in
            // `target` or in `fallback`.
            let missing = match &error {
                EngineError::Refused(CommandError::UnknownTargetAgent(agent)) => {
                    Some(Target::Agent(agent.clone()))
                }
                EngineError::Refused(CommandError::UnknownTargetQueue(queue)) => {
                    QueueName::parse(queue).ok().map(Target::Queue)
                }
                _ => None,
            };
            let mut error = engine_error(error);
            if let Some(missing) = missing.filter(|m| *m != target && fallback.as_ref() == Some(m))
            {
                error.field = Some(match missing {
                    Target::Agent(_) => "fallback.agent".to_owned(),
                    Target::Queue(_) => "fallback.queue".to_owned(),
                });
            }
            error
        })?;
    let (status, id) = match committed.replayed {
        Some(existing) => {
            for late in enrichment.late {
                late.answer.abort();
            }
            (StatusCode::OK, existing)
        }
        None => {
            record_enrichment_later(&state, &id, enrichment.failed, enrichment.late);
            (StatusCode::CREATED, id)
        }
    };
    let view = view(&state, &id).await?;
    Ok(json_response(status, &view))
}

/// What the CRM lookups of a create came to within the wait.
struct Enrichments {
    /// Answered in time: they ride in the interaction and its offers.
    found: Vec<handoff_core::Enrichment>,
    /// Failed in time: `interaction.enrichment_failed` follows the creation.
    failed: Vec<(String, String)>,
    /// Still running: what they find follows as `interaction.enriched` (or failed).
    late: Vec<crate::integrations::connector_registry::StartedLookup>,
}

async fn collect_lookups(
    lookups: Vec<crate::integrations::connector_registry::StartedLookup>,
    wait: Duration,
) -> Enrichments {
    use crate::integrations::connectors::LookupOutcome;
    let mut result = Enrichments {
        found: Vec::new(),
        failed: Vec::new(),
        late: Vec::new(),
    };
    if lookups.is_empty() {
        return result;
    }
    let deadline = tokio::time::Instant::now() + wait;
    for mut lookup in lookups {
        match tokio::time::timeout_at(deadline, &mut lookup.answer).await {
            Ok(Ok(LookupOutcome::Found { fields, .. })) => {
                result.found.push(handoff_core::Enrichment {
                    connector: lookup.connector,
                    fields: fields.into(),
                })
            }
            Ok(Ok(LookupOutcome::Failed(reason))) => result.failed.push((lookup.connector, reason)),
            Ok(Ok(LookupOutcome::Skipped)) => {}
            Ok(Err(error)) => result
                .failed
                .push((lookup.connector, format!("the lookup stopped: {error}"))),
            Err(_) => result.late.push(lookup),
        }
    }
    result
}

/// Appends what the lookups that failed in time, or answered late, came to, once each is
/// known; the 201 does not wait for them.
fn record_enrichment_later(
    state: &AppState,
    id: &InteractionId,
    failed: Vec<(String, String)>,
    late: Vec<crate::integrations::connector_registry::StartedLookup>,
) {
    use crate::integrations::connectors::LookupOutcome;
    if failed.is_empty() && late.is_empty() {
        return;
    }
    let engine = state.engine.clone();
    let id = id.clone();
    tokio::spawn(async move {
        let record = |connector: String, outcome: Result<String, String>| {
            let (engine, id) = (engine.clone(), id.clone());
            async move {
                let command = Command::RecordEnrichment {
                    id,
                    connector,
                    outcome,
                };
                if let Err(error) = engine.execute(command).await {
                    tracing::warn!(%error, "what a CRM lookup found could not be recorded");
                }
            }
        };
        for (connector, reason) in failed {
            record(connector, Err(reason)).await;
        }
        for lookup in late {
            let outcome = match lookup.answer.await {
                Ok(LookupOutcome::Found { fields, .. }) => Ok(fields),
                Ok(LookupOutcome::Failed(reason)) => Err(reason),
                Ok(LookupOutcome::Skipped) => continue,
                Err(error) => Err(format!("the lookup stopped: {error}")),
            };
            record(lookup.connector, outcome).await;
        }
    });
}

#[derive(Deserialize)]
pub struct GetQuery {
    wait_s: Option<String>,
    state: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/interactions/{interaction_id}",
    operation_id = "get_interaction",
    tag = "interactions",
    summary = "Read an interaction with its history; with wait_s, long-poll for a state change",
    params(
        ("interaction_id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The interaction's id"),
        ("wait_s" = Option<u64>, Query, minimum = 0, maximum = 300, description = "Wait up to this many seconds (0..=300) for the state to differ from `state`"),
        ("state" = Option<handoff_protocol::InteractionState>, Query, description = "The state to wait for a change from; default: the current one"),
    ),
    responses(
        (status = 200, description = "The interaction, with `history`", body = handoff_protocol::InteractionView),
        (status = 400, description = "A bad wait_s or an unknown state", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not allowed to read this interaction", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown interaction", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid interaction id", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_id): Path<String>,
    Query(query): Query<GetQuery>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin, Role::Supervisor, Role::Ivr, Role::Agent])?;
    let id = interaction_id(&raw_id)?;
    let wait_s = match query.wait_s.as_deref() {
        None | Some("") => 0,
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|s| *s <= 300)
            .ok_or_else(|| {
                ApiError::bad_request("invalid_field", "wait_s: an integer from 0 to 300")
                    .with_field("wait_s")
            })?,
    };
    let baseline = match query.state.as_deref() {
        None | Some("") => None,
        Some(text) => Some(InteractionState::parse(text).ok_or_else(|| {
            ApiError::bad_request("invalid_field", format!("state: unknown state {text}"))
                .with_field("state")
        })?),
    };
    let mut live = state.shared.subscribe();
    let in_memory = state.shared.state().interaction(&id).cloned();
    // A forgotten interaction has ended and takes no more events: the log read here is its
    // whole history, kept for the answer.
    let (first, forgotten_history) = match in_memory {
        Some(interaction) => (interaction, None),
        None => {
            let logged = logged_events(&state, &id).await?;
            (interaction_from_log(&state, &id, &logged)?, Some(logged))
        }
    };
    may_read(&principal, &first)?;
    // The answer comes when the state differs from `?state=`, or when the same state now
    // names another agent (an offer that moved on): both tell the IVR where the call goes.
    let baseline = (baseline.unwrap_or(first.state), first.agent.clone());
    let differs = |interaction: &Interaction| {
        interaction.state != baseline.0 || interaction.agent != baseline.1
    };
    if wait_s > 0 && !differs(&first) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_s);
        let mut shutdown = state.shutdown.clone();
        loop {
            let changed = tokio::select! {
                received = live.recv() => match received {
                    Ok(event) => event.subject == id.as_str(),
                    // Missed events: look at the state again.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.fired() => break,
            };
            if changed && state.shared.state().interaction(&id).is_some_and(differs) {
                break;
            }
        }
    }
    // The state first, then the log, as ever: the history may only run ahead of the view.
    let in_memory = state.shared.state().interaction(&id).cloned();
    let history = match forgotten_history {
        Some(logged) if in_memory.is_none() => logged,
        _ => logged_events(&state, &id).await?,
    };
    let interaction = match in_memory {
        Some(interaction) => interaction,
        None => interaction_from_log(&state, &id, &history)?,
    };
    let mut view = view_of(&state, &interaction);
    let mut events = Vec::with_capacity(history.len());
    for stored in &history {
        let event = serde_json::from_str::<CloudEvent>(&stored.payload)
            .map_err(|error| unreadable(stored.seq, error))?;
        events.push(event);
    }
    view.history = Some(events);
    Ok(json_response(StatusCode::OK, &view))
}

#[derive(Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    agent: Option<String>,
    queue: Option<String>,
    call_id: Option<String>,
    since: Option<String>,
    limit: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/interactions",
    operation_id = "list_interactions",
    tag = "interactions",
    summary = "List interactions, newest first (supervisor, admin; an agent lists its own)",
    params(
        ("state" = Option<handoff_protocol::InteractionState>, Query, description = "Only interactions in this state"),
        ("agent" = Option<String>, Query, description = "Only interactions this agent holds or held, or was offered. An agent's key lists only its own: the filter defaults to that agent and may name no other"),
        ("since" = Option<String>, Query, format = DateTime, description = "Only interactions changed at or after this RFC 3339 time (the agent desktop asks for today's)"),
        ("queue" = Option<String>, Query, description = "Only interactions created for this queue or headed to it now (after an overflow or a transfer)"),
        ("call_id" = Option<String>, Query, description = "Only interactions with this call id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many, 1..=1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "The interactions", body = handoff_protocol::InteractionList),
        (status = 400, description = "Unknown state, a bad time or a bad limit", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not supervisor or admin, or an agent naming another agent", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin, Role::Supervisor, Role::Agent])?;
    let wanted_agent = match (&principal.role, &principal.agent) {
        (Role::Agent, Some(own)) => match query.agent.as_deref() {
            None | Some("") => Some(own.as_str().to_owned()),
            Some(named) if named == own.as_str() => Some(own.as_str().to_owned()),
            Some(_) => {
                return Err(ApiError::forbidden(
                    "an agent lists only its own interactions",
                ))
            }
        },
        (Role::Agent, None) => return Err(ApiError::forbidden("this key names no agent")),
        _ => query.agent.clone().filter(|agent| !agent.is_empty()),
    };
    let since = match query.since.as_deref() {
        None | Some("") => None,
        Some(text) => Some(crate::wire::parse_time(text).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_field",
                format!("since: not an RFC 3339 time: {text}"),
            )
            .with_field("since")
        })?),
    };
    let wanted_state = match query.state.as_deref() {
        None | Some("") => None,
        Some(text) => Some(InteractionState::parse(text).ok_or_else(|| {
            ApiError::bad_request("invalid_field", format!("state: unknown state {text}"))
                .with_field("state")
        })?),
    };
    let limit = super::list_limit(query.limit.as_deref())?;
    let committed = state.shared.state();
    let mut viewer = Viewer::new(&state, &committed);
    let interactions = committed
        .interactions()
        .rev()
        .filter(|i| wanted_state.is_none_or(|s| i.state == s))
        .filter(|i| since.is_none_or(|since| i.updated_at >= since))
        .filter(|i| {
            wanted_agent.as_deref().is_none_or(|agent| {
                i.agent.as_ref().is_some_and(|a| a.as_str() == agent)
                    || i.involved_agents.iter().any(|a| a.as_str() == agent)
            })
        })
        .filter(|i| {
            query.queue.as_deref().is_none_or(|queue| {
                matches!(&i.current_target, Target::Queue(q) if q.as_str() == queue)
                    || matches!(&i.spec.target, Target::Queue(q) if q.as_str() == queue)
            })
        })
        .filter(|i| {
            query
                .call_id
                .as_deref()
                .is_none_or(|call_id| i.spec.call_id.as_deref() == Some(call_id))
        })
        .take(limit)
        .map(|i| viewer.view(i))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &InteractionList { interactions },
    ))
}

/// The agent an action is taken for: the caller's own agent, or, for an admin, the agent
/// the interaction is offered or assigned to now.
async fn acting_agent(
    state: &AppState,
    principal: &Principal,
    id: &InteractionId,
) -> Result<handoff_core::AgentId, ApiError> {
    match principal.role {
        Role::Agent => {
            readable(state, principal, id).await?;
            principal
                .agent
                .clone()
                .ok_or_else(|| ApiError::forbidden("this token is not an agent's"))
        }
        Role::Admin => {
            let interaction = interaction_anywhere(state, id).await?;
            interaction.agent.clone().ok_or_else(|| {
                ApiError::conflict(
                    "wrong_state",
                    format!(
                        "interaction {id} is {} and held by no agent",
                        interaction.state.as_str()
                    ),
                )
            })
        }
        _ => Err(ApiError::forbidden(
            "only the agent the interaction is offered or assigned to may do this",
        )),
    }
}

async fn action(
    state: &AppState,
    id: &InteractionId,
    command: Command,
) -> Result<Response, ApiError> {
    if let Err(error) = state.engine.execute(command).await {
        if let EngineError::Refused(CommandError::UnknownInteraction(_)) = &error {
            // Forgotten by the engine since it ended: still the contract's 409.
            if let Ok(ended) = interaction_anywhere(state, id).await {
                return Err(ApiError::conflict(
                    "wrong_state",
                    format!("interaction {id} is {}", ended.state.as_str()),
                ));
            }
        }
        return Err(engine_error(error));
    }
    Ok(json_response(StatusCode::OK, &view(state, id).await?))
}

#[utoipa::path(
    post,
    path = "/v1/interactions/{interaction_id}/accept",
    operation_id = "accept_interaction",
    tag = "interactions",
    summary = "Accept an offer (the offered agent); empty body",
    params(
        ("interaction_id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The interaction's id"),
    ),
    responses(
        (status = 200, description = "The interaction", body = handoff_protocol::InteractionView),
        (status = 400, description = "A body was sent: this action takes none", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not the agent it is offered to", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown interaction", body = handoff_protocol::ErrorBody),
        (status = 409, description = "The action does not fit the interaction's current state", body = handoff_protocol::ErrorBody),
        (status = 413, description = "Body or context too large", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid interaction id", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn accept(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    answer_offer(&state, &principal, &raw_id, request, |id, agent| {
        Command::Accept { id, agent }
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/interactions/{interaction_id}/reject",
    operation_id = "reject_interaction",
    tag = "interactions",
    summary = "Reject an offer (the offered agent); empty body",
    params(
        ("interaction_id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The interaction's id"),
    ),
    responses(
        (status = 200, description = "The interaction", body = handoff_protocol::InteractionView),
        (status = 400, description = "A body was sent: this action takes none", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not the agent it is offered to", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown interaction", body = handoff_protocol::ErrorBody),
        (status = 409, description = "The action does not fit the interaction's current state", body = handoff_protocol::ErrorBody),
        (status = 413, description = "Body or context too large", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid interaction id", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn reject(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    answer_offer(&state, &principal, &raw_id, request, |id, agent| {
        Command::Reject { id, agent }
    })
    .await
}

/// Accept or reject: the acting agent answers its offer; the body must be empty.
async fn answer_offer(
    state: &AppState,
    principal: &Principal,
    raw_id: &str,
    request: Request,
    command: impl FnOnce(InteractionId, handoff_core::AgentId) -> Command,
) -> Result<Response, ApiError> {
    let id = interaction_id(raw_id)?;
    let agent = acting_agent(state, principal, &id).await?;
    read_empty(request, state).await?;
    action(state, &id, command(id.clone(), agent)).await
}

#[utoipa::path(
    post,
    path = "/v1/interactions/{interaction_id}/complete",
    operation_id = "complete_interaction",
    tag = "interactions",
    summary = "Complete an interaction with an optional disposition and notes (the assigned agent)",
    params(
        ("interaction_id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The interaction's id"),
    ),
    request_body(content = handoff_protocol::CompleteRequest, content_type = "application/json", description = "Optional: an empty body (no Content-Type) completes without disposition or notes"),
    responses(
        (status = 200, description = "The interaction", body = handoff_protocol::InteractionView),
        (status = 400, description = "Not JSON, invalid UTF-8, or not the schema", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not the assigned agent", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown interaction", body = handoff_protocol::ErrorBody),
        (status = 409, description = "The action does not fit the interaction's current state", body = handoff_protocol::ErrorBody),
        (status = 413, description = "Body or context too large", body = handoff_protocol::ErrorBody),
        (status = 415, description = "The body is not JSON", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid interaction id, or a field too long", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn complete(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let id = interaction_id(&raw_id)?;
    let agent = acting_agent(&state, &principal, &id).await?;
    let has_body = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .is_some_and(|l| l != "0")
        || request
            .headers()
            .contains_key(axum::http::header::CONTENT_TYPE);
    let body = if has_body {
        read_json::<CompleteRequest>(request, &state).await?.0
    } else {
        CompleteRequest::default()
    };
    for (field, value) in [("disposition", &body.disposition), ("notes", &body.notes)] {
        if value.as_ref().is_some_and(|v| v.len() > 4096) {
            return Err(ApiError::unprocessable(
                "invalid_field",
                format!("{field}: at most 4096 bytes"),
            )
            .with_field(field));
        }
    }
    let command = Command::Complete {
        id: id.clone(),
        agent,
        disposition: body.disposition,
        notes: body.notes,
    };
    action(&state, &id, command).await
}

#[utoipa::path(
    post,
    path = "/v1/interactions/{interaction_id}/transfer",
    operation_id = "transfer_interaction",
    tag = "interactions",
    summary = "Transfer an accepted interaction to another agent or queue (the assigned agent)",
    params(
        ("interaction_id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The interaction's id"),
    ),
    request_body(content = handoff_protocol::TransferRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The interaction, handed off anew", body = handoff_protocol::InteractionView),
        (status = 400, description = "Not JSON, invalid UTF-8, or not the schema", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not the assigned agent", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown interaction", body = handoff_protocol::ErrorBody),
        (status = 409, description = "The action does not fit the interaction's current state", body = handoff_protocol::ErrorBody),
        (status = 413, description = "Body or context too large", body = handoff_protocol::ErrorBody),
        (status = 415, description = "The body is not JSON", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Unknown target, transfer to self, or a note too long", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn transfer(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let id = interaction_id(&raw_id)?;
    let agent = acting_agent(&state, &principal, &id).await?;
    let (body, _) = read_json::<TransferRequest>(request, &state).await?;
    let transfer = NewTransfer::check(body)?;
    let command = Command::Transfer {
        id: id.clone(),
        agent,
        target: transfer.target,
        fallback: transfer.fallback,
        note: transfer.note,
    };
    action(&state, &id, command).await
}

#[utoipa::path(
    post,
    path = "/v1/interactions/{interaction_id}/hangup",
    operation_id = "hangup_interaction",
    tag = "interactions",
    summary = "The caller hung up (ivr, admin); empty body",
    params(
        ("interaction_id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The interaction's id"),
    ),
    responses(
        (status = 200, description = "The interaction", body = handoff_protocol::InteractionView),
        (status = 400, description = "A body was sent: this action takes none", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not ivr or admin, or not the ivr key that created it", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown interaction", body = handoff_protocol::ErrorBody),
        (status = 409, description = "The action does not fit the interaction's current state", body = handoff_protocol::ErrorBody),
        (status = 413, description = "Body or context too large", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid interaction id", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn hangup(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin, Role::Ivr])?;
    let id = interaction_id(&raw_id)?;
    readable(&state, &principal, &id).await?;
    read_empty(request, &state).await?;
    action(&state, &id, Command::Hangup { id: id.clone() }).await
}

/// The context's entity tag: its version, quoted.
fn context_etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// The context as its own resource: the JSON object with its version as the `ETag`.
fn context_response(context: &str, version: u64) -> Response {
    let mut response = (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        context.to_owned(),
    )
        .into_response();
    if let Ok(etag) = axum::http::HeaderValue::from_str(&context_etag(version)) {
        response
            .headers_mut()
            .insert(axum::http::header::ETAG, etag);
    }
    response
}

/// What an `If-Match` header asks for: any current context (`*`), or one of these versions.
#[derive(Debug, Clone, PartialEq)]
enum IfMatch {
    Any,
    Versions(Vec<u64>),
}

impl IfMatch {
    /// RFC 9110 13.1.1: `*`, or entity tags compared strongly (a weak `W/"3"` matches none).
    /// A bare number is taken as its quoted tag: clients write `If-Match: 3` by mistake, and
    /// it can only mean that version.
    fn parse(headers: &HeaderMap) -> Result<Option<IfMatch>, ApiError> {
        let mut values = headers
            .get_all(axum::http::header::IF_MATCH)
            .iter()
            .peekable();
        if values.peek().is_none() {
            return Ok(None);
        }
        let unreadable = || {
            ApiError::bad_request(
                "invalid_header",
                "If-Match must be * or entity tags such as \"3\" (the context's ETag)",
            )
            .with_field("If-Match")
        };
        let mut versions = Vec::new();
        for value in values {
            for tag in entity_tags(value.as_bytes()).ok_or_else(unreadable)? {
                match tag {
                    ListedTag::Any => return Ok(Some(IfMatch::Any)),
                    // Weak tags never match If-Match; remembered as no version at all.
                    ListedTag::Weak => {}
                    // Another server's tag, say, is well formed but never this context's.
                    ListedTag::Strong(opaque) => versions.extend(version_of(opaque)),
                    ListedTag::Bare(text) => {
                        versions.push(version_of(text).ok_or_else(unreadable)?)
                    }
                }
            }
        }
        Ok(Some(IfMatch::Versions(versions)))
    }

    fn matches(&self, version: u64) -> bool {
        match self {
            IfMatch::Any => true,
            IfMatch::Versions(versions) => versions.contains(&version),
        }
    }
}

/// One element of an `If-Match` list.
#[derive(Debug, PartialEq)]
enum ListedTag<'a> {
    Any,
    /// `W/"..."`.
    Weak,
    /// The opaque part of `"..."`.
    Strong(&'a [u8]),
    /// An unquoted element, taken as a version if it is a number.
    Bare(&'a [u8]),
}

/// The elements of one `If-Match` field value (RFC 9110 5.6.1, 8.8.3): `*`, or entity tags
/// `"..."` and `W/"..."` separated by commas, a comma inside the quotes being part of the tag;
/// empty elements are skipped. None when the value is not such a list.
fn entity_tags(mut rest: &[u8]) -> Option<Vec<ListedTag<'_>>> {
    // etagc: %x21 / %x23-7E / obs-text; a DQUOTE ends the tag.
    let is_etagc = |b: u8| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80;
    let skip_whitespace = |text: &[u8]| -> usize {
        text.iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count()
    };
    let mut tags = Vec::new();
    loop {
        rest = &rest[skip_whitespace(rest)..];
        match rest.first() {
            None => return Some(tags),
            Some(b',') => {
                rest = &rest[1..];
                continue;
            }
            _ => {}
        }
        let weak = rest.starts_with(b"W/");
        let quoted = if weak { &rest[2..] } else { rest };
        let tag = if quoted.first() == Some(&b'"') {
            let length = quoted[1..].iter().take_while(|b| is_etagc(**b)).count();
            if quoted.get(1 + length) != Some(&b'"') {
                return None;
            }
            rest = &quoted[length + 2..];
            if weak {
                ListedTag::Weak
            } else {
                ListedTag::Strong(&quoted[1..1 + length])
            }
        } else if weak {
            return None;
        } else {
            let length = rest.iter().take_while(|b| **b != b',').count();
            let element = &rest[..length];
            rest = &rest[length..];
            let trimmed = element.trim_ascii_end();
            if trimmed == b"*" {
                ListedTag::Any
            } else {
                ListedTag::Bare(trimmed)
            }
        };
        tags.push(tag);
        rest = &rest[skip_whitespace(rest)..];
        if !(rest.is_empty() || rest[0] == b',') {
            return None;
        }
    }
}

/// The context version a tag's text names, if it is digits only: `"+3"` is another tag than
/// `"3"`, though Rust's integer parser would read both as 3.
fn version_of(text: &[u8]) -> Option<u64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse::<u64>().ok()
}

/// Who may update an interaction's context: an admin, the IVR key that created it, or the
/// agent it is assigned to (accepted or in wrap-up).
fn may_update_context(principal: &Principal, interaction: &Interaction) -> Result<(), ApiError> {
    let allowed = match principal.role {
        Role::Admin => true,
        Role::Ivr => interaction.spec.created_by.as_deref() == Some(principal.key_id.as_str()),
        Role::Agent => {
            principal.agent.is_some()
                && interaction.agent == principal.agent
                && matches!(
                    interaction.state,
                    InteractionState::Accepted | InteractionState::WrapUp
                )
        }
        Role::Supervisor | Role::Presence => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only the IVR key that created the interaction, or the agent it is assigned to, may update its context",
        ))
    }
}

#[utoipa::path(
    get,
    path = "/v1/interactions/{interaction_id}/context",
    operation_id = "get_interaction_context",
    tag = "interactions",
    summary = "Read the caller's data, with its version as the ETag",
    params(
        ("interaction_id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The interaction's id"),
    ),
    responses(
        (status = 200, description = "The context object; `ETag: \"N\"` is its version, for `If-Match` on PATCH", body = Object,
            headers(("ETag" = String, description = "The context's version, quoted"))),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not allowed to read this interaction", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown interaction", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid interaction id", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get_context(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin, Role::Supervisor, Role::Ivr, Role::Agent])?;
    let id = interaction_id(&raw_id)?;
    let interaction = readable(&state, &principal, &id).await?;
    Ok(context_response(
        interaction.context(),
        interaction.context_version,
    ))
}

#[utoipa::path(
    patch,
    path = "/v1/interactions/{interaction_id}/context",
    operation_id = "patch_interaction_context",
    tag = "interactions",
    summary = "Update the caller's data with a JSON merge patch (the IVR that created it, or the assigned agent)",
    description = "RFC 7396: keys in the patch replace the context's, `null` removes one, nested objects merge. With `If-Match: \"N\"` the update applies only while the context is at version N (its `ETag`), else 412; without it, it applies to the latest. The assigned agent gets `interaction.context_updated` on its stream, and every later offer (after a transfer, say) carries the updated context.",
    params(
        ("interaction_id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The interaction's id"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "The context's ETag (`\"N\"`) the update was made against, or `*`"),
    ),
    request_body(content = Object, content_type = "application/merge-patch+json", description = "A JSON object: the merge patch (application/json is accepted too)"),
    responses(
        (status = 200, description = "The updated context; `ETag` is its new version", body = Object,
            headers(("ETag" = String, description = "The context's new version, quoted"))),
        (status = 400, description = "Not JSON, not an object, or an unreadable If-Match", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not the IVR key that created it, nor the agent it is assigned to", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown interaction", body = handoff_protocol::ErrorBody),
        (status = 409, description = "The interaction has ended", body = handoff_protocol::ErrorBody),
        (status = 412, description = "If-Match does not name the context's current version", body = handoff_protocol::ErrorBody),
        (status = 413, description = "The patch, or the context it makes, is larger than max_context_bytes", body = handoff_protocol::ErrorBody),
        (status = 415, description = "The body is not JSON", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid interaction id, or the context it makes nests too deep", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn patch_context(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Path(raw_id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin, Role::Ivr, Role::Agent])?;
    let id = interaction_id(&raw_id)?;
    let interaction = interaction_anywhere(&state, &id).await?;
    may_update_context(&principal, &interaction)?;
    let if_match = IfMatch::parse(&headers)?;
    let (patch, _) =
        read_json::<serde_json::Map<String, serde_json::Value>>(request, &state).await?;
    if object_depth(&patch) > MAX_CONTEXT_DEPTH {
        return Err(ApiError::unprocessable(
            "context_too_deep",
            format!("the patch nests more than {MAX_CONTEXT_DEPTH} levels deep"),
        ));
    }
    let patch_text = serde_json::to_string(&patch).map_err(ApiError::internal)?;
    let max_context_bytes = state.settings.max_context_bytes;
    let by = match (&principal.role, &principal.agent) {
        (Role::Agent, Some(agent)) => agent.to_string(),
        _ => principal.key_id.clone(),
    };
    let patch = serde_json::Value::Object(patch);
    let target = id.clone();
    let prepare: crate::engine::Prepare = Box::new(move |working: &handoff_core::State| {
        let Some(interaction) = working.interaction(&target) else {
            return Err(EngineError::Refused(CommandError::UnknownInteraction(
                target.clone(),
            )));
        };
        // Checked again where it counts: the agent may have transferred it meanwhile.
        may_update_context(&principal, interaction).map_err(EngineError::Rejected)?;
        let version = interaction.context_version;
        if let Some(wanted) = if_match.filter(|wanted| !wanted.matches(version)) {
            let asked = match wanted {
                IfMatch::Versions(versions) if !versions.is_empty() => versions
                    .iter()
                    .map(|v| context_etag(*v))
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => "no strong entity tag".to_owned(),
            };
            return Err(EngineError::Rejected(
                ApiError::precondition_failed(format!(
                    "If-Match names {asked}, but the context is at {}",
                    context_etag(version)
                ))
                .with_field("If-Match"),
            ));
        }
        let mut context: serde_json::Value =
            serde_json::from_str(interaction.context()).unwrap_or_else(|_| serde_json::json!({}));
        json_patch::merge(&mut context, &patch);
        let merged = match &context {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("an object patched with an object stays an object"),
        };
        if object_depth(merged) > MAX_CONTEXT_DEPTH {
            return Err(EngineError::Rejected(
                ApiError::unprocessable(
                    "context_too_deep",
                    format!("context: nested more than {MAX_CONTEXT_DEPTH} levels deep"),
                )
                .with_field("context"),
            ));
        }
        let text = serde_json::to_string(&context).unwrap_or_default();
        if text.len() > max_context_bytes {
            return Err(EngineError::Rejected(
                ApiError::too_large(format!(
                    "context: {} bytes serialized after the patch, more than the limit of {max_context_bytes}",
                    text.len()
                ))
                .with_field("context"),
            ));
        }
        Ok(Command::UpdateContext {
            id: target,
            expected_version: version,
            context: text,
            patch: patch_text,
            by: Some(by),
        })
    });
    let committed = match state.engine.execute_prepared(prepare).await {
        Ok(committed) => committed,
        Err(EngineError::Refused(CommandError::UnknownInteraction(_))) => {
            // Forgotten by the engine since it ended: still the contract's 409.
            return Err(ApiError::conflict(
                "wrong_state",
                format!("interaction {id} is {}", interaction.state.as_str()),
            ));
        }
        Err(error) => return Err(engine_error(error)),
    };
    let updated = committed.events.iter().find_map(|(_, event)| match event {
        handoff_core::Event::ContextUpdated {
            context, version, ..
        } => Some((context.clone(), *version)),
        _ => None,
    });
    let (context, version) =
        updated.ok_or_else(|| ApiError::internal("a context update appended no event"))?;
    Ok(context_response(&context, version))
}

#[cfg(test)]
mod tests {
    use super::{entity_tags, ListedTag};

    #[test]
    fn if_match_lists_are_read_as_rfc_9110_writes_them() {
        assert_eq!(entity_tags(b"*"), Some(vec![ListedTag::Any]));
        assert_eq!(
            entity_tags(b"\"3\", W/\"3\" ,,\"x\""),
            Some(vec![
                ListedTag::Strong(b"3"),
                ListedTag::Weak,
                ListedTag::Strong(b"x")
            ])
        );
        // A comma and a backtick are etagc: inside the quotes they belong to the tag.
        assert_eq!(
            entity_tags(b"W/\"\", W/\",S`ax\""),
            Some(vec![ListedTag::Weak, ListedTag::Weak])
        );
        assert_eq!(
            entity_tags(b"\"a,b\""),
            Some(vec![ListedTag::Strong(b"a,b")])
        );
        assert_eq!(entity_tags(b" 3 "), Some(vec![ListedTag::Bare(b"3")]));
        assert_eq!(entity_tags(b""), Some(vec![]));
        assert_eq!(super::version_of(b"3"), Some(3));
        assert_eq!(super::version_of(b"+3"), None);
        assert_eq!(super::version_of(b""), None);
        for unreadable in [
            &b"\"3"[..],
            b"W/3",
            b"\"3\" \"4\"",
            b"\"a\"b\"",
            b"\"sp ace\"",
        ] {
            assert_eq!(
                entity_tags(unreadable),
                None,
                "{}",
                String::from_utf8_lossy(unreadable)
            );
        }
    }
}
