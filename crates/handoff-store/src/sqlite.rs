//! The SQLite backend: one writer thread that group-commits batches into a WAL database, and a
//! small pool of read-only connections that read beside it.
//!
//! SQLite allows one writer at a time, and with `synchronous=FULL` every transaction costs an
//! fsync. Funnelling all writes through one thread that takes whatever is queued and writes it
//! in one transaction turns N concurrent commits into one fsync instead of N, without callers
//! having to coordinate. WAL mode lets the read connections see the last committed state
//! without waiting for the writer.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, Row, Transaction, TransactionBehavior};
use smallvec::SmallVec;
use tokio::sync::{oneshot, Semaphore};

use crate::{
    Batch, DeliveryAttempt, Durability, IdempotencyRecord, IntegrationRecord, KeyRecord,
    OutboxRetry, SeqNumber, Store, StoreError, StoredEvent,
};

/// File name of the database inside the data directory.
const DB_FILE: &str = "handoff.db";

/// `PRAGMA user_version` of the schema this build writes. A database with a higher version was
/// written by a newer build and is refused rather than misread.
const SCHEMA_VERSION: i64 = 4;

/// Bound on queued commits: beyond it, committers wait, which pushes back on whoever produces
/// events faster than the disk can take them.
const QUEUE_CAPACITY: usize = 1024;

/// Bound on batches in one transaction, so one transaction (and the latency of the first batch
/// in it) stays bounded under a flood.
const MAX_GROUP: usize = 256;

/// Read connections kept open; also the number of reads running at once.
const READERS: usize = 4;

/// With `os` durability, how often the checkpointer thread moves the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// With `os` durability, the WAL size (in pages) past which the checkpointer makes SQLite start
/// the WAL over. Under a steady stream of commits a checkpoint beside the writer never sees the
/// end of the WAL (frames keep coming while it runs), so SQLite never rewinds it: measured, the
/// file grew by 80 MB a second at 1,000 interactions a second and only shrank once the load
/// stopped. Starting over costs the commits: the writer waits 2-5 ms for the last pass's two
/// syncs, and the pops' p99 rose from 5.7-7.5 ms to 7.4-11.3 ms when it came every 256 MiB
/// (three runs each, taking turns; 8.7 and 9.9 ms in single runs at 16 MiB). At 1 GiB (262,144
/// pages of 4 KiB) it comes every twelve seconds or so at that rate, and bounds the disk the
/// WAL takes.
pub const DEFAULT_WAL_RESTART_PAGES: i64 = 262_144;

/// With fsync durability, the WAL size (in pages) at which a commit moves the WAL into the
/// database (SQLite's automatic checkpoint, run inside that commit; the default is 1,000). The
/// commit that does it, and every commit queued behind it, waits for the copy and the
/// database's sync, so the pages between two checkpoints set the longest stall. Measured at
/// 1,000 interactions a second (docs/benchmarks.md): at 500, commits over 2.5 ms fell from 97
/// to 12 in a run, and the pops' p99 from 3.85-4.49 ms to 3.27-4.08 ms (five runs each, taking
/// turns) for the same CPU; 100 and 250 lowered the p99 as much but raised the p99.9 (to 10-12
/// ms at 100). A checkpointer thread beside the writer, as with `os`, cost a third more CPU and
/// did worse.
pub const FSYNC_WAL_AUTOCHECKPOINT_PAGES: i64 = 500;

/// The frames left over by a checkpoint below which the checkpointer may hold the writer for
/// the last pass: that pass then copies little and syncs little, a pause of a millisecond or
/// two, instead of copying a whole period's commits while every commit waits.
const WAL_FINAL_PASS_PAGES: i64 = 512;

/// At most so many checkpoint passes in a row chase the writer before the checkpointer waits
/// for its next period: if commits outrun the copying, it gives up rather than spin.
const WAL_CHASE_PASSES: usize = 8;

/// Only the checkpointer or another process can hold the lock we want; waiting a little beats
/// failing a commit.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
-- `agents`: the event's agents in the order given, each once, one per line (`AGENT_SEPARATOR`).
-- Kept in the row, so that reading an event back needs no second index: a commit wrote a page
-- of one for every event.
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    subject TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    payload TEXT NOT NULL,
    agents TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_subject_seq ON events (subject, seq);

-- An agent's events, for resuming its stream. `pos` is its place in the event's agents.
CREATE TABLE event_agents (
    agent_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    PRIMARY KEY (agent_id, seq)
) WITHOUT ROWID;

-- Tables keyed by text are WITHOUT ROWID: a rowid table with a text key is two B-trees, the
-- rows and the key's index, and a write at a random place in each is two pages a commit.
CREATE TABLE acks (
    agent_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE idempotency (
    key_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    body_sha256 BLOB NOT NULL,
    interaction_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (key_id, idempotency_key)
) WITHOUT ROWID;
CREATE INDEX idempotency_created_ms ON idempotency (created_ms);

CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    agent_id TEXT,
    token_sha256 BLOB NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
);
";

/// Integrations and their outbox (schema version 3): a new database gets them with the rest, an
/// older one on migration.
const INTEGRATIONS: &str = "
CREATE TABLE integrations (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;

CREATE TABLE outbox_cursors (
    destination TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE outbox_retries (
    destination TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    next_ms INTEGER NOT NULL,
    PRIMARY KEY (destination, seq)
) WITHOUT ROWID;

-- Appended in order; read newest first per destination, trimmed to the newest few.
CREATE TABLE delivery_attempts (
    id INTEGER PRIMARY KEY,
    destination TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    status INTEGER,
    outcome TEXT NOT NULL,
    detail TEXT,
    next_ms INTEGER
);
CREATE INDEX delivery_attempts_destination_id ON delivery_attempts (destination, id);
";

/// From schema version 1: each event's agents move into its row (from `event_agents`, by
/// position), the index that served reading them by seq goes, and the text-keyed tables become
/// WITHOUT ROWID. One transaction with the later steps and the version change. Version 2 also
/// rebuilt `offer_deadlines` WITHOUT ROWID; the step to version 4 drops that table, so it is
/// left as it is here rather than copied for nothing.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE events ADD COLUMN agents TEXT NOT NULL DEFAULT '';
UPDATE events SET agents = (
    SELECT group_concat(agent_id, char(10) ORDER BY pos) FROM event_agents
    WHERE event_agents.seq = events.seq
) WHERE seq IN (SELECT seq FROM event_agents);
DROP INDEX event_agents_seq_pos;

CREATE TABLE acks_2 (
    agent_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO acks_2 (agent_id, seq) SELECT agent_id, seq FROM acks;
DROP TABLE acks;
ALTER TABLE acks_2 RENAME TO acks;
";

/// From schema version 3: `offer_deadlines` (a row per open offer) goes. Nothing read it: an
/// offer's deadline is in its `interaction.offered` event, which recovery replays.
const MIGRATE_3_TO_4: &str = "
DROP TABLE IF EXISTS offer_deadlines;
";

/// Between an event's agents in its row. Agent ids never hold it (the API's ids are
/// `[A-Za-z0-9._-]`); the writer refuses a batch whose ids do, rather than split them wrongly.
const AGENT_SEPARATOR: char = '\n';

/// What the writer thread is asked to do. Purging is a write too, so it queues with commits.
enum Request {
    Commit {
        /// Boxed: a batch is most of a request, and the queue holds a thousand.
        batch: Box<Batch>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Purge {
        before_ms: i64,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
}

impl Request {
    fn fail(self, err: StoreError) {
        // A caller that gave up waiting has nobody to tell.
        match self {
            Request::Commit { reply, .. } => drop(reply.send(Err(err))),
            Request::Purge { reply, .. } => drop(reply.send(Err(err))),
        }
    }
}

/// A request written into the open transaction, answered once the transaction's fate is known.
enum Written {
    Commit(oneshot::Sender<Result<(), StoreError>>),
    Purge(oneshot::Sender<Result<usize, StoreError>>, usize),
}

impl Written {
    fn succeed(self) {
        match self {
            Written::Commit(reply) => drop(reply.send(Ok(()))),
            Written::Purge(reply, n) => drop(reply.send(Ok(n))),
        }
    }

    fn fail(self, err: StoreError) {
        match self {
            Written::Commit(reply) => drop(reply.send(Err(err))),
            Written::Purge(reply, _) => drop(reply.send(Err(err))),
        }
    }
}

/// The store over `<data_dir>/handoff.db`.
///
/// Dropping it closes the write queue and waits for the writer thread to finish what was
/// already queued, so a reopen right after sees every commit that returned `Ok`.
///
/// A `commit` whose future is dropped before it resolves may still be written: the batch is
/// already queued, and the log has no way to take it back.
pub struct SqliteStore {
    path: PathBuf,
    /// `None` only during drop, to close the queue before joining the writer.
    queue: Option<SyncSender<Request>>,
    writer: Option<JoinHandle<()>>,
    /// With `os` durability: the thread that checkpoints the WAL beside the writer, and the
    /// sender whose drop stops it.
    checkpointer: Option<(SyncSender<()>, JoinHandle<()>)>,
    /// Published by the writer after each successful transaction.
    head: Arc<AtomicU64>,
    readers: Arc<ReadPool>,
    /// Keeps any other server off the directory; dropped last, after the writer stopped.
    _dir_lock: crate::dir_lock::DataDirLock,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("head", &self.head.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating when missing) the store in `data_dir`, brings its schema up to date and
    /// starts its writer thread.
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        Self::open_with_wal_restart(data_dir, durability, DEFAULT_WAL_RESTART_PAGES)
    }

    /// As `open`, with the WAL size in pages past which `os` durability starts the WAL over
    /// (`DEFAULT_WAL_RESTART_PAGES`): for tests, which cannot write a gigabyte, and tuning.
    pub fn open_with_wal_restart(
        data_dir: &Path,
        durability: Durability,
        wal_restart_pages: i64,
    ) -> Result<Self, StoreError> {
        let WriteSide {
            dir_lock,
            path,
            conn,
            head,
        } = open_write_side(data_dir, durability, wal_restart_pages)?;
        let open_err = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        // Opened now rather than on first read so that a database readers cannot open fails
        // here, where the operator looks, and not on some later request.
        let first_reader = open_reader(&path).map_err(open_err)?;

        let shared_head = Arc::new(AtomicU64::new(head));
        let (queue, requests) = mpsc::sync_channel(QUEUE_CAPACITY);
        let gate = Arc::new(Mutex::new(()));
        let writer = Writer {
            conn,
            gate: Arc::clone(&gate),
            head,
            shared_head: Arc::clone(&shared_head),
        };
        let handle = std::thread::Builder::new()
            .name("handoff-store-writer".into())
            .spawn(move || writer.run(requests))
            .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?;
        let checkpointer = match durability {
            Durability::Fsync => None,
            Durability::Os => {
                Some(start_checkpointer(&path, gate, wal_restart_pages).map_err(open_err)?)
            }
        };

        Ok(Self {
            readers: Arc::new(ReadPool {
                path: path.clone(),
                idle: Mutex::new(vec![first_reader]),
                permits: Arc::new(Semaphore::new(READERS)),
            }),
            path,
            queue: Some(queue),
            writer: Some(handle),
            checkpointer,
            head: shared_head,
            _dir_lock: dir_lock,
        })
    }

    /// Path of the database file.
    pub fn db_path(&self) -> &Path {
        &self.path
    }

    async fn enqueue(&self, request: Request) -> Result<(), StoreError> {
        let queue = self.queue.as_ref().ok_or(StoreError::Closed)?;
        match queue.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::Closed),
            // The queue is full: wait for room off the async workers, which must not block.
            Err(TrySendError::Full(request)) => {
                let queue = queue.clone();
                // The request comes back inside a send error; only the fact of closing matters.
                tokio::task::spawn_blocking(move || queue.send(request).map_err(drop))
                    .await
                    .map_err(|e| StoreError::Backend(format!("queueing a write failed: {e}")))?
                    .map_err(|()| StoreError::Closed)
            }
        }
    }

    /// Runs `f` on a read connection on the blocking pool.
    async fn read<T, F>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let permit = Arc::clone(&self.readers.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pool = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = pool.take()?;
            let out = f(&conn).map_err(|e| StoreError::Backend(format!("{what}: {e}")));
            pool.give_back(conn);
            out
        })
        .await
        .map_err(|e| StoreError::Backend(format!("{what}: the read task failed: {e}")))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue is what tells the writer to stop, once it has drained it.
        drop(self.queue.take());
        if let Some(handle) = self.writer.take() {
            if handle.join().is_err() {
                tracing::error!(path = %self.path.display(), "the store writer thread panicked");
            }
        }
        if let Some((stop, handle)) = self.checkpointer.take() {
            drop(stop);
            if handle.join().is_err() {
                tracing::error!(path = %self.path.display(), "the store checkpointer thread panicked");
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        // Nothing to make durable, so no reason to queue behind real writes or cost an fsync.
        if batch.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.enqueue(Request::Commit {
            batch: Box::new(batch),
            reply,
        })
        .await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn head(&self) -> Result<SeqNumber, StoreError> {
        Ok(self.head.load(Ordering::Acquire))
    }

    async fn events_after(
        &self,
        after: SeqNumber,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read("reading events", move |conn| {
            let events = conn
                .prepare_cached(
                    "SELECT seq, type, subject, time_ms, payload, agents FROM events
                     WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?
                .query_map(params![seq_bound(after), sql_limit(limit)], event_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(events)
        })
        .await
    }

    async fn agent_events_after(
        &self,
        agent_id: &str,
        after: SeqNumber,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let agent_id = agent_id.to_owned();
        self.read("reading an agent's events", move |conn| {
            let events = conn
                .prepare_cached(
                    "SELECT e.seq, e.type, e.subject, e.time_ms, e.payload, e.agents
                     FROM event_agents a JOIN events e ON e.seq = a.seq
                     WHERE a.agent_id = ?1 AND a.seq > ?2 ORDER BY a.seq LIMIT ?3",
                )?
                .query_map(
                    params![agent_id, seq_bound(after), sql_limit(limit)],
                    event_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(events)
        })
        .await
    }

    async fn subject_events(&self, subject: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let subject = subject.to_owned();
        self.read("reading a subject's events", move |conn| {
            let events = conn
                .prepare_cached(
                    "SELECT seq, type, subject, time_ms, payload, agents FROM events
                     WHERE subject = ?1 ORDER BY seq",
                )?
                .query_map(params![subject], event_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(events)
        })
        .await
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.read("reading keys", |conn| {
            conn.prepare_cached(
                "SELECT id, role, name, agent_id, token_sha256, created_ms FROM keys ORDER BY id",
            )?
            .query_map([], |row| {
                Ok(KeyRecord {
                    id: row.get(0)?,
                    role: row.get(1)?,
                    name: row.get(2)?,
                    agent_id: row.get(3)?,
                    token_sha256: row.get(4)?,
                    created_ms: row.get(5)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn acks(&self) -> Result<Vec<(String, SeqNumber)>, StoreError> {
        self.read("reading acks", |conn| {
            conn.prepare_cached("SELECT agent_id, seq FROM acks ORDER BY agent_id")?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        })
        .await
    }

    async fn idempotency_since(&self, since_ms: i64) -> Result<Vec<IdempotencyRecord>, StoreError> {
        self.read("reading idempotency records", move |conn| {
            conn.prepare_cached(
                "SELECT key_id, idempotency_key, body_sha256, interaction_id, created_ms
                 FROM idempotency WHERE created_ms >= ?1
                 ORDER BY created_ms, key_id, idempotency_key",
            )?
            .query_map(params![since_ms], |row| {
                Ok(IdempotencyRecord {
                    key_id: row.get(0)?,
                    idempotency_key: row.get(1)?,
                    body_sha256: row.get(2)?,
                    interaction_id: row.get(3)?,
                    created_ms: row.get(4)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn purge_idempotency(&self, before_ms: i64) -> Result<usize, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Request::Purge { before_ms, reply }).await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn integrations(&self) -> Result<Vec<IntegrationRecord>, StoreError> {
        self.read("reading integrations", |conn| {
            conn.prepare_cached(
                "SELECT kind, name, config, updated_ms FROM integrations ORDER BY kind, name",
            )?
            .query_map([], |row| {
                Ok(IntegrationRecord {
                    kind: row.get(0)?,
                    name: row.get(1)?,
                    config: row.get(2)?,
                    updated_ms: row.get(3)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn outbox_cursors(&self) -> Result<Vec<(String, SeqNumber)>, StoreError> {
        self.read("reading outbox cursors", |conn| {
            conn.prepare_cached("SELECT destination, seq FROM outbox_cursors ORDER BY destination")?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        })
        .await
    }

    async fn outbox_retries(&self, destination: &str) -> Result<Vec<OutboxRetry>, StoreError> {
        let destination = destination.to_owned();
        self.read("reading outbox retries", move |conn| {
            conn.prepare_cached(
                "SELECT destination, seq, attempts, next_ms FROM outbox_retries
                 WHERE destination = ?1 ORDER BY seq",
            )?
            .query_map(params![destination], |row| {
                Ok(OutboxRetry {
                    destination: row.get(0)?,
                    seq: row.get(1)?,
                    attempts: row.get(2)?,
                    next_ms: row.get(3)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn delivery_attempts(
        &self,
        destination: &str,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeliveryAttempt>, StoreError> {
        let destination = destination.to_owned();
        self.read("reading delivery attempts", move |conn| {
            conn.prepare_cached(
                "SELECT id, destination, seq, attempt, at_ms, duration_ms, status, outcome,
                        detail, next_ms
                 FROM delivery_attempts WHERE destination = ?1 AND id < ?2
                 ORDER BY id DESC LIMIT ?3",
            )?
            .query_map(
                params![destination, before_id.unwrap_or(i64::MAX), sql_limit(limit)],
                |row| {
                    Ok(DeliveryAttempt {
                        id: row.get(0)?,
                        destination: row.get(1)?,
                        seq: row.get(2)?,
                        attempt: row.get(3)?,
                        at_ms: row.get(4)?,
                        duration_ms: row.get(5)?,
                        status: row.get(6)?,
                        outcome: row.get(7)?,
                        detail: row.get(8)?,
                        next_ms: row.get(9)?,
                    })
                },
            )?
            .collect()
        })
        .await
    }
}

/// What the writer needs, opened: the data directory locked, the database's schema up to date.
struct WriteSide {
    dir_lock: crate::dir_lock::DataDirLock,
    path: PathBuf,
    conn: Connection,
    head: SeqNumber,
}

fn open_write_side(
    data_dir: &Path,
    durability: Durability,
    wal_restart_pages: i64,
) -> Result<WriteSide, StoreError> {
    create_data_dir(data_dir).map_err(|reason| StoreError::Open {
        path: data_dir.display().to_string(),
        reason,
    })?;
    // Before the database is touched: a second server must not even migrate it.
    let dir_lock =
        crate::dir_lock::DataDirLock::acquire(data_dir).map_err(|reason| StoreError::Open {
            path: data_dir.display().to_string(),
            reason,
        })?;
    let path = data_dir.join(DB_FILE);
    let open_err = |reason: String| StoreError::Open {
        path: path.display().to_string(),
        reason,
    };
    let mut conn = open_writer(&path, durability, wal_restart_pages).map_err(open_err)?;
    migrate(&mut conn).map_err(open_err)?;
    let head = read_head(&conn).map_err(|e| open_err(format!("cannot read the log head: {e}")))?;
    Ok(WriteSide {
        dir_lock,
        path,
        conn,
        head,
    })
}

/// The writer's group commit on the calling thread, with no writer thread and no queue: for
/// the instruction-count benchmarks (`crates/handoff/benches/pop_path.rs`), since callgrind
/// counts the thread that runs the measured function, and the store's own writer thread would
/// take the commit out of the count. It writes exactly as `SqliteStore`'s writer does.
#[cfg(feature = "bench-internals")]
pub struct InlineGroupCommit {
    writer: Writer,
    _dir_lock: crate::dir_lock::DataDirLock,
}

#[cfg(feature = "bench-internals")]
impl InlineGroupCommit {
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        let side = open_write_side(data_dir, durability, DEFAULT_WAL_RESTART_PAGES)?;
        Ok(InlineGroupCommit {
            writer: Writer {
                conn: side.conn,
                gate: Arc::new(Mutex::new(())),
                head: side.head,
                shared_head: Arc::new(AtomicU64::new(side.head)),
            },
            _dir_lock: side.dir_lock,
        })
    }

    /// Writes `batches` as one group (one transaction), as the writer thread writes what it
    /// found queued; the result of each batch, in order.
    pub fn write_group(&mut self, batches: Vec<Batch>) -> Vec<Result<(), StoreError>> {
        let mut answers = Vec::with_capacity(batches.len());
        let mut group = Vec::with_capacity(batches.len());
        for batch in batches {
            let (reply, answer) = oneshot::channel();
            group.push(Request::Commit {
                batch: Box::new(batch),
                reply,
            });
            answers.push(answer);
        }
        self.writer.write_group(group);
        answers
            .into_iter()
            .map(|mut answer| answer.try_recv().unwrap_or(Err(StoreError::Closed)))
            .collect()
    }
}

/// Owns the only write connection; lives on its own thread.
struct Writer {
    conn: Connection,
    /// Held for each transaction; the checkpointer takes it for its last pass before the WAL
    /// starts over, so that no commit lands while it finishes (see `start_checkpointer`).
    gate: Arc<Mutex<()>>,
    /// Head as of the last successful transaction: the seq the next batch must continue.
    head: SeqNumber,
    shared_head: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, requests: Receiver<Request>) {
        // `recv` fails once every sender is gone and the queue is drained: that is shutdown.
        while let Ok(first) = requests.recv() {
            let mut group = Vec::with_capacity(16);
            group.push(first);
            while group.len() < MAX_GROUP {
                match requests.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            let gate = Arc::clone(&self.gate);
            let _held = gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            self.write_group(group);
        }
        tracing::debug!("store writer stopped");
    }

    /// Writes every request of `group` in one transaction and answers each.
    ///
    /// Each batch runs in its own savepoint, so a batch that is refused (seq not continuing the
    /// log) or fails (a constraint) is rolled back alone and the rest of the group still
    /// commits. Only a failure of the transaction itself fails the whole group. A group of one
    /// request (most of them) needs no savepoint: if it fails, rolling the transaction back
    /// undoes the same.
    fn write_group(&mut self, group: Vec<Request>) {
        let started = Instant::now();
        let size = group.len();
        let alone = size == 1;
        // A lone request failed with no savepoint around it: roll back instead of committing.
        let mut discard = false;
        let mut head = self.head;
        let mut written = Vec::with_capacity(size);
        let mut events = 0usize;

        let mut tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                tracing::error!(error = %e, batches = size, "store: cannot begin a transaction");
                for request in group {
                    request.fail(StoreError::Backend(format!("beginning a transaction: {e}")));
                }
                return;
            }
        };

        let mut broken: Option<String> = None;
        for request in group {
            if let Some(reason) = &broken {
                request.fail(StoreError::Backend(reason.clone()));
                continue;
            }
            match request {
                Request::Commit { batch, reply } => {
                    if let Err(e) = check_seq(&batch, head) {
                        drop(reply.send(Err(e)));
                        continue;
                    }
                    match in_group(&mut tx, alone, |conn| apply_batch(conn, &batch)) {
                        Ok(()) => {
                            if let Some(last) = batch.events.last() {
                                head = last.seq;
                            }
                            events += batch.events.len();
                            written.push(Written::Commit(reply));
                        }
                        Err(SavepointError::RolledBack(e)) => {
                            tracing::warn!(error = %e, "store: a batch failed and was rolled back");
                            drop(reply.send(Err(e)));
                        }
                        Err(SavepointError::UndoTransaction(e)) => {
                            tracing::warn!(error = %e, "store: a batch failed and was rolled back");
                            drop(reply.send(Err(e)));
                            discard = true;
                        }
                        Err(SavepointError::Broken(e)) => {
                            drop(reply.send(Err(StoreError::Backend(e.clone()))));
                            broken = Some(e);
                        }
                    }
                }
                Request::Purge { before_ms, reply } => {
                    match in_group(&mut tx, alone, |conn| purge_idempotency(conn, before_ms)) {
                        Ok(n) => written.push(Written::Purge(reply, n)),
                        Err(SavepointError::RolledBack(e)) => drop(reply.send(Err(e))),
                        Err(SavepointError::UndoTransaction(e)) => {
                            drop(reply.send(Err(e)));
                            discard = true;
                        }
                        Err(SavepointError::Broken(e)) => {
                            drop(reply.send(Err(StoreError::Backend(e.clone()))));
                            broken = Some(e);
                        }
                    }
                }
            }
        }

        let outcome = match broken {
            // A batch's savepoint could not be undone, so the transaction may hold half of it.
            Some(reason) => {
                drop(tx.rollback());
                Err(reason)
            }
            // Nothing else is in the transaction: undoing it undoes only the failed request.
            None if discard => tx
                .rollback()
                .map_err(|e| format!("rolling back a failed batch: {e}")),
            None => tx
                .commit()
                .map_err(|e| format!("committing a transaction: {e}")),
        };
        match outcome {
            Ok(()) => {
                self.head = head;
                self.shared_head.store(head, Ordering::Release);
                written.into_iter().for_each(Written::succeed);
                metrics::histogram!("handoff_store_events_per_commit").record(events as f64);
            }
            Err(reason) => {
                tracing::error!(error = %reason, batches = written.len(), "store: transaction failed");
                // The failed transaction was rolled back; reread rather than trust that.
                if let Ok(h) = read_head(&self.conn) {
                    self.head = h;
                    self.shared_head.store(h, Ordering::Release);
                }
                for w in written {
                    w.fail(StoreError::Backend(reason.clone()));
                }
            }
        }

        metrics::histogram!("handoff_store_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("handoff_store_group_size").record(size as f64);
    }
}

enum SavepointError {
    /// The work failed and its savepoint was rolled back: the transaction is as before it.
    RolledBack(StoreError),
    /// The work failed with no savepoint around it (it was alone in the transaction): the
    /// transaction may hold part of it and must be rolled back, not committed.
    UndoTransaction(StoreError),
    /// Even the rollback failed: the transaction can no longer be trusted.
    Broken(String),
}

/// Runs one request of a group. Alone in its transaction it runs without a savepoint: a
/// savepoint makes SQLite copy every page the request changes into a statement journal first,
/// in case it is rolled back, about 45 KB for a usual batch, and most groups hold one request.
fn in_group<T>(
    tx: &mut Transaction<'_>,
    alone: bool,
    work: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, SavepointError> {
    if alone {
        work(tx).map_err(SavepointError::UndoTransaction)
    } else {
        in_savepoint(tx, work)
    }
}

fn in_savepoint<T>(
    tx: &mut Transaction<'_>,
    work: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, SavepointError> {
    let sp = tx
        .savepoint()
        .map_err(|e| SavepointError::Broken(format!("opening a savepoint: {e}")))?;
    match work(&sp) {
        Ok(out) => {
            sp.commit()
                .map_err(|e| SavepointError::Broken(format!("releasing a savepoint: {e}")))?;
            Ok(out)
        }
        // `finish` rolls back (the default drop behaviour) and reports whether that worked.
        Err(e) => match sp.finish() {
            Ok(()) => Err(SavepointError::RolledBack(e)),
            Err(rollback) => Err(SavepointError::Broken(format!(
                "rolling back a failed batch ({e}) failed: {rollback}"
            ))),
        },
    }
}

/// Refuses a batch whose events do not continue the log at `head`.
fn check_seq(batch: &Batch, head: SeqNumber) -> Result<(), StoreError> {
    for (expected, event) in (head + 1..).zip(&batch.events) {
        if event.seq != expected {
            return Err(StoreError::SeqOutOfOrder {
                expected,
                got: event.seq,
            });
        }
    }
    Ok(())
}

/// Writes one batch. Fields apply in declaration order, so within one batch an agent both acked
/// and deleted ends with no cursor.
fn apply_batch(conn: &Connection, batch: &Batch) -> Result<(), StoreError> {
    if !batch.events.is_empty() {
        let mut event = conn
            .prepare_cached(
                "INSERT INTO events (seq, type, subject, time_ms, payload, agents)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(fail("preparing the event insert"))?;
        let mut agent = conn
            .prepare_cached("INSERT INTO event_agents (agent_id, seq, pos) VALUES (?1, ?2, ?3)")
            .map_err(fail("preparing the event agent insert"))?;
        let mut agents = String::new();
        for e in &batch.events {
            let seq = seq_value(e.seq)?;
            let each_once = agents_each_once(e)?;
            agents.clear();
            for (pos, agent_id) in each_once.iter().enumerate() {
                if pos > 0 {
                    agents.push(AGENT_SEPARATOR);
                }
                agents.push_str(agent_id);
            }
            event
                .execute(params![
                    seq,
                    e.event_type,
                    e.subject,
                    e.time_ms,
                    e.payload,
                    agents
                ])
                .map_err(fail(format_args!("writing event {}", e.seq)))?;
            for (pos, agent_id) in each_once.iter().enumerate() {
                agent
                    .execute(params![agent_id, seq, pos as i64])
                    .map_err(fail(format_args!("writing the agents of event {}", e.seq)))?;
            }
        }
    }

    if !batch.acks.is_empty() {
        let mut ack = conn
            .prepare_cached(
                "INSERT INTO acks (agent_id, seq) VALUES (?1, ?2)
                 ON CONFLICT (agent_id) DO UPDATE SET seq = max(seq, excluded.seq)",
            )
            .map_err(fail("preparing the ack upsert"))?;
        for (agent_id, seq) in &batch.acks {
            ack.execute(params![agent_id, seq_value(*seq)?])
                .map_err(fail(format_args!("writing the ack of {agent_id}")))?;
        }
    }

    if !batch.idempotency.is_empty() {
        // An older record under the same key has expired (see `Batch::idempotency`).
        let mut insert = conn
            .prepare_cached(
                "INSERT INTO idempotency
                 (key_id, idempotency_key, body_sha256, interaction_id, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (key_id, idempotency_key) DO UPDATE SET
                     body_sha256 = excluded.body_sha256,
                     interaction_id = excluded.interaction_id,
                     created_ms = excluded.created_ms",
            )
            .map_err(fail("preparing the idempotency insert"))?;
        for r in &batch.idempotency {
            insert
                .execute(params![
                    r.key_id,
                    r.idempotency_key,
                    r.body_sha256,
                    r.interaction_id,
                    r.created_ms
                ])
                .map_err(fail("writing an idempotency record"))?;
        }
    }

    if !batch.keys_added.is_empty() {
        let mut add = conn
            .prepare_cached(
                "INSERT INTO keys (id, role, name, agent_id, token_sha256, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(fail("preparing the key insert"))?;
        for k in &batch.keys_added {
            add.execute(params![
                k.id,
                k.role,
                k.name,
                k.agent_id,
                k.token_sha256,
                k.created_ms
            ])
            .map_err(fail(format_args!("adding key {}", k.id)))?;
        }
    }

    if !batch.keys_revoked.is_empty() {
        let mut revoke = conn
            .prepare_cached("DELETE FROM keys WHERE id = ?1")
            .map_err(fail("preparing the key delete"))?;
        for id in &batch.keys_revoked {
            revoke
                .execute(params![id])
                .map_err(fail(format_args!("revoking key {id}")))?;
        }
    }

    if !batch.acks_deleted.is_empty() {
        let mut delete = conn
            .prepare_cached("DELETE FROM acks WHERE agent_id = ?1")
            .map_err(fail("preparing the ack delete"))?;
        for agent_id in &batch.acks_deleted {
            delete
                .execute(params![agent_id])
                .map_err(fail(format_args!("deleting the ack of {agent_id}")))?;
        }
    }

    apply_integrations(conn, batch)
}

/// The integration and outbox rows of a batch, in the order of `Batch`'s fields.
fn apply_integrations(conn: &Connection, batch: &Batch) -> Result<(), StoreError> {
    for r in &batch.integrations_put {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO integrations (kind, name, config, updated_ms)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut put| put.execute(params![r.kind, r.name, r.config, r.updated_ms]))
        .map_err(fail(format_args!(
            "writing integration {}/{}",
            r.kind, r.name
        )))?;
    }
    for (kind, name) in &batch.integrations_deleted {
        conn.prepare_cached("DELETE FROM integrations WHERE kind = ?1 AND name = ?2")
            .and_then(|mut delete| delete.execute(params![kind, name]))
            .map_err(fail(format_args!("deleting integration {kind}/{name}")))?;
    }
    for (destination, seq) in &batch.outbox_cursors {
        let seq = seq_value(*seq)?;
        conn.prepare_cached(
            "INSERT OR REPLACE INTO outbox_cursors (destination, seq) VALUES (?1, ?2)",
        )
        .and_then(|mut set| set.execute(params![destination, seq]))
        .map_err(fail(format_args!(
            "writing the outbox cursor of {destination}"
        )))?;
    }
    for r in &batch.outbox_retries_set {
        let seq = seq_value(r.seq)?;
        conn.prepare_cached(
            "INSERT OR REPLACE INTO outbox_retries (destination, seq, attempts, next_ms)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut set| set.execute(params![r.destination, seq, r.attempts, r.next_ms]))
        .map_err(fail(format_args!("writing a retry of {}", r.destination)))?;
    }
    for (destination, seq) in &batch.outbox_retries_cleared {
        let seq = seq_value(*seq)?;
        conn.prepare_cached("DELETE FROM outbox_retries WHERE destination = ?1 AND seq = ?2")
            .and_then(|mut clear| clear.execute(params![destination, seq]))
            .map_err(fail(format_args!("clearing a retry of {destination}")))?;
    }
    for a in &batch.delivery_attempts {
        let seq = seq_value(a.seq)?;
        conn.prepare_cached(
            "INSERT INTO delivery_attempts
             (destination, seq, attempt, at_ms, duration_ms, status, outcome, detail, next_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .and_then(|mut insert| {
            insert.execute(params![
                a.destination,
                seq,
                a.attempt,
                a.at_ms,
                a.duration_ms,
                a.status,
                a.outcome,
                a.detail,
                a.next_ms
            ])
        })
        .map_err(fail(format_args!(
            "recording an attempt for {}",
            a.destination
        )))?;
    }
    for destination in &batch.outbox_deleted {
        for table in ["outbox_cursors", "outbox_retries", "delivery_attempts"] {
            conn.prepare_cached(&format!("DELETE FROM {table} WHERE destination = ?1"))
                .and_then(|mut delete| delete.execute(params![destination]))
                .map_err(fail(format_args!("deleting the outbox of {destination}")))?;
        }
    }
    for (destination, kept) in &batch.delivery_attempts_trimmed {
        let kept = i64::try_from(*kept).unwrap_or(i64::MAX);
        conn.prepare_cached(
            "DELETE FROM delivery_attempts WHERE destination = ?1 AND id <= (
                 SELECT id FROM delivery_attempts WHERE destination = ?1
                 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        )
        .and_then(|mut trim| trim.execute(params![destination, kept]))
        .map_err(fail(format_args!("trimming the attempts of {destination}")))?;
    }
    Ok(())
}

/// The event's agents in the order given, an agent listed twice kept at its first place.
/// Refuses an id that could not be read back from the row: empty, or holding the separator.
fn agents_each_once(event: &StoredEvent) -> Result<SmallVec<[&str; 4]>, StoreError> {
    let mut each_once: SmallVec<[&str; 4]> = SmallVec::new();
    for agent_id in &event.agents {
        if agent_id.is_empty() || agent_id.contains(AGENT_SEPARATOR) {
            return Err(StoreError::Backend(format!(
                "event {} names the agent {agent_id:?}: an agent id must be non-empty and on one line",
                event.seq
            )));
        }
        if !each_once.contains(&agent_id.as_str()) {
            each_once.push(agent_id);
        }
    }
    Ok(each_once)
}

/// Maps a rusqlite error to `Backend`, saying what was being done.
fn fail(what: impl fmt::Display) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| StoreError::Backend(format!("{what}: {e}"))
}

fn purge_idempotency(conn: &Connection, before_ms: i64) -> Result<usize, StoreError> {
    conn.prepare_cached("DELETE FROM idempotency WHERE created_ms < ?1")
        .and_then(|mut stmt| stmt.execute(params![before_ms]))
        .map_err(|e| StoreError::Backend(format!("purging idempotency records: {e}")))
}

/// Connections for reads, opened lazily and kept for reuse.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Bounds reads in flight, and so the connections open at once, to `READERS`.
    permits: Arc<Semaphore>,
}

impl ReadPool {
    fn take(&self) -> Result<Connection, StoreError> {
        let pooled = self
            .idle
            .lock()
            .map_err(|_| StoreError::Backend("the read connection pool is poisoned".into()))?
            .pop();
        match pooled {
            Some(conn) => Ok(conn),
            None => open_reader(&self.path).map_err(StoreError::Backend),
        }
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < READERS {
                idle.push(conn);
            }
        }
    }
}

fn create_data_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            warn_if_shared(dir, &meta);
            return Ok(());
        }
        Ok(_) => return Err("it exists and is not a directory".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot inspect it: {e}")),
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder
            .create(dir)
            .map_err(|e| format!("cannot create it: {e}"))?;
        // The mode passed to mkdir is reduced by the umask; the store holds token hashes and
        // wants exactly owner-only, whatever the umask.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot make it owner-only: {e}"))
    }
    #[cfg(not(unix))]
    {
        builder
            .create(dir)
            .map_err(|e| format!("cannot create it: {e}"))
    }
}

/// An existing directory is the operator's to set up; say so when others can read it, but do
/// not change it behind their back.
fn warn_if_shared(dir: &Path, meta: &std::fs::Metadata) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %dir.display(),
                mode = format_args!("{mode:o}"),
                "the store's data directory is accessible to other users"
            );
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (dir, meta);
    }
}

fn open_writer(
    path: &Path,
    durability: Durability,
    wal_restart_pages: i64,
) -> Result<Connection, String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(path, flags).map_err(|e| format!("cannot open it: {e}"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| format!("cannot set busy_timeout: {e}"))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| format!("cannot switch to WAL: {e}"))?;
    // SQLite answers with the mode it ended up in rather than failing, e.g. on file systems
    // without shared memory; without WAL, reads would block behind the writer.
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("journal_mode is {mode}, WAL is required"));
    }
    let synchronous = match durability {
        Durability::Fsync => "FULL",
        Durability::Os => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(|e| format!("cannot set synchronous={synchronous}: {e}"))?;
    if durability == Durability::Fsync {
        conn.pragma_update(None, "wal_autocheckpoint", FSYNC_WAL_AUTOCHECKPOINT_PAGES)
            .map_err(|e| format!("cannot set wal_autocheckpoint: {e}"))?;
    }
    if durability == Durability::Os {
        // The checkpointer thread does it instead (see `start_checkpointer`).
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| format!("cannot turn off automatic checkpoints: {e}"))?;
        // When the WAL starts over, the file is cut back to this instead of staying as large
        // as it ever grew.
        conn.pragma_update(None, "journal_size_limit", wal_restart_pages * 4096)
            .map_err(|e| format!("cannot set journal_size_limit: {e}"))?;
    }
    // Statement journals (a savepoint's copy of the pages it changes) stay in memory: past
    // 64 KiB SQLite otherwise moves them to a file it creates and unlinks in /var/tmp, several
    // times a second under load, inside the commit. One transaction's worth is bounded by the
    // group size.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(|e| format!("cannot set temp_store=MEMORY: {e}"))?;
    // A few more statements than the writer uses, so none is evicted and re-prepared.
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Starts the thread that checkpoints the WAL every `CHECKPOINT_EVERY` with `os` durability.
///
/// With `synchronous=NORMAL` a commit writes the WAL and does not sync it; SQLite's automatic
/// checkpoint, run by the commit that takes the WAL past 1,000 pages, syncs everything written
/// since the last one and then the database file, and every commit queued behind it waits for
/// those syncs: a stall every second or so at 1,000 interactions a second. A PASSIVE
/// checkpoint from another connection runs beside the writer instead, and the writer's commits
/// never wait for the disk. (With fsync durability every commit syncs the WAL anyway; moving
/// the checkpoint there only made its syncs compete with the commits', measured worse, see
/// docs/benchmarks.md.)
///
/// SQLite starts the WAL over only when a write transaction begins with every frame already
/// in the database. Beside a steady writer that never happens, so once the WAL passes
/// `wal_restart_pages` the checkpointer chases the writer, pass after pass, each copying what
/// was committed during the one before, until a pass finds little left; then it holds the
/// writer (`gate`) for one last short pass, and the writer's next transaction starts the WAL
/// over (`journal_size_limit` then cuts the file back).
fn start_checkpointer(
    path: &Path,
    gate: Arc<Mutex<()>>,
    wal_restart_pages: i64,
) -> Result<(SyncSender<()>, JoinHandle<()>), String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| format!("cannot open the checkpoint connection: {e}"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| format!("cannot set busy_timeout: {e}"))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| format!("cannot set synchronous=NORMAL: {e}"))?;
    // Never sent on: dropping the sender is the signal to stop.
    let (stop, stopped) = mpsc::sync_channel::<()>(0);
    let handle = std::thread::Builder::new()
        .name("handoff-store-checkpointer".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                if let Err(e) = checkpoint_and_restart(&conn, &gate, wal_restart_pages) {
                    tracing::warn!(error = %e, "store: a WAL checkpoint failed");
                }
            }
            tracing::debug!("store checkpointer stopped");
        })
        .map_err(|e| format!("cannot start the checkpointer thread: {e}"))?;
    Ok((stop, handle))
}

/// One period of the checkpointer: a PASSIVE checkpoint and, when the WAL has grown past
/// `wal_restart_pages`, the chase that lets SQLite start it over.
fn checkpoint_and_restart(
    conn: &Connection,
    gate: &Mutex<()>,
    wal_restart_pages: i64,
) -> rusqlite::Result<()> {
    let first = passive_checkpoint(conn)?;
    tracing::trace!(
        wal_pages = first.wal_pages,
        moved = first.moved,
        "store: checkpointed the WAL"
    );
    if first.wal_pages < wal_restart_pages || !first.complete() {
        // Small enough, or a reader still needs older frames: nothing to start over yet.
        return Ok(());
    }
    let started = Instant::now();
    let mut previous = first;
    for _ in 0..WAL_CHASE_PASSES {
        let pass = passive_checkpoint(conn)?;
        if !pass.complete() {
            return Ok(());
        }
        // A WAL shorter than before has started over already.
        let appended = pass.wal_pages - previous.wal_pages;
        previous = pass;
        if appended <= WAL_FINAL_PASS_PAGES {
            let _held = gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let holding = Instant::now();
            let last = passive_checkpoint(conn)?;
            tracing::debug!(
                wal_pages = last.wal_pages,
                moved = last.moved,
                chased_ms = started.elapsed().as_millis() as u64,
                writer_held_us = holding.elapsed().as_micros() as u64,
                "store: the WAL is in the database; the next commit starts it over unless a reader still holds it"
            );
            return Ok(());
        }
    }
    tracing::debug!(
        wal_pages = previous.wal_pages,
        "store: commits outran the checkpoint; the WAL starts over later"
    );
    Ok(())
}

/// What `PRAGMA wal_checkpoint(PASSIVE)` reports: the frames in the WAL when it began, and how
/// many of them are in the database now.
#[derive(Debug, Clone, Copy)]
struct CheckpointPass {
    wal_pages: i64,
    moved: i64,
}

impl CheckpointPass {
    fn complete(self) -> bool {
        self.moved >= self.wal_pages
    }
}

fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<CheckpointPass> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok(CheckpointPass {
            wal_pages: row.get(1)?,
            moved: row.get(2)?,
        })
    })
}

fn open_reader(path: &Path) -> Result<Connection, String> {
    // No CREATE: a database missing here means it was removed under us, which must be an error
    // and not a fresh empty log.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| format!("cannot open a read connection: {e}"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| format!("cannot set busy_timeout: {e}"))?;
    // Opened read-write only because WAL readers need to touch the shared-memory index.
    conn.pragma_update(None, "query_only", true)
        .map_err(|e| format!("cannot make a read connection query-only: {e}"))?;
    Ok(conn)
}

/// Creates the schema on a new database, brings an older one up to date, and refuses one
/// written by a newer build.
fn migrate(conn: &mut Connection) -> Result<(), String> {
    // IMMEDIATE so that two processes opening a new database at once do not both create it.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| format!("cannot begin the schema check: {e}"))?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| format!("cannot read the schema version: {e}"))?;
    match version {
        0 => {
            tx.execute_batch(SCHEMA)
                .map_err(|e| format!("cannot create the schema: {e}"))?;
            tx.execute_batch(INTEGRATIONS)
                .map_err(|e| format!("cannot create the integration tables: {e}"))?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(|e| format!("cannot record the schema version: {e}"))?;
        }
        // Each step from the database's version on, all in this one transaction: a crash
        // halfway leaves the database as it was.
        1..=3 => {
            if version == 1 {
                // It rewrites every event: say so, a large log takes a while.
                let events: i64 = tx
                    .query_row("SELECT count(*) FROM events", [], |row| row.get(0))
                    .map_err(|e| format!("cannot count the events to migrate: {e}"))?;
                tracing::info!(events, "store: moving the schema from version 1 to 2");
                let started = Instant::now();
                tx.execute_batch(MIGRATE_1_TO_2)
                    .map_err(|e| format!("cannot move the schema from version 1 to 2: {e}"))?;
                tracing::info!(
                    events,
                    took_ms = started.elapsed().as_millis() as u64,
                    "store: schema at version 2"
                );
            }
            if version <= 2 {
                tracing::info!("store: moving the schema from version 2 to 3 (integration tables)");
                tx.execute_batch(INTEGRATIONS)
                    .map_err(|e| format!("cannot move the schema from version 2 to 3: {e}"))?;
            }
            tracing::info!("store: moving the schema from version 3 to 4 (no offer deadlines)");
            tx.execute_batch(MIGRATE_3_TO_4)
                .map_err(|e| format!("cannot move the schema from version 3 to 4: {e}"))?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(|e| format!("cannot record the schema version: {e}"))?;
        }
        SCHEMA_VERSION => {}
        other => {
            return Err(format!(
                "its schema version is {other}, this build understands version {SCHEMA_VERSION}"
            ))
        }
    }
    tx.commit()
        .map_err(|e| format!("cannot commit the schema: {e}"))
}

fn read_head(conn: &Connection) -> rusqlite::Result<SeqNumber> {
    conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |row| {
        row.get(0)
    })
}

/// An event from `seq, type, subject, time_ms, payload, agents`.
fn event_from_row(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    let agents: String = row.get(5)?;
    Ok(StoredEvent {
        seq: row.get(0)?,
        event_type: row.get(1)?,
        subject: row.get(2)?,
        time_ms: row.get(3)?,
        agents: if agents.is_empty() {
            Vec::new()
        } else {
            agents.split(AGENT_SEPARATOR).map(str::to_owned).collect()
        },
        payload: row.get(4)?,
    })
}

/// A seq to be written: SQLite integers are signed, and a seq past `i64::MAX` cannot be stored.
fn seq_value(seq: SeqNumber) -> Result<i64, StoreError> {
    i64::try_from(seq)
        .map_err(|_| StoreError::Backend(format!("seq {seq} does not fit in a SQLite integer")))
}

/// A seq used as a lower bound: anything past `i64::MAX` has nothing after it either.
fn seq_bound(seq: SeqNumber) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
