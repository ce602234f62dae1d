//! The decoder against upb's rules, byte by byte; `tests/test_route_wire.py` checks it against
//! protobuf itself on arbitrary bytes.

use super::upb::{as_prost_reads, Kind};
use std::borrow::Cow;

use prost::Message as _;

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
    let decoded = route_request(&bytes).unwrap();
    let input = decoded.input();
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
    let decoded = route_request(&bytes).unwrap();
    let input = decoded.input();
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
        assert_eq!(
            route_request(&bytes).unwrap().input().messages.len(),
            1,
            "{width}"
        );
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
    assert!(route_request(&largest).unwrap().input().messages.is_empty());
}

#[test]
fn a_ten_byte_value_drops_what_does_not_fit_in_64_bits() {
    let mut routing = vec![0x48]; // hedge: 2^64 as a varint is 0, so false
    routing.extend([0x80; 9]);
    routing.push(0x02);
    routing.extend([0x30, 0x02]); // priority 2
    assert!(
        !route_request(&field(2, &routing))
            .unwrap()
            .input()
            .routing
            .hedge
    );
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
    assert_eq!(route_request(&bytes).unwrap().input().messages.len(), 1);
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
    assert_eq!(route_request(&bytes).unwrap().input().routing.priority, -1);
}

#[test]
fn a_request_prost_reads_as_upb_does_is_not_copied() {
    let bytes = [user_message(), field(2, &field(5, b"acme"))].concat();
    assert!(matches!(as_prost_reads(&bytes).unwrap(), Cow::Borrowed(_)));
}

#[test]
fn a_known_field_of_another_wire_type_is_skipped_as_unknown() {
    // messages as a varint, then as a group holding a varint; priority as a string, then 2.
    let mut bytes = vec![0x08, 0x01, 0x0b, 0x08, 0x01, 0x0c];
    bytes.extend(user_message());
    bytes.extend(field(2, &[field(6, b"x"), vec![0x30, 0x02]].concat()));
    let decoded = route_request(&bytes).unwrap();
    let input = decoded.input();
    assert_eq!(input.messages.len(), 1);
    assert_eq!(input.routing.priority, 2);
    // max_cost_usd as a fixed32 and a padded-tag varint: neither is the double it is.
    let routing = [vec![0x45, 0, 0, 0, 0], padded(0x40, 3), vec![0x01]].concat();
    let decoded = route_request(&field(2, &routing)).unwrap();
    assert_eq!(decoded.input().routing.max_cost_usd, None);
}

#[test]
fn field_number_0_inside_a_group_is_read_like_any_other() {
    // A fixed32 and a group, both of field 0, inside group 15.
    let bytes = [0x7b, 0x05, 0, 0, 0, 0, 0x03, 0x04, 0x7c];
    assert!(route_request(&bytes).unwrap().input().messages.is_empty());
}

#[test]
fn a_ten_byte_value_keeps_its_lowest_bit_of_the_tenth_byte() {
    let mut routing = vec![0x48]; // hedge: 2^63 | 2^64 * 63, so true
    routing.extend([0x80; 9]);
    routing.push(0x7f);
    assert!(
        route_request(&field(2, &routing))
            .unwrap()
            .input()
            .routing
            .hedge
    );
}

#[test]
fn fields_inside_the_deepest_group_take_no_level() {
    let bytes = [vec![0x7b; 100], vec![0x08, 0x01], vec![0x7c; 100]].concat();
    assert!(route_request(&bytes).is_ok());
}

/// Every kind with a value of each wire type for field `number`, as its generated type reads it.
fn prost_reads(kind: Kind, number: u64, value: &[u8]) -> bool {
    let mut bytes = padded(number << 3 | u64::from(value[0]), 0);
    bytes.extend(&value[1..]);
    match kind {
        Kind::Request => proto::RouteRequest::decode(&*bytes).is_ok(),
        Kind::Message => proto::Message::decode(&*bytes).is_ok(),
        Kind::Routing => proto::RoutingOptions::decode(&*bytes).is_ok(),
        Kind::Weights => proto::Weights::decode(&*bytes).is_ok(),
        Kind::Params => proto::GenerationParams::decode(&*bytes).is_ok(),
    }
}

#[test]
fn the_known_fields_are_the_generated_types_fields() {
    // Wire type first: a zero varint, eight zero bytes, one byte 0x00 (a string "\0", but no
    // message: field number 0), four zero bytes.
    let values: [&[u8]; 4] = [
        &[0, 0],
        &[1, 0, 0, 0, 0, 0, 0, 0, 0],
        &[2, 1, 0],
        &[5, 0, 0, 0, 0],
    ];
    for kind in [
        Kind::Request,
        Kind::Message,
        Kind::Routing,
        Kind::Weights,
        Kind::Params,
    ] {
        for number in 1..=20 {
            for value in values {
                let wire_type = u64::from(value[0]);
                let expected = match kind.field(number) {
                    None => true,
                    Some((known, sub)) => known == wire_type && sub.is_none(),
                };
                assert_eq!(
                    prost_reads(kind, number, value),
                    expected,
                    "{kind:?} field {number} wire type {wire_type}"
                );
            }
        }
    }
}

/// What prost makes of each difference on its own, so that a prost release that closes one
/// shows here, and its rewrite or check in `upb.rs` can go.
#[test]
fn where_prost_alone_reads_otherwise_than_upb() {
    let prost_reads = |bytes: &[u8]| proto::RouteRequest::decode(bytes).is_ok();
    let mut long_tag = padded(0x0a, 6);
    long_tag.extend(&user_message()[1..]);
    let long_length = [vec![0x0a], padded(0, 6)].concat();
    // upb refuses these two; prost reads them.
    for bytes in [long_tag, long_length] {
        assert!(prost_reads(&bytes), "{bytes:?}");
        assert!(route_request(&bytes).is_err(), "{bytes:?}");
    }
    let mut ten_bytes = vec![0x48];
    ten_bytes.extend([0x80; 9]);
    ten_bytes.push(0x02);
    // upb reads these; prost refuses them. (Also past prost's own recursion limit, which this
    // build turns off: `fields_inside_the_deepest_group_take_no_level`.)
    for bytes in [
        vec![0x08, 0x01],                   // messages as a varint
        vec![0x7b, 0x05, 0, 0, 0, 0, 0x7c], // field 0 inside a group
        field(2, &ten_bytes),               // a tenth byte past 64 bits
    ] {
        assert!(!prost_reads(&bytes), "{bytes:?}");
        assert!(route_request(&bytes).is_ok(), "{bytes:?}");
    }
}

#[test]
fn a_string_that_is_not_utf8_is_named_by_its_field() {
    let message = refused(&field(1, &field(1, &[0xff])));
    assert!(message.contains("Message.role"), "{message}");
    assert!(message.contains("not UTF-8"), "{message}");
}
