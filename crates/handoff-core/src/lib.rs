//! handoff's domain core: a pure, synchronous state machine `(state, command, now) -> events`.
//!
//! It knows nothing of HTTP, JSON, SQL, threads or clocks: time arrives as a `Timestamp`
//! argument, identifiers arrive already generated, and the interaction context is opaque text.

pub mod agent;
pub mod command;
pub mod event;
mod fast_map;
pub mod ids;
pub mod interaction;
pub mod queue;
pub mod router;
pub mod state;
pub mod stats;

pub use agent::{
    Activity, Agent, AgentProfile, Capacity, Presence, PresenceSource, PresenceStatus,
};
pub use command::{Command, CommandError};
pub use event::{Event, OfferEndReason, Routing};
pub use fast_map::{fix_hash_seeds, FastMap, FastState};
pub use ids::{AgentId, IdError, InteractionId, QueueName, Seq, SkillLevel, Timestamp};
pub use interaction::{Enrichment, Interaction, InteractionSpec, InteractionState, Target};
pub use queue::{EscalationStep, QueueConfig, QueueConfigError, Strategy};
pub use state::{Calendar, MemberCounts, Settings, State, UtcCalendar};
pub use stats::{QueueStatistics, Window, WindowPair};
