//! The dialog event package's body (RFC 4235, `application/dialog-info+xml`): which calls an
//! agent's phone has and where each stands.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// The most dialogs read from one document: a phone has a handful; the rest is ignored.
pub const MAX_DIALOGS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// `trying`, `proceeding`, `early`.
    Ringing,
    /// `confirmed`.
    Confirmed,
    /// `terminated`.
    Terminated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    /// The dialog's `id`, stable across the notifications of one subscription.
    pub id: String,
    /// The `call-id` attribute, when the notifier includes it (Kamailio does by default).
    pub call_id: Option<String>,
    pub state: DialogState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogInfo {
    /// `state="full"`: the document lists every dialog; one known before and absent now ended.
    pub full: bool,
    pub version: Option<u64>,
    pub dialogs: Vec<Dialog>,
}

/// Parses a dialog-info document; `None` when it is not one (the caller logs and goes on).
pub fn parse(body: &str) -> Option<DialogInfo> {
    let mut reader = Reader::from_str(body);
    reader.config_mut().trim_text(true);
    let mut info: Option<DialogInfo> = None;
    // The dialog being read, and whether its own `<state>` element is open.
    let mut current: Option<(String, Option<String>, Option<DialogState>)> = None;
    let mut depth_in_dialog = 0usize;
    let mut in_state = false;
    loop {
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(_) => return None,
        };
        match event {
            Event::Start(element) | Event::Empty(element)
                if element.local_name().as_ref() == b"dialog-info" =>
            {
                let full = attribute(&element, b"state").as_deref() != Some("partial");
                let version = attribute(&element, b"version").and_then(|v| v.parse().ok());
                info = Some(DialogInfo {
                    full,
                    version,
                    dialogs: Vec::new(),
                });
            }
            Event::Start(element) if element.local_name().as_ref() == b"dialog" => {
                if current.is_none() {
                    let id = attribute(&element, b"id")?;
                    current = Some((id, attribute(&element, b"call-id"), None));
                    depth_in_dialog = 0;
                } else {
                    depth_in_dialog += 1;
                }
            }
            Event::Start(element) if current.is_some() => {
                depth_in_dialog += 1;
                // Only the dialog's own `<state>`, not one nested deeper.
                in_state = depth_in_dialog == 1 && element.local_name().as_ref() == b"state";
            }
            Event::Text(text) if in_state => {
                let text = text.unescape().ok()?;
                if let Some((_, _, state)) = current.as_mut() {
                    *state = dialog_state(text.trim());
                }
            }
            Event::End(element) => {
                in_state = false;
                if current.is_some() {
                    if depth_in_dialog == 0 && element.local_name().as_ref() == b"dialog" {
                        let (id, call_id, state) = current.take()?;
                        let info = info.as_mut()?;
                        // A dialog without a state the RFC names says nothing usable.
                        if let Some(state) = state {
                            if info.dialogs.len() < MAX_DIALOGS {
                                info.dialogs.push(Dialog { id, call_id, state });
                            }
                        }
                    } else {
                        depth_in_dialog = depth_in_dialog.saturating_sub(1);
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    info
}

fn dialog_state(text: &str) -> Option<DialogState> {
    match text {
        "trying" | "proceeding" | "early" => Some(DialogState::Ringing),
        "confirmed" => Some(DialogState::Confirmed),
        "terminated" => Some(DialogState::Terminated),
        _ => None,
    }
}

fn attribute(element: &BytesStart<'_>, name: &[u8]) -> Option<String> {
    element
        .attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .and_then(|a| a.unescape_value().ok())
        .map(|v| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4235 §4.1, the first example (an initiator trying).
    const RFC_TRYING: &str = r#"<?xml version="1.0"?>
   <dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info"
                version="0" state="full" entity="sip:alice@example.com">
     <dialog id="as7d900as8" call-id="a84b4c76e66710"
             local-tag="1928301774" direction="initiator">
       <state>trying</state>
     </dialog>
   </dialog-info>"#;

    /// RFC 4235 §4.2, confirmed with local and remote details (and nested elements).
    const RFC_CONFIRMED: &str = r#"<?xml version="1.0"?>
   <dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info"
                version="1" state="partial" entity="sip:alice@example.com">
     <dialog id="as7d900as8" call-id="a84b4c76e66710"
             local-tag="1928301774" remote-tag="456887766"
             direction="initiator">
       <state event="replaced">confirmed</state>
       <duration>274</duration>
       <local>
         <identity display="Alice">sip:alice@example.com</identity>
         <target uri="sip:alice@pc33.example.com">
           <param pname="+sip.rendering" pval="yes"/>
         </target>
       </local>
       <remote>
         <identity display="Bob">sip:bob@example.org</identity>
         <target uri="sip:bobster@phone21.example.org"/>
       </remote>
     </dialog>
   </dialog-info>"#;

    /// As Kamailio's pua_dialoginfo publishes it for the callee, with a namespace prefix.
    const PREFIXED_TERMINATED: &str = r#"<?xml version="1.0"?>
<d:dialog-info xmlns:d="urn:ietf:params:xml:ns:dialog-info" version="3" state="full" entity="sip:a1@pbx.test">
  <d:dialog id="12a" call-id="call-1@x" direction="recipient">
    <d:state event="remote-bye" code="200">terminated</d:state>
  </d:dialog>
  <d:dialog id="12b" direction="recipient"><d:state>early</d:state></d:dialog>
</d:dialog-info>"#;

    #[test]
    fn reads_the_rfc_examples() {
        let trying = parse(RFC_TRYING).unwrap();
        assert!(trying.full);
        assert_eq!(trying.version, Some(0));
        assert_eq!(
            trying.dialogs,
            vec![Dialog {
                id: "as7d900as8".into(),
                call_id: Some("a84b4c76e66710".into()),
                state: DialogState::Ringing
            }]
        );
        let confirmed = parse(RFC_CONFIRMED).unwrap();
        assert!(!confirmed.full);
        assert_eq!(confirmed.dialogs.len(), 1);
        assert_eq!(confirmed.dialogs[0].state, DialogState::Confirmed);
    }

    #[test]
    fn reads_prefixed_documents_and_several_dialogs() {
        let info = parse(PREFIXED_TERMINATED).unwrap();
        assert_eq!(info.dialogs.len(), 2);
        assert_eq!(info.dialogs[0].state, DialogState::Terminated);
        assert_eq!(info.dialogs[0].call_id.as_deref(), Some("call-1@x"));
        assert_eq!(info.dialogs[1].call_id, None);
        assert_eq!(info.dialogs[1].state, DialogState::Ringing);
    }

    #[test]
    fn an_empty_full_document_has_no_dialogs() {
        let info = parse(
            r#"<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="5" state="full" entity="sip:a@b"/>"#,
        )
        .unwrap();
        assert!(info.full && info.dialogs.is_empty());
    }

    #[test]
    fn refuses_what_is_not_dialog_info() {
        assert!(parse("").is_none());
        assert!(parse("<presence/>").is_none());
        assert!(parse("<dialog-info><dialog id='x'><state>confirmed</dialog>").is_none());
        assert!(parse("not xml <<<").is_none());
    }
}
