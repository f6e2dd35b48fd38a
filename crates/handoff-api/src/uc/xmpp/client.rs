//! An XMPP client connection (RFC 6120): TCP, STARTTLS, SASL PLAIN, resource binding; then
//! stanzas in and out. Only what following presence needs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use quick_xml::escape::escape;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::element::{Element, ElementError, ElementSplitter, StreamItem};
use super::XmppTls;

/// How long each step of signing in may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest stanza handoff takes; presence stanzas are a few hundred bytes.
const STANZA_LIMIT: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum XmppError {
    #[error("the connection to the XMPP server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Xml(#[from] ElementError),
    #[error("the XMPP server closed the stream")]
    Closed,
    #[error("the XMPP server ended the stream: {0}")]
    StreamError(String),
    #[error("the XMPP server did not answer {0} within {STEP_TIMEOUT:?}")]
    Timeout(&'static str),
    #[error("the XMPP server offers no STARTTLS, and xmpp_tls is \"required\"")]
    NoStartTls,
    #[error("TLS with the XMPP server failed: {0}")]
    Tls(String),
    #[error("the XMPP server offers no SASL PLAIN (it offers: {0})")]
    NoPlain(String),
    #[error("the XMPP server refused handoff's sign-in: {0}")]
    SignInRefused(String),
    #[error("the XMPP server refused to bind a resource: {0}")]
    Bind(String),
    #[error("{0}")]
    Settings(String),
}

/// Who signs in where.
pub struct SignIn<'a> {
    /// `host:port`.
    pub server: &'a str,
    /// `user@domain`.
    pub jid: &'a str,
    pub password: &'a str,
    pub tls: XmppTls,
    /// PEM certificates to trust beside the public roots (a private CA, a self-signed server).
    pub tls_ca: Option<&'a Path>,
    pub resource: &'a str,
}

trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// A signed-in connection.
pub struct XmppClient {
    transport: Box<dyn Transport>,
    splitter: ElementSplitter,
    chunk: Vec<u8>,
    /// The full JID the server bound.
    pub bound_jid: String,
}

impl XmppClient {
    /// Connects, secures, authenticates and binds a resource.
    pub async fn sign_in(sign_in: &SignIn<'_>) -> Result<XmppClient, XmppError> {
        let (local, domain) = sign_in
            .jid
            .split_once('@')
            .map(|(local, domain)| (local, domain.split('/').next().unwrap_or(domain)))
            .ok_or_else(|| XmppError::Settings(format!("{:?} is not a JID", sign_in.jid)))?;
        let tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(sign_in.server))
            .await
            .map_err(|_| XmppError::Timeout("the TCP connection"))??;
        tcp.set_nodelay(true)?;
        let mut client = XmppClient {
            transport: Box::new(tcp),
            splitter: ElementSplitter::new(STANZA_LIMIT),
            chunk: vec![0; 16 * 1024],
            bound_jid: String::new(),
        };
        let mut features = client.open_stream(domain).await?;
        if sign_in.tls == XmppTls::Required {
            if features.child("starttls").is_none() {
                return Err(XmppError::NoStartTls);
            }
            client
                .send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                .await?;
            let answer = client.next_stanza("STARTTLS").await?;
            if answer.name != "proceed" {
                return Err(XmppError::Tls(format!(
                    "the server answered <{}>",
                    answer.name
                )));
            }
            client = client.secured(domain, sign_in.tls_ca).await?;
            features = client.open_stream(domain).await?;
        }
        let offered: Vec<String> = features
            .child("mechanisms")
            .map(|m| {
                m.children_named("mechanism")
                    .map(|m| m.text.trim().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        if !offered.iter().any(|m| m == "PLAIN") {
            return Err(XmppError::NoPlain(offered.join(", ")));
        }
        let credentials = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{local}\0{}", sign_in.password));
        client
            .send(&format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{credentials}</auth>"
            ))
            .await?;
        let answer = client.next_stanza("the sign-in").await?;
        if answer.name != "success" {
            let condition = answer
                .children
                .iter()
                .find(|c| c.name != "text")
                .map(|c| c.name.clone())
                .unwrap_or_else(|| answer.name.clone());
            return Err(XmppError::SignInRefused(condition));
        }
        let features = client.open_stream(domain).await?;
        if features.child("bind").is_none() {
            return Err(XmppError::Bind(
                "the server offers no resource binding".to_owned(),
            ));
        }
        client
            .send(&format!(
                "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                 <resource>{}</resource></bind></iq>",
                escape(sign_in.resource)
            ))
            .await?;
        let answer = client.answer_to("bind").await?;
        if answer.attribute("type") != Some("result") {
            return Err(XmppError::Bind(error_condition(&answer)));
        }
        client.bound_jid = answer
            .child("bind")
            .and_then(|bind| bind.child_text("jid"))
            .unwrap_or_default()
            .to_owned();
        // RFC 3921's session, for servers that still require it (RFC 6121 dropped it).
        if let Some(session) = features.child("session") {
            if session.child("optional").is_none() {
                client
                    .send("<iq type='set' id='session'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
                    .await?;
                client.answer_to("session").await?;
            }
        }
        Ok(client)
    }

    pub async fn send(&mut self, xml: &str) -> Result<(), XmppError> {
        self.transport.write_all(xml.as_bytes()).await?;
        self.transport.flush().await?;
        Ok(())
    }

    /// The next item off the stream. Cancel-safe: bytes read stay in the splitter.
    pub async fn next_item(&mut self) -> Result<StreamItem, XmppError> {
        loop {
            if let Some(item) = self.splitter.next_item()? {
                return Ok(item);
            }
            let read = self.transport.read(&mut self.chunk).await?;
            if read == 0 {
                return Err(XmppError::Closed);
            }
            self.splitter.push(&self.chunk[..read])?;
        }
    }

    /// Sends the stream header and returns the server's features.
    async fn open_stream(&mut self, domain: &str) -> Result<Element, XmppError> {
        self.splitter.reset();
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream to='{}' version='1.0' xml:lang='en' \
             xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
            escape(domain)
        ))
        .await?;
        loop {
            let stanza = self.next_stanza("the stream header").await?;
            if stanza.name == "features" {
                return Ok(stanza);
            }
        }
    }

    /// The next top-level element, within the step timeout; a stream error is an error.
    async fn next_stanza(&mut self, step: &'static str) -> Result<Element, XmppError> {
        loop {
            let item = tokio::time::timeout(STEP_TIMEOUT, self.next_item())
                .await
                .map_err(|_| XmppError::Timeout(step))??;
            match item {
                StreamItem::Opened(_) => {}
                StreamItem::Closed => return Err(XmppError::Closed),
                StreamItem::Stanza(stanza) if stanza.name == "error" => {
                    return Err(XmppError::StreamError(stream_error_condition(&stanza)))
                }
                StreamItem::Stanza(stanza) => return Ok(stanza),
            }
        }
    }

    /// The answer to the iq with `id`, skipping whatever comes before it.
    async fn answer_to(&mut self, id: &'static str) -> Result<Element, XmppError> {
        loop {
            let stanza = self.next_stanza(id).await?;
            if stanza.name == "iq" && stanza.attribute("id") == Some(id) {
                return Ok(stanza);
            }
        }
    }

    /// The same stream over TLS, after the server's `<proceed/>`.
    async fn secured(self, domain: &str, tls_ca: Option<&Path>) -> Result<XmppClient, XmppError> {
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = tls_ca {
            use rustls_pki_types::pem::PemObject;
            let certificates =
                rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|error| {
                    XmppError::Tls(format!("xmpp_tls_ca {}: {error}", path.display()))
                })?;
            for certificate in certificates {
                let certificate = certificate.map_err(|error| {
                    XmppError::Tls(format!("xmpp_tls_ca {}: {error}", path.display()))
                })?;
                roots.add(certificate).map_err(|error| {
                    XmppError::Tls(format!("xmpp_tls_ca {}: {error}", path.display()))
                })?;
            }
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| XmppError::Tls(error.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(domain.to_owned())
            .map_err(|error| XmppError::Tls(format!("{domain:?}: {error}")))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let transport = tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, self.transport))
            .await
            .map_err(|_| XmppError::Timeout("the TLS handshake"))?
            .map_err(|error| XmppError::Tls(error.to_string()))?;
        Ok(XmppClient {
            transport: Box::new(transport),
            splitter: self.splitter,
            chunk: self.chunk,
            bound_jid: self.bound_jid,
        })
    }
}

/// The defined condition of a `<stream:error>`: the child that is not `<text>`.
pub fn stream_error_condition(error: &Element) -> String {
    let condition = error
        .children
        .iter()
        .find(|child| child.name != "text")
        .map(|child| child.name.clone())
        .unwrap_or_else(|| "undefined-condition".to_owned());
    match error.child_text("text") {
        Some(text) if !text.is_empty() => format!("{condition} ({text})"),
        _ => condition,
    }
}

/// The condition of an iq error answer.
fn error_condition(answer: &Element) -> String {
    answer
        .child("error")
        .map(stream_error_condition)
        .unwrap_or_else(|| format!("type {:?}", answer.attribute("type").unwrap_or("")))
}
