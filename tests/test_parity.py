"""Differential tests: the compiled and the pure-Python codec twins must agree exactly.

For every input both twins get, they must give the same bytes (encode), equal objects
(decode), or raise the same exception type with the same text; and nothing but a
:class:`~descartes_fast.wire.errors.ProtocolError` may escape from bad input.
Inputs are generated from the layout tables (``tests/strategies.py``).
"""

from __future__ import annotations

import array
import os
import random
import uuid
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import strategies as S
from support.parity import assert_parity, nodes, outcome, same_outcome, same_value, show

from descartes_fast.wire import layout as L
from descartes_fast.wire.constants import MAX_DEPTH, MAX_MESSAGE_SIZE

pytestmark = pytest.mark.c_extension

_SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
             HealthCheck.data_too_large, HealthCheck.filter_too_much]


#: multiplies every max_examples (e.g. DESCARTES_PARITY_SCALE=20 for a long soak)
_SCALE = float(os.environ.get("DESCARTES_PARITY_SCALE", "1"))


def fast(n: int) -> settings:
    return settings(max_examples=max(1, int(n * _SCALE)), deadline=None,
                    suppress_health_check=_SUPPRESS)


# -- helpers ----------------------------------------------------------------------------


def decode_parity(both, data: Any) -> tuple:
    c_impl, p_impl = both
    c, p = outcome(c_impl.decode, data), outcome(p_impl.decode, data)
    shown = data.hex() if isinstance(data, (bytes, bytearray)) else data
    assert_parity(c, p, "decode", shown)
    return c


def encode_parity(both, msg: Any) -> tuple:
    c_impl, p_impl = both
    c, p = outcome(c_impl.encode, msg), outcome(p_impl.encode, msg)
    assert_parity(c, p, "encode", msg)
    return c


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", L.MESSAGES, ids=lambda s: s.name)
@fast(40)
@given(data=st.data())
def test_roundtrip(both, spec, data):
    msg = data.draw(S.message_of(spec), label="msg")
    c_impl, p_impl = both
    c_bytes, p_bytes = c_impl.encode(msg), p_impl.encode(msg)
    assert c_bytes == p_bytes, f"encode differs for {msg!r}:\n{c_bytes.hex()}\n{p_bytes.hex()}"
    for impl in both:
        back = impl.decode(c_bytes)
        assert same_value(back, msg), f"{impl.name}: {back!r} != {msg!r}"


@fast(300)
@given(pair=S.named_forms())
def test_named_form_decodes(both, pair):
    msg, data = pair
    for impl in both:
        back = impl.decode(data)
        assert same_value(back, msg), f"{impl.name} on {data.hex()}: {back!r} != {msg!r}"
    decode_parity(both, data)


# -- bad bytes -----------------------------------------------------------------------------


_INTERESTING = [0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4,
                0xc7, 0xca, 0xcb, 0xcc, 0xcf, 0xd0, 0xd3, 0xd4, 0xd8, 0xd9, 0xdb, 0xdc, 0xdd,
                0xde, 0xdf, 0xe0, 0xff]


def _tagged_garbage() -> st.SearchStrategy[bytes]:
    """A message head (array or map with a real tag) followed by random bytes."""
    tag = st.one_of(st.sampled_from([s.tag for s in L.MESSAGES]).map(S.pack),
                    st.integers(-2, 16).map(S.pack),
                    st.sampled_from([s.tag for s in L.MESSAGES]).map(lambda t: S.pack(t.encode())))
    array_head = st.builds(lambda n, t: bytes([0x90 | n]) + t, st.integers(0, 15), tag)
    map_head = st.builds(lambda n, t: bytes([0x80 | n]) + S.pack("type") + t, st.integers(0, 15), tag)
    return st.builds(lambda h, rest: h + rest, st.one_of(array_head, map_head),
                     st.binary(max_size=48))


@fast(800)
@given(data=st.one_of(st.binary(max_size=64), _tagged_garbage()))
def test_random_bytes(both, data):
    decode_parity(both, data)


def _mutate(data: bytes, draw) -> bytes:
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 3), label="n mutations")):
        op = draw(st.sampled_from(["truncate", "flip", "set", "insert", "delete", "append",
                                   "duplicate"]), label="op")
        # positions uniformly (hypothesis's integers() favour 0, which mostly cuts the tag)
        i = draw(st.randoms(use_true_random=True), label="rnd").randint(0, len(b))
        if op == "truncate":
            b = b[:i]
        elif op == "flip" and i < len(b):
            b[i] ^= draw(st.integers(1, 255), label="mask")
        elif op == "set" and i < len(b):
            b[i] = draw(st.sampled_from(_INTERESTING), label="byte")
        elif op == "insert":
            b[i:i] = draw(st.one_of(st.binary(min_size=1, max_size=4),
                                    st.sampled_from(_INTERESTING).map(lambda x: bytes([x]))),
                          label="insert")
        elif op == "delete":
            j = draw(st.integers(i, min(len(b), i + 4)), label="to")
            del b[i:j]
        elif op == "append":
            b += draw(st.binary(min_size=1, max_size=8), label="junk")
        elif op == "duplicate":
            j = draw(st.integers(i, min(len(b), i + 8)), label="to")
            b[i:i] = b[i:j]
    return bytes(b)


def _valid_bytes(both, draw) -> tuple[Any, bytes]:
    msg = draw(S.messages(), label="msg")
    if draw(st.booleans(), label="named"):
        return msg, S.named_form(msg, draw(st.randoms(use_true_random=True), label="rnd"))
    return msg, both[1].encode(msg)


@fast(400)
@given(data=st.data())
def test_mutated_encodings(both, data):
    _, valid = _valid_bytes(both, data.draw)
    decode_parity(both, _mutate(valid, data.draw))


def _at(tree: Any, path: tuple) -> Any:
    for p in path:
        tree = tree[p]
    return tree


@fast(400)
@given(data=st.data())
def test_structure_aware_fuzz(both, data):
    """Replace, drop or add one node of a valid message's msgpack tree."""
    _, valid = _valid_bytes(both, data.draw)
    tree = S.unpack(valid)
    paths = nodes(tree)
    rnd = data.draw(st.randoms(use_true_random=True), label="rnd")
    path = () if rnd.random() < 0.03 else rnd.choice(paths[1:])
    op = data.draw(st.sampled_from(["replace", "replace", "replace", "drop", "add", "rekey"]),
                   label="op")
    new = data.draw(S.msgpack_values(), label="value")
    if not path:
        tree = new
    else:
        parent, key = _at(tree, path[:-1]), path[-1]
        if op == "replace":
            parent[key] = new
        elif op == "drop":
            del parent[key]
        elif op == "add":
            if isinstance(parent, list):
                parent.insert(key, new)
            else:
                parent[data.draw(st.one_of(st.text(max_size=6), st.integers(-2, 40),
                                           st.binary(max_size=4)), label="key")] = new
        elif op == "rekey" and isinstance(parent, dict):
            value = parent.pop(key)
            parent[data.draw(S.msgpack_values(0).filter(
                lambda k: isinstance(k, (str, bytes, int, bool, type(None), float))),
                label="new key")] = value
    decode_parity(both, S.pack_loose(tree, rnd))


def _pack_fields(named: bool, tag: str, fields: list[tuple[str, bytes]]) -> bytes:
    """A message of already-packed field values, in array or map form."""
    n = len(fields) + 1
    if named:
        return (bytes([0x80 | n]) + S.pack("type") + S.pack(tag)
                + b"".join(S.pack(k) + v for k, v in fields))
    return bytes([0x90 | n]) + S.pack(tag) + b"".join(v for _, v in fields)


@fast(80)
@given(depth=st.integers(MAX_DEPTH - 4, MAX_DEPTH + 4),
       where=st.sampled_from(["json array", "json map", "skipped key", "nested skipped key",
                              "nested json"]),
       named=st.booleans())
def test_nesting_near_the_limit(both, depth, where, named):
    """Containers nested around MAX_DEPTH, at several starting depths."""
    uid = S.pack(bytes(16))
    deep_array = b"\x91" * depth + b"\xc0"
    if where == "json array":  # ControlCommand.payload is JSON (depth 2)
        data = _pack_fields(named, "control_command", [
            ("request_id", S.pack("r")), ("agent_id", uid), ("command_type", S.pack("stop")),
            ("payload", deep_array)])
    elif where == "json map":
        data = _pack_fields(named, "control_command", [
            ("request_id", S.pack("r")), ("agent_id", uid), ("command_type", S.pack("stop")),
            ("payload", b"\x81\xa1k" * depth + b"\xc0")])
    elif where == "skipped key":  # unknown keys of the map form are skipped
        data = _pack_fields(True, "health_check_request", [
            ("request_id", S.pack("r")), ("unknown", deep_array)])
    elif where == "nested skipped key":  # ... also inside a nested struct (depth 3)
        config = b"\x82" + S.pack("name") + S.pack("n") + S.pack("unknown") + deep_array
        data = _pack_fields(named, "spawn_request", [("request_id", S.pack("r")), ("config", config)])
    else:  # SpawnRequest.config.agents is dict[str, JSON] (JSON at depth 4)
        config = b"\x81" + S.pack("agents") + b"\x81" + S.pack("a") + deep_array
        data = _pack_fields(named, "spawn_request", [("request_id", S.pack("r")), ("config", config)])
    decode_parity(both, data)
    for cut in (1, 2, len(data) // 2):
        decode_parity(both, data[:-cut])


# -- decode input types -------------------------------------------------------------------


class _BytesSub(bytes):
    pass


def _forms(data: bytes) -> list[tuple[str, Any]]:
    return [("bytes", data), ("bytearray", bytearray(data)), ("memoryview", memoryview(data)),
            ("memoryview of bytearray", memoryview(bytearray(data))),
            ("memoryview slice", memoryview(b"\xc1\xc1" + data + b"\xc1")[2:2 + len(data)]),
            ("bytes subclass", _BytesSub(data))]


@fast(150)
@given(data=st.data())
def test_decode_input_types(both, data):
    _, valid = _valid_bytes(both, data.draw)
    if data.draw(st.booleans(), label="mutate"):
        valid = _mutate(valid, data.draw)
    reference = decode_parity(both, valid)
    for name, form in _forms(valid):
        for impl in both:
            got = outcome(impl.decode, form)
            assert same_outcome(got, reference), (
                f"{impl.name} on {name} of {valid.hex()}: {show(got)} vs bytes: {show(reference)}")


@pytest.mark.parametrize("arg", [
    "text", None, 12, [1, 2], memoryview(b"\x91\xa1x\xa1y")[::2],
    memoryview(b"\x92\xb4health_check_request\xa1r\x00\x00\x00\x00").cast("I"),
    memoryview(b"\x92\xb4health_check_request\xa1r\x00\x00\x00\x00").cast("B", shape=[4, 7]),
    array.array("B", b"\x92\xb4health_check_request\xa1r"),
    array.array("i", b"\x92\xb4health_check_request\xa1r\xc1\xc1\xc1\xc1"),
], ids=["str", "None", "int", "list", "non-contiguous", "memoryview of I", "2-D memoryview",
        "array of B", "array of i"])
def test_decode_bad_argument(both, arg):
    c_impl, p_impl = both
    c, p = outcome(c_impl.decode, arg), outcome(p_impl.decode, arg)
    assert_parity(c, p, "decode", arg, protocol_only=False)


# -- encode side ----------------------------------------------------------------------------


@fast(500)
@given(data=st.data())
def test_encode_wrong_value(both, data):
    """One field (or list item, or map value), anywhere in the message, set to a wrong value."""
    msg = data.draw(S.messages(), label="msg")
    where = S.locations(msg, L.BY_CLASS[type(msg)])
    rnd = data.draw(st.randoms(use_true_random=True), label="rnd")
    # a wire kind uniformly, then a place of that kind (sampled_from() favours the first)
    kind = rnd.choice(sorted({t.kind for _, _, t in where}))
    container, key, t = rnd.choice([w for w in where if w[2].kind == kind])
    if not isinstance(container, (list, dict)) and rnd.random() < 0.03:
        delattr(container, key)
    else:
        S.put(container, key, data.draw(S.wrong_values(t), label="value"))
    encode_parity(both, msg)


_CONTAINERS = (L.K_LIST, L.K_MAP, L.K_JSON)
#: messages with a top-level field of a container kind (so there is always a place to use)
_WITH_CONTAINERS = [s for s in L.MESSAGES if any(f.type.kind in _CONTAINERS for f in s.fields)]
_WITH_MAPS = [s for s in L.MESSAGES if any(f.type.kind in (L.K_MAP, L.K_JSON) for f in s.fields)]


@fast(200)
@given(data=st.data())
def test_encode_container_near_miss(both, data):
    """A list, map or JSON value that is valid but for one element, key or leaf."""
    spec = data.draw(st.sampled_from(_WITH_CONTAINERS), label="type")
    msg = data.draw(S.message_of(spec), label="msg")
    where = [w for w in S.locations(msg, spec) if w[2].kind in _CONTAINERS]
    container, key, t = data.draw(st.randoms(use_true_random=True), label="rnd").choice(where)
    S.put(container, key, data.draw(S.near_misses(t), label="value"))
    encode_parity(both, msg)


@fast(100)
@given(data=st.data())
def test_encode_wrong_map_key(both, data):
    """A map (typed or JSON) with a key that is not a str, or not encodable as UTF-8."""
    spec = data.draw(st.sampled_from(_WITH_MAPS), label="type")
    msg = data.draw(S.message_of(spec), label="msg")
    where = [w for w in S.locations(msg, spec) if w[2].kind in (L.K_MAP, L.K_JSON)]
    container, key, t = data.draw(st.randoms(use_true_random=True), label="rnd").choice(where)
    valid = S.value_of(t) if t.kind == L.K_MAP else st.dictionaries(S.texts(4), S.json_values(1))
    target = data.draw(valid.filter(lambda v: isinstance(v, dict)), label="map")
    target[data.draw(st.sampled_from([1, None, b"k", 1.5, (1,), "\udc80", S._StrSub("s")]),
                     label="key")] = data.draw(st.sampled_from([None, "v", 1, object()]), label="value")
    S.put(container, key, target)
    encode_parity(both, msg)


@pytest.mark.parametrize("arg", [
    None, 1, "health_check_request", b"\x91", object(), [], {},
    L.STRUCTS[0].cls.__new__(L.STRUCTS[0].cls),
], ids=["None", "int", "str", "bytes", "object", "list", "dict", "nested struct"])
def test_encode_not_a_message(both, arg):
    encode_parity(both, arg)


def test_encode_subclass_of_message(both):
    """A plain subclass of a message class encodes as the message."""
    for spec in L.MESSAGES:
        sub = type(f"Sub{spec.name}", (spec.cls,), {"__slots__": ()})
        base = _example(spec)
        obj = sub.__new__(sub)
        for f in spec.fields:
            setattr(obj, f.name, getattr(base, f.name))
        assert both[0].encode(obj) == both[1].encode(obj) == both[1].encode(base)


def _example(spec: L.StructSpec) -> Any:
    out: list = []

    @settings(max_examples=1, deadline=None, database=None, suppress_health_check=_SUPPRESS)
    @given(S.message_of(spec))
    def grab(m):
        out.append(m)

    grab()
    return out[0]


def test_too_large(both):
    big = b"\x00" * (MAX_MESSAGE_SIZE + 1)
    decode_parity(both, big)
    spec = L.BY_TAG["health_check_request"]
    encode_parity(both, spec.cls("x" * MAX_MESSAGE_SIZE))
    log = L.BY_TAG["log_stream"]
    # bytes go out as an array of u8: 0xff takes two bytes each, so this is just over
    msg = _example(log)
    msg.data = b"\xff" * (MAX_MESSAGE_SIZE // 2 + 8)
    encode_parity(both, msg)


# -- objects that claim to be of another class ------------------------------------------


def _impostor(cls: type) -> Any:
    """An object whose ``__class__`` says *cls* (isinstance() believes it; the C type does not)."""
    return type(f"Fake{cls.__name__}", (), {"__class__": cls})()


_IMPOSTOR_TYPES = {L.K_STR: str, L.K_UUID: uuid.UUID, L.K_ENUM: str, L.K_BYTES: bytes, L.K_BIN: bytes,
                   L.K_LIST: list, L.K_MAP: dict, L.K_JSON: float}


def _impostor_cases() -> list:
    cases = []
    seen = set()
    for spec in L.MESSAGES:
        for f in spec.fields:
            k = f.type.kind
            if k in seen or (k not in _IMPOSTOR_TYPES and k != L.K_STRUCT):
                continue
            seen.add(k)
            cases.append(pytest.param(spec, f.name, id=f"{spec.name}.{f.name}"))
    return cases


@pytest.mark.parametrize("spec, name", _impostor_cases())
@pytest.mark.parametrize("how", ["__class__", "mock"])
def test_encode_impostor_value(both, spec, name, how):
    """A value that fakes its class (``__class__`` attribute, ``Mock(spec=...)``)."""
    f = next(f for f in spec.fields if f.name == name)
    cls = f.type.ref if f.type.kind == L.K_STRUCT else _IMPOSTOR_TYPES[f.type.kind]
    value = _impostor(cls) if how == "__class__" else mock.NonCallableMock(spec=cls)
    msg = _example(spec)
    setattr(msg, name, value)
    encode_parity(both, msg)


def test_encode_subclass_overriding_a_field(both):
    """A message subclass whose field is a property: getattr() and the slot disagree."""
    spec = L.BY_TAG["health_check_request"]
    sub = type("Overriding", (spec.cls,), {"__slots__": (),
                                            "request_id": property(lambda self: "from property")})
    obj = sub.__new__(sub)
    spec.cls.__dict__["request_id"].__set__(obj, "from slot")
    encode_parity(both, obj)


def test_strategies_cover_every_message():
    """The generic strategies know every message type (guards against a silent skip)."""
    assert {s.cls for s in L.MESSAGES} == {type(_example(s)) for s in L.MESSAGES}
    rnd = random.Random(1)
    for spec in L.MESSAGES:
        assert S.unpack(S.named_form(_example(spec), rnd))


class _UUIDWithIntProperty(uuid.UUID):
    @property
    def int(self):
        return 7


class _UUIDWithBytesProperty(uuid.UUID):
    @property
    def bytes(self):
        return b"\xff" * 3


def _uuid_with_int(value: Any, cls: type = uuid.UUID) -> uuid.UUID:
    """A UUID whose ``int`` slot holds *value* (UUIDs are immutable only by convention)."""
    u = object.__new__(cls)
    uuid.UUID.__dict__["int"].__set__(u, value)
    object.__setattr__(u, "is_safe", uuid.SafeUUID.unknown)
    return u


_ODD_UUIDS = {
    "int -1": lambda: _uuid_with_int(-1),
    "int 2**128": lambda: _uuid_with_int(1 << 128),
    "int 2**128-1": lambda: _uuid_with_int((1 << 128) - 1),
    "int is float": lambda: _uuid_with_int(1.5),
    "int is str": lambda: _uuid_with_int("0" * 32),
    "int is None": lambda: _uuid_with_int(None),
    "int is True": lambda: _uuid_with_int(True),
    "int unset": lambda: object.__new__(uuid.UUID),
    "subclass, int property, slot set": lambda: _uuid_with_int(1, _UUIDWithIntProperty),
    "subclass, int property, slot unset": lambda: object.__new__(_UUIDWithIntProperty),
    "subclass, bytes property": lambda: _UUIDWithBytesProperty(int=1),
}


@pytest.mark.parametrize("make", list(_ODD_UUIDS.values()), ids=list(_ODD_UUIDS))
def test_encode_odd_uuid(both, make):
    """UUID objects whose ``int`` slot is corrupt or unset, or shadowed in a subclass."""
    spec = L.BY_TAG["control_command"]
    msg = _example(spec)
    msg.agent_id = make()
    encode_parity(both, msg)


# -- subclasses of builtins that override a conversion or iteration -----------------------


class _IntOverridingInt(int):
    def __int__(self) -> int:
        return 99

    def __index__(self) -> int:
        return 98


class _IntLyingInComparisons(int):
    def __le__(self, other: Any) -> bool:
        return True

    def __ge__(self, other: Any) -> bool:
        return True

    def __lt__(self, other: Any) -> bool:
        return False

    def __gt__(self, other: Any) -> bool:
        return False


class _FloatOverridingFloat(float):
    def __float__(self) -> float:
        return 9.5


class _ListOverridingIter(list):
    def __iter__(self):
        return iter(["from __iter__"])


class _ListOverridingGetitem(list):
    def __getitem__(self, i: Any) -> Any:
        return "from __getitem__"


class _ListOverridingLen(list):
    def __len__(self) -> int:
        return 1


class _DictOverridingItems(dict):
    def items(self):
        return [("from", "items()")]


class _StrOverridingStr(str):
    def __str__(self) -> str:
        return "stop"

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b"x"


class _BytesOverridingBytes(bytes):
    def __bytes__(self) -> bytes:
        return b"from __bytes__"

    def __iter__(self):
        return iter([1, 2])


def _is_kind(kind: int, elem: int | None = None) -> Callable[[L.TypeSpec], bool]:
    return lambda t: t.kind == kind and (elem is None or t.elem.kind == elem)


def _path_to(match: Callable[[L.TypeSpec], bool]) -> tuple[L.StructSpec, list]:
    """The first message (and field path through nested structs) with a field of a type."""
    todo = [(spec, spec, []) for spec in L.MESSAGES]
    while todo:
        msg_spec, spec, path = todo.pop(0)
        for f in spec.fields:
            if match(f.type):
                return msg_spec, path + [f]
            if f.type.kind == L.K_STRUCT:
                todo.append((msg_spec, L.BY_CLASS[f.type.ref], path + [f]))
    raise LookupError("no field of that type")


def _message_with(match: Callable[[L.TypeSpec], bool], value: Any) -> Any:
    spec, path = _path_to(match)
    msg = obj = _example(spec)
    for f in path[:-1]:
        if getattr(obj, f.name) is None:
            setattr(obj, f.name, _example(L.BY_CLASS[f.type.ref]))
        obj = getattr(obj, f.name)
    setattr(obj, path[-1].name, value)
    return msg


_OVERRIDES = {
    "u64, __int__": (_is_kind(L.K_U64), lambda: _IntOverridingInt(5)),
    "i64, __int__": (_is_kind(L.K_I64), lambda: _IntOverridingInt(5)),
    "timestamp, __int__": (_is_kind(L.K_TIME), lambda: _IntOverridingInt(5)),
    "JSON int, __int__": (_is_kind(L.K_JSON), lambda: _IntOverridingInt(5)),
    "u64, comparisons": (_is_kind(L.K_U64), lambda: _IntLyingInComparisons(-5)),
    "i64, comparisons": (_is_kind(L.K_I64), lambda: _IntLyingInComparisons(1 << 64)),
    "JSON int, comparisons": (_is_kind(L.K_JSON), lambda: _IntLyingInComparisons(1 << 70)),
    "JSON float, __float__": (_is_kind(L.K_JSON), lambda: _FloatOverridingFloat(1.5)),
    "list, __iter__": (_is_kind(L.K_LIST, L.K_STR), lambda: _ListOverridingIter(["a", "b"])),
    "list, __getitem__": (_is_kind(L.K_LIST, L.K_STR), lambda: _ListOverridingGetitem(["a", "b"])),
    "list, __len__": (_is_kind(L.K_LIST, L.K_STR), lambda: _ListOverridingLen(["a", "b"])),
    "JSON list, __iter__": (_is_kind(L.K_JSON), lambda: _ListOverridingIter([1, 2])),
    "map, items()": (_is_kind(L.K_MAP, L.K_STR), lambda: _DictOverridingItems(a="b")),
    "JSON map, items()": (_is_kind(L.K_JSON), lambda: _DictOverridingItems(a=1)),
    "str, __str__ and encode()": (_is_kind(L.K_STR), lambda: _StrOverridingStr("abc")),
    "enum, __str__": (_is_kind(L.K_ENUM), lambda: _StrOverridingStr("idle")),
    "bytes, __bytes__ and __iter__": (_is_kind(L.K_BYTES), lambda: _BytesOverridingBytes(b"abc")),
}


@pytest.mark.parametrize("case", list(_OVERRIDES.values()), ids=list(_OVERRIDES))
def test_encode_builtin_subclass_overrides(both, case):
    """int/float/list/dict/str/bytes subclasses whose dunder methods disagree with their value."""
    match, make = case
    encode_parity(both, _message_with(match, make()))
