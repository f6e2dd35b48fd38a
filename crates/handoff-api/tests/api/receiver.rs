//! A local HTTP server standing in for a webhook receiver or a CRM: it records every request
//! and answers each as its script says.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use crate::support::PATIENCE;

/// One request as the receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    /// The path and query, as sent (percent-encoding kept).
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// How to answer one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Answer only once this is notified (the test decides when).
    pub gate: Option<Arc<tokio::sync::Notify>>,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
            gate: None,
        }
    }

    pub fn json(body: serde_json::Value) -> Answer {
        Answer {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            delay: Duration::ZERO,
            gate: None,
        }
    }

    /// Holds the answer until `gate` is notified.
    pub fn held_by(mut self, gate: &Arc<tokio::sync::Notify>) -> Answer {
        self.gate = Some(gate.clone());
        self
    }

    pub fn with_status(mut self, status: u16) -> Answer {
        self.status = status;
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }
}

struct Script {
    /// Answers for the next requests, in order; then `otherwise`.
    next: VecDeque<Answer>,
    otherwise: Answer,
}

#[derive(Clone)]
struct ReceiverState {
    script: Arc<Mutex<Script>>,
    sender: mpsc::UnboundedSender<Received>,
}

pub struct Receiver {
    pub base: String,
    script: Arc<Mutex<Script>>,
    received: mpsc::UnboundedReceiver<Received>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// A receiver on 127.0.0.1 that answers 200 until told otherwise.
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Receiver::serve(listener, Answer::status(200)).await
    }

    /// A receiver on `listener`, answering `otherwise` unless scripted.
    pub async fn serve(listener: tokio::net::TcpListener, otherwise: Answer) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let script = Arc::new(Mutex::new(Script {
            next: VecDeque::new(),
            otherwise,
        }));
        let (sender, received) = mpsc::unbounded_channel();
        let state = ReceiverState {
            script: script.clone(),
            sender,
        };
        let app = axum::Router::new().fallback(record).with_state(state);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            base: format!("http://127.0.0.1:{port}"),
            script,
            received,
            server,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Answers every request after the scripted ones with this.
    pub fn otherwise(&self, answer: Answer) {
        self.script.lock().unwrap().otherwise = answer;
    }

    /// Answers the next requests with these, in order.
    pub fn then(&self, answers: impl IntoIterator<Item = Answer>) {
        self.script.lock().unwrap().next.extend(answers);
    }

    /// The next request, or a panic after `PATIENCE`.
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(PATIENCE, self.received.recv())
            .await
            .expect("a request arrives in time")
            .expect("the receiver is running")
    }

    /// Requests that arrive within `wait`, none expected: panics on the first one.
    pub async fn expect_none(&mut self, wait: Duration) {
        if let Ok(Some(request)) = tokio::time::timeout(wait, self.received.recv()).await {
            panic!(
                "an unexpected request: {} {} {}",
                request.method,
                request.uri,
                String::from_utf8_lossy(&request.body)
            );
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(
    State(state): State<ReceiverState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let answer = {
        let mut script = state.script.lock().unwrap();
        script
            .next
            .pop_front()
            .unwrap_or_else(|| script.otherwise.clone())
    };
    let _ = state.sender.send(Received {
        method,
        uri: uri.to_string(),
        headers,
        body,
        at,
    });
    if let Some(gate) = &answer.gate {
        gate.notified().await;
    }
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut response = (
        StatusCode::from_u16(answer.status).unwrap(),
        answer.body.clone(),
    )
        .into_response();
    for (name, value) in &answer.headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}
