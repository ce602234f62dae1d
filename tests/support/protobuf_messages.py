"""Hypothesis strategies for whole protobuf messages, built from their descriptors: every field of
every (nested) message, set or not, to any value its type allows; strings drawn from a vocabulary
(the names the code under test knows) as well as from arbitrary text. Hints steer chosen fields
towards values that get past the first check, so that the later ones are reached too."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

# Blank to Python's str.isspace and so to the router, and beyond: NUL, the ASCII separators.
_BLANKS = ["", " ", "\t\n", "\u3000", "\x1c", "\x00"]


def _strings(vocabulary: Sequence[str]) -> st.SearchStrategy[str]:
    return (
        st.sampled_from([*vocabulary, *_BLANKS])
        | st.text(max_size=20)
        | st.sampled_from(["x" * 128, "x" * 129, "é" * 129])
    )


_doubles = st.floats() | st.sampled_from([0.0, -0.0, 0.5, 1.0, 2.0, -1.0, 1e308, 5e-324])
_scalars: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_DOUBLE: _doubles,
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 3) | st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_INT32: st.integers(-1, 4) | st.integers(-(2**31), 2**31 - 1),
    # Open enums (proto3): any int32 is a value.
    FieldDescriptor.TYPE_ENUM: st.integers(-1, 4) | st.integers(-(2**31), 2**31 - 1),
}


def messages(
    descriptor: Descriptor,
    vocabulary: Sequence[str],
    hints: Mapping[str, st.SearchStrategy[Any]] | None = None,
) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type with any field set to anything of its type. `hints` maps a
    field's full name (`switchpoint.v1.Message.role`) to the values it takes instead; a hinted
    field is set more often than not, a repeated one holds at least one value then."""
    hints = hints or {}
    cls = GetMessageClass(descriptor)
    fields = [
        (field, hints[field.full_name])
        if field.full_name in hints
        else (field, _field_values(field, vocabulary, hints))
        for field in descriptor.fields
    ]
    hinted = {field.full_name for field, _ in fields if field.full_name in hints}

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field, values in fields:
            if not draw(_mostly if field.full_name in hinted else _half):
                continue  # unset (a repeated field empty, an optional one absent)
            if field.is_repeated:
                drawn = draw(st.lists(values, min_size=field.full_name in hinted, max_size=4))
                target = getattr(message, field.name)
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    for sub in drawn:
                        target.add().CopyFrom(sub)
                else:
                    target.extend(drawn)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(message, field.name).CopyFrom(draw(values))
            else:
                setattr(message, field.name, draw(values))
        return message

    return build()


_half = st.booleans()
_mostly = st.integers(0, 9).map(lambda n: n > 0)


def _field_values(
    field: FieldDescriptor, vocabulary: Sequence[str], hints: Mapping[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        nested = field.message_type
        return st.deferred(lambda: messages(nested, vocabulary, hints))
    if field.type == FieldDescriptor.TYPE_STRING:
        return _strings(vocabulary)
    return _scalars[field.type]
