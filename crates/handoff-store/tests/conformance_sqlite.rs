//! Runs the conformance suite against `SqliteStore`, and checks what is particular to SQLite:
//! how it opens, refuses and closes its data directory, and how it migrates an older database.

mod conformance;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use conformance::Harness;
use handoff_store::{
    Batch, Durability, KeyRecord, SqliteStore, Store, StoreEngine, StoreError, StoredEvent,
    FSYNC_WAL_AUTOCHECKPOINT_PAGES,
};

/// Opens each fresh store in its own directory under one temporary root.
struct SqliteHarness {
    root: tempfile::TempDir,
    durability: Durability,
    next: AtomicUsize,
    /// Data directory of each open store, by the address of its `Arc`: `reopen` gets only the
    /// handle, and `dyn Store` cannot say where it lives.
    dirs: Mutex<HashMap<usize, PathBuf>>,
}

impl SqliteHarness {
    fn new(durability: Durability) -> Self {
        Self {
            root: tempfile::tempdir().expect("temporary directory"),
            durability,
            next: AtomicUsize::new(0),
            dirs: Mutex::new(HashMap::new()),
        }
    }

    fn open(&self, dir: PathBuf) -> Arc<dyn Store> {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir, self.durability).expect("opening the store"));
        self.dirs.lock().unwrap().insert(address(&store), dir);
        store
    }
}

fn address(store: &Arc<dyn Store>) -> usize {
    Arc::as_ptr(store) as *const () as usize
}

#[async_trait::async_trait]
impl Harness for SqliteHarness {
    async fn fresh(&self) -> Arc<dyn Store> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.open(self.root.path().join(format!("store-{n}")))
    }

    async fn reopen(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        let dir = self
            .dirs
            .lock()
            .unwrap()
            .remove(&address(&store))
            .expect("reopen of a store this harness did not open");
        // A second handle would keep the old writer running beside the new one, and the test
        // would no longer show that a restarted process finds everything.
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "reopen needs the only handle to the store"
        );
        drop(store);
        self.open(dir)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_fsync_passes_conformance() {
    conformance::run_all(&SqliteHarness::new(Durability::Fsync)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_os_passes_conformance() {
    conformance::run_all(&SqliteHarness::new(Durability::Os)).await;
}

#[tokio::test]
async fn open_on_a_regular_file_is_an_open_error() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();

    match SqliteStore::open(&file, Durability::Fsync) {
        Err(StoreError::Open { path, reason }) => {
            assert_eq!(
                path,
                file.display().to_string(),
                "the error names the data directory"
            );
            assert!(
                reason.contains("not a directory"),
                "unclear reason: {reason}"
            );
        }
        other => panic!("expected StoreError::Open, got {other:?}"),
    }
    // The same through the engine-level entry point, which is what the service calls.
    let engine = StoreEngine::Sqlite {
        data_dir: file.clone(),
        durability: Durability::Fsync,
    };
    match handoff_store::open(engine).await {
        Err(StoreError::Open { .. }) => {}
        Err(other) => panic!("expected StoreError::Open, got {other:?}"),
        Ok(_) => panic!("opened a store on a regular file"),
    }
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"x",
        "the file is left alone"
    );
}

#[test]
fn open_under_a_regular_file_is_an_open_error() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = SqliteStore::open(&file.join("data"), Durability::Fsync).unwrap_err();
    assert!(
        matches!(err, StoreError::Open { .. }),
        "expected StoreError::Open, got {err:?}"
    );
}

#[test]
fn open_on_a_file_that_is_not_a_database_is_an_open_error() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("handoff.db"), vec![b'x'; 8192]).unwrap();
    let err = SqliteStore::open(root.path(), Durability::Fsync).unwrap_err();
    match err {
        StoreError::Open { path, .. } => assert!(path.ends_with("handoff.db"), "names {path}"),
        other => panic!("expected StoreError::Open, got {other:?}"),
    }
}

#[cfg(unix)]
#[test]
fn created_data_dir_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("nested").join("data");
    let store = SqliteStore::open(&dir, Durability::Fsync).expect("open");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "data dir mode is {mode:o}");
    assert_eq!(store.db_path(), dir.join("handoff.db"));
}

#[test]
fn newer_schema_is_refused() {
    let root = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(root.path(), Durability::Fsync).expect("open"));
    let db = root.path().join("handoff.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", 5)
        .unwrap();

    match SqliteStore::open(root.path(), Durability::Fsync) {
        Err(StoreError::Open { reason, .. }) => {
            assert!(
                reason.contains("schema version is 5"),
                "unclear reason: {reason}"
            )
        }
        other => panic!("expected StoreError::Open, got {other:?}"),
    }
}

#[test]
fn reopening_keeps_the_schema() {
    let root = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        drop(SqliteStore::open(root.path(), Durability::Os).expect("open"));
    }
    let conn = rusqlite::Connection::open(root.path().join("handoff.db")).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 4);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal", "WAL mode is kept in the database file");
}

/// Dropping the store must stop its writer and close every connection: SQLite removes the WAL
/// file when the last connection closes, so a leftover one means something is still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_closes_the_database() {
    let root = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(root.path(), Durability::Fsync).expect("open");
    let event = StoredEvent {
        seq: 1,
        event_type: "interaction.offered".into(),
        subject: "int-1".into(),
        time_ms: 1,
        agents: vec!["agent-a".into()],
        payload: "{}".into(),
    };
    commit_one(&store, event).await;
    assert_eq!(store.events_after(0, 10).await.expect("read").len(), 1);
    let wal = root.path().join("handoff.db-wal");
    assert!(wal.exists(), "a WAL file while the store is open");

    drop(store);
    assert!(
        !wal.exists(),
        "the WAL file is left after drop: a connection is still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_beyond_the_queue_capacity_all_land() {
    // More concurrent commits than the write queue holds, so some wait for room.
    const COMMITS: u64 = 1500;
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(root.path(), Durability::Os).expect("open"));
    let tasks: Vec<_> = (0..COMMITS)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let batch = Batch {
                    acks: vec![(format!("agent-{n}"), n)],
                    ..Batch::default()
                };
                store.commit(batch).await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("commit");
    }
    assert_eq!(store.acks().await.expect("acks").len(), COMMITS as usize);
}

/// A batch that SQLite itself rejects (here a duplicate key id) fails alone and writes none of
/// its parts; the log's head stays where it was, so the next batch continues from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_failing_in_sqlite_rolls_back_alone() {
    let root = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(root.path(), Durability::Fsync).expect("open");
    let key = KeyRecord {
        id: "key-1".into(),
        role: "admin".into(),
        name: "first".into(),
        agent_id: None,
        token_sha256: [1; 32],
        created_ms: 1,
    };
    let event = |seq| StoredEvent {
        seq,
        event_type: "interaction.offered".into(),
        subject: "int-1".into(),
        time_ms: 1,
        agents: vec!["agent-a".into()],
        payload: format!("event {seq}"),
    };
    store
        .commit(Batch {
            keys_added: vec![key.clone()],
            ..Batch::default()
        })
        .await
        .expect("key");

    let mut duplicate = key.clone();
    duplicate.token_sha256 = [2; 32];
    let failing = Batch {
        events: vec![event(1)],
        acks: vec![("agent-a".into(), 1)],
        keys_added: vec![duplicate],
        ..Batch::default()
    };
    match store.commit(failing).await {
        Err(StoreError::Backend(reason)) => assert!(reason.contains("key-1"), "reason: {reason}"),
        other => panic!("expected StoreError::Backend, got {other:?}"),
    }
    assert_eq!(
        store.head().await.unwrap(),
        0,
        "the failed batch did not move the head"
    );
    assert!(
        store.events_after(0, 10).await.unwrap().is_empty(),
        "no event of the failed batch"
    );
    assert!(
        store.acks().await.unwrap().is_empty(),
        "no ack of the failed batch"
    );
    assert_eq!(
        store.keys().await.unwrap(),
        vec![key],
        "the first key is untouched"
    );

    store
        .commit(Batch {
            events: vec![event(1)],
            ..Batch::default()
        })
        .await
        .expect("seq 1");
    assert_eq!(store.head().await.unwrap(), 1);
}

/// With `os` durability the writer never checkpoints (a checkpoint's syncs inside a commit
/// stalled every commit behind it): the checkpointer thread moves the WAL into the database
/// file beside it, while the store stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_os_durability_the_checkpointer_moves_the_wal_into_the_database() {
    let root = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(root.path(), Durability::Os).expect("open");
    let database = store.db_path().to_path_buf();
    let size = || std::fs::metadata(&database).expect("database file").len();
    let before = size();
    let events = (1..=64)
        .map(|seq| StoredEvent {
            seq,
            event_type: "interaction.created".into(),
            subject: format!("int-{seq}"),
            time_ms: 1,
            agents: vec![],
            payload: "x".repeat(2048),
        })
        .collect();
    store
        .commit(Batch {
            events,
            ..Batch::default()
        })
        .await
        .expect("commit");
    // 64 events of 2 KiB are far below SQLite's own threshold (1,000 pages), so only the
    // checkpointer can have moved them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while size() <= before + 64 * 2048 {
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {} bytes (it was {before}): nothing checkpointed the WAL",
            size()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(store.events_after(0, 100).await.expect("read").len(), 64);
}

/// Under commits that never pause, a checkpoint beside the writer never catches the end of the
/// WAL and SQLite never starts it over: the file grew by 80 MB a second in the benchmark. Past
/// its limit the checkpointer holds the writer for a last short pass, and the WAL starts over
/// (and is cut back) while the commits keep coming; none of them is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_os_durability_the_wal_starts_over_under_commits_that_never_pause() {
    // 256 pages (1 MiB) instead of the default gigabyte, so that the test writes megabytes.
    const LIMIT_PAGES: i64 = 256;
    const MOST_COMMITS: u64 = 20_000;
    let root = tempfile::tempdir().unwrap();
    let store =
        SqliteStore::open_with_wal_restart(root.path(), Durability::Os, LIMIT_PAGES).expect("open");
    let wal = root.path().join("handoff.db-wal");
    let wal_size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut largest = 0;
    let mut started_over_at = None;
    let mut seq = 0;
    // One commit after another, each awaited: the writer never has a quiet moment long enough
    // for a checkpoint to finish between two of them.
    while seq < MOST_COMMITS && std::time::Instant::now() < deadline {
        seq += 1;
        commit_one(&store, bulky_event(seq, 4096)).await;
        let size = wal_size();
        if size < largest && largest > (LIMIT_PAGES as u64) * 4096 {
            started_over_at = Some(seq);
            break;
        }
        largest = largest.max(size);
    }
    let Some(started_over_at) = started_over_at else {
        panic!(
            "the WAL never started over: it grew to {largest} bytes over {seq} commits (limit {} bytes)",
            LIMIT_PAGES * 4096
        );
    };
    assert_eq!(store.head().await.expect("head"), started_over_at);
    let kept = store.events_after(0, 100_000).await.expect("read");
    assert_eq!(kept.len() as u64, started_over_at, "every commit is kept");
    assert!(kept.iter().zip(1..).all(|(event, seq)| event.seq == seq));
}

/// With fsync durability the commits themselves move the WAL into the database every
/// `FSYNC_WAL_AUTOCHECKPOINT_PAGES`, and the WAL then starts over: the file never grows much
/// past that many pages, however much is written, and every commit is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fsync_durability_the_wal_stays_near_its_checkpoint_size() {
    const PAGE_BYTES: u64 = 4096;
    // Each WAL frame is a page and a 24-byte header; the file starts with a 32-byte header.
    const FRAME_BYTES: u64 = PAGE_BYTES + 24;
    const COMMITS: u64 = 1_500;
    let root = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(root.path(), Durability::Fsync).expect("open");
    let wal = root.path().join("handoff.db-wal");
    let mut largest = 0;
    for seq in 1..=COMMITS {
        // About two pages of payload a commit, so that the run writes some 3,000 pages: three
        // times the default checkpoint size, six times this one.
        commit_one(&store, bulky_event(seq, 6000)).await;
        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    }
    let pages_written = COMMITS * 2;
    assert!(
        largest > 100 * FRAME_BYTES,
        "the WAL was used: {largest} bytes at most"
    );
    // The commit that passes the size checkpoints; the WAL starts over at the next one. A few
    // commits' frames of slack beyond the size.
    let bound = (FSYNC_WAL_AUTOCHECKPOINT_PAGES as u64 + 50) * FRAME_BYTES + 32;
    assert!(
        largest <= bound,
        "the WAL grew to {largest} bytes (bound {bound}) over about {pages_written} pages written"
    );
    assert_eq!(store.head().await.expect("head"), COMMITS);
    let kept = store.events_after(0, 10_000).await.expect("read");
    assert_eq!(kept.len() as u64, COMMITS, "every commit is kept");
}

/// An event at `seq` whose payload is `payload_bytes` long, to fill the WAL.
fn bulky_event(seq: u64, payload_bytes: usize) -> StoredEvent {
    StoredEvent {
        seq,
        event_type: "interaction.created".into(),
        subject: format!("int-{seq}"),
        time_ms: 1,
        agents: vec![format!("agent-{}", seq % 50)],
        payload: "x".repeat(payload_bytes),
    }
}

/// Commits a batch of one event, which must succeed.
async fn commit_one(store: &SqliteStore, event: StoredEvent) {
    store
        .commit(Batch {
            events: vec![event],
            ..Batch::default()
        })
        .await
        .expect("commit");
}

/// The schema builds before version 2 wrote, kept here as they wrote it.
const SCHEMA_VERSION_1: &str = "
CREATE TABLE events (seq INTEGER PRIMARY KEY, type TEXT NOT NULL, subject TEXT NOT NULL,
    time_ms INTEGER NOT NULL, payload TEXT NOT NULL);
CREATE INDEX events_subject_seq ON events (subject, seq);
CREATE TABLE event_agents (agent_id TEXT NOT NULL, seq INTEGER NOT NULL, pos INTEGER NOT NULL,
    PRIMARY KEY (agent_id, seq)) WITHOUT ROWID;
CREATE INDEX event_agents_seq_pos ON event_agents (seq, pos);
CREATE TABLE acks (agent_id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE idempotency (key_id TEXT NOT NULL, idempotency_key TEXT NOT NULL,
    body_sha256 BLOB NOT NULL, interaction_id TEXT NOT NULL, created_ms INTEGER NOT NULL,
    PRIMARY KEY (key_id, idempotency_key)) WITHOUT ROWID;
CREATE INDEX idempotency_created_ms ON idempotency (created_ms);
CREATE TABLE offer_deadlines (interaction_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL,
    expires_ms INTEGER NOT NULL);
CREATE TABLE keys (id TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL, agent_id TEXT,
    token_sha256 BLOB NOT NULL UNIQUE, created_ms INTEGER NOT NULL);
PRAGMA user_version = 1;
";

/// A database written by a version 1 build opens with everything it still needs: each event
/// with its agents in their order, each agent's stream, the acks; and it is then at the current
/// version, its text-keyed tables WITHOUT ROWID, the by-seq agent index and the offer deadlines
/// (read by nothing) gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_opens_with_everything_it_held() {
    let root = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(root.path().join("handoff.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(SCHEMA_VERSION_1).unwrap();
        conn.execute_batch(
            "INSERT INTO events VALUES (1, 'interaction.offered', 'int-1', 10, '{\"a\":1}');
             INSERT INTO events VALUES (2, 'agent.state_changed', 'agent-a', 20, '{}');
             INSERT INTO events VALUES (3, 'interaction.accepted', 'int-1', 30, '{\"a\":3}');
             -- Written out of order on purpose: the position decides.
             INSERT INTO event_agents VALUES ('agent-a', 1, 1), ('agent-b', 1, 0);
             INSERT INTO event_agents VALUES ('agent-a', 3, 0);
             INSERT INTO acks VALUES ('agent-a', 3), ('agent-b', 1);
             INSERT INTO offer_deadlines VALUES ('int-1', 'agent-b', 5000);",
        )
        .unwrap();
    }

    let store = SqliteStore::open(root.path(), Durability::Fsync).expect("opening a v1 database");
    let events = store.events_after(0, 10).await.expect("events_after");
    let agents: Vec<(u64, Vec<String>)> =
        events.iter().map(|e| (e.seq, e.agents.clone())).collect();
    assert_eq!(
        agents,
        vec![
            (1, vec!["agent-b".to_string(), "agent-a".to_string()]),
            (2, vec![]),
            (3, vec!["agent-a".to_string()]),
        ],
        "every event keeps its agents, in their order"
    );
    assert_eq!(events[0].payload, "{\"a\":1}", "payloads are kept");
    let for_a: Vec<u64> = store
        .agent_events_after("agent-a", 0, 10)
        .await
        .expect("agent_events_after")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(for_a, [1, 3], "an agent's stream is kept");
    let snapshot = conformance::snapshot(&store).await;
    assert_eq!(
        snapshot.acks,
        vec![("agent-a".to_string(), 3), ("agent-b".to_string(), 1)],
        "acks are kept"
    );

    // The log goes on from where it was.
    commit_one(
        &store,
        StoredEvent {
            seq: 4,
            event_type: "interaction.completed".into(),
            subject: "int-1".into(),
            time_ms: 40,
            agents: vec!["agent-a".into()],
            payload: "{}".into(),
        },
    )
    .await;
    assert_eq!(store.head().await.expect("head"), 4);
    drop(store);

    let conn = rusqlite::Connection::open(root.path().join("handoff.db")).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 4, "the database is at the new version");
    let sql = |name: &str| -> Option<String> {
        conn.query_row(
            "SELECT sql FROM sqlite_schema WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .ok()
    };
    assert_eq!(
        sql("event_agents_seq_pos"),
        None,
        "the by-seq index is gone"
    );
    assert_eq!(sql("offer_deadlines"), None, "the offer deadlines are gone");
    for table in ["acks", "integrations", "outbox_retries"] {
        let text = sql(table).unwrap_or_else(|| panic!("{table} is missing"));
        assert!(text.contains("WITHOUT ROWID"), "{table} is now: {text}");
    }
}

/// A version 2 database (before integrations) gains the integration and outbox tables on open,
/// loses its offer deadlines, keeps its log, and takes outbox rows at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_database_gains_the_outbox_and_keeps_its_log() {
    let root = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(root.path(), Durability::Fsync).expect("open");
        commit_one(
            &store,
            StoredEvent {
                seq: 1,
                event_type: "interaction.created".into(),
                subject: "int-1".into(),
                time_ms: 10,
                agents: vec![],
                payload: "{}".into(),
            },
        )
        .await;
    }
    {
        // What a version 2 build left: no integration tables, and the offer deadlines.
        let conn = rusqlite::Connection::open(root.path().join("handoff.db")).unwrap();
        conn.execute_batch(
            "DROP TABLE integrations; DROP TABLE outbox_cursors; DROP TABLE outbox_retries;
             DROP TABLE delivery_attempts;
             CREATE TABLE offer_deadlines (interaction_id TEXT PRIMARY KEY,
                 agent_id TEXT NOT NULL, expires_ms INTEGER NOT NULL) WITHOUT ROWID;
             INSERT INTO offer_deadlines VALUES ('int-1', 'agent-a', 5000);
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(root.path(), Durability::Fsync).expect("opening a v2 database");
    assert_eq!(store.head().await.expect("head"), 1, "the log is kept");
    let batch = handoff_store::Batch {
        outbox_cursors: vec![("webhook:a".into(), 1)],
        ..handoff_store::Batch::default()
    };
    store.commit(batch).await.expect("an outbox cursor commits");
    assert_eq!(
        store.outbox_cursors().await.expect("outbox_cursors"),
        vec![("webhook:a".to_string(), 1)]
    );
    drop(store);
    let conn = rusqlite::Connection::open(root.path().join("handoff.db")).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 4);
    assert!(
        !has_table(&conn, "offer_deadlines"),
        "the offer deadlines are gone"
    );
}

/// Whether the database has a table named `name`.
fn has_table(conn: &rusqlite::Connection, name: &str) -> bool {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .unwrap()
        > 0
}

/// The schema builds at version 3 wrote, kept here as they wrote it.
const SCHEMA_VERSION_3: &str = "
CREATE TABLE events (seq INTEGER PRIMARY KEY, type TEXT NOT NULL, subject TEXT NOT NULL,
    time_ms INTEGER NOT NULL, payload TEXT NOT NULL, agents TEXT NOT NULL DEFAULT '');
CREATE INDEX events_subject_seq ON events (subject, seq);
CREATE TABLE event_agents (agent_id TEXT NOT NULL, seq INTEGER NOT NULL, pos INTEGER NOT NULL,
    PRIMARY KEY (agent_id, seq)) WITHOUT ROWID;
CREATE TABLE acks (agent_id TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE idempotency (key_id TEXT NOT NULL, idempotency_key TEXT NOT NULL,
    body_sha256 BLOB NOT NULL, interaction_id TEXT NOT NULL, created_ms INTEGER NOT NULL,
    PRIMARY KEY (key_id, idempotency_key)) WITHOUT ROWID;
CREATE INDEX idempotency_created_ms ON idempotency (created_ms);
CREATE TABLE offer_deadlines (interaction_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL,
    expires_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE keys (id TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL, agent_id TEXT,
    token_sha256 BLOB NOT NULL UNIQUE, created_ms INTEGER NOT NULL);
CREATE TABLE integrations (kind TEXT NOT NULL, name TEXT NOT NULL, config TEXT NOT NULL,
    updated_ms INTEGER NOT NULL, PRIMARY KEY (kind, name)) WITHOUT ROWID;
CREATE TABLE outbox_cursors (destination TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE outbox_retries (destination TEXT NOT NULL, seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL, next_ms INTEGER NOT NULL, PRIMARY KEY (destination, seq))
    WITHOUT ROWID;
CREATE TABLE delivery_attempts (id INTEGER PRIMARY KEY, destination TEXT NOT NULL,
    seq INTEGER NOT NULL, attempt INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL, status INTEGER, outcome TEXT NOT NULL, detail TEXT,
    next_ms INTEGER);
CREATE INDEX delivery_attempts_destination_id ON delivery_attempts (destination, id);
PRAGMA user_version = 3;
";

/// A database written by a version 3 build, with an open offer's deadline row, opens at
/// version 4 without the `offer_deadlines` table (nothing reads it: an offer's deadline is in
/// its event), and keeps its log, each agent's stream and the acks; the log goes on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_database_drops_its_offer_deadlines_and_keeps_its_events_and_acks() {
    let root = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(root.path().join("handoff.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(SCHEMA_VERSION_3).unwrap();
        conn.execute_batch(
            "INSERT INTO events (seq, type, subject, time_ms, payload, agents) VALUES
                 (1, 'interaction.created', 'int-1', 10, '{\"a\":1}', ''),
                 (2, 'interaction.offered', 'int-1', 20, '{\"a\":2}',
                     'agent-b' || char(10) || 'agent-a'),
                 (3, 'agent.state_changed', 'agent-a', 30, '{}', 'agent-a');
             INSERT INTO event_agents VALUES
                 ('agent-b', 2, 0), ('agent-a', 2, 1), ('agent-a', 3, 0);
             INSERT INTO acks VALUES ('agent-a', 3), ('agent-b', 1);
             INSERT INTO offer_deadlines VALUES ('int-1', 'agent-b', 5000);",
        )
        .unwrap();
    }

    let store = SqliteStore::open(root.path(), Durability::Fsync).expect("opening a v3 database");
    let event = |seq, event_type: &str, subject: &str, time_ms, payload: &str, agents: &[&str]| {
        StoredEvent {
            seq,
            event_type: event_type.into(),
            subject: subject.into(),
            time_ms,
            agents: agents.iter().map(|a| a.to_string()).collect(),
            payload: payload.into(),
        }
    };
    assert_eq!(
        store.events_after(0, 10).await.expect("events_after"),
        vec![
            event(1, "interaction.created", "int-1", 10, "{\"a\":1}", &[]),
            event(
                2,
                "interaction.offered",
                "int-1",
                20,
                "{\"a\":2}",
                &["agent-b", "agent-a"]
            ),
            event(3, "agent.state_changed", "agent-a", 30, "{}", &["agent-a"]),
        ],
        "every event is kept whole"
    );
    let for_a: Vec<u64> = store
        .agent_events_after("agent-a", 0, 10)
        .await
        .expect("agent_events_after")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(for_a, [2, 3], "an agent's stream is kept");
    let mut acks = store.acks().await.expect("acks");
    acks.sort();
    assert_eq!(
        acks,
        vec![("agent-a".to_string(), 3), ("agent-b".to_string(), 1)],
        "acks are kept"
    );

    // The log goes on from where it was, and acks still move.
    store
        .commit(Batch {
            events: vec![event(
                4,
                "interaction.accepted",
                "int-1",
                40,
                "{}",
                &["agent-b"],
            )],
            acks: vec![("agent-b".into(), 4)],
            ..Batch::default()
        })
        .await
        .expect("a commit after the migration");
    assert_eq!(store.head().await.expect("head"), 4);
    let mut acks = store.acks().await.expect("acks");
    acks.sort();
    assert_eq!(
        acks,
        vec![("agent-a".to_string(), 3), ("agent-b".to_string(), 4)],
        "an ack moves after the migration"
    );
    drop(store);

    let conn = rusqlite::Connection::open(root.path().join("handoff.db")).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 4, "the database is at the new version");
    assert!(
        !has_table(&conn, "offer_deadlines"),
        "the offer deadlines are gone"
    );
    assert!(
        has_table(&conn, "integrations"),
        "the other tables are left alone"
    );
}
