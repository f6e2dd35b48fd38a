//! Translation between the core's types and the wire: CloudEvents (both ways, since the log
//! stores events in their wire form and recovery reads them back), views, targets and times.

mod decode;
mod encode;
mod queues;
mod targets;
mod text;
mod views;

pub use decode::{decode_event, DecodeError};
pub use encode::{cloud_event, cloud_event_payload, event_id};
pub use queues::{
    queue_config_from_wire, queue_view, strategy_from_wire, strategy_to_wire, MAX_QUEUE_SECONDS,
    MAX_STEPS,
};
pub use targets::{target_from_wire, target_to_wire};
pub use text::{canonical_json, format_time, longer_than, now, parse_time};
pub use views::{
    agent_view, capacity_from_wire, capacity_to_wire, interaction_view, presence_view,
    skills_from_wire, MAX_CAPACITY,
};

#[cfg(test)]
mod tests;
