"""Fuzzing with a time bound: the decoder twins on hostile bytes, the live server on hostile requests.

``test_parity`` already checks that the twins agree on random, mutated and structurally
mutated bytes. This file adds, for each twin on its own (so it also runs with
``--no-c-extensions``):

* the round-trip property: whatever the decoder accepts re-encodes, and the re-encoded
  bytes decode to an equal message and are a fixed point of encode(decode(...));
* mutations test_parity does not make: splicing two messages, stacking many byte-level
  mutations, and msgpack-level ones (type swaps, huge and negative integers, deep nesting,
  duplicated or dropped elements and keys, duplicate map keys, headers that lie about
  their length);
* the real server binary (``python -m descartes_fast serve``, compiled and pure
  dispatcher) fed multipart requests of random shape through a raw DEALER socket: every
  request is accounted for in the ``requests`` / ``bad_frames`` / ``decode_errors``
  counters and gets exactly the replies it should, and afterwards the server still
  answers, has logged no traceback and has not grown.

With the compiled twin available, the per-twin decoder tests also compare it with the pure
twin on each input. ``DESCARTES_FUZZ_SCALE=20`` multiplies every example count (a longer
soak); ``fuzz/`` holds atheris harnesses for runs of hours.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from support import strategies as S
from support.golden import load as load_golden
from support.parity import assert_parity, nodes, outcome
from support.procs import rss_kib
from support.server import Server

from descartes_fast.wire import layout as L
from descartes_fast.wire.codec import Implementation, get_implementation
from descartes_fast.wire.constants import MAX_DEPTH, MAX_FRAMES
from descartes_fast.wire.errors import ProtocolError
from descartes_fast.wire.schema import (
    HealthCheckRequest,
    HealthCheckResponse,
    Message,
    SpawnResponse,
)

_SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
             HealthCheck.data_too_large, HealthCheck.filter_too_much, HealthCheck.large_base_example]
_SCALE = float(os.environ.get("DESCARTES_FUZZ_SCALE", "1"))
PURE = get_implementation("python")
GOLDEN = [bytes.fromhex(v[form]) for v in load_golden() for form in ("compact_hex", "named_hex")]
#: health metadata counters a fuzz batch may move (rate_limited and unauthorized must not)
_COUNTERS = ("requests", "bad_frames", "decode_errors", "rate_limited", "unauthorized")


def fuzz(n: int) -> settings:
    return settings(max_examples=max(1, int(n * _SCALE)), deadline=None, derandomize=False,
                    suppress_health_check=_SUPPRESS)


# -- the decoder --------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def check_decode(impl: Implementation, data: bytes) -> None:
    """*impl* decodes *data* to a message that round-trips, or raises a ProtocolError.

    Anything else escaping is a bug. For the compiled twin the pure one must agree.
    """
    got = outcome(impl.decode, data)
    if got[0] == "err":
        assert issubclass(got[1], ProtocolError), (
            f"{impl.name}: {got[1].__module__}.{got[1].__qualname__}: {got[2]} on {data.hex()}")
    else:
        msg = got[1]
        assert isinstance(msg, Message), f"{impl.name}: decode gave {msg!r} for {data.hex()}"
        again = impl.encode(msg)  # what the decoder accepts, the encoder can write
        back = impl.decode(again)
        assert _same(back, msg), f"{impl.name}: {data.hex()} -> {msg!r} -> {again.hex()} -> {back!r}"
        assert impl.encode(back) == again, f"{impl.name}: encode is not a fixed point for {data.hex()}"
    if impl.name == "cython":
        assert_parity(got, outcome(PURE.decode, data), "decode", data.hex())


#: bytes of a valid message: compact (the encoder's), named (map form), or a golden vector.
#: Strategies are made once, at module level: building them costs more than drawing from them.
VALID = st.one_of(S.messages().map(PURE.encode), S.named_forms().map(lambda p: p[1]), st.sampled_from(GOLDEN))


# msgpack headers worth putting anywhere
_HEADS = [0x00, 0x7f, 0x80, 0x81, 0x8f, 0x90, 0x91, 0x9f, 0xa0, 0xa4, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3,
          0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd2,
          0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff]
_WORDS = [S.pack(w) for w in ["type", "request_id", "agent_id", "config", "payload",
                               "secs_since_epoch", "nanos_since_epoch"] + [s.tag for s in L.MESSAGES]]


def _token() -> st.SearchStrategy[bytes]:
    """One msgpack-ish token: a header byte with random length or value bytes, or a known word."""
    return st.one_of(
        st.builds(lambda h, tail: bytes([h]) + tail, st.sampled_from(_HEADS), st.binary(max_size=8)),
        st.sampled_from([b"\xdc\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xde\xff\xff", b"\xdf\xff\xff\xff\xff",
                         b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01",
                         b"\xcf" + b"\xff" * 8, b"\xd3\x80" + b"\x00" * 7, b"\xc4\x10" + bytes(16)]),
        st.sampled_from(_WORDS),
        st.binary(min_size=1, max_size=4),
    )


@fuzz(500)
@given(data=st.one_of(st.binary(max_size=256), st.lists(_token(), max_size=24).map(b"".join)))
def test_decode_arbitrary_bytes(impl, data):
    """Random bytes and random msgpack-token soups: a message or a ProtocolError."""
    check_decode(impl, data)


def _byte_mutation(b: bytearray, rnd: random.Random, other: bytes) -> bytearray:
    op = rnd.choice(["flip", "set", "truncate", "insert", "delete", "duplicate", "splice", "splice",
                     "append", "swap"])
    i = rnd.randint(0, len(b))
    if op == "flip" and i < len(b):
        b[i] ^= 1 << rnd.randrange(8)
    elif op == "set" and i < len(b):
        b[i] = rnd.choice(_HEADS)
    elif op == "truncate":
        del b[i:]
    elif op == "insert":
        b[i:i] = rnd.choice([bytes([rnd.choice(_HEADS)]), rnd.randbytes(rnd.randint(1, 5)),
                             rnd.choice(_WORDS)])
    elif op == "delete":
        del b[i:i + rnd.randint(1, 6)]
    elif op == "duplicate":
        b[i:i] = b[i:i + rnd.randint(1, 12)]
    elif op == "splice":  # the head of one message, the tail of another
        b[i:] = other[rnd.randint(0, len(other)):]
    elif op == "append":  # a valid message followed by (part of) another
        b += other[:rnd.randint(0, len(other))]
    elif op == "swap" and len(b) > 1:
        j = rnd.randrange(len(b))
        i = min(i, len(b) - 1)
        b[i], b[j] = b[j], b[i]
    return b


@fuzz(500)
@given(first=VALID, second=VALID, n=st.integers(1, 8), rnd=st.randoms())
def test_decode_mutated_bytes(impl, first, second, n, rnd):
    """Up to 8 stacked byte mutations of a valid message, splices with a second one among them."""
    b = bytearray(first)
    for _ in range(n):
        b = _byte_mutation(b, rnd, second)
    check_decode(impl, bytes(b))


# msgpack-level mutation: take the tree apart, change one node, pack it again

class Lie:
    """A str, bin, array or map whose header declares *declared* bytes or elements."""

    def __init__(self, value: Any, declared: int) -> None:
        self.value, self.declared = value, declared


class Pairs:
    """A map written from (key, value) pairs, so keys may repeat."""

    def __init__(self, pairs: list[tuple[Any, Any]]) -> None:
        self.pairs = pairs


def _header(kind: str, n: int) -> bytes:
    fix, widths = {"array": (0x90, ((0xdc, 2), (0xdd, 4))), "map": (0x80, ((0xde, 2), (0xdf, 4))),
                   "str": (0xa0, ((0xd9, 1), (0xda, 2), (0xdb, 4))),
                   "bin": (None, ((0xc4, 1), (0xc5, 2), (0xc6, 4)))}[kind]
    if fix is not None and n < (32 if kind == "str" else 16):
        return bytes([fix | n])
    for code, width in widths:
        if n < 1 << (8 * width):
            return bytes([code]) + n.to_bytes(width, "big")
    raise ValueError(n)


def pack_tree(v: Any, out: bytearray | None = None) -> bytes:
    """msgpack of a tree that may hold Lie and Pairs nodes."""
    out = bytearray() if out is None else out
    if isinstance(v, Lie):
        inner = v.value
        if isinstance(inner, list):
            out += _header("array", v.declared)
            for e in inner:
                pack_tree(e, out)
        elif isinstance(inner, dict):
            out += _header("map", v.declared)
            for k, e in inner.items():
                pack_tree(k, out)
                pack_tree(e, out)
        elif isinstance(inner, str):
            raw = inner.encode("utf-8", "surrogatepass")
            out += _header("str", v.declared) + raw
        else:
            out += _header("bin", v.declared) + bytes(inner)
    elif isinstance(v, Pairs):
        out += _header("map", len(v.pairs))
        for k, e in v.pairs:
            pack_tree(k, out)
            pack_tree(e, out)
    elif isinstance(v, list):
        out += _header("array", len(v))
        for e in v:
            pack_tree(e, out)
    elif isinstance(v, dict):
        out += _header("map", len(v))
        for k, e in v.items():
            pack_tree(k, out)
            pack_tree(e, out)
    else:
        out += msgpack.packb(v, use_bin_type=True)
    return bytes(out)


def _deep(n: int, kind: str) -> Any:
    v: Any = None
    for _ in range(n):
        v = [v] if kind == "list" else {"k": v}
    return v


def _hostile_values() -> st.SearchStrategy[Any]:
    """Values of every msgpack type, biased to the edges a decoder gets wrong."""
    return st.one_of(
        st.sampled_from([S.U64_MAX, S.U64_MAX - 1, S.I64_MAX, S.I64_MAX + 1, S.I64_MIN, S.I64_MIN + 1,
                         -1, -32, -33, -129, -(1 << 31) - 1, 1 << 32, (1 << 32) - 1, 0,
                         float("nan"), float("inf"), float("-inf"), -0.0, 1e308, 5e-324,
                         True, False, None, "", b"", [], {}, "\x00", "é" * 40, "x" * 300, b"\x00" * 300,
                         str(uuid.UUID(int=0)), b"\x00" * 15, b"\x00" * 17, "idle", "bogus",
                         msgpack.Timestamp(1, 2), msgpack.ExtType(127, b"\x00" * 12), msgpack.ExtType(0, b"")]),
        st.builds(_deep, st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3), st.sampled_from(["list", "map"])),
        st.builds(lambda n: [None] * n, st.sampled_from([15, 16, 17, 1000])),
        S.msgpack_values(2),
    )


#: each value a fresh copy: the mutations below edit lists and maps in place, and sampled_from
#: hands out the same objects every time (an edited [] would change later draws: hypothesis
#: then stops with "Inconsistent data generation")
_HOSTILE = _hostile_values().map(copy.deepcopy)


def _replace(tree: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    parent = tree
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = new
    return tree


def _get(tree: Any, path: tuple) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _mutate_tree(tree: Any, rnd: random.Random, draw) -> Any:
    path = rnd.choice(nodes(tree))
    node = _get(tree, path)
    op = rnd.choice(["replace", "replace", "lie", "lie", "drop", "duplicate", "insert", "dup key",
                     "wrap", "unwrap"])
    if op == "replace":
        return _replace(tree, path, draw(_HOSTILE, label="value"))
    if op == "lie" and isinstance(node, (list, dict, str, bytes)):
        n = len(node.encode() if isinstance(node, str) else node)
        declared = rnd.choice([n + 1, max(0, n - 1), 0, n * 2 + 7, (1 << 16) - 1, (1 << 32) - 1])
        return _replace(tree, path, Lie(node, declared))
    if op in ("drop", "duplicate", "insert") and isinstance(node, list):
        i = rnd.randint(0, len(node))
        if op == "drop" and node:
            del node[min(i, len(node) - 1)]
        elif op == "duplicate" and node:
            node.insert(i, node[min(i, len(node) - 1)])
        else:
            node.insert(i, draw(_HOSTILE, label="inserted"))
        return tree
    if op in ("drop", "duplicate", "dup key") and isinstance(node, dict) and node:
        pairs = list(node.items())
        i = rnd.randrange(len(pairs))
        if op == "drop":
            del pairs[i]
        else:  # the same key twice, with the same or with another value
            value = pairs[i][1] if op == "duplicate" else draw(_HOSTILE, label="dup value")
            pairs.insert(rnd.randint(0, len(pairs)), (pairs[i][0], value))
        return _replace(tree, path, Pairs(pairs))
    if op == "wrap":
        return _replace(tree, path, rnd.choice([[node], {"k": node}, [node, node]]))
    if op == "unwrap" and isinstance(node, list) and node:
        return _replace(tree, path, node[0])
    return _replace(tree, path, draw(_HOSTILE, label="fallback"))


@fuzz(500)
@given(valid=VALID, n=st.integers(1, 3), rnd=st.randoms(), data=st.data())
def test_decode_tree_mutations(impl, valid, n, rnd, data):
    """1-3 msgpack-level mutations of a valid message, packed again (lying headers included)."""
    tree = S.unpack(valid)
    for _ in range(n):
        if any(isinstance(x, (Lie, Pairs)) for x in _walk(tree)):
            break  # a lie or a duplicate key is not a plain tree any more: pack what we have
        tree = _mutate_tree(tree, rnd, data.draw)
    check_decode(impl, pack_tree(tree))


def _walk(tree: Any):
    yield tree
    if isinstance(tree, list):
        for e in tree:
            yield from _walk(e)
    elif isinstance(tree, dict):
        for e in tree.values():
            yield from _walk(e)


_HUGE_HEADERS = [b"\xdc\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xde\xff\xff", b"\xdf\xff\xff\xff\xff",
                 b"\xd9\xff", b"\xda\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xc4\xff", b"\xc5\xff\xff",
                 b"\xc6\xff\xff\xff\xff", b"\xc7\xff\x01", b"\xc8\xff\xff\x01", b"\xc9\xff\xff\xff\xff\x01"]


@pytest.mark.parametrize("head", _HUGE_HEADERS, ids=lambda h: h[:1].hex())
def test_huge_declared_lengths_fail_fast(impl, head):
    """A header declaring up to 4 GiB, as the message or in any field: refused at once."""
    cases = [head, head + b"\x00" * 64]
    for spec in L.MESSAGES:
        for i in range(len(spec.fields)):
            cases.append(bytes([0x91 + i + 1]) + S.pack(spec.tag) + b"\xc0" * i + head + b"\x01" * 8)
    started = time.perf_counter()
    for data in cases:
        with pytest.raises(ProtocolError):
            impl.decode(data)
        check_decode(impl, data)
    assert time.perf_counter() - started < 2.0, "huge declared lengths are slow to refuse"


# -- the live server ----------------------------------------------------------------------


def _harness(name: str):
    path = Path(__file__).resolve().parents[1] / "fuzz" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_harness_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: what the server does with a request: the frames harness's rules, one source for both
predict = _harness("fuzz_frames").predict


def salvaged_request_id(payload: bytes) -> str | None:
    """The request_id an error reply to *payload* carries (docs/protocol.md §6.19: where it can be
    read at all), or None if not predicted here (a payload over 64 KiB is not unpacked)."""
    if len(payload) > 65536:
        return None
    try:
        value = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception:
        return ""
    if isinstance(value, list) and len(value) > 1:
        request_id = value[1]
    elif isinstance(value, dict):
        request_id = value.get("request_id")
    else:
        request_id = None
    return request_id if isinstance(request_id, str) else ""


def _answers(reply: Any, kind: str, payload: bytes) -> bool:
    """Whether *reply* is the one the request *payload* (predicted *kind*) gets: a request that does
    not decode is refused ("invalid request: ...", in the reply of its type where that is known)."""
    refused = (getattr(reply, "error", None) or "").startswith("invalid request:")  # its own type, or error_response
    if kind == "error":
        salvaged = salvaged_request_id(payload)
        return refused and (salvaged is None or reply.request_id == salvaged)
    # (a message that is no request, e.g. a status_update, gets an error_response too, not "invalid")
    return not refused and reply.request_id == getattr(PURE.decode(payload), "request_id", "")


_spawn_ids = iter(range(1 << 62))


def defuse(frames: list[bytes]) -> tuple[list[bytes], str | None]:
    """*frames* with a decodable SpawnRequest payload pointed at a backend that does not exist.

    The fuzzer must not start processes; the spawn still fails on the server's real path.
    Returns the frames and the spawn's request_id (None if the request is no spawn).
    """
    kind, envelope, _ = predict(frames)
    if kind != "spawn":
        return frames, None
    at = len(envelope) if envelope else 0
    msg = PURE.decode(frames[at])
    msg.request_id = f"fuzz-spawn-{next(_spawn_ids)}"
    msg.config.model_backend = "fuzz-no-such-backend"
    return frames[:at] + [PURE.encode(msg)] + frames[at + 1:], msg.request_id


def payloads() -> st.SearchStrategy[bytes]:
    mutated = st.builds(lambda v, o, rnd: bytes(_byte_mutation(bytearray(v), rnd, o)),
                        VALID, VALID, st.randoms())
    return st.one_of(VALID, mutated, st.binary(max_size=64), st.just(b""),
                     S.msgpack_values(2).map(S.pack))


_PAYLOADS = payloads()
_FRAME_KINDS = st.sampled_from(["empty", "junk", "junk", "payload"])
_JUNK = st.binary(min_size=1, max_size=8)


def _cheap_frames(draw, n: int, payload: bytes) -> list[bytes]:
    """*n* frames, each empty, a few random bytes or *payload* (a payload is slow to draw)."""
    kinds = [draw(_FRAME_KINDS) for _ in range(n)]
    return [b"" if k == "empty" else payload if k == "payload" else draw(_JUNK) for k in kinds]


@st.composite
def requests(draw) -> list[bytes]:
    """The frames of one request: well formed or not, 1..40 frames.

    Counts come from sampled_from (uniform), not integers() or lists(), which hypothesis
    keeps mostly small.
    """
    shape = draw(st.sampled_from(["bare", "req", "envelope", "random", "limit"]), label="shape")
    if shape == "bare":  # a DEALER that sends no delimiter
        return [draw(_PAYLOADS, label="payload")]
    if shape == "req":
        return [b"", draw(_PAYLOADS, label="payload")]
    if shape == "envelope":  # more envelope frames before the delimiter, ignored ones after the payload
        head = [draw(_JUNK) for _ in range(draw(st.sampled_from(range(4))))]
        payload = draw(_PAYLOADS, label="payload")
        return [*head, b"", payload, *_cheap_frames(draw, draw(st.sampled_from(range(4))), payload)]
    if shape == "random":
        n = draw(st.sampled_from(range(1, 41)), label="frames")
        return _cheap_frames(draw, n, draw(_PAYLOADS, label="payload"))
    n = draw(st.sampled_from(range(MAX_FRAMES - 5, MAX_FRAMES + 1)), label="envelope frames")
    return [draw(_JUNK)] * n + [b"", draw(_PAYLOADS, label="payload")]


class FuzzClient:
    """A live server, a raw DEALER socket to it, and what it has been sent so far."""

    def __init__(self, tmp_path: Path, implementation: str) -> None:
        self.server = Server(tmp_path, implementation)
        self.dealer = self.server.socket(zmq.DEALER)
        self.sentinels = iter(range(1 << 62))
        self.dirty = False
        self.counters = self.sync([])  # also makes sure the DEALER is connected
        self.rss_start = rss_kib(self.server.proc.pid)

    def sync(self, spawns: dict[str, list[bytes]], expected: list[tuple[str, list[bytes], Any]] = ()) -> dict:
        """Read the replies to what was sent, then a health check's; return its counters.

        *expected*: predict() of each request sent since the last sync. Replies may come in any
        order (a slow request is answered after quicker ones that came later): each is matched to
        its request by envelope and request_id, and every request must get exactly one.
        """
        sentinel = f"sentinel-{next(self.sentinels)}"
        self.dealer.send_multipart([b"", PURE.encode(HealthCheckRequest(sentinel))])
        pending = [x for x in expected if x[0] in ("reply", "error")]
        spawns = dict(spawns)
        counters = None
        while counters is None or spawns or pending:
            assert self.dealer.poll(15000), (
                f"no reply within 15 s; waiting for {len(pending)} replies, {len(spawns)} spawn replies"
                f"{'' if counters is None else ' (sentinel seen)'}; server alive: {self.server.proc.poll() is None}")
            frames = self.dealer.recv_multipart()
            reply = PURE.decode(frames[-1])  # whatever the server sends must be a valid message
            if isinstance(reply, SpawnResponse) and reply.request_id in spawns:
                assert frames[:-1] == spawns.pop(reply.request_id) and not reply.success
                continue
            if isinstance(reply, HealthCheckResponse) and reply.request_id == sentinel:
                assert counters is None and frames[:-1] == [b""]
                counters = {k: int(reply.metadata.get(k, 0)) for k in _COUNTERS}
                continue
            match = next((i for i, (kind, envelope, payload) in enumerate(pending)
                          if envelope == frames[:-1] and _answers(reply, kind, payload)), None)
            assert match is not None, f"a reply nothing asked for (or in another envelope): {frames[:-1]} {reply!r}"
            pending.pop(match)
        return counters

    def send(self, batch: list[list[bytes]]) -> None:
        """Send each request of *batch*; check replies and counters against predict()."""
        if self.dirty:  # the last batch failed half-way: start afresh, so one failure is reported once
            self.dealer.close(0)
            time.sleep(0.2)
            self.dealer = self.server.socket(zmq.DEALER)
            self.counters = self.sync({})
        self.dirty = True
        expected, spawns = [], {}
        for frames in batch:
            frames, spawn_id = defuse(frames)
            kind, envelope, payload = predict(frames)
            expected.append((kind, envelope, payload))
            if currently_in_test_context():
                event(f"request: {kind}, {'> MAX_FRAMES' if len(frames) + 1 > MAX_FRAMES else '<= MAX_FRAMES'}")
            if spawn_id is not None:
                spawns[spawn_id] = envelope
            self.dealer.send_multipart(frames)
        counters = self.sync(spawns, expected)
        want = dict(self.counters, requests=self.counters["requests"] + len(batch) + 1,
                    bad_frames=self.counters["bad_frames"] + sum(x[0] == "drop" for x in expected),
                    decode_errors=self.counters["decode_errors"] + sum(x[0] == "error" for x in expected))
        assert counters == want, f"counters {counters}, expected {want} after {[x[0] for x in expected]}"
        self.counters = counters
        self.dirty = False

    def check_alive(self) -> None:
        """Running, answering a new client, no traceback logged, no runaway memory."""
        proc = self.server.proc
        assert proc.poll() is None, f"server exited with {proc.returncode}: {self.server.log()[-3000:]}"
        req = self.server.socket(zmq.REQ)
        req.send(PURE.encode(HealthCheckRequest("still there?")))
        reply = PURE.decode(req.recv())
        req.close(0)
        assert isinstance(reply, HealthCheckResponse) and reply.healthy
        counters = {k: int(reply.metadata.get(k, 0)) for k in _COUNTERS}
        assert counters == dict(self.counters, requests=self.counters["requests"] + 1)
        self.counters = counters
        log = self.server.log()
        assert "Traceback" not in log and "Exception in callback" not in log, log[-3000:]
        rss = rss_kib(proc.pid)
        assert rss < 200 * 1024, f"server RSS {rss} KiB"
        assert rss - self.rss_start < 100 * 1024, f"server RSS grew from {self.rss_start} to {rss} KiB"

    def close(self) -> str:
        """Stop the server; its log."""
        self.server.close()
        return self.server.log()


@pytest.fixture(scope="module",
                params=[pytest.param("cython", marks=pytest.mark.c_extension), "python"], ids=["c", "py"])
def fuzz_server(request, tmp_path_factory):
    client = FuzzClient(tmp_path_factory.mktemp(f"fuzz-{request.param}"), request.param)
    yield client
    log = client.close()
    assert "Traceback" not in log, log[-3000:]


@fuzz(300)
@given(batch=st.lists(requests(), min_size=1, max_size=6))
def test_server_random_requests(fuzz_server, batch):
    """Batches of requests of random shape and content; each accounted for exactly."""
    fuzz_server.send(batch)


@pytest.mark.parametrize("count", [MAX_FRAMES - 2, MAX_FRAMES - 1, MAX_FRAMES, 40, 1000, 50_000])
def test_server_frame_counts(fuzz_server, count):
    """Requests with many frames: at the limit answered, above it dropped, the server unmoved."""
    payload = PURE.encode(HealthCheckRequest("many"))
    fuzz_server.send([
        [b"x"] * (count - 2) + [b"", payload],
        [b""] * (count - 1) + [payload],
        [payload] * count,
        [b""] * count,
        [b"\xc1"] * count,
    ])
    fuzz_server.check_alive()


def test_server_still_serves_after_fuzzing(fuzz_server):
    """After everything above: alive, answering a new REQ socket, RSS bounded."""
    fuzz_server.send([[b"", PURE.encode(HealthCheckRequest("last"))]])
    fuzz_server.check_alive()


# -- the atheris harnesses keep working ---------------------------------------------------




@pytest.mark.parametrize("name", ["fuzz_decode", "fuzz_frames"])
def test_harness_runs_its_seeds(name):
    """Each harness's check function accepts its own seeds (no atheris needed)."""
    harness = _harness(name)
    seeds = harness.seeds()
    assert len(seeds) >= len(GOLDEN)
    for data in seeds:
        harness.check(data)
    for data in (b"", b"\x00", b"\xff" * 64, bytes(range(256))):
        harness.check(data)
