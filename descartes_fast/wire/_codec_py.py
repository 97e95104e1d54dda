"""Pure-Python codec twin: the reference behaviour of :mod:`descartes_fast.wire.codec`.

The compiled twin (``_speedups/wire/_codec_c.pyx``) must give the same bytes, the same
objects and the same exceptions (type and text) for every input; the parity tests
check this, and both twins take their texts from :mod:`descartes_fast.wire.texts`.
Encoding builds the rmp-serde compact layout as lists and lets
``msgpack`` write it. Decoding walks the bytes with the schema in hand, so every
error knows its message type and field.
"""

from __future__ import annotations

import math
import struct
import uuid
from typing import Any

import msgpack

from descartes_fast.wire import layout as L
from descartes_fast.wire import texts as T
from descartes_fast.wire.constants import (
    MAX_DEPTH,
    MAX_MESSAGE_SIZE,
    T_ARRAY,
    T_BIN,
    T_BOOL,
    T_EXT,
    T_FLOAT,
    T_INT,
    T_MAP,
    T_NIL,
    T_STR,
)
from descartes_fast.wire.errors import (
    ArityError,
    DecodeError,
    EncodeError,
    InvalidValueError,
    MalformedError,
    MessageTooLargeError,
    NestingTooDeepError,
    OutOfRangeError,
    TruncatedError,
    UnknownEnumValueError,
    UnknownMessageTypeError,
    WrongTypeError,
    _Located,
)
from descartes_fast.wire.schema import Message

__all__ = ["encode", "decode"]

U64_MAX = (1 << 64) - 1
I64_MAX = (1 << 63) - 1
I64_MIN = -(1 << 63)
NANOS = 1_000_000_000
_ENUM_VALUES = [L.enum_values(e) for e in L.ENUMS]
# Fields are read through the class's own slot descriptors, so a subclass property of the
# same name (or a __getattr__) cannot change what goes on the wire.
_SLOTS = {s.cls: [(f, s.cls.__dict__[f.name]) for f in s.fields] for s in L.STRUCTS}


def _is(v: Any, cls: type | tuple[type, ...]) -> bool:
    """isinstance on the real type: objects that fake ``__class__`` are not accepted."""
    return issubclass(type(v), cls)


# Values of builtin subclasses are read from their storage, as the compiled twin reads
# them, never through overridable methods (__int__, __float__, __iter__, __bytes__, ...).
def _stored_int(v: int) -> int:
    return int.__int__(v)


def _stored_items(v: Any) -> list:
    """The items of a list or tuple (*v*'s real type, checked by the caller)."""
    if _is(v, list):
        return list.copy(v)
    return [tuple.__getitem__(v, i) for i in range(tuple.__len__(v))]

# -- encoding -------------------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """Encode a message object to rmp-serde compact MessagePack."""
    spec = L.BY_CLASS.get(type(msg))
    if spec is None or spec.tag is None:
        for base in type(msg).__mro__[1:]:
            spec = L.BY_CLASS.get(base)
            if spec is not None and spec.tag is not None:
                break
        else:
            raise EncodeError(T.not_a_message(type(msg).__name__))
    try:
        out = [spec.tag]
        _enc_fields(msg, spec, out, 1)
    except EncodeError as exc:
        exc.message_type = spec.name
        raise
    data = msgpack.packb(out, use_bin_type=True)
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageTooLargeError(len(data), MAX_MESSAGE_SIZE)
    return data


def _enc_fields(obj: Any, spec: L.StructSpec, out: list, depth: int) -> None:
    for f, slot in _SLOTS[spec.cls]:
        try:
            try:
                value = slot.__get__(obj)
            except AttributeError:
                raise EncodeError(T.FIELD_NOT_SET) from None
            if value is None:
                if not f.optional:
                    raise EncodeError(T.expected(f.type.expected, "NoneType"))
                out.append(None)
            else:
                out.append(_enc(value, f.type, depth + 1))
        except EncodeError as exc:
            exc.add_context(f.name)
            raise


def _is_int(v: Any) -> bool:
    return _is(v, int) and type(v) is not bool


def _enc_str(v: Any, expected: str) -> str:
    if not _is(v, str):
        raise EncodeError(T.expected(expected, type(v).__name__))
    try:
        str.encode(v, "utf-8")
    except UnicodeEncodeError:
        raise EncodeError(T.STR_NOT_UTF8) from None
    return str.__str__(v)


def _enc(v: Any, t: L.TypeSpec, depth: int) -> Any:
    """Return the msgpack-ready form of *v* (not None) for wire type *t*."""
    k = t.kind
    if k == L.K_STR:
        return _enc_str(v, "str")
    if k == L.K_BOOL:
        if v is True or v is False:
            return v
    elif k == L.K_U64 or k == L.K_I64:
        if _is_int(v):
            lo, hi, name = (0, U64_MAX, "u64") if k == L.K_U64 else (I64_MIN, I64_MAX, "i64")
            n = _stored_int(v)
            if not lo <= n <= hi:
                raise EncodeError(T.int_range(n, name))
            return n
    elif k == L.K_UUID:
        if _is(v, uuid.UUID):
            return _uuid_bytes(v)
    elif k == L.K_TIME:
        if _is_int(v):
            n = _stored_int(v)
            if n < 0:
                raise EncodeError(T.before_epoch(n))
            secs, nanos = divmod(n, NANOS)
            if secs > I64_MAX:
                raise EncodeError(T.time_range(n))
            return [secs, nanos]
    elif k == L.K_ENUM:
        if _is(v, str):
            member = v if type(v) is t.ref else _ENUM_VALUES[t.index].get(str.__str__(v))
            if member is None:
                raise EncodeError(T.not_enum_value(str.__str__(v), t.ref.__name__))
            return member.value
    elif k == L.K_STRUCT:
        if _is(v, t.ref):
            _check_depth(depth, EncodeError)
            out: list = []
            _enc_fields(v, L.BY_CLASS[t.ref], out, depth)
            return out
    elif k == L.K_BYTES or k == L.K_BIN:
        if _is(v, (bytes, bytearray, memoryview)):
            if _is(v, memoryview) and not v.c_contiguous:
                raise EncodeError(T.MEMORYVIEW_NOT_CONTIGUOUS)
            raw = bytes(memoryview(v))
            return raw if k == L.K_BIN else list(raw)  # bin, or rmp-serde's array of ints
    elif k == L.K_JSON:
        return _enc_json(v, depth)
    elif k == L.K_LIST:
        if _is(v, (list, tuple)):
            _check_depth(depth, EncodeError)
            return [_enc_item(e, t.element, depth + 1, i) for i, e in enumerate(_stored_items(v))]
    elif k == L.K_MAP:
        if _is(v, dict):
            _check_depth(depth, EncodeError)
            return _enc_map(v, t.elem, depth)
    raise EncodeError(T.expected(t.expected, type(v).__name__))


_UUID_INT = uuid.UUID.__dict__["int"]


def _uuid_bytes(v: uuid.UUID) -> bytes:
    """16 bytes from the UUID's own ``int`` slot (what ``UUID.bytes`` is made from)."""
    try:
        value = _UUID_INT.__get__(v)
        if _is(value, int):
            return int.to_bytes(value, 16, "big")
    except (AttributeError, OverflowError):
        pass
    raise EncodeError(T.UUID_NO_VALUE)


def _enc_item(v: Any, t: L.TypeSpec, depth: int, where: int | str) -> Any:
    try:
        if v is None:
            if t.kind == L.K_JSON:
                return None
            raise EncodeError(T.expected(t.expected, "NoneType"))
        return _enc(v, t, depth)
    except EncodeError as exc:
        exc.add_context(f"[{where!r}]")
        raise


def _enc_json(v: Any, depth: int) -> Any:
    if v is None or v is True or v is False:
        return v
    if _is_int(v):
        n = _stored_int(v)
        if not I64_MIN <= n <= U64_MAX:
            raise EncodeError(T.json_int_range(n))
        return n
    if _is(v, float):
        f = float.__float__(v)
        if not math.isfinite(f):
            raise EncodeError(T.json_float(f))
        return f
    if _is(v, str):
        return _enc_str(v, "JSON value")
    if _is(v, (list, tuple)):
        _check_depth(depth, EncodeError)
        return [_enc_json(e, depth + 1) for e in _stored_items(v)]
    if _is(v, dict):
        _check_depth(depth, EncodeError)
        return _enc_map(v, None, depth)
    raise EncodeError(T.expected("JSON value", type(v).__name__))


def _enc_map(v: dict, elem: L.TypeSpec | None, depth: int) -> dict:
    """A dict with str keys; values of type *elem*, or JSON values when elem is None."""
    out = {}
    for key, val in dict.items(v):
        if not _is(key, str):
            raise EncodeError(T.expected("str map key", type(key).__name__))
        wire_key = _enc_str(key, "str")  # the key is checked before its value
        out[wire_key] = _enc_json(val, depth + 1) if elem is None else _enc_item(val, elem, depth + 1, key)
    return out


def _check_depth(depth: int, error: type[_Located]) -> None:
    if depth > MAX_DEPTH:
        raise error(T.too_deep())


# -- decoding -------------------------------------------------------------------------


_U = {1: struct.Struct(">B"), 2: struct.Struct(">H"), 4: struct.Struct(">I"), 8: struct.Struct(">Q")}
_S = {1: struct.Struct(">b"), 2: struct.Struct(">h"), 4: struct.Struct(">i"), 8: struct.Struct(">q")}
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
# 0xc0..0xdf: (type, width of the value or length that follows, signed?)
_HEADS: dict[int, tuple[int, int, bool]] = {
    0xc4: (T_BIN, 1, False), 0xc5: (T_BIN, 2, False), 0xc6: (T_BIN, 4, False),
    0xc7: (T_EXT, 1, False), 0xc8: (T_EXT, 2, False), 0xc9: (T_EXT, 4, False),
    0xca: (T_FLOAT, 4, False), 0xcb: (T_FLOAT, 8, False),
    0xcc: (T_INT, 1, False), 0xcd: (T_INT, 2, False), 0xce: (T_INT, 4, False), 0xcf: (T_INT, 8, False),
    0xd0: (T_INT, 1, True), 0xd1: (T_INT, 2, True), 0xd2: (T_INT, 4, True), 0xd3: (T_INT, 8, True),
    0xd9: (T_STR, 1, False), 0xda: (T_STR, 2, False), 0xdb: (T_STR, 4, False),
    0xdc: (T_ARRAY, 2, False), 0xdd: (T_ARRAY, 4, False),
    0xde: (T_MAP, 2, False), 0xdf: (T_MAP, 4, False),
}
_FIXEXT = {0xd4: 1, 0xd5: 2, 0xd6: 4, 0xd7: 8, 0xd8: 16}

_NAMES = [{f.name.encode(): i for i, f in enumerate(s.fields)} for s in L.STRUCTS]
_ENUM_BYTES = [{m.value.encode(): m for m in e} for e in L.ENUMS]
_TIME_KEYS = {b"secs_since_epoch": 0, b"nanos_since_epoch": 1}
_TIME_NAMES = ("secs_since_epoch", "nanos_since_epoch")
_TAG_KEY = -2


def decode(buf: Any) -> Message:
    """Decode one message from a bytes-like object (bytes, bytearray, memoryview, zmq.Frame)."""
    if type(buf) is bytes:
        data: Any = buf
    else:
        try:
            view = memoryview(buf)
        except TypeError:
            raise TypeError(T.not_bytes_like(type(buf).__name__)) from None
        if not view.c_contiguous:
            raise TypeError(T.NOT_CONTIGUOUS)
        data = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    n = len(data)
    if n > MAX_MESSAGE_SIZE:
        raise MessageTooLargeError(n, MAX_MESSAGE_SIZE)
    if n == 0:
        raise TruncatedError(T.EMPTY)
    return _Decoder(data).message()


def _utf8(raw: Any) -> str:
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError:
        raise InvalidValueError(T.BAD_UTF8) from None


class _Decoder:
    __slots__ = ("data", "end", "pos")

    def __init__(self, data: Any) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)

    # -- MessagePack tokens --

    def _need(self, n: int) -> int:
        pos = self.pos
        if self.end - pos < n:
            raise TruncatedError(T.TRUNCATED)
        self.pos = pos + n
        return pos

    def peek(self) -> int:
        """The type of the next value, without consuming it."""
        if self.pos >= self.end:
            raise TruncatedError(T.TRUNCATED)
        b = self.data[self.pos]
        if b <= 0x7f or b >= 0xe0:
            return T_INT
        if b <= 0x8f:
            return T_MAP
        if b <= 0x9f:
            return T_ARRAY
        if b <= 0xbf:
            return T_STR
        if b == 0xc0:
            return T_NIL
        if b == 0xc1:
            raise MalformedError(T.RESERVED_BYTE)
        if b <= 0xc3:
            return T_BOOL
        if b in _FIXEXT:
            return T_EXT
        return _HEADS[b][0]

    def head(self) -> tuple[int, Any]:
        """Consume a header: (type, value) for scalars, (type, length or count) otherwise."""
        t = self.peek()
        b = self.data[self.pos]
        self.pos += 1
        if b <= 0x7f:
            return T_INT, b
        if b >= 0xe0:
            return T_INT, b - 0x100
        if b <= 0x8f:
            return T_MAP, b & 0x0f
        if b <= 0x9f:
            return T_ARRAY, b & 0x0f
        if b <= 0xbf:
            return T_STR, b & 0x1f
        if b == 0xc0:
            return T_NIL, None
        if b <= 0xc3:
            return T_BOOL, b == 0xc3
        if b in _FIXEXT:
            return T_EXT, _FIXEXT[b] + 1
        _, width, signed = _HEADS[b]
        pos = self._need(width)
        if t == T_FLOAT:
            x = (_F32 if width == 4 else _F64).unpack_from(self.data, pos)[0]
            return T_FLOAT, x
        x = (_S if signed else _U)[width].unpack_from(self.data, pos)[0]
        if t == T_EXT:
            return T_EXT, x + 1  # the type byte is part of the payload
        return t, x

    def take(self, n: int) -> Any:
        pos = self._need(n)
        return self.data[pos:pos + n]

    def skip(self, depth: int) -> None:
        """Consume one complete value of any type."""
        t, x = self.head()
        if t in (T_STR, T_BIN, T_EXT):
            self._need(x)
        elif t == T_ARRAY or t == T_MAP:
            _check_depth(depth, NestingTooDeepError)
            for _ in range(x if t == T_ARRAY else 2 * x):
                self.skip(depth + 1)

    # -- the message --

    def message(self) -> Message:
        t, count = self.head()
        if t == T_ARRAY:
            if count == 0:
                raise UnknownMessageTypeError(T.NO_TAG)
            spec = self.tag()
            return self._located(spec, self.struct_array, count - 1)
        if t == T_MAP:
            start = self.pos
            found: L.StructSpec | None = None
            for _ in range(count):
                if self.key(None) == _TAG_KEY:
                    if found is not None:
                        raise ArityError(T.DUPLICATE_TAG)
                    found = self.tag()
                else:
                    self.skip(2)
            if found is None:
                raise UnknownMessageTypeError(T.NO_TAG)
            self.pos = start
            return self._located(found, self.struct_map, count)
        raise WrongTypeError(T.expected_type("array or map", t))

    def _located(self, spec: L.StructSpec, reader: Any, count: int) -> Message:
        try:
            return reader(spec, count, 1)
        except DecodeError as exc:
            exc.message_type = spec.name
            raise

    def tag(self) -> L.StructSpec:
        t, x = self.head()
        if t == T_STR or t == T_BIN:
            raw = bytes(self.take(x))
            spec = L.BY_TAG.get(raw.decode("utf-8", "replace"))
            if spec is None or (spec.tag or "").encode() != raw:
                raise UnknownMessageTypeError(T.unknown_tag(raw))
            return spec
        if t == T_INT:
            if 0 <= x < len(L.RUST_VARIANTS):
                return L.RUST_VARIANTS[x]
            raise UnknownMessageTypeError(T.unknown_tag_index(x))
        raise WrongTypeError(T.expected_type("message type tag", t))

    def key(self, spec: L.StructSpec | None) -> int:
        """Read a struct map key: field index, -1 to ignore, or _TAG_KEY for "type"."""
        t, x = self.head()
        if t == T_STR or t == T_BIN:
            raw = bytes(self.take(x))
            if spec is None:
                return _TAG_KEY if raw == b"type" else -1
            return _NAMES[spec.index].get(raw, -1)
        if t == T_INT and x >= 0:
            if spec is None:
                return -1
            return x if x < len(spec.fields) else -1
        raise WrongTypeError(T.expected_type("field name", t))

    def struct_array(self, spec: L.StructSpec, n: int, depth: int) -> Any:
        _check_depth(depth, NestingTooDeepError)
        fields = spec.fields
        if not spec.min_len <= n <= len(fields):
            raise ArityError(T.arity(n, spec.min_len, len(fields)))
        obj: Any = object.__new__(spec.cls)
        for i, f in enumerate(fields):
            if i < n:
                try:
                    value = self.field(f, depth + 1)
                except DecodeError as exc:
                    exc.add_context(f.name)
                    raise
            else:
                value = f.factory() if f.factory is not None else f.default
            setattr(obj, f.name, value)
        return obj

    def struct_map(self, spec: L.StructSpec, count: int, depth: int) -> Any:
        _check_depth(depth, NestingTooDeepError)
        fields = spec.fields
        obj: Any = object.__new__(spec.cls)
        seen = 0
        for _ in range(count):
            i = self.key(spec)
            if i < 0:  # unknown keys, and a message's "type" (already read), are skipped
                self.skip(depth + 1)
                continue
            f = fields[i]
            try:
                if seen & (1 << i):
                    raise ArityError(T.DUPLICATE_FIELD)
                seen |= 1 << i
                setattr(obj, f.name, self.field(f, depth + 1))
            except DecodeError as exc:
                exc.add_context(f.name)
                raise
        for i, f in enumerate(fields):
            if not seen & (1 << i):
                if f.required:
                    missing = ArityError(T.MISSING_FIELD)
                    missing.add_context(f.name)
                    raise missing
                setattr(obj, f.name, f.factory() if f.factory is not None else f.default)
        return obj

    def field(self, f: L.FieldSpec, depth: int) -> Any:
        if f.optional and self.peek() == T_NIL:
            self.pos += 1
            return None
        return self.value(f.type, depth)

    def value(self, t: L.TypeSpec, depth: int) -> Any:
        k = t.kind
        if k == L.K_JSON:
            return self.json(depth)
        typ, x = self.head()
        if k == L.K_STR:
            if typ == T_STR or typ == T_BIN:
                return _utf8(self.take(x))
        elif k == L.K_BOOL:
            if typ == T_BOOL:
                return x
        elif k == L.K_U64:
            if typ == T_INT:
                if x < 0:
                    raise OutOfRangeError(T.int_range(x, "u64"))
                return x
        elif k == L.K_I64:
            if typ == T_INT:
                if x > I64_MAX:
                    raise OutOfRangeError(T.int_range(x, "i64"))
                return x
        elif k == L.K_UUID:
            if typ == T_BIN:
                if x != 16:
                    raise InvalidValueError(T.uuid_bin_length(x))
                return uuid.UUID(bytes=bytes(self.take(16)))
            if typ == T_STR:
                return _parse_uuid(_utf8(self.take(x)))
        elif k == L.K_TIME:
            if typ == T_ARRAY:
                _check_depth(depth, NestingTooDeepError)
                if x != 2:
                    raise ArityError(T.arity(x, 2, 2))
                secs = self.uint(64)
                return _timestamp(secs, self.uint(32))
            if typ == T_MAP:
                _check_depth(depth, NestingTooDeepError)
                return self.time_map(x, depth)
        elif k == L.K_ENUM:
            if typ == T_STR:
                return _enum(t, bytes(self.take(x)))
            if typ == T_MAP:
                _check_depth(depth, NestingTooDeepError)
                return self.enum_map(t, x, depth)
        elif k == L.K_STRUCT:
            if typ == T_ARRAY:
                return self.struct_array(L.STRUCTS[t.index], x, depth)
            if typ == T_MAP:
                return self.struct_map(L.STRUCTS[t.index], x, depth)
        elif k == L.K_BYTES or k == L.K_BIN:
            if typ == T_BIN:
                return bytes(self.take(x))
            if typ == T_ARRAY:
                _check_depth(depth, NestingTooDeepError)
                return bytes(self.u8(i) for i in range(x))
        elif k == L.K_LIST:
            if typ == T_ARRAY:
                _check_depth(depth, NestingTooDeepError)
                return [self.item(t.element, depth + 1, i) for i in range(x)]
        elif k == L.K_MAP:
            if typ == T_MAP:
                _check_depth(depth, NestingTooDeepError)
                out = {}
                for _ in range(x):
                    key = self.map_key(True)
                    out[key] = self.item(t.element, depth + 1, key)
                return out
        raise WrongTypeError(T.expected_type(t.expected, typ))

    def item(self, t: L.TypeSpec, depth: int, where: int | str) -> Any:
        try:
            return self.value(t, depth)
        except DecodeError as exc:
            exc.add_context(f"[{where!r}]")
            raise

    def uint(self, bits: int) -> int:
        t, x = self.head()
        if t != T_INT:
            raise WrongTypeError(T.expected_type(f"u{bits}", t))
        if not 0 <= x < (1 << bits):
            raise OutOfRangeError(T.int_range(x, f"u{bits}"))
        return x

    def u8(self, i: int) -> int:
        try:
            return self.uint(8)
        except DecodeError as exc:
            exc.add_context(f"[{i!r}]")
            raise

    def map_key(self, allow_bin: bool) -> str:
        t, x = self.head()
        if t == T_STR or (allow_bin and t == T_BIN):
            return _utf8(self.take(x))
        raise WrongTypeError(T.expected_type("str map key", t))

    def time_map(self, count: int, depth: int) -> int:
        parts: list[int | None] = [None, None]
        for _ in range(count):
            t, x = self.head()
            if t != T_STR and t != T_BIN:
                raise WrongTypeError(T.expected_type("field name", t))
            raw = bytes(self.take(x))
            i = _TIME_KEYS.get(raw)
            if i is None:
                raise ArityError(T.unknown_field(raw))
            if parts[i] is not None:
                raise ArityError(T.duplicate_named_field(_TIME_NAMES[i]))
            parts[i] = self.uint(64 if i == 0 else 32)
        for i in (0, 1):
            if parts[i] is None:
                raise ArityError(T.missing_named_field(_TIME_NAMES[i]))
        return _timestamp(parts[0], parts[1])  # type: ignore[arg-type]

    def enum_map(self, t: L.TypeSpec, count: int, depth: int) -> Any:
        if count != 1:
            raise InvalidValueError(T.enum_map_entries(t.expected, count))
        typ, x = self.head()
        if typ != T_STR and typ != T_BIN:
            raise WrongTypeError(T.enum_variant_name(t.expected, typ))
        member = _enum(t, bytes(self.take(x)))
        typ, x = self.head()
        if typ == T_NIL or (typ == T_MAP and x == 0):
            return member
        raise WrongTypeError(T.unit_variant(typ))

    def json(self, depth: int) -> Any:
        t, x = self.head()
        if t == T_NIL or t == T_BOOL or t == T_INT:
            return x
        if t == T_FLOAT:
            return x if math.isfinite(x) else None
        if t == T_STR:
            return _utf8(self.take(x))
        if t == T_ARRAY:
            _check_depth(depth, NestingTooDeepError)
            return [self.json(depth + 1) for _ in range(x)]
        if t == T_MAP:
            _check_depth(depth, NestingTooDeepError)
            out = {}
            for _ in range(x):
                key = self.map_key(False)
                out[key] = self.json(depth + 1)
            return out
        raise WrongTypeError(T.expected_type("JSON value", t))


def _timestamp(secs: int, nanos: int) -> int:
    """Nanoseconds since the epoch; nanos >= 1e9 carry into secs as in serde."""
    if secs + nanos // NANOS > I64_MAX:
        raise OutOfRangeError(T.time_secs_nanos_range(secs, nanos))
    return secs * NANOS + nanos


def _enum(t: L.TypeSpec, raw: bytes) -> Any:
    member = _ENUM_BYTES[t.index].get(raw)
    if member is None:
        raise UnknownEnumValueError(T.unknown_enum(t.expected, raw))
    return member


_HEX = frozenset("0123456789abcdefABCDEF")


def _parse_uuid(s: str) -> uuid.UUID:
    """Parse a UUID string the way Rust's ``Uuid::parse_str`` does (not Python's laxer rules)."""
    body = s
    if len(s) == 45 and s[:9].lower() == "urn:uuid:":
        body = s[9:]
    elif len(s) == 38 and s[0] == "{" and s[-1] == "}":
        body = s[1:-1]
    if len(body) == 36 and all(body[i] == "-" for i in (8, 13, 18, 23)):
        body = body.replace("-", "")
    if len(body) == 32 and all(c in _HEX for c in body):
        return uuid.UUID(hex=body)
    raise InvalidValueError(T.bad_uuid_string(s))
