//! The long-piece merge against tiktoken's own (`byte_pair_split`, and `CoreBPE::encode_ordinary`
//! for whole texts) on o200k's real ranks: arbitrary bytes and the shapes that made the quadratic
//! merge slow (runs of one letter, digits, emoji, whitespace, and mixes of them).

use std::sync::OnceLock;

use proptest::prelude::*;
use rustc_hash::FxHashMap;
use tiktoken_rs::{byte_pair_split, o200k_base_singleton, Rank, O200K_BASE_PAT_STR};

use super::stop::Stop;
use super::tokens::{merge_long, Bpe};
use crate::error::CoreError;

/// o200k's mergeable ranks, read back from tiktoken-rs's encoder (its special tokens excluded,
/// as `switchpoint.tokens` excludes them).
fn o200k_ranks() -> &'static FxHashMap<Vec<u8>, Rank> {
    static RANKS: OnceLock<FxHashMap<Vec<u8>, Rank>> = OnceLock::new();
    RANKS.get_or_init(|| {
        let core = o200k_base_singleton();
        let specials = core.special_tokens();
        let mut ranks = FxHashMap::default();
        for rank in 0..200_000 {
            if let Ok(bytes) = core.decode_bytes(&[rank]) {
                if !specials.iter().any(|s| s.as_bytes() == bytes) {
                    ranks.insert(bytes, rank);
                }
            }
        }
        ranks
    })
}

/// o200k counted by the general counter (tiktoken's regex and the merge).
fn o200k() -> &'static Bpe {
    static BPE: OnceLock<Bpe> = OnceLock::new();
    BPE.get_or_init(|| Bpe::general(o200k_ranks().clone(), O200K_BASE_PAT_STR).unwrap())
}

fn tiktoken_starts(piece: &[u8], ranks: &FxHashMap<Vec<u8>, Rank>) -> Vec<usize> {
    let mut at = 0;
    byte_pair_split(piece, ranks)
        .iter()
        .map(|part| {
            let start = at;
            at += part.len();
            start
        })
        .collect()
}

fn same_merge(piece: &[u8]) {
    let ours = merge_long(o200k_ranks(), piece, Stop::never()).unwrap();
    assert_eq!(
        ours,
        tiktoken_starts(piece, o200k_ranks()),
        "piece {piece:?}"
    );
}

/// Text made of the shapes that stress a merge: each unit repeated a few to a few hundred times.
fn adversarial() -> impl Strategy<Value = String> {
    let unit = prop::sample::select(vec![
        "a", "A", "x", "é", "ab", "1", "12", "0", " ", "  ", "\n", "\t", "😀", "👍🏽", "中",
        "x Bob ", "'s", ".", "-", "Bob", "\r\n", "é́",
    ]);
    prop::collection::vec((unit, 1..300usize), 1..6)
        .prop_map(|runs| runs.iter().map(|(unit, n)| unit.repeat(*n)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn long_merge_is_tiktokens_on_arbitrary_bytes(piece in prop::collection::vec(any::<u8>(), 2..400)) {
        same_merge(&piece);
    }

    #[test]
    fn long_merge_is_tiktokens_on_adversarial_pieces(text in adversarial()) {
        if text.len() >= 2 {
            same_merge(text.as_bytes());
        }
    }

    #[test]
    fn counts_are_tiktokens_on_adversarial_text(text in adversarial()) {
        let expected = o200k_base_singleton().encode_ordinary(&text).len() as u64;
        prop_assert_eq!(o200k().count(&text, Stop::never()).unwrap(), expected);
    }
}

#[test]
fn long_runs_count_as_tiktoken_counts_them() {
    for unit in ["a", "7", "😀", " ", "\n", "x Bob ", "ab1 "] {
        let text = unit.repeat(20_000 / unit.len());
        let expected = o200k_base_singleton().encode_ordinary(&text).len() as u64;
        assert_eq!(
            o200k().count(&text, Stop::never()).unwrap(),
            expected,
            "{unit:?}"
        );
    }
}

#[test]
fn a_stopped_count_ends_early() {
    let stop = Stop::default();
    stop.stop();
    let text = "a".repeat(100_000);
    assert_eq!(o200k().count(&text, &stop), Err(CoreError::Stopped));
    // A short text never reaches a check: it is cheaper to finish than to look.
    assert!(o200k().count("hello", &stop).is_ok());
}
