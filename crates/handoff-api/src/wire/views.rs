//! Views: agents, their presence and capacity, skills and interactions as the API shows them.

use std::collections::BTreeMap;

use handoff_core::{
    Agent, Capacity, Enrichment, Interaction, InteractionState, Presence, SkillLevel,
};
use handoff_protocol as wire;

use super::targets::target_to_wire;
use super::text::{format_time, longer_than};
use crate::error::ApiError;

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
        capacity: capacity_to_wire(&agent.profile.capacity),
        presence: presence_view(&agent.presence),
        activity: activity.as_str().to_owned(),
        connected,
        acked_seq: agent.acked_seq.get(),
    }
}

pub(super) fn skills_json(skills: &BTreeMap<String, SkillLevel>) -> BTreeMap<String, i64> {
    skills
        .iter()
        .map(|(name, level)| (name.clone(), i64::from(level.get())))
        .collect()
}

pub fn capacity_to_wire(capacity: &Capacity) -> wire::Capacity {
    match capacity {
        Capacity::Total(total) => wire::Capacity::Total(i64::from(*total)),
        Capacity::PerChannel(per_channel) => wire::Capacity::PerChannel(
            per_channel
                .iter()
                .map(|(channel, limit)| (channel.clone(), i64::from(*limit)))
                .collect(),
        ),
    }
}

/// The largest capacity, in total or on one channel.
pub const MAX_CAPACITY: i64 = handoff_protocol::MAX_CAPACITY;

/// Reads a capacity. `strict` applies the API's rules (1..=1000, channel names of 1 to 64
/// characters, at least one channel); without it, only what the core can represent is
/// required, so that the log is read back whatever rules were in force when it was written.
pub fn capacity_from_wire(capacity: &wire::Capacity, strict: bool) -> Result<Capacity, ApiError> {
    let invalid = |field: String, message: String| {
        ApiError::unprocessable("invalid_capacity", format!("{field}: {message}")).with_field(field)
    };
    let (low, high) = if strict {
        (1, MAX_CAPACITY)
    } else {
        (0, i64::from(u32::MAX))
    };
    let limit = |field: String, value: i64| -> Result<u32, ApiError> {
        if (low..=high).contains(&value) {
            Ok(value as u32)
        } else {
            Err(invalid(
                field,
                format!("must be an integer from {low} to {high}"),
            ))
        }
    };
    match capacity {
        wire::Capacity::Total(total) => limit("capacity".to_owned(), *total).map(Capacity::Total),
        wire::Capacity::PerChannel(per_channel) => {
            if strict && per_channel.is_empty() {
                return Err(invalid(
                    "capacity".to_owned(),
                    "a map per channel must name at least one channel".to_owned(),
                ));
            }
            let mut limits = BTreeMap::new();
            for (channel, value) in per_channel {
                if strict
                    && (channel.is_empty() || longer_than(channel, wire::MAX_SKILL_NAME_CHARS))
                {
                    return Err(invalid(
                        "capacity".to_owned(),
                        "a channel name must be 1 to 64 characters".to_owned(),
                    ));
                }
                limits.insert(
                    channel.clone(),
                    limit(format!("capacity.{channel}"), *value)?,
                );
            }
            Ok(Capacity::PerChannel(limits))
        }
    }
}

/// Reads skill levels; `field` is the JSON path of the map, for errors.
pub fn skills_from_wire(
    skills: &BTreeMap<String, i64>,
    field: &str,
) -> Result<BTreeMap<String, SkillLevel>, ApiError> {
    let mut levels = BTreeMap::new();
    for (skill, level) in skills {
        if skill.is_empty() || longer_than(skill, wire::MAX_SKILL_NAME_CHARS) {
            return Err(ApiError::unprocessable(
                "invalid_skill",
                format!("{field}: a skill name must be 1 to 64 characters"),
            )
            .with_field(field));
        }
        let level = SkillLevel::parse(*level).map_err(|error| {
            ApiError::unprocessable("invalid_skill_level", format!("{field}.{skill}: {error}"))
                .with_field(format!("{field}.{skill}"))
        })?;
        levels.insert(skill.clone(), level);
    }
    Ok(levels)
}

/// The interaction as the API shows it. `agent_address` resolves the current agent's address;
/// `position` and `estimated_wait_s` come from the line it waits in, if any.
pub fn interaction_view(
    interaction: &Interaction,
    position: Option<usize>,
    estimated_wait_s: Option<u64>,
    agent_address: Option<String>,
    waiting_for_agent: Option<wire::AgentWaitView>,
) -> wire::InteractionView {
    let spec = &interaction.spec;
    let queued = interaction.state == InteractionState::Queued;
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
        estimated_wait_s,
        max_wait_until: queued
            .then_some(interaction.max_wait_at)
            .flatten()
            .map(format_time),
        waiting_for_agent,
        context_version: interaction.context_version,
        enrichment: (!interaction.enrichment.is_empty()).then(|| {
            wire::RawJson::from_text(
                serde_json::to_string(&EnrichmentMap(&interaction.enrichment)).unwrap_or_default(),
            )
            .unwrap_or_else(|_| wire::RawJson::empty_object())
        }),
        context: wire::RawJson::from_text(interaction.context().to_owned())
            .unwrap_or_else(|_| wire::RawJson::empty_object()),
        caller: spec.caller.clone(),
        dialed: spec.dialed.clone(),
        channel: spec.channel.clone(),
        call_id: spec.call_id.clone(),
        priority: spec.priority,
        created_at: format_time(spec.created_at),
        updated_at: format_time(interaction.updated_at),
        offer_expires_at: interaction.offer_expires_at.map(format_time),
        wrap_up_until: (interaction.state == InteractionState::WrapUp)
            .then_some(interaction.wrap_up_until)
            .flatten()
            .map(format_time),
        transfer_note: interaction.last_transfer_note.clone(),
        disposition: interaction.disposition.clone(),
        notes: interaction.notes.clone(),
        history: None,
    }
}

/// What CRM connectors found, written as `{"connector": {fields...}, ...}` with each
/// connector's fields copied as stored.
pub(super) struct EnrichmentMap<'a>(pub(super) &'a [Enrichment]);

impl EnrichmentMap<'_> {
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl serde::Serialize for EnrichmentMap<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for found in self.0 {
            map.serialize_entry(&found.connector, raw_context(&found.fields))?;
        }
        map.end()
    }
}

/// The stored context as JSON to embed, `{}` when it is not JSON.
pub(super) fn raw_context(context: &str) -> &serde_json::value::RawValue {
    serde_json::from_str(context)
        .unwrap_or_else(|_| serde_json::from_str("{}").expect("an empty object is JSON"))
}
