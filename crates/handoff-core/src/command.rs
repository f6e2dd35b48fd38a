//! Commands: what callers ask of the state machine, and why it may refuse.

use crate::agent::{AgentProfile, PresenceSource, PresenceStatus};
use crate::ids::{AgentId, InteractionId, QueueName};
use crate::interaction::{InteractionSpec, InteractionState, Target};
use crate::queue::{QueueConfig, QueueConfigError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Create or replace an agent's profile.
    UpsertAgent {
        profile: AgentProfile,
    },
    DeleteAgent {
        agent: AgentId,
    },
    SetPresence {
        agent: AgentId,
        status: PresenceStatus,
        reason: Option<String>,
        source: PresenceSource,
    },
    CreateInteraction {
        spec: InteractionSpec,
    },
    Accept {
        id: InteractionId,
        agent: AgentId,
    },
    Reject {
        id: InteractionId,
        agent: AgentId,
    },
    Complete {
        id: InteractionId,
        agent: AgentId,
        disposition: Option<String>,
        notes: Option<String>,
    },
    Transfer {
        id: InteractionId,
        agent: AgentId,
        target: Target,
        fallback: Option<Target>,
        note: Option<String>,
    },
    /// Replaces the interaction's context with `context` (the IVR's or the agent's update,
    /// merged by the caller), when the context is still at `expected_version`.
    UpdateContext {
        id: InteractionId,
        expected_version: u64,
        context: String,
        /// The update as the caller sent it (a JSON merge patch), kept with the event.
        patch: String,
        /// Who updated it: an API key id or an agent id.
        by: Option<String>,
    },
    /// A CRM connector's lookup answered after the interaction was created.
    RecordEnrichment {
        id: InteractionId,
        connector: String,
        /// The pop fields as JSON text, or why the lookup failed.
        outcome: Result<String, String>,
    },
    /// The caller is gone.
    Hangup {
        id: InteractionId,
    },
    /// The agent's last stream closed and stayed closed for the grace period.
    ConnectionLost {
        agent: AgentId,
    },
    /// Time passed: expire every offer, wait and wrap-up due at or before `now`, and route
    /// callers whose requirement relaxed.
    Tick,
    /// Create or replace a queue.
    UpsertQueue {
        config: QueueConfig,
    },
    DeleteQueue {
        name: QueueName,
    },
}

/// Why a command was refused. A refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("no agent with id {0}")]
    UnknownAgent(AgentId),
    #[error("no interaction with id {0}")]
    UnknownInteraction(InteractionId),
    #[error("the target agent {0} does not exist")]
    UnknownTargetAgent(AgentId),
    #[error("the target queue {0} does not exist")]
    UnknownTargetQueue(String),
    #[error("an interaction with id {0} already exists")]
    DuplicateInteraction(InteractionId),
    #[error("cannot {action} an interaction that is {}", state.as_str())]
    WrongState {
        action: &'static str,
        state: InteractionState,
    },
    #[error("interaction {id} is not offered to or held by agent {agent}")]
    NotHeldByAgent { id: InteractionId, agent: AgentId },
    #[error("agent {0} holds accepted interactions; complete or transfer them first")]
    AgentHoldsInteractions(AgentId),
    #[error("an interaction cannot be transferred to the agent who holds it")]
    TransferToSelf,
    #[error("the fallback must differ from the target")]
    FallbackSameAsTarget,
    #[error("no queue named {0}")]
    UnknownQueue(QueueName),
    #[error("queue {0} has callers waiting or offered, or another queue overflows into it; it cannot be deleted now")]
    QueueInUse(QueueName),
    #[error("the overflow queue {0} does not exist")]
    UnknownOverflowQueue(QueueName),
    #[error("the context of interaction {id} is at version {current}, not {expected}")]
    ContextVersionMismatch {
        id: InteractionId,
        expected: u64,
        current: u64,
    },
    #[error(transparent)]
    InvalidQueue(#[from] QueueConfigError),
}
