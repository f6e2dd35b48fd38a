//! Queues: which agents may serve a caller (skills, relaxed step by step as the caller waits),
//! how one of them is chosen (strategy), and what happens when the caller waits too long.

use std::collections::BTreeMap;

use crate::ids::{QueueName, SkillLevel};

/// How a queue chooses among the agents that could take a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Strategy {
    /// The agent idle the longest.
    LongestIdle,
    /// The agent offered a caller least recently.
    RoundRobin,
    /// The agent who handled the fewest interactions today, then the longest idle.
    LeastOccupied,
    /// The highest summed level of the queue's skills, then the longest idle.
    MostSkilled,
    /// Every eligible agent at once; the first accept wins.
    RingAll,
}

impl Strategy {
    pub const ALL: [Strategy; 5] = [
        Strategy::LongestIdle,
        Strategy::RoundRobin,
        Strategy::LeastOccupied,
        Strategy::MostSkilled,
        Strategy::RingAll,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::LongestIdle => "longest_idle",
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastOccupied => "least_occupied",
            Strategy::MostSkilled => "most_skilled",
            Strategy::RingAll => "ring_all",
        }
    }

    pub fn parse(text: &str) -> Option<Strategy> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// After a caller has waited `after_s`, the queue asks only for `skills`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscalationStep {
    pub after_s: u64,
    pub skills: BTreeMap<String, SkillLevel>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub name: QueueName,
    /// What an agent needs at first: every skill at least at the level named.
    pub skills: BTreeMap<String, SkillLevel>,
    pub strategy: Strategy,
    pub offer_timeout_s: u64,
    /// The longest wrap-up after a hangup before the agent is routable again.
    pub wrap_up_s: u64,
    /// After this long waiting the caller goes to `overflow`, or ends `timed_out`.
    pub max_wait_s: Option<u64>,
    pub overflow: Option<QueueName>,
    /// Answered within this many seconds counts towards the service level.
    pub service_level_s: u64,
    /// Relaxations, by increasing `after_s`.
    pub steps: Vec<EscalationStep>,
    /// The template of the CRM page a screen pop from this queue opens. Opaque here: the API
    /// checks and renders it.
    pub pop_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueConfigError {
    #[error("steps must be in strictly increasing order of after_s")]
    StepsOutOfOrder,
    #[error("step {index} asks for more than the step before it: steps may only relax the skills")]
    StepTightens { index: usize },
    #[error("offer_timeout_s must be at least 1")]
    OfferTimeoutZero,
    #[error("a queue cannot overflow into itself")]
    OverflowToItself,
}

impl QueueConfig {
    /// A queue with the contract's defaults.
    pub fn new(name: QueueName) -> QueueConfig {
        QueueConfig {
            name,
            skills: BTreeMap::new(),
            strategy: Strategy::LongestIdle,
            offer_timeout_s: 20,
            wrap_up_s: 10,
            max_wait_s: None,
            overflow: None,
            service_level_s: 20,
            steps: Vec::new(),
            pop_url: None,
        }
    }

    /// Checks the rules a router relies on: steps only ever relax the requirement, so a
    /// caller who waited longer is never harder to serve than one who waited less.
    pub fn validate(&self) -> Result<(), QueueConfigError> {
        if self.offer_timeout_s == 0 {
            return Err(QueueConfigError::OfferTimeoutZero);
        }
        if self.overflow.as_ref() == Some(&self.name) {
            return Err(QueueConfigError::OverflowToItself);
        }
        let mut previous_after = None;
        let mut previous = &self.skills;
        for (index, step) in self.steps.iter().enumerate() {
            if previous_after.is_some_and(|after| step.after_s <= after) {
                return Err(QueueConfigError::StepsOutOfOrder);
            }
            previous_after = Some(step.after_s);
            let relaxes = step
                .skills
                .iter()
                .all(|(skill, level)| previous.get(skill).is_some_and(|before| level <= before));
            if !relaxes {
                return Err(QueueConfigError::StepTightens { index });
            }
            previous = &step.skills;
        }
        Ok(())
    }

    /// The number of requirement levels: the base one and one per step.
    pub fn levels(&self) -> usize {
        1 + self.steps.len()
    }

    /// The requirement at `level` (0 is the base).
    pub fn requirement(&self, level: usize) -> &BTreeMap<String, SkillLevel> {
        match level {
            0 => &self.skills,
            n => &self.steps[n - 1].skills,
        }
    }

    /// The requirement level of a caller who has waited `waited_ms`.
    pub fn level_after(&self, waited_ms: i64) -> usize {
        self.steps
            .iter()
            .take_while(|step| (step.after_s as i64).saturating_mul(1000) <= waited_ms)
            .count()
    }
}

/// Whether `skills` has every skill of `requirement` at least at its level.
pub fn meets(
    skills: &BTreeMap<String, SkillLevel>,
    requirement: &BTreeMap<String, SkillLevel>,
) -> bool {
    requirement
        .iter()
        .all(|(skill, level)| skills.get(skill).is_some_and(|have| have >= level))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skills(pairs: &[(&str, i64)]) -> BTreeMap<String, SkillLevel> {
        pairs
            .iter()
            .map(|(s, l)| (s.to_string(), SkillLevel::parse(*l).unwrap()))
            .collect()
    }

    #[test]
    fn steps_may_only_relax_and_must_be_in_order() {
        let mut queue = QueueConfig::new(QueueName::parse("billing").unwrap());
        queue.skills = skills(&[("billing", 5), ("spanish", 3)]);
        queue.steps = vec![
            EscalationStep {
                after_s: 30,
                skills: skills(&[("billing", 3)]),
            },
            EscalationStep {
                after_s: 60,
                skills: skills(&[]),
            },
        ];
        assert_eq!(queue.validate(), Ok(()));
        assert_eq!(queue.level_after(29_999), 0);
        assert_eq!(queue.level_after(30_000), 1);
        assert_eq!(queue.level_after(600_000), 2);
        queue.steps[1].skills = skills(&[("billing", 4)]);
        assert_eq!(
            queue.validate(),
            Err(QueueConfigError::StepTightens { index: 1 })
        );
        queue.steps[1] = EscalationStep {
            after_s: 30,
            skills: skills(&[]),
        };
        assert_eq!(queue.validate(), Err(QueueConfigError::StepsOutOfOrder));
    }

    #[test]
    fn an_agent_meets_a_requirement_with_every_skill_at_least_at_its_level() {
        let agent = skills(&[("billing", 5), ("spanish", 2)]);
        assert!(meets(&agent, &skills(&[("billing", 5)])));
        assert!(meets(&agent, &skills(&[])));
        assert!(!meets(&agent, &skills(&[("billing", 6)])));
        assert!(!meets(&agent, &skills(&[("french", 0)])));
    }
}
