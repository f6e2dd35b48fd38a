//! A follower's replica of the committed state: the events the writer publishes on the bus,
//! applied in `seq` order; whatever the bus does not bring (a gap, a stream purged, a node that
//! was away, the bus down) read from the log in the store.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use futures_util::StreamExt;
use handoff_store::Store;

use super::bus::{event_from_message, Bus};
use crate::engine::Shared;
use crate::shutdown::Shutdown;

/// With no message for this long, the follower looks at the log's head itself: the bus may be
/// down, or the writer may have died between its commit and its publish.
const QUIET_CHECK: Duration = Duration::from_secs(1);
const LOG_PAGE: usize = 2048;

/// Runs until shutdown. After a failure the follower reads the log before it follows the
/// stream again, so a bus that is down delays nothing by more than that half second.
pub async fn run(bus: Arc<Bus>, store: Arc<dyn Store>, shared: Arc<Shared>, shutdown: Shutdown) {
    super::retry_until_shutdown("following the writer", shutdown, || {
        follow(&bus, &store, &shared)
    })
    .await;
}

/// Applies every event of the log after the replica's head.
pub async fn catch_up_from_log(store: &Arc<dyn Store>, shared: &Arc<Shared>) -> anyhow::Result<()> {
    loop {
        let page = store.events_after(shared.head(), LOG_PAGE).await?;
        if page.is_empty() {
            return Ok(());
        }
        shared.apply_followed(&page)?;
        metrics::counter!("handoff_follower_events_from_log_total").increment(page.len() as u64);
    }
}

async fn follow(bus: &Bus, store: &Arc<dyn Store>, shared: &Arc<Shared>) -> anyhow::Result<()> {
    catch_up_from_log(store, shared).await?;
    let stream = bus.events_stream().await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: bus.names.events.clone(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: shared.head() + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(|error| anyhow::anyhow!("cannot follow the stream: {error}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|error| anyhow::anyhow!("cannot follow the stream: {error}"))?;
    tracing::info!(head = shared.head(), stream = %bus.names.stream, "following the writer");
    loop {
        let next = tokio::time::timeout(QUIET_CHECK, messages.next()).await;
        let message = match next {
            Err(_quiet) => {
                if store.head().await? > shared.head() {
                    catch_up_from_log(store, shared).await?;
                }
                continue;
            }
            Ok(None) => anyhow::bail!("the stream's consumer ended"),
            Ok(Some(Err(error))) => anyhow::bail!("the stream's consumer failed: {error}"),
            Ok(Some(Ok(message))) => message,
        };
        let Some(event) = event_from_message(&message.message) else {
            tracing::warn!(subject = %message.message.subject, "a message on the event stream is not an event; skipped");
            continue;
        };
        if event.seq <= shared.head() {
            continue;
        }
        if event.seq > shared.head() + 1 {
            catch_up_from_log(store, shared).await?;
        }
        shared.apply_followed(std::slice::from_ref(&event))?;
        metrics::gauge!("handoff_follower_head_seq").set(shared.head() as f64);
    }
}
