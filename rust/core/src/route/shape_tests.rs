//! The pass against a byte-at-a-time reading of the same rules, and its counts on small texts.

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

/// The rules one byte at a time: the runs found by walking the text, each saving `(n + 1) / 3`.
fn slow(text: &str) -> Shape {
    let bytes = text.as_bytes();
    let mut shape = Shape {
        bytes: bytes.len() as u64,
        ..Shape::default()
    };
    let mut run = 0u64;
    for (i, &b) in bytes.iter().enumerate() {
        let before = |back: usize| i.checked_sub(back).map(|j| bytes[j]);
        let joins_word = |b: u8| b >= 0x80 || b == b'\'' || b.is_ascii_alphabetic();
        let joins_digits = |b: u8| b >= 0x80 || b.is_ascii_digit();
        shape.words += u64::from(b.is_ascii_alphabetic() && !before(1).is_some_and(joins_word));
        shape.digit_runs += u64::from(b.is_ascii_digit() && !before(1).is_some_and(joins_digits));
        shape.punctuation += u64::from(b.is_ascii_punctuation() && b != b'\'');
        shape.non_ascii += u64::from(b >= 0xC0);
        let near_apostrophe = before(1) == Some(b'\'')
            || (before(2) == Some(b'\'') && before(1).is_some_and(|b| b.is_ascii_alphabetic()));
        let in_run = b == b' ' || (PAIRED_LETTERS.contains(&b) && !near_apostrophe);
        if !in_run || b == b' ' {
            shape.run_savings += (run + 1) / 3;
            run = 0;
        }
        run += u64::from(in_run);
    }
    shape.run_savings += (run + 1) / 3;
    shape
}

/// The block-at-a-time pass against `slow`, on text whose classes meet at every offset of a
/// block (and runs that cross blocks in every phase).
#[test]
fn the_pass_agrees_with_a_byte_at_a_time_reading() {
    let pieces = [
        "a", "Z", "7", "'", " ", "\n", "é", "日", "-", "~", "@", "[", "`", "{", "0x", "s", "ll",
        "the", "y", "  ", "'s", "q",
    ];
    let mut text = String::new();
    for round in 0..600 {
        text.push_str(pieces[(round * 7 + round / 3) % pieces.len()]);
        assert_eq!(Shape::of(&text), slow(&text), "{text:?}");
    }
    for length in 0..200 {
        for letter in ["a", " a", "ab", " the"] {
            let text = letter.repeat(length);
            assert_eq!(Shape::of(&text), slow(&text), "{text:?}");
        }
    }
}

#[test]
fn a_run_saves_one_byte_in_three_after_its_first() {
    let savings = |text: &str| Shape::of(text).run_savings;
    // " a" is a run of 2 (1 saved), " quick" a run of 1 then "uick" after the unpaired q.
    assert_eq!(savings(" a"), 1);
    assert_eq!(savings(" the"), 1);
    assert_eq!(savings(" there"), 2);
    assert_eq!(savings(" quick"), 1);
    assert_eq!(savings("The"), 1);
    // Every space starts a run: "hello" and " world".
    assert_eq!(savings("hello world"), 2 + 2);
    // The two letters after an apostrophe are in no run ("don" and "'t" then " go").
    assert_eq!(savings("don't go"), 1 + 1);
    assert_eq!(savings("'llama"), 1);
    // Upper-case letters, digits and other scripts are in none.
    assert_eq!(savings("ABC 123 日本"), 0);
}

#[test]
fn a_span_keeps_its_estimate_between_its_bounds() {
    let span = Shape::of("1 2 3").span(7, Upper::Bytes);
    assert_eq!((span.low, span.high), (3 + 7, 5 + 7));
    assert!(span.low <= span.estimate && span.estimate <= span.high);
    let wider = span.max(TokenSpan::exact(11));
    assert_eq!(
        (wider.low, wider.high, wider.estimate),
        (11, 12, 11.max(span.estimate))
    );
    assert!(!wider.is_exact() && TokenSpan::exact(4).is_exact());
    let prose = Shape::of(" the cat sat on the mat");
    assert_eq!(prose.span(0, Upper::Bytes).high, 23);
    assert_eq!(prose.span(0, Upper::LetterRuns).high, 23 - 6);
}

#[test]
fn both_readings_of_a_block_agree() {
    let mut block = [0u8; BLOCK];
    for round in 0u32..2_000 {
        for (i, b) in block.iter_mut().enumerate() {
            // Every byte value, in many arrangements.
            *b = (round.wrapping_mul(2_654_435_761) >> (i % 24)) as u8 ^ (i as u8).wrapping_mul(37);
        }
        assert_eq!(Classes::of(&block), Classes::one_at_a_time(&block));
    }
    // Every byte value at every position.
    for value in 0..=u8::MAX {
        let block = [value; BLOCK];
        assert_eq!(Classes::of(&block), Classes::one_at_a_time(&block));
    }
}

#[test]
fn empty_text_has_nothing_but_framing() {
    assert_eq!(
        Shape::of("").span(3, Upper::LetterRuns),
        TokenSpan::exact(3)
    );
}
