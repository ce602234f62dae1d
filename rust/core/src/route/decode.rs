//! `switchpoint.v1.RouteRequest` read from protobuf's wire format, borrowing its strings.
//!
//! Route is served from the request's bytes so that a call crosses into Rust once. The layout
//! mirrors `protos/switchpoint/v1/router.proto` (`RouteRequest`, `Message`, `RoutingOptions`,
//! `Weights`, `GenerationParams`) and follows protobuf's parsing rules: unknown fields and fields
//! of an unexpected wire type are skipped (groups included), the last value of a singular field
//! wins, a message field that appears twice is merged, an `int32` is the low 32 bits of its
//! varint. Strings must be UTF-8, as proto3 requires. What is refused is what the parser behind
//! Python's protobuf (upb) refuses, so that Route and the services parsed by protobuf accept the
//! same bytes: tags and lengths of more than five bytes, a tag over 32 bits, field number 0 in a
//! message, wire types 6 and 7, an end-group tag that closes nothing or another group, nesting
//! past 100 levels. The Python tests check the result against protobuf's own parse for arbitrary
//! and damaged bytes.

use crate::error::{Refusal, Result};
use crate::route::request::{Message, Params, RouteInput, RoutingOptions};

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const START_GROUP: u64 = 3;
const END_GROUP: u64 = 4;
const FIXED32: u64 = 5;

/// A tag or a length takes at most five bytes (any five: non-minimal encodings are read), a
/// value at most ten; in the tenth byte, bits past 64 are dropped.
const MAX_TAG_OR_LENGTH_BYTES: usize = 5;
const MAX_VALUE_BYTES: usize = 10;
/// Sub-messages and groups each take one level; the top-level message takes none.
const MAX_DEPTH: u32 = 100;

/// The decoding failure as the caller reads it; which byte went wrong means nothing to a client.
fn malformed(what: &str) -> crate::CoreError {
    Refusal::invalid(
        "request",
        format!("is not a valid switchpoint.v1.RouteRequest ({what})"),
    )
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Levels left for the sub-messages and groups inside this message.
    depth: u32,
}

/// One field: its number, and its value by wire type.
enum Value<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    /// A fixed32 or a group: nothing in a `RouteRequest` is either; skipped and checked.
    Skipped,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], depth: u32) -> Self {
        Self {
            bytes,
            at: 0,
            depth,
        }
    }

    /// A reader for the sub-message in `bytes`, one level further down.
    fn nested(&self, bytes: &'a [u8]) -> Result<Reader<'a>> {
        let depth = self
            .depth
            .checked_sub(1)
            .ok_or_else(|| malformed("nested too deeply"))?;
        Ok(Reader::new(bytes, depth))
    }

    fn varint(&mut self, max_bytes: usize) -> Result<u64> {
        let mut value = 0u64;
        for index in 0..max_bytes {
            let byte = *self
                .bytes
                .get(self.at)
                .ok_or_else(|| malformed("truncated varint"))?;
            self.at += 1;
            // In the tenth byte only the lowest bit still fits: the shift drops the rest.
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(malformed(if max_bytes == MAX_VALUE_BYTES {
            "varint longer than 10 bytes"
        } else {
            "tag or length longer than 5 bytes"
        }))
    }

    /// (field number, wire type).
    fn tag(&mut self) -> Result<(u64, u64)> {
        let tag = self.varint(MAX_TAG_OR_LENGTH_BYTES)?;
        if tag > u64::from(u32::MAX) {
            return Err(malformed("tag over 32 bits"));
        }
        Ok((tag >> 3, tag & 7))
    }

    fn length(&mut self) -> Result<usize> {
        let length = self.varint(MAX_TAG_OR_LENGTH_BYTES)?;
        // protobuf's own bound; no message that size gets here, but a length must not wrap.
        if length >= i32::MAX as u64 {
            return Err(malformed("length of 2 GiB or more"));
        }
        Ok(length as usize)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| malformed("truncated field"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn next(&mut self) -> Option<Result<(u64, Value<'a>)>> {
        (self.at < self.bytes.len()).then(|| self.field())
    }

    fn field(&mut self) -> Result<(u64, Value<'a>)> {
        let (number, wire_type) = self.tag()?;
        if number == 0 {
            return Err(malformed("field number 0"));
        }
        let value = match wire_type {
            START_GROUP => {
                self.skip_group(number)?;
                Value::Skipped
            }
            END_GROUP => return Err(malformed("end of a group that was not started")),
            _ => self.value(wire_type)?,
        };
        Ok((number, value))
    }

    fn value(&mut self, wire_type: u64) -> Result<Value<'a>> {
        Ok(match wire_type {
            VARINT => Value::Varint(self.varint(MAX_VALUE_BYTES)?),
            FIXED64 => Value::Fixed64(self.take(8)?.try_into().expect("8 bytes")),
            LEN => {
                let len = self.length()?;
                Value::Bytes(self.take(len)?)
            }
            FIXED32 => {
                self.take(4)?;
                Value::Skipped
            }
            _ => return Err(malformed("unsupported wire type")),
        })
    }

    /// Past the group that `number`'s start tag opened, checking it as protobuf does: each
    /// nested group closed by its own number, within the depth left. Inside a group, protobuf
    /// reads field number 0 like any other.
    fn skip_group(&mut self, number: u64) -> Result<()> {
        let mut open = vec![number];
        while let Some(&innermost) = open.last() {
            if open.len() > self.depth as usize {
                return Err(malformed("nested too deeply"));
            }
            if self.at == self.bytes.len() {
                return Err(malformed("unterminated group"));
            }
            match self.tag()? {
                (inner, START_GROUP) => open.push(inner),
                (inner, END_GROUP) if inner == innermost => {
                    open.pop();
                }
                (_, END_GROUP) => return Err(malformed("group closed by another number")),
                (_, wire_type) => {
                    self.value(wire_type)?;
                }
            }
        }
        Ok(())
    }
}

fn text<'a>(bytes: &'a [u8], field: &str) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|_| malformed(&format!("{field} is not UTF-8")))
}

/// A `RouteRequest`, borrowing its strings from `bytes`.
///
/// # Errors
/// `Refused(InvalidRequest)` on field "request" when the bytes are not such a message.
pub fn route_request(bytes: &[u8]) -> Result<RouteInput<'_>> {
    let mut input = RouteInput::default();
    let mut reader = Reader::new(bytes, MAX_DEPTH);
    while let Some(field) = reader.next() {
        match field? {
            (1, Value::Bytes(b)) => input.messages.push(message(reader.nested(b)?)?),
            (2, Value::Bytes(b)) => routing(reader.nested(b)?, &mut input.routing)?,
            (3, Value::Bytes(b)) => params(reader.nested(b)?, &mut input.params)?,
            _ => {}
        }
    }
    Ok(input)
}

fn message(mut reader: Reader<'_>) -> Result<Message<'_>> {
    let mut out = Message {
        role: "",
        content: "",
    };
    while let Some(field) = reader.next() {
        match field? {
            (1, Value::Bytes(b)) => out.role = text(b, "messages.role")?,
            (2, Value::Bytes(b)) => out.content = text(b, "messages.content")?,
            _ => {}
        }
    }
    Ok(out)
}

fn routing<'a>(mut reader: Reader<'a>, out: &mut RoutingOptions<'a>) -> Result<()> {
    while let Some(field) = reader.next() {
        match field? {
            (1, Value::Bytes(b)) => out.models.push(text(b, "routing.models")?),
            (2, Value::Bytes(b)) => out.stage = text(b, "routing.stage")?,
            (3, Value::Bytes(b)) => out.strategy = text(b, "routing.strategy")?,
            (4, Value::Bytes(b)) => {
                weights(reader.nested(b)?, out.weights.get_or_insert([0.0; 3]))?;
            }
            (5, Value::Bytes(b)) => out.tenant = text(b, "routing.tenant")?,
            (6, Value::Varint(v)) => out.priority = i64::from(v as i32),
            (7, Value::Bytes(b)) => out.capabilities.push(text(b, "routing.capabilities")?),
            (8, Value::Fixed64(b)) => out.max_cost_usd = Some(f64::from_le_bytes(b)),
            (9, Value::Varint(v)) => out.hedge = v != 0,
            _ => {}
        }
    }
    Ok(())
}

fn weights(mut reader: Reader<'_>, out: &mut [f64; 3]) -> Result<()> {
    while let Some(field) = reader.next() {
        if let (number @ 1..=3, Value::Fixed64(b)) = field? {
            out[number as usize - 1] = f64::from_le_bytes(b);
        }
    }
    Ok(())
}

fn params<'a>(mut reader: Reader<'a>, out: &mut Params<'a>) -> Result<()> {
    while let Some(field) = reader.next() {
        match field? {
            (1, Value::Varint(v)) => out.max_tokens = Some(i64::from(v as u32)),
            (2, Value::Fixed64(b)) => out.temperature = Some(f64::from_le_bytes(b)),
            (3, Value::Fixed64(b)) => out.top_p = Some(f64::from_le_bytes(b)),
            (4, Value::Bytes(b)) => out.stop.push(text(b, "params.stop")?),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CoreError;

    fn field(number: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![number << 3 | 2, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn reads_messages_and_routing() {
        let mut bytes = field(1, &[field(1, b"user"), field(2, b"hi")].concat());
        let mut routing = field(5, b"acme");
        routing.extend([0x30, 0x02]); // priority 2
        routing.extend([0x41]); // max_cost_usd
        routing.extend(0.5f64.to_le_bytes());
        bytes.extend(field(2, &routing));
        bytes.extend(field(3, &[0x08, 0x80, 0x02])); // max_tokens 256
        let input = route_request(&bytes).unwrap();
        assert_eq!(
            input.messages,
            [Message {
                role: "user",
                content: "hi"
            }]
        );
        assert_eq!(input.routing.tenant, "acme");
        assert_eq!(input.routing.priority, 2);
        assert_eq!(input.routing.max_cost_usd, Some(0.5));
        assert_eq!(input.params.max_tokens, Some(256));
        assert_eq!(input.routing.weights, None);
    }

    #[test]
    fn unknown_fields_are_skipped_and_repeated_messages_merge() {
        let mut bytes = vec![0x78, 0x05]; // field 15, varint
        bytes.extend(field(2, &field(5, b"a")));
        bytes.extend(field(2, &field(2, b"stage")));
        let input = route_request(&bytes).unwrap();
        assert_eq!(input.routing.tenant, "a");
        assert_eq!(input.routing.stage, "stage");
    }

    #[test]
    fn truncation_and_bad_utf8_are_refused_naming_the_request() {
        for bytes in [
            vec![0x0a, 0x05, b'x'],
            vec![0x08],
            field(1, &field(1, &[0xff])),
        ] {
            match route_request(&bytes) {
                Err(CoreError::Refused(Refusal::InvalidRequest { field, message })) => {
                    assert_eq!(field, "request");
                    assert!(message.starts_with("is not a valid switchpoint.v1.RouteRequest"));
                }
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
    }

    fn refused(bytes: &[u8]) -> String {
        match route_request(bytes) {
            Err(CoreError::Refused(Refusal::InvalidRequest { field, message })) => {
                assert_eq!(field, "request");
                message
            }
            other => panic!("{bytes:?} was read: {other:?}"),
        }
    }

    /// `value` as a varint padded with continuation bytes to `width` bytes.
    fn padded(mut value: u64, width: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 && out.len() + 1 >= width {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    fn user_message() -> Vec<u8> {
        field(1, &[field(1, b"user"), field(2, b"hi")].concat())
    }

    #[test]
    fn tags_and_lengths_may_take_five_bytes_not_six() {
        for width in 1..=5 {
            // messages, its tag and then its length padded.
            let mut bytes = padded(0x0a, width);
            bytes.extend(padded(user_message().len() as u64 - 2, width));
            bytes.extend(&user_message()[2..]);
            assert_eq!(route_request(&bytes).unwrap().messages.len(), 1, "{width}");
        }
        let mut long_tag = padded(0x0a, 6);
        long_tag.extend(&user_message()[1..]);
        assert!(refused(&long_tag).contains("longer than 5 bytes"));
        let mut long_length = vec![0x0a];
        long_length.extend(padded(0, 6));
        assert!(refused(&long_length).contains("longer than 5 bytes"));
    }

    #[test]
    fn a_tag_over_32_bits_is_refused() {
        // Five bytes can carry 35 bits; no field number needs more than 29 plus 3 of wire type.
        let mut bytes = padded((1 << 32) | 2, 5);
        bytes.push(0);
        assert!(refused(&bytes).contains("tag over 32 bits"));
        let mut largest = padded(u64::from(u32::MAX) - 5, 5); // field 2^29 - 1, a length
        largest.push(0);
        assert!(route_request(&largest).unwrap().messages.is_empty());
    }

    #[test]
    fn a_ten_byte_value_drops_what_does_not_fit_in_64_bits() {
        let mut routing = vec![0x48]; // hedge: 2^64 as a varint is 0, so false
        routing.extend([0x80; 9]);
        routing.push(0x02);
        routing.extend([0x30, 0x02]); // priority 2
        assert!(!route_request(&field(2, &routing)).unwrap().routing.hedge);
        let mut eleven = vec![0x48];
        eleven.extend([0x80; 10]);
        eleven.push(0x00);
        assert!(refused(&field(2, &eleven)).contains("longer than 10 bytes"));
    }

    #[test]
    fn groups_are_skipped_when_closed_by_their_own_number() {
        // field 15 as a group holding a varint, a field-0 fixed32 and a nested group 3.
        let mut bytes = vec![0x7b, 0x08, 0x01, 0x05, 0, 0, 0, 0, 0x1b, 0x1c, 0x7c];
        bytes.extend(user_message());
        bytes.extend([0x0b, 0x0c]); // messages' own number, as a group: skipped too
        assert_eq!(route_request(&bytes).unwrap().messages.len(), 1);
        for (bytes, why) in [
            (vec![0x7b, 0x74], "closed by another number"),
            (vec![0x7b, 0x08, 0x01], "unterminated group"),
            (vec![0x7c], "not started"),
            (field(2, &[0x7c]), "not started"),
            (vec![0x7b, 0x0f, 0x7c], "unsupported wire type"),
            (vec![0x0e], "unsupported wire type"),
            (vec![0x03, 0x04], "field number 0"),
        ] {
            assert!(refused(&bytes).contains(why), "{bytes:?}: {why}");
        }
    }

    #[test]
    fn nesting_stops_at_protobufs_depth_limit() {
        let groups = |levels: usize| [vec![0x7b; levels], vec![0x7c; levels]].concat();
        assert!(route_request(&groups(100)).is_ok());
        assert!(refused(&groups(101)).contains("nested too deeply"));
        // Inside routing, routing itself takes a level.
        let in_routing = |levels: usize| {
            let inner = groups(levels);
            let mut bytes = vec![0x12];
            bytes.extend(padded(inner.len() as u64, 0));
            bytes.extend(inner);
            bytes
        };
        assert!(route_request(&in_routing(99)).is_ok());
        assert!(refused(&in_routing(100)).contains("nested too deeply"));
    }

    #[test]
    fn int32_keeps_the_low_bits() {
        // priority -1 is sent as a ten-byte varint.
        let mut routing = vec![0x30];
        routing.extend([0xff; 9]);
        routing.push(0x01);
        let bytes = field(2, &routing);
        assert_eq!(route_request(&bytes).unwrap().routing.priority, -1);
    }
}
