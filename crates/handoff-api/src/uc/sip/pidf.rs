//! The presence event package's body (PIDF, RFC 3863, with RPID activities, RFC 4480): what an
//! agent's phone says of its user, as a handoff presence on the phone channel.

use handoff_core::PresenceStatus;
use quick_xml::events::Event;
use quick_xml::Reader;

/// RPID activities that make the agent busy: the phone itself says it cannot take a call.
const BUSY: &[&str] = &[
    "on-the-phone",
    "busy",
    "meeting",
    "performance",
    "presentation",
];
/// RPID activities that make the agent away.
const AWAY: &[&str] = &[
    "away",
    "appointment",
    "breakfast",
    "dinner",
    "lunch",
    "meal",
    "holiday",
    "vacation",
    "sleeping",
    "travel",
    "steering",
    "permanent-absence",
];

/// What one presence document says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// The status and the reason handoff shows (the RPID activity, `on_the_phone`, when it
    /// decided the status).
    Known(PresenceStatus, Option<String>),
    /// The document says nothing of the status (no `basic`, no activity): the phone's
    /// presence is unknown, not offline.
    Unknown,
}

/// Parses a PIDF document; `None` when it is not one.
pub fn parse(body: &str) -> Option<Reading> {
    let mut reader = Reader::from_str(body);
    reader.config_mut().trim_text(true);
    let mut seen_presence = false;
    let mut open = false;
    let mut closed = false;
    let mut in_basic = false;
    let mut in_activities = false;
    let mut activities: Vec<String> = Vec::new();
    loop {
        let event = reader.read_event().ok()?;
        match event {
            Event::Start(element) => match element.local_name().as_ref() {
                b"presence" => seen_presence = true,
                b"basic" => in_basic = true,
                b"activities" => in_activities = true,
                name if in_activities && activities.len() < 16 => {
                    activities.push(String::from_utf8_lossy(name).into_owned())
                }
                _ => {}
            },
            Event::Empty(element) => match element.local_name().as_ref() {
                b"presence" => seen_presence = true,
                name if in_activities && activities.len() < 16 => {
                    activities.push(String::from_utf8_lossy(name).into_owned())
                }
                _ => {}
            },
            Event::Text(text) if in_basic => match text.unescape().ok()?.trim() {
                "open" => open = true,
                "closed" => closed = true,
                _ => {}
            },
            Event::End(element) => match element.local_name().as_ref() {
                b"basic" => in_basic = false,
                b"activities" => in_activities = false,
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    if !seen_presence {
        return None;
    }
    let reason = |activity: &str| Some(activity.replace('-', "_"));
    // One open tuple (a registered device) is enough to reach the agent.
    if closed && !open {
        return Some(Reading::Known(PresenceStatus::Offline, None));
    }
    if let Some(busy) = activities.iter().find(|a| BUSY.contains(&a.as_str())) {
        return Some(Reading::Known(PresenceStatus::Busy, reason(busy)));
    }
    if let Some(away) = activities.iter().find(|a| AWAY.contains(&a.as_str())) {
        return Some(Reading::Known(PresenceStatus::Away, reason(away)));
    }
    if open || !activities.is_empty() {
        return Some(Reading::Known(PresenceStatus::Available, None));
    }
    Some(Reading::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3863 §3.4, the basic example.
    const RFC3863: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
     <presence xmlns="urn:ietf:params:xml:ns:pidf"
         xmlns:im="urn:ietf:params:xml:ns:pidf:im"
         xmlns:myex="http://id.example.com/presence/"
         entity="pres:someone@example.com">
       <tuple id="bs35r9">
         <status>
           <basic>open</basic>
           <im:im>busy</im:im>
           <myex:location>home</myex:location>
         </status>
         <contact priority="0.8">im:someone@mobilecarrier.net</contact>
         <note xml:lang="en">Don't Disturb Please!</note>
         <note xml:lang="fr">Ne derangez pas, s'il vous plait</note>
         <timestamp>2001-10-27T16:49:29Z</timestamp>
       </tuple>
       <tuple id="eg92n8">
         <status>
           <basic>open</basic>
         </status>
         <contact priority="1.0">mailto:someone@example.com</contact>
       </tuple>
       <note>I'll be in Tokyo next week</note>
     </presence>"#;

    /// RFC 4480 §4 style: a person on the phone.
    const RPID_ON_THE_PHONE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
   <presence xmlns="urn:ietf:params:xml:ns:pidf"
     xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
     xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"
     entity="pres:someone@example.com">
     <tuple id="bs35r9">
       <status><basic>open</basic></status>
     </tuple>
     <dm:person id="p1">
       <rpid:activities from="2005-05-30T12:00:00+05:00">
         <rpid:on-the-phone/>
       </rpid:activities>
     </dm:person>
   </presence>"#;

    #[test]
    fn open_is_available() {
        assert_eq!(
            parse(RFC3863),
            Some(Reading::Known(PresenceStatus::Available, None))
        );
    }

    #[test]
    fn activities_refine_open() {
        assert_eq!(
            parse(RPID_ON_THE_PHONE),
            Some(Reading::Known(
                PresenceStatus::Busy,
                Some("on_the_phone".into())
            ))
        );
        let away = RPID_ON_THE_PHONE.replace("<rpid:on-the-phone/>", "<rpid:lunch/>");
        assert_eq!(
            parse(&away),
            Some(Reading::Known(PresenceStatus::Away, Some("lunch".into())))
        );
    }

    #[test]
    fn closed_is_offline() {
        let closed = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a1@pbx.test">
            <tuple id="t1"><status><basic>closed</basic></status></tuple></presence>"#;
        assert_eq!(
            parse(closed),
            Some(Reading::Known(PresenceStatus::Offline, None))
        );
    }

    #[test]
    fn no_status_is_unknown_and_garbage_is_refused() {
        assert_eq!(
            parse(r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b"/>"#),
            Some(Reading::Unknown)
        );
        assert_eq!(parse("<dialog-info/>"), None);
        assert_eq!(parse("<presence><tuple></presence>"), None);
        assert_eq!(parse(""), None);
    }
}
