//! The closed set of events: every change to the state is one of these, appended to the log.

use std::sync::Arc;

use crate::agent::{AgentProfile, Presence};
use crate::ids::{AgentId, InteractionId, QueueName, Timestamp};
use crate::interaction::{Enrichment, InteractionSpec, Target};
use crate::queue::{QueueConfig, Strategy};

/// Why an offer went to the agent it went to: shown with the screen pop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// The queue's strategy; `None` for an interaction addressed to the agent directly.
    pub strategy: Option<Strategy>,
    /// How many agents met the requirement and were available with room for the caller's
    /// channel at that moment: read from the routing index, so it costs no scan.
    pub eligible: u32,
    /// A sentence naming what decided it.
    pub reason: String,
}

/// Why an offer ended without an accept or a reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OfferEndReason {
    /// The offer's deadline passed.
    TimedOut,
    /// The agent's last stream closed and the grace period passed.
    ConnectionLost,
    /// The caller hung up.
    Abandoned,
    /// The agent was deleted.
    AgentDeleted,
    /// Another agent of a `ring_all` queue accepted first.
    AnsweredElsewhere,
}

impl OfferEndReason {
    pub const ALL: [OfferEndReason; 5] = [
        OfferEndReason::TimedOut,
        OfferEndReason::ConnectionLost,
        OfferEndReason::Abandoned,
        OfferEndReason::AgentDeleted,
        OfferEndReason::AnsweredElsewhere,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OfferEndReason::TimedOut => "timed_out",
            OfferEndReason::ConnectionLost => "connection_lost",
            OfferEndReason::Abandoned => "abandoned",
            OfferEndReason::AgentDeleted => "agent_deleted",
            OfferEndReason::AnsweredElsewhere => "answered_elsewhere",
        }
    }

    pub fn parse(text: &str) -> Option<OfferEndReason> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    AgentCreated {
        profile: AgentProfile,
        presence: Presence,
    },
    AgentUpdated {
        profile: AgentProfile,
        at: Timestamp,
    },
    AgentDeleted {
        agent: AgentId,
        at: Timestamp,
    },
    PresenceChanged {
        agent: AgentId,
        presence: Presence,
    },
    InteractionCreated {
        /// Shared with the interaction the state keeps: the context can be kilobytes.
        spec: Arc<InteractionSpec>,
    },
    InteractionQueued {
        id: InteractionId,
        target: Target,
        at: Timestamp,
        /// Back in the same line after a missed offer: the caller keeps its place.
        requeued: bool,
    },
    InteractionOffered {
        id: InteractionId,
        agent: AgentId,
        /// The target this offer serves (the original, a fallback or a transfer's).
        target: Target,
        expires_at: Timestamp,
        at: Timestamp,
        routing: Routing,
    },
    OfferRevoked {
        id: InteractionId,
        agent: AgentId,
        reason: OfferEndReason,
        at: Timestamp,
    },
    InteractionAccepted {
        id: InteractionId,
        agent: AgentId,
        at: Timestamp,
    },
    InteractionRejected {
        id: InteractionId,
        agent: AgentId,
        at: Timestamp,
    },
    InteractionTransferred {
        id: InteractionId,
        from: AgentId,
        target: Target,
        fallback: Option<Target>,
        note: Option<String>,
        at: Timestamp,
    },
    /// The caller hung up after an accept: the agent goes to wrap-up.
    InteractionEnded {
        id: InteractionId,
        agent: AgentId,
        /// When wrap-up time runs out and the interaction completes by itself; `None` when the
        /// line has no wrap-up timer (an agent target). Fixed here, not when applied, so a
        /// queue reconfigured later cannot change a past wrap-up on replay.
        wrap_up_until: Option<Timestamp>,
        at: Timestamp,
    },
    /// The caller hung up before any accept.
    InteractionAbandoned {
        id: InteractionId,
        at: Timestamp,
    },
    /// An agent target's offer ended without an accept and no fallback was left.
    InteractionUnanswered {
        id: InteractionId,
        at: Timestamp,
    },
    InteractionCompleted {
        id: InteractionId,
        agent: AgentId,
        disposition: Option<String>,
        notes: Option<String>,
        at: Timestamp,
        /// Completed by the queue's `wrap_up_s` running out, not by the agent.
        wrap_up_expired: bool,
    },
    /// The caller waited the queue's `max_wait_s` and there was no overflow.
    InteractionTimedOut {
        id: InteractionId,
        at: Timestamp,
    },
    /// The interaction's context was updated (a JSON merge patch from the IVR or the agent).
    ContextUpdated {
        id: InteractionId,
        /// The whole context after the update, as JSON text.
        context: Arc<str>,
        /// The update as sent.
        patch: Arc<str>,
        version: u64,
        by: Option<String>,
        at: Timestamp,
    },
    /// A CRM lookup answered after the interaction was created: the pop fields it found.
    InteractionEnriched {
        id: InteractionId,
        enrichment: Enrichment,
        at: Timestamp,
    },
    /// A CRM lookup failed (or timed out): the call is routed as usual without its fields.
    EnrichmentFailed {
        id: InteractionId,
        connector: String,
        reason: String,
        at: Timestamp,
    },
    QueueUpserted {
        config: QueueConfig,
        created: bool,
        at: Timestamp,
    },
    QueueDeleted {
        name: QueueName,
        at: Timestamp,
    },
}

impl Event {
    /// The CloudEvents `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::AgentCreated { .. } => "agent.created",
            Event::AgentUpdated { .. } => "agent.updated",
            Event::AgentDeleted { .. } => "agent.deleted",
            Event::PresenceChanged { .. } => "agent.presence_changed",
            Event::InteractionCreated { .. } => "interaction.created",
            Event::InteractionQueued { .. } => "interaction.queued",
            Event::InteractionOffered { .. } => "interaction.offered",
            Event::OfferRevoked { .. } => "interaction.offer_revoked",
            Event::InteractionAccepted { .. } => "interaction.accepted",
            Event::InteractionRejected { .. } => "interaction.rejected",
            Event::InteractionTransferred { .. } => "interaction.transferred",
            Event::InteractionEnded { .. } => "interaction.ended",
            Event::InteractionAbandoned { .. } => "interaction.abandoned",
            Event::InteractionUnanswered { .. } => "interaction.unanswered",
            Event::InteractionCompleted { .. } => "interaction.completed",
            Event::InteractionTimedOut { .. } => "interaction.timed_out",
            Event::ContextUpdated { .. } => "interaction.context_updated",
            Event::InteractionEnriched { .. } => "interaction.enriched",
            Event::EnrichmentFailed { .. } => "interaction.enrichment_failed",
            Event::QueueUpserted { created: true, .. } => "queue.created",
            Event::QueueUpserted { .. } => "queue.updated",
            Event::QueueDeleted { .. } => "queue.deleted",
        }
    }

    /// The CloudEvents `subject`: the interaction or agent the event is about.
    pub fn subject(&self) -> &str {
        match self {
            Event::AgentCreated { profile, .. } | Event::AgentUpdated { profile, .. } => {
                profile.id.as_str()
            }
            Event::AgentDeleted { agent, .. } | Event::PresenceChanged { agent, .. } => {
                agent.as_str()
            }
            Event::InteractionCreated { spec } => spec.id.as_str(),
            Event::QueueUpserted { config, .. } => config.name.as_str(),
            Event::QueueDeleted { name, .. } => name.as_str(),
            Event::InteractionTimedOut { id, .. }
            | Event::ContextUpdated { id, .. }
            | Event::InteractionEnriched { id, .. }
            | Event::EnrichmentFailed { id, .. }
            | Event::InteractionQueued { id, .. }
            | Event::InteractionOffered { id, .. }
            | Event::OfferRevoked { id, .. }
            | Event::InteractionAccepted { id, .. }
            | Event::InteractionRejected { id, .. }
            | Event::InteractionTransferred { id, .. }
            | Event::InteractionEnded { id, .. }
            | Event::InteractionAbandoned { id, .. }
            | Event::InteractionUnanswered { id, .. }
            | Event::InteractionCompleted { id, .. } => id.as_str(),
        }
    }

    /// When it happened.
    pub fn time(&self) -> Timestamp {
        match self {
            Event::AgentCreated { presence, .. } => presence.since,
            Event::PresenceChanged { presence, .. } => presence.since,
            Event::InteractionCreated { spec } => spec.created_at,
            Event::AgentUpdated { at, .. }
            | Event::AgentDeleted { at, .. }
            | Event::InteractionQueued { at, .. }
            | Event::InteractionOffered { at, .. }
            | Event::OfferRevoked { at, .. }
            | Event::InteractionAccepted { at, .. }
            | Event::InteractionRejected { at, .. }
            | Event::InteractionTransferred { at, .. }
            | Event::InteractionEnded { at, .. }
            | Event::InteractionAbandoned { at, .. }
            | Event::InteractionUnanswered { at, .. }
            | Event::InteractionTimedOut { at, .. }
            | Event::ContextUpdated { at, .. }
            | Event::InteractionEnriched { at, .. }
            | Event::EnrichmentFailed { at, .. }
            | Event::QueueUpserted { at, .. }
            | Event::QueueDeleted { at, .. }
            | Event::InteractionCompleted { at, .. } => *at,
        }
    }

    /// The interaction the event is about, if any.
    pub fn interaction_id(&self) -> Option<&InteractionId> {
        match self {
            Event::AgentCreated { .. }
            | Event::AgentUpdated { .. }
            | Event::AgentDeleted { .. }
            | Event::PresenceChanged { .. }
            | Event::QueueUpserted { .. }
            | Event::QueueDeleted { .. } => None,
            Event::InteractionCreated { spec } => Some(&spec.id),
            Event::InteractionTimedOut { id, .. }
            | Event::ContextUpdated { id, .. }
            | Event::InteractionEnriched { id, .. }
            | Event::EnrichmentFailed { id, .. } => Some(id),
            Event::InteractionQueued { id, .. }
            | Event::InteractionOffered { id, .. }
            | Event::OfferRevoked { id, .. }
            | Event::InteractionAccepted { id, .. }
            | Event::InteractionRejected { id, .. }
            | Event::InteractionTransferred { id, .. }
            | Event::InteractionEnded { id, .. }
            | Event::InteractionAbandoned { id, .. }
            | Event::InteractionUnanswered { id, .. }
            | Event::InteractionCompleted { id, .. } => Some(id),
        }
    }
}
