//! The writer's side of the bus: every committed event, in `seq` order, onto the JetStream
//! stream, each published only after its commit (it is read from the live feed, which carries
//! committed events only, or from the log).
//!
//! Each message is published with the stream's expected last sequence, so that the stream's
//! sequence stays the log's `seq` when both start empty, and a second publisher (a writer that
//! lost its lease and does not know it yet) is refused by the stream rather than interleaved.
//! A new writer first publishes what the stream lacks of the log: the events its predecessor
//! committed but died before publishing.

use std::sync::Arc;

use async_nats::jetstream::context::Publish;
use handoff_store::{Store, StoredEvent};
use tokio::sync::broadcast::error::RecvError;

use super::bus::{event_headers, Bus};
use crate::engine::Shared;
use crate::shutdown::Shutdown;

/// Most events read from the log at once when the live feed cannot be used.
const LOG_PAGE: usize = 512;

/// Runs until shutdown; a failure of the bus is retried every half second.
pub async fn run(bus: Arc<Bus>, store: Arc<dyn Store>, shared: Arc<Shared>, shutdown: Shutdown) {
    super::retry_until_shutdown(
        "publishing committed events to the bus",
        shutdown,
        || async {
            let result = relay(&bus, &store, &shared).await;
            if result.is_err() {
                metrics::counter!("handoff_bus_publish_failures_total").increment(1);
            }
            result
        },
    )
    .await;
}

async fn relay(bus: &Bus, store: &Arc<dyn Store>, shared: &Arc<Shared>) -> anyhow::Result<()> {
    // Subscribed before reading where the stream is, so nothing committed in between is missed.
    let mut live = shared.subscribe();
    let mut stream = bus.events_stream().await?;
    let mut published = stream.info().await?.state.last_sequence;
    if published > shared.head() {
        anyhow::bail!(
            "the stream {} holds {published} events, more than the log's {}: it belongs to \
             another log; delete it, or give this cluster another name",
            bus.names.stream,
            shared.head()
        );
    }
    tracing::info!(stream = %bus.names.stream, published, head = shared.head(), "relaying committed events to the bus");
    loop {
        // What the stream lacks of the log, from the log.
        while published < shared.head() {
            let page = store.events_after(published, LOG_PAGE).await?;
            if page.is_empty() {
                break;
            }
            published = publish(bus, published, &page).await?;
        }
        let first = match live.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return Ok(()),
        };
        // Everything the feed holds now goes in one round of publishes.
        let mut batch = Vec::new();
        let mut event = first;
        loop {
            if event.seq > published {
                batch.push(live_row(&event));
            }
            match live.try_recv() {
                Ok(next) => event = next,
                Err(_) => break,
            }
        }
        if batch
            .first()
            .is_some_and(|event| event.seq != published + 1)
        {
            // A gap (the feed lagged): the log has it; the loop's top reads it.
            continue;
        }
        published = publish(bus, published, &batch).await?;
    }
}

fn live_row(event: &crate::engine::LiveEvent) -> StoredEvent {
    StoredEvent {
        seq: event.seq,
        event_type: event.event_type.clone(),
        subject: event.subject.clone(),
        time_ms: 0,
        agents: event.agents.clone(),
        payload: event.payload.clone(),
    }
}

/// Publishes `events` (consecutive, from `published + 1`) and waits for the stream to have
/// them all; returns the new last published `seq`. Messages are sent one after another without
/// waiting, and their acknowledgements taken after, in order.
async fn publish(bus: &Bus, published: u64, events: &[StoredEvent]) -> anyhow::Result<u64> {
    let mut acks = Vec::with_capacity(events.len());
    let mut expected = published;
    for event in events {
        if event.seq != expected + 1 {
            break;
        }
        let message = Publish::build()
            .payload(event.payload.clone().into())
            .headers(event_headers(event))
            .expected_last_sequence(expected);
        acks.push(
            bus.jetstream
                .send_publish(bus.names.events.clone(), message)
                .await
                .map_err(|error| anyhow::anyhow!("publish of event {}: {error}", event.seq))?,
        );
        expected = event.seq;
    }
    let mut last = published;
    for (ack, event) in acks.into_iter().zip(events) {
        ack.await
            .map_err(|error| anyhow::anyhow!("the stream refused event {}: {error}", event.seq))?;
        last = event.seq;
    }
    metrics::gauge!("handoff_bus_published_seq").set(last as f64);
    Ok(last)
}
