//! Prompt tokens as routing needs them: exactly only when the count could change the decision.
//!
//! An exact BPE count costs the most of any step of a long request (docs/benchmarks.md, "Long
//! prompts"), and most decisions do not depend on it: a 100 KB prompt fits a 200k window and
//! overflows a 16k one whatever its exact count. One pass over the bytes gives bounds that hold
//! for every configured BPE encoding and a point estimate between them. The levels run at both
//! bounds; every boundary a count can cross (a context window, `routing.max_cost_usd`, a rate
//! limit's tokens, a budget's dollars) only ever turns a candidate away as the count grows, so
//! when both ends agree on who is eligible, on who the gate refuses and on the choice, every
//! count between them agrees too, and the decision is made on the estimate. Otherwise the prompt
//! is counted exactly (`route/counts.rs` remembers the messages it counted).
//!
//! The bounds, for tiktoken's cl100k and o200k patterns (the encodings `switchpoint/tokens.py`
//! builds), from one pass over the bytes (`route/shape.rs`). Above: every token is at least one
//! byte, and in a run of a space and lower-case letters within one pre-tokenizer piece, where every
//! pair of bytes is a token, BPE leaves no two single bytes side by side, so at most two tokens
//! for every three bytes (`shape.rs` has the proof; each encoding's ranks are checked to have
//! those pairs when it is built, and an encoding without them keeps the bytes). On English prose
//! that is about 0.7 of the bytes. Below: a piece holds the letters of at most one word, and
//! digits only of one run, so the words and digit runs are at most the pieces. A word starts at an
//! ASCII letter that follows neither a letter, an apostrophe (a contraction's piece may hold two
//! words) nor a non-ASCII byte (a letter or mark of another script may join it); a digit run at an
//! ASCII digit that follows neither a digit nor a non-ASCII byte. Both only ever undercount.
//!
//! The estimate weighs the same pass's counts (words, digit runs, ASCII punctuation, non-ASCII
//! characters) with weights fitted to cl100k and o200k counts of English, source code and CJK text;
//! docs/routing.md gives its error.

use std::cell::OnceCell;

use super::request::Message;
use super::shape::{Shape, Upper};
use super::tokens::{chat_framing, Tokenizer};
use super::{Decision, RouteInput, Router, Stop};
use crate::error::{CoreError, Result};
use crate::gate::Shift;
use crate::scoring::Candidate;

/// Prompts of at most this many bytes are counted exactly right away: the count costs less than
/// routing twice more to learn it is not needed.
pub const EXACT_BELOW_BYTES: usize = 1024;

/// What routing knows of a prompt's tokens: exact when `low == high`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSpan {
    pub low: u64,
    pub high: u64,
    /// Between `low` and `high`; what costs and the ranking use when the count is not exact.
    pub estimate: u64,
}

impl TokenSpan {
    pub const fn exact(tokens: u64) -> Self {
        Self {
            low: tokens,
            high: tokens,
            estimate: tokens,
        }
    }

    pub const fn is_exact(&self) -> bool {
        self.low == self.high
    }

    /// The span of the larger of two counts (routing uses the largest count among encodings).
    #[must_use]
    pub fn max(self, other: Self) -> Self {
        let (low, high) = (self.low.max(other.low), self.high.max(other.high));
        Self {
            low,
            high,
            estimate: self.estimate.max(other.estimate).clamp(low, high),
        }
    }
}

/// Bounds and estimate of a whole prompt's count in tiktoken's cl100k or o200k, framing included.
pub fn prompt_span(messages: &[Message<'_>]) -> TokenSpan {
    prompt_shape(messages).span(chat_framing(messages.len()), Upper::LetterRuns)
}

fn prompt_shape(messages: &[Message<'_>]) -> Shape {
    Shape::of_messages(messages.iter().flat_map(|m| [m.role, m.content]))
}

impl Router {
    /// Prompt tokens as routing counts them (the largest count among the models' tokenizers),
    /// exact or bounded: see the module docs.
    ///
    /// # Errors
    /// `Stopped` once `stop` is set or its deadline has passed.
    pub fn token_span(&self, messages: &[Message<'_>], stop: &Stop) -> Result<TokenSpan> {
        let bytes: usize = messages.iter().map(|m| m.content.len()).sum();
        let mut span = TokenSpan::exact(0);
        let mut shape = None;
        for (index, encoding) in self.config.encodings.iter().enumerate() {
            let one = match encoding {
                Tokenizer::Bpe(bpe) if bytes > EXACT_BELOW_BYTES => shape
                    .get_or_insert_with(|| prompt_shape(messages))
                    .span(chat_framing(messages.len()), bpe.upper()),
                _ => TokenSpan::exact(self.counted(index, encoding, messages, stop)?),
            };
            span = span.max(one);
        }
        Ok(span)
    }

    /// The levels on `input`'s token span, under `shift`: on the estimate where the bounds agree
    /// (see the module docs), else on the exact count.
    pub(super) fn first_level_that_applies(
        &self,
        input: &RouteInput<'_>,
        shift: Option<&Shift>,
        stop: &Stop,
        now_s: f64,
    ) -> Result<Decision> {
        let span = self.token_span(&input.messages, stop)?;
        let reading = OnceCell::new();
        if span.is_exact() {
            return self.levels(input, shift, span.low, &reading);
        }
        let at_low = self.levels(input, shift, span.low, &reading);
        let at_high = self.levels(input, shift, span.high, &reading);
        if self.same_outcome(input, &at_low, &at_high, now_s)? {
            let mut decision = self.levels(input, shift, span.estimate, &reading)?;
            decision.reasons.push(format!(
                "input tokens estimated at {} (between {} and {}): no context window, cost cap \
                 or limit lies in between",
                span.estimate, span.low, span.high
            ));
            return Ok(decision);
        }
        let exact = self.exact_tokens(&input.messages, stop)?;
        self.levels(input, shift, exact, &reading)
    }

    /// Whether the decisions at the two ends of a span agree on everything a count can change:
    /// who is eligible, the choice, the fallback chain, and whom the gate refuses; or fail alike.
    fn same_outcome(
        &self,
        input: &RouteInput<'_>,
        low: &Result<Decision>,
        high: &Result<Decision>,
        now_s: f64,
    ) -> Result<bool> {
        let (low, high) = match (low, high) {
            (Ok(low), Ok(high)) => (low, high),
            (Err(CoreError::Refused(a)), Err(CoreError::Refused(b))) => {
                return Ok(std::mem::discriminant(a) == std::mem::discriminant(b));
            }
            _ => return Ok(false),
        };
        let eligible = |d: &Decision| {
            let mut indices: Vec<usize> = d.candidates.iter().map(|c| c.index).collect();
            indices.sort_unstable();
            indices
        };
        if low.level != high.level
            || low.fallback != high.fallback
            || low.candidates.first().map(|c| c.index) != high.candidates.first().map(|c| c.index)
            || eligible(low) != eligible(high)
        {
            return Ok(false);
        }
        let Some(book) = self.config.quota.as_ref().filter(|book| !book.is_empty()) else {
            return Ok(true);
        };
        let routing = &input.routing;
        let refused = |decision: &Decision, candidate: &Candidate| -> Result<bool> {
            let tokens = decision.input_tokens.saturating_add(decision.output_tokens);
            let index = candidate.index;
            Ok(book
                .refusal(
                    routing.tenant,
                    routing.stage,
                    self.name(index),
                    self.provider(index),
                    tokens,
                    candidate.estimated_cost_usd,
                    now_s,
                )?
                .is_some())
        };
        // Both lists hold the same models (checked above), maybe in another order.
        for at_low in &low.candidates {
            let Some(at_high) = high.candidates.iter().find(|c| c.index == at_low.index) else {
                return Ok(false);
            };
            if refused(low, at_low)? != refused(high, at_high)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
