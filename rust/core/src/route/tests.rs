use super::*;
use crate::error::Refusal;
use crate::latency::LatencyTracker;
use crate::table::tests::spec;

/// Three models: `cheap` (chat), `coder` (chat, code), `big` (chat, code, large window);
/// `gone` is configured but disabled.
fn router(fallback: &[&str]) -> Router {
    router_with(fallback, None)
}

pub(super) fn router_with(fallback: &[&str], quota: Option<Arc<RuleBook>>) -> Router {
    let mut cheap = spec("cheap");
    cheap.input_per_mtok = 0.1;
    cheap.capabilities = 0b01;
    let mut coder = spec("coder");
    coder.capabilities = 0b11;
    let mut big = spec("big");
    big.context_window = 1_000_000;
    big.quality = 0.95;
    big.input_per_mtok = 10.0;
    big.capabilities = 0b11;
    let tracker = Arc::new(LatencyTracker::new(60.0).unwrap());
    let table = Arc::new(ModelTable::new(vec![cheap, coder, big], tracker, 20).unwrap());
    let strategies = [
        ("balanced", [1.0, 1.0, 1.0]),
        ("cost-first", [0.7, 0.15, 0.15]),
        ("quality-first", [0.1, 0.1, 0.8]),
    ];
    Router::new(
        table,
        RouterConfig {
            providers: vec!["p".into(); 3],
            capabilities: vec!["chat".into(), "code".into()],
            disabled: vec![("gone".into(), "provider 'x' is disabled".into())],
            strategies: strategies.iter().map(|(n, w)| ((*n).into(), *w)).collect(),
            default_strategy: "balanced".into(),
            stages: vec![Stage {
                name: "review".into(),
                models: vec!["big".into(), "gone".into()],
                strategy: Some("quality-first".into()),
            }],
            fallback_chain: fallback.iter().map(|s| (*s).into()).collect(),
            auto: AutoRouting {
                enabled: true,
                hard_complexity: 0.6,
                easy_complexity: 0.1,
            },
            default_output_tokens: 100,
            encodings: vec![Tokenizer::Estimate],
            limits: Limits::default(),
            quota,
            exploration: super::Exploration::default(),
        },
    )
    .unwrap()
}

pub(super) fn ask(text: &str) -> RouteInput<'_> {
    RouteInput {
        messages: vec![Message {
            role: "user",
            content: text,
        }],
        ..RouteInput::default()
    }
}

/// Spoils one field of a valid request.
type Spoil = fn(&mut RouteInput<'_>);

fn refusal(result: Result<Decision>) -> Refusal {
    match result {
        Err(CoreError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn override_keeps_to_the_named_models() {
    let router = router(&["cheap"]);
    let mut input = ask("hello");
    input.routing.models = vec!["big", "coder", "big"];
    let decision = router.decide(&input, &[], Stop::never(), 0.0).unwrap();
    assert_eq!(decision.level, Level::Override);
    let mut chosen: Vec<usize> = decision.candidates.iter().map(|c| c.index).collect();
    chosen.sort_unstable();
    assert_eq!(chosen, [1, 2]);
    assert!(
        decision.fallback.is_empty(),
        "an override never leaves its list"
    );
    assert_eq!(
        decision.reasons[0],
        "override: the request named big, coder"
    );
}

#[test]
fn unknown_and_disabled_models_are_told_apart() {
    let router = router(&[]);
    let mut input = ask("hello");
    input.routing.models = vec!["nope"];
    assert_eq!(
        refusal(router.decide(&input, &[], Stop::never(), 0.0)),
        Refusal::InvalidRequest {
            field: "routing.models[0]".into(),
            message: "unknown model 'nope'".into()
        }
    );
    input.routing.models = vec!["gone"];
    assert!(matches!(
        refusal(router.decide(&input, &[], Stop::never(), 0.0)),
        Refusal::NoEligibleModel(m) if m.contains("provider 'x' is disabled")
    ));
}

#[test]
fn a_stage_is_a_whitelist_with_its_own_strategy() {
    let router = router(&[]);
    let mut input = ask("hello");
    input.routing.stage = "review";
    let decision = router.decide(&input, &[], Stop::never(), 0.0).unwrap();
    assert_eq!(decision.level, Level::Stage);
    assert_eq!(decision.strategy, "quality-first");
    assert_eq!(decision.candidates.len(), 1);
    assert!(decision
        .reasons
        .iter()
        .any(|r| r.starts_with("gone excluded")));
    input.routing.models = vec!["cheap"];
    assert!(matches!(
        refusal(router.decide(&input, &[], Stop::never(), 0.0)),
        Refusal::PolicyDenied(m) if m.contains("not allowed in stage 'review' (allowed: big, gone)")
    ));
    input.routing.stage = "nope";
    assert!(matches!(
        refusal(router.decide(&input, &[], Stop::never(), 0.0)),
        Refusal::InvalidRequest { field, .. } if field == "routing.stage"
    ));
}

#[test]
fn auto_prefers_code_capable_models_for_code() {
    let router = router(&["cheap"]);
    let decision = router
        .decide(
            &ask("fix this python traceback in my function"),
            &[],
            Stop::never(),
            0.0,
        )
        .unwrap();
    assert_eq!(decision.level, Level::Auto);
    assert_eq!(decision.task_class, "code");
    assert!(decision.candidates.iter().all(|c| c.index != 0));
    assert_eq!(
        decision.fallback,
        [0],
        "the chain follows, without the candidates"
    );
}

#[test]
fn a_given_reading_replaces_the_rules_and_the_note_follows_it() {
    let router = router(&["cheap"]);
    let text = "where do otters live";
    let rules = router.decide(&ask(text), &[], Stop::never(), 0.0).unwrap();
    assert_eq!(rules.task_class, "chat");
    assert!(rules.confidence > 0.0 && rules.confidence < 0.5);
    assert!(rules.candidates.iter().any(|c| c.index == 0));
    let mut input = ask(text);
    input.given = Some(GivenReading {
        reading: Some(("code", 0.9)),
        note: "classified by model 'tiny' (rules unsure: 0.40)",
    });
    let given = router.decide(&input, &[], Stop::never(), 0.0).unwrap();
    assert_eq!((given.task_class, given.complexity), ("code", 0.9));
    // The rules' confidence still, and the code hint and the hard threshold applied.
    assert!((given.confidence - rules.confidence).abs() < 1e-12);
    assert!(given.candidates.iter().all(|c| c.index != 0));
    assert_eq!(given.strategy, "quality-first");
    assert_eq!(
        given.reasons[..2],
        [
            "auto: task class code, complexity 0.90".to_owned(),
            "classified by model 'tiny' (rules unsure: 0.40)".to_owned()
        ]
    );
    // A note alone keeps the rules' reading.
    input.given = Some(GivenReading {
        reading: None,
        note: "classifier model timed out after 300 ms; rules used",
    });
    let noted = router.decide(&input, &[], Stop::never(), 0.0).unwrap();
    assert_eq!(noted.task_class, "chat");
    assert_eq!(
        noted.reasons[1],
        "classifier model timed out after 300 ms; rules used"
    );
    // Outside the auto level the reading is not used.
    input.routing.models = vec!["big"];
    let named = router.decide(&input, &[], Stop::never(), 0.0).unwrap();
    assert_eq!((named.level, named.confidence), (Level::Override, 0.0));
    assert!(!named.reasons.iter().any(|r| r.contains("classifier")));
}

#[test]
fn a_given_complexity_outside_the_unit_interval_is_refused() {
    let router = router(&["cheap"]);
    for complexity in [-0.1, 1.5, f64::NAN] {
        let mut input = ask("hello");
        input.given = Some(GivenReading {
            reading: Some(("chat", complexity)),
            note: "",
        });
        let Refusal::InvalidRequest { field, .. } =
            refusal(router.decide(&input, &[], Stop::never(), 0.0))
        else {
            panic!("{complexity}");
        };
        assert_eq!(field, "classification.complexity");
    }
}

#[test]
fn fallback_keeps_the_chain_order_when_nothing_else_fits() {
    let router = router(&["big", "cheap"]);
    let mut input = ask("hello");
    // Only `big` has the window for this many output tokens; auto finds it too, so turn it off.
    input.params.max_tokens = Some(500_000);
    let decision = router.decide(&input, &[], Stop::never(), 0.0).unwrap();
    assert_eq!(decision.level, Level::Auto);
    let mut no_auto = router;
    no_auto.config.auto.enabled = false;
    let decision = no_auto.decide(&input, &[], Stop::never(), 0.0).unwrap();
    assert_eq!(decision.level, Level::Fallback);
    assert_eq!(decision.candidates[0].index, 2);
    assert!(decision
        .reasons
        .iter()
        .any(|r| r == "cheap excluded: context window 8192 < 500009 estimated tokens"));
}

#[test]
fn invalid_requests_name_the_field() {
    let router = router(&[]);
    let cases: [(Spoil, &str); 6] = [
        (|i| i.messages.clear(), "messages"),
        (|i| i.messages[0].role = "robot", "messages[0].role"),
        (|i| i.routing.weights = Some([0.0; 3]), "routing.weights"),
        (
            |i| i.routing.weights = Some([f64::MAX; 3]),
            "routing.weights",
        ),
        (|i| i.routing.strategy = "nope", "routing.strategy"),
        (
            |i| i.routing.capabilities = vec!["vision"],
            "routing.capabilities[0]",
        ),
    ];
    for (spoil, expected) in cases {
        let mut input = ask("hello");
        spoil(&mut input);
        match refusal(router.decide(&input, &[], Stop::never(), 0.0)) {
            Refusal::InvalidRequest { field, .. } => assert_eq!(field, expected),
            other => panic!("{expected}: {other:?}"),
        }
    }
}

#[test]
fn the_decision_encodes_with_the_chosen_model_first() {
    let router = router(&[]);
    let decision = router
        .decide(&ask("hello"), &[], Stop::never(), 0.0)
        .unwrap();
    let bytes = router.encode(&decision);
    let name = router.name(decision.candidates[0].index);
    assert_eq!(bytes[0], 0x0A);
    assert_eq!(&bytes[2..2 + name.len()], name.as_bytes());
}

#[test]
fn sizes_over_the_limits_are_refused_naming_limit_and_value() {
    let router = router(&[]);
    let long = "x".repeat(300 * 1024);
    let name = "n".repeat(129);
    let third = "y".repeat(200 * 1024);
    let many = vec![
        Message {
            role: "user",
            content: "hi",
        };
        1025
    ];
    let cases: Vec<(RouteInput<'_>, &str)> = vec![
        (
            ask(&long),
            "messages[0].content: 307200 bytes exceeds server.limits.message_bytes (262144)",
        ),
        (
            RouteInput {
                messages: vec![
                    Message {
                        role: "user",
                        content: &third
                    };
                    3
                ],
                ..RouteInput::default()
            },
            "messages: 614400 bytes exceeds server.limits.prompt_bytes (524288)",
        ),
        (
            RouteInput {
                messages: many,
                ..RouteInput::default()
            },
            "messages: 1025 messages exceeds server.limits.messages (1024)",
        ),
    ];
    for (input, expected) in cases {
        match refusal(router.decide(&input, &[], Stop::never(), 0.0)) {
            refusal @ Refusal::TooLarge { .. } => assert_eq!(refusal.to_string(), expected),
            other => panic!("{expected}: {other:?}"),
        }
    }
    let mut named = ask("hello");
    named.routing.tenant = &name;
    match refusal(router.decide(&named, &[], Stop::never(), 0.0)) {
        refusal @ Refusal::InvalidRequest { .. } => assert_eq!(
            refusal.to_string(),
            "routing.tenant: 129 bytes exceeds server.limits.name_bytes (128)"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn echoed_client_strings_are_cut() {
    let router = router(&[]);
    let mut input = ask("hello");
    let stage = "s".repeat(100);
    input.routing.stage = &stage;
    let message = refusal(router.decide(&input, &[], Stop::never(), 0.0)).to_string();
    assert!(
        message.contains(&format!("'{}…'", "s".repeat(64))),
        "{message}"
    );
    assert!(!message.contains(&"s".repeat(65)));
}
