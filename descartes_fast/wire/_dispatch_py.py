"""Pure-Python request dispatcher: the reference behaviour of the compiled ``_dispatch_c``.

The server's hot path: when the ROUTER socket is readable, take every queued request
(non-blocking), split the envelope, check the size, decode, call the handler for the
message's type and send its reply. A handler returns the reply message, or None when it
will reply later through :meth:`Dispatcher.reply` (slow work such as a spawn).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from descartes_fast.wire import _codec_py as _codec
from descartes_fast.wire._frames_py import build_reply, split_request
from descartes_fast.wire.constants import DRAIN_BYTES, MAX_FRAMES, MAX_MESSAGE_SIZE
from descartes_fast.wire.errors import FrameError, MessageTooLargeError, ProtocolError
from descartes_fast.wire.schema import Message

__all__ = ["Dispatcher", "Requester", "LIBZMQ_DIRECT", "DIRECT_REASON"]

#: This twin always goes through pyzmq's calls.
LIBZMQ_DIRECT = False
#: why the direct-libzmq path is not in use
DIRECT_REASON = "the pure-Python dispatcher always goes through pyzmq"


class Dispatcher:
    """Drain a ROUTER socket and route each request to ``handlers[type(message)]``.

    Parameters
    ----------
    sock : the ROUTER socket
    handlers : message class -> ``handler(message, envelope) -> Message | None``
    on_error : ``on_error(payload, exc) -> Message``: the reply to a request that is too
        large or does not decode (``exc`` is the ProtocolError)
    on_failure : ``on_failure(message, exc) -> Message``: the reply to a request whose handler
        raised (*message* is the request), or in place of a reply that cannot be encoded, such
        as one over the message limit (*message* is that reply); without it, both raise
    direct : whether to call libzmq directly when possible; the compiled twin can (None means
        when available), this twin always goes through pyzmq
    gate : if given, ``gate.check(user_id, peer_address, routing_id)`` is asked before each request is
        decoded (see :class:`descartes_fast.server.admission.Gate`); a refusal with ``reply`` set is
        answered through ``on_error(payload, refusal)``, any other is dropped
    """

    direct = False

    def __init__(self, sock: zmq.Socket, handlers: dict[type, Callable[[Any, list], Message | None]],
                 on_error: Callable[[Any, Exception], Message], direct: bool | None = None,
                 gate: Any = None, on_failure: Callable[[Message, Exception], Message] | None = None) -> None:
        self.sock = sock
        self.handlers = handlers
        self.on_error = on_error
        self.on_failure = on_failure
        self.gate = gate
        self.received = 0
        self.bad_frames = 0
        self.decode_errors = 0
        self.failures = 0        # handlers that raised, and replies that could not be encoded
        self.replies_dropped = 0  # replies the peer's full queue (or its absence) refused

    def drain(self, limit: int = 4096) -> int:
        """Handle up to *limit* queued requests, or fewer of ``DRAIN_BYTES`` in all; returns how
        many were taken."""
        sock = self.sock
        taken = size = 0
        while taken < limit and size < DRAIN_BYTES:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            taken += 1
            size += sum(len(f) for f in frames)
            self.received += 1
            self.handle(frames)
        return taken

    def handle(self, frames: list) -> None:
        """One request: reply to it now, or leave it to its handler."""
        if len(frames) > MAX_FRAMES:
            self.bad_frames += 1
            return
        try:
            envelope, payload = split_request(frames)
        except FrameError:
            self.bad_frames += 1
            return
        if self.gate is not None:
            refusal = self.gate.check(_frame_property(frames[0], "User-Id"),
                                     _frame_property(frames[0], "Peer-Address"), bytes(frames[0]))
            if refusal is not None:
                if refusal.reply:
                    self.reply(envelope, self.on_error(payload, refusal))
                return
        try:
            if len(payload) > MAX_MESSAGE_SIZE:
                raise MessageTooLargeError(len(payload), MAX_MESSAGE_SIZE)
            message = _codec.decode(payload)
        except ProtocolError as exc:
            self.decode_errors += 1
            self.reply(envelope, self.on_error(payload, exc))
            return
        try:
            reply = self.handlers[type(message)](message, envelope)
        except Exception as exc:
            if self.on_failure is None:
                raise
            self.failures += 1
            reply = self.on_failure(message, exc)
        if reply is not None:
            self.reply(envelope, reply)

    def reply(self, envelope: list, message: Message) -> None:
        """Send *message* to the peer behind *envelope*; in its place ``on_failure``'s reply if it
        cannot be encoded (dropped, and counted, if the peer's queue is full or it has gone)."""
        try:
            payload = _codec.encode(message)
        except ProtocolError as exc:
            if self.on_failure is None:
                raise
            self.failures += 1
            payload = _codec.encode(self.on_failure(message, exc))
        try:
            self.sock.send_multipart(build_reply(envelope, payload), zmq.NOBLOCK)
        except zmq.ZMQError:  # its queue is full (EAGAIN), or it has gone (EHOSTUNREACH, ROUTER_MANDATORY)
            self.replies_dropped += 1


def _frame_property(frame: Any, name: str) -> str | None:
    """A connection property libzmq attached to a received frame (None when it has none)."""
    try:
        return frame.get(name)
    except (AttributeError, zmq.ZMQError):
        return None


class Requester:
    """The client's side of the hot path: send requests, take every queued reply.

    Parameters
    ----------
    sock : the client's DEALER socket
    on_reply : called with each decoded reply (undecodable replies are counted and dropped)
    direct : as for :class:`Dispatcher`
    """

    direct = False

    def __init__(self, sock: zmq.Socket, on_reply: Callable[[Message], None], direct: bool | None = None) -> None:
        self.sock = sock
        self.on_reply = on_reply
        self.bad_replies = 0

    def send(self, payload: bytes) -> None:
        """Queue ``[b"", payload]``; never blocks (zmq.Again when the send queue is full)."""
        self.sock.send_multipart([b"", payload], zmq.NOBLOCK)

    def drain(self, limit: int = 4096) -> int:
        """Hand up to *limit* queued replies to ``on_reply``; returns how many were taken."""
        taken = 0
        while taken < limit:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            taken += 1
            try:
                reply = _codec.decode(frames[-1])
            except ProtocolError:
                self.bad_replies += 1
                continue
            self.on_reply(reply)
        return taken
