//! Request templates of CRM connectors: a URL, headers and a JSON body rendered with minijinja
//! over the interaction, each with a formatter that makes every printed value safe where it
//! lands.
//!
//! - In a URL every value is percent-encoded as a component (`&`, `/`, `#`, spaces and
//!   non-ASCII from a caller cannot reshape the URL); the template's own text is kept.
//! - In a JSON body every value is written as JSON (a string with its quotes), so a value can
//!   never close a string or add a key: `{"phone": {{ caller }}}`. To build a string, join
//!   inside the expression: `{{ "Call from " ~ caller }}`.
//! - In a header every value is written as it is, and a value with a line break is refused.
//!
//! Secrets are never stored: `{{ secrets.HUBSPOT_TOKEN }}` reads the environment variable
//! `HANDOFF_SECRET_HUBSPOT_TOKEN` when the request is made. Undefined names are lenient
//! (`enrichment.crm.id` with no CRM answer is empty, or `null` in JSON), so templates can
//! test for what a call may lack with `{% if ... %}` or a connector's `when`.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use minijinja::value::{Object, Value as Jinja};
use minijinja::{Environment, ErrorKind, UndefinedBehavior};

/// The work one render may do: plenty for a request, never a stall.
pub const FUEL: u64 = 50_000;
/// The longest template accepted.
pub const MAX_TEMPLATE_BYTES: usize = 16_384;
/// The longest rendered body.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Environment variables that secrets are read from: `HANDOFF_SECRET_<NAME>`.
pub const SECRET_PREFIX: &str = "HANDOFF_SECRET_";

/// Where a template's output lands, which decides how values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landing {
    Url,
    Header,
    JsonBody,
}

fn base(landing: Landing) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.set_fuel(Some(FUEL));
    for filter in ["safe", "escape", "e", "urlencode"] {
        env.remove_filter(filter);
    }
    env.add_filter("b64encode", |text: String| {
        base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
    });
    env.add_filter("digits", |text: String| {
        text.chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
    });
    env.add_filter("soql", |text: String| soql_literal(&text));
    match landing {
        Landing::Url => env.set_formatter(|out, _state, value| {
            let mut encoded = String::new();
            if !(value.is_none() || value.is_undefined()) {
                match value.as_str() {
                    Some(text) => crate::pop_url::encode_component(text, &mut encoded),
                    None => crate::pop_url::encode_component(&value.to_string(), &mut encoded),
                }
            }
            out.write_str(&encoded).map_err(minijinja::Error::from)
        }),
        Landing::Header => env.set_formatter(|out, _state, value| {
            if value.is_none() || value.is_undefined() {
                return Ok(());
            }
            let text = value.to_string();
            if text.contains(['\r', '\n']) {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "a header value may not hold a line break",
                ));
            }
            out.write_str(&text).map_err(minijinja::Error::from)
        }),
        Landing::JsonBody => env.set_formatter(|out, _state, value| {
            let text = if value.is_undefined() {
                "null".to_owned()
            } else {
                serde_json::to_string(value).map_err(|error| {
                    minijinja::Error::new(ErrorKind::InvalidOperation, error.to_string())
                })?
            };
            out.write_str(&text).map_err(minijinja::Error::from)
        }),
    }
    env
}

fn environment(landing: Landing) -> &'static Environment<'static> {
    static URL: OnceLock<Environment<'static>> = OnceLock::new();
    static HEADER: OnceLock<Environment<'static>> = OnceLock::new();
    static JSON: OnceLock<Environment<'static>> = OnceLock::new();
    let cell = match landing {
        Landing::Url => &URL,
        Landing::Header => &HEADER,
        Landing::JsonBody => &JSON,
    };
    cell.get_or_init(|| base(landing))
}

/// A SOQL string literal's inside: backslash and quote escaped, as Salesforce documents.
fn soql_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out
}

/// Whether `template` may be stored: not too long, and it parses.
pub fn check(template: &str, landing: Landing) -> Result<(), String> {
    if template.len() > MAX_TEMPLATE_BYTES {
        return Err(format!("must be at most {MAX_TEMPLATE_BYTES} bytes"));
    }
    environment(landing)
        .template_from_str(template)
        .map(|_| ())
        .map_err(|error| error.to_string())
}

/// Whether `expression` (a connector's `when`) parses.
pub fn check_expression(expression: &str) -> Result<(), String> {
    if expression.len() > MAX_TEMPLATE_BYTES {
        return Err(format!("must be at most {MAX_TEMPLATE_BYTES} bytes"));
    }
    environment(Landing::Header)
        .compile_expression(expression)
        .map(|_| ())
        .map_err(|error| error.to_string())
}

/// Renders `template` over `variables` for where it lands; the text, or why not.
pub fn render(template: &str, landing: Landing, variables: &Jinja) -> Result<String, String> {
    let compiled = environment(landing)
        .template_from_str(template)
        .map_err(|error| error.to_string())?;
    let rendered = compiled.render(variables).map_err(|error| {
        let hint = if error.kind() == ErrorKind::OutOfFuel {
            " (the template does too much work)"
        } else {
            ""
        };
        format!("{error}{hint}")
    })?;
    if rendered.len() > MAX_BODY_BYTES {
        return Err(format!(
            "the rendered text is longer than {MAX_BODY_BYTES} bytes"
        ));
    }
    Ok(rendered)
}

/// Evaluates a `when` expression: true when it is truthy.
pub fn holds(expression: &str, variables: &Jinja) -> Result<bool, String> {
    let compiled = environment(Landing::Header)
        .compile_expression(expression)
        .map_err(|error| error.to_string())?;
    compiled
        .eval(variables)
        .map(|value| value.is_true())
        .map_err(|error| error.to_string())
}

/// `secrets.NAME`: the environment variable `HANDOFF_SECRET_NAME`, read when rendered.
#[derive(Debug)]
pub struct Secrets;

impl Object for Secrets {
    fn get_value(self: &Arc<Self>, key: &Jinja) -> Option<Jinja> {
        let name = key.as_str()?;
        let valid =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return None;
        }
        std::env::var(format!("{SECRET_PREFIX}{name}"))
            .ok()
            .map(Jinja::from)
    }
}

/// The template variables of an interaction, from JSON-like parts.
pub fn variables(parts: BTreeMap<&'static str, Jinja>) -> Jinja {
    let mut map: BTreeMap<String, Jinja> = parts
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    map.insert("secrets".to_owned(), Jinja::from_object(Secrets));
    Jinja::from(map)
}

/// JSON as template values.
pub fn from_json(value: &serde_json::Value) -> Jinja {
    crate::pop_url::to_jinja(value)
}

/// The secrets a template names (`secrets.NAME`) whose variable is not set: a connector made
/// with them would fail every request, so it is refused with their names.
pub fn missing_secrets(template: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find("secrets.") {
        rest = &rest[at + "secrets.".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty()
            && std::env::var_os(format!("{SECRET_PREFIX}{name}")).is_none()
            && !missing.contains(&name)
        {
            missing.push(name);
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Jinja {
        variables(BTreeMap::from([
            ("caller", Jinja::from("+1 555/12#3&x=ü \"q\"")),
            (
                "context",
                from_json(&serde_json::json!({"account": "A&B", "n": 7, "tags": ["x"]})),
            ),
        ]))
    }

    #[test]
    fn each_landing_writes_values_safely() {
        assert_eq!(
            render(
                "https://crm.example.com/s?phone={{ caller }}&a={{ context.account }}&n={{ context.n }}&m={{ context.missing.deeper }}",
                Landing::Url,
                &vars()
            )
            .unwrap(),
            "https://crm.example.com/s?phone=%2B1%20555%2F12%233%26x%3D%C3%BC%20%22q%22&a=A%26B&n=7&m="
        );
        let body = render(
            r#"{"phone": {{ caller }}, "tags": {{ context.tags }}, "n": {{ context.n }}, "missing": {{ context.nope }}, "label": {{ "Call from " ~ caller }}}"#,
            Landing::JsonBody,
            &vars(),
        )
        .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&body).expect(&body);
        assert_eq!(parsed["phone"], "+1 555/12#3&x=ü \"q\"");
        assert_eq!(parsed["tags"], serde_json::json!(["x"]));
        assert_eq!(parsed["n"], 7);
        assert_eq!(parsed["missing"], serde_json::Value::Null);
        assert_eq!(parsed["label"], "Call from +1 555/12#3&x=ü \"q\"");
        assert_eq!(
            render(
                "Basic {{ ('me@x.com/token:' ~ 'abc') | b64encode }}",
                Landing::Header,
                &vars()
            )
            .unwrap(),
            "Basic bWVAeC5jb20vdG9rZW46YWJj"
        );
        let broken = variables(BTreeMap::from([("v", Jinja::from("a\r\nX-Evil: 1"))]));
        assert!(render("{{ v }}", Landing::Header, &broken).is_err());
    }

    #[test]
    fn filters_make_digits_and_soql_literals() {
        assert_eq!(
            render("{{ caller | digits }}", Landing::Header, &vars()).unwrap(),
            "1555123"
        );
        assert_eq!(soql_literal(r#"O'Brien \ "x""#), r#"O\'Brien \\ \"x\""#);
    }

    #[test]
    fn secrets_come_from_the_environment_only_when_rendered() {
        std::env::set_var("HANDOFF_SECRET_TEMPLATES_TEST", "s3cr3t");
        assert_eq!(
            render(
                "Bearer {{ secrets.TEMPLATES_TEST }}",
                Landing::Header,
                &vars()
            )
            .unwrap(),
            "Bearer s3cr3t"
        );
        assert_eq!(
            missing_secrets("{{ secrets.TEMPLATES_TEST }} {{ secrets.NOT_SET_ANYWHERE }}"),
            ["NOT_SET_ANYWHERE"]
        );
        assert_eq!(
            render("[{{ secrets.NOT_SET_ANYWHERE }}]", Landing::Header, &vars()).unwrap(),
            "[]"
        );
    }

    #[test]
    fn when_expressions_test_what_a_call_has() {
        assert!(holds("caller and context.account", &vars()).unwrap());
        assert!(!holds("context.missing.deeper", &vars()).unwrap());
        assert!(check_expression("caller and (").is_err());
        assert!(check("{% if %}", Landing::Url).is_err());
    }
}
