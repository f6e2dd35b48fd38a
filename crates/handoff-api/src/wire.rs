//! Translation between the core's types and the wire: CloudEvents (both ways, since the log
//! stores events in their wire form and recovery reads them back), views, targets and times.

use std::collections::BTreeMap;

use handoff_core::{
    Agent, AgentId, AgentProfile, Event, Interaction, InteractionId, InteractionSpec,
    OfferEndReason, Presence, PresenceSource, PresenceStatus, QueueName, SkillLevel, Target,
    Timestamp,
};
use handoff_protocol as wire;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;

/// RFC 3339, UTC, milliseconds: `2026-11-24T10:24:18.123Z`.
pub fn format_time(at: Timestamp) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(at.millis() as i128 * 1_000_000)
        .ok()
        .and_then(|moment| moment.format(&format).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_owned())
}

pub fn parse_time(text: &str) -> Option<Timestamp> {
    let moment =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(Timestamp::from_millis(
        (moment.unix_timestamp_nanos() / 1_000_000) as i64,
    ))
}

pub fn now() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_millis(since_epoch.as_millis() as i64)
}

/// JSON with object keys sorted at every depth: equal parsed JSON gives equal text.
pub fn canonical_json(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sorted(v)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

// ----- targets ----------------------------------------------------------------------------

/// Parses a wire target; `field` is the JSON path used in errors (`target` or `fallback`).
pub fn target_from_wire(target: &wire::Target, field: &str) -> Result<Target, ApiError> {
    match target {
        wire::Target::Agent(id) => AgentId::parse(id).map(Target::Agent).map_err(|error| {
            ApiError::unprocessable("invalid_id", format!("{field}.agent: {error}"))
                .with_field(format!("{field}.agent"))
        }),
        wire::Target::Queue(name) => QueueName::parse(name).map(Target::Queue).map_err(|error| {
            ApiError::unprocessable("invalid_id", format!("{field}.queue: {error}"))
                .with_field(format!("{field}.queue"))
        }),
    }
}

pub fn target_to_wire(target: &Target) -> wire::Target {
    match target {
        Target::Agent(id) => wire::Target::Agent(id.to_string()),
        Target::Queue(name) => wire::Target::Queue(name.to_string()),
    }
}

fn target_json(target: &Target) -> Value {
    serde_json::to_value(target_to_wire(target)).unwrap_or(Value::Null)
}

// ----- views ------------------------------------------------------------------------------

pub fn presence_view(presence: &Presence) -> wire::PresenceView {
    wire::PresenceView {
        status: presence.status.as_str().to_owned(),
        reason: presence.reason.clone(),
        source: presence.source.as_str().to_owned(),
        since: format_time(presence.since),
    }
}

pub fn agent_view(
    agent: &Agent,
    activity: handoff_core::Activity,
    connected: bool,
) -> wire::AgentView {
    wire::AgentView {
        id: agent.profile.id.to_string(),
        name: agent.profile.name.clone(),
        address: agent.profile.address.clone(),
        skills: skills_json(&agent.profile.skills),
        capacity: i64::from(agent.profile.capacity),
        presence: presence_view(&agent.presence),
        activity: activity.as_str().to_owned(),
        connected,
        acked_seq: agent.acked_seq.get(),
    }
}

fn skills_json(skills: &BTreeMap<String, SkillLevel>) -> BTreeMap<String, i64> {
    skills
        .iter()
        .map(|(name, level)| (name.clone(), i64::from(level.get())))
        .collect()
}

/// The interaction as the API shows it. `agent_address` resolves the current agent's address.
pub fn interaction_view(
    interaction: &Interaction,
    position: Option<usize>,
    agent_address: Option<String>,
) -> wire::InteractionView {
    let spec = &interaction.spec;
    wire::InteractionView {
        id: spec.id.to_string(),
        state: interaction.state.as_str().to_owned(),
        target: target_to_wire(&spec.target),
        fallback: spec.fallback.as_ref().map(target_to_wire),
        agent: interaction.agent.as_ref().map(|id| wire::AgentRef {
            id: id.to_string(),
            address: agent_address,
        }),
        position: position.map(|p| p as u64),
        context: context_value(&spec.context),
        caller: spec.caller.clone(),
        dialed: spec.dialed.clone(),
        channel: spec.channel.clone(),
        call_id: spec.call_id.clone(),
        priority: spec.priority,
        created_at: format_time(spec.created_at),
        updated_at: format_time(interaction.updated_at),
        offer_expires_at: interaction.offer_expires_at.map(format_time),
        transfer_note: interaction.last_transfer_note.clone(),
        disposition: interaction.disposition.clone(),
        notes: interaction.notes.clone(),
        history: None,
    }
}

fn context_value(context: &str) -> Value {
    serde_json::from_str(context).unwrap_or_else(|_| Value::Object(Default::default()))
}

/// The interaction as a screen pop and `interaction.created` carry it.
fn spec_json(spec: &InteractionSpec) -> Value {
    json!({
        "id": spec.id.as_str(),
        "caller": spec.caller,
        "dialed": spec.dialed,
        "channel": spec.channel,
        "call_id": spec.call_id,
        "context": context_value(&spec.context),
        "target": target_json(&spec.target),
        "fallback": spec.fallback.as_ref().map(target_json),
        "priority": spec.priority,
        "created_at": format_time(spec.created_at),
        "created_by": spec.created_by,
    })
}

fn profile_json(profile: &AgentProfile) -> Value {
    json!({
        "id": profile.id.as_str(),
        "name": profile.name,
        "address": profile.address,
        "skills": skills_json(&profile.skills),
        "capacity": profile.capacity,
    })
}

fn presence_json(presence: &Presence) -> Value {
    serde_json::to_value(presence_view(presence)).unwrap_or(Value::Null)
}

// ----- events -----------------------------------------------------------------------------

/// The CloudEvent for `event` at `seq`. `offer_note` is the transfer note shown in a pop.
pub fn cloud_event(seq: u64, event: &Event, offer_spec: Option<&Interaction>) -> wire::CloudEvent {
    wire::CloudEvent {
        specversion: "1.0".to_owned(),
        id: format!("handoff-{seq}"),
        source: "handoff".to_owned(),
        event_type: event.type_name().to_owned(),
        time: format_time(event.time()),
        subject: event.subject().to_owned(),
        seq,
        data: event_data(event, offer_spec),
    }
}

fn event_data(event: &Event, offered: Option<&Interaction>) -> Value {
    match event {
        Event::AgentCreated { profile, presence } => {
            json!({"agent": profile_json(profile), "presence": presence_json(presence)})
        }
        Event::AgentUpdated { profile, .. } => json!({"agent": profile_json(profile)}),
        Event::AgentDeleted { agent, .. } => json!({"agent": agent.as_str()}),
        Event::PresenceChanged { agent, presence } => {
            json!({"agent": agent.as_str(), "presence": presence_json(presence)})
        }
        Event::InteractionCreated { spec } => json!({"interaction": spec_json(spec)}),
        Event::InteractionQueued { id, target, .. } => {
            json!({"interaction_id": id.as_str(), "target": target_json(target)})
        }
        Event::InteractionOffered {
            id,
            agent,
            target,
            expires_at,
            ..
        } => {
            let mut interaction = offered
                .map(|i| spec_json(&i.spec))
                .unwrap_or_else(|| json!({"id": id.as_str()}));
            if let (Some(object), Some(offered)) = (interaction.as_object_mut(), offered) {
                object.insert(
                    "transfer_note".to_owned(),
                    json!(offered.last_transfer_note),
                );
            }
            json!({
                "interaction": interaction,
                "agent": agent.as_str(),
                "offer_target": target_json(target),
                "offer_expires_at": format_time(*expires_at),
            })
        }
        Event::OfferRevoked {
            id, agent, reason, ..
        } => {
            // The contract revokes a lost connection's offers "as timed out": that is the
            // reason on the wire, and `cause` says why the time ran out.
            let (wire_reason, cause) = match reason {
                OfferEndReason::ConnectionLost => ("timed_out", Some("connection_lost")),
                other => (other.as_str(), None),
            };
            json!({
                "interaction_id": id.as_str(), "agent": agent.as_str(),
                "reason": wire_reason, "cause": cause,
            })
        }
        Event::InteractionAccepted { id, agent, .. }
        | Event::InteractionRejected { id, agent, .. }
        | Event::InteractionEnded { id, agent, .. } => {
            json!({"interaction_id": id.as_str(), "agent": agent.as_str()})
        }
        Event::InteractionTransferred {
            id,
            from,
            target,
            fallback,
            note,
            ..
        } => json!({
            "interaction_id": id.as_str(),
            "from": from.as_str(),
            "target": target_json(target),
            "fallback": fallback.as_ref().map(target_json),
            "note": note,
        }),
        Event::InteractionAbandoned { id, .. } | Event::InteractionUnanswered { id, .. } => {
            json!({"interaction_id": id.as_str()})
        }
        Event::InteractionCompleted {
            id,
            agent,
            disposition,
            notes,
            ..
        } => json!({
            "interaction_id": id.as_str(), "agent": agent.as_str(),
            "disposition": disposition, "notes": notes,
        }),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("event {seq} in the log cannot be read: {reason}")]
pub struct DecodeError {
    pub seq: u64,
    pub reason: String,
}

#[derive(Deserialize)]
struct ProfileData {
    id: String,
    name: String,
    address: Option<String>,
    skills: BTreeMap<String, i64>,
    capacity: u32,
}

#[derive(Deserialize)]
struct SpecData {
    id: String,
    caller: Option<String>,
    dialed: Option<String>,
    channel: String,
    call_id: Option<String>,
    context: Value,
    target: wire::Target,
    fallback: Option<wire::Target>,
    priority: i32,
    created_at: String,
    created_by: Option<String>,
}

/// Reads an event back from its wire form, as recovery replays the log.
pub fn decode_event(seq: u64, payload: &str) -> Result<Event, DecodeError> {
    let fail = |reason: String| DecodeError { seq, reason };
    let cloud: wire::CloudEvent =
        serde_json::from_str(payload).map_err(|e| fail(format!("not a CloudEvent: {e}")))?;
    let at = parse_time(&cloud.time).ok_or_else(|| fail(format!("bad time {}", cloud.time)))?;
    let data = &cloud.data;
    let text = |key: &str| -> Result<String, DecodeError> {
        data.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| fail(format!("data.{key} is missing")))
    };
    let optional_text = |key: &str| data.get(key).and_then(Value::as_str).map(str::to_owned);
    let agent_id = |key: &str| -> Result<AgentId, DecodeError> {
        AgentId::parse(&text(key)?).map_err(|e| fail(format!("data.{key}: {e}")))
    };
    let interaction_id = || -> Result<InteractionId, DecodeError> {
        InteractionId::parse(&text("interaction_id")?).map_err(|e| fail(e.to_string()))
    };
    let target = |value: Option<&Value>| -> Result<Target, DecodeError> {
        let value = value.ok_or_else(|| fail("target is missing".to_owned()))?;
        let wire_target: wire::Target =
            serde_json::from_value(value.clone()).map_err(|e| fail(e.to_string()))?;
        target_from_wire(&wire_target, "target").map_err(|e| fail(e.message))
    };
    let optional_target = |value: Option<&Value>| -> Result<Option<Target>, DecodeError> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(value) => target(Some(value)).map(Some),
        }
    };
    let presence = |value: Option<&Value>| -> Result<Presence, DecodeError> {
        let view: wire::PresenceView = serde_json::from_value(value.cloned().unwrap_or_default())
            .map_err(|e| fail(format!("presence: {e}")))?;
        Ok(Presence {
            status: PresenceStatus::parse(&view.status)
                .ok_or_else(|| fail(format!("presence status {}", view.status)))?,
            reason: view.reason,
            source: PresenceSource::parse(&view.source)
                .ok_or_else(|| fail(format!("presence source {}", view.source)))?,
            since: parse_time(&view.since).ok_or_else(|| fail("presence since".to_owned()))?,
        })
    };
    let profile = || -> Result<AgentProfile, DecodeError> {
        let data: ProfileData = serde_json::from_value(data["agent"].clone())
            .map_err(|e| fail(format!("agent: {e}")))?;
        let mut skills = BTreeMap::new();
        for (name, level) in data.skills {
            let level = SkillLevel::parse(level).map_err(|e| fail(e.to_string()))?;
            skills.insert(name, level);
        }
        Ok(AgentProfile {
            id: AgentId::parse(&data.id).map_err(|e| fail(e.to_string()))?,
            name: data.name,
            address: data.address,
            skills,
            capacity: data.capacity,
        })
    };
    let event = match cloud.event_type.as_str() {
        "agent.created" => Event::AgentCreated {
            profile: profile()?,
            presence: presence(data.get("presence"))?,
        },
        "agent.updated" => Event::AgentUpdated {
            profile: profile()?,
            at,
        },
        "agent.deleted" => Event::AgentDeleted {
            agent: agent_id("agent")?,
            at,
        },
        "agent.presence_changed" => Event::PresenceChanged {
            agent: agent_id("agent")?,
            presence: presence(data.get("presence"))?,
        },
        "interaction.created" => {
            let spec: SpecData = serde_json::from_value(data["interaction"].clone())
                .map_err(|e| fail(format!("interaction: {e}")))?;
            Event::InteractionCreated {
                spec: InteractionSpec {
                    id: InteractionId::parse(&spec.id).map_err(|e| fail(e.to_string()))?,
                    caller: spec.caller,
                    dialed: spec.dialed,
                    channel: spec.channel,
                    call_id: spec.call_id,
                    context: spec.context.to_string(),
                    target: target_from_wire(&spec.target, "target")
                        .map_err(|e| fail(e.message))?,
                    fallback: match &spec.fallback {
                        Some(t) => {
                            Some(target_from_wire(t, "fallback").map_err(|e| fail(e.message))?)
                        }
                        None => None,
                    },
                    priority: spec.priority,
                    created_by: spec.created_by,
                    created_at: parse_time(&spec.created_at)
                        .ok_or_else(|| fail("created_at".to_owned()))?,
                },
            }
        }
        "interaction.queued" => Event::InteractionQueued {
            id: interaction_id()?,
            target: target(data.get("target"))?,
            at,
        },
        "interaction.offered" => {
            let id = data
                .get("interaction")
                .and_then(|i| i.get("id"))
                .and_then(Value::as_str)
                .ok_or_else(|| fail("interaction.id is missing".to_owned()))?;
            Event::InteractionOffered {
                id: InteractionId::parse(id).map_err(|e| fail(e.to_string()))?,
                agent: agent_id("agent")?,
                target: target(data.get("offer_target"))?,
                expires_at: parse_time(&text("offer_expires_at")?)
                    .ok_or_else(|| fail("offer_expires_at".to_owned()))?,
                at,
            }
        }
        "interaction.offer_revoked" => Event::OfferRevoked {
            id: interaction_id()?,
            agent: agent_id("agent")?,
            reason: match optional_text("cause").as_deref() {
                Some("connection_lost") => OfferEndReason::ConnectionLost,
                _ => OfferEndReason::parse(&text("reason")?)
                    .ok_or_else(|| fail("reason".to_owned()))?,
            },
            at,
        },
        "interaction.accepted" => Event::InteractionAccepted {
            id: interaction_id()?,
            agent: agent_id("agent")?,
            at,
        },
        "interaction.rejected" => Event::InteractionRejected {
            id: interaction_id()?,
            agent: agent_id("agent")?,
            at,
        },
        "interaction.ended" => Event::InteractionEnded {
            id: interaction_id()?,
            agent: agent_id("agent")?,
            at,
        },
        "interaction.transferred" => Event::InteractionTransferred {
            id: interaction_id()?,
            from: agent_id("from")?,
            target: target(data.get("target"))?,
            fallback: optional_target(data.get("fallback"))?,
            note: optional_text("note"),
            at,
        },
        "interaction.abandoned" => Event::InteractionAbandoned {
            id: interaction_id()?,
            at,
        },
        "interaction.unanswered" => Event::InteractionUnanswered {
            id: interaction_id()?,
            at,
        },
        "interaction.completed" => Event::InteractionCompleted {
            id: interaction_id()?,
            agent: agent_id("agent")?,
            disposition: optional_text("disposition"),
            notes: optional_text("notes"),
            at,
        },
        other => return Err(fail(format!("unknown event type {other}"))),
    };
    Ok(event)
}
