//! What travels on an agent's WebSocket, read by the code that reads it.
//!
//! - Client to server: the desktop's text frames. The server reads each as
//!   `handoff_protocol::AckFrame` with `serde_json::from_str` and, when `ack > 0`, hands
//!   `Seq::new(ack)` to the engine. That reading is inline in `AgentStream::on_message`
//!   (`crates/handoff-api/src/routes/stream.rs`, not reachable from outside the crate), so the
//!   same two calls are made here on the same input.
//! - Server to client: an event frame is the log's payload, a `CloudEvent`; the client library
//!   and the desktop read it as such, and the server reads the same text back from the log with
//!   `handoff_api::wire::decode_event` (recovery, replay, connectors). Arbitrary text must be an
//!   error there, never a panic.

#![no_main]

use handoff_core::Seq;
use handoff_protocol::{AckFrame, CloudEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A text frame is UTF-8 (tungstenite refuses anything else before the handler sees it).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `on_message`, `Message::Text`.
    if let Ok(ack) = serde_json::from_str::<AckFrame>(text) {
        if ack.ack > 0 {
            assert_eq!(Seq::new(ack.ack).get(), ack.ack);
        }
        // What the client library sends reads back the same.
        let sent = serde_json::to_string(&AckFrame { ack: ack.ack }).expect("an ack serializes");
        assert_eq!(serde_json::from_str::<AckFrame>(&sent).ok(), Some(ack));
    }
    // An event frame, as a client reads it.
    if let Ok(event) = serde_json::from_str::<CloudEvent>(text) {
        let again = serde_json::to_string(&event).expect("an event serializes");
        let reread: CloudEvent = serde_json::from_str(&again).expect("an event reads back");
        assert_eq!(reread.seq, event.seq);
        assert_eq!(reread.event_type, event.event_type);
    }
    // The same text as the log holds it, read as the server reads it back.
    for seq in [0, 1, u64::MAX] {
        let _ = handoff_api::wire::decode_event(seq, text);
    }
});
