//! Translation between the core's types and the wire: CloudEvents (both ways, since the log
//! stores events in their wire form and recovery reads them back), views, targets and times.

use std::collections::BTreeMap;
use std::sync::Arc;

use handoff_core::{
    Agent, AgentId, AgentProfile, Capacity, Enrichment, EscalationStep, Event, Interaction,
    InteractionId, InteractionSpec, InteractionState, OfferEndReason, Presence, PresenceSource,
    PresenceStatus, QueueConfig, QueueConfigError, QueueName, Routing, SkillLevel, Strategy,
    Target, Timestamp,
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

/// Whether `text` is over `max` characters, as JSON Schema's `maxLength` counts them. Text of
/// at most `max` bytes is never counted: the usual case costs one comparison.
pub fn longer_than(text: &str, max: usize) -> bool {
    text.len() > max && text.chars().count() > max
}

pub fn now() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_millis(since_epoch.as_millis() as i64)
}

/// JSON with object keys sorted at every depth: equal parsed JSON gives equal text. Written
/// out as it walks the value, without a sorted copy of it (every create with an
/// `Idempotency-Key` hashes its body this way).
pub fn canonical_json(value: &Value) -> String {
    fn write(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                out.push(b'{');
                for (index, (key, item)) in entries.into_iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    write_scalar(key, out);
                    out.push(b':');
                    write(item, out);
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    write(item, out);
                }
                out.push(b']');
            }
            scalar => write_scalar(scalar, out),
        }
    }
    fn write_scalar(scalar: &(impl serde::Serialize + ?Sized), out: &mut Vec<u8>) {
        // Writing a string, number, bool or null into memory cannot fail.
        serde_json::to_writer(&mut *out, scalar).expect("a JSON scalar serializes");
    }
    let mut out = Vec::with_capacity(256);
    write(value, &mut out);
    String::from_utf8(out).expect("serde_json writes UTF-8")
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
        capacity: capacity_to_wire(&agent.profile.capacity),
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

// ----- queues -----------------------------------------------------------------------------

/// The longest duration a queue setting takes (30 days): far beyond any sensible wait, and
/// small enough that no deadline computed from it can overflow.
pub const MAX_QUEUE_SECONDS: i64 = 30 * 24 * 3600;
/// Most escalation steps a queue may have.
pub const MAX_STEPS: usize = 32;

pub fn strategy_to_wire(strategy: Strategy) -> wire::Strategy {
    match strategy {
        Strategy::LongestIdle => wire::Strategy::LongestIdle,
        Strategy::RoundRobin => wire::Strategy::RoundRobin,
        Strategy::LeastOccupied => wire::Strategy::LeastOccupied,
        Strategy::MostSkilled => wire::Strategy::MostSkilled,
        Strategy::RingAll => wire::Strategy::RingAll,
    }
}

pub fn strategy_from_wire(strategy: wire::Strategy) -> Strategy {
    match strategy {
        wire::Strategy::LongestIdle => Strategy::LongestIdle,
        wire::Strategy::RoundRobin => Strategy::RoundRobin,
        wire::Strategy::LeastOccupied => Strategy::LeastOccupied,
        wire::Strategy::MostSkilled => Strategy::MostSkilled,
        wire::Strategy::RingAll => Strategy::RingAll,
    }
}

pub fn queue_view(config: &QueueConfig) -> wire::QueueView {
    let seconds = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
    wire::QueueView {
        name: config.name.to_string(),
        skills: skills_json(&config.skills),
        strategy: strategy_to_wire(config.strategy),
        offer_timeout_s: seconds(config.offer_timeout_s),
        wrap_up_s: seconds(config.wrap_up_s),
        max_wait_s: config.max_wait_s.map(seconds),
        overflow: config.overflow.as_ref().map(|queue| wire::QueueRef {
            queue: queue.to_string(),
        }),
        service_level_s: seconds(config.service_level_s),
        steps: config
            .steps
            .iter()
            .map(|step| wire::EscalationStep {
                after_s: seconds(step.after_s),
                skills: skills_json(&step.skills),
            })
            .collect(),
        pop_url: config.pop_url.clone(),
    }
}

/// Builds the queue `name` from a PUT body (or a `[[queues]]` table, or the log), every absent
/// field at its default. `strict` applies the API's rules (bounds, the name in the body, the
/// core's `validate`); without it only what the core can represent is required, so the log
/// reads back whatever rules were in force when it was written. Errors name the JSON path.
pub fn queue_config_from_wire(
    name: QueueName,
    body: &wire::PutQueueRequest,
    strict: bool,
) -> Result<QueueConfig, ApiError> {
    if strict {
        if let Some(named) = body.name.as_deref().filter(|named| *named != name.as_str()) {
            return Err(ApiError::unprocessable(
                "name_mismatch",
                format!("name: the body names {named:?}, the path {name:?}"),
            )
            .with_field("name"));
        }
    }
    let mut config = QueueConfig::new(name);
    let seconds = |field: &str, value: i64, low: i64| -> Result<u64, ApiError> {
        let high = if strict { MAX_QUEUE_SECONDS } else { i64::MAX };
        let low = if strict { low } else { 0 };
        if (low..=high).contains(&value) {
            Ok(value as u64)
        } else {
            Err(ApiError::unprocessable(
                "invalid_field",
                format!("{field}: must be an integer from {low} to {high}"),
            )
            .with_field(field))
        }
    };
    config.skills = skills_from_wire(&body.skills, "skills")?;
    if let Some(strategy) = body.strategy {
        config.strategy = strategy_from_wire(strategy);
    }
    if let Some(value) = body.offer_timeout_s {
        config.offer_timeout_s = seconds("offer_timeout_s", value, 1)?;
    }
    if let Some(value) = body.wrap_up_s {
        config.wrap_up_s = seconds("wrap_up_s", value, 0)?;
    }
    if let Some(value) = body.max_wait_s {
        config.max_wait_s = Some(seconds("max_wait_s", value, 1)?);
    }
    if let Some(value) = body.service_level_s {
        config.service_level_s = seconds("service_level_s", value, 0)?;
    }
    if let Some(overflow) = &body.overflow {
        config.overflow = Some(QueueName::parse(&overflow.queue).map_err(|error| {
            ApiError::unprocessable("invalid_id", format!("overflow.queue: {error}"))
                .with_field("overflow.queue")
        })?);
    }
    if strict && body.steps.len() > MAX_STEPS {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("steps: at most {MAX_STEPS} steps"),
        )
        .with_field("steps"));
    }
    for (index, step) in body.steps.iter().enumerate() {
        let field = format!("steps[{index}]");
        config.steps.push(EscalationStep {
            after_s: seconds(&format!("{field}.after_s"), step.after_s, 0)?,
            skills: skills_from_wire(&step.skills, &format!("{field}.skills"))?,
        });
    }
    if let Some(template) = &body.pop_url {
        // Only new templates are checked: one read back from the log is kept as it was, and
        // renders fail into `pop_url_error` if it no longer passes.
        if strict {
            crate::pop_url::check(template).map_err(|reason| {
                ApiError::unprocessable("invalid_pop_url", format!("pop_url: {reason}"))
                    .with_field("pop_url")
            })?;
        }
        config.pop_url = Some(template.clone());
    }
    if strict {
        config.validate().map_err(queue_config_error)?;
    }
    Ok(config)
}

/// A queue the core found inconsistent, as a 422 naming the field at fault.
pub fn queue_config_error(error: QueueConfigError) -> ApiError {
    let field = match &error {
        QueueConfigError::StepsOutOfOrder => "steps".to_owned(),
        QueueConfigError::StepTightens { index } => format!("steps[{index}].skills"),
        QueueConfigError::OfferTimeoutZero => "offer_timeout_s".to_owned(),
        QueueConfigError::OverflowToItself => "overflow.queue".to_owned(),
    };
    ApiError::unprocessable("invalid_queue", format!("{field}: {error}")).with_field(field)
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

// ----- events -----------------------------------------------------------------------------

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

/// What CRM connectors found, written as `{"connector": {fields...}, ...}` with each
/// connector's fields copied as stored.
struct EnrichmentMap<'a>(&'a [Enrichment]);

impl EnrichmentMap<'_> {
    fn is_empty(&self) -> bool {
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
fn raw_context(context: &str) -> &serde_json::value::RawValue {
    serde_json::from_str(context)
        .unwrap_or_else(|_| serde_json::from_str("{}").expect("an empty object is JSON"))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(1_780_000_000_000 + ms)
    }

    fn agent(id: &str) -> AgentId {
        AgentId::parse(id).unwrap()
    }

    fn queue(name: &str) -> QueueName {
        QueueName::parse(name).unwrap()
    }

    fn ix(id: &str) -> InteractionId {
        InteractionId::parse(id).unwrap()
    }

    fn skills(pairs: &[(&str, i64)]) -> BTreeMap<String, SkillLevel> {
        pairs
            .iter()
            .map(|(skill, level)| (skill.to_string(), SkillLevel::parse(*level).unwrap()))
            .collect()
    }

    /// Names the variant. The match is exhaustive: a variant added to the core does not compile
    /// until it is named here, and the test then asks for a sample of it.
    fn variant(event: &Event) -> &'static str {
        match event {
            Event::AgentCreated { .. } => "AgentCreated",
            Event::AgentUpdated { .. } => "AgentUpdated",
            Event::AgentDeleted { .. } => "AgentDeleted",
            Event::PresenceChanged { .. } => "PresenceChanged",
            Event::InteractionCreated { .. } => "InteractionCreated",
            Event::InteractionQueued { .. } => "InteractionQueued",
            Event::InteractionOffered { .. } => "InteractionOffered",
            Event::OfferRevoked { .. } => "OfferRevoked",
            Event::InteractionAccepted { .. } => "InteractionAccepted",
            Event::InteractionRejected { .. } => "InteractionRejected",
            Event::InteractionTransferred { .. } => "InteractionTransferred",
            Event::InteractionEnded { .. } => "InteractionEnded",
            Event::InteractionAbandoned { .. } => "InteractionAbandoned",
            Event::InteractionUnanswered { .. } => "InteractionUnanswered",
            Event::InteractionCompleted { .. } => "InteractionCompleted",
            Event::InteractionTimedOut { .. } => "InteractionTimedOut",
            Event::ContextUpdated { .. } => "ContextUpdated",
            Event::InteractionEnriched { .. } => "InteractionEnriched",
            Event::EnrichmentFailed { .. } => "EnrichmentFailed",
            Event::QueueUpserted { .. } => "QueueUpserted",
            Event::QueueDeleted { .. } => "QueueDeleted",
        }
    }

    const VARIANTS: [&str; 21] = [
        "AgentCreated",
        "AgentUpdated",
        "AgentDeleted",
        "PresenceChanged",
        "InteractionCreated",
        "InteractionQueued",
        "InteractionOffered",
        "OfferRevoked",
        "InteractionAccepted",
        "InteractionRejected",
        "InteractionTransferred",
        "InteractionEnded",
        "InteractionAbandoned",
        "InteractionUnanswered",
        "InteractionCompleted",
        "InteractionTimedOut",
        "ContextUpdated",
        "InteractionEnriched",
        "EnrichmentFailed",
        "QueueUpserted",
        "QueueDeleted",
    ];

    /// At least one sample of every variant, and one of every wire form a variant has.
    fn samples() -> Vec<Event> {
        let presence = Presence {
            status: PresenceStatus::Available,
            reason: Some("back from lunch".to_owned()),
            source: PresenceSource::Uc,
            since: t(1),
        };
        let alice = AgentProfile {
            id: agent("alice"),
            name: "Alice Smith".to_owned(),
            address: Some("sip:alice@pbx.example.com".to_owned()),
            skills: skills(&[("billing", 7), ("spanish", 0)]),
            capacity: Capacity::Total(2),
        };
        let bob = AgentProfile {
            id: agent("bob"),
            name: "Bob".to_owned(),
            address: None,
            skills: BTreeMap::new(),
            capacity: Capacity::PerChannel(BTreeMap::from([
                ("chat".to_owned(), 3),
                ("voice".to_owned(), 1),
            ])),
        };
        let mut billing = QueueConfig::new(queue("billing"));
        billing.skills = skills(&[("billing", 5), ("spanish", 3)]);
        billing.strategy = Strategy::MostSkilled;
        billing.offer_timeout_s = 15;
        billing.wrap_up_s = 0;
        billing.max_wait_s = Some(600);
        billing.overflow = Some(queue("general"));
        billing.service_level_s = 30;
        billing.pop_url = Some("https://crm.example.com/?phone={{ caller }}".to_owned());
        billing.steps = vec![
            EscalationStep {
                after_s: 30,
                skills: skills(&[("billing", 3)]),
            },
            EscalationStep {
                after_s: 90,
                skills: BTreeMap::new(),
            },
        ];
        let spec = InteractionSpec {
            id: ix("ix_1"),
            caller: Some("+15551234567".to_owned()),
            dialed: None,
            channel: "voice".to_owned(),
            call_id: Some("abc@pbx".to_owned()),
            context: r#"{"order":42,"vip":true,"nested":{"b":[1,2],"a":null}}"#.to_owned(),
            target: Target::Queue(queue("billing")),
            fallback: Some(Target::Agent(agent("bob"))),
            priority: -3,
            max_wait_s: Some(45),
            enrichment: vec![
                Enrichment {
                    connector: "zendesk".to_owned(),
                    fields: Arc::from(r#"{"user_id":361,"name":"Zoë"}"#),
                },
                Enrichment {
                    connector: "billing".to_owned(),
                    fields: Arc::from(r#"{"due":12.5}"#),
                },
            ],
            created_by: Some("key_ivr".to_owned()),
            created_at: t(2),
        };
        let mut events = vec![
            Event::AgentCreated {
                profile: alice.clone(),
                presence: presence.clone(),
            },
            Event::AgentUpdated {
                profile: bob,
                at: t(3),
            },
            Event::AgentDeleted {
                agent: agent("bob"),
                at: t(4),
            },
            Event::PresenceChanged {
                agent: agent("alice"),
                presence: Presence {
                    status: PresenceStatus::Away,
                    reason: None,
                    source: PresenceSource::System,
                    since: t(5),
                },
            },
            Event::InteractionCreated { spec: spec.into() },
            Event::InteractionQueued {
                id: ix("ix_1"),
                target: Target::Queue(queue("billing")),
                at: t(6),
                requeued: false,
            },
            Event::InteractionQueued {
                id: ix("ix_1"),
                target: Target::Queue(queue("billing")),
                at: t(7),
                requeued: true,
            },
            Event::InteractionOffered {
                id: ix("ix_1"),
                agent: agent("alice"),
                target: Target::Queue(queue("billing")),
                expires_at: t(20_008),
                at: t(8),
                routing: Routing {
                    strategy: Some(Strategy::MostSkilled),
                    eligible: 4,
                    reason: "highest summed skill level: 7 (billing 7, spanish 0), idle 3 s"
                        .to_owned(),
                },
            },
            Event::InteractionOffered {
                id: ix("ix_2"),
                agent: agent("alice"),
                target: Target::Agent(agent("alice")),
                expires_at: t(20_009),
                at: t(9),
                routing: Routing {
                    strategy: None,
                    eligible: 1,
                    reason: "addressed to this agent".to_owned(),
                },
            },
        ];
        for reason in OfferEndReason::ALL {
            events.push(Event::OfferRevoked {
                id: ix("ix_1"),
                agent: agent("alice"),
                reason,
                at: t(10),
            });
        }
        events.extend([
            Event::InteractionAccepted {
                id: ix("ix_1"),
                agent: agent("alice"),
                at: t(11),
            },
            Event::InteractionRejected {
                id: ix("ix_1"),
                agent: agent("alice"),
                at: t(12),
            },
            Event::InteractionTransferred {
                id: ix("ix_1"),
                from: agent("alice"),
                target: Target::Queue(queue("general")),
                fallback: Some(Target::Agent(agent("bob"))),
                note: Some("wants a refund".to_owned()),
                at: t(13),
            },
            Event::InteractionTransferred {
                id: ix("ix_1"),
                from: agent("alice"),
                target: Target::Agent(agent("bob")),
                fallback: None,
                note: None,
                at: t(14),
            },
            Event::InteractionEnded {
                id: ix("ix_1"),
                agent: agent("alice"),
                wrap_up_until: Some(t(45)),
                at: t(15),
            },
            Event::InteractionEnded {
                id: ix("ix_1"),
                agent: agent("alice"),
                wrap_up_until: None,
                at: t(15),
            },
            Event::InteractionAbandoned {
                id: ix("ix_1"),
                at: t(16),
            },
            Event::InteractionUnanswered {
                id: ix("ix_1"),
                at: t(17),
            },
            Event::InteractionCompleted {
                id: ix("ix_1"),
                agent: agent("alice"),
                disposition: Some("resolved".to_owned()),
                notes: Some("refund issued".to_owned()),
                at: t(18),
                wrap_up_expired: false,
            },
            Event::InteractionCompleted {
                id: ix("ix_1"),
                agent: agent("alice"),
                disposition: None,
                notes: None,
                at: t(19),
                wrap_up_expired: true,
            },
            Event::InteractionTimedOut {
                id: ix("ix_1"),
                at: t(20),
            },
            Event::QueueUpserted {
                config: QueueConfig::new(queue("general")),
                created: true,
                at: t(21),
            },
            Event::QueueUpserted {
                config: billing,
                created: false,
                at: t(22),
            },
            Event::QueueDeleted {
                name: queue("billing"),
                at: t(23),
            },
            Event::ContextUpdated {
                id: ix("ix_1"),
                context: Arc::from(r#"{"order":43,"vip":true,"note":"Zoë & co"}"#),
                patch: Arc::from(r#"{"order":43,"nested":null,"note":"Zoë & co"}"#),
                version: 2,
                by: Some("key_ivr".to_owned()),
                at: t(26),
            },
            Event::ContextUpdated {
                id: ix("ix_1"),
                context: Arc::from("{}"),
                patch: Arc::from(r#"{"order":null}"#),
                version: 3,
                by: None,
                at: t(27),
            },
            Event::InteractionEnriched {
                id: ix("ix_1"),
                enrichment: Enrichment {
                    connector: "crm".to_owned(),
                    fields: Arc::from(r#"{"name":"Zoë","tier":"gold","open_tickets":[1,2]}"#),
                },
                at: t(28),
            },
            Event::EnrichmentFailed {
                id: ix("ix_1"),
                connector: "crm".to_owned(),
                reason: "HTTP 503 from crm.example.com".to_owned(),
                at: t(29),
            },
        ]);
        for strategy in Strategy::ALL {
            let mut config = QueueConfig::new(queue("sales"));
            config.strategy = strategy;
            events.push(Event::QueueUpserted {
                config,
                created: true,
                at: t(24),
            });
            events.push(Event::InteractionOffered {
                id: ix("ix_3"),
                agent: agent("alice"),
                target: Target::Queue(queue("sales")),
                expires_at: t(30_000),
                at: t(25),
                routing: Routing {
                    strategy: Some(strategy),
                    eligible: 2,
                    reason: format!("chosen by {}", strategy.as_str()),
                },
            });
        }
        events
    }

    #[test]
    fn every_core_event_round_trips_through_its_cloud_event_text() {
        let events = samples();
        let covered: BTreeSet<&str> = events.iter().map(variant).collect();
        assert_eq!(covered, BTreeSet::from(VARIANTS), "a variant has no sample");
        for (index, event) in events.iter().enumerate() {
            let seq = index as u64 + 1;
            let cloud = cloud_event(seq, event, None, None);
            assert_eq!(cloud.event_type, event.type_name());
            assert_eq!(cloud.subject, event.subject());
            let text = serde_json::to_string(&cloud).unwrap();
            let decoded =
                decode_event(seq, &text).unwrap_or_else(|error| panic!("{error}\n{text}"));
            assert_eq!(&decoded, event, "{text}");
        }
    }

    /// Keys sorted at every depth, compact, scalars as serde_json writes them: the same text as
    /// a sorted copy serialized (what it was before), whatever the key order given.
    #[test]
    fn canonical_json_sorts_keys_at_every_depth_and_writes_the_rest_as_serde_json_does() {
        fn sorted_copy(value: &Value) -> Value {
            match value {
                Value::Object(map) => {
                    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                    Value::Object(
                        entries
                            .into_iter()
                            .map(|(k, v)| (k.clone(), sorted_copy(v)))
                            .collect(),
                    )
                }
                Value::Array(items) => Value::Array(items.iter().map(sorted_copy).collect()),
                other => other.clone(),
            }
        }
        let one: Value = serde_json::from_str(
            r#"{"z": [3, {"b": 1, "a": null}], "a": {"y": "Zoë \"q\"\n\u0001🚀", "x": -2.5e-9},
                "m": true, "é": 18446744073709551615, "": []}"#,
        )
        .unwrap();
        let other_order: Value = serde_json::from_str(
            r#"{"": [], "é": 18446744073709551615, "m": true,
                "a": {"x": -2.5e-9, "y": "Zoë \"q\"\n\u0001🚀"}, "z": [3, {"a": null, "b": 1}]}"#,
        )
        .unwrap();
        let text = canonical_json(&one);
        assert_eq!(
            text,
            r#"{"":[],"a":{"x":-2.5e-9,"y":"Zoë \"q\"\n\u0001🚀"},"m":true,"z":[3,{"a":null,"b":1}],"é":18446744073709551615}"#
        );
        assert_eq!(
            canonical_json(&other_order),
            text,
            "key order does not matter"
        );
        for value in [one, json!([]), json!("x"), json!(null), json!({"k": {}})] {
            assert_eq!(canonical_json(&value), sorted_copy(&value).to_string());
        }
    }

    /// The payload written directly is the very text `cloud_event` serializes to, for every
    /// event, with and without the offered interaction and a pop URL (rendered or refused),
    /// and with contexts of every JSON kind: nested, escaped, unicode, numbers, empty.
    #[test]
    fn the_payload_written_directly_is_the_text_of_the_cloud_event() {
        let events = samples();
        let contexts = [
            "{}".to_owned(),
            json!({"order": 42, "account": {"tier": "gold", "open": [1, 2.5, -3e-7, null, true]},
                   "note": "Zoë \"quoted\"\n\t\u{1F680} </script>", "big": u64::MAX, "neg": i64::MIN})
            .to_string(),
            "not json".to_owned(),
        ];
        let templates = [
            None,
            Some("https://crm.example.com/s?phone={{ caller }}&order={{ context.order }}"),
            Some("https://x.example/?{{ nope }}"),
        ];
        let mut compared = 0;
        for context in &contexts {
            let mut state = handoff_core::State::new(handoff_core::Settings::default());
            let mut with_context = events.clone();
            for event in &mut with_context {
                if let Event::InteractionCreated { spec } = event {
                    Arc::make_mut(spec).context = context.clone();
                }
                state.apply(event);
            }
            for (index, event) in with_context.iter().enumerate() {
                let seq = 1_000 + index as u64;
                let interaction = event.interaction_id().and_then(|id| state.interaction(id));
                for offered in [None, interaction] {
                    for template in templates {
                        let expected =
                            serde_json::to_string(&cloud_event(seq, event, offered, template))
                                .unwrap();
                        let direct = cloud_event_payload(seq, event, offered, template);
                        assert_eq!(direct, expected, "event {index} with context {context}");
                        compared += 1;
                    }
                }
            }
        }
        assert_eq!(
            compared,
            contexts.len() * events.len() * 2 * templates.len()
        );
        let offered_with_context = events
            .iter()
            .filter(|e| matches!(e, Event::InteractionOffered { .. }))
            .count();
        assert!(offered_with_context > 0, "the samples have offers");
    }

    #[test]
    fn new_fields_have_their_contract_names_on_the_wire() {
        let events = samples();
        let data = |index: usize| cloud_event(1, &events[index], None, None).data;
        assert_eq!(data(0)["agent"]["capacity"], json!(2));
        assert_eq!(data(1)["agent"]["capacity"], json!({"chat": 3, "voice": 1}));
        assert_eq!(data(5)["requeued"], json!(false));
        assert!(
            data(5).get("position").is_none(),
            "the log keeps no position"
        );
        assert_eq!(data(6)["requeued"], json!(true));
        assert_eq!(data(7)["routing"]["strategy"], "most_skilled");
        assert_eq!(data(7)["routing"]["eligible"], 4);
        assert_eq!(data(8)["routing"]["strategy"], "direct");
        let revoked: Vec<Value> = events
            .iter()
            .filter(|e| matches!(e, Event::OfferRevoked { .. }))
            .map(|e| cloud_event(1, e, None, None).data["reason"].clone())
            .collect();
        assert!(
            revoked.contains(&json!("answered_elsewhere")),
            "{revoked:?}"
        );
        let upserted = events
            .iter()
            .find(|e| matches!(e, Event::QueueUpserted { created: false, .. }))
            .unwrap();
        let cloud = cloud_event(1, upserted, None, None);
        assert_eq!(cloud.event_type, "queue.updated");
        assert_eq!(
            cloud.data["queue"],
            json!({
                "name": "billing",
                "skills": {"billing": 5, "spanish": 3},
                "strategy": "most_skilled",
                "offer_timeout_s": 15,
                "wrap_up_s": 0,
                "max_wait_s": 600,
                "overflow": {"queue": "general"},
                "service_level_s": 30,
                "steps": [
                    {"after_s": 30, "skills": {"billing": 3}},
                    {"after_s": 90, "skills": {}},
                ],
                "pop_url": "https://crm.example.com/?phone={{ caller }}",
            })
        );
    }

    #[test]
    fn an_offer_carries_its_rendered_pop_url_or_why_not_and_still_decodes() {
        let events = samples();
        let Event::InteractionCreated { spec } = &events[4] else {
            panic!("sample 4 is the creation");
        };
        let mut state = handoff_core::State::new(handoff_core::Settings::default());
        state.apply(&events[4]);
        let interaction = state.interaction(&spec.id).unwrap();
        let offered = &events[7];
        assert!(matches!(offered, Event::InteractionOffered { .. }));

        let template = "https://crm.example.com/s?phone={{ caller }}&order={{ context.order }}&q={{ queue }}&a={{ agent }}";
        let cloud = cloud_event(8, offered, Some(interaction), Some(template));
        assert_eq!(
            cloud.data["pop_url"],
            "https://crm.example.com/s?phone=%2B15551234567&order=42&q=billing&a=alice"
        );
        assert!(cloud.data.get("pop_url_error").is_none());
        let text = serde_json::to_string(&cloud).unwrap();
        assert_eq!(&decode_event(8, &text).unwrap(), offered, "{text}");

        let cloud = cloud_event(
            8,
            offered,
            Some(interaction),
            Some("https://x.example/?{{ nope }}"),
        );
        assert!(cloud.data.get("pop_url").is_none());
        let reason = cloud.data["pop_url_error"].as_str().unwrap();
        assert!(reason.contains("nope"), "{reason}");
        let text = serde_json::to_string(&cloud).unwrap();
        assert_eq!(&decode_event(8, &text).unwrap(), offered, "{text}");

        let cloud = cloud_event(8, offered, Some(interaction), None);
        assert!(cloud.data.get("pop_url").is_none() && cloud.data.get("pop_url_error").is_none());
    }

    #[test]
    fn events_logged_before_queues_still_decode() {
        let offered = json!({
            "specversion": "1.0", "id": "handoff-7", "source": "handoff",
            "type": "interaction.offered", "time": "2026-01-01T00:00:00.000Z",
            "subject": "ix_1", "seq": 7,
            "data": {
                "interaction": {"id": "ix_1"}, "agent": "alice",
                "offer_target": {"agent": "alice"},
                "offer_expires_at": "2026-01-01T00:00:20.000Z",
            },
        });
        let Event::InteractionOffered { routing, .. } =
            decode_event(7, &offered.to_string()).unwrap()
        else {
            panic!("not an offer");
        };
        assert_eq!(routing.strategy, None);
        let queued = json!({
            "specversion": "1.0", "id": "handoff-8", "source": "handoff",
            "type": "interaction.queued", "time": "2026-01-01T00:00:00.000Z",
            "subject": "ix_1", "seq": 8,
            "data": {"interaction_id": "ix_1", "target": {"agent": "alice"}},
        });
        assert!(matches!(
            decode_event(8, &queued.to_string()).unwrap(),
            Event::InteractionQueued {
                requeued: false,
                ..
            }
        ));
        let created = json!({
            "specversion": "1.0", "id": "handoff-1", "source": "handoff",
            "type": "agent.created", "time": "2026-01-01T00:00:00.000Z",
            "subject": "alice", "seq": 1,
            "data": {
                "agent": {"id": "alice", "name": "A", "address": null, "skills": {}, "capacity": 3},
                "presence": {"status": "offline", "reason": null, "source": "system",
                             "since": "2026-01-01T00:00:00.000Z"},
            },
        });
        let Event::AgentCreated { profile, .. } = decode_event(1, &created.to_string()).unwrap()
        else {
            panic!("not an agent");
        };
        assert_eq!(profile.capacity, Capacity::Total(3));
    }
}
