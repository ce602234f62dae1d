//! The builtin counter (`toktok`) against the general one (tiktoken's regex and merge) and against
//! tiktoken-rs's own `encode_ordinary`, on both of tiktoken's encodings: the classes the patterns
//! treat apart (contractions, runs of digits and of whitespace, CamelCase, marks, `\r\n`, CJK,
//! emoji, special-token text), arbitrary characters, every Unicode scalar value, and texts long
//! enough to be counted in chunks.

use std::sync::OnceLock;

use proptest::prelude::*;
use tiktoken_rs::{cl100k_base_singleton, o200k_base_singleton, CoreBPE, O200K_BASE_PAT_STR};

use super::*;
use crate::testing::ranks_of;

struct Encoding {
    builtin: Bpe,
    general: Bpe,
    tiktoken: &'static CoreBPE,
}

fn encoding(core: &'static CoreBPE, pattern: &str) -> Encoding {
    let ranks = ranks_of(core);
    let builtin = Bpe::new(ranks.clone(), pattern).unwrap();
    assert_eq!(builtin.counter_name(), "toktok");
    Encoding {
        builtin,
        general: Bpe::general(ranks, pattern).unwrap(),
        tiktoken: core,
    }
}

fn cl100k() -> &'static Encoding {
    static ENCODING: OnceLock<Encoding> = OnceLock::new();
    ENCODING.get_or_init(|| encoding(cl100k_base_singleton(), CL100K_BASE_PATTERN))
}

fn o200k() -> &'static Encoding {
    static ENCODING: OnceLock<Encoding> = OnceLock::new();
    ENCODING.get_or_init(|| encoding(o200k_base_singleton(), O200K_BASE_PATTERN))
}

fn encodings() -> [&'static Encoding; 2] {
    [cl100k(), o200k()]
}

fn count(bpe: &Bpe, text: &str) -> u64 {
    bpe.count(text, Stop::never()).unwrap()
}

/// Units from every class the patterns split on; joined without separators they also make the
/// boundaries between classes.
fn unit() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "don't",
        "DON'T",
        "we'LL",
        "it's",
        "'s",
        "'S",
        "'ve",
        "'re",
        "'d",
        "'m",
        "'ll",
        "'x",
        "XMLHttpRequest",
        "camelCase",
        "ABC",
        "Abc",
        "aBC",
        "ǅungla",
        "Straße",
        "ÀÉÎ",
        "ü",
        "1",
        "12",
        "1234567",
        "٣٤٥٦",
        "Ⅻ",
        "½",
        "²",
        " ",
        "  ",
        "   ",
        "\t",
        "\n",
        "\n\n",
        "\r\n",
        "\r",
        " \n ",
        "\u{a0}",
        "\u{3000}",
        "\u{2028}",
        "\u{85}",
        "\u{b}",
        "\u{c}",
        "e\u{301}",
        "\u{301}",
        "a\u{308}\u{323}",
        "\u{93f}",
        "क्षि",
        "日本語",
        "한국어",
        "中",
        "😀",
        "👍🏽",
        "👨‍👩‍👧",
        "🇫🇷",
        "<|endoftext|>",
        "<|im_start|>",
        "!",
        "...",
        "?!/",
        "/",
        "//",
        "\\",
        "-",
        "_",
        "$",
        "\0",
        "\u{7f}",
        "\u{ad}",
        "\u{200b}",
        "\u{feff}",
    ])
    .prop_map(str::to_owned);
    prop_oneof![
        6 => fixed,
        2 => any::<char>().prop_map(String::from),
        1 => "[a-zA-Z0-9 \\n]{1,12}",
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(unit(), 0..40).prop_map(|units| units.concat())
}

/// Runs of a few units, long enough that the builtin counter cuts them into chunks.
fn long_text() -> impl Strategy<Value = String> {
    prop::collection::vec((unit(), 1..1500usize), 1..8)
        .prop_map(|runs| runs.iter().map(|(unit, n)| unit.repeat(*n)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn builtin_counts_are_the_regex_merges_and_tiktokens(text in text()) {
        for encoding in encodings() {
            let expected = encoding.tiktoken.encode_ordinary(&text).len() as u64;
            prop_assert_eq!(count(&encoding.general, &text), expected);
            prop_assert_eq!(count(&encoding.builtin, &text), expected, "{:?}", text);
        }
    }

    #[test]
    fn builtin_counts_of_arbitrary_characters_are_the_regex_merges(
        text in prop::collection::vec(any::<char>(), 0..200).prop_map(String::from_iter)
    ) {
        for encoding in encodings() {
            prop_assert_eq!(count(&encoding.builtin, &text), count(&encoding.general, &text));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn chunked_counts_are_the_regex_merges(text in long_text()) {
        for encoding in encodings() {
            prop_assert_eq!(count(&encoding.builtin, &text), count(&encoding.general, &text));
        }
    }
}

/// Every Unicode scalar value the pattern engine knows next to each class: `toktok` splits with
/// character tables of its own, so each character is tried where its class decides a split. (The
/// unassigned ones are split by the regex, see `unassigned_chars`: without that, 4,657 of them
/// count differently under cl100k and 4,699 under o200k, all added in a newer Unicode.)
#[test]
fn every_character_counts_as_the_regex_merges_count_it() {
    let chars: Vec<char> = (0..=0x10_FFFF)
        .filter_map(char::from_u32)
        .filter(|c| !unassigned_chars().is_match(c.encode_utf8(&mut [0; 4])))
        .collect();
    let mut block = String::new();
    for encoding in encodings() {
        for chars in chars.chunks(4096) {
            block.clear();
            for &c in chars {
                block.extend([
                    '[', c, '[', ' ', c, 'a', '1', c, 'A', '\n', c, '\u{301}', '\'',
                ]);
            }
            assert_eq!(
                count(&encoding.builtin, &block),
                count(&encoding.general, &block),
                "characters {:#x}..={:#x}",
                chars[0] as u32,
                chars[chars.len() - 1] as u32
            );
        }
    }
}

#[test]
fn characters_newer_than_the_pattern_engine_in_long_text_count_as_tiktoken_counts_them() {
    // Stretches around them go the regex's way, the rest `toktok`'s, chunk after chunk; one of
    // them sits in a long stretch with nowhere to cut.
    let mut text = "plain words, then \u{323b0}[x and more 12 words\n".repeat(300);
    text += &"中文\u{88f}!".repeat(2000);
    text += "tail \u{1e6c0}";
    for encoding in encodings() {
        let expected = encoding.tiktoken.encode_ordinary(&text).len() as u64;
        assert_eq!(count(&encoding.builtin, &text), expected);
    }
}

#[test]
fn chunks_end_where_a_space_or_tab_follows_anything_but_whitespace() {
    assert_eq!(chunk_end("aaaa bbbb", 2), 4);
    assert_eq!(chunk_end("a1\tb", 0), 2);
    assert_eq!(chunk_end("!! ??", 0), 2);
    assert_eq!(chunk_end("é\u{3000} x", 0), 7); // the space follows whitespace: no cut
    assert_eq!(chunk_end("a\n\n b", 0), 5); // nor after a line break
    assert_eq!(chunk_end("ab", 5), 2);
    assert_eq!(chunk_start("ab cd ef", 0, 7), 5);
    assert_eq!(chunk_start("ab cd ef", 0, 5), 5);
    assert_eq!(chunk_start("ab cd ef", 3, 4), 3); // none after the floor
}

#[test]
fn a_long_text_with_nowhere_to_cut_is_still_stopped() {
    let stop = Stop::default();
    stop.stop();
    for text in ["a".repeat(200_000), "中文".repeat(40_000)] {
        assert_eq!(o200k().builtin.count(&text, &stop), Err(CoreError::Stopped));
    }
}

#[test]
fn the_patterns_are_tiktokens() {
    // tiktoken-rs carries o200k's as tiktoken writes it (its cl100k one predates tiktoken's
    // possessive rewrite; the Python side's test checks both against tiktoken itself).
    assert_eq!(O200K_BASE_PATTERN, O200K_BASE_PAT_STR);
}

#[test]
fn a_character_newer_than_the_pattern_engine_is_split_as_tiktoken_splits_it() {
    // U+323B0 (CJK Extension J, Unicode 17): a letter to `toktok`, unassigned to the regex.
    for encoding in encodings() {
        let text = "\u{323b0}[a ";
        let expected = encoding.tiktoken.encode_ordinary(text).len() as u64;
        assert_eq!(count(&encoding.builtin, text), expected);
    }
}

#[test]
fn other_ranks_or_patterns_take_the_general_counter() {
    let mut ranks = ranks_of(o200k_base_singleton());
    assert_eq!(
        Bpe::new(ranks.clone(), CL100K_BASE_PATTERN)
            .unwrap()
            .counter_name(),
        "regex"
    );
    let rank = ranks.remove(b"hello".as_slice()).unwrap();
    ranks.insert(b"hellp".to_vec(), rank);
    assert_eq!(
        Bpe::new(ranks, O200K_BASE_PATTERN).unwrap().counter_name(),
        "regex"
    );
}

#[test]
fn a_stopped_builtin_count_ends_early() {
    let stop = Stop::default();
    stop.stop();
    let text = "word ".repeat(10_000);
    assert_eq!(o200k().builtin.count(&text, &stop), Err(CoreError::Stopped));
    // A text of one chunk never reaches a check: it is cheaper to finish than to look.
    assert!(o200k().builtin.count("hello there", &stop).is_ok());
}
