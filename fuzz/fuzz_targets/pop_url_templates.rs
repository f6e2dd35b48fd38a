//! `pop_url` templates (`crates/handoff-api/src/pop_url.rs`): `check` and `render` with an
//! arbitrary template and arbitrary values.
//!
//! Input: the template, then NUL-separated the caller, the context (JSON text, as the
//! interaction keeps it; anything else reads as no context), the dialed number and the call id.
//! Beside "never panics", it checks what the module promises:
//! - a rendered URL is an absolute http(s) URL of at most `MAX_URL_BYTES`, without whitespace or
//!   control characters;
//! - a caller's or context's value reaches the URL percent-encoded only: with a fixed template,
//!   the query holds nothing but unreserved characters, `%XX`, and the template's own `=`/`&`.

#![no_main]

use handoff_api::pop_url::{check, encode_component, render, MAX_URL_BYTES};
use handoff_core::{AgentId, InteractionId, InteractionSpec, QueueName, Target, Timestamp};
use libfuzzer_sys::fuzz_target;

const FIXED: &str = "https://crm.example.com/search?phone={{ caller }}&acct={{ context.account|default('') }}&d={{ dialed|default('') }}";

fn spec(
    caller: Option<&str>,
    context: &str,
    dialed: Option<&str>,
    call_id: Option<&str>,
) -> InteractionSpec {
    InteractionSpec {
        id: InteractionId::parse("ix_fuzz").expect("a valid id"),
        caller: caller.map(str::to_owned),
        dialed: dialed.map(str::to_owned),
        channel: "voice".to_owned(),
        call_id: call_id.map(str::to_owned),
        context: context.to_owned(),
        target: Target::Queue(QueueName::parse("billing").expect("a valid name")),
        fallback: None,
        priority: 0,
        max_wait_s: None,
        enrichment: Vec::new(),
        created_by: None,
        created_at: Timestamp::from_millis(0),
    }
}

fn assert_url(url: &str) {
    assert!(url.len() <= MAX_URL_BYTES, "too long: {}", url.len());
    let lower = url.to_ascii_lowercase();
    assert!(
        lower.starts_with("https://") || lower.starts_with("http://"),
        "not http(s): {url:?}"
    );
    assert!(
        !url.chars().any(|c| c.is_whitespace() || c.is_control()),
        "whitespace or control characters: {url:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let template = parts.next().unwrap_or_default();
    let caller = parts.next();
    let context = parts.next().unwrap_or("{}");
    let dialed = parts.next();
    let call_id = parts.next();
    let spec = spec(caller, context, dialed, call_id);
    let agent = AgentId::parse("alice").expect("a valid id");
    let queue = Target::Queue(QueueName::parse("billing").expect("a valid name"));
    let direct = Target::Agent(agent.clone());

    // What a PUT of the template does, then what each offer does (a template read back from
    // the log is rendered whether or not it passes `check` today).
    let _ = check(template);
    for target in [&queue, &direct] {
        if let Ok(url) = render(template, &spec, context, &agent, target) {
            assert_url(&url);
        }
    }

    // The caller's values through a fixed template: encoded, whatever they hold.
    let url = render(FIXED, &spec, context, &agent, &queue);
    if let Ok(url) = url {
        assert_url(&url);
        let query = url.split_once('?').expect("the template's query").1;
        assert!(
            query
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%=&".contains(&b)),
            "a value reshaped the URL: {url:?}"
        );
        let mut phone = String::from("phone=");
        encode_component(caller.unwrap_or_default(), &mut phone);
        assert!(query.starts_with(&format!("{phone}&")), "{url:?}");
    } else if caller.is_some() {
        // Only the length can fail it: a caller or context bigger than a URL may be.
        let error = url.unwrap_err();
        assert!(
            error.contains("longer than"),
            "a fixed template failed: {error}"
        );
    }
});
