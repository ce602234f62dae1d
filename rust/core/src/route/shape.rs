//! One pass over a prompt's bytes, 64 at a time, for what bounds and estimates its BPE count
//! (`route/span.rs` says how routing uses them).
//!
//! The low bound's words and digit runs are in the module docs of `span.rs`. The high bound is the
//! bytes (every token is at least one byte) less what letter runs save. tiktoken's BPE merges the
//! adjacent pair of parts whose concatenation has the lowest rank until no pair has one, so if
//! every pair of bytes of a set is a token, the final tokens of a stretch of such bytes within one
//! pre-tokenizer piece hold no two single bytes side by side. With `s` single-byte and `m` longer
//! tokens over `n` bytes, `s <= m + 1` and `s + 2m <= n`, so at most `(2n + 1) / 3` tokens (rounded
//! down), which is `n - (n + 1) / 3`: the bytes less those at offsets 1, 4, 7... of the run. A
//! token holding a byte outside every run is paid for by that byte, so the count is at most the
//! bytes less, for every run, one byte in three after its first.
//!
//! The set is a space and the lower-case letters of `PAIRED_LETTERS`: for tiktoken's cl100k and
//! o200k every pair of those letters, and a space before each, is a token (`letter_runs_merge`
//! checks it against the loaded ranks; an encoding that fails it keeps the bytes). A run is the
//! stretch a space or such a letter starts; every space starts one, and a letter that follows
//! neither a space nor such a letter does. A run must lie within one piece, and does under both
//! patterns: a piece that holds a lower-case letter holds every lower-case letter after it (their
//! letter classes are greedy; o200k splits only before an upper-case letter, not in the set), and a
//! space right before a letter is always that letter's piece's prefix (the word alternative comes
//! first, and no other piece ends in a space before a letter). Contractions are the one split
//! between two lower-case letters (cl100k's `'ll` then `ama` in `'llama`, o200k's `don't` then
//! `care` in `don'tcare`), so the first two letters after an apostrophe are never in a run.

use rustc_hash::FxHashMap;
use tiktoken_rs::Rank;

use super::span::TokenSpan;
use super::tokens::{CL100K_BASE_PATTERN, O200K_BASE_PATTERN};

/// The lower-case letters whose every pair, and a space before each, is a token of cl100k and of
/// o200k. The others (j, k, q, v, x, y, z) each miss a pair in one of them, `bq`, `gk`, `jv`,
/// `wv`, `yf`...; these seven are the least common set that leaves no missing pair.
pub const PAIRED_LETTERS: &[u8; 19] = b"abcdefghilmnoprstuw";

/// The estimate's weights per word, digit run, ASCII punctuation mark and non-ASCII character.
const PER_WORD: f64 = 1.1;
const PER_DIGIT_RUN: f64 = 1.4;
const PER_PUNCTUATION: f64 = 0.84;
const PER_NON_ASCII: f64 = 1.0;

/// Which high bound an encoding's count has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upper {
    /// Every token is at least one byte.
    Bytes,
    /// The bytes less what letter runs save (module docs): tiktoken's patterns, with ranks that
    /// hold every pair of `PAIRED_LETTERS` and a space before each.
    LetterRuns,
}

/// Whether an encoding of these ranks and this pre-tokenizing pattern has the letter-run bound.
pub fn letter_runs_merge(ranks: &FxHashMap<Vec<u8>, Rank>, pattern: &str) -> Upper {
    let tiktoken_pattern = matches!(pattern, CL100K_BASE_PATTERN | O200K_BASE_PATTERN);
    let every_pair = PAIRED_LETTERS.iter().all(|&second| {
        ranks.contains_key(&[b' ', second][..])
            && PAIRED_LETTERS
                .iter()
                .all(|&first| ranks.contains_key(&[first, second][..]))
    });
    if tiktoken_pattern && every_pair {
        Upper::LetterRuns
    } else {
        Upper::Bytes
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
    /// What letter runs take off the bytes bound: `(n + 1) / 3` for a run of `n` bytes.
    pub run_savings: u64,
}

/// Bits `i` of a block with `i % 3 == k`, at `PHASES[k]`.
const PHASES: [u64; 3] = [
    0x9249_2492_4924_9249,
    0x9249_2492_4924_9249 << 1,
    0x9249_2492_4924_9249 << 2,
];

/// What a block leaves to the next one: whether its last byte joins a word or a digit run, is an
/// apostrophe, is the first letter after one, is in a letter run, or is past a run's first byte.
#[derive(Debug, Default)]
struct Carry {
    word: u64,
    digits: u64,
    apostrophe: u64,
    first_after_apostrophe: u64,
    run: u64,
    /// Bit `k` set: the last byte is in a tail whose savings are at phase `k` of the next block.
    tail_phase: u64,
}

impl Shape {
    /// One pass, 64 bytes at a time: a mask per class, bit `i` for byte `i` of the block (the
    /// per-byte loops compile to vector compares).
    pub fn of(text: &str) -> Self {
        let mut shape = Self {
            bytes: text.len() as u64,
            ..Self::default()
        };
        let mut carry = Carry::default();
        let mut blocks = text.as_bytes().chunks_exact(BLOCK);
        for block in &mut blocks {
            shape.tally(block.try_into().unwrap_or(&[0; BLOCK]), &mut carry);
        }
        let rest = blocks.remainder();
        if !rest.is_empty() {
            // Zero bytes after the text are nothing: no word, run or digit run starts at one.
            let mut last = [0u8; BLOCK];
            last[..rest.len()].copy_from_slice(rest);
            shape.tally(&last, &mut carry);
        }
        shape
    }

    fn tally(&mut self, block: &[u8; BLOCK], carry: &mut Carry) {
        let classes = Classes::of(block);
        let joins_word = classes.letter | classes.apostrophe | classes.non_ascii;
        let joins_digits = classes.digit | classes.non_ascii;
        let words = classes.letter & !((joins_word << 1) | carry.word);
        let digit_runs = classes.digit & !((joins_digits << 1) | carry.digits);
        let punctuation = classes.graphic & !(classes.letter | classes.digit | classes.apostrophe);
        self.words += u64::from(words.count_ones());
        self.digit_runs += u64::from(digit_runs.count_ones());
        self.punctuation += u64::from(punctuation.count_ones());
        self.non_ascii += u64::from(classes.lead.count_ones());
        self.run_savings += u64::from(run_savings(&classes, carry).count_ones());
        carry.word = joins_word >> (BLOCK - 1);
        carry.digits = joins_digits >> (BLOCK - 1);
        carry.apostrophe = classes.apostrophe >> (BLOCK - 1);
    }

    fn add(&mut self, other: Self) {
        self.bytes += other.bytes;
        self.words += other.words;
        self.digit_runs += other.digit_runs;
        self.punctuation += other.punctuation;
        self.non_ascii += other.non_ascii;
        self.run_savings += other.run_savings;
    }

    /// The shape of a whole prompt's roles and contents.
    pub fn of_messages<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut shape = Self::default();
        for text in texts {
            shape.add(Self::of(text));
        }
        shape
    }

    /// Bounds and estimate of a BPE count of the text, `framing` tokens added to each.
    pub fn span(&self, framing: u64, upper: Upper) -> TokenSpan {
        let low = self.words + self.digit_runs;
        let high = match upper {
            Upper::Bytes => self.bytes,
            Upper::LetterRuns => self.bytes - self.run_savings,
        };
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

/// The bytes of a block at offsets 1, 4, 7... of their letter runs (module docs). A run's bytes
/// after its first form a stretch of their own (its tail); adding a tail's first bit to the tails
/// carries through that tail alone, which picks it out, and the phase of its first bit says which
/// of its bits are at those offsets. A tail that goes on from the block before keeps its phase.
fn run_savings(classes: &Classes, carry: &mut Carry) -> u64 {
    let after_apostrophe = (classes.apostrophe << 1) | carry.apostrophe;
    let first_after = after_apostrophe & classes.letter;
    let second_after = (first_after << 1) | carry.first_after_apostrophe;
    let run = classes.space | (classes.paired_letter & !(after_apostrophe | second_after));
    let starts = classes.space | (run & !((run << 1) | carry.run));
    let tail = run & !starts;
    let going_on = tail & u64::from(carry.tail_phase != 0);
    let tail_starts = tail & !((tail << 1) | going_on);
    let tails_of = |phase: usize| {
        let firsts = (tail_starts & PHASES[phase]) | (going_on & (carry.tail_phase >> phase));
        (tail.wrapping_add(firsts) ^ tail) & tail
    };
    let (one, two) = (tails_of(1), tails_of(2));
    let zero = tail & !(one | two);
    carry.first_after_apostrophe = first_after >> (BLOCK - 1);
    carry.run = run >> (BLOCK - 1);
    // Bit 64 is bit 0 of the next block, and 64 % 3 == 1: phase k here is phase k - 1 there.
    let last = |tails: u64| tails >> (BLOCK - 1);
    carry.tail_phase = (last(zero) << 2) | last(one) | (last(two) << 1);
    (zero & PHASES[0]) | (one & PHASES[1]) | (two & PHASES[2])
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
    space: u64,
    /// The lower-case letters of `PAIRED_LETTERS`.
    paired_letter: u64,
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
        use std::arch::x86_64::{
            _mm_and_si128, _mm_andnot_si128, _mm_cmpeq_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        #[allow(clippy::cast_possible_wrap)]
        let is = |v, byte: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(byte as i8));
        let mut classes = Self::default();
        for (lane, sixteen) in block.chunks_exact(16).enumerate() {
            let v = sse2::load(sixteen);
            // Bit 7 flipped, signed compares order bytes as unsigned ones.
            let signed = sse2::flip(v);
            let folded = sse2::lower_case(signed);
            let at = 16 * lane;
            let letter = sse2::between(folded, b'a', b'z');
            classes.letter |= sse2::bits(letter, at);
            classes.digit |= sse2::bits(sse2::between(signed, b'0', b'9'), at);
            classes.apostrophe |= sse2::bits(is(v, b'\''), at);
            classes.graphic |= sse2::bits(sse2::between(signed, b'!', b'~'), at);
            classes.non_ascii |= sse2::bits(v, at);
            classes.lead |= sse2::bits(sse2::between(signed, 0xC0, 0xFF), at);
            classes.space |= sse2::bits(is(v, b' '), at);
            // Lower-case letters but j, k (0x6A, 0x6B: one compare with bit 0 cleared), q, v and
            // x, y, z (the letters past w): `PAIRED_LETTERS`.
            let lower = _mm_and_si128(letter, sse2::above(signed, b'`'));
            let unpaired = _mm_or_si128(
                _mm_or_si128(is(_mm_and_si128(v, _mm_set1_epi8(!1)), b'j'), is(v, b'q')),
                _mm_or_si128(is(v, b'v'), sse2::above(signed, b'w')),
            );
            classes.paired_letter |= sse2::bits(_mm_andnot_si128(unpaired, lower), at);
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
            classes.space |= bit(b == b' ');
            classes.paired_letter |= bit(PAIRED_LETTERS.contains(&b));
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

    /// Of flipped bytes: those above `low` (unsigned), all ones.
    #[target_feature(enable = "sse2")]
    #[allow(clippy::cast_possible_wrap)]
    pub fn above(flipped: __m128i, low: u8) -> __m128i {
        _mm_cmpgt_epi8(flipped, _mm_set1_epi8((low ^ 0x80) as i8))
    }

    /// Bit 7 of each byte, at bits `at..at + 16`.
    #[target_feature(enable = "sse2")]
    #[allow(clippy::cast_sign_loss)]
    pub fn bits(v: __m128i, at: usize) -> u64 {
        u64::from(_mm_movemask_epi8(v) as u16) << at
    }
}

#[cfg(test)]
#[path = "shape_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "shape_bound_tests.rs"]
mod bound_tests;
