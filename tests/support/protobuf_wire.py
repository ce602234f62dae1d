"""Hypothesis strategies for protobuf's wire format, shaped like `switchpoint.v1.RouteRequest`.

The bytes follow RouteRequest's tree (its known fields, at their depths, usually with the right wire
type) so that most examples get past the first byte, and then go wrong where a parser has to judge:
tags, lengths and values as over-long or non-minimal varints, field number 0, the group wire types
3 and 4 (matched, mismatched, unterminated, nested near the depth limit), the reserved wire types 6
and 7, lengths past the end, strings that are not UTF-8.
"""

from __future__ import annotations

from functools import cache

from hypothesis import strategies as st

VARINT, FIXED64, LEN, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
# upb's (Python protobuf's parser) nesting limit: sub-messages and groups each take one level.
DEPTH_LIMIT = 100

# What each field holds, per message of RouteRequest's tree (protos/switchpoint/v1/router.proto).
SCHEMA: dict[str, dict[int, str]] = {
    "RouteRequest": {1: "Message", 2: "RoutingOptions", 3: "GenerationParams"},
    "Message": {1: "string", 2: "string"},
    "RoutingOptions": {
        1: "string",
        2: "string",
        3: "string",
        4: "Weights",
        5: "string",
        6: "varint",
        7: "string",
        8: "double",
        9: "varint",
    },
    "Weights": {1: "double", 2: "double", 3: "double"},
    "GenerationParams": {1: "varint", 2: "double", 3: "double", 4: "string"},
}
WIRE_TYPE = {"string": LEN, "varint": VARINT, "double": FIXED64}
UNKNOWN_NUMBERS = (0, 10, 15, 16, 2047, 2**29 - 1)


def varint(value: int, width: int = 0) -> bytes:
    """`value` as a varint, padded with continuation bytes to at least `width` bytes (a
    non-minimal encoding). Values past 64 bits spill into the tenth byte's high bits."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value == 0 and len(out) + 1 >= width:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def tag(number: int, wire_type: int, width: int = 0) -> bytes:
    return varint(number << 3 | wire_type, width)


# Mostly minimal; otherwise around protobuf's limits: five bytes for tags and lengths, ten for
# values (and eleven, one too many).
_widths = st.sampled_from([0, 0, 0, 0, 2, 4, 5, 5, 6, 7, 10, 11])
_values = (
    st.integers(0, 3)
    | st.integers(0, 2**64 - 1)
    | st.integers(2**64, 2**70 - 1)
    | st.sampled_from([2**31 - 1, 2**32 - 1, 2**63, 2**64 - 1])
)


_one_in_ten = st.integers(0, 9).map(lambda n: n == 0)
_over_32_bits = st.integers(2**32, 2**35 - 1)
_length_errors = st.sampled_from([0, 0, 0, 0, 0, -2, -1, 1, 2, 2**31, 2**32])


def _tag(draw: st.DrawFn, number: int, wire_type: int) -> bytes:
    if draw(_one_in_ten):
        # A five-byte tag over 32 bits: protobuf refuses what no field number can carry.
        return varint(draw(_over_32_bits) & ~7 | wire_type, 5)
    return tag(number, wire_type, draw(_widths))


def _length_delimited(draw: st.DrawFn, payload: bytes) -> bytes:
    """A length and `payload`, the length sometimes over-long, non-minimal, or wrong."""
    length = max(0, len(payload) + draw(_length_errors))
    return varint(length, draw(_widths)) + payload


_text = st.text(max_size=12).map(str.encode) | st.binary(max_size=6)
_fixed64 = st.binary(min_size=8, max_size=8)
_fixed32 = st.binary(min_size=4, max_size=4)
_stray = st.binary(max_size=2)


# Offsets of a group's end tag from its start's number; None leaves the group unterminated.
_group_ends = st.sampled_from([0, 0, 0, 1, None])


@cache
def _group_body(depth: int) -> st.SearchStrategy[list[bytes]]:
    return st.lists(field("Group", depth - 1), max_size=3)


def _group(draw: st.DrawFn, number: int, depth: int) -> bytes:
    """A group (wire type 3) holding a few unknown fields, usually closed by its own end tag."""
    body = b"".join(draw(_group_body(depth)))
    end = draw(_group_ends)
    return body + (b"" if end is None else tag(number + end, END_GROUP, draw(_widths)))


def _value(draw: st.DrawFn, holds: str, wire_type: int, number: int, depth: int) -> bytes:
    if wire_type == VARINT:
        return varint(draw(_values), draw(_widths))
    if wire_type == FIXED64:
        return draw(_fixed64)
    if wire_type == FIXED32:
        return draw(_fixed32)
    if wire_type == LEN:
        if holds in SCHEMA and depth > 0:
            return _length_delimited(draw, draw(message(holds, depth - 1)))
        return _length_delimited(draw, draw(_text))
    if wire_type == START_GROUP and depth > 0:
        return _group(draw, number, depth)
    # A stray end tag, a group too deep for this draw, or a reserved type: a few stray bytes.
    return draw(_stray)


@cache
def field(kind: str, depth: int) -> st.SearchStrategy[bytes]:
    """One field of a `kind` message: a known field with its own wire type most of the time."""
    known = SCHEMA.get(kind, {})
    numbers = st.sampled_from([*known, *known, *UNKNOWN_NUMBERS])

    @st.composite
    def one(draw: st.DrawFn) -> bytes:
        number = draw(numbers)
        holds = known.get(number, "unknown")
        usual = WIRE_TYPE.get(holds, LEN)
        wire_type = draw(_wire_types[holds in SCHEMA or holds in WIRE_TYPE][usual])
        return _tag(draw, number, wire_type) + _value(draw, holds, wire_type, number, depth)

    return one()


# By whether the field is known, then by its own wire type: mostly that one when known.
_wire_types = {
    False: {usual: st.integers(0, 7) for usual in range(8)},
    True: {usual: st.sampled_from([usual, usual, usual, *range(8)]) for usual in range(8)},
}


@cache
def message(kind: str, depth: int = 3) -> st.SearchStrategy[bytes]:
    return st.lists(field(kind, depth), max_size=4).map(b"".join)


@st.composite
def deep_groups(draw: st.DrawFn) -> bytes:
    """Groups nested to around the depth limit, at the top or inside a sub-message."""
    levels = draw(st.integers(DEPTH_LIMIT - 3, DEPTH_LIMIT + 1))
    nested = tag(15, START_GROUP) * levels + tag(15, END_GROUP) * levels
    for wrapper in draw(st.sampled_from([(), (1,), (2,), (4, 2)])):
        nested = tag(wrapper, LEN) + varint(len(nested)) + nested
    return nested


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with one byte changed, or cut short: mostly still protobuf, often not."""
    if not data:
        return data
    at = draw(st.integers(0, len(data) - 1))
    if draw(st.booleans()):
        return data[:at]
    return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]


def route_request_bytes() -> st.SearchStrategy[bytes]:
    """Bytes shaped like a RouteRequest, well-formed or not."""
    shaped = message("RouteRequest")
    return shaped | shaped.flatmap(damaged) | deep_groups() | st.binary(max_size=64)
