"""Draining a ZeroMQ socket on readiness from an asyncio loop (both ends do it).

A socket's ``FD`` becomes readable when its state *changes* (it is edge-triggered): after
taking what is queued, look at ``EVENTS`` before going back to sleep, or a message that
arrived meanwhile waits for the next edge, which may never come.
"""

from __future__ import annotations

from typing import cast

import zmq

__all__ = ["has_input"]


def has_input(sock: zmq.Socket) -> bool:
    """Whether *sock* holds a message to receive now (``ZMQ_EVENTS`` has ``POLLIN``)."""
    return bool(cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)
