"""Hypothesis strategies for the parity tests, derived from the wire layout tables.

Nothing here lists the fields of a message class: every strategy is built by walking
:mod:`descartes_fast.wire.layout` (``STRUCTS`` / ``MESSAGES`` and their ``TypeSpec`` trees),
so a schema change is picked up without touching this file.

* :func:`messages` / :func:`message_of` -- random *valid* message objects;
* :func:`value_of` -- a valid Python value for one ``TypeSpec``;
* :func:`named_form` -- the "named" (map form) MessagePack bytes of a message, as a
  serde ``Serialize`` with struct-as-map would write them, with every alternative the
  decoder accepts chosen at random (nested arrays or maps, UUID bin or text, timestamp
  ``[secs, nanos]`` or ``{secs_since_epoch, nanos_since_epoch}``, ...);
* :func:`pack_loose` -- MessagePack with every header in a random valid width;
* :func:`msgpack_values` -- arbitrary MessagePack values (for structure-aware fuzzing);
* :func:`wrong_values` / :func:`near_misses` -- Python values of a wrong type or out of
  range for a field, and containers that are wrong in one key or element only;
* :func:`locations` -- every place a value sits in a message (to put a wrong one there).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
import struct
import uuid
from typing import Any

import msgpack
from hypothesis import strategies as st

from descartes_fast.wire import layout as L

U64_MAX = (1 << 64) - 1
I64_MAX = (1 << 63) - 1
I64_MIN = -(1 << 63)
NANOS = 1_000_000_000
#: the largest timestamp the wire can carry: secs = i64::MAX, nanos = 999_999_999
TIME_MAX = I64_MAX * NANOS + NANOS - 1

#: JSON containers nest at most this deep (well under MAX_DEPTH)
JSON_DEPTH = 4

# -- scalars ----------------------------------------------------------------------------

# lengths (in characters of a 1-byte code point) at the MessagePack size-class edges
_STR_EDGES = (0, 1, 31, 32, 33, 255, 256, 65535, 65536)

_U64_EDGES = (0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0xffffffff, 0x100000000,
              I64_MAX, I64_MAX + 1, U64_MAX - 1, U64_MAX)
_I64_EDGES = (0, 1, -1, -31, -32, -33, -127, -128, -129, -32767, -32768, -32769,
              -(1 << 31), -(1 << 31) - 1, I64_MIN + 1, I64_MIN,
              0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0xffffffff, 0x100000000,
              I64_MAX - 1, I64_MAX)
_TIME_EDGES = (0, 1, NANOS - 1, NANOS, 1_700_000_000 * NANOS + 123_456_789,
               9_000_000_000 * NANOS - 1, 9_000_000_000 * NANOS, 9_000_000_001 * NANOS + 5,
               U64_MAX, I64_MAX, I64_MAX * NANOS, TIME_MAX - 1, TIME_MAX)


def texts(max_size: int = 12) -> st.SearchStrategy[str]:
    """Unicode text (no lone surrogates), mostly short, sometimes at a size-class edge."""
    return st.one_of(
        st.text(max_size=max_size),
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=max_size),
        st.builds(lambda n, c: c * n, st.sampled_from(_STR_EDGES), st.sampled_from("aé€😀")),
    )


def json_values(depth: int = JSON_DEPTH) -> st.SearchStrategy[Any]:
    """JSON-like values nested up to *depth* container levels."""
    leaves = st.one_of(
        st.none(), st.booleans(),
        st.integers(I64_MIN, U64_MAX), st.sampled_from(_I64_EDGES + _U64_EDGES),
        st.floats(allow_nan=False, allow_infinity=False),
        texts(),
    )
    if depth <= 0:
        return leaves
    inner = json_values(depth - 1)
    return st.one_of(
        leaves,
        st.lists(inner, max_size=4),
        st.dictionaries(texts(8), inner, max_size=4),
    )


_cache: dict[Any, st.SearchStrategy[Any]] = {}


def value_of(t: L.TypeSpec) -> st.SearchStrategy[Any]:
    """A valid, non-None Python value of wire type *t*."""
    key = t
    if key in _cache:
        return _cache[key]
    k = t.kind
    if k == L.K_STR:
        s = texts()
    elif k == L.K_BOOL:
        s = st.booleans()
    elif k == L.K_U64:
        s = st.one_of(st.integers(0, U64_MAX), st.sampled_from(_U64_EDGES))
    elif k == L.K_I64:
        s = st.one_of(st.integers(I64_MIN, I64_MAX), st.sampled_from(_I64_EDGES))
    elif k == L.K_UUID:
        s = st.one_of(st.uuids(), st.sampled_from([uuid.UUID(int=0), uuid.UUID(int=(1 << 128) - 1)]))
    elif k == L.K_TIME:
        s = st.one_of(st.integers(0, TIME_MAX), st.integers(0, 4_102_444_800 * NANOS),
                      st.sampled_from(_TIME_EDGES))
    elif k == L.K_ENUM:
        s = st.sampled_from(list(t.ref))
    elif k == L.K_STRUCT:
        s = st.deferred(lambda: struct_of(L.BY_CLASS[t.ref]))
    elif k == L.K_BYTES or k == L.K_BIN:
        s = st.one_of(st.binary(max_size=40),
                      st.builds(lambda n, b: bytes([b]) * n,
                                st.sampled_from([15, 16, 17, 255, 256]), st.integers(0, 255)))
    elif k == L.K_JSON:
        s = json_values()
    elif k == L.K_LIST:
        s = st.lists(value_of(t.elem), max_size=4)
    elif k == L.K_MAP:
        s = st.dictionaries(texts(8), value_of(t.elem), max_size=4)
    else:  # pragma: no cover - a new kind needs a strategy
        raise AssertionError(f"no strategy for kind {k}")
    _cache[key] = s
    return s


def field_value(f: L.FieldSpec) -> st.SearchStrategy[Any]:
    """A valid value for field *f* (None too, if it is optional)."""
    s = value_of(f.type)
    if f.optional:
        s = st.one_of(st.none(), s)
    return s


def struct_of(spec: L.StructSpec) -> st.SearchStrategy[Any]:
    """Instances of the struct or message *spec*, every field drawn independently."""
    return st.builds(lambda kw: spec.cls(**kw),
                     st.fixed_dictionaries({f.name: field_value(f) for f in spec.fields}))


def message_of(spec: L.StructSpec) -> st.SearchStrategy[Any]:
    return struct_of(spec)


def messages() -> st.SearchStrategy[Any]:
    """A valid message of any type."""
    return st.one_of([message_of(s) for s in L.MESSAGES])


# -- the named (map) form -------------------------------------------------------------


def _default_of(f: L.FieldSpec) -> Any:
    return f.factory() if f.factory is not None else f.default


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _junk(rnd: random.Random) -> Any:
    """A throwaway value for an unknown map key (the decoder skips it)."""
    return rnd.choice([None, True, -7, 3.5, "junk", b"\x00\xff", [1, [2, {"a": None}]],
                       {"k": [b"x", 1.0]}, msgpack.ExtType(5, b"ext"), U64_MAX, I64_MIN])


def _named(v: Any, t: L.TypeSpec, rnd: random.Random) -> Any:
    """The msgpack-ready form of value *v* (not None) of type *t*, alternatives at random."""
    k = t.kind
    if k == L.K_STR:
        return v.encode() if rnd.random() < 0.2 else v
    if k == L.K_UUID:
        return rnd.choice([
            lambda: v.bytes, lambda: str(v), lambda: v.hex, lambda: str(v).upper(),
            lambda: v.hex.upper(), lambda: "urn:uuid:" + str(v), lambda: "{" + str(v) + "}",
        ])()
    if k == L.K_TIME:
        secs, nanos = divmod(v, NANOS)
        if secs > 0 and nanos + NANOS < (1 << 32) and rnd.random() < 0.2:
            secs, nanos = secs - 1, nanos + NANOS  # nanos past a second carry into secs
        if rnd.random() < 0.5:
            return [secs, nanos]
        items = [("secs_since_epoch", secs), ("nanos_since_epoch", nanos)]
        rnd.shuffle(items)
        return dict(items)
    if k == L.K_ENUM:
        r = rnd.random()
        if r < 0.15:
            return {v.value: None}
        if r < 0.25:
            return {v.value.encode(): {}}
        return v.value
    if k == L.K_STRUCT:
        return _named_struct(v, L.BY_CLASS[t.ref], rnd, rnd.random() < 0.5, None)
    if k == L.K_BYTES or k == L.K_BIN:
        return list(v) if rnd.random() < 0.3 else bytes(v)
    if k == L.K_JSON:
        return v
    if k == L.K_LIST:
        return [_named(e, t.elem, rnd) for e in v]
    if k == L.K_MAP:
        return {(key.encode() if rnd.random() < 0.2 else key): _named(val, t.elem, rnd)
                for key, val in v.items()}
    return v  # bool, u64, i64


def _named_field(obj: Any, f: L.FieldSpec, rnd: random.Random) -> Any:
    v = getattr(obj, f.name)
    return None if v is None else _named(v, f.type, rnd)


def _named_struct(obj: Any, spec: L.StructSpec, rnd: random.Random, as_map: bool,
                  tag: Any) -> Any:
    if not as_map:
        n = len(spec.fields)
        # a shortened array may leave out trailing fields that hold their default
        while n > spec.min_len and rnd.random() < 0.5:
            f = spec.fields[n - 1]
            if f.required or not _same(getattr(obj, f.name), _default_of(f)):
                break
            n -= 1
        return [_named_field(obj, f, rnd) for f in spec.fields[:n]]
    items = []
    for f in spec.fields:
        if not f.required and _same(getattr(obj, f.name), _default_of(f)) and rnd.random() < 0.3:
            continue  # omitted: the default is used
        items.append((f.name, _named_field(obj, f, rnd)))
    if tag is not None:
        items.append(("type", tag))
    for i in range(rnd.choice([0, 0, 0, 1, 2])):
        items.append((f"zz_unknown_{i}", _junk(rnd)))
    rnd.shuffle(items)
    return dict(items)


def named_form(msg: Any, rnd: random.Random | None = None) -> bytes:
    """The map-form ("named") MessagePack bytes of *msg*: a map with the tag under "type".

    Key order is shuffled, and each nested value independently takes one of the
    representations the decoder accepts.
    """
    rnd = rnd if rnd is not None else random.Random(0)
    spec = L.BY_CLASS[type(msg)]
    tag: Any = spec.tag
    if spec in L.RUST_VARIANTS and rnd.random() < 0.1:
        tag = L.RUST_VARIANTS.index(spec)  # serde's variant index
    elif rnd.random() < 0.1:
        tag = spec.tag.encode()
    tree = _named_struct(msg, spec, rnd, True, tag)
    if rnd.random() < 0.5:
        return pack_loose(tree, rnd)
    return msgpack.packb(tree, use_bin_type=True)


def named_forms() -> st.SearchStrategy[tuple[Any, bytes]]:
    """(message, its named-form bytes)."""
    return st.builds(lambda m, rnd: (m, named_form(m, rnd)), messages(), st.randoms(use_true_random=True))


# -- arbitrary MessagePack values (for structure-aware fuzzing) -------------------------


def msgpack_values(depth: int = 3) -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(), st.booleans(),
        st.integers(I64_MIN, U64_MAX), st.sampled_from(_I64_EDGES + _U64_EDGES),
        st.floats(), st.floats(width=32),
        st.text(max_size=20), st.binary(max_size=20),
        st.sampled_from([b"\x00" * 16, "00000000-0000-0000-0000-000000000000", "type",
                         "secs_since_epoch", "nanos_since_epoch", "idle", "stdout", "pause",
                         b"\xff\xfe", "x" * 40]),
        st.sampled_from([f.name for s in L.STRUCTS for f in s.fields] + [s.tag for s in L.MESSAGES]),
        st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=17)),
    )
    if depth <= 0:
        return leaves
    inner = msgpack_values(depth - 1)
    return st.one_of(
        leaves,
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers(-3, 40), st.binary(max_size=4),
                                  st.sampled_from([f.name for s in L.STRUCTS for f in s.fields])),
                        inner, max_size=4),
    )


def _f32_exact(x: float) -> bool:
    try:
        return math.isnan(x) or struct.unpack(">f", struct.pack(">f", x))[0] == x
    except OverflowError:
        return False


def _pick_len(n: int, rnd: random.Random, fix: tuple[int, int] | None, wide: list[tuple[int, int]]) -> bytes:
    """A length header: (fix base, fix limit) and [(code, width)] of the wider forms."""
    options = []
    if fix is not None and n < fix[1]:
        options.append(bytes([fix[0] | n]))
    for code, width in wide:
        if n < 1 << (8 * width):
            options.append(bytes([code]) + n.to_bytes(width, "big"))
    return options[0] if rnd.random() < 0.5 else rnd.choice(options)


def _loose(v: Any, rnd: random.Random, out: bytearray) -> None:
    if v is None:
        out.append(0xc0)
    elif v is True or v is False:
        out.append(0xc3 if v else 0xc2)
    elif isinstance(v, int):
        options = []
        if 0 <= v <= 0x7f:
            options.append(bytes([v]))
        if -32 <= v < 0:
            options.append(bytes([v & 0xff]))
        for code, width in ((0xcc, 1), (0xcd, 2), (0xce, 4), (0xcf, 8)):
            if 0 <= v < 1 << (8 * width):
                options.append(bytes([code]) + v.to_bytes(width, "big"))
        for code, width in ((0xd0, 1), (0xd1, 2), (0xd2, 4), (0xd3, 8)):
            if -(1 << (8 * width - 1)) <= v < 1 << (8 * width - 1):
                options.append(bytes([code]) + v.to_bytes(width, "big", signed=True))
        out += options[0] if rnd.random() < 0.5 else rnd.choice(options)
    elif isinstance(v, float):
        if _f32_exact(v) and rnd.random() < 0.3:
            out += b"\xca" + struct.pack(">f", v)
        else:
            out += b"\xcb" + struct.pack(">d", v)
    elif isinstance(v, str):
        raw = v.encode("utf-8", "surrogatepass")
        out += _pick_len(len(raw), rnd, (0xa0, 32), [(0xd9, 1), (0xda, 2), (0xdb, 4)]) + raw
    elif isinstance(v, (bytes, bytearray)):
        out += _pick_len(len(v), rnd, None, [(0xc4, 1), (0xc5, 2), (0xc6, 4)]) + bytes(v)
    elif isinstance(v, msgpack.ExtType):
        n = len(v.data)
        fixed = {1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8}
        if n in fixed and rnd.random() < 0.5:
            out.append(fixed[n])
        else:
            out += _pick_len(n, rnd, None, [(0xc7, 1), (0xc8, 2), (0xc9, 4)])
        out += struct.pack(">b", v.code) + v.data
    elif isinstance(v, (list, tuple)):
        out += _pick_len(len(v), rnd, (0x90, 16), [(0xdc, 2), (0xdd, 4)])
        for e in v:
            _loose(e, rnd, out)
    elif isinstance(v, dict):
        out += _pick_len(len(v), rnd, (0x80, 16), [(0xde, 2), (0xdf, 4)])
        for k, e in v.items():
            _loose(k, rnd, out)
            _loose(e, rnd, out)
    else:  # pragma: no cover
        raise TypeError(f"cannot pack {type(v).__name__}")


def pack_loose(value: Any, rnd: random.Random) -> bytes:
    """MessagePack of *value*, each header in a random valid width (not only the shortest).

    Floats go out as float32 only when that is exact, so the decoded value is unchanged.
    """
    out = bytearray()
    _loose(value, rnd, out)
    return bytes(out)


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    """The msgpack tree of *data*, bin and str kept apart, any map keys allowed."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)


# -- wrong values for the encoder -------------------------------------------------------


class _StrSub(str):
    pass


class _IntSub(int):
    pass


class _FloatSub(float):
    pass


class _IntEnum(enum.IntEnum):
    ONE = 1
    BIG = U64_MAX


def _non_contiguous() -> memoryview:
    return memoryview(b"abcdef")[::2]


def _deep_list(n: int) -> Any:
    v: Any = []
    for _ in range(n):
        v = [v]
    return v


def _deep_dict(n: int) -> Any:
    v: Any = {}
    for _ in range(n):
        v = {"k": v}
    return v


def _any_struct() -> st.SearchStrategy[Any]:
    """An instance of some struct or message class (possibly even the right one)."""
    return st.sampled_from(L.STRUCTS).flatmap(struct_of)


_WRONG_FIXED: tuple[Any, ...] = (
    0, 1, -1, 2, 255, 256, -129, I64_MIN, I64_MIN - 1, I64_MAX, I64_MAX + 1, U64_MAX, U64_MAX + 1,
    -(1 << 100), 1 << 100, TIME_MAX, TIME_MAX + 1,
    True, False, 0.0, -0.0, 1.5, math.nan, math.inf, -math.inf, 1e300,
    "", "x", "idle", "stdout", "pause", "IDLE", "\ud800", "a\udcffb", "é" * 40,
    b"", b"\x80", b"\x00" * 16, bytearray(b"ab\xff"), memoryview(b"xyz"),
    (), (1, 2), [], [1], [None], ["x", "y"], [uuid.UUID(int=5)], [b"a"], [1.5, "a", None],
    {}, {"a": 1}, {"a": None}, {1: "a"}, {b"k": "v"}, {"a": {"b": [1, math.nan]}}, {"a": "\ud800"},
    {"\ud800": 1}, {"a": b"x"},
    None, object(), uuid.UUID(int=7), complex(1, 2), frozenset(), {1, 2},
    _StrSub("idle"), _StrSub("nope"), _IntSub(5), _IntSub(-5), _FloatSub(2.5),
    _IntEnum.ONE, _IntEnum.BIG,
)


def wrong_values(t: L.TypeSpec | None = None) -> st.SearchStrategy[Any]:
    """Values that are mostly not valid for a field of type *t* (some happen to be valid)."""
    fixed = st.sampled_from(_WRONG_FIXED)
    made = st.one_of(
        st.builds(_non_contiguous),
        st.builds(lambda: memoryview(b"\x01\x00\x00\x00\x02\x00\x00\x00").cast("i")),
        st.builds(_deep_list, st.integers(250, 262)),
        st.builds(_deep_dict, st.integers(250, 262)),
        st.sampled_from([e for cls in L.ENUMS for e in cls]),
        st.integers(), st.floats(), st.text(max_size=5), st.binary(max_size=5),
        st.sampled_from([L.TypeSpec(k) for k in (L.K_STR, L.K_BOOL, L.K_U64, L.K_I64, L.K_UUID,
                                                 L.K_TIME, L.K_BYTES, L.K_BIN, L.K_JSON)]).flatmap(value_of),
        _any_struct(),
    )
    if t is not None and t.kind in (L.K_LIST, L.K_MAP, L.K_JSON):
        return st.one_of(fixed, made, near_misses(t), near_misses(t))
    return st.one_of(fixed, made)


_BAD_LEAVES = st.sampled_from([object(), math.nan, -math.inf, b"b", bytearray(b"b"), {1}, 1 << 64,
                                I64_MIN - 1, "\ud800", complex(0, 1), uuid.UUID(int=3)])
_BAD_KEYS = st.sampled_from([1, None, b"k", 1.5, (1,), "\udc80", True])


def near_misses(t: L.TypeSpec) -> st.SearchStrategy[Any]:
    """Containers of type *t* that are valid but for one key or element deep inside."""
    if t.kind == L.K_LIST:
        return st.builds(lambda v, i, bad: v[:i] + [bad] + v[i:],
                         st.lists(value_of(t.elem), max_size=3), st.integers(0, 3),
                         st.one_of(_BAD_LEAVES, wrong_values(t.elem)))
    if t.kind == L.K_MAP:
        def put_bad(v: dict, key: Any, bad: Any) -> dict:
            v = dict(v)
            v[key] = bad
            return v
        good_key = st.text(max_size=3)
        return st.one_of(
            st.builds(put_bad, st.dictionaries(good_key, value_of(t.elem), max_size=3),
                      _BAD_KEYS, st.one_of(value_of(t.elem), _BAD_LEAVES)),
            st.builds(put_bad, st.dictionaries(good_key, value_of(t.elem), max_size=3),
                      st.one_of(good_key, _BAD_KEYS), _BAD_LEAVES))
    if t.kind == L.K_JSON:
        return st.recursive(
            _BAD_LEAVES,
            lambda inner: st.one_of(
                st.builds(lambda v, bad: v + [bad], st.lists(json_values(1), max_size=2), inner),
                st.builds(lambda v, k, bad: {**v, k: bad},
                          st.dictionaries(st.text(max_size=3), json_values(1), max_size=2),
                          st.one_of(st.text(max_size=3), _BAD_KEYS), inner),
                st.builds(lambda v, k: {**v, k: None},
                          st.dictionaries(st.text(max_size=3), json_values(1), max_size=2), _BAD_KEYS)),
            max_leaves=3)
    return st.nothing()


def locations(obj: Any, spec: L.StructSpec, out: list | None = None) -> list[tuple[Any, Any, L.TypeSpec]]:
    """Every place a value sits in *obj*: (container, key or field name, wire type).

    A container is a struct object (key = field name, set with setattr), a list (key =
    index) or a dict (key = map key); nested structs, lists and maps are walked too.
    """
    out = [] if out is None else out
    for f in spec.fields:
        out.append((obj, f.name, f.type))
        _locations_in(getattr(obj, f.name, None), f.type, out)
    return out


def _locations_in(v: Any, t: L.TypeSpec, out: list) -> None:
    if v is None:
        return
    if t.kind == L.K_STRUCT and dataclasses.is_dataclass(v):
        locations(v, L.BY_CLASS[type(v)], out)
    elif t.kind == L.K_LIST and isinstance(v, list):
        for i, e in enumerate(v):
            out.append((v, i, t.elem))
            _locations_in(e, t.elem, out)
    elif t.kind == L.K_MAP and isinstance(v, dict):
        for key, e in v.items():
            out.append((v, key, t.elem))
            _locations_in(e, t.elem, out)


def get(container: Any, key: Any) -> Any:
    if isinstance(container, (list, dict)):
        return container[key]
    return getattr(container, key)


def put(container: Any, key: Any, value: Any) -> None:
    if isinstance(container, (list, dict)):
        container[key] = value
    else:
        setattr(container, key, value)
