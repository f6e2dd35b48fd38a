//! Pipelined commits and a failing store: a failed batch fails its callers, every batch in
//! flight behind it that was built on its events fails too, and the committed state, the log
//! and the next `seq` stay as if none of them had been tried.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use handoff_api::engine::EngineError;
use handoff_api::{ApiSettings, Running};
use handoff_core::{AgentId, AgentProfile, Capacity, Command, PresenceSource, PresenceStatus};
use handoff_store::{
    Batch, DeliveryAttempt, Durability, IdempotencyRecord, IntegrationRecord, KeyRecord,
    OutboxRetry, SeqNumber, Store, StoreEngine, StoreError, StoredEvent,
};
use tokio::sync::oneshot;

use crate::support::{next_of_type, spawn_app_on_store, PATIENCE};

/// The real store, except that the next batch with events can be held and then failed
/// without being written (`hold_next`), or written and then held before the engine hears that
/// it is durable (`hold_ack`).
struct FlakyStore {
    inner: Arc<dyn Store>,
    hold_next: Mutex<Option<oneshot::Receiver<()>>>,
    hold_ack: Mutex<Option<oneshot::Receiver<()>>>,
    calls: AtomicUsize,
}

impl FlakyStore {
    fn new(inner: Arc<dyn Store>) -> FlakyStore {
        FlakyStore {
            inner,
            hold_next: Mutex::new(None),
            hold_ack: Mutex::new(None),
            calls: AtomicUsize::new(0),
        }
    }
}

#[async_trait::async_trait]
impl Store for FlakyStore {
    async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let gate = if batch.events.is_empty() {
            None
        } else {
            self.hold_next.lock().unwrap().take()
        };
        if let Some(gate) = gate {
            let _ = gate.await;
            return Err(StoreError::Backend("injected failure".to_owned()));
        }
        let ack_gate = if batch.events.is_empty() {
            None
        } else {
            self.hold_ack.lock().unwrap().take()
        };
        let written = self.inner.commit(batch).await;
        if let Some(gate) = ack_gate {
            let _ = gate.await;
        }
        written
    }
    async fn head(&self) -> Result<SeqNumber, StoreError> {
        self.inner.head().await
    }
    async fn events_after(
        &self,
        after: SeqNumber,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.events_after(after, limit).await
    }
    async fn agent_events_after(
        &self,
        agent_id: &str,
        after: SeqNumber,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.agent_events_after(agent_id, after, limit).await
    }
    async fn subject_events(&self, subject: &str) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.subject_events(subject).await
    }
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.keys().await
    }
    async fn acks(&self) -> Result<Vec<(String, SeqNumber)>, StoreError> {
        self.inner.acks().await
    }
    async fn idempotency_since(&self, since_ms: i64) -> Result<Vec<IdempotencyRecord>, StoreError> {
        self.inner.idempotency_since(since_ms).await
    }
    async fn purge_idempotency(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.inner.purge_idempotency(before_ms).await
    }
    async fn integrations(&self) -> Result<Vec<IntegrationRecord>, StoreError> {
        self.inner.integrations().await
    }
    async fn outbox_cursors(&self) -> Result<Vec<(String, SeqNumber)>, StoreError> {
        self.inner.outbox_cursors().await
    }
    async fn outbox_retries(&self, destination: &str) -> Result<Vec<OutboxRetry>, StoreError> {
        self.inner.outbox_retries(destination).await
    }
    async fn delivery_attempts(
        &self,
        destination: &str,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeliveryAttempt>, StoreError> {
        self.inner
            .delivery_attempts(destination, before_id, limit)
            .await
    }
}

fn upsert(id: &str) -> Command {
    Command::UpsertAgent {
        profile: AgentProfile {
            id: AgentId::parse(id).unwrap(),
            name: format!("Agent {id}"),
            address: None,
            skills: BTreeMap::new(),
            capacity: Capacity::Total(1),
        },
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_failed_commit_fails_every_batch_built_on_it_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let inner = handoff_store::open(StoreEngine::Sqlite {
        data_dir: dir.path().to_path_buf(),
        durability: Durability::Fsync,
    })
    .await
    .unwrap();
    let flaky = Arc::new(FlakyStore::new(inner.clone()));
    let running = Running::start(flaky.clone(), ApiSettings::default())
        .await
        .unwrap();
    let engine = running.state.engine.clone();
    let shared = running.state.shared.clone();

    engine.execute(upsert("before")).await.expect("a commit");
    let head = shared.head();
    assert!(head >= 1);

    // Batch N is held in the store, then fails.
    let (release, gate) = oneshot::channel();
    *flaky.hold_next.lock().unwrap() = Some(gate);
    let calls = flaky.calls.load(Ordering::SeqCst);
    let held = tokio::spawn({
        let engine = engine.clone();
        async move { engine.execute(upsert("lost")).await }
    });
    eventually("batch N reaches the store", || {
        flaky.calls.load(Ordering::SeqCst) == calls + 1
    })
    .await;
    // Batch N+1 is built on N (the agent exists only in the working state) and is handed to
    // the store while N is still in flight.
    let built_on = tokio::spawn({
        let engine = engine.clone();
        async move {
            engine
                .execute(Command::SetPresence {
                    agent: AgentId::parse("lost").unwrap(),
                    status: PresenceStatus::Available,
                    reason: None,
                    source: PresenceSource::Admin,
                })
                .await
        }
    });
    eventually("batch N+1 reaches the store while N is in flight", || {
        flaky.calls.load(Ordering::SeqCst) == calls + 2
    })
    .await;
    assert!(!held.is_finished() && !built_on.is_finished());
    release.send(()).unwrap();

    let held = held.await.unwrap();
    assert!(matches!(held, Err(EngineError::Store(_))), "{held:?}");
    let built_on = built_on.await.unwrap();
    assert!(
        matches!(built_on, Err(EngineError::Store(_))),
        "{built_on:?}"
    );

    // Nothing of N or N+1 is committed, and the working state was rebuilt: the agent is
    // unknown again and the next event continues the log at the same seq.
    assert_eq!(shared.head(), head);
    assert!(shared
        .state()
        .agent(&AgentId::parse("lost").unwrap())
        .is_none());
    let refused = engine
        .execute(Command::SetPresence {
            agent: AgentId::parse("lost").unwrap(),
            status: PresenceStatus::Available,
            reason: None,
            source: PresenceSource::Admin,
        })
        .await;
    assert!(
        matches!(refused, Err(EngineError::Refused(_))),
        "{refused:?}"
    );
    let after = engine.execute(upsert("after")).await.expect("a commit");
    assert_eq!(
        after.events.first().map(|(seq, _)| seq.get()),
        Some(head + 1)
    );
    let log = inner.events_after(0, 100).await.unwrap();
    assert_eq!(log.last().map(|e| e.seq), Some(shared.head()));
    assert!(log.iter().all(|e| e.subject != "lost"));
    running.shutdown().await;
}

/// A pop that is already durable in the log but not yet applied to the state readers see must
/// not reach a stream that catches up from the log: the agent would act on an interaction the
/// API does not know yet (seen under load as 404s and 403s on accept).
#[tokio::test]
async fn a_stream_catching_up_from_the_log_stops_at_what_the_api_can_already_read() {
    let flaky: Arc<Mutex<Option<Arc<FlakyStore>>>> = Arc::default();
    let app = spawn_app_on_store(handoff_api::ApiSettings::default(), |inner| {
        let wrapped = Arc::new(FlakyStore::new(inner));
        *flaky.lock().unwrap() = Some(wrapped.clone());
        wrapped
    })
    .await;
    let flaky = flaky.lock().unwrap().clone().unwrap();
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;

    // The offer is written to the log, and the store is slow to say so.
    let (release, gate) = oneshot::channel();
    *flaky.hold_ack.lock().unwrap() = Some(gate);
    let created = tokio::spawn({
        let (base, ivr) = (app.base.clone(), ivr.clone());
        async move {
            reqwest::Client::new()
                .post(format!("{base}/v1/interactions"))
                .bearer_auth(ivr)
                .json(&serde_json::json!({"target": {"agent": "alice"}}))
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    });
    let inner = flaky.inner.clone();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let logged = inner.agent_events_after("alice", 0, 100).await.unwrap();
        if logged.iter().any(|e| e.event_type == "interaction.offered") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the offer never reached the log"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A stream opened now catches up from the log. A ping answered proves its catch-up is
    // over: alice's earlier events may come before it, the held offer may not.
    let mut ws = app.stream("alice", &alice, None).await;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::Ping(b"caught-up?".to_vec().into()))
        .await
        .unwrap();
    loop {
        let frame = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the pong arrives")
            .expect("the stream is open")
            .expect("a frame");
        match frame {
            Message::Pong(_) => break,
            Message::Text(text) => assert!(
                !text.contains("interaction.offered"),
                "sent before the API could read it: {text}"
            ),
            _ => {}
        }
    }

    // Once the commit is acknowledged, the pop comes live, and the API knows it.
    release.send(()).unwrap();
    let created = created.await.unwrap();
    let id = created["id"].as_str().expect("created").to_owned();
    let pop = next_of_type(&mut ws, "interaction.offered").await;
    assert_eq!(pop["subject"], id.as_str());
    let (status, read) = app.get(&format!("/v1/interactions/{id}"), &alice).await;
    assert_eq!(status, 200, "{read}");
    app.stop().await;
}
