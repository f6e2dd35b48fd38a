//! Runs the conformance suite against `PostgresStore`, and checks what is particular to it: how
//! it opens and migrates a schema, that its head is the database's, the writer lease and its
//! fencing, and that it survives its connections being killed.
//!
//! Needs a PostgreSQL server named by `HANDOFF_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`); without it, each test that needs one says it was
//! skipped and passes. Each store lives in a schema of its own, dropped when the test ends.

mod conformance;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conformance::Harness;
use handoff_store::{
    open_postgres, Batch, Durability, KeyRecord, PostgresStore, Store, StoreEngine, StoreError,
    StoredEvent,
};

const URL_VARIABLE: &str = "HANDOFF_TEST_POSTGRES_URL";

/// The lease's TTL where a test waits for it to expire: short, so that the wait is quick.
const TTL: Duration = Duration::from_millis(300);

/// The lease's TTL where it must not expire before the test is done with it, however slow
/// the machine; the test then shortens it to `TTL` (a renewal) before waiting for the expiry.
const LONG_TTL: Duration = Duration::from_secs(60);

/// The lease's TTL where it must stay live through a few statements and cannot be shortened
/// afterwards (a fenced commit in flight holds its row): long enough for those on a busy
/// machine, short enough to wait for.
const SETUP_TTL: Duration = Duration::from_secs(1);

/// Longest any wait in these tests may take before it counts as a failure.
const PATIENCE: Duration = Duration::from_secs(20);

/// The server's URL, or `None` (after saying so) when the tests are to be skipped.
fn postgres_url() -> Option<String> {
    match std::env::var(URL_VARIABLE) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped: {URL_VARIABLE} is unset");
            None
        }
    }
}

/// Schema names unique to this process and call, so that test runs side by side never meet.
fn unique_schema() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let random = RandomState::new().build_hasher().finish() as u32;
    format!("handoff_test_{}_{n}_{random:08x}", std::process::id())
}

/// Drops the schemas it was given when dropped, also when the test panicked (best effort: a
/// failure to drop is only reported).
struct Schemas {
    url: String,
    names: Mutex<Vec<String>>,
}

impl Schemas {
    fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            names: Mutex::new(Vec::new()),
        }
    }

    fn make(&self) -> String {
        let name = unique_schema();
        self.names.lock().unwrap().push(name.clone());
        name
    }
}

impl Drop for Schemas {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.names.lock().unwrap_or_else(|p| p.into_inner()));
        if names.is_empty() {
            return;
        }
        let url = self.url.clone();
        // Dropped inside the test's runtime, which must not block: a thread with its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test schemas");
            runtime.block_on(async move {
                let client = match raw_client(&url).await {
                    Ok(client) => client,
                    Err(e) => return eprintln!("could not drop the test schemas: {e}"),
                };
                // A store dropped a moment ago may still be closing its connections.
                let _ = client.batch_execute("SET lock_timeout = '10s'").await;
                for name in names {
                    if let Err(e) = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                        .await
                    {
                        eprintln!("could not drop the test schema {name}: {e}");
                    }
                }
            });
        });
        let _ = dropped.join();
    }
}

/// A connection of the test's own, beside the store's.
async fn raw_client(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Opens each fresh store in a schema of its own.
struct PostgresHarness {
    url: String,
    durability: Durability,
    schemas: Schemas,
    /// The schema of each open store, by the address of its `Arc`: `reopen` gets only the
    /// handle, and `dyn Store` cannot say where it lives.
    open: Mutex<HashMap<usize, String>>,
}

impl PostgresHarness {
    fn new(url: String, durability: Durability) -> Self {
        Self {
            schemas: Schemas::new(&url),
            url,
            durability,
            open: Mutex::new(HashMap::new()),
        }
    }

    async fn open(&self, schema: String) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = open_postgres(&self.url, &schema, self.durability)
            .await
            .expect("opening the store");
        self.open.lock().unwrap().insert(address(&store), schema);
        store
    }
}

fn address(store: &Arc<dyn Store>) -> usize {
    Arc::as_ptr(store) as *const () as usize
}

#[async_trait::async_trait]
impl Harness for PostgresHarness {
    async fn fresh(&self) -> Arc<dyn Store> {
        let schema = self.schemas.make();
        self.open(schema).await
    }

    async fn reopen(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        let schema = self
            .open
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
        self.open(schema).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fsync_passes_conformance() {
    let Some(url) = postgres_url() else { return };
    conformance::run_all(&PostgresHarness::new(url, Durability::Fsync)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_os_passes_conformance() {
    let Some(url) = postgres_url() else { return };
    conformance::run_all(&PostgresHarness::new(url, Durability::Os)).await;
}

fn event(seq: u64, agents: &[&str]) -> StoredEvent {
    StoredEvent {
        seq,
        event_type: "interaction.offered".into(),
        subject: format!("int-{seq}"),
        time_ms: 1_700_000_000_000 + seq as i64,
        agents: agents.iter().map(|a| a.to_string()).collect(),
        payload: format!("event {seq}"),
    }
}

fn events(seqs: std::ops::RangeInclusive<u64>) -> Batch {
    Batch {
        events: seqs.map(|seq| event(seq, &["agent-a"])).collect(),
        ..Batch::default()
    }
}

async fn open(url: &str, schema: &str) -> Arc<PostgresStore> {
    open_postgres(url, schema, Durability::Fsync)
        .await
        .expect("opening the store")
}

/// Waits until `check` holds, at most `PATIENCE`, polling.
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the lease has expired by PostgreSQL's clock.
async fn wait_for_expiry(store: &PostgresStore) {
    wait_until("the lease expires", || async {
        let info = store.lease_holder().await.expect("lease_holder");
        info.expect("a lease was granted").expires_in_ms < 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_through_the_store_engine_and_keeps_the_log() {
    let Some(url) = postgres_url() else { return };
    let schemas = Schemas::new(&url);
    let schema = schemas.make();
    let engine = || StoreEngine::Postgres {
        url: url.clone(),
        schema: schema.clone(),
        durability: Durability::Os,
    };
    let store = handoff_store::open(engine()).await.expect("open");
    store.commit(events(1..=3)).await.expect("commit");
    drop(store);
    let store = handoff_store::open(engine()).await.expect("reopen");
    assert_eq!(store.head().await.expect("head"), 3);
    match store.commit(events(3..=3)).await {
        Err(StoreError::SeqOutOfOrder {
            expected: 4,
            got: 3,
        }) => {}
        other => panic!("the head read at open must refuse seq 3, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused_naming_both_versions() {
    let Some(url) = postgres_url() else { return };
    let schemas = Schemas::new(&url);
    let schema = schemas.make();
    drop(open(&url, &schema).await);
    let client = raw_client(&url).await.expect("connect");
    client
        .batch_execute(&format!(
            "UPDATE \"{schema}\".handoff_schema SET version = 7"
        ))
        .await
        .expect("bump the version");
    match open_postgres(&url, &schema, Durability::Fsync).await {
        Err(StoreError::Open { path, reason }) => {
            assert!(path.contains(&schema), "the error names the schema: {path}");
            assert!(
                reason.contains("schema version is 7") && reason.contains("understands version 2"),
                "the error names both versions: {reason}"
            );
        }
        other => panic!("expected StoreError::Open, got {other:?}"),
    }
}

/// A schema written by a version 1 build, with an open offer's deadline row, opens at version 2
/// without the `offer_deadlines` table (nothing reads it: an offer's deadline is in its event),
/// and keeps its log, each agent's stream and the acks; the log goes on from there. Version 1
/// was this build's tables and `offer_deadlines`, so this build's schema with that table put
/// back (as version 1 made it), a row in it and its version set to 1 is what a version 1 build
/// left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_schema_drops_its_offer_deadlines_and_keeps_its_events_and_acks() {
    let Some(url) = postgres_url() else { return };
    let schemas = Schemas::new(&url);
    let schema = schemas.make();
    let written = vec![
        event(1, &[]),
        event(2, &["agent-b", "agent-a"]),
        event(3, &["agent-a"]),
    ];
    let store = open(&url, &schema).await;
    store
        .commit(Batch {
            events: written.clone(),
            acks: vec![("agent-a".into(), 3), ("agent-b".into(), 1)],
            ..Batch::default()
        })
        .await
        .expect("commit");
    drop(store);
    let client = raw_client(&url).await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE TABLE \"{schema}\".offer_deadlines (
                 interaction_id TEXT COLLATE \"C\" PRIMARY KEY,
                 agent_id TEXT NOT NULL,
                 expires_ms BIGINT NOT NULL
             );
             INSERT INTO \"{schema}\".offer_deadlines VALUES ('int-2', 'agent-b', 5000);
             UPDATE \"{schema}\".handoff_schema SET version = 1;"
        ))
        .await
        .expect("make the schema a version 1 one");

    let store = open(&url, &schema).await;
    assert_eq!(
        store.events_after(0, 10).await.expect("events_after"),
        written,
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
    let sorted_acks = || async {
        let mut acks = store.acks().await.expect("acks");
        acks.sort();
        acks
    };
    assert_eq!(
        sorted_acks().await,
        vec![("agent-a".to_string(), 3), ("agent-b".to_string(), 1)],
        "acks are kept"
    );
    store
        .commit(Batch {
            events: vec![event(4, &["agent-b"])],
            acks: vec![("agent-b".into(), 4)],
            ..Batch::default()
        })
        .await
        .expect("a commit after the migration");
    assert_eq!(store.head().await.expect("head"), 4);
    assert_eq!(
        sorted_acks().await,
        vec![("agent-a".to_string(), 3), ("agent-b".to_string(), 4)],
        "an ack moves after the migration"
    );

    let version: i32 = client
        .query_one(
            &format!("SELECT version FROM \"{schema}\".handoff_schema"),
            &[],
        )
        .await
        .expect("the schema version")
        .get(0);
    assert_eq!(version, 2, "the schema is at the new version");
    let deadlines_table = client
        .query_opt(
            "SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'offer_deadlines'",
            &[&schema],
        )
        .await
        .expect("pg_tables");
    assert!(deadlines_table.is_none(), "the offer deadlines are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_opening_a_new_schema_at_once_both_open_it() {
    let Some(url) = postgres_url() else { return };
    let schemas = Schemas::new(&url);
    let schema = schemas.make();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let (url, schema) = (url.clone(), schema.clone());
            tokio::spawn(async move { open_postgres(&url, &schema, Durability::Fsync).await })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(
            open.await
                .expect("task")
                .expect("every concurrent open succeeds"),
        );
    }
    stores[0].commit(events(1..=1)).await.expect("commit");
    assert_eq!(
        stores[3].head().await.expect("head"),
        1,
        "one schema for all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_is_the_databases_not_the_writers() {
    let Some(url) = postgres_url() else { return };
    let schemas = Schemas::new(&url);
    let schema = schemas.make();
    let (a, b) = (open(&url, &schema).await, open(&url, &schema).await);
    a.commit(events(1..=2)).await.expect("commit on a");
    assert_eq!(b.head().await.expect("head"), 2, "b sees what a appended");
    assert_eq!(b.events_after(0, 10).await.expect("read").len(), 2);
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_are_open_errors() {
    // Needs no server: nothing listens on port 1, and the other two never connect.
    for (url, schema, says) in [
        (
            "postgres://nobody@127.0.0.1:1/none",
            "handoff",
            "cannot connect",
        ),
        ("not a url = =", "handoff", "connection string"),
        (
            "postgres://nobody@127.0.0.1:1/none?sslmode=require",
            "handoff",
            "TLS",
        ),
        ("postgres://nobody@127.0.0.1:1/none", "", "schema name"),
    ] {
        match open_postgres(url, schema, Durability::Fsync).await {
            Err(StoreError::Open { path, reason }) => {
                assert!(reason.contains(says), "{url}: {reason} (path {path})");
                assert!(!path.contains("s3cret"));
            }
            other => panic!("{url}: expected StoreError::Open, got {other:?}"),
        }
    }
    match open_postgres(
        "postgres://u:s3cret@127.0.0.1:1/db",
        "handoff",
        Durability::Os,
    )
    .await
    {
        Err(e) => assert!(!e.to_string().contains("s3cret"), "{e}"),
        Ok(_) => panic!("opened a store on port 1"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_granted_refused_kept_and_taken_over_after_expiry() {
    let Some(url) = postgres_url() else { return };
    let schemas = Schemas::new(&url);
    let schema = schemas.make();
    let (a, b) = (open(&url, &schema).await, open(&url, &schema).await);
    assert_eq!(a.lease_holder().await.expect("lease_holder"), None);

    let first = a
        .try_acquire_lease("node-a", "10.0.0.1:8080", LONG_TTL)
        .await
        .expect("acquire")
        .expect("a free lease is granted");
    assert!(first.expires_in <= LONG_TTL && first.expires_in > Duration::ZERO);
    let info = b.lease_holder().await.expect("lease_holder").expect("held");
    assert_eq!(
        (info.holder.as_str(), info.address.as_str(), info.epoch),
        ("node-a", "10.0.0.1:8080", first.epoch)
    );
    assert!(info.expires_in_ms > 0 && info.expires_in_ms <= 60_000);

    assert_eq!(
        b.try_acquire_lease("node-b", "10.0.0.2:8080", TTL)
            .await
            .expect("acquire"),
        None,
        "another holder is refused while the lease is live"
    );
    let again = a
        .try_acquire_lease("node-a", "10.0.0.1:8080", LONG_TTL)
        .await
        .expect("acquire")
        .expect("the holder gets its own lease again");
    assert_eq!(again.epoch, first.epoch, "re-acquiring keeps the epoch");
    assert!(
        !b.renew_lease("node-b", first.epoch, TTL)
            .await
            .expect("renew"),
        "only the holder renews"
    );

    // Renewed, and shortened so that the expiry comes soon.
    assert!(a
        .renew_lease("node-a", first.epoch, TTL)
        .await
        .expect("renew"));
    wait_for_expiry(&b).await;
    assert!(
        !a.renew_lease("node-a", first.epoch, TTL)
            .await
            .expect("renew"),
        "an expired lease is not renewed"
    );
    let taken = b
        .try_acquire_lease("node-b", "10.0.0.2:8080", TTL)
        .await
        .expect("acquire")
        .expect("an expired lease is taken over");
    assert_eq!(taken.epoch, first.epoch + 1, "a takeover raises the epoch");
    let info = a.lease_holder().await.expect("lease_holder").expect("held");
    assert_eq!((info.holder.as_str(), info.epoch), ("node-b", taken.epoch));
    assert!(
        !a.release_lease("node-a", first.epoch)
            .await
            .expect("release"),
        "a lost lease cannot be released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_lost_its_lease_is_fenced_and_writes_nothing() {
    let Some(url) = postgres_url() else { return };
    let schemas = Schemas::new(&url);
    let schema = schemas.make();
    let (a, b) = (open(&url, &schema).await, open(&url, &schema).await);
    let lease = a
        .try_acquire_lease("node-a", "a:1", LONG_TTL)
        .await
        .expect("acquire")
        .expect("granted");
    assert_eq!(a.fence(lease.epoch).await.expect("fence"), 0);
    a.commit(events(1..=2))
        .await
        .expect("a fenced commit under a live lease");

    assert!(a
        .renew_lease("node-a", lease.epoch, TTL)
        .await
        .expect("renew"));
    wait_for_expiry(&a).await;
    let taken = b
        .try_acquire_lease("node-b", "b:1", TTL)
        .await
        .expect("acquire")
        .expect("taken over");
    assert_eq!(taken.epoch, lease.epoch + 1);
    assert_eq!(b.fence(taken.epoch).await.expect("fence"), 2);

    let refused = Batch {
        events: vec![event(3, &["agent-a"])],
        acks: vec![("agent-a".into(), 3)],
        keys_added: vec![KeyRecord {
            id: "key-1".into(),
            role: "admin".into(),
            name: "admin".into(),
            agent_id: None,
            token_sha256: [7; 32],
            created_ms: 1,
        }],
        ..Batch::default()
    };
    match a.commit(refused.clone()).await {
        Err(StoreError::Fenced { epoch }) => assert_eq!(epoch, lease.epoch),
        other => panic!("the old holder's commit must be fenced, got {other:?}"),
    }
    // Several at once, likely grouped: every one of them is fenced.
    let many: Vec<_> = (0..8)
        .map(|n| {
            let a = Arc::clone(&a);
            tokio::spawn(async move {
                a.commit(Batch {
                    acks: vec![(format!("agent-{n}"), 1)],
                    ..Batch::default()
                })
                .await
            })
        })
        .collect();
    for commit in many {
        assert!(matches!(
            commit.await.expect("task"),
            Err(StoreError::Fenced { .. })
        ));
    }
    match a.purge_idempotency(i64::MAX).await {
        Err(StoreError::Fenced { .. }) => {}
        other => panic!("a purge is a write and is fenced too, got {other:?}"),
    }
    assert_eq!(
        b.head().await.expect("head"),
        2,
        "nothing of a's was written"
    );
    assert!(b.acks().await.expect("acks").is_empty());
    assert!(b.keys().await.expect("keys").is_empty());

    b.commit(refused)
        .await
        .expect("the new holder writes seq 3");
    b.commit(Batch {
        idempotency: vec![handoff_store::IdempotencyRecord {
            key_id: "key-1".into(),
            idempotency_key: "idem-1".into(),
            body_sha256: [1; 32],
            interaction_id: "int-1".into(),
            created_ms: 1_000,
        }],
        ..Batch::default()
    })
    .await
    .expect("a record");
    assert_eq!(
        b.purge_idempotency(i64::MAX).await.expect("purge"),
        1,
        "a fenced purge counts the records it deleted, and only those"
    );
    assert_eq!(a.head().await.expect("head"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_taken_at_once_and_the_new_writer_continues_the_log() {
    let Some(url) = postgres_url() else { return };
    let schemas = Schemas::new(&url);
    let schema = schemas.make();
    let (a, b) = (open(&url, &schema).await, open(&url, &schema).await);
    // Long enough that only the release can explain a takeover.
    let long = Duration::from_secs(600);
    let lease = a
        .try_acquire_lease("node-a", "a:1", long)
        .await
        .expect("acquire")
        .expect("granted");
    a.fence(lease.epoch).await.expect("fence");
    a.commit(events(1..=3)).await.expect("commit");
    assert!(a
        .release_lease("node-a", lease.epoch)
        .await
        .expect("release"));

    let taken = b
        .try_acquire_lease("node-b", "b:1", long)
        .await
        .expect("acquire")
        .expect("a released lease is free at once");
    assert_eq!(taken.epoch, lease.epoch + 1);
    assert_eq!(
        b.fence(taken.epoch).await.expect("fence"),
        3,
        "the new writer's head includes the old writer's last commit"
    );
    b.commit(events(4..=4))
        .await
        .expect("the new writer continues");
    // Seq 4 continues the head a knew, so only the lease check stops it.
    match a.commit(events(4..=4)).await {
        Err(StoreError::Fenced { .. }) => {}
        other => panic!("the old writer is fenced after releasing, got {other:?}"),
    }
    assert_eq!(b.head().await.expect("head"), 4);
}

/// Holds a lock that blocks the store's next write of `events` (a table lock of the test's own
/// transaction), and says which backend is waiting on it once one does.
struct EventsBlocked {
    client: tokio_postgres::Client,
}

impl EventsBlocked {
    async fn hold(url: &str, schema: &str) -> Self {
        let client = raw_client(url).await.expect("connect");
        client
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE \"{schema}\".events IN SHARE MODE"
            ))
            .await
            .expect("lock the events table");
        Self { client }
    }

    /// The pid of the backend waiting for the lock (the store's writer, in its transaction).
    async fn waiter(&self, schema: &str) -> i32 {
        let query = format!(
            "SELECT pid FROM pg_locks
             WHERE NOT granted AND relation = '\"{schema}\".events'::regclass"
        );
        let deadline = Instant::now() + PATIENCE;
        loop {
            let row = self.client.query_opt(&query, &[]).await.expect("pg_locks");
            if let Some(row) = row {
                return row.get(0);
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting: the writer waits for the events table"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn release(self) {
        self.client.batch_execute("COMMIT").await.expect("unlock");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_the_old_writers_commit_in_flight_and_then_sees_it() {
    let Some(url) = postgres_url() else { return };
    let schemas = Schemas::new(&url);
    let schema = schemas.make();
    let (a, b) = (open(&url, &schema).await, open(&url, &schema).await);
    let lease = a
        .try_acquire_lease("node-a", "a:1", SETUP_TTL)
        .await
        .expect("acquire")
        .expect("granted");
    a.fence(lease.epoch).await.expect("fence");
    a.commit(events(1..=1)).await.expect("commit");

    // a's next commit passes the lease check (and holds the lease row) and then waits.
    let blocked = EventsBlocked::hold(&url, &schema).await;
    let in_flight = {
        let a = Arc::clone(&a);
        tokio::spawn(async move { a.commit(events(2..=2)).await })
    };
    blocked.waiter(&schema).await;
    // Meanwhile the lease expires, and b tries to take it over: it must wait for a's commit.
    wait_for_expiry(&b).await;
    let takeover = {
        let b = Arc::clone(&b);
        tokio::spawn(async move { b.try_acquire_lease("node-b", "b:1", TTL).await })
    };
    let observer = raw_client(&url).await.expect("connect");
    wait_until("the takeover waits for the lease row", || async {
        observer
            .query_opt(
                "SELECT 1 FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO writer_lease%'
                   AND application_name = $1",
                &[&format!("handoff lease {schema}")],
            )
            .await
            .expect("pg_stat_activity")
            .is_some()
    })
    .await;
    assert!(!takeover.is_finished(), "the takeover did not wait");

    blocked.release().await;
    in_flight
        .await
        .expect("task")
        .expect("the commit in flight, checked under a live lease, lands");
    let taken = takeover
        .await
        .expect("task")
        .expect("acquire")
        .expect("the lease is taken once the commit is done");
    assert_eq!(taken.epoch, lease.epoch + 1);
    assert_eq!(
        b.fence(taken.epoch).await.expect("fence"),
        2,
        "the new writer sees the commit it waited for"
    );
    assert!(matches!(
        a.commit(events(3..=3)).await,
        Err(StoreError::Fenced { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_connection_is_killed_fails_and_the_next_one_works() {
    let Some(url) = postgres_url() else { return };
    let schemas = Schemas::new(&url);
    let schema = schemas.make();
    let store = open(&url, &schema).await;
    store.commit(events(1..=1)).await.expect("commit");

    // Killed in the middle of a commit: that commit fails, whatever the timing.
    let blocked = EventsBlocked::hold(&url, &schema).await;
    let in_flight = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.commit(events(2..=2)).await })
    };
    let pid = blocked.waiter(&schema).await;
    let killer = raw_client(&url).await.expect("connect");
    killer
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate the writer's backend");
    match in_flight.await.expect("task") {
        Err(StoreError::Backend(reason)) => assert!(
            reason.contains("connection"),
            "the error says the connection was lost: {reason}"
        ),
        other => panic!("a commit whose connection died must fail, got {other:?}"),
    }
    blocked.release().await;
    store
        .commit(events(2..=2))
        .await
        .expect("the next commit reconnects and lands");
    assert_eq!(store.head().await.expect("head"), 2);

    // Killed while idle: the next commit may notice or not, but never panics, and the one
    // after it lands.
    let pid: i32 = killer
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("handoff writer {schema}")],
        )
        .await
        .expect("the writer's backend")
        .get(0);
    killer
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate the writer's backend");
    match store.commit(events(3..=3)).await {
        Ok(()) => store.commit(events(4..=4)).await.expect("commit"),
        Err(StoreError::Backend(_)) => store.commit(events(3..=4)).await.expect("commit"),
        Err(other) => panic!("unexpected error after the writer was killed: {other}"),
    }
    assert_eq!(store.head().await.expect("head"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_their_connections_being_killed() {
    let Some(url) = postgres_url() else { return };
    let schemas = Schemas::new(&url);
    let schema = schemas.make();
    let store = open(&url, &schema).await;
    store.commit(events(1..=3)).await.expect("commit");
    // Every read connection made.
    for _ in 0..8 {
        store.events_after(0, 10).await.expect("read");
    }
    let killer = raw_client(&url).await.expect("connect");
    let killed = killer
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("handoff reader {schema}")],
        )
        .await
        .expect("terminate the readers");
    assert!(!killed.is_empty(), "the readers were found");
    // Each broken connection fails at most the read it was given, then is made again.
    let mut failures = 0;
    let mut good = 0;
    while good < 8 {
        match store.events_after(0, 10).await {
            Ok(read) => {
                assert_eq!(read.len(), 3);
                good += 1;
            }
            Err(StoreError::Backend(_)) => failures += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
        assert!(
            failures <= killed.len(),
            "a broken read connection is not replaced"
        );
    }
}

/// A schema at version 1 is not moved to 2 while a node of the older build holds the writer
/// lease (it would write the dropped table with its next offer): the open fails naming the
/// holder, and succeeds once the lease has lapsed.
#[tokio::test]
async fn a_version_1_schema_is_not_migrated_under_a_live_writer_of_the_older_build() {
    let Some(url) = postgres_url() else { return };
    let schemas = Schemas::new(&url);
    let schema = schemas.make();
    drop(open(&url, &schema).await);
    let client = raw_client(&url).await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE TABLE \"{schema}\".offer_deadlines (
                 interaction_id TEXT COLLATE \"C\" PRIMARY KEY,
                 agent_id TEXT NOT NULL,
                 expires_ms BIGINT NOT NULL
             );
             UPDATE \"{schema}\".handoff_schema SET version = 1;
             INSERT INTO \"{schema}\".writer_lease (name, holder, address, epoch, expires_at)
             VALUES ('writer', 'old-node-7', 'http://127.0.0.1:9', 3,
                     clock_timestamp() + interval '1 hour');"
        ))
        .await
        .expect("make the schema a version 1 one with a live writer");

    let Err(refused) = open_postgres(&url, &schema, Durability::Fsync).await else {
        panic!("a live writer of the older build must stop the migration");
    };
    let text = refused.to_string();
    assert!(
        text.contains("old-node-7") && text.contains("stop the nodes of the older build"),
        "the error names the holder and what to do: {text}"
    );
    let still: i32 = client
        .query_one(
            &format!("SELECT version FROM \"{schema}\".handoff_schema"),
            &[],
        )
        .await
        .expect("version")
        .get(0);
    assert_eq!(still, 1, "nothing was migrated");

    client
        .batch_execute(&format!(
            "UPDATE \"{schema}\".writer_lease
             SET expires_at = clock_timestamp() - interval '1 second'"
        ))
        .await
        .expect("the old writer's lease lapses");
    drop(open(&url, &schema).await);
    let version: i32 = client
        .query_one(
            &format!("SELECT version FROM \"{schema}\".handoff_schema"),
            &[],
        )
        .await
        .expect("version")
        .get(0);
    assert_eq!(
        version, 2,
        "moved to version 2 once no older writer holds the lease"
    );
}
