//! SIP messages as handoff's subscriber needs them (RFC 3261 §7, §20): parsing a datagram into
//! a request or response with its headers and body, and the few header values it reads
//! (name-addr URIs and their parameters, tags, Via branches).
//!
//! Lenient on what it does not use, strict only where a wrong guess would mismatch a dialog:
//! anything from the network that does not parse is `None`, never a panic.

/// The longest datagram handoff reads; a SIP message over UDP should stay under 1300 bytes,
/// but a full dialog-info document with many dialogs can be larger.
pub const MAX_DATAGRAM: usize = 65_535;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, uri: String },
    Response { code: u16, reason: String },
}

/// A parsed SIP message: header names lower-cased and expanded from their compact forms, in
/// their order, one entry per header line (a comma-separated line stays one entry).
#[derive(Debug, Clone)]
pub struct Message {
    pub start: StartLine,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Message {
    pub fn parse(data: &[u8]) -> Option<Message> {
        let text = std::str::from_utf8(data).ok()?;
        // Keep-alives (RFC 5626 CRLF pings) and stray bytes are not messages.
        let text = text.trim_start_matches(['\r', '\n']);
        let (head, rest) = match text.find("\r\n\r\n") {
            Some(at) => (&text[..at], &text[at + 4..]),
            None => match text.find("\n\n") {
                Some(at) => (&text[..at], &text[at + 2..]),
                None => (text, ""),
            },
        };
        let mut lines = head.split('\n').map(|line| line.trim_end_matches('\r'));
        let start = parse_start_line(lines.next()?)?;
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                // A folded continuation (RFC 3261 §7.3.1).
                let (_, value) = headers.last_mut()?;
                value.push(' ');
                value.push_str(line.trim());
                continue;
            }
            let (name, value) = line.split_once(':')?;
            headers.push((full_name(name.trim()), value.trim().to_owned()));
        }
        let message = Message {
            start,
            headers,
            body: String::new(),
        };
        let body = match message
            .header("content-length")
            .and_then(|length| length.parse::<usize>().ok())
        {
            Some(length) => rest.get(..length)?.to_owned(),
            None => rest.to_owned(),
        };
        Some(Message { body, ..message })
    }

    /// The first value of a header (lower-case full name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every header line of that name, in order.
    pub fn header_lines<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header that may be comma-separated (Via, Record-Route), in order.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.header_lines(name)
            .flat_map(split_list)
            .collect::<Vec<_>>()
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn code(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header("call-id")
    }

    /// The CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, String)> {
        let (number, method) = self.header("cseq")?.split_once(char::is_whitespace)?;
        Some((
            number.trim().parse().ok()?,
            method.trim().to_ascii_uppercase(),
        ))
    }

    /// The branch of the topmost Via.
    pub fn top_branch(&self) -> Option<String> {
        let via = self.header_values("via").into_iter().next()?;
        header_param(&via, "branch")
    }

    /// The `tag` parameter of From or To.
    pub fn tag(&self, name: &str) -> Option<String> {
        header_param(self.header(name)?, "tag")
    }

    /// An integer header such as Expires.
    pub fn number(&self, name: &str) -> Option<u64> {
        self.header(name)?.trim().parse().ok()
    }
}

fn parse_start_line(line: &str) -> Option<StartLine> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code.parse().ok()?;
        if !(100..700).contains(&code) {
            return None;
        }
        return Some(StartLine::Response {
            code,
            reason: reason.to_owned(),
        });
    }
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let uri = parts.next()?;
    if parts.next()? != "SIP/2.0" || method.is_empty() || uri.is_empty() {
        return None;
    }
    if !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    Some(StartLine::Request {
        method: method.to_ascii_uppercase(),
        uri: uri.to_owned(),
    })
}

/// The full lower-case name of a header, expanding compact forms (RFC 3261 §7.3.3, RFC 6665).
fn full_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let full = match lower.as_str() {
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "e" => "content-encoding",
        "k" => "supported",
        "o" => "event",
        "u" => "allow-events",
        _ => return lower,
    };
    full.to_owned()
}

/// Splits a comma-separated header value, leaving commas inside quotes and `<...>` alone.
pub fn split_list(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut angle = false;
    let mut escaped = false;
    for c in value.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                if !current.trim().is_empty() {
                    parts.push(current.trim().to_owned());
                }
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        parts.push(current.trim().to_owned());
    }
    parts
}

/// The URI of a name-addr or addr-spec header value (`"Bob" <sip:bob@x>;tag=1` → `sip:bob@x`).
pub fn header_uri(value: &str) -> Option<String> {
    let value = skip_display_name(value);
    if let Some(start) = value.find('<') {
        let end = value[start..].find('>')? + start;
        return Some(value[start + 1..end].trim().to_owned());
    }
    // Without angle brackets the header's parameters follow the URI (RFC 3261 §20.10).
    Some(value.split(';').next()?.trim().to_owned()).filter(|uri| !uri.is_empty())
}

/// A parameter of a header value, outside its `<...>` URI (`tag`, `branch`, `expires`).
pub fn header_param(value: &str, name: &str) -> Option<String> {
    let value = skip_display_name(value);
    let params = match value.rfind('>') {
        Some(end) => &value[end + 1..],
        None => value.split_once(';').map(|(_, p)| p).unwrap_or(""),
    };
    params
        .split(';')
        .filter_map(|param| {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().trim_matches('"').to_owned())
        })
        .next()
}

fn skip_display_name(value: &str) -> &str {
    let value = value.trim();
    if let Some(rest) = value.strip_prefix('"') {
        // A quoted display name may hold `<`, `;` and `,`.
        let mut escaped = false;
        for (at, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => return rest[at + 1..].trim_start(),
                _ => {}
            }
        }
        return "";
    }
    value
}

/// The user part of a SIP URI (`sip:alice@pbx` → `alice`).
pub fn uri_user(uri: &str) -> Option<&str> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let (user, _) = rest.split_once('@')?;
    Some(user.split(';').next().unwrap_or(user)).filter(|u| !u.is_empty())
}

/// Whether a text may go into a header line as it is: no line breaks, no control characters.
pub fn header_safe(text: &str) -> bool {
    !text.is_empty() && !text.chars().any(|c| c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTIFY: &str = "NOTIFY sip:handoff@127.0.0.1:5070 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1.a, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK2\r\n\
        v: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK3\r\n\
        f: \"Alice, A <x>\" <sip:alice@pbx.example.com>;tag=abc\r\n\
        To: <sip:handoff@pbx.example.com>;tag=xyz\r\n\
        i: 42@handoff\r\n\
        CSeq: 7 NOTIFY\r\n\
        Event: dialog\r\n\
        Subscription-State: active;expires=290\r\n\
        Record-Route: <sip:127.0.0.1;lr;ftag=x,y>,\r\n <sip:10.0.0.1;lr>\r\n\
        Content-Length: 5\r\n\r\nhello extra";

    #[test]
    fn parses_a_request_with_compact_and_folded_headers() {
        let message = Message::parse(NOTIFY.as_bytes()).unwrap();
        assert_eq!(message.method(), Some("NOTIFY"));
        assert_eq!(message.call_id(), Some("42@handoff"));
        assert_eq!(message.cseq(), Some((7, "NOTIFY".to_owned())));
        assert_eq!(message.tag("from").as_deref(), Some("abc"));
        assert_eq!(message.tag("to").as_deref(), Some("xyz"));
        assert_eq!(message.top_branch().as_deref(), Some("z9hG4bK1.a"));
        assert_eq!(message.header_values("via").len(), 3);
        assert_eq!(
            message.header_values("record-route"),
            vec!["<sip:127.0.0.1;lr;ftag=x,y>", "<sip:10.0.0.1;lr>"]
        );
        assert_eq!(
            header_uri(message.header("from").unwrap()).as_deref(),
            Some("sip:alice@pbx.example.com")
        );
        assert_eq!(message.body, "hello");
    }

    #[test]
    fn parses_a_response() {
        let text = "SIP/2.0 202 Accepted\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx;rport=5\r\n\
            Expires: 300\r\nContent-Length: 0\r\n\r\n";
        let message = Message::parse(text.as_bytes()).unwrap();
        assert_eq!(message.code(), Some(202));
        assert_eq!(message.number("expires"), Some(300));
        assert_eq!(message.top_branch().as_deref(), Some("z9hG4bKx"));
    }

    #[test]
    fn refuses_what_is_not_sip_without_panicking() {
        for bad in [
            &b""[..],
            b"\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"SIP/2.0 99999 x\r\n\r\n",
            b"NOTIFY sip:x SIP/2.0\r\nno colon\r\n\r\n",
            b"NOTIFY sip:x SIP/2.0\r\nContent-Length: 99\r\n\r\nshort",
            b"\xff\xfe",
            b" folded first\r\n",
        ] {
            assert!(Message::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn reads_uris_and_params() {
        assert_eq!(header_uri("sip:a@b;tag=1").as_deref(), Some("sip:a@b"));
        assert_eq!(header_param("sip:a@b;tag=1", "tag").as_deref(), Some("1"));
        assert_eq!(header_param("<sip:a@b;tag=no>", "tag"), None);
        assert_eq!(uri_user("sip:a1@pbx.test:5060"), Some("a1"));
        assert_eq!(uri_user("tel:+1555"), None);
        assert!(!header_safe("a\r\nb"));
    }
}
