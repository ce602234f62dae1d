//! `switchpoint.v1.RouteDecision` in protobuf's wire format, written directly.
//!
//! Every Route answer and every Chat response carries a decision; building it field by field as a
//! Python protobuf message was a tenth of a Route call's CPU. The layout mirrors
//! `protos/switchpoint/v1/router.proto` (`RouteDecision`, `Candidate`, `Weights`) and follows the
//! proto3 encoder's rules, so the bytes are the ones protobuf itself would write: fields in number
//! order, scalars at their default value left out, `weights` always present. The Python tests
//! compare this output with the generated message's own serialization.

/// One ranked candidate (`switchpoint.v1.Candidate`).
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateWire<'a> {
    pub model: &'a str,
    pub provider: &'a str,
    pub score: f64,
    pub norm_cost: f64,
    pub norm_latency: f64,
    pub quality: f64,
    pub estimated_cost_usd: f64,
    pub estimated_latency_ms: f64,
    pub latency_observed: bool,
}

/// A routing decision (`switchpoint.v1.RouteDecision`); `model` is `candidates[0].model`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionWire<'a> {
    pub candidates: Vec<CandidateWire<'a>>,
    pub level: i32,
    pub reasons: Vec<&'a str>,
    pub strategy: &'a str,
    /// (cost, latency, quality)
    pub weights: [f64; 3],
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub task_class: &'a str,
    pub complexity: f64,
}

const LEN: u32 = 2;
const VARINT: u32 = 0;
const FIXED64: u32 = 1;

impl DecisionWire<'_> {
    /// The serialized message.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(96 + 160 * self.candidates.len() + 80 * self.reasons.len());
        let chosen = self.candidates.first();
        put_str(&mut out, 1, chosen.map_or("", |c| c.model));
        let mut scratch = Vec::with_capacity(128);
        for candidate in &self.candidates {
            scratch.clear();
            candidate.encode_into(&mut scratch);
            put_bytes(&mut out, 2, &scratch);
        }
        put_varint_field(&mut out, 3, i64::from(self.level) as u64);
        for reason in &self.reasons {
            put_bytes(&mut out, 4, reason.as_bytes());
        }
        put_str(&mut out, 5, self.strategy);
        scratch.clear();
        for (number, weight) in (1..).zip(self.weights) {
            put_f64(&mut scratch, number, weight);
        }
        put_bytes(&mut out, 6, &scratch);
        put_f64(&mut out, 7, chosen.map_or(0.0, |c| c.estimated_cost_usd));
        put_f64(&mut out, 8, chosen.map_or(0.0, |c| c.estimated_latency_ms));
        put_varint_field(&mut out, 9, u64::from(self.input_tokens));
        put_varint_field(&mut out, 10, u64::from(self.output_tokens));
        put_str(&mut out, 11, self.task_class);
        put_f64(&mut out, 12, self.complexity);
        out
    }
}

impl CandidateWire<'_> {
    fn encode_into(&self, out: &mut Vec<u8>) {
        put_str(out, 1, self.model);
        put_str(out, 2, self.provider);
        put_f64(out, 3, self.score);
        put_f64(out, 4, self.norm_cost);
        put_f64(out, 5, self.norm_latency);
        put_f64(out, 6, self.quality);
        put_f64(out, 7, self.estimated_cost_usd);
        put_f64(out, 8, self.estimated_latency_ms);
        put_varint_field(out, 9, u64::from(self.latency_observed));
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_tag(out: &mut Vec<u8>, number: u32, wire_type: u32) {
    put_varint(out, u64::from(number << 3 | wire_type));
}

/// A length-delimited field; repeated and message fields are written even when empty.
fn put_bytes(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    put_tag(out, number, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_str(out: &mut Vec<u8>, number: u32, text: &str) {
    if !text.is_empty() {
        put_bytes(out, number, text.as_bytes());
    }
}

fn put_varint_field(out: &mut Vec<u8>, number: u32, value: u64) {
    if value != 0 {
        put_tag(out, number, VARINT);
        put_varint(out, value);
    }
}

/// proto3 leaves out a double whose bits are all zero; -0.0 is written, as protobuf does.
fn put_f64(out: &mut Vec<u8>, number: u32, value: f64) {
    if value.to_bits() != 0 {
        put_tag(out, number, FIXED64);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(model: &str) -> CandidateWire<'_> {
        CandidateWire {
            model,
            provider: "openai",
            score: 0.5,
            norm_cost: 0.0,
            norm_latency: 1.0,
            quality: 0.9,
            estimated_cost_usd: 0.001,
            estimated_latency_ms: 250.0,
            latency_observed: true,
        }
    }

    #[test]
    fn varints_take_seven_bits_a_byte() {
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xAC, 0x02]);
        out.clear();
        put_varint(&mut out, u64::MAX);
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn defaults_are_left_out_but_weights_are_always_written() {
        let empty = DecisionWire {
            candidates: vec![],
            level: 0,
            reasons: vec![],
            strategy: "",
            weights: [0.0; 3],
            input_tokens: 0,
            output_tokens: 0,
            task_class: "",
            complexity: 0.0,
        };
        // Field 6 (weights), length 0.
        assert_eq!(empty.encode(), [0x32, 0x00]);
    }

    #[test]
    fn the_chosen_model_and_its_estimates_lead_the_message() {
        let decision = DecisionWire {
            candidates: vec![candidate("a"), candidate("b")],
            level: 3,
            reasons: vec!["why"],
            strategy: "balanced",
            weights: [0.5, 0.25, 0.25],
            input_tokens: 12,
            output_tokens: 256,
            task_class: "chat",
            complexity: 0.1,
        };
        let bytes = decision.encode();
        assert_eq!(&bytes[..3], [0x0A, 0x01, b'a']);
        // The first candidate follows, as a length-delimited field 2.
        assert_eq!(bytes[3], 0x12);
        let cost_tag = bytes
            .windows(9)
            .position(|w| w[0] == 0x39 && w[1..] == 0.001f64.to_le_bytes());
        assert!(
            cost_tag.is_some(),
            "estimated_cost_usd of the chosen model is field 7"
        );
        assert!(
            bytes.windows(3).any(|w| w == [0x50, 0x80, 0x02]),
            "output tokens 256 as field 10"
        );
    }

    #[test]
    fn negative_zero_is_written() {
        let mut out = Vec::new();
        put_f64(&mut out, 1, -0.0);
        assert_eq!(out.len(), 9);
    }
}
