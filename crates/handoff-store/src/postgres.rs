//! The PostgreSQL backend: one writer task that group-commits batches on its own connection,
//! a few read connections used in turn, and a writer lease with fencing for deployments where
//! several nodes share one database and only one of them may commit.
//!
//! All tables live in one PostgreSQL schema (`StoreEngine::Postgres::schema`), created when
//! missing; every connection sets its `search_path` to it, so stores in different schemas of one
//! database share nothing. Connections are plain text (`NoTls`): TLS is not offered yet, and a
//! URL asking for it (`sslmode=require`) is refused at open. A connection that breaks fails
//! what was running on it with `StoreError::Backend` and is made again on next use.
//!
//! **Durability.** `Durability::Fsync` sets the writer session's `synchronous_commit = on`: a
//! commit returns once PostgreSQL has flushed it. `Durability::Os` sets it `off`: a commit
//! survives a crash of handoff, but the last ones (up to about three times the server's
//! `wal_writer_delay`) may be lost if PostgreSQL itself or its machine crashes.
//!
//! **Commits.** The writer takes every batch waiting in its queue (at most 64) and writes them
//! in one transaction, each field of a batch as one statement over arrays (`unnest`), every
//! statement pipelined: a group of one batch (`BEGIN`, the lease check, its statements and
//! `COMMIT`) costs one round trip; a larger group puts each batch in its own savepoint, so
//! that one failing in the database is rolled back alone, and costs two. A commit whose
//! connection broke while `COMMIT` was on its way may have been written all the same: the error
//! says so, and the writer reads the head from the database again before the next batch.
//!
//! **Why the log order is the commit order.** `seq` is assigned by the engine, not by the
//! database, so the log is only gap-free and in order if no transaction holding seq N+1
//! commits before the one holding seq N. One writer connection writes the batches in queue
//! order and commits its groups one after another: seq N's transaction is committed before
//! the transaction of N+1 begins (or they are one transaction), and a batch that does not
//! continue the head the writer knows is refused before it reaches the database. Across nodes,
//! the lease lets one fenced writer commit at a time, and a takeover waits for the last fenced
//! commit of the old holder (see below); should a second writer slip past anyway (one that was
//! never fenced), the primary key on `seq` refuses its duplicate seqs: a seq is never written
//! twice.
//!
//! **Lease and fencing.** The row `writer` of `writer_lease` says who may commit, until when
//! by PostgreSQL's clock (`clock_timestamp()`, never a node's own clock), and under which
//! epoch; a grant to a new holder raises the epoch. After `PostgresStore::fence(epoch)` every
//! commit transaction first runs `handoff_check_lease(epoch)` (schema.rs), which selects that
//! row `FOR SHARE`, requiring the epoch and an expiry in the future, and raises an error when
//! it does not match: the transaction is rolled back and every batch of the group fails with
//! `StoreError::Fenced`. The share lock lasts until the commit ends, and taking the lease over
//! updates the row, so a takeover waits for an in-flight fenced commit; and `fence` re-reads
//! the head, so the new writer continues after everything the old one committed. Without
//! `fence` (a single node) commits do not look at the lease.

mod connect;
mod readers;
mod schema;
mod statements;
mod writer;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_postgres::{Client, Row};

use self::connect::{connection_lost, describe, Target};
use self::readers::{Read, ReadConn, Readers};
use self::writer::{Entry, Request, WriteConn, Writer};
use crate::{
    Batch, DeliveryAttempt, Durability, IdempotencyRecord, IntegrationRecord, KeyRecord,
    OutboxRetry, SeqNumber, Store, StoreError, StoredEvent,
};

/// Bound on queued writes: beyond it, committers wait, which pushes back on whoever produces
/// events faster than the database takes them.
const QUEUE_CAPACITY: usize = 1024;

/// The name of the lease's row: one writer per store (schema).
const LEASE: &str = "writer";

/// The lease granted by `PostgresStore::try_acquire_lease`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Pass it to `fence`, `renew_lease` and `release_lease`.
    pub epoch: i64,
    /// How long the lease lasts from now, by PostgreSQL's clock as the grant was made.
    pub expires_in: Duration,
}

/// Who holds the writer lease, as `PostgresStore::lease_holder` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub holder: String,
    /// Where the holder can be reached, as it said when it took the lease.
    pub address: String,
    pub epoch: i64,
    /// Milliseconds until it expires, by PostgreSQL's clock; negative when it has expired.
    pub expires_in_ms: i64,
}

/// The store in a schema of a PostgreSQL database.
///
/// Dropping it closes the write queue; the writer task finishes what was already queued and
/// closes its connection.
///
/// A `commit` whose future is dropped before it resolves may still be written: the batch is
/// already queued, and the log has no way to take it back. A commit that fails because the
/// connection was lost while `COMMIT` was on its way may have been written all the same; the
/// error says so, and the writer re-reads the head from the database before the next batch.
pub struct PostgresStore {
    target: Arc<Target>,
    queue: mpsc::Sender<Request>,
    readers: Readers,
    /// For the lease's statements, which may wait for a fenced commit's row lock and should
    /// not hold up the reads pipelined on a read connection meanwhile. Made on first use.
    lease: Mutex<Option<Client>>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target.description)
            .finish_non_exhaustive()
    }
}

/// Opens the store in `schema` of the database at `url` (see `PostgresStore::open`), keeping
/// the concrete type for the lease API.
pub async fn open_postgres(
    url: &str,
    schema: &str,
    durability: Durability,
) -> Result<Arc<PostgresStore>, StoreError> {
    PostgresStore::open(url, schema, durability)
        .await
        .map(Arc::new)
}

impl PostgresStore {
    /// Connects to the database at `url`, creates `schema` and its tables when missing (or
    /// refuses a schema written by a newer build), reads the log's head and starts the writer
    /// task. Must run inside a tokio runtime, which keeps the store's connections.
    pub async fn open(url: &str, schema: &str, durability: Durability) -> Result<Self, StoreError> {
        let target = Arc::new(
            Target::new(url, schema).map_err(|(path, reason)| StoreError::Open { path, reason })?,
        );
        let open_err = |reason: String| StoreError::Open {
            path: target.description.clone(),
            reason,
        };
        let client = target.connect("writer").await.map_err(open_err)?;
        schema::migrate(&client, &target.schema)
            .await
            .map_err(open_err)?;
        let conn = WriteConn::prepare(client, durability)
            .await
            .map_err(open_err)?;
        let head = conn
            .read_head()
            .await
            .map_err(|e| open_err(format!("cannot read the log head: {e}")))?;
        let (queue, requests) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(Writer::new(Arc::clone(&target), durability, conn, head).run(requests));
        tracing::info!(target = %target.description, head, "store: PostgreSQL store open");
        Ok(Self {
            readers: Readers::new(Arc::clone(&target)),
            target,
            queue,
            lease: Mutex::new(None),
        })
    }

    /// Makes every later commit check, in its transaction, that the writer lease is still held
    /// under `epoch` (else the whole group fails with `StoreError::Fenced` and nothing is
    /// written), and returns the log's head read from the database: the previous holder may
    /// have appended up to its last moment, and the next batch must continue after that.
    /// Batches queued before this call are written as before it.
    pub async fn fence(&self, epoch: i64) -> Result<SeqNumber, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request::Fence { epoch, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Takes the writer lease for `ttl` if nobody holds it, it expired, or `holder` holds it
    /// already (then the epoch stays; a grant to another holder, or the first grant, raises
    /// it). `None` while another holder's lease is live. `holder` must be unique to the
    /// process (not just the host): two processes under one name would share an epoch, and
    /// fencing could not tell them apart. A takeover waits for an in-flight fenced commit of
    /// the old holder.
    pub async fn try_acquire_lease(
        &self,
        holder: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<Option<LeaseGrant>, StoreError> {
        let ttl = micros(ttl);
        let row = self
            .lease_query(
                "taking the writer lease",
                "INSERT INTO writer_lease AS l (name, holder, address, epoch, expires_at)
                 VALUES ($1, $2, $3, 1, clock_timestamp() + $4::bigint * interval '1 microsecond')
                 ON CONFLICT (name) DO UPDATE SET
                     holder = excluded.holder,
                     address = excluded.address,
                     epoch = CASE WHEN l.holder = excluded.holder THEN l.epoch
                                  ELSE l.epoch + 1 END,
                     expires_at = clock_timestamp() + $4::bigint * interval '1 microsecond'
                 WHERE l.holder = excluded.holder OR l.expires_at <= clock_timestamp()
                 RETURNING epoch,
                     (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint",
                &[&LEASE, &holder, &address, &ttl],
            )
            .await?;
        row.map(|row| {
            let epoch: i64 = lease_column(&row, 0)?;
            let left: i64 = lease_column(&row, 1)?;
            Ok(LeaseGrant {
                epoch,
                expires_in: Duration::from_micros(u64::try_from(left).unwrap_or(0)),
            })
        })
        .transpose()
    }

    /// Extends the lease held by `holder` under `epoch` to `ttl` from now. `false` when it is
    /// lost: expired (even if nobody took it yet: others may have counted it gone) or taken.
    pub async fn renew_lease(
        &self,
        holder: &str,
        epoch: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let row = self
            .lease_query(
                "renewing the writer lease",
                "UPDATE writer_lease
                 SET expires_at = clock_timestamp() + $4::bigint * interval '1 microsecond'
                 WHERE name = $1 AND holder = $2 AND epoch = $3
                     AND expires_at > clock_timestamp()
                 RETURNING 1",
                &[&LEASE, &holder, &epoch, &micros(ttl)],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Gives the lease up: it expires at once, so that another node takes over without waiting
    /// for the TTL. `false` when `holder` did not hold it under `epoch`. This node's commits
    /// fail with `Fenced` from then on (when fenced).
    pub async fn release_lease(&self, holder: &str, epoch: i64) -> Result<bool, StoreError> {
        let row = self
            .lease_query(
                "releasing the writer lease",
                "UPDATE writer_lease SET expires_at = clock_timestamp() - interval '1 millisecond'
                 WHERE name = $1 AND holder = $2 AND epoch = $3
                 RETURNING 1",
                &[&LEASE, &holder, &epoch],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Who holds (or last held) the lease; `None` if it was never granted.
    pub async fn lease_holder(&self) -> Result<Option<LeaseInfo>, StoreError> {
        let row = self
            .lease_query(
                "reading the writer lease",
                "SELECT holder, address, epoch,
                     floor(extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint
                 FROM writer_lease WHERE name = $1",
                &[&LEASE],
            )
            .await?;
        row.map(|row| {
            Ok(LeaseInfo {
                holder: lease_column(&row, 0)?,
                address: lease_column(&row, 1)?,
                epoch: lease_column(&row, 2)?,
                expires_in_ms: lease_column(&row, 3)?,
            })
        })
        .transpose()
    }

    /// Runs one lease statement (its own transaction) on the lease connection.
    async fn lease_query(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let mut held = self.lease.lock().await;
        if held.as_ref().is_some_and(Client::is_closed) {
            *held = None;
        }
        let client = match held.as_ref() {
            Some(client) => client,
            None => held.insert(self.target.connect("lease").await.map_err(|reason| {
                StoreError::Backend(format!(
                    "{what}: cannot reach PostgreSQL ({}): {reason}",
                    self.target.description
                ))
            })?),
        };
        match client.query_opt(sql, params).await {
            Ok(row) => Ok(row),
            Err(e) => {
                if connection_lost(&e) {
                    *held = None;
                }
                Err(StoreError::Backend(format!("{what}: {}", describe(&e))))
            }
        }
    }

    /// Runs one read on a read connection.
    async fn read(
        &self,
        what: &str,
        read: Read,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let conn: Arc<ReadConn> = self.readers.get().await?;
        match conn.client.query(conn.statement(read), params).await {
            Ok(rows) => Ok(rows),
            Err(e) => Err(self.readers.failed(&conn, what, &e).await),
        }
    }

    async fn read_events(
        &self,
        what: &str,
        read: Read,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(what, read, params)
            .await?
            .iter()
            .map(|row| {
                Ok(StoredEvent {
                    seq: seq_column(row, 0, what)?,
                    event_type: column(row, 1, what)?,
                    subject: column(row, 2, what)?,
                    time_ms: column(row, 3, what)?,
                    agents: column(row, 4, what)?,
                    payload: column(row, 5, what)?,
                })
            })
            .collect()
    }

    async fn enqueue(&self, entry: Entry) -> Result<(), StoreError> {
        // Waits for room when the queue is full; waiters are served in order, so batches are
        // still queued in the order their futures were first polled.
        self.queue
            .send(Request::Write(entry))
            .await
            .map_err(|_| StoreError::Closed)
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        // Nothing to make durable, so no reason to queue behind real writes.
        if batch.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.enqueue(Entry::commit(batch, reply)).await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Read from the database, not from the writer's memory: in a cluster, other nodes append
    /// to the same log.
    async fn head(&self) -> Result<SeqNumber, StoreError> {
        let rows = self.read("reading the log head", Read::Head, &[]).await?;
        match rows.first() {
            Some(row) => seq_column(row, 0, "reading the log head"),
            None => Ok(0),
        }
    }

    async fn events_after(
        &self,
        after: SeqNumber,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read_events(
            "reading events",
            Read::EventsAfter,
            &[&seq_bound(after), &sql_limit(limit)],
        )
        .await
    }

    async fn agent_events_after(
        &self,
        agent_id: &str,
        after: SeqNumber,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read_events(
            "reading an agent's events",
            Read::AgentEventsAfter,
            &[&agent_id, &seq_bound(after), &sql_limit(limit)],
        )
        .await
    }

    async fn subject_events(&self, subject: &str) -> Result<Vec<StoredEvent>, StoreError> {
        self.read_events(
            "reading a subject's events",
            Read::SubjectEvents,
            &[&subject],
        )
        .await
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let what = "reading keys";
        self.read(what, Read::Keys, &[])
            .await?
            .iter()
            .map(|row| {
                Ok(KeyRecord {
                    id: column(row, 0, what)?,
                    role: column(row, 1, what)?,
                    name: column(row, 2, what)?,
                    agent_id: column(row, 3, what)?,
                    token_sha256: sha256_column(row, 4, what)?,
                    created_ms: column(row, 5, what)?,
                })
            })
            .collect()
    }

    async fn acks(&self) -> Result<Vec<(String, SeqNumber)>, StoreError> {
        let what = "reading acks";
        self.read(what, Read::Acks, &[])
            .await?
            .iter()
            .map(|row| Ok((column(row, 0, what)?, seq_column(row, 1, what)?)))
            .collect()
    }

    async fn idempotency_since(&self, since_ms: i64) -> Result<Vec<IdempotencyRecord>, StoreError> {
        let what = "reading idempotency records";
        self.read(what, Read::IdempotencySince, &[&since_ms])
            .await?
            .iter()
            .map(|row| {
                Ok(IdempotencyRecord {
                    key_id: column(row, 0, what)?,
                    idempotency_key: column(row, 1, what)?,
                    body_sha256: sha256_column(row, 2, what)?,
                    interaction_id: column(row, 3, what)?,
                    created_ms: column(row, 4, what)?,
                })
            })
            .collect()
    }

    /// A write: it queues with the commits, so that it is fenced like them.
    async fn purge_idempotency(&self, before_ms: i64) -> Result<usize, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Entry::purge(before_ms, reply)).await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn integrations(&self) -> Result<Vec<IntegrationRecord>, StoreError> {
        let what = "reading integrations";
        self.read(what, Read::Integrations, &[])
            .await?
            .iter()
            .map(|row| {
                Ok(IntegrationRecord {
                    kind: column(row, 0, what)?,
                    name: column(row, 1, what)?,
                    config: column(row, 2, what)?,
                    updated_ms: column(row, 3, what)?,
                })
            })
            .collect()
    }

    async fn outbox_cursors(&self) -> Result<Vec<(String, SeqNumber)>, StoreError> {
        let what = "reading outbox cursors";
        self.read(what, Read::OutboxCursors, &[])
            .await?
            .iter()
            .map(|row| Ok((column(row, 0, what)?, seq_column(row, 1, what)?)))
            .collect()
    }

    async fn outbox_retries(&self, destination: &str) -> Result<Vec<OutboxRetry>, StoreError> {
        let what = "reading outbox retries";
        self.read(what, Read::OutboxRetries, &[&destination])
            .await?
            .iter()
            .map(|row| {
                Ok(OutboxRetry {
                    destination: column(row, 0, what)?,
                    seq: seq_column(row, 1, what)?,
                    attempts: narrow(column::<i64>(row, 2, what)?, what)?,
                    next_ms: column(row, 3, what)?,
                })
            })
            .collect()
    }

    async fn delivery_attempts(
        &self,
        destination: &str,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeliveryAttempt>, StoreError> {
        let what = "reading delivery attempts";
        let before = before_id.unwrap_or(i64::MAX);
        self.read(
            what,
            Read::DeliveryAttempts,
            &[&destination, &before, &sql_limit(limit)],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(DeliveryAttempt {
                id: column(row, 0, what)?,
                destination: column(row, 1, what)?,
                seq: seq_column(row, 2, what)?,
                attempt: narrow(column::<i64>(row, 3, what)?, what)?,
                at_ms: column(row, 4, what)?,
                duration_ms: column(row, 5, what)?,
                status: column::<Option<i32>>(row, 6, what)?
                    .map(|status| narrow(status, what))
                    .transpose()?,
                outcome: column(row, 7, what)?,
                detail: column(row, 8, what)?,
                next_ms: column(row, 9, what)?,
            })
        })
        .collect()
    }
}

fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
    what: &str,
) -> Result<T, StoreError> {
    row.try_get(index)
        .map_err(|e| StoreError::Backend(format!("{what}: column {index}: {}", describe(&e))))
}

fn seq_column(row: &Row, index: usize, what: &str) -> Result<SeqNumber, StoreError> {
    narrow(column::<i64>(row, index, what)?, what)
}

fn sha256_column(row: &Row, index: usize, what: &str) -> Result<[u8; 32], StoreError> {
    let bytes: &[u8] = column(row, index, what)?;
    bytes.try_into().map_err(|_| {
        StoreError::Backend(format!(
            "{what}: a SHA-256 of {} bytes instead of 32",
            bytes.len()
        ))
    })
}

/// A stored integer into the narrower or unsigned type the store hands out; only a row
/// written by something else could fail.
fn narrow<T: TryFrom<W>, W: Copy + fmt::Display>(value: W, what: &str) -> Result<T, StoreError> {
    T::try_from(value).map_err(|_| StoreError::Backend(format!("{what}: {value} is out of range")))
}

fn lease_column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
) -> Result<T, StoreError> {
    column(row, index, "reading the writer lease")
}

/// A seq used as a lower bound: anything past `i64::MAX` has nothing after it either.
fn seq_bound(seq: SeqNumber) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A TTL in microseconds, the unit the lease's statements add to `clock_timestamp()`.
fn micros(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX)
}
