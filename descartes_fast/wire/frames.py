"""ZeroMQ frame layouts: ROUTER envelopes and one-frame PUB messages (docs/protocol.md §5).

* Requests arrive at the ROUTER as ``[routing_id, ...envelope..., b"", payload, *ignored]``
  (a Rust REQ client) or ``[routing_id, payload]`` (a DEALER without delimiter); the
  reply echoes the envelope: :func:`split_request`, :func:`build_reply`.
* PUB messages are one frame, ``topic + b"\\x00" + payload``: :func:`pub_frame`,
  :func:`parse_pub_frame`. Log chunks use the agent's UUID as topic
  (:func:`log_topic`), status updates ``status.<uuid>`` (:func:`status_topic`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from descartes_fast import _impl

_active = _impl.load("frames", _impl.IMPLEMENTATION)

split_request: Callable[[Sequence[Any]], tuple[list[Any], Any]] = _active.split_request
build_reply: Callable[[list[Any], Any], list[Any]] = _active.build_reply
pub_frame: Callable[[str | bytes, Any], bytes] = _active.pub_frame
parse_pub_frame: Callable[[Any], tuple[bytes, memoryview]] = _active.parse_pub_frame
log_topic: Callable[[uuid.UUID], bytes] = _active.log_topic
status_topic: Callable[[uuid.UUID], bytes] = _active.status_topic
HEARTBEAT_TOPIC: bytes = _active.HEARTBEAT_TOPIC

__all__ = ["split_request", "build_reply", "pub_frame", "parse_pub_frame", "log_topic",
           "status_topic", "HEARTBEAT_TOPIC"]
