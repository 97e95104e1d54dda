"""Pure-Python frame helpers: the reference behaviour of :mod:`descartes_fast.wire.frames`.

The compiled twin is ``_speedups/wire/_frames_c.pyx``; both must agree on every input, and
both take their error texts from :mod:`descartes_fast.wire.texts`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from descartes_fast.wire import texts as T
from descartes_fast.wire.errors import FrameError

__all__ = ["split_request", "build_reply", "pub_frame", "parse_pub_frame", "log_topic",
           "status_topic", "HEARTBEAT_TOPIC"]

_STATUS_PREFIX = b"status."
#: Server heartbeats are status updates about the nil UUID (docs/protocol.md §5.5).
HEARTBEAT_TOPIC = _STATUS_PREFIX + str(uuid.UUID(int=0)).encode()
_CHUNK = 4096


def split_request(frames: Sequence[Any]) -> tuple[list[Any], Any]:
    """Split a ROUTER message into ``(envelope, payload)``.

    ``[routing_id, ..., b"", payload, *ignored]`` gives the envelope up to and including
    the first empty frame; ``[routing_id, payload, *ignored]`` (a DEALER that sends no
    delimiter) gives ``[routing_id]``. Frames after the payload are ignored.
    """
    n = len(frames)
    if n < 2:
        raise FrameError(T.frame_count(n))
    for i in range(1, n):
        if len(frames[i]) == 0:
            if i + 1 == n:
                raise FrameError(T.NO_PAYLOAD)
            return list(frames[:i + 1]), frames[i + 1]
    return [frames[0]], frames[1]


def build_reply(envelope: list[Any], payload: Any) -> list[Any]:
    """The frames of a reply: the request's envelope, then the payload."""
    return [*envelope, payload]


def _topic_bytes(topic: Any) -> bytes:
    if isinstance(topic, str):
        raw = topic.encode()
    elif isinstance(topic, bytes):
        raw = topic
    else:
        raise TypeError(T.topic_type(type(topic).__name__))
    if b"\x00" in raw:
        raise FrameError(T.TOPIC_NUL)
    return raw


def pub_frame(topic: str | bytes, payload: Any) -> bytes:
    """One PUB frame: ``topic + b"\\x00" + payload`` (docs/protocol.md §5.4)."""
    raw = _topic_bytes(topic)
    try:
        memoryview(payload)
    except TypeError:
        raise TypeError(T.payload_type(type(payload).__name__)) from None
    return b"".join((raw, b"\x00", payload))


def parse_pub_frame(frame: Any) -> tuple[bytes, memoryview]:
    """Split a PUB frame at its first NUL into ``(topic, payload view)`` without copying the payload."""
    view = memoryview(frame).cast("B")
    end = len(view)
    start = 0
    while start < end:
        found = bytes(view[start:start + _CHUNK]).find(b"\x00")
        if found >= 0:
            at = start + found
            return bytes(view[:at]), view[at + 1:]
        start += _CHUNK
    raise FrameError(T.NO_SEPARATOR)


def log_topic(agent_id: uuid.UUID) -> bytes:
    """Topic of an agent's log chunks: its 36-character lowercase UUID."""
    return str(agent_id).encode()


def status_topic(agent_id: uuid.UUID) -> bytes:
    """Topic of an agent's status updates: ``status.`` + its UUID."""
    return _STATUS_PREFIX + str(agent_id).encode()
