//! Tests of the client against tiny scripted servers: real sockets, canned answers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use handoff_protocol::{CompleteRequest, CreateInteractionRequest, Target};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

use crate::{Client, ClientError, ReconnectPolicy, ResilientAgentStream, StreamItem};

/// One HTTP request as the fake server saw it.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Serves one canned answer per connection, in order, recording the requests.
async fn http_server(answers: Vec<(u16, String)>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        for (status, body) in answers {
            let (mut socket, _) = listener.accept().await.unwrap();
            let request = read_request(&mut socket).await;
            log.lock().unwrap().push(request);
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(answer.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
        }
    });
    (base, seen)
}

async fn read_request(socket: &mut TcpStream) -> Seen {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed mid-request");
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(data[..end].to_vec()).unwrap();
            let mut seen = Seen {
                head,
                body: String::new(),
            };
            let length: usize = seen
                .header("content-length")
                .map_or(0, |v| v.parse().unwrap());
            let mut body = data[end + 4..].to_vec();
            while body.len() < length {
                let n = socket.read(&mut buf).await.unwrap();
                body.extend_from_slice(&buf[..n]);
            }
            seen.body = String::from_utf8(body).unwrap();
            return seen;
        }
    }
}

fn interaction(state: &str) -> String {
    json!({
        "id": "i1", "state": state, "target": {"queue": "billing"}, "fallback": null,
        "agent": {"id": "alice", "address": "sip:alice@pbx"}, "position": null,
        "context": {"account": "42"}, "caller": "+1555", "dialed": null, "channel": "voice",
        "call_id": null, "priority": 0, "created_at": "2024-05-01T12:00:00.000Z",
        "updated_at": "2024-05-01T12:00:00.000Z", "offer_expires_at": null,
        "transfer_note": null, "disposition": null, "notes": null
    })
    .to_string()
}

#[tokio::test]
async fn http_calls_send_the_contracts_requests() {
    let (base, seen) = http_server(vec![
        (201, interaction("offered")),
        (200, interaction("offered")),
        (200, interaction("accepted")),
        (200, interaction("completed")),
        (
            409,
            r#"{"error":{"code":"wrong_state","message":"not offered","field":null}}"#.into(),
        ),
        (
            200,
            r#"{"keys":[{"id":"k1","role":"ivr","name":"main","agent_id":null,"created_at":"2024-05-01T12:00:00.000Z"}]}"#
                .into(),
        ),
        (204, String::new()),
    ])
    .await;
    let client = Client::new(&base, "tok").unwrap();
    let request = CreateInteractionRequest {
        caller: Some("+1555".into()),
        dialed: None,
        channel: None,
        call_id: None,
        context: None,
        target: Target::Queue("billing".into()),
        fallback: None,
        priority: None,
        max_wait_s: None,
    };

    let created = client
        .create_interaction(&request, Some("k-1"))
        .await
        .unwrap();
    assert!(!created.replayed);
    assert_eq!(created.interaction.state, "offered");
    let again = client
        .create_interaction(&request, Some("k-1"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.interaction, created.interaction);

    let accepted = client.accept("i1").await.unwrap();
    assert_eq!(accepted.state, "accepted");
    let completed = client
        .complete(
            "i1",
            &CompleteRequest {
                disposition: Some("resolved".into()),
                notes: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(completed.state, "completed");

    let err = client.reject("i1").await.unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert_eq!(err.code(), Some("wrong_state"));

    let keys = client.list_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].role, "ivr");

    client.delete_key("k1").await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert!(seen[0].head.starts_with("POST /v1/interactions HTTP/1.1"));
    assert_eq!(
        seen[0].header("authorization").as_deref(),
        Some("Bearer tok")
    );
    assert_eq!(seen[0].header("idempotency-key").as_deref(), Some("k-1"));
    assert_eq!(
        seen[0].header("content-type").as_deref(),
        Some("application/json")
    );
    let body: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(body["target"], json!({"queue": "billing"}));

    assert!(seen[2].head.starts_with("POST /v1/interactions/i1/accept "));
    assert_eq!(seen[2].header("content-type"), None);
    assert_eq!(seen[2].body, "");
    assert!(seen[3]
        .head
        .starts_with("POST /v1/interactions/i1/complete "));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&seen[3].body).unwrap(),
        json!({"disposition": "resolved", "notes": null})
    );
    assert!(seen[4].head.starts_with("POST /v1/interactions/i1/reject "));
    assert_eq!(seen[4].header("content-type"), None);
    assert!(seen[5].head.starts_with("GET /v1/keys "));
    assert!(seen[6].head.starts_with("DELETE /v1/keys/k1 "));
}

#[tokio::test]
async fn undecodable_success_is_a_decode_error_and_no_server_is_transport() {
    let (base, _) = http_server(vec![(200, "{}".into())]).await;
    let client = Client::new(&base, "tok").unwrap();
    assert!(matches!(
        client.get_interaction("i1").await,
        Err(ClientError::Decode(_))
    ));
    let client = Client::new("http://127.0.0.1:9", "tok").unwrap();
    let err = client.health().await.unwrap_err();
    assert!(matches!(err, ClientError::Transport(_)), "{err:?}");
}

fn event(seq: u64) -> Message {
    Message::text(
        json!({
            "specversion": "1.0", "id": format!("e{seq}"), "source": "handoff",
            "type": "interaction.offered", "time": "2024-05-01T12:00:00.000Z",
            "subject": "i1", "seq": seq, "data": {}
        })
        .to_string(),
    )
}

type Script = Box<
    dyn FnOnce(
            tokio_tungstenite::WebSocketStream<TcpStream>,
            tokio::sync::mpsc::UnboundedSender<String>,
        ) -> futures_util::future::BoxFuture<'static, ()>
        + Send,
>;

/// Accepts one WebSocket per script, reporting each upgrade's URI and Authorization header.
async fn ws_server(scripts: Vec<Script>) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for script in scripts {
            let (socket, _) = listener.accept().await.unwrap();
            let report = tx.clone();
            // The error type is tungstenite's, not ours to shrink.
            #[allow(clippy::result_large_err)]
            let callback = move |request: &Request, response: Response| {
                let auth = request
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let _ = report.send(format!("{} {auth}", request.uri()));
                if auth == "Bearer revoked" {
                    let body =
                        r#"{"error":{"code":"unauthorized","message":"revoked","field":null}}"#;
                    let mut refusal = ErrorResponse::new(Some(body.to_string()));
                    *refusal.status_mut() =
                        tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
                    return Err(refusal);
                }
                Ok(response)
            };
            match tokio_tungstenite::accept_hdr_async(socket, callback).await {
                Ok(ws) => script(ws, tx.clone()).await,
                Err(_) => continue,
            }
        }
    });
    (base, rx)
}

#[tokio::test]
async fn resilient_stream_resumes_after_the_last_event_without_duplicates() {
    let scripts: Vec<Script> = vec![
        Box::new(|mut ws, report| {
            Box::pin(async move {
                ws.send(event(1)).await.unwrap();
                ws.send(Message::Binary(vec![1, 2].into())).await.unwrap();
                ws.send(event(2)).await.unwrap();
                if let Some(Ok(Message::Text(ack))) = ws.next().await {
                    let _ = report.send(ack.to_string());
                }
                // Gone without a close frame, as when the server crashes.
                drop(ws);
            })
        }),
        Box::new(|mut ws, report| {
            Box::pin(async move {
                ws.send(event(2)).await.unwrap();
                ws.send(Message::Ping(vec![7].into())).await.unwrap();
                ws.send(event(3)).await.unwrap();
                while let Some(Ok(frame)) = ws.next().await {
                    match frame {
                        Message::Pong(data) => {
                            let _ = report.send(format!("pong {data:?}"));
                        }
                        Message::Text(ack) => {
                            let _ = report.send(ack.to_string());
                            break;
                        }
                        _ => {}
                    }
                }
                ws.close(None).await.unwrap();
            })
        }),
    ];
    let (base, mut reports) = ws_server(scripts).await;
    let client = Client::new(&base, "secret").unwrap();
    let mut stream =
        ResilientAgentStream::new(client, "alice", None).with_policy(ReconnectPolicy {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        });

    let mut seqs = Vec::new();
    let mut connects = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seqs.len() < 3 {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("stream stalled")
            .unwrap();
        match item {
            StreamItem::Connected { after } => connects.push(after),
            StreamItem::Disconnected { error, .. } => assert!(error.is_retryable()),
            StreamItem::Event(event) => {
                seqs.push(event.seq);
                if event.seq >= 2 {
                    stream.ack(event.seq).await.unwrap();
                }
            }
        }
    }
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(connects, [None, Some(2)]);
    assert_eq!(stream.last_seq(), Some(3));

    let mut lines = Vec::new();
    while lines.len() < 5 {
        lines.push(reports.recv().await.unwrap());
    }
    assert_eq!(
        lines,
        [
            "/v1/agents/alice/stream Bearer secret",
            r#"{"ack":2}"#,
            "/v1/agents/alice/stream?after=2 Bearer secret",
            "pong b\"\\x07\"",
            r#"{"ack":3}"#,
        ]
    );
}

#[tokio::test]
async fn refused_streams_are_api_errors() {
    let scripts: Vec<Script> = vec![Box::new(|_, _| Box::pin(async {}))];
    let (base, _reports) = ws_server(scripts).await;
    let client = Client::new(&base, "revoked").unwrap();
    let mut stream = ResilientAgentStream::new(client, "alice", Some(5));
    let err = stream.next().await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert_eq!(err.code(), Some("unauthorized"));
}
