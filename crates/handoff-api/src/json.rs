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
        let bytes = read_json_body(request, state).await?;
        let value = parse_json::<T>(&bytes)?;
        Ok(JsonBody(value, bytes))
    }
}

/// A JSON body's bytes, not yet parsed: its content type checked and its size bounded by
/// `max_body_bytes` (refused before it is buffered whole).
pub async fn read_json_body(request: Request, state: &AppState) -> Result<bytes::Bytes, ApiError> {
    let limit = state.settings.max_body_bytes;
    let (parts, body) = request.into_parts();
    require_json_content_type(&parts.headers)?;
    read_limited(&parts.headers, body, limit).await
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
///
/// A whole-number float where the schema wants an integer (`"capacity": 2.0`) is read as that
/// integer, as JSON Schema's `integer` type allows: the body is read again with every
/// whole-number float under the refused field written as an integer. Only the refused field is
/// touched, so free-form JSON (an interaction's `context`) keeps its numbers as they came.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request("invalid_utf8", "the body is not valid UTF-8"))?;
    refuse_non_object(text)?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    let value = match result {
        Ok(value) => value,
        Err(error) => {
            let path = error.path().clone();
            let inner = error.into_inner();
            let syntax = matches!(
                inner.classify(),
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof
            );
            // serde reports some schema mistakes (an extra key in a one-key enum) as syntax:
            // the body is only "not JSON" when it does not parse as JSON at all.
            let Ok(mut tree) = serde_json::from_str::<serde_json::Value>(text) else {
                if syntax {
                    return Err(ApiError::bad_request(
                        "invalid_json",
                        format!("the body is not valid JSON: {}", strip_position(&inner)),
                    ));
                }
                return Err(schema_error(&path, &inner, None));
            };
            return reparse_with_whole_numbers(&mut tree, path, inner);
        }
    };
    deserializer.end().map_err(|error| {
        ApiError::bad_request(
            "invalid_json",
            format!("the body is not valid JSON: {}", strip_position(&error)),
        )
    })?;
    Ok(value)
}

/// Reads `tree` again after `first` refused the field at `path`, as long as each refused field
/// holds whole-number floats to write as integers; the last refusal becomes the error.
fn reparse_with_whole_numbers<T: DeserializeOwned>(
    tree: &mut serde_json::Value,
    mut path: serde_path_to_error::Path,
    mut error: serde_json::Error,
) -> Result<T, ApiError> {
    // Each round turns at least one float into an integer; a body has boundedly many.
    for _ in 0..64 {
        let Some(field) = value_at(tree, &path) else {
            break;
        };
        if !integerize(field) {
            break;
        }
        match serde_path_to_error::deserialize::<_, T>(&*tree) {
            Ok(value) => return Ok(value),
            Err(next) => {
                path = next.path().clone();
                error = next.into_inner();
            }
        }
    }
    let fraction = value_at(tree, &path).and_then(first_fraction);
    Err(schema_error(&path, &error, fraction))
}

/// The value at a path of serde_path_to_error, if the tree has it.
fn value_at<'a>(
    tree: &'a mut serde_json::Value,
    path: &serde_path_to_error::Path,
) -> Option<&'a mut serde_json::Value> {
    use serde_path_to_error::Segment;
    let mut at = tree;
    for segment in path.iter() {
        at = match segment {
            Segment::Seq { index } => at.get_mut(*index)?,
            Segment::Map { key } => at.get_mut(key.as_str())?,
            Segment::Enum { .. } => at,
            Segment::Unknown => return None,
        };
    }
    Some(at)
}

/// Writes every whole-number float in `value` as an integer; whether there was one.
fn integerize(value: &mut serde_json::Value) -> bool {
    match value {
        serde_json::Value::Number(number) if !number.is_i64() && !number.is_u64() => {
            let Some(float) = number.as_f64() else {
                return false;
            };
            let whole = float.fract() == 0.0 && float.abs() < 9.0e15;
            if whole {
                *value = serde_json::Value::from(float as i64);
            }
            whole
        }
        serde_json::Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, item| integerize(item) | changed),
        serde_json::Value::Object(map) => map
            .values_mut()
            .fold(false, |changed, item| integerize(item) | changed),
        _ => false,
    }
}

/// The relative path and value of the first number with a fraction in `value`, e.g.
/// (`.voice`, 2.5) in `{"voice": 2.5}`.
fn first_fraction(value: &mut serde_json::Value) -> Option<(String, f64)> {
    match value {
        serde_json::Value::Number(number) if !number.is_i64() && !number.is_u64() => {
            number.as_f64().map(|float| (String::new(), float))
        }
        serde_json::Value::Array(items) => items.iter_mut().enumerate().find_map(|(i, item)| {
            first_fraction(item).map(|(path, float)| (format!("[{i}]{path}"), float))
        }),
        serde_json::Value::Object(map) => map.iter_mut().find_map(|(key, item)| {
            first_fraction(item).map(|(path, float)| (format!(".{key}{path}"), float))
        }),
        _ => None,
    }
}

/// A 400 `invalid_field` naming the field, in words rather than serde's.
fn schema_error(
    path: &serde_path_to_error::Path,
    error: &serde_json::Error,
    fraction: Option<(String, f64)>,
) -> ApiError {
    let path = path.to_string();
    let text = strip_position(error);
    // A missing field is named by the message, under the path of its container; an unknown one
    // (a misspelt `caler`) is already the last step of the path.
    let missing = text
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    let mut field = match (path.as_str(), missing) {
        (".", Some(name)) => Some(name.to_owned()),
        (".", None) => None,
        (_, Some(name)) => Some(format!("{path}.{name}")),
        (_, None) => Some(path),
    };
    let message = match (&fraction, field.as_deref()) {
        // A number with a fraction inside a field that takes whole numbers.
        (Some((inner, float)), Some(at)) if is_integer_complaint(&text) => {
            let at = format!("{at}{inner}");
            let message = format!("{at}: must be a whole number (such as 2 or 2.0), not {float}");
            field = Some(at);
            message
        }
        _ => readable(&text, missing.is_some()),
    };
    let message = match (field.as_deref(), missing) {
        (_, Some(_)) | (None, _) => match field.as_deref() {
            Some(field) => format!("{field}: {message}"),
            None => message,
        },
        (Some(field), None) if message.starts_with(&format!("{field}: ")) => message,
        (Some(field), None) => format!("{field}: {message}"),
    };
    let mut error = ApiError::bad_request("invalid_field", message);
    error.field = field;
    error
}

/// Whether serde's complaint is about a value where a whole number (or a capacity, a number or
/// a map of numbers) was expected.
fn is_integer_complaint(text: &str) -> bool {
    text.starts_with("invalid type: floating point")
        || text.starts_with("data did not match any variant of untagged enum")
}

/// serde's message in an API caller's words: no Rust type names, no positions.
fn readable(text: &str, missing: bool) -> String {
    if missing {
        return "is required".to_owned();
    }
    if let Some(rest) = text.strip_prefix("invalid type: ") {
        if let Some((got, expected)) = rest.split_once(", expected ") {
            return format!(
                "must be {}, not {}",
                expected_in_words(expected),
                got_in_words(got)
            );
        }
    }
    if let Some(rest) = text.strip_prefix("invalid value: ") {
        if let Some((got, expected)) = rest.split_once(", expected ") {
            return format!(
                "must be {}, not {}",
                expected_in_words(expected),
                got_in_words(got)
            );
        }
    }
    if let Some(rest) = text.strip_prefix("unknown field ") {
        let (name, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let expected = expected.trim_start_matches("one of ").replace('`', "");
        let name = name.replace('`', "");
        return if expected.is_empty() || expected.starts_with("there are no fields") {
            format!("unknown field {name}; this object takes no such field")
        } else {
            format!("unknown field {name}; the fields are {expected}")
        };
    }
    if let Some(rest) = text.strip_prefix("unknown variant ") {
        let (name, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let expected = expected.trim_start_matches("one of ").replace('`', "");
        return format!("{} is not one of {expected}", name.replace('`', "\""));
    }
    if text.starts_with("data did not match any variant of untagged enum Capacity") {
        return "must be a whole number, or an object of whole numbers per channel".to_owned();
    }
    if text.starts_with("data did not match any variant of untagged enum") {
        return "does not have any of the shapes this field takes".to_owned();
    }
    if text.starts_with("duplicate field ") {
        return format!(
            "{} appears twice",
            text.trim_start_matches("duplicate field ").replace('`', "")
        );
    }
    if let Some(rest) = text.strip_prefix("invalid length ") {
        return format!(
            "has the wrong number of items ({})",
            rest.replace(", expected", "; expected")
        );
    }
    text.to_owned()
}

/// serde's `expected ...` in words.
fn expected_in_words(expected: &str) -> String {
    let expected = expected.trim();
    let integer = |range: &str| format!("a whole number{range}");
    match expected {
        "u8" => integer(" from 0 to 255"),
        "u16" => integer(" from 0 to 65535"),
        "u32" => integer(" from 0 to 4294967295"),
        "u64" | "usize" => integer(" from 0"),
        "i8" | "i16" | "i32" | "i64" | "isize" | "i128" | "u128" => integer(""),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" | "a string" | "a borrowed string" => expected.replace("borrowed ", ""),
        "a sequence" => "an array".to_owned(),
        "a map" => "an object".to_owned(),
        _ if expected.starts_with("struct ") || expected.starts_with("a map") => {
            "an object".to_owned()
        }
        _ if expected.starts_with("enum ") => "one of the names this field takes".to_owned(),
        _ if expected.starts_with("a sequence") => "an array".to_owned(),
        _ => expected.replace('`', ""),
    }
}

/// serde's `invalid type: ...` (what came) in words.
fn got_in_words(got: &str) -> String {
    let got = got.trim();
    if let Some(rest) = got.strip_prefix("floating point ") {
        return rest.replace('`', "");
    }
    if let Some(rest) = got.strip_prefix("integer ") {
        return rest.replace('`', "");
    }
    match got {
        "sequence" => "an array".to_owned(),
        "map" => "an object".to_owned(),
        "null" | "unit value" => "null".to_owned(),
        _ if got.starts_with("string ") || got.starts_with("boolean ") => got.replace('`', ""),
        _ => got.replace('`', ""),
    }
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
