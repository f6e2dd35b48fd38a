//! Targets (an agent or a queue) between the core and the wire.

use handoff_core::{AgentId, QueueName, Target};
use handoff_protocol as wire;
use serde_json::Value;

use crate::error::ApiError;

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

pub(super) fn target_json(target: &Target) -> Value {
    serde_json::to_value(target_to_wire(target)).unwrap_or(Value::Null)
}
