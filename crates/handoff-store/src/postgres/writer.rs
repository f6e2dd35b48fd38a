//! The writer task: the one connection that writes, group commit, and the fence.

use std::collections::VecDeque;
use std::time::Instant;

use smallvec::SmallVec;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::connect::{
    connection_lost, describe, join_in_order, pipeline, pipeline_commit, OpFuture, Target,
};
use super::statements::{batch_writes, Op, Write};
use crate::{Batch, Durability, SeqNumber, StoreError};

/// Bound on batches in one transaction. Each batch of a group runs in its own savepoint, a
/// subtransaction; past 64 of them in one transaction PostgreSQL's per-backend cache of
/// subtransaction ids overflows, and every other session's snapshot must then look
/// subtransactions up in `pg_subtrans`, slowing every read of the database. A group under load
/// is a handful of batches (the engine keeps a few in flight, each outbox worker one).
const MAX_GROUP: usize = 64;

/// What the writer is asked to do. Purging is a write too, so it queues with commits.
pub(super) enum Request {
    Write(Entry),
    /// From now on check the lease under `epoch` in every transaction; re-read the head.
    Fence {
        epoch: i64,
        reply: oneshot::Sender<Result<SeqNumber, StoreError>>,
    },
}

/// One commit or purge, its statements made ready by the caller, waiting for the writer.
pub(super) struct Entry {
    reply: Reply,
    /// The batch's event seqs, checked against the head when the writer gets to it.
    seqs: SmallVec<[SeqNumber; 4]>,
    /// The statements that write it, or why it cannot be written (an agent id that could not be
    /// read back, a seq beyond a bigint); the seq check comes first, as with SQLite.
    writes: Result<Vec<Write>, StoreError>,
}

enum Reply {
    Commit(oneshot::Sender<Result<(), StoreError>>),
    Purge(oneshot::Sender<Result<usize, StoreError>>),
}

impl Entry {
    pub(super) fn commit(batch: Batch, reply: oneshot::Sender<Result<(), StoreError>>) -> Self {
        Self {
            reply: Reply::Commit(reply),
            seqs: batch.events.iter().map(|e| e.seq).collect(),
            writes: batch_writes(batch),
        }
    }

    pub(super) fn purge(before_ms: i64, reply: oneshot::Sender<Result<usize, StoreError>>) -> Self {
        Self {
            reply: Reply::Purge(reply),
            seqs: SmallVec::new(),
            writes: Ok(vec![Write {
                op: Op::Purge,
                params: vec![Box::new(before_ms)],
            }]),
        }
    }

    /// The head after this entry if it is written on top of `head`, or why it cannot be.
    fn check(&self, head: SeqNumber) -> Result<SeqNumber, StoreError> {
        for (expected, &got) in (head + 1..).zip(&self.seqs) {
            if got != expected {
                return Err(StoreError::SeqOutOfOrder { expected, got });
            }
        }
        match &self.writes {
            Ok(_) => Ok(self.seqs.last().copied().unwrap_or(head)),
            Err(e) => Err(copy_error(e)),
        }
    }

    fn writes(&self) -> &[Write] {
        self.writes.as_deref().unwrap_or(&[])
    }

    /// Answers a written entry; `rows` is what its statements affected (a purge's count).
    fn succeed(self, rows: u64) {
        // A caller that gave up waiting has nobody to tell.
        match self.reply {
            Reply::Commit(reply) => drop(reply.send(Ok(()))),
            Reply::Purge(reply) => {
                drop(reply.send(Ok(usize::try_from(rows).unwrap_or(usize::MAX))))
            }
        }
    }

    fn fail(self, err: StoreError) {
        match self.reply {
            Reply::Commit(reply) => drop(reply.send(Err(err))),
            Reply::Purge(reply) => drop(reply.send(Err(err))),
        }
    }
}

/// `StoreError` is not `Clone` (nor should callers need it to be); the writer repeats one
/// error to several entries.
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Backend(reason) => StoreError::Backend(reason.clone()),
        StoreError::SeqOutOfOrder { expected, got } => StoreError::SeqOutOfOrder {
            expected: *expected,
            got: *got,
        },
        StoreError::Closed => StoreError::Closed,
        StoreError::Open { path, reason } => StoreError::Open {
            path: path.clone(),
            reason: reason.clone(),
        },
        StoreError::Fenced { epoch } => StoreError::Fenced { epoch: *epoch },
    }
}

/// The writer's connection with its statements prepared.
pub(super) struct WriteConn {
    client: Client,
    statements: Vec<Statement>,
}

impl WriteConn {
    /// Sets the writer's session up on `client`: durability, then every statement prepared (at
    /// once, one round trip). The schema must exist: `migrate` runs first.
    pub(super) async fn prepare(client: Client, durability: Durability) -> Result<Self, String> {
        // `on` waits for the commit's WAL to be flushed (and for synchronous standbys, if the
        // server has any); `off` answers before the flush: a commit survives a handoff crash,
        // but the last ones (at most about three times wal_writer_delay) may be lost if
        // PostgreSQL itself or its machine crashes. The database stays consistent either way.
        let synchronous_commit = match durability {
            Durability::Fsync => "on",
            Durability::Os => "off",
        };
        client
            .batch_execute(&format!("SET synchronous_commit = {synchronous_commit}"))
            .await
            .map_err(|e| format!("cannot set synchronous_commit: {}", describe(&e)))?;
        let statements = {
            let prepares = Op::ALL.iter().map(|op| client.prepare(op.sql()));
            let mut out = Vec::with_capacity(Op::ALL.len());
            for (op, prepared) in Op::ALL.iter().zip(join_in_order(prepares).await) {
                out.push(prepared.map_err(|e| {
                    format!("cannot prepare the statement {:?}: {}", op, describe(&e))
                })?);
            }
            out
        };
        Ok(Self { client, statements })
    }

    /// Sends `op` (when first polled) with `params`.
    fn send<'a, P, I>(&'a self, op: Op, params: I) -> OpFuture<'a>
    where
        P: tokio_postgres::types::BorrowToSql + 'a,
        I: IntoIterator<Item = P> + Send + 'a,
        I::IntoIter: ExactSizeIterator + Send,
    {
        Box::pin(
            self.client
                .execute_raw(&self.statements[op as usize], params),
        )
    }

    fn send_write<'a>(&'a self, write: &'a Write) -> OpFuture<'a> {
        self.send(
            write.op,
            write.params.iter().map(|p| &**p as &(dyn ToSql + Sync)),
        )
    }

    fn send_plain(&self, op: Op) -> OpFuture<'_> {
        self.send(op, std::iter::empty::<&(dyn ToSql + Sync)>())
    }

    pub(super) async fn read_head(&self) -> Result<SeqNumber, StoreError> {
        let row = self
            .client
            .query_one(&self.statements[Op::Head as usize], &[])
            .await
            .map_err(|e| StoreError::Backend(format!("reading the log head: {}", describe(&e))))?;
        let head: i64 = row
            .try_get(0)
            .map_err(|e| StoreError::Backend(format!("reading the log head: {}", describe(&e))))?;
        SeqNumber::try_from(head)
            .map_err(|_| StoreError::Backend(format!("the log head is negative: {head}")))
    }
}

/// Owns the only write connection; runs as a tokio task until the store is dropped.
pub(super) struct Writer {
    target: std::sync::Arc<Target>,
    durability: Durability,
    /// `None` after the connection broke: the next request connects again.
    conn: Option<WriteConn>,
    /// The log's head as this writer last knew it: the seq the next batch must continue. Read
    /// from the database whenever the connection is made and when fencing.
    head: SeqNumber,
    /// Set by `fence`: every transaction first checks that the lease is still held under it.
    fence: Option<i64>,
}

/// Why a transaction was not committed, for the batches that did not fail on their own.
enum Abort {
    /// The lease is no longer held under the fence's epoch.
    Fenced(i64),
    /// The transaction or the connection failed; the reason says which and where.
    Broken(String),
}

impl Abort {
    fn error(&self) -> StoreError {
        match self {
            Abort::Fenced(epoch) => StoreError::Fenced { epoch: *epoch },
            Abort::Broken(reason) => StoreError::Backend(reason.clone()),
        }
    }
}

/// How a group ended, for `Writer::write_group` to answer its entries.
struct Outcome {
    /// Committed: each entry with the rows its statements affected.
    committed: Vec<(Entry, u64)>,
    /// Not written, for the reason `abort` gives (entries that failed on their own have been
    /// answered already).
    aborted: Vec<Entry>,
    abort: Option<Abort>,
    /// The head after the group.
    head: SeqNumber,
    /// Whether the connection can be used again: not after it broke, nor after a commit whose
    /// outcome is unknown (the head must then come from the database).
    keep_connection: bool,
}

impl Outcome {
    /// Nothing aborted: `committed` were written (perhaps none), the others answered already.
    fn settled(committed: Vec<(Entry, u64)>, head: SeqNumber) -> Self {
        Self {
            committed,
            aborted: Vec::new(),
            abort: None,
            head,
            keep_connection: true,
        }
    }

    fn aborted(abort: Abort, aborted: Vec<Entry>, head: SeqNumber) -> Self {
        let keep_connection = matches!(abort, Abort::Fenced(_));
        Self {
            committed: Vec::new(),
            aborted,
            abort: Some(abort),
            head,
            keep_connection,
        }
    }
}

/// The SQLSTATE `handoff_check_lease` raises when the lease is not held under the epoch.
const LEASE_LOST: &str = "HF001";

/// What the error of the statement that checks the lease means.
fn fence_failed(epoch: i64, e: &tokio_postgres::Error) -> Abort {
    match e.as_db_error() {
        Some(db) if db.code().code() == LEASE_LOST => Abort::Fenced(epoch),
        _ => Abort::Broken(format!("{}: {}", Op::Fence.what(), describe(e))),
    }
}

impl Writer {
    pub(super) fn new(
        target: std::sync::Arc<Target>,
        durability: Durability,
        conn: WriteConn,
        head: SeqNumber,
    ) -> Self {
        Self {
            target,
            durability,
            conn: Some(conn),
            head,
            fence: None,
        }
    }

    pub(super) async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        // A fence found while gathering a group waits for that group to be written: requests
        // take effect in the order they were queued.
        let mut next: Option<Request> = None;
        loop {
            let first = match next.take() {
                Some(request) => request,
                // `None` once every sender is gone and the queue is drained: that is shutdown.
                None => match requests.recv().await {
                    Some(request) => request,
                    None => break,
                },
            };
            match first {
                Request::Fence { epoch, reply } => {
                    let head = self.set_fence(epoch).await;
                    drop(reply.send(head));
                }
                Request::Write(entry) => {
                    let mut group = Vec::with_capacity(8);
                    group.push(entry);
                    while group.len() < MAX_GROUP {
                        match requests.try_recv() {
                            Ok(Request::Write(entry)) => group.push(entry),
                            Ok(fence) => {
                                next = Some(fence);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.write_group(group).await;
                }
            }
        }
        tracing::debug!(schema = %self.target.schema, "store writer stopped");
    }

    /// The connection, made again (and the head re-read) if the last one broke.
    async fn connection(&mut self) -> Result<WriteConn, StoreError> {
        if let Some(conn) = self.conn.take() {
            if !conn.client.is_closed() {
                return Ok(conn);
            }
            tracing::warn!(
                schema = %self.target.schema,
                "store: the writer's connection to PostgreSQL was lost; connecting again"
            );
        }
        let reconnect = async {
            let client = self.target.connect("writer").await?;
            WriteConn::prepare(client, self.durability).await
        };
        let conn = reconnect.await.map_err(|reason| {
            StoreError::Backend(format!(
                "the writer cannot reach PostgreSQL ({}): {reason}",
                self.target.description
            ))
        })?;
        // Whatever happened while it was gone (a commit whose answer was lost, another node's
        // appends) is in the database, not in memory.
        self.head = conn.read_head().await?;
        Ok(conn)
    }

    async fn set_fence(&mut self, epoch: i64) -> Result<SeqNumber, StoreError> {
        self.fence = Some(epoch);
        let conn = self.connection().await?;
        // The previous writer may have appended up to its last moment (its last fenced commit
        // was committed before our lease was granted): continue after that.
        let head = conn.read_head().await;
        self.conn = Some(conn);
        self.head = head?;
        Ok(self.head)
    }

    /// Writes every entry of `group` in one transaction and answers each.
    async fn write_group(&mut self, group: Vec<Entry>) {
        let started = Instant::now();
        let size = group.len();
        let conn = match self.connection().await {
            Ok(conn) => conn,
            Err(e) => {
                for entry in group {
                    entry.fail(copy_error(&e));
                }
                return;
            }
        };
        let outcome = match <[Entry; 1]>::try_from(group) {
            Ok([entry]) => self.write_alone(&conn, entry).await,
            Err(group) => self.write_grouped(&conn, group).await,
        };

        let mut events = 0;
        for (entry, rows) in outcome.committed {
            events += entry.seqs.len();
            entry.succeed(rows);
        }
        if let Some(abort) = &outcome.abort {
            match abort {
                Abort::Fenced(epoch) => tracing::warn!(
                    epoch,
                    batches = outcome.aborted.len(),
                    "store: this node no longer holds the writer lease; nothing was written"
                ),
                Abort::Broken(reason) => tracing::error!(
                    error = %reason,
                    batches = outcome.aborted.len(),
                    "store: a transaction failed"
                ),
            }
            for entry in outcome.aborted {
                entry.fail(abort.error());
            }
        }
        self.head = outcome.head;
        // Otherwise the next request connects again, and reads the head from the database.
        if outcome.keep_connection {
            self.conn = Some(conn);
        }
        metrics::histogram!("handoff_store_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("handoff_store_group_size").record(size as f64);
        metrics::histogram!("handoff_store_events_per_commit").record(events as f64);
    }

    /// A group of one, the usual case below heavy load: `BEGIN`, the lease check, the batch's
    /// statements and `COMMIT` go out as one pipeline, one round trip. A statement the server
    /// refuses aborts the transaction, and the `COMMIT` behind it then rolls it back; a
    /// statement the driver could not send at all holds the `COMMIT` back (`pipeline_commit`),
    /// and the transaction is rolled back here.
    async fn write_alone(&self, conn: &WriteConn, entry: Entry) -> Outcome {
        let head = self.head;
        let after = match entry.check(head) {
            Ok(after) => after,
            // Refused before it reaches the database.
            Err(refused) => {
                entry.fail(refused);
                return Outcome::settled(Vec::new(), head);
            }
        };
        let fence = self.fence;
        let (results, commit) = {
            let mut ops = Vec::with_capacity(entry.writes().len() + 3);
            ops.push(conn.send_plain(Op::Begin));
            if let Some(epoch) = &fence {
                ops.push(conn.send(Op::Fence, [epoch as &(dyn ToSql + Sync)]));
            }
            for write in entry.writes() {
                ops.push(conn.send_write(write));
            }
            ops.push(conn.send_plain(Op::Commit));
            pipeline_commit(ops).await
        };
        let first_error = results
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.as_ref().err().map(|e| (i, e)));
        let Some((at, e)) = first_error else {
            return match commit {
                Some(Ok(_)) => {
                    // The batch's own statements, after BEGIN and the lease check.
                    let skip = 1 + usize::from(fence.is_some());
                    let rows = results[skip..].iter().flatten().sum();
                    Outcome::settled(vec![(entry, rows)], after)
                }
                Some(Err(e)) => Outcome::aborted(commit_failed(&e), vec![entry], head),
                // Held back only after an error, and there was none.
                None => Outcome::aborted(
                    Abort::Broken("the commit was not sent".into()),
                    vec![entry],
                    head,
                ),
            };
        };
        // Which statement failed: BEGIN, the lease check, or one of the batch's.
        let fenced_at = fence.map(|_| 1);
        let op = match at {
            0 => Op::Begin,
            _ if fenced_at == Some(at) => Op::Fence,
            _ => entry
                .writes()
                .get(at - 1 - usize::from(fence.is_some()))
                .map_or(Op::Commit, |w| w.op),
        };
        let commit_lost = matches!(&commit, Some(Err(c)) if connection_lost(c));
        let mut keep_connection = !connection_lost(e) && !commit_lost;
        if commit.is_none() {
            // The transaction is open and healthy: only this undoes it.
            keep_connection &= finish(conn, Op::Rollback).await.is_ok();
        }
        if e.as_db_error().is_none() && commit.is_some() {
            // The server may have run the statement whose answer was lost, and the COMMIT
            // after it: nothing tells whether the batch was written.
            let reason = format!(
                "{}: {}; whether the batch was written is unknown",
                op.what(),
                describe(e)
            );
            return Outcome::aborted(Abort::Broken(reason), vec![entry], head);
        }
        let mut outcome = match (op, fence) {
            (Op::Fence, Some(epoch)) => Outcome::aborted(fence_failed(epoch, e), vec![entry], head),
            (Op::Begin, _) => Outcome::aborted(
                Abort::Broken(format!("{}: {}", op.what(), describe(e))),
                vec![entry],
                head,
            ),
            _ => {
                let message = format!("{}: {}", op.what(), describe(e));
                tracing::warn!(error = %message, "store: a batch failed and was rolled back");
                entry.fail(StoreError::Backend(message));
                Outcome::settled(Vec::new(), head)
            }
        };
        outcome.keep_connection = keep_connection;
        outcome
    }

    /// Several batches in one transaction.
    ///
    /// The statements of the whole group go out as one pipeline, each batch between
    /// `SAVEPOINT` and `RELEASE`, then `COMMIT`: two round trips whatever the group's size. When
    /// a batch fails in the database, everything after it in the pipeline fails too (the
    /// transaction is aborted until the savepoint is rolled back): the failed batch is rolled
    /// back alone, and the batches after it go out again, their seqs checked against the head
    /// without it.
    async fn write_grouped(&self, conn: &WriteConn, group: Vec<Entry>) -> Outcome {
        let fence = self.fence;
        let mut pending: VecDeque<Entry> = group.into();
        let mut written: Vec<(Entry, u64)> = Vec::with_capacity(pending.len());
        let mut head = self.head;
        let mut began = false;

        let aborted = loop {
            // Each entry's seqs are checked against the head that the ones before it in this
            // round would leave. That is only right if they all land: the outcomes decided here
            // stand up to the first entry that fails in the database, and everything after it
            // is checked again in the next round.
            let mut round: Vec<(Entry, Option<StoreError>)> = Vec::with_capacity(pending.len());
            let mut expected_head = head;
            for entry in pending.drain(..) {
                match entry.check(expected_head) {
                    Ok(after) => {
                        expected_head = after;
                        round.push((entry, None));
                    }
                    Err(refused) => round.push((entry, Some(refused))),
                }
            }
            if round.iter().all(|(_, refused)| refused.is_some()) {
                // Nothing to send, and every refusal stands: nothing before it failed.
                for (entry, refused) in round {
                    if let Some(e) = refused {
                        entry.fail(e);
                    }
                }
                break None;
            }

            let (results, spans) = {
                let mut ops: Vec<OpFuture<'_>> = Vec::new();
                if !began {
                    ops.push(conn.send_plain(Op::Begin));
                    if let Some(epoch) = &fence {
                        ops.push(conn.send(Op::Fence, [epoch as &(dyn ToSql + Sync)]));
                    }
                }
                let mut spans = Vec::with_capacity(round.len());
                for (entry, refused) in &round {
                    let start = ops.len();
                    if refused.is_none() {
                        ops.push(conn.send_plain(Op::Savepoint));
                        for write in entry.writes() {
                            ops.push(conn.send_write(write));
                        }
                        ops.push(conn.send_plain(Op::Release));
                    }
                    spans.push(start..ops.len());
                }
                (pipeline(ops).await, spans)
            };

            if !began {
                began = true;
                let start_failed = match (&results[0], fence) {
                    (Err(e), _) => Some(Abort::Broken(format!(
                        "{}: {}",
                        Op::Begin.what(),
                        describe(e)
                    ))),
                    (Ok(_), Some(epoch)) => {
                        results[1].as_ref().err().map(|e| fence_failed(epoch, e))
                    }
                    (Ok(_), None) => None,
                };
                if let Some(abort) = start_failed {
                    pending.extend(round.into_iter().map(|(entry, _)| entry));
                    break Some(abort);
                }
            }

            let mut round = round.into_iter().zip(spans);
            let mut failure = None;
            for ((entry, refused), span) in round.by_ref() {
                if let Some(e) = refused {
                    entry.fail(e);
                    continue;
                }
                let first_error = span
                    .clone()
                    .find_map(|i| results[i].as_ref().err().map(|e| (i - span.start, e)));
                match first_error {
                    None => {
                        // Savepoint commands count no rows: the sum is the entry's statements'.
                        let rows = span.map(|i| results[i].as_ref().map_or(0, |n| *n)).sum();
                        head = entry.check(head).unwrap_or(head);
                        written.push((entry, rows));
                    }
                    Some((offset, e)) => {
                        let op = match offset {
                            0 => Op::Savepoint,
                            _ => entry.writes().get(offset - 1).map_or(Op::Release, |w| w.op),
                        };
                        let message = format!("{}: {}", op.what(), describe(e));
                        failure = Some((entry, connection_lost(e), message));
                        break;
                    }
                }
            }
            let Some((entry, lost, message)) = failure else {
                // Everything in this round landed: the group is written.
                break None;
            };
            // What came after the failed batch was not run (the transaction was aborted).
            pending.extend(round.map(|((entry, _), _)| entry));
            entry.fail(StoreError::Backend(message.clone()));
            if lost {
                break Some(Abort::Broken(message));
            }
            tracing::warn!(error = %message, "store: a batch failed and was rolled back");
            let undo = pipeline(vec![
                conn.send_plain(Op::RollbackTo),
                conn.send_plain(Op::Release),
            ])
            .await;
            if let Some(e) = undo.iter().find_map(|r| r.as_ref().err()) {
                break Some(Abort::Broken(format!(
                    "rolling back a failed batch ({message}) failed: {}",
                    describe(e)
                )));
            }
        };

        match aborted {
            None if !began => Outcome::settled(Vec::new(), head),
            // Only failures: nothing to make durable.
            None if written.is_empty() => match finish(conn, Op::Rollback).await {
                Ok(()) => Outcome::settled(Vec::new(), self.head),
                Err(abort) => Outcome::aborted(abort, Vec::new(), self.head),
            },
            None => match finish(conn, Op::Commit).await {
                Ok(()) => Outcome::settled(written, head),
                Err(abort) => {
                    let entries = written.into_iter().map(|(entry, _)| entry).collect();
                    Outcome::aborted(abort, entries, self.head)
                }
            },
            Some(abort) => {
                // Best effort: on a lost connection the server rolls back by itself.
                let _ = finish(conn, Op::Rollback).await;
                let mut entries: Vec<Entry> = written.into_iter().map(|(entry, _)| entry).collect();
                entries.extend(pending);
                Outcome::aborted(abort, entries, self.head)
            }
        }
    }
}

/// What a failed `COMMIT` means.
fn commit_failed(e: &tokio_postgres::Error) -> Abort {
    if connection_lost(e) {
        Abort::Broken(format!(
            "{}: {}; whether the transaction was committed is unknown",
            Op::Commit.what(),
            describe(e)
        ))
    } else {
        Abort::Broken(format!("{}: {}", Op::Commit.what(), describe(e)))
    }
}

/// Ends the transaction with `op` (`COMMIT` or `ROLLBACK`).
async fn finish(conn: &WriteConn, op: Op) -> Result<(), Abort> {
    match conn.send_plain(op).await {
        Ok(_) => Ok(()),
        Err(e) if op == Op::Commit => Err(commit_failed(&e)),
        Err(e) => Err(Abort::Broken(format!("{}: {}", op.what(), describe(&e)))),
    }
}
