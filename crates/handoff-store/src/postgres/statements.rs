//! The statements the writer runs, and a batch turned into them: one statement per field of
//! the batch, its rows passed as arrays.

use smallvec::SmallVec;
use tokio_postgres::types::ToSql;

use crate::{Batch, SeqNumber, StoreError, StoredEvent};

/// Between an event's agents on their way into the database (`string_to_array`). Agent ids
/// never hold it (the API's ids are `[A-Za-z0-9._-]`), and the store refuses one that does, as
/// the SQLite store does.
const AGENT_SEPARATOR: char = '\n';

/// A statement parameter, boxed so that an entry carries its columns to the writer.
pub(super) type Param = Box<dyn ToSql + Sync + Send>;

/// One statement of an entry with its parameters, owned until it is sent.
pub(super) struct Write {
    pub(super) op: Op,
    pub(super) params: Vec<Param>,
}

/// Every statement the writer runs, prepared once per connection (`Op::ALL` order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Begin,
    Commit,
    Rollback,
    Savepoint,
    Release,
    RollbackTo,
    Fence,
    Head,
    Events,
    Acks,
    Idempotency,
    KeysAdded,
    KeysRevoked,
    AcksDeleted,
    IntegrationsPut,
    IntegrationsDeleted,
    OutboxCursors,
    OutboxRetriesSet,
    OutboxRetriesCleared,
    DeliveryAttempts,
    OutboxDeleted,
    DeliveryAttemptsTrimmed,
    Purge,
}

impl Op {
    pub(super) const ALL: [Op; 23] = [
        Op::Begin,
        Op::Commit,
        Op::Rollback,
        Op::Savepoint,
        Op::Release,
        Op::RollbackTo,
        Op::Fence,
        Op::Head,
        Op::Events,
        Op::Acks,
        Op::Idempotency,
        Op::KeysAdded,
        Op::KeysRevoked,
        Op::AcksDeleted,
        Op::IntegrationsPut,
        Op::IntegrationsDeleted,
        Op::OutboxCursors,
        Op::OutboxRetriesSet,
        Op::OutboxRetriesCleared,
        Op::DeliveryAttempts,
        Op::OutboxDeleted,
        Op::DeliveryAttemptsTrimmed,
        Op::Purge,
    ];

    /// Each writes all the rows of one field of a batch at once, from arrays (`unnest`), so a
    /// batch costs one statement per field it uses whatever its size. Where a field may name
    /// one key twice, the last one wins (`DISTINCT ON` by position), as rows written one by one
    /// would: `ON CONFLICT` refuses to touch one row twice in a statement.
    pub(super) fn sql(self) -> &'static str {
        match self {
            Op::Begin => "BEGIN",
            Op::Commit => "COMMIT",
            Op::Rollback => "ROLLBACK",
            Op::Savepoint => "SAVEPOINT batch",
            Op::Release => "RELEASE SAVEPOINT batch",
            Op::RollbackTo => "ROLLBACK TO SAVEPOINT batch",
            // Raises `LEASE_LOST` unless the lease is held under the epoch, which aborts the
            // transaction: the COMMIT pipelined behind it then rolls back (schema.rs).
            Op::Fence => "SELECT handoff_check_lease($1)",
            Op::Head => "SELECT COALESCE(max(seq), 0)::bigint FROM events",
            Op::Events => {
                "WITH e AS (
                     INSERT INTO events (seq, type, subject, time_ms, agents, payload)
                     SELECT u.seq, u.type, u.subject, u.time_ms,
                            string_to_array(u.agents, E'\\n'), u.payload
                     FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[],
                                 $6::text[]) AS u(seq, type, subject, time_ms, agents, payload)
                     RETURNING seq, agents
                 )
                 INSERT INTO event_agents (agent_id, seq) SELECT unnest(e.agents), e.seq FROM e"
            }
            // Grouped first: within one batch the largest ack wins too.
            Op::Acks => {
                "INSERT INTO acks (agent_id, seq)
                 SELECT u.agent_id, max(u.seq) FROM unnest($1::text[], $2::bigint[])
                     AS u(agent_id, seq) GROUP BY u.agent_id
                 ON CONFLICT (agent_id) DO UPDATE SET seq = GREATEST(acks.seq, excluded.seq)"
            }
            // An older record under the same key has expired (see `Batch::idempotency`).
            Op::Idempotency => {
                "INSERT INTO idempotency
                     (key_id, idempotency_key, body_sha256, interaction_id, created_ms)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[],
                                      $5::bigint[])
                 ON CONFLICT (key_id, idempotency_key) DO UPDATE SET
                     body_sha256 = excluded.body_sha256,
                     interaction_id = excluded.interaction_id,
                     created_ms = excluded.created_ms"
            }
            Op::KeysAdded => {
                "INSERT INTO keys (id, role, name, agent_id, token_sha256, created_ms)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                      $5::bytea[], $6::bigint[])"
            }
            Op::KeysRevoked => "DELETE FROM keys WHERE id = ANY($1::text[])",
            Op::AcksDeleted => "DELETE FROM acks WHERE agent_id = ANY($1::text[])",
            Op::IntegrationsPut => {
                "INSERT INTO integrations (kind, name, config, updated_ms)
                 SELECT DISTINCT ON (u.kind, u.name) u.kind, u.name, u.config, u.updated_ms
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) WITH ORDINALITY
                     AS u(kind, name, config, updated_ms, n)
                 ORDER BY u.kind, u.name, u.n DESC
                 ON CONFLICT (kind, name) DO UPDATE
                     SET config = excluded.config, updated_ms = excluded.updated_ms"
            }
            Op::IntegrationsDeleted => {
                "DELETE FROM integrations i USING unnest($1::text[], $2::text[]) AS d(kind, name)
                 WHERE i.kind = d.kind AND i.name = d.name"
            }
            Op::OutboxCursors => {
                "INSERT INTO outbox_cursors (destination, seq)
                 SELECT DISTINCT ON (u.destination) u.destination, u.seq
                 FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS u(destination, seq, n)
                 ORDER BY u.destination, u.n DESC
                 ON CONFLICT (destination) DO UPDATE SET seq = excluded.seq"
            }
            Op::OutboxRetriesSet => {
                "INSERT INTO outbox_retries (destination, seq, attempts, next_ms)
                 SELECT DISTINCT ON (u.destination, u.seq)
                        u.destination, u.seq, u.attempts, u.next_ms
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) WITH ORDINALITY
                     AS u(destination, seq, attempts, next_ms, n)
                 ORDER BY u.destination, u.seq, u.n DESC
                 ON CONFLICT (destination, seq) DO UPDATE
                     SET attempts = excluded.attempts, next_ms = excluded.next_ms"
            }
            Op::OutboxRetriesCleared => {
                "DELETE FROM outbox_retries r
                 USING unnest($1::text[], $2::bigint[]) AS d(destination, seq)
                 WHERE r.destination = d.destination AND r.seq = d.seq"
            }
            // In the batch's order, so that the ids drawn increase in it.
            Op::DeliveryAttempts => {
                "INSERT INTO delivery_attempts
                     (destination, seq, attempt, at_ms, duration_ms, status, outcome, detail,
                      next_ms)
                 SELECT u.destination, u.seq, u.attempt, u.at_ms, u.duration_ms, u.status,
                        u.outcome, u.detail, u.next_ms
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                             $6::integer[], $7::text[], $8::text[], $9::bigint[]) WITH ORDINALITY
                     AS u(destination, seq, attempt, at_ms, duration_ms, status, outcome, detail,
                          next_ms, n)
                 ORDER BY u.n"
            }
            Op::OutboxDeleted => {
                "WITH c AS (DELETE FROM outbox_cursors WHERE destination = ANY($1::text[])),
                      r AS (DELETE FROM outbox_retries WHERE destination = ANY($1::text[]))
                 DELETE FROM delivery_attempts WHERE destination = ANY($1::text[])"
            }
            // Per destination, everything at or below the id of its `kept`+1-th newest attempt.
            // Two trims of one destination in a batch end as the smaller, as one after the
            // other would.
            Op::DeliveryAttemptsTrimmed => {
                "DELETE FROM delivery_attempts d
                 USING (
                     SELECT t.destination,
                            (SELECT a.id FROM delivery_attempts a
                             WHERE a.destination = t.destination
                             ORDER BY a.id DESC OFFSET t.kept LIMIT 1) AS cut
                     FROM unnest($1::text[], $2::bigint[]) AS t(destination, kept)
                 ) c
                 WHERE d.destination = c.destination AND d.id <= c.cut"
            }
            Op::Purge => "DELETE FROM idempotency WHERE created_ms < $1",
        }
    }

    /// What the statement does, for errors.
    pub(super) fn what(self) -> &'static str {
        match self {
            Op::Begin => "beginning a transaction",
            Op::Commit => "committing",
            Op::Rollback => "rolling back",
            Op::Savepoint => "opening a savepoint",
            Op::Release => "releasing a savepoint",
            Op::RollbackTo => "rolling back a savepoint",
            Op::Fence => "checking the writer lease",
            Op::Head => "reading the log head",
            Op::Events => "writing the events",
            Op::Acks => "writing the acks",
            Op::Idempotency => "writing the idempotency records",
            Op::KeysAdded => "adding keys",
            Op::KeysRevoked => "revoking keys",
            Op::AcksDeleted => "deleting acks",
            Op::IntegrationsPut => "writing integrations",
            Op::IntegrationsDeleted => "deleting integrations",
            Op::OutboxCursors => "writing outbox cursors",
            Op::OutboxRetriesSet => "writing outbox retries",
            Op::OutboxRetriesCleared => "clearing outbox retries",
            Op::DeliveryAttempts => "recording delivery attempts",
            Op::OutboxDeleted => "deleting outboxes",
            Op::DeliveryAttemptsTrimmed => "trimming delivery attempts",
            Op::Purge => "purging idempotency records",
        }
    }
}

/// The statements that write `batch`, one per field it uses, in the order of `Batch`'s fields
/// (so within one batch an agent both acked and deleted ends with no cursor), each with its
/// columns as arrays.
pub(super) fn batch_writes(batch: Batch) -> Result<Vec<Write>, StoreError> {
    let mut writes = Vec::new();
    let mut add = |op: Op, params: Vec<Param>| writes.push(Write { op, params });

    if !batch.events.is_empty() {
        let n = batch.events.len();
        let (mut seqs, mut types, mut subjects, mut times, mut agents, mut payloads) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for e in batch.events {
            seqs.push(seq_value(e.seq)?);
            agents.push(joined_agents(&e)?);
            types.push(e.event_type);
            subjects.push(e.subject);
            times.push(e.time_ms);
            payloads.push(e.payload);
        }
        add(
            Op::Events,
            vec![
                Box::new(seqs),
                Box::new(types),
                Box::new(subjects),
                Box::new(times),
                Box::new(agents),
                Box::new(payloads),
            ],
        );
    }

    if !batch.acks.is_empty() {
        let mut seqs = Vec::with_capacity(batch.acks.len());
        let mut agents = Vec::with_capacity(batch.acks.len());
        for (agent_id, seq) in batch.acks {
            seqs.push(seq_value(seq)?);
            agents.push(agent_id);
        }
        add(Op::Acks, vec![Box::new(agents), Box::new(seqs)]);
    }

    if !batch.idempotency.is_empty() {
        let records = batch.idempotency;
        let body: Vec<Vec<u8>> = records.iter().map(|r| r.body_sha256.to_vec()).collect();
        let created: Vec<i64> = records.iter().map(|r| r.created_ms).collect();
        let (mut key_ids, mut keys, mut interactions) = (Vec::new(), Vec::new(), Vec::new());
        for r in records {
            key_ids.push(r.key_id);
            keys.push(r.idempotency_key);
            interactions.push(r.interaction_id);
        }
        add(
            Op::Idempotency,
            vec![
                Box::new(key_ids),
                Box::new(keys),
                Box::new(body),
                Box::new(interactions),
                Box::new(created),
            ],
        );
    }

    if !batch.keys_added.is_empty() {
        let keys = batch.keys_added;
        let tokens: Vec<Vec<u8>> = keys.iter().map(|k| k.token_sha256.to_vec()).collect();
        let created: Vec<i64> = keys.iter().map(|k| k.created_ms).collect();
        let (mut ids, mut roles, mut names, mut agents) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for k in keys {
            ids.push(k.id);
            roles.push(k.role);
            names.push(k.name);
            agents.push(k.agent_id);
        }
        add(
            Op::KeysAdded,
            vec![
                Box::new(ids),
                Box::new(roles),
                Box::new(names),
                Box::new(agents),
                Box::new(tokens),
                Box::new(created),
            ],
        );
    }

    if !batch.keys_revoked.is_empty() {
        add(Op::KeysRevoked, vec![Box::new(batch.keys_revoked)]);
    }

    if !batch.acks_deleted.is_empty() {
        add(Op::AcksDeleted, vec![Box::new(batch.acks_deleted)]);
    }

    if !batch.integrations_put.is_empty() {
        let updated: Vec<i64> = batch
            .integrations_put
            .iter()
            .map(|r| r.updated_ms)
            .collect();
        let (mut kinds, mut names, mut configs) = (Vec::new(), Vec::new(), Vec::new());
        for r in batch.integrations_put {
            kinds.push(r.kind);
            names.push(r.name);
            configs.push(r.config);
        }
        add(
            Op::IntegrationsPut,
            vec![
                Box::new(kinds),
                Box::new(names),
                Box::new(configs),
                Box::new(updated),
            ],
        );
    }

    if !batch.integrations_deleted.is_empty() {
        let (kinds, names): (Vec<String>, Vec<String>) =
            batch.integrations_deleted.into_iter().unzip();
        add(
            Op::IntegrationsDeleted,
            vec![Box::new(kinds), Box::new(names)],
        );
    }

    if !batch.outbox_cursors.is_empty() {
        let (destinations, seqs) = destinations_and_seqs(batch.outbox_cursors)?;
        add(
            Op::OutboxCursors,
            vec![Box::new(destinations), Box::new(seqs)],
        );
    }

    if !batch.outbox_retries_set.is_empty() {
        let n = batch.outbox_retries_set.len();
        let (mut destinations, mut seqs, mut attempts, mut next) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for r in batch.outbox_retries_set {
            seqs.push(seq_value(r.seq)?);
            attempts.push(i64::from(r.attempts));
            next.push(r.next_ms);
            destinations.push(r.destination);
        }
        add(
            Op::OutboxRetriesSet,
            vec![
                Box::new(destinations),
                Box::new(seqs),
                Box::new(attempts),
                Box::new(next),
            ],
        );
    }

    if !batch.outbox_retries_cleared.is_empty() {
        let (destinations, seqs) = destinations_and_seqs(batch.outbox_retries_cleared)?;
        add(
            Op::OutboxRetriesCleared,
            vec![Box::new(destinations), Box::new(seqs)],
        );
    }

    if !batch.delivery_attempts.is_empty() {
        let n = batch.delivery_attempts.len();
        let mut destinations = Vec::with_capacity(n);
        let mut seqs = Vec::with_capacity(n);
        let mut attempt = Vec::with_capacity(n);
        let mut at = Vec::with_capacity(n);
        let mut duration = Vec::with_capacity(n);
        let mut status = Vec::with_capacity(n);
        let mut outcome = Vec::with_capacity(n);
        let mut detail = Vec::with_capacity(n);
        let mut next = Vec::with_capacity(n);
        for a in batch.delivery_attempts {
            seqs.push(seq_value(a.seq)?);
            attempt.push(i64::from(a.attempt));
            at.push(a.at_ms);
            duration.push(a.duration_ms);
            status.push(a.status.map(i32::from));
            next.push(a.next_ms);
            destinations.push(a.destination);
            outcome.push(a.outcome);
            detail.push(a.detail);
        }
        add(
            Op::DeliveryAttempts,
            vec![
                Box::new(destinations),
                Box::new(seqs),
                Box::new(attempt),
                Box::new(at),
                Box::new(duration),
                Box::new(status),
                Box::new(outcome),
                Box::new(detail),
                Box::new(next),
            ],
        );
    }

    if !batch.outbox_deleted.is_empty() {
        add(Op::OutboxDeleted, vec![Box::new(batch.outbox_deleted)]);
    }

    if !batch.delivery_attempts_trimmed.is_empty() {
        let (destinations, kept): (Vec<String>, Vec<i64>) = batch
            .delivery_attempts_trimmed
            .into_iter()
            // Keeping more than a bigint counts keeps everything, as keeping i64::MAX does.
            .map(|(destination, kept)| (destination, i64::try_from(kept).unwrap_or(i64::MAX)))
            .unzip();
        add(
            Op::DeliveryAttemptsTrimmed,
            vec![Box::new(destinations), Box::new(kept)],
        );
    }

    Ok(writes)
}

fn destinations_and_seqs(
    pairs: Vec<(String, SeqNumber)>,
) -> Result<(Vec<String>, Vec<i64>), StoreError> {
    let mut destinations = Vec::with_capacity(pairs.len());
    let mut seqs = Vec::with_capacity(pairs.len());
    for (destination, seq) in pairs {
        seqs.push(seq_value(seq)?);
        destinations.push(destination);
    }
    Ok((destinations, seqs))
}

/// The event's agents in the order given, an agent listed twice kept at its first place, one
/// per line. Refuses an id that could not be read back: empty, or holding the separator.
fn joined_agents(event: &StoredEvent) -> Result<String, StoreError> {
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
    let mut joined = String::with_capacity(each_once.iter().map(|a| a.len() + 1).sum());
    for (i, agent_id) in each_once.iter().enumerate() {
        if i > 0 {
            joined.push(AGENT_SEPARATOR);
        }
        joined.push_str(agent_id);
    }
    Ok(joined)
}

/// A seq to be written: a bigint is signed, and a seq past `i64::MAX` cannot be stored.
fn seq_value(seq: SeqNumber) -> Result<i64, StoreError> {
    i64::try_from(seq)
        .map_err(|_| StoreError::Backend(format!("seq {seq} does not fit in a PostgreSQL bigint")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_listed_in_their_order() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "{op:?} is out of place in Op::ALL");
        }
    }

    #[test]
    fn agents_are_joined_once_each_in_order() {
        let event = StoredEvent {
            seq: 1,
            event_type: "t".into(),
            subject: "s".into(),
            time_ms: 0,
            agents: vec!["b".into(), "a".into(), "b".into()],
            payload: String::new(),
        };
        assert_eq!(joined_agents(&event).unwrap(), "b\na");
    }
}
