//! What the fuzz targets share: a small router and a small BPE encoding, built once, and the one
//! rule about what may come out of a request.

use std::sync::{Arc, LazyLock};

use rustc_hash::FxHashMap;
use switchpoint_core::testing::small_router;
use switchpoint_core::{Bpe, Router, Tokenizer};

/// `switchpoint_core::testing`'s small router, counting with the estimate and `BPE`.
pub static ROUTER: LazyLock<Router> =
    LazyLock::new(|| small_router(vec![Tokenizer::Estimate, Tokenizer::Bpe(Arc::clone(&BPE))]));

/// Every byte and a few merges, split at whitespace as tiktoken's patterns roughly do.
pub static BPE: LazyLock<Arc<Bpe>> = LazyLock::new(|| {
    let mut ranks: FxHashMap<Vec<u8>, _> = (0..=u8::MAX).map(|b| (vec![b], u32::from(b))).collect();
    for (rank, merged) in (256..).zip([b"th".as_slice(), b"he", b"the", b"in", b"ing"]) {
        ranks.insert(merged.to_vec(), rank);
    }
    Arc::new(Bpe::new(ranks, r"\s+|\S+").expect("bpe"))
});

/// tiktoken's `cl100k_base` and `o200k_base` (ranks from tiktoken-rs, special tokens left out, as
/// `switchpoint.tokens` leaves them), each as the core counts it (`toktok`) and as the regex and
/// merge count it.
pub static EXACT: LazyLock<[(Bpe, Bpe); 2]> = LazyLock::new(|| {
    const CL100K: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";
    let both = |core: &tiktoken_rs::CoreBPE, pattern: &str| {
        let specials = core.special_tokens();
        let ranks: FxHashMap<Vec<u8>, u32> = (0..200_100)
            .filter_map(|rank| Some((core.decode_bytes(&[rank]).ok()?, rank)))
            .filter(|(bytes, _)| !specials.iter().any(|s| s.as_bytes() == bytes.as_slice()))
            .collect();
        (
            Bpe::new(ranks.clone(), pattern).expect("bpe"),
            Bpe::general(ranks, pattern).expect("bpe"),
        )
    };
    [
        both(tiktoken_rs::cl100k_base_singleton(), CL100K),
        both(
            tiktoken_rs::o200k_base_singleton(),
            tiktoken_rs::O200K_BASE_PAT_STR,
        ),
    ]
});

pub use switchpoint_core::testing::check_outcome;
