//! Events to the wire: the CloudEvent of each core event, written as the log keeps it and
//! streams send it.

use handoff_core::{
    AgentId, AgentProfile, Enrichment, Event, Interaction, InteractionSpec, OfferEndReason,
    Presence, Strategy, Target,
};
use handoff_protocol as wire;
use serde_json::{json, Value};

use super::queues::queue_view;
use super::targets::{target_json, target_to_wire};
use super::text::format_time;
use super::views::{capacity_to_wire, presence_view, raw_context, skills_json, EnrichmentMap};

fn profile_json(profile: &AgentProfile) -> Value {
    json!({
        "id": profile.id.as_str(),
        "name": profile.name,
        "address": profile.address,
        "skills": skills_json(&profile.skills),
        "capacity": capacity_to_wire(&profile.capacity),
    })
}

fn presence_json(presence: &Presence) -> Value {
    serde_json::to_value(presence_view(presence)).unwrap_or(Value::Null)
}

/// The CloudEvent for `event` at `seq`. For an offer, `offered` is the interaction the pop
/// shows and `pop_template` the `pop_url` template that applies to it (see
/// [`crate::pop_url::template_for`]); it is rendered here, once, so the log keeps the result.
pub fn cloud_event(
    seq: u64,
    event: &Event,
    offered: Option<&Interaction>,
    pop_template: Option<&str>,
) -> wire::CloudEvent {
    wire::CloudEvent {
        specversion: "1.0".to_owned(),
        id: event_id(seq),
        source: "handoff".to_owned(),
        event_type: event.type_name().to_owned(),
        time: format_time(event.time()),
        subject: event.subject().to_owned(),
        seq,
        data: serde_json::to_value(event_data(event, offered, pop_template)).unwrap_or(Value::Null),
    }
}

/// `serde_json::to_string(&cloud_event(..))`, the text the log keeps and streams send, written
/// straight from the event: for the events every call makes (created, queued, offered,
/// accepted, ended, completed) no `Value` tree is built and dropped, and the caller's context,
/// kept as JSON text, is copied as it is instead of parsed and written again. Those two were
/// the engine's largest cost after routing.
pub fn cloud_event_payload(
    seq: u64,
    event: &Event,
    offered: Option<&Interaction>,
    pop_template: Option<&str>,
) -> String {
    let envelope = DirectCloudEvent {
        specversion: "1.0",
        id: EventId(seq),
        source: "handoff",
        event_type: event.type_name(),
        time: format_time(event.time()),
        subject: event.subject(),
        seq,
        data: event_data(event, offered, pop_template),
    };
    serde_json::to_string(&envelope).unwrap_or_default()
}

/// The offer's CRM page from `template`, or why not (logged: the pop goes out without it).
fn render_pop_url(
    template: &str,
    offered: &Interaction,
    agent: &AgentId,
    target: &Target,
) -> Result<String, String> {
    crate::pop_url::render(template, &offered.spec, offered.context(), agent, target).map_err(|reason| {
        tracing::warn!(interaction = %offered.spec.id.as_str(), %reason, "pop_url not rendered");
        reason
    })
}

/// `wire::CloudEvent`, borrowed, in the same field order.
#[derive(serde::Serialize)]
struct DirectCloudEvent<'a> {
    specversion: &'static str,
    id: EventId,
    source: &'static str,
    #[serde(rename = "type")]
    event_type: &'a str,
    time: String,
    subject: &'a str,
    seq: u64,
    data: DirectData<'a>,
}

/// An event's CloudEvents `id` (and its webhooks' `webhook-id`).
pub fn event_id(seq: u64) -> String {
    EventId(seq).to_string()
}

/// `handoff-<seq>`, written without a `String` of its own.
struct EventId(u64);

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "handoff-{}", self.0)
    }
}

impl serde::Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// An event's `data`: the events of a call borrowed from it, the rarer ones as a tree.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum DirectData<'a> {
    Created {
        interaction: DirectSpec<'a>,
    },
    Queued {
        interaction_id: &'a str,
        target: wire::Target,
        requeued: bool,
    },
    Offered {
        interaction: DirectSpec<'a>,
        agent: &'a str,
        offer_target: wire::Target,
        offer_expires_at: String,
        routing: DirectRouting<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pop_url: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pop_url_error: Option<String>,
    },
    AgentAction {
        interaction_id: &'a str,
        agent: &'a str,
    },
    Ended {
        interaction_id: &'a str,
        agent: &'a str,
        wrap_up_until: Option<String>,
    },
    Completed {
        interaction_id: &'a str,
        agent: &'a str,
        disposition: &'a Option<String>,
        notes: &'a Option<String>,
        wrap_up_expired: bool,
    },
    Tree(Value),
}

/// The interaction as a screen pop and `interaction.created` carry it; an offer adds its
/// `transfer_note` last.
#[derive(serde::Serialize)]
struct DirectSpec<'a> {
    id: &'a str,
    caller: &'a Option<String>,
    dialed: &'a Option<String>,
    channel: &'a str,
    call_id: &'a Option<String>,
    context: &'a serde_json::value::RawValue,
    target: wire::Target,
    fallback: Option<wire::Target>,
    priority: i32,
    /// The request's own wait for an agent target; absent when it named none.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_wait_s: Option<u64>,
    created_at: String,
    created_by: &'a Option<String>,
    /// What CRM lookups found, by connector; absent when nothing was found (yet).
    #[serde(skip_serializing_if = "EnrichmentMap::is_empty")]
    enrichment: EnrichmentMap<'a>,
    /// In an offer: the context's version, for a desktop's `If-Match` when it updates it.
    #[serde(skip_serializing_if = "Option::is_none")]
    context_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transfer_note: Option<&'a Option<String>>,
}

impl<'a> DirectSpec<'a> {
    /// The interaction as created.
    fn created(spec: &'a InteractionSpec) -> Self {
        DirectSpec::new(spec, &spec.context, &spec.enrichment, None, None)
    }

    /// The interaction now, as a screen pop shows it: the context as updated, everything a
    /// CRM found so far, and the last transfer's note.
    fn offered(interaction: &'a Interaction) -> Self {
        DirectSpec::new(
            &interaction.spec,
            interaction.context(),
            &interaction.enrichment,
            Some(interaction.context_version),
            Some(&interaction.last_transfer_note),
        )
    }

    fn new(
        spec: &'a InteractionSpec,
        context: &'a str,
        enrichment: &'a [Enrichment],
        context_version: Option<u64>,
        transfer_note: Option<&'a Option<String>>,
    ) -> Self {
        DirectSpec {
            id: spec.id.as_str(),
            caller: &spec.caller,
            dialed: &spec.dialed,
            channel: &spec.channel,
            call_id: &spec.call_id,
            context: raw_context(context),
            target: target_to_wire(&spec.target),
            fallback: spec.fallback.as_ref().map(target_to_wire),
            priority: spec.priority,
            max_wait_s: spec.max_wait_s,
            created_at: format_time(spec.created_at),
            created_by: &spec.created_by,
            enrichment: EnrichmentMap(enrichment),
            context_version,
            transfer_note,
        }
    }
}

/// Why the agent was chosen.
#[derive(serde::Serialize)]
struct DirectRouting<'a> {
    strategy: &'static str,
    eligible: u32,
    reason: &'a str,
}

/// The event's `data`. For an offer, `offered` is the interaction the pop shows and
/// `pop_template` the page template that applies (see `cloud_event`).
fn event_data<'a>(
    event: &'a Event,
    offered: Option<&'a Interaction>,
    pop_template: Option<&str>,
) -> DirectData<'a> {
    match event {
        Event::AgentCreated { profile, presence } => DirectData::Tree(
            json!({"agent": profile_json(profile), "presence": presence_json(presence)}),
        ),
        Event::AgentUpdated { profile, .. } => {
            DirectData::Tree(json!({"agent": profile_json(profile)}))
        }
        Event::AgentDeleted { agent, .. } => DirectData::Tree(json!({"agent": agent.as_str()})),
        Event::PresenceChanged { agent, presence } => {
            DirectData::Tree(json!({"agent": agent.as_str(), "presence": presence_json(presence)}))
        }
        Event::InteractionCreated { spec } => DirectData::Created {
            interaction: DirectSpec::created(spec),
        },
        // No position: it changes as others leave the line, and the log keeps only facts.
        Event::InteractionQueued {
            id,
            target,
            requeued,
            ..
        } => DirectData::Queued {
            interaction_id: id.as_str(),
            target: target_to_wire(target),
            requeued: *requeued,
        },
        Event::InteractionOffered {
            id,
            agent,
            target,
            expires_at,
            routing,
            ..
        } => {
            let routing = DirectRouting {
                strategy: routing.strategy.map_or("direct", Strategy::as_str),
                eligible: routing.eligible,
                reason: &routing.reason,
            };
            let Some(offered) = offered else {
                // Without its interaction the pop shows only the id.
                return DirectData::Tree(json!({
                    "interaction": {"id": id.as_str()},
                    "agent": agent.as_str(),
                    "offer_target": target_json(target),
                    "offer_expires_at": format_time(*expires_at),
                    "routing": routing,
                }));
            };
            let (pop_url, pop_url_error) =
                match pop_template.map(|t| render_pop_url(t, offered, agent, target)) {
                    Some(Ok(url)) => (Some(url), None),
                    Some(Err(reason)) => (None, Some(reason)),
                    None => (None, None),
                };
            DirectData::Offered {
                interaction: DirectSpec::offered(offered),
                agent: agent.as_str(),
                offer_target: target_to_wire(target),
                offer_expires_at: format_time(*expires_at),
                routing,
                pop_url,
                pop_url_error,
            }
        }
        Event::InteractionAccepted { id, agent, .. }
        | Event::InteractionRejected { id, agent, .. } => DirectData::AgentAction {
            interaction_id: id.as_str(),
            agent: agent.as_str(),
        },
        Event::InteractionEnded {
            id,
            agent,
            wrap_up_until,
            ..
        } => DirectData::Ended {
            interaction_id: id.as_str(),
            agent: agent.as_str(),
            wrap_up_until: wrap_up_until.map(format_time),
        },
        Event::InteractionCompleted {
            id,
            agent,
            disposition,
            notes,
            wrap_up_expired,
            ..
        } => DirectData::Completed {
            interaction_id: id.as_str(),
            agent: agent.as_str(),
            disposition,
            notes,
            wrap_up_expired: *wrap_up_expired,
        },
        Event::OfferRevoked {
            id, agent, reason, ..
        } => {
            // The contract revokes a lost connection's offers "as timed out": that is the
            // reason on the wire, and `cause` says why the time ran out.
            let (wire_reason, cause) = match reason {
                OfferEndReason::ConnectionLost => ("timed_out", Some("connection_lost")),
                other => (other.as_str(), None),
            };
            DirectData::Tree(json!({
                "interaction_id": id.as_str(), "agent": agent.as_str(),
                "reason": wire_reason, "cause": cause,
            }))
        }
        Event::InteractionTransferred {
            id,
            from,
            target,
            fallback,
            note,
            ..
        } => DirectData::Tree(json!({
            "interaction_id": id.as_str(),
            "from": from.as_str(),
            "target": target_json(target),
            "fallback": fallback.as_ref().map(target_json),
            "note": note,
        })),
        Event::InteractionAbandoned { id, .. }
        | Event::InteractionUnanswered { id, .. }
        | Event::InteractionTimedOut { id, .. } => {
            DirectData::Tree(json!({"interaction_id": id.as_str()}))
        }
        Event::ContextUpdated {
            id,
            context,
            patch,
            version,
            by,
            ..
        } => DirectData::Tree(json!({
            "interaction_id": id.as_str(),
            "context": raw_context(context),
            "context_version": version,
            "patch": raw_context(patch),
            "by": by,
        })),
        Event::InteractionEnriched { id, enrichment, .. } => DirectData::Tree(json!({
            "interaction_id": id.as_str(),
            "connector": enrichment.connector,
            "fields": raw_context(&enrichment.fields),
        })),
        Event::EnrichmentFailed {
            id,
            connector,
            reason,
            ..
        } => DirectData::Tree(json!({
            "interaction_id": id.as_str(),
            "connector": connector,
            "reason": reason,
        })),
        Event::QueueUpserted { config, .. } => {
            DirectData::Tree(json!({"queue": queue_view(config)}))
        }
        Event::QueueDeleted { name, .. } => DirectData::Tree(json!({"queue": name.as_str()})),
    }
}
