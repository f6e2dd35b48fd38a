//! A writer on PostgreSQL whose lease another node took over: its next commit is refused by
//! the store's fence, nothing of it is written, and the engine stops and says why, so that its
//! node stops too. Skipped unless HANDOFF_TEST_POSTGRES_URL is set.

use std::time::{Duration, Instant};

use handoff_api::{ApiSettings, Running};
use handoff_store::{Durability, KeyRecord, Store};

use crate::support::PATIENCE;

fn key(id: &str) -> KeyRecord {
    KeyRecord {
        id: id.to_owned(),
        role: "admin".to_owned(),
        name: id.to_owned(),
        agent_id: None,
        token_sha256: handoff_api::auth::hash_token(id),
        created_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_lease_was_taken_over_commits_nothing_and_stops() {
    let Some(url) = std::env::var("HANDOFF_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
    else {
        eprintln!("skipped: HANDOFF_TEST_POSTGRES_URL is unset");
        return;
    };
    let schema = format!(
        "handoff_fenced_{}_{}",
        std::process::id(),
        rand::random::<u32>()
    );
    let store = handoff_store::open_postgres(&url, &schema, Durability::Fsync)
        .await
        .expect("the PostgreSQL store opens");
    let ttl = Duration::from_millis(300);
    let grant = store
        .try_acquire_lease("old#1", "http://old.invalid", ttl)
        .await
        .unwrap()
        .expect("a free lease is granted");
    store.fence(grant.epoch).await.unwrap();
    let running = Running::start(store.clone(), ApiSettings::default())
        .await
        .expect("recovery");
    running
        .state
        .engine
        .add_key(key("key_while_held"))
        .await
        .expect("a commit while the lease holds");

    // The old writer stops renewing (as if paused); another node takes the lease over.
    let deadline = Instant::now() + PATIENCE;
    let taken = loop {
        if let Some(grant) = store
            .try_acquire_lease("new#2", "http://new.invalid", Duration::from_secs(30))
            .await
            .unwrap()
        {
            break grant;
        }
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(taken.epoch > grant.epoch, "a takeover raises the epoch");

    let refused = running
        .state
        .engine
        .add_key(key("key_after_takeover"))
        .await;
    assert!(refused.is_err(), "a fenced writer's commit must fail");
    let reason = tokio::time::timeout(PATIENCE, running.state.shared.writer_lost())
        .await
        .expect("the engine says it lost the log");
    assert!(reason.contains("writer lease"), "{reason}");
    let ids: Vec<String> = store
        .keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert!(ids.contains(&"key_while_held".to_owned()), "{ids:?}");
    assert!(
        !ids.contains(&"key_after_takeover".to_owned()),
        "nothing of the fenced commit is written: {ids:?}"
    );
    running.shutdown().await;

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
