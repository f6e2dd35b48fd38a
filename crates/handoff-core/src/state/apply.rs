//! Apply: the only code that changes what the state says, one event at a time, and the indexes
//! (lines, timers, queue filings, member counts) it keeps in step.

use super::*;

impl State {
    /// Applies one event and returns the agents it is for: those the interaction was offered or
    /// assigned to just before or just after it, or the agent whose presence changed.
    pub fn apply(&mut self, event: &Event) -> Vec<AgentId> {
        // Only the agents an event names, or the holders of its interaction, can change
        // presence, activity or membership: they leave the member counts before it and come
        // back after it.
        let mut touched: Agents = event
            .interaction_id()
            .and_then(|id| self.interaction(id))
            .map(holders)
            .unwrap_or_default();
        if let Some(agent) = named_agent(event) {
            if !touched.contains(agent) {
                touched.push(agent.clone());
            }
        }
        let changes_membership = matches!(
            event,
            Event::AgentCreated { .. }
                | Event::AgentUpdated { .. }
                | Event::AgentDeleted { .. }
                | Event::QueueUpserted { .. }
                | Event::QueueDeleted { .. }
        );
        let recipients = if changes_membership {
            for agent in &touched {
                self.move_member(agent, Some(self.counted_as(agent)), None);
            }
            let recipients = self.apply_event(event);
            for agent in &touched {
                self.move_member(agent, None, Some(self.counted_as(agent)));
            }
            recipients
        } else {
            // The common case, every interaction event: memberships stay, so each agent whose
            // presence or activity changed moves between counts in one pass over its queues.
            let before: SmallVec<[(PresenceStatus, Activity); 4]> =
                touched.iter().map(|agent| self.counted_as(agent)).collect();
            let recipients = self.apply_event(event);
            for (agent, was) in touched.iter().zip(before) {
                let now = self.counted_as(agent);
                if now != was {
                    self.move_member(agent, Some(was), Some(now));
                }
            }
            recipients
        };
        match event {
            Event::QueueUpserted { config, .. } => self.recount_queue(&config.name),
            Event::QueueDeleted { name, .. } => {
                self.member_counts.remove(name);
            }
            _ => {}
        }
        recipients
    }

    pub(super) fn apply_event(&mut self, event: &Event) -> Vec<AgentId> {
        match event {
            Event::AgentCreated { profile, presence } => {
                let agent = Agent {
                    profile: profile.clone(),
                    presence: presence.clone(),
                    acked_seq: Seq::ZERO,
                    idle_since: presence.since,
                    last_routed: 0,
                    handled: (0, 0),
                    missed_in_a_row: 0,
                };
                self.agents.insert(profile.id.clone(), agent);
                self.refile_skills(&profile.id);
                Vec::new()
            }
            Event::AgentUpdated { profile, .. } => {
                if let Some(agent) = self.agents.get_mut(&profile.id) {
                    agent.profile = profile.clone();
                }
                self.refile_skills(&profile.id);
                Vec::new()
            }
            Event::AgentDeleted { agent, .. } => {
                self.agents.remove(agent);
                self.unfile_everywhere(agent);
                self.memberships.remove(agent);
                Vec::new()
            }
            Event::PresenceChanged { agent, presence } => {
                let holds_nothing = self.held.get(agent).is_none_or(BTreeSet::is_empty);
                if let Some(entry) = self.agents.get_mut(agent) {
                    let comes_back = presence.status == PresenceStatus::Available
                        && entry.presence.status != PresenceStatus::Available;
                    if comes_back {
                        entry.missed_in_a_row = 0;
                        if holds_nothing {
                            entry.idle_since = presence.since;
                        }
                    }
                    entry.presence = presence.clone();
                }
                self.refile(agent);
                vec![agent.clone()]
            }
            Event::QueueUpserted { config, .. } => {
                let slot = self.queues.insert(QueueIndex::new(config.clone()));
                let index = self.queues.at(slot).expect("inserted above");
                for agent in self.agents.values() {
                    let queues = self
                        .memberships
                        .entry(agent.profile.id.clone())
                        .or_default();
                    let place = queues.binary_search_by(|m| m.queue.cmp(&config.name));
                    // A filing in the queue's old index goes with it: the new one starts empty.
                    match (index.first_level_met(agent), place) {
                        (Some(level), Ok(at)) => {
                            queues[at].eligible_from = level;
                            queues[at].slot = slot;
                            queues[at].filed = None;
                        }
                        (Some(level), Err(at)) => queues.insert(
                            at,
                            Membership {
                                queue: config.name.clone(),
                                slot,
                                eligible_from: level,
                                filed: None,
                            },
                        ),
                        (None, Ok(at)) => {
                            queues.remove(at);
                        }
                        (None, Err(_)) => {}
                    }
                }
                let agents: Vec<AgentId> = self.agents.keys().cloned().collect();
                for agent in agents {
                    self.refile(&agent);
                }
                // Waiting callers keep their place; their wake-ups follow the new steps.
                let waiting: Vec<InteractionId> = self
                    .line_of
                    .iter()
                    .filter(
                        |(_, (line, _))| matches!(line, LineKey::Queue(q, _) if *q == config.name),
                    )
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in waiting {
                    self.clear_wait_timers(&id);
                    self.set_wait_timers(&id);
                }
                Vec::new()
            }
            Event::QueueDeleted { name, .. } => {
                self.queues.remove(name);
                self.stats.remove_queue(name);
                for queues in self.memberships.values_mut() {
                    queues.retain(|m| m.queue != *name);
                }
                Vec::new()
            }
            Event::InteractionCreated { spec } => {
                let interaction = Interaction {
                    spec: spec.clone(),
                    state: InteractionState::Queued,
                    current_target: spec.target.clone(),
                    pending_fallback: spec.fallback.clone(),
                    agent: None,
                    offered_to: BTreeSet::new(),
                    just_missed_by: BTreeSet::new(),
                    entered_queue_at: None,
                    max_wait_at: None,
                    escalations: SmallVec::new(),
                    wrap_up_until: None,
                    offer_expires_at: None,
                    involved_agents: BTreeSet::new(),
                    waiting_since: spec.created_at,
                    waiting_order: 0,
                    last_transfer_note: None,
                    disposition: None,
                    notes: None,
                    updated_at: spec.created_at,
                    updated_context: None,
                    context_version: 1,
                    enrichment: spec.enrichment.clone(),
                };
                self.creation_order.push(spec.id.clone());
                self.interactions
                    .insert(spec.id.clone(), Box::new(interaction));
                Vec::new()
            }
            // Data about the caller, not a step of the call: no line, timer or holder moves.
            Event::ContextUpdated {
                id,
                context,
                version,
                at,
                ..
            } => self.update_interaction_data(id, *at, |interaction| {
                interaction.updated_context = Some(context.clone());
                interaction.context_version = *version;
            }),
            Event::InteractionEnriched { id, enrichment, at } => {
                self.update_interaction_data(id, *at, |interaction| {
                    let found = &mut interaction.enrichment;
                    found.retain(|earlier| earlier.connector != enrichment.connector);
                    found.push(enrichment.clone());
                })
            }
            Event::EnrichmentFailed { id, at, .. } => self.update_interaction_data(id, *at, |_| {}),
            _ => self.apply_to_interaction(event),
        }
    }

    /// Applies a change of what an interaction carries (its context, what the CRM found),
    /// which moves no line, timer or holder; the event is for the interaction's holders.
    pub(super) fn update_interaction_data(
        &mut self,
        id: &InteractionId,
        at: Timestamp,
        change: impl FnOnce(&mut Interaction),
    ) -> Vec<AgentId> {
        let Some(interaction) = self.interactions.get_mut(id) else {
            return Vec::new();
        };
        change(interaction);
        interaction.updated_at = at;
        holders(interaction).into_vec()
    }

    pub(super) fn apply_to_interaction(&mut self, event: &Event) -> Vec<AgentId> {
        let Some(id) = event.interaction_id().cloned() else {
            return Vec::new();
        };
        let Some(interaction) = self.interactions.get(&id) else {
            return Vec::new();
        };
        let holders_before = holders(interaction);
        let timers_before = (interaction.offer_expires_at, interaction.wrap_up_until);
        let at = event.time();
        self.leave_line(&id);
        let interaction = self.interactions.get_mut(&id).expect("looked up above");
        interaction.updated_at = at;
        let mut joins_line = false;
        let mut overflowed_from = None;
        let mut missed_by = None;
        let mut accepted_by = None;
        match event {
            Event::InteractionQueued {
                target, requeued, ..
            } => {
                if !requeued {
                    if let Target::Queue(previous) = &interaction.current_target {
                        if interaction.state == InteractionState::Queued
                            && interaction.entered_queue_at.is_some()
                            && &interaction.current_target != target
                        {
                            overflowed_from = Some(previous.clone());
                        }
                    }
                    retarget(interaction, target);
                    interaction.waiting_since = at;
                    self.waiting_counter += 1;
                    interaction.waiting_order = self.waiting_counter;
                    interaction.entered_queue_at = matches!(target, Target::Queue(_)).then_some(at);
                }
                interaction.state = InteractionState::Queued;
                joins_line = true;
            }
            Event::InteractionOffered {
                agent,
                target,
                expires_at,
                ..
            } => {
                retarget(interaction, target);
                if interaction.state != InteractionState::Offered {
                    // A new round of offers: who missed the last one was considered already.
                    interaction.just_missed_by.clear();
                }
                interaction.state = InteractionState::Offered;
                interaction.offered_to.insert(agent.clone());
                interaction.agent = single(&interaction.offered_to);
                interaction.offer_expires_at = Some(*expires_at);
                interaction.involved_agents.insert(agent.clone());
                if matches!(target, Target::Queue(_)) {
                    self.route_counter += 1;
                    if let Some(found) = self.agents.get_mut(agent) {
                        found.last_routed = self.route_counter;
                    }
                }
            }
            Event::OfferRevoked { agent, reason, .. } => {
                interaction.offered_to.remove(agent);
                interaction.agent = single(&interaction.offered_to);
                if matches!(
                    reason,
                    OfferEndReason::TimedOut | OfferEndReason::ConnectionLost
                ) {
                    interaction.just_missed_by.insert(agent.clone());
                }
                if interaction.offered_to.is_empty() {
                    interaction.state = InteractionState::Queued;
                    interaction.offer_expires_at = None;
                }
                if *reason == OfferEndReason::TimedOut {
                    missed_by = Some(agent.clone());
                }
            }
            Event::InteractionRejected { agent, .. } => {
                interaction.offered_to.remove(agent);
                interaction.agent = single(&interaction.offered_to);
                interaction.just_missed_by.insert(agent.clone());
                if interaction.offered_to.is_empty() {
                    interaction.state = InteractionState::Queued;
                    interaction.offer_expires_at = None;
                }
                missed_by = Some(agent.clone());
            }
            Event::InteractionAccepted { agent, .. } => {
                interaction.state = InteractionState::Accepted;
                interaction.offered_to.clear();
                interaction.agent = Some(agent.clone());
                interaction.offer_expires_at = None;
                interaction.just_missed_by.clear();
                accepted_by = Some(agent.clone());
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
                interaction.just_missed_by.clear();
            }
            Event::InteractionEnded { wrap_up_until, .. } => {
                interaction.state = InteractionState::WrapUp;
                interaction.wrap_up_until = *wrap_up_until;
            }
            Event::InteractionAbandoned { .. } => {
                interaction.state = InteractionState::Abandoned;
                interaction.agent = None;
                interaction.offered_to.clear();
            }
            Event::InteractionUnanswered { .. } => {
                interaction.state = InteractionState::Unanswered;
                interaction.agent = None;
            }
            Event::InteractionTimedOut { .. } => {
                interaction.state = InteractionState::TimedOut;
                interaction.agent = None;
            }
            Event::InteractionCompleted {
                disposition, notes, ..
            } => {
                interaction.state = InteractionState::Completed;
                interaction.disposition = disposition.clone();
                interaction.notes = notes.clone();
                interaction.wrap_up_until = None;
            }
            Event::AgentCreated { .. }
            | Event::AgentUpdated { .. }
            | Event::AgentDeleted { .. }
            | Event::PresenceChanged { .. }
            | Event::InteractionCreated { .. }
            | Event::ContextUpdated { .. }
            | Event::InteractionEnriched { .. }
            | Event::EnrichmentFailed { .. }
            | Event::QueueUpserted { .. }
            | Event::QueueDeleted { .. } => {}
        }
        self.record_stats(event, &id, at, overflowed_from.as_ref());
        let interaction = &self.interactions[&id];
        let holders_after = holders(interaction);
        let deadline = (interaction.state == InteractionState::Offered)
            .then_some(interaction.offer_expires_at)
            .flatten();
        let wrap_up_until = (interaction.state == InteractionState::WrapUp)
            .then_some(interaction.wrap_up_until)
            .flatten();

        // Keep the indexes in step with the interaction.
        if let Some(at) = timers_before.0 {
            self.timers.remove(&(at, TimerKind::Offer, id.clone()));
        }
        if let Some(at) = timers_before.1 {
            self.timers.remove(&(at, TimerKind::WrapUp, id.clone()));
        }
        if let Some(at) = deadline {
            self.timers.insert((at, TimerKind::Offer, id.clone()));
        }
        if let Some(at) = wrap_up_until {
            self.timers.insert((at, TimerKind::WrapUp, id.clone()));
        }
        if joins_line {
            self.join_line(&id);
        }
        for agent in holders_not_in(&holders_before, &holders_after) {
            if let Some(set) = self.held.get_mut(agent) {
                set.remove(&id);
                if set.is_empty() {
                    self.held.remove(agent);
                    if let Some(found) = self.agents.get_mut(agent) {
                        found.idle_since = at;
                    }
                }
            }
        }
        for agent in holders_not_in(&holders_after, &holders_before) {
            self.held
                .entry(agent.clone())
                .or_default()
                .insert(id.clone());
        }
        if let Some(agent) = missed_by.and_then(|a| self.agents.get_mut(&a)) {
            agent.missed_in_a_row += 1;
        }
        if let Some(agent) = accepted_by.and_then(|a| self.agents.get_mut(&a)) {
            agent.missed_in_a_row = 0;
            let day = self.settings.calendar.day_of(at);
            agent.handled = match agent.handled {
                (d, n) if d == day => (d, n + 1),
                _ => (day, 1),
            };
        }
        let mut touched = holders_before;
        let before_count = touched.len();
        for agent in holders_after {
            if touched[..before_count].binary_search(&agent).is_err() {
                touched.push(agent);
            }
        }
        touched.sort_unstable();
        for agent in &touched {
            self.refile(agent);
        }
        match event {
            // About one agent's offer: for that agent only, also while a ring_all queue rings
            // several at once.
            Event::InteractionOffered { agent, .. }
            | Event::OfferRevoked { agent, .. }
            | Event::InteractionRejected { agent, .. }
            | Event::InteractionAccepted { agent, .. } => vec![agent.clone()],
            _ => touched.into_vec(),
        }
    }

    /// Feeds the queue statistics from an event just applied to interaction `id`.
    pub(super) fn record_stats(
        &mut self,
        event: &Event,
        id: &InteractionId,
        at: Timestamp,
        overflowed_from: Option<&QueueName>,
    ) {
        let interaction = &self.interactions[id];
        let Target::Queue(queue) = &interaction.current_target else {
            return;
        };
        let waited_ms = interaction
            .entered_queue_at
            .map_or(0, |entered| (at.millis() - entered.millis()).max(0) as u64);
        match event {
            Event::InteractionQueued {
                requeued: false, ..
            } => {
                if let Some(previous) = overflowed_from {
                    self.stats.record_overflowed(previous, at);
                }
                self.stats.record_entered(queue, at);
            }
            Event::InteractionAccepted { .. } => self.stats.record_answered(queue, at, waited_ms),
            Event::InteractionAbandoned { .. } => self.stats.record_abandoned(queue, at, waited_ms),
            Event::InteractionTimedOut { .. } => self.stats.record_timed_out(queue, at),
            _ => {}
        }
    }

    pub(super) fn join_line(&mut self, id: &InteractionId) {
        let interaction = &self.interactions[id];
        let line = Self::line_key(&mut self.channels, interaction);
        let key = (
            Reverse(interaction.spec.priority),
            interaction.waiting_since,
            interaction.waiting_order,
        );
        self.lines
            .entry(line.clone())
            .or_default()
            .insert(key, id.clone());
        self.dirty.insert(line.clone());
        self.line_of.insert(id.clone(), (line, key));
        self.set_wait_timers(id);
    }

    pub(super) fn leave_line(&mut self, id: &InteractionId) {
        if let Some((line, key)) = self.line_of.remove(id) {
            if let Some(entries) = self.lines.get_mut(&line) {
                entries.remove(&key);
                if entries.is_empty() {
                    self.lines.remove(&line);
                }
            }
            self.clear_wait_timers(id);
        }
    }

    /// The wake-ups of a waiting caller: in a queue, each step's relaxation and `max_wait_s`;
    /// for an agent, the agent target's `max_wait_s`.
    pub(super) fn set_wait_timers(&mut self, id: &InteractionId) {
        let interaction = &self.interactions[id];
        let queue = match &interaction.current_target {
            Target::Queue(queue) => queue,
            Target::Agent(_) => {
                let wait_s = interaction
                    .spec
                    .max_wait_s
                    .unwrap_or(self.settings.agent_max_wait_s);
                let at = interaction.waiting_since.plus_seconds(wait_s);
                self.timers.insert((at, TimerKind::MaxWait, id.clone()));
                let interaction = self.interactions.get_mut(id).expect("exists");
                interaction.max_wait_at = Some(at);
                return;
            }
        };
        let Some(index) = self.queues.get(queue) else {
            return;
        };
        let since = interaction.waiting_since;
        let escalations: SmallVec<[Timestamp; 2]> = index
            .config
            .steps
            .iter()
            .map(|step| since.plus_seconds(step.after_s))
            .collect();
        let entered = interaction.entered_queue_at.unwrap_or(since);
        let max_wait_at = index.config.max_wait_s.map(|s| entered.plus_seconds(s));
        for at in &escalations {
            self.escalations.insert((*at, id.clone()));
        }
        if let Some(at) = max_wait_at {
            self.timers.insert((at, TimerKind::MaxWait, id.clone()));
        }
        let interaction = self.interactions.get_mut(id).expect("exists");
        interaction.escalations = escalations;
        interaction.max_wait_at = max_wait_at;
    }

    pub(super) fn clear_wait_timers(&mut self, id: &InteractionId) {
        let Some(interaction) = self.interactions.get_mut(id) else {
            return;
        };
        for at in interaction.escalations.drain(..) {
            self.escalations.remove(&(at, id.clone()));
        }
        if let Some(at) = interaction.max_wait_at.take() {
            self.timers.remove(&(at, TimerKind::MaxWait, id.clone()));
        }
    }

    /// Re-files the agent's eligibility in every queue after its skills changed.
    pub(super) fn refile_skills(&mut self, agent_id: &AgentId) {
        self.unfile_everywhere(agent_id);
        let Some(agent) = self.agents.get(agent_id) else {
            return;
        };
        // In queue-name order, as `memberships` keeps them.
        let serves: Vec<Membership> = self
            .queues
            .iter()
            .filter_map(|(slot, index)| {
                index.first_level_met(agent).map(|level| Membership {
                    queue: index.config.name.clone(),
                    slot,
                    eligible_from: level,
                    filed: None,
                })
            })
            .collect();
        self.memberships.insert(agent_id.clone(), serves);
        self.refile(agent_id);
    }

    /// Marks the lines an agent with room could serve: those addressed to it and those of its
    /// queues.
    pub(super) fn mark_lines_of(&mut self, agent: &AgentId) {
        let addressed = LineKey::Agent(agent.clone(), lowest_channel());
        let mut marked: Vec<LineKey> = self
            .lines
            .range(addressed..)
            .map(|(key, _)| key)
            .take_while(|key| matches!(key, LineKey::Agent(a, _) if a == agent))
            .cloned()
            .collect();
        for Membership { queue, .. } in self.memberships.get(agent).into_iter().flatten() {
            let first = LineKey::Queue(queue.clone(), lowest_channel());
            marked.extend(
                self.lines
                    .range(first..)
                    .map(|(key, _)| key)
                    .take_while(|key| matches!(key, LineKey::Queue(q, _) if q == queue))
                    .cloned(),
            );
        }
        self.dirty.extend(marked);
    }

    /// Re-files the agent in the routable sets of the queues it serves, under its current key.
    pub(super) fn refile(&mut self, agent_id: &AgentId) {
        let Some(agent) = self.agents.get(agent_id) else {
            return;
        };
        let room = self.room_of(agent);
        if room.is_some() {
            self.mark_lines_of(agent_id);
        }
        let Some(agent) = self.agents.get(agent_id) else {
            return;
        };
        let Some(queues) = self.memberships.get_mut(agent_id) else {
            return;
        };
        for membership in queues {
            let Some(index) = self.queues.at_mut(membership.slot) else {
                continue;
            };
            let level = membership.eligible_from;
            if let (Some(filing), Some(room)) = (&membership.filed, &room) {
                if index.files_as(filing, agent, level, room, self.today) {
                    continue;
                }
            }
            if let Some(filing) = membership.filed.take() {
                index.unfile(agent_id, filing);
            }
            if let Some(room) = &room {
                membership.filed = Some(index.file(agent, level, room.clone(), self.today));
            }
        }
    }

    /// Takes the agent out of the routable sets of every queue it serves.
    pub(super) fn unfile_everywhere(&mut self, agent_id: &AgentId) {
        for membership in self.memberships.get_mut(agent_id).into_iter().flatten() {
            if let (Some(filing), Some(index)) =
                (membership.filed.take(), self.queues.at_mut(membership.slot))
            {
                index.unfile(agent_id, filing);
            }
        }
    }
}
