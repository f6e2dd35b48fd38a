//! Queues: their configuration from the wire, checked, and their view.

use handoff_core::{EscalationStep, QueueConfig, QueueName, Strategy};
use handoff_protocol as wire;

use super::views::{skills_from_wire, skills_json};
use crate::error::ApiError;

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
        config.validate().map_err(ApiError::from)?;
    }
    Ok(config)
}
