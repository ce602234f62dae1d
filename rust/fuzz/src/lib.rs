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

pub use switchpoint_core::testing::check_outcome;
