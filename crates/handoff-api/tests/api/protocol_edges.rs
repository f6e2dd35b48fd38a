//! WebSocket and Server-Sent Events at the edges of their RFCs: an oversized client frame gets
//! Close 1009, a client's Close is answered, a client that stops reading is bounded and closed
//! with 4000 and resumes with no loss, and `Last-Event-ID` / `after` resume rules (docs/streams.md).

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::support::{ack, error_shape_problem, next_event, spawn_app, TestApp, Ws, PATIENCE};

/// The stream's documented limits (docs/streams.md).
const MAX_INCOMING: usize = 64 << 10;
const MAX_UNSENT: usize = 1 << 20;
const CLOSE_SLOW_CONSUMER: u16 = 4000;

/// The next frame that is not a ping or pong; `None` once the stream has ended.
async fn next_frame<S>(ws: &mut WebSocketStream<S>) -> Option<Message>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let next = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a frame or the end in time");
        match next {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(message)) => return Some(message),
            Some(Err(_)) | None => return None,
        }
    }
}

/// After the closing handshake: true when the server ended the connection in order (a FIN
/// after the handshake), false on a reset or any other error.
async fn ends_cleanly<S>(ws: &mut WebSocketStream<S>) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await {
            Ok(None) => return true,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(other)) => {
                eprintln!("not a clean end: {other:?}");
                return false;
            }
            Err(_) => return false,
        }
    }
}

fn close_code(message: &Option<Message>) -> Option<u16> {
    match message {
        Some(Message::Close(Some(frame))) => Some(u16::from(frame.code)),
        _ => None,
    }
}

/// An agent that is available, with room for many offers at once.
async fn roomy_agent(app: &TestApp, id: &str) -> String {
    let (status, body) = app
        .put(
            &format!("/v1/agents/{id}"),
            &app.admin,
            json!({"name": id, "address": format!("sip:{id}@pbx.example.com"), "capacity": 100}),
        )
        .await;
    assert_eq!(status, 201, "agent: {body}");
    let (status, body) = app
        .post(&format!("/v1/agents/{id}/tokens"), &app.admin, None)
        .await;
    assert_eq!(status, 201, "token: {body}");
    let token = body["token"].as_str().unwrap().to_owned();
    app.presence(id, &token, "available").await;
    token
}

#[tokio::test]
async fn a_message_over_64_kib_gets_close_1009_and_a_clean_close() {
    let app = spawn_app().await;
    let token = app.agent("big", true).await;
    let mut ws = app.stream("big", &token, Some(app.head().await)).await;
    let text = "x".repeat(MAX_INCOMING + 1024);
    ws.send(Message::Text(text.into())).await.expect("sent");
    let frame = next_frame(&mut ws).await;
    assert_eq!(close_code(&frame), Some(1009), "got {frame:?}");
    // The client answered our Close (tokio-tungstenite does); the server then ends the
    // connection in order: the stream ends, with nothing else on it.
    assert!(ends_cleanly(&mut ws).await);
    app.stop().await;
}

#[tokio::test]
async fn a_fragmented_message_over_64_kib_gets_close_1009() {
    let app = spawn_app().await;
    let token = app.agent("frag", true).await;
    let mut ws = app.stream("frag", &token, Some(app.head().await)).await;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let part = vec![b'y'; 40 << 10];
    let first = Frame::message(part.clone(), OpCode::Data(Data::Text), false);
    let second = Frame::message(part, OpCode::Data(Data::Continue), true);
    ws.send(Message::Frame(first)).await.expect("first part");
    ws.send(Message::Frame(second)).await.expect("second part");
    let frame = next_frame(&mut ws).await;
    assert_eq!(close_code(&frame), Some(1009), "got {frame:?}");
    assert!(ends_cleanly(&mut ws).await);
    app.stop().await;
}

#[tokio::test]
async fn a_multi_megabyte_frame_gets_close_1009_before_the_connection_ends() {
    let app = spawn_app().await;
    let token = app.agent("huge", true).await;
    let ws = app.stream("huge", &token, Some(app.head().await)).await;
    let (mut sink, mut stream) = ws.split();
    // The server refuses it from its header and stops reading; the client may still be
    // writing it when the Close arrives, so it reads beside its write.
    let writer = tokio::spawn(async move {
        let _ = sink.send(Message::Binary(vec![0u8; 2 << 20].into())).await;
        sink
    });
    let frame = loop {
        let next = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("a frame in time");
        match next {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => break other,
        }
    };
    match frame {
        Some(Ok(Message::Close(Some(close)))) => {
            assert_eq!(u16::from(close.code), 1009, "{close:?}");
            assert!(close.reason.contains("too big"), "{close:?}");
        }
        other => panic!("expected Close 1009 before the end, got {other:?}"),
    }
    let _ = tokio::time::timeout(PATIENCE, writer).await;
    app.stop().await;
}

#[tokio::test]
async fn a_clients_close_is_answered_with_the_same_code() {
    let app = spawn_app().await;
    let token = app.agent("bye", true).await;
    let mut ws = app.stream("bye", &token, Some(app.head().await)).await;
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "desktop closing".into(),
    })))
    .await
    .expect("close sent");
    let frame = next_frame(&mut ws).await;
    assert_eq!(close_code(&frame), Some(1001), "got {frame:?}");
    assert!(ends_cleanly(&mut ws).await);

    // And with the most common code too.
    let mut ws = app.stream("bye", &token, Some(app.head().await)).await;
    ws.close(None).await.expect("close sent");
    let frame = next_frame(&mut ws).await;
    assert!(
        matches!(frame, Some(Message::Close(_))),
        "a Close answers a Close: {frame:?}"
    );
    assert!(ends_cleanly(&mut ws).await);
    app.stop().await;
}

/// The value of a metric without labels in the Prometheus text, 0 when absent.
async fn metric(app: &TestApp, name: &str) -> f64 {
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    let text = response.text().await.unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_bounded_closed_with_4000_and_resumes_without_loss() {
    let app = spawn_app().await;
    let token = roomy_agent(&app, "slow").await;
    let ivr = app.key("ivr").await;
    let start = app.head().await;
    let slow_closes_before = metric(&app, "handoff_stream_slow_closes_total").await;

    // A client with a small receive window that does not read: what the server sends stays
    // with the server once the kernel's buffers are full.
    let address = app.base.trim_start_matches("http://").to_owned();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(address.parse().unwrap()).await.unwrap();
    let url = format!(
        "{}/v1/agents/slow/stream?after={start}",
        app.base.replacen("http://", "ws://", 1)
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("stream opens");

    // Pops of about 60 KiB each, until the server gives up on the client; the unsent bytes
    // it holds (the gauge, all streams of this process) never pass the bound.
    let context = json!({"notes": "n".repeat(60 << 10)});
    let mut created = 0;
    let mut most_unsent = 0.0f64;
    loop {
        assert!(
            created < 400,
            "the server never closed a client that does not read"
        );
        app.create_interaction(
            &ivr,
            json!({"caller": format!("+1555{created:07}"), "target": {"agent": "slow"}, "context": context}),
        )
        .await;
        created += 1;
        let unsent = metric(&app, "handoff_stream_unsent_bytes").await;
        most_unsent = most_unsent.max(unsent);
        // Other tests' streams may hold a few small events at the same moment.
        assert!(
            unsent <= (MAX_UNSENT + (64 << 10)) as f64,
            "{unsent} bytes unsent for streams, over the bound"
        );
        if metric(&app, "handoff_stream_slow_closes_total").await > slow_closes_before {
            break;
        }
    }
    eprintln!("closed after {created} pops; most unsent seen {most_unsent} bytes");
    assert!(
        most_unsent > (MAX_UNSENT / 2) as f64,
        "the server buffered up to its bound before closing (most seen: {most_unsent})"
    );

    // The client reads again: a prefix of its events, in order, then Close 4000.
    let mut received = Vec::new();
    let close = loop {
        match next_frame(&mut ws).await {
            Some(Message::Text(text)) => {
                let event: Value = serde_json::from_str(text.as_str()).unwrap();
                let seq = event["seq"].as_u64().unwrap();
                ws.send(Message::Text(json!({"ack": seq}).to_string().into()))
                    .await
                    .ok();
                received.push(seq);
            }
            Some(Message::Close(frame)) => break frame,
            other => panic!("expected events then Close 4000, got {other:?}"),
        }
    };
    let close = close.expect("a close frame with a code");
    assert_eq!(u16::from(close.code), CLOSE_SLOW_CONSUMER, "{close:?}");
    assert!(close.reason.contains("slow consumer"), "{close:?}");
    assert!(
        received.len() < created,
        "closed before everything was sent"
    );

    // It resumes from the last event it acknowledged and gets every other one exactly once.
    let last_acked = received.last().copied().unwrap_or(start);
    let expected: Vec<u64> = app
        .store
        .agent_events_after("slow", start, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|event| event.seq)
        .collect();
    assert!(expected.len() >= created);
    let mut resumed = app.stream("slow", &token, Some(last_acked)).await;
    let mut all = received.clone();
    while all.len() < expected.len() {
        let event = next_event(&mut resumed).await;
        all.push(event["seq"].as_u64().unwrap());
    }
    assert_eq!(all, expected, "every event exactly once, in order");
    ack(&mut resumed, *all.last().unwrap()).await;
    app.stop().await;
}

/// Reads `id:` lines of a Server-Sent Events response until `last` (or a panic at PATIENCE).
async fn sse_ids_until(mut response: reqwest::Response, last: u64) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut text = String::new();
    let mut ids = Vec::new();
    while ids.last() != Some(&last) {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .expect("events in time")
            .expect("the body reads")
            .expect("the stream stays open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find('\n') {
            let line: String = text.drain(..=end).collect();
            if let Some(id) = line.trim_end().strip_prefix("id:") {
                ids.push(id.trim().parse().unwrap());
            }
        }
    }
    ids
}

#[tokio::test]
async fn sse_last_event_id_wins_over_after_on_a_reconnect() {
    let app = spawn_app().await;
    let token = app.agent("sse", false).await;
    for status in ["available", "away", "available", "away"] {
        app.presence("sse", &token, status).await;
    }
    let head = app.head().await;
    assert!(head >= 4);
    // An EventSource opened with ?after=0 that had read up to head - 2 reconnects to the same
    // URL with the header: it gets head - 1 and head, nothing before.
    let response = app
        .http
        .get(app.url("/v1/events?after=0"))
        .bearer_auth(&app.admin)
        .header("Last-Event-ID", (head - 2).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(sse_ids_until(response, head).await, vec![head - 1, head]);

    // Without the header, ?after= still replays from there.
    let response = app
        .http
        .get(app.url(&format!("/v1/events?after={}", head - 3)))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        sse_ids_until(response, head).await,
        vec![head - 2, head - 1, head]
    );
    app.stop().await;
}

#[tokio::test]
async fn sse_after_or_last_event_id_beyond_the_log_is_a_400_naming_the_field() {
    let app = spawn_app().await;
    app.agent("far", true).await;
    let head = app.head().await;

    let (status, body) = app
        .get(&format!("/v1/events?after={}", head + 1), &app.admin)
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_shape_problem(&body), None);
    assert_eq!(body["error"]["field"], "after", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("after"),
        "{body}"
    );

    let response = app
        .http
        .get(app.url("/v1/events"))
        .bearer_auth(&app.admin)
        .header("Last-Event-ID", (head + 5).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["field"], "Last-Event-ID", "{body}");

    // At the head exactly is fine: live from there.
    let response = app
        .http
        .get(app.url(&format!("/v1/events?after={head}")))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn stream_after_beyond_the_log_is_a_400_before_the_upgrade() {
    let app = spawn_app().await;
    let token = app.agent("ahead", true).await;
    let head = app.head().await;
    let url = format!(
        "{}/v1/agents/ahead/stream?after={}",
        app.base.replacen("http://", "ws://", 1),
        head + 1
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 400);
            let body: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error"]["field"], "after", "{body}");
        }
        Err(other) => panic!("expected a 400, got {other}"),
        Ok(_) => panic!("expected a 400, the stream opened"),
    }
    // At the head: opens.
    let ws: Ws = app.stream("ahead", &token, Some(head)).await;
    drop(ws);
    app.stop().await;
}
