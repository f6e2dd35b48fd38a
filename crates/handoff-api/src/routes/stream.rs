//! The agent stream: a WebSocket that replays an agent's events after a `seq`, then goes live
//! with no gap and no duplicate, takes cumulative acks, and keeps itself alive with pings.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;

use super::{Path, Query};
use axum::http::HeaderMap;
use axum::response::Response;
use handoff_core::{AgentId, Seq};
use handoff_protocol::AckFrame;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::{agent_id, origin_allowed};
use crate::auth::{Principal, Role};
use crate::engine::LiveEvent;
use crate::error::ApiError;
use crate::wire::now;
use crate::AppState;

const REPLAY_PAGE: usize = 500;
/// Per connection: what the socket reads into. Clients send acks of a few dozen bytes.
const WS_READ_BUFFER: usize = 2048;
/// Per connection: the most queued for a socket whose writes fail, a few large pops.
const WS_MAX_WRITE_BUFFER: usize = 4 << 20;
/// The largest frame or message a client may send (an ack is tiny).
const WS_MAX_INCOMING: usize = 64 << 10;

#[derive(Deserialize)]
pub struct StreamQuery {
    after: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/agents/{agent_id}/stream",
    operation_id = "open_agent_stream",
    tag = "stream",
    summary = "The agent's event stream (WebSocket)",
    description = "A WebSocket (`Upgrade: websocket`), refused with 401/403 before the upgrade. The server sends each event for the agent as one text frame holding the event's JSON (a `CloudEvent`), in `seq` order, with no gap and no duplicate between replay and live, and nothing else as text; keep-alive is WebSocket ping/pong. The client acknowledges with a text frame `{\"ack\": SEQ}` (an `AckFrame`); acks are cumulative and durable.",
    params(
        ("agent_id" = String, Path, description = "The agent's id, `[A-Za-z0-9._-]{1,64}`"),
        ("after" = Option<u64>, Query, description = "Replay every event for the agent with `seq` above this, then go live; default: the agent's `acked_seq`"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open"),
        (status = 400, description = "Not a WebSocket upgrade, or a bad `after`", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not this agent (or admin, supervisor), or an Origin that is not allowed", body = handoff_protocol::ErrorBody),
        (status = 404, description = "Unknown agent", body = handoff_protocol::ErrorBody),
        (status = 422, description = "Invalid agent id", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn open(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_agent): Path<String>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let agent = agent_id(&raw_agent)?;
    if !principal.is_agent(&agent) {
        principal.require(&[Role::Admin, Role::Supervisor])?;
    }
    if !origin_allowed(&headers, &state) {
        return Err(ApiError::forbidden("this Origin is not allowed"));
    }
    let acked = state
        .shared
        .state()
        .agent(&agent)
        .map(|a| a.acked_seq.get())
        .ok_or_else(|| ApiError::not_found("unknown_agent", format!("no agent with id {agent}")))?;
    let after = match query.after.as_deref() {
        None | Some("") => acked,
        Some(text) => text.parse::<u64>().map_err(|_| {
            ApiError::bad_request("invalid_field", "after: must be a non-negative integer")
                .with_field("after")
        })?,
    };
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::bad_request(
            "websocket_required",
            format!("this route is a WebSocket: {rejection}"),
        )
    })?;
    // Sized for many idle agents: tungstenite allocates (and touches) its whole read buffer per
    // connection, 128 KiB by default, though a client only ever sends small acks. Writes go out
    // at once (each send is flushed anyway); a write buffer that cannot drain is bounded.
    let upgrade = upgrade
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER)
        .max_message_size(WS_MAX_INCOMING)
        .max_frame_size(WS_MAX_INCOMING);
    // A supervisor watches; only the agent (or an admin acting for it) is "connected" and acks.
    let acts_for_agent = principal.role != Role::Supervisor;
    Ok(upgrade.on_upgrade(move |socket| async move {
        let stream = AgentStream {
            state,
            agent,
            key_id: principal.key_id,
            acts_for_agent,
            last_sent: after,
        };
        stream.run(socket).await;
    }))
}

struct AgentStream {
    state: AppState,
    agent: AgentId,
    key_id: String,
    acts_for_agent: bool,
    last_sent: u64,
}

enum Flow {
    Continue,
    Stop,
}

impl AgentStream {
    async fn run(mut self, mut socket: WebSocket) {
        let _guard = self
            .acts_for_agent
            .then(|| self.state.connections.opened(self.agent.clone()));
        // Subscribe before reading the log: whatever commits from now on is in `live`, whatever
        // committed before is in the store; `last_sent` drops what is in both. The agent's own
        // feed carries only its events; one that overflows says `Lagged`, and the stream
        // catches up from the log, as at the start.
        let mut live = self.state.shared.subscribe_agent(&self.agent);
        let mut revocations = self.state.shared.subscribe_revocations();
        let mut shutdown = self.state.shutdown.clone();
        if self.catch_up(&mut socket).await.is_err() {
            return;
        }
        let ping_every = self.state.settings.ping_interval;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        let close = loop {
            tokio::select! {
                _ = shutdown.fired() => break Some((1001, "server shutting down")),
                revoked = revocations.recv() => {
                    if let Ok(ids) = revoked {
                        if ids.contains(&self.key_id) {
                            break Some((1008, "token revoked"));
                        }
                    }
                }
                incoming = socket.recv() => {
                    let Some(Ok(message)) = incoming else { break None };
                    last_heard = Instant::now();
                    match self.on_message(message) {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Stop) => break None,
                        Err(reason) => break Some((1003, reason)),
                    }
                }
                received = live.recv() => match received {
                    Ok(event) => {
                        if self.send_live(&mut socket, &event).await.is_err() {
                            break None;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        metrics::counter!("handoff_stream_catch_ups_total").increment(1);
                        if self.catch_up(&mut socket).await.is_err() {
                            break None;
                        }
                    }
                    Err(RecvError::Closed) => break Some((1001, "server shutting down")),
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > ping_every * 3 {
                        tracing::info!(agent = %self.agent, "stream silent for three pings; closing");
                        break None;
                    }
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        break None;
                    }
                }
            }
        };
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = socket.send(Message::Close(Some(frame))).await;
        }
    }

    fn on_message(&self, message: Message) -> Result<Flow, &'static str> {
        match message {
            Message::Text(text) => {
                let ack: AckFrame = serde_json::from_str(text.as_str())
                    .map_err(|_| "expected a text frame {\"ack\": SEQ}")?;
                if self.acts_for_agent && ack.ack > 0 {
                    self.state.engine.ack(self.agent.clone(), Seq::new(ack.ack));
                }
                Ok(Flow::Continue)
            }
            Message::Close(_) => Ok(Flow::Stop),
            Message::Binary(_) => Err("binary frames are not part of the protocol"),
            Message::Ping(_) | Message::Pong(_) => Ok(Flow::Continue),
        }
    }

    /// Sends every stored event for the agent after `last_sent`, page by page, up to the
    /// engine's head. The log can hold events a moment before the engine has applied them
    /// (durable, not yet read back by the engine): sent early, an agent would accept an
    /// interaction the API does not know yet. Those come on the live feed instead, which was
    /// subscribed before this and gets them right after they are applied.
    async fn catch_up(&mut self, socket: &mut WebSocket) -> Result<(), ()> {
        let head = self.state.shared.head();
        while self.last_sent < head {
            let page = self
                .state
                .store
                .agent_events_after(self.agent.as_str(), self.last_sent, REPLAY_PAGE)
                .await
                .map_err(|error| tracing::error!(%error, "replay read failed"))?;
            for event in page.iter().take_while(|event| event.seq <= head) {
                if event.event_type == "interaction.offered" {
                    metrics::counter!("handoff_pops_delivered_total").increment(1);
                }
                socket
                    .send(Message::Text(event.payload.clone().into()))
                    .await
                    .map_err(|_| ())?;
                self.last_sent = event.seq;
            }
            if page.len() < REPLAY_PAGE || page.last().is_some_and(|event| event.seq > head) {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn send_live(
        &mut self,
        socket: &mut WebSocket,
        event: &Arc<LiveEvent>,
    ) -> Result<(), ()> {
        if event.seq <= self.last_sent || !event.agents.iter().any(|a| a == self.agent.as_str()) {
            return Ok(());
        }
        socket
            .send(Message::Text(event.payload.clone().into()))
            .await
            .map_err(|_| ())?;
        self.last_sent = event.seq;
        if event.event_type == "interaction.offered" {
            metrics::counter!("handoff_pops_delivered_total").increment(1);
            if let Some(created) = event.created_at {
                let seconds = (now().millis() - created.millis()).max(0) as f64 / 1000.0;
                metrics::histogram!("handoff_create_to_pop_seconds").record(seconds);
            }
        }
        Ok(())
    }
}
