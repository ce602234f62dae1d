//! Where prost and upb (the parser behind Python's protobuf) read protobuf's wire format
//! differently, upb's rules, applied to the bytes before prost reads them.
//!
//! One pass over the request, following `RouteRequest`'s tree. It refuses what upb refuses and
//! prost would read:
//! - a tag or a length of more than five bytes (prost reads up to ten);
//! - nesting past 100 levels, sub-messages and groups alike (prost counts every field inside a
//!   group as a level too, so it is built without its own limit, `no-recursion-limit`, and this
//!   bound keeps its recursion short).
//!
//! And it rewrites, in a copy, what upb reads and prost refuses, each a thing upb ignores, into
//! something prost ignores the same way, keeping every length:
//! - a known field with an unexpected wire type: upb skips it as unknown, prost fails; its tag is
//!   given field number 15, which no message of the tree has (its start and end tags, for a
//!   group);
//! - field number 0 inside a group: upb reads it like any other, prost fails; renumbered 15 too;
//! - a ten-byte varint whose last byte carries bits past 64: upb drops them, prost fails; they
//!   are cleared.
//!
//! The rest upb and prost judge alike (wire types 6 and 7, field number 0 outside a group, a tag
//! over 32 bits, an end-group tag that closes nothing or another group, truncation, strings that
//! are not UTF-8); the checks below that prost would also make are there only because a walk has
//! to make them to go on, and they name what went wrong.

use std::borrow::Cow;

use super::malformed;
use crate::error::Result;

/// What upb refuses, named. The walk's own results stay this small (a `CoreError` is not), which
/// keeps them in registers: the walk is on every Route call.
type Walked<T> = std::result::Result<T, &'static str>;

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const START_GROUP: u64 = 3;
const END_GROUP: u64 = 4;
const FIXED32: u64 = 5;

/// A tag or a length takes at most five bytes (any five: non-minimal encodings are read), a
/// value at most ten.
const MAX_TAG_OR_LENGTH_BYTES: usize = 5;
const MAX_VALUE_BYTES: usize = 10;
/// Sub-messages and groups each take one level; the top-level message takes none.
const MAX_DEPTH: usize = 100;
/// OR-ed into a tag's first byte: field number 15 (its low four bits; a known number has no
/// others), keeping the wire type and the continuation bit. Unknown in every message of the tree.
const UNKNOWN_NUMBER_BITS: u8 = 0x78;

/// The messages of `RouteRequest`'s tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Request,
    Message,
    Routing,
    Weights,
    Params,
}

impl Kind {
    /// A known field's wire type and, for a sub-message, its kind; as `router.proto` declares
    /// them (the tests check this against the generated types).
    pub(super) fn field(self, number: u64) -> Option<(u64, Option<Kind>)> {
        use Kind::{Message, Params, Request, Routing, Weights};
        Some(match (self, number) {
            (Request, 1) => (LEN, Some(Message)),
            (Request, 2) => (LEN, Some(Routing)),
            (Request, 3) => (LEN, Some(Params)),
            (Routing, 4) => (LEN, Some(Weights)),
            (Message, 1 | 2) | (Request | Params, 4) | (Routing, 1 | 2 | 3 | 5 | 7 | 10) => {
                (LEN, None)
            }
            (Routing, 6 | 9) | (Params, 1) => (VARINT, None),
            (Routing, 8) | (Weights, 1..=3) | (Params, 2 | 3) => (FIXED64, None),
            _ => return None,
        })
    }
}

/// `bytes` as prost reads them the way upb would: the same bytes, or a rewritten copy.
///
/// # Errors
/// `Refused(InvalidRequest)` on field "request" when upb would refuse them.
pub(super) fn as_prost_reads(bytes: &[u8]) -> Result<Cow<'_, [u8]>> {
    let mut walk = Walk {
        bytes,
        at: 0,
        rewrites: Vec::new(),
    };
    walk.message(Kind::Request, bytes.len(), MAX_DEPTH)
        .map_err(malformed)?;
    if walk.rewrites.is_empty() {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut copy = bytes.to_vec();
    for (at, byte) in walk.rewrites {
        copy[at] = byte;
    }
    Ok(Cow::Owned(copy))
}

struct Walk<'a> {
    bytes: &'a [u8],
    at: usize,
    /// (position, new byte).
    rewrites: Vec<(usize, u8)>,
}

impl Walk<'_> {
    /// The fields of a `kind` message that ends at `end`, with `depth` levels left inside it.
    fn message(&mut self, kind: Kind, end: usize, depth: usize) -> Walked<()> {
        while self.at < end {
            let tag_at = self.at;
            let (number, wire_type) = self.tag(end)?;
            if number == 0 {
                return Err("field number 0");
            }
            let known = kind.field(number);
            match (wire_type, known) {
                (END_GROUP, _) => return Err("end of a group that was not started"),
                (START_GROUP, _) => {
                    self.group(number, known.is_some().then_some(tag_at), end, depth)?;
                }
                (LEN, Some((LEN, Some(inner)))) => {
                    let inner_end = self.length(end)?;
                    let inner_depth = depth.checked_sub(1).ok_or("nested too deeply")?;
                    self.message(inner, inner_end, inner_depth)?;
                }
                (_, Some((expected, _))) if expected != wire_type => {
                    self.renumber(tag_at);
                    self.value(wire_type, end)?;
                }
                _ => self.value(wire_type, end)?,
            }
        }
        Ok(())
    }

    fn renumber(&mut self, tag_at: usize) {
        self.rewrites
            .push((tag_at, self.bytes[tag_at] | UNKNOWN_NUMBER_BITS));
    }

    fn varint(&mut self, max_bytes: usize, end: usize) -> Walked<u64> {
        let mut value = 0u64;
        for index in 0..max_bytes {
            if self.at == end {
                return Err("truncated varint");
            }
            let byte = self.bytes[self.at];
            self.at += 1;
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte < 0x80 {
                if index == MAX_VALUE_BYTES - 1 && byte > 1 {
                    // In the tenth byte only the lowest bit fits in 64.
                    self.rewrites.push((self.at - 1, byte & 1));
                }
                return Ok(value);
            }
        }
        Err(if max_bytes == MAX_VALUE_BYTES {
            "varint longer than 10 bytes"
        } else {
            "tag or length longer than 5 bytes"
        })
    }

    /// (field number, wire type).
    fn tag(&mut self, end: usize) -> Walked<(u64, u64)> {
        let tag = self.varint(MAX_TAG_OR_LENGTH_BYTES, end)?;
        if tag > u64::from(u32::MAX) {
            return Err("tag over 32 bits");
        }
        Ok((tag >> 3, tag & 7))
    }

    /// A length: where the bytes it covers, which follow it, end.
    fn length(&mut self, end: usize) -> Walked<usize> {
        let length = self.varint(MAX_TAG_OR_LENGTH_BYTES, end)?;
        self.after(usize::try_from(length).unwrap_or(usize::MAX), end)
    }

    fn after(&self, n: usize, end: usize) -> Walked<usize> {
        self.at
            .checked_add(n)
            .filter(|&after| after <= end)
            .ok_or("truncated field")
    }

    fn value(&mut self, wire_type: u64, end: usize) -> Walked<()> {
        match wire_type {
            VARINT => {
                self.varint(MAX_VALUE_BYTES, end)?;
            }
            FIXED64 => self.at = self.after(8, end)?,
            LEN => self.at = self.length(end)?,
            FIXED32 => self.at = self.after(4, end)?,
            _ => return Err("unsupported wire type"),
        }
        Ok(())
    }

    /// Past the group that `number`'s start tag opened, checking it as upb does: each nested
    /// group closed by its own number, within the depth left. Inside a group, upb reads field
    /// number 0 like any other. `renumbered` is the start tag's position when the group is a
    /// known field's: it and its end tag are renumbered.
    fn group(
        &mut self,
        number: u64,
        renumbered: Option<usize>,
        end: usize,
        depth: usize,
    ) -> Walked<()> {
        if let Some(tag_at) = renumbered {
            self.renumber(tag_at);
        }
        // Each open group: its number and whether its end tag is renumbered.
        let mut open = vec![(number, renumbered.is_some())];
        while let Some(&(innermost, renumber_end)) = open.last() {
            if open.len() > depth {
                return Err("nested too deeply");
            }
            if self.at == end {
                return Err("unterminated group");
            }
            let tag_at = self.at;
            let (inner, wire_type) = self.tag(end)?;
            match wire_type {
                END_GROUP if inner != innermost => {
                    return Err("group closed by another number");
                }
                END_GROUP => {
                    if renumber_end {
                        self.renumber(tag_at);
                    }
                    open.pop();
                }
                START_GROUP => {
                    if inner == 0 {
                        self.renumber(tag_at);
                    }
                    open.push((inner, inner == 0));
                }
                _ => {
                    if inner == 0 {
                        self.renumber(tag_at);
                    }
                    self.value(wire_type, end)?;
                }
            }
        }
        Ok(())
    }
}
