//! Presence and call state from the systems a contact centre already runs: chat presence over
//! XMPP (`xmpp/`), phone presence and call state over SIP event packages (`sip/`), and PBXs
//! that speak only CSTA (`csta/`). Each adapter turns what its system says into the same few
//! signals (`UcSignals`), and this module turns those into engine commands.
//!
//! Why one place decides: an agent may be `dnd` in chat, on a personal call on the phone and
//! offered a handed-off call, all at once. The board below keeps what each system last said of
//! each agent and derives one presence from it, so that the adapters never overwrite each other
//! and a call that ends gives back the presence the agent had before it.

pub mod csta;
pub mod sip;
pub mod xmpp;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use handoff_core::{
    AgentId, Command, InteractionId, InteractionState, PresenceSource, PresenceStatus, State,
};

use crate::engine::{Engine, EngineError};
use crate::shutdown::Shutdown;

/// Which adapters run, and how their signals become commands (`uc_*`, `xmpp_*`, `sip_*`,
/// `csta_*` in the configuration).
#[derive(Debug, Clone, Default)]
pub struct UcSettings {
    pub signals: UcSignalSettings,
    pub xmpp: Option<xmpp::XmppSettings>,
    pub sip: Option<sip::SipSettings>,
    pub csta: Option<csta::CstaSettings>,
}

impl UcSettings {
    pub fn any(&self) -> bool {
        self.xmpp.is_some() || self.sip.is_some() || self.csta.is_some()
    }
}

/// Starts the configured adapters on the engine, until shutdown. Only the node that writes
/// runs them: a follower would report every presence twice.
pub fn start(engine: &Engine, settings: &UcSettings, shutdown: &Shutdown) {
    if !settings.any() {
        return;
    }
    let signals = UcSignals::new(engine.clone(), settings.signals.clone());
    if let Some(xmpp) = &settings.xmpp {
        tokio::spawn(xmpp::run(xmpp.clone(), signals.clone(), shutdown.clone()));
    }
    if let Some(sip) = &settings.sip {
        tokio::spawn(sip::run(sip.clone(), signals.clone(), shutdown.clone()));
    }
    if let Some(csta) = &settings.csta {
        tokio::spawn(csta::run(csta.clone(), signals.clone(), shutdown.clone()));
    }
}

/// The reason shown while the phone system reports the agent on a call handoff did not hand off.
pub const ON_ANOTHER_CALL: &str = "on_another_call";

/// Which system reported a presence: each has its own slot on the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceChannel {
    /// Chat presence (XMPP `show`).
    Chat,
    /// The phone's own presence (SIP PIDF, a CSTA device's state).
    Phone,
}

/// Where a call at the agent's device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallPhase {
    /// Offered to the device, not answered yet (SIP `early`, CSTA Delivered).
    Ringing,
    /// Answered (SIP `confirmed`, CSTA Established).
    Connected,
    /// Over (SIP `terminated`, CSTA ConnectionCleared).
    Ended,
}

/// One call at an agent's device, as its phone system reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallReport {
    /// The call's identity at the device, stable over its life (a SIP dialog id, a CSTA
    /// connection's call id): reports of one call share it.
    pub device_call: String,
    /// The call's SIP Call-ID or the platform's call id, when the system tells it: matched
    /// against an interaction's `call_id`.
    pub call_id: Option<String>,
    /// The interaction id, when the system carries it (an `X-Handoff-Interaction` header, a
    /// CSTA correlator): matched against the interaction's id.
    pub interaction: Option<String>,
    pub phase: CallPhase,
}

/// How signals become commands.
#[derive(Debug, Clone, Default)]
pub struct UcSignalSettings {
    /// When a connected call matches no interaction by call id or interaction id, but exactly
    /// one interaction is offered to the agent, take the call as that one. For platforms whose
    /// call to the agent has a Call-ID of its own (a B2BUA such as Asterisk); off by default,
    /// since a personal call answered during an offer would then accept it.
    pub match_single_offer: bool,
}

/// What the systems last said of one agent.
#[derive(Debug, Default)]
struct AgentBoard {
    chat: Option<(PresenceStatus, Option<String>)>,
    phone: Option<(PresenceStatus, Option<String>)>,
    /// Calls at the device that are not handed-off interactions, connected or ringing out.
    other_calls: BTreeSet<String>,
    /// Calls at the device taken as handed-off interactions.
    handed_off: HashMap<String, InteractionId>,
    /// The presence the agent had when the first other call made it busy, given back when
    /// the last ends (when no system reported one meanwhile).
    before_busy: Option<(PresenceStatus, Option<String>, PresenceSource)>,
}

impl AgentBoard {
    /// The presence the reports add up to: on another call is busy; otherwise the least
    /// available of what chat and phone say (a phone that is not registered makes the agent
    /// unreachable whatever chat says).
    fn derived(&self) -> Option<(PresenceStatus, Option<String>)> {
        if !self.other_calls.is_empty() {
            return Some((PresenceStatus::Busy, Some(ON_ANOTHER_CALL.to_owned())));
        }
        let rank = |status: PresenceStatus| match status {
            PresenceStatus::Available => 0,
            PresenceStatus::Away => 1,
            PresenceStatus::Busy => 2,
            PresenceStatus::Offline => 3,
        };
        match (&self.chat, &self.phone) {
            (Some(chat), Some(phone)) => Some(if rank(phone.0) > rank(chat.0) {
                phone.clone()
            } else {
                chat.clone()
            }),
            (Some(one), None) | (None, Some(one)) => Some(one.clone()),
            (None, None) => None,
        }
    }
}

/// The signals adapters give; cheap to clone, one per adapter task.
#[derive(Clone)]
pub struct UcSignals {
    engine: Engine,
    settings: Arc<UcSignalSettings>,
    board: Arc<Mutex<HashMap<AgentId, AgentBoard>>>,
}

impl UcSignals {
    pub fn new(engine: Engine, settings: UcSignalSettings) -> UcSignals {
        UcSignals {
            engine,
            settings: Arc::new(settings),
            board: Arc::default(),
        }
    }

    /// The committed state, for adapters that map their identities to agents.
    pub fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.engine.shared.state()
    }

    /// A system says what the agent's presence is on its channel; `None` forgets what it said
    /// (the adapter lost its connection and no longer knows).
    pub async fn presence(
        &self,
        agent: &AgentId,
        channel: PresenceChannel,
        presence: Option<(PresenceStatus, Option<String>)>,
    ) {
        let derived = {
            let mut board = self.lock_board();
            let entry = board.entry(agent.clone()).or_default();
            match channel {
                PresenceChannel::Chat => entry.chat = presence,
                PresenceChannel::Phone => entry.phone = presence,
            }
            // A report made while the agent was busy on another call is what it goes back to.
            if entry.chat.is_some() || entry.phone.is_some() {
                entry.before_busy = None;
            }
            entry.derived()
        };
        if let Some((status, reason)) = derived {
            self.set_presence(agent, status, reason).await;
        }
    }

    /// A call at the agent's device changed.
    pub async fn call(&self, agent: &AgentId, report: CallReport) {
        match report.phase {
            CallPhase::Ringing => {}
            CallPhase::Connected => self.call_connected(agent, report).await,
            CallPhase::Ended => self.call_ended(agent, report).await,
        }
    }

    /// Every call the adapter knew of the agent is gone (it lost its subscription): forget
    /// them, giving back the presence a busy call took, without hanging up interactions.
    pub async fn calls_unknown(&self, agent: &AgentId) {
        let restore = {
            let mut board = self.lock_board();
            let Some(entry) = board.get_mut(agent) else {
                return;
            };
            entry.handed_off.clear();
            if entry.other_calls.is_empty() {
                return;
            }
            entry.other_calls.clear();
            self.after_last_other_call(entry)
        };
        if let Some((status, reason)) = restore {
            self.set_presence(agent, status, reason).await;
        }
    }

    async fn call_connected(&self, agent: &AgentId, report: CallReport) {
        {
            let board = self.lock_board();
            if let Some(entry) = board.get(agent) {
                if entry.handed_off.contains_key(&report.device_call)
                    || entry.other_calls.contains(&report.device_call)
                {
                    return;
                }
            }
        }
        let matched = self.matching_interaction(agent, &report);
        match matched {
            Some((id, InteractionState::Offered)) => {
                self.lock_board()
                    .entry(agent.clone())
                    .or_default()
                    .handed_off
                    .insert(report.device_call.clone(), id.clone());
                let command = Command::Accept {
                    id: id.clone(),
                    agent: agent.clone(),
                };
                match self.engine.execute(command).await {
                    Ok(_) => {
                        metrics::counter!("handoff_uc_accepts_total").increment(1);
                        tracing::info!(%agent, interaction = %id, "the agent's phone answered: accepted");
                    }
                    Err(error) => {
                        tracing::warn!(%agent, interaction = %id, %error, "the agent's phone answered, but the accept was refused")
                    }
                }
            }
            Some((id, _)) => {
                // Already accepted (from the desktop, or an earlier report): only follow it.
                self.lock_board()
                    .entry(agent.clone())
                    .or_default()
                    .handed_off
                    .insert(report.device_call.clone(), id);
            }
            None => {
                let derived = {
                    let mut board = self.lock_board();
                    let entry = board.entry(agent.clone()).or_default();
                    if entry.other_calls.is_empty() && entry.chat.is_none() && entry.phone.is_none()
                    {
                        entry.before_busy = self.current_presence(agent);
                    }
                    entry.other_calls.insert(report.device_call.clone());
                    entry.derived()
                };
                if let Some((status, reason)) = derived {
                    self.set_presence(agent, status, reason).await;
                }
            }
        }
    }

    async fn call_ended(&self, agent: &AgentId, report: CallReport) {
        enum Then {
            Nothing,
            Hangup(InteractionId),
            Presence(Option<(PresenceStatus, Option<String>)>),
        }
        let then = {
            let mut board = self.lock_board();
            match board.get_mut(agent) {
                None => Then::Nothing,
                Some(entry) => {
                    if let Some(id) = entry.handed_off.remove(&report.device_call) {
                        Then::Hangup(id)
                    } else if entry.other_calls.remove(&report.device_call) {
                        if entry.other_calls.is_empty() {
                            Then::Presence(self.after_last_other_call(entry))
                        } else {
                            Then::Nothing
                        }
                    } else {
                        Then::Nothing
                    }
                }
            }
        };
        match then {
            Then::Nothing | Then::Presence(None) => {}
            Then::Presence(Some((status, reason))) => {
                self.set_presence(agent, status, reason).await
            }
            Then::Hangup(id) => {
                let accepted_here = self
                    .engine
                    .shared
                    .state()
                    .interaction(&id)
                    .is_some_and(|i| {
                        i.state == InteractionState::Accepted && i.agent.as_ref() == Some(agent)
                    });
                if !accepted_here {
                    return;
                }
                match self
                    .engine
                    .execute(Command::Hangup { id: id.clone() })
                    .await
                {
                    Ok(_) => {
                        metrics::counter!("handoff_uc_hangups_total").increment(1);
                        tracing::info!(%agent, interaction = %id, "the agent's call ended: wrap-up");
                    }
                    Err(error) => {
                        tracing::warn!(%agent, interaction = %id, %error, "the agent's call ended, but the hangup was refused")
                    }
                }
            }
        }
    }

    /// The presence to give back once the agent's last other call ended.
    fn after_last_other_call(
        &self,
        entry: &mut AgentBoard,
    ) -> Option<(PresenceStatus, Option<String>)> {
        if let Some(derived) = entry.derived() {
            return Some(derived);
        }
        entry
            .before_busy
            .take()
            .map(|(status, reason, _source)| (status, reason))
    }

    fn matching_interaction(
        &self,
        agent: &AgentId,
        report: &CallReport,
    ) -> Option<(InteractionId, InteractionState)> {
        let state = self.engine.shared.state();
        let held: Vec<_> = state
            .held_by(agent)
            .filter(|i| {
                matches!(
                    i.state,
                    InteractionState::Offered | InteractionState::Accepted
                )
            })
            .collect();
        let by_identity = held.iter().find(|i| {
            let id_matches = report
                .interaction
                .as_deref()
                .is_some_and(|id| id == i.spec.id.as_str());
            let call_matches = report
                .call_id
                .as_deref()
                .is_some_and(|call| i.spec.call_id.as_deref() == Some(call));
            id_matches || call_matches
        });
        if let Some(found) = by_identity {
            return Some((found.spec.id.clone(), found.state));
        }
        if self.settings.match_single_offer {
            let mut offered = held
                .iter()
                .filter(|i| i.state == InteractionState::Offered && i.offered_to.contains(agent));
            if let (Some(only), None) = (offered.next(), offered.next()) {
                return Some((only.spec.id.clone(), only.state));
            }
        }
        None
    }

    fn current_presence(
        &self,
        agent: &AgentId,
    ) -> Option<(PresenceStatus, Option<String>, PresenceSource)> {
        self.engine.shared.state().agent(agent).map(|a| {
            (
                a.presence.status,
                a.presence.reason.clone(),
                a.presence.source,
            )
        })
    }

    /// Sets the presence with source `uc`, unless it already is exactly that.
    async fn set_presence(&self, agent: &AgentId, status: PresenceStatus, reason: Option<String>) {
        match self.current_presence(agent) {
            None => return,
            Some((current, current_reason, PresenceSource::Uc))
                if current == status && current_reason == reason =>
            {
                return
            }
            Some(_) => {}
        }
        let command = Command::SetPresence {
            agent: agent.clone(),
            status,
            reason,
            source: PresenceSource::Uc,
        };
        match self.engine.execute(command).await {
            Ok(_) => {
                metrics::counter!("handoff_uc_presence_changes_total", "status" => status.as_str())
                    .increment(1)
            }
            Err(EngineError::Stopped) => {}
            Err(error) => {
                tracing::warn!(%agent, %error, "cannot set the presence the UC system reported")
            }
        }
    }

    fn lock_board(&self) -> std::sync::MutexGuard<'_, HashMap<AgentId, AgentBoard>> {
        self.board
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
