//! Webhook deliveries survive SIGKILL: the real binary is killed at random moments while a
//! receiver on loopback refuses deliveries (all of them, then most), three times over; once
//! the receiver answers and the server runs again, every acknowledged interaction's event has
//! been delivered, each with one `webhook-id` however many times it was sent.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use rand::Rng;
use serde_json::{json, Value};

mod serve_process;
use serve_process::ServeProcess;

const ROUNDS: usize = 3;
const POSTS_PER_ROUND: usize = 60;
const PATIENCE: Duration = Duration::from_secs(30);
const ADMIN: &str = "hk_webhook_crash_test_admin_token_0123456789";

static RETRY_SCHEDULE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| vec!["0.2"; 32].join(","));

/// Loopback allowed (the receiver is there); retries every 200 ms, 32 times: the test is about
/// durability, not about the schedule, and no event may be given up on while the rounds run.
fn server_settings() -> [(&'static str, &'static str); 3] {
    [
        ("HANDOFF_EGRESS_ALLOW", "127.0.0.1"),
        ("HANDOFF_OUTBOX_RETRY_SCHEDULE_S", RETRY_SCHEDULE.as_str()),
        ("HANDOFF_OFFER_TIMEOUT_S", "3600"),
    ]
}

/// The receiver: answers 2xx to one delivery in `one_in` (the rest 503) and notes the subjects
/// of the deliveries it accepted.
#[derive(Clone, Default)]
struct Receiver {
    one_in: Arc<AtomicU32>,
    delivered: Arc<Mutex<Vec<(String, String)>>>,
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let one_in = receiver.one_in.load(Ordering::SeqCst).max(1);
    if rand::thread_rng().gen_range(0..one_in) != 0 {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let event: Value = serde_json::from_slice(&body).expect("a CloudEvent");
    let webhook_id = headers["webhook-id"].to_str().unwrap().to_owned();
    assert_eq!(
        event["id"],
        webhook_id.as_str(),
        "webhook-id is the event id"
    );
    receiver
        .delivered
        .lock()
        .unwrap()
        .push((event["subject"].as_str().unwrap().to_owned(), webhook_id));
    StatusCode::NO_CONTENT
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_with_deliveries_pending_loses_none() {
    let receiver = Receiver::default();
    receiver.one_in.store(4, Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let temporary = tempfile::tempdir().unwrap();
    let data_dir = temporary.path().join("data");
    let http = reqwest::Client::new();
    let server = ServeProcess::start(&data_dir, ADMIN, &server_settings());
    server.wait_healthy(&http, PATIENCE).await;
    let put = http
        .put(format!("{}/v1/agents/alice", server.base))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "Alice", "capacity": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201);
    let put = http
        .put(format!("{}/v1/webhooks/crm", server.base))
        .bearer_auth(ADMIN)
        .json(&json!({"url": hook_url, "types": ["interaction.created"], "max_in_flight": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201, "{}", put.text().await.unwrap());
    let ivr: Value = http
        .post(format!("{}/v1/keys", server.base))
        .bearer_auth(ADMIN)
        .json(&json!({"role": "ivr", "name": "ivr"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ivr = ivr["token"].as_str().unwrap().to_owned();
    server.kill();

    let acknowledged: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut rng = rand::thread_rng();
    for round in 0..ROUNDS {
        // The first rounds refuse every delivery, so that all of theirs are pending at the
        // kill; the last accepts one in four, so that some are delivered and not yet written
        // as delivered when it dies.
        let one_in = if round + 1 < ROUNDS { u32::MAX } else { 4 };
        receiver.one_in.store(one_in, Ordering::SeqCst);
        let server = ServeProcess::start(&data_dir, ADMIN, &server_settings());
        server.wait_healthy(&http, PATIENCE).await;
        let mut posts = Vec::new();
        for n in 0..POSTS_PER_ROUND {
            let (http, base, ivr, acknowledged) = (
                http.clone(),
                server.base.clone(),
                ivr.clone(),
                acknowledged.clone(),
            );
            posts.push(tokio::spawn(async move {
                let sent = http
                    .post(format!("{base}/v1/interactions"))
                    .bearer_auth(&ivr)
                    .json(&json!({"caller": format!("+1555{round}{n:04}"),
                                   "target": {"agent": "alice"}}))
                    .send()
                    .await;
                if let Ok(response) = sent {
                    if response.status().is_success() {
                        if let Ok(view) = response.json::<Value>().await {
                            acknowledged
                                .lock()
                                .unwrap()
                                .insert(view["id"].as_str().unwrap().to_owned());
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1200))).await;
        server.kill();
        for post in posts {
            let _ = post.await;
        }
    }

    // The receiver is well again and the server runs: every acknowledged call arrives.
    let delivered_before = receiver.delivered.lock().unwrap().len();
    receiver.one_in.store(1, Ordering::SeqCst);
    let server = ServeProcess::start(&data_dir, ADMIN, &server_settings());
    server.wait_healthy(&http, PATIENCE).await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(!acknowledged.is_empty(), "some posts were acknowledged");
    assert!(
        delivered_before < acknowledged.len(),
        "deliveries were pending when the server was killed ({delivered_before} of {} delivered)",
        acknowledged.len()
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let delivered: HashSet<String> = receiver
            .delivered
            .lock()
            .unwrap()
            .iter()
            .map(|(subject, _)| subject.clone())
            .collect();
        let missing: Vec<&String> = acknowledged.difference(&delivered).collect();
        if missing.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let deliveries: Value = http
                .get(format!(
                    "{}/v1/webhooks/crm/deliveries?limit=1000",
                    server.base
                ))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let gave_up = deliveries["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["outcome"] == "gave_up")
                .count();
            eprintln!(
                "given up on: {gave_up}; pending: {}; cursor {} head {}",
                deliveries["pending"].as_array().unwrap().len(),
                deliveries["cursor_seq"],
                deliveries["head_seq"]
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} acknowledged interactions never delivered, e.g. {:?}",
            missing.len(),
            acknowledged.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each delivery of one event carried the same id, whichever attempt got through.
    let delivered = receiver.delivered.lock().unwrap().clone();
    for (subject, id) in &delivered {
        let same_subject_ids: HashSet<&String> = delivered
            .iter()
            .filter(|(s, _)| s == subject)
            .map(|(_, i)| i)
            .collect();
        assert_eq!(same_subject_ids.len(), 1, "{subject}: {id} and others");
    }
    eprintln!(
        "webhook crash test: {} acknowledged, {delivered_before} delivered before the last start, {} deliveries accepted in all ({} repeats)",
        acknowledged.len(),
        delivered.len(),
        delivered.len() - acknowledged.len().min(delivered.len())
    );
    server.kill();
}
