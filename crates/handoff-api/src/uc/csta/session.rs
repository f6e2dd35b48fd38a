//! One connection to the CSTA server, from connect to drop: the application session, a device
//! monitor per agent, and the call events at those devices turned into signals.
//!
//! How events become call reports (ECMA-269 clause 17; every event arrives on the monitor of
//! one agent's device, named by its `monitorCrossRefID`):
//! - DeliveredEvent alerting at the agent's device → `Ringing`; one where the agent's device is
//!   the calling device (ringing out) → `Connected`, since the agent is busy on it.
//! - EstablishedEvent where the agent's device answered, or called, or the agent's
//!   `localConnectionInfo` is `connected` → `Connected`.
//! - ConnectionClearedEvent → `Ended` when the agent's own connection is over. The event's
//!   `localConnectionInfo`, when present, is the standard's answer: the agent's connection is
//!   `null` after the event or it is not. Without it: the dropped connection or the releasing
//!   device is the agent's; or the call had two parties, the agent and one other, and that
//!   other left (a two-party call does not outlive one of them). A third party leaving a
//!   conference, or an IVR port dropping out after its transfer, does not end it.
//! - CallClearedEvent → `Ended`; TransferredEvent where the agent transferred → `Ended` for
//!   the calls it left; DivertedEvent away from the agent's device → `Ended` (a call that only
//!   rang); ConferencedEvent marks the calls as having more than two parties.
//! - DoNotDisturbEvent: on → phone presence busy, reason `dnd`; off after handoff saw it on →
//!   phone presence available.
//!
//! A report's `device_call` is `<device>/<callID>`: callIDs are the switch's and only stable
//! per call. The interaction is matched by `correlatorData` (the IVR or PBX sets it to the
//! interaction id) → `interaction`, and by `userData` when present, otherwise the switch's
//! callID → `call_id`, for platforms whose IVR posts one of those as the interaction's
//! `call_id`. Both are remembered per call, since a server may send them only on the first
//! event.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use handoff_core::{AgentId, PresenceStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::framing::{Frame, InvokeId, Tr88Codec};
use super::messages::{self, CallInfo, EventKind, Incoming};
use super::{device_of_address, same_device, CstaSettings};
use crate::shutdown::Shutdown;
use crate::uc::{CallPhase, CallReport, PresenceChannel, UcSignals};

/// How often the set of agents is compared with the monitors.
const REVIEW_EVERY: Duration = Duration::from_secs(2);
/// How long a request may wait for its response before the link is taken for dead.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait before asking again for a monitor the server refused.
const MAX_MONITOR_RETRY: Duration = Duration::from_secs(60);
/// The presence reason while the phone is on do-not-disturb.
const DND: &str = "dnd";

/// Why a session ended.
pub(super) enum End {
    Shutdown,
    Dropped(String),
}

/// Runs one connection until it drops or shutdown; when it drops, every agent it monitored
/// has its calls and phone presence forgotten, since nobody reports them until the next link.
pub(super) async fn run(
    stream: TcpStream,
    settings: &CstaSettings,
    signals: &UcSignals,
    shutdown: &mut Shutdown,
) -> End {
    let (mut reader, writer) = stream.into_split();
    let mut link = Link {
        settings,
        signals,
        codec: Tr88Codec,
        writer,
        requests: 0,
        pending: HashMap::new(),
        namespace: messages::CSTA_ED3.to_owned(),
        session: SessionState::None,
        monitors: HashMap::new(),
        by_cross_ref: HashMap::new(),
        calls: HashMap::new(),
        dnd: BTreeSet::new(),
    };
    let end = link.serve(&mut reader, shutdown).await;
    if let End::Dropped(_) = end {
        link.forget_all().await;
    }
    end
}

#[derive(Debug)]
enum Request {
    StartSession,
    ResetTimer,
    MonitorStart { agent: AgentId },
    MonitorStop,
}

struct Pending {
    request: Request,
    sent: Instant,
}

enum SessionState {
    /// None asked for (or none configured).
    None,
    Starting,
    Open {
        id: String,
        /// When to reset the session timer, half-way through what the server granted.
        reset_at: Instant,
        resetting: bool,
    },
}

enum MonitorState {
    Starting(InvokeId),
    Active(String),
    /// Refused or ended by the server: ask again from then on.
    Retry(Instant),
}

struct Monitor {
    device: String,
    state: MonitorState,
    refusals: u32,
}

/// What handoff remembers of one call at an agent's device.
#[derive(Default)]
struct CallTrack {
    /// The devices other than the agent's seen on the call as calling, alerting or answering.
    others: BTreeSet<String>,
    conference: bool,
    correlator: Option<String>,
    user_data: Option<String>,
}

struct Link<'a> {
    settings: &'a CstaSettings,
    signals: &'a UcSignals,
    codec: Tr88Codec,
    writer: OwnedWriteHalf,
    requests: u32,
    pending: HashMap<InvokeId, Pending>,
    /// The CSTA namespace requests are written in: the one the session agreed on.
    namespace: String,
    session: SessionState,
    monitors: HashMap<AgentId, Monitor>,
    by_cross_ref: HashMap<String, AgentId>,
    /// Keyed by agent and the switch's callID.
    calls: HashMap<(AgentId, String), CallTrack>,
    /// Agents handoff made busy for do-not-disturb on this link.
    dnd: BTreeSet<AgentId>,
}

impl Link<'_> {
    async fn serve(
        &mut self,
        reader: &mut tokio::net::tcp::OwnedReadHalf,
        shutdown: &mut Shutdown,
    ) -> End {
        if !self.settings.application.is_empty() {
            let xml = messages::start_application_session(
                &self.settings.application,
                self.settings.password.as_deref(),
            );
            if let Err(reason) = self.request(Request::StartSession, &xml).await {
                return End::Dropped(reason);
            }
            self.session = SessionState::Starting;
        }
        let mut review = tokio::time::interval(REVIEW_EVERY);
        review.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buffer = Vec::with_capacity(super::framing::MAX_FRAME_LEN);
        let mut chunk = vec![0u8; 8 * 1024];
        loop {
            let reset_at = match &self.session {
                SessionState::Open {
                    reset_at,
                    resetting: false,
                    ..
                } => Some(*reset_at),
                _ => None,
            };
            let reset_due = async move {
                match reset_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let step = tokio::select! {
                _ = shutdown.fired() => {
                    self.goodbye().await;
                    return End::Shutdown;
                }
                read = reader.read(&mut chunk) => match read {
                    Ok(0) => Err("the server closed the connection".to_owned()),
                    Ok(n) => {
                        buffer.extend_from_slice(&chunk[..n]);
                        self.drain(&mut buffer).await
                    }
                    Err(error) => Err(format!("read: {error}")),
                },
                _ = review.tick() => self.review().await,
                _ = reset_due => self.reset_timer().await,
            };
            if let Err(reason) = step {
                return End::Dropped(reason);
            }
        }
    }

    /// Handles every whole frame in `buffer`.
    async fn drain(&mut self, buffer: &mut Vec<u8>) -> Result<(), String> {
        loop {
            match self.codec.decode(buffer) {
                Ok(Some(frame)) => self.handle(frame).await?,
                Ok(None) => return Ok(()),
                Err(error) => {
                    tracing::error!(%error, "CSTA: the stream is out of step; dropping the link");
                    return Err(format!("framing: {error}"));
                }
            }
        }
    }

    /// Sends a request, remembering it until its response.
    async fn request(&mut self, request: Request, xml: &str) -> Result<InvokeId, String> {
        let mut id = InvokeId::nth(self.requests);
        self.requests = self.requests.wrapping_add(1);
        // After 9998 requests the ids wrap: skip one still waiting for its answer.
        while self.pending.contains_key(&id) {
            id = InvokeId::nth(self.requests);
            self.requests = self.requests.wrapping_add(1);
        }
        self.write(id, xml).await?;
        self.pending.insert(
            id,
            Pending {
                request,
                sent: Instant::now(),
            },
        );
        Ok(id)
    }

    async fn write(&mut self, id: InvokeId, xml: &str) -> Result<(), String> {
        let mut bytes = Vec::with_capacity(xml.len() + super::framing::HEADER_LEN);
        self.codec
            .encode(id, xml, &mut bytes)
            .map_err(|error| format!("encode: {error}"))?;
        match tokio::time::timeout(WRITE_TIMEOUT, self.writer.write_all(&bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("write: {error}")),
            Err(_) => Err("write: timed out".to_owned()),
        }
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), String> {
        let id = frame.invoke_id;
        let root = match messages::parse_element(&frame.body) {
            Ok(root) => root,
            Err(error) => {
                // The frame was whole, so the stream is still in step: skip only this one.
                tracing::warn!(invoke_id = %id, %error, "CSTA: a malformed message, skipped");
                return Ok(());
            }
        };
        let incoming = messages::interpret(&root);
        let answered = match &incoming {
            Incoming::Event { .. } | Incoming::SystemStatus | Incoming::SessionStopped => None,
            _ => self.pending.remove(&id).map(|p| p.request),
        };
        match (incoming, answered) {
            (Incoming::Event { cross_ref, kind }, _) => self.event(cross_ref, kind).await,
            (Incoming::SystemStatus, _) => {
                let xml = messages::system_status_response(&self.namespace);
                self.write(id, &xml).await?;
            }
            (Incoming::SessionStopped, _) => {
                return Err("the server stopped the application session".to_owned())
            }
            (
                Incoming::SessionStarted {
                    session,
                    duration_s,
                    protocol,
                },
                Some(Request::StartSession),
            ) => {
                if let Some(protocol) =
                    protocol.filter(|p| p.starts_with(messages::CSTA_NAMESPACE_PREFIX))
                {
                    self.namespace = protocol;
                }
                tracing::info!(%session, ?duration_s, namespace = %self.namespace, "CSTA: application session started");
                self.session = SessionState::Open {
                    id: session,
                    reset_at: reset_time(duration_s),
                    resetting: false,
                };
                self.review().await?;
            }
            (Incoming::SessionRefused { reason }, Some(Request::StartSession))
            | (Incoming::Error { reason }, Some(Request::StartSession)) => {
                tracing::error!(%reason, application = %self.settings.application, "CSTA: the server refused the application session");
                return Err(format!("session refused: {reason}"));
            }
            (Incoming::TimerReset { duration_s }, Some(Request::ResetTimer)) => {
                if let SessionState::Open {
                    reset_at,
                    resetting,
                    ..
                } = &mut self.session
                {
                    *reset_at = reset_time(duration_s);
                    *resetting = false;
                }
            }
            (Incoming::TimerResetRefused { reason }, Some(Request::ResetTimer))
            | (Incoming::Error { reason }, Some(Request::ResetTimer)) => {
                return Err(format!("session timer reset refused: {reason}"));
            }
            (Incoming::MonitorStarted { cross_ref }, Some(Request::MonitorStart { agent })) => {
                self.monitor_started(id, agent, cross_ref).await?;
            }
            (Incoming::Error { reason }, Some(Request::MonitorStart { agent })) => {
                self.monitor_refused(id, &agent, &reason);
            }
            (Incoming::MonitorStopped, Some(Request::MonitorStop)) => {}
            (Incoming::Error { reason }, Some(Request::MonitorStop)) => {
                // The monitor is gone either way once handoff stops reading it.
                tracing::debug!(%reason, "CSTA: MonitorStop refused");
            }
            (incoming, Some(request)) => {
                tracing::warn!(invoke_id = %id, ?request, ?incoming, "CSTA: an unexpected answer to a request");
                match request {
                    Request::MonitorStart { agent } => {
                        self.monitor_refused(id, &agent, "an unexpected answer")
                    }
                    // Without its session (or its timer) the link is of no use: start over.
                    Request::StartSession | Request::ResetTimer => {
                        return Err(format!("an unexpected answer to {request:?}: {incoming:?}"))
                    }
                    Request::MonitorStop => {}
                }
            }
            (incoming, None) => {
                tracing::debug!(invoke_id = %id, ?incoming, "CSTA: a message handoff did not ask for, ignored");
            }
        }
        Ok(())
    }

    async fn reset_timer(&mut self) -> Result<(), String> {
        let SessionState::Open { id, .. } = &self.session else {
            return Ok(());
        };
        let xml = messages::reset_application_session_timer(id);
        self.request(Request::ResetTimer, &xml).await?;
        if let SessionState::Open { resetting, .. } = &mut self.session {
            *resetting = true;
        }
        Ok(())
    }

    /// Brings the monitors in line with the agents, and notices requests left unanswered.
    async fn review(&mut self) -> Result<(), String> {
        let now = Instant::now();
        if let Some(stale) = self
            .pending
            .values()
            .find(|p| now.duration_since(p.sent) > RESPONSE_TIMEOUT)
        {
            return Err(format!(
                "no answer to {:?} within {RESPONSE_TIMEOUT:?}",
                stale.request
            ));
        }
        if matches!(self.session, SessionState::Starting) {
            return Ok(());
        }
        let wanted: HashMap<AgentId, String> = {
            let state = self.signals.state();
            state
                .agents()
                .filter_map(|agent| {
                    let device = device_of_address(agent.profile.address.as_deref()?)?;
                    Some((agent.profile.id.clone(), device))
                })
                .collect()
        };
        let gone: Vec<AgentId> = self
            .monitors
            .iter()
            .filter(|(agent, monitor)| wanted.get(*agent) != Some(&monitor.device))
            .map(|(agent, _)| agent.clone())
            .collect();
        for agent in gone {
            let Some(monitor) = self.monitors.remove(&agent) else {
                continue;
            };
            tracing::info!(%agent, device = %monitor.device, "CSTA: no longer monitoring");
            if let MonitorState::Active(cross_ref) = monitor.state {
                self.by_cross_ref.remove(&cross_ref);
                let xml = messages::monitor_stop(&self.namespace, &cross_ref);
                self.request(Request::MonitorStop, &xml).await?;
            }
            self.forget(&agent).await;
        }
        let mut start = Vec::new();
        for (agent, device) in wanted {
            let due = match self.monitors.get(&agent) {
                None => true,
                Some(monitor) => matches!(monitor.state, MonitorState::Retry(at) if at <= now),
            };
            if due {
                start.push((agent, device));
            }
        }
        start.sort();
        for (agent, device) in start {
            let xml = messages::monitor_start(&self.namespace, &device);
            let id = self
                .request(
                    Request::MonitorStart {
                        agent: agent.clone(),
                    },
                    &xml,
                )
                .await?;
            let refusals = self.monitors.get(&agent).map_or(0, |m| m.refusals);
            self.monitors.insert(
                agent,
                Monitor {
                    device,
                    state: MonitorState::Starting(id),
                    refusals,
                },
            );
        }
        Ok(())
    }

    async fn monitor_started(
        &mut self,
        id: InvokeId,
        agent: AgentId,
        cross_ref: String,
    ) -> Result<(), String> {
        match self.monitors.get_mut(&agent) {
            Some(monitor) if matches!(monitor.state, MonitorState::Starting(asked) if asked == id) =>
            {
                tracing::info!(%agent, device = %monitor.device, %cross_ref, "CSTA: monitoring");
                monitor.state = MonitorState::Active(cross_ref.clone());
                monitor.refusals = 0;
                self.by_cross_ref.insert(cross_ref, agent);
            }
            _ => {
                // The agent went, or its device changed, while the server was answering.
                let xml = messages::monitor_stop(&self.namespace, &cross_ref);
                self.request(Request::MonitorStop, &xml).await?;
            }
        }
        Ok(())
    }

    fn monitor_refused(&mut self, id: InvokeId, agent: &AgentId, reason: &str) {
        let Some(monitor) = self.monitors.get_mut(agent) else {
            return;
        };
        if !matches!(monitor.state, MonitorState::Starting(asked) if asked == id) {
            return;
        }
        monitor.refusals = monitor.refusals.saturating_add(1);
        let wait = self
            .settings
            .reconnect
            .saturating_mul(1 << (monitor.refusals - 1).min(10))
            .min(MAX_MONITOR_RETRY);
        tracing::warn!(%agent, device = %monitor.device, %reason, ?wait, "CSTA: the server refused to monitor the device; asking again later");
        monitor.state = MonitorState::Retry(Instant::now() + wait);
    }

    async fn event(&mut self, cross_ref: Option<String>, kind: EventKind) {
        let Some(agent) = cross_ref
            .as_ref()
            .and_then(|c| self.by_cross_ref.get(c))
            .cloned()
        else {
            tracing::debug!(
                ?cross_ref,
                ?kind,
                "CSTA: an event on no monitor of handoff's"
            );
            return;
        };
        let Some(device) = self.monitors.get(&agent).map(|m| m.device.clone()) else {
            return;
        };
        let is_agent = |reported: Option<&str>| same_device(&device, reported);
        match kind {
            EventKind::Delivered { call, alerting } => {
                let Some(call_id) = call.connection.call.clone() else {
                    return;
                };
                let phase = if is_agent(alerting.as_deref())
                    || is_agent(call.connection.device.as_deref())
                {
                    Some(CallPhase::Ringing)
                } else if is_agent(call.calling.as_deref()) {
                    Some(CallPhase::Connected)
                } else {
                    None
                };
                self.note(&agent, &device, &call_id, &call, [alerting.as_deref()]);
                if let Some(phase) = phase {
                    self.report(&agent, &device, &call_id, phase).await;
                }
            }
            EventKind::Established { call, answering } => {
                let Some(call_id) = call.connection.call.clone() else {
                    return;
                };
                let connected = is_agent(answering.as_deref())
                    || is_agent(call.connection.device.as_deref())
                    || is_agent(call.calling.as_deref())
                    || call.local.as_deref() == Some("connected");
                self.note(&agent, &device, &call_id, &call, [answering.as_deref()]);
                if connected {
                    self.report(&agent, &device, &call_id, CallPhase::Connected)
                        .await;
                }
            }
            EventKind::ConnectionCleared { call, releasing } => {
                let Some(call_id) = call.connection.call.clone() else {
                    return;
                };
                let dropped = call.connection.device.as_deref();
                let key = (agent.clone(), call_id.clone());
                let ended = match call.local.as_deref() {
                    Some(local) => local == "null",
                    None => {
                        is_agent(dropped)
                            || is_agent(releasing.as_deref())
                            || self.calls.get(&key).is_some_and(|track| {
                                !track.conference
                                    && track.others.len() == 1
                                    && [dropped, releasing.as_deref()]
                                        .into_iter()
                                        .flatten()
                                        .any(|d| track.others.contains(d))
                            })
                    }
                };
                if ended {
                    self.note(&agent, &device, &call_id, &call, []);
                    self.report(&agent, &device, &call_id, CallPhase::Ended)
                        .await;
                    self.calls.remove(&key);
                } else if let (Some(track), Some(dropped)) = (self.calls.get_mut(&key), dropped) {
                    track.others.remove(dropped);
                }
            }
            EventKind::CallCleared {
                call: Some(call_id),
            } => {
                self.end(&agent, &device, &call_id).await;
            }
            EventKind::Transferred {
                calls,
                transferring,
            } if is_agent(transferring.as_deref()) => {
                for call_id in calls {
                    self.end(&agent, &device, &call_id).await;
                }
            }
            EventKind::Diverted {
                call: Some(call_id),
                diverting,
            } if is_agent(diverting.as_deref()) => {
                self.end(&agent, &device, &call_id).await;
            }
            EventKind::Conferenced { calls } => {
                for call_id in calls {
                    self.calls
                        .entry((agent.clone(), call_id))
                        .or_default()
                        .conference = true;
                }
            }
            EventKind::DoNotDisturb {
                device: reported,
                on,
            } if reported.is_none() || is_agent(reported.as_deref()) => {
                if on {
                    self.dnd.insert(agent.clone());
                    self.signals
                        .presence(
                            &agent,
                            PresenceChannel::Phone,
                            Some((PresenceStatus::Busy, Some(DND.to_owned()))),
                        )
                        .await;
                } else if self.dnd.remove(&agent) {
                    self.signals
                        .presence(
                            &agent,
                            PresenceChannel::Phone,
                            Some((PresenceStatus::Available, None)),
                        )
                        .await;
                }
            }
            EventKind::MonitorEnded => {
                tracing::warn!(%agent, %device, "CSTA: the server ended the monitor; asking again");
                if let Some(cross_ref) = cross_ref {
                    self.by_cross_ref.remove(&cross_ref);
                }
                if let Some(monitor) = self.monitors.get_mut(&agent) {
                    monitor.state = MonitorState::Retry(Instant::now() + self.settings.reconnect);
                }
                self.forget(&agent).await;
            }
            other => {
                tracing::debug!(%agent, event = ?other, "CSTA: an event handoff does not act on");
            }
        }
    }

    /// Remembers what an event says of a call at the agent's device.
    fn note<'e>(
        &mut self,
        agent: &AgentId,
        device: &str,
        call_id: &str,
        call: &'e CallInfo,
        more: impl IntoIterator<Item = Option<&'e str>>,
    ) {
        let track = self
            .calls
            .entry((agent.clone(), call_id.to_owned()))
            .or_default();
        if call.correlator.is_some() {
            track.correlator.clone_from(&call.correlator);
        }
        if call.user_data.is_some() {
            track.user_data.clone_from(&call.user_data);
        }
        // The called device is left out: it is often a pilot or hunt group, not a party.
        for party in [call.calling.as_deref(), call.connection.device.as_deref()]
            .into_iter()
            .chain(more)
            .flatten()
        {
            if !same_device(device, Some(party)) {
                track.others.insert(party.to_owned());
            }
        }
    }

    async fn end(&mut self, agent: &AgentId, device: &str, call_id: &str) {
        self.report(agent, device, call_id, CallPhase::Ended).await;
        self.calls.remove(&(agent.clone(), call_id.to_owned()));
    }

    async fn report(&mut self, agent: &AgentId, device: &str, call_id: &str, phase: CallPhase) {
        let track = self.calls.get(&(agent.clone(), call_id.to_owned()));
        let report = CallReport {
            device_call: format!("{device}/{call_id}"),
            call_id: Some(
                track
                    .and_then(|t| t.user_data.clone())
                    .unwrap_or_else(|| call_id.to_owned()),
            ),
            interaction: track.and_then(|t| t.correlator.clone()),
            phase,
        };
        tracing::debug!(%agent, ?report, "CSTA: call at the agent's device");
        self.signals.call(agent, report).await;
    }

    /// Nobody reports this agent's device any more.
    async fn forget(&mut self, agent: &AgentId) {
        self.calls.retain(|(owner, _), _| owner != agent);
        self.dnd.remove(agent);
        self.signals.calls_unknown(agent).await;
        self.signals
            .presence(agent, PresenceChannel::Phone, None)
            .await;
    }

    async fn forget_all(&mut self) {
        let agents: Vec<AgentId> = self.monitors.keys().cloned().collect();
        for agent in agents {
            self.forget(&agent).await;
        }
    }

    /// Ends the session politely on shutdown; the server would time it out anyway.
    async fn goodbye(&mut self) {
        if let SessionState::Open { id, .. } = &self.session {
            let xml = messages::stop_application_session(id);
            let id = InvokeId::nth(self.requests);
            let _ = tokio::time::timeout(Duration::from_secs(1), self.write(id, &xml)).await;
        }
    }
}

/// When to reset a session timer the server granted `duration_s` for.
fn reset_time(duration_s: Option<u64>) -> Instant {
    let granted = duration_s.unwrap_or(messages::REQUESTED_SESSION_S).max(2);
    Instant::now() + Duration::from_millis(granted * 1000 / 2)
}
