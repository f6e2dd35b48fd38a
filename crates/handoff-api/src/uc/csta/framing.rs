//! The byte framing of CSTA XML over TCP: where one message ends and the next begins.
//!
//! TCP carries no message boundaries, and ECMA-323 does not fix one. The servers handoff meets
//! (Avaya AES, Unify OpenScape, Mitel MiVoice, the ECMA TR/88 examples) frame each message with
//! the same 8-byte header, which is what [`Tr88Codec`] speaks:
//!
//! ```text
//!  0      2      4              8
//! +------+------+--------------+---------------------------+
//! | 0x00 | len  | invoke id    | XML (UTF-8)               |
//! | 0x00 | (BE) | 4 ASCII chars|                           |
//! +------+------+--------------+---------------------------+
//! ```
//!
//! `len` counts the whole frame, header included, so no frame exceeds 65 535 bytes: that is the
//! 64 KiB bound on what handoff buffers per connection. The invoke id pairs a response with its
//! request; the server uses an id of its own for events (Avaya: `9999`). A header that breaks
//! these rules means the stream is out of step, and nothing after it can be trusted: the
//! decoder reports it and the session reconnects rather than guess where the next frame starts.
//!
//! Another framing (a SOAP or WebSocket transport, a server that sends bare XML documents)
//! would be a second codec with the same two methods; nothing else touches the bytes.

use std::fmt;

/// Bytes before the XML.
pub const HEADER_LEN: usize = 8;
/// The largest frame the 16-bit length can describe.
pub const MAX_FRAME_LEN: usize = u16::MAX as usize;

/// A request's or response's correlation: four ASCII characters, `0001`…`9998` from handoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InvokeId([u8; 4]);

impl InvokeId {
    /// The id of the `n`th request, wrapping within `0001`…`9998` (`0000` and `9999` are left
    /// to the server, which uses them for events).
    pub fn nth(n: u32) -> InvokeId {
        let value = n % 9998 + 1;
        let text = format!("{value:04}");
        let mut bytes = [b'0'; 4];
        bytes.copy_from_slice(text.as_bytes());
        InvokeId(bytes)
    }

    pub fn from_bytes(bytes: [u8; 4]) -> Option<InvokeId> {
        bytes
            .iter()
            .all(|b| b.is_ascii_graphic())
            .then_some(InvokeId(bytes))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored.
        std::str::from_utf8(&self.0).unwrap_or("????")
    }
}

impl fmt::Display for InvokeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub invoke_id: InvokeId,
    /// The XML as it came; not checked to be UTF-8 here, since a bad body spoils only its
    /// own message, not the stream.
    pub body: Vec<u8>,
}

/// The stream can no longer be read frame by frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("format indicator {0:#06x}, expected 0x0000 (out of step, or not CSTA XML)")]
    FormatIndicator(u16),
    #[error("frame length {0} is shorter than the header")]
    TooShort(usize),
    #[error("invoke id {0:02x?} is not four printable ASCII characters")]
    InvokeId([u8; 4]),
    #[error("message of {0} bytes does not fit in one frame of at most {MAX_FRAME_LEN}")]
    TooLong(usize),
}

/// The TR/88-style codec: the 8-byte header above.
#[derive(Debug, Default)]
pub struct Tr88Codec;

impl Tr88Codec {
    /// Appends one framed message to `out`.
    pub fn encode(
        &self,
        invoke_id: InvokeId,
        xml: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), FramingError> {
        let total = HEADER_LEN + xml.len();
        let length = u16::try_from(total).map_err(|_| FramingError::TooLong(total))?;
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&invoke_id.0);
        out.extend_from_slice(xml.as_bytes());
        Ok(())
    }

    /// Takes the first whole frame off the front of `buffer`, if one is there. The buffer
    /// never needs to hold more than one frame plus what one read brought.
    pub fn decode(&self, buffer: &mut Vec<u8>) -> Result<Option<Frame>, FramingError> {
        if buffer.len() < HEADER_LEN {
            // Reject a bad indicator as soon as its two bytes are in, without waiting.
            if buffer.len() >= 2 {
                let indicator = u16::from_be_bytes([buffer[0], buffer[1]]);
                if indicator != 0 {
                    return Err(FramingError::FormatIndicator(indicator));
                }
            }
            return Ok(None);
        }
        let indicator = u16::from_be_bytes([buffer[0], buffer[1]]);
        if indicator != 0 {
            return Err(FramingError::FormatIndicator(indicator));
        }
        let length = usize::from(u16::from_be_bytes([buffer[2], buffer[3]]));
        if length < HEADER_LEN {
            return Err(FramingError::TooShort(length));
        }
        let id_bytes = [buffer[4], buffer[5], buffer[6], buffer[7]];
        let invoke_id = InvokeId::from_bytes(id_bytes).ok_or(FramingError::InvokeId(id_bytes))?;
        if buffer.len() < length {
            return Ok(None);
        }
        let body = buffer[HEADER_LEN..length].to_vec();
        buffer.drain(..length);
        Ok(Some(Frame { invoke_id, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> InvokeId {
        InvokeId::from_bytes(text.as_bytes().try_into().unwrap()).unwrap()
    }

    #[test]
    fn a_message_is_framed_with_the_indicator_the_total_length_and_the_invoke_id() {
        let xml = "<MonitorStopResponse/>";
        let mut out = Vec::new();
        Tr88Codec.encode(id("0042"), xml, &mut out).unwrap();
        assert_eq!(&out[..2], &[0, 0]);
        assert_eq!(
            usize::from(u16::from_be_bytes([out[2], out[3]])),
            8 + xml.len()
        );
        assert_eq!(&out[4..8], b"0042");
        assert_eq!(&out[8..], xml.as_bytes());
    }

    #[test]
    fn frames_are_cut_where_the_length_says_whatever_the_reads_bring() {
        let mut wire = Vec::new();
        Tr88Codec
            .encode(id("0001"), "<A/>", &mut wire)
            .expect("fits");
        Tr88Codec
            .encode(id("9999"), "<BBBB/>", &mut wire)
            .expect("fits");
        // Byte by byte: nothing until a frame is whole, then exactly that frame.
        let mut buffer = Vec::new();
        let mut frames = Vec::new();
        for byte in wire {
            buffer.push(byte);
            while let Some(frame) = Tr88Codec.decode(&mut buffer).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].invoke_id.as_str(), "0001");
        assert_eq!(frames[0].body, b"<A/>");
        assert_eq!(frames[1].invoke_id.as_str(), "9999");
        assert_eq!(frames[1].body, b"<BBBB/>");
        assert!(buffer.is_empty());
    }

    #[test]
    fn a_header_out_of_step_is_an_error_not_a_guess() {
        let mut buffer = vec![0x3c, 0x3f, 0, 0];
        assert_eq!(
            Tr88Codec.decode(&mut buffer),
            Err(FramingError::FormatIndicator(0x3c3f))
        );
        let mut buffer = vec![0, 0, 0, 5, b'0', b'0', b'0', b'1'];
        assert_eq!(
            Tr88Codec.decode(&mut buffer),
            Err(FramingError::TooShort(5))
        );
        let mut buffer = vec![0, 0, 0, 9, 0xff, b'0', b'0', b'1', b'x'];
        assert!(matches!(
            Tr88Codec.decode(&mut buffer),
            Err(FramingError::InvokeId(_))
        ));
    }

    #[test]
    fn a_message_longer_than_a_frame_is_refused_when_encoding() {
        let xml = "x".repeat(MAX_FRAME_LEN);
        let mut out = Vec::new();
        assert!(matches!(
            Tr88Codec.encode(id("0001"), &xml, &mut out),
            Err(FramingError::TooLong(_))
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn invoke_ids_count_from_0001_and_wrap_before_9999() {
        assert_eq!(InvokeId::nth(0).as_str(), "0001");
        assert_eq!(InvokeId::nth(9996).as_str(), "9997");
        assert_eq!(InvokeId::nth(9997).as_str(), "9998");
        assert_eq!(InvokeId::nth(9998).as_str(), "0001");
    }
}
