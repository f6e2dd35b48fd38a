//! Public routes: health, metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use crate::AppState;

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "system",
    summary = "Health: 200 once recovery is done",
    responses(
        (status = 200, description = "Serving", body = crate::openapi::Health),
    ),
)]
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    // The router is only served once recovery has finished, so answering means ready.
    axum::Json(handoff_protocol::Health {
        status: "ok".to_owned(),
        head_seq: state.shared.head(),
        role: if state.follower { "follower" } else { "writer" }.to_owned(),
    })
}

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "system",
    summary = "Prometheus metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain; version=0.0.4", body = String),
    ),
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "system",
    summary = "This OpenAPI 3.1 document",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
    ),
)]
pub async fn openapi() -> impl IntoResponse {
    axum::Json(crate::openapi::document())
}
