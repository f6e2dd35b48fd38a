//! The web UI at the HTTP level: its pages and assets, and the browser session behind them
//! (session keys, one-time sign-in codes, sign-out closing streams, the Origin rule).

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{next_of_type, spawn_app, TestApp, Ws, PATIENCE};

const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Signs in with `body`; the `name=value` pair of the cookie, the Set-Cookie line and the view.
async fn sign_in(app: &TestApp, body: Value) -> (String, String, Value) {
    let response = app
        .http
        .post(app.url("/v1/session"))
        .header("origin", &app.base)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "sign in with {body}");
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .expect("a Set-Cookie")
        .to_str()
        .unwrap()
        .to_owned();
    let pair = set_cookie.split(';').next().unwrap().trim().to_owned();
    let view: Value = response.json().await.unwrap();
    (pair, set_cookie, view)
}

/// A request with the cookie and, optionally, an Origin.
fn with_cookie(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    origin: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut request = app
        .http
        .request(method, app.url(path))
        .header("cookie", cookie);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    request
}

/// Opens an agent's stream as a browser does: the cookie and the page's Origin.
async fn cookie_stream(
    app: &TestApp,
    agent: &str,
    cookie: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let url = format!(
        "{}/v1/agents/{agent}/stream",
        app.base.replacen("http://", "ws://", 1)
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("cookie", cookie.parse().unwrap());
    request
        .headers_mut()
        .insert("origin", app.base.parse().unwrap());
    let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request))
        .await
        .expect("the handshake ends in time")?;
    Ok(ws)
}

fn http_status(error: &tokio_tungstenite::tungstenite::Error) -> Option<u16> {
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => Some(response.status().as_u16()),
        _ => None,
    }
}

#[tokio::test]
async fn the_pages_answer_with_a_strict_policy_and_no_inline_script() {
    let app = spawn_app().await;
    for path in ["/", "/signin", "/supervisor"] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let headers = response.headers().clone();
        let header = |name: &str| {
            headers
                .get(name)
                .unwrap_or_else(|| panic!("{path}: no {name}"))
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert!(header("content-type").starts_with("text/html"), "{path}");
        let csp = header("content-security-policy");
        assert!(csp.starts_with(CSP), "{path}: {csp}");
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        let html = response.text().await.unwrap();
        let lower = html.to_ascii_lowercase();
        let scripts: Vec<&str> = lower.split("<script").skip(1).collect();
        assert!(!scripts.is_empty(), "{path} loads a script");
        for script in scripts {
            let (tag, rest) = script.split_once('>').unwrap();
            assert!(tag.contains("src=\"/assets/"), "{path}: {tag}");
            assert!(rest.starts_with("</script>"), "{path}: inline script");
        }
        assert!(!lower.contains("<style"), "{path}: inline style");
        assert!(!lower.contains(" style="), "{path}: style attribute");
    }
    // Public: no token and no cookie needed, and HEAD works as well.
    let head = app.http.head(app.url("/signin")).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 200);
    app.stop().await;
}

#[tokio::test]
async fn assets_have_their_content_types_and_cache_validators() {
    let app = spawn_app().await;
    for (file, content_type) in [
        ("desktop.js", "text/javascript"),
        ("supervisor.js", "text/javascript"),
        ("signin.js", "text/javascript"),
        ("common.js", "text/javascript"),
        ("app.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let path = format!("/assets/{file}");
        let response = app.http.get(app.url(&path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let headers = response.headers().clone();
        let get = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        assert!(
            get("content-type").unwrap().starts_with(content_type),
            "{path}: {:?}",
            get("content-type")
        );
        assert_eq!(get("x-content-type-options").as_deref(), Some("nosniff"));
        assert_eq!(get("cache-control").as_deref(), Some("no-cache"), "{path}");
        let etag = get("etag").expect("an ETag");
        assert!(!response.bytes().await.unwrap().is_empty(), "{path}");
        let again = app
            .http
            .get(app.url(&path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status().as_u16(), 304, "{path}");
    }
    let (status, body) = app
        .send(reqwest::Method::GET, "/assets/nope.js", None, None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = app
        .send(
            reqwest::Method::GET,
            "/assets/..%2Fsrc%2Flib.rs",
            None,
            None,
        )
        .await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn signing_in_with_a_token_creates_a_session_key_that_the_cookie_carries() {
    let app = spawn_app().await;
    let alice = app.agent("alice", true).await;
    let ivr = app.key("ivr").await;
    let (cookie, set_cookie, view) = sign_in(&app, json!({"token": alice})).await;
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain http: {set_cookie}");
    assert!(cookie.starts_with("handoff_session="), "{cookie}");
    assert!(
        !cookie.contains(&alice),
        "the cookie never carries the token typed in"
    );
    assert_eq!(view["role"], "agent");
    assert_eq!(view["agent_id"], "alice");
    let session_id = view["session_id"].as_str().unwrap().to_owned();
    assert!(session_id.starts_with("ses_"), "{session_id}");

    // A new key: same role and agent, named "session".
    let (_, keys) = app.get("/v1/keys", &app.admin).await;
    let session = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == session_id.as_str())
        .unwrap_or_else(|| panic!("the session key is listed: {keys}"))
        .clone();
    assert_eq!(session["name"], "session");
    assert_eq!(session["role"], "agent");
    assert_eq!(session["agent_id"], "alice");

    // The cookie reads what alice may read.
    let read = with_cookie(
        &app,
        reqwest::Method::GET,
        "/v1/agents/alice",
        &cookie,
        None,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(read.status().as_u16(), 200);
    let me = with_cookie(&app, reqwest::Method::GET, "/v1/session", &cookie, None)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status().as_u16(), 200);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["agent_id"], "alice");
    assert_eq!(me["held"], json!([]));

    // The stream opens with the cookie and an allowed Origin; the pop arrives, and a reload's
    // GET /v1/session lists the held offer.
    let mut ws = cookie_stream(&app, "alice", &cookie)
        .await
        .expect("stream opens with the cookie");
    let created = app
        .create_interaction(
            &ivr,
            json!({"caller": "+15551234567", "target": {"agent": "alice"}, "context": {"account": "A-1"}}),
        )
        .await;
    let pop = next_of_type(&mut ws, "interaction.offered").await;
    assert_eq!(pop["subject"], created["id"]);
    let me: Value = with_cookie(&app, reqwest::Method::GET, "/v1/session", &cookie, None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let held = me["held"].as_array().unwrap();
    assert_eq!(held.len(), 1, "{me}");
    assert_eq!(held[0]["interaction"]["id"], created["id"]);
    assert_eq!(held[0]["interaction"]["state"], "offered");
    assert_eq!(held[0]["offer_target"], json!({"agent": "alice"}));

    // Nobody signed in: 401. A raw API token in the cookie is not a session.
    let (status, _) = app
        .send(reqwest::Method::GET, "/v1/session", None, None)
        .await;
    assert_eq!(status, 401);
    let raw = with_cookie(
        &app,
        reqwest::Method::GET,
        "/v1/agents/alice",
        &format!("handoff_session={alice}"),
        None,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(raw.status().as_u16(), 401);

    // Behind an https proxy the cookie is Secure.
    let response = app
        .http
        .post(app.url("/v1/session"))
        .header("x-forwarded-proto", "https")
        .json(&json!({"token": alice}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let secure = response.headers()["set-cookie"].to_str().unwrap();
    assert!(secure.contains("; Secure"), "{secure}");

    // The agent id on the form must be the token's.
    let (status, _) = app
        .send(
            reqwest::Method::POST,
            "/v1/session",
            None,
            Some(json!({"token": alice, "agent": "bob"})),
        )
        .await;
    assert_eq!(status, 401);
    // Keys without a web UI are refused; neither token nor code is a 400.
    let (status, _) = app
        .send(
            reqwest::Method::POST,
            "/v1/session",
            None,
            Some(json!({"token": ivr})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = app
        .send(reqwest::Method::POST, "/v1/session", None, Some(json!({})))
        .await;
    assert_eq!(status, 400, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_one_time_code_signs_in_once_then_is_refused() {
    let app = spawn_app().await;
    app.agent("alice", false).await;
    let (status, link) = app
        .post(
            "/v1/signin-links",
            &app.admin,
            Some(json!({"agent": "alice"})),
        )
        .await;
    assert_eq!(status, 201, "{link}");
    let code = link["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 3 + 64, "256 bits, hex: {code}");
    assert_eq!(link["url"], format!("/signin#code={code}"));
    assert!(link["expires_at"].as_str().unwrap().ends_with('Z'));

    let (cookie, _, view) = sign_in(&app, json!({"code": code})).await;
    assert_eq!(view["role"], "agent");
    assert_eq!(view["agent_id"], "alice");
    let read = with_cookie(
        &app,
        reqwest::Method::GET,
        "/v1/agents/alice",
        &cookie,
        None,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(read.status().as_u16(), 200);
    // Single use.
    let (status, body) = app
        .send(
            reqwest::Method::POST,
            "/v1/session",
            None,
            Some(json!({"code": code})),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = app
        .send(
            reqwest::Method::POST,
            "/v1/session",
            None,
            Some(json!({"code": "hc_0000"})),
        )
        .await;
    assert_eq!(status, 401);

    // A supervisor's link opens a supervisor session that reads the event stream.
    let (status, link) = app
        .post(
            "/v1/signin-links",
            &app.admin,
            Some(json!({"role": "supervisor"})),
        )
        .await;
    assert_eq!(status, 201, "{link}");
    let (cookie, _, view) = sign_in(&app, json!({"code": link["code"]})).await;
    assert_eq!(view["role"], "supervisor");
    assert!(view["agent_id"].is_null());
    let events = with_cookie(&app, reqwest::Method::GET, "/v1/events", &cookie, None)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status().as_u16(), 200);
    assert!(events.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    drop(events);

    // Only admins create links; the body names exactly one agent or a supervisor/admin role.
    let supervisor = app.key("supervisor").await;
    let (status, _) = app
        .post(
            "/v1/signin-links",
            &supervisor,
            Some(json!({"role": "supervisor"})),
        )
        .await;
    assert_eq!(status, 403);
    for (body, expected) in [
        (json!({"role": "ivr"}), 400),
        (json!({}), 400),
        (json!({"agent": "alice", "role": "supervisor"}), 400),
        (json!({"agent": "nobody"}), 422),
        (json!({"agent": "not an id"}), 422),
        (json!({"agent": "alice", "extra": 1}), 400),
    ] {
        let (status, answer) = app
            .post("/v1/signin-links", &app.admin, Some(body.clone()))
            .await;
        assert_eq!(status, expected, "{body}: {answer}");
    }
    app.stop().await;
}

#[tokio::test]
async fn signing_out_revokes_the_session_key_and_closes_its_stream() {
    let app = spawn_app().await;
    let alice = app.agent("alice", true).await;
    let (cookie, _, view) = sign_in(&app, json!({"token": alice})).await;
    let session_id = view["session_id"].as_str().unwrap().to_owned();
    let mut ws = cookie_stream(&app, "alice", &cookie)
        .await
        .expect("stream opens");
    // A second session of the same agent stays signed in.
    let (other, _, _) = sign_in(&app, json!({"token": alice})).await;

    let out = with_cookie(
        &app,
        reqwest::Method::DELETE,
        "/v1/session",
        &cookie,
        Some(&app.base),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(out.status().as_u16(), 204);
    let cleared = out.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.contains("handoff_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );

    // The open stream closes at once with 1008.
    let close = loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the stream closes in time");
        match message {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(
        close.expect("a close frame with a code").code,
        CloseCode::Policy
    );

    // The key is gone, the cookie no longer works, the agent's own token and the other
    // session still do.
    let (_, keys) = app.get("/v1/keys", &app.admin).await;
    assert!(
        !keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == session_id.as_str()),
        "{keys}"
    );
    for path in ["/v1/agents/alice", "/v1/session"] {
        let read = with_cookie(&app, reqwest::Method::GET, path, &cookie, None)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status().as_u16(), 401, "{path}");
    }
    let (status, _) = app.get("/v1/agents/alice", &alice).await;
    assert_eq!(status, 200);
    let read = with_cookie(&app, reqwest::Method::GET, "/v1/agents/alice", &other, None)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200);
    let reconnect = cookie_stream(&app, "alice", &cookie)
        .await
        .expect_err("a revoked session cannot reopen the stream");
    assert_eq!(http_status(&reconnect), Some(401));
    app.stop().await;
}

#[tokio::test]
async fn a_change_made_with_the_cookie_needs_an_allowed_origin() {
    let app = spawn_app().await;
    let alice = app.agent("alice", false).await;
    let (cookie, _, _) = sign_in(&app, json!({"token": alice})).await;
    let presence = |origin: Option<&str>| {
        with_cookie(
            &app,
            reqwest::Method::PUT,
            "/v1/agents/alice/presence",
            &cookie,
            origin,
        )
        .json(&json!({"status": "available"}))
        .send()
    };
    assert_eq!(presence(None).await.unwrap().status().as_u16(), 403);
    assert_eq!(
        presence(Some("https://evil.example.com"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );
    assert_eq!(
        presence(Some(&app.base)).await.unwrap().status().as_u16(),
        200
    );
    // Signing out is a change too: without an Origin it is refused and the session lives on.
    let out = with_cookie(&app, reqwest::Method::DELETE, "/v1/session", &cookie, None)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status().as_u16(), 403);
    let read = with_cookie(&app, reqwest::Method::GET, "/v1/session", &cookie, None)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200);
    // A sign-in from a foreign page is refused.
    let foreign = app
        .http
        .post(app.url("/v1/session"))
        .header("origin", "https://evil.example.com")
        .json(&json!({"token": alice}))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status().as_u16(), 403);
    app.stop().await;
}

#[tokio::test]
async fn an_agent_cookie_cannot_open_another_agents_stream() {
    let app = spawn_app().await;
    let alice = app.agent("alice", false).await;
    app.agent("bob", false).await;
    let (cookie, _, _) = sign_in(&app, json!({"token": alice})).await;
    let refused = cookie_stream(&app, "bob", &cookie)
        .await
        .expect_err("alice's cookie cannot open bob's stream");
    assert_eq!(http_status(&refused), Some(403));
    // Nor can a page of another origin open alice's own.
    let url = format!(
        "{}/v1/agents/alice/stream",
        app.base.replacen("http://", "ws://", 1)
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("cookie", cookie.parse().unwrap());
    request
        .headers_mut()
        .insert("origin", "https://evil.example.com".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(request)
        .await
        .expect_err("a foreign Origin is refused");
    assert_eq!(http_status(&refused), Some(403));
    app.stop().await;
}

#[tokio::test]
async fn the_api_docs_page_is_served_by_the_server_itself_under_the_strict_policy() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.starts_with(CSP), "{csp}");
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = response.text().await.unwrap().to_ascii_lowercase();
    assert!(html.contains("src=\"/docs/docs.js\""), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN: {html}"
    );
    for (path, content_type) in [
        ("/docs/docs.js", "javascript"),
        ("/docs/docs.css", "text/css"),
    ] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let served = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(served.contains(content_type), "{path}: {served}");
        let body = response.text().await.unwrap();
        if path.ends_with(".js") {
            assert!(
                body.contains("/openapi.json"),
                "the page renders the server's own document"
            );
        }
    }
    app.stop().await;
}
