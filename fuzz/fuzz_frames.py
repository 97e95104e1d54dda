"""Atheris harness for the server's request path, in process: multipart requests -> Dispatcher.

Usage, from the repository root after ``pip install -e '.[fuzz]'``::

    python fuzz/fuzz_frames.py                                 # until a crash (corpus in a temp dir)
    python fuzz/fuzz_frames.py -max_total_time=3600 corpus/frames
    python fuzz/fuzz_frames.py -runs=1 crash-0123abcd...       # replay one input

Every input is one request, given to each dispatcher variant (the pure twin, and when built
the compiled twin calling libzmq directly and through pyzmq) on its own inproc ROUTER /
DEALER pair, with stub handlers that echo the request back (a spawn replies "later", i.e.
never) and the real server's error reply (``AgentServer._refuse``). Input layout::

    byte 0      flags: bit 0 -> call Dispatcher.handle(frames) instead of sending on the DEALER
                       bits 1-2 -> 1: prepend 12 envelope frames (near MAX_FRAMES),
                                   2: repeat the last frame 1000 times, 3: append 20 empty frames
    then        frames, each a length byte L (0..254) and L bytes; L = 255: the rest of the
                input is the last frame. At most 40 frames are read.

A crash is any exception leaking out of ``drain()`` / ``handle()`` (none is expected), or a
variant doing other than the rules say (``predict``): a request with more than MAX_FRAMES
frames (routing id included), or no payload after the delimiter, is dropped and counted in
``bad_frames``; one whose payload does not decode gets exactly one error reply starting
"invalid request:" and counts in ``decode_errors``; any other gets its handler's reply, in the
request's envelope. The variants must also send byte-identical replies. Seeds are the golden
vectors in the usual frame shapes; crash files as for fuzz_decode.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported by path

from fuzz_decode import golden_payloads, run

from descartes_fast import _impl
from descartes_fast.server import AgentServer
from descartes_fast.wire.codec import get_implementation
from descartes_fast.wire.errors import ProtocolError
from descartes_fast.wire.schema import (
    MAX_MESSAGE_SIZE,
    MESSAGE_TYPES,
    HealthCheckRequest,
    Message,
    SpawnRequest,
)

PURE = get_implementation("python")
from descartes_fast.wire.constants import MAX_FRAMES  # noqa: E402

ROUTING_ID = b"fuzz-peer"
_SERVER = SimpleNamespace(config=SimpleNamespace(server_id="fuzz"))


def _echo(message: Message, envelope: list) -> Message | None:
    return None if isinstance(message, SpawnRequest) else message


#: the server's reply to a request that does not decode (private: renamed once already)
_REFUSE = getattr(AgentServer, "_refuse", None) or AgentServer._bad_request


def _bad_request(payload: Any, exc: Exception) -> Message:
    return _REFUSE(_SERVER, payload, exc)


class Variant:
    """One dispatcher on its own ROUTER, with a DEALER connected to it."""

    def __init__(self, ctx: zmq.Context, implementation: str, direct: bool | None) -> None:
        self.name = f"{implementation}{'' if direct is None else '-direct' if direct else '-pyzmq'}"
        self.router = ctx.socket(zmq.ROUTER)
        self.dealer = ctx.socket(zmq.DEALER)
        for sock in (self.router, self.dealer):
            sock.setsockopt(zmq.LINGER, 0)
        self.dealer.setsockopt(zmq.ROUTING_ID, ROUTING_ID)
        endpoint = f"inproc://fuzz-{self.name}-{id(self)}"
        self.router.bind(endpoint)
        self.dealer.connect(endpoint)
        module = _impl.load("dispatch", implementation)
        self.dispatcher = module.Dispatcher(self.router, {cls: _echo for cls in MESSAGE_TYPES},
                                            _bad_request, direct=direct)
        if direct is not None and self.dispatcher.direct is not direct:
            raise RuntimeError(f"{self.name}: cannot call libzmq {'directly' if direct else 'via pyzmq'}")

    def counters(self) -> tuple[int, int, int]:
        d = self.dispatcher
        return d.received, d.bad_frames, d.decode_errors

    def feed(self, frames: list[bytes], direct_call: bool) -> tuple[list[list[bytes]], tuple[int, ...]]:
        """The replies the DEALER gets to *frames*, and how the counters moved."""
        before = self.counters()
        if direct_call:
            self.dispatcher.handle([ROUTING_ID, *frames])
        else:
            self.dealer.send_multipart(frames)
            if not self.router.poll(5000):
                raise AssertionError(f"{self.name}: the request never reached the ROUTER")
            taken = self.dispatcher.drain()
            if taken != 1:
                raise AssertionError(f"{self.name}: drain() took {taken} requests, not 1")
        replies = []
        while self.dealer.poll(0):
            replies.append(self.dealer.recv_multipart())
        return replies, tuple(a - b for a, b in zip(self.counters(), before))


def _variants() -> list[Variant]:
    ctx = zmq.Context.instance()
    out = [Variant(ctx, "python", None)]
    try:
        _impl.load("dispatch", "cython")
    except ImportError:
        print("fuzz: compiled twin not available; fuzzing the pure dispatcher only", file=sys.stderr)
        return out
    return [Variant(ctx, "cython", True), Variant(ctx, "cython", False), *out]


VARIANTS = _variants()


def parse(data: bytes) -> tuple[list[bytes], bool]:
    """(frames the DEALER sends, whether to call handle() directly) from a fuzz input."""
    if not data:
        return [], False
    flags, i, frames = data[0], 1, []
    while i < len(data) and len(frames) < 40:
        n = data[i]
        i += 1
        if n == 255:
            frames.append(data[i:])
            break
        frames.append(data[i:i + n])
        i += n
    shape = (flags >> 1) & 3
    if shape == 1:
        frames = [b"e"] * 12 + frames
    elif shape == 2 and frames:
        frames += [frames[-1]] * 1000
    elif shape == 3:
        frames += [b""] * 20
    return frames, bool(flags & 1)


def unparse(frames: list[bytes], flags: int = 0) -> bytes:
    """The fuzz input of *frames* (the inverse of parse(), for seeds)."""
    out = bytearray([flags])
    for i, frame in enumerate(frames):
        if i == len(frames) - 1 or len(frame) >= 255:
            out += b"\xff" + frame
            break
        out += bytes([len(frame)]) + frame
    return bytes(out)


def predict(frames: list[bytes]) -> tuple[str, list[bytes], bytes | None]:
    """What the server does with the request a DEALER sends as *frames*: (kind, envelope, payload).

    Kind ``"drop"`` (counted in bad_frames, no reply), ``"error"`` (counted in decode_errors,
    one error reply), ``"reply"`` or ``"spawn"`` (one reply, a spawn's later). *envelope* is
    what the DEALER gets back before the reply payload. Written from the rules (docs/protocol.md §5,
    _frames_py.split_request's docstring), not from the code; tests/test_fuzz.py uses it too.
    """
    routed = [ROUTING_ID, *frames]
    if len(routed) > MAX_FRAMES or len(routed) < 2:
        return "drop", [], None
    delimiter = next((i for i in range(1, len(routed)) if not routed[i]), None)
    if delimiter is None:
        envelope, payload = [], routed[1]
    elif delimiter == len(routed) - 1:
        return "drop", [], None
    else:
        envelope, payload = routed[1:delimiter + 1], routed[delimiter + 1]
    if len(payload) > MAX_MESSAGE_SIZE:
        return "error", envelope, payload
    try:
        message = PURE.decode(payload)
    except ProtocolError:
        return "error", envelope, payload
    return ("spawn" if isinstance(message, SpawnRequest) else "reply"), envelope, payload


def check(data: bytes) -> None:
    frames, direct_call = parse(data)
    if not frames and not direct_call:
        return  # ZeroMQ cannot send a message of no frames
    kind, envelope, payload = predict(frames)
    message = PURE.decode(payload) if kind == "reply" else None
    want = (0 if direct_call else 1, int(kind == "drop"), int(kind == "error"))
    first = None
    for v in VARIANTS:
        replies, moved = v.feed(frames, direct_call)
        if moved != want:
            raise AssertionError(f"{v.name}: counters (received, bad_frames, decode_errors) moved by "
                                 f"{moved}, expected {want} for a {kind!r} request")
        if len(replies) != (kind in ("error", "reply")):
            raise AssertionError(f"{v.name}: {len(replies)} replies to a {kind!r} request: {replies}")
        for reply in replies:
            if reply[:-1] != envelope:
                raise AssertionError(f"{v.name}: reply envelope {reply[:-1]}, expected {envelope}")
            answer = PURE.decode(reply[-1])  # a reply must always decode
            if kind == "error" and not answer.error.startswith("invalid request:"):
                raise AssertionError(f"{v.name}: error reply {answer!r}")
            if kind == "reply" and (type(answer) is not type(message) or answer != message):
                raise AssertionError(f"{v.name}: echo {answer!r} of {message!r}")
        if first is None:
            first = (v.name, replies)
        elif replies != first[1]:
            raise AssertionError(f"{v.name} replied {replies}, {first[0]} {first[1]}")


def seeds() -> list[bytes]:
    health = PURE.encode(HealthCheckRequest("h"))
    out = []
    for payload in golden_payloads() + [health]:
        out += [unparse([b"", payload]), unparse([payload]), unparse([b"\x00\x01", b"", payload, b"x"])]
    out += [unparse([b"", health], 2), unparse([b"", health], 4), unparse([b"", b""], 6),
            unparse([b"x"] * 13 + [b"", health]), unparse([b""]), unparse([], 1),
            unparse([b"", b"\xc1"]), unparse([b"", b"\xdd\xff\xff\xff\xff"], 1)]
    return out


if __name__ == "__main__":
    run("frames", check, seeds())
