//! Text on the wire: times as RFC 3339, lengths counted in characters, the clock, and the
//! canonical JSON an `Idempotency-Key` hashes.

use handoff_core::Timestamp;
use serde_json::Value;

/// RFC 3339, UTC, milliseconds: `2026-11-24T10:24:18.123Z`.
pub fn format_time(at: Timestamp) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(at.millis() as i128 * 1_000_000)
        .ok()
        .and_then(|moment| moment.format(&format).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_owned())
}

pub fn parse_time(text: &str) -> Option<Timestamp> {
    let moment =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(Timestamp::from_millis(
        (moment.unix_timestamp_nanos() / 1_000_000) as i64,
    ))
}

/// Whether `text` is over `max` characters, as JSON Schema's `maxLength` counts them. Text of
/// at most `max` bytes is never counted: the usual case costs one comparison.
pub fn longer_than(text: &str, max: usize) -> bool {
    text.len() > max && text.chars().count() > max
}

pub fn now() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_millis(since_epoch.as_millis() as i64)
}

/// JSON with object keys sorted at every depth: equal parsed JSON gives equal text. Written
/// out as it walks the value, without a sorted copy of it (every create with an
/// `Idempotency-Key` hashes its body this way).
pub fn canonical_json(value: &Value) -> String {
    fn write(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                out.push(b'{');
                for (index, (key, item)) in entries.into_iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    write_scalar(key, out);
                    out.push(b':');
                    write(item, out);
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    write(item, out);
                }
                out.push(b']');
            }
            scalar => write_scalar(scalar, out),
        }
    }
    fn write_scalar(scalar: &(impl serde::Serialize + ?Sized), out: &mut Vec<u8>) {
        // Writing a string, number, bool or null into memory cannot fail.
        serde_json::to_writer(&mut *out, scalar).expect("a JSON scalar serializes");
    }
    let mut out = Vec::with_capacity(256);
    write(value, &mut out);
    String::from_utf8(out).expect("serde_json writes UTF-8")
}
