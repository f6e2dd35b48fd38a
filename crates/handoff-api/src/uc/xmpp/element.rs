//! XML off an XMPP stream: splits the bytes as they arrive into the stream's header and whole
//! top-level stanzas, each as a small tree of local names, attributes and text.
//!
//! Why by hand over quick-xml's events rather than a streaming reader: the adapter must be
//! able to stop waiting for bytes at any moment (a timer, shutdown) without losing a half-read
//! stanza, and STARTTLS swaps the transport under the parser. Keeping the unparsed bytes here
//! makes both trivial: reading is a plain cancel-safe `read`, parsing is synchronous.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// One element: its local name, attributes (local names, except `xmlns` declarations, which
/// keep their qualified name) and text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attributes: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|child| child.name == name)
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |child| child.name == name)
    }

    /// The text of the child `name`, trimmed.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|child| child.text.trim())
    }
}

/// What the stream gave next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// `<stream:stream ...>`: the stream (re)started; its attributes.
    Opened(Element),
    /// A whole top-level element: a stanza, `features`, a SASL or TLS answer, an error.
    Stanza(Element),
    /// `</stream:stream>`.
    Closed,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElementError {
    #[error("the server sent XML that is not well-formed: {0}")]
    Malformed(String),
    #[error("the server sent a stanza larger than {0} bytes")]
    TooLarge(usize),
}

/// Bytes received and not yet given out as items.
pub struct ElementSplitter {
    buffer: Vec<u8>,
    opened: bool,
    limit: usize,
}

impl ElementSplitter {
    /// `limit`: the most bytes one stanza may take.
    pub fn new(limit: usize) -> ElementSplitter {
        ElementSplitter {
            buffer: Vec::new(),
            opened: false,
            limit,
        }
    }

    /// Forgets everything: the stream restarts (after STARTTLS or SASL).
    pub fn reset(&mut self) {
        self.buffer.clear();
        self.opened = false;
    }

    pub fn push(&mut self, bytes: &[u8]) -> Result<(), ElementError> {
        if self.buffer.len() + bytes.len() > self.limit {
            return Err(ElementError::TooLarge(self.limit));
        }
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }

    /// The next whole item, or None until more bytes arrive.
    pub fn next_item(&mut self) -> Result<Option<StreamItem>, ElementError> {
        let mut reader = Reader::from_reader(self.buffer.as_slice());
        // The stream's own start tag was read by an earlier call; its end is checked here.
        reader.config_mut().check_end_names = false;
        let mut stack: Vec<Element> = Vec::new();
        // Bytes before this are whole top-level items already dealt with (declarations,
        // whitespace between stanzas).
        let mut settled = 0;
        let outcome = loop {
            let event = match reader.read_event() {
                Ok(event) => event,
                Err(quick_xml::Error::Syntax(error)) => {
                    // An unclosed tag, comment or declaration at the end of what has arrived
                    // is a stanza still on its way; a stanza that never closes runs into the
                    // size limit instead.
                    tracing::trace!(%error, "waiting for the rest of a stanza");
                    break None;
                }
                // The stream's end tag: its start was read by an earlier call, so the reader
                // sees an end with nothing open.
                Err(quick_xml::Error::IllFormed(
                    quick_xml::errors::IllFormedError::UnmatchedEndTag(name),
                )) if stack.is_empty()
                    && self.opened
                    && name.rsplit(':').next() == Some("stream") =>
                {
                    self.opened = false;
                    settled = position(&reader);
                    break Some(StreamItem::Closed);
                }
                Err(error) => return Err(ElementError::Malformed(error.to_string())),
            };
            match event {
                Event::Start(start) => {
                    let element = element_of(&start)?;
                    if stack.is_empty() && !self.opened && element.name == "stream" {
                        self.opened = true;
                        settled = position(&reader);
                        break Some(StreamItem::Opened(element));
                    }
                    stack.push(element);
                }
                Event::Empty(start) => {
                    let element = element_of(&start)?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(element),
                        None => {
                            settled = position(&reader);
                            break Some(StreamItem::Stanza(element));
                        }
                    }
                }
                Event::End(end) => {
                    let name = String::from_utf8_lossy(end.local_name().as_ref()).into_owned();
                    match stack.pop() {
                        None if name == "stream" && self.opened => {
                            self.opened = false;
                            settled = position(&reader);
                            break Some(StreamItem::Closed);
                        }
                        None => {
                            return Err(ElementError::Malformed(format!(
                                "</{name}> closes nothing"
                            )))
                        }
                        Some(element) if element.name != name => {
                            return Err(ElementError::Malformed(format!(
                                "</{name}> closes <{}>",
                                element.name
                            )))
                        }
                        Some(mut element) => {
                            // Unescaped only now that the element is whole: an entity may
                            // have been split between two reads.
                            element.text = quick_xml::escape::unescape(&element.text)
                                .map_err(|error| ElementError::Malformed(error.to_string()))?
                                .into_owned();
                            match stack.last_mut() {
                                Some(parent) => parent.children.push(element),
                                None => {
                                    settled = position(&reader);
                                    break Some(StreamItem::Stanza(element));
                                }
                            }
                        }
                    }
                }
                Event::Text(text) => {
                    if let Some(top) = stack.last_mut() {
                        // Kept escaped until the element ends (see above).
                        top.text.push_str(&String::from_utf8_lossy(&text));
                    } else {
                        // Whitespace between stanzas: keepalives.
                        settled = position(&reader);
                    }
                }
                Event::CData(data) => {
                    if let Some(top) = stack.last_mut() {
                        // Escaped so that unescaping the whole text gives it back as it was.
                        top.text.push_str(&quick_xml::escape::escape(
                            String::from_utf8_lossy(&data).as_ref(),
                        ));
                    }
                }
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {
                    if stack.is_empty() {
                        settled = position(&reader);
                    }
                }
                Event::Eof => break None,
            }
        };
        self.buffer.drain(..settled);
        Ok(outcome)
    }
}

fn position(reader: &Reader<&[u8]>) -> usize {
    usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX)
}

fn element_of(start: &BytesStart<'_>) -> Result<Element, ElementError> {
    let mut element = Element {
        name: String::from_utf8_lossy(start.local_name().as_ref()).into_owned(),
        ..Element::default()
    };
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|error| ElementError::Malformed(error.to_string()))?;
        let qualified = attribute.key.as_ref();
        let key = if qualified.starts_with(b"xmlns") {
            String::from_utf8_lossy(qualified).into_owned()
        } else {
            String::from_utf8_lossy(attribute.key.local_name().as_ref()).into_owned()
        };
        let value = attribute
            .unescape_value()
            .map_err(|error| ElementError::Malformed(error.to_string()))?
            .into_owned();
        element.attributes.push((key, value));
    }
    Ok(element)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(splitter: &mut ElementSplitter) -> Vec<StreamItem> {
        let mut items = Vec::new();
        while let Some(item) = splitter.next_item().unwrap() {
            items.push(item);
        }
        items
    }

    const SERVER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='cc.test' version='1.0'>\
        <stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
        <mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
        </stream:features> <presence from='alice@cc.test/desk'><show>dnd</show>\
        <status>In a meeting &amp; busy</status></presence></stream:stream>";

    #[test]
    fn a_stream_splits_into_header_stanzas_and_end_whatever_the_chunks() {
        for chunk in [1, 2, 7, 64, SERVER.len()] {
            let mut splitter = ElementSplitter::new(64 * 1024);
            let mut all = Vec::new();
            for bytes in SERVER.as_bytes().chunks(chunk) {
                splitter.push(bytes).unwrap();
                all.extend(items(&mut splitter));
            }
            assert_eq!(all.len(), 4, "chunks of {chunk}: {all:?}");
            let StreamItem::Opened(header) = &all[0] else {
                panic!("{all:?}")
            };
            assert_eq!(header.attribute("id"), Some("s1"));
            let StreamItem::Stanza(features) = &all[1] else {
                panic!("{all:?}")
            };
            assert_eq!(features.name, "features");
            let mechanisms: Vec<_> = features
                .child("mechanisms")
                .unwrap()
                .children_named("mechanism")
                .map(|m| m.text.as_str())
                .collect();
            assert_eq!(mechanisms, ["SCRAM-SHA-1", "PLAIN"]);
            let StreamItem::Stanza(presence) = &all[2] else {
                panic!("{all:?}")
            };
            assert_eq!(presence.attribute("from"), Some("alice@cc.test/desk"));
            assert_eq!(presence.child_text("show"), Some("dnd"));
            assert_eq!(presence.child_text("status"), Some("In a meeting & busy"));
            assert_eq!(all[3], StreamItem::Closed);
        }
    }

    #[test]
    fn a_stanza_past_the_limit_is_refused() {
        let mut splitter = ElementSplitter::new(32);
        splitter.push(b"<stream:stream>").unwrap();
        assert!(matches!(
            splitter.next_item(),
            Ok(Some(StreamItem::Opened(_)))
        ));
        assert_eq!(splitter.push(&[b'x'; 40]), Err(ElementError::TooLarge(32)));
    }

    #[test]
    fn mismatched_tags_are_malformed_not_a_panic() {
        let mut splitter = ElementSplitter::new(1024);
        splitter
            .push(b"<stream:stream><presence><show>dnd</status></presence>")
            .unwrap();
        assert!(matches!(
            splitter.next_item(),
            Ok(Some(StreamItem::Opened(_)))
        ));
        assert!(matches!(
            splitter.next_item(),
            Err(ElementError::Malformed(_))
        ));
    }
}
