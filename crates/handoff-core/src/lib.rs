//! handoff's domain core: a pure, synchronous state machine `(state, command, now) -> events`.
//!
//! It knows nothing of HTTP, JSON, SQL, threads or clocks: time arrives as a `Timestamp`
//! argument, identifiers arrive already generated, and the interaction context is opaque text.

pub mod agent;
pub mod command;
pub mod event;
pub mod ids;
pub mod interaction;
pub mod state;

pub use agent::{Activity, Agent, AgentProfile, Presence, PresenceSource, PresenceStatus};
pub use command::{Command, CommandError};
pub use event::{Event, OfferEndReason};
pub use ids::{AgentId, IdError, InteractionId, QueueName, Seq, SkillLevel, Timestamp};
pub use interaction::{Interaction, InteractionSpec, InteractionState, Target};
pub use state::{Settings, State};
