//! Who may do what: every route against every caller (no token, a bad token, admin, ivr,
//! supervisor, presence, the agent itself, another agent), each cell with the exact status the
//! contract gives, the contract's error shape on every refusal, and nothing changed by a refused
//! call. A matrix collects every wrong cell before it fails, so one run shows them all.

use handoff_api::ApiSettings;
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    NoToken,
    BadToken,
    Admin,
    /// The IVR key that creates every fixture interaction.
    Ivr,
    /// Another IVR key, which created none of them.
    SecondIvr,
    Supervisor,
    Presence,
    /// The agent every fixture interaction is offered to.
    Alice,
    /// Another agent.
    Bob,
}

use Caller::*;

const EVERYONE: [Caller; 8] = [
    NoToken, BadToken, Admin, Ivr, Supervisor, Presence, Alice, Bob,
];
const EVERYONE_AND_SECOND_IVR: [Caller; 9] = [
    NoToken, BadToken, Admin, Ivr, SecondIvr, Supervisor, Presence, Alice, Bob,
];

/// Well-formed, but no key has it.
const BAD_TOKEN: &str = "hk_0000000000000000000000000000000000000000000000000000000000000000";

/// The status the contract gives `caller` on a route that `allowed` may call and that answers
/// them `ok`: 401 without a valid token, 403 for a valid token that may not.
fn expected(caller: Caller, allowed: &[Caller], ok: u16) -> u16 {
    match caller {
        NoToken | BadToken => 401,
        caller if allowed.contains(&caller) => ok,
        _ => 403,
    }
}

struct World {
    app: TestApp,
    ivr: String,
    second_ivr: String,
    supervisor: String,
    presence: String,
    alice: String,
    bob: String,
}

/// A server with alice and bob available, each with room for a thousand interactions, and a
/// key of every role. Offers last ten minutes, so none expires while a matrix runs, and missed
/// offers never set an agent away.
async fn world() -> World {
    let mut settings = ApiSettings::default();
    settings.core.offer_timeout_s = 600;
    // The matrices reject many offers in a row; alice must stay available throughout, not be
    // set away for missed offers.
    settings.core.max_missed_offers = 0;
    let app = spawn_app_with(settings).await;
    let alice = app.agent("alice", true).await;
    let bob = app.agent("bob", true).await;
    for id in ["alice", "bob"] {
        let (status, body) = app
            .put(&format!("/v1/agents/{id}"), &app.admin, big_agent(id))
            .await;
        assert_eq!(status, 200, "capacity for {id}: {body}");
    }
    let ivr = app.key("ivr").await;
    let second_ivr = app.key("ivr").await;
    let supervisor = app.key("supervisor").await;
    let presence = app.key("presence").await;
    World {
        app,
        ivr,
        second_ivr,
        supervisor,
        presence,
        alice,
        bob,
    }
}

fn big_agent(id: &str) -> Value {
    json!({"name": format!("Agent {id}"), "address": format!("sip:{id}@pbx.example.com"), "capacity": 1000})
}

impl World {
    fn token(&self, caller: Caller) -> Option<&str> {
        match caller {
            NoToken => None,
            BadToken => Some(BAD_TOKEN),
            Admin => Some(&self.app.admin),
            Ivr => Some(&self.ivr),
            SecondIvr => Some(&self.second_ivr),
            Supervisor => Some(&self.supervisor),
            Presence => Some(&self.presence),
            Alice => Some(&self.alice),
            Bob => Some(&self.bob),
        }
    }

    async fn call(
        &self,
        caller: Caller,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.app.send(method, path, self.token(caller), body).await
    }

    /// A body that is not JSON at all, declared as JSON.
    async fn call_garbage(&self, caller: Caller, method: Method, path: &str) -> (u16, Value) {
        self.app
            .send_raw(
                method,
                path,
                self.token(caller),
                Some("application/json"),
                b"{this is not json".to_vec(),
            )
            .await
    }

    /// A new interaction created by the first IVR key and offered to alice; its id.
    async fn offered(&self) -> String {
        let created = self
            .app
            .create_interaction(
                &self.ivr,
                json!({"caller": "+15551230000", "context": {"case": 7}, "target": {"agent": "alice"}}),
            )
            .await;
        assert_eq!(
            created["state"], "offered",
            "fixture offered to alice: {created}"
        );
        assert_eq!(
            created["agent"]["id"], "alice",
            "fixture offered to alice: {created}"
        );
        created["id"].as_str().unwrap().to_owned()
    }

    /// A new interaction offered to alice and accepted by her; its id.
    async fn accepted(&self) -> String {
        let id = self.offered().await;
        let (status, body) = self
            .app
            .post(&format!("/v1/interactions/{id}/accept"), &self.alice, None)
            .await;
        assert_eq!(status, 200, "fixture accepted by alice: {body}");
        assert_eq!(body["state"], "accepted");
        id
    }

    /// The interaction as the admin reads it.
    async fn read(&self, id: &str) -> Value {
        let (status, body) = self
            .app
            .get(&format!("/v1/interactions/{id}"), &self.app.admin)
            .await;
        assert_eq!(status, 200, "admin reads {id}: {body}");
        body
    }

    /// The WebSocket handshake on alice's stream as `caller`: the status of the answer (101 when
    /// upgraded) and, when refused, the body that came with the refusal (`Null` if none arrived
    /// with the headers).
    async fn handshake(&self, caller: Caller) -> (u16, Value) {
        let url = format!(
            "{}/v1/agents/alice/stream",
            self.app.base.replacen("http://", "ws://", 1)
        );
        let mut request = url.into_client_request().unwrap();
        if let Some(token) = self.token(caller) {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let attempt = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request))
            .await
            .expect("the handshake ends in time");
        match attempt {
            Ok((mut ws, response)) => {
                let status = response.status().as_u16();
                let _ = ws.close(None).await;
                (status, Value::Null)
            }
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_deref()
                    .and_then(|bytes| serde_json::from_slice(bytes).ok())
                    .unwrap_or(Value::Null);
                (status, body)
            }
            Err(other) => panic!("handshake as {caller:?} failed without an HTTP answer: {other}"),
        }
    }
}

/// The wrong cells of a matrix, gathered so one run reports every one of them.
#[derive(Default)]
struct Matrix {
    failures: Vec<String>,
}

impl Matrix {
    /// Asserts one cell: the exact status, and the contract's error shape on every 4xx.
    fn check(&mut self, route: &str, caller: Caller, expected: u16, answer: &(u16, Value)) {
        let (status, body) = answer;
        if *status != expected {
            self.failures.push(format!(
                "{route} as {caller:?}: expected {expected}, got {status}: {body}"
            ));
            return;
        }
        if (400..500).contains(status) {
            if let Some(problem) = error_shape_problem(body) {
                self.failures.push(format!(
                    "{route} as {caller:?}: {status} without the error shape: {problem}"
                ));
            }
        }
    }

    fn fail(&mut self, text: String) {
        self.failures.push(text);
    }

    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} wrong cell(s):\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// What a refused call must leave as it was.
fn fingerprint(interaction: &Value) -> Value {
    json!({
        "state": interaction["state"],
        "agent": interaction["agent"],
        "context": interaction["context"],
        "history": interaction["history"].as_array().map(Vec::len),
    })
}

#[tokio::test]
async fn health_metrics_and_openapi_answer_200_to_every_caller_even_without_or_with_a_bad_token() {
    let world = world().await;
    let mut matrix = Matrix::default();
    for path in ["/healthz", "/metrics", "/openapi.json"] {
        for caller in EVERYONE {
            let answer = world.call(caller, Method::GET, path, None).await;
            matrix.check(&format!("GET {path}"), caller, 200, &answer);
        }
    }
    matrix.finish();
    world.app.stop().await;
}

#[tokio::test]
async fn agent_routes_answer_each_role_exactly_as_the_contract_allows_and_refusals_change_nothing()
{
    let world = world().await;
    let mut matrix = Matrix::default();

    for caller in EVERYONE {
        let answer = world.call(caller, Method::GET, "/v1/agents", None).await;
        matrix.check(
            "GET /v1/agents",
            caller,
            expected(caller, &[Admin, Ivr, Supervisor], 200),
            &answer,
        );

        let answer = world
            .call(caller, Method::GET, "/v1/agents/alice", None)
            .await;
        let want = expected(caller, &[Admin, Ivr, Supervisor, Alice], 200);
        matrix.check("GET /v1/agents/alice", caller, want, &answer);
        if answer.0 == 200 && answer.1["id"] != "alice" {
            matrix.fail(format!(
                "GET /v1/agents/alice as {caller:?} answered another agent: {}",
                answer.1
            ));
        }

        // A refused caller tries to rename alice and cut her capacity; the admin sets her as she is.
        let body = if caller == Admin {
            json!({"name": "Agent alice", "address": "sip:alice@pbx.example.com", "capacity": 1000})
        } else {
            json!({"name": "Mallory", "capacity": 1})
        };
        let answer = world
            .call(caller, Method::PUT, "/v1/agents/alice", Some(body))
            .await;
        matrix.check(
            "PUT /v1/agents/alice",
            caller,
            expected(caller, &[Admin], 200),
            &answer,
        );

        // Authorisation comes before the body is read: garbage is a 403 to anyone but the admin.
        let answer = world
            .call_garbage(caller, Method::PUT, "/v1/agents/alice")
            .await;
        let want = expected(caller, &[Admin], 400);
        matrix.check("PUT /v1/agents/alice (invalid JSON)", caller, want, &answer);

        let answer = world
            .call(
                caller,
                Method::PUT,
                "/v1/agents/alice/presence",
                Some(json!({"status": "available"})),
            )
            .await;
        let want = expected(caller, &[Admin, Presence, Alice], 200);
        matrix.check("PUT /v1/agents/alice/presence", caller, want, &answer);
        if answer.0 == 200 && answer.1["presence"]["status"] != "available" {
            matrix.fail(format!("presence as {caller:?} not applied: {}", answer.1));
        }

        let answer = world
            .call_garbage(caller, Method::PUT, "/v1/agents/alice/presence")
            .await;
        let want = expected(caller, &[Admin, Presence, Alice], 400);
        matrix.check(
            "PUT /v1/agents/alice/presence (invalid JSON)",
            caller,
            want,
            &answer,
        );

        let answer = world
            .call(
                caller,
                Method::PUT,
                "/v1/agents/alice/presence",
                Some(json!({"status": "sleeping"})),
            )
            .await;
        let want = expected(caller, &[Admin, Presence, Alice], 400);
        matrix.check(
            "PUT /v1/agents/alice/presence (unknown status)",
            caller,
            want,
            &answer,
        );

        let answer = world
            .call(caller, Method::POST, "/v1/agents/alice/tokens", None)
            .await;
        matrix.check(
            "POST /v1/agents/alice/tokens",
            caller,
            expected(caller, &[Admin], 201),
            &answer,
        );
        if answer.0 == 201 && answer.1["token"].as_str().is_none_or(str::is_empty) {
            matrix.fail(format!("agent token created without a token: {}", answer.1));
        }

        // Each delete cell gets its own temporary agent.
        let temp = format!("temp-{caller:?}").to_lowercase();
        let (status, body) = world
            .app
            .put(
                &format!("/v1/agents/{temp}"),
                &world.app.admin,
                json!({"name": "Temporary"}),
            )
            .await;
        assert_eq!(status, 201, "temporary agent {temp}: {body}");
        let path = format!("/v1/agents/{temp}");
        let answer = world.call(caller, Method::DELETE, &path, None).await;
        matrix.check(
            "DELETE /v1/agents/{temp}",
            caller,
            expected(caller, &[Admin], 204),
            &answer,
        );
        let (still, _) = world.app.get(&path, &world.app.admin).await;
        let want_after = if answer.0 == 204 { 404 } else { 200 };
        if still != want_after {
            matrix.fail(format!(
                "DELETE {path} as {caller:?} answered {} but the agent now reads {still}",
                answer.0
            ));
        }
    }

    // No refused PUT took effect: alice is as the admin set her, and still available.
    let (status, alice) = world.app.get("/v1/agents/alice", &world.app.admin).await;
    assert_eq!(status, 200);
    assert_eq!(alice["name"], "Agent alice", "{alice}");
    assert_eq!(alice["capacity"], 1000, "{alice}");
    assert_eq!(alice["presence"]["status"], "available", "{alice}");
    matrix.finish();
    world.app.stop().await;
}

#[tokio::test]
async fn key_routes_are_for_the_admin_alone_and_a_refused_revoke_leaves_the_key_working() {
    let world = world().await;
    let (status, victim) = world
        .app
        .post(
            "/v1/keys",
            &world.app.admin,
            Some(json!({"role": "supervisor", "name": "victim"})),
        )
        .await;
    assert_eq!(status, 201, "{victim}");
    let victim_id = victim["id"].as_str().unwrap().to_owned();
    let victim_token = victim["token"].as_str().unwrap().to_owned();

    let mut matrix = Matrix::default();
    for caller in EVERYONE {
        let body = json!({"role": "ivr", "name": format!("made by {caller:?}")});
        let answer = world
            .call(caller, Method::POST, "/v1/keys", Some(body))
            .await;
        matrix.check(
            "POST /v1/keys",
            caller,
            expected(caller, &[Admin], 201),
            &answer,
        );

        let answer = world.call_garbage(caller, Method::POST, "/v1/keys").await;
        matrix.check(
            "POST /v1/keys (invalid JSON)",
            caller,
            expected(caller, &[Admin], 400),
            &answer,
        );

        let answer = world.call(caller, Method::GET, "/v1/keys", None).await;
        matrix.check(
            "GET /v1/keys",
            caller,
            expected(caller, &[Admin], 200),
            &answer,
        );

        let answer = world
            .call(caller, Method::DELETE, "/v1/keys/key_nonexistent", None)
            .await;
        let want = expected(caller, &[Admin], 404);
        matrix.check("DELETE /v1/keys/key_nonexistent", caller, want, &answer);

        if caller != Admin {
            let path = format!("/v1/keys/{victim_id}");
            let answer = world.call(caller, Method::DELETE, &path, None).await;
            matrix.check(
                "DELETE /v1/keys/{victim}",
                caller,
                expected(caller, &[], 204),
                &answer,
            );
        }
    }
    // Every refused revoke left the victim key working.
    let (status, body) = world.app.get("/v1/agents", &victim_token).await;
    assert_eq!(status, 200, "the victim key still works: {body}");
    // The keys the refused callers tried to make do not exist.
    let (status, keys) = world.app.get("/v1/keys", &world.app.admin).await;
    assert_eq!(status, 200);
    let made: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["name"].as_str())
        .filter(|name| name.starts_with("made by"))
        .collect();
    assert_eq!(made, ["made by Admin"], "{keys}");
    let answer = world
        .app
        .send(
            Method::DELETE,
            &format!("/v1/keys/{victim_id}"),
            Some(&world.app.admin),
            None,
        )
        .await;
    matrix.check("DELETE /v1/keys/{victim}", Admin, 204, &answer);
    // Revoked at once: the victim's token is now a bad token.
    let answer = world.app.get("/v1/agents", &victim_token).await;
    matrix.check("GET /v1/agents with a revoked key", BadToken, 401, &answer);
    matrix.finish();
    world.app.stop().await;
}

#[tokio::test]
async fn the_agent_stream_upgrades_for_alice_admin_and_supervisor_and_is_refused_before_the_upgrade_for_everyone_else(
) {
    let world = world().await;
    let mut matrix = Matrix::default();
    for caller in EVERYONE {
        let want = expected(caller, &[Alice, Admin, Supervisor], 101);
        let (status, body) = world.handshake(caller).await;
        if status != want {
            matrix.fail(format!(
                "WS /v1/agents/alice/stream as {caller:?}: expected {want}, got {status}: {body}"
            ));
        } else if status != 101 && !body.is_null() {
            if let Some(problem) = error_shape_problem(&body) {
                matrix.fail(format!(
                    "WS refusal as {caller:?} without the error shape: {problem}"
                ));
            }
        }
        // The same route without an upgrade: refused alike, and the allowed are told it is a
        // WebSocket; every one of these answers carries the error shape.
        let answer = world
            .call(caller, Method::GET, "/v1/agents/alice/stream", None)
            .await;
        let want = expected(caller, &[Alice, Admin, Supervisor], 400);
        matrix.check(
            "GET /v1/agents/alice/stream (no upgrade)",
            caller,
            want,
            &answer,
        );
    }
    matrix.finish();
    world.app.stop().await;
}

#[tokio::test]
async fn creating_listing_and_reading_interactions_is_allowed_exactly_to_the_roles_the_contract_names(
) {
    let world = world().await;
    let x = world.offered().await;
    let mut matrix = Matrix::default();
    for caller in EVERYONE {
        let body = json!({"caller": format!("+1555 {caller:?}"), "target": {"agent": "alice"}});
        let answer = world
            .call(caller, Method::POST, "/v1/interactions", Some(body))
            .await;
        matrix.check(
            "POST /v1/interactions",
            caller,
            expected(caller, &[Admin, Ivr], 201),
            &answer,
        );

        let answer = world
            .call_garbage(caller, Method::POST, "/v1/interactions")
            .await;
        let want = expected(caller, &[Admin, Ivr], 400);
        matrix.check(
            "POST /v1/interactions (invalid JSON)",
            caller,
            want,
            &answer,
        );

        // An agent lists its own interactions only; naming another agent is refused.
        let answer = world
            .call(caller, Method::GET, "/v1/interactions", None)
            .await;
        let want = expected(caller, &[Admin, Supervisor, Alice, Bob], 200);
        matrix.check("GET /v1/interactions", caller, want, &answer);
        let listed_x = answer.1["interactions"]
            .as_array()
            .is_some_and(|list| list.iter().any(|i| i["id"] == x.as_str()));
        if caller == Bob && listed_x {
            matrix.fail(format!("bob's list shows alice's X: {}", answer.1));
        }
        if caller == Alice && !listed_x {
            matrix.fail(format!("alice's list lacks her X: {}", answer.1));
        }
        let answer = world
            .call(caller, Method::GET, "/v1/interactions?agent=alice", None)
            .await;
        let want = expected(caller, &[Admin, Supervisor, Alice], 200);
        matrix.check("GET /v1/interactions?agent=alice", caller, want, &answer);
    }
    for caller in EVERYONE_AND_SECOND_IVR {
        let answer = world
            .call(caller, Method::GET, &format!("/v1/interactions/{x}"), None)
            .await;
        let want = expected(caller, &[Admin, Supervisor, Ivr, Alice], 200);
        matrix.check("GET /v1/interactions/X", caller, want, &answer);
        if answer.0 == 200 && answer.1["id"] != x.as_str() {
            matrix.fail(format!(
                "GET X as {caller:?} answered another interaction: {}",
                answer.1
            ));
        }
    }
    // Only the admin's and the IVR's creates happened: X and those two.
    let (_, list) = world.app.get("/v1/interactions", &world.app.admin).await;
    let mut callers: Vec<&str> = list["interactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["caller"].as_str())
        .collect();
    callers.sort_unstable();
    assert_eq!(
        callers,
        ["+1555 Admin", "+1555 Ivr", "+15551230000"],
        "{list}"
    );
    matrix.finish();
    world.app.stop().await;
}

#[tokio::test]
async fn accept_and_reject_are_for_the_offered_agent_or_an_admin_each_cell_on_its_own_fresh_offer()
{
    let world = world().await;
    let mut matrix = Matrix::default();
    for (action, after) in [("accept", "accepted"), ("reject", "unanswered")] {
        for caller in EVERYONE {
            let x = world.offered().await;
            let before = fingerprint(&world.read(&x).await);
            let route = format!("POST /v1/interactions/X/{action}");
            let answer = world
                .call(
                    caller,
                    Method::POST,
                    &format!("/v1/interactions/{x}/{action}"),
                    None,
                )
                .await;
            let want = expected(caller, &[Alice, Admin], 200);
            matrix.check(&route, caller, want, &answer);
            let now = world.read(&x).await;
            if answer.0 == 200 {
                if now["state"] != after {
                    matrix.fail(format!(
                        "{route} as {caller:?}: 200 but X is {}",
                        now["state"]
                    ));
                }
            } else if fingerprint(&now) != before {
                matrix.fail(format!(
                    "{route} as {caller:?} was refused ({}) but X changed: {before} -> {}",
                    answer.0,
                    fingerprint(&now)
                ));
            }
        }
    }
    matrix.finish();
    world.app.stop().await;
}

#[tokio::test]
async fn complete_and_transfer_are_for_the_assigned_agent_or_an_admin_each_cell_on_its_own_accepted_interaction(
) {
    let world = world().await;
    let mut matrix = Matrix::default();
    let actions = [
        ("complete", json!({"disposition": "resolved"})),
        (
            "transfer",
            json!({"target": {"agent": "bob"}, "note": "over to you"}),
        ),
    ];
    for (action, body) in actions {
        for caller in EVERYONE {
            let x = world.accepted().await;
            let before = fingerprint(&world.read(&x).await);
            let route = format!("POST /v1/interactions/X/{action}");
            let answer = world
                .call(
                    caller,
                    Method::POST,
                    &format!("/v1/interactions/{x}/{action}"),
                    Some(body.clone()),
                )
                .await;
            let want = expected(caller, &[Alice, Admin], 200);
            matrix.check(&route, caller, want, &answer);
            let now = world.read(&x).await;
            if answer.0 == 200 {
                let done = match action {
                    "complete" => now["state"] == "completed",
                    _ => now["state"] == "offered" && now["agent"]["id"] == "bob",
                };
                if !done {
                    matrix.fail(format!("{route} as {caller:?}: 200 but X is {now}"));
                }
            } else if fingerprint(&now) != before {
                matrix.fail(format!(
                    "{route} as {caller:?} was refused ({}) but X changed: {before} -> {}",
                    answer.0,
                    fingerprint(&now)
                ));
            }
        }
    }
    matrix.finish();
    world.app.stop().await;
}

#[tokio::test]
async fn hangup_is_for_an_admin_or_the_ivr_key_that_created_the_interaction_and_no_one_else() {
    let world = world().await;
    let mut matrix = Matrix::default();
    for caller in EVERYONE_AND_SECOND_IVR {
        let x = world.offered().await;
        let before = fingerprint(&world.read(&x).await);
        let answer = world
            .call(
                caller,
                Method::POST,
                &format!("/v1/interactions/{x}/hangup"),
                None,
            )
            .await;
        let want = expected(caller, &[Admin, Ivr], 200);
        matrix.check("POST /v1/interactions/X/hangup", caller, want, &answer);
        let now = world.read(&x).await;
        if answer.0 == 200 {
            if now["state"] != "abandoned" {
                matrix.fail(format!(
                    "hangup as {caller:?}: 200 but X is {}",
                    now["state"]
                ));
            }
        } else if fingerprint(&now) != before {
            matrix.fail(format!(
                "hangup as {caller:?} was refused ({}) but X changed: {before} -> {}",
                answer.0,
                fingerprint(&now)
            ));
        }
    }
    matrix.finish();
    world.app.stop().await;
}

#[tokio::test]
async fn the_event_feed_is_open_to_admins_and_supervisors_and_refused_to_everyone_else() {
    let world = world().await;
    let mut matrix = Matrix::default();
    for caller in EVERYONE {
        let mut request = world.app.http.get(world.app.url("/v1/events"));
        if let Some(token) = world.token(caller) {
            request = request.bearer_auth(token);
        }
        let response = tokio::time::timeout(PATIENCE, request.send())
            .await
            .expect("the feed answers in time")
            .expect("request sent");
        let status = response.status().as_u16();
        let want = expected(caller, &[Admin, Supervisor], 200);
        if status == 200 {
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            if !content_type.starts_with("text/event-stream") {
                matrix.fail(format!(
                    "GET /v1/events as {caller:?}: 200 as {content_type:?}"
                ));
            }
            // Server-Sent Events never end: drop the response unread.
            drop(response);
            matrix.check("GET /v1/events", caller, want, &(status, Value::Null));
        } else {
            let text = response.text().await.unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            matrix.check("GET /v1/events", caller, want, &(status, body));
        }
    }
    matrix.finish();
    world.app.stop().await;
}

#[tokio::test]
async fn a_malformed_authorization_header_is_a_401_with_the_error_shape() {
    let world = world().await;
    let admin = world.app.admin.clone();
    let headers = [
        format!("Basic {admin}"),
        format!("Token {admin}"),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        admin.clone(),
        format!("Bearer {admin}x"),
    ];
    let mut matrix = Matrix::default();
    for header in headers {
        let response = world
            .app
            .http
            .get(world.app.url("/v1/agents"))
            .header(reqwest::header::AUTHORIZATION, &header)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        matrix.check(
            &format!("GET /v1/agents with Authorization {header:?}"),
            NoToken,
            401,
            &(status, body),
        );
    }
    matrix.finish();
    world.app.stop().await;
}

#[tokio::test]
async fn bob_cannot_watch_read_or_act_on_alices_interaction_and_it_is_unchanged_after_his_attempts()
{
    let world = world().await;
    let app = &world.app;
    let x = world.offered().await;
    let offered = world.read(&x).await;
    assert_eq!(offered["state"], "offered");

    // Bob cannot open alice's stream, read alice, read X, or set alice's presence.
    let (status, body) = world.handshake(Bob).await;
    assert_eq!(status, 403, "bob opens alice's stream: {body}");
    let (status, body) = app.get("/v1/agents/alice", &world.bob).await;
    assert_eq!(status, 403, "bob reads alice: {body}");
    assert_eq!(error_shape_problem(&body), None);
    let (status, body) = app.get(&format!("/v1/interactions/{x}"), &world.bob).await;
    assert_eq!(status, 403, "bob reads X: {body}");
    assert_eq!(error_shape_problem(&body), None);
    let (status, body) = app
        .put(
            "/v1/agents/alice/presence",
            &world.bob,
            json!({"status": "away"}),
        )
        .await;
    assert_eq!(status, 403, "bob sets alice's presence: {body}");

    // Bob cannot take or refuse alice's offer, nor complete, transfer or hang it up.
    let attempts = [
        ("accept", None),
        ("reject", None),
        ("complete", Some(json!({"disposition": "stolen"}))),
        ("transfer", Some(json!({"target": {"agent": "bob"}}))),
        ("hangup", None),
    ];
    for (action, body) in attempts.clone() {
        let (status, answer) = app
            .post(&format!("/v1/interactions/{x}/{action}"), &world.bob, body)
            .await;
        assert_eq!(status, 403, "bob {action}s offered X: {answer}");
        assert_eq!(error_shape_problem(&answer), None);
    }
    let after = world.read(&x).await;
    assert_eq!(after["state"], "offered", "{after}");
    assert_eq!(after["agent"]["id"], "alice", "{after}");
    assert_eq!(
        after["history"], offered["history"],
        "bob's attempts left no trace"
    );
    let (_, alice) = app.get("/v1/agents/alice", &app.admin).await;
    assert_eq!(alice["presence"]["status"], "available", "{alice}");

    // Once alice holds it, bob still cannot complete or transfer it.
    let (status, body) = app
        .post(&format!("/v1/interactions/{x}/accept"), &world.alice, None)
        .await;
    assert_eq!(status, 200, "{body}");
    let held = world.read(&x).await;
    for (action, body) in attempts {
        let (status, answer) = app
            .post(&format!("/v1/interactions/{x}/{action}"), &world.bob, body)
            .await;
        assert_eq!(status, 403, "bob {action}s accepted X: {answer}");
    }
    let after = world.read(&x).await;
    assert_eq!(after["state"], "accepted", "{after}");
    assert_eq!(after["agent"]["id"], "alice", "{after}");
    assert_eq!(
        after["history"], held["history"],
        "bob's attempts left no trace"
    );
    assert!(
        after.get("disposition").is_none_or(Value::is_null),
        "{after}"
    );
    world.app.stop().await;
}
