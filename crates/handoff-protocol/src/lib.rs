//! The v1 wire contract as serde types, shared by the server and by clients.
//!
//! Field names here are the contract's and are fixed; add fields, never rename them.
//! Everything is plain data: no validation beyond the JSON schema lives here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// The body of every 4xx and 5xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ErrorDetail {
    /// A stable snake_case code, e.g. `unknown_agent`.
    pub code: String,
    /// A human sentence.
    pub message: String,
    /// The JSON path of the offending field, or null.
    pub field: Option<String>,
}

/// Where an interaction goes: `{"agent": "alice"}` or `{"queue": "billing"}`.
///
/// Exactly one of the two keys; the id is `[A-Za-z0-9._-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    Agent(String),
    Queue(String),
}

/// The pattern of every id and name the server parses (`handoff_core` `AgentId`, `QueueName`,
/// `InteractionId`, webhook and connector names).
pub const ID_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Target {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let one = |key: &str| {
            ObjectBuilder::new()
                .property(
                    key,
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(ID_PATTERN)),
                )
                .required(key)
                .additional_properties(Some(
                    utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                ))
        };
        OneOfBuilder::new()
            .item(one("agent"))
            .item(one("queue"))
            .description(Some(
                "Where an interaction goes: `{\"agent\": \"alice\"}` or `{\"queue\": \"billing\"}`, exactly one of the two.",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl ToSchema for Target {}

/// The roles `POST /v1/keys` creates keys for (the schema of `CreateKeyRequest.role`).
#[cfg(feature = "openapi")]
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum KeyRole {
    Admin,
    Ivr,
    Supervisor,
    Presence,
}

/// The roles a sign-in link is made for besides an agent.
#[cfg(feature = "openapi")]
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum SigninRole {
    Supervisor,
    Admin,
}

// ----- keys ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// `admin`, `ivr`, `supervisor` or `presence`.
    #[cfg_attr(feature = "openapi", schema(value_type = KeyRole))]
    pub role: String,
    /// 1 to 200 characters, not blank.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 200, pattern = "\\S")
    )]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreatedKey {
    pub id: String,
    pub role: String,
    pub name: String,
    /// Shown once; only its SHA-256 is stored.
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreatedAgentToken {
    pub id: String,
    pub token: String,
}

/// A key as listed (never with its token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct KeyView {
    pub id: String,
    pub role: String,
    pub name: String,
    pub agent_id: Option<String>,
    pub created_at: String,
}

// ----- agents -------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PutAgentRequest {
    /// 1 to 200 characters once trimmed.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 200, pattern = "\\S")
    )]
    pub name: String,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = skill_levels))]
    pub skills: BTreeMap<String, i64>,
    /// A number (all channels together, default 1) or a map per channel, e.g.
    /// `{"voice": 1, "chat": 3}`.
    #[serde(default)]
    pub capacity: Option<Capacity>,
}

/// How many interactions an agent holds at once: a number for all channels together, or a
/// number per channel (a channel not named gets none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Capacity {
    Total(i64),
    PerChannel(BTreeMap<String, i64>),
}

/// The most interactions an agent may hold at once, in all or on one channel (what
/// `PUT /v1/agents/{agent_id}` accepts).
pub const MAX_CAPACITY: i64 = 1000;

/// Written by hand: the server takes 1 to [`MAX_CAPACITY`], as a number or per channel (at
/// least one channel, each named with 1 to 64 characters), and the document says so.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Capacity {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Type};
        let count = || {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(MAX_CAPACITY))
        };
        let per_channel = ObjectBuilder::new()
            .schema_type(Type::Object)
            .min_properties(Some(1))
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(MAX_SKILL_NAME_CHARS)),
            ))
            .additional_properties(Some(AdditionalProperties::RefOr(count().into())));
        OneOfBuilder::new()
            .item(count())
            .item(per_channel)
            .description(Some(
                "A number for all channels together, or a number per channel, e.g. `{\"voice\": 1, \"chat\": 3}`; each from 1 to 1000.",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl ToSchema for Capacity {}

/// The most characters in a skill's or a channel's name.
pub const MAX_SKILL_NAME_CHARS: usize = 64;
/// The highest skill level; the lowest is 0.
pub const MAX_SKILL_LEVEL: i64 = 10;

/// Skills as the server takes them: each name 1 to 64 characters, each level 0 to 10.
#[cfg(feature = "openapi")]
fn skill_levels() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(
            text()
                .min_length(Some(1))
                .max_length(Some(MAX_SKILL_NAME_CHARS)),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(MAX_SKILL_LEVEL))
                .into(),
        )))
        .description(Some(
            "Skill levels by skill name, e.g. `{\"billing\": 7}`: each name 1 to 64 characters, each level 0 to 10.",
        ))
        .build()
}

impl From<i64> for Capacity {
    fn from(total: i64) -> Capacity {
        Capacity::Total(total)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PresenceView {
    /// `available`, `away`, `busy` or `offline`.
    pub status: String,
    pub reason: Option<String>,
    /// `desktop`, `uc`, `admin` or `system`.
    pub source: String,
    pub since: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AgentView {
    pub id: String,
    pub name: String,
    pub address: Option<String>,
    #[cfg_attr(feature = "openapi", schema(schema_with = skill_levels))]
    pub skills: BTreeMap<String, i64>,
    /// As set: a number, or a map per channel.
    pub capacity: Capacity,
    pub presence: PresenceView,
    /// `idle`, `offered`, `engaged` or `wrap_up`.
    pub activity: String,
    pub connected: bool,
    pub acked_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Available,
    Away,
    Busy,
    Offline,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PutPresenceRequest {
    pub status: PresenceStatus,
    #[serde(default)]
    pub reason: Option<String>,
}

// ----- interactions -------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateInteractionRequest {
    /// At most 256 characters, as are `dialed`, `channel` and `call_id`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub caller: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub dialed: Option<String>,
    /// Default `voice`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub channel: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub call_id: Option<String>,
    /// Any JSON object, up to `max_context_bytes` serialized.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub context: Option<serde_json::Map<String, Value>>,
    pub target: Target,
    #[serde(default)]
    pub fallback: Option<Target>,
    #[serde(default)]
    pub priority: Option<i32>,
    /// For an agent target (or an agent fallback) who cannot take the call now: how long the
    /// caller waits for that agent before the fallback takes it, or it ends `timed_out`.
    /// 0..=2592000; default the server's `agent_max_wait_s` (60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 2592000))]
    pub max_wait_s: Option<i64>,
}

/// While a caller waits for an agent named as its target who cannot take it now: why, and
/// what happens when the wait ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AgentWaitView {
    pub agent: String,
    /// The agent's presence now: `available` (with no room: on other calls), `away`, `busy`
    /// or `offline`.
    pub presence: String,
    /// `idle`, `offered`, `engaged` or `wrap_up`.
    pub activity: String,
    /// Whether the agent has a desktop connected.
    pub connected: bool,
    /// When the caller stops waiting for this agent, RFC 3339 UTC.
    pub until: String,
    /// Where the caller goes then; null: the interaction ends `timed_out`.
    pub then: Option<Target>,
    /// The same in one sentence, for a log or an IVR prompt.
    pub message: String,
}

/// Where the IVR transfers the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AgentRef {
    pub id: String,
    pub address: Option<String>,
}

/// JSON kept as its text: written out as it came and read in without building a tree of it.
/// The caller's context is one: the server keeps it as text and only passes it on, and making
/// a tree of it for every answer was a visible share of a create. Equal when the texts are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    /// `text`, when it is JSON.
    pub fn from_text(text: String) -> Result<RawJson, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(RawJson)
    }

    /// `{}`.
    pub fn empty_object() -> RawJson {
        RawJson::from_text("{}".to_owned()).expect("an empty object is JSON")
    }

    /// The JSON text.
    pub fn text(&self) -> &str {
        self.0.get()
    }

    /// The JSON as a tree, to look inside it.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.text()).unwrap_or(Value::Null)
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
    }
}

/// The states of an interaction, as `state` names them in views and query filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum InteractionState {
    Queued,
    Offered,
    Accepted,
    WrapUp,
    Completed,
    Abandoned,
    Unanswered,
    TimedOut,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct InteractionView {
    pub id: String,
    /// `queued`, `offered`, `accepted`, `wrap_up`, `completed`, `abandoned`, `unanswered`, `timed_out`.
    pub state: String,
    pub target: Target,
    pub fallback: Option<Target>,
    pub agent: Option<AgentRef>,
    /// 1-based place among the callers waiting for the same target and channel; null unless queued.
    pub position: Option<u64>,
    /// While queued in a queue: a rough wait, the queue's average speed of answer today times
    /// `position`; null without a caller answered there today.
    #[serde(default)]
    pub estimated_wait_s: Option<u64>,
    /// While queued: when the caller stops waiting (a queue's or an agent target's
    /// `max_wait_s`); null without a limit.
    #[serde(default)]
    pub max_wait_until: Option<String>,
    /// While queued for an agent named as the target who cannot take the call now: who,
    /// why and until when. Null otherwise (the 201 of a call whose agent is there is `offered`).
    #[serde(default)]
    pub waiting_for_agent: Option<AgentWaitView>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub context: RawJson,
    /// 1 as created, one more with each `PATCH .../context`; the context's `ETag` is `"N"`.
    #[serde(default = "first_context_version")]
    pub context_version: u64,
    /// What CRM lookups found, by connector name: `{"crm": {"name": ...}}`. Absent when no
    /// connector found anything (yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub enrichment: Option<RawJson>,
    pub caller: Option<String>,
    pub dialed: Option<String>,
    pub channel: String,
    pub call_id: Option<String>,
    pub priority: i32,
    pub created_at: String,
    pub updated_at: String,
    pub offer_expires_at: Option<String>,
    /// In `wrap_up` on a queue with a wrap-up timer: when it completes by itself.
    #[serde(default)]
    pub wrap_up_until: Option<String>,
    pub transfer_note: Option<String>,
    pub disposition: Option<String>,
    pub notes: Option<String>,
    /// Present on `GET /v1/interactions/{id}`: every event about it, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<CloudEvent>>,
}

fn first_context_version() -> u64 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct InteractionList {
    pub interactions: Vec<InteractionView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AgentList {
    pub agents: Vec<AgentView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    #[serde(default)]
    pub disposition: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    pub target: Target,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub fallback: Option<Target>,
}

// ----- queues -------------------------------------------------------------------------------

/// How a queue chooses among the agents that could take a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The agent idle the longest (default).
    LongestIdle,
    /// The agent offered a caller least recently.
    RoundRobin,
    /// The agent who handled the fewest interactions today, then the longest idle.
    LeastOccupied,
    /// The highest summed level of the queue's skills, then the longest idle.
    MostSkilled,
    /// Every eligible agent at once; the first accept wins, the other offers are revoked.
    RingAll,
}

/// A queue named as the place a caller goes: `{"queue": "general"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct QueueRef {
    pub queue: String,
}

/// After a caller has waited `after_s`, the queue asks only for `skills`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EscalationStep {
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 2592000))]
    pub after_s: i64,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = skill_levels))]
    pub skills: BTreeMap<String, i64>,
}

/// `PUT /v1/queues/{name}`: the whole queue, every field optional with its default. Unknown
/// keys are refused, since a misspelt setting would otherwise be silently left at its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PutQueueRequest {
    /// Optional; when given, it must equal the name in the path (a GET's body can be PUT back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What an agent needs: every skill at least at the level named (0..=10). Default `{}`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = skill_levels))]
    pub skills: BTreeMap<String, i64>,
    /// Default `longest_idle`.
    #[serde(default)]
    pub strategy: Option<Strategy>,
    /// How long an offer stays open. Default 20.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 2592000))]
    pub offer_timeout_s: Option<i64>,
    /// The longest wrap-up after a hangup before the agent is routable again. Default 10.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 2592000))]
    pub wrap_up_s: Option<i64>,
    /// After this long waiting the caller goes to `overflow`, or ends `timed_out`. Default none.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 2592000))]
    pub max_wait_s: Option<i64>,
    /// Where callers go after `max_wait_s`. Default none.
    #[serde(default)]
    pub overflow: Option<QueueRef>,
    /// Answered within this many seconds counts towards the service level. Default 20.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 2592000))]
    pub service_level_s: Option<i64>,
    /// Relaxations of `skills` as the caller waits, by increasing `after_s`. Default `[]`.
    #[serde(default)]
    pub steps: Vec<EscalationStep>,
    /// The CRM page a screen pop from this queue opens: a minijinja template over `id`,
    /// `caller`, `dialed`, `channel`, `call_id`, `priority`, `queue`, `agent` and `context`,
    /// e.g. `https://crm.example.com/search?phone={{ caller }}`. Every value is percent-encoded
    /// where it lands. Default none: the server's `pop_url`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pop_url: Option<String>,
}

/// A queue as returned, with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct QueueView {
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = skill_levels))]
    pub skills: BTreeMap<String, i64>,
    pub strategy: Strategy,
    pub offer_timeout_s: i64,
    pub wrap_up_s: i64,
    pub max_wait_s: Option<i64>,
    pub overflow: Option<QueueRef>,
    pub service_level_s: i64,
    pub steps: Vec<EscalationStep>,
    /// The queue's `pop_url` template; absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pop_url: Option<String>,
}

impl From<QueueView> for PutQueueRequest {
    fn from(view: QueueView) -> PutQueueRequest {
        PutQueueRequest {
            name: Some(view.name),
            skills: view.skills,
            strategy: Some(view.strategy),
            offer_timeout_s: Some(view.offer_timeout_s),
            wrap_up_s: Some(view.wrap_up_s),
            max_wait_s: view.max_wait_s,
            overflow: view.overflow,
            service_level_s: Some(view.service_level_s),
            steps: view.steps,
            pop_url: view.pop_url,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct QueueList {
    pub queues: Vec<QueueView>,
}

/// The queue's agents (those meeting some level of its requirement) by presence and by activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AgentCounts {
    pub available: u64,
    pub away: u64,
    pub busy: u64,
    pub offline: u64,
    pub idle: u64,
    pub offered: u64,
    pub engaged: u64,
    pub wrap_up: u64,
}

/// What happened to a queue's callers over one window, each count by the time of its own event.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct StatsWindow {
    /// Callers that entered the queue.
    pub offered: u64,
    /// Callers an agent accepted.
    pub answered: u64,
    /// Callers who hung up while waiting or while offered.
    pub abandoned: u64,
    /// Callers whose `max_wait_s` passed with no overflow.
    pub timed_out: u64,
    /// Callers sent to the overflow queue.
    pub overflowed: u64,
    /// Average speed of answer: the mean wait of the answered callers, in seconds; 0 without any.
    pub asa_s: f64,
    /// Answered within `service_level_s` / (answered + abandoned), 0..1; 1 when neither happened.
    pub service_level: f64,
    /// Abandoned / (answered + abandoned), 0..1; 0 when neither happened.
    pub abandon_rate: f64,
}

/// `GET /v1/queues/{name}/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct QueueStats {
    pub queue: String,
    /// Callers in line now (offered ones are not counted: they are with an agent).
    pub waiting: u64,
    /// How long the longest-waiting caller in line has been in the queue, in whole seconds.
    pub longest_wait_s: u64,
    pub agents: AgentCounts,
    /// `(now - 15 min, now]`.
    pub last_15m: StatsWindow,
    /// From midnight in the configured `timezone` to now.
    pub today: StatsWindow,
    /// The threshold the service level is computed with.
    pub service_level_s: i64,
    /// When "today" began, RFC 3339 UTC.
    pub day_start: String,
}

/// One 30-second bucket of a queue's statistics history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct QueueStatsSample {
    /// The bucket's start, RFC 3339 UTC.
    pub at: String,
    /// Callers in line at the bucket's last look.
    pub waiting: u64,
    /// The most callers in line at once within the bucket.
    pub waiting_max: u64,
    /// The last 15 minutes' service level at the bucket's last look, 0..1.
    pub service_level: f64,
    /// Answered plus abandoned callers in those 15 minutes: how much the service level weighs.
    pub answered_and_abandoned: u64,
}

/// `GET /v1/queues/{name}/stats/history`: the last hour, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct QueueStatsHistory {
    pub queue: String,
    /// The width of one sample, in seconds.
    pub bucket_s: u64,
    /// Kept in the server's memory since it started: after a restart the hour starts again.
    pub samples: Vec<QueueStatsSample>,
}

// ----- events -------------------------------------------------------------------------------

/// A CloudEvents 1.0 event, the same on every channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub time: String,
    pub subject: String,
    pub seq: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: Value,
}

// ----- webhooks -----------------------------------------------------------------------------

/// `PUT /v1/webhooks/{name}`: where to send events, which ones, and how to sign them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PutWebhookRequest {
    /// An `http://` or `https://` URL. One that is loopback, private, link-local or a cloud
    /// metadata address is refused unless `egress_allow` names it. At most 2048 characters.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 2048,
            pattern = "^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9\\[]"
        )
    )]
    pub url: String,
    /// Event types to send: exact (`interaction.offered`), a prefix (`interaction.*`), or `*`
    /// for all; 1 to 64 of them. Default `["*"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 64))]
    pub types: Option<Vec<String>>,
    /// The signing secret, `whsec_` and 24 to 64 random bytes in base64 (Standard Webhooks).
    /// Absent on create: the server makes one and returns it once. A new one on update starts
    /// a rotation: deliveries carry a signature with each secret until the old one expires
    /// (24 h later). Absent on update: the secret stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^whsec_[A-Za-z0-9+/]+={0,2}$"))]
    pub secret: Option<String>,
    /// Default true. A PUT with `true` also re-enables a webhook disabled by a 410.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Deliveries in flight at once, 1..=64 (default 8). Events are sent in `seq` order, but
    /// with more than one in flight they may arrive out of it: order them by `seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 64))]
    pub max_in_flight: Option<i64>,
    /// How long one delivery may take, 100..=60000 ms (default 15000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 100, maximum = 60000))]
    pub timeout_ms: Option<i64>,
    /// At most 1024 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
    pub description: Option<String>,
}

/// A webhook as returned (never with its secret, except once when the server made it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct WebhookView {
    pub name: String,
    pub url: String,
    pub types: Vec<String>,
    /// Whether it is sent events: enabled, and not disabled by a 410.
    pub active: bool,
    pub enabled: bool,
    /// Set when the receiver answered 410 Gone: when, and what it said. A PUT re-enables it.
    pub disabled_at: Option<String>,
    pub disabled_reason: Option<String>,
    pub max_in_flight: i64,
    pub timeout_ms: i64,
    pub description: Option<String>,
    /// Only in the answer that created the secret (a create without one): keep it, it is not
    /// shown again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// During a rotation: when the previous secret stops signing deliveries.
    pub previous_secret_expires_at: Option<String>,
    /// Every event up to this `seq` was delivered, given up on, or waits in `pending_retries`.
    pub cursor_seq: u64,
    pub head_seq: u64,
    pub pending_retries: u64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

/// One attempt to deliver an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DeliveryAttemptView {
    /// Orders attempts; `?before=` pages back from one.
    pub id: i64,
    pub seq: u64,
    /// The `webhook-id` the delivery carried: the event's id, the same on every attempt.
    pub webhook_id: String,
    /// 1 for the first attempt at this event.
    pub attempt: u32,
    pub at: String,
    pub duration_ms: i64,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// `delivered`, `failed` (to be retried at `next_attempt_at`), `gave_up` (the retry
    /// schedule ran out), `disabled` (a webhook's 410 Gone) or `skipped` (a connector action
    /// whose `when` did not hold).
    pub outcome: String,
    pub error: Option<String>,
    pub next_attempt_at: Option<String>,
}

/// An event whose delivery failed and waits for its next attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PendingDeliveryView {
    pub seq: u64,
    pub webhook_id: String,
    pub attempts: u32,
    pub next_attempt_at: String,
}

/// `GET /v1/webhooks/{name}/deliveries` and `GET /v1/connectors/{name}/deliveries`: recent
/// attempts, newest first, and what waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Deliveries {
    /// The outbox destination: `webhook:<name>` or `connector:<name>:<action>`.
    pub destination: String,
    pub attempts: Vec<DeliveryAttemptView>,
    pub pending: Vec<PendingDeliveryView>,
    pub cursor_seq: u64,
    pub head_seq: u64,
    /// `?before=` for the next page of older attempts; null at the end.
    pub next_before: Option<i64>,
}

/// `POST /v1/webhooks/{name}/replay?after=SEQ`: every wanted event after `after` is sent again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct WebhookReplay {
    pub webhook: String,
    pub after: u64,
    /// The log's head when the replay was asked for; later events follow as ever.
    pub head_seq: u64,
}

// ----- CRM connectors -------------------------------------------------------------------------

/// `PUT /v1/connectors/{name}`: a CRM the pops are enriched from and the call logs written to.
/// A `preset` (`zendesk`, `salesforce`, `hubspot`) fills in `lookup`, `log` and `actions` from
/// the CRM's documented API with its `settings`; any of them given here replaces the preset's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PutConnectorRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// The preset's parameters (e.g. `subdomain` and `email` for Zendesk, `instance_url` for
    /// Salesforce, `base_url` for any), also `settings.*` in templates. Never secrets: those
    /// are `{{ secrets.NAME }}` in a template, read from `HANDOFF_SECRET_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<BTreeMap<String, String>>,
    /// How the caller is looked up when an interaction is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<ConnectorLookup>,
    /// The request that writes the call log on `interaction.completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<ConnectorAction>,
    /// Further requests made on events (e.g. Zendesk's screen pop on `interaction.accepted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<ConnectorAction>>,
    /// handoff agent id to the CRM's user id (`agent.crm_id` in templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_ids: Option<BTreeMap<String, String>>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// A lookup: the request (templates over the interaction) and which fields of its JSON answer
/// the pop shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ConnectorLookup {
    /// Default `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// A template; every value is percent-encoded where it lands.
    pub url: String,
    /// Header templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// A JSON body template; every value is written as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// 1..=30000 ms, default 800.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i64>,
    /// How long an answer is reused for the same request, 0..=86400 s (default 60; 0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl_s: Option<i64>,
    /// Pop field name to a JSONPath (RFC 9535) into the answer; the first match is taken.
    pub fields: BTreeMap<String, String>,
    /// An expression; the lookup runs only when it holds (e.g. `caller`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

/// A request a connector makes on events, from the durable outbox (retried like webhooks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ConnectorAction {
    /// `[a-z0-9_-]{1,32}`; the log's is `log`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The event types it is made on (patterns as for webhooks); the log's is
    /// `interaction.completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<String>>,
    /// Default `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// 1..=60000 ms, default 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i64>,
    /// An expression; the request is made only when it holds, else it is recorded `skipped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

/// A connector as returned: what was put, and what its preset filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ConnectorView {
    pub name: String,
    pub preset: Option<String>,
    pub settings: BTreeMap<String, String>,
    pub lookup: Option<ConnectorLookup>,
    pub log: Option<ConnectorAction>,
    pub actions: Vec<ConnectorAction>,
    pub agent_ids: BTreeMap<String, String>,
    pub enabled: bool,
    /// Secrets its templates name whose `HANDOFF_SECRET_*` variable is not set on this server.
    pub missing_secrets: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ConnectorList {
    pub connectors: Vec<ConnectorView>,
}

/// `POST /v1/connectors/{name}/lookup`: try the lookup for a caller without a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LookupTrial {
    #[serde(default)]
    pub caller: Option<String>,
    #[serde(default)]
    pub dialed: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub context: Option<serde_json::Map<String, Value>>,
}

/// What a tried lookup found, or why it failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct LookupResult {
    /// `found`, `failed` or `skipped` (its `when` did not hold).
    pub outcome: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub fields: Option<Value>,
    pub error: Option<String>,
    pub cached: bool,
    pub duration_ms: u64,
}

/// What an agent desktop sends on its stream to acknowledge events up to `ack` (cumulative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckFrame {
    pub ack: u64,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub head_seq: u64,
    /// `writer`: this node runs the engine (always so on one node); `follower`: a node of a
    /// cluster that serves streams and forwards the rest to the writer.
    #[serde(default = "writer_role")]
    pub role: String,
}

fn writer_role() -> String {
    "writer".to_owned()
}

/// `POST /v1/session`: trade a token, or a one-time sign-in code, for the web UI's session
/// cookie. Exactly one of `token` and `code`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// An agent token, or a supervisor or admin key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A one-time sign-in code from `POST /v1/signin-links`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// With `token`: the agent the token must belong to (the sign-in form's agent id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// Who the session cookie belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SessionView {
    /// `admin`, `supervisor` or `agent`.
    pub role: String,
    /// Set for an agent's session.
    pub agent_id: Option<String>,
    /// The session's key id (`ses_...`): listed by `GET /v1/keys`, revoked by
    /// `DELETE /v1/session` or `DELETE /v1/keys/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// When the session stops being accepted, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// On `GET /v1/session` for an agent: the interactions it holds now (offered to it,
    /// accepted, in wrap-up), so a desktop that reloads picks them up again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Vec<HeldInteraction>>,
}

/// An interaction an agent holds now, as `GET /v1/session` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct HeldInteraction {
    pub interaction: InteractionView,
    /// Where it is headed now (a pop's `offer_target`): the original target, a fallback or a
    /// transfer's target.
    pub offer_target: Target,
    /// In wrap-up: when wrap-up ends by itself.
    pub wrap_up_until: Option<String>,
}

/// `POST /v1/signin-links` (admin): a one-time sign-in link for one agent, or for a
/// `supervisor` or `admin`. Exactly one of `agent` and `role`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SigninLinkRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// `supervisor` or `admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// A closed object of string properties, `required` among them: one branch of the
/// exactly-one-of request bodies below.
#[cfg(feature = "openapi")]
fn closed_object(
    properties: Vec<(&str, utoipa::openapi::schema::Object)>,
    required: &str,
) -> utoipa::openapi::schema::ObjectBuilder {
    let mut object = utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Object)
        .required(required)
        .additional_properties(Some(
            utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
        ));
    for (name, schema) in properties {
        object = object.property(name, schema);
    }
    object
}

#[cfg(feature = "openapi")]
fn text() -> utoipa::openapi::schema::ObjectBuilder {
    utoipa::openapi::schema::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::String)
}

/// Written by hand: exactly one of `token` (with an optional `agent`) and `code`.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for SessionRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let token = text().description(Some("An agent token, or a supervisor or admin key."));
        let code = text().description(Some(
            "A one-time sign-in code from `POST /v1/signin-links`.",
        ));
        let agent = || {
            text().description(Some(
                "The agent the token or code must belong to (the sign-in form's agent id).",
            ))
        };
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(closed_object(
                vec![("token", token.build()), ("agent", agent().build())],
                "token",
            ))
            .item(closed_object(
                vec![("code", code.build()), ("agent", agent().build())],
                "code",
            ))
            .description(Some("Exactly one of `token` and `code`."))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl ToSchema for SessionRequest {}

/// Written by hand: exactly one of `agent` (an agent's link) and `role` (supervisor or admin).
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for SigninLinkRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let agent = text().pattern(Some(ID_PATTERN));
        let role = text().enum_values(Some(["supervisor", "admin"]));
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(closed_object(vec![("agent", agent.build())], "agent"))
            .item(closed_object(vec![("role", role.build())], "role"))
            .description(Some("Exactly one of `agent` and `role`."))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl ToSchema for SigninLinkRequest {}

/// A one-time sign-in link: `url` is relative to the server (`/signin#code=...`); the code is in
/// the fragment, so it stays out of server logs and `Referer`. Single use, valid until
/// `expires_at`, kept in memory only (a restart invalidates it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SigninLink {
    pub code: String,
    pub url: String,
    pub expires_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A view read and written again keeps its context's text byte for byte, the client can
    /// look inside it, and text that is not JSON is refused.
    #[test]
    fn raw_json_keeps_the_context_text_as_it_came() {
        let context = r#"{"z":1,"a":{"n":[1.50,"Zoë 🚀"]},"e":"\u00e9"}"#;
        let text = format!(
            r#"{{"id":"ix_1","state":"queued","target":{{"queue":"sales"}},"fallback":null,"agent":null,"position":1,"context":{context},"caller":null,"dialed":null,"channel":"voice","call_id":null,"priority":0,"created_at":"2026-01-01T00:00:00.000Z","updated_at":"2026-01-01T00:00:00.000Z","offer_expires_at":null,"transfer_note":null,"disposition":null,"notes":null}}"#
        );
        let view: InteractionView = serde_json::from_str(&text).expect("a view");
        assert_eq!(view.context.text(), context, "the text as it came");
        assert_eq!(view.context.to_value()["a"]["n"][1], "Zoë 🚀");
        let again = serde_json::to_string(&view).expect("written");
        assert!(
            again.contains(&format!(r#""context":{context}"#)),
            "{again}"
        );
        let reread: InteractionView = serde_json::from_str(&again).expect("read again");
        assert_eq!(reread, view);
        assert_ne!(
            RawJson::from_text(r#"{"a":1}"#.to_owned()).unwrap(),
            RawJson::from_text(r#"{"a":2}"#.to_owned()).unwrap()
        );
        assert!(RawJson::from_text("{not json".to_owned()).is_err());
        assert_eq!(RawJson::empty_object().text(), "{}");
    }
}
