//! Interactions: one caller handed from an IVR to an agent, from creation to a terminal state.

use std::collections::BTreeSet;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::ids::{AgentId, InteractionId, QueueName, Timestamp};

/// Where an interaction should go: a named agent, or a queue (routing picks the agent).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Agent(AgentId),
    Queue(QueueName),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

impl InteractionState {
    pub const ALL: [InteractionState; 8] = [
        InteractionState::Queued,
        InteractionState::Offered,
        InteractionState::Accepted,
        InteractionState::WrapUp,
        InteractionState::Completed,
        InteractionState::Abandoned,
        InteractionState::Unanswered,
        InteractionState::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InteractionState::Queued => "queued",
            InteractionState::Offered => "offered",
            InteractionState::Accepted => "accepted",
            InteractionState::WrapUp => "wrap_up",
            InteractionState::Completed => "completed",
            InteractionState::Abandoned => "abandoned",
            InteractionState::Unanswered => "unanswered",
            InteractionState::TimedOut => "timed_out",
        }
    }

    pub fn parse(text: &str) -> Option<InteractionState> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            InteractionState::Completed
                | InteractionState::Abandoned
                | InteractionState::Unanswered
                | InteractionState::TimedOut
        )
    }
}

/// What the IVR said when it created the interaction; never changes afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InteractionSpec {
    pub id: InteractionId,
    pub caller: Option<String>,
    pub dialed: Option<String>,
    pub channel: String,
    pub call_id: Option<String>,
    /// The caller's data as serialized JSON text; the core never looks inside.
    pub context: String,
    pub target: Target,
    pub fallback: Option<Target>,
    pub priority: i32,
    /// How long the caller waits for an agent target who cannot take the call now before the
    /// fallback takes it (or it ends `timed_out`); `None`: the server's `agent_max_wait_s`.
    pub max_wait_s: Option<u64>,
    /// What CRM lookups answered before the interaction was created: it rides in every offer.
    pub enrichment: Vec<Enrichment>,
    /// The API key that created it (the IVR may read and hang up its own interactions).
    pub created_by: Option<String>,
    pub created_at: Timestamp,
}

/// What one CRM connector's lookup found for the caller: the pop fields, as JSON text the core
/// never looks inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrichment {
    pub connector: String,
    pub fields: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interaction {
    pub spec: Arc<InteractionSpec>,
    pub state: InteractionState,
    /// Where it is headed now: the original target, a fallback, or a transfer's target.
    pub current_target: Target,
    /// The fallback not used yet for the current target.
    pub pending_fallback: Option<Target>,
    /// The agent it is offered (a single offer) or assigned to now.
    pub agent: Option<AgentId>,
    /// Every agent with an open offer of it: one, or several while a `ring_all` queue rings.
    pub offered_to: BTreeSet<AgentId>,
    /// The agents who missed its latest offer (rejected it, let it time out, lost their
    /// connection): not offered it again straight away while another agent can take it.
    pub just_missed_by: BTreeSet<AgentId>,
    /// When it entered its current queue (for the queue's statistics).
    pub entered_queue_at: Option<Timestamp>,
    /// When its caller is sent to the overflow or timed out, while it waits in a queue.
    pub max_wait_at: Option<Timestamp>,
    /// When the requirement relaxes next, one entry per escalation step still ahead (inline:
    /// queues have a step or two, and every caller joining a line sets them).
    pub escalations: SmallVec<[Timestamp; 2]>,
    /// When wrap-up ends by itself (a queue's `wrap_up_s` after the hangup).
    pub wrap_up_until: Option<Timestamp>,
    pub offer_expires_at: Option<Timestamp>,
    /// Every agent it was ever offered or assigned to: they may read it.
    pub involved_agents: BTreeSet<AgentId>,
    /// When it last joined a line of waiting callers; orders callers of equal priority.
    pub waiting_since: Timestamp,
    /// Breaks ties between equal `waiting_since` in append order.
    pub waiting_order: u64,
    pub last_transfer_note: Option<String>,
    pub disposition: Option<String>,
    pub notes: Option<String>,
    pub updated_at: Timestamp,
    /// The caller's data as updated since creation; `None`: as the IVR created it.
    pub updated_context: Option<Arc<str>>,
    /// 1 as created, one more with each update of the context.
    pub context_version: u64,
    /// What CRM lookups found, one entry per connector (a later answer replaces an earlier
    /// one of the same connector): the spec's, then each `interaction.enriched`.
    pub enrichment: Vec<Enrichment>,
}

impl Interaction {
    pub fn id(&self) -> &InteractionId {
        &self.spec.id
    }

    /// The caller's data now, as every offer carries it: the IVR's, as updated since.
    pub fn context(&self) -> &str {
        self.updated_context
            .as_deref()
            .unwrap_or(&self.spec.context)
    }
}
