//! The tables of a PostgreSQL store and their migration.

use tokio_postgres::Client;

use super::connect::{describe, quote_ident};

/// The schema version this build writes, kept in `handoff_schema`. A schema with a higher
/// version was written by a newer build and is refused rather than misread.
pub(super) const SCHEMA_VERSION: i32 = 2;

/// First key of the advisory lock taken while migrating ("hand" in ASCII); the second is the
/// hash of the schema's name, so that stores in different schemas do not wait for each other.
const MIGRATION_LOCK_CLASS: i32 = 0x6861_6e64;

/// The whole schema at `SCHEMA_VERSION`, for a new store. Text keys are `COLLATE "C"`: byte
/// order, as SQLite's keys sort, whatever the database's locale, and cheaper to compare.
const SCHEMA: &str = r#"
-- One row: the version of this schema.
CREATE TABLE handoff_schema (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    version INTEGER NOT NULL
);

-- The log. `agents`: the event's agents in the order given, each once; kept in the row so that
-- reading an event needs no second table.
CREATE TABLE events (
    seq BIGINT PRIMARY KEY,
    type TEXT NOT NULL,
    subject TEXT COLLATE "C" NOT NULL,
    time_ms BIGINT NOT NULL,
    agents TEXT[] NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX events_subject_seq ON events (subject, seq);

-- An agent's events, for resuming its stream.
CREATE TABLE event_agents (
    agent_id TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (agent_id, seq)
);

CREATE TABLE acks (
    agent_id TEXT COLLATE "C" PRIMARY KEY,
    seq BIGINT NOT NULL
);

CREATE TABLE idempotency (
    key_id TEXT COLLATE "C" NOT NULL,
    idempotency_key TEXT COLLATE "C" NOT NULL,
    body_sha256 BYTEA NOT NULL,
    interaction_id TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (key_id, idempotency_key)
);
CREATE INDEX idempotency_created_ms ON idempotency (created_ms);

CREATE TABLE keys (
    id TEXT COLLATE "C" PRIMARY KEY,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    agent_id TEXT,
    token_sha256 BYTEA NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL
);

CREATE TABLE integrations (
    kind TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    config TEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (kind, name)
);

CREATE TABLE outbox_cursors (
    destination TEXT COLLATE "C" PRIMARY KEY,
    seq BIGINT NOT NULL
);

-- `attempts` is BIGINT (and `status` INTEGER) to hold every u32 (u16) the store is given.
CREATE TABLE outbox_retries (
    destination TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    next_ms BIGINT NOT NULL,
    PRIMARY KEY (destination, seq)
);

-- Appended in order (one writer draws the ids); read newest first per destination, trimmed to
-- the newest few.
CREATE TABLE delivery_attempts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    status INTEGER,
    outcome TEXT NOT NULL,
    detail TEXT,
    next_ms BIGINT
);
CREATE INDEX delivery_attempts_destination_id ON delivery_attempts (destination, id);

-- Which node may commit (row `writer`), until when by PostgreSQL's clock, and under which
-- epoch: every takeover by another holder raises it, and a fenced commit checks it.
CREATE TABLE writer_lease (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    address TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

-- A fenced commit's first statement: locks the lease row FOR SHARE until the transaction ends
-- (so that a takeover, which updates the row, waits for this commit and then sees it), and
-- raises HF001 unless the lease is held under the epoch and not expired by PostgreSQL's clock.
-- An error rather than an empty answer: it aborts the transaction, so that the COMMIT sent
-- behind it in the same pipeline rolls back instead of committing.
CREATE FUNCTION handoff_check_lease(fence_epoch BIGINT) RETURNS VOID
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM writer_lease
    WHERE name = 'writer' AND epoch = fence_epoch AND expires_at > clock_timestamp()
    FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'this node no longer holds the writer lease (epoch %)', fence_epoch
            USING ERRCODE = 'HF001';
    END IF;
END
$$;

INSERT INTO handoff_schema (version) VALUES (2);
"#;

/// From version 1, which was `SCHEMA` and `offer_deadlines` (a row per open offer): that table
/// goes. Nothing read it: an offer's deadline is in its `interaction.offered` event, which
/// recovery replays.
const MIGRATE_1_TO_2: &str = "
DROP TABLE IF EXISTS offer_deadlines;
UPDATE handoff_schema SET version = 2;
";

/// Creates the schema (and the PostgreSQL schema around it) when missing, brings an older one
/// up to date and refuses one written by a newer build, in one transaction under an advisory
/// lock, so that processes opening the same store at once do not both create or migrate it.
/// `client`'s search_path is the schema.
pub(super) async fn migrate(client: &Client, schema: &str) -> Result<(), String> {
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|e| format!("cannot begin the schema check: {}", describe(&e)))?;
    let outcome = migrate_in_transaction(client, schema).await;
    let end = if outcome.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    let ended = client.batch_execute(end).await;
    outcome?;
    ended.map_err(|e| format!("cannot commit the schema: {}", describe(&e)))
}

async fn migrate_in_transaction(client: &Client, schema: &str) -> Result<(), String> {
    client
        .execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&MIGRATION_LOCK_CLASS, &schema],
        )
        .await
        .map_err(|e| format!("cannot take the migration lock: {}", describe(&e)))?;
    // Looked up rather than `CREATE SCHEMA IF NOT EXISTS`, which wants the right to create
    // schemas even when this one exists: a role that may only use its schema can still open.
    let exists = client
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .map_err(|e| format!("cannot look the schema up: {}", describe(&e)))?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!("CREATE SCHEMA {}", quote_ident(schema)))
            .await
            .map_err(|e| format!("cannot create the schema: {}", describe(&e)))?;
    }
    let version: i32 = match client
        .query_opt(
            "SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'handoff_schema'",
            &[&schema],
        )
        .await
        .map_err(|e| format!("cannot look for the schema version: {}", describe(&e)))?
    {
        None => 0,
        Some(_) => client
            .query_one("SELECT version FROM handoff_schema", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| format!("cannot read the schema version: {}", describe(&e)))?,
    };
    match version {
        0 => {
            tracing::info!(schema, "store: creating the PostgreSQL schema");
            client
                .batch_execute(SCHEMA)
                .await
                .map_err(|e| format!("cannot create the tables: {}", describe(&e)))
        }
        1 => {
            // A writer of a build from before version 2 writes `offer_deadlines` with every
            // offer: dropped under it, each of its commits would fail. It can only be running
            // while it holds the lease, and none of this build holds it yet (this build's first
            // open migrates), so a live lease means: stop that build first.
            let holder: Option<String> = client
                .query_opt(
                    "SELECT holder FROM writer_lease
                     WHERE name = 'writer' AND expires_at > clock_timestamp()",
                    &[],
                )
                .await
                .map_err(|e| format!("cannot read the writer lease: {}", describe(&e)))?
                .map(|row| row.get(0));
            if let Some(holder) = holder {
                return Err(format!(
                    "its schema is at version 1 and {holder}, a node of an older build, holds \
                     the writer lease: stop the nodes of the older build, then start this one \
                     (it moves the schema to version 2, which they cannot write; \
                     docs/deployment.md, upgrades)"
                ));
            }
            tracing::info!(
                schema,
                "store: moving the PostgreSQL schema from version 1 to 2"
            );
            client.batch_execute(MIGRATE_1_TO_2).await.map_err(|e| {
                format!(
                    "cannot move the schema from version 1 to 2: {}",
                    describe(&e)
                )
            })
        }
        SCHEMA_VERSION => Ok(()),
        other => Err(format!(
            "its schema version is {other}, this build understands version {SCHEMA_VERSION}"
        )),
    }
}
