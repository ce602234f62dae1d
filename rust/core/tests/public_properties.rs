//! The core's public entry points under arbitrary input: the `RouteRequest` decoder, request
//! validation, the router's decision, token counting and the classifier never panic, refuse
//! only by naming a field, and the decoder reads back what a protobuf encoder wrote however the
//! encoding varies (unknown fields, groups, non-minimal tags, split sub-messages).
//!
//! `PROPTEST_CASES` sets the number of cases (256 by default; `make fuzz` runs many more).

use std::sync::Arc;

use proptest::prelude::*;
use rustc_hash::FxHashMap;
use switchpoint_core::testing::{check_outcome, small_router};
use switchpoint_core::{
    classify, route_request, Bpe, CoreError, Limits, Message, Params, Refusal, RouteInput, Router,
    RoutingOptions, Stop, Tokenizer,
};

// ---- a protobuf encoder for RouteRequest, the reference the decoder is held to ----

fn varint(mut value: u64, width: usize, out: &mut Vec<u8>) {
    let start = out.len();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 && out.len() + 1 - start >= width {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// How a writer may vary the bytes without changing the message.
#[derive(Debug, Clone)]
struct Encoding {
    /// Tag widths (1 to 5 bytes all read the same), used in turn.
    tag_widths: Vec<usize>,
    /// Unknown fields and groups written before each field, in turn.
    noise: Vec<Vec<u8>>,
}

struct Writer<'e> {
    encoding: &'e Encoding,
    fields: usize,
    out: Vec<u8>,
}

impl Writer<'_> {
    fn tag(&mut self, number: u64, wire_type: u64) {
        let turn = self.fields;
        self.fields += 1;
        if !self.encoding.noise.is_empty() {
            let noise = &self.encoding.noise[turn % self.encoding.noise.len()];
            self.out.extend_from_slice(noise);
        }
        let width = self.encoding.tag_widths[turn % self.encoding.tag_widths.len()];
        varint(number << 3 | wire_type, width, &mut self.out);
    }

    fn bytes(&mut self, number: u64, value: &[u8]) {
        self.tag(number, 2);
        varint(value.len() as u64, 0, &mut self.out);
        self.out.extend_from_slice(value);
    }

    fn text(&mut self, number: u64, value: &str) {
        if !value.is_empty() {
            self.bytes(number, value.as_bytes());
        }
    }

    fn double(&mut self, number: u64, value: f64) {
        self.tag(number, 1);
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    fn varint_field(&mut self, number: u64, value: u64) {
        self.tag(number, 0);
        varint(value, 0, &mut self.out);
    }

    fn nested(&mut self, number: u64, write: impl FnOnce(&mut Writer<'_>)) {
        let mut inner = Writer {
            encoding: self.encoding,
            fields: self.fields,
            out: Vec::new(),
        };
        write(&mut inner);
        self.fields = inner.fields;
        let body = inner.out;
        self.bytes(number, &body);
    }
}

fn encode(input: &RouteInput<'_>, encoding: &Encoding) -> Vec<u8> {
    let mut w = Writer {
        encoding,
        fields: 0,
        out: Vec::new(),
    };
    for message in &input.messages {
        w.nested(1, |m| {
            m.text(1, message.role);
            m.text(2, message.content);
        });
    }
    let routing = &input.routing;
    w.nested(2, |r| {
        for model in &routing.models {
            r.bytes(1, model.as_bytes());
        }
        r.text(2, routing.stage);
        r.text(3, routing.strategy);
        if let Some([cost, latency, quality]) = routing.weights {
            r.nested(4, |w| {
                w.double(1, cost);
                w.double(2, latency);
                w.double(3, quality);
            });
        }
        r.text(5, routing.tenant);
        // int32: negative values as ten bytes, sign-extended.
        r.varint_field(6, routing.priority as u64);
        for capability in &routing.capabilities {
            r.bytes(7, capability.as_bytes());
        }
        if let Some(cost) = routing.max_cost_usd {
            r.double(8, cost);
        }
        r.varint_field(9, u64::from(routing.hedge));
    });
    // params split in two: protobuf merges a message field that appears twice.
    let params = &input.params;
    w.nested(3, |p| {
        if let Some(max_tokens) = params.max_tokens {
            p.varint_field(1, max_tokens as u64);
        }
        if let Some(temperature) = params.temperature {
            p.double(2, temperature);
        }
    });
    w.nested(3, |p| {
        if let Some(top_p) = params.top_p {
            p.double(3, top_p);
        }
        for stop in &params.stop {
            p.bytes(4, stop.as_bytes());
        }
    });
    w.out
}

// ---- strategies ----

fn words() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "user",
            "assistant",
            "system",
            "cheap",
            "coder",
            "big",
            "review",
            "balanced",
            "code",
            " ",
            "",
        ])
        .prop_map(str::to_owned),
        ".{0,12}",
    ]
}

fn numbers() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::num::f64::ANY,
        prop::sample::select(vec![0.0, 0.5, 1.0, 2.0, -1.0, f64::INFINITY]),
    ]
}

/// The owned parts of a `RouteInput`, which borrows its strings.
#[derive(Debug, Clone)]
struct Owned {
    messages: Vec<(String, String)>,
    models: Vec<String>,
    stage: String,
    strategy: String,
    weights: Option<[f64; 3]>,
    tenant: String,
    priority: i32,
    capabilities: Vec<String>,
    max_cost_usd: Option<f64>,
    hedge: bool,
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Vec<String>,
}

impl Owned {
    fn input(&self) -> RouteInput<'_> {
        RouteInput {
            messages: self
                .messages
                .iter()
                .map(|(role, content)| Message { role, content })
                .collect(),
            routing: RoutingOptions {
                models: self.models.iter().map(String::as_str).collect(),
                stage: &self.stage,
                strategy: &self.strategy,
                weights: self.weights,
                tenant: &self.tenant,
                priority: i64::from(self.priority),
                capabilities: self.capabilities.iter().map(String::as_str).collect(),
                max_cost_usd: self.max_cost_usd,
                hedge: self.hedge,
            },
            params: Params {
                max_tokens: self.max_tokens.map(i64::from),
                temperature: self.temperature,
                top_p: self.top_p,
                stop: self.stop.iter().map(String::as_str).collect(),
            },
            ..RouteInput::default()
        }
    }
}

fn requests() -> impl Strategy<Value = Owned> {
    let messages = prop::collection::vec((words(), words()), 0..4);
    let routing = (
        prop::collection::vec(words(), 0..3),
        words(),
        words(),
        prop::option::of([numbers(), numbers(), numbers()]),
        words(),
        prop_oneof![0..4i32, any::<i32>()],
        prop::collection::vec(words(), 0..3),
        prop::option::of(numbers()),
        any::<bool>(),
    );
    let params = (
        prop::option::of(prop_oneof![0..3u32, any::<u32>()]),
        prop::option::of(numbers()),
        prop::option::of(numbers()),
        prop::collection::vec(words(), 0..3),
    );
    (messages, routing, params).prop_map(|(messages, routing, params)| Owned {
        messages,
        models: routing.0,
        stage: routing.1,
        strategy: routing.2,
        weights: routing.3,
        tenant: routing.4,
        priority: routing.5,
        capabilities: routing.6,
        max_cost_usd: routing.7,
        hedge: routing.8,
        max_tokens: params.0,
        temperature: params.1,
        top_p: params.2,
        stop: params.3,
    })
}

/// Unknown fields protobuf skips: a varint, a fixed32, a length-delimited, a group holding a
/// nested group and field number 0, all under numbers `RouteRequest`'s messages do not use.
fn noise() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        vec![],
        vec![0x78, 0x96, 0x01],
        vec![0x7d, 1, 2, 3, 4],
        vec![0x7a, 2, b'h', b'i'],
        vec![0x7b, 0x83, 0x01, 0x00, 0x05, 0x84, 0x01, 0x7c],
    ])
}

fn encodings() -> impl Strategy<Value = Encoding> {
    (
        prop::collection::vec(1..=5usize, 1..4),
        prop::collection::vec(noise(), 0..3),
    )
        .prop_map(|(tag_widths, noise)| Encoding { tag_widths, noise })
}

fn router() -> Router {
    small_router(vec![Tokenizer::Estimate])
}

fn assert_names_a_field(result: &Result<impl std::fmt::Debug, CoreError>) {
    check_outcome(result);
}

/// Every byte, and three merges ("th", "he", "the"), split at whitespace.
fn small_bpe() -> Bpe {
    let mut ranks: FxHashMap<Vec<u8>, _> = (0..=u8::MAX).map(|b| (vec![b], u32::from(b))).collect();
    for (rank, merged) in [b"th".as_slice(), b"he", b"the"].into_iter().enumerate() {
        ranks.insert(merged.to_vec(), 256 + rank as u32);
    }
    Bpe::new(ranks, r"\s+|\S+").unwrap()
}

proptest! {
    #[test]
    fn the_decoder_reads_back_what_was_encoded_however_it_was_written(
        owned in requests(),
        encoding in encodings(),
    ) {
        let input = owned.input();
        let bytes = encode(&input, &encoding);
        // Debug, not ==: a NaN read back is the NaN written.
        prop_assert_eq!(format!("{:?}", route_request(&bytes).unwrap().input()), format!("{input:?}"));
    }

    #[test]
    fn any_bytes_are_read_or_refused_as_not_a_route_request(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        match route_request(&bytes) {
            Ok(decoded) => assert_names_a_field(&decoded.input().validate(&Limits::default())),
            Err(CoreError::Refused(Refusal::InvalidRequest { field, .. })) => {
                prop_assert_eq!(field, "request");
            }
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn damaged_requests_never_panic_and_refuse_only_naming_the_request(
        owned in requests(),
        encoding in encodings(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<bool>(),
    ) {
        let mut bytes = encode(&owned.input(), &encoding);
        if !bytes.is_empty() {
            let at = at.index(bytes.len());
            if cut { bytes.truncate(at) } else { bytes[at] = byte }
        }
        if let Err(error) = route_request(&bytes) {
            let is_request = matches!(
                &error,
                CoreError::Refused(Refusal::InvalidRequest { field, .. }) if field == "request"
            );
            prop_assert!(is_request, "{:?}", error);
        }
    }

    #[test]
    fn every_request_is_decided_or_refused_naming_a_field(owned in requests()) {
        let router = router();
        let input = owned.input();
        let decided = router.decide(&input, &[], Stop::never(), 0.0);
        assert_names_a_field(&decided);
        if let Ok(decision) = decided {
            prop_assert!(input.validate(&Limits::default()).is_ok());
            prop_assert!(!decision.candidates.is_empty() || !decision.fallback.is_empty());
            prop_assert!(!router.encode(&decision).is_empty());
        }
    }

    #[test]
    fn counting_and_classifying_any_text_is_bounded(
        text in prop_oneof![".{0,200}", "[the ]{0,200}"],
        role in words(),
    ) {
        let estimate = Tokenizer::Estimate.count_text(&text, Stop::never()).unwrap();
        prop_assert!(estimate <= text.len() as u64);
        let bpe = Tokenizer::Bpe(Arc::new(small_bpe())).count_text(&text, Stop::never()).unwrap();
        prop_assert!(bpe <= text.len() as u64 && (bpe > 0) != text.is_empty(), "{bpe}");
        let messages = [Message { role: &role, content: &text }];
        prop_assert!(Tokenizer::Estimate.count_messages(&messages, Stop::never()).unwrap() >= estimate);
        let class = classify(&text, text.chars().count());
        prop_assert!((0.0..=1.0).contains(&class.complexity), "{}", class.complexity);
        let confidence = class.confidence(0.25, 0.6);
        prop_assert!((0.4..=1.0).contains(&confidence), "{confidence}");
    }
}
