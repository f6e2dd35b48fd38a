//! Presets: the generic connector filled in for real CRMs from their documented APIs.
//!
//! - `zendesk` (Talk Partner Edition): the caller looked up as an end user by phone
//!   (`GET /api/v2/search.json?query=role:end-user phone:<digits>`), the user's profile opened
//!   in the agent's browser when the agent accepts
//!   (`POST /api/v2/channels/voice/agents/{agent}/users/{user}/display.json`), and the call
//!   record as an inbound voice ticket (`POST /api/v2/channels/voice/tickets.json`, `via_id`
//!   45). Basic auth with an API token: `{email}/token:{token}`.
//! - `salesforce` (REST): the caller found by SOSL in phone fields
//!   (`GET /services/data/vNN.N/search/?q=FIND {digits} IN PHONE FIELDS RETURNING Contact(...)`),
//!   the log as a completed call Task (`POST /services/data/vNN.N/sobjects/Task/`). Bearer.
//! - `hubspot` (CRM v3): a contact search by phone (`POST /crm/v3/objects/contacts/search`),
//!   the log as a call engagement associated with that contact (`POST /crm/v3/objects/calls`,
//!   association type 194). Bearer (a private app token).
//!
//! Settings that shape URLs (`base_url`, `subdomain`, `instance_url`, `api_version`) and the
//! secret's name are checked here and written into the templates; everything from the call is
//! printed through the templates' safe formatters.

use std::collections::BTreeMap;

use handoff_protocol::{ConnectorAction, ConnectorLookup};

/// What a preset fills in.
pub struct Expanded {
    pub lookup: Option<ConnectorLookup>,
    pub log: Option<ConnectorAction>,
    pub actions: Vec<ConnectorAction>,
}

pub const PRESETS: [&str; 3] = ["zendesk", "salesforce", "hubspot"];

/// The preset's requests for these settings, or what is wrong with them.
pub fn expand(preset: &str, settings: &BTreeMap<String, String>) -> Result<Expanded, String> {
    match preset {
        "zendesk" => zendesk(settings),
        "salesforce" => salesforce(settings),
        "hubspot" => hubspot(settings),
        other => Err(format!(
            "preset: {other:?} is not one of {}",
            PRESETS.join(", ")
        )),
    }
}

/// The base URL: `base_url` when given (a test server, a proxy), else `default`.
fn base_url(
    settings: &BTreeMap<String, String>,
    default: Option<String>,
) -> Result<String, String> {
    let base = match settings.get("base_url") {
        Some(base) => base.clone(),
        None => default.ok_or("settings.base_url is needed")?,
    };
    let parsed = url::Url::parse(&base).map_err(|e| format!("settings.base_url: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
        return Err("settings.base_url: an http(s) URL without a query".to_owned());
    }
    if base.contains(['{', '}', '%', ' ']) {
        return Err("settings.base_url: no braces, percent signs or spaces".to_owned());
    }
    Ok(base.trim_end_matches('/').to_owned())
}

/// The name of the secret that holds the token: `token_secret`, else `default`.
fn secret_name(settings: &BTreeMap<String, String>, default: &str) -> Result<String, String> {
    let name = settings
        .get("token_secret")
        .cloned()
        .unwrap_or_else(|| default.to_owned());
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "settings.token_secret: {name:?} is not a secret name like HUBSPOT_TOKEN (read from HANDOFF_SECRET_<NAME>)"
        ));
    }
    Ok(name)
}

fn word(settings: &BTreeMap<String, String>, key: &str) -> Result<Option<String>, String> {
    match settings.get(key) {
        None => Ok(None),
        Some(value)
            if !value.is_empty()
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) =>
        {
            Ok(Some(value.clone()))
        }
        Some(value) => Err(format!("settings.{key}: {value:?} is not a plain name")),
    }
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(name, path)| (name.to_string(), path.to_string()))
        .collect()
}

fn headers(pairs: &[(&str, String)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect(),
    )
}

/// A lookup by the caller's number, made only for calls that have one.
fn caller_lookup(
    method: &str,
    url: String,
    headers: Option<BTreeMap<String, String>>,
    body: Option<&str>,
    found: &[(&str, &str)],
) -> ConnectorLookup {
    ConnectorLookup {
        method: Some(method.to_owned()),
        url,
        headers,
        body: body.map(str::to_owned),
        timeout_ms: None,
        cache_ttl_s: None,
        fields: fields(found),
        when: Some("caller".to_owned()),
    }
}

/// A POST made on events of type `on`, with a JSON body when given.
fn post(
    name: &str,
    on: &str,
    url: String,
    headers: Option<BTreeMap<String, String>>,
    body: Option<&str>,
    when: Option<&str>,
) -> ConnectorAction {
    ConnectorAction {
        name: Some(name.to_owned()),
        on: Some(vec![on.to_owned()]),
        method: Some("POST".to_owned()),
        url,
        headers,
        body: body.map(str::to_owned),
        timeout_ms: None,
        when: when.map(str::to_owned),
    }
}

const JSON: &str = "application/json";

fn zendesk(settings: &BTreeMap<String, String>) -> Result<Expanded, String> {
    let default_base =
        word(settings, "subdomain")?.map(|subdomain| format!("https://{subdomain}.zendesk.com"));
    let base =
        base_url(settings, default_base).map_err(|e| format!("{e} (or settings.subdomain)"))?;
    let email = settings
        .get("email")
        .filter(|e| e.contains('@') && !e.contains(['"', '\'', '{', '}', ' ']))
        .ok_or("settings.email: the Zendesk agent or admin email the API token belongs to")?;
    let secret = secret_name(settings, "ZENDESK_TOKEN")?;
    let auth = format!("Basic {{{{ (\"{email}/token:\" ~ secrets.{secret}) | b64encode }}}}");
    let sending = headers(&[
        ("Authorization", auth.clone()),
        ("Content-Type", JSON.to_owned()),
    ]);
    Ok(Expanded {
        lookup: Some(caller_lookup(
            "GET",
            format!(
                "{base}/api/v2/search.json?query={{{{ \"role:end-user phone:\" ~ (caller | digits) }}}}"
            ),
            headers(&[("Authorization", auth), ("Accept", JSON.to_owned())]),
            None,
            &[
                ("user_id", "$.results[0].id"),
                ("name", "$.results[0].name"),
                ("email", "$.results[0].email"),
                ("phone", "$.results[0].phone"),
                ("organization_id", "$.results[0].organization_id"),
                ("matches", "$.count"),
            ],
        )),
        actions: vec![post(
            "display",
            "interaction.accepted",
            format!(
                "{base}/api/v2/channels/voice/agents/{{{{ agent.crm_id }}}}/users/{{{{ found.user_id }}}}/display.json"
            ),
            sending.clone(),
            None,
            Some("agent.crm_id and found.user_id"),
        )],
        log: Some(post(
            "log",
            "interaction.completed",
            format!("{base}/api/v2/channels/voice/tickets.json"),
            sending,
            Some(
                r#"{"ticket": {"via_id": 45,
 "subject": {{ "Call from " ~ (caller or "an unknown caller") }},
 {% if found.user_id %}"requester_id": {{ found.user_id }},{% endif %}
 "comment": {"body": {{ interaction.notes or interaction.disposition or ("Call handled by " ~ agent.name) }}},
 "voice_comment": {"from": {{ caller }}, "to": {{ dialed }},
   "started_at": {{ interaction.accepted_at }}, "call_duration": {{ interaction.duration_s or 0 }}
   {% if agent.crm_id %}, "answered_by_id": {{ agent.crm_id }}{% endif %}}}}"#,
            ),
            None,
        )),
    })
}

fn salesforce(settings: &BTreeMap<String, String>) -> Result<Expanded, String> {
    let base = base_url(settings, settings.get("instance_url").cloned()).map_err(|e| {
        format!("{e} (or settings.instance_url, e.g. https://acme.my.salesforce.com)")
    })?;
    let version = word(settings, "api_version")?.unwrap_or_else(|| "v66.0".to_owned());
    if !version.starts_with('v') {
        return Err("settings.api_version: like v66.0".to_owned());
    }
    let secret = secret_name(settings, "SALESFORCE_TOKEN")?;
    let auth = format!("Bearer {{{{ secrets.{secret} }}}}");
    Ok(Expanded {
        lookup: Some(caller_lookup(
            "GET",
            format!(
                "{base}/services/data/{version}/search/?q={{{{ \"FIND {{\" ~ (caller | digits) ~ \"}} IN PHONE FIELDS RETURNING Contact(Id,Name,Phone,AccountId)\" }}}}"
            ),
            headers(&[("Authorization", auth.clone()), ("Accept", JSON.to_owned())]),
            None,
            &[
                ("contact_id", "$.searchRecords[0].Id"),
                ("name", "$.searchRecords[0].Name"),
                ("phone", "$.searchRecords[0].Phone"),
                ("account_id", "$.searchRecords[0].AccountId"),
            ],
        )),
        actions: Vec::new(),
        log: Some(post(
            "log",
            "interaction.completed",
            format!("{base}/services/data/{version}/sobjects/Task/"),
            headers(&[("Authorization", auth), ("Content-Type", JSON.to_owned())]),
            Some(
                r#"{"Subject": {{ "Call from " ~ (caller or "an unknown caller") }},
 "Status": "Completed", "Priority": "Normal", "TaskSubtype": "Call", "CallType": "Inbound",
 "CallDurationInSeconds": {{ interaction.duration_s or 0 }},
 "CallDisposition": {{ interaction.disposition }},
 "Description": {{ interaction.notes }},
 "ActivityDate": {{ interaction.completed_date }},
 "CallObject": {{ call_id or id }}
 {% if found.contact_id %}, "WhoId": {{ found.contact_id }}{% endif %}
 {% if agent.crm_id %}, "OwnerId": {{ agent.crm_id }}{% endif %}}"#,
            ),
            None,
        )),
    })
}

fn hubspot(settings: &BTreeMap<String, String>) -> Result<Expanded, String> {
    let base = base_url(settings, Some("https://api.hubapi.com".to_owned()))?;
    let secret = secret_name(settings, "HUBSPOT_TOKEN")?;
    let auth = format!("Bearer {{{{ secrets.{secret} }}}}");
    let sending = headers(&[("Authorization", auth), ("Content-Type", JSON.to_owned())]);
    Ok(Expanded {
        // HubSpot matches phone numbers on the area code and local number.
        lookup: Some(caller_lookup(
            "POST",
            format!("{base}/crm/v3/objects/contacts/search"),
            sending.clone(),
            Some(
                r#"{"filterGroups": [{"filters": [{"propertyName": "phone", "operator": "EQ", "value": {{ (caller | digits)[-10:] }}}]}],
 "properties": ["firstname", "lastname", "email", "phone", "company"], "limit": 1}"#,
            ),
            &[
                ("contact_id", "$.results[0].id"),
                ("first_name", "$.results[0].properties.firstname"),
                ("last_name", "$.results[0].properties.lastname"),
                ("email", "$.results[0].properties.email"),
                ("company", "$.results[0].properties.company"),
                ("matches", "$.total"),
            ],
        )),
        actions: Vec::new(),
        log: Some(post(
            "log",
            "interaction.completed",
            format!("{base}/crm/v3/objects/calls"),
            sending,
            Some(
                r#"{"properties": {
   "hs_timestamp": {{ interaction.completed_at }},
   "hs_call_title": {{ "Inbound call from " ~ (caller or "an unknown caller") }},
   "hs_call_body": {{ interaction.notes or interaction.disposition or "" }},
   "hs_call_duration": {{ (interaction.duration_s or 0) * 1000 }},
   "hs_call_from_number": {{ caller }},
   "hs_call_to_number": {{ dialed }},
   "hs_call_status": "COMPLETED",
   "hs_call_direction": "INBOUND"
   {% if agent.crm_id %}, "hubspot_owner_id": {{ agent.crm_id }}{% endif %}}
 {% if found.contact_id %}, "associations": [{"to": {"id": {{ found.contact_id }}},
   "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 194}]}]{% endif %}}"#,
            ),
            None,
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_preset_makes_templates_that_parse() {
        use super::super::templates::{check, check_expression, Landing};
        for (preset, given) in [
            (
                "zendesk",
                settings(&[("subdomain", "acme"), ("email", "ops@acme.com")]),
            ),
            (
                "salesforce",
                settings(&[("instance_url", "https://acme.my.salesforce.com")]),
            ),
            ("hubspot", settings(&[])),
        ] {
            let expanded = expand(preset, &given).unwrap();
            let lookup = expanded.lookup.unwrap();
            let mut actions = expanded.actions;
            actions.extend(expanded.log);
            check(&lookup.url, Landing::Url).unwrap();
            for action in &actions {
                check(&action.url, Landing::Url).unwrap();
                if let Some(body) = &action.body {
                    check(body, Landing::JsonBody).unwrap_or_else(|e| panic!("{preset}: {e}"));
                }
                for value in action.headers.iter().flat_map(|h| h.values()) {
                    check(value, Landing::Header).unwrap();
                }
                if let Some(when) = &action.when {
                    check_expression(when).unwrap();
                }
            }
        }
    }

    #[test]
    fn bad_settings_are_named() {
        for (preset, given, expected) in [
            ("zendesk", settings(&[("email", "a@b.c")]), "subdomain"),
            (
                "zendesk",
                settings(&[("subdomain", "acme")]),
                "settings.email",
            ),
            (
                "zendesk",
                settings(&[("subdomain", "a/b"), ("email", "a@b.c")]),
                "settings.subdomain",
            ),
            ("salesforce", settings(&[]), "instance_url"),
            ("hubspot", settings(&[("base_url", "ftp://x")]), "base_url"),
            (
                "hubspot",
                settings(&[("token_secret", "lower")]),
                "token_secret",
            ),
            ("pipedrive", settings(&[]), "preset"),
        ] {
            let error = expand(preset, &given).err().unwrap();
            assert!(error.contains(expected), "{preset}: {error}");
        }
    }
}
