//! Events from the wire: the log's CloudEvent text read back into core events, as recovery,
//! followers and readers of an interaction's history read it.

use std::collections::BTreeMap;
use std::sync::Arc;

use handoff_core::{
    AgentId, AgentProfile, Enrichment, Event, InteractionId, InteractionSpec, OfferEndReason,
    Presence, PresenceSource, PresenceStatus, QueueName, Routing, Strategy, Target,
};
use handoff_protocol as wire;
use serde::Deserialize;
use serde_json::Value;

use super::queues::queue_config_from_wire;
use super::targets::target_from_wire;
use super::text::parse_time;
use super::views::{capacity_from_wire, skills_from_wire};

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
    capacity: wire::Capacity,
}

#[derive(Deserialize)]
struct RoutingData {
    strategy: String,
    eligible: u32,
    reason: String,
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
    #[serde(default)]
    max_wait_s: Option<u64>,
    created_at: String,
    created_by: Option<String>,
    #[serde(default)]
    enrichment: serde_json::Map<String, Value>,
}

/// `{"connector": {fields}}` as written by `EnrichmentMap`, back in its order.
fn enrichment_from_map(map: &serde_json::Map<String, Value>) -> Vec<Enrichment> {
    map.iter()
        .map(|(connector, fields)| Enrichment {
            connector: connector.clone(),
            fields: Arc::from(fields.to_string()),
        })
        .collect()
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
    // A JSON object the event carries (a context, a CRM's fields), back as its text.
    let json_text = |key: &str| -> Result<String, DecodeError> {
        match data.get(key) {
            Some(value @ Value::Object(_)) => Ok(value.to_string()),
            _ => Err(fail(format!("data.{key} is not an object"))),
        }
    };
    let flag = |key: &str| data.get(key).and_then(Value::as_bool).unwrap_or(false);
    let routing = || -> Result<Routing, DecodeError> {
        match data.get("routing") {
            // Offers logged before routing existed were all to an agent named directly.
            None | Some(Value::Null) => Ok(Routing {
                strategy: None,
                eligible: 1,
                reason: "addressed to this agent".to_owned(),
            }),
            Some(value) => {
                let routing: RoutingData = serde_json::from_value(value.clone())
                    .map_err(|e| fail(format!("routing: {e}")))?;
                let strategy = match routing.strategy.as_str() {
                    "direct" => None,
                    other => Some(
                        Strategy::parse(other)
                            .ok_or_else(|| fail(format!("routing.strategy {other}")))?,
                    ),
                };
                Ok(Routing {
                    strategy,
                    eligible: routing.eligible,
                    reason: routing.reason,
                })
            }
        }
    };
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
        Ok(AgentProfile {
            id: AgentId::parse(&data.id).map_err(|e| fail(e.to_string()))?,
            name: data.name,
            address: data.address,
            skills: skills_from_wire(&data.skills, "agent.skills").map_err(|e| fail(e.message))?,
            capacity: capacity_from_wire(&data.capacity, false).map_err(|e| fail(e.message))?,
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
                spec: Arc::new(InteractionSpec {
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
                    max_wait_s: spec.max_wait_s,
                    enrichment: enrichment_from_map(&spec.enrichment),
                    created_by: spec.created_by,
                    created_at: parse_time(&spec.created_at)
                        .ok_or_else(|| fail("created_at".to_owned()))?,
                }),
            }
        }
        "interaction.queued" => Event::InteractionQueued {
            id: interaction_id()?,
            target: target(data.get("target"))?,
            at,
            // Logs written before queues have no `requeued`: nothing was requeued then.
            requeued: flag("requeued"),
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
                routing: routing()?,
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
            wrap_up_until: match data.get("wrap_up_until") {
                None | Some(Value::Null) => None,
                Some(value) => Some(
                    value
                        .as_str()
                        .and_then(parse_time)
                        .ok_or_else(|| fail("wrap_up_until".to_owned()))?,
                ),
            },
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
            wrap_up_expired: flag("wrap_up_expired"),
        },
        "interaction.timed_out" => Event::InteractionTimedOut {
            id: interaction_id()?,
            at,
        },
        "interaction.context_updated" => Event::ContextUpdated {
            id: interaction_id()?,
            context: Arc::from(json_text("context")?),
            patch: Arc::from(json_text("patch")?),
            version: data
                .get("context_version")
                .and_then(Value::as_u64)
                .ok_or_else(|| fail("data.context_version is missing".to_owned()))?,
            by: optional_text("by"),
            at,
        },
        "interaction.enriched" => Event::InteractionEnriched {
            id: interaction_id()?,
            enrichment: Enrichment {
                connector: text("connector")?,
                fields: Arc::from(json_text("fields")?),
            },
            at,
        },
        "interaction.enrichment_failed" => Event::EnrichmentFailed {
            id: interaction_id()?,
            connector: text("connector")?,
            reason: text("reason")?,
            at,
        },
        kind @ ("queue.created" | "queue.updated") => {
            let view: wire::QueueView = serde_json::from_value(data["queue"].clone())
                .map_err(|e| fail(format!("queue: {e}")))?;
            let name =
                QueueName::parse(&view.name).map_err(|e| fail(format!("queue.name: {e}")))?;
            let body = wire::PutQueueRequest::from(view);
            Event::QueueUpserted {
                config: queue_config_from_wire(name, &body, false).map_err(|e| fail(e.message))?,
                created: kind == "queue.created",
                at,
            }
        }
        "queue.deleted" => Event::QueueDeleted {
            name: QueueName::parse(&text("queue")?).map_err(|e| fail(format!("queue: {e}")))?,
            at,
        },
        other => return Err(fail(format!("unknown event type {other}"))),
    };
    Ok(event)
}
