"""Frame-helper benchmarks for both twins (``impl`` fixture from the root conftest).

Each group also times an ``inline`` baseline: the same work written directly as the
shortest Python expression (what a caller would write without the helper), to show what
the helper's call and checks cost.

Run: ``pytest bench --benchmark-only --benchmark-group-by=group`` (see bench/README.md).
"""

from __future__ import annotations

import random

import pytest
from messages import AGENT_ID

ROUTING_ID = b"\x00\x80\x00\x41\xa7"  # libzmq's generated ROUTER identity: 0 + 4 bytes
TOPIC = str(AGENT_ID).encode()        # log topic: the 36-char agent UUID
_rng = random.Random(20251124)
PAYLOADS = {"200B": _rng.randbytes(200), "64KiB": _rng.randbytes(64 * 1024)}  # contain NULs
REQUEST_200B = PAYLOADS["200B"]

WITH_DELIMITER = [ROUTING_ID, b"", REQUEST_200B]   # REQ client: [id, b"", payload]
WITHOUT_DELIMITER = [ROUTING_ID, REQUEST_200B]     # DEALER without delimiter: [id, payload]
SPLIT_CASES = {"delimiter": (WITH_DELIMITER, ([ROUTING_ID, b""], REQUEST_200B)),
               "no_delimiter": (WITHOUT_DELIMITER, ([ROUTING_ID], REQUEST_200B))}

payload_param = pytest.mark.parametrize("size", list(PAYLOADS))
split_param = pytest.mark.parametrize("shape", list(SPLIT_CASES))


def _inline_split(frames):
    try:
        i = frames.index(b"", 1)
    except ValueError:
        return [frames[0]], frames[1]
    return frames[:i + 1], frames[i + 1]


def _inline_parse(frame):
    i = frame.index(0)
    return frame[:i], memoryview(frame)[i + 1:]


# -- ROUTER request / reply --------------------------------------------------------------


@split_param
def test_split_request(benchmark, impl, shape):
    frames, expected = SPLIT_CASES[shape]
    benchmark.group = f"frames split_request {shape}"
    assert impl.split_request(frames) == expected
    benchmark(impl.split_request, frames)


@split_param
def test_split_request_inline(benchmark, shape):
    frames, expected = SPLIT_CASES[shape]
    benchmark.group = f"frames split_request {shape}"
    assert _inline_split(frames) == expected
    benchmark(_inline_split, frames)


ENVELOPE = [ROUTING_ID, b""]
REPLY = REQUEST_200B


def test_build_reply(benchmark, impl):
    benchmark.group = "frames build_reply"
    assert impl.build_reply(ENVELOPE, REPLY) == [ROUTING_ID, b"", REPLY]
    benchmark(impl.build_reply, ENVELOPE, REPLY)


def test_build_reply_inline(benchmark):
    benchmark.group = "frames build_reply"
    benchmark(lambda e, p: [*e, p], ENVELOPE, REPLY)


# -- PUB frames ------------------------------------------------------------------------


@payload_param
def test_pub_frame(benchmark, impl, size):
    payload = PAYLOADS[size]
    benchmark.group = f"frames pub_frame {size}"
    assert impl.pub_frame(TOPIC, payload) == TOPIC + b"\x00" + payload
    benchmark(impl.pub_frame, TOPIC, payload)


@payload_param
def test_pub_frame_inline(benchmark, size):
    payload = PAYLOADS[size]
    benchmark.group = f"frames pub_frame {size}"
    benchmark(lambda t, p: t + b"\x00" + p, TOPIC, payload)


@payload_param
def test_parse_pub_frame(benchmark, impl, size):
    frame = TOPIC + b"\x00" + PAYLOADS[size]
    benchmark.group = f"frames parse_pub_frame {size}"
    topic, view = impl.parse_pub_frame(frame)
    assert topic == TOPIC and isinstance(view, memoryview) and view == PAYLOADS[size]
    benchmark(impl.parse_pub_frame, frame)


@payload_param
def test_parse_pub_frame_inline(benchmark, size):
    frame = TOPIC + b"\x00" + PAYLOADS[size]
    benchmark.group = f"frames parse_pub_frame {size}"
    topic, view = _inline_parse(frame)
    assert topic == TOPIC and view == PAYLOADS[size]
    benchmark(_inline_parse, frame)
