//! Commands: what `execute` checks before anything changes, and what each command does to the
//! state by emitting events; timers that fall due and the routing of one interaction to its target.

use super::*;

impl State {
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
        self.check(&command)?;
        self.refresh_day(now);
        self.relax_requirements(now);
        // Room for the usual arrival (created, queued, offered) without growing.
        let mut out = Vec::with_capacity(4);
        self.run(&mut out, command, now);
        self.dispatch(&mut out, now);
        Ok(out)
    }

    /// Everything that can refuse a command, before anything changes.
    pub(super) fn check(&self, command: &Command) -> Result<(), CommandError> {
        match command {
            Command::UpsertAgent { .. } | Command::Tick => Ok(()),
            Command::DeleteAgent { agent } => {
                if !self.agents.contains_key(agent) {
                    return Err(CommandError::UnknownAgent(agent.clone()));
                }
                let engaged = self
                    .held_by(agent)
                    .any(|i| i.state != InteractionState::Offered);
                if engaged {
                    return Err(CommandError::AgentHoldsInteractions(agent.clone()));
                }
                Ok(())
            }
            Command::SetPresence { agent, .. } | Command::ConnectionLost { agent } => {
                if self.agents.contains_key(agent) {
                    Ok(())
                } else {
                    Err(CommandError::UnknownAgent(agent.clone()))
                }
            }
            Command::CreateInteraction { spec } => {
                if self.interactions.contains_key(&spec.id) {
                    return Err(CommandError::DuplicateInteraction(spec.id.clone()));
                }
                self.check_target(&spec.target)?;
                if let Some(fallback) = &spec.fallback {
                    self.check_target(fallback)?;
                    if fallback == &spec.target {
                        return Err(CommandError::FallbackSameAsTarget);
                    }
                }
                Ok(())
            }
            Command::Accept { id, agent } => self.check_offered_to(id, agent, "accept"),
            Command::Reject { id, agent } => self.check_offered_to(id, agent, "reject"),
            Command::Complete { id, agent, .. } => {
                let interaction = self.held_interaction(id, agent)?;
                if !matches!(
                    interaction.state,
                    InteractionState::Accepted | InteractionState::WrapUp
                ) {
                    return Err(CommandError::WrongState {
                        action: "complete",
                        state: interaction.state,
                    });
                }
                Ok(())
            }
            Command::Transfer {
                id,
                agent,
                target,
                fallback,
                ..
            } => {
                let interaction = self.held_interaction(id, agent)?;
                if interaction.state != InteractionState::Accepted {
                    return Err(CommandError::WrongState {
                        action: "transfer",
                        state: interaction.state,
                    });
                }
                self.check_target(target)?;
                if target == &Target::Agent(agent.clone()) {
                    return Err(CommandError::TransferToSelf);
                }
                if let Some(fallback) = fallback {
                    self.check_target(fallback)?;
                    if fallback == target {
                        return Err(CommandError::FallbackSameAsTarget);
                    }
                }
                Ok(())
            }
            Command::UpdateContext {
                id,
                expected_version,
                ..
            } => {
                let interaction = self
                    .interactions
                    .get(id)
                    .ok_or_else(|| CommandError::UnknownInteraction(id.clone()))?;
                if interaction.state.is_terminal() {
                    return Err(CommandError::WrongState {
                        action: "update the context of",
                        state: interaction.state,
                    });
                }
                if interaction.context_version != *expected_version {
                    return Err(CommandError::ContextVersionMismatch {
                        id: id.clone(),
                        expected: *expected_version,
                        current: interaction.context_version,
                    });
                }
                Ok(())
            }
            Command::RecordEnrichment { id, .. } => {
                // An ended interaction still takes what its lookup found: its log is complete.
                if self.interactions.contains_key(id) {
                    Ok(())
                } else {
                    Err(CommandError::UnknownInteraction(id.clone()))
                }
            }
            Command::Hangup { id } => {
                let interaction = self
                    .interactions
                    .get(id)
                    .ok_or_else(|| CommandError::UnknownInteraction(id.clone()))?;
                match interaction.state {
                    InteractionState::Queued
                    | InteractionState::Offered
                    | InteractionState::Accepted => Ok(()),
                    state => Err(CommandError::WrongState {
                        action: "hang up",
                        state,
                    }),
                }
            }
            Command::UpsertQueue { config } => {
                config.validate()?;
                match &config.overflow {
                    Some(overflow) if !self.queues.contains_key(overflow) => {
                        Err(CommandError::UnknownOverflowQueue(overflow.clone()))
                    }
                    _ => Ok(()),
                }
            }
            Command::DeleteQueue { name } => {
                if !self.queues.contains_key(name) {
                    return Err(CommandError::UnknownQueue(name.clone()));
                }
                let in_use = self.interactions.values().any(|i| {
                    matches!(&i.current_target, Target::Queue(q) if q == name)
                        && matches!(
                            i.state,
                            InteractionState::Queued | InteractionState::Offered
                        )
                });
                let overflows_here = self.queues.iter().any(|(_, q)| {
                    q.config.overflow.as_ref() == Some(name) && &q.config.name != name
                });
                if in_use || overflows_here {
                    return Err(CommandError::QueueInUse(name.clone()));
                }
                Ok(())
            }
        }
    }

    /// Appends the events of a command that passed `check`.
    pub(super) fn run(&mut self, out: &mut Events, command: Command, now: Timestamp) {
        match command {
            Command::UpsertAgent { profile } => match self.agents.get(&profile.id) {
                Some(existing) if existing.profile == profile => {}
                Some(_) => self.emit(out, Event::AgentUpdated { profile, at: now }),
                None => {
                    let presence = Presence {
                        status: PresenceStatus::Offline,
                        reason: None,
                        source: PresenceSource::System,
                        since: now,
                    };
                    self.emit(out, Event::AgentCreated { profile, presence });
                }
            },
            Command::DeleteAgent { agent } => {
                let offered: Vec<InteractionId> =
                    self.held_by(&agent).map(|i| i.spec.id.clone()).collect();
                let target = Target::Agent(agent.clone());
                let waiting_for_agent: Vec<InteractionId> = self
                    .lines
                    .iter()
                    .filter(|(key, _)| matches!(key, LineKey::Agent(a, _) if *a == agent))
                    .flat_map(|(_, line)| line.values().cloned())
                    .collect();
                self.emit(
                    out,
                    Event::AgentDeleted {
                        agent: agent.clone(),
                        at: now,
                    },
                );
                for id in offered {
                    self.revoke(out, &id, &agent, OfferEndReason::AgentDeleted, now);
                    self.after_offer_ended(out, &id, now);
                }
                for id in waiting_for_agent {
                    self.fall_back_or_end_unanswered(out, &id, &target, now);
                }
            }
            Command::SetPresence {
                agent,
                status,
                reason,
                source,
            } => {
                let current = &self.agents[&agent].presence;
                if current.status != status || current.reason != reason {
                    let presence = Presence {
                        status,
                        reason,
                        source,
                        since: now,
                    };
                    self.emit(out, Event::PresenceChanged { agent, presence });
                }
            }
            Command::CreateInteraction { spec } => {
                let id = spec.id.clone();
                let target = spec.target.clone();
                let spec = Arc::new(spec);
                self.emit(out, Event::InteractionCreated { spec });
                self.route(out, &id, target, now);
            }
            Command::Accept { id, agent } => {
                let others: Vec<AgentId> = self.interactions[&id]
                    .offered_to
                    .iter()
                    .filter(|other| **other != agent)
                    .cloned()
                    .collect();
                for other in others {
                    self.revoke(out, &id, &other, OfferEndReason::AnsweredElsewhere, now);
                }
                self.emit(out, Event::InteractionAccepted { id, agent, at: now });
            }
            Command::Reject { id, agent } => {
                let rejected = Event::InteractionRejected {
                    id: id.clone(),
                    agent: agent.clone(),
                    at: now,
                };
                self.emit(out, rejected);
                self.after_offer_ended(out, &id, now);
                self.away_after_misses(out, &agent, now);
            }
            Command::Complete {
                id,
                agent,
                disposition,
                notes,
            } => {
                let event = Event::InteractionCompleted {
                    id,
                    agent,
                    disposition,
                    notes,
                    at: now,
                    wrap_up_expired: false,
                };
                self.emit(out, event);
            }
            Command::Transfer {
                id,
                agent,
                target,
                fallback,
                note,
            } => {
                let event = Event::InteractionTransferred {
                    id: id.clone(),
                    from: agent,
                    target: target.clone(),
                    fallback,
                    note,
                    at: now,
                };
                self.emit(out, event);
                self.route(out, &id, target, now);
            }
            Command::UpdateContext {
                id,
                context,
                patch,
                by,
                ..
            } => {
                let version = self.interactions[&id].context_version + 1;
                let event = Event::ContextUpdated {
                    id,
                    context: Arc::from(context),
                    patch: Arc::from(patch),
                    version,
                    by,
                    at: now,
                };
                self.emit(out, event);
            }
            Command::RecordEnrichment {
                id,
                connector,
                outcome,
            } => {
                let event = match outcome {
                    Ok(fields) => Event::InteractionEnriched {
                        id,
                        enrichment: crate::interaction::Enrichment {
                            connector,
                            fields: Arc::from(fields),
                        },
                        at: now,
                    },
                    Err(reason) => Event::EnrichmentFailed {
                        id,
                        connector,
                        reason,
                        at: now,
                    },
                };
                self.emit(out, event);
            }
            Command::Hangup { id } => {
                let interaction = &self.interactions[&id];
                match interaction.state {
                    InteractionState::Accepted => {
                        let agent = interaction.agent.clone().expect("accepted has an agent");
                        let wrap_up_until = self.wrap_up_deadline(interaction, now);
                        let event = Event::InteractionEnded {
                            id,
                            agent,
                            wrap_up_until,
                            at: now,
                        };
                        self.emit(out, event);
                    }
                    _ => {
                        let offered: Vec<AgentId> =
                            interaction.offered_to.iter().cloned().collect();
                        for agent in offered {
                            self.revoke(out, &id, &agent, OfferEndReason::Abandoned, now);
                        }
                        self.emit(out, Event::InteractionAbandoned { id, at: now });
                    }
                }
            }
            Command::ConnectionLost { agent } => {
                if !self.settings.offline_on_disconnect {
                    return;
                }
                if self.agents[&agent].presence.status != PresenceStatus::Offline {
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
                    self.emit(out, event);
                }
                let offered: Vec<InteractionId> = self
                    .held_by(&agent)
                    .filter(|i| i.state == InteractionState::Offered)
                    .map(|i| i.spec.id.clone())
                    .collect();
                for id in offered {
                    self.revoke(out, &id, &agent, OfferEndReason::ConnectionLost, now);
                    self.after_offer_ended(out, &id, now);
                }
            }
            Command::Tick => self.tick(out, now),
            Command::UpsertQueue { config } => {
                let existing = self.queues.get(&config.name).map(|q| &q.config);
                if existing != Some(&config) {
                    let created = existing.is_none();
                    self.emit(
                        out,
                        Event::QueueUpserted {
                            config,
                            created,
                            at: now,
                        },
                    );
                }
            }
            Command::DeleteQueue { name } => self.emit(out, Event::QueueDeleted { name, at: now }),
        }
    }

    /// Escalations that passed need no event (`dispatch` reads the time), only a look at the
    /// lines of the callers whose requirement relaxed.
    pub(super) fn relax_requirements(&mut self, now: Timestamp) {
        let passed: Vec<(Timestamp, InteractionId)> = self
            .escalations
            .range(..(now.plus_millis(1), InteractionId::lowest()))
            .cloned()
            .collect();
        for entry in passed {
            self.escalations.remove(&entry);
            if let Some((line, _)) = self.line_of.get(&entry.1) {
                self.dirty.insert(line.clone());
            }
        }
    }

    pub(super) fn tick(&mut self, out: &mut Events, now: Timestamp) {
        // Handling one timer can make another due (a caller requeued after its wait passed):
        // go on until none is left, each timer once.
        let mut handled = BTreeSet::new();
        loop {
            let due: Vec<(Timestamp, TimerKind, InteractionId)> = self
                .timers
                .iter()
                .take_while(|(at, _, _)| *at <= now)
                .filter(|timer| !handled.contains(*timer))
                .cloned()
                .collect();
            if due.is_empty() {
                break;
            }
            handled.extend(due.iter().cloned());
            self.handle_due_timers(out, due, now);
        }
    }

    pub(super) fn handle_due_timers(
        &mut self,
        out: &mut Events,
        due: Vec<(Timestamp, TimerKind, InteractionId)>,
        now: Timestamp,
    ) {
        for (_, kind, id) in due {
            let Some(interaction) = self.interactions.get(&id) else {
                continue;
            };
            match kind {
                TimerKind::Offer if interaction.state == InteractionState::Offered => {
                    let offered: Vec<AgentId> = interaction.offered_to.iter().cloned().collect();
                    for agent in &offered {
                        self.revoke(out, &id, agent, OfferEndReason::TimedOut, now);
                    }
                    self.after_offer_ended(out, &id, now);
                    for agent in &offered {
                        self.away_after_misses(out, agent, now);
                    }
                }
                TimerKind::MaxWait if interaction.state == InteractionState::Queued => {
                    let overflow = match &interaction.current_target {
                        Target::Queue(queue) => self
                            .queues
                            .get(queue)
                            .and_then(|q| q.config.overflow.clone())
                            .filter(|overflow| self.queues.contains_key(overflow)),
                        Target::Agent(agent) => {
                            let waited_for = Target::Agent(agent.clone());
                            // The named agent may have got room earlier in this tick: whoever
                            // can be served now is served first, this caller included.
                            self.dispatch(out, now);
                            let interaction = &self.interactions[&id];
                            if interaction.state != InteractionState::Queued {
                                continue;
                            }
                            // The named agent never got room: the fallback takes the caller.
                            let fallback = interaction
                                .pending_fallback
                                .clone()
                                .filter(|fallback| *fallback != waited_for);
                            match fallback {
                                Some(fallback) => self.route(out, &id, fallback, now),
                                None => self.emit(out, Event::InteractionTimedOut { id, at: now }),
                            }
                            continue;
                        }
                    };
                    match overflow {
                        Some(overflow) => self.emit(
                            out,
                            Event::InteractionQueued {
                                id,
                                target: Target::Queue(overflow),
                                at: now,
                                requeued: false,
                            },
                        ),
                        None => self.emit(out, Event::InteractionTimedOut { id, at: now }),
                    }
                }
                TimerKind::WrapUp if interaction.state == InteractionState::WrapUp => {
                    let agent = interaction.agent.clone().expect("wrap-up has an agent");
                    let event = Event::InteractionCompleted {
                        id,
                        agent,
                        disposition: None,
                        notes: None,
                        at: now,
                        wrap_up_expired: true,
                    };
                    self.emit(out, event);
                }
                _ => {}
            }
        }
    }

    pub(super) fn check_target(&self, target: &Target) -> Result<(), CommandError> {
        match target {
            Target::Agent(agent) if self.agents.contains_key(agent) => Ok(()),
            Target::Agent(agent) => Err(CommandError::UnknownTargetAgent(agent.clone())),
            Target::Queue(queue) if self.queues.contains_key(queue) => Ok(()),
            Target::Queue(queue) => Err(CommandError::UnknownTargetQueue(queue.to_string())),
        }
    }

    pub(super) fn check_offered_to(
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
        if !interaction.offered_to.contains(agent) {
            return Err(CommandError::NotHeldByAgent {
                id: id.clone(),
                agent: agent.clone(),
            });
        }
        Ok(())
    }

    pub(super) fn held_interaction(
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

    /// When an interaction that ends `now` leaves wrap-up by itself: its queue's `wrap_up_s`
    /// after `now`; an agent target has no wrap-up timer.
    pub(super) fn wrap_up_deadline(
        &self,
        interaction: &Interaction,
        now: Timestamp,
    ) -> Option<Timestamp> {
        match &interaction.current_target {
            Target::Queue(queue) => self
                .queues
                .get(queue)
                .map(|q| now.plus_seconds(q.config.wrap_up_s)),
            Target::Agent(_) => None,
        }
    }

    pub(super) fn revoke(
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
    }

    /// An offer ended without an accept. Once no offer of it is open: a queue's caller goes
    /// back to its place in line; an agent target's goes to its fallback once, or unanswered.
    pub(super) fn after_offer_ended(
        &mut self,
        out: &mut Events,
        id: &InteractionId,
        now: Timestamp,
    ) {
        let interaction = &self.interactions[id];
        if interaction.state != InteractionState::Queued || self.line_of.contains_key(id) {
            return;
        }
        match interaction.current_target.clone() {
            Target::Queue(queue) if self.queues.contains_key(&queue) => self.emit(
                out,
                Event::InteractionQueued {
                    id: id.clone(),
                    target: Target::Queue(queue),
                    at: now,
                    requeued: true,
                },
            ),
            current => self.fall_back_or_end_unanswered(out, id, &current, now),
        }
    }

    /// Routes to the pending fallback unless it is `failed` (the target that just failed),
    /// else ends the interaction unanswered.
    pub(super) fn fall_back_or_end_unanswered(
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

    /// Sends an interaction towards `target`. An agent that can take it, with nobody waiting
    /// ahead for it, is offered it at once; otherwise it joins the target's line, from where
    /// `dispatch` offers it.
    pub(super) fn route(
        &mut self,
        out: &mut Events,
        id: &InteractionId,
        target: Target,
        now: Timestamp,
    ) {
        let exists = match &target {
            Target::Agent(agent) => self.agents.contains_key(agent),
            Target::Queue(queue) => self.queues.contains_key(queue),
        };
        if !exists {
            // Deleted since the target was accepted: the fallback was for that.
            return self.fall_back_or_end_unanswered(out, id, &target, now);
        }
        if let Target::Agent(agent) = &target {
            // Serve first whoever became servable earlier in this command (a caller put back
            // in line, a requirement relaxed): they rank ahead of a caller arriving now.
            self.dispatch(out, now);
            let channel = self.interactions[id].spec.channel.clone();
            let nobody_ahead = self
                .lines
                .get(&LineKey::Agent(agent.clone(), Arc::from(channel.as_str())))
                .is_none_or(BTreeMap::is_empty);
            if nobody_ahead && self.can_take(agent, &channel) {
                let routing = Routing {
                    strategy: None,
                    eligible: 1,
                    reason: "addressed to this agent".to_owned(),
                };
                let expires_at = now.plus_seconds(self.settings.offer_timeout_s);
                let event = Event::InteractionOffered {
                    id: id.clone(),
                    agent: agent.clone(),
                    target,
                    expires_at,
                    at: now,
                    routing,
                };
                return self.emit(out, event);
            }
        }
        let event = Event::InteractionQueued {
            id: id.clone(),
            target,
            at: now,
            requeued: false,
        };
        self.emit(out, event);
    }

    /// After `max_missed_offers` misses in a row, an available agent is set away.
    pub(super) fn away_after_misses(&mut self, out: &mut Events, agent: &AgentId, now: Timestamp) {
        let Some(found) = self.agents.get(agent) else {
            return;
        };
        let limit = self.settings.max_missed_offers;
        if limit > 0
            && found.missed_in_a_row >= limit
            && found.presence.status == PresenceStatus::Available
        {
            let presence = Presence {
                status: PresenceStatus::Away,
                reason: Some("missed_offers".to_owned()),
                source: PresenceSource::System,
                since: now,
            };
            let event = Event::PresenceChanged {
                agent: agent.clone(),
                presence,
            };
            self.emit(out, event);
        }
    }

    /// Recomputes the strategy keys when the calendar day changed (`least_occupied` counts
    /// what was handled today).
    pub(super) fn refresh_day(&mut self, now: Timestamp) {
        let today = self.settings.calendar.day_of(now);
        if today == self.today {
            return;
        }
        self.today = today;
        let agents: Vec<AgentId> = self.agents.keys().cloned().collect();
        for agent in agents {
            self.refile(&agent);
        }
    }
}
