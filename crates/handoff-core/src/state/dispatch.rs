//! Dispatch: after every command, the best waiting callers offered to agents who can take them,
//! and the reason each routing decision gives.

use super::*;

impl State {
    /// Offers waiting callers to agents who can take them, best caller first (priority, then
    /// longest waiting, across all lines), until no waiting caller can be served. It runs
    /// after every command, so no caller ever waits while an agent who could take it is free.
    pub(super) fn dispatch(&mut self, out: &mut Events, now: Timestamp) {
        loop {
            let mut best: Option<(WaitingKey, InteractionId, Chosen, Routing)> = None;
            let mut unservable: SmallVec<[LineKey; 4]> = SmallVec::new();
            let mut examined = 0;
            for line in &self.dirty {
                match self.servable_head(line, now, &mut examined) {
                    Some((key, id, agents, routing)) => {
                        if best.as_ref().is_none_or(|(best_key, ..)| key < *best_key) {
                            best = Some((key, id, agents, routing));
                        }
                    }
                    None => unservable.push(line.clone()),
                }
            }
            self.examined += examined;
            // Offers only take room away: such a line stays unservable until marked again.
            for line in &unservable {
                self.dirty.remove(line);
            }
            let Some((_, id, mut agents, routing)) = best else {
                break;
            };
            let interaction = &self.interactions[&id];
            let target = interaction.current_target.clone();
            let expires_at = now.plus_seconds(self.offer_timeout_s(interaction));
            let offer = |agent: AgentId, routing: Routing| Event::InteractionOffered {
                id: id.clone(),
                agent,
                target: target.clone(),
                expires_at,
                at: now,
                routing,
            };
            // Each offer carries the routing: a copy for all but the last, which takes it.
            let last = agents.pop();
            for agent in agents {
                self.emit(out, offer(agent, routing.clone()));
            }
            if let Some(agent) = last {
                self.emit(out, offer(agent, routing));
            }
        }
    }

    /// The first caller of `line` that can be served now, with the agents to offer it to.
    /// Within one priority, a caller who waited less never has a laxer requirement than one
    /// ahead of it, so only the first caller of each priority needs a look.
    pub(super) fn servable_head(
        &self,
        line: &LineKey,
        now: Timestamp,
        examined: &mut u64,
    ) -> Option<(WaitingKey, InteractionId, Chosen, Routing)> {
        let mut next = self
            .lines
            .get(line)?
            .iter()
            .next()
            .map(|(k, id)| (*k, id.clone()));
        while let Some((key, id)) = next {
            if let Some((agents, routing)) = self.pick_agents(line, &id, now, examined) {
                return Some((key, id, agents, routing));
            }
            let lower = key.0 .0.checked_sub(1)?;
            next = self
                .lines
                .get(line)?
                .range((Reverse(lower), Timestamp::from_millis(i64::MIN), 0)..)
                .next()
                .map(|(k, id)| (*k, id.clone()));
        }
        None
    }

    /// The agents to offer this waiting caller to now, and why; `None` when nobody can take it.
    /// Adds the agents it looked at to `examined`.
    pub(super) fn pick_agents(
        &self,
        line: &LineKey,
        id: &InteractionId,
        now: Timestamp,
        examined: &mut u64,
    ) -> Option<(Chosen, Routing)> {
        let interaction = &self.interactions[id];
        match line {
            LineKey::Agent(agent, channel) => {
                *examined += 1;
                self.can_take(agent, channel).then(|| {
                    let routing = Routing {
                        strategy: None,
                        eligible: 1,
                        reason: "addressed to this agent".to_owned(),
                    };
                    (smallvec![agent.clone()], routing)
                })
            }
            LineKey::Queue(queue, channel) => {
                let index = self.queues.get(queue)?;
                let waited_ms = now.millis() - interaction.waiting_since.millis();
                let level = index.config.level_after(waited_ms);
                let strategy = index.config.strategy;
                let missed = &interaction.just_missed_by;
                let mut chosen = Chosen::new();
                let mut skipped_missed = Chosen::new();
                for agent in index.routable_at(level, channel) {
                    *examined += 1;
                    if !self.can_take(agent, channel) {
                        continue;
                    }
                    if missed.contains(agent) {
                        skipped_missed.push(agent.clone());
                        continue;
                    }
                    chosen.push(agent.clone());
                    if strategy != Strategy::RingAll {
                        break;
                    }
                }
                let mut reason_suffix = "";
                if chosen.is_empty() {
                    // Only agents who just missed it have room: better them than nobody.
                    if strategy == Strategy::RingAll {
                        chosen = skipped_missed;
                    } else {
                        chosen.extend(skipped_missed.into_iter().next());
                    }
                } else if skipped_missed.len() == 1 {
                    reason_suffix = "; the agent who just missed it was passed over";
                } else if !skipped_missed.is_empty() {
                    reason_suffix = "; the agents who just missed it were passed over";
                }
                if chosen.is_empty() {
                    return None;
                }
                let eligible = index.routable_count(level, channel) as u32;
                let first = &self.agents[&chosen[0]];
                let reason = routing_reason(
                    strategy,
                    index,
                    first,
                    RoutingFigures {
                        route_counter: self.route_counter,
                        today: self.today,
                        now,
                        chosen: chosen.len(),
                        level,
                        waited_ms,
                    },
                    reason_suffix,
                );
                Some((
                    chosen,
                    Routing {
                        strategy: Some(strategy),
                        eligible,
                        reason,
                    },
                ))
            }
        }
    }

    pub(super) fn emit(&mut self, out: &mut Events, event: Event) {
        let recipients = self.apply(&event);
        out.push((event, recipients));
    }
}

/// The figures a routing reason quotes besides the queue and the agent chosen first.
struct RoutingFigures {
    route_counter: u64,
    today: i64,
    now: Timestamp,
    chosen: usize,
    level: usize,
    waited_ms: i64,
}

/// The sentence saying why `first` was chosen. Built by appending, not `format!`: it is made
/// on every decision, and the formatting machinery was a twentieth of one.
fn routing_reason(
    strategy: Strategy,
    index: &QueueIndex,
    first: &Agent,
    figures: RoutingFigures,
    suffix: &str,
) -> String {
    let mut numbers = itoa::Buffer::new();
    let mut reason = String::with_capacity(96);
    let idle = idle_seconds(first, figures.now);
    match strategy {
        Strategy::LongestIdle => {
            reason.push_str("idle the longest: ");
            reason.push_str(numbers.format(idle));
            reason.push_str(" s");
        }
        Strategy::RoundRobin => {
            reason.push_str("next in rotation: last offered a caller ");
            if first.last_routed == 0 {
                reason.push_str("never");
            } else {
                reason.push_str(numbers.format(figures.route_counter - first.last_routed));
                reason.push_str(" offers ago");
            }
        }
        Strategy::LeastOccupied => {
            reason.push_str("fewest handled today: ");
            reason.push_str(numbers.format(handled_on(first, figures.today)));
            reason.push_str(", idle ");
            reason.push_str(numbers.format(idle));
            reason.push_str(" s");
        }
        Strategy::MostSkilled => {
            reason.push_str("highest summed skill level: ");
            reason.push_str(numbers.format(index.summed_level(first)));
            reason.push_str(" (");
            for (n, skill) in index.config.skills.keys().enumerate() {
                if n > 0 {
                    reason.push_str(", ");
                }
                reason.push_str(skill);
                reason.push(' ');
                let level = first.profile.skills.get(skill).map_or(0, |l| l.get());
                reason.push_str(numbers.format(level));
            }
            reason.push_str("), idle ");
            reason.push_str(numbers.format(idle));
            reason.push_str(" s");
        }
        Strategy::RingAll => {
            reason.push_str("rings all ");
            reason.push_str(numbers.format(figures.chosen));
            reason.push_str(" eligible agents");
        }
    }
    if figures.level > 0 {
        reason.push_str("; requirement relaxed to step ");
        reason.push_str(numbers.format(figures.level));
        reason.push_str(" after ");
        reason.push_str(numbers.format(figures.waited_ms / 1000));
        reason.push_str(" s waiting");
    }
    reason.push_str(suffix);
    reason
}
