//! The CSTA XML messages handoff sends and the ones it reads (ECMA-323, application sessions
//! of ECMA-354), as plain Rust values.
//!
//! Reading goes through a small element tree matched by local name only: editions 3, 4 and 5
//! of ECMA-323 differ in their namespace URI (and vendors add prefixes and elements of their
//! own), while the elements handoff reads kept their names. What handoff does not understand
//! becomes [`Incoming::Other`] or [`EventKind::Other`], never an error: a server is free to
//! send more than handoff asked for.

use std::borrow::Cow;

use quick_xml::events::Event as XmlEvent;
use quick_xml::Reader;

/// The CSTA namespace handoff writes until the server names another (ECMA-323 edition 3,
/// CSTA Phase III).
pub const CSTA_ED3: &str = "http://www.ecma-international.org/standards/ecma-323/csta/ed3";
/// The prefix every ECMA-323 namespace starts with, whatever its edition.
pub const CSTA_NAMESPACE_PREFIX: &str =
    "http://www.ecma-international.org/standards/ecma-323/csta/";
/// Application session services (ECMA-354).
pub const APPL_SESSION: &str = "http://www.ecma-international.org/standards/ecma-354/appl_session";

/// Deeper than any CSTA message nests; a document past it is refused, not followed.
const MAX_DEPTH: usize = 32;
/// More elements than any CSTA message has, as a bound on work per frame.
const MAX_ELEMENTS: usize = 2048;

/// One XML element: its local name, its children and its text (trimmed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The element down `path` of child names.
    pub fn at(&self, path: &[&str]) -> Option<&Element> {
        path.iter()
            .try_fold(self, |element, name| element.child(name))
    }

    /// The non-empty text down `path`.
    pub fn text_at(&self, path: &[&str]) -> Option<&str> {
        self.at(path)
            .map(|e| e.text.as_str())
            .filter(|t| !t.is_empty())
    }
}

/// Why a frame's body is not a message.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not UTF-8")]
    NotUtf8,
    #[error("not XML: {0}")]
    Xml(String),
    #[error("no root element")]
    Empty,
    #[error("nested deeper than {MAX_DEPTH} or more than {MAX_ELEMENTS} elements")]
    TooBig,
}

/// Parses one document into its root element.
pub fn parse_element(body: &[u8]) -> Result<Element, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError::NotUtf8)?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<Element> = Vec::new();
    let mut elements = 0usize;
    let mut root = None;
    let open = |stack: &mut Vec<Element>, elements: &mut usize, name: &[u8]| {
        *elements += 1;
        if stack.len() >= MAX_DEPTH || *elements > MAX_ELEMENTS {
            return Err(ParseError::TooBig);
        }
        stack.push(Element {
            name: String::from_utf8_lossy(name).into_owned(),
            ..Element::default()
        });
        Ok(())
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|error| ParseError::Xml(error.to_string()))?;
        let closed = match event {
            XmlEvent::Start(start) => {
                if root.is_some() {
                    return Err(ParseError::Xml("content after the root element".into()));
                }
                open(&mut stack, &mut elements, start.local_name().as_ref())?;
                None
            }
            XmlEvent::Empty(start) => {
                if root.is_some() {
                    return Err(ParseError::Xml("content after the root element".into()));
                }
                open(&mut stack, &mut elements, start.local_name().as_ref())?;
                stack.pop()
            }
            XmlEvent::End(_) => stack.pop(),
            XmlEvent::Text(text) => {
                let text = text
                    .unescape()
                    .map_err(|error| ParseError::Xml(error.to_string()))?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(text.trim());
                }
                None
            }
            XmlEvent::CData(data) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(String::from_utf8_lossy(&data).trim());
                }
                None
            }
            XmlEvent::Eof => break,
            _ => None,
        };
        if let Some(element) = closed {
            match stack.last_mut() {
                Some(parent) => parent.children.push(element),
                None => root = Some(element),
            }
        }
    }
    if !stack.is_empty() {
        return Err(ParseError::Xml(
            "the document ends inside an element".into(),
        ));
    }
    root.ok_or(ParseError::Empty)
}

/// A connection (ECMA-269 ConnectionID): a call at a device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connection {
    pub call: Option<String>,
    pub device: Option<String>,
}

/// What a call event says of the call, beyond its type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallInfo {
    /// The connection the event is about (Delivered: `connection`, Established:
    /// `establishedConnection`, ConnectionCleared: `droppedConnection`).
    pub connection: Connection,
    /// The state of the monitored device's own connection after the event
    /// (`localConnectionInfo`: `null`, `initiated`, `alerting`, `connected`, `hold`, ...).
    pub local: Option<String>,
    pub calling: Option<String>,
    pub called: Option<String>,
    /// `correlatorData`, decoded (see [`data_text`]).
    pub correlator: Option<String>,
    /// `userData`, decoded (see [`data_text`]).
    pub user_data: Option<String>,
}

/// A CSTA event, by what handoff does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A call alerts at `alerting` (ECMA-269 17.2.5).
    Delivered {
        call: CallInfo,
        alerting: Option<String>,
    },
    /// A call is answered by `answering` (17.2.8).
    Established {
        call: CallInfo,
        answering: Option<String>,
    },
    /// A device left a call (17.2.2): `call.connection` is the dropped connection.
    ConnectionCleared {
        call: CallInfo,
        releasing: Option<String>,
    },
    /// The whole call is over (17.2.1).
    CallCleared {
        call: Option<String>,
    },
    /// Calls were joined (17.2.4): more than two parties from now on.
    Conferenced {
        calls: Vec<String>,
    },
    /// `transferring` handed its calls on and left them (17.2.19).
    Transferred {
        calls: Vec<String>,
        transferring: Option<String>,
    },
    /// A call left `diverting` for another device before being answered (17.2.6).
    Diverted {
        call: Option<String>,
        diverting: Option<String>,
    },
    /// Do-not-disturb switched at a device (21.2.x).
    DoNotDisturb {
        device: Option<String>,
        on: bool,
    },
    /// The server ended the monitor (MonitorEnded, 15.2.x).
    MonitorEnded,
    Other(String),
}

/// Everything handoff reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    SessionStarted {
        session: String,
        duration_s: Option<u64>,
        protocol: Option<String>,
    },
    SessionRefused {
        reason: String,
    },
    TimerReset {
        duration_s: Option<u64>,
    },
    TimerResetRefused {
        reason: String,
    },
    /// The server ends the session (StopApplicationSession from its side).
    SessionStopped,
    MonitorStarted {
        cross_ref: String,
    },
    MonitorStopped,
    /// A CSTAErrorCode: a negative response to the request of the same invoke id.
    Error {
        reason: String,
    },
    /// SystemStatus from the server, which waits for a SystemStatusResponse.
    SystemStatus,
    Event {
        cross_ref: Option<String>,
        kind: EventKind,
    },
    Other(String),
}

/// Reads a parsed message.
pub fn interpret(root: &Element) -> Incoming {
    let text = |path: &[&str]| root.text_at(path).map(str::to_owned);
    let duration = |path: &[&str]| root.text_at(path).and_then(|t| t.parse::<u64>().ok());
    match root.name.as_str() {
        "StartApplicationSessionPosResponse" => match text(&["sessionID"]) {
            Some(session) => Incoming::SessionStarted {
                session,
                duration_s: duration(&["actualSessionDuration"]),
                protocol: text(&["actualProtocolVersion"]),
            },
            None => Incoming::SessionRefused {
                reason: "a positive response without a sessionID".into(),
            },
        },
        "StartApplicationSessionNegResponse" => Incoming::SessionRefused {
            reason: error_reason(root),
        },
        "ResetApplicationSessionTimerPosResponse" => Incoming::TimerReset {
            duration_s: duration(&["actualSessionDuration"]),
        },
        "ResetApplicationSessionTimerNegResponse" => Incoming::TimerResetRefused {
            reason: error_reason(root),
        },
        "StopApplicationSession" => Incoming::SessionStopped,
        "MonitorStartResponse" => match text(&["monitorCrossRefID"]) {
            Some(cross_ref) => Incoming::MonitorStarted { cross_ref },
            None => Incoming::Error {
                reason: "a MonitorStartResponse without a monitorCrossRefID".into(),
            },
        },
        "MonitorStopResponse" => Incoming::MonitorStopped,
        "CSTAErrorCode" => Incoming::Error {
            reason: error_reason(root),
        },
        "SystemStatus" => Incoming::SystemStatus,
        name if name.ends_with("Event") => Incoming::Event {
            cross_ref: text(&["monitorCrossRefID"]),
            kind: event_kind(root),
        },
        other => Incoming::Other(other.to_owned()),
    }
}

fn event_kind(root: &Element) -> EventKind {
    let device = |name: &str| root.child(name).and_then(device_text);
    match root.name.as_str() {
        "DeliveredEvent" => EventKind::Delivered {
            call: call_info(root, "connection"),
            alerting: device("alertingDevice"),
        },
        "EstablishedEvent" => EventKind::Established {
            call: call_info(root, "establishedConnection"),
            answering: device("answeringDevice"),
        },
        "ConnectionClearedEvent" => EventKind::ConnectionCleared {
            call: call_info(root, "droppedConnection"),
            releasing: device("releasingDevice"),
        },
        "CallClearedEvent" => EventKind::CallCleared {
            call: root.text_at(&["clearedCall", "callID"]).map(str::to_owned),
        },
        "ConferencedEvent" => EventKind::Conferenced {
            calls: old_calls(root),
        },
        "TransferredEvent" => EventKind::Transferred {
            calls: old_calls(root),
            transferring: device("transferringDevice"),
        },
        "DivertedEvent" => EventKind::Diverted {
            call: root.text_at(&["connection", "callID"]).map(str::to_owned),
            diverting: device("divertingDevice"),
        },
        "DoNotDisturbEvent" => EventKind::DoNotDisturb {
            device: device("device"),
            on: root
                .text_at(&["doNotDisturbOn"])
                .is_some_and(|t| t == "true" || t == "1"),
        },
        "MonitorEndedEvent" => EventKind::MonitorEnded,
        other => EventKind::Other(other.to_owned()),
    }
}

fn old_calls(root: &Element) -> Vec<String> {
    ["primaryOldCall", "secondaryOldCall"]
        .iter()
        .filter_map(|name| root.text_at(&[name, "callID"]))
        .map(str::to_owned)
        .collect()
}

fn call_info(root: &Element, connection: &str) -> CallInfo {
    let connection = root.child(connection);
    CallInfo {
        connection: Connection {
            call: connection
                .and_then(|c| c.text_at(&["callID"]))
                .map(str::to_owned),
            device: connection
                .and_then(|c| c.text_at(&["deviceID"]))
                .map(str::to_owned),
        },
        local: root.text_at(&["localConnectionInfo"]).map(str::to_owned),
        calling: root.child("callingDevice").and_then(device_text),
        called: root.child("calledDevice").and_then(device_text),
        correlator: root.child("correlatorData").and_then(data_text),
        user_data: root.child("userData").and_then(data_text),
    }
}

/// A device parameter: `<x><deviceIdentifier>2001</deviceIdentifier></x>` (ECMA-323), or the
/// identifier as the element's own text (some servers). `notKnown`, `restricted` and the
/// like carry no identifier: None.
fn device_text(element: &Element) -> Option<String> {
    element
        .text_at(&["deviceIdentifier"])
        .or_else(|| (!element.text.is_empty()).then_some(element.text.as_str()))
        .map(str::to_owned)
}

/// Correlator or user data: the element's text, or the text of its first child with some
/// (`<userData><string>…</string></userData>`). ECMA-323 types both as hexBinary, and many
/// servers pass the text through as it was set: hex that decodes to printable ASCII is
/// decoded, anything else is taken as it is. (handoff's interaction ids start `ix_`, which is
/// not hex, so the two readings cannot be confused for them.)
pub fn data_text(element: &Element) -> Option<String> {
    let raw = if element.text.is_empty() {
        element
            .children
            .iter()
            .find(|c| !c.text.is_empty())
            .map(|c| c.text.as_str())?
    } else {
        element.text.as_str()
    };
    let decoded = hex::decode(raw)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic()));
    Some(decoded.unwrap_or_else(|| raw.to_owned()))
}

/// What a negative response says: the first error element's name and value, e.g.
/// `operation: invalidMonitorObject`.
fn error_reason(root: &Element) -> String {
    fn first_leaf(element: &Element, path: &mut Vec<String>) -> bool {
        if element.children.is_empty() {
            return !element.text.is_empty();
        }
        for child in &element.children {
            path.push(child.name.clone());
            if first_leaf(child, path) {
                return true;
            }
            path.pop();
        }
        false
    }
    let mut path = Vec::new();
    if first_leaf(root, &mut path) {
        let leaf = root
            .at(&path.iter().map(String::as_str).collect::<Vec<_>>())
            .map(|e| e.text.clone())
            .unwrap_or_default();
        format!("{}: {leaf}", path.join("/"))
    } else {
        root.children
            .first()
            .map(|c| c.name.clone())
            .unwrap_or_else(|| "no reason given".into())
    }
}

fn escape(text: &str) -> Cow<'_, str> {
    quick_xml::escape::escape(text)
}

const DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// The session handoff asks for, in seconds; the server may grant another.
pub const REQUESTED_SESSION_S: u64 = 180;

/// StartApplicationSession (ECMA-354). The password rides in `applicationSpecificInfo`, the
/// place ECMA-354 leaves to the server; vendors that want their own login element there are
/// not covered yet.
pub fn start_application_session(application: &str, password: Option<&str>) -> String {
    let specific = password
        .map(|password| {
            format!(
                "<applicationSpecificInfo><userName>{}</userName><password>{}</password></applicationSpecificInfo>",
                escape(application),
                escape(password)
            )
        })
        .unwrap_or_default();
    format!(
        "{DECLARATION}<StartApplicationSession xmlns=\"{APPL_SESSION}\">\
         <applicationInfo><applicationID>{}</applicationID>{specific}</applicationInfo>\
         <requestedProtocolVersions><protocolVersion>{CSTA_ED3}</protocolVersion></requestedProtocolVersions>\
         <requestedSessionDuration>{REQUESTED_SESSION_S}</requestedSessionDuration>\
         </StartApplicationSession>",
        escape(application)
    )
}

pub fn reset_application_session_timer(session: &str) -> String {
    format!(
        "{DECLARATION}<ResetApplicationSessionTimer xmlns=\"{APPL_SESSION}\">\
         <sessionID>{}</sessionID><requestedSessionDuration>{REQUESTED_SESSION_S}</requestedSessionDuration>\
         </ResetApplicationSessionTimer>",
        escape(session)
    )
}

pub fn stop_application_session(session: &str) -> String {
    format!(
        "{DECLARATION}<StopApplicationSession xmlns=\"{APPL_SESSION}\">\
         <sessionID>{}</sessionID><sessionEndReason><appEndReason>normal</appEndReason></sessionEndReason>\
         </StopApplicationSession>",
        escape(session)
    )
}

pub fn monitor_start(namespace: &str, device: &str) -> String {
    format!(
        "{DECLARATION}<MonitorStart xmlns=\"{namespace}\">\
         <monitorObject><deviceObject>{}</deviceObject></monitorObject>\
         </MonitorStart>",
        escape(device)
    )
}

pub fn monitor_stop(namespace: &str, cross_ref: &str) -> String {
    format!(
        "{DECLARATION}<MonitorStop xmlns=\"{namespace}\">\
         <monitorCrossRefID>{}</monitorCrossRefID>\
         </MonitorStop>",
        escape(cross_ref)
    )
}

pub fn system_status_response(namespace: &str) -> String {
    format!("{DECLARATION}<SystemStatusResponse xmlns=\"{namespace}\"/>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(xml: &str) -> Incoming {
        interpret(&parse_element(xml.as_bytes()).expect("parses"))
    }

    // ECMA-323 (ed. 3) 9.2.x / ECMA-269 17.2.5: a call from outside alerting at 2001, with
    // the correlator data an IVR set (hex of "int_9").
    const DELIVERED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DeliveredEvent xmlns="http://www.ecma-international.org/standards/ecma-323/csta/ed3">
  <monitorCrossRefID>7</monitorCrossRefID>
  <connection><callID>41</callID><deviceID>2001</deviceID></connection>
  <alertingDevice><deviceIdentifier>2001</deviceIdentifier></alertingDevice>
  <callingDevice><deviceIdentifier>+15551234567</deviceIdentifier></callingDevice>
  <calledDevice><deviceIdentifier>2001</deviceIdentifier></calledDevice>
  <lastRedirectionDevice><notRequired/></lastRedirectionDevice>
  <localConnectionInfo>alerting</localConnectionInfo>
  <correlatorData>696e745f39</correlatorData>
  <cause>newCall</cause>
</DeliveredEvent>"#;

    #[test]
    fn a_delivered_event_gives_the_connection_the_devices_and_the_correlator() {
        let Incoming::Event { cross_ref, kind } = read(DELIVERED) else {
            panic!("an event")
        };
        assert_eq!(cross_ref.as_deref(), Some("7"));
        let EventKind::Delivered { call, alerting } = kind else {
            panic!("delivered")
        };
        assert_eq!(alerting.as_deref(), Some("2001"));
        assert_eq!(call.connection.call.as_deref(), Some("41"));
        assert_eq!(call.connection.device.as_deref(), Some("2001"));
        assert_eq!(call.calling.as_deref(), Some("+15551234567"));
        assert_eq!(call.local.as_deref(), Some("alerting"));
        assert_eq!(call.correlator.as_deref(), Some("int_9"));
        assert_eq!(call.user_data, None);
    }

    #[test]
    fn any_edition_and_any_prefix_is_read_by_local_name() {
        let xml = r#"<csta:EstablishedEvent xmlns:csta="http://www.ecma-international.org/standards/ecma-323/csta/ed5">
  <csta:monitorCrossRefID>9</csta:monitorCrossRefID>
  <csta:establishedConnection><csta:callID>41</csta:callID><csta:deviceID>2001</csta:deviceID></csta:establishedConnection>
  <csta:answeringDevice><csta:deviceIdentifier>2001</csta:deviceIdentifier></csta:answeringDevice>
  <csta:callingDevice><csta:deviceIdentifier>+15551234567</csta:deviceIdentifier></csta:callingDevice>
  <csta:calledDevice><csta:deviceIdentifier>2001</csta:deviceIdentifier></csta:calledDevice>
  <csta:lastRedirectionDevice><csta:notRequired/></csta:lastRedirectionDevice>
  <csta:localConnectionInfo>connected</csta:localConnectionInfo>
  <csta:correlatorData><csta:string>int_9</csta:string></csta:correlatorData>
  <csta:userData><csta:string>43616c6c2d3132</csta:string></csta:userData>
  <csta:cause>normal</csta:cause>
</csta:EstablishedEvent>"#;
        let Incoming::Event {
            cross_ref,
            kind: EventKind::Established { call, answering },
        } = read(xml)
        else {
            panic!("established")
        };
        assert_eq!(cross_ref.as_deref(), Some("9"));
        assert_eq!(answering.as_deref(), Some("2001"));
        assert_eq!(call.connection.call.as_deref(), Some("41"));
        assert_eq!(call.local.as_deref(), Some("connected"));
        assert_eq!(call.correlator.as_deref(), Some("int_9"));
        assert_eq!(call.user_data.as_deref(), Some("Call-12"));
    }

    #[test]
    fn a_connection_cleared_event_names_the_dropped_connection_and_the_releasing_device() {
        // ECMA-269 17.2.2: the caller hangs up a two-party call; the agent's own connection
        // is null afterwards.
        let xml = r#"<ConnectionClearedEvent xmlns="http://www.ecma-international.org/standards/ecma-323/csta/ed4">
  <monitorCrossRefID>7</monitorCrossRefID>
  <droppedConnection><callID>41</callID><deviceID>+15551234567</deviceID></droppedConnection>
  <releasingDevice><deviceIdentifier>+15551234567</deviceIdentifier></releasingDevice>
  <localConnectionInfo>null</localConnectionInfo>
  <cause>normalClearing</cause>
</ConnectionClearedEvent>"#;
        let Incoming::Event {
            kind: EventKind::ConnectionCleared { call, releasing },
            ..
        } = read(xml)
        else {
            panic!("connection cleared")
        };
        assert_eq!(call.connection.call.as_deref(), Some("41"));
        assert_eq!(call.connection.device.as_deref(), Some("+15551234567"));
        assert_eq!(releasing.as_deref(), Some("+15551234567"));
        assert_eq!(call.local.as_deref(), Some("null"));
    }

    #[test]
    fn responses_and_errors_are_read() {
        assert_eq!(
            read(
                r#"<MonitorStartResponse xmlns="http://www.ecma-international.org/standards/ecma-323/csta/ed3">
  <monitorCrossRefID>12</monitorCrossRefID>
  <actualMonitorFilter><callcontrol/></actualMonitorFilter>
</MonitorStartResponse>"#
            ),
            Incoming::MonitorStarted {
                cross_ref: "12".into()
            }
        );
        assert_eq!(
            read(
                r#"<CSTAErrorCode xmlns="http://www.ecma-international.org/standards/ecma-323/csta/ed3"><operation>invalidMonitorObject</operation></CSTAErrorCode>"#
            ),
            Incoming::Error {
                reason: "operation: invalidMonitorObject".into()
            }
        );
        assert_eq!(
            read(
                r#"<StartApplicationSessionPosResponse xmlns="http://www.ecma-international.org/standards/ecma-354/appl_session">
  <sessionID>469421A9364D46D6444524AE41BEAD72-1</sessionID>
  <actualProtocolVersion>http://www.ecma-international.org/standards/ecma-323/csta/ed3</actualProtocolVersion>
  <actualSessionDuration>180</actualSessionDuration>
</StartApplicationSessionPosResponse>"#
            ),
            Incoming::SessionStarted {
                session: "469421A9364D46D6444524AE41BEAD72-1".into(),
                duration_s: Some(180),
                protocol: Some(CSTA_ED3.into()),
            }
        );
        assert_eq!(
            read(
                r#"<StartApplicationSessionNegResponse xmlns="http://www.ecma-international.org/standards/ecma-354/appl_session"><errorCode><definedError>invalidApplicationInfo</definedError></errorCode></StartApplicationSessionNegResponse>"#
            ),
            Incoming::SessionRefused {
                reason: "errorCode/definedError: invalidApplicationInfo".into()
            }
        );
        assert_eq!(
            read(
                r#"<DoNotDisturbEvent><monitorCrossRefID>7</monitorCrossRefID><device><deviceIdentifier>2001</deviceIdentifier></device><doNotDisturbOn>true</doNotDisturbOn></DoNotDisturbEvent>"#
            ),
            Incoming::Event {
                cross_ref: Some("7".into()),
                kind: EventKind::DoNotDisturb {
                    device: Some("2001".into()),
                    on: true
                }
            }
        );
        assert_eq!(
            read("<HookswitchEvent><monitorCrossRefID>7</monitorCrossRefID></HookswitchEvent>"),
            Incoming::Event {
                cross_ref: Some("7".into()),
                kind: EventKind::Other("HookswitchEvent".into())
            }
        );
        assert_eq!(read("<Whatever/>"), Incoming::Other("Whatever".into()));
    }

    #[test]
    fn bad_documents_are_errors_not_panics() {
        for body in [
            &b""[..],
            b"\xff\xfe<a/>",
            b"<a><b></a>",
            b"<a>",
            b"<a/><b/>",
            b"just text",
            b"<a>&unknown;</a>",
            b"<!DOCTYPE a [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><a>&x;</a>",
        ] {
            assert!(parse_element(body).is_err(), "{body:?}");
        }
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(matches!(
            parse_element(deep.as_bytes()),
            Err(ParseError::TooBig)
        ));
    }

    #[test]
    fn data_that_is_not_printable_once_decoded_is_kept_as_it_came() {
        let element = parse_element(b"<correlatorData>00ff10</correlatorData>").unwrap();
        assert_eq!(data_text(&element).as_deref(), Some("00ff10"));
        let element = parse_element(b"<correlatorData>int_01J</correlatorData>").unwrap();
        assert_eq!(data_text(&element).as_deref(), Some("int_01J"));
        let element = parse_element(b"<correlatorData/>").unwrap();
        assert_eq!(data_text(&element), None);
    }

    #[test]
    fn requests_escape_what_they_carry() {
        let xml = monitor_start(CSTA_ED3, "20<01");
        let root = parse_element(xml.as_bytes()).unwrap();
        assert_eq!(root.name, "MonitorStart");
        assert_eq!(
            root.text_at(&["monitorObject", "deviceObject"]),
            Some("20<01")
        );
        let xml = start_application_session("handoff", Some("p&ss"));
        let root = parse_element(xml.as_bytes()).unwrap();
        assert_eq!(
            root.text_at(&["applicationInfo", "applicationID"]),
            Some("handoff")
        );
        assert_eq!(
            root.text_at(&["applicationInfo", "applicationSpecificInfo", "password"]),
            Some("p&ss")
        );
    }
}
