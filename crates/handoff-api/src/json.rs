//! Reading request bodies: content type, size limit (refused before the body is buffered whole),
//! UTF-8, JSON syntax and schema, each with its own status and a `field` naming the culprit.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::AppState;

/// A JSON body of type `T`, validated against the contract's error rules.
pub struct JsonBody<T>(pub T, pub bytes::Bytes);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.settings.max_body_bytes;
        let (parts, body) = request.into_parts();
        require_json_content_type(&parts.headers)?;
        let bytes = read_limited(&parts.headers, body, limit).await?;
        let value = parse_json::<T>(&bytes)?;
        Ok(JsonBody(value, bytes))
    }
}

/// Action endpoints take no body: anything but an empty one is refused.
pub struct EmptyBody;

impl FromRequest<AppState> for EmptyBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let bytes = read_limited(&parts.headers, body, 4096).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(EmptyBody);
        }
        // A JSON object that is empty is harmless; anything else is a mistake worth naming.
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(&bytes) {
            if map.is_empty() {
                return Ok(EmptyBody);
            }
        }
        Err(ApiError::bad_request(
            "unexpected_body",
            "this action takes an empty body",
        ))
    }
}

fn require_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    let is_json = mime.eq_ignore_ascii_case("application/json")
        || (mime.len() > 5
            && mime[..mime.len() - 5].contains('/')
            && mime.to_ascii_lowercase().ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON with Content-Type: application/json",
        ))
    }
}

async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::too_large(format!(
            "the body is larger than the limit of {limit} bytes"
        )));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(
            format!("the body is larger than the limit of {limit} bytes"),
        )),
        Err(error) => Err(ApiError::bad_request(
            "body_unreadable",
            format!("the body could not be read: {error}"),
        )),
    }
}

/// Parses JSON, naming the path of the field that does not fit the schema.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request("invalid_utf8", "the body is not valid UTF-8"))?;
    refuse_non_object(text)?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    let value = match result {
        Ok(value) => value,
        Err(error) => {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let syntax = matches!(
                inner.classify(),
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof
            );
            // serde reports some schema mistakes (an extra key in a one-key enum) as syntax:
            // the body is only "not JSON" when it does not parse as JSON at all.
            if syntax && serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
                return Err(ApiError::bad_request(
                    "invalid_json",
                    format!("the body is not valid JSON: {}", strip_position(&inner)),
                ));
            }
            let code = "invalid_field";
            let message = inner.to_string();
            // A missing field is named by the message, under the path of its container; an
            // unknown one (a misspelt `caler`) is already the last step of the path.
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next());
            let field = match (path.as_str(), missing) {
                (".", Some(name)) => Some(name.to_owned()),
                (".", None) => None,
                (_, Some(name)) => Some(format!("{path}.{name}")),
                (_, None) => Some(path),
            };
            let mut error = ApiError::bad_request(code, schema_message(&inner, field.as_deref()));
            error.field = field;
            return Err(error);
        }
    };
    deserializer.end().map_err(|error| {
        ApiError::bad_request(
            "invalid_json",
            format!("the body is not valid JSON: {error}"),
        )
    })?;
    Ok(value)
}

/// Every body is a JSON object. serde would read an array into a struct by position (`["+1555",
/// ...]` as `caller`, ...), so anything but an object is refused before the schema is applied;
/// text that is not JSON at all is left for the parser to describe.
fn refuse_non_object(text: &str) -> Result<(), ApiError> {
    let kind = match text.trim_start().as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b'-' | b'0'..=b'9') => "a number",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => return Ok(()),
    };
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "not_an_object",
        format!("the body must be a JSON object, not {kind}"),
    ))
}

fn strip_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    text.split(" at line ").next().unwrap_or(&text).to_owned()
}

fn schema_message(error: &serde_json::Error, field: Option<&str>) -> String {
    // serde's text carries "at line N column M", which says nothing useful to an API caller.
    let text = error.to_string();
    let text = text.split(" at line ").next().unwrap_or(&text).to_owned();
    match field {
        Some(field) => format!("{field}: {text}"),
        None => text,
    }
}
