//! A follower's front door: every request that reads or changes the writer's state goes, as
//! it came, to the node that holds the writer lease, and its answer comes back as that node
//! gave it. Only what a follower exists for stays here: agent streams (WebSocket), Server-Sent
//! Events, the pages and their assets, health and metrics.
//!
//! The writer authenticates forwarded requests itself, so a follower never decides on a write
//! with keys that may be a moment old. A request arrives at most once at the writer from here:
//! nothing is retried (a create carries its `Idempotency-Key` for the client's own retry).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use handoff_store::Store;
use tokio::sync::watch;

use crate::engine::Shared;
use crate::error::ApiError;

/// Marks a request a follower forwarded: a node that is not the writer either refuses it
/// rather than forward it again (the lease moved while it travelled).
pub const FORWARDED_HEADER: &str = "x-handoff-forwarded-by";

/// Where the writer is, as this node last read the lease: its URL, or None while no node
/// holds it.
pub type WriterAddress = watch::Receiver<Option<String>>;

/// What the forwarding middleware needs.
#[derive(Clone)]
pub struct ForwardState {
    pub node: String,
    pub writer: WriterAddress,
    pub client: reqwest::Client,
    pub max_body_bytes: usize,
    /// To read the keys again after a forwarded request that may have changed them, so that a
    /// session or token the writer just issued works on this node's streams at once.
    pub store: Arc<dyn Store>,
    pub shared: Arc<Shared>,
}

impl ForwardState {
    pub fn new(
        node: String,
        writer: WriterAddress,
        max_body_bytes: usize,
        store: Arc<dyn Store>,
        shared: Arc<Shared>,
    ) -> ForwardState {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("a reqwest client with these settings builds");
        ForwardState {
            node,
            writer,
            client,
            max_body_bytes,
            store,
            shared,
        }
    }
}

/// Whether a request is served by the follower itself.
fn served_here(method: &Method, path: &str) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    matches!(
        path,
        "/healthz" | "/metrics" | "/openapi.json" | "/" | "/signin" | "/supervisor" | "/v1/events"
    ) || path.starts_with("/assets/")
        || path == "/docs"
        || path.starts_with("/docs/")
        || (path.starts_with("/v1/agents/") && path.ends_with("/stream"))
}

/// Whether a forwarded request may have added or removed keys (tokens, sessions).
fn may_change_keys(method: &Method, path: &str) -> bool {
    method != Method::GET
        && (path.starts_with("/v1/keys")
            || path.starts_with("/v1/session")
            || path.ends_with("/tokens")
            || (method == Method::DELETE && path.starts_with("/v1/agents/")))
}

/// Headers that belong to one connection, not to the request (RFC 9110 7.6.1), and `host`.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

pub async fn forward_writes(
    State(forward): State<ForwardState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    if served_here(request.method(), &path) {
        return next.run(request).await;
    }
    if request.headers().contains_key(FORWARDED_HEADER) {
        return no_writer(
            "the request was forwarded to a node that no longer holds the writer lease",
        );
    }
    let Some(writer) = forward.writer.borrow().clone() else {
        return no_writer("no node holds the writer lease at the moment");
    };
    let method = request.method().clone();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| path.clone());
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, forward.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {} bytes", forward.max_body_bytes),
            )
            .into_response()
        }
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let answer = forward
        .client
        .request(method.clone(), format!("{writer}{path_and_query}"))
        .headers(headers)
        .header(FORWARDED_HEADER, forward.node.as_str())
        .body(body)
        .send()
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => {
            // Per request, so debug: while a writer is being replaced every forwarded request
            // fails; the lease loop says at info when the writer changes.
            tracing::debug!(%writer, %error, "the writer cannot be reached");
            metrics::counter!("handoff_forward_failures_total").increment(1);
            return no_writer("the node that holds the writer lease cannot be reached");
        }
    };
    let status = answer.status();
    let mut response_headers = HeaderMap::new();
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) {
            response_headers.append(name.clone(), value.clone());
        }
    }
    let body = match answer.bytes().await {
        Ok(body) => body,
        Err(error) => {
            tracing::debug!(%writer, %error, "the writer's answer was cut off");
            metrics::counter!("handoff_forward_failures_total").increment(1);
            return no_writer("the writer's answer was cut off; the request may have been made");
        }
    };
    if status.is_success() && may_change_keys(&method, &path) {
        match forward.store.keys().await {
            Ok(keys) => forward.shared.replace_keys(keys),
            Err(error) => tracing::warn!(%error, "cannot read the keys again"),
        }
    }
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    response
}

fn no_writer(message: &str) -> Response {
    let mut error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_writer", message);
    error.retry_after_s = Some(1);
    error.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_pages_and_health_stay_on_the_follower_and_everything_else_goes() {
        assert!(served_here(&Method::GET, "/v1/agents/alice/stream"));
        assert!(served_here(&Method::GET, "/v1/events"));
        assert!(served_here(&Method::GET, "/assets/desktop.js"));
        assert!(served_here(&Method::GET, "/healthz"));
        assert!(!served_here(&Method::POST, "/v1/interactions"));
        assert!(!served_here(&Method::GET, "/v1/interactions/int_1"));
        assert!(!served_here(&Method::GET, "/v1/agents/alice"));
        assert!(!served_here(&Method::POST, "/v1/agents/alice/stream"));
        assert!(!served_here(&Method::PUT, "/v1/agents/alice/presence"));
    }

    #[test]
    fn key_changes_are_the_writes_of_keys_sessions_tokens_and_agent_deletions() {
        assert!(may_change_keys(&Method::POST, "/v1/keys"));
        assert!(may_change_keys(&Method::DELETE, "/v1/keys/key_1"));
        assert!(may_change_keys(&Method::POST, "/v1/session"));
        assert!(may_change_keys(&Method::POST, "/v1/agents/alice/tokens"));
        assert!(may_change_keys(&Method::DELETE, "/v1/agents/alice"));
        assert!(!may_change_keys(&Method::PUT, "/v1/agents/alice"));
        assert!(!may_change_keys(&Method::GET, "/v1/keys"));
        assert!(!may_change_keys(&Method::POST, "/v1/interactions"));
    }
}
