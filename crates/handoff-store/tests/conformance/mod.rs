//! The conformance suite: what every `Store` backend must do, as async cases that a backend's
//! own tests run through a `Harness` (`run_all`, or one case at a time). A module of the
//! store's integration tests (`mod conformance;` in `conformance_sqlite.rs` and
//! `conformance_postgres.rs`), not of the library: only tests use it.
//!
//! The cases panic with a message on the first difference, like any test. They spawn tasks, so
//! run them on a multi-threaded tokio runtime. Reads whose order the trait leaves open (keys,
//! acks, idempotency records) are sorted before comparing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use handoff_store::{
    Batch, DeliveryAttempt, IdempotencyRecord, IntegrationRecord, KeyRecord, OutboxRetry,
    SeqNumber, Store, StoreError, StoredEvent,
};

/// Opens stores for the cases.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    /// A new, empty store that shares nothing with any other store this harness opened.
    async fn fresh(&self) -> Arc<dyn Store>;
    /// Drops `store` (the cases pass their only handle) and opens the same data again, as a
    /// restarted process would.
    async fn reopen(&self, store: Arc<dyn Store>) -> Arc<dyn Store>;
}

/// Runs every case, each on its own fresh store.
pub async fn run_all(h: &dyn Harness) {
    macro_rules! run {
        ($($case:ident),* $(,)?) => {$(
            // Shown with the failure, so the failing case is named even when its panic is
            // raised in a spawned task.
            eprintln!("conformance: {}", stringify!($case));
            $case(h).await;
        )*};
    }
    run!(
        empty_store,
        events_round_trip,
        events_paging,
        seq_out_of_order_refused,
        refused_batch_writes_nothing,
        acks_monotonic,
        idempotency_records,
        keys,
        survives_reopen,
        concurrent_commits,
        concurrent_racing_commits,
        refused_batch_fails_only_itself,
        failing_batch_is_undone_alone_or_grouped,
        event_agents_are_kept_once_in_order_and_must_be_readable,
        reads_beside_writes,
        integrations_are_put_replaced_and_deleted,
        outbox_cursors_retries_and_attempts,
        outbox_survives_reopen_and_commits_with_events,
    );
}

/// An empty store has head 0, reads nothing, and takes an empty batch without change.
pub async fn empty_store(h: &dyn Harness) {
    let s = h.fresh().await;
    assert_eq!(
        s.head().await.expect("head"),
        0,
        "an empty store's head is 0"
    );
    assert_eq!(
        snapshot(&*s).await,
        Snapshot::default(),
        "a fresh store holds nothing"
    );
    assert!(
        s.agent_events_after("agent-a", 0, 100)
            .await
            .expect("agent_events_after")
            .is_empty(),
        "an empty store has no events for any agent"
    );
    assert!(
        s.subject_events("int-1")
            .await
            .expect("subject_events")
            .is_empty(),
        "an empty store has no events for any subject"
    );
    assert_eq!(
        s.purge_idempotency(i64::MAX)
            .await
            .expect("purge_idempotency"),
        0,
        "purging an empty store deletes nothing"
    );
    commit(&*s, Batch::default(), "an empty batch").await;
    assert_eq!(
        snapshot(&*s).await,
        Snapshot::default(),
        "an empty batch writes nothing"
    );
}

/// Events come back exactly as written, whichever read finds them.
pub async fn events_round_trip(h: &dyn Harness) {
    let s = h.fresh().await;
    let first = vec![
        StoredEvent {
            seq: 1,
            event_type: "interaction.offered".into(),
            subject: "int-1".into(),
            time_ms: 1_700_000_000_123,
            // Not in sorted order: the order given is the order kept.
            agents: vec!["agent-b".into(), "agent-a".into()],
            payload:
                "{\"caller\":\"Zoë Ünal\",\"note\":\"日本語のメモ 🚀\",\"q\":\"\\\"x\\\"\\n\"}"
                    .into(),
        },
        StoredEvent {
            seq: 2,
            event_type: "agent.state_changed".into(),
            subject: "agent-a".into(),
            time_ms: 0,
            agents: vec![],
            payload: String::new(),
        },
        StoredEvent {
            seq: 3,
            event_type: "interaction.accepted".into(),
            subject: "int-1".into(),
            time_ms: -5,
            agents: vec!["agent-a".into()],
            payload: "Ω\ttab\r\nline".into(),
        },
    ];
    let second = vec![StoredEvent {
        seq: 4,
        event_type: "interaction.offered".into(),
        subject: "int-2".into(),
        time_ms: i64::MAX,
        agents: vec!["agent-c".into(), "agent-a".into(), "agent-b".into()],
        payload: "ünïcödé".repeat(1000),
    }];
    commit(&*s, events_batch(first.clone()), "the first batch").await;
    commit(&*s, events_batch(second.clone()), "the second batch").await;
    let all: Vec<StoredEvent> = first.iter().chain(&second).cloned().collect();
    let pick = |seqs: &[SeqNumber]| -> Vec<StoredEvent> {
        seqs.iter()
            .map(|&seq| all[seq as usize - 1].clone())
            .collect()
    };

    assert_eq!(
        s.head().await.expect("head"),
        4,
        "head is the last seq written"
    );
    assert_eq!(
        s.events_after(0, 100).await.expect("events_after"),
        all,
        "the whole log"
    );
    assert_eq!(
        s.events_after(2, 100).await.expect("events_after"),
        pick(&[3, 4]),
        "after 2"
    );
    assert!(
        s.events_after(4, 100)
            .await
            .expect("events_after")
            .is_empty(),
        "after the head"
    );
    assert!(
        s.events_after(SeqNumber::MAX, 100)
            .await
            .expect("events_after")
            .is_empty(),
        "after the largest seq there is"
    );
    for (agent, seqs) in [
        ("agent-a", &[1, 3, 4][..]),
        ("agent-b", &[1, 4][..]),
        ("agent-c", &[4][..]),
        ("nobody", &[][..]),
    ] {
        assert_eq!(
            s.agent_events_after(agent, 0, 100)
                .await
                .expect("agent_events_after"),
            pick(seqs),
            "the events for {agent}"
        );
    }
    assert_eq!(
        s.agent_events_after("agent-a", 1, 100)
            .await
            .expect("agent_events_after"),
        pick(&[3, 4]),
        "agent-a's events after 1"
    );
    for (subject, seqs) in [
        ("int-1", &[1, 3][..]),
        ("agent-a", &[2][..]),
        ("int-2", &[4][..]),
        ("int-9", &[][..]),
    ] {
        assert_eq!(
            s.subject_events(subject).await.expect("subject_events"),
            pick(seqs),
            "the events about {subject}"
        );
    }
}

/// `limit` pages through the log and through an agent's events without skipping or repeating.
pub async fn events_paging(h: &dyn Harness) {
    let s = h.fresh().await;
    let all: Vec<StoredEvent> = (1..=25)
        .map(|seq| {
            let agent = if seq % 2 == 0 { "even" } else { "odd" };
            event(
                seq,
                &format!("int-{}", seq % 3),
                &[agent],
                &format!("payload {seq}"),
            )
        })
        .collect();
    for range in [0..10, 10..11, 11..25] {
        commit(
            &*s,
            events_batch(all[range].to_vec()),
            "a batch of the paged log",
        )
        .await;
    }

    let (pages, read) = page_through(|after| s.events_after(after, 10)).await;
    assert_eq!(
        pages,
        vec![10, 10, 5],
        "page sizes of the log with limit 10"
    );
    assert_eq!(read, all, "the log read page by page");

    let (pages, read) = page_through(|after| s.agent_events_after("even", after, 3)).await;
    assert_eq!(
        pages,
        vec![3, 3, 3, 3],
        "page sizes of agent even's events with limit 3"
    );
    let even: Vec<StoredEvent> = all.iter().filter(|e| e.seq % 2 == 0).cloned().collect();
    assert_eq!(read, even, "agent even's events read page by page");

    assert!(
        s.events_after(0, 0).await.expect("events_after").is_empty(),
        "limit 0"
    );
    assert!(
        s.agent_events_after("odd", 0, 0)
            .await
            .expect("agent_events_after")
            .is_empty(),
        "limit 0 for an agent"
    );
    assert_eq!(
        s.events_after(0, usize::MAX).await.expect("events_after"),
        all,
        "the largest limit reads everything"
    );
}

/// A batch that does not continue the log is refused with `SeqOutOfOrder`, and later valid
/// batches still land.
pub async fn seq_out_of_order_refused(h: &dyn Harness) {
    let s = h.fresh().await;
    let refused = |seqs: &[SeqNumber]| {
        events_batch(
            seqs.iter()
                .map(|&seq| event(seq, "int-x", &["agent-x"], "refused"))
                .collect(),
        )
    };

    expect_refused(
        s.commit(refused(&[2])).await,
        1,
        2,
        "a first batch starting at 2",
    );
    expect_refused(s.commit(refused(&[0])).await, 1, 0, "seq 0");
    let good = vec![
        event(1, "int-1", &["agent-a"], "one"),
        event(2, "int-1", &[], "two"),
    ];
    commit(&*s, events_batch(good.clone()), "seqs 1 and 2").await;
    expect_refused(
        s.commit(refused(&[3, 5])).await,
        4,
        5,
        "a gap inside a batch",
    );
    expect_refused(s.commit(refused(&[4])).await, 3, 4, "a gap before a batch");
    expect_refused(s.commit(refused(&[2])).await, 3, 2, "a seq already written");
    expect_refused(
        s.commit(refused(&[1, 2, 3])).await,
        3,
        1,
        "a batch overlapping the log",
    );
    expect_refused(
        s.commit(refused(&[3, 3])).await,
        4,
        3,
        "a seq repeated inside a batch",
    );
    expect_refused(
        s.commit(refused(&[3, 2])).await,
        4,
        2,
        "seqs going backwards",
    );

    assert_eq!(
        s.head().await.expect("head"),
        2,
        "refused batches do not move the head"
    );
    assert_eq!(
        s.events_after(0, 100).await.expect("events_after"),
        good,
        "only the good batch"
    );
    assert!(
        s.agent_events_after("agent-x", 0, 100)
            .await
            .expect("agent_events_after")
            .is_empty(),
        "refused batches leave no events for their agents"
    );
    assert!(
        s.subject_events("int-x")
            .await
            .expect("subject_events")
            .is_empty(),
        "refused batches leave no events for their subject"
    );

    let third = event(3, "int-3", &["agent-a"], "three");
    commit_one(&*s, third.clone(), "seq 3 after the refusals").await;
    assert_eq!(
        s.head().await.expect("head"),
        3,
        "the log goes on after refusals"
    );
    assert_eq!(
        s.events_after(2, 100).await.expect("events_after"),
        vec![third],
        "the batch after the refusals"
    );
}

/// A batch is all or nothing: a refused one writes none of its parts, not even those that have
/// nothing to do with the log, and the same batch made valid writes all of them.
pub async fn refused_batch_writes_nothing(h: &dyn Harness) {
    let s = h.fresh().await;
    let setup = Batch {
        events: vec![event(1, "int-1", &["agent-a"], "one")],
        acks: vec![("agent-a".into(), 1)],
        idempotency: vec![idempotency("key-1", "idem-1", 1_000, 1)],
        keys_added: vec![key("key-1", "admin", None, 1)],
        ..Batch::default()
    };
    commit(&*s, setup, "the setup batch").await;
    let before = snapshot(&*s).await;

    let mut batch = Batch {
        // The first event alone would continue the log: the refusal must undo it too.
        events: vec![
            event(2, "int-2", &["agent-b"], "two"),
            event(4, "int-2", &["agent-b"], "x"),
        ],
        acks: vec![("agent-b".into(), 2), ("agent-z".into(), 5)],
        idempotency: vec![idempotency("key-1", "idem-2", 2_000, 2)],
        keys_added: vec![key("key-2", "agent", Some("agent-b"), 2)],
        keys_revoked: vec!["key-1".into()],
        acks_deleted: vec!["agent-a".into()],
        integrations_put: vec![integration("webhook", "w1", "{}", 7)],
        outbox_cursors: vec![(OUTBOX_A.into(), 2)],
        outbox_retries_set: vec![retry(OUTBOX_A, 1, 1, 9_000)],
        delivery_attempts: vec![attempt(OUTBOX_A, 1, 1, "failed", 8_000)],
        ..Batch::default()
    };
    expect_refused(
        s.commit(batch.clone()).await,
        3,
        4,
        "a batch with a gap after its first event",
    );
    assert_eq!(
        snapshot(&*s).await,
        before,
        "a refused batch writes none of its parts"
    );
    assert!(
        s.agent_events_after("agent-b", 0, 100)
            .await
            .expect("agent_events_after")
            .is_empty(),
        "a refused batch leaves no events for its agents"
    );

    batch.events[1].seq = 3;
    commit(&*s, batch.clone(), "the same batch with its seqs fixed").await;
    let after = snapshot(&*s).await;
    let mut events = before.events.clone();
    events.extend(batch.events.iter().cloned());
    assert_eq!(after.events, events, "every event of the batch is written");
    assert_eq!(after.head, 3, "the head moves to the batch's last event");
    assert_eq!(
        after.acks,
        vec![("agent-b".to_string(), 2), ("agent-z".to_string(), 5)],
        "the batch's acks are written and its ack deletion applied"
    );
    assert_eq!(
        after.idempotency,
        vec![
            idempotency("key-1", "idem-1", 1_000, 1),
            idempotency("key-1", "idem-2", 2_000, 2)
        ],
        "the batch's idempotency record is written"
    );
    assert_eq!(
        after.keys,
        vec![key("key-2", "agent", Some("agent-b"), 2)],
        "the batch's key is added and the revoked one gone"
    );
    assert_eq!(
        after.integrations,
        vec![integration("webhook", "w1", "{}", 7)]
    );
    assert_eq!(after.outbox_cursors, vec![(OUTBOX_A.to_string(), 2)]);
    assert_eq!(after.outbox_retries, vec![retry(OUTBOX_A, 1, 1, 9_000)]);
    assert_eq!(
        after.delivery_attempts.len(),
        1,
        "the batch's attempt is recorded"
    );
}

/// An ack cursor only moves forward; deleting it forgets it.
pub async fn acks_monotonic(h: &dyn Harness) {
    let s = h.fresh().await;
    let ack = |pairs: &[(&str, SeqNumber)]| Batch {
        acks: pairs.iter().map(|&(a, seq)| (a.to_string(), seq)).collect(),
        ..Batch::default()
    };
    let expect = |pairs: &[(&str, SeqNumber)]| -> Vec<(String, SeqNumber)> {
        pairs.iter().map(|&(a, seq)| (a.to_string(), seq)).collect()
    };

    commit(&*s, ack(&[("agent-a", 5), ("agent-b", 3)]), "first acks").await;
    assert_eq!(
        sorted_acks(&*s).await,
        expect(&[("agent-a", 5), ("agent-b", 3)]),
        "first acks"
    );
    commit(&*s, ack(&[("agent-a", 4)]), "a lower ack").await;
    assert_eq!(
        sorted_acks(&*s).await,
        expect(&[("agent-a", 5), ("agent-b", 3)]),
        "a lower ack does not move the cursor back"
    );
    commit(&*s, ack(&[("agent-a", 7)]), "a higher ack").await;
    assert_eq!(
        sorted_acks(&*s).await,
        expect(&[("agent-a", 7), ("agent-b", 3)]),
        "a higher ack moves the cursor"
    );
    commit(
        &*s,
        ack(&[("agent-c", 2), ("agent-c", 9), ("agent-c", 4)]),
        "acks in one batch",
    )
    .await;
    assert_eq!(
        sorted_acks(&*s).await,
        expect(&[("agent-a", 7), ("agent-b", 3), ("agent-c", 9)]),
        "within one batch the largest ack wins too"
    );
    let delete = Batch {
        acks_deleted: vec!["agent-b".into(), "never-acked".into()],
        ..Batch::default()
    };
    commit(&*s, delete, "deleting acks").await;
    assert_eq!(
        sorted_acks(&*s).await,
        expect(&[("agent-a", 7), ("agent-c", 9)]),
        "a deleted cursor is gone; deleting one that never existed is no error"
    );
    commit(&*s, ack(&[("agent-b", 1)]), "an ack after deletion").await;
    assert_eq!(
        sorted_acks(&*s).await,
        expect(&[("agent-a", 7), ("agent-b", 1), ("agent-c", 9)]),
        "a deleted cursor starts again from scratch"
    );
}

/// Idempotency records read back by age, and purging removes only the older ones.
pub async fn idempotency_records(h: &dyn Harness) {
    let s = h.fresh().await;
    let r1 = idempotency("key-1", "idem-1", 1_000, 1);
    // The same Idempotency-Key from another caller is another record.
    let r2 = idempotency("key-2", "idem-1", 2_000, 2);
    let r3 = idempotency("key-1", "idem-2", 3_000, 3);
    let batch = |records: &[&IdempotencyRecord]| Batch {
        idempotency: records.iter().map(|&r| r.clone()).collect(),
        ..Batch::default()
    };
    commit(&*s, batch(&[&r1, &r2]), "two idempotency records").await;
    commit(&*s, batch(&[&r3]), "a third idempotency record").await;

    let since = |ms: i64| {
        let s = Arc::clone(&s);
        async move { sorted_idempotency(&*s, ms).await }
    };
    assert_eq!(
        since(i64::MIN).await,
        vec![r1.clone(), r2.clone(), r3.clone()],
        "all records"
    );
    assert_eq!(
        since(2_000).await,
        vec![r2.clone(), r3.clone()],
        "since is inclusive"
    );
    assert!(
        since(3_001).await.is_empty(),
        "nothing since after the newest"
    );
    // The same key again, after its record expired: the new record takes its place.
    let r1_again = idempotency("key-1", "idem-1", 4_000, 4);
    commit(&*s, batch(&[&r1_again]), "a record under an expired key").await;
    assert_eq!(
        since(i64::MIN).await,
        vec![r2.clone(), r3.clone(), r1_again.clone()],
        "the new record replaces the expired one"
    );
    commit(
        &*s,
        batch(&[&r1]),
        "the first record back, for the purges below",
    )
    .await;

    assert_eq!(
        s.purge_idempotency(2_000).await.expect("purge"),
        1,
        "only the older record"
    );
    assert_eq!(
        since(i64::MIN).await,
        vec![r2.clone(), r3.clone()],
        "records after a purge"
    );
    assert_eq!(
        s.purge_idempotency(2_000).await.expect("purge"),
        0,
        "a repeated purge"
    );
    assert_eq!(
        s.purge_idempotency(i64::MAX).await.expect("purge"),
        2,
        "purging everything"
    );
    assert!(
        since(i64::MIN).await.is_empty(),
        "no records after purging everything"
    );
}

/// Keys are added, listed and revoked.
pub async fn keys(h: &dyn Harness) {
    let s = h.fresh().await;
    let admin = key("key-admin", "admin", None, 1);
    let mut agent = key("key-agent", "agent", Some("agent-a"), 2);
    agent.name = "Zoë's phone 📱".into();
    let ivr = key("key-ivr", "ivr", None, 3);

    let add = Batch {
        keys_added: vec![admin.clone(), agent.clone()],
        ..Batch::default()
    };
    commit(&*s, add, "adding two keys").await;
    assert_eq!(
        sorted_keys(&*s).await,
        vec![admin.clone(), agent.clone()],
        "two keys"
    );
    let revoke = Batch {
        keys_revoked: vec!["key-admin".into(), "no-such-key".into()],
        ..Batch::default()
    };
    commit(&*s, revoke, "revoking a key").await;
    assert_eq!(
        sorted_keys(&*s).await,
        vec![agent.clone()],
        "a revoked key is gone; revoking an unknown one is no error"
    );
    commit(
        &*s,
        Batch {
            keys_added: vec![ivr.clone()],
            ..Batch::default()
        },
        "a third key",
    )
    .await;
    assert_eq!(
        sorted_keys(&*s).await,
        vec![agent, ivr],
        "keys after another add"
    );
}

/// Everything committed is there after a reopen, and the log goes on from the same head.
pub async fn survives_reopen(h: &dyn Harness) {
    let s = h.fresh().await;
    let first = Batch {
        events: vec![
            event(1, "int-1", &["agent-a", "agent-b"], "één"),
            event(2, "int-1", &[], "two"),
            event(3, "int-2", &["agent-b"], "three"),
        ],
        acks: vec![("agent-a".into(), 1), ("agent-b".into(), 3)],
        idempotency: vec![
            idempotency("key-1", "idem-1", 1_000, 1),
            idempotency("key-1", "idem-2", 2_000, 2),
        ],
        keys_added: vec![
            key("key-1", "admin", None, 1),
            key("key-2", "agent", Some("agent-a"), 2),
        ],
        ..Batch::default()
    };
    let second = Batch {
        events: vec![event(4, "int-2", &["agent-a"], "four")],
        acks: vec![("agent-a".into(), 4)],
        keys_revoked: vec!["key-1".into()],
        ..Batch::default()
    };
    commit(&*s, first, "the first batch").await;
    commit(&*s, second, "the second batch").await;
    let before = snapshot(&*s).await;
    let agent_b = s
        .agent_events_after("agent-b", 0, 100)
        .await
        .expect("agent_events_after");
    let int_2 = s.subject_events("int-2").await.expect("subject_events");
    assert_eq!(before.head, 4, "head before the reopen");

    let s = h.reopen(s).await;
    assert_eq!(
        snapshot(&*s).await,
        before,
        "everything is there after a reopen"
    );
    assert_eq!(
        s.agent_events_after("agent-b", 0, 100)
            .await
            .expect("agent_events_after"),
        agent_b,
        "an agent's events after a reopen"
    );
    assert_eq!(
        s.subject_events("int-2").await.expect("subject_events"),
        int_2,
        "a subject's events after a reopen"
    );
    expect_refused(
        s.commit(events_batch(vec![event(4, "int-3", &[], "again")]))
            .await,
        5,
        4,
        "a seq written before the reopen",
    );
    let fifth = event(5, "int-3", &["agent-c"], "five");
    commit_one(&*s, fifth.clone(), "the batch after a reopen").await;
    assert_eq!(
        s.purge_idempotency(1_500).await.expect("purge_idempotency"),
        1,
        "a purge after a reopen"
    );

    let s = h.reopen(s).await;
    assert_eq!(
        s.head().await.expect("head"),
        5,
        "head after a second reopen"
    );
    let mut events = before.events.clone();
    events.push(fifth);
    assert_eq!(
        s.events_after(0, 100).await.expect("events_after"),
        events,
        "the log after a second reopen"
    );
    assert_eq!(
        sorted_idempotency(&*s, i64::MIN).await,
        vec![idempotency("key-1", "idem-2", 2_000, 2)],
        "a purge survives a reopen"
    );
}

/// Many tasks committing at once, each seq taken under a lock held across its commit: every
/// event lands, in order, whatever the backend groups.
pub async fn concurrent_commits(h: &dyn Harness) {
    const TASKS: usize = 32;
    const PER_TASK: usize = 20;
    let s = h.fresh().await;
    let last = Arc::new(tokio::sync::Mutex::new(0 as SeqNumber));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let s = Arc::clone(&s);
            let last = Arc::clone(&last);
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let mut last = last.lock().await;
                    let seq = *last + 1;
                    let e = event(
                        seq,
                        &format!("int-{t}"),
                        &[&format!("agent-{t}")],
                        &format!("{t}:{i}"),
                    );
                    if let Err(err) = s.commit(events_batch(vec![e])).await {
                        panic!("task {t}, event {i} (seq {seq}): commit failed: {err}");
                    }
                    *last = seq;
                }
            })
        })
        .collect();
    for task in tasks {
        join(task).await;
    }
    check_task_logs(&*s, TASKS, PER_TASK).await;
}

/// Many tasks committing at once with seqs taken without waiting for each other, so batches
/// reach the store out of order: the early ones are refused, and retried until they fit.
/// Refusals must never corrupt the log or a later batch.
pub async fn concurrent_racing_commits(h: &dyn Harness) {
    const TASKS: usize = 16;
    const PER_TASK: usize = 10;
    let s = h.fresh().await;
    let next = Arc::new(AtomicU64::new(1));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let s = Arc::clone(&s);
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let seq = next.fetch_add(1, Ordering::SeqCst);
                    let e = event(seq, &format!("int-{t}"), &[&format!("agent-{t}")], &format!("{t}:{i}"));
                    loop {
                        match s.commit(events_batch(vec![e.clone()])).await {
                            Ok(()) => break,
                            Err(StoreError::SeqOutOfOrder { expected, got }) => {
                                assert_eq!(got, seq, "the refusal names the batch's seq");
                                // Only this task writes `seq`, so the log can only be behind it.
                                assert!(
                                    expected < got,
                                    "seq {got} refused with {expected} expected: it was written twice"
                                );
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            Err(err) => panic!("task {t}, event {i} (seq {seq}): {err}"),
                        }
                    }
                }
            })
        })
        .collect();
    let all = async {
        for task in tasks {
            join(task).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .is_err()
    {
        panic!("racing commits did not all land within 120 s");
    }
    check_task_logs(&*s, TASKS, PER_TASK).await;
}

/// Valid and refused batches committed at the same moment, likely into one group: each refused
/// batch fails alone, and every valid one lands.
pub async fn refused_batch_fails_only_itself(h: &dyn Harness) {
    const EACH: usize = 16;
    let s = h.fresh().await;
    commit_one(&*s, event(1, "int-1", &[], "one"), "seq 1").await;
    let start = Arc::new(tokio::sync::Barrier::new(2 * EACH + 1));
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for t in 0..EACH {
        let (s1, start1) = (Arc::clone(&s), Arc::clone(&start));
        good.push(tokio::spawn(async move {
            let batch = Batch {
                acks: vec![(format!("good-{t:02}"), t as SeqNumber)],
                ..Batch::default()
            };
            start1.wait().await;
            s1.commit(batch).await
        }));
        let (s2, start2) = (Arc::clone(&s), Arc::clone(&start));
        bad.push(tokio::spawn(async move {
            let got = 1_000 + t as SeqNumber;
            let batch = Batch {
                events: vec![event(got, "int-bad", &["agent-bad"], "bad")],
                acks: vec![(format!("bad-{t:02}"), 1)],
                ..Batch::default()
            };
            start2.wait().await;
            (got, s2.commit(batch).await)
        }));
    }
    let (s3, start3) = (Arc::clone(&s), Arc::clone(&start));
    let second = event(2, "int-1", &["agent-a"], "two");
    let second_task = {
        let batch = events_batch(vec![second.clone()]);
        tokio::spawn(async move {
            start3.wait().await;
            s3.commit(batch).await
        })
    };

    for (t, task) in good.into_iter().enumerate() {
        if let Err(e) = join(task).await {
            panic!("valid batch {t} failed beside refused ones: {e}");
        }
    }
    for task in bad {
        match join(task).await {
            // 2 or 3: the refused batch may have been checked before or after seq 2 landed.
            (got, Err(StoreError::SeqOutOfOrder { expected, got: g })) => {
                assert_eq!(g, got, "the refusal names the batch's first seq");
                assert!(
                    expected == 2 || expected == 3,
                    "refused with {expected} expected"
                );
            }
            (got, other) => panic!("a batch at seq {got} must be refused, got {other:?}"),
        }
    }
    if let Err(e) = join(second_task).await {
        panic!("seq 2 failed beside refused batches: {e}");
    }

    assert_eq!(
        s.head().await.expect("head"),
        2,
        "only the valid event moved the head"
    );
    let expected: Vec<(String, SeqNumber)> = (0..EACH)
        .map(|t| (format!("good-{t:02}"), t as SeqNumber))
        .collect();
    assert_eq!(
        sorted_acks(&*s).await,
        expected,
        "only the valid batches' acks"
    );
    assert_eq!(
        s.events_after(1, 100).await.expect("events_after"),
        vec![second],
        "only the valid event"
    );
    assert!(
        s.agent_events_after("agent-bad", 0, 100)
            .await
            .expect("agent_events_after")
            .is_empty(),
        "no refused event is readable"
    );
}

/// A batch that fails while it is being written (here the API key it adds is already there)
/// leaves nothing of itself, not even the idempotency record it put in place of an older one,
/// whether it was alone in its transaction or grouped with others, and the batches beside it
/// land.
pub async fn failing_batch_is_undone_alone_or_grouped(h: &dyn Harness) {
    const EACH: usize = 16;
    let s = h.fresh().await;
    let setup = Batch {
        events: vec![event(1, "int-1", &["agent-a"], "one")],
        idempotency: vec![idempotency("key-1", "idem-1", 1_000, 1)],
        keys_added: vec![key("key-taken", "ivr", None, 1)],
        ..Batch::default()
    };
    commit(&*s, setup, "the setup batch").await;
    let before = snapshot(&*s).await;

    // Its event continues the log and is written first; the key after it fails.
    let failing = |t: usize| Batch {
        events: vec![event(2, "int-2", &["agent-b"], "two")],
        acks: vec![(format!("failed-{t:02}"), 1)],
        idempotency: vec![idempotency("key-1", "idem-1", 2_000, 2)],
        keys_added: vec![key("key-taken", "ivr", None, 2)],
        ..Batch::default()
    };
    assert!(
        s.commit(failing(0)).await.is_err(),
        "a batch adding a key id that is taken must fail"
    );
    assert_eq!(
        snapshot(&*s).await,
        before,
        "a batch that failed alone writes none of its parts"
    );
    assert!(
        s.agent_events_after("agent-b", 0, 100)
            .await
            .expect("agent_events_after")
            .is_empty(),
        "a batch that failed alone leaves no events for its agents"
    );

    // The same beside valid batches, started together so that the writer groups them.
    let start = Arc::new(tokio::sync::Barrier::new(2 * EACH));
    let mut tasks = Vec::new();
    for t in 0..EACH {
        for fails in [false, true] {
            let (s, start) = (Arc::clone(&s), Arc::clone(&start));
            let batch = if fails {
                failing(t)
            } else {
                Batch {
                    acks: vec![(format!("good-{t:02}"), t as SeqNumber)],
                    ..Batch::default()
                }
            };
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                (fails, s.commit(batch).await)
            }));
        }
    }
    for task in tasks {
        match join(task).await {
            (true, result) => assert!(result.is_err(), "a taken key id must fail"),
            (false, result) => {
                if let Err(e) = result {
                    panic!("a valid batch failed beside failing ones: {e}");
                }
            }
        }
    }
    let expected: Vec<(String, SeqNumber)> = (0..EACH)
        .map(|t| (format!("good-{t:02}"), t as SeqNumber))
        .collect();
    assert_eq!(
        sorted_acks(&*s).await,
        expected,
        "only the valid batches' acks"
    );
    let after = snapshot(&*s).await;
    assert_eq!(after.events, before.events, "no failed batch's event");
    assert_eq!(after.head, 1, "no failed batch moved the head");
    assert_eq!(
        after.idempotency, before.idempotency,
        "no failed batch's record"
    );

    let next = event(2, "int-2", &["agent-b"], "two");
    commit_one(&*s, next.clone(), "seq 2 after the failures").await;
    assert_eq!(
        s.events_after(1, 100).await.expect("events_after"),
        vec![next],
        "the log continues where the failed batches did not"
    );
}

/// An agent listed twice for one event is kept once, at its first place; an agent id that
/// could not be told apart from the next (empty, or over two lines) refuses the batch.
pub async fn event_agents_are_kept_once_in_order_and_must_be_readable(h: &dyn Harness) {
    let s = h.fresh().await;
    let listed_twice = event(1, "int-1", &["agent-b", "agent-a", "agent-b"], "one");
    commit_one(&*s, listed_twice, "an agent listed twice").await;
    let read = s.events_after(0, 10).await.expect("events_after");
    assert_eq!(read.len(), 1, "the event is written");
    assert_eq!(
        read[0].agents,
        ["agent-b", "agent-a"],
        "each agent once, at its first place"
    );
    let for_b = s
        .agent_events_after("agent-b", 0, 10)
        .await
        .expect("agent_events_after");
    assert_eq!(for_b, read, "the agent's stream has the event once");

    for bad in ["", "agent-c\nagent-d"] {
        let batch = events_batch(vec![event(2, "int-2", &["agent-a", bad], "two")]);
        match s.commit(batch).await {
            Err(StoreError::Backend(reason)) => assert!(
                reason.contains("agent id"),
                "the refusal names the agent id: {reason}"
            ),
            other => panic!("agent id {bad:?} must be refused, got {other:?}"),
        }
    }
    assert_eq!(
        s.head().await.expect("head"),
        1,
        "no refused event is written"
    );
    assert!(
        s.agent_events_after("agent-a", 1, 10)
            .await
            .expect("agent_events_after")
            .is_empty(),
        "no refused event is readable"
    );
}

/// Reads running while commits land see a prefix of the log with every event whole.
pub async fn reads_beside_writes(h: &dyn Harness) {
    const EVENTS: SeqNumber = 100;
    let s = h.fresh().await;
    let agents = ["agent-a", "agent-b"];
    let writer = {
        let s = Arc::clone(&s);
        tokio::spawn(async move {
            for seq in 1..=EVENTS {
                let e = event(seq, "int-1", &agents, &format!("event {seq}"));
                if let Err(err) = s.commit(events_batch(vec![e])).await {
                    panic!("seq {seq}: commit failed: {err}");
                }
            }
        })
    };
    let check = |events: &[StoredEvent], what: &str| {
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.seq, i as SeqNumber + 1, "{what}: the log read has a hole");
            assert_eq!(
                e.agents, agents,
                "{what}: event {} is missing agents",
                e.seq
            );
            assert_eq!(
                e.payload,
                format!("event {}", e.seq),
                "{what}: event {} payload",
                e.seq
            );
        }
    };
    let reads = async {
        let mut rounds = 0;
        while !writer.is_finished() {
            let head = s.head().await.expect("head");
            let log = s.events_after(0, usize::MAX).await.expect("events_after");
            check(&log, "events_after");
            assert!(
                log.len() as SeqNumber >= head,
                "a read misses events below the head it saw"
            );
            let mine = s
                .agent_events_after("agent-b", 0, usize::MAX)
                .await
                .expect("agent events");
            check(&mine, "agent_events_after");
            rounds += 1;
            tokio::task::yield_now().await;
        }
        rounds
    };
    if tokio::time::timeout(Duration::from_secs(120), reads)
        .await
        .is_err()
    {
        panic!("the writer did not finish within 120 s");
    }
    join(writer).await;
    let log = s.events_after(0, usize::MAX).await.expect("events_after");
    check(&log, "the final read");
    assert_eq!(log.len() as SeqNumber, EVENTS, "every event landed");
}

/// Every readable state of a store, with the unordered reads sorted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub head: SeqNumber,
    pub events: Vec<StoredEvent>,
    pub keys: Vec<KeyRecord>,
    pub acks: Vec<(String, SeqNumber)>,
    pub idempotency: Vec<IdempotencyRecord>,
    pub integrations: Vec<IntegrationRecord>,
    pub outbox_cursors: Vec<(String, SeqNumber)>,
    /// Of the destinations the cases use, `OUTBOX_A` then `OUTBOX_B`.
    pub outbox_retries: Vec<OutboxRetry>,
    pub delivery_attempts: Vec<DeliveryAttempt>,
}

/// The outbox destinations the cases write to.
const OUTBOX_A: &str = "webhook:a";
const OUTBOX_B: &str = "connector:b:log";

/// Reads everything a store holds.
pub async fn snapshot(s: &dyn Store) -> Snapshot {
    Snapshot {
        head: s.head().await.expect("head"),
        events: s.events_after(0, usize::MAX).await.expect("events_after"),
        keys: sorted_keys(s).await,
        acks: sorted_acks(s).await,
        idempotency: sorted_idempotency(s, i64::MIN).await,
        integrations: s.integrations().await.expect("integrations"),
        outbox_cursors: s.outbox_cursors().await.expect("outbox_cursors"),
        outbox_retries: {
            let mut retries = s.outbox_retries(OUTBOX_A).await.expect("outbox_retries");
            retries.extend(s.outbox_retries(OUTBOX_B).await.expect("outbox_retries"));
            retries
        },
        delivery_attempts: {
            let mut attempts = s
                .delivery_attempts(OUTBOX_A, None, usize::MAX)
                .await
                .expect("delivery_attempts");
            attempts.extend(
                s.delivery_attempts(OUTBOX_B, None, usize::MAX)
                    .await
                    .expect("delivery_attempts"),
            );
            attempts
        },
    }
}

async fn sorted_keys(s: &dyn Store) -> Vec<KeyRecord> {
    let mut keys = s.keys().await.expect("keys");
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    keys
}

async fn sorted_acks(s: &dyn Store) -> Vec<(String, SeqNumber)> {
    let mut acks = s.acks().await.expect("acks");
    acks.sort();
    acks
}

async fn sorted_idempotency(s: &dyn Store, since_ms: i64) -> Vec<IdempotencyRecord> {
    let mut records = s
        .idempotency_since(since_ms)
        .await
        .expect("idempotency_since");
    records.sort_by(|a, b| {
        (a.created_ms, &a.key_id, &a.idempotency_key).cmp(&(
            b.created_ms,
            &b.key_id,
            &b.idempotency_key,
        ))
    });
    records
}

/// Checks the log written by `tasks` tasks of `per_task` events each, whose event `i` of task
/// `t` is for `agent-{t}` with payload `{t}:{i}`.
async fn check_task_logs(s: &dyn Store, tasks: usize, per_task: usize) {
    let total = (tasks * per_task) as SeqNumber;
    assert_eq!(
        s.head().await.expect("head"),
        total,
        "head after every task committed"
    );
    let log = s.events_after(0, usize::MAX).await.expect("events_after");
    let seqs: Vec<SeqNumber> = log.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "the log is 1..={total} without holes"
    );
    for t in 0..tasks {
        let mine = s
            .agent_events_after(&format!("agent-{t}"), 0, usize::MAX)
            .await
            .expect("agent_events_after");
        let payloads: Vec<&str> = mine.iter().map(|e| e.payload.as_str()).collect();
        let expected: Vec<String> = (0..per_task).map(|i| format!("{t}:{i}")).collect();
        assert_eq!(
            payloads, expected,
            "task {t}'s events, in the order it committed them"
        );
    }
}

/// Awaits a spawned case task, re-raising its panic so its message is the one reported.
async fn join<T>(task: tokio::task::JoinHandle<T>) -> T {
    match task.await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("a case task did not finish: {e}"),
    }
}

/// Pages through a log with `read(after)` until it comes back empty; returns the page sizes
/// and everything read.
async fn page_through<F, Fut>(read: F) -> (Vec<usize>, Vec<StoredEvent>)
where
    F: Fn(SeqNumber) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<StoredEvent>, StoreError>>,
{
    let (mut pages, mut all, mut after) = (Vec::new(), Vec::new(), 0);
    loop {
        let page = read(after).await.expect("reading a page");
        let Some(last) = page.last() else { break };
        after = last.seq;
        pages.push(page.len());
        all.extend(page);
        assert!(pages.len() <= 1_000, "paging does not end");
    }
    (pages, all)
}

fn expect_refused(result: Result<(), StoreError>, expected: SeqNumber, got: SeqNumber, what: &str) {
    match result {
        Err(StoreError::SeqOutOfOrder {
            expected: e,
            got: g,
        }) => {
            assert_eq!(
                (e, g),
                (expected, got),
                "{what}: SeqOutOfOrder (expected, got)"
            )
        }
        other => panic!("{what}: expected SeqOutOfOrder, got {other:?}"),
    }
}

async fn commit(s: &dyn Store, batch: Batch, what: &str) {
    if let Err(e) = s.commit(batch).await {
        panic!("{what}: commit failed: {e}");
    }
}

/// Commits a batch of one event, which must succeed.
async fn commit_one(s: &dyn Store, event: StoredEvent, what: &str) {
    commit(s, events_batch(vec![event]), what).await;
}

fn events_batch(events: Vec<StoredEvent>) -> Batch {
    Batch {
        events,
        ..Batch::default()
    }
}

fn event(seq: SeqNumber, subject: &str, agents: &[&str], payload: &str) -> StoredEvent {
    StoredEvent {
        seq,
        event_type: "interaction.offered".into(),
        subject: subject.into(),
        time_ms: 1_700_000_000_000 + seq as i64,
        agents: agents.iter().map(|a| a.to_string()).collect(),
        payload: payload.into(),
    }
}

fn idempotency(key_id: &str, idempotency_key: &str, created_ms: i64, n: u8) -> IdempotencyRecord {
    IdempotencyRecord {
        key_id: key_id.into(),
        idempotency_key: idempotency_key.into(),
        body_sha256: [n; 32],
        interaction_id: format!("int-{n}"),
        created_ms,
    }
}

/// `n` makes the token hash distinct: token hashes are unique across keys.
fn key(id: &str, role: &str, agent_id: Option<&str>, n: u8) -> KeyRecord {
    let mut token_sha256 = [n; 32];
    token_sha256[0] = 0xAB;
    KeyRecord {
        id: id.into(),
        role: role.into(),
        name: format!("{role} key {n}"),
        agent_id: agent_id.map(str::to_string),
        token_sha256,
        created_ms: 1_700_000_000_000 + i64::from(n),
    }
}

fn integration(kind: &str, name: &str, config: &str, updated_ms: i64) -> IntegrationRecord {
    IntegrationRecord {
        kind: kind.into(),
        name: name.into(),
        config: config.into(),
        updated_ms,
    }
}

fn retry(destination: &str, seq: SeqNumber, attempts: u32, next_ms: i64) -> OutboxRetry {
    OutboxRetry {
        destination: destination.into(),
        seq,
        attempts,
        next_ms,
    }
}

/// An attempt as a batch carries it (`id` 0: the store assigns it).
fn attempt(
    destination: &str,
    seq: SeqNumber,
    n: u32,
    outcome: &str,
    at_ms: i64,
) -> DeliveryAttempt {
    DeliveryAttempt {
        id: 0,
        destination: destination.into(),
        seq,
        attempt: n,
        at_ms,
        duration_ms: 12,
        status: (outcome != "failed").then_some(200),
        outcome: outcome.into(),
        detail: (outcome == "failed").then(|| "connection refused: Zoë's server".to_owned()),
        next_ms: (outcome == "failed").then_some(at_ms + 5_000),
    }
}

/// The attempts as read back, without the ids the store gave them.
fn without_ids(mut attempts: Vec<DeliveryAttempt>) -> Vec<DeliveryAttempt> {
    for attempt in &mut attempts {
        attempt.id = 0;
    }
    attempts
}

/// Integrations are kept by kind and name: a put replaces, a delete removes, others stay.
pub async fn integrations_are_put_replaced_and_deleted(h: &dyn Harness) {
    let s = h.fresh().await;
    assert!(s.integrations().await.expect("integrations").is_empty());
    let config = r#"{"url":"https://example.com/hook","secret":"whsec_x","note":"Zoë"}"#;
    commit(
        &*s,
        Batch {
            integrations_put: vec![
                integration("webhook", "b", config, 1),
                integration("webhook", "a", "{}", 2),
                integration("connector", "a", "{\"preset\":\"hubspot\"}", 3),
            ],
            ..Batch::default()
        },
        "three integrations",
    )
    .await;
    assert_eq!(
        s.integrations().await.expect("integrations"),
        vec![
            integration("connector", "a", "{\"preset\":\"hubspot\"}", 3),
            integration("webhook", "a", "{}", 2),
            integration("webhook", "b", config, 1),
        ],
        "by kind, then name; the same name under two kinds is two integrations"
    );
    commit(
        &*s,
        Batch {
            integrations_put: vec![integration("webhook", "a", "{\"v\":2}", 4)],
            integrations_deleted: vec![
                ("webhook".into(), "b".into()),
                ("webhook".into(), "none".into()),
            ],
            ..Batch::default()
        },
        "a replace and a delete",
    )
    .await;
    assert_eq!(
        s.integrations().await.expect("integrations"),
        vec![
            integration("connector", "a", "{\"preset\":\"hubspot\"}", 3),
            integration("webhook", "a", "{\"v\":2}", 4),
        ],
        "the put replaced, the delete removed, deleting a missing one is no error"
    );
}

/// A cursor is set to exactly what the batch says (a replay moves it back); retries are
/// replaced by destination and seq and cleared; attempts are listed newest first in pages;
/// deleting a destination's outbox removes its rows only; trimming keeps the newest attempts.
pub async fn outbox_cursors_retries_and_attempts(h: &dyn Harness) {
    let s = h.fresh().await;
    commit(
        &*s,
        Batch {
            outbox_cursors: vec![(OUTBOX_A.into(), 10), (OUTBOX_B.into(), 3)],
            outbox_retries_set: vec![
                retry(OUTBOX_A, 4, 1, 5_000),
                retry(OUTBOX_A, 2, 2, 6_000),
                retry(OUTBOX_B, 2, 1, 7_000),
            ],
            delivery_attempts: vec![
                attempt(OUTBOX_A, 2, 1, "failed", 1_000),
                attempt(OUTBOX_A, 2, 2, "failed", 2_000),
                attempt(OUTBOX_A, 4, 1, "failed", 3_000),
                attempt(OUTBOX_B, 2, 1, "failed", 4_000),
            ],
            ..Batch::default()
        },
        "cursors, retries and attempts",
    )
    .await;
    assert_eq!(
        s.outbox_cursors().await.expect("outbox_cursors"),
        vec![(OUTBOX_B.to_string(), 3), (OUTBOX_A.to_string(), 10)],
        "by destination"
    );
    assert_eq!(
        s.outbox_retries(OUTBOX_A).await.expect("outbox_retries"),
        vec![retry(OUTBOX_A, 2, 2, 6_000), retry(OUTBOX_A, 4, 1, 5_000)],
        "a destination's retries only, by seq"
    );
    let newest_first = s
        .delivery_attempts(OUTBOX_A, None, 2)
        .await
        .expect("delivery_attempts");
    assert_eq!(
        without_ids(newest_first.clone()),
        vec![
            attempt(OUTBOX_A, 4, 1, "failed", 3_000),
            attempt(OUTBOX_A, 2, 2, "failed", 2_000)
        ],
        "newest first, at most the limit"
    );
    assert!(
        newest_first[0].id > newest_first[1].id,
        "ids increase with recording"
    );
    let next_page = s
        .delivery_attempts(OUTBOX_A, Some(newest_first[1].id), 10)
        .await
        .expect("delivery_attempts");
    assert_eq!(
        without_ids(next_page),
        vec![attempt(OUTBOX_A, 2, 1, "failed", 1_000)],
        "the page before an id"
    );

    commit(
        &*s,
        Batch {
            outbox_cursors: vec![(OUTBOX_A.into(), 1)],
            outbox_retries_set: vec![retry(OUTBOX_A, 2, 3, 60_000)],
            outbox_retries_cleared: vec![(OUTBOX_A.into(), 4), (OUTBOX_A.into(), 99)],
            delivery_attempts: vec![attempt(OUTBOX_A, 4, 2, "delivered", 5_000)],
            ..Batch::default()
        },
        "a replay, a retry rescheduled and one done",
    )
    .await;
    assert_eq!(
        s.outbox_cursors().await.expect("outbox_cursors"),
        vec![(OUTBOX_B.to_string(), 3), (OUTBOX_A.to_string(), 1)],
        "a cursor moves back when told to"
    );
    assert_eq!(
        s.outbox_retries(OUTBOX_A).await.expect("outbox_retries"),
        vec![retry(OUTBOX_A, 2, 3, 60_000)]
    );

    commit(
        &*s,
        Batch {
            outbox_deleted: vec![OUTBOX_B.into()],
            delivery_attempts_trimmed: vec![(OUTBOX_A.into(), 2), ("webhook:none".into(), 5)],
            ..Batch::default()
        },
        "one destination deleted, the other's attempts trimmed to two",
    )
    .await;
    assert_eq!(
        s.outbox_cursors().await.expect("outbox_cursors"),
        vec![(OUTBOX_A.to_string(), 1)]
    );
    assert!(s
        .outbox_retries(OUTBOX_B)
        .await
        .expect("outbox_retries")
        .is_empty());
    assert!(s
        .delivery_attempts(OUTBOX_B, None, 10)
        .await
        .expect("delivery_attempts")
        .is_empty());
    assert_eq!(
        without_ids(
            s.delivery_attempts(OUTBOX_A, None, 10)
                .await
                .expect("delivery_attempts")
        ),
        vec![
            attempt(OUTBOX_A, 4, 2, "delivered", 5_000),
            attempt(OUTBOX_A, 4, 1, "failed", 3_000)
        ],
        "the two newest attempts are kept, the older ones gone"
    );
}

/// The outbox is durable like the log, and a batch that carries both is one transaction.
pub async fn outbox_survives_reopen_and_commits_with_events(h: &dyn Harness) {
    let s = h.fresh().await;
    commit(
        &*s,
        Batch {
            events: vec![event(1, "int-1", &[], "one"), event(2, "int-1", &[], "two")],
            integrations_put: vec![integration("webhook", "a", "{\"url\":\"u\"}", 1)],
            outbox_cursors: vec![(OUTBOX_A.into(), 1)],
            outbox_retries_set: vec![retry(OUTBOX_A, 1, 1, 9_000)],
            delivery_attempts: vec![attempt(OUTBOX_A, 1, 1, "failed", 1_000)],
            ..Batch::default()
        },
        "events with outbox rows",
    )
    .await;
    let before = snapshot(&*s).await;
    let s = h.reopen(s).await;
    assert_eq!(
        snapshot(&*s).await,
        before,
        "everything is there after a reopen"
    );
    assert!(s
        .delivery_attempts(OUTBOX_A, None, 10)
        .await
        .expect("delivery_attempts")
        .iter()
        .all(|a| a.id > 0));
    // A batch refused for its events writes none of its outbox rows.
    let refused = Batch {
        events: vec![event(5, "int-1", &[], "gap")],
        outbox_cursors: vec![(OUTBOX_A.into(), 2)],
        outbox_retries_cleared: vec![(OUTBOX_A.into(), 1)],
        ..Batch::default()
    };
    expect_refused(
        s.commit(refused).await,
        3,
        5,
        "a batch with a gap and outbox rows",
    );
    assert_eq!(
        snapshot(&*s).await,
        before,
        "the refused batch wrote nothing"
    );
}
