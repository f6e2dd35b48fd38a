//! Request bodies parsed once into checked values: what a handler acts on, and what the fuzz
//! targets and the instruction-count benchmarks feed, so that each check is written once.

use handoff_core::{Enrichment, InteractionId, InteractionSpec, Target, Timestamp};
use handoff_protocol::{CreateInteractionRequest, TransferRequest};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::json::parse_json;
use crate::wire::{canonical_json, longer_than, target_from_wire, MAX_QUEUE_SECONDS};

/// How deep a context may nest. The log wraps it two levels deeper, and every reader of the
/// log (recovery included) must parse it again well inside serde_json's limit of 128.
pub const MAX_CONTEXT_DEPTH: usize = 64;

/// The longest caller, dialed number, call id or channel, in characters.
pub const MAX_CALL_TEXT_CHARS: usize = 256;

/// A `POST /v1/interactions` body that passed every check the server makes before routing.
#[derive(Debug)]
pub struct NewInteraction {
    /// The body as it came: its canonical JSON is what an `Idempotency-Key` is checked against.
    pub request: CreateInteractionRequest,
    /// The context as the log keeps it: JSON text, `{}` when the body had none.
    pub context_text: String,
    pub target: Target,
    pub fallback: Option<Target>,
    pub max_wait_s: Option<u64>,
    /// `voice` when the body named none.
    pub channel: String,
}

impl NewInteraction {
    /// Reads and checks a create's body; `max_context_bytes` is the configured limit of the
    /// context once serialized.
    pub fn parse(body: &[u8], max_context_bytes: usize) -> Result<NewInteraction, ApiError> {
        let request = parse_json::<CreateInteractionRequest>(body)?;
        NewInteraction::check(request, max_context_bytes)
    }

    /// The checks of `parse` on a body already read, in the order their errors take
    /// precedence.
    pub fn check(
        request: CreateInteractionRequest,
        max_context_bytes: usize,
    ) -> Result<NewInteraction, ApiError> {
        let no_context = Map::new();
        let context = request.context.as_ref().unwrap_or(&no_context);
        let context_text = serde_json::to_string(context).map_err(ApiError::internal)?;
        if context_text.len() > max_context_bytes {
            return Err(ApiError::too_large(format!(
                "context: {} bytes serialized, more than the limit of {}",
                context_text.len(),
                max_context_bytes
            ))
            .with_field("context"));
        }
        if object_depth(context) > MAX_CONTEXT_DEPTH {
            return Err(ApiError::unprocessable(
                "context_too_deep",
                format!("context: nested more than {MAX_CONTEXT_DEPTH} levels deep"),
            )
            .with_field("context"));
        }
        let (target, fallback) = targets(&request.target, request.fallback.as_ref())?;
        let max_wait_s = match request.max_wait_s {
            None => None,
            Some(seconds) if (0..=MAX_QUEUE_SECONDS).contains(&seconds) => Some(seconds as u64),
            Some(seconds) => {
                return Err(ApiError::unprocessable(
                    "invalid_field",
                    format!("max_wait_s: {seconds} is not from 0 to {MAX_QUEUE_SECONDS}"),
                )
                .with_field("max_wait_s"))
            }
        };
        let channel = request
            .channel
            .clone()
            .unwrap_or_else(|| "voice".to_owned());
        check_call_text("caller", request.caller.as_deref())?;
        check_call_text("dialed", request.dialed.as_deref())?;
        check_call_text("call_id", request.call_id.as_deref())?;
        check_call_text("channel", Some(&channel))?;
        if channel.is_empty() {
            return Err(
                ApiError::unprocessable("invalid_channel", "channel: must not be empty")
                    .with_field("channel"),
            );
        }
        Ok(NewInteraction {
            request,
            context_text,
            target,
            fallback,
            max_wait_s,
            channel,
        })
    }

    pub fn priority(&self) -> i32 {
        self.request.priority.unwrap_or(0)
    }

    /// The interaction the core creates from this request.
    pub fn into_spec(
        self,
        id: InteractionId,
        enrichment: Vec<Enrichment>,
        created_by: Option<String>,
        created_at: Timestamp,
    ) -> InteractionSpec {
        InteractionSpec {
            id,
            priority: self.priority(),
            caller: self.request.caller,
            dialed: self.request.dialed,
            channel: self.channel,
            call_id: self.request.call_id,
            context: self.context_text,
            target: self.target,
            fallback: self.fallback,
            max_wait_s: self.max_wait_s,
            enrichment,
            created_by,
            created_at,
        }
    }

    /// What an `Idempotency-Key` remembers of the body: equal as parsed JSON, equal hashes, so
    /// the re-serialized request is hashed, not the bytes as they came.
    pub fn body_sha256(&self) -> [u8; 32] {
        Sha256::digest(canonical_json(
            &serde_json::to_value(&self.request).unwrap_or_default(),
        ))
        .into()
    }
}

/// A transfer's body (`POST /v1/interactions/{id}/transfer`), checked.
#[derive(Debug)]
pub struct NewTransfer {
    pub target: Target,
    pub fallback: Option<Target>,
    pub note: Option<String>,
}

/// The longest note a transfer carries to the next agent, in bytes.
pub const MAX_TRANSFER_NOTE_BYTES: usize = 4096;

impl NewTransfer {
    pub fn check(request: TransferRequest) -> Result<NewTransfer, ApiError> {
        let (target, fallback) = targets(&request.target, request.fallback.as_ref())?;
        if request
            .note
            .as_ref()
            .is_some_and(|note| note.len() > MAX_TRANSFER_NOTE_BYTES)
        {
            return Err(ApiError::unprocessable(
                "invalid_field",
                format!("note: at most {MAX_TRANSFER_NOTE_BYTES} bytes"),
            )
            .with_field("note"));
        }
        Ok(NewTransfer {
            target,
            fallback,
            note: request.note,
        })
    }
}

/// A request's `target` and `fallback`, each error naming its field.
fn targets(
    target: &handoff_protocol::Target,
    fallback: Option<&handoff_protocol::Target>,
) -> Result<(Target, Option<Target>), ApiError> {
    let target = target_from_wire(target, "target")?;
    let fallback = fallback
        .map(|fallback| target_from_wire(fallback, "fallback"))
        .transpose()?;
    Ok((target, fallback))
}

/// How deep a JSON object nests: 1 for an object of scalars.
pub fn object_depth(map: &Map<String, Value>) -> usize {
    1 + map.values().map(json_depth).max().unwrap_or(0)
}

fn json_depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => object_depth(map),
        Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn check_call_text(field: &'static str, value: Option<&str>) -> Result<(), ApiError> {
    if value.is_some_and(|v| longer_than(v, MAX_CALL_TEXT_CHARS)) {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("{field}: at most {MAX_CALL_TEXT_CHARS} characters"),
        )
        .with_field(field));
    }
    Ok(())
}
