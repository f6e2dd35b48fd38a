//! A client for handoff's v1 API: typed HTTP calls and the agent event stream.
//!
//! - [`Client`] has one method per endpoint of the contract (interactions, agents, presence,
//!   keys, health) and turns every error answer into [`ClientError::Api`] with the server's
//!   `code`, `message` and `field`.
//! - [`AgentStream`] is one WebSocket connection to `/v1/agents/{id}/stream`: events in `seq`
//!   order, pings answered, cumulative acks.
//! - [`ResilientAgentStream`] reconnects on its own with `?after=<last seq>` and a capped
//!   backoff, so a desktop sees every event for its agent exactly once, across network losses
//!   and server restarts.
//!
//! The request and response types are the contract's, from [`handoff_protocol`] (re-exported
//! as [`protocol`]).
//!
//! # Example
//!
//! An IVR hands a call to the billing queue, and a desktop shows its screen pops:
//!
//! ```no_run
//! use handoff_client::protocol::{CreateInteractionRequest, PresenceStatus, PutPresenceRequest, Target};
//! use handoff_client::{Client, ResilientAgentStream, StreamItem};
//!
//! # async fn example() -> Result<(), handoff_client::ClientError> {
//! // The IVR side.
//! let ivr = Client::new("http://127.0.0.1:8080", "ivr-token")?;
//! let request = CreateInteractionRequest {
//!     caller: Some("+15551234567".into()),
//!     dialed: None,
//!     channel: None,
//!     call_id: Some("a84b4c76e66710".into()),
//!     context: serde_json::json!({"account": "42"}).as_object().cloned(),
//!     target: Target::Queue("billing".into()),
//!     fallback: None,
//!     priority: None,
//!     max_wait_s: None,
//! };
//! let created = ivr.create_interaction(&request, Some("call-a84b4c76e66710")).await?;
//! if let Some(agent) = &created.interaction.agent {
//!     println!("transfer the call to {}", agent.address.as_deref().unwrap_or(&agent.id));
//! }
//!
//! // The desktop side, with the agent's own token.
//! let desktop = Client::new("http://127.0.0.1:8080", "alice-token")?;
//! desktop
//!     .set_presence("alice", &PutPresenceRequest { status: PresenceStatus::Available, reason: None })
//!     .await?;
//! let mut stream = ResilientAgentStream::new(desktop.clone(), "alice", None);
//! loop {
//!     match stream.next().await? {
//!         StreamItem::Event(event) => {
//!             if event.event_type == "interaction.offered" {
//!                 println!("screen pop: {}", event.data["interaction"]);
//!             }
//!             stream.ack(event.seq).await?;
//!         }
//!         StreamItem::Connected { after } => println!("connected, after {after:?}"),
//!         StreamItem::Disconnected { error, retry_in } => {
//!             println!("lost ({error}), retrying in {retry_in:?}")
//!         }
//!     }
//! }
//! # }
//! ```

mod client;
mod error;
pub mod local;
mod resilient;
mod stream;
#[cfg(test)]
mod tests;

pub use client::{
    presence_status_name, AgentFilter, Client, Created, InteractionFilter, DEFAULT_URL,
};
pub use error::{BoxError, ClientError, Result};
pub use resilient::{ReconnectPolicy, ResilientAgentStream, StreamItem};
pub use stream::{AgentStream, CONNECT_TIMEOUT, IDLE_TIMEOUT, KEEPALIVE_INTERVAL};

/// The contract's types, as this crate's methods take and return them.
pub use handoff_protocol as protocol;
