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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    Agent(String),
    Queue(String),
}

// ----- keys ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateKeyRequest {
    /// `admin`, `ivr`, `supervisor` or `presence`.
    pub role: String,
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
pub struct PutAgentRequest {
    pub name: String,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub skills: BTreeMap<String, i64>,
    #[serde(default)]
    pub capacity: Option<i64>,
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
    pub skills: BTreeMap<String, i64>,
    pub capacity: i64,
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
pub struct PutPresenceRequest {
    pub status: PresenceStatus,
    #[serde(default)]
    pub reason: Option<String>,
}

// ----- interactions -------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateInteractionRequest {
    #[serde(default)]
    pub caller: Option<String>,
    #[serde(default)]
    pub dialed: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
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
}

/// Where the IVR transfers the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AgentRef {
    pub id: String,
    pub address: Option<String>,
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
    pub position: Option<u64>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub context: Value,
    pub caller: Option<String>,
    pub dialed: Option<String>,
    pub channel: String,
    pub call_id: Option<String>,
    pub priority: i32,
    pub created_at: String,
    pub updated_at: String,
    pub offer_expires_at: Option<String>,
    pub transfer_note: Option<String>,
    pub disposition: Option<String>,
    pub notes: Option<String>,
    /// Present on `GET /v1/interactions/{id}`: every event about it, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<CloudEvent>>,
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
pub struct CompleteRequest {
    #[serde(default)]
    pub disposition: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TransferRequest {
    pub target: Target,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub fallback: Option<Target>,
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
}

/// `POST /v1/session`: trade a token for the web UI's session cookie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SessionRequest {
    pub token: String,
}

/// Who the session cookie (or token) belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SessionView {
    /// `admin`, `ivr`, `supervisor`, `presence` or `agent`.
    pub role: String,
    /// Set for an agent's token.
    pub agent_id: Option<String>,
}
