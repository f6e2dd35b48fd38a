//! `AgentStream`: one WebSocket connection to an agent's event stream, with cumulative acks.
//!
//! It does not reconnect; [`crate::ResilientAgentStream`] builds that on top of it.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use handoff_protocol::{AckFrame, CloudEvent};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{HeaderValue, AUTHORIZATION};
use tokio_tungstenite::tungstenite::{self, Bytes, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

use crate::client::Client;
use crate::error::{api_error, ClientError, Result};

/// How long a quiet connection waits before it pings the server.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a connection may go without any frame (pongs included) before it counts as lost.
///
/// Without it, a server that vanished without closing (a cable pulled, a NAT entry expired)
/// would leave `next_event` waiting forever.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long opening the connection, TLS and upgrade included, may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One open connection to `GET /v1/agents/{agent_id}/stream`.
///
/// The server sends each event for the agent once per connection, in `seq` order: with
/// `after`, first every event with a greater `seq`, then live ones; without, it starts after
/// the agent's last acknowledged event. WebSocket pings are answered while reading, so keep
/// calling [`AgentStream::next_event`].
pub struct AgentStream {
    socket: Socket,
    agent_id: String,
    last_seq: Option<u64>,
    last_frame: Instant,
    last_ping: Instant,
    closed: bool,
}

impl std::fmt::Debug for AgentStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentStream")
            .field("agent_id", &self.agent_id)
            .field("last_seq", &self.last_seq)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl AgentStream {
    /// Opens the stream of `agent_id`, replaying from after `after` when given.
    ///
    /// A refusal before the upgrade (401, 403, 404) comes back as `ClientError::Api`.
    pub async fn connect(client: &Client, agent_id: &str, after: Option<u64>) -> Result<Self> {
        let url = client.stream_url(agent_id, after)?;
        let mut request = url.as_str().into_client_request().map_err(ws_error)?;
        if !client.token().is_empty() {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", client.token()))
                .map_err(|_| ClientError::Config("the token is not a valid header value".into()))?;
            value.set_sensitive(true);
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        let (socket, _response) = tokio::time::timeout(CONNECT_TIMEOUT, connect_async(request))
            .await
            .map_err(|_| ClientError::transport("timed out opening the agent stream"))?
            .map_err(ws_error)?;
        let now = Instant::now();
        Ok(AgentStream {
            socket,
            agent_id: agent_id.to_string(),
            last_seq: after,
            last_frame: now,
            last_ping: now,
            closed: false,
        })
    }

    /// The agent this stream belongs to.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The highest `seq` received on this connection, or the `after` it was opened with.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// The next event; `Ok(None)` once the connection is closed.
    ///
    /// Pings are answered and other non-text frames skipped. A connection that fails, or stays
    /// silent for [`IDLE_TIMEOUT`] although pinged, gives one error and then `Ok(None)`.
    /// A text frame that is not an event gives `ClientError::Decode` and the stream goes on.
    ///
    /// Cancel-safe: dropping the future (in `tokio::select!`) loses no event.
    pub async fn next_event(&mut self) -> Result<Option<CloudEvent>> {
        loop {
            if self.closed {
                return Ok(None);
            }
            let wake = self.last_frame.max(self.last_ping) + KEEPALIVE_INTERVAL;
            let frame = match tokio::time::timeout_at(wake, self.socket.next()).await {
                Ok(frame) => frame,
                Err(_quiet) => {
                    if self.last_frame.elapsed() >= IDLE_TIMEOUT {
                        self.closed = true;
                        return Err(ClientError::transport(format!(
                            "no frame from the server for {}s",
                            IDLE_TIMEOUT.as_secs()
                        )));
                    }
                    // A pong proves the connection alive, and the traffic keeps idle-killing
                    // proxies away.
                    self.last_ping = Instant::now();
                    self.send(Message::Ping(Bytes::new())).await?;
                    continue;
                }
            };
            self.last_frame = Instant::now();
            match frame {
                None | Some(Err(tungstenite::Error::ConnectionClosed)) => {
                    self.closed = true;
                    return Ok(None);
                }
                Some(Err(e)) => {
                    self.closed = true;
                    return Err(ws_error(e));
                }
                Some(Ok(Message::Text(text))) => {
                    if let Some(event) = parse_event(text.as_str())? {
                        self.last_seq = Some(self.last_seq.map_or(event.seq, |s| s.max(event.seq)));
                        return Ok(Some(event));
                    }
                }
                Some(Ok(Message::Close(_))) => {
                    // tungstenite has queued the close reply; flushing sends it.
                    let _ = self.socket.flush().await;
                    self.closed = true;
                    return Ok(None);
                }
                Some(Ok(Message::Ping(_))) => {
                    // tungstenite has queued the pong; send it now rather than on the next read.
                    self.socket.flush().await.map_err(|e| self.fail(e))?;
                }
                Some(Ok(Message::Binary(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
    }

    /// Acknowledges every event up to `seq` (acks are cumulative and durable on the server).
    pub async fn ack(&mut self, seq: u64) -> Result<()> {
        let frame = serde_json::to_string(&AckFrame { ack: seq })
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        self.send(Message::text(frame)).await
    }

    /// Closes the connection politely.
    pub async fn close(mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        match self.socket.close(None).await {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Ok(()),
            Err(e) => Err(ws_error(e)),
        }
    }

    async fn send(&mut self, message: Message) -> Result<()> {
        if self.closed {
            return Err(ClientError::transport("the agent stream is closed"));
        }
        self.socket.send(message).await.map_err(|e| self.fail(e))
    }

    fn fail(&mut self, error: tungstenite::Error) -> ClientError {
        self.closed = true;
        ws_error(error)
    }
}

/// A text frame as an event; `None` for JSON that is not a log event (it has no `seq`), which
/// the contract leaves room for (statistics events carry none).
fn parse_event(text: &str) -> Result<Option<CloudEvent>> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ClientError::Decode(format!("stream frame is not JSON: {e}")))?;
    if value.get("seq").is_none() {
        tracing::debug!("skipping a stream frame without seq");
        return Ok(None);
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| ClientError::Decode(format!("stream frame is not an event: {e}")))
}

/// A refused upgrade carries the contract's error body, like any HTTP answer.
pub(crate) fn ws_error(error: tungstenite::Error) -> ClientError {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            api_error(status, response.body().as_deref().unwrap_or_default())
        }
        tungstenite::Error::Url(e) => ClientError::InvalidUrl(e.to_string()),
        other => ClientError::transport(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::http::Response;

    #[test]
    fn frames_parse_as_events() {
        let text = r#"{"specversion":"1.0","id":"e42","source":"handoff","type":"interaction.offered",
            "time":"2024-05-01T12:00:00.000Z","subject":"i1","seq":42,"data":{"agent":"alice"}}"#;
        let event = parse_event(text).unwrap().unwrap();
        assert_eq!(event.seq, 42);
        assert_eq!(event.event_type, "interaction.offered");
    }

    #[test]
    fn frames_without_seq_are_skipped_and_garbage_is_an_error() {
        assert!(parse_event(r#"{"type":"queue.stats","data":{}}"#)
            .unwrap()
            .is_none());
        assert!(matches!(parse_event("nope"), Err(ClientError::Decode(_))));
        assert!(matches!(
            parse_event(r#"{"seq": "x"}"#),
            Err(ClientError::Decode(_))
        ));
    }

    #[test]
    fn refused_upgrades_become_api_errors() {
        let body = br#"{"error":{"code":"unauthorized","message":"a valid bearer token is required","field":null}}"#;
        let response = Response::builder()
            .status(401)
            .body(Some(body.to_vec()))
            .unwrap();
        let err = ws_error(tungstenite::Error::Http(response));
        assert_eq!(err.status(), Some(401));
        assert_eq!(err.code(), Some("unauthorized"));
        assert!(!err.is_retryable());

        let response = Response::builder().status(503).body(None).unwrap();
        let err = ws_error(tungstenite::Error::Http(response));
        assert_eq!(err.code(), Some("http_503"));
        assert!(err.is_retryable());
    }

    #[test]
    fn lost_connections_are_retryable() {
        assert!(ws_error(tungstenite::Error::ConnectionClosed).is_retryable());
    }
}
