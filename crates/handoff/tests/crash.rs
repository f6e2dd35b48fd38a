//! Crash safety of the real binary: SIGKILL at random moments during concurrent hand-offs, ten
//! times on one data directory; every acknowledged write and every event a client saw survives.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

mod serve_process;
use serve_process::ServeProcess;

const ROUNDS: usize = 10;
const POSTS_PER_ROUND: usize = 200;
const AGENTS: [&str; 3] = ["crash-a", "crash-b", "crash-c"];
const PATIENCE: Duration = Duration::from_secs(20);

struct Acknowledged {
    idempotency_key: String,
    body: Value,
    response: Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_moments_loses_no_acknowledged_interaction_and_no_seen_event() {
    let temporary = tempfile::tempdir().unwrap();
    // A fresh directory, so the server creates it as it would in production (mode 0700).
    let data_dir = temporary.path().join("data");
    let admin = "hk_crash_test_admin_token_0123456789abcdef";
    let http = reqwest::Client::new();

    // Set-up on the first run: agents with room for every call, an IVR key, agent tokens.
    let server = ServeProcess::start(
        &data_dir,
        admin,
        // Nothing may expire on its own while the test runs: what it checks is durability.
        &[
            ("HANDOFF_OFFER_TIMEOUT_S", "3600"),
            ("HANDOFF_PRESENCE_GRACE_S", "3600"),
        ],
    );
    server.wait_healthy(&http, PATIENCE).await;
    let mut agent_tokens = HashMap::new();
    for agent in AGENTS {
        let put = http
            .put(format!("{}/v1/agents/{agent}", server.base))
            .bearer_auth(admin)
            .json(&json!({"name": agent, "capacity": 1000}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status().as_u16(), 201);
        let token: Value = http
            .post(format!("{}/v1/agents/{agent}/tokens", server.base))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = token["token"].as_str().unwrap().to_owned();
        let presence = http
            .put(format!("{}/v1/agents/{agent}/presence", server.base))
            .bearer_auth(&token)
            .json(&json!({"status": "available"}))
            .send()
            .await
            .unwrap();
        assert_eq!(presence.status().as_u16(), 200);
        agent_tokens.insert(agent, token);
    }
    let ivr: Value = http
        .post(format!("{}/v1/keys", server.base))
        .bearer_auth(admin)
        .json(&json!({"role": "ivr", "name": "crash ivr"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ivr = ivr["token"].as_str().unwrap().to_owned();
    server.kill();

    let acknowledged: Arc<Mutex<Vec<Acknowledged>>> = Arc::default();
    let seen: Arc<Mutex<HashMap<(&'static str, u64), Value>>> = Arc::default();
    let mut rng_seed = rand::thread_rng();
    for round in 0..ROUNDS {
        let server = ServeProcess::start(
            &data_dir,
            admin,
            // Nothing may expire on its own while the test runs: what it checks is durability.
            &[
                ("HANDOFF_OFFER_TIMEOUT_S", "3600"),
                ("HANDOFF_PRESENCE_GRACE_S", "3600"),
            ],
        );
        server.wait_healthy(&http, PATIENCE).await;
        // Agent desktops listening from the start of the log; what they see must survive.
        let mut watchers = Vec::new();
        for agent in AGENTS {
            let seen = seen.clone();
            let url = format!(
                "{}/v1/agents/{agent}/stream?after=0",
                server.base.replacen("http", "ws", 1)
            );
            let token = agent_tokens[agent].clone();
            watchers.push(tokio::spawn(async move {
                let mut request = url.into_client_request().unwrap();
                request
                    .headers_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                let Ok((mut ws, _)) = tokio_tungstenite::connect_async(request).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Text(text) = message {
                        let event: Value = serde_json::from_str(text.as_str()).unwrap();
                        seen.lock()
                            .unwrap()
                            .insert((agent, event["seq"].as_u64().unwrap()), event);
                    }
                }
            }));
        }
        let mut posts = Vec::new();
        for n in 0..POSTS_PER_ROUND {
            let http = http.clone();
            let base = server.base.clone();
            let ivr = ivr.clone();
            let acknowledged = acknowledged.clone();
            posts.push(tokio::spawn(async move {
                let key = format!("round{round}-call{n}");
                let body = json!({
                    "caller": format!("+1555{round:02}{n:04}"),
                    "call_id": key,
                    "context": {"round": round, "n": n, "name": "Zoë"},
                    "target": {"agent": AGENTS[n % AGENTS.len()]},
                });
                let Ok(response) = http
                    .post(format!("{base}/v1/interactions"))
                    .bearer_auth(&ivr)
                    .header("Idempotency-Key", &key)
                    .json(&body)
                    .send()
                    .await
                else {
                    return;
                };
                if response.status().is_success() {
                    if let Ok(value) = response.json::<Value>().await {
                        acknowledged.lock().unwrap().push(Acknowledged {
                            idempotency_key: key,
                            body,
                            response: value,
                        });
                    }
                }
            }));
        }
        let kill_after = Duration::from_millis(rng_seed.gen_range(0..1500));
        tokio::time::sleep(kill_after).await;
        server.kill();
        for post in posts {
            let _ = post.await;
        }
        for watcher in watchers {
            let _ = tokio::time::timeout(PATIENCE, watcher).await;
        }
    }

    // The last start: everything acknowledged and everything seen must be there.
    let server = ServeProcess::start(
        &data_dir,
        admin,
        // Nothing may expire on its own while the test runs: what it checks is durability.
        &[
            ("HANDOFF_OFFER_TIMEOUT_S", "3600"),
            ("HANDOFF_PRESENCE_GRACE_S", "3600"),
        ],
    );
    server.wait_healthy(&http, PATIENCE).await;
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    assert!(
        !acknowledged.is_empty(),
        "some posts must have been acknowledged"
    );
    for ack in &acknowledged {
        let id = ack.response["id"].as_str().unwrap();
        let stored: Value = http
            .get(format!("{}/v1/interactions/{id}", server.base))
            .bearer_auth(&ivr)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            stored["state"], "offered",
            "{id} after the crashes: {stored}"
        );
        assert_eq!(
            stored["agent"], ack.response["agent"],
            "{id} offered to the same agent"
        );
        assert_eq!(
            stored["offer_expires_at"], ack.response["offer_expires_at"],
            "{id} same deadline"
        );
        assert_eq!(stored["context"], ack.body["context"]);
        // The idempotency record survived: a retry answers 200 with the same interaction.
        let retry = http
            .post(format!("{}/v1/interactions", server.base))
            .bearer_auth(&ivr)
            .header("Idempotency-Key", &ack.idempotency_key)
            .json(&ack.body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            retry.status().as_u16(),
            200,
            "retry of {}",
            ack.idempotency_key
        );
        let retry: Value = retry.json().await.unwrap();
        assert_eq!(retry["id"], id);
    }

    // Every pop reaches its agent, and every event a client saw is in the log unchanged.
    let seen = seen.lock().unwrap().clone();
    let mut log_events: HashMap<(&str, u64), Value> = HashMap::new();
    for agent in AGENTS {
        let mut awaited_pops: HashSet<String> = acknowledged
            .iter()
            .filter(|ack| ack.response["agent"]["id"] == agent)
            .map(|ack| ack.response["id"].as_str().unwrap().to_owned())
            .collect();
        let last_seen = seen
            .keys()
            .filter(|(a, _)| *a == agent)
            .map(|(_, seq)| *seq)
            .max()
            .unwrap_or(0);
        let url = format!(
            "{}/v1/agents/{agent}/stream?after=0",
            server.base.replacen("http", "ws", 1)
        );
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", agent_tokens[agent]).parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let mut last = 0;
        while !awaited_pops.is_empty() || last < last_seen {
            let message = tokio::time::timeout(PATIENCE, ws.next())
                .await
                .unwrap_or_else(|_| panic!("{agent}: pops never replayed: {awaited_pops:?}"))
                .expect("stream open")
                .expect("frame");
            if let Message::Text(text) = message {
                let event: Value = serde_json::from_str(text.as_str()).unwrap();
                last = event["seq"].as_u64().unwrap();
                if event["type"] == "interaction.offered" {
                    awaited_pops.remove(event["subject"].as_str().unwrap());
                }
                log_events.insert((agent, last), event);
            }
        }
    }
    for (key, event) in seen.iter() {
        assert_eq!(
            log_events.get(key),
            Some(event),
            "event {key:?} seen before a crash is in the log, unchanged"
        );
    }
    let head: Value = http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let head = head["head_seq"].as_u64().unwrap();
    eprintln!(
        "crash test: {} acknowledged posts, {} events seen before kills, head {}",
        acknowledged.len(),
        seen.len(),
        head
    );
    server.kill();
}
