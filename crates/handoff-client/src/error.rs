//! `ClientError`: every way a call to a handoff server can fail, with the contract's error body parsed.

use handoff_protocol::ErrorBody;

/// The boxed cause of a transport failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What the client's calls return.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// An error from a handoff call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with a 4xx or 5xx status.
    ///
    /// `code`, `message` and `field` come from the contract's error body
    /// (`{"error": {"code", "message", "field"}}`). When the body is not that shape (a proxy's
    /// error page, say), `code` is `http_<status>` and `message` is the start of the body.
    #[error("{code}: {message} (HTTP {status}{})", field_suffix(field))]
    Api {
        /// The HTTP status, e.g. 404.
        status: u16,
        /// The contract's stable snake_case code, e.g. `unknown_agent`.
        code: String,
        /// A human sentence.
        message: String,
        /// The JSON path of the offending field, when the server named one.
        field: Option<String>,
    },
    /// The request or the stream failed below HTTP: connection refused or lost, TLS, a timeout,
    /// a WebSocket protocol error.
    #[error("transport error: {0}")]
    Transport(#[source] BoxError),
    /// The server answered 2xx (or sent a stream frame) that is not the JSON expected.
    #[error("cannot decode the server's answer: {0}")]
    Decode(String),
    /// The base URL, or an identifier that has to become part of a URL, is not usable.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// The client is not configured well enough to make a call, e.g. no token.
    #[error("configuration error: {0}")]
    Config(String),
}

impl ClientError {
    /// The HTTP status, when the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The contract's error code, when the server answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether retrying the same request later can succeed: transport failures, 408, 429 and 5xx.
    ///
    /// A 4xx other than those means the request itself (or its token) is wrong, and stays wrong.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Transport(_) => true,
            ClientError::Api { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            ClientError::Decode(_) | ClientError::InvalidUrl(_) | ClientError::Config(_) => false,
        }
    }

    pub(crate) fn transport(err: impl Into<BoxError>) -> ClientError {
        ClientError::Transport(err.into())
    }
}

fn field_suffix(field: &Option<String>) -> String {
    match field {
        Some(field) => format!(", field {field}"),
        None => String::new(),
    }
}

/// How much of a non-contract error body is kept as the message.
const MAX_RAW_MESSAGE: usize = 200;

/// Turns an error answer into `ClientError::Api`, whatever its body.
pub(crate) fn api_error(status: u16, body: &[u8]) -> ClientError {
    if let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(body) {
        return ClientError::Api {
            status,
            code: error.code,
            message: error.message,
            field: error.field,
        };
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let message = if text.is_empty() {
        format!("the server answered HTTP {status} without an error body")
    } else {
        truncate(text, MAX_RAW_MESSAGE)
    };
    ClientError::Api {
        status,
        code: format!("http_{status}"),
        message,
        field: None,
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_error_body() {
        let body =
            br#"{"error": {"code": "unknown_agent", "message": "no agent bob", "field": "target.agent"}}"#;
        match api_error(422, body) {
            ClientError::Api {
                status,
                code,
                message,
                field,
            } => {
                assert_eq!(status, 422);
                assert_eq!(code, "unknown_agent");
                assert_eq!(message, "no agent bob");
                assert_eq!(field.as_deref(), Some("target.agent"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn null_field_is_none() {
        let body = br#"{"error": {"code": "conflict", "message": "not offered", "field": null}}"#;
        let err = api_error(409, body);
        assert_eq!(err.status(), Some(409));
        assert_eq!(err.code(), Some("conflict"));
        assert!(matches!(err, ClientError::Api { field: None, .. }));
        assert!(!err.is_retryable());
    }

    #[test]
    fn non_contract_bodies_still_give_an_api_error() {
        let err = api_error(502, b"<html>Bad Gateway</html>");
        assert_eq!(err.code(), Some("http_502"));
        assert!(err.to_string().contains("Bad Gateway"));
        assert!(err.is_retryable());

        let err = api_error(404, b"");
        assert_eq!(err.code(), Some("http_404"));
        assert!(err.to_string().contains("404"));
    }

    #[test]
    fn long_raw_bodies_are_cut_on_a_char_boundary() {
        let body = "é".repeat(500);
        let ClientError::Api { message, .. } = api_error(500, body.as_bytes()) else {
            panic!("expected an API error");
        };
        assert_eq!(message.chars().count(), MAX_RAW_MESSAGE + 1);
    }

    #[test]
    fn display_names_status_code_and_field() {
        let err = ClientError::Api {
            status: 422,
            code: "invalid_level".into(),
            message: "level out of range".into(),
            field: Some("skills.billing".into()),
        };
        assert_eq!(
            err.to_string(),
            "invalid_level: level out of range (HTTP 422, field skills.billing)"
        );
    }
}
