//! `ResilientAgentStream`: an agent stream that survives lost connections and server restarts.
//!
//! On a lost connection it reconnects with `?after=<last seq handed out>`, waiting a capped,
//! jittered exponential backoff between attempts. The server replays every event after that
//! `seq` in order, and events at or below it are dropped here, so the caller sees each event
//! exactly once and in order, across any number of reconnects. Acks sent while disconnected are
//! kept (they are cumulative, so only the highest matters) and sent on the next connection.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use handoff_protocol::CloudEvent;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::stream::AgentStream;

/// After this long up, or after one event, a connection counts as good and the backoff restarts.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// How long to wait between reconnection attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// The wait before the first attempt after a loss.
    pub initial_delay: Duration,
    /// The wait never grows beyond this.
    pub max_delay: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl ReconnectPolicy {
    /// The wait before attempt number `failures` (0 for the first): doubling, capped, without jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
        self.initial_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

/// What [`ResilientAgentStream::next`] yields.
#[derive(Debug)]
pub enum StreamItem {
    /// A connection was opened. `after` is the `seq` it resumes after; `None` means the server
    /// chose (after the agent's last acknowledged event).
    Connected {
        /// The `after` the connection was opened with.
        after: Option<u64>,
    },
    /// The connection was lost or could not be opened; the next call retries after `retry_in`.
    Disconnected {
        /// Why.
        error: ClientError,
        /// How long the next call waits before reconnecting.
        retry_in: Duration,
    },
    /// The next event, never one already handed out.
    Event(CloudEvent),
}

/// An agent's event stream that reconnects by itself; see the module documentation.
#[derive(Debug)]
pub struct ResilientAgentStream {
    client: Client,
    agent_id: String,
    policy: ReconnectPolicy,
    conn: Option<AgentStream>,
    /// The highest `seq` handed out, or the `after` asked for at the start.
    last_seq: Option<u64>,
    pending_ack: Option<u64>,
    /// A loss found while acking, reported by the next `next()`.
    pending_item: Option<StreamItem>,
    failures: u32,
    retry_at: Option<Instant>,
    connected_at: Instant,
    delivered_on_conn: bool,
}

impl ResilientAgentStream {
    /// A stream for `agent_id`, resuming after `after` when given (else where the server keeps
    /// the agent's last ack). Nothing is opened until the first [`ResilientAgentStream::next`].
    pub fn new(client: Client, agent_id: impl Into<String>, after: Option<u64>) -> Self {
        ResilientAgentStream {
            client,
            agent_id: agent_id.into(),
            policy: ReconnectPolicy::default(),
            conn: None,
            last_seq: after,
            pending_ack: None,
            pending_item: None,
            failures: 0,
            retry_at: None,
            connected_at: Instant::now(),
            delivered_on_conn: false,
        }
    }

    /// Replaces the default [`ReconnectPolicy`].
    pub fn with_policy(mut self, policy: ReconnectPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The agent this stream belongs to.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The highest `seq` handed out so far (or the `after` given at the start).
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Whether a connection is open right now.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// The next event or change of connection state.
    ///
    /// Errors are only the ones reconnecting cannot cure: the server refusing the stream with a
    /// 4xx other than 408/429 (a revoked token, a deleted agent), a bad URL, or a frame that is
    /// not an event (`ClientError::Decode`; the connection stays usable). Everything else is a
    /// `Disconnected` item followed by another attempt.
    ///
    /// Cancel-safe: dropping the future (in `tokio::select!`) loses no event and no ack.
    pub async fn next(&mut self) -> Result<StreamItem> {
        loop {
            if let Some(item) = self.pending_item.take() {
                return Ok(item);
            }
            let Some(conn) = self.conn.as_mut() else {
                return self.reconnect().await;
            };
            match conn.next_event().await {
                Ok(Some(event)) => {
                    self.delivered_on_conn = true;
                    if self.last_seq.is_some_and(|last| event.seq <= last) {
                        tracing::debug!(seq = event.seq, "dropping an event already handed out");
                        continue;
                    }
                    self.last_seq = Some(event.seq);
                    return Ok(StreamItem::Event(event));
                }
                Ok(None) => {
                    return Ok(
                        self.lost(ClientError::transport("the server closed the agent stream"))
                    )
                }
                Err(e @ ClientError::Decode(_)) => return Err(e),
                Err(e) => return Ok(self.lost(e)),
            }
        }
    }

    /// The next event, reconnecting as needed; connection changes are only logged.
    pub async fn next_event(&mut self) -> Result<CloudEvent> {
        loop {
            match self.next().await? {
                StreamItem::Event(event) => return Ok(event),
                StreamItem::Connected { after } => {
                    tracing::info!(agent = %self.agent_id, ?after, "agent stream connected");
                }
                StreamItem::Disconnected { error, retry_in } => {
                    tracing::warn!(agent = %self.agent_id, %error, ?retry_in, "agent stream lost");
                }
            }
        }
    }

    /// Acknowledges every event up to `seq`. While disconnected the ack is kept and sent on
    /// the next connection, so this fails only if a future version finds a reason to.
    pub async fn ack(&mut self, seq: u64) -> Result<()> {
        let seq = self.pending_ack.map_or(seq, |pending| pending.max(seq));
        self.pending_ack = Some(seq);
        if let Some(conn) = self.conn.as_mut() {
            match conn.ack(seq).await {
                Ok(()) => self.pending_ack = None,
                Err(error) => {
                    let item = self.lost(error);
                    self.pending_item = Some(item);
                }
            }
        }
        Ok(())
    }

    /// Closes the connection, if one is open.
    pub async fn close(mut self) -> Result<()> {
        match self.conn.take() {
            Some(conn) => conn.close().await,
            None => Ok(()),
        }
    }

    async fn reconnect(&mut self) -> Result<StreamItem> {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at).await;
        }
        let after = self.last_seq;
        match AgentStream::connect(&self.client, &self.agent_id, after).await {
            Ok(mut conn) => {
                if let Some(seq) = self.pending_ack {
                    if let Err(error) = conn.ack(seq).await {
                        return self.refused_or_lost(error);
                    }
                    self.pending_ack = None;
                }
                self.conn = Some(conn);
                self.retry_at = None;
                self.connected_at = Instant::now();
                self.delivered_on_conn = false;
                Ok(StreamItem::Connected { after })
            }
            Err(error) => self.refused_or_lost(error),
        }
    }

    fn refused_or_lost(&mut self, error: ClientError) -> Result<StreamItem> {
        if error.is_retryable() {
            Ok(self.lost(error))
        } else {
            Err(error)
        }
    }

    /// Drops the connection and schedules the next attempt.
    fn lost(&mut self, error: ClientError) -> StreamItem {
        if let Some(_conn) = self.conn.take() {
            if self.delivered_on_conn || self.connected_at.elapsed() >= HEALTHY_AFTER {
                self.failures = 0;
            }
        }
        let retry_in = jitter(self.policy.delay(self.failures));
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(Instant::now() + retry_in);
        StreamItem::Disconnected { error, retry_in }
    }
}

/// Takes up to a quarter off `delay`, so desktops cut off together do not return together.
fn jitter(delay: Duration) -> Duration {
    // Randomness quality does not matter here; the clock's nanoseconds spread well enough.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let fraction = f64::from(nanos % 1000) / 4000.0;
    delay.mul_f64(1.0 - fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = ReconnectPolicy::default();
        let delays: Vec<_> = (0..8).map(|n| policy.delay(n).as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(policy.delay(u32::MAX), policy.max_delay);
        assert_eq!(policy.delay(40), policy.max_delay);
    }

    #[test]
    fn jitter_only_shortens_by_up_to_a_quarter() {
        let delay = Duration::from_secs(8);
        for _ in 0..100 {
            let d = jitter(delay);
            assert!(d <= delay && d >= delay.mul_f64(0.75), "{d:?}");
        }
    }

    #[tokio::test]
    async fn refused_connections_are_errors_and_lost_ones_retry() {
        // Nothing listens on port 9 of localhost, so connecting fails at once.
        let client = Client::new("http://127.0.0.1:9", "t").unwrap();
        let mut stream =
            ResilientAgentStream::new(client, "alice", Some(7)).with_policy(ReconnectPolicy {
                initial_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(4),
            });
        for _ in 0..3 {
            match stream.next().await {
                Ok(StreamItem::Disconnected { error, retry_in }) => {
                    assert!(error.is_retryable());
                    assert!(retry_in <= Duration::from_millis(4));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        stream.ack(9).await.unwrap();
        stream.ack(8).await.unwrap();
        assert_eq!(stream.pending_ack, Some(9), "acks are cumulative");
        assert_eq!(stream.last_seq(), Some(7));
        assert!(!stream.is_connected());

        let client = Client::new("http://127.0.0.1:9", "t").unwrap();
        let mut stream = ResilientAgentStream::new(client, "..", None);
        assert!(matches!(
            stream.next().await,
            Err(ClientError::InvalidUrl(_))
        ));
    }
}
