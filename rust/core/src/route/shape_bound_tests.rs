//! The letter-run bound against tiktoken's cl100k and o200k counts: it must never be below them,
//! on prose, code, numbers, runs of one letter, letter soup, other scripts, every short string of
//! the characters its reasoning turns on, and arbitrary mixes of them. And the check that decides
//! which encodings have it.

use std::sync::OnceLock;

use proptest::prelude::*;
use tiktoken_rs::{cl100k_base_singleton, o200k_base_singleton, CoreBPE};

use super::*;
use crate::route::tokens::Bpe;
use crate::route::Stop;
use crate::testing::ranks_of;

fn encodings() -> &'static [Bpe; 2] {
    static ENCODINGS: OnceLock<[Bpe; 2]> = OnceLock::new();
    ENCODINGS.get_or_init(|| {
        let built = |core: &CoreBPE, pattern| Bpe::new(ranks_of(core), pattern).unwrap();
        [
            built(cl100k_base_singleton(), CL100K_BASE_PATTERN),
            built(o200k_base_singleton(), O200K_BASE_PATTERN),
        ]
    })
}

fn high(text: &str) -> u64 {
    Shape::of(text).span(0, Upper::LetterRuns).high
}

/// The bound is at least the count of each encoding; returns the larger count.
fn holds(text: &str) -> u64 {
    let bound = high(text);
    let mut most = 0;
    for bpe in encodings() {
        let exact = bpe.count(text, Stop::never()).unwrap();
        assert!(bound >= exact, "{bound} < {exact} for {text:?}");
        most = most.max(exact);
    }
    most
}

const PROSE: &str = "Why is the sky blue? It's Rayleigh scattering: shorter wavelengths of \
    sunlight scatter more off the molecules of the air, so light from every part of the sky is \
    mostly blue. We'll see that sunsets are red for the same reason; they've a longer path. ";

#[test]
fn tiktoken_encodings_have_the_bound_and_others_do_not() {
    for bpe in encodings() {
        assert_eq!(bpe.upper(), Upper::LetterRuns);
    }
    let ranks = ranks_of(o200k_base_singleton());
    // Another pattern may split between a space and a letter.
    let other = Bpe::new(ranks.clone(), r"\S+|\s+").unwrap();
    assert_eq!(other.upper(), Upper::Bytes);
    // A pair missing from the ranks.
    let mut missing = ranks;
    missing.remove(&b"th"[..]);
    let other = Bpe::new(missing, O200K_BASE_PATTERN).unwrap();
    assert_eq!(other.upper(), Upper::Bytes);
}

/// Each letter left out of `PAIRED_LETTERS` misses a pair in cl100k or o200k with a paired
/// letter or itself, so the set cannot simply grow.
#[test]
fn every_letter_left_out_misses_a_pair() {
    let ranks = [
        ranks_of(cl100k_base_singleton()),
        ranks_of(o200k_base_singleton()),
    ];
    let token = |pair: [u8; 2]| ranks.iter().all(|r| r.contains_key(&pair[..]));
    for left_out in (b'a'..=b'z').filter(|b| !PAIRED_LETTERS.contains(b)) {
        let mut with = PAIRED_LETTERS.to_vec();
        with.push(left_out);
        let misses = with
            .iter()
            .any(|&other| !token([left_out, other]) || !token([other, left_out]));
        assert!(misses, "{}", char::from(left_out));
    }
}

#[test]
fn the_bound_holds_on_prose_code_numbers_and_other_scripts() {
    let samples = [
        PROSE,
        "def area(r: float) -> float:\n    return 3.14159 * r**2  # circle's area\n",
        "fn main() { let total: u64 = items.iter().map(|i| i.cost).sum(); println!(\"{total}\"); }\n",
        "Invoice 2024-11-05: 1234567 units at $89.99, total 111,097,530.33 USD. ",
        "naïve café, 日本語のテキスト, Привет мир, emoji 🦊🦊 and tabs\t\tand  spaces ",
        "don't won't y'all O'Brien's 'quoted' '' '' rock'n'roll we'llgo don'tcare 'llama 'sam ",
        "CamelCaseIdentifiersLikeHTTPServerError andXMLHttpRequest\r\n\r\n",
        "  leading   spaces\n\n\tand a trailing one ",
        "e\u{301}te\u{301} — les élèves sont arrivés à l'école",
    ];
    for sample in samples {
        holds(sample);
        holds(&sample.repeat(30));
    }
    holds(&samples.concat().repeat(10));
}

#[test]
fn the_bound_holds_on_runs_of_one_letter() {
    for letter in b'a'..=b'z' {
        let letter = char::from(letter);
        for length in [1, 2, 3, 4, 5, 7, 10, 31, 64, 65, 200, 1000] {
            let run: String = std::iter::repeat_n(letter, length).collect();
            holds(&run);
            holds(&format!(" {run}"));
            holds(&format!("{run} {run}"));
        }
    }
}

#[test]
fn the_bound_holds_on_letter_soup() {
    // A fixed linear congruential sequence: the same soup every run.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |below: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % below
    };
    for alphabet in [
        &b"abcdefghijklmnopqrstuvwxyz"[..],
        PAIRED_LETTERS,
        b"etaoin sh",
    ] {
        for _ in 0..40 {
            let length = 1 + next(400);
            let soup: String = (0..length)
                .map(|_| char::from(alphabet[next(alphabet.len() as u64) as usize]))
                .collect();
            holds(&soup);
        }
    }
}

/// Every string of up to five of the characters the bound's reasoning turns on: letters in and
/// out of the set, a space, an apostrophe and what contractions are made of, an upper-case letter,
/// a digit, a non-ASCII letter and a line break.
#[test]
fn the_bound_holds_on_every_short_string_of_its_characters() {
    let alphabet = [
        "a", "e", "l", "s", "t", "q", "y", " ", "'", "T", "7", "é", "\n",
    ];
    let mut texts = vec![String::new()];
    for _ in 0..5 {
        texts = texts
            .iter()
            .flat_map(|text| alphabet.iter().map(move |c| format!("{text}{c}")))
            .collect();
        for text in &texts {
            holds(text);
        }
    }
}

#[test]
fn english_prose_is_bounded_well_below_its_bytes() {
    let text = PROSE.repeat(40);
    let bytes = text.len() as u64;
    let (bound, exact) = (high(&text), holds(&text));
    // About 0.7 of the bytes (two thirds of its runs, all of its capitals and punctuation), where
    // the bytes bound was all of them.
    assert!(4 * bound < 3 * bytes, "{bound} of {bytes}");
    assert!(bound > exact);
}

fn character() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        " ", "  ", "'", "'s", "'ll", "'T", "\n", "\r\n", "\t", "-", ".", "é", "日", "\u{301}",
        "😀", "7", "42", "A", "Q", "the", "qu", "yz", "\u{a0}", "\u{3000}",
    ])
    .prop_map(str::to_owned);
    prop_oneof![
        4 => "[a-z]{1,6}",
        2 => fixed,
        1 => "[a-zA-Z' ]{1,12}",
        1 => any::<char>().prop_map(String::from),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_bound_holds_on_any_mix_of_its_characters(
        parts in prop::collection::vec(character(), 0..120),
    ) {
        holds(&parts.concat());
    }
}
