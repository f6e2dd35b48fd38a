//! The durable store: an append-only event log plus the few rows that are not events
//! (API keys, idempotency records, ack cursors, integrations and their outbox), behind one
//! `Store` trait.
//!
//! The store knows nothing of HTTP, JSON or the domain: an event is a `seq`, a type name, a
//! subject, a time, the agents it is for and an opaque text payload. Every `commit` is one
//! transaction; when it returns `Ok` the batch is durable under the configured `Durability`.
//!
//! Two backends: embedded SQLite (`sqlite.rs`), and PostgreSQL (`postgres.rs`), which also
//! offers a writer lease with fencing for nodes that share one database.

mod dir_lock;
mod postgres;
mod sqlite;

use std::sync::Arc;

pub use postgres::{open_postgres, LeaseGrant, LeaseInfo, PostgresStore};
#[cfg(feature = "bench-internals")]
pub use sqlite::InlineGroupCommit;
pub use sqlite::{SqliteStore, FSYNC_WAL_AUTOCHECKPOINT_PAGES};

/// Position of an event in the log: starts at 1, strictly increasing, never reused.
pub type SeqNumber = u64;

/// How hard a commit waits for the disk before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before a commit returns (SQLite `synchronous=FULL`; PostgreSQL
    /// `synchronous_commit = on`). The default.
    Fsync,
    /// Leave flushing to the operating system (SQLite `synchronous=NORMAL`): survives a process
    /// crash, may lose the last commits on power loss. On PostgreSQL, `synchronous_commit =
    /// off`: survives a crash of handoff; the last commits may be lost if PostgreSQL itself (or
    /// its machine) crashes.
    Os,
}

/// Which backend to open.
#[derive(Debug, Clone)]
pub enum StoreEngine {
    /// Embedded SQLite in `<data_dir>/handoff.db`.
    Sqlite {
        data_dir: std::path::PathBuf,
        durability: Durability,
    },
    /// A PostgreSQL database (`url`: `postgres://...` or `key=value` pairs; no TLS yet), every
    /// table in the PostgreSQL schema `schema`, created when missing.
    Postgres {
        url: String,
        schema: String,
        durability: Durability,
    },
}

/// Opens the backend named by `engine`, creating its schema when missing.
pub async fn open(engine: StoreEngine) -> Result<Arc<dyn Store>, StoreError> {
    match engine {
        StoreEngine::Sqlite {
            data_dir,
            durability,
        } => Ok(Arc::new(SqliteStore::open(&data_dir, durability)?) as Arc<dyn Store>),
        StoreEngine::Postgres {
            url,
            schema,
            durability,
        } => Ok(open_postgres(&url, &schema, durability).await? as Arc<dyn Store>),
    }
}

/// One event as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: SeqNumber,
    /// CloudEvents `type`, e.g. `interaction.offered`.
    pub event_type: String,
    /// Interaction or agent id the event is about.
    pub subject: String,
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The agents this event is for, fixed at append time (may be empty).
    pub agents: Vec<String>,
    /// The event as its wire form (opaque to the store).
    pub payload: String,
}

/// An API key or an agent token; only the SHA-256 of the token is ever stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    /// `admin`, `ivr`, `supervisor`, `presence` or `agent`.
    pub role: String,
    pub name: String,
    /// Set for agent tokens.
    pub agent_id: Option<String>,
    pub token_sha256: [u8; 32],
    pub created_ms: i64,
}

/// The answer recorded for an `Idempotency-Key`, so a retry finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The key (API key id) that made the request: idempotency is per calling key.
    pub key_id: String,
    pub idempotency_key: String,
    /// SHA-256 of the canonical request body.
    pub body_sha256: [u8; 32],
    pub interaction_id: String,
    pub created_ms: i64,
}

/// An integration's configuration (a webhook, a CRM connector) as the API stored it, by kind
/// and name; `config` is opaque text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrationRecord {
    /// `webhook`, `connector`, ...
    pub kind: String,
    pub name: String,
    pub config: String,
    pub updated_ms: i64,
}

/// A delivery of one event to one outbox destination that failed and waits to be tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRetry {
    /// Who the event goes to, e.g. `webhook:crm-sync`.
    pub destination: String,
    pub seq: SeqNumber,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due, milliseconds since the Unix epoch.
    pub next_ms: i64,
}

/// One attempt to deliver an event to an outbox destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// Assigned by the store, increasing: the order attempts were recorded in. 0 in a batch.
    pub id: i64,
    pub destination: String,
    pub seq: SeqNumber,
    /// 1 for the first attempt at this event.
    pub attempt: u32,
    pub at_ms: i64,
    pub duration_ms: i64,
    /// The HTTP status, when the destination answered.
    pub status: Option<u16>,
    /// `delivered`, `failed` (to be retried), `gave_up` or `disabled`.
    pub outcome: String,
    /// What went wrong, in a sentence.
    pub detail: Option<String>,
    /// When the next attempt is due, after a failure.
    pub next_ms: Option<i64>,
}

/// Everything one commit writes, in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Must continue the log: the first `seq` is head + 1, each next one + 1.
    pub events: Vec<StoredEvent>,
    /// Ack cursors `(agent_id, seq)`; a cursor never moves backwards (the larger value wins).
    pub acks: Vec<(String, SeqNumber)>,
    /// Idempotency records to insert, or to put in place of the record under the same key:
    /// the engine, the one writer, writes a record only where it found none still in its
    /// window, so an older record under that key has expired (and may not be purged yet).
    pub idempotency: Vec<IdempotencyRecord>,
    pub keys_added: Vec<KeyRecord>,
    /// Key ids to delete.
    pub keys_revoked: Vec<String>,
    /// Agent ids whose ack cursor is deleted (the agent was deleted).
    pub acks_deleted: Vec<String>,
    /// Integrations created or replaced (keyed by kind and name).
    pub integrations_put: Vec<IntegrationRecord>,
    /// Integrations `(kind, name)` deleted.
    pub integrations_deleted: Vec<(String, String)>,
    /// Outbox cursors `(destination, seq)` set to exactly this value: every event up to it was
    /// delivered, given up on, or waits in the retries. It may move back (a replay).
    pub outbox_cursors: Vec<(String, SeqNumber)>,
    /// Retries to insert or replace (keyed by destination and seq).
    pub outbox_retries_set: Vec<OutboxRetry>,
    /// Retries `(destination, seq)` that are done.
    pub outbox_retries_cleared: Vec<(String, SeqNumber)>,
    /// Attempts to record (their `id` is assigned by the store).
    pub delivery_attempts: Vec<DeliveryAttempt>,
    /// Destinations whose cursor, retries and attempts all go (the integration was deleted).
    pub outbox_deleted: Vec<String>,
    /// `(destination, kept)`: of the destination's attempts, only the newest `kept` stay.
    pub delivery_attempts_trimmed: Vec<(String, u64)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self == &Batch::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O failed: {0}")]
    Backend(String),
    #[error("the batch does not continue the log: expected seq {expected}, got {got}")]
    SeqOutOfOrder { expected: SeqNumber, got: SeqNumber },
    #[error("the store is closed")]
    Closed,
    #[error("cannot open the store at {path}: {reason}")]
    Open { path: String, reason: String },
    /// The store was fenced (`PostgresStore::fence`) and the writer lease is no longer held
    /// under that epoch: another node may be writing. Nothing of the batch was written.
    #[error("this node no longer holds the writer lease (epoch {epoch}); the write was not made")]
    Fenced { epoch: i64 },
}

/// The durable store. Every backend passes the conformance suite (`tests/conformance/mod.rs`,
/// `run_all`).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Writes the whole batch in one transaction, durably; concurrent callers may be grouped
    /// into one transaction (group commit). Either all of a batch is written or none of it.
    /// A batch is queued when the returned future is first polled: batches queued one after
    /// another by one caller are written in that order, so a caller may keep several in
    /// flight (a batch whose events do not continue the log is refused, never reordered).
    async fn commit(&self, batch: Batch) -> Result<(), StoreError>;
    /// The highest `seq` in the log, 0 when empty.
    async fn head(&self) -> Result<SeqNumber, StoreError>;
    /// Events with `seq > after`, in order, at most `limit`.
    async fn events_after(
        &self,
        after: SeqNumber,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// Events for `agent_id` with `seq > after`, in order, at most `limit`.
    async fn agent_events_after(
        &self,
        agent_id: &str,
        after: SeqNumber,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// Events whose subject is `subject`, in order.
    async fn subject_events(&self, subject: &str) -> Result<Vec<StoredEvent>, StoreError>;
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    async fn acks(&self) -> Result<Vec<(String, SeqNumber)>, StoreError>;
    /// Idempotency records created at or after `since_ms`.
    async fn idempotency_since(&self, since_ms: i64) -> Result<Vec<IdempotencyRecord>, StoreError>;
    /// Deletes idempotency records created before `before_ms`; returns how many.
    async fn purge_idempotency(&self, before_ms: i64) -> Result<usize, StoreError>;
    /// Every integration, by kind then name.
    async fn integrations(&self) -> Result<Vec<IntegrationRecord>, StoreError>;
    /// Every outbox cursor `(destination, seq)`, by destination.
    async fn outbox_cursors(&self) -> Result<Vec<(String, SeqNumber)>, StoreError>;
    /// The retries waiting for `destination`, by seq.
    async fn outbox_retries(&self, destination: &str) -> Result<Vec<OutboxRetry>, StoreError>;
    /// The attempts recorded for `destination`, newest first, at most `limit`, only those with
    /// an `id` below `before_id` when given (the next page).
    async fn delivery_attempts(
        &self,
        destination: &str,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeliveryAttempt>, StoreError>;
}
