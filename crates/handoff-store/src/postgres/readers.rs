//! The read connections: a few clients used in turn, each pipelining the reads given to it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::{Client, Statement};

use super::connect::{connection_lost, describe, join_in_order, Target};
use crate::StoreError;

/// Read connections kept open. tokio-postgres pipelines the queries given to one client, so a
/// few of them, used in turn, serve many concurrent readers; more than one lets a long read
/// (a whole log) not hold up short ones.
const READERS: usize = 4;

/// Every read statement, prepared once per connection (`Read::ALL` order).
#[derive(Debug, Clone, Copy)]
pub(super) enum Read {
    Head,
    EventsAfter,
    AgentEventsAfter,
    SubjectEvents,
    Keys,
    Acks,
    IdempotencySince,
    Integrations,
    OutboxCursors,
    OutboxRetries,
    DeliveryAttempts,
}

impl Read {
    const ALL: [Read; 11] = [
        Read::Head,
        Read::EventsAfter,
        Read::AgentEventsAfter,
        Read::SubjectEvents,
        Read::Keys,
        Read::Acks,
        Read::IdempotencySince,
        Read::Integrations,
        Read::OutboxCursors,
        Read::OutboxRetries,
        Read::DeliveryAttempts,
    ];

    fn sql(self) -> &'static str {
        match self {
            // The primary key's last entry: one index page or two, however long the log.
            Read::Head => "SELECT COALESCE(max(seq), 0)::bigint FROM events",
            Read::EventsAfter => {
                "SELECT seq, type, subject, time_ms, agents, payload FROM events
                 WHERE seq > $1 ORDER BY seq LIMIT $2"
            }
            Read::AgentEventsAfter => {
                "SELECT e.seq, e.type, e.subject, e.time_ms, e.agents, e.payload
                 FROM event_agents a JOIN events e ON e.seq = a.seq
                 WHERE a.agent_id = $1 AND a.seq > $2 ORDER BY a.seq LIMIT $3"
            }
            Read::SubjectEvents => {
                "SELECT seq, type, subject, time_ms, agents, payload FROM events
                 WHERE subject = $1 ORDER BY seq"
            }
            Read::Keys => {
                "SELECT id, role, name, agent_id, token_sha256, created_ms FROM keys ORDER BY id"
            }
            Read::Acks => "SELECT agent_id, seq FROM acks ORDER BY agent_id",
            Read::IdempotencySince => {
                "SELECT key_id, idempotency_key, body_sha256, interaction_id, created_ms
                 FROM idempotency WHERE created_ms >= $1
                 ORDER BY created_ms, key_id, idempotency_key"
            }
            Read::Integrations => {
                "SELECT kind, name, config, updated_ms FROM integrations ORDER BY kind, name"
            }
            Read::OutboxCursors => {
                "SELECT destination, seq FROM outbox_cursors ORDER BY destination"
            }
            Read::OutboxRetries => {
                "SELECT destination, seq, attempts, next_ms FROM outbox_retries
                 WHERE destination = $1 ORDER BY seq"
            }
            Read::DeliveryAttempts => {
                "SELECT id, destination, seq, attempt, at_ms, duration_ms, status, outcome,
                        detail, next_ms
                 FROM delivery_attempts WHERE destination = $1 AND id < $2
                 ORDER BY id DESC LIMIT $3"
            }
        }
    }
}

/// A read connection with its statements prepared.
pub(super) struct ReadConn {
    slot: usize,
    pub(super) client: Client,
    statements: Vec<Statement>,
}

impl ReadConn {
    pub(super) fn statement(&self, read: Read) -> &Statement {
        &self.statements[read as usize]
    }
}

pub(super) struct Readers {
    target: Arc<Target>,
    /// Each made on first use and again after it broke.
    slots: Vec<Mutex<Option<Arc<ReadConn>>>>,
    next: AtomicUsize,
}

impl Readers {
    pub(super) fn new(target: Arc<Target>) -> Self {
        Self {
            target,
            slots: (0..READERS).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next connection in turn, connected again if it broke.
    pub(super) async fn get(&self) -> Result<Arc<ReadConn>, StoreError> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        // Held while connecting, so that the readers queued on a broken slot wait for one new
        // connection rather than each make their own.
        let mut held = self.slots[slot].lock().await;
        if let Some(conn) = held.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(Arc::clone(conn));
        }
        let conn = Arc::new(self.connect(slot).await.map_err(|reason| {
            StoreError::Backend(format!(
                "cannot reach PostgreSQL for a read ({}): {reason}",
                self.target.description
            ))
        })?);
        *held = Some(Arc::clone(&conn));
        Ok(conn)
    }

    async fn connect(&self, slot: usize) -> Result<ReadConn, String> {
        let client = self.target.connect("reader").await?;
        // All at once: one round trip.
        let prepared = join_in_order(Read::ALL.iter().map(|read| client.prepare(read.sql()))).await;
        let mut statements = Vec::with_capacity(Read::ALL.len());
        for (read, statement) in Read::ALL.iter().zip(prepared) {
            statements.push(
                statement.map_err(|e| {
                    format!("cannot prepare the statement {read:?}: {}", describe(&e))
                })?,
            );
        }
        Ok(ReadConn {
            slot,
            client,
            statements,
        })
    }

    /// The error of a read on `conn`; a connection the error shows broken is dropped, so the
    /// next read in its slot connects again even if the driver has not noticed yet.
    pub(super) async fn failed(
        &self,
        conn: &Arc<ReadConn>,
        what: &str,
        e: &tokio_postgres::Error,
    ) -> StoreError {
        if connection_lost(e) {
            let mut held = self.slots[conn.slot].lock().await;
            if held.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                *held = None;
            }
        }
        StoreError::Backend(format!("{what}: {}", describe(e)))
    }
}
