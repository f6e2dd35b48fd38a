//! Several nodes as one service: the bus that carries committed events from the writer to the
//! other nodes (NATS JetStream), the follower's replica of the state, the forwarding of writes
//! to the node that holds the writer lease, and what followers tell the writer (acks, open
//! streams). The lease itself is the store's (`handoff_store::PostgresStore`); which node does
//! what is decided by the binary.
//!
//! The log in the store is the record; the stream on the bus is how the other nodes hear of it
//! quickly. A follower applies events strictly by `seq`, and reads any it has not heard of
//! from the log, so a message the bus lost, a stream that was purged, or a node that was away
//! costs time, never an event.

pub mod bus;
pub mod forward;
pub mod links;
pub mod relay;
pub mod replica;

pub use bus::{Bus, BusNames};
pub use forward::{forward_writes, ForwardState, WriterAddress};

/// Runs `work` again half a second after each failure (logging `what` failed), until shutdown.
pub(crate) async fn retry_until_shutdown<F, Fut>(
    what: &str,
    mut shutdown: crate::Shutdown,
    mut work: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    loop {
        let result = tokio::select! {
            result = work() => result,
            _ = shutdown.fired() => return,
        };
        if let Err(error) = result {
            tracing::warn!(%error, "{what} failed; trying again");
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = shutdown.fired() => return,
        }
    }
}
