//! The SIP monitoring tests (they land with the SIP adapter).
