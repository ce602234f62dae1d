//! `switchpoint.v1.RouteRequest` read from protobuf's wire format, borrowing its strings.
//!
//! Route is served from the request's bytes so that a call crosses into Rust once. The layout
//! mirrors `protos/switchpoint/v1/router.proto` (`RouteRequest`, `Message`, `RoutingOptions`,
//! `Weights`, `GenerationParams`) and follows protobuf's parsing rules: unknown fields and fields
//! of an unexpected wire type are skipped, the last value of a singular field wins, a message
//! field that appears twice is merged, an `int32` is the low 32 bits of its varint. Strings must
//! be UTF-8, as proto3 requires. The Python tests check the result against the generated
//! message's own parse for arbitrary requests.

use crate::error::{Refusal, Result};
use crate::route::request::{Message, Params, RouteInput, RoutingOptions};

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

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
}

/// One field: its number, and its value by wire type.
enum Value<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    Fixed32,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = *self
                .bytes
                .get(self.at)
                .ok_or_else(|| malformed("truncated varint"))?;
            self.at += 1;
            if shift == 63 && byte > 1 {
                return Err(malformed("varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(malformed("varint longer than 10 bytes"))
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
        let tag = self.varint()?;
        let number = tag >> 3;
        if number == 0 {
            return Err(malformed("field number 0"));
        }
        let value = match tag & 7 {
            VARINT => Value::Varint(self.varint()?),
            FIXED64 => Value::Fixed64(self.take(8)?.try_into().expect("8 bytes")),
            LEN => {
                let len = usize::try_from(self.varint()?).map_err(|_| malformed("length"))?;
                Value::Bytes(self.take(len)?)
            }
            FIXED32 => {
                self.take(4)?;
                Value::Fixed32
            }
            _ => return Err(malformed("unsupported wire type")),
        };
        Ok((number, value))
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
    let mut reader = Reader::new(bytes);
    while let Some(field) = reader.next() {
        match field? {
            (1, Value::Bytes(b)) => input.messages.push(message(b)?),
            (2, Value::Bytes(b)) => routing(b, &mut input.routing)?,
            (3, Value::Bytes(b)) => params(b, &mut input.params)?,
            _ => {}
        }
    }
    Ok(input)
}

fn message(bytes: &[u8]) -> Result<Message<'_>> {
    let mut out = Message {
        role: "",
        content: "",
    };
    let mut reader = Reader::new(bytes);
    while let Some(field) = reader.next() {
        match field? {
            (1, Value::Bytes(b)) => out.role = text(b, "messages.role")?,
            (2, Value::Bytes(b)) => out.content = text(b, "messages.content")?,
            _ => {}
        }
    }
    Ok(out)
}

fn routing<'a>(bytes: &'a [u8], out: &mut RoutingOptions<'a>) -> Result<()> {
    let mut reader = Reader::new(bytes);
    while let Some(field) = reader.next() {
        match field? {
            (1, Value::Bytes(b)) => out.models.push(text(b, "routing.models")?),
            (2, Value::Bytes(b)) => out.stage = text(b, "routing.stage")?,
            (3, Value::Bytes(b)) => out.strategy = text(b, "routing.strategy")?,
            (4, Value::Bytes(b)) => weights(b, out.weights.get_or_insert([0.0; 3]))?,
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

fn weights(bytes: &[u8], out: &mut [f64; 3]) -> Result<()> {
    let mut reader = Reader::new(bytes);
    while let Some(field) = reader.next() {
        if let (number @ 1..=3, Value::Fixed64(b)) = field? {
            out[number as usize - 1] = f64::from_le_bytes(b);
        }
    }
    Ok(())
}

fn params<'a>(bytes: &'a [u8], out: &mut Params<'a>) -> Result<()> {
    let mut reader = Reader::new(bytes);
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
