//! The wire's translations checked both ways, against the contract's names.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use handoff_core::{
    AgentId, AgentProfile, Capacity, Enrichment, EscalationStep, Event, InteractionId,
    InteractionSpec, OfferEndReason, Presence, PresenceSource, PresenceStatus, QueueConfig,
    QueueName, Routing, SkillLevel, Strategy, Target, Timestamp,
};
use serde_json::{json, Value};

use super::*;

fn t(ms: i64) -> Timestamp {
    Timestamp::from_millis(1_780_000_000_000 + ms)
}

fn agent(id: &str) -> AgentId {
    AgentId::parse(id).unwrap()
}

fn queue(name: &str) -> QueueName {
    QueueName::parse(name).unwrap()
}

fn ix(id: &str) -> InteractionId {
    InteractionId::parse(id).unwrap()
}

fn skills(pairs: &[(&str, i64)]) -> BTreeMap<String, SkillLevel> {
    pairs
        .iter()
        .map(|(skill, level)| (skill.to_string(), SkillLevel::parse(*level).unwrap()))
        .collect()
}

/// Names the variant. The match is exhaustive: a variant added to the core does not compile
/// until it is named here, and the test then asks for a sample of it.
fn variant(event: &Event) -> &'static str {
    match event {
        Event::AgentCreated { .. } => "AgentCreated",
        Event::AgentUpdated { .. } => "AgentUpdated",
        Event::AgentDeleted { .. } => "AgentDeleted",
        Event::PresenceChanged { .. } => "PresenceChanged",
        Event::InteractionCreated { .. } => "InteractionCreated",
        Event::InteractionQueued { .. } => "InteractionQueued",
        Event::InteractionOffered { .. } => "InteractionOffered",
        Event::OfferRevoked { .. } => "OfferRevoked",
        Event::InteractionAccepted { .. } => "InteractionAccepted",
        Event::InteractionRejected { .. } => "InteractionRejected",
        Event::InteractionTransferred { .. } => "InteractionTransferred",
        Event::InteractionEnded { .. } => "InteractionEnded",
        Event::InteractionAbandoned { .. } => "InteractionAbandoned",
        Event::InteractionUnanswered { .. } => "InteractionUnanswered",
        Event::InteractionCompleted { .. } => "InteractionCompleted",
        Event::InteractionTimedOut { .. } => "InteractionTimedOut",
        Event::ContextUpdated { .. } => "ContextUpdated",
        Event::InteractionEnriched { .. } => "InteractionEnriched",
        Event::EnrichmentFailed { .. } => "EnrichmentFailed",
        Event::QueueUpserted { .. } => "QueueUpserted",
        Event::QueueDeleted { .. } => "QueueDeleted",
    }
}

const VARIANTS: [&str; 21] = [
    "AgentCreated",
    "AgentUpdated",
    "AgentDeleted",
    "PresenceChanged",
    "InteractionCreated",
    "InteractionQueued",
    "InteractionOffered",
    "OfferRevoked",
    "InteractionAccepted",
    "InteractionRejected",
    "InteractionTransferred",
    "InteractionEnded",
    "InteractionAbandoned",
    "InteractionUnanswered",
    "InteractionCompleted",
    "InteractionTimedOut",
    "ContextUpdated",
    "InteractionEnriched",
    "EnrichmentFailed",
    "QueueUpserted",
    "QueueDeleted",
];

/// At least one sample of every variant, and one of every wire form a variant has.
fn samples() -> Vec<Event> {
    let presence = Presence {
        status: PresenceStatus::Available,
        reason: Some("back from lunch".to_owned()),
        source: PresenceSource::Uc,
        since: t(1),
    };
    let alice = AgentProfile {
        id: agent("alice"),
        name: "Alice Smith".to_owned(),
        address: Some("sip:alice@pbx.example.com".to_owned()),
        skills: skills(&[("billing", 7), ("spanish", 0)]),
        capacity: Capacity::Total(2),
    };
    let bob = AgentProfile {
        id: agent("bob"),
        name: "Bob".to_owned(),
        address: None,
        skills: BTreeMap::new(),
        capacity: Capacity::PerChannel(BTreeMap::from([
            ("chat".to_owned(), 3),
            ("voice".to_owned(), 1),
        ])),
    };
    let mut billing = QueueConfig::new(queue("billing"));
    billing.skills = skills(&[("billing", 5), ("spanish", 3)]);
    billing.strategy = Strategy::MostSkilled;
    billing.offer_timeout_s = 15;
    billing.wrap_up_s = 0;
    billing.max_wait_s = Some(600);
    billing.overflow = Some(queue("general"));
    billing.service_level_s = 30;
    billing.pop_url = Some("https://crm.example.com/?phone={{ caller }}".to_owned());
    billing.steps = vec![
        EscalationStep {
            after_s: 30,
            skills: skills(&[("billing", 3)]),
        },
        EscalationStep {
            after_s: 90,
            skills: BTreeMap::new(),
        },
    ];
    let spec = InteractionSpec {
        id: ix("ix_1"),
        caller: Some("+15551234567".to_owned()),
        dialed: None,
        channel: "voice".to_owned(),
        call_id: Some("abc@pbx".to_owned()),
        context: r#"{"order":42,"vip":true,"nested":{"b":[1,2],"a":null}}"#.to_owned(),
        target: Target::Queue(queue("billing")),
        fallback: Some(Target::Agent(agent("bob"))),
        priority: -3,
        max_wait_s: Some(45),
        enrichment: vec![
            Enrichment {
                connector: "zendesk".to_owned(),
                fields: Arc::from(r#"{"user_id":361,"name":"Zoë"}"#),
            },
            Enrichment {
                connector: "billing".to_owned(),
                fields: Arc::from(r#"{"due":12.5}"#),
            },
        ],
        created_by: Some("key_ivr".to_owned()),
        created_at: t(2),
    };
    let mut events = vec![
        Event::AgentCreated {
            profile: alice.clone(),
            presence: presence.clone(),
        },
        Event::AgentUpdated {
            profile: bob,
            at: t(3),
        },
        Event::AgentDeleted {
            agent: agent("bob"),
            at: t(4),
        },
        Event::PresenceChanged {
            agent: agent("alice"),
            presence: Presence {
                status: PresenceStatus::Away,
                reason: None,
                source: PresenceSource::System,
                since: t(5),
            },
        },
        Event::InteractionCreated { spec: spec.into() },
        Event::InteractionQueued {
            id: ix("ix_1"),
            target: Target::Queue(queue("billing")),
            at: t(6),
            requeued: false,
        },
        Event::InteractionQueued {
            id: ix("ix_1"),
            target: Target::Queue(queue("billing")),
            at: t(7),
            requeued: true,
        },
        Event::InteractionOffered {
            id: ix("ix_1"),
            agent: agent("alice"),
            target: Target::Queue(queue("billing")),
            expires_at: t(20_008),
            at: t(8),
            routing: Routing {
                strategy: Some(Strategy::MostSkilled),
                eligible: 4,
                reason: "highest summed skill level: 7 (billing 7, spanish 0), idle 3 s".to_owned(),
            },
        },
        Event::InteractionOffered {
            id: ix("ix_2"),
            agent: agent("alice"),
            target: Target::Agent(agent("alice")),
            expires_at: t(20_009),
            at: t(9),
            routing: Routing {
                strategy: None,
                eligible: 1,
                reason: "addressed to this agent".to_owned(),
            },
        },
    ];
    for reason in OfferEndReason::ALL {
        events.push(Event::OfferRevoked {
            id: ix("ix_1"),
            agent: agent("alice"),
            reason,
            at: t(10),
        });
    }
    events.extend([
        Event::InteractionAccepted {
            id: ix("ix_1"),
            agent: agent("alice"),
            at: t(11),
        },
        Event::InteractionRejected {
            id: ix("ix_1"),
            agent: agent("alice"),
            at: t(12),
        },
        Event::InteractionTransferred {
            id: ix("ix_1"),
            from: agent("alice"),
            target: Target::Queue(queue("general")),
            fallback: Some(Target::Agent(agent("bob"))),
            note: Some("wants a refund".to_owned()),
            at: t(13),
        },
        Event::InteractionTransferred {
            id: ix("ix_1"),
            from: agent("alice"),
            target: Target::Agent(agent("bob")),
            fallback: None,
            note: None,
            at: t(14),
        },
        Event::InteractionEnded {
            id: ix("ix_1"),
            agent: agent("alice"),
            wrap_up_until: Some(t(45)),
            at: t(15),
        },
        Event::InteractionEnded {
            id: ix("ix_1"),
            agent: agent("alice"),
            wrap_up_until: None,
            at: t(15),
        },
        Event::InteractionAbandoned {
            id: ix("ix_1"),
            at: t(16),
        },
        Event::InteractionUnanswered {
            id: ix("ix_1"),
            at: t(17),
        },
        Event::InteractionCompleted {
            id: ix("ix_1"),
            agent: agent("alice"),
            disposition: Some("resolved".to_owned()),
            notes: Some("refund issued".to_owned()),
            at: t(18),
            wrap_up_expired: false,
        },
        Event::InteractionCompleted {
            id: ix("ix_1"),
            agent: agent("alice"),
            disposition: None,
            notes: None,
            at: t(19),
            wrap_up_expired: true,
        },
        Event::InteractionTimedOut {
            id: ix("ix_1"),
            at: t(20),
        },
        Event::QueueUpserted {
            config: QueueConfig::new(queue("general")),
            created: true,
            at: t(21),
        },
        Event::QueueUpserted {
            config: billing,
            created: false,
            at: t(22),
        },
        Event::QueueDeleted {
            name: queue("billing"),
            at: t(23),
        },
        Event::ContextUpdated {
            id: ix("ix_1"),
            context: Arc::from(r#"{"order":43,"vip":true,"note":"Zoë & co"}"#),
            patch: Arc::from(r#"{"order":43,"nested":null,"note":"Zoë & co"}"#),
            version: 2,
            by: Some("key_ivr".to_owned()),
            at: t(26),
        },
        Event::ContextUpdated {
            id: ix("ix_1"),
            context: Arc::from("{}"),
            patch: Arc::from(r#"{"order":null}"#),
            version: 3,
            by: None,
            at: t(27),
        },
        Event::InteractionEnriched {
            id: ix("ix_1"),
            enrichment: Enrichment {
                connector: "crm".to_owned(),
                fields: Arc::from(r#"{"name":"Zoë","tier":"gold","open_tickets":[1,2]}"#),
            },
            at: t(28),
        },
        Event::EnrichmentFailed {
            id: ix("ix_1"),
            connector: "crm".to_owned(),
            reason: "HTTP 503 from crm.example.com".to_owned(),
            at: t(29),
        },
    ]);
    for strategy in Strategy::ALL {
        let mut config = QueueConfig::new(queue("sales"));
        config.strategy = strategy;
        events.push(Event::QueueUpserted {
            config,
            created: true,
            at: t(24),
        });
        events.push(Event::InteractionOffered {
            id: ix("ix_3"),
            agent: agent("alice"),
            target: Target::Queue(queue("sales")),
            expires_at: t(30_000),
            at: t(25),
            routing: Routing {
                strategy: Some(strategy),
                eligible: 2,
                reason: format!("chosen by {}", strategy.as_str()),
            },
        });
    }
    events
}

#[test]
fn every_core_event_round_trips_through_its_cloud_event_text() {
    let events = samples();
    let covered: BTreeSet<&str> = events.iter().map(variant).collect();
    assert_eq!(covered, BTreeSet::from(VARIANTS), "a variant has no sample");
    for (index, event) in events.iter().enumerate() {
        let seq = index as u64 + 1;
        let cloud = cloud_event(seq, event, None, None);
        assert_eq!(cloud.event_type, event.type_name());
        assert_eq!(cloud.subject, event.subject());
        let text = serde_json::to_string(&cloud).unwrap();
        let decoded = decode_event(seq, &text).unwrap_or_else(|error| panic!("{error}\n{text}"));
        assert_eq!(&decoded, event, "{text}");
    }
}

/// Keys sorted at every depth, compact, scalars as serde_json writes them: the same text as
/// a sorted copy serialized (what it was before), whatever the key order given.
#[test]
fn canonical_json_sorts_keys_at_every_depth_and_writes_the_rest_as_serde_json_does() {
    fn sorted_copy(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sorted_copy(v)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted_copy).collect()),
            other => other.clone(),
        }
    }
    let one: Value = serde_json::from_str(
        r#"{"z": [3, {"b": 1, "a": null}], "a": {"y": "Zoë \"q\"\n\u0001🚀", "x": -2.5e-9},
            "m": true, "é": 18446744073709551615, "": []}"#,
    )
    .unwrap();
    let other_order: Value = serde_json::from_str(
        r#"{"": [], "é": 18446744073709551615, "m": true,
            "a": {"x": -2.5e-9, "y": "Zoë \"q\"\n\u0001🚀"}, "z": [3, {"a": null, "b": 1}]}"#,
    )
    .unwrap();
    let text = canonical_json(&one);
    assert_eq!(
        text,
        r#"{"":[],"a":{"x":-2.5e-9,"y":"Zoë \"q\"\n\u0001🚀"},"m":true,"z":[3,{"a":null,"b":1}],"é":18446744073709551615}"#
    );
    assert_eq!(
        canonical_json(&other_order),
        text,
        "key order does not matter"
    );
    for value in [one, json!([]), json!("x"), json!(null), json!({"k": {}})] {
        assert_eq!(canonical_json(&value), sorted_copy(&value).to_string());
    }
}

/// The payload written directly is the very text `cloud_event` serializes to, for every
/// event, with and without the offered interaction and a pop URL (rendered or refused),
/// and with contexts of every JSON kind: nested, escaped, unicode, numbers, empty.
#[test]
fn the_payload_written_directly_is_the_text_of_the_cloud_event() {
    let events = samples();
    let contexts = [
        "{}".to_owned(),
        json!({"order": 42, "account": {"tier": "gold", "open": [1, 2.5, -3e-7, null, true]},
               "note": "Zoë \"quoted\"\n\t\u{1F680} </script>", "big": u64::MAX, "neg": i64::MIN})
        .to_string(),
        "not json".to_owned(),
    ];
    let templates = [
        None,
        Some("https://crm.example.com/s?phone={{ caller }}&order={{ context.order }}"),
        Some("https://x.example/?{{ nope }}"),
    ];
    let mut compared = 0;
    for context in &contexts {
        let mut state = handoff_core::State::new(handoff_core::Settings::default());
        let mut with_context = events.clone();
        for event in &mut with_context {
            if let Event::InteractionCreated { spec } = event {
                Arc::make_mut(spec).context = context.clone();
            }
            state.apply(event);
        }
        for (index, event) in with_context.iter().enumerate() {
            let seq = 1_000 + index as u64;
            let interaction = event.interaction_id().and_then(|id| state.interaction(id));
            for offered in [None, interaction] {
                for template in templates {
                    let expected =
                        serde_json::to_string(&cloud_event(seq, event, offered, template)).unwrap();
                    let direct = cloud_event_payload(seq, event, offered, template);
                    assert_eq!(direct, expected, "event {index} with context {context}");
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(
        compared,
        contexts.len() * events.len() * 2 * templates.len()
    );
    let offered_with_context = events
        .iter()
        .filter(|e| matches!(e, Event::InteractionOffered { .. }))
        .count();
    assert!(offered_with_context > 0, "the samples have offers");
}

#[test]
fn new_fields_have_their_contract_names_on_the_wire() {
    let events = samples();
    let data = |index: usize| cloud_event(1, &events[index], None, None).data;
    assert_eq!(data(0)["agent"]["capacity"], json!(2));
    assert_eq!(data(1)["agent"]["capacity"], json!({"chat": 3, "voice": 1}));
    assert_eq!(data(5)["requeued"], json!(false));
    assert!(
        data(5).get("position").is_none(),
        "the log keeps no position"
    );
    assert_eq!(data(6)["requeued"], json!(true));
    assert_eq!(data(7)["routing"]["strategy"], "most_skilled");
    assert_eq!(data(7)["routing"]["eligible"], 4);
    assert_eq!(data(8)["routing"]["strategy"], "direct");
    let revoked: Vec<Value> = events
        .iter()
        .filter(|e| matches!(e, Event::OfferRevoked { .. }))
        .map(|e| cloud_event(1, e, None, None).data["reason"].clone())
        .collect();
    assert!(
        revoked.contains(&json!("answered_elsewhere")),
        "{revoked:?}"
    );
    let upserted = events
        .iter()
        .find(|e| matches!(e, Event::QueueUpserted { created: false, .. }))
        .unwrap();
    let cloud = cloud_event(1, upserted, None, None);
    assert_eq!(cloud.event_type, "queue.updated");
    assert_eq!(
        cloud.data["queue"],
        json!({
            "name": "billing",
            "skills": {"billing": 5, "spanish": 3},
            "strategy": "most_skilled",
            "offer_timeout_s": 15,
            "wrap_up_s": 0,
            "max_wait_s": 600,
            "overflow": {"queue": "general"},
            "service_level_s": 30,
            "steps": [
                {"after_s": 30, "skills": {"billing": 3}},
                {"after_s": 90, "skills": {}},
            ],
            "pop_url": "https://crm.example.com/?phone={{ caller }}",
        })
    );
}

#[test]
fn an_offer_carries_its_rendered_pop_url_or_why_not_and_still_decodes() {
    let events = samples();
    let Event::InteractionCreated { spec } = &events[4] else {
        panic!("sample 4 is the creation");
    };
    let mut state = handoff_core::State::new(handoff_core::Settings::default());
    state.apply(&events[4]);
    let interaction = state.interaction(&spec.id).unwrap();
    let offered = &events[7];
    assert!(matches!(offered, Event::InteractionOffered { .. }));

    let template = "https://crm.example.com/s?phone={{ caller }}&order={{ context.order }}&q={{ queue }}&a={{ agent }}";
    let cloud = cloud_event(8, offered, Some(interaction), Some(template));
    assert_eq!(
        cloud.data["pop_url"],
        "https://crm.example.com/s?phone=%2B15551234567&order=42&q=billing&a=alice"
    );
    assert!(cloud.data.get("pop_url_error").is_none());
    let text = serde_json::to_string(&cloud).unwrap();
    assert_eq!(&decode_event(8, &text).unwrap(), offered, "{text}");

    let cloud = cloud_event(
        8,
        offered,
        Some(interaction),
        Some("https://x.example/?{{ nope }}"),
    );
    assert!(cloud.data.get("pop_url").is_none());
    let reason = cloud.data["pop_url_error"].as_str().unwrap();
    assert!(reason.contains("nope"), "{reason}");
    let text = serde_json::to_string(&cloud).unwrap();
    assert_eq!(&decode_event(8, &text).unwrap(), offered, "{text}");

    let cloud = cloud_event(8, offered, Some(interaction), None);
    assert!(cloud.data.get("pop_url").is_none() && cloud.data.get("pop_url_error").is_none());
}

#[test]
fn events_logged_before_queues_still_decode() {
    let offered = json!({
        "specversion": "1.0", "id": "handoff-7", "source": "handoff",
        "type": "interaction.offered", "time": "2026-01-01T00:00:00.000Z",
        "subject": "ix_1", "seq": 7,
        "data": {
            "interaction": {"id": "ix_1"}, "agent": "alice",
            "offer_target": {"agent": "alice"},
            "offer_expires_at": "2026-01-01T00:00:20.000Z",
        },
    });
    let Event::InteractionOffered { routing, .. } = decode_event(7, &offered.to_string()).unwrap()
    else {
        panic!("not an offer");
    };
    assert_eq!(routing.strategy, None);
    let queued = json!({
        "specversion": "1.0", "id": "handoff-8", "source": "handoff",
        "type": "interaction.queued", "time": "2026-01-01T00:00:00.000Z",
        "subject": "ix_1", "seq": 8,
        "data": {"interaction_id": "ix_1", "target": {"agent": "alice"}},
    });
    assert!(matches!(
        decode_event(8, &queued.to_string()).unwrap(),
        Event::InteractionQueued {
            requeued: false,
            ..
        }
    ));
    let created = json!({
        "specversion": "1.0", "id": "handoff-1", "source": "handoff",
        "type": "agent.created", "time": "2026-01-01T00:00:00.000Z",
        "subject": "alice", "seq": 1,
        "data": {
            "agent": {"id": "alice", "name": "A", "address": null, "skills": {}, "capacity": 3},
            "presence": {"status": "offline", "reason": null, "source": "system",
                         "since": "2026-01-01T00:00:00.000Z"},
        },
    });
    let Event::AgentCreated { profile, .. } = decode_event(1, &created.to_string()).unwrap() else {
        panic!("not an agent");
    };
    assert_eq!(profile.capacity, Capacity::Total(3));
}
