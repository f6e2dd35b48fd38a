//! `pop_url`: the CRM page a screen pop opens, rendered from a minijinja template (a queue's, else
//! the server's default) once, when the `interaction.offered` event is encoded.
//!
//! Everything a template prints comes from the IVR or the caller, so every printed value is
//! percent-encoded as a URL component by the environment's formatter. That formatter is the only
//! way a value reaches the output and it ignores minijinja's "safe" marking, so no filter, block or
//! `autoescape` setting can let a raw `&`, `#` or `/` from the caller reshape the URL. Renders are
//! bounded by fuel and by the size of what they produce: a hostile template costs the engine a
//! failed pop URL, never a stall.

use std::fmt::Write as _;
use std::sync::OnceLock;

use handoff_core::{AgentId, InteractionSpec, State, Target};
use minijinja::value::Value as Jinja;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde_json::Value;

/// The longest template accepted: a URL template has no use for more.
pub const MAX_TEMPLATE_BYTES: usize = 4096;
/// The longest rendered URL kept; browsers and CRMs choke well before larger ones.
pub const MAX_URL_BYTES: usize = 8192;
/// The work one render may do: a URL template needs a few dozen; a loop over a large context or
/// a huge repetition runs out long before it could hold up the engine (about a millisecond).
pub const FUEL: u64 = 20_000;

/// The variables a template sees, for error messages.
pub const VARIABLES: [&str; 9] = [
    "id", "caller", "dialed", "channel", "call_id", "priority", "queue", "agent", "context",
];

fn environment() -> &'static Environment<'static> {
    static ENVIRONMENT: OnceLock<Environment<'static>> = OnceLock::new();
    ENVIRONMENT.get_or_init(|| {
        let mut env = Environment::new();
        // A misspelt variable must say so, not silently render an empty search.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        // Only informative (the formatter encodes regardless): templates report URL escaping.
        env.set_auto_escape_callback(|_| AutoEscape::Custom("url".into()));
        env.set_formatter(|out, _state, value| {
            let mut encoded = String::new();
            if !(value.is_none() || value.is_undefined()) {
                match value.as_str() {
                    Some(text) => encode_component(text, &mut encoded),
                    None => encode_component(&value.to_string(), &mut encoded),
                }
            }
            out.write_str(&encoded).map_err(minijinja::Error::from)
        });
        // These would either pretend to switch the encoding off or encode twice; a template
        // using them fails visibly (`pop_url_error`) instead of producing a subtly wrong URL.
        for filter in ["safe", "escape", "e", "urlencode"] {
            env.remove_filter(filter);
        }
        env
    })
}

/// Appends `text` percent-encoded as a URL component: every byte but the unreserved
/// `A-Za-z0-9-._~` becomes `%XX` (UTF-8 bytes, upper-case hex).
pub fn encode_component(text: &str, out: &mut String) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

/// Whether `template` may be stored: not empty, not too long, and it parses. Rendering can
/// still fail later (an undefined variable, a result that is not a URL); that is reported in
/// each pop instead.
pub fn check(template: &str) -> Result<(), String> {
    if template.trim().is_empty() {
        return Err("must not be empty (leave it out, or null, for none)".to_owned());
    }
    if template.len() > MAX_TEMPLATE_BYTES {
        return Err(format!("must be at most {MAX_TEMPLATE_BYTES} bytes"));
    }
    environment()
        .template_from_named_str("pop_url", template)
        .map(|_| ())
        .map_err(|error| describe(&error))
}

/// The template for an offer to `target`: the queue's own, else the server's default. Offers
/// to an agent named directly have no queue and use the default.
pub fn template_for<'a>(
    state: &'a State,
    target: &Target,
    default: Option<&'a str>,
) -> Option<&'a str> {
    match target {
        Target::Queue(name) => state
            .queue(name)
            .and_then(|queue| queue.pop_url.as_deref())
            .or(default),
        Target::Agent(_) => default,
    }
}

/// Renders `template` for an offer of `spec`, whose context is now `context`, to `agent` from
/// `target`; the URL, or why not.
pub fn render(
    template: &str,
    spec: &InteractionSpec,
    context: &str,
    agent: &AgentId,
    target: &Target,
) -> Result<String, String> {
    let queue = match target {
        Target::Queue(name) => Jinja::from(name.as_str()),
        Target::Agent(_) => Jinja::from(()),
    };
    // Reading a large context costs more than the rest of the render: only when it is used.
    let context: Value = if template.contains("context") {
        serde_json::from_str(context).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let variables = minijinja::context! {
        id => spec.id.as_str(),
        caller => spec.caller.as_deref(),
        dialed => spec.dialed.as_deref(),
        channel => spec.channel.as_str(),
        call_id => spec.call_id.as_deref(),
        priority => spec.priority,
        queue => queue,
        agent => agent.as_str(),
        context => to_jinja(&context),
    };
    let compiled = environment()
        .template_from_named_str("pop_url", template)
        .map_err(|error| describe(&error))?;
    let rendered = compiled.render(variables).map_err(|error| {
        if error.kind() != ErrorKind::UndefinedError {
            return describe(&error);
        }
        // minijinja does not say which name was undefined: find the ones that do not resolve.
        let mut missing: Vec<String> = compiled
            .undeclared_variables(true)
            .into_iter()
            .filter(|path| !resolves(path, &context))
            .collect();
        missing.sort();
        if missing.is_empty() {
            describe(&error)
        } else {
            format!(
                "undefined: {} (variables: {}; `|default(\"\")` makes one optional)",
                missing.join(", "),
                VARIABLES.join(", ")
            )
        }
    })?;
    check_url(&rendered)?;
    Ok(rendered)
}

/// Whether a dotted name a template uses exists: a variable, a path into the context, or one
/// of the environment's functions (`range`, ...).
fn resolves(path: &str, context: &Value) -> bool {
    let mut parts = path.split('.');
    let first = parts.next().unwrap_or_default();
    if first == "context" {
        let mut at = context;
        for part in parts {
            match at.get(part) {
                Some(next) => at = next,
                None => return false,
            }
        }
        return true;
    }
    VARIABLES.contains(&first) || environment().globals().any(|(name, _)| name == first)
}

/// The result must be something a desktop can open without surprise: an absolute http(s) URL
/// with a host, no whitespace or control characters, of a sensible length.
fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_BYTES {
        return Err(format!(
            "the rendered URL is longer than {MAX_URL_BYTES} bytes"
        ));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err("the rendered URL does not start with http:// or https://".to_owned());
    };
    if rest.is_empty() || rest.starts_with(['/', '?', '#']) {
        return Err("the rendered URL has no host".to_owned());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the rendered URL contains whitespace or control characters".to_owned());
    }
    Ok(())
}

/// A render error as one sentence for `pop_url_error` and for 422s.
fn describe(error: &minijinja::Error) -> String {
    let hint = match error.kind() {
        ErrorKind::OutOfFuel => " (the template does too much work for a URL)",
        _ => "",
    };
    format!("{error}{hint}")
}

/// JSON as template values (a context, a CRM's fields). Object order is not kept.
pub fn to_jinja(value: &Value) -> Jinja {
    match value {
        Value::Null => Jinja::from(()),
        Value::Bool(flag) => Jinja::from(*flag),
        Value::Number(number) => {
            if let Some(integer) = number.as_i64() {
                Jinja::from(integer)
            } else if let Some(integer) = number.as_u64() {
                Jinja::from(integer)
            } else {
                Jinja::from(number.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(text) => Jinja::from(text.as_str()),
        Value::Array(items) => Jinja::from(items.iter().map(to_jinja).collect::<Vec<_>>()),
        Value::Object(map) => Jinja::from(
            map.iter()
                .map(|(key, item)| (key.clone(), to_jinja(item)))
                .collect::<std::collections::BTreeMap<String, Jinja>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_core::{InteractionId, QueueName, Timestamp};

    fn spec(caller: Option<&str>, context: &str) -> InteractionSpec {
        InteractionSpec {
            id: InteractionId::parse("ix_1").unwrap(),
            caller: caller.map(str::to_owned),
            dialed: Some("+18005550100".to_owned()),
            channel: "voice".to_owned(),
            call_id: None,
            context: context.to_owned(),
            target: Target::Queue(QueueName::parse("billing").unwrap()),
            fallback: None,
            priority: -3,
            max_wait_s: None,
            enrichment: Vec::new(),
            created_by: None,
            created_at: Timestamp::from_millis(0),
        }
    }

    fn run(template: &str, spec: &InteractionSpec) -> Result<String, String> {
        render(
            template,
            spec,
            &spec.context,
            &AgentId::parse("alice").unwrap(),
            &Target::Queue(QueueName::parse("billing").unwrap()),
        )
    }

    #[test]
    fn every_value_is_encoded_as_a_component_and_literal_text_is_kept() {
        let spec = spec(Some("+1 555/12#3&x=ü"), r#"{"account": "A&B", "n": 7}"#);
        let url = run(
            "https://crm.example.com/s?phone={{ caller }}&acct={{ context.account }}&n={{ context.n }}&q={{ queue }}&a={{ agent }}&p={{ priority }}&c={{ call_id }}",
            &spec,
        )
        .unwrap();
        assert_eq!(
            url,
            "https://crm.example.com/s?phone=%2B1%20555%2F12%233%26x%3D%C3%BC&acct=A%26B&n=7&q=billing&a=alice&p=-3&c="
        );
    }

    #[test]
    fn no_filter_or_block_switches_the_encoding_off() {
        let spec = spec(Some("a&b"), "{}");
        for template in [
            "https://x.example/?q={% autoescape false %}{{ caller }}{% endautoescape %}",
            "https://x.example/?q={{ caller|lower }}",
            "https://x.example/?q={% set v %}{{ caller }}{% endset %}{{ v }}",
        ] {
            let url = run(template, &spec).unwrap();
            assert!(!url.contains("a&b"), "{template}: {url}");
        }
        for template in [
            "https://x.example/?q={{ caller|safe }}",
            "https://x.example/?q={{ caller|urlencode }}",
        ] {
            let error = run(template, &spec).unwrap_err();
            assert!(error.contains("unknown filter"), "{template}: {error}");
        }
    }

    #[test]
    fn failures_say_why() {
        let spec = spec(None, "{}");
        let undefined = run("https://x.example/?a={{ context.account }}", &spec).unwrap_err();
        assert!(
            undefined.starts_with("undefined: context.account ("),
            "{undefined}"
        );
        let undefined = run(
            "https://x.example/?a={{ nope }}&r={{ range(2)|join }}",
            &spec,
        )
        .unwrap_err();
        assert!(undefined.starts_with("undefined: nope ("), "{undefined}");
        assert_eq!(
            run(
                "https://x.example/?a={{ context.account|default('none') }}",
                &spec
            )
            .unwrap(),
            "https://x.example/?a=none"
        );
        let scheme = run("javascript:alert({{ id }})", &spec).unwrap_err();
        assert!(scheme.contains("http"), "{scheme}");
        assert!(run("{{ 'https://evil.example' }}", &spec).is_err());
        let fuel = run(
            "https://x.example/?{% for i in range(100000) %}{{ i }}{% endfor %}",
            &spec,
        )
        .unwrap_err();
        assert!(fuel.contains("fuel"), "{fuel}");
        let size = run("https://x.example/?{{ 'x' * 100000000 }}", &spec).unwrap_err();
        assert!(!size.is_empty());
    }

    #[test]
    fn check_refuses_what_does_not_parse() {
        assert!(check("https://x.example/?q={{ caller }}").is_ok());
        assert!(check("https://x.example/?q={{ caller").is_err());
        assert!(check("https://x.example/{% include 'other' %}").is_err());
        assert!(check("").is_err());
        assert!(check(&"x".repeat(MAX_TEMPLATE_BYTES + 1)).is_err());
    }
}
