//! The web UI: the sign-in page, the agent desktop and the supervisor view, served by the binary
//! itself. Every file under `crates/handoff-api/web/` is embedded at build time
//! (`include_bytes!`): building and running need no Node.js and no network. The pages are
//! public (they hold no data); what they show comes from the API, with the session cookie.
//!
//! Every page carries a strict Content-Security-Policy ([`CSP`]: scripts and styles from this
//! origin only, no inline script or style, no framing of the pages), `nosniff` and
//! `Referrer-Policy: no-referrer`. The desktop adds `frame-src http: https:` so an agent may
//! choose to show the CRM page of a pop (`pop_url`) in a frame; nothing else may be framed.
//! Assets are served with `Cache-Control: no-cache` and an `ETag` of their content hash, so a
//! new build is picked up at once and an unchanged file costs a 304.

pub mod api_docs;

use std::sync::OnceLock;

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::routes::Path;

/// The policy of every page.
pub const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The desktop's policy: [`CSP`], and the CRM page of a pop may be shown in a frame.
pub const DESKTOP_CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; \
img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; \
base-uri 'none'; form-action 'self'; frame-src http: https:";

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../web/", $name)),
        }
    };
}

/// What `/assets/{file}` serves.
pub static ASSETS: &[Asset] = &[
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("common.js", "text/javascript; charset=utf-8"),
    asset!("signin.js", "text/javascript; charset=utf-8"),
    asset!("desktop.js", "text/javascript; charset=utf-8"),
    asset!("supervisor.js", "text/javascript; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

const SIGNIN_HTML: &str = include_str!("../../web/signin.html");
const DESKTOP_HTML: &str = include_str!("../../web/desktop.html");
const SUPERVISOR_HTML: &str = include_str!("../../web/supervisor.html");

/// An asset's ETag: the first 128 bits of its SHA-256, quoted.
fn etag(index: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    &TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| format!("\"{}\"", hex::encode(&Sha256::digest(asset.body)[..16])))
            .collect()
    })[index]
}

fn common_headers(headers: &mut HeaderMap) {
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

fn page(html: &'static str, csp: &'static str) -> Response {
    let mut response = html.into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    common_headers(headers);
    response
}

#[utoipa::path(
    get,
    path = "/signin",
    operation_id = "web_signin",
    tag = "web",
    summary = "The web UI's sign-in page: a token, or a one-time code in the fragment (`/signin#code=...`).",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)),
)]
pub(crate) async fn signin() -> Response {
    page(SIGNIN_HTML, CSP)
}

#[utoipa::path(
    get,
    path = "/",
    operation_id = "web_desktop",
    tag = "web",
    summary = "The agent desktop: presence, screen pops, the interaction at hand, today's interactions.",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)),
)]
pub(crate) async fn desktop() -> Response {
    page(DESKTOP_HTML, DESKTOP_CSP)
}

#[utoipa::path(
    get,
    path = "/supervisor",
    operation_id = "web_supervisor",
    tag = "web",
    summary = "The supervisor view: every agent and queue, live, with a chart of the last hour.",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)),
)]
pub(crate) async fn supervisor() -> Response {
    page(SUPERVISOR_HTML, CSP)
}

#[utoipa::path(
    get,
    path = "/assets/{file}",
    operation_id = "web_asset",
    tag = "web",
    summary = "The web UI's scripts, style sheet and icon (`Cache-Control: no-cache` with an ETag).",
    params(("file" = String, Path, description = "e.g. `desktop.js`, `app.css`")),
    responses(
        (status = 200, description = "The file", body = String),
        (status = 304, description = "Unchanged since the ETag in `If-None-Match`"),
        (status = 404, description = "No such file", body = handoff_protocol::ErrorBody),
    ),
)]
pub(crate) async fn asset(
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (index, asset) = ASSETS
        .iter()
        .enumerate()
        .find(|(_, asset)| asset.name == file)
        .ok_or_else(|| ApiError::not_found("not_found", format!("no asset named {file}")))?;
    let tag = etag(index);
    let unchanged = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = asset.body.into_response();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        response
    };
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(tag) {
        headers.insert(ETAG, value);
    }
    common_headers(headers);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_hold_no_inline_script_or_style() {
        for html in [SIGNIN_HTML, DESKTOP_HTML, SUPERVISOR_HTML] {
            let lower = html.to_ascii_lowercase();
            assert!(!lower.contains("<style"), "inline style element");
            assert!(!lower.contains(" style="), "style attribute");
            for (at, _) in lower.match_indices(" on") {
                let name: String = lower[at + 1..]
                    .chars()
                    .take_while(char::is_ascii_alphabetic)
                    .collect();
                let after = lower[at + 1 + name.len()..].trim_start();
                assert!(
                    !(name.len() > 2 && after.starts_with('=')),
                    "an event handler attribute: {name}"
                );
            }
            assert!(!lower.contains("javascript:"), "a javascript: URL");
            for script in lower.split("<script").skip(1) {
                let (tag, rest) = script.split_once('>').expect("a closed script tag");
                assert!(tag.contains("src=\"/assets/"), "script without src: {tag}");
                assert!(rest.starts_with("</script>"), "inline script content");
            }
        }
    }

    #[test]
    fn every_asset_a_page_names_is_embedded() {
        for html in [SIGNIN_HTML, DESKTOP_HTML, SUPERVISOR_HTML] {
            for reference in html.split("/assets/").skip(1) {
                let name = reference.split('"').next().unwrap_or_default();
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "{name} is not embedded"
                );
            }
        }
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(asset.body).expect("UTF-8");
            for import in text.split(" from '").skip(1) {
                let name = import.split('\'').next().unwrap_or_default();
                let name = name.trim_start_matches("./");
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "{} imports {name}, which is not embedded",
                    asset.name
                );
            }
        }
    }

    /// The browser tests find the pages' parts by these; renaming one breaks them.
    #[test]
    fn pages_carry_the_test_ids_the_browser_tests_use() {
        let script = |name: &str| {
            let asset = ASSETS.iter().find(|a| a.name == name).expect("embedded");
            std::str::from_utf8(asset.body).expect("UTF-8")
        };
        let has = |text: &str, id: &str| {
            text.contains(&format!("\"{id}\"")) || text.contains(&format!("'{id}'"))
        };
        for id in [
            "signin-form",
            "signin-agent",
            "signin-token",
            "signin-submit",
            "signin-error",
        ] {
            assert!(has(SIGNIN_HTML, id), "signin: {id}");
        }
        for id in [
            "connection-state",
            "presence-select",
            "crm-mode",
            "signout",
            "pops",
            "work",
            "today-list",
            "notify-enable",
        ] {
            assert!(has(DESKTOP_HTML, id), "desktop: {id}");
        }
        for id in [
            "pop",
            "pop-caller",
            "pop-queue",
            "pop-context",
            "pop-routing",
            "pop-countdown",
            "pop-accept",
            "pop-reject",
            "pop-crm-link",
            "crm-frame",
            "work-card",
            "work-notes",
            "work-disposition",
            "work-complete",
            "transfer-kind",
            "transfer-target",
            "transfer-note",
            "transfer-submit",
            "today-row",
        ] {
            assert!(has(script("desktop.js"), id), "desktop.js: {id}");
        }
        for id in ["connection-state", "agent-rows", "queue-rows", "chart"] {
            assert!(has(SUPERVISOR_HTML, id), "supervisor: {id}");
        }
        for id in [
            "agent-row",
            "agent-presence",
            "agent-activity",
            "agent-since",
            "agent-interaction",
            "queue-row",
            "queue-waiting",
            "queue-sl",
            "queue-asa",
            "queue-chart",
        ] {
            assert!(has(script("supervisor.js"), id), "supervisor.js: {id}");
        }
    }

    #[test]
    fn scripts_never_assign_inner_html() {
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(asset.body).expect("UTF-8");
            let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            for forbidden in [
                "innerHTML=",
                "outerHTML=",
                "insertAdjacentHTML(",
                "document.write(",
                "eval(",
                "newFunction(",
                "srcdoc=",
            ] {
                assert!(
                    !squeezed.contains(forbidden),
                    "{} uses {forbidden}",
                    asset.name
                );
            }
        }
    }
}
