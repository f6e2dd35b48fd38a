//! `GET /docs`: the API for people, rendered in the browser from the `/openapi.json` this server
//! serves, by a small script embedded in the binary (`api_docs/docs.js`, with its page and
//! style sheet): no CDN, no third-party renderer, nothing fetched from another origin.
//!
//! The page runs under the web UI's strict policy ([`super::CSP`]: scripts and styles from this
//! origin only, no inline script or style; `connect-src 'self'` lets it read `/openapi.json`),
//! with `nosniff`, `Referrer-Policy: no-referrer` and no framing. Like the other pages it is
//! public and holds no data: the OpenAPI document it reads is public too.
//!
//! Routes (in `routes/mod.rs`, beside the web UI's pages):
//! `GET /docs` -> [`page`], `GET /docs/docs.js` -> [`script`], `GET /docs/docs.css` -> [`style`].

use std::sync::OnceLock;

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

const PAGE_HTML: &str = include_str!("api_docs/page.html");
const SCRIPT_JS: &str = include_str!("api_docs/docs.js");
const STYLE_CSS: &str = include_str!("api_docs/docs.css");

fn security_headers(headers: &mut HeaderMap) {
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// `GET /docs`: the page.
pub async fn page() -> Response {
    let mut response = PAGE_HTML.into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(super::CSP),
    );
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    security_headers(headers);
    response
}

/// An asset with an ETag of its content (the first 128 bits of its SHA-256, quoted), so an
/// unchanged file costs a 304.
fn asset(
    body: &'static str,
    content_type: &'static str,
    tag: &'static OnceLock<String>,
    request: &HeaderMap,
) -> Response {
    let tag = tag.get_or_init(|| format!("\"{}\"", hex::encode(&Sha256::digest(body)[..16])));
    let unchanged = request
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = body.into_response();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(tag) {
        headers.insert(ETAG, value);
    }
    security_headers(headers);
    response
}

/// `GET /docs/docs.js`: the renderer.
pub async fn script(headers: HeaderMap) -> Response {
    static TAG: OnceLock<String> = OnceLock::new();
    asset(SCRIPT_JS, "text/javascript; charset=utf-8", &TAG, &headers)
}

/// `GET /docs/docs.css`: its style sheet.
pub async fn style(headers: HeaderMap) -> Response {
    static TAG: OnceLock<String> = OnceLock::new();
    asset(STYLE_CSS, "text/css; charset=utf-8", &TAG, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use axum::Router;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn router() -> Router {
        Router::new()
            .route("/docs", get(page))
            .route("/docs/docs.js", get(script))
            .route("/docs/docs.css", get(style))
    }

    async fn fetch(path: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
        let mut request = Request::get(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = router()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    /// Every `src=` and `href=` value of an HTML text.
    fn references(html: &str) -> Vec<String> {
        let mut found = Vec::new();
        for attribute in ["src=\"", "href=\""] {
            for (at, _) in html.match_indices(attribute) {
                let rest = &html[at + attribute.len()..];
                found.push(rest[..rest.find('"').unwrap()].to_owned());
            }
        }
        found
    }

    #[tokio::test]
    async fn the_page_is_html_under_the_strict_policy_and_loads_only_its_own_files() {
        let (status, headers, html) = fetch("/docs", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(headers[CONTENT_SECURITY_POLICY], super::super::CSP);
        assert!(super::super::CSP.contains("script-src 'self'"));
        assert!(!super::super::CSP.contains("unsafe-inline"));
        assert_eq!(headers[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[X_FRAME_OPTIONS], "DENY");
        assert_eq!(headers[REFERRER_POLICY], "no-referrer");

        let lower = html.to_ascii_lowercase();
        assert!(lower.starts_with("<!doctype html>"));
        // Nothing from elsewhere: every reference is a path on this server.
        let refs = references(&html);
        assert!(refs.contains(&"/docs/docs.js".to_owned()), "{refs:?}");
        assert!(refs.contains(&"/docs/docs.css".to_owned()), "{refs:?}");
        assert!(refs.contains(&"/openapi.json".to_owned()), "{refs:?}");
        for reference in &refs {
            assert!(
                reference.starts_with('/') && !reference.starts_with("//"),
                "not a path on this server: {reference}"
            );
        }
        for text in [&html, &SCRIPT_JS.to_owned(), &STYLE_CSS.to_owned()] {
            let lower = text.to_ascii_lowercase();
            assert!(!lower.contains("http://"), "an external URL");
            assert!(!lower.contains("https://"), "an external URL");
            assert!(!lower.contains("@import"), "an imported style sheet");
        }
        // The CSP forbids inline script and style: the page has neither.
        assert!(!lower.contains("<style"), "inline style element");
        assert!(!lower.contains(" style="), "style attribute");
        assert!(!lower.contains("javascript:"), "a javascript: URL");
        for script in lower.split("<script").skip(1) {
            let (tag, rest) = script.split_once('>').unwrap();
            assert!(
                tag.contains("src=\"/docs/docs.js\""),
                "a script without src"
            );
            assert!(rest.trim_start().starts_with("</script>"), "inline script");
        }
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
    }

    #[tokio::test]
    async fn the_script_renders_the_servers_own_openapi_document_without_html_injection() {
        let (status, headers, script) = fetch("/docs/docs.js", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_eq!(headers[X_CONTENT_TYPE_OPTIONS], "nosniff");
        // It reads the document from this origin, and what it reads is set as text only.
        assert!(script.contains("fetch(\"/openapi.json\""));
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!script.contains(forbidden), "{forbidden} in docs.js");
        }
        let tag = headers[ETAG].to_str().unwrap().to_owned();
        let (status, _, body) = fetch("/docs/docs.js", &[("if-none-match", &tag)]).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());

        let (status, headers, _) = fetch("/docs/docs.css", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "text/css; charset=utf-8");
    }
}
