//! `GET /v1/events`: Server-Sent Events of every event, replayed from `Last-Event-ID` or
//! `?after=`, then live, with an optional type filter.

use std::convert::Infallible;

use axum::extract::State;

use super::Query;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::integrations::TypeFilter;
use crate::AppState;

const REPLAY_PAGE: usize = 500;

#[derive(Deserialize)]
pub struct EventsQuery {
    after: Option<String>,
    types: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "stream_events",
    tag = "events",
    summary = "Server-Sent Events of every event (supervisor, admin)",
    params(
        ("after" = Option<u64>, Query, description = "Replay every event with `seq` above this first, then go live"),
        ("types" = Option<String>, Query, description = "Comma-separated event types; `agent.*` matches a prefix"),
        ("Last-Event-ID" = Option<u64>, Header, nullable = false, description = "Like `after`, sent by a reconnecting EventSource"),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`: each event is `id: SEQ` and `data: <CloudEvent JSON>`", content_type = "text/event-stream", body = String),
        (status = 400, description = "A bad Last-Event-ID or after", body = handoff_protocol::ErrorBody),
        (status = 401, description = "Missing or bad token", body = handoff_protocol::ErrorBody),
        (status = 403, description = "Not supervisor or admin", body = handoff_protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn stream(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin, Role::Supervisor])?;
    // A reconnecting EventSource sends `Last-Event-ID` to the URL it was opened with, `?after=`
    // included: the header is where it got to, so it wins, and nothing is sent twice.
    let from_header = headers
        .get("last-event-id")
        .map(|v| {
            // Not text: kept, to be refused below rather than ignored.
            v.to_str()
                .map_or_else(|_| "?".to_owned(), |text| text.trim().to_owned())
        })
        .filter(|text| !text.is_empty());
    let (after, field) = match from_header {
        Some(text) => (Some(text), "Last-Event-ID"),
        None => (
            query
                .after
                .map(|text| text.trim().to_owned())
                .filter(|t| !t.is_empty()),
            "after",
        ),
    };
    let after = match after {
        None => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "invalid_field",
                format!("{field}: must be a non-negative integer (a seq)"),
            )
            .with_field(field)
        })?),
    };
    // A seq the log has not reached (another server's log, a restored backup) is refused
    // rather than answered with a stream that stays silent until the log gets there.
    let head = super::stream::head_reaching(&state, after.unwrap_or(0)).await;
    if let Some(after) = after.filter(|after| *after > head) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("{field}: {after} is beyond the log's head ({head})"),
        )
        .with_field(field));
    }
    let filter = TypeFilter(
        query
            .types
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
    );
    let (sender, mut receiver) = mpsc::channel::<SseEvent>(256);
    let mut live = state.shared.subscribe();
    let mut stats = state.shared.subscribe_stats();
    // Revoking the key (or signing the session out) ends the stream at once, as for sockets.
    let mut revocations = state.shared.subscribe_revocations();
    let key_id = principal.key_id.clone();
    let wants_stats = filter.matches("queue.stats");
    let mut last = after.unwrap_or_else(|| state.shared.head());
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let send = |seq: u64, payload: &str| SseEvent::default().id(seq.to_string()).data(payload);
        // Replay what the store has, then the live feed; `last` drops what is in both.
        let mut catch_up = after.is_some();
        loop {
            if catch_up {
                // Up to the engine's head only: the log may hold events a moment before the
                // engine has applied them, and a reader must be able to read what it was told.
                // Later ones come on the live feed, subscribed before this.
                let head = state.shared.head();
                while last < head {
                    let page = match state.store.events_after(last, REPLAY_PAGE).await {
                        Ok(page) => page,
                        Err(error) => {
                            tracing::error!(%error, "event replay read failed");
                            return;
                        }
                    };
                    for event in page.iter().take_while(|event| event.seq <= head) {
                        if filter.matches(&event.event_type)
                            && sender.send(send(event.seq, &event.payload)).await.is_err()
                        {
                            return;
                        }
                        last = event.seq;
                    }
                    if page.len() < REPLAY_PAGE || page.last().is_some_and(|e| e.seq > head) {
                        break;
                    }
                }
                catch_up = false;
            }
            tokio::select! {
                _ = shutdown.fired() => return,
                _ = sender.closed() => return,
                revoked = revocations.recv() => {
                    if revoked.is_ok_and(|ids| ids.contains(&key_id)) {
                        return;
                    }
                }
                received = live.recv() => match received {
                    Ok(event) => {
                        if event.seq <= last {
                            continue;
                        }
                        last = event.seq;
                        if filter.matches(&event.event_type)
                            && sender.send(send(event.seq, &event.payload)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) => catch_up = true,
                    Err(RecvError::Closed) => return,
                },
                // Statistics carry no seq (they are not in the log): no `id:` line either.
                received = stats.recv(), if wants_stats => match received {
                    Ok(event) => {
                        if sender.send(SseEvent::default().data(event.payload.as_str())).await.is_err() {
                            return;
                        }
                    }
                    // A missed snapshot is superseded by the next one.
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
            }
        }
    });
    let events = futures_util::stream::poll_fn(move |cx| {
        receiver
            .poll_recv(cx)
            .map(|next| next.map(Ok::<_, Infallible>))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
