"""Wire layout tables derived from :mod:`descartes_fast.wire.schema` (read by both codec twins).

Nothing here restates a field list: every table is computed from the dataclass fields
and type annotations of the schema classes, once, at import time.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from descartes_fast.wire import schema
from descartes_fast.wire.constants import (
    K_BIN,
    K_BOOL,
    K_BYTES,
    K_ENUM,
    K_I64,
    K_JSON,
    K_LIST,
    K_MAP,
    K_STR,
    K_STRUCT,
    K_TIME,
    K_U64,
    K_UUID,
)

__all__ = ["TypeSpec", "FieldSpec", "StructSpec", "ENUMS", "STRUCTS", "MESSAGES", "RUST_VARIANTS", "BY_TAG",
           "BY_CLASS", "enum_values",
           # the wire kinds of descartes_fast.wire.constants, handed on: TypeSpec.kind is one of them
           "K_STR", "K_BOOL", "K_U64", "K_I64", "K_UUID", "K_TIME", "K_ENUM", "K_STRUCT", "K_BYTES", "K_JSON",
           "K_LIST", "K_MAP", "K_BIN"]

_SCALAR_NAMES: Final = {K_STR: "str", K_BOOL: "bool", K_U64: "u64", K_I64: "i64",
                        K_UUID: "UUID", K_TIME: "timestamp", K_BYTES: "bytes", K_BIN: "bytes",
                        K_JSON: "JSON value", K_LIST: "array", K_MAP: "map"}


@dataclass(frozen=True, slots=True)
class TypeSpec:
    """The wire type of a field or of a container's elements."""

    kind: int
    ref: Any = None           # enum class (K_ENUM), struct class (K_STRUCT)
    elem: TypeSpec | None = None  # element type (K_LIST, K_MAP values; map keys are str)
    index: int = -1           # position of ``ref`` in ENUMS or STRUCTS

    @property
    def element(self) -> TypeSpec:
        """The type of a list's elements or a map's values."""
        if self.elem is None:
            raise TypeError(f"{self.expected} has no element type")
        return self.elem

    @property
    def expected(self) -> str:
        """What an error message says was expected."""
        if self.kind in (K_ENUM, K_STRUCT):
            return self.ref.__name__
        return _SCALAR_NAMES[self.kind]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    type: TypeSpec
    optional: bool            # ``Option<T>``: nil decodes to None
    required: bool            # no ``#[serde(default)]``: may not be omitted
    default: Any              # used when omitted (if not required and factory is None)
    factory: Callable[[], Any] | None


@dataclass(frozen=True, slots=True)
class StructSpec:
    cls: type
    name: str
    fields: tuple[FieldSpec, ...]
    tag: str | None           # wire tag for messages, None for nested structs
    index: int                # position in STRUCTS

    @property
    def min_len(self) -> int:
        """Fewest array elements allowed: up to the last required field."""
        return max((i + 1 for i, f in enumerate(self.fields) if f.required), default=0)


_MARKERS: Final = {schema.Wire.U64: K_U64, schema.Wire.I64: K_I64,
                   schema.Wire.TIMESTAMP: K_TIME, schema.Wire.JSON: K_JSON, schema.Wire.BIN: K_BIN}
_PLAIN: Final = {str: K_STR, bool: K_BOOL, uuid.UUID: K_UUID, bytes: K_BYTES}

ENUMS: Final[tuple[type[enum.Enum], ...]] = tuple(schema.ENUM_TYPES)
_STRUCT_CLASSES: Final = tuple(schema.STRUCT_TYPES) + tuple(schema.MESSAGE_TYPES)


def _type_spec(hint: Any) -> tuple[TypeSpec, bool]:
    """Map an annotation to (TypeSpec, optional)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1 or len(typing.get_args(hint)) != 2:
            raise TypeError(f"unsupported union {hint!r}")
        return _type_spec(args[0])[0], True
    if origin is typing.Annotated:
        return TypeSpec(_MARKERS[hint.__metadata__[0]]), False
    if origin is list:
        (elem,) = typing.get_args(hint)
        return TypeSpec(K_LIST, elem=_type_spec(elem)[0]), False
    if origin is dict:
        key, value = typing.get_args(hint)
        if key is not str:
            raise TypeError(f"map keys must be str: {hint!r}")
        return TypeSpec(K_MAP, elem=_type_spec(value)[0]), False
    if hint in _PLAIN:
        return TypeSpec(_PLAIN[hint]), False
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return TypeSpec(K_ENUM, hint, index=ENUMS.index(hint)), False
    if hint in _STRUCT_CLASSES:
        return TypeSpec(K_STRUCT, hint, index=_STRUCT_CLASSES.index(hint)), False
    raise TypeError(f"no wire type for annotation {hint!r}")


def _struct_spec(cls: type, index: int) -> StructSpec:
    hints = typing.get_type_hints(cls, vars(schema), include_extras=True)
    out = []
    for f in dataclasses.fields(cls):
        spec, optional = _type_spec(hints[f.name])
        factory = None if f.default_factory is dataclasses.MISSING else f.default_factory
        required = f.default is dataclasses.MISSING and factory is None
        out.append(FieldSpec(f.name, spec, optional, required,
                             None if required else f.default, factory))
    return StructSpec(cls, cls.__name__, tuple(out), getattr(cls, "TAG", None), index)


#: Every struct and message, nested structs first; TypeSpec.index points in here.
STRUCTS: Final[tuple[StructSpec, ...]] = tuple(
    _struct_spec(c, i) for i, c in enumerate(_STRUCT_CLASSES))
#: Message specs in wire-variant order (index = Rust variant index for the first 15).
MESSAGES: Final[tuple[StructSpec, ...]] = tuple(s for s in STRUCTS if s.tag is not None)
#: Rust variant index -> message spec (error_response has no index).
RUST_VARIANTS: Final = MESSAGES[:len(schema.RUST_MESSAGE_TYPES)]
BY_TAG: Final = {s.tag: s for s in MESSAGES}
BY_CLASS: Final = {s.cls: s for s in STRUCTS}


def enum_values(cls: type[enum.Enum]) -> dict[str, enum.Enum]:
    """Wire string -> member."""
    return {m.value: m for m in cls}


def _check() -> None:
    # Invariants the codecs rely on; a schema edit that breaks one fails at import.
    assert len(schema.RUST_MESSAGE_TYPES) == 15
    for s in STRUCTS:
        assert len(s.fields) <= 32, s.name  # presence is tracked in a 32-bit mask


_check()
