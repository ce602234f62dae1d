//! A small router for tests and fuzz targets outside this crate (feature `testing`): three
//! models (`cheap`, `coder`, `big`), capabilities `chat` and `code`, a stage `review` and a
//! fallback chain, enough for every routing level to be reached; and the one rule about what may
//! come out of a request.

use std::sync::Arc;

use crate::{
    AutoRouting, CoreError, LatencyTracker, Limits, ModelSpec, ModelTable, Refusal, Router,
    RouterConfig, Stage, Tokenizer,
};

/// The small router, counting prompts with `encodings`.
///
/// # Panics
/// Never: the config is valid.
pub fn small_router(encodings: Vec<Tokenizer>) -> Router {
    let spec = |name: &str, price: f64, quality: f64, capabilities: u64| ModelSpec {
        name: name.into(),
        input_per_mtok: price,
        output_per_mtok: price * 4.0,
        context_window: 16_000,
        quality,
        ttft_prior_ms: 300.0,
        tpot_prior_ms: 10.0,
        capabilities,
    };
    let models = vec![
        spec("cheap", 0.1, 0.5, 0b01),
        spec("coder", 1.0, 0.7, 0b11),
        spec("big", 10.0, 0.95, 0b11),
    ];
    let tracker = Arc::new(LatencyTracker::new(60.0).expect("half-life"));
    let table = Arc::new(ModelTable::new(models, tracker, 20).expect("table"));
    Router::new(
        table,
        RouterConfig {
            providers: vec!["p".into(); 3],
            capabilities: vec!["chat".into(), "code".into()],
            disabled: vec![],
            strategies: vec![
                ("balanced".into(), [1.0, 1.0, 1.0]),
                ("cost-first".into(), [0.7, 0.15, 0.15]),
                ("quality-first".into(), [0.1, 0.1, 0.8]),
            ],
            default_strategy: "balanced".into(),
            stages: vec![Stage {
                name: "review".into(),
                models: vec!["big".into()],
                strategy: Some("quality-first".into()),
            }],
            fallback_chain: vec!["cheap".into()],
            auto: AutoRouting {
                enabled: true,
                hard_complexity: 0.6,
                easy_complexity: 0.1,
            },
            default_output_tokens: 100,
            encodings,
            limits: Limits::default(),
            quota: None,
            exploration: crate::route::Exploration::default(),
        },
    )
    .expect("router")
}

/// A request's outcome: a decision, or a refusal; an `InvalidRequest` names its field.
///
/// # Panics
/// On anything else: that is what property tests and fuzzers look for.
pub fn check_outcome<T: std::fmt::Debug>(result: &Result<T, CoreError>) {
    match result {
        Err(CoreError::Refused(Refusal::InvalidRequest { field, message })) => {
            assert!(
                !field.is_empty() && !message.is_empty(),
                "{field}: {message}"
            );
        }
        // A decision, or the router's own answers: no eligible model, policy, quota.
        Ok(_) | Err(CoreError::Refused(_)) => {}
        Err(other) => panic!("not a refusal: {other:?}"),
    }
}

/// An encoding's mergeable ranks, read back from tiktoken-rs's encoder (special tokens excluded,
/// as `switchpoint.tokens` excludes them): what Python hands the core, for tests and benches
/// without Python.
pub fn ranks_of(core: &tiktoken_rs::CoreBPE) -> rustc_hash::FxHashMap<Vec<u8>, tiktoken_rs::Rank> {
    let specials = core.special_tokens();
    (0..200_100)
        .filter_map(|rank| Some((core.decode_bytes(&[rank]).ok()?, rank)))
        .filter(|(bytes, _)| !specials.iter().any(|s| s.as_bytes() == bytes.as_slice()))
        .collect()
}
