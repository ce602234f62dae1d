//! tiktoken's merge of one piece into tokens: tiktoken's own loop for a short piece, the same
//! merges in O(n log n) for a long one (`merge_long`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;
use tiktoken_rs::{byte_pair_split, Rank};

use super::STOP_CHECK_EVERY;
use crate::error::{CoreError, Result};
use crate::route::stop::Stop;

/// Pieces up to this many bytes go through tiktoken's loop: below it the quadratic scan over a
/// small vector beats a heap (measured: equal at about 200 bytes on o200k).
const SHORT_PIECE_BYTES: usize = 128;

pub(super) fn count_piece(
    ranks: &FxHashMap<Vec<u8>, Rank>,
    piece: &[u8],
    stop: &Stop,
) -> Result<u64> {
    if ranks.contains_key(piece) {
        return Ok(1);
    }
    if piece.len() <= SHORT_PIECE_BYTES {
        return Ok(byte_pair_split(piece, ranks).len() as u64);
    }
    Ok(merge_long(ranks, piece, stop)?.len() as u64)
}

/// The start of every token `piece` merges into: exactly tiktoken's `_byte_pair_merge` (merge the
/// adjacent pair of lowest rank, the leftmost of equals, until no pair has a rank), in O(n log n).
///
/// The parts form a linked list over byte positions; a min-heap holds (rank, start) of each
/// mergeable pair, packed in one integer, so the lowest rank and then the lowest start, the
/// leftmost, comes out first. An entry goes stale when its part is merged away or its pair
/// changes; the pair of a live part only ever grows, to a different byte string with a different
/// rank, so an entry is current exactly when its part is alive and the rank still matches.
///
/// # Errors
/// `Stopped` once `stop` is set or its deadline has passed; `InvalidArgument` for a piece of
/// 4 GiB or more (a start must fit the packed entry; no request can carry one).
pub fn merge_long(
    ranks: &FxHashMap<Vec<u8>, Rank>,
    piece: &[u8],
    stop: &Stop,
) -> Result<Vec<usize>> {
    let len = piece.len();
    if len < 2 {
        return Ok((0..len).collect());
    }
    if u32::try_from(len).is_err() {
        return Err(CoreError::invalid("text", "a piece of 4 GiB or more"));
    }
    let mut parts: Vec<Part> = (0..len)
        .map(|i| Part {
            next: i + 1,
            prev: i.wrapping_sub(1),
            rank: Rank::MAX,
        })
        .collect();
    let rank_of = |parts: &[Part], start: usize| -> Rank {
        let second = parts[start].next;
        if second >= len {
            return Rank::MAX;
        }
        let end = parts[second].next;
        ranks.get(&piece[start..end]).copied().unwrap_or(Rank::MAX)
    };
    let mut entries = Vec::with_capacity(len);
    for start in 0..len - 1 {
        let rank = ranks
            .get(&piece[start..start + 2])
            .copied()
            .unwrap_or(Rank::MAX);
        parts[start].rank = rank;
        if rank != Rank::MAX {
            entries.push(Reverse(entry(rank, start)));
        }
    }
    let mut heap = BinaryHeap::from(entries);
    let mut merges = 0usize;
    while let Some(Reverse(key)) = heap.pop() {
        let (rank, start) = unpack(key);
        if parts[start].rank != rank {
            continue; // stale: merged away (DEAD) or its pair changed since
        }
        merges += 1;
        if merges % STOP_CHECK_EVERY == 0 {
            stop.check()?;
        }
        let removed = parts[start].next;
        let after = parts[removed].next;
        parts[removed].rank = DEAD;
        parts[start].next = after;
        if after < len {
            parts[after].prev = start;
        }
        let rank = rank_of(&parts, start);
        parts[start].rank = rank;
        if rank != Rank::MAX {
            heap.push(Reverse(entry(rank, start)));
        }
        let before = parts[start].prev;
        if before != usize::MAX {
            let rank = rank_of(&parts, before);
            parts[before].rank = rank;
            if rank != Rank::MAX {
                heap.push(Reverse(entry(rank, before)));
            }
        }
    }
    Ok((0..len).filter(|&i| parts[i].rank != DEAD).collect())
}

/// One part of a piece being merged: its neighbours' starts (`len` past the last, `usize::MAX`
/// before the first) and the rank of the pair it starts (`Rank::MAX`: none, `DEAD`: merged away).
#[derive(Clone, Copy)]
struct Part {
    next: usize,
    prev: usize,
    rank: Rank,
}

/// No BPE has this many ranks: it marks a part merged into its left neighbour.
const DEAD: Rank = Rank::MAX - 1;

fn entry(rank: Rank, start: usize) -> u64 {
    (u64::from(rank) << 32) | start as u64
}

fn unpack(key: u64) -> (Rank, usize) {
    // The high half is a rank and the low half a start below 2^32 (checked by the caller).
    #[allow(clippy::cast_possible_truncation)]
    ((key >> 32) as Rank, (key & u64::from(u32::MAX)) as usize)
}
