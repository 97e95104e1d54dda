"""The dispatcher twins on real sockets (inproc): same replies for the same requests.

Three variants: the pure twin, the compiled twin calling libzmq directly, and the
compiled twin going through pyzmq (its fallback when libzmq cannot be resolved).
"""

from __future__ import annotations

import time

import pytest
import zmq

from descartes_fast import _impl
from descartes_fast.wire import codec
from descartes_fast.wire.constants import MAX_FRAMES
from descartes_fast.wire.schema import (
    ErrorResponse,
    HealthCheckRequest,
    HealthCheckResponse,
    ListAgentsRequest,
    ListAgentsResponse,
)

VARIANTS = [pytest.param(("cython", True), marks=pytest.mark.c_extension, id="c-direct"),
            pytest.param(("cython", False), marks=pytest.mark.c_extension, id="c-pyzmq"),
            pytest.param(("python", None), id="py")]


@pytest.fixture(params=VARIANTS)
def pair(request):
    implementation, direct = request.param
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    router.bind("inproc://d")
    dealer.connect("inproc://d")
    later: list = []

    def health(msg, envelope):
        return HealthCheckResponse(msg.request_id, True, "1.0.0")

    def list_later(msg, envelope):  # replies afterwards, like a spawn
        later.append((envelope, ListAgentsResponse(msg.request_id, True)))

    handlers = {HealthCheckRequest: health, ListAgentsRequest: list_later}
    dispatcher = _impl.load("dispatch", implementation).Dispatcher(
        router, handlers, lambda payload, exc: ErrorResponse("", f"{type(exc).__name__}: {exc}"), direct=direct)
    if direct is not None:
        assert dispatcher.direct is direct
    yield dispatcher, dealer, later
    ctx.destroy(linger=0)


def roundtrip(dispatcher, dealer, *frames: bytes) -> list[bytes] | None:
    """Send *frames*, let the dispatcher take them, and return the reply (None if there is none)."""
    dealer.send_multipart(list(frames))
    assert dispatcher.sock.poll(2000)
    while dispatcher.drain() == 0:
        pass
    return dealer.recv_multipart() if dealer.poll(300) else None


def test_replies(pair) -> None:
    dispatcher, dealer, later = pair
    req = codec.encode(HealthCheckRequest("h"))
    assert roundtrip(dispatcher, dealer, b"", req)[0] == b""
    assert codec.decode(roundtrip(dispatcher, dealer, b"", req)[1]).request_id == "h"
    reply = roundtrip(dispatcher, dealer, req)  # no delimiter: same shape back
    assert len(reply) == 1 and isinstance(codec.decode(reply[0]), HealthCheckResponse)
    reply = roundtrip(dispatcher, dealer, b"\x00\x01", b"", req, b"ignored")  # an extra envelope frame
    assert reply[:2] == [b"\x00\x01", b""]
    error = codec.decode(roundtrip(dispatcher, dealer, b"", b"\xc1")[1])
    assert error == ErrorResponse("", "MalformedError: message: invalid MessagePack byte 0xc1")
    big = b"\x00" * (11 * 1024 * 1024)
    assert "MessageTooLargeError" in codec.decode(roundtrip(dispatcher, dealer, b"", big)[1]).error
    dealer.send_multipart([b"", codec.encode(ListAgentsRequest("later"))])
    assert dispatcher.sock.poll(2000)
    while dispatcher.drain() == 0:
        pass
    envelope, message = later.pop()
    dispatcher.reply(envelope, message)
    assert codec.decode(dealer.recv_multipart()[1]).request_id == "later"
    assert (dispatcher.received, dispatcher.decode_errors) == (7, 2)


def test_many_queued_requests_are_drained_in_order(pair) -> None:
    dispatcher, dealer, _ = pair
    for i in range(500):
        dealer.send_multipart([b"", codec.encode(HealthCheckRequest(f"r{i}"))])
    taken = 0
    while taken < 500:
        taken += dispatcher.drain()
    got = [codec.decode(dealer.recv_multipart()[1]).request_id for _ in range(500)]
    assert got == [f"r{i}" for i in range(500)]


def test_a_drain_stops_after_drain_bytes_of_requests(pair) -> None:
    # three requests of 600,000 bytes: the first drain takes two (over 1 MiB), the next the third
    from descartes_fast.wire.constants import DRAIN_BYTES

    dispatcher, dealer, _ = pair
    assert DRAIN_BYTES == 1 << 20
    for i in range(3):
        dealer.send_multipart([b"", codec.encode(HealthCheckRequest(f"{i}" + "x" * 600_000))])
    time.sleep(0.2)  # all three queued (inproc)
    assert dispatcher.drain() == 2
    assert dispatcher.drain() == 1
    assert len([dealer.recv_multipart() for _ in range(3)]) == 3


def test_requests_with_too_many_frames_are_dropped(pair) -> None:
    dispatcher, dealer, _ = pair
    req = codec.encode(HealthCheckRequest("f"))
    limit = MAX_FRAMES
    # with the routing id the router sees one frame more than the dealer sends
    assert roundtrip(dispatcher, dealer, *([b"x"] * (limit - 3)), b"", req) is not None
    assert roundtrip(dispatcher, dealer, *([b"x"] * (limit - 2)), b"", req) is None
    assert roundtrip(dispatcher, dealer, *([b"x"] * 1000), b"", req) is None
    assert dispatcher.bad_frames == 2
    assert roundtrip(dispatcher, dealer, b"", req) is not None  # and it goes on


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_failing_handler_and_an_oversize_reply_still_get_one_reply(variant) -> None:
    implementation, direct = variant
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.bind("inproc://f")
    dealer.connect("inproc://f")
    failed: list = []

    def broken(msg, envelope):
        raise KeyError("a bug")

    def huge(msg, envelope):  # 11 MiB of agent names: over the message limit once encoded
        return ListAgentsResponse(msg.request_id, True, [], "x" * (11 << 20))

    def on_failure(message, exc):
        failed.append((type(message).__name__, type(exc).__name__))
        return ErrorResponse(message.request_id, f"{type(exc).__name__}: {exc}")

    try:
        dispatcher = _impl.load("dispatch", implementation).Dispatcher(
            router, {HealthCheckRequest: broken, ListAgentsRequest: huge}, lambda payload, exc: ErrorResponse("", ""),
            direct=direct, on_failure=on_failure)
        reply = codec.decode(roundtrip(dispatcher, dealer, b"", codec.encode(HealthCheckRequest("h")))[1])
        assert reply == ErrorResponse("h", "KeyError: 'a bug'")
        reply = codec.decode(roundtrip(dispatcher, dealer, b"", codec.encode(ListAgentsRequest("l")))[1])
        assert reply.request_id == "l" and reply.error.startswith("MessageTooLargeError: message of 11534")
        assert failed == [("HealthCheckRequest", "KeyError"), ("ListAgentsResponse", "MessageTooLargeError")]
        assert (dispatcher.failures, dispatcher.replies_dropped) == (2, 0)
        # a reply to a peer that has gone is counted (ROUTER_MANDATORY makes it visible)
        dispatcher.reply([b"\x00gone"], HealthCheckResponse("x", True, "1.0.0"))
        assert dispatcher.replies_dropped == 1
    finally:
        ctx.destroy(linger=0)


@pytest.mark.c_extension
def test_compiled_twin_calls_libzmq_directly() -> None:
    from descartes_fast.wire import _dispatch_c
    assert _dispatch_c.LIBZMQ_DIRECT and _dispatch_c.DIRECT_REASON == ""
    # resolved through pyzmq's own backend module: the very libzmq pyzmq reports
    assert _dispatch_c.libzmq_version() == zmq.zmq_version_info()


@pytest.mark.parametrize("variant", VARIANTS)
def test_requester(variant) -> None:
    implementation, direct = variant
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    router.bind("inproc://r")
    dealer.connect("inproc://r")
    replies: list = []
    requester = _impl.load("dispatch", implementation).Requester(dealer, replies.append, direct=direct)
    if direct is not None:
        assert requester.direct is direct
    for i in range(300):
        requester.send(codec.encode(HealthCheckRequest(f"q{i}")))
    for _ in range(300):
        frames = router.recv_multipart()
        assert frames[1] == b""  # [routing id, b"", payload]: the Rust REP framing
        request = codec.decode(frames[2])
        router.send_multipart([frames[0], b"", codec.encode(HealthCheckResponse(request.request_id, True, "1.0.0"))])
    router.send_multipart([frames[0], b"no delimiter, not msgpack \xc1"])
    router.send_multipart([frames[0], codec.encode(HealthCheckResponse("last", True, "1.0.0"))])
    while len(replies) < 301:
        assert dealer.poll(2000)
        requester.drain()
    assert [r.request_id for r in replies] == [f"q{i}" for i in range(300)] + ["last"]
    assert requester.bad_replies == 1
    ctx.destroy(linger=0)


def test_the_gate_is_asked_before_decoding(pair) -> None:
    from descartes_fast.server.admission import Refusal
    dispatcher, dealer, _ = pair
    asked: list = []
    verdicts = [None, Refusal("slow down", reply=True), Refusal("dropped", reply=False)]

    class Gate:
        def check(self, user_id, peer, connection):
            asked.append((user_id, peer, type(connection), len(connection)))
            return verdicts.pop(0)

    dispatcher.gate = Gate()
    req = codec.encode(HealthCheckRequest("g"))
    assert isinstance(codec.decode(roundtrip(dispatcher, dealer, b"", req)[1]), HealthCheckResponse)
    assert codec.decode(roundtrip(dispatcher, dealer, b"", b"\xc1")[1]) == ErrorResponse("", "Refusal: slow down")
    assert roundtrip(dispatcher, dealer, b"", req) is None  # dropped, and no decode error counted
    # inproc connections have no user id or peer address; the routing id is the connection's (5 bytes)
    assert asked == [(None, None, bytes, 5)] * 3
    assert (dispatcher.received, dispatcher.decode_errors) == (3, 0)
