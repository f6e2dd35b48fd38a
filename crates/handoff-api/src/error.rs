//! `ApiError`: the one error type of the API, mapped to a status code and the contract's JSON body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use handoff_core::{CommandError, QueueConfigError};
use handoff_protocol::{ErrorBody, ErrorDetail};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Sent as `Retry-After` (seconds): when a refused request may be tried again.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_s: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// An `If-Match` that does not name the resource's current version.
    pub fn precondition_failed(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            message,
        )
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// An internal failure: the detail goes to the log once, the client gets an opaque 500.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; it has been logged",
        )
    }

    /// Too many requests with one key: try again in `retry_after_s` seconds.
    pub fn rate_limited(per_second: u32, retry_after_s: u64) -> ApiError {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "this key made more than {per_second} requests a second; retry in {retry_after_s} s"
            ),
        );
        error.retry_after_s = Some(retry_after_s);
        error
    }

    /// The store could not commit: nothing was changed, the client may retry.
    pub fn unavailable(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "store unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the store could not commit the change; nothing was changed, retry later",
        )
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
                field: self.field.clone(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> ApiError {
        let message = error.to_string();
        match error {
            CommandError::UnknownAgent(_) => ApiError::not_found("unknown_agent", message),
            CommandError::UnknownInteraction(_) => {
                ApiError::not_found("unknown_interaction", message)
            }
            CommandError::UnknownTargetAgent(_) => {
                ApiError::unprocessable("unknown_agent", message).with_field("target.agent")
            }
            CommandError::UnknownTargetQueue(_) => {
                ApiError::unprocessable("unknown_queue", message).with_field("target.queue")
            }
            CommandError::DuplicateInteraction(_) => {
                ApiError::conflict("duplicate_interaction", message)
            }
            CommandError::WrongState { .. } => ApiError::conflict("wrong_state", message),
            CommandError::NotHeldByAgent { .. } => ApiError::conflict("not_held_by_agent", message),
            CommandError::AgentHoldsInteractions(_) => {
                ApiError::conflict("agent_holds_interactions", message)
            }
            CommandError::TransferToSelf => {
                ApiError::unprocessable("transfer_to_self", message).with_field("target.agent")
            }
            CommandError::FallbackSameAsTarget => {
                ApiError::unprocessable("fallback_same_as_target", message).with_field("fallback")
            }
            CommandError::UnknownQueue(_) => ApiError::not_found("unknown_queue", message),
            CommandError::QueueInUse(_) => ApiError::conflict("queue_in_use", message),
            CommandError::UnknownOverflowQueue(_) => {
                ApiError::unprocessable("unknown_queue", message).with_field("overflow.queue")
            }
            CommandError::ContextVersionMismatch { .. } => {
                ApiError::precondition_failed(message).with_field("If-Match")
            }
            CommandError::InvalidQueue(invalid) => ApiError::from(invalid),
        }
    }
}

/// A queue the core found inconsistent, as a 422 naming the field at fault.
impl From<QueueConfigError> for ApiError {
    fn from(error: QueueConfigError) -> ApiError {
        let field = match &error {
            QueueConfigError::StepsOutOfOrder => "steps".to_owned(),
            QueueConfigError::StepTightens { index } => format!("steps[{index}].skills"),
            QueueConfigError::OfferTimeoutZero => "offer_timeout_s".to_owned(),
            QueueConfigError::OverflowToItself => "overflow.queue".to_owned(),
        };
        ApiError::unprocessable("invalid_queue", format!("{field}: {error}")).with_field(field)
    }
}
