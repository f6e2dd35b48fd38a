//! The agent stream: a WebSocket that replays an agent's events after a `seq`, then goes live
//! with no gap and no duplicate, takes cumulative acks, and keeps itself alive with pings.
//!
//! Reading and writing are apart: events go into the stream's outbox, bounded in bytes
//! (`ApiSettings::stream_max_unsent_bytes`), and a writer beside the reader sends them, so a
//! client that stops reading neither blocks its acks nor makes the server buffer without end.
//! A replay is paced by the outbox (the log is read as the client takes it); a live event that
//! does not fit closes the stream with [`CLOSE_SLOW_CONSUMER`], and the client resumes from the
//! log with `?after=`. The limits and close codes are in docs/streams.md.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;

use super::{Path, Query};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use handoff_core::{AgentId, Seq};
use handoff_protocol::AckFrame;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;

use super::{agent_id, origin_allowed};
use crate::auth::{Principal, Role};
use crate::engine::LiveEvent;
use crate::error::ApiError;
use crate::wire::now;
use crate::AppState;

const REPLAY_PAGE: usize = 500;
/// Per connection: what the socket reads into. Clients send acks of a few dozen bytes.
const WS_READ_BUFFER: usize = 2048;
/// Per connection: the most tungstenite itself queues for a socket whose writes fail. The
/// stream's own bound is the outbox's (`stream_max_unsent_bytes`); this one is a backstop.
const WS_MAX_WRITE_BUFFER: usize = 4 << 20;
/// The largest message a client may send (an ack is tiny); a larger one gets Close 1009.
const WS_MAX_INCOMING: usize = 64 << 10;
/// The largest frame read before its size is judged. A frame up to this is read whole and
/// refused as a message over [`WS_MAX_INCOMING`]: the socket stays in step, and the client's
/// answer to our Close 1009 is read before the connection is dropped. A larger frame is
/// refused from its header, after which the socket cannot be read any more (see [`LINGER`]).
const WS_MAX_FRAME: usize = 1 << 20;
/// How long a closing stream waits for its Close frame to go out, and then for the client's.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// As [`CLOSE_TIMEOUT`] while the server stops: a stream must not hold it up.
const SHUTDOWN_CLOSE_TIMEOUT: Duration = Duration::from_millis(500);
/// After refusing a frame from its header (nothing more can be read), how long the socket
/// stays open after our Close has been written, so that it reaches the client before the
/// connection is dropped (a close with unread bytes is a TCP reset).
const LINGER: Duration = Duration::from_secs(1);

/// The close code of a stream whose client took its events too slowly: more than
/// `stream_max_unsent_bytes` were waiting for it. The client reconnects with
/// `?after=<last seq it acked or read>` and loses nothing: the events are in the log.
pub const CLOSE_SLOW_CONSUMER: u16 = 4000;
/// RFC 6455 7.4.1: a message too big to process.
const CLOSE_TOO_BIG: u16 = 1009;

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
        ("agent_id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The agent's id, `[A-Za-z0-9._-]{1,64}`"),
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
    // As for `GET /v1/events`: a seq the log has not reached is a client's mistake (another
    // server's log, a restored backup), and a silent stream would hide it.
    let head = head_reaching(&state, after).await;
    if after > head {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("after: {after} is beyond the log's head ({head})"),
        )
        .with_field("after"));
    }
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
        .max_frame_size(WS_MAX_FRAME);
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

/// How the stream ends.
enum Ending {
    /// The socket failed or the peer vanished: nothing more can be said on it.
    Gone,
    /// The client sent Close: answer it (tungstenite queued the echo) and drop.
    ClientClosed,
    /// We close: send Close `code`, then do `then`.
    Close {
        code: u16,
        reason: String,
        then: AfterClose,
    },
}

/// What a stream does once its Close frame is written.
enum AfterClose {
    /// Reads up to the client's answering Close, so that the socket closes with nothing
    /// unread (a FIN, not a reset) after the client has our frame.
    ReadAnswer,
    /// The socket cannot be read any more: keeps it open, unread, for [`LINGER`].
    Linger,
    /// The server is stopping: drops the socket at once (it must not outlive the server).
    Drop,
}

impl Ending {
    fn close(code: u16, reason: impl Into<String>) -> Ending {
        Ending::Close {
            code,
            reason: reason.into(),
            then: AfterClose::ReadAnswer,
        }
    }

    fn shutting_down() -> Ending {
        Ending::Close {
            code: 1001,
            reason: "server shutting down".to_owned(),
            then: AfterClose::Drop,
        }
    }
}

impl AgentStream {
    async fn run(mut self, socket: WebSocket) {
        let guard = self
            .acts_for_agent
            .then(|| self.state.connections.opened(self.agent.clone()));
        // Subscribe before reading the log: whatever commits from now on is in `live`, whatever
        // committed before is in the store; `last_sent` drops what is in both. The agent's own
        // feed carries only its events; one that overflows says `Lagged`, and the stream
        // catches up from the log, as at the start. While catching up the feed is not read:
        // what it holds is either in the log up to the head read, or after it.
        let mut live = self.state.shared.subscribe_agent(&self.agent);
        let mut revocations = self.state.shared.subscribe_revocations();
        let mut shutdown = self.state.shutdown.clone();
        let (sink, mut incoming) = socket.split();
        let outbox = Outbox::new(self.state.settings.stream_max_unsent_bytes);
        let writer = write_loop(sink, &outbox);
        tokio::pin!(writer);
        let mut behind = true;
        let ping_every = self.state.settings.ping_interval;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        let ending = loop {
            tokio::select! {
                _ = &mut writer => break Ending::Gone,
                _ = shutdown.fired() => break Ending::shutting_down(),
                revoked = revocations.recv() => {
                    if let Ok(ids) = revoked {
                        if ids.contains(&self.key_id) {
                            break Ending::close(1008, "token revoked");
                        }
                    }
                }
                message = incoming.next() => match message {
                    None => break Ending::Gone,
                    Some(Ok(Message::Close(_))) => break Ending::ClientClosed,
                    Some(Ok(message)) => {
                        last_heard = Instant::now();
                        if let Err(reason) = self.on_message(message) {
                            break Ending::close(1003, reason);
                        }
                    }
                    Some(Err(error)) => match too_big(&error) {
                        Some(readable) => {
                            metrics::counter!("handoff_stream_too_big_closes_total").increment(1);
                            break Ending::Close {
                                code: CLOSE_TOO_BIG,
                                reason: format!("message too big: over {WS_MAX_INCOMING} bytes"),
                                then: if readable { AfterClose::ReadAnswer } else { AfterClose::Linger },
                            };
                        }
                        None => break Ending::Gone,
                    },
                },
                received = live.recv(), if !behind => match received {
                    Ok(event) => {
                        if self.send_live(&outbox, &event).is_err() {
                            metrics::counter!("handoff_stream_slow_closes_total").increment(1);
                            tracing::info!(agent = %self.agent, "stream client too slow; closing");
                            break Ending::close(
                                CLOSE_SLOW_CONSUMER,
                                format!(
                                    "slow consumer: over {} bytes unsent; reconnect with ?after=SEQ",
                                    outbox.limit
                                ),
                            );
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        metrics::counter!("handoff_stream_catch_ups_total").increment(1);
                        behind = true;
                    }
                    Err(RecvError::Closed) => break Ending::shutting_down(),
                },
                _ = outbox.room(), if behind => match self.catch_up(&outbox).await {
                    Ok(caught_up) => behind = !caught_up,
                    Err(()) => break Ending::Gone,
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > ping_every * 3 {
                        tracing::info!(agent = %self.agent, "stream silent for three pings; closing");
                        break Ending::Gone;
                    }
                    outbox.push_control(Message::Ping(Default::default()));
                }
            }
        };
        // Closing: the agent is no longer served by this stream, whatever the handshake takes.
        drop(guard);
        match ending {
            Ending::Gone => {}
            Ending::ClientClosed => {
                // RFC 6455 5.5.1: answer with a Close. tungstenite queued the echo of the
                // client's code when it read the frame; the writer flushes it.
                outbox.finish(None);
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, &mut writer).await;
            }
            Ending::Close { code, reason, then } => {
                outbox.finish(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }));
                let wait = match then {
                    AfterClose::Drop => SHUTDOWN_CLOSE_TIMEOUT,
                    _ => CLOSE_TIMEOUT,
                };
                if tokio::time::timeout(wait, &mut writer).await.is_err() {
                    return;
                }
                match then {
                    AfterClose::ReadAnswer => {
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                            while let Some(Ok(message)) = incoming.next().await {
                                if matches!(message, Message::Close(_)) {
                                    break;
                                }
                            }
                        })
                        .await;
                    }
                    AfterClose::Linger => tokio::time::sleep(LINGER).await,
                    AfterClose::Drop => {}
                }
            }
        }
    }

    fn on_message(&self, message: Message) -> Result<(), &'static str> {
        match message {
            Message::Text(text) => {
                let ack: AckFrame = serde_json::from_str(text.as_str())
                    .map_err(|_| "expected a text frame {\"ack\": SEQ}")?;
                if self.acts_for_agent && ack.ack > 0 {
                    self.state.engine.ack(self.agent.clone(), Seq::new(ack.ack));
                }
                Ok(())
            }
            Message::Binary(_) => Err("binary frames are not part of the protocol"),
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => Ok(()),
        }
    }

    /// Puts stored events for the agent after `last_sent` into the outbox, up to the engine's
    /// head and as far as they fit; true once nothing up to that head is left. The log can hold
    /// events a moment before the engine has applied them (durable, not yet read back by the
    /// engine): sent early, an agent would accept an interaction the API does not know yet.
    /// Those come on the live feed instead, which was subscribed before this and gets them
    /// right after they are applied.
    async fn catch_up(&mut self, outbox: &Outbox) -> Result<bool, ()> {
        let head = self.state.shared.head();
        if self.last_sent >= head {
            return Ok(outbox.settled());
        }
        let page = self
            .state
            .store
            .agent_events_after(self.agent.as_str(), self.last_sent, REPLAY_PAGE)
            .await
            .map_err(|error| tracing::error!(%error, "replay read failed"))?;
        for event in page.iter().take_while(|event| event.seq <= head) {
            // Paced, never refused: what does not fit is read again once the client took
            // what is queued.
            if !outbox.push(
                Message::Text(event.payload.clone().into()),
                event.payload.len(),
            ) {
                return Ok(false);
            }
            if event.event_type == "interaction.offered" {
                metrics::counter!("handoff_pops_delivered_total").increment(1);
            }
            self.last_sent = event.seq;
        }
        let done = page.len() < REPLAY_PAGE || page.last().is_some_and(|event| event.seq > head);
        // Live again only with half the outbox free: a client still taking a long replay is
        // slow for a moment, not too slow, and must not be closed by the first live event.
        // Until then the live feed waits (it catches up from the log if it overflows).
        Ok((done || self.last_sent >= head) && outbox.settled())
    }

    /// Queues a live event for the agent; `Err` when it does not fit in the outbox.
    fn send_live(&mut self, outbox: &Outbox, event: &Arc<LiveEvent>) -> Result<(), ()> {
        if event.seq <= self.last_sent || !event.agents.iter().any(|a| a == self.agent.as_str()) {
            return Ok(());
        }
        if !outbox.push(
            Message::Text(event.payload.clone().into()),
            event.payload.len(),
        ) {
            return Err(());
        }
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

/// Whether a read error is a client's frame or message over the limits: `Some(true)` when the
/// frame was read whole (the socket can still be read, for the client's Close), `Some(false)`
/// when it was refused from its header. tungstenite's error does not reach us as its type
/// (axum boxes it), so its text tells: "... Message too long: SIZE > MAX".
fn too_big(error: &axum::Error) -> Option<bool> {
    let text = error.to_string();
    let (_, sizes) = text.split_once("Message too long: ")?;
    let (_, max) = sizes.split_once(" > ")?;
    Some(max.trim().parse::<usize>() == Ok(WS_MAX_INCOMING))
}

/// What is waiting to be written to one stream, bounded in bytes.
struct Outbox {
    inner: Mutex<OutboxInner>,
    /// Wakes the writer: something to send, or the stream is closing.
    work: Notify,
    /// Wakes a paced replay: the writer took messages out.
    drained: Notify,
    limit: usize,
}

#[derive(Default)]
struct OutboxInner {
    queue: VecDeque<(Message, usize)>,
    /// The bytes of the queued events and of the one being written.
    bytes: usize,
    closing: Option<Option<CloseFrame>>,
    /// The size of the replayed event that last did not fit: a replay waits for room for it.
    wanted: usize,
}

enum Next {
    Send(Message, usize),
    /// Close with this frame, or only flush (the client closed; its echo is queued).
    Finish(Option<CloseFrame>),
}

impl Outbox {
    fn new(limit: usize) -> Outbox {
        Outbox {
            inner: Mutex::default(),
            work: Notify::new(),
            drained: Notify::new(),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues an event of `len` bytes; false when it does not fit. One event always fits in an
    /// empty outbox, so an event larger than the limit is still delivered.
    fn push(&self, message: Message, len: usize) -> bool {
        {
            let mut inner = self.lock();
            if inner.closing.is_some() || (inner.bytes > 0 && inner.bytes + len > self.limit) {
                inner.wanted = len;
                return false;
            }
            inner.wanted = 0;
            inner.bytes += len;
            inner.queue.push_back((message, len));
        }
        metrics::gauge!("handoff_stream_unsent_bytes").increment(len as f64);
        self.work.notify_one();
        true
    }

    /// Queues a control frame (a ping): a few bytes, not counted.
    fn push_control(&self, message: Message) {
        self.lock().queue.push_back((message, 0));
        self.work.notify_one();
    }

    /// Ready when there is room for more of a replay: for the event that did not fit last.
    async fn room(&self) {
        loop {
            {
                let inner = self.lock();
                if inner.bytes == 0 || inner.bytes + inner.wanted.max(1) <= self.limit {
                    return;
                }
            }
            self.drained.notified().await;
        }
    }

    /// True when at most half the limit is queued; otherwise [`Outbox::room`] waits for that.
    fn settled(&self) -> bool {
        let mut inner = self.lock();
        if inner.bytes <= self.limit / 2 {
            return true;
        }
        inner.wanted = self.limit - self.limit / 2;
        false
    }

    /// Drops what is queued and tells the writer to close (or only to flush).
    fn finish(&self, close: Option<CloseFrame>) {
        let dropped: usize = {
            let mut inner = self.lock();
            inner.closing = Some(close);
            inner.queue.drain(..).map(|(_, len)| len).sum()
        };
        self.sent(dropped);
        self.work.notify_one();
    }

    fn sent(&self, len: usize) {
        if len == 0 {
            return;
        }
        self.lock().bytes -= len;
        metrics::gauge!("handoff_stream_unsent_bytes").decrement(len as f64);
        self.drained.notify_one();
    }

    async fn next(&self) -> Next {
        loop {
            {
                let mut inner = self.lock();
                if let Some(close) = inner.closing.take() {
                    return Next::Finish(close);
                }
                if let Some((message, len)) = inner.queue.pop_front() {
                    return Next::Send(message, len);
                }
            }
            self.work.notified().await;
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let bytes = self.lock().bytes;
        if bytes > 0 {
            metrics::gauge!("handoff_stream_unsent_bytes").decrement(bytes as f64);
        }
    }
}

/// Writes what the outbox holds, one message at a time, each counted as unsent until it is
/// written out; ends when a write fails or once the closing is done.
async fn write_loop(mut sink: SplitSink<WebSocket, Message>, outbox: &Outbox) {
    loop {
        match outbox.next().await {
            Next::Send(message, len) => {
                let result = sink.send(message).await;
                outbox.sent(len);
                if result.is_err() {
                    return;
                }
            }
            Next::Finish(Some(frame)) => {
                let _ = sink.send(Message::Close(Some(frame))).await;
                return;
            }
            Next::Finish(None) => {
                let _ = sink.flush().await;
                return;
            }
        }
    }
}

/// How long a follower waits for its log to reach a client's `after` before refusing it: the
/// client may have been served by another node, a moment ahead of this one.
const FOLLOWER_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(3);

/// The log's head, once it reaches `after`; on a follower, waits up to [`FOLLOWER_CATCH_UP`]
/// for it, since replication lags the writer by a moment. The writer's head is the truth.
pub(crate) async fn head_reaching(state: &AppState, after: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + FOLLOWER_CATCH_UP;
    loop {
        let head = state.shared.head();
        if head >= after || !state.follower || tokio::time::Instant::now() >= deadline {
            return head;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
