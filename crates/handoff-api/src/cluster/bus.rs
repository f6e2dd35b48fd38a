//! The NATS connection of a cluster node: the JetStream stream of committed events and the
//! plain subjects followers use to tell the writer about acks and open streams.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use handoff_store::{SeqNumber, StoredEvent};

/// The names a cluster uses on the bus, all made from its name so that clusters sharing one
/// NATS never meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusNames {
    /// The JetStream stream of committed events.
    pub stream: String,
    /// Its one subject.
    pub events: String,
    /// Followers' acks for the writer (core NATS).
    pub acks: String,
    /// Followers' open streams for the writer (core NATS).
    pub connections: String,
}

impl BusNames {
    /// `cluster` is checked by the configuration: letters, digits, `_` and `-`.
    pub fn new(cluster: &str) -> BusNames {
        let token = cluster.replace('-', "_");
        BusNames {
            stream: format!("HANDOFF_{}", token.to_ascii_uppercase()),
            events: format!("handoff.{token}.events"),
            acks: format!("handoff.{token}.acks"),
            connections: format!("handoff.{token}.connections"),
        }
    }
}

/// A node's connection to the bus.
pub struct Bus {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub names: BusNames,
    replicas: usize,
}

const HEADER_SEQ: &str = "Handoff-Seq";
const HEADER_TYPE: &str = "Handoff-Type";
const HEADER_SUBJECT: &str = "Handoff-Subject";
const HEADER_TIME: &str = "Handoff-Time-Ms";
const HEADER_AGENTS: &str = "Handoff-Agents";

/// How long the stream keeps an event: the log is the record, the stream only has to cover a
/// node that restarts or loses its connection for a while.
const STREAM_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

impl Bus {
    /// Connects (retrying in the background if NATS is down later) and names the stream.
    pub async fn connect(url: &str, cluster: &str, replicas: usize) -> anyhow::Result<Bus> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("handoff {cluster}"))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|error| anyhow::anyhow!("cannot connect to the bus at {url}: {error}"))?;
        let jetstream = jetstream::new(client.clone());
        Ok(Bus {
            client,
            jetstream,
            names: BusNames::new(cluster),
            replicas,
        })
    }

    /// The event stream, created when missing.
    pub async fn events_stream(&self) -> anyhow::Result<jetstream::stream::Stream> {
        self.jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: self.names.stream.clone(),
                subjects: vec![self.names.events.clone()],
                storage: jetstream::stream::StorageType::File,
                num_replicas: self.replicas,
                max_age: STREAM_MAX_AGE,
                ..Default::default()
            })
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "cannot open the JetStream stream {}: {error}",
                    self.names.stream
                )
            })
    }
}

/// The headers that carry an event's row beside its payload.
pub(crate) fn event_headers(event: &StoredEvent) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_SEQ, event.seq.to_string().as_str());
    headers.insert(HEADER_TYPE, event.event_type.as_str());
    headers.insert(HEADER_SUBJECT, event.subject.as_str());
    headers.insert(HEADER_TIME, event.time_ms.to_string().as_str());
    // Agent ids are `[A-Za-z0-9._-]`: a comma never occurs in one.
    headers.insert(HEADER_AGENTS, event.agents.join(",").as_str());
    headers
}

/// An event back from a bus message; None when the message is not one of ours.
pub(crate) fn event_from_message(message: &async_nats::Message) -> Option<StoredEvent> {
    let headers = message.headers.as_ref()?;
    let text = |name: &str| headers.get(name).map(|value| value.as_str().to_owned());
    let seq: SeqNumber = text(HEADER_SEQ)?.parse().ok()?;
    let agents = text(HEADER_AGENTS)?;
    Some(StoredEvent {
        seq,
        event_type: text(HEADER_TYPE)?,
        subject: text(HEADER_SUBJECT)?,
        time_ms: text(HEADER_TIME)?.parse().ok()?,
        agents: if agents.is_empty() {
            Vec::new()
        } else {
            agents.split(',').map(str::to_owned).collect()
        },
        payload: String::from_utf8(message.payload.to_vec()).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_from_the_cluster_name() {
        let names = BusNames::new("east-1");
        assert_eq!(names.stream, "HANDOFF_EAST_1");
        assert_eq!(names.events, "handoff.east_1.events");
        assert_eq!(names.acks, "handoff.east_1.acks");
        assert_eq!(names.connections, "handoff.east_1.connections");
    }

    #[test]
    fn an_event_survives_its_headers() {
        let event = StoredEvent {
            seq: 42,
            event_type: "interaction.offered".into(),
            subject: "int_1".into(),
            time_ms: 1_700_000_000_000,
            agents: vec!["alice".into(), "bob.smith".into()],
            payload: "{\"seq\":42}".into(),
        };
        let message = async_nats::Message {
            subject: "handoff.x.events".into(),
            reply: None,
            payload: event.payload.clone().into(),
            headers: Some(event_headers(&event)),
            status: None,
            description: None,
            length: 0,
        };
        assert_eq!(event_from_message(&message), Some(event.clone()));
        let lonely = StoredEvent {
            agents: Vec::new(),
            ..event
        };
        let message = async_nats::Message {
            headers: Some(event_headers(&lonely)),
            ..message
        };
        assert_eq!(event_from_message(&message), Some(lonely));
    }
}
