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
//! builds): every pre-tokenizer piece is at least one token and every token at least one byte, so
//! the bytes bound the count above. Below: a piece holds the letters of at most one word, and
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
use super::tokens::{chat_framing, Tokenizer};
use super::{Decision, RouteInput, Router, Stop};
use crate::error::{CoreError, Result};
use crate::gate::Shift;
use crate::scoring::Candidate;

/// Prompts of at most this many bytes are counted exactly right away: the count costs less than
/// routing twice more to learn it is not needed.
pub const EXACT_BELOW_BYTES: usize = 1024;

/// The estimate's weights per word, digit run, ASCII punctuation mark and non-ASCII character.
const PER_WORD: f64 = 1.1;
const PER_DIGIT_RUN: f64 = 1.4;
const PER_PUNCTUATION: f64 = 0.84;
const PER_NON_ASCII: f64 = 1.0;

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

/// What one pass over a text counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    pub bytes: u64,
    pub words: u64,
    pub digit_runs: u64,
    pub punctuation: u64,
    pub non_ascii: u64,
}

impl Shape {
    /// One pass, 64 bytes at a time: a mask per class, bit `i` for byte `i` of the block (the
    /// per-byte loops compile to vector compares).
    pub fn of(text: &str) -> Self {
        let mut shape = Self {
            bytes: text.len() as u64,
            ..Self::default()
        };
        // Whether the byte before the current block joins a word, a digit run.
        let (mut word_before, mut digits_before) = (0u64, 0u64);
        let mut blocks = text.as_bytes().chunks_exact(BLOCK);
        let mut tally = |block: &[u8; BLOCK]| {
            let classes = Classes::of(block);
            let joins_word = classes.letter | classes.apostrophe | classes.non_ascii;
            let joins_digits = classes.digit | classes.non_ascii;
            let words = classes.letter & !((joins_word << 1) | word_before);
            let digit_runs = classes.digit & !((joins_digits << 1) | digits_before);
            word_before = joins_word >> (BLOCK - 1);
            digits_before = joins_digits >> (BLOCK - 1);
            let punctuation =
                classes.graphic & !(classes.letter | classes.digit | classes.apostrophe);
            shape.words += u64::from(words.count_ones());
            shape.digit_runs += u64::from(digit_runs.count_ones());
            shape.punctuation += u64::from(punctuation.count_ones());
            shape.non_ascii += u64::from(classes.lead.count_ones());
        };
        for block in &mut blocks {
            tally(block.try_into().unwrap_or(&[0; BLOCK]));
        }
        let rest = blocks.remainder();
        if !rest.is_empty() {
            // Zero bytes after the text are nothing: no word or run starts at one.
            let mut last = [0u8; BLOCK];
            last[..rest.len()].copy_from_slice(rest);
            tally(&last);
        }
        shape
    }

    fn add(&mut self, other: Self) {
        self.bytes += other.bytes;
        self.words += other.words;
        self.digit_runs += other.digit_runs;
        self.punctuation += other.punctuation;
        self.non_ascii += other.non_ascii;
    }

    /// Bounds and estimate of a BPE count of the text, `framing` tokens added to each.
    pub fn span(&self, framing: u64) -> TokenSpan {
        let low = self.words + self.digit_runs;
        let high = self.bytes;
        // Counts of a prompt under the request limits: far below 2^52, no precision is lost.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let estimate = (PER_WORD * self.words as f64
            + PER_DIGIT_RUN * self.digit_runs as f64
            + PER_PUNCTUATION * self.punctuation as f64
            + PER_NON_ASCII * self.non_ascii as f64)
            .round() as u64;
        TokenSpan {
            low: low + framing,
            high: high + framing,
            estimate: estimate.clamp(low, high) + framing,
        }
    }
}

/// Bounds and estimate of a whole prompt's BPE count, framing included.
pub fn prompt_span(messages: &[Message<'_>]) -> TokenSpan {
    let mut shape = Shape::default();
    for message in messages {
        shape.add(Shape::of(message.role));
        shape.add(Shape::of(message.content));
    }
    shape.span(chat_framing(messages.len()))
}

const BLOCK: usize = 64;

/// Which bytes of a block are what: bit `i` of a mask for byte `i`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Classes {
    letter: u64,
    digit: u64,
    apostrophe: u64,
    /// Printable ASCII other than space.
    graphic: u64,
    non_ascii: u64,
    /// The first byte of a multi-byte character (11xxxxxx).
    lead: u64,
}

impl Classes {
    #[cfg(target_arch = "x86_64")]
    fn of(block: &[u8; BLOCK]) -> Self {
        // SAFETY: SSE2 is part of every x86-64 processor (the target's baseline).
        unsafe { Self::sixteen_at_a_time(block) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse2")]
    fn sixteen_at_a_time(block: &[u8; BLOCK]) -> Self {
        use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_set1_epi8};
        let mut classes = Self::default();
        for (lane, sixteen) in block.chunks_exact(16).enumerate() {
            let v = sse2::load(sixteen);
            // Bit 7 flipped, signed compares order bytes as unsigned ones.
            let signed = sse2::flip(v);
            let folded = sse2::lower_case(signed);
            let at = 16 * lane;
            classes.letter |= sse2::bits(sse2::between(folded, b'a', b'z'), at);
            classes.digit |= sse2::bits(sse2::between(signed, b'0', b'9'), at);
            #[allow(clippy::cast_possible_wrap)]
            let apostrophe = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\'' as i8));
            classes.apostrophe |= sse2::bits(apostrophe, at);
            classes.graphic |= sse2::bits(sse2::between(signed, b'!', b'~'), at);
            classes.non_ascii |= sse2::bits(v, at);
            classes.lead |= sse2::bits(sse2::between(signed, 0xC0, 0xFF), at);
        }
        classes
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn of(block: &[u8; BLOCK]) -> Self {
        Self::one_at_a_time(block)
    }

    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    fn one_at_a_time(block: &[u8; BLOCK]) -> Self {
        let mut classes = Self::default();
        for (i, &b) in block.iter().enumerate() {
            let bit = |test: bool| u64::from(test) << i;
            // Setting bit 5 lower-cases ASCII letters and moves nothing else into a..z.
            classes.letter |= bit((b | 0x20).wrapping_sub(b'a') < 26);
            classes.digit |= bit(b.wrapping_sub(b'0') < 10);
            classes.apostrophe |= bit(b == b'\'');
            classes.graphic |= bit(b.wrapping_sub(b'!') < 94);
            classes.non_ascii |= bit(b >= 0x80);
            classes.lead |= bit(b >= 0xC0);
        }
        classes
    }
}

/// Sixteen bytes at a time, in the compares every x86-64 processor has.
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpgt_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8,
        _mm_or_si128, _mm_set1_epi8, _mm_xor_si128,
    };

    #[target_feature(enable = "sse2")]
    pub fn load(sixteen: &[u8]) -> __m128i {
        assert!(sixteen.len() >= 16);
        // SAFETY: 16 readable bytes (checked above); the load needs no alignment.
        unsafe { _mm_loadu_si128(sixteen.as_ptr().cast()) }
    }

    #[target_feature(enable = "sse2")]
    pub fn flip(v: __m128i) -> __m128i {
        _mm_xor_si128(v, _mm_set1_epi8(i8::MIN))
    }

    /// Of flipped bytes: bit 5 set, which lower-cases ASCII letters.
    #[target_feature(enable = "sse2")]
    pub fn lower_case(flipped: __m128i) -> __m128i {
        _mm_or_si128(flipped, _mm_set1_epi8(0x20))
    }

    /// Of flipped bytes: those in `low..=high` (unsigned), all ones.
    #[target_feature(enable = "sse2")]
    #[allow(clippy::cast_possible_wrap)]
    pub fn between(flipped: __m128i, low: u8, high: u8) -> __m128i {
        let at_least = _mm_cmpgt_epi8(flipped, _mm_set1_epi8((low ^ 0x80) as i8 - 1));
        let at_most = if high == u8::MAX {
            _mm_set1_epi8(-1)
        } else {
            _mm_cmplt_epi8(flipped, _mm_set1_epi8((high ^ 0x80) as i8 + 1))
        };
        _mm_and_si128(at_least, at_most)
    }

    /// Bit 7 of each byte, at bits `at..at + 16`.
    #[target_feature(enable = "sse2")]
    #[allow(clippy::cast_sign_loss)]
    pub fn bits(v: __m128i, at: usize) -> u64 {
        u64::from(_mm_movemask_epi8(v) as u16) << at
    }
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
        let mut bounded = None;
        for (index, encoding) in self.config.encodings.iter().enumerate() {
            let one = match encoding {
                Tokenizer::Bpe(_) if bytes > EXACT_BELOW_BYTES => {
                    *bounded.get_or_insert_with(|| prompt_span(messages))
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_digits_and_punctuation_are_counted_in_one_pass() {
        let shape = Shape::of("It's 12345 o'clock, naïve café!");
        assert_eq!(shape.bytes, 33);
        // "It's", "o'clock", "naïve" (the ï joins), "café".
        assert_eq!(shape.words, 4);
        assert_eq!(shape.digit_runs, 1);
        assert_eq!(shape.punctuation, 2);
        assert_eq!(shape.non_ascii, 2);
    }

    /// The eight-at-a-time pass against the same rules one byte at a time, on text whose classes
    /// meet at every offset of a chunk.
    #[test]
    fn the_pass_agrees_with_a_byte_at_a_time_reading() {
        fn slow(text: &str) -> Shape {
            let bytes = text.as_bytes();
            let mut shape = Shape {
                bytes: bytes.len() as u64,
                ..Shape::default()
            };
            for (i, &b) in bytes.iter().enumerate() {
                let before = i.checked_sub(1).map(|j| bytes[j]);
                let joins_word = |b: u8| b >= 0x80 || b == b'\'' || b.is_ascii_alphabetic();
                let joins_digits = |b: u8| b >= 0x80 || b.is_ascii_digit();
                shape.words +=
                    u64::from(b.is_ascii_alphabetic() && !before.is_some_and(joins_word));
                shape.digit_runs +=
                    u64::from(b.is_ascii_digit() && !before.is_some_and(joins_digits));
                shape.punctuation += u64::from(b.is_ascii_punctuation() && b != b'\'');
                shape.non_ascii += u64::from(b >= 0xC0);
            }
            shape
        }
        let pieces = [
            "a", "Z", "7", "'", " ", "\n", "é", "日", "-", "~", "@", "[", "`", "{", "0x",
        ];
        let mut text = String::new();
        for round in 0..400 {
            text.push_str(pieces[(round * 7 + round / 3) % pieces.len()]);
            assert_eq!(Shape::of(&text), slow(&text), "{text:?}");
        }
    }

    #[test]
    fn a_span_keeps_its_estimate_between_its_bounds() {
        let span = Shape::of("1 2 3").span(7);
        assert_eq!((span.low, span.high), (3 + 7, 5 + 7));
        assert!(span.low <= span.estimate && span.estimate <= span.high);
        let wider = span.max(TokenSpan::exact(11));
        assert_eq!(
            (wider.low, wider.high, wider.estimate),
            (11, 12, 11.max(span.estimate))
        );
        assert!(!wider.is_exact() && TokenSpan::exact(4).is_exact());
    }

    #[test]
    fn both_readings_of_a_block_agree() {
        let mut block = [0u8; BLOCK];
        for round in 0u32..2_000 {
            for (i, b) in block.iter_mut().enumerate() {
                // Every byte value, in many arrangements.
                *b = (round.wrapping_mul(2_654_435_761) >> (i % 24)) as u8
                    ^ (i as u8).wrapping_mul(37);
            }
            assert_eq!(Classes::of(&block), Classes::one_at_a_time(&block));
        }
    }

    #[test]
    fn empty_text_has_nothing_but_framing() {
        assert_eq!(Shape::of("").span(3), TokenSpan::exact(3));
    }
}
