"""ROUTER envelopes and one-frame PUB messages (docs/protocol.md §5), both twins."""

from __future__ import annotations

import uuid

import pytest
import zmq

from descartes_fast.wire import frames
from descartes_fast.wire.errors import FrameError

AGENT = uuid.UUID("6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b")


@pytest.mark.parametrize("request_frames,envelope,payload", [
    ([b"id", b"", b"P"], [b"id", b""], b"P"),                              # REQ through ROUTER
    ([b"id", b"\x00\x01\x02\x03", b"", b"P"], [b"id", b"\x00\x01\x02\x03", b""], b"P"),  # REQ_CORRELATE
    ([b"id", b"P"], [b"id"], b"P"),                                        # DEALER, no delimiter
    ([b"id", b"", b"P", b"ignored"], [b"id", b""], b"P"),
    ([b"id", b"P", b"ignored"], [b"id"], b"P"),
])
def test_split_and_reply(impl, request_frames, envelope, payload) -> None:
    env, body = impl.split_request(request_frames)
    assert (env, body) == (envelope, payload)
    assert impl.build_reply(env, b"R") == envelope + [b"R"]


def test_split_zmq_frames(impl) -> None:
    parts = [zmq.Frame(b"id"), zmq.Frame(b""), zmq.Frame(b"payload")]
    env, body = impl.split_request(parts)
    assert env == parts[:2] and body is parts[2]


@pytest.mark.parametrize("bad", [[], [b"id"], [b"id", b""], [b"id", b"x", b""]])
def test_split_errors(impl, bad) -> None:
    if bad == [b"id", b"x", b""]:  # no payload after the delimiter
        with pytest.raises(FrameError, match="no payload"):
            impl.split_request(bad)
        return
    with pytest.raises(FrameError):
        impl.split_request(bad)


def test_pub_frames(impl) -> None:
    frame = impl.pub_frame(frames.log_topic(AGENT), b"\x00payload")
    assert frame == str(AGENT).encode() + b"\x00\x00payload"
    for buf in (frame, zmq.Frame(frame), bytearray(frame), memoryview(frame)):
        topic, payload = impl.parse_pub_frame(buf)
        assert topic == str(AGENT).encode()
        assert isinstance(payload, memoryview) and payload.tobytes() == b"\x00payload"
    big = impl.pub_frame("t" * 5000, b"x" * 70000)
    topic, payload = impl.parse_pub_frame(big)
    assert topic == b"t" * 5000 and len(payload) == 70000
    assert impl.pub_frame("s", b"") == b"s\x00"


def test_pub_frame_errors(impl) -> None:
    with pytest.raises(FrameError, match="no topic separator"):
        impl.parse_pub_frame(b"x" * 10000)
    with pytest.raises(FrameError, match="NUL"):
        impl.pub_frame(b"a\x00b", b"")
    with pytest.raises(TypeError, match="topic must be str or bytes"):
        impl.pub_frame(7, b"")
    with pytest.raises(TypeError, match="payload must be bytes-like, not str"):
        impl.pub_frame(b"t", "text")
    assert impl.pub_frame("t", zmq.Frame(b"p")) == b"t\x00p"


def test_topics() -> None:
    assert frames.log_topic(AGENT) == b"6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
    assert frames.status_topic(AGENT) == b"status.6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
    assert frames.HEARTBEAT_TOPIC == b"status.00000000-0000-0000-0000-000000000000"
    # an agent-id subscription must not receive the agent's status updates
    assert not frames.status_topic(AGENT).startswith(frames.log_topic(AGENT))
