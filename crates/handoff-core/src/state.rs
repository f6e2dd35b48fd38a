//! The state machine: `State::execute(command, now)` validates, then appends events by applying
//! them one at a time; `State::apply` is the only place that changes the state, and replaying
//! the log through it rebuilds the same state.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::agent::{Activity, Agent, Presence, PresenceSource, PresenceStatus};
use crate::command::{Command, CommandError};
use crate::event::{Event, OfferEndReason};
use crate::ids::{AgentId, InteractionId, Seq, Timestamp};
use crate::interaction::{Interaction, InteractionState, Target};

/// Settings the state machine needs; everything else about configuration stays outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How long an offer to an agent target stays open.
    pub offer_timeout_s: u64,
    /// Whether a lost connection (after its grace period) sets the agent offline.
    pub offline_on_disconnect: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            offer_timeout_s: 20,
            offline_on_disconnect: true,
        }
    }
}

/// Events appended by one command, each with the agents it is for.
type Events = Vec<(Event, Vec<AgentId>)>;

/// The place of a waiting caller: higher priority first, then longest waiting, then append order.
type WaitingKey = (Reverse<i32>, Timestamp, u64, InteractionId);

#[derive(Debug, Clone)]
pub struct State {
    settings: Settings,
    agents: BTreeMap<AgentId, Agent>,
    interactions: HashMap<InteractionId, Interaction>,
    /// Interactions in creation order, for listing.
    creation_order: Vec<InteractionId>,
    /// Interactions each agent holds: offered, accepted or in wrap-up.
    held: HashMap<AgentId, BTreeSet<InteractionId>>,
    /// Open offers by deadline.
    deadlines: BTreeSet<(Timestamp, InteractionId)>,
    /// Callers waiting, in line order.
    waiting: BTreeSet<WaitingKey>,
    waiting_counter: u64,
}

impl State {
    pub fn new(settings: Settings) -> State {
        State {
            settings,
            agents: BTreeMap::new(),
            interactions: HashMap::new(),
            creation_order: Vec::new(),
            held: HashMap::new(),
            deadlines: BTreeSet::new(),
            waiting: BTreeSet::new(),
            waiting_counter: 0,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    // ----- queries -------------------------------------------------------------------------

    pub fn agent(&self, id: &AgentId) -> Option<&Agent> {
        self.agents.get(id)
    }

    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values()
    }

    pub fn interaction(&self, id: &InteractionId) -> Option<&Interaction> {
        self.interactions.get(id)
    }

    /// Interactions, oldest first.
    pub fn interactions(&self) -> impl DoubleEndedIterator<Item = &Interaction> {
        self.creation_order
            .iter()
            .filter_map(|id| self.interactions.get(id))
    }

    /// Interactions the agent holds now (offered, accepted, wrap-up).
    pub fn held_by(&self, agent: &AgentId) -> impl Iterator<Item = &Interaction> {
        self.held
            .get(agent)
            .into_iter()
            .flatten()
            .filter_map(|id| self.interactions.get(id))
    }

    /// The busiest of the agent's interactions.
    pub fn activity(&self, agent: &AgentId) -> Activity {
        self.held_by(agent)
            .map(|interaction| match interaction.state {
                InteractionState::Offered => Activity::Offered,
                InteractionState::Accepted => Activity::Engaged,
                InteractionState::WrapUp => Activity::WrapUp,
                _ => Activity::Idle,
            })
            .max()
            .unwrap_or(Activity::Idle)
    }

    /// 1-based place in the line of callers waiting for the same target, for a queued interaction.
    pub fn position(&self, id: &InteractionId) -> Option<usize> {
        let interaction = self.interactions.get(id)?;
        let key = waiting_key(interaction);
        if !self.waiting.contains(&key) {
            return None;
        }
        let ahead = self
            .waiting
            .range(..key)
            .filter(|(_, _, _, other)| {
                self.interactions
                    .get(other)
                    .is_some_and(|o| o.current_target == interaction.current_target)
            })
            .count();
        Some(ahead + 1)
    }

    /// The earliest open offer deadline: when `Command::Tick` next has work.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Moves an agent's ack cursor forward; acks are not events, the store keeps them beside the log.
    pub fn set_acked(&mut self, agent: &AgentId, seq: Seq) {
        if let Some(agent) = self.agents.get_mut(agent) {
            agent.acked_seq = agent.acked_seq.max(seq);
        }
    }

    fn has_free_capacity(&self, agent: &Agent) -> bool {
        let held = self.held.get(&agent.profile.id).map_or(0, BTreeSet::len);
        held < agent.profile.capacity as usize
    }

    fn can_take_offer(&self, agent: &AgentId) -> bool {
        self.agents.get(agent).is_some_and(|agent| {
            agent.presence.status == PresenceStatus::Available && self.has_free_capacity(agent)
        })
    }

    fn is_waiting_for(&self, target: &Target) -> bool {
        self.waiting.iter().any(|(_, _, _, id)| {
            self.interactions
                .get(id)
                .is_some_and(|i| &i.current_target == target)
        })
    }

    // ----- commands ------------------------------------------------------------------------

    /// Validates `command` against the state and, when it fits, applies and returns its events.
    /// A refused command changes nothing.
    pub fn execute(
        &mut self,
        command: Command,
        now: Timestamp,
    ) -> Result<Vec<Event>, CommandError> {
        let appended = self.execute_with_recipients(command, now)?;
        Ok(appended.into_iter().map(|(event, _)| event).collect())
    }

    /// As `execute`, with the agents each event is for (what `apply` returned for it).
    pub fn execute_with_recipients(
        &mut self,
        command: Command,
        now: Timestamp,
    ) -> Result<Vec<(Event, Vec<AgentId>)>, CommandError> {
        let mut out = Vec::new();
        match command {
            Command::UpsertAgent { profile } => match self.agents.get(&profile.id) {
                Some(existing) if existing.profile == profile => {}
                Some(_) => self.emit(&mut out, Event::AgentUpdated { profile, at: now }),
                None => {
                    let presence = Presence {
                        status: PresenceStatus::Offline,
                        reason: None,
                        source: PresenceSource::System,
                        since: now,
                    };
                    self.emit(&mut out, Event::AgentCreated { profile, presence });
                }
            },
            Command::DeleteAgent { agent } => {
                if !self.agents.contains_key(&agent) {
                    return Err(CommandError::UnknownAgent(agent));
                }
                let held: Vec<Interaction> = self.held_by(&agent).cloned().collect();
                if held.iter().any(|i| i.state != InteractionState::Offered) {
                    return Err(CommandError::AgentHoldsInteractions(agent));
                }
                let target = Target::Agent(agent.clone());
                let waiting_for_agent: Vec<InteractionId> = self
                    .waiting
                    .iter()
                    .map(|(_, _, _, id)| id.clone())
                    .filter(|id| self.interactions[id].current_target == target)
                    .collect();
                self.emit(
                    &mut out,
                    Event::AgentDeleted {
                        agent: agent.clone(),
                        at: now,
                    },
                );
                for interaction in held {
                    let id = interaction.spec.id.clone();
                    self.emit(
                        &mut out,
                        Event::OfferRevoked {
                            id: id.clone(),
                            agent: agent.clone(),
                            reason: OfferEndReason::AgentDeleted,
                            at: now,
                        },
                    );
                    self.after_missed_offer(&mut out, &id, now);
                }
                for id in waiting_for_agent {
                    self.after_missed_offer(&mut out, &id, now);
                }
            }
            Command::SetPresence {
                agent,
                status,
                reason,
                source,
            } => {
                let current = &self
                    .agents
                    .get(&agent)
                    .ok_or_else(|| CommandError::UnknownAgent(agent.clone()))?
                    .presence;
                if current.status != status || current.reason != reason {
                    let presence = Presence {
                        status,
                        reason,
                        source,
                        since: now,
                    };
                    self.emit(&mut out, Event::PresenceChanged { agent, presence });
                }
            }
            Command::CreateInteraction { spec } => {
                if self.interactions.contains_key(&spec.id) {
                    return Err(CommandError::DuplicateInteraction(spec.id));
                }
                self.check_target(&spec.target)?;
                if let Some(fallback) = &spec.fallback {
                    self.check_target(fallback)?;
                    if fallback == &spec.target {
                        return Err(CommandError::FallbackSameAsTarget);
                    }
                }
                let id = spec.id.clone();
                let target = spec.target.clone();
                self.emit(&mut out, Event::InteractionCreated { spec });
                self.route(&mut out, &id, target, now);
            }
            Command::Accept { id, agent } => {
                self.check_offered_to(&id, &agent, "accept")?;
                self.emit(&mut out, Event::InteractionAccepted { id, agent, at: now });
            }
            Command::Reject { id, agent } => {
                self.check_offered_to(&id, &agent, "reject")?;
                self.emit(
                    &mut out,
                    Event::InteractionRejected {
                        id: id.clone(),
                        agent,
                        at: now,
                    },
                );
                self.after_missed_offer(&mut out, &id, now);
            }
            Command::Complete {
                id,
                agent,
                disposition,
                notes,
            } => {
                let interaction = self.held_interaction(&id, &agent)?;
                if !matches!(
                    interaction.state,
                    InteractionState::Accepted | InteractionState::WrapUp
                ) {
                    return Err(CommandError::WrongState {
                        action: "complete",
                        state: interaction.state,
                    });
                }
                let event = Event::InteractionCompleted {
                    id,
                    agent,
                    disposition,
                    notes,
                    at: now,
                };
                self.emit(&mut out, event);
            }
            Command::Transfer {
                id,
                agent,
                target,
                fallback,
                note,
            } => {
                let interaction = self.held_interaction(&id, &agent)?;
                if interaction.state != InteractionState::Accepted {
                    return Err(CommandError::WrongState {
                        action: "transfer",
                        state: interaction.state,
                    });
                }
                self.check_target(&target)?;
                if target == Target::Agent(agent.clone()) {
                    return Err(CommandError::TransferToSelf);
                }
                if let Some(fallback) = &fallback {
                    self.check_target(fallback)?;
                    if fallback == &target {
                        return Err(CommandError::FallbackSameAsTarget);
                    }
                }
                let event = Event::InteractionTransferred {
                    id: id.clone(),
                    from: agent,
                    target: target.clone(),
                    fallback,
                    note,
                    at: now,
                };
                self.emit(&mut out, event);
                self.route(&mut out, &id, target, now);
            }
            Command::Hangup { id } => {
                let interaction = self
                    .interactions
                    .get(&id)
                    .ok_or_else(|| CommandError::UnknownInteraction(id.clone()))?;
                match (interaction.state, interaction.agent.clone()) {
                    (InteractionState::Queued, _) => {
                        self.emit(&mut out, Event::InteractionAbandoned { id, at: now })
                    }
                    (InteractionState::Offered, Some(agent)) => {
                        let revoked = Event::OfferRevoked {
                            id: id.clone(),
                            agent,
                            reason: OfferEndReason::Abandoned,
                            at: now,
                        };
                        self.emit(&mut out, revoked);
                        self.emit(&mut out, Event::InteractionAbandoned { id, at: now });
                    }
                    (InteractionState::Accepted, Some(agent)) => {
                        self.emit(&mut out, Event::InteractionEnded { id, agent, at: now })
                    }
                    (state, _) => {
                        return Err(CommandError::WrongState {
                            action: "hang up",
                            state,
                        })
                    }
                }
            }
            Command::ConnectionLost { agent } => {
                let current = self
                    .agents
                    .get(&agent)
                    .ok_or_else(|| CommandError::UnknownAgent(agent.clone()))?;
                if self.settings.offline_on_disconnect {
                    if current.presence.status != PresenceStatus::Offline {
                        let presence = Presence {
                            status: PresenceStatus::Offline,
                            reason: Some("connection_lost".to_owned()),
                            source: PresenceSource::System,
                            since: now,
                        };
                        let event = Event::PresenceChanged {
                            agent: agent.clone(),
                            presence,
                        };
                        self.emit(&mut out, event);
                    }
                    let offered: Vec<InteractionId> = self
                        .held_by(&agent)
                        .filter(|i| i.state == InteractionState::Offered)
                        .map(|i| i.spec.id.clone())
                        .collect();
                    for id in offered {
                        self.revoke_and_move_on(
                            &mut out,
                            &id,
                            &agent,
                            OfferEndReason::ConnectionLost,
                            now,
                        );
                    }
                }
            }
            Command::Tick => {
                let due: Vec<InteractionId> = self
                    .deadlines
                    .iter()
                    .take_while(|(at, _)| *at <= now)
                    .map(|(_, id)| id.clone())
                    .collect();
                for id in due {
                    if let Some(agent) = self.interactions[&id].agent.clone() {
                        self.revoke_and_move_on(
                            &mut out,
                            &id,
                            &agent,
                            OfferEndReason::TimedOut,
                            now,
                        );
                    }
                }
            }
        }
        self.dispatch(&mut out, now);
        Ok(out)
    }

    fn check_target(&self, target: &Target) -> Result<(), CommandError> {
        match target {
            Target::Agent(agent) if self.agents.contains_key(agent) => Ok(()),
            Target::Agent(agent) => Err(CommandError::UnknownTargetAgent(agent.clone())),
            // Queues arrive with routing; until then every queue name is unknown.
            Target::Queue(queue) => Err(CommandError::UnknownTargetQueue(queue.to_string())),
        }
    }

    fn check_offered_to(
        &self,
        id: &InteractionId,
        agent: &AgentId,
        action: &'static str,
    ) -> Result<(), CommandError> {
        let interaction = self
            .interactions
            .get(id)
            .ok_or_else(|| CommandError::UnknownInteraction(id.clone()))?;
        if interaction.state != InteractionState::Offered {
            return Err(CommandError::WrongState {
                action,
                state: interaction.state,
            });
        }
        if interaction.agent.as_ref() != Some(agent) {
            return Err(CommandError::NotHeldByAgent {
                id: id.clone(),
                agent: agent.clone(),
            });
        }
        Ok(())
    }

    fn held_interaction(
        &self,
        id: &InteractionId,
        agent: &AgentId,
    ) -> Result<&Interaction, CommandError> {
        let interaction = self
            .interactions
            .get(id)
            .ok_or_else(|| CommandError::UnknownInteraction(id.clone()))?;
        if interaction.agent.as_ref() != Some(agent) {
            if interaction.state.is_terminal() {
                return Err(CommandError::WrongState {
                    action: "act on",
                    state: interaction.state,
                });
            }
            return Err(CommandError::NotHeldByAgent {
                id: id.clone(),
                agent: agent.clone(),
            });
        }
        Ok(interaction)
    }

    fn revoke_and_move_on(
        &mut self,
        out: &mut Events,
        id: &InteractionId,
        agent: &AgentId,
        reason: OfferEndReason,
        now: Timestamp,
    ) {
        let event = Event::OfferRevoked {
            id: id.clone(),
            agent: agent.clone(),
            reason,
            at: now,
        };
        self.emit(out, event);
        self.after_missed_offer(out, id, now);
    }

    /// An offer ended without an accept (or the target agent went away): use the fallback
    /// once, else the interaction ends unanswered.
    fn after_missed_offer(&mut self, out: &mut Events, id: &InteractionId, now: Timestamp) {
        let current = self.interactions[id].current_target.clone();
        self.fall_back_or_end_unanswered(out, id, &current, now);
    }

    /// Routes to the pending fallback unless it is `failed` (the target that just failed),
    /// else ends the interaction unanswered.
    fn fall_back_or_end_unanswered(
        &mut self,
        out: &mut Events,
        id: &InteractionId,
        failed: &Target,
        now: Timestamp,
    ) {
        let fallback = self.interactions[id]
            .pending_fallback
            .clone()
            .filter(|fallback| fallback != failed);
        match fallback {
            Some(fallback) => self.route(out, id, fallback, now),
            None => self.emit(
                out,
                Event::InteractionUnanswered {
                    id: id.clone(),
                    at: now,
                },
            ),
        }
    }

    /// Sends an interaction towards `target`: offered at once when the agent can take it and
    /// nobody waits ahead for it, queued for it otherwise.
    fn route(&mut self, out: &mut Events, id: &InteractionId, target: Target, now: Timestamp) {
        match &target {
            Target::Agent(agent) if !self.agents.contains_key(agent) => {
                // The agent was deleted since the target was accepted: the fallback was for that.
                self.fall_back_or_end_unanswered(out, id, &target, now)
            }
            Target::Agent(agent) if self.can_take_offer(agent) && !self.is_waiting_for(&target) => {
                let event = Event::InteractionOffered {
                    id: id.clone(),
                    agent: agent.clone(),
                    target: target.clone(),
                    expires_at: now.plus_seconds(self.settings.offer_timeout_s),
                    at: now,
                };
                self.emit(out, event);
            }
            _ => self.emit(
                out,
                Event::InteractionQueued {
                    id: id.clone(),
                    target,
                    at: now,
                },
            ),
        }
    }

    /// Offers waiting callers to agents that can take them, in line order. Runs after every
    /// command, so that no caller ever waits for an agent who is free.
    fn dispatch(&mut self, out: &mut Events, now: Timestamp) {
        let line: Vec<(InteractionId, Target)> = self
            .waiting
            .iter()
            .map(|(_, _, _, id)| (id.clone(), self.interactions[id].current_target.clone()))
            .collect();
        for (id, target) in line {
            if let Target::Agent(agent) = &target {
                if self.can_take_offer(agent) {
                    let event = Event::InteractionOffered {
                        id,
                        agent: agent.clone(),
                        target: target.clone(),
                        expires_at: now.plus_seconds(self.settings.offer_timeout_s),
                        at: now,
                    };
                    self.emit(out, event);
                }
            }
        }
    }

    fn emit(&mut self, out: &mut Events, event: Event) {
        let recipients = self.apply(&event);
        out.push((event, recipients));
    }

    // ----- apply ---------------------------------------------------------------------------

    /// Applies one event and returns the agents it is for: those the interaction was offered or
    /// assigned to just before or just after it, or the agent whose presence changed.
    pub fn apply(&mut self, event: &Event) -> Vec<AgentId> {
        match event {
            Event::AgentCreated { profile, presence } => {
                let agent = Agent {
                    profile: profile.clone(),
                    presence: presence.clone(),
                    acked_seq: Seq::ZERO,
                };
                self.agents.insert(profile.id.clone(), agent);
                Vec::new()
            }
            Event::AgentUpdated { profile, .. } => {
                if let Some(agent) = self.agents.get_mut(&profile.id) {
                    agent.profile = profile.clone();
                }
                Vec::new()
            }
            Event::AgentDeleted { agent, .. } => {
                self.agents.remove(agent);
                Vec::new()
            }
            Event::PresenceChanged { agent, presence } => {
                if let Some(entry) = self.agents.get_mut(agent) {
                    entry.presence = presence.clone();
                }
                vec![agent.clone()]
            }
            Event::InteractionCreated { spec } => {
                let interaction = Interaction {
                    spec: spec.clone(),
                    state: InteractionState::Queued,
                    current_target: spec.target.clone(),
                    pending_fallback: spec.fallback.clone(),
                    agent: None,
                    offer_expires_at: None,
                    involved_agents: BTreeSet::new(),
                    waiting_since: spec.created_at,
                    waiting_order: 0,
                    last_transfer_note: None,
                    disposition: None,
                    notes: None,
                    updated_at: spec.created_at,
                };
                self.creation_order.push(spec.id.clone());
                self.interactions.insert(spec.id.clone(), interaction);
                Vec::new()
            }
            _ => self.apply_to_interaction(event),
        }
    }

    fn apply_to_interaction(&mut self, event: &Event) -> Vec<AgentId> {
        let Some(id) = event.interaction_id() else {
            return Vec::new();
        };
        let Some(interaction) = self.interactions.get_mut(id) else {
            return Vec::new();
        };
        let agent_before = interaction.agent.clone();
        let deadline_before = interaction.offer_expires_at;
        let waiting_before = waiting_key(interaction);
        interaction.updated_at = event.time();
        let mut joins_line = false;
        match event {
            Event::InteractionQueued { target, at, .. } => {
                retarget(interaction, target);
                interaction.state = InteractionState::Queued;
                interaction.waiting_since = *at;
                self.waiting_counter += 1;
                interaction.waiting_order = self.waiting_counter;
                joins_line = true;
            }
            Event::InteractionOffered {
                agent,
                target,
                expires_at,
                ..
            } => {
                retarget(interaction, target);
                interaction.state = InteractionState::Offered;
                interaction.agent = Some(agent.clone());
                interaction.offer_expires_at = Some(*expires_at);
                interaction.involved_agents.insert(agent.clone());
            }
            Event::OfferRevoked { .. } | Event::InteractionRejected { .. } => {
                interaction.state = InteractionState::Queued;
                interaction.agent = None;
                interaction.offer_expires_at = None;
            }
            Event::InteractionAccepted { .. } => {
                interaction.state = InteractionState::Accepted;
                interaction.offer_expires_at = None;
            }
            Event::InteractionTransferred {
                target,
                fallback,
                note,
                ..
            } => {
                interaction.state = InteractionState::Queued;
                interaction.agent = None;
                interaction.current_target = target.clone();
                interaction.pending_fallback = fallback.clone();
                interaction.last_transfer_note = note.clone();
            }
            Event::InteractionEnded { .. } => interaction.state = InteractionState::WrapUp,
            Event::InteractionAbandoned { .. } => {
                interaction.state = InteractionState::Abandoned;
                interaction.agent = None;
            }
            Event::InteractionUnanswered { .. } => {
                interaction.state = InteractionState::Unanswered;
                interaction.agent = None;
            }
            Event::InteractionCompleted {
                disposition, notes, ..
            } => {
                interaction.state = InteractionState::Completed;
                interaction.disposition = disposition.clone();
                interaction.notes = notes.clone();
            }
            Event::AgentCreated { .. }
            | Event::AgentUpdated { .. }
            | Event::AgentDeleted { .. }
            | Event::PresenceChanged { .. }
            | Event::InteractionCreated { .. } => {}
        }
        let agent_after = interaction.agent.clone();
        let holds_after = matches!(
            interaction.state,
            InteractionState::Offered | InteractionState::Accepted | InteractionState::WrapUp
        );
        let deadline_after = interaction.offer_expires_at;
        let waiting_after = waiting_key(interaction);

        // Keep the indexes in step with the interaction.
        self.waiting.remove(&waiting_before);
        if joins_line {
            self.waiting.insert(waiting_after);
        }
        if let Some(at) = deadline_before {
            self.deadlines.remove(&(at, id.clone()));
        }
        if let Some(at) = deadline_after {
            self.deadlines.insert((at, id.clone()));
        }
        if let Some(agent) = &agent_before {
            if let Some(set) = self.held.get_mut(agent) {
                set.remove(id);
                if set.is_empty() {
                    self.held.remove(agent);
                }
            }
        }
        if let (Some(agent), true) = (&agent_after, holds_after) {
            self.held
                .entry(agent.clone())
                .or_default()
                .insert(id.clone());
        }

        let mut recipients: Vec<AgentId> = agent_before.into_iter().collect();
        if let Some(agent) = agent_after {
            if !recipients.contains(&agent) {
                recipients.push(agent);
            }
        }
        recipients
    }
}

fn waiting_key(interaction: &Interaction) -> WaitingKey {
    (
        Reverse(interaction.spec.priority),
        interaction.waiting_since,
        interaction.waiting_order,
        interaction.spec.id.clone(),
    )
}

/// A new target other than the current one uses up the pending fallback.
fn retarget(interaction: &mut Interaction, target: &Target) {
    if &interaction.current_target != target {
        if interaction.pending_fallback.as_ref() == Some(target) {
            interaction.pending_fallback = None;
        }
        interaction.current_target = target.clone();
    }
}
